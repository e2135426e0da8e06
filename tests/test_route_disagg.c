/*
 * Stages of disaggregated serving (routing-semantics §5-§6): the stage rules of prefill and
 * decode, fallback to decode-only, enforce_disagg, bootstrap, and the topology rules of the
 * decode choice. struct t_ctx (route_fixture.h) holds the router and one request.
 */
#include <criterion/criterion.h>
#include <errno.h>
#include <math.h>

#include "helpers.h"
#include "route_fixture.h"

#define BS T_BS		  /* block size of every pool unless a test says otherwise */
#define NTOK T_CTX_TOKENS /* prompt length in tokens */
#define NBLK (NTOK / BS)  /* ... and in blocks */

TestSuite(route_disagg);

/* Put @nblocks blocks of decode load on @target: a decode stage after @prefill, pinned. */
static void load_decode(struct t_ctx *x, uint16_t prefill, uint16_t target, uint32_t nblocks)
{
	static uint32_t tok[16 * BS];
	struct rt_request rq;
	struct rt_choice c;

	cr_assert_leq(nblocks, 16);
	t_tokens(tok, (size_t)nblocks * BS, 1000 + nblocks);
	rq = t_request(&x->t, "m", tok, (size_t)nblocks * BS, 0);
	rq.pin_target = target;
	cr_assert_eq(rt_route_decode(&x->t.core, &rq, prefill, &c), 0);
	cr_assert_eq(c.target, target);
}

/* §5: the stage rules of prefill and decode. */

Test(route_disagg, prefill_stage_scores_overlap_and_loads_prefill_tokens_only)
{
	const struct rt_explain *ex;
	struct t_ctx x;
	uint16_t p1, p2, d;

	t_ctx_open(&x, NULL, RT_TRANSFER_NONE, 0);
	p1 = t_ctx_add(&x, 1, RT_PREFILL);
	p2 = t_ctx_add(&x, 2, RT_PREFILL);
	d = t_ctx_add(&x, 3, RT_DECODE);
	t_ctx_prompt(&x, 1);
	t_cache(&x.t, p2, x.tok, 4, BS);
	cr_assert_eq(t_ctx_route(&x), 0);
	cr_assert_eq(x.plan.kind, RT_PLAN_DISAGG);
	cr_assert_eq(x.plan.first.target, p2, "the overlap on p2 did not count");
	cr_assert_eq(x.plan.first.worker, 2);
	cr_assert_eq(x.plan.first.overlap, 4);
	ex = t_ctx_explain(&x, RT_STAGE_PREFILL);
	cr_assert_eq(ex->outcome, 0);
	cr_assert_not(ex->policy.track_active_blocks);
	cr_assert(ex->policy.track_prefill_tokens);
	cr_assert_eq(ex->policy.overlap_score_credit, 1.0);
	cr_assert_eq(t_ctx_cand(&x, RT_STAGE_PREFILL, p1)->decode_blocks, 0.0);
	t_expect_load(&x.t, p2, 0, NTOK - 4 * BS);
	t_expect_load(&x.t, p1, 0, 0);
	t_expect_load(&x.t, d, 0, 0);
	t_route_close(&x.t);
}

Test(route_disagg, decode_stage_has_no_overlap_credit_kv_reuse_or_prefill_tokens)
{
	const struct rt_explain *ex;
	struct rt_request peek;
	struct rt_choice c;
	struct t_ctx x;
	uint16_t p, d1, d2;

	t_ctx_open(&x, NULL, RT_TRANSFER_NONE, 0);
	p = t_ctx_add(&x, 1, RT_PREFILL);
	d1 = t_ctx_add(&x, 2, RT_DECODE);
	d2 = t_ctx_add(&x, 3, RT_DECODE);
	t_ctx_prompt(&x, 1);
	t_cache(&x.t, d1, x.tok, NBLK, BS);
	load_decode(&x, p, d1, 2);
	/* Aggregated scoring takes d1: its overlap outweighs its two blocks of load... */
	peek = x.rq;
	peek.peek = true;
	cr_assert_eq(rt_route_fallback(&x.t.core, &peek, &c), 0);
	cr_assert_eq(c.target, d1);
	/* ... the decode stage does not chase the prefix. */
	cr_assert_eq(t_ctx_decode(&x, p), 0);
	cr_assert_eq(x.c.target, d2);
	ex = t_ctx_explain(&x, RT_STAGE_DECODE);
	cr_assert_eq(ex->policy.overlap_score_credit, 0.0);
	cr_assert_not(ex->policy.assume_kv_reuse);
	cr_assert_not(ex->policy.track_prefill_tokens);
	cr_assert(ex->policy.track_active_blocks);
	cr_assert_eq(t_ctx_cand(&x, RT_STAGE_DECODE, d1)->overlap, 0);
	cr_assert_eq(t_ctx_cand(&x, RT_STAGE_DECODE, d1)->cost, 2.0 + NBLK);
	cr_assert_eq(t_ctx_cand(&x, RT_STAGE_DECODE, d2)->cost, (double)NBLK);
	t_expect_load(&x.t, d2, NBLK, 0);
	t_route_close(&x.t);
}

Test(route_disagg, decode_counts_every_block_even_when_the_prompt_is_in_flight)
{
	struct rt_choice c;
	struct t_ctx x;
	uint16_t p, d;

	t_ctx_open(&x, NULL, RT_TRANSFER_NONE, 0);
	p = t_ctx_add(&x, 1, RT_PREFILL);
	d = t_ctx_add(&x, 2, RT_DECODE);
	t_ctx_prompt(&x, 1);
	cr_assert_eq(rt_route_fallback(&x.t.core, &x.rq, &c), 0); /* in flight, deduplicated */
	t_expect_load(&x.t, d, NBLK, NTOK);
	for (uint32_t i = 2; i <= 3; i++) {
		cr_assert_eq(t_ctx_decode(&x, p), 0);
		cr_assert_eq(t_ctx_cand(&x, RT_STAGE_DECODE, d)->new_blocks, NBLK);
		t_expect_load(&x.t, d, i * NBLK, NTOK);
	}
	t_route_close(&x.t);
}

/* §5: fallback to decode-only, and enforce_disagg. */

/* A prefill and a decode worker, the prefill one reported over busy_kv_fraction 0.5. */
static void open_busy_prefill(struct t_ctx *x, bool enforce, uint16_t *p, uint16_t *d)
{
	struct rt_config cfg;

	t_route_config(&cfg);
	cfg.busy_kv_fraction = 0.5;
	cfg.enforce_disagg = enforce;
	t_ctx_open(x, &cfg, RT_TRANSFER_NONE, 0);
	*p = t_ctx_add(x, 1, RT_PREFILL);
	*d = t_ctx_add(x, 2, RT_DECODE);
	cr_assert_eq(rt_report_load(&x->t.rt, 1, 0, 600, 0), 0);
	t_ctx_prompt(x, 1);
}

Test(route_disagg, busy_prefill_targets_fall_back_to_decode_only)
{
	const struct rt_explain *ex;
	struct rt_policy def;
	struct t_ctx x;
	uint16_t p, d;

	open_busy_prefill(&x, false, &p, &d);
	cr_assert_eq(t_ctx_route(&x), 0);
	cr_assert_eq(x.plan.kind, RT_PLAN_FALLBACK);
	cr_assert_eq(x.plan.first.target, d);
	cr_assert_eq(t_ctx_cand(&x, RT_STAGE_PREFILL, p)->filter, RT_FILTER_BUSY_KV);
	ex = t_ctx_explain(&x, RT_STAGE_FALLBACK);
	rt_policy_default(&def);
	cr_assert_eq(ex->outcome, 0);
	cr_assert_eq(ex->policy.overlap_score_credit, def.overlap_score_credit);
	cr_assert_eq(ex->policy.assume_kv_reuse, def.assume_kv_reuse);
	cr_assert_eq(ex->policy.track_active_blocks, def.track_active_blocks);
	cr_assert_eq(ex->policy.track_prefill_tokens, def.track_prefill_tokens);
	cr_assert_eq(t_core_stats(&x.t.core).fallback_no_prefill, 1);
	cr_assert_eq(t_core_stats(&x.t.core).enforce_refused, 0);
	t_expect_load(&x.t, d, NBLK, NTOK);
	t_expect_load(&x.t, p, 0, 0);
	t_route_close(&x.t);
}

Test(route_disagg, enforce_disagg_refuses_with_the_prefill_stage_error)
{
	struct t_ctx x;
	uint16_t p, d;

	open_busy_prefill(&x, true, &p, &d);
	cr_assert_eq(t_ctx_route(&x), -EBUSY);
	cr_assert_eq(t_core_stats(&x.t.core).enforce_refused, 1);
	cr_assert_eq(t_core_stats(&x.t.core).fallback_no_prefill, 0);
	cr_assert_eq(t_core_stats(&x.t.core).overloaded, 1);
	t_expect_load(&x.t, p, 0, 0);
	t_expect_load(&x.t, d, 0, 0);
	t_route_close(&x.t);
}

Test(route_disagg, failed_prefill_falls_back_to_decode_only_and_is_counted)
{
	struct t_ctx x;
	uint16_t p, d;

	t_ctx_open(&x, NULL, RT_TRANSFER_NONE, 0);
	p = t_ctx_add(&x, 1, RT_PREFILL);
	d = t_ctx_add(&x, 2, RT_DECODE);
	t_ctx_prompt(&x, 1);
	cr_assert_eq(t_ctx_route(&x), 0);
	cr_assert_eq(x.plan.first.target, p);
	cr_assert_eq(rt_release(&x.t.core, x.plan.first.load), 0); /* prefill failed */
	cr_assert_eq(rt_route_fallback(&x.t.core, &x.rq, &x.c), 0);
	cr_assert_eq(x.c.target, d);
	cr_assert_eq(t_ctx_explain(&x, RT_STAGE_FALLBACK)->outcome, 0);
	cr_assert_eq(t_core_stats(&x.t.core).fallback_prefill_failed, 1);
	t_expect_load(&x.t, d, NBLK, NTOK); /* decode-only prefills for itself */
	t_expect_load(&x.t, p, 0, 0);
	t_route_close(&x.t);
}

Test(route_disagg, failed_prefill_under_enforce_disagg_is_refused_with_eperm)
{
	struct rt_config cfg;
	struct t_ctx x;
	uint16_t d;

	t_route_config(&cfg);
	cfg.enforce_disagg = true;
	t_ctx_open(&x, &cfg, RT_TRANSFER_NONE, 0);
	t_ctx_add(&x, 1, RT_PREFILL);
	d = t_ctx_add(&x, 2, RT_DECODE);
	t_ctx_prompt(&x, 1);
	cr_assert_eq(rt_route_fallback(&x.t.core, &x.rq, &x.c), -EPERM);
	cr_assert_eq(t_core_stats(&x.t.core).fallback_prefill_failed, 1);
	cr_assert_eq(t_core_stats(&x.t.core).enforce_refused, 1);
	t_expect_load(&x.t, d, 0, 0);
	t_route_close(&x.t);
}

/* §5: bootstrap (SGLang) picks both targets up front. */

static void open_bootstrap(struct t_ctx *x, uint32_t max_requests, uint16_t *p, uint16_t *d)
{
	struct rt_config cfg;

	t_route_config(&cfg);
	cfg.bootstrap = true;
	cfg.busy_kv_fraction = 0.5;
	if (max_requests)
		cfg.max_requests = max_requests;
	t_ctx_open(x, &cfg, RT_TRANSFER_NONE, 0);
	*p = t_ctx_add(x, 1, RT_PREFILL);
	*d = t_ctx_add(x, 2, RT_DECODE);
	t_ctx_prompt(x, 1);
}

Test(route_disagg, bootstrap_chooses_prefill_and_decode_with_a_63_bit_room)
{
	struct rt_plan first;
	struct t_ctx x;
	uint16_t p, d;

	open_bootstrap(&x, 0, &p, &d);
	cr_assert_eq(t_ctx_route(&x), 0);
	cr_assert_eq(x.plan.kind, RT_PLAN_BOOTSTRAP);
	cr_assert_eq(x.plan.first.target, p);
	cr_assert_eq(x.plan.decode.target, d);
	cr_assert_eq(x.plan.decode.worker, 2);
	cr_assert_neq(x.plan.first.load, 0);
	cr_assert_neq(x.plan.decode.load, 0);
	cr_assert_lt(x.plan.room_id, 1ull << 63);
	t_expect_load(&x.t, p, 0, NTOK);
	t_expect_load(&x.t, d, NBLK, 0);
	cr_assert_eq(t_ctx_explain(&x, RT_STAGE_DECODE)->policy.overlap_score_credit, 0.0);
	first = x.plan;
	cr_assert_eq(t_ctx_route(&x), 0);
	cr_assert_lt(x.plan.room_id, 1ull << 63);
	cr_assert_neq(x.plan.room_id, first.room_id);
	cr_assert_eq(rt_release(&x.t.core, first.first.load), 0);
	cr_assert_eq(rt_release(&x.t.core, first.decode.load), 0);
	t_expect_load(&x.t, p, 0, NTOK); /* the second request's */
	t_expect_load(&x.t, d, NBLK, 0);
	t_route_close(&x.t);
}

Test(route_disagg, bootstrap_releases_the_prefill_load_when_no_decode_target_fits)
{
	struct t_ctx x;
	uint16_t p, d;

	/* Four in-flight slots: eight refusals leak none of them. */
	open_bootstrap(&x, 4, &p, &d);
	cr_assert_eq(rt_report_load(&x.t.rt, 2, 0, 900, 0), 0);
	for (int i = 0; i < 8; i++) {
		cr_assert_eq(t_ctx_route(&x), -EBUSY);
		cr_assert_eq(x.plan.first.load, 0);
		t_expect_load(&x.t, p, 0, 0);
		t_expect_load(&x.t, d, 0, 0);
	}
	cr_assert_eq(t_core_stats(&x.t.core).overloaded, 8);
	/* Each success takes two slots, prefill and decode: all four must be free. */
	cr_assert_eq(rt_report_load(&x.t.rt, 2, 0, 0, 0), 0);
	for (int i = 0; i < 2; i++)
		cr_assert_eq(t_ctx_route(&x), 0, "in-flight slots leaked");
	cr_assert_eq(t_core_stats(&x.t.core).requests_full, 0);
	t_route_close(&x.t);
}

/* §6: topology-aware decode choice. */

Test(route_disagg, required_rack_keeps_decode_in_the_prefill_rack_even_when_loaded)
{
	struct t_ctx x;
	uint16_t p, d1, d2, d3;

	t_ctx_open(&x, NULL, RT_TRANSFER_REQUIRED, 0.0);
	p = t_ctx_add_in(&x, 1, RT_PREFILL, t_rack1);
	d1 = t_ctx_add_in(&x, 2, RT_DECODE, t_rack1);
	d2 = t_ctx_add_in(&x, 3, RT_DECODE, t_rack2);
	d3 = t_ctx_add_in(&x, 4, RT_DECODE, t_rack3);
	load_decode(&x, p, d1, 6);
	for (uint32_t i = 0; i < 3; i++) {
		t_ctx_prompt(&x, i);
		cr_assert_eq(t_ctx_route(&x), 0);
		cr_assert_eq(x.plan.first.target, p);
		cr_assert_eq(t_ctx_decode(&x, p), 0);
		cr_assert_eq(x.c.target, d1);
		cr_assert_eq(t_ctx_cand(&x, RT_STAGE_DECODE, d1)->filter, RT_ELIGIBLE);
		cr_assert_eq(t_ctx_cand(&x, RT_STAGE_DECODE, d2)->filter, RT_FILTER_TOPOLOGY);
		cr_assert_eq(t_ctx_cand(&x, RT_STAGE_DECODE, d3)->filter, RT_FILTER_TOPOLOGY);
	}
	t_expect_load(&x.t, d1, 6 + 3 * NBLK, 0);
	t_expect_load(&x.t, d2, 0, 0);
	t_route_close(&x.t);
}

/*
 * Preferred rack with weight @w: d1 shares the prefill rack and carries 6 blocks, d2 does not
 * and carries 2. Checks both explained costs; returns the chosen decode target's worker.
 */
static uint32_t preferred_choice(double w)
{
	const struct rt_candidate *c1, *c2;
	uint32_t chosen;
	double want = (6.0 + NBLK) * exp(-tanh(w));
	struct t_ctx x;
	uint16_t p, d1, d2;

	t_ctx_open(&x, NULL, RT_TRANSFER_PREFERRED, w);
	p = t_ctx_add_in(&x, 1, RT_PREFILL, t_rack1);
	d1 = t_ctx_add_in(&x, 2, RT_DECODE, t_rack1);
	d2 = t_ctx_add_in(&x, 3, RT_DECODE, t_rack2);
	load_decode(&x, p, d1, 6);
	load_decode(&x, p, d2, 2);
	t_ctx_prompt(&x, 1);
	cr_assert_eq(t_ctx_decode(&x, p), 0);
	c1 = t_ctx_cand(&x, RT_STAGE_DECODE, d1);
	c2 = t_ctx_cand(&x, RT_STAGE_DECODE, d2);
	cr_assert(c1->filter == RT_ELIGIBLE && c2->filter == RT_ELIGIBLE);
	cr_assert_eq(c1->same_domain, 1);
	cr_assert_eq(c2->same_domain, 0);
	cr_assert(c1->cost == want, "w %g: cost %.17g, expected %.17g", w, c1->cost, want);
	cr_assert(c2->cost == 2.0 + NBLK, "w %g: the other rack's cost changed", w);
	chosen = x.c.worker;
	t_route_close(&x.t);
	return chosen;
}

Test(route_disagg, preferred_rack_multiplies_same_rack_cost_by_exp_minus_tanh_weight)
{
	/* 14 * exp(-tanh(w)) against 10: w = 0.1 gives 12.67, w = 1 gives 6.54. */
	cr_assert_eq(preferred_choice(0.0), 3);
	cr_assert_eq(preferred_choice(0.1), 3);
	cr_assert_eq(preferred_choice(1.0), 2, "the discount did not flip the choice");
}

Test(route_disagg, required_rack_without_decode_fails_before_prefill)
{
	struct t_ctx x;
	uint16_t p1, p2, d;

	t_ctx_open(&x, NULL, RT_TRANSFER_REQUIRED, 0.0);
	p1 = t_ctx_add_in(&x, 1, RT_PREFILL, t_rack1);
	p2 = t_ctx_add_in(&x, 2, RT_PREFILL, t_rack2);
	d = t_ctx_add_in(&x, 3, RT_DECODE, t_rack3);
	t_ctx_prompt(&x, 1);
	cr_assert_eq(t_ctx_route(&x), -EXDEV);
	cr_assert_eq(x.plan.first.load, 0);
	cr_assert_eq(t_ctx_explain(&x, RT_STAGE_PREFILL)->outcome, -EXDEV);
	cr_assert_eq(t_ctx_cand(&x, RT_STAGE_PREFILL, p1)->filter, RT_FILTER_NO_DECODE);
	cr_assert_eq(t_ctx_cand(&x, RT_STAGE_PREFILL, p2)->filter, RT_FILTER_NO_DECODE);
	t_expect_load(&x.t, p1, 0, 0);
	t_expect_load(&x.t, p2, 0, 0);
	t_expect_load(&x.t, d, 0, 0);
	cr_assert_eq(t_core_stats(&x.t.core).no_decode_domain, 1);
	cr_assert_eq(t_core_stats(&x.t.core).fallback_no_prefill, 0);
	t_route_close(&x.t);
}

Test(route_disagg, prefill_in_a_rack_without_decode_is_filtered)
{
	struct t_ctx x;
	uint16_t p1, p2, d;

	t_ctx_open(&x, NULL, RT_TRANSFER_REQUIRED, 0.0);
	p1 = t_ctx_add_in(&x, 1, RT_PREFILL, t_rack1);
	p2 = t_ctx_add_in(&x, 2, RT_PREFILL, t_rack2);
	d = t_ctx_add_in(&x, 3, RT_DECODE, t_rack2);
	t_ctx_prompt(&x, 1);
	t_cache(&x.t, p1, x.tok, NBLK, BS); /* p1 would be the cheapest by far */
	cr_assert_eq(t_ctx_route(&x), 0);
	cr_assert_eq(x.plan.kind, RT_PLAN_DISAGG);
	cr_assert_eq(x.plan.first.target, p2);
	cr_assert_eq(t_ctx_cand(&x, RT_STAGE_PREFILL, p1)->filter, RT_FILTER_NO_DECODE);
	cr_assert_eq(t_ctx_cand(&x, RT_STAGE_PREFILL, p1)->overlap, NBLK);
	cr_assert_eq(t_ctx_cand(&x, RT_STAGE_PREFILL, p2)->filter, RT_ELIGIBLE);
	cr_assert_eq(t_ctx_decode(&x, p2), 0);
	cr_assert_eq(x.c.target, d);
	t_route_close(&x.t);
}

Test(route_disagg, per_worker_transfer_rule_overrides_the_global_one)
{
	static const struct rt_domain z1r1[] = {{"zone", "z1"}, {"rack", "r1"}};
	static const struct rt_domain z2r1[] = {{"zone", "z2"}, {"rack", "r1"}};
	static const struct rt_domain z1r2[] = {{"zone", "z1"}, {"rack", "r2"}};
	struct rt_worker_spec s = t_spec_in(RT_PREFILL, z1r1, 2);
	uint16_t own, global, d_rack, d_zone;
	struct t_ctx x;

	t_ctx_open(&x, NULL, RT_TRANSFER_REQUIRED, 0.0);
	s.transfer = (struct rt_transfer){"zone", RT_TRANSFER_REQUIRED, 0.0};
	own = t_register(&x.t, 1, &s);
	s.transfer = (struct rt_transfer){0};
	global = t_register(&x.t, 2, &s);
	s = t_spec_in(RT_DECODE, z2r1, 2);
	d_rack = t_register(&x.t, 3, &s);
	s = t_spec_in(RT_DECODE, z1r2, 2);
	d_zone = t_register(&x.t, 4, &s);
	t_ctx_prompt(&x, 1);
	for (int i = 0; i < 4; i++) {
		cr_assert_eq(t_ctx_decode(&x, own), 0);
		cr_assert_eq(x.c.target, d_zone);
		cr_assert_eq(t_ctx_cand(&x, RT_STAGE_DECODE, d_rack)->filter, RT_FILTER_TOPOLOGY);
		cr_assert_eq(t_ctx_decode(&x, global), 0);
		cr_assert_eq(x.c.target, d_rack);
		cr_assert_eq(t_ctx_cand(&x, RT_STAGE_DECODE, d_zone)->filter, RT_FILTER_TOPOLOGY);
	}
	t_route_close(&x.t);
}

Test(route_disagg, workers_without_the_required_domain_value_are_refused)
{
	struct rt_worker_spec s;
	struct t_ctx x;
	char err[256];

	t_ctx_open(&x, NULL, RT_TRANSFER_REQUIRED, 0.0);
	s = t_spec("m", RT_PREFILL, BS); /* no rack: it could never hand its KV to a decode */
	cr_assert_eq(rt_register(&x.t.rt, 1, &s, err, sizeof(err)), -EINVAL);
	cr_assert_not_null(strstr(err, "transfer domain 'rack' is required"), "%s", err);
	s = t_spec("m", RT_DECODE, BS); /* no rack: no prefill target's rack could match */
	cr_assert_eq(rt_register(&x.t.rt, 2, &s, err, sizeof(err)), -EINVAL);
	cr_assert_not_null(strstr(err, "'rack'"), "%s", err);
	/* A prefill worker with its own rule on another domain needs that one instead. */
	s = t_spec_in(RT_PREFILL, t_rack1, 1);
	s.transfer = (struct rt_transfer){"zone", RT_TRANSFER_REQUIRED, 0.0};
	cr_assert_eq(rt_register(&x.t.rt, 3, &s, err, sizeof(err)), -EINVAL);
	cr_assert_not_null(strstr(err, "'zone'"), "%s", err);
	t_ctx_add_in(&x, 4, RT_PREFILL, t_rack1);
	t_ctx_add_in(&x, 5, RT_DECODE, t_rack1);
	t_ctx_prompt(&x, 1);
	cr_assert_eq(t_ctx_route(&x), 0);
	t_route_close(&x.t);
}

/* Decode workers need a prefill stage: without one they serve decode-only, or not at all. */
Test(route_disagg, decode_workers_without_prefill_fall_back_or_are_refused)
{
	struct rt_config cfg;
	struct t_ctx x;
	uint16_t d;

	t_ctx_open(&x, NULL, RT_TRANSFER_NONE, 0);
	d = t_ctx_add(&x, 1, RT_DECODE);
	t_ctx_prompt(&x, 1);
	cr_assert_eq(t_ctx_route(&x), 0);
	cr_assert_eq(x.plan.kind, RT_PLAN_FALLBACK);
	cr_assert_eq(x.plan.first.target, d);
	cr_assert_eq(t_core_stats(&x.t.core).fallback_no_prefill, 1);
	t_route_close(&x.t);

	t_route_config(&cfg);
	cfg.enforce_disagg = true;
	t_ctx_open(&x, &cfg, RT_TRANSFER_NONE, 0);
	d = t_ctx_add(&x, 1, RT_DECODE);
	t_ctx_prompt(&x, 1);
	cr_assert_eq(t_ctx_route(&x), -ENODEV);
	cr_assert_eq(t_core_stats(&x.t.core).enforce_refused, 1);
	t_expect_load(&x.t, d, 0, 0);
	t_route_close(&x.t);
}

/* A request pinned to a decode target outside every prefill rack fails before prefill. */
Test(route_disagg, pinned_decode_outside_the_required_rack_fails_before_prefill)
{
	struct t_ctx x;
	uint16_t p, d1, d2;

	t_ctx_open(&x, NULL, RT_TRANSFER_REQUIRED, 0.0);
	p = t_ctx_add_in(&x, 1, RT_PREFILL, t_rack1);
	d1 = t_ctx_add_in(&x, 2, RT_DECODE, t_rack1);
	d2 = t_ctx_add_in(&x, 3, RT_DECODE, t_rack2);
	t_ctx_prompt(&x, 1);
	x.rq.pin_target = d2;
	cr_assert_eq(t_ctx_route(&x), -EXDEV);
	cr_assert_eq(t_ctx_cand(&x, RT_STAGE_PREFILL, p)->filter, RT_FILTER_NO_DECODE);
	t_expect_load(&x.t, p, 0, 0);
	x.rq.pin_target = d1;
	cr_assert_eq(t_ctx_route(&x), 0);
	cr_assert_eq(x.plan.first.target, p);
	t_route_close(&x.t);
}

/* A peek never moves the counters operators watch for fallbacks and refusals. */
Test(route_disagg, peeks_count_no_fallback_or_refusal)
{
	struct rt_core_stats st;
	struct t_ctx x;

	t_ctx_open(&x, NULL, RT_TRANSFER_NONE, 0);
	t_ctx_add(&x, 1, RT_DECODE);
	t_ctx_prompt(&x, 1);
	x.rq.peek = true;
	cr_assert_eq(t_ctx_route(&x), 0);
	cr_assert_eq(x.plan.kind, RT_PLAN_FALLBACK);
	cr_assert_eq(rt_route_fallback(&x.t.core, &x.rq, &x.c), 0);
	st = t_core_stats(&x.t.core);
	cr_assert_eq(st.fallback_no_prefill + st.fallback_prefill_failed + st.enforce_refused, 0);
	cr_assert_eq(st.peeks, 2);
	t_route_close(&x.t);
}

/* A prompt too long for a stage is explained, not left to the previous decision's text. */
Test(route_disagg, prompt_too_long_is_explained)
{
	struct rt_config cfg;
	struct t_ctx x;

	t_route_config(&cfg);
	cfg.max_prompt_blocks = T_CTX_TOKENS / T_BS - 1;
	t_ctx_open(&x, &cfg, RT_TRANSFER_NONE, 0);
	t_ctx_add(&x, 1, RT_AGGREGATED);
	t_ctx_prompt(&x, 1);
	x.rq.ntokens = (T_CTX_TOKENS / T_BS - 1) * T_BS;
	cr_assert_eq(t_ctx_route(&x), 0);
	x.rq.ntokens = T_CTX_TOKENS;
	cr_assert_eq(t_ctx_route(&x), -E2BIG);
	cr_assert_eq(t_ctx_explain(&x, RT_STAGE_AGGREGATED)->outcome, -E2BIG);
	cr_assert_eq(t_ctx_explain(&x, RT_STAGE_AGGREGATED)->ncand, 0);
	t_route_close(&x.t);
}
