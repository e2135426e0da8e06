/*
 * Baseline routing policies (rt_config.policy_kind): round-robin, random and least-loaded choose
 * among the targets the filters left (pins, topology, busy) and record load as the KV-aware
 * default does; a peek moves no cursor; a disaggregated model still goes prefill, then decode;
 * the default stays kv with its figures unchanged; the names parse and print both ways.
 */
#include <criterion/criterion.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "helpers.h"
#include "route_fixture.h"

#define BS T_BS
#define NTOK 32u /* prompt of the aggregated tests: 2 blocks */

TestSuite(route_policy);

static void config(struct rt_config *cfg, enum rt_policy_kind kind)
{
	t_route_config(cfg);
	cfg->policy_kind = kind;
}

/* Route a fresh NTOK-token prompt (named by @tag) on @t; returns the plan (not released). */
static struct rt_plan route_tag(struct t_route *t, uint32_t tag, int32_t pin, bool peek)
{
	static uint32_t tok[NTOK];
	struct rt_request rq;

	t_tokens(tok, NTOK, tag);
	rq = t_request(t, "m", tok, NTOK, 0);
	rq.pin_target = pin;
	rq.peek = peek;
	return t_route_ok(t, &rq);
}

/* Index of @target in @tg[0..n), failing the test when it is none of them. */
static uint32_t which(const uint16_t *tg, uint32_t n, uint16_t target)
{
	for (uint32_t i = 0; i < n; i++)
		if (tg[i] == target)
			return i;
	cr_assert_fail("chose target %u, not one of the %u expected", target, n);
	return n;
}

/* Round-robin. */

Test(route_policy, round_robin_cycles_through_targets_in_pool_order)
{
	struct rt_config cfg;
	struct t_route t;
	rt_load_t h[8];
	uint16_t tg[4];

	config(&cfg, RT_POLICY_ROUND_ROBIN);
	t_open_agg(&t, &cfg, tg, 4);
	/* tg[2] caches every prompt block: kv would follow it, round-robin does not. */
	for (uint32_t i = 0; i < 8; i++) {
		uint32_t tok[NTOK];

		t_tokens(tok, NTOK, 100 + i);
		t_cache(&t, tg[2], tok, NTOK / BS, BS);
	}
	for (uint32_t i = 0; i < 8; i++) {
		struct rt_plan plan = route_tag(&t, 100 + i, RT_NO_PIN, false);

		cr_assert_eq(plan.first.target, tg[i % 4], "decision %u", i);
		h[i] = plan.first.load;
	}
	/* Load recorded as kv records it: 2 blocks a request; prefill tokens but what is cached. */
	t_expect_load(&t, tg[0], 2 * 2, 2 * NTOK);
	t_expect_load(&t, tg[2], 2 * 2, 0);
	for (uint32_t i = 0; i < 8; i++)
		cr_assert_eq(rt_release(&t.core, h[i]), 0);
	cr_assert_eq(rt_release(&t.core, h[0]), -ESTALE, "a handle released twice");
	for (uint32_t i = 0; i < 4; i++)
		t_expect_load(&t, tg[i], 0, 0);
	t_route_close(&t);
}

Test(route_policy, round_robin_skips_pinned_out_and_busy_targets)
{
	static const uint32_t want[] = {0, 2, 3, 0, 2};
	struct rt_config cfg;
	struct t_route t;
	struct rt_plan plan;
	uint16_t tg[4];

	config(&cfg, RT_POLICY_ROUND_ROBIN);
	cfg.busy_kv_fraction = 0.5;
	t_open_agg(&t, &cfg, tg, 4);
	cr_assert_eq(rt_report_load(&t.rt, 2, 0, 900, 0), 0); /* tg[1] busy */
	for (uint32_t i = 0; i < 5; i++) {
		plan = route_tag(&t, i, RT_NO_PIN, false);
		cr_assert_eq(plan.first.target, tg[want[i]], "decision %u", i);
		cr_assert_eq(t_cand(&t.core, tg[1])->filter, RT_FILTER_BUSY_KV);
	}
	/* The cursor stands after tg[2]; a pin to tg[0] takes it and moves the cursor past it. */
	plan = route_tag(&t, 10, tg[0], false);
	cr_assert_eq(plan.first.target, tg[0]);
	cr_assert_eq(t_cand(&t.core, tg[3])->filter, RT_FILTER_PIN);
	plan = route_tag(&t, 11, RT_NO_PIN, false);
	cr_assert_eq(plan.first.target, tg[2], "tg[1] is busy, so tg[2] follows tg[0]");
	/* A pin to the busy target: nothing eligible, overloaded. */
	{
		uint32_t tok[NTOK];
		struct rt_request rq;

		t_tokens(tok, NTOK, 12);
		rq = t_request(&t, "m", tok, NTOK, 0);
		rq.pin_target = tg[1];
		cr_assert_eq(rt_route(&t.core, &rq, &plan), -EBUSY);
	}
	cr_assert_eq(route_tag(&t, 13, RT_NO_PIN, false).first.target, tg[3]);
	t_route_close(&t);
}

Test(route_policy, peeks_move_no_round_robin_cursor)
{
	struct rt_config cfg;
	struct t_route t;
	uint16_t tg[3];

	config(&cfg, RT_POLICY_ROUND_ROBIN);
	t_open_agg(&t, &cfg, tg, 3);
	for (uint32_t i = 0; i < 6; i++) {
		struct rt_plan pk1 = route_tag(&t, i, RT_NO_PIN, true);
		struct rt_plan pk2 = route_tag(&t, i, RT_NO_PIN, true);
		struct rt_plan plan = route_tag(&t, i, RT_NO_PIN, false);

		cr_assert_eq(pk1.first.target, tg[i % 3], "decision %u", i);
		cr_assert_eq(pk2.first.target, pk1.first.target);
		cr_assert_eq(plan.first.target, pk1.first.target);
	}
	cr_assert_eq(t_core_stats(&t.core).peeks, 12);
	t_route_close(&t);
}

/* Random. */

/* Route and release @n fresh prompts on @t; count[i]: how often tg[i] was chosen. */
static void sample(struct t_route *t, const uint16_t *tg, uint32_t k, uint32_t n,
		   uint32_t *count)
{
	memset(count, 0, k * sizeof(*count));
	for (uint32_t i = 0; i < n; i++) {
		struct rt_plan plan = route_tag(t, i % 64, RT_NO_PIN, false);

		count[which(tg, k, plan.first.target)]++;
		cr_assert_eq(rt_release(&t->core, plan.first.load), 0);
	}
}

Test(route_policy, random_is_uniform_over_eligible_targets_and_never_picks_a_filtered_one)
{
	const uint32_t n = 8000;
	struct rt_config cfg;
	struct t_route t;
	uint32_t count[5], tok[NTOK];
	uint16_t tg[5];

	config(&cfg, RT_POLICY_RANDOM);
	cfg.seed = 42;
	cfg.busy_kv_fraction = 0.5;
	t_open_agg(&t, &cfg, tg, 5);
	cr_assert_eq(rt_report_load(&t.rt, 2, 0, 900, 0), 0); /* tg[1] busy */
	t_tokens(tok, NTOK, 0);
	t_cache(&t, tg[0], tok, NTOK / BS, BS); /* kv would favour tg[0]; random must not */
	sample(&t, tg, 5, n, count);
	cr_assert_eq(count[1], 0, "the busy target was chosen %u times", count[1]);
	/* Binomial(n, 1/4) each: 5 sigma is ~194 around 2000, far inside what a bias (the first
	 * or last eligible favoured, the busy one's share handed to a neighbour) would show. */
	for (uint32_t i = 0; i < 5; i++) {
		double mean = n / 4.0, sd = sqrt(n * 0.25 * 0.75);

		if (i == 1)
			continue;
		cr_assert_leq(fabs(count[i] - mean), 5.0 * sd, "tg[%u] chosen %u of %u times", i,
			      count[i], n);
	}
	t_route_close(&t);
}

Test(route_policy, random_honours_a_pin_and_same_seed_repeats_the_choices)
{
	struct rt_config cfg;
	struct t_route a, b;
	uint16_t ta[4], tb[4];
	uint32_t same = 0;

	config(&cfg, RT_POLICY_RANDOM);
	t_open_agg(&a, &cfg, ta, 4);
	t_open_agg(&b, &cfg, tb, 4);
	for (uint32_t i = 0; i < 100; i++) {
		struct rt_plan pk = route_tag(&a, i, RT_NO_PIN, true);
		struct rt_plan pa = route_tag(&a, i, RT_NO_PIN, false);
		struct rt_plan pb = route_tag(&b, i, RT_NO_PIN, false);

		cr_assert_eq(pk.first.target, pa.first.target, "a peek kept its draw");
		cr_assert_eq(which(ta, 4, pa.first.target), which(tb, 4, pb.first.target));
		same += pa.first.target == ta[0];
		cr_assert_eq(route_tag(&a, i, ta[3], false).first.target, ta[3]);
		cr_assert_eq(route_tag(&b, i, tb[3], false).first.target, tb[3]);
	}
	cr_assert_lt(same, 100, "the draw never left the first target");
	t_route_close(&a);
	t_route_close(&b);
}

/* Least-loaded. */

/*
 * Two targets and a 128-token prompt P (8 blocks): A holds all of P in its cache and has 2
 * blocks in flight (prefill done); B is idle. Under @kind, routing P scores
 *   kv:           A: 128/16 - 8 = 0, + (2 + 8) = 10;  B: 8 + (0 + 8) = 16: A wins;
 *   least-loaded: A: 8 + (2 + 8) = 18;               B: 8 + 8 = 16: B wins.
 * The request asks for credit 1, which least-loaded must ignore as well. Returns the chosen
 * target's index (0: A, 1: B) with @t left open and tg[0..1] = A, B.
 */
static uint32_t overlap_or_load(struct t_route *t, enum rt_policy_kind kind, uint16_t *tg,
				uint32_t *p)
{
	struct rt_config cfg;
	struct rt_request rq;
	uint32_t r[NTOK];
	double want_a = kind == RT_POLICY_KV ? 10.0 : 18.0;
	uint16_t chosen;

	config(&cfg, kind);
	t_open_agg(t, &cfg, tg, 2);
	t_tokens(p, 128, 7);
	t_cache(t, tg[0], p, 8, BS);
	t_tokens(r, NTOK, 8);
	cr_assert_eq(rt_first_token(&t->core, t_load_on(t, r, NTOK, tg[0])), 0);
	rq = t_request(t, "m", p, 128, 0);
	rq.ov = (struct rt_overrides){.set = RT_OV_CREDIT, .overlap_score_credit = 1.0};
	chosen = t_route_ok(t, &rq).first.target;
	cr_assert_float_eq(t_cand(&t->core, tg[0])->cost, want_a, T_EPS, "A: %g",
			   t_cand(&t->core, tg[0])->cost);
	cr_assert_float_eq(t_cand(&t->core, tg[1])->cost, 16.0, T_EPS, "B: %g",
			   t_cand(&t->core, tg[1])->cost);
	cr_assert_eq(t_cand(&t->core, tg[0])->overlap, 8, "the overlap is still shown");
	return which(tg, 2, chosen);
}

Test(route_policy, least_loaded_ignores_the_overlap_that_kv_follows)
{
	const struct rt_explain *ex;
	struct t_route kv, ll;
	uint32_t p[128];
	uint16_t tk[2], tl[2];

	cr_assert_eq(overlap_or_load(&kv, RT_POLICY_KV, tk, p), 0, "kv must follow the cache");
	t_route_close(&kv);
	cr_assert_eq(overlap_or_load(&ll, RT_POLICY_LEAST_LOADED, tl, p), 1,
		     "least-loaded must take the lighter target");
	ex = rt_core_explain(&ll.core, RT_STAGE_AGGREGATED);
	cr_assert_eq(ex->policy_kind, RT_POLICY_LEAST_LOADED);
	cr_assert_eq(ex->policy.overlap_score_credit, 0.0, "the credit override was not ignored");
	t_expect_load(&ll, tl[1], 8, 128);
	/* Again: B now carries 8 blocks and 128 prefill tokens, so A (18) beats B (256/16 + 8);
	 * A's load is recorded as kv would: its cached blocks need no prefill. */
	{
		struct rt_request rq = t_request(&ll, "m", p, 128, 0);

		cr_assert_eq(t_route_ok(&ll, &rq).first.target, tl[0]);
	}
	cr_assert_float_eq(t_cand(&ll.core, tl[1])->cost, 24.0, T_EPS);
	t_expect_load(&ll, tl[0], 2 + 8, 0);
	t_route_close(&ll);
}

Test(route_policy, least_loaded_breaks_exact_ties_and_ignores_the_temperature)
{
	struct rt_config cfg;
	struct t_route t;
	uint16_t tg[3];
	uint32_t tok[NTOK], r[NTOK], seen = 0;

	config(&cfg, RT_POLICY_LEAST_LOADED);
	cfg.policy.temperature = 5.0;
	t_open_agg(&t, &cfg, tg, 3);
	t_tokens(r, NTOK, 9);
	t_load_on(&t, r, NTOK, tg[1]); /* tg[1] costs more: never chosen below */
	t_tokens(tok, NTOK, 3);
	for (uint32_t i = 0; i < 200; i++) {
		struct rt_request rq = t_request(&t, "m", tok, NTOK, 0);
		struct rt_plan plan = t_route_ok(&t, &rq);

		cr_assert_neq(plan.first.target, tg[1], "decision %u sampled a dearer target", i);
		seen |= 1u << which(tg, 3, plan.first.target);
		cr_assert_eq(rt_release(&t.core, plan.first.load), 0);
	}
	cr_assert_eq(seen, 5u, "the tie between tg[0] and tg[2] always went one way");
	cr_assert_eq(rt_core_explain(&t.core, RT_STAGE_AGGREGATED)->policy.temperature, 0.0);
	t_route_close(&t);
}

/* Disaggregated models. */

/* Two prefill and two decode targets of "m" under @kind: p[0..1], d[0..1]. */
static void open_disagg(struct t_ctx *x, enum rt_policy_kind kind, uint16_t *p, uint16_t *d)
{
	struct rt_config cfg;

	config(&cfg, kind);
	t_ctx_open(x, &cfg, RT_TRANSFER_NONE, 0);
	p[0] = t_ctx_add(x, 1, RT_PREFILL);
	d[0] = t_ctx_add(x, 2, RT_DECODE);
	p[1] = t_ctx_add(x, 3, RT_PREFILL);
	d[1] = t_ctx_add(x, 4, RT_DECODE);
}

Test(route_policy, disaggregated_model_goes_prefill_then_decode_under_every_baseline)
{
	static const enum rt_policy_kind kinds[] = {RT_POLICY_ROUND_ROBIN, RT_POLICY_RANDOM,
						    RT_POLICY_LEAST_LOADED};

	for (size_t k = 0; k < sizeof(kinds) / sizeof(kinds[0]); k++) {
		uint64_t prefill_tokens = 0, blocks = 0;
		struct t_ctx x;
		uint16_t p[2], d[2];

		open_disagg(&x, kinds[k], p, d);
		for (uint32_t i = 0; i < 8; i++) {
			uint32_t pi, di;

			t_ctx_prompt(&x, i);
			cr_assert_eq(t_ctx_route(&x), 0);
			cr_assert_eq(x.plan.kind, RT_PLAN_DISAGG, "%s", rt_policy_kind_name(kinds[k]));
			pi = which(p, 2, x.plan.first.target);
			cr_assert_eq(t_ctx_explain(&x, RT_STAGE_PREFILL)->policy_kind, kinds[k]);
			cr_assert_eq(t_ctx_decode(&x, x.plan.first.target), 0);
			di = which(d, 2, x.c.target);
			cr_assert_eq(t_ctx_explain(&x, RT_STAGE_DECODE)->policy_kind, kinds[k]);
			if (kinds[k] == RT_POLICY_ROUND_ROBIN) /* one cursor per stage */
				cr_assert(pi == i % 2 && di == i % 2, "%s: %u, %u at %u",
					  rt_policy_kind_name(kinds[k]), pi, di, i);
		}
		/* The stage rules hold: prefill targets carry prefill tokens only, decode
		 * targets every block and no prefill tokens. */
		for (uint32_t j = 0; j < 2; j++) {
			cr_assert_eq(t_load_blocks(&x.t, p[j]), 0);
			cr_assert_eq(t_load_prefill(&x.t, d[j]), 0);
			prefill_tokens += t_load_prefill(&x.t, p[j]);
			blocks += t_load_blocks(&x.t, d[j]);
		}
		cr_assert_eq(prefill_tokens, 8 * T_CTX_TOKENS);
		cr_assert_eq(blocks, 8 * (T_CTX_TOKENS / BS));
		t_route_close(&x.t);
	}
}

Test(route_policy, round_robin_decode_stays_in_the_prefill_targets_required_rack)
{
	static const uint32_t want[] = {0, 2, 0, 2};
	struct rt_config cfg;
	struct t_ctx x;
	uint16_t p, d[3];

	config(&cfg, RT_POLICY_ROUND_ROBIN);
	t_ctx_open(&x, &cfg, RT_TRANSFER_REQUIRED, 0.0);
	p = t_ctx_add_in(&x, 1, RT_PREFILL, t_rack1);
	d[0] = t_ctx_add_in(&x, 2, RT_DECODE, t_rack1);
	d[1] = t_ctx_add_in(&x, 3, RT_DECODE, t_rack2);
	d[2] = t_ctx_add_in(&x, 4, RT_DECODE, t_rack1);
	for (uint32_t i = 0; i < 4; i++) {
		t_ctx_prompt(&x, i);
		cr_assert_eq(t_ctx_route(&x), 0);
		cr_assert_eq(x.plan.first.target, p);
		cr_assert_eq(t_ctx_decode(&x, p), 0);
		cr_assert_eq(x.c.target, d[want[i]], "decision %u", i);
		cr_assert_eq(t_ctx_cand(&x, RT_STAGE_DECODE, d[1])->filter, RT_FILTER_TOPOLOGY);
	}
	t_route_close(&x.t);
}

/* The default, the explanation and the names. */

Test(route_policy, default_is_kv_and_scores_as_before)
{
	const struct rt_explain *ex;
	struct rt_config cfg;
	struct t_two s;
	struct rt_request rq;
	char buf[1024];

	rt_config_default(&cfg);
	cr_assert_eq(cfg.policy_kind, RT_POLICY_KV);
	t_two_open(&s, NULL);
	rq = t_two_request(&s);
	cr_assert_eq(t_route_ok(&s.t, &rq).first.target, s.a);
	t_expect_cand(&s.t, s.a, &t_two_a);
	t_expect_cand(&s.t, s.b, &t_two_b);
	ex = rt_core_explain(&s.t.core, RT_STAGE_AGGREGATED);
	cr_assert_eq(ex->policy_kind, RT_POLICY_KV);
	cr_assert_eq(ex->policy.overlap_score_credit, 1.0);
	rt_explain_format(&s.t.rt, ex, buf, sizeof(buf));
	cr_assert(strstr(buf, " policy=kv credit=1 "), "%s", buf);
	t_route_close(&s.t);
}

Test(route_policy, explanation_names_the_baseline_and_lists_every_candidate)
{
	struct rt_config cfg;
	struct t_route t;
	char buf[2048], line[64];
	uint16_t tg[3];

	config(&cfg, RT_POLICY_ROUND_ROBIN);
	t_open_agg(&t, &cfg, tg, 3);
	route_tag(&t, 1, RT_NO_PIN, false);
	route_tag(&t, 2, tg[0], false);
	rt_explain_format(&t.rt, rt_core_explain(&t.core, RT_STAGE_AGGREGATED), buf, sizeof(buf));
	cr_assert(strstr(buf, "outcome=ok candidates=3 policy=round-robin "), "%s", buf);
	snprintf(line, sizeof(line), "* target=%u worker=1 rank=0 overlap=0", tg[0]);
	cr_assert(strstr(buf, line), "%s", buf);
	snprintf(line, sizeof(line), "  target=%u worker=2 rank=0 filtered=pin", tg[1]);
	cr_assert(strstr(buf, line), "%s", buf);
	t_route_close(&t);
}

Test(route_policy, names_round_trip_and_unknown_ones_are_rejected)
{
	static const char *const name[RT_POLICY_KINDS] = {"kv", "round-robin", "random",
							  "least-loaded"};
	static const char *const bad[] = {"", "KV", "round_robin", "roundrobin", "least",
					  "kv ", "random-ish"};
	struct rt_config cfg;
	struct pdx x;
	struct pdx_config xc = {.max_targets = 8, .max_readers = 1};
	struct rt_router rt;

	for (int k = 0; k < (int)RT_POLICY_KINDS; k++) {
		cr_assert_str_eq(rt_policy_kind_name((enum rt_policy_kind)k), name[k]);
		cr_assert_eq(rt_policy_kind_parse(name[k]), k);
	}
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
		cr_assert_eq(rt_policy_kind_parse(bad[i]), -EINVAL, "'%s' parsed", bad[i]);
	cr_assert_eq(rt_policy_kind_parse(NULL), -EINVAL);
	cr_assert_str_eq(rt_policy_kind_name(RT_POLICY_KINDS), "unknown");
	cr_assert_eq(pdx_init(&x, &xc), 0);
	rt_config_default(&cfg);
	cfg.policy_kind = RT_POLICY_KINDS;
	cr_assert_eq(rt_router_init(&rt, &cfg, &x), -EINVAL);
	pdx_destroy(&x);
}
