/*
 * Predicted load (routing-semantics §3): in-flight blocks deduplicated per target with reference
 * counts, prefill tokens until the first token, release on end/cancel/error exactly once (stale,
 * forged and reused handles), the expiry sweep, the flags that switch tracking off, the request
 * and dedup table limits, load shared by two cores, and random operations against a reference
 * model. Block size BS; most tests route the prompts of make_prompts().
 */
#include <criterion/criterion.h>
#include <errno.h>
#include <inttypes.h>
#include <string.h>

#include "helpers.h"
#include "route_fixture.h"

#define BS 16u
#define LONG_TOKENS (100 * BS) /* 100 blocks */

/* A: 100 tokens, 6 blocks; B: 130 tokens, 8 blocks, sharing A's first 3; C: 100 tokens, own
 * blocks; LONG: 100 blocks. */
static uint32_t A[100], B[130], C[100], LONG[LONG_TOKENS];

static void make_prompts(void)
{
	t_tokens(A, 100, 1);
	memcpy(B, A, 3 * BS * sizeof(*B));
	t_tokens(B + 3 * BS, 130 - 3 * BS, 2);
	t_tokens(C, 100, 3);
	t_tokens(LONG, LONG_TOKENS, 4);
}

TestSuite(route_load, .init = make_prompts);

/* Open the fixture with @cfg (NULL: t_route_config()) and @n aggregated workers of model "m"
 * (ids 1..n) at block size BS; their targets go to @w. */
static void open_with(struct t_route *t, const struct rt_config *cfg, uint16_t *w, unsigned n)
{
	struct rt_worker_spec s = t_spec("m", RT_AGGREGATED, BS);

	t_route_open(t, cfg);
	for (unsigned i = 0; i < n; i++)
		w[i] = t_register(t, i + 1, &s);
}

/* rt_route() of @rq pinned to @pin on @core, which must succeed there; returns the handle. */
static rt_load_t route_req(struct rt_core *core, struct rt_request *rq, uint16_t pin)
{
	struct rt_plan plan;
	int rc;

	rq->pin_target = pin;
	rc = rt_route(core, rq, &plan);
	cr_assert_eq(rc, 0, "rt_route pinned to %u: %d", pin, rc);
	cr_assert_eq(plan.first.target, pin);
	cr_assert_neq(plan.first.load, 0);
	return plan.first.load;
}

/* Route @n tokens of @tok on @core at @now_ns, pinned to @pin. */
static rt_load_t route_at(struct t_route *t, struct rt_core *core, const uint32_t *tok, size_t n,
			  uint16_t pin, uint64_t now_ns)
{
	struct rt_request rq = t_request(t, "m", tok, n, now_ns);

	return route_req(core, &rq, pin);
}

static rt_load_t route_pin(struct t_route *t, const uint32_t *tok, size_t n, uint16_t pin)
{
	return route_at(t, &t->core, tok, n, pin, 0);
}

/* Route @n tokens of @tok pinned to @pin with the overrides @ov. */
static rt_load_t route_ov(struct t_route *t, const uint32_t *tok, size_t n, uint16_t pin,
			  struct rt_overrides ov)
{
	struct rt_request rq = t_request(t, "m", tok, n, 0);

	rq.ov = ov;
	return route_req(&t->core, &rq, pin);
}

/* A peek at @n tokens of @tok on @core: explains without recording anything. */
static void peek(struct t_route *t, struct rt_core *core, const uint32_t *tok, size_t n)
{
	struct rt_request rq = t_request(t, "m", tok, n, 0);
	struct rt_plan plan;

	rq.peek = true;
	cr_assert_eq(rt_route(core, &rq, &plan), 0);
	cr_assert_eq(plan.first.load, 0, "a peek returned a handle");
}

static void release_all(struct rt_core *core, const rt_load_t *h, size_t n)
{
	for (size_t i = 0; i < n; i++)
		cr_assert_eq(rt_release(core, h[i]), 0, "release of handle %zu", i);
}

static void expect_load(const struct t_route *t, uint16_t target, uint64_t blocks,
			uint64_t prefill)
{
	uint64_t b, p;

	rt_target_load(&t->rt, target, &b, &p);
	cr_assert_eq(b, blocks, "target %u: %" PRIu64 " blocks, want %" PRIu64, target, b, blocks);
	cr_assert_eq(p, prefill, "target %u: %" PRIu64 " prefill tokens, want %" PRIu64, target,
		     p, prefill);
}

/* The candidate for @target in @core's last aggregated decision. */
static const struct rt_candidate *cand_of(const struct rt_core *core, uint16_t target)
{
	const struct rt_explain *ex = rt_core_explain(core, RT_STAGE_AGGREGATED);

	for (uint32_t i = 0; i < ex->ncand; i++)
		if (ex->cand[i].target == target)
			return &ex->cand[i];
	cr_assert_fail("target %u is no candidate", target);
	return NULL;
}

static struct rt_core_stats stats_of(const struct rt_core *core)
{
	struct rt_core_stats st;

	rt_core_stats(core, &st);
	return st;
}

Test(route_load, smoke_routes_to_the_only_worker_and_counts_its_load)
{
	struct t_route t;
	struct rt_worker_spec s;
	struct rt_request rq;
	struct rt_plan plan;
	uint32_t tok[100];
	uint16_t w;

	t_route_open(&t, NULL);
	s = t_spec("m", RT_AGGREGATED, 16);
	w = t_register(&t, 7, &s);
	t_tokens(tok, 100, 1);
	rq = t_request(&t, "m", tok, 100, 0);
	cr_assert_eq(rt_route(&t.core, &rq, &plan), 0);
	cr_assert_eq(plan.kind, RT_PLAN_AGGREGATED);
	cr_assert_eq(plan.first.target, w);
	cr_assert_eq(plan.first.worker, 7);
	cr_assert_eq(t_load_blocks(&t, w), 6);
	cr_assert_eq(t_load_prefill(&t, w), 100);
	cr_assert_eq(rt_first_token(&t.core, plan.first.load), 0);
	cr_assert_eq(t_load_prefill(&t, w), 0);
	cr_assert_eq(rt_release(&t.core, plan.first.load), 0);
	cr_assert_eq(t_load_blocks(&t, w), 0);
	cr_assert_eq(rt_release(&t.core, plan.first.load), -ESTALE);
	t_route_close(&t);
}

Test(route_load, same_prompt_in_flight_counts_once_per_target)
{
	struct t_route t;
	rt_load_t h[3];
	uint16_t w[2];

	open_with(&t, NULL, w, 2);
	h[0] = route_pin(&t, A, 100, w[0]);
	h[1] = route_pin(&t, A, 100, w[0]);
	h[2] = route_pin(&t, A, 100, w[1]);
	expect_load(&t, w[0], 6, 200);
	expect_load(&t, w[1], 6, 100);
	release_all(&t.core, &h[0], 1);
	expect_load(&t, w[0], 6, 100);
	release_all(&t.core, &h[1], 1);
	expect_load(&t, w[0], 0, 0);
	expect_load(&t, w[1], 6, 100);
	release_all(&t.core, &h[2], 1);
	expect_load(&t, w[1], 0, 0);
	cr_assert_eq(t.core.share.map_live, 0);
	t_route_close(&t);
}

Test(route_load, shared_prefix_counts_n1_plus_n2_minus_k_until_last_reference)
{
	for (int a_first = 0; a_first < 2; a_first++) {
		struct t_route t;
		rt_load_t ha, hb;
		uint16_t w;

		open_with(&t, NULL, &w, 1);
		ha = route_pin(&t, A, 100, w);
		hb = route_pin(&t, B, 130, w);
		expect_load(&t, w, 6 + 8 - 3, 230);
		release_all(&t.core, a_first ? &ha : &hb, 1);
		if (a_first)
			expect_load(&t, w, 8, 130);
		else
			expect_load(&t, w, 6, 100);
		release_all(&t.core, a_first ? &hb : &ha, 1);
		expect_load(&t, w, 0, 0);
		cr_assert_eq(t.core.share.map_live, 0);
		t_route_close(&t);
	}
}

Test(route_load, explanation_new_blocks_are_those_not_in_flight_on_the_candidate)
{
	struct t_route t;
	uint16_t w[2];
	rt_load_t ha;

	open_with(&t, NULL, w, 2);
	ha = route_pin(&t, A, 100, w[0]);
	peek(&t, &t.core, B, 130);
	cr_assert_eq(cand_of(&t.core, w[0])->new_blocks, 8 - 3);
	cr_assert_eq(cand_of(&t.core, w[1])->new_blocks, 8);
	cr_assert_float_eq(cand_of(&t.core, w[0])->decode_blocks, 6 + 5, 1e-9);
	cr_assert_float_eq(cand_of(&t.core, w[1])->decode_blocks, 8, 1e-9);
	peek(&t, &t.core, A, 64); /* A's first 4 blocks: all in flight on w[0] */
	cr_assert_eq(cand_of(&t.core, w[0])->new_blocks, 0);
	cr_assert_eq(cand_of(&t.core, w[1])->new_blocks, 4);
	peek(&t, &t.core, C, 100);
	cr_assert_eq(cand_of(&t.core, w[0])->new_blocks, 6);
	expect_load(&t, w[0], 6, 100); /* peeks recorded nothing */
	expect_load(&t, w[1], 0, 0);
	release_all(&t.core, &ha, 1);
	t_route_close(&t);
}

Test(route_load, no_kv_reuse_counts_the_same_prompt_twice)
{
	struct rt_config cfg;
	struct t_route t;
	rt_load_t h[2];
	uint16_t w;

	t_route_config(&cfg);
	cfg.policy.assume_kv_reuse = false;
	open_with(&t, &cfg, &w, 1);
	h[0] = route_pin(&t, A, 100, w);
	h[1] = route_pin(&t, A, 100, w);
	cr_assert_eq(cand_of(&t.core, w)->new_blocks, 6);
	expect_load(&t, w, 12, 200);
	cr_assert_eq(t.core.share.map_live, 0);
	cr_assert_eq(stats_of(&t.core).blocks_untracked, 0, "no dedup is not a full table");
	release_all(&t.core, h, 2);
	expect_load(&t, w, 0, 0);
	t_route_close(&t);
}

Test(route_load, no_kv_reuse_override_counts_only_that_request_apart)
{
	struct rt_overrides ov = {.set = RT_OV_KV_REUSE, .assume_kv_reuse = false};
	struct t_route t;
	rt_load_t h[3];
	uint16_t w;

	open_with(&t, NULL, &w, 1);
	h[0] = route_pin(&t, A, 100, w);
	h[1] = route_ov(&t, A, 100, w, ov);
	cr_assert_eq(cand_of(&t.core, w)->new_blocks, 6);
	expect_load(&t, w, 12, 200);
	h[2] = route_pin(&t, A, 100, w); /* dedups against h[0] again */
	cr_assert_eq(cand_of(&t.core, w)->new_blocks, 0);
	expect_load(&t, w, 12, 300);
	release_all(&t.core, h, 3);
	expect_load(&t, w, 0, 0);
	cr_assert_eq(t.core.share.map_live, 0);
	t_route_close(&t);
}

Test(route_load, prefill_tokens_are_the_prompt_less_its_cached_prefix)
{
	struct t_route t;
	uint16_t w[3];
	rt_load_t h;

	open_with(&t, NULL, w, 3);
	t_cache(&t, w[0], A, 4, BS);
	t_cache(&t, w[1], A, 6, BS);
	route_pin(&t, A, 100, w[0]);
	cr_assert_eq(cand_of(&t.core, w[0])->overlap, 4);
	expect_load(&t, w[0], 6, 100 - 4 * BS);
	route_pin(&t, A, 100, w[1]); /* the partial last block is not cached */
	cr_assert_eq(cand_of(&t.core, w[1])->overlap, 6);
	expect_load(&t, w[1], 6, 100 - 6 * BS);
	h = route_pin(&t, A, 96, w[1]); /* every token cached: nothing to prefill */
	expect_load(&t, w[1], 6, 4);
	cr_assert_eq(rt_first_token(&t.core, h), 0);
	expect_load(&t, w[1], 6, 4);
	route_pin(&t, A, 100, w[2]);
	cr_assert_eq(cand_of(&t.core, w[2])->overlap, 0);
	expect_load(&t, w[2], 6, 100);
	t_route_close(&t);
}

Test(route_load, first_token_removes_prefill_tokens_once_and_keeps_blocks)
{
	struct t_route t;
	rt_load_t ha, hc;
	uint16_t w;

	open_with(&t, NULL, &w, 1);
	ha = route_pin(&t, A, 100, w);
	hc = route_pin(&t, C, 100, w);
	expect_load(&t, w, 12, 200);
	cr_assert_eq(rt_first_token(&t.core, ha), 0);
	expect_load(&t, w, 12, 100);
	cr_assert_eq(rt_first_token(&t.core, ha), 0); /* again: changes nothing */
	expect_load(&t, w, 12, 100);
	cr_assert_eq(stats_of(&t.core).stale_handle, 0);
	release_all(&t.core, &ha, 1); /* its prefill tokens are gone already */
	expect_load(&t, w, 6, 100);
	release_all(&t.core, &hc, 1); /* no first token: its prefill tokens go with it */
	expect_load(&t, w, 0, 0);
	t_route_close(&t);
}

Test(route_load, release_twice_is_stale_and_counted)
{
	struct t_route t;
	rt_load_t h;
	uint16_t w;

	open_with(&t, NULL, &w, 1);
	h = route_pin(&t, A, 100, w);
	cr_assert_eq(rt_release(&t.core, h), 0);
	cr_assert_eq(rt_release(&t.core, h), -ESTALE);
	cr_assert_eq(rt_first_token(&t.core, h), -ESTALE);
	expect_load(&t, w, 0, 0);
	cr_assert_eq(stats_of(&t.core).released, 1);
	cr_assert_eq(stats_of(&t.core).stale_handle, 2);
	t_route_close(&t);
}

Test(route_load, zero_and_forged_handles_are_stale_and_change_nothing)
{
	struct rt_config cfg;
	struct t_route t;
	struct t_rng rng;
	uint64_t stale = 2;
	rt_load_t h[2];
	uint16_t w;

	t_route_config(&cfg);
	open_with(&t, &cfg, &w, 1);
	h[0] = route_pin(&t, A, 100, w);
	h[1] = route_pin(&t, C, 100, w);
	cr_assert_eq(rt_release(&t.core, 0), -ESTALE);
	cr_assert_eq(rt_first_token(&t.core, 0), -ESTALE);
	t_rng_seed(&rng, 42);
	for (int i = 0; i < 20000; i++) {
		rt_load_t f = t_rng_next(&rng);

		if (i & 1) /* a slot in range, any generation */
			f = (f & ~0xffffffffull) | (t_rng_below(&rng, cfg.max_requests) + 1);
		else if (i % 4 == 2) /* a slot in range, one of the first generations */
			f = (uint64_t)t_rng_below(&rng, 3) << 32 | (f % cfg.max_requests + 1);
		if (f == h[0] || f == h[1])
			continue;
		cr_assert_eq(rt_release(&t.core, f), -ESTALE, "handle %#" PRIx64, f);
		cr_assert_eq(rt_first_token(&t.core, f), -ESTALE, "handle %#" PRIx64, f);
		stale += 2;
	}
	expect_load(&t, w, 12, 200);
	cr_assert_eq(stats_of(&t.core).stale_handle, stale);
	cr_assert_eq(stats_of(&t.core).released, 0);
	release_all(&t.core, h, 2);
	expect_load(&t, w, 0, 0);
	t_route_close(&t);
}

Test(route_load, reused_slot_rejects_the_old_handles)
{
	struct rt_config cfg;
	struct t_route t;
	uint32_t tok[100];
	rt_load_t h[8];
	uint16_t w;

	t_route_config(&cfg);
	cfg.max_requests = 1; /* every request takes the one slot */
	open_with(&t, &cfg, &w, 1);
	for (int i = 0; i < 8; i++) {
		t_tokens(tok, 100, 10 + i);
		h[i] = route_pin(&t, tok, 100, w);
		for (int old = 0; old < i; old++) {
			cr_assert_neq(h[old], h[i]);
			cr_assert_eq(rt_release(&t.core, h[old]), -ESTALE);
			cr_assert_eq(rt_first_token(&t.core, h[old]), -ESTALE);
		}
		expect_load(&t, w, 6, 100);
		release_all(&t.core, &h[i], 1);
		expect_load(&t, w, 0, 0);
	}
	cr_assert_eq(stats_of(&t.core).released, 8);
	cr_assert_eq(stats_of(&t.core).stale_handle, 2 * (8 * 7 / 2));
	t_route_close(&t);
}

/* A router whose requests expire after 1000 ns. */
static void open_expiring(struct t_route *t, uint16_t *w, unsigned n)
{
	struct rt_config cfg;

	t_route_config(&cfg);
	cfg.expiry_ns = 1000;
	open_with(t, &cfg, w, n);
}

Test(route_load, sweep_releases_requests_older_than_expiry)
{
	struct t_route t;
	rt_load_t h[3];
	uint16_t w[2];

	open_expiring(&t, w, 2);
	h[0] = route_at(&t, &t.core, A, 100, w[0], 0);
	h[1] = route_at(&t, &t.core, C, 100, w[0], 500);
	h[2] = route_at(&t, &t.core, B, 130, w[1], 2000);
	cr_assert_eq(rt_sweep(&t.core, 999), 0);
	expect_load(&t, w[0], 12, 200);
	cr_assert_eq(rt_sweep(&t.core, 2500), 2);
	cr_assert_eq(stats_of(&t.core).expired, 2);
	expect_load(&t, w[0], 0, 0);
	expect_load(&t, w[1], 8, 130);
	cr_assert_eq(rt_release(&t.core, h[0]), -ESTALE);
	cr_assert_eq(rt_first_token(&t.core, h[1]), -ESTALE);
	cr_assert_eq(stats_of(&t.core).stale_handle, 2);
	cr_assert_eq(rt_sweep(&t.core, 2500), 0);
	cr_assert_eq(rt_sweep(&t.core, 3001), 1);
	cr_assert_eq(stats_of(&t.core).expired, 3);
	cr_assert_eq(stats_of(&t.core).released, 0);
	cr_assert_eq(rt_release(&t.core, h[2]), -ESTALE);
	expect_load(&t, w[1], 0, 0);
	cr_assert_eq(t.core.share.map_live, 0);
	t_route_close(&t);
}

Test(route_load, sweep_before_the_start_times_releases_nothing)
{
	struct t_route t;
	uint16_t w;

	open_expiring(&t, &w, 1);
	route_at(&t, &t.core, A, 100, w, 5000);
	route_at(&t, &t.core, C, 100, w, 6000);
	cr_assert_eq(rt_sweep(&t.core, 0), 0); /* now - start must not wrap around */
	cr_assert_eq(rt_sweep(&t.core, 100), 0);
	expect_load(&t, w, 12, 200);
	cr_assert_eq(rt_sweep(&t.core, 6500), 1);
	expect_load(&t, w, 6, 100);
	cr_assert_eq(rt_sweep(&t.core, 7001), 1);
	expect_load(&t, w, 0, 0);
	t_route_close(&t);
}

Test(route_load, track_active_blocks_off_counts_prefill_tokens_only)
{
	struct rt_config cfg;
	struct t_route t;
	rt_load_t h[2];
	uint16_t w;

	t_route_config(&cfg);
	cfg.policy.track_active_blocks = false;
	open_with(&t, &cfg, &w, 1);
	h[0] = route_pin(&t, A, 100, w);
	h[1] = route_pin(&t, A, 100, w);
	expect_load(&t, w, 0, 200);
	cr_assert_float_eq(cand_of(&t.core, w)->decode_blocks, 0.0, 1e-9);
	cr_assert_eq(t.core.share.map_live, 0);
	cr_assert_eq(rt_first_token(&t.core, h[0]), 0);
	expect_load(&t, w, 0, 100);
	release_all(&t.core, h, 2);
	expect_load(&t, w, 0, 0);
	t_route_close(&t);
}

/* The config flag, then the per-request override that says the opposite. */
Test(route_load, track_prefill_tokens_flag_and_its_override)
{
	for (int on = 0; on < 2; on++) {
		struct rt_overrides ov = {.set = RT_OV_PREFILL_TOKENS, .track_prefill_tokens = !on};
		struct rt_config cfg;
		struct t_route t;
		rt_load_t h[2];
		uint16_t w;

		t_route_config(&cfg);
		cfg.policy.track_prefill_tokens = on;
		open_with(&t, &cfg, &w, 1);
		h[0] = route_pin(&t, A, 100, w);
		expect_load(&t, w, 6, on ? 100 : 0);
		h[1] = route_ov(&t, C, 100, w, ov);
		expect_load(&t, w, 12, 100);
		cr_assert_eq(rt_first_token(&t.core, h[0]), 0);
		expect_load(&t, w, 12, on ? 0 : 100);
		release_all(&t.core, h, 2);
		expect_load(&t, w, 0, 0);
		t_route_close(&t);
	}
}

Test(route_load, full_request_table_refuses_and_records_nothing)
{
	struct rt_config cfg;
	struct t_route t;
	struct rt_request rq;
	struct rt_plan plan;
	uint32_t tok[4][100], live;
	rt_load_t h[5];
	uint16_t w;

	t_route_config(&cfg);
	cfg.max_requests = 4;
	open_with(&t, &cfg, &w, 1);
	for (int i = 0; i < 4; i++) {
		t_tokens(tok[i], 100, 10 + i);
		h[i] = route_pin(&t, tok[i], 100, w);
	}
	rq = t_request(&t, "m", A, 100, 0);
	live = t.core.share.map_live;
	cr_assert_eq(rt_route(&t.core, &rq, &plan), -ENOBUFS);
	cr_assert_eq(plan.first.load, 0);
	cr_assert_eq(rt_core_explain(&t.core, RT_STAGE_AGGREGATED)->outcome, -ENOBUFS);
	cr_assert_eq(stats_of(&t.core).requests_full, 1);
	expect_load(&t, w, 24, 400);
	cr_assert_eq(t.core.share.map_live, live, "the refused request left blocks behind");
	release_all(&t.core, &h[1], 1);
	h[1] = route_pin(&t, A, 100, w); /* a slot is free again */
	expect_load(&t, w, 24, 400);
	release_all(&t.core, h, 4);
	expect_load(&t, w, 0, 0);
	cr_assert_eq(t.core.share.map_live, 0);
	t_route_close(&t);
}

/* A router whose dedup table holds 64 blocks: LONG has 100. */
static void open_small_table(struct t_route *t, uint16_t *w)
{
	struct rt_config cfg;

	t_route_config(&cfg);
	cfg.max_active_blocks = 64;
	open_with(t, &cfg, w, 1);
}

Test(route_load, full_dedup_table_still_counts_every_block)
{
	struct t_route t;
	uint16_t w;

	open_small_table(&t, &w);
	for (int round = 1; round <= 2; round++) { /* the table is whole again after release */
		rt_load_t h = route_pin(&t, LONG, LONG_TOKENS, w);

		expect_load(&t, w, 100, LONG_TOKENS);
		cr_assert_eq(stats_of(&t.core).blocks_untracked, round * 36);
		release_all(&t.core, &h, 1);
		expect_load(&t, w, 0, 0);
		cr_assert_eq(t.core.share.map_live, 0);
	}
	t_route_close(&t);
}

/*
 * The table is full of the first request's 64 blocks: a second request of the same prompt
 * must still count those 64 once (its explanation says so); only blocks 64..99 go untracked.
 */
Test(route_load, full_dedup_table_still_dedups_the_blocks_it_holds)
{
	struct t_route t;
	rt_load_t h[2];
	uint16_t w;

	open_small_table(&t, &w);
	h[0] = route_pin(&t, LONG, LONG_TOKENS, w);
	h[1] = route_pin(&t, LONG, LONG_TOKENS, w);
	cr_assert_eq(cand_of(&t.core, w)->new_blocks, 36);
	expect_load(&t, w, 100 + 36, 2 * LONG_TOKENS);
	cr_assert_eq(stats_of(&t.core).blocks_untracked, 36 + 36);
	release_all(&t.core, h, 2);
	expect_load(&t, w, 0, 0);
	cr_assert_eq(t.core.share.map_live, 0);
	t_route_close(&t);
}

/* 100 distinct blocks in flight, far below max_active_blocks (4096): dedup must hold. */
Test(route_load, many_requests_of_one_prompt_count_its_blocks_once)
{
	struct t_route t;
	rt_load_t h[100];
	uint16_t w;

	open_with(&t, NULL, &w, 1);
	for (int i = 0; i < 100; i++) {
		h[i] = route_pin(&t, LONG, LONG_TOKENS, w);
		cr_assert_eq(t_load_blocks(&t, w), 100, "after %d requests: %" PRIu64 " blocks",
			     i + 1, t_load_blocks(&t, w));
	}
	cr_assert_eq(stats_of(&t.core).blocks_untracked, 0);
	release_all(&t.core, h, 100);
	expect_load(&t, w, 0, 0);
	cr_assert_eq(t.core.share.map_live, 0);
	t_route_close(&t);
}

/* A router with two cores, t->core (0) and @core1, and two workers. */
static void open_two_cores(struct t_route *t, struct rt_core *core1, uint16_t *w)
{
	struct rt_config cfg;

	t_route_config(&cfg);
	cfg.cores = 2;
	open_with(t, &cfg, w, 2);
	cr_assert_eq(rt_core_init(core1, &t->rt, 1), 0);
}

Test(route_load, two_cores_sum_their_loads_into_each_others_costs)
{
	struct t_route t;
	struct rt_core c1;
	rt_load_t ha, hc;
	uint16_t w[2];

	open_two_cores(&t, &c1, w);
	ha = route_at(&t, &t.core, A, 100, w[0], 0);
	hc = route_at(&t, &c1, C, 100, w[0], 0);
	expect_load(&t, w[0], 12, 200);

	/* Core 1 sees core 0's load, but dedups only against its own requests. */
	peek(&t, &c1, A, 100);
	cr_assert_eq(cand_of(&c1, w[0])->new_blocks, 6);
	cr_assert_float_eq(cand_of(&c1, w[0])->decode_blocks, 12 + 6, 1e-9);
	cr_assert_float_eq(cand_of(&c1, w[0])->prefill_blocks, (200.0 + 100) / BS, 1e-9);
	cr_assert_float_eq(cand_of(&c1, w[1])->decode_blocks, 6, 1e-9);
	peek(&t, &t.core, A, 100);
	cr_assert_eq(cand_of(&t.core, w[0])->new_blocks, 0);
	cr_assert_float_eq(cand_of(&t.core, w[0])->decode_blocks, 12, 1e-9);
	peek(&t, &t.core, C, 100);
	cr_assert_eq(cand_of(&t.core, w[0])->new_blocks, 6);
	cr_assert_float_eq(cand_of(&t.core, w[0])->decode_blocks, 12 + 6, 1e-9);

	cr_assert_eq(rt_first_token(&c1, hc), 0);
	expect_load(&t, w[0], 12, 100);
	release_all(&t.core, &ha, 1);
	expect_load(&t, w[0], 6, 0);
	release_all(&c1, &hc, 1);
	expect_load(&t, w[0], 0, 0);
	rt_core_destroy(&c1);
	t_route_close(&t);
}

/*
 * A handle names the core that made it, its slot and generation (route.h: release on that
 * core). On another core it is stale, even when that core has a live request in the same slot
 * and generation: the misuse is counted and nothing is released.
 */
Test(route_load, handle_released_on_another_core_is_stale_there)
{
	struct t_route t;
	struct rt_core c1;
	rt_load_t ha, hb;
	uint16_t w[2];

	open_two_cores(&t, &c1, w);
	ha = route_at(&t, &t.core, A, 100, w[0], 0);
	cr_assert_eq(rt_release(&c1, ha), -ESTALE);
	cr_assert_eq(rt_first_token(&c1, ha), -ESTALE);
	cr_assert_eq(stats_of(&c1).stale_handle, 2);
	expect_load(&t, w[0], 6, 100);

	/* Same slot and generation on core 1: the core in the handle still tells them apart. */
	hb = route_at(&t, &c1, B, 130, w[1], 0);
	cr_assert_neq(hb, ha);
	cr_assert_eq(rt_release(&c1, ha), -ESTALE);
	expect_load(&t, w[1], 8, 130);
	expect_load(&t, w[0], 6, 100);
	cr_assert_eq(rt_release(&c1, hb), 0);
	expect_load(&t, w[1], 0, 0);
	cr_assert_eq(c1.share.map_live, 0);
	release_all(&t.core, &ha, 1);
	expect_load(&t, w[0], 0, 0);
	cr_assert_eq(t.core.share.map_live, 0);
	rt_core_destroy(&c1);
	t_route_close(&t);
}

/*
 * The reference model: prompts are prefixes of a few token families, so block i of family f
 * names one sequence hash, and a target's distinct blocks are, per family, the longest prefix
 * a live deduplicated request of that family holds there, plus every block of the requests
 * routed without KV reuse.
 */
#define M_TARGETS 4u
#define M_FAMILIES 3u
#define M_BLOCKS 80u	 /* longest prompt */
#define M_LIVE 64u	 /* cfg.max_requests */
#define M_DEAD 32u	 /* released handles kept to replay */
#define M_EXPIRY 12000u /* even, like every start time: sweeps at odd times never tie */
#define M_OPS 20000u

struct m_req {
	rt_load_t h;
	uint64_t start_ns;
	uint64_t pending; /* prefill tokens still counted */
	uint32_t blocks;
	uint16_t target;
	uint8_t family;
	bool unique; /* routed without KV reuse */
};

struct m_model {
	struct t_route t;
	uint16_t w[M_TARGETS];
	uint32_t tok[M_FAMILIES][(M_BLOCKS + 1) * BS];
	struct m_req live[M_LIVE];
	uint32_t nlive;
	rt_load_t dead[M_DEAD];
	uint32_t ndead;
	uint64_t now, released, stale, expired, full;
};

/* Longest deduplicated prefix of @family live on @target. */
static uint32_t m_held(const struct m_model *m, uint16_t target, uint32_t family)
{
	uint32_t held = 0;

	for (uint32_t i = 0; i < m->nlive; i++) {
		const struct m_req *r = &m->live[i];

		if (r->target == target && r->family == family && !r->unique && r->blocks > held)
			held = r->blocks;
	}
	return held;
}

static void m_check(const struct m_model *m, uint32_t op)
{
	uint32_t mapped = 0;

	for (uint32_t k = 0; k < M_TARGETS; k++) {
		uint64_t blocks = 0, prefill = 0, b, p;
		uint16_t tg = m->w[k];

		for (uint32_t f = 0; f < M_FAMILIES; f++)
			blocks += m_held(m, tg, f);
		mapped += (uint32_t)blocks;
		for (uint32_t i = 0; i < m->nlive; i++) {
			if (m->live[i].target != tg)
				continue;
			blocks += m->live[i].unique ? m->live[i].blocks : 0;
			prefill += m->live[i].pending;
		}
		rt_target_load(&m->t.rt, tg, &b, &p);
		cr_assert_eq(b, blocks, "op %u target %u: %" PRIu64 " blocks, model %" PRIu64, op,
			     tg, b, blocks);
		cr_assert_eq(p, prefill, "op %u target %u: %" PRIu64 " prefill, model %" PRIu64,
			     op, tg, p, prefill);
	}
	cr_assert_eq(m->t.core.share.map_live == 0, mapped == 0, "op %u: dedup table", op);
}

static void m_bury(struct m_model *m, uint32_t i)
{
	m->dead[m->ndead++ % M_DEAD] = m->live[i].h;
	m->live[i] = m->live[--m->nlive];
}

static void m_route(struct m_model *m, struct t_rng *rng, uint32_t op)
{
	uint32_t family = t_rng_below(rng, M_FAMILIES), n = t_rng_below(rng, M_BLOCKS + 1);
	size_t ntokens = (size_t)n * BS + t_rng_below(rng, BS);
	struct rt_request rq = t_request(&m->t, "m", m->tok[family], ntokens, m->now);
	bool unique = t_rng_chance(rng, 15), no_prefill = t_rng_chance(rng, 15);
	struct rt_plan plan;
	int rc, want;

	if (t_rng_chance(rng, 80))
		rq.pin_target = m->w[t_rng_below(rng, M_TARGETS)];
	rq.peek = t_rng_chance(rng, 5);
	rq.ov.set = (unique ? RT_OV_KV_REUSE : 0) | (no_prefill ? RT_OV_PREFILL_TOKENS : 0);
	want = !rq.peek && m->nlive == M_LIVE ? -ENOBUFS : 0;
	rc = rt_route(&m->t.core, &rq, &plan);
	cr_assert_eq(rc, want, "op %u: rt_route %d, model %d", op, rc, want);
	for (uint32_t k = 0; k < M_TARGETS; k++) {
		uint32_t held = unique ? 0 : m_held(m, m->w[k], family);

		cr_assert_eq(cand_of(&m->t.core, m->w[k])->new_blocks, n - (held < n ? held : n),
			     "op %u target %u: new blocks", op, m->w[k]);
	}
	m->full += rc == -ENOBUFS;
	if (rc || rq.peek)
		return;
	cr_assert(rq.pin_target == RT_NO_PIN || plan.first.target == rq.pin_target);
	m->live[m->nlive++] = (struct m_req){
	    .h = plan.first.load,
	    .start_ns = m->now,
	    .pending = no_prefill ? 0 : ntokens,
	    .blocks = n,
	    .target = plan.first.target,
	    .family = (uint8_t)family,
	    .unique = unique,
	};
}

/* Pick a live request's handle (its index in *@live) or, sometimes, a released one. */
static rt_load_t m_pick(const struct m_model *m, struct t_rng *rng, int *live)
{
	*live = -1;
	if (m->nlive && (!m->ndead || t_rng_chance(rng, 85))) {
		*live = (int)t_rng_below(rng, m->nlive);
		return m->live[*live].h;
	}
	if (!m->ndead)
		return 0;
	return m->dead[t_rng_below(rng, m->ndead < M_DEAD ? m->ndead : M_DEAD)];
}

static void m_step(struct m_model *m, struct t_rng *rng, uint32_t op)
{
	uint32_t dice = t_rng_below(rng, 100);
	int live, rc;
	rt_load_t h;

	m->now += 2 * t_rng_below(rng, 64);
	if (dice < 40) {
		m_route(m, rng, op);
	} else if (dice < 60) {
		h = m_pick(m, rng, &live);
		rc = rt_first_token(&m->t.core, h);
		cr_assert_eq(rc, live >= 0 ? 0 : -ESTALE, "op %u: rt_first_token %d", op, rc);
		if (live >= 0)
			m->live[live].pending = 0;
		m->stale += live < 0;
	} else if (dice < 92) {
		h = m_pick(m, rng, &live);
		rc = rt_release(&m->t.core, h);
		cr_assert_eq(rc, live >= 0 ? 0 : -ESTALE, "op %u: rt_release %d", op, rc);
		if (live >= 0)
			m_bury(m, (uint32_t)live);
		m->released += live >= 0;
		m->stale += live < 0;
	} else {
		uint64_t now = m->now + 1;
		size_t want = 0;

		for (uint32_t i = m->nlive; i-- > 0;) {
			if (now - m->live[i].start_ns >= M_EXPIRY) {
				m_bury(m, i);
				want++;
			}
		}
		cr_assert_eq(rt_sweep(&m->t.core, now), want, "op %u: rt_sweep", op);
		m->expired += want;
	}
	m_check(m, op);
}

Test(route_load, random_operations_match_a_reference_model)
{
	static struct m_model m;
	struct rt_config cfg;
	struct rt_core_stats st;
	struct t_rng rng;

	memset(&m, 0, sizeof(m));
	t_route_config(&cfg);
	cfg.max_requests = M_LIVE;
	cfg.max_active_blocks = 1u << 14; /* never full here: the model dedups every block */
	cfg.expiry_ns = M_EXPIRY;
	open_with(&m.t, &cfg, m.w, M_TARGETS);
	for (uint32_t f = 0; f < M_FAMILIES; f++)
		t_tokens(m.tok[f], (M_BLOCKS + 1) * BS, 100 + f);
	t_rng_seed(&rng, 2024);
	for (uint32_t op = 0; op < M_OPS; op++)
		m_step(&m, &rng, op);
	/* The run must have reached every path it checks. */
	cr_assert_gt(m.full, 0, "never filled the request table");
	cr_assert_gt(m.expired, 0, "never swept");
	cr_assert_gt(m.stale, 0, "never replayed a stale handle");
	while (m.nlive) {
		cr_assert_eq(rt_release(&m.t.core, m.live[0].h), 0);
		m_bury(&m, 0);
		m.released++;
	}
	m_check(&m, M_OPS);
	st = stats_of(&m.t.core);
	cr_assert_eq(st.released, m.released);
	cr_assert_eq(st.stale_handle, m.stale);
	cr_assert_eq(st.expired, m.expired);
	cr_assert_eq(st.requests_full, m.full);
	cr_assert_eq(st.blocks_untracked, 0);
	t_route_close(&m.t);
}
