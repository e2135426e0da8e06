/*
 * Cost of a routing stage (routing-semantics §4): every figure of the cost formula against hand
 * arithmetic, each policy knob and its per-request override, the pin and busy filters with their
 * outcomes, an unknown model, and prompts shorter than one block. The two-target situation most
 * tests score is struct t_two (route_fixture.h).
 */
#include <criterion/criterion.h>
#include <errno.h>
#include <math.h>
#include <stdlib.h>

#include "helpers.h"
#include "route_fixture.h"

#define BS T_BS	  /* block size of every worker here */
#define EPS T_EPS /* costs are sums of a few exact binary fractions */

TestSuite(route_cost);

static uint8_t filter_of(const struct t_route *t, uint16_t target)
{
	return t_cand(&t->core, target)->filter;
}

/* Open the situation under @cfg, route P with overrides @ov (NULL: none), check A and B. */
static struct rt_plan two_route(struct t_two *s, const struct rt_config *cfg,
				const struct rt_overrides *ov, const struct t_fig *fa,
				const struct t_fig *fb)
{
	struct rt_request rq;
	struct rt_plan plan;

	t_two_open(s, cfg);
	rq = t_two_request(s);
	if (ov)
		rq.ov = *ov;
	plan = t_route_ok(&s->t, &rq);
	t_expect_cand(&s->t, s->a, fa);
	t_expect_cand(&s->t, s->b, fb);
	return plan;
}

static const struct rt_policy *last_policy(const struct t_route *t)
{
	return &rt_core_explain(&t->core, RT_STAGE_AGGREGATED)->policy;
}

Test(route_cost, cost_figures_follow_the_formula_with_defaults)
{
	const struct rt_explain *ex;
	struct rt_plan plan;
	struct t_two s;

	plan = two_route(&s, NULL, NULL, &t_two_a, &t_two_b);
	ex = rt_core_explain(&s.t.core, RT_STAGE_AGGREGATED);
	cr_assert_eq(ex->outcome, 0);
	cr_assert_eq(ex->blocks, 6);
	cr_assert_eq(ex->ncand, 2);
	cr_assert_eq(ex->cand[ex->chosen].target, s.a);
	cr_assert_eq(plan.first.target, s.a);
	cr_assert_eq(plan.first.worker, 1);
	cr_assert_eq(plan.first.overlap, 4);
	/* A now carries P: 6 blocks, 100 - 4 * 16 = 36 prefill tokens; B still only Q. */
	cr_assert_eq(t_load_blocks(&s.t, s.a), 6);
	cr_assert_eq(t_load_prefill(&s.t, s.a), 36);
	cr_assert_eq(t_load_blocks(&s.t, s.b), 3);
	cr_assert_eq(t_load_prefill(&s.t, s.b), 48);
	t_route_close(&s.t);
}

Test(route_cost, overlap_credit_lowers_cost_by_one_block_per_cached_block)
{
	struct t_route t;
	struct rt_request rq;
	struct rt_plan plan;
	uint32_t tok[100];
	uint16_t tg[2];

	t_open_agg(&t, NULL, tg, 2);
	/* A holds k of the 6 blocks of a fresh 100-token prompt, both idle:
	 * A: prefill 6.25, adjusted 6.25 - k, decode 0 + 6, cost 12.25 - k; B: 12.25. */
	for (uint32_t k = 1; k <= 6; k++) {
		const struct t_fig a = {k, 6, 6.25, 6, 12.25 - k}, b = {0, 6, 6.25, 6, 12.25};

		t_tokens(tok, 100, 100 + k);
		t_cache(&t, tg[0], tok, k, BS);
		rq = t_request(&t, "m", tok, 100, 0);
		rq.peek = k < 6;
		plan = t_route_ok(&t, &rq);
		t_expect_cand(&t, tg[0], &a);
		t_expect_cand(&t, tg[1], &b);
		cr_assert_eq(plan.first.target, tg[0]);
		cr_assert_eq(plan.first.overlap, k);
	}
	/* The real route at k = 6 leaves 100 - 6 * 16 = 4 tokens to prefill. */
	cr_assert_eq(t_load_prefill(&t, tg[0]), 4);
	t_route_close(&t);
}

Test(route_cost, adjusted_prefill_clamps_at_zero)
{
	/* Credit 3, A holds all 6 blocks of P and has R (32 tokens, 2 blocks) in flight, B holds 3:
	 * A: prefill (32 + 100)/16 = 8.25, adjusted max(8.25 - 18, 0) = 0, decode 2 + 6, cost 8;
	 * B: prefill 100/16 = 6.25, adjusted max(6.25 - 9, 0) = 0, decode 0 + 6, cost 6.
	 * B wins; unclamped, A (-9.75 + 8 = -1.75) would beat B (-2.75 + 6 = 3.25). */
	static const struct t_fig a = {6, 6, 8.25, 8, 8}, b = {3, 6, 6.25, 6, 6};
	struct rt_config cfg;
	struct t_route t;
	struct rt_request rq;
	struct rt_plan plan;
	uint32_t p[100], r[32];
	uint16_t tg[2];

	t_route_config(&cfg);
	cfg.policy.overlap_score_credit = 3.0;
	t_open_agg(&t, &cfg, tg, 2);
	t_tokens(p, 100, 1);
	t_tokens(r, 32, 5);
	t_cache(&t, tg[0], p, 6, BS);
	t_cache(&t, tg[1], p, 3, BS);
	t_load_on(&t, r, 32, tg[0]);
	rq = t_request(&t, "m", p, 100, 0);
	plan = t_route_ok(&t, &rq);
	t_expect_cand(&t, tg[0], &a);
	t_expect_cand(&t, tg[1], &b);
	cr_assert_eq(plan.first.target, tg[1]);
	/* B prefills what it lacks: 100 - 3 * 16 = 52 tokens. */
	cr_assert_eq(t_load_prefill(&t, tg[1]), 52);
	t_route_close(&t);
}

Test(route_cost, credit_knob_and_override_scale_the_overlap_credit)
{
	/* Credit 0.5: A adjusted 6.25 - 0.5 * 4 = 4.25, cost 4.25 + 6 = 10.25; B (no overlap)
	 * keeps 15.25. */
	static const struct t_fig a = {4, 6, 6.25, 6, 10.25};
	struct rt_overrides ov = {.set = RT_OV_CREDIT, .overlap_score_credit = 0.5};
	struct rt_config cfg;
	struct t_two s;

	t_route_config(&cfg);
	cfg.policy.overlap_score_credit = 0.5;
	two_route(&s, &cfg, NULL, &a, &t_two_b);
	cr_assert_float_eq(last_policy(&s.t)->overlap_score_credit, 0.5, EPS);
	t_route_close(&s.t);

	two_route(&s, NULL, &ov, &a, &t_two_b);
	cr_assert_float_eq(last_policy(&s.t)->overlap_score_credit, 0.5, EPS);
	t_route_close(&s.t);

	/* The override wins over the config: credit 1 again gives the default figures. */
	ov.overlap_score_credit = 1.0;
	two_route(&s, &cfg, &ov, &t_two_a, &t_two_b);
	t_route_close(&s.t);
}

Test(route_cost, load_scale_knob_and_override_weight_prefill_against_decode)
{
	/* Scale 2: A 2 * 2.25 + 6 = 10.5; B 2 * 9.25 + 6 = 24.5. */
	static const struct t_fig a = {4, 6, 6.25, 6, 10.5}, b = {0, 3, 9.25, 6, 24.5};
	const struct rt_overrides ov = {.set = RT_OV_LOAD_SCALE, .prefill_load_scale = 2.0};
	struct rt_config cfg;
	struct t_two s;

	t_route_config(&cfg);
	cfg.policy.prefill_load_scale = 2.0;
	two_route(&s, &cfg, NULL, &a, &b);
	t_route_close(&s.t);
	two_route(&s, NULL, &ov, &a, &b);
	cr_assert_float_eq(last_policy(&s.t)->prefill_load_scale, 2.0, EPS);
	t_route_close(&s.t);
}

Test(route_cost, kv_reuse_off_counts_every_prompt_block_as_new)
{
	/* No dedup: B's 3 blocks of Q no longer count for P: new 6, decode 3 + 6 = 9,
	 * cost 9.25 + 9 = 18.25; A is unchanged (new 6 either way). */
	static const struct t_fig b = {0, 6, 9.25, 9, 18.25};
	const struct rt_overrides ov = {.set = RT_OV_KV_REUSE, .assume_kv_reuse = false};
	const uint64_t b_after[3] = {9, 9, 6}; /* 3 + 6 without dedup; 3 + 3 with it */
	struct rt_config cfg;
	struct rt_request rq;
	struct t_two s;

	for (int via = 0; via < 3; via++) {
		t_route_config(&cfg);
		cfg.policy.assume_kv_reuse = via != 0;
		two_route(&s, &cfg, via == 1 ? &ov : NULL, &t_two_a, via == 2 ? &t_two_b : &b);
		/* P again, pinned to B: the blocks B records follow the same rule. */
		rq = t_two_request(&s);
		if (via == 1)
			rq.ov = ov;
		rq.pin_target = s.b;
		t_route_ok(&s.t, &rq);
		cr_assert_eq(t_load_blocks(&s.t, s.b), b_after[via], "via %d: %llu", via,
			     (unsigned long long)t_load_blocks(&s.t, s.b));
		t_route_close(&s.t);
	}
}

Test(route_cost, prefill_tokens_off_scores_no_prefill_and_records_none)
{
	/* No prefill: adjusted 0 for both, cost = decode: A 0 + 6 = 6, B 3 + 3 = 6 (a tie). */
	static const struct t_fig a = {4, 6, 0, 6, 6}, b = {0, 3, 0, 6, 6};
	const struct rt_overrides ov = {.set = RT_OV_PREFILL_TOKENS, .track_prefill_tokens = false};
	struct rt_config cfg;
	struct rt_plan plan;
	struct t_two s;

	t_route_config(&cfg);
	cfg.policy.track_prefill_tokens = false;
	plan = two_route(&s, &cfg, NULL, &a, &b);
	/* Q recorded no prefill tokens either; the winner holds P's 6 blocks. */
	cr_assert_eq(t_load_prefill(&s.t, s.a) + t_load_prefill(&s.t, s.b), 0);
	cr_assert_eq(t_load_blocks(&s.t, plan.first.target), 6);
	t_route_close(&s.t);

	plan = two_route(&s, NULL, &ov, &a, &b);
	cr_assert_eq(t_load_prefill(&s.t, s.a) + t_load_prefill(&s.t, s.b), 48, "only Q's");
	cr_assert_eq(t_load_blocks(&s.t, plan.first.target), 6);
	t_route_close(&s.t);
}

Test(route_cost, active_blocks_off_gives_zero_decode_blocks)
{
	/* Decode 0: A cost 2.25, B 9.25. Nothing is in flight, so B's new blocks are all 6. */
	static const struct t_fig a = {4, 6, 6.25, 0, 2.25}, b = {0, 6, 9.25, 0, 9.25};
	struct rt_config cfg;
	struct rt_plan plan;
	struct t_two s;

	t_route_config(&cfg);
	cfg.policy.track_active_blocks = false;
	plan = two_route(&s, &cfg, NULL, &a, &b);
	cr_assert_eq(plan.first.target, s.a);
	cr_assert_eq(t_load_blocks(&s.t, s.a) + t_load_blocks(&s.t, s.b), 0);
	cr_assert_eq(t_load_prefill(&s.t, s.a), 36);
	t_route_close(&s.t);
}

Test(route_cost, invalid_overrides_are_rejected)
{
	struct t_two s;
	struct rt_request rq;
	struct rt_plan plan;

	t_two_open(&s, NULL);
	rq = t_two_request(&s);
	rq.ov = (struct rt_overrides){.set = RT_OV_CREDIT, .overlap_score_credit = NAN};
	cr_assert_eq(rt_route(&s.t.core, &rq, &plan), -EINVAL);
	rq.ov = (struct rt_overrides){.set = RT_OV_TEMPERATURE, .temperature = -0.5};
	cr_assert_eq(rt_route(&s.t.core, &rq, &plan), -EINVAL);
	rq.ov = (struct rt_overrides){.set = RT_OV_LOAD_SCALE, .prefill_load_scale = INFINITY};
	cr_assert_eq(rt_route(&s.t.core, &rq, &plan), -EINVAL);
	/* Nothing recorded: A idle, B only Q. */
	cr_assert_eq(t_load_blocks(&s.t, s.a) + t_load_prefill(&s.t, s.a), 0);
	cr_assert_eq(t_load_blocks(&s.t, s.b), 3);
	t_route_close(&s.t);
}

Test(route_cost, pin_restricts_to_the_pinned_target_even_when_dearer)
{
	struct t_two s;
	struct rt_request rq;
	struct rt_plan plan;

	t_two_open(&s, NULL);
	rq = t_two_request(&s);
	rq.pin_target = s.b;
	plan = t_route_ok(&s.t, &rq);
	cr_assert_eq(plan.first.target, s.b);
	cr_assert_eq(filter_of(&s.t, s.a), RT_FILTER_PIN);
	t_expect_cand(&s.t, s.b, &t_two_b); /* 15.25, though A costs 8.25 */
	t_route_close(&s.t);
}

Test(route_cost, pin_outside_the_pool_or_no_target_gives_enodev)
{
	struct rt_worker_spec other = t_spec("other", RT_AGGREGATED, BS);
	struct rt_core_stats before;
	struct t_route t;
	struct rt_request rq;
	struct rt_plan plan;
	uint32_t tok[32];
	uint16_t tg[1], o;

	t_open_agg(&t, NULL, tg, 1);
	o = t_register(&t, 9, &other);
	t_tokens(tok, 32, 3);
	rq = t_request(&t, "m", tok, 32, 0);
	before = t_core_stats(&t.core);
	rq.pin_target = o; /* a target of another model */
	cr_assert_eq(rt_route(&t.core, &rq, &plan), -ENODEV);
	cr_assert_eq(filter_of(&t, tg[0]), RT_FILTER_PIN);
	cr_assert_eq(rt_core_explain(&t.core, RT_STAGE_AGGREGATED)->outcome, -ENODEV);
	rq.pin_target = 50; /* no target at all */
	cr_assert_eq(rt_route(&t.core, &rq, &plan), -ENODEV);
	/* The model's last worker leaves: nothing to route to. */
	rq.pin_target = RT_NO_PIN;
	cr_assert_eq(rt_unregister(&t.rt, 1), 0);
	cr_assert_eq(rt_route(&t.core, &rq, &plan), -ENODEV);
	cr_assert_eq(t_core_stats(&t.core).no_target, before.no_target + 3);
	cr_assert_eq(t_core_stats(&t.core).overloaded, before.overloaded);
	cr_assert_eq(t_load_blocks(&t, tg[0]) + t_load_blocks(&t, o), 0);
	t_route_close(&t);
}

/* Peek @rq and return the target it would take (asserting success). */
static uint16_t peek_target(struct t_route *t, struct rt_request rq)
{
	rq.peek = true;
	return t_route_ok(t, &rq).first.target;
}

Test(route_cost, busy_kv_excludes_above_the_fraction_but_not_at_it)
{
	/* Capacity 1000, fraction 0.5: busy above 500 reported used blocks. A is the cheaper
	 * (8.25 against B's 12.25: A holds 4 blocks of P, both idle). */
	struct rt_config cfg;
	struct rt_core_stats before;
	struct t_route t;
	struct rt_request rq;
	struct rt_plan plan;
	uint32_t p[100];
	uint16_t tg[2];

	t_route_config(&cfg);
	cfg.busy_kv_fraction = 0.5;
	t_open_agg(&t, &cfg, tg, 2);
	t_tokens(p, 100, 1);
	t_cache(&t, tg[0], p, 4, BS);
	rq = t_request(&t, "m", p, 100, 0);
	cr_assert_eq(peek_target(&t, rq), tg[0]);
	cr_assert_eq(rt_report_load(&t.rt, 1, 0, 501, 0), 0);
	cr_assert_eq(peek_target(&t, rq), tg[1]);
	cr_assert_eq(filter_of(&t, tg[0]), RT_FILTER_BUSY_KV);
	cr_assert_eq(rt_report_load(&t.rt, 1, 0, 500, 0), 0);
	cr_assert_eq(peek_target(&t, rq), tg[0]);
	cr_assert_eq(filter_of(&t, tg[0]), RT_ELIGIBLE);
	/* Both above: overloaded, not "no target". */
	cr_assert_eq(rt_report_load(&t.rt, 1, 0, 501, 0), 0);
	cr_assert_eq(rt_report_load(&t.rt, 2, 0, 1000, 0), 0);
	before = t_core_stats(&t.core);
	cr_assert_eq(rt_route(&t.core, &rq, &plan), -EBUSY);
	cr_assert_eq(rt_core_explain(&t.core, RT_STAGE_AGGREGATED)->outcome, -EBUSY);
	cr_assert_eq(t_core_stats(&t.core).overloaded, before.overloaded + 1);
	cr_assert_eq(t_core_stats(&t.core).no_target, before.no_target);
	/* Reports never became predicted load. */
	for (int i = 0; i < 2; i++)
		cr_assert_eq(t_load_blocks(&t, tg[i]) + t_load_prefill(&t, tg[i]), 0);
	t_route_close(&t);
}

Test(route_cost, predicted_blocks_never_trip_the_reported_kv_threshold)
{
	/* 600 predicted blocks on A, over the 500 the threshold allows, yet only reports count. */
	struct rt_config cfg;
	struct t_route t;
	struct rt_request rq;
	uint32_t *big = t_calloc(9600, sizeof(*big)), p[32];
	uint16_t tg[1];
	rt_load_t h;

	t_route_config(&cfg);
	cfg.busy_kv_fraction = 0.5;
	t_open_agg(&t, &cfg, tg, 1);
	t_tokens(big, 9600, 2);
	t_tokens(p, 32, 3);
	rq = t_request(&t, "m", p, 32, 0);
	h = t_load_on(&t, big, 9600, tg[0]);
	cr_assert_eq(t_load_blocks(&t, tg[0]), 600);
	cr_assert_eq(peek_target(&t, rq), tg[0]);
	cr_assert_eq(rt_report_load(&t.rt, 1, 0, 501, 0), 0);
	cr_assert_eq(rt_route(&t.core, &rq, &(struct rt_plan){0}), -EBUSY);
	cr_assert_eq(t_load_blocks(&t, tg[0]), 600);
	/* Releasing the prediction does not clear the report. */
	cr_assert_eq(rt_release(&t.core, h), 0);
	cr_assert_eq(t_load_blocks(&t, tg[0]), 0);
	cr_assert_eq(rt_route(&t.core, &rq, &(struct rt_plan){0}), -EBUSY);
	free(big);
	t_route_close(&t);
}

Test(route_cost, busy_prefill_takes_the_larger_of_predicted_and_reported)
{
	struct rt_config cfg;
	struct rt_core_stats before;
	struct t_route t;
	struct rt_request rq;
	struct rt_plan plan;
	uint32_t r[100], r2[16], p[32];
	uint16_t tg[2];
	rt_load_t h, h2;

	t_route_config(&cfg);
	cfg.busy_prefill_tokens = 100;
	t_open_agg(&t, &cfg, tg, 2);
	t_tokens(r, 100, 3);
	t_tokens(r2, 16, 4);
	t_tokens(p, 32, 10);
	rq = t_request(&t, "m", p, 32, 0);
	h = t_load_on(&t, r, 100, tg[0]); /* A: 100 predicted, exactly the limit */
	peek_target(&t, rq);
	cr_assert_eq(filter_of(&t, tg[0]), RT_ELIGIBLE);
	cr_assert_eq(rt_report_load(&t.rt, 1, 0, 0, 101), 0); /* max(100, 101) > 100 */
	cr_assert_eq(peek_target(&t, rq), tg[1]);
	cr_assert_eq(filter_of(&t, tg[0]), RT_FILTER_BUSY_PREFILL);
	cr_assert_eq(rt_report_load(&t.rt, 1, 0, 0, 0), 0);
	h2 = t_load_on(&t, r2, 16, tg[0]); /* A: 116 predicted, 0 reported */
	cr_assert_eq(peek_target(&t, rq), tg[1]);
	cr_assert_eq(filter_of(&t, tg[0]), RT_FILTER_BUSY_PREFILL);
	cr_assert_eq(rt_report_load(&t.rt, 2, 0, 0, 100), 0);
	cr_assert_eq(peek_target(&t, rq), tg[1]);
	cr_assert_eq(rt_report_load(&t.rt, 2, 0, 0, 101), 0);
	before = t_core_stats(&t.core);
	cr_assert_eq(rt_route(&t.core, &rq, &plan), -EBUSY);
	cr_assert_eq(filter_of(&t, tg[1]), RT_FILTER_BUSY_PREFILL);
	cr_assert_eq(t_core_stats(&t.core).overloaded, before.overloaded + 1);
	/* Reports left the predictions alone, and the first tokens leave the reports alone. */
	cr_assert_eq(t_load_prefill(&t, tg[0]), 116);
	cr_assert_eq(t_load_prefill(&t, tg[1]), 0);
	cr_assert_eq(rt_first_token(&t.core, h), 0);
	cr_assert_eq(rt_first_token(&t.core, h2), 0);
	cr_assert_eq(t_route_ok(&t, &rq).first.target, tg[0]);
	cr_assert_eq(filter_of(&t, tg[1]), RT_FILTER_BUSY_PREFILL);
	t_route_close(&t);
}

Test(route_cost, unknown_model_gives_enoent)
{
	struct rt_core_stats before;
	struct t_route t;
	struct rt_request rq;
	struct rt_plan plan;
	uint32_t tok[32];
	uint16_t tg[1];

	t_open_agg(&t, NULL, tg, 1);
	t_tokens(tok, 32, 1);
	rq = t_request(&t, "m", tok, 32, 0);
	before = t_core_stats(&t.core);
	rq.model = 1; /* only model 0 exists */
	cr_assert_eq(rt_route(&t.core, &rq, &plan), -ENOENT);
	rq.model = UINT32_MAX;
	rq.peek = true;
	cr_assert_eq(rt_route(&t.core, &rq, &plan), -ENOENT);
	cr_assert_eq(t_core_stats(&t.core).no_target, before.no_target);
	cr_assert_eq(t_load_blocks(&t, tg[0]) + t_load_prefill(&t, tg[0]), 0);
	t_route_close(&t);
}

Test(route_cost, prompt_shorter_than_one_block_still_routes)
{
	/* 10 tokens, 0 blocks: prefill 10/16 = 0.625, decode 0, cost 0.625; no tokens: cost 0. */
	static const struct t_fig f = {0, 0, 0.625, 0, 0.625}, empty = {0, 0, 0, 0, 0};
	struct t_route t;
	struct rt_request rq;
	struct rt_plan plan;
	uint32_t tok[10];
	uint16_t tg[1];

	t_open_agg(&t, NULL, tg, 1);
	t_tokens(tok, 10, 1);
	rq = t_request(&t, "m", tok, 10, 0);
	plan = t_route_ok(&t, &rq);
	cr_assert_eq(rt_core_explain(&t.core, RT_STAGE_AGGREGATED)->blocks, 0);
	t_expect_cand(&t, tg[0], &f);
	cr_assert_eq(plan.first.target, tg[0]);
	cr_assert_eq(t_load_blocks(&t, tg[0]), 0);
	cr_assert_eq(t_load_prefill(&t, tg[0]), 10);
	cr_assert_eq(rt_release(&t.core, plan.first.load), 0);
	rq = t_request(&t, "m", NULL, 0, 0);
	t_route_ok(&t, &rq);
	t_expect_cand(&t, tg[0], &empty);
	t_route_close(&t);
}
