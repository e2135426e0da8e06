/*
 * Predicted load (routing-semantics §3): in-flight blocks deduplicated per target with reference
 * counts, prefill tokens until the first token, release exactly once (stale, forged and reused
 * handles), expiry, the tracking flags, the table limits, and two cores sharing their load.
 */
#include <criterion/criterion.h>
#include <errno.h>
#include <inttypes.h>
#include <string.h>

#include "helpers.h"
#include "route_fixture.h"

#define BS T_BS
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

	t_open_agg(&t, NULL, w, 2);
	h[0] = route_pin(&t, A, 100, w[0]);
	h[1] = route_pin(&t, A, 100, w[0]);
	h[2] = route_pin(&t, A, 100, w[1]);
	t_expect_load(&t, w[0], 6, 200);
	t_expect_load(&t, w[1], 6, 100);
	release_all(&t.core, &h[0], 1);
	t_expect_load(&t, w[0], 6, 100);
	release_all(&t.core, &h[1], 1);
	t_expect_load(&t, w[0], 0, 0);
	t_expect_load(&t, w[1], 6, 100);
	release_all(&t.core, &h[2], 1);
	t_expect_load(&t, w[1], 0, 0);
	cr_assert_eq(t.core.share.map_live, 0);
	t_route_close(&t);
}

Test(route_load, shared_prefix_counts_n1_plus_n2_minus_k_until_last_reference)
{
	for (int a_first = 0; a_first < 2; a_first++) {
		struct t_route t;
		rt_load_t ha, hb;
		uint16_t w;

		t_open_agg(&t, NULL, &w, 1);
		ha = route_pin(&t, A, 100, w);
		hb = route_pin(&t, B, 130, w);
		t_expect_load(&t, w, 6 + 8 - 3, 230);
		release_all(&t.core, a_first ? &ha : &hb, 1);
		if (a_first)
			t_expect_load(&t, w, 8, 130);
		else
			t_expect_load(&t, w, 6, 100);
		release_all(&t.core, a_first ? &hb : &ha, 1);
		t_expect_load(&t, w, 0, 0);
		cr_assert_eq(t.core.share.map_live, 0);
		t_route_close(&t);
	}
}

Test(route_load, explanation_new_blocks_are_those_not_in_flight_on_the_candidate)
{
	struct t_route t;
	uint16_t w[2];
	rt_load_t ha;

	t_open_agg(&t, NULL, w, 2);
	ha = route_pin(&t, A, 100, w[0]);
	peek(&t, &t.core, B, 130);
	cr_assert_eq(t_cand(&t.core, w[0])->new_blocks, 8 - 3);
	cr_assert_eq(t_cand(&t.core, w[1])->new_blocks, 8);
	cr_assert_float_eq(t_cand(&t.core, w[0])->decode_blocks, 6 + 5, 1e-9);
	cr_assert_float_eq(t_cand(&t.core, w[1])->decode_blocks, 8, 1e-9);
	peek(&t, &t.core, A, 64); /* A's first 4 blocks: all in flight on w[0] */
	cr_assert_eq(t_cand(&t.core, w[0])->new_blocks, 0);
	cr_assert_eq(t_cand(&t.core, w[1])->new_blocks, 4);
	peek(&t, &t.core, C, 100);
	cr_assert_eq(t_cand(&t.core, w[0])->new_blocks, 6);
	t_expect_load(&t, w[0], 6, 100); /* peeks recorded nothing */
	t_expect_load(&t, w[1], 0, 0);
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
	t_open_agg(&t, &cfg, &w, 1);
	h[0] = route_pin(&t, A, 100, w);
	h[1] = route_pin(&t, A, 100, w);
	cr_assert_eq(t_cand(&t.core, w)->new_blocks, 6);
	t_expect_load(&t, w, 12, 200);
	cr_assert_eq(t.core.share.map_live, 0);
	cr_assert_eq(t_core_stats(&t.core).blocks_untracked, 0, "no dedup is not a full table");
	release_all(&t.core, h, 2);
	t_expect_load(&t, w, 0, 0);
	t_route_close(&t);
}

Test(route_load, no_kv_reuse_override_counts_only_that_request_apart)
{
	struct rt_overrides ov = {.set = RT_OV_KV_REUSE, .assume_kv_reuse = false};
	struct t_route t;
	rt_load_t h[3];
	uint16_t w;

	t_open_agg(&t, NULL, &w, 1);
	h[0] = route_pin(&t, A, 100, w);
	h[1] = route_ov(&t, A, 100, w, ov);
	cr_assert_eq(t_cand(&t.core, w)->new_blocks, 6);
	t_expect_load(&t, w, 12, 200);
	h[2] = route_pin(&t, A, 100, w); /* dedups against h[0] again */
	cr_assert_eq(t_cand(&t.core, w)->new_blocks, 0);
	t_expect_load(&t, w, 12, 300);
	release_all(&t.core, h, 3);
	t_expect_load(&t, w, 0, 0);
	cr_assert_eq(t.core.share.map_live, 0);
	t_route_close(&t);
}

Test(route_load, prefill_tokens_are_the_prompt_less_its_cached_prefix)
{
	struct t_route t;
	uint16_t w[3];
	rt_load_t h;

	t_open_agg(&t, NULL, w, 3);
	t_cache(&t, w[0], A, 4, BS);
	t_cache(&t, w[1], A, 6, BS);
	route_pin(&t, A, 100, w[0]);
	cr_assert_eq(t_cand(&t.core, w[0])->overlap, 4);
	t_expect_load(&t, w[0], 6, 100 - 4 * BS);
	route_pin(&t, A, 100, w[1]); /* the partial last block is not cached */
	cr_assert_eq(t_cand(&t.core, w[1])->overlap, 6);
	t_expect_load(&t, w[1], 6, 100 - 6 * BS);
	h = route_pin(&t, A, 96, w[1]); /* every token cached: nothing to prefill */
	t_expect_load(&t, w[1], 6, 4);
	cr_assert_eq(rt_first_token(&t.core, h), 0);
	t_expect_load(&t, w[1], 6, 4);
	route_pin(&t, A, 100, w[2]);
	cr_assert_eq(t_cand(&t.core, w[2])->overlap, 0);
	t_expect_load(&t, w[2], 6, 100);
	t_route_close(&t);
}

Test(route_load, first_token_removes_prefill_tokens_once_and_keeps_blocks)
{
	struct t_route t;
	rt_load_t ha, hc;
	uint16_t w;

	t_open_agg(&t, NULL, &w, 1);
	ha = route_pin(&t, A, 100, w);
	hc = route_pin(&t, C, 100, w);
	t_expect_load(&t, w, 12, 200);
	cr_assert_eq(rt_first_token(&t.core, ha), 0);
	t_expect_load(&t, w, 12, 100);
	cr_assert_eq(rt_first_token(&t.core, ha), 0); /* again: changes nothing */
	t_expect_load(&t, w, 12, 100);
	cr_assert_eq(t_core_stats(&t.core).stale_handle, 0);
	release_all(&t.core, &ha, 1); /* its prefill tokens are gone already */
	t_expect_load(&t, w, 6, 100);
	release_all(&t.core, &hc, 1); /* no first token: its prefill tokens go with it */
	t_expect_load(&t, w, 0, 0);
	t_route_close(&t);
}

Test(route_load, release_twice_is_stale_and_counted)
{
	struct t_route t;
	rt_load_t h;
	uint16_t w;

	t_open_agg(&t, NULL, &w, 1);
	h = route_pin(&t, A, 100, w);
	cr_assert_eq(rt_release(&t.core, h), 0);
	cr_assert_eq(rt_release(&t.core, h), -ESTALE);
	cr_assert_eq(rt_first_token(&t.core, h), -ESTALE);
	t_expect_load(&t, w, 0, 0);
	cr_assert_eq(t_core_stats(&t.core).released, 1);
	cr_assert_eq(t_core_stats(&t.core).stale_handle, 2);
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
	t_open_agg(&t, &cfg, &w, 1);
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
	t_expect_load(&t, w, 12, 200);
	cr_assert_eq(t_core_stats(&t.core).stale_handle, stale);
	cr_assert_eq(t_core_stats(&t.core).released, 0);
	release_all(&t.core, h, 2);
	t_expect_load(&t, w, 0, 0);
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
	t_open_agg(&t, &cfg, &w, 1);
	for (int i = 0; i < 8; i++) {
		t_tokens(tok, 100, 10 + i);
		h[i] = route_pin(&t, tok, 100, w);
		for (int old = 0; old < i; old++) {
			cr_assert_neq(h[old], h[i]);
			cr_assert_eq(rt_release(&t.core, h[old]), -ESTALE);
			cr_assert_eq(rt_first_token(&t.core, h[old]), -ESTALE);
		}
		t_expect_load(&t, w, 6, 100);
		release_all(&t.core, &h[i], 1);
		t_expect_load(&t, w, 0, 0);
	}
	cr_assert_eq(t_core_stats(&t.core).released, 8);
	cr_assert_eq(t_core_stats(&t.core).stale_handle, 2 * (8 * 7 / 2));
	t_route_close(&t);
}

/* A router whose requests expire after 1000 ns. */
static void open_expiring(struct t_route *t, uint16_t *w, unsigned n)
{
	struct rt_config cfg;

	t_route_config(&cfg);
	cfg.expiry_ns = 1000;
	t_open_agg(t, &cfg, w, n);
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
	t_expect_load(&t, w[0], 12, 200);
	cr_assert_eq(rt_sweep(&t.core, 2500), 2);
	cr_assert_eq(t_core_stats(&t.core).expired, 2);
	t_expect_load(&t, w[0], 0, 0);
	t_expect_load(&t, w[1], 8, 130);
	cr_assert_eq(rt_release(&t.core, h[0]), -ESTALE);
	cr_assert_eq(rt_first_token(&t.core, h[1]), -ESTALE);
	cr_assert_eq(t_core_stats(&t.core).stale_handle, 2);
	cr_assert_eq(rt_sweep(&t.core, 2500), 0);
	cr_assert_eq(rt_sweep(&t.core, 3001), 1);
	cr_assert_eq(t_core_stats(&t.core).expired, 3);
	cr_assert_eq(t_core_stats(&t.core).released, 0);
	cr_assert_eq(rt_release(&t.core, h[2]), -ESTALE);
	t_expect_load(&t, w[1], 0, 0);
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
	t_expect_load(&t, w, 12, 200);
	cr_assert_eq(rt_sweep(&t.core, 6500), 1);
	t_expect_load(&t, w, 6, 100);
	cr_assert_eq(rt_sweep(&t.core, 7001), 1);
	t_expect_load(&t, w, 0, 0);
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
	t_open_agg(&t, &cfg, &w, 1);
	h[0] = route_pin(&t, A, 100, w);
	h[1] = route_pin(&t, A, 100, w);
	t_expect_load(&t, w, 0, 200);
	cr_assert_float_eq(t_cand(&t.core, w)->decode_blocks, 0.0, 1e-9);
	cr_assert_eq(t.core.share.map_live, 0);
	cr_assert_eq(rt_first_token(&t.core, h[0]), 0);
	t_expect_load(&t, w, 0, 100);
	release_all(&t.core, h, 2);
	t_expect_load(&t, w, 0, 0);
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
		t_open_agg(&t, &cfg, &w, 1);
		h[0] = route_pin(&t, A, 100, w);
		t_expect_load(&t, w, 6, on ? 100 : 0);
		h[1] = route_ov(&t, C, 100, w, ov);
		t_expect_load(&t, w, 12, 100);
		cr_assert_eq(rt_first_token(&t.core, h[0]), 0);
		t_expect_load(&t, w, 12, on ? 0 : 100);
		release_all(&t.core, h, 2);
		t_expect_load(&t, w, 0, 0);
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
	t_open_agg(&t, &cfg, &w, 1);
	for (int i = 0; i < 4; i++) {
		t_tokens(tok[i], 100, 10 + i);
		h[i] = route_pin(&t, tok[i], 100, w);
	}
	rq = t_request(&t, "m", A, 100, 0);
	live = t.core.share.map_live;
	cr_assert_eq(rt_route(&t.core, &rq, &plan), -ENOBUFS);
	cr_assert_eq(plan.first.load, 0);
	cr_assert_eq(rt_core_explain(&t.core, RT_STAGE_AGGREGATED)->outcome, -ENOBUFS);
	cr_assert_eq(t_core_stats(&t.core).requests_full, 1);
	t_expect_load(&t, w, 24, 400);
	cr_assert_eq(t.core.share.map_live, live, "the refused request left blocks behind");
	release_all(&t.core, &h[1], 1);
	h[1] = route_pin(&t, A, 100, w); /* a slot is free again */
	t_expect_load(&t, w, 24, 400);
	release_all(&t.core, h, 4);
	t_expect_load(&t, w, 0, 0);
	cr_assert_eq(t.core.share.map_live, 0);
	t_route_close(&t);
}

/* A router whose dedup table holds 64 blocks: LONG has 100. */
static void open_small_table(struct t_route *t, uint16_t *w)
{
	struct rt_config cfg;

	t_route_config(&cfg);
	cfg.max_active_blocks = 64;
	t_open_agg(t, &cfg, w, 1);
}

Test(route_load, full_dedup_table_still_counts_every_block)
{
	struct t_route t;
	uint16_t w;

	open_small_table(&t, &w);
	for (int round = 1; round <= 2; round++) { /* the table is whole again after release */
		rt_load_t h = route_pin(&t, LONG, LONG_TOKENS, w);

		t_expect_load(&t, w, 100, LONG_TOKENS);
		cr_assert_eq(t_core_stats(&t.core).blocks_untracked, round * 36);
		release_all(&t.core, &h, 1);
		t_expect_load(&t, w, 0, 0);
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
	cr_assert_eq(t_cand(&t.core, w)->new_blocks, 36);
	t_expect_load(&t, w, 100 + 36, 2 * LONG_TOKENS);
	cr_assert_eq(t_core_stats(&t.core).blocks_untracked, 36 + 36);
	release_all(&t.core, h, 2);
	t_expect_load(&t, w, 0, 0);
	cr_assert_eq(t.core.share.map_live, 0);
	t_route_close(&t);
}

/* 100 distinct blocks in flight, far below max_active_blocks (4096): dedup must hold. */
Test(route_load, many_requests_of_one_prompt_count_its_blocks_once)
{
	struct t_route t;
	rt_load_t h[100];
	uint16_t w;

	t_open_agg(&t, NULL, &w, 1);
	for (int i = 0; i < 100; i++) {
		h[i] = route_pin(&t, LONG, LONG_TOKENS, w);
		cr_assert_eq(t_load_blocks(&t, w), 100, "after %d requests: %" PRIu64 " blocks",
			     i + 1, t_load_blocks(&t, w));
	}
	cr_assert_eq(t_core_stats(&t.core).blocks_untracked, 0);
	release_all(&t.core, h, 100);
	t_expect_load(&t, w, 0, 0);
	cr_assert_eq(t.core.share.map_live, 0);
	t_route_close(&t);
}

/*
 * A prefix held by one target counts its references inline, in 15 bits: the 32,768th request
 * of one prompt on one target moves them to a slot of their own, and nothing is lost either
 * way (A has 6 blocks).
 */
Test(route_load, references_past_the_inline_limit_keep_counting)
{
	enum { N = 33000 };
	static rt_load_t h[N];
	struct rt_config cfg;
	struct t_route t;
	uint16_t w;

	t_route_config(&cfg);
	cfg.max_requests = N;
	t_open_agg(&t, &cfg, &w, 1);
	for (int i = 0; i < N; i++)
		h[i] = route_pin(&t, A, 100, w);
	t_expect_load(&t, w, 6, (uint64_t)N * 100);
	cr_assert_eq(t_core_stats(&t.core).blocks_untracked, 0);
	release_all(&t.core, h, N - 1);
	t_expect_load(&t, w, 6, 100);
	release_all(&t.core, &h[N - 1], 1);
	t_expect_load(&t, w, 0, 0);
	cr_assert_eq(t.core.share.map_live, 0);
	t_route_close(&t);
}

/* A router with two cores, t->core (0) and @core1, and two workers. */
static void open_two_cores(struct t_route *t, struct rt_core *core1, uint16_t *w)
{
	struct rt_config cfg;

	t_route_config(&cfg);
	cfg.cores = 2;
	t_open_agg(t, &cfg, w, 2);
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
	t_expect_load(&t, w[0], 12, 200);

	/* Core 1 sees core 0's load, but dedups only against its own requests. */
	peek(&t, &c1, A, 100);
	cr_assert_eq(t_cand(&c1, w[0])->new_blocks, 6);
	cr_assert_float_eq(t_cand(&c1, w[0])->decode_blocks, 12 + 6, 1e-9);
	cr_assert_float_eq(t_cand(&c1, w[0])->prefill_blocks, (200.0 + 100) / BS, 1e-9);
	cr_assert_float_eq(t_cand(&c1, w[1])->decode_blocks, 6, 1e-9);
	peek(&t, &t.core, A, 100);
	cr_assert_eq(t_cand(&t.core, w[0])->new_blocks, 0);
	cr_assert_float_eq(t_cand(&t.core, w[0])->decode_blocks, 12, 1e-9);
	peek(&t, &t.core, C, 100);
	cr_assert_eq(t_cand(&t.core, w[0])->new_blocks, 6);
	cr_assert_float_eq(t_cand(&t.core, w[0])->decode_blocks, 12 + 6, 1e-9);

	cr_assert_eq(rt_first_token(&c1, hc), 0);
	t_expect_load(&t, w[0], 12, 100);
	release_all(&t.core, &ha, 1);
	t_expect_load(&t, w[0], 6, 0);
	release_all(&c1, &hc, 1);
	t_expect_load(&t, w[0], 0, 0);
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
	cr_assert_eq(t_core_stats(&c1).stale_handle, 2);
	t_expect_load(&t, w[0], 6, 100);

	/* Same slot and generation on core 1: the core in the handle still tells them apart. */
	hb = route_at(&t, &c1, B, 130, w[1], 0);
	cr_assert_neq(hb, ha);
	cr_assert_eq(rt_release(&c1, ha), -ESTALE);
	t_expect_load(&t, w[1], 8, 130);
	t_expect_load(&t, w[0], 6, 100);
	cr_assert_eq(rt_release(&c1, hb), 0);
	t_expect_load(&t, w[1], 0, 0);
	cr_assert_eq(c1.share.map_live, 0);
	release_all(&t.core, &ha, 1);
	t_expect_load(&t, w[0], 0, 0);
	cr_assert_eq(t.core.share.map_live, 0);
	rt_core_destroy(&c1);
	t_route_close(&t);
}
