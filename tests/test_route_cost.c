/*
 * Cost and selection of a routing stage (routing-semantics §4): every figure of the cost formula
 * against hand arithmetic, each policy knob and its per-request override, the minimum / uniform
 * tie-break / softmax selection as observed distributions, the pin and busy filters with their
 * outcomes, and a peek that decides as a route would while leaving the core's state untouched.
 */
#include <criterion/criterion.h>
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "helpers.h"
#include "route_fixture.h"

#define BS 16u	 /* block size of every worker here */
#define EPS 1e-9 /* costs are sums of a few exact binary fractions */

TestSuite(route_cost);

/* Hand-computed figures of one candidate. */
struct fig {
	uint32_t overlap, new_blocks;
	double prefill, decode, cost;
};

static struct rt_core_stats stats(const struct t_route *t)
{
	struct rt_core_stats s;

	rt_core_stats(&t->core, &s);
	return s;
}

/* Open @t under @cfg (NULL: fixture defaults) with @n aggregated workers 1..n of model "m". */
static void open_agg(struct t_route *t, const struct rt_config *cfg, uint32_t n, uint16_t *tg)
{
	struct rt_worker_spec s = t_spec("m", RT_AGGREGATED, BS);

	t_route_open(t, cfg);
	for (uint32_t i = 0; i < n; i++)
		tg[i] = t_register(t, i + 1, &s);
}

static struct rt_plan route_ok(struct t_route *t, const struct rt_request *rq)
{
	struct rt_plan plan;
	int rc = rt_route(&t->core, rq, &plan);

	cr_assert_eq(rc, 0, "rt_route: %d", rc);
	cr_assert_eq(plan.kind, RT_PLAN_AGGREGATED);
	cr_assert_eq(plan.first.load == 0, rq->peek, "load handle %#llx, peek %d",
		     (unsigned long long)plan.first.load, rq->peek);
	return plan;
}

/* Put the first @n tokens of @tok in flight on @target (pinned); returns the handle. */
static rt_load_t load_on(struct t_route *t, const uint32_t *tok, size_t n, uint16_t target)
{
	struct rt_request rq = t_request(t, "m", tok, n, 0);
	struct rt_plan plan;

	rq.pin_target = target;
	plan = route_ok(t, &rq);
	cr_assert_eq(plan.first.target, target);
	return plan.first.load;
}

/* The candidate for @target in the core's last aggregated decision. */
static const struct rt_candidate *cand_of(const struct t_route *t, uint16_t target)
{
	const struct rt_explain *ex = rt_core_explain(&t->core, RT_STAGE_AGGREGATED);

	for (uint32_t i = 0; i < ex->ncand; i++)
		if (ex->cand[i].target == target)
			return &ex->cand[i];
	cr_assert_fail("target %u is no candidate", target);
	return NULL;
}

static void expect_cand(const struct t_route *t, uint16_t target, const struct fig *f)
{
	const struct rt_candidate *c = cand_of(t, target);

	cr_assert_eq(c->overlap, f->overlap, "target %u overlap %u", target, c->overlap);
	cr_assert_eq(c->new_blocks, f->new_blocks, "target %u new %u", target, c->new_blocks);
	cr_assert_float_eq(c->prefill_blocks, f->prefill, EPS, "target %u prefill %g", target,
			   c->prefill_blocks);
	cr_assert_float_eq(c->decode_blocks, f->decode, EPS, "target %u decode %g", target,
			   c->decode_blocks);
	cr_assert_float_eq(c->cost, f->cost, EPS, "target %u cost %g", target, c->cost);
}

static uint8_t filter_of(const struct t_route *t, uint16_t target)
{
	return cand_of(t, target)->filter;
}

/*
 * The two-target situation (block size 16) most cost tests score:
 * - prompt P: 100 tokens = 6 full blocks; A holds P's first 4 blocks in the index;
 * - B has request Q in flight: P's first 48 tokens (3 blocks, 48 prefill tokens, nothing
 *   cached), so P's first 3 blocks are already active on B.
 * With the defaults, routing P scores
 *   A: overlap 4, new 6, prefill 100/16 = 6.25, adjusted 6.25 - 4 = 2.25, decode 0 + 6 = 6,
 *      cost 2.25 + 6 = 8.25;
 *   B: overlap 0, new 6 - 3 = 3, prefill (48 + 100)/16 = 9.25, adjusted 9.25, decode 3 + 3 = 6,
 *      cost 9.25 + 6 = 15.25.
 */
struct two {
	struct t_route t;
	uint16_t a, b;
	uint32_t p[100];
};

static const struct fig two_a = {4, 6, 6.25, 6, 8.25}, two_b = {0, 3, 9.25, 6, 15.25};

static void two_open(struct two *s, const struct rt_config *cfg)
{
	uint16_t tg[2];

	open_agg(&s->t, cfg, 2, tg);
	s->a = tg[0];
	s->b = tg[1];
	t_tokens(s->p, 100, 1);
	t_cache(&s->t, s->a, s->p, 4, BS);
	load_on(&s->t, s->p, 48, s->b); /* Q */
}

static struct rt_request two_request(const struct two *s)
{
	return t_request(&s->t, "m", s->p, 100, 0);
}

/* Open the situation under @cfg, route P with overrides @ov (NULL: none), check A and B. */
static struct rt_plan two_route(struct two *s, const struct rt_config *cfg,
				const struct rt_overrides *ov, const struct fig *fa,
				const struct fig *fb)
{
	struct rt_request rq;
	struct rt_plan plan;

	two_open(s, cfg);
	rq = two_request(s);
	if (ov)
		rq.ov = *ov;
	plan = route_ok(&s->t, &rq);
	expect_cand(&s->t, s->a, fa);
	expect_cand(&s->t, s->b, fb);
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
	struct two s;

	plan = two_route(&s, NULL, NULL, &two_a, &two_b);
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

	open_agg(&t, NULL, 2, tg);
	/* A holds k of the 6 blocks of a fresh 100-token prompt, both idle:
	 * A: prefill 6.25, adjusted 6.25 - k, decode 0 + 6, cost 12.25 - k; B: 12.25. */
	for (uint32_t k = 1; k <= 6; k++) {
		const struct fig a = {k, 6, 6.25, 6, 12.25 - k}, b = {0, 6, 6.25, 6, 12.25};

		t_tokens(tok, 100, 100 + k);
		t_cache(&t, tg[0], tok, k, BS);
		rq = t_request(&t, "m", tok, 100, 0);
		rq.peek = k < 6;
		plan = route_ok(&t, &rq);
		expect_cand(&t, tg[0], &a);
		expect_cand(&t, tg[1], &b);
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
	static const struct fig a = {6, 6, 8.25, 8, 8}, b = {3, 6, 6.25, 6, 6};
	struct rt_config cfg;
	struct t_route t;
	struct rt_request rq;
	struct rt_plan plan;
	uint32_t p[100], r[32];
	uint16_t tg[2];

	t_route_config(&cfg);
	cfg.policy.overlap_score_credit = 3.0;
	open_agg(&t, &cfg, 2, tg);
	t_tokens(p, 100, 1);
	t_tokens(r, 32, 5);
	t_cache(&t, tg[0], p, 6, BS);
	t_cache(&t, tg[1], p, 3, BS);
	load_on(&t, r, 32, tg[0]);
	rq = t_request(&t, "m", p, 100, 0);
	plan = route_ok(&t, &rq);
	expect_cand(&t, tg[0], &a);
	expect_cand(&t, tg[1], &b);
	cr_assert_eq(plan.first.target, tg[1]);
	/* B prefills what it lacks: 100 - 3 * 16 = 52 tokens. */
	cr_assert_eq(t_load_prefill(&t, tg[1]), 52);
	t_route_close(&t);
}

Test(route_cost, credit_knob_and_override_scale_the_overlap_credit)
{
	/* Credit 0.5: A adjusted 6.25 - 0.5 * 4 = 4.25, cost 4.25 + 6 = 10.25; B (no overlap)
	 * keeps 15.25. */
	static const struct fig a = {4, 6, 6.25, 6, 10.25};
	struct rt_overrides ov = {.set = RT_OV_CREDIT, .overlap_score_credit = 0.5};
	struct rt_config cfg;
	struct two s;

	t_route_config(&cfg);
	cfg.policy.overlap_score_credit = 0.5;
	two_route(&s, &cfg, NULL, &a, &two_b);
	cr_assert_float_eq(last_policy(&s.t)->overlap_score_credit, 0.5, EPS);
	t_route_close(&s.t);

	two_route(&s, NULL, &ov, &a, &two_b);
	cr_assert_float_eq(last_policy(&s.t)->overlap_score_credit, 0.5, EPS);
	t_route_close(&s.t);

	/* The override wins over the config: credit 1 again gives the default figures. */
	ov.overlap_score_credit = 1.0;
	two_route(&s, &cfg, &ov, &two_a, &two_b);
	t_route_close(&s.t);
}

Test(route_cost, load_scale_knob_and_override_weight_prefill_against_decode)
{
	/* Scale 2: A 2 * 2.25 + 6 = 10.5; B 2 * 9.25 + 6 = 24.5. */
	static const struct fig a = {4, 6, 6.25, 6, 10.5}, b = {0, 3, 9.25, 6, 24.5};
	const struct rt_overrides ov = {.set = RT_OV_LOAD_SCALE, .prefill_load_scale = 2.0};
	struct rt_config cfg;
	struct two s;

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
	static const struct fig b = {0, 6, 9.25, 9, 18.25};
	const struct rt_overrides ov = {.set = RT_OV_KV_REUSE, .assume_kv_reuse = false};
	const uint64_t b_after[3] = {9, 9, 6}; /* 3 + 6 without dedup; 3 + 3 with it */
	struct rt_config cfg;
	struct rt_request rq;
	struct two s;

	for (int via = 0; via < 3; via++) {
		t_route_config(&cfg);
		cfg.policy.assume_kv_reuse = via != 0;
		two_route(&s, &cfg, via == 1 ? &ov : NULL, &two_a, via == 2 ? &two_b : &b);
		/* P again, pinned to B: the blocks B records follow the same rule. */
		rq = two_request(&s);
		if (via == 1)
			rq.ov = ov;
		rq.pin_target = s.b;
		route_ok(&s.t, &rq);
		cr_assert_eq(t_load_blocks(&s.t, s.b), b_after[via], "via %d: %llu", via,
			     (unsigned long long)t_load_blocks(&s.t, s.b));
		t_route_close(&s.t);
	}
}

Test(route_cost, prefill_tokens_off_scores_no_prefill_and_records_none)
{
	/* No prefill: adjusted 0 for both, cost = decode: A 0 + 6 = 6, B 3 + 3 = 6 (a tie). */
	static const struct fig a = {4, 6, 0, 6, 6}, b = {0, 3, 0, 6, 6};
	const struct rt_overrides ov = {.set = RT_OV_PREFILL_TOKENS, .track_prefill_tokens = false};
	struct rt_config cfg;
	struct rt_plan plan;
	struct two s;

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
	static const struct fig a = {4, 6, 6.25, 0, 2.25}, b = {0, 6, 9.25, 0, 9.25};
	struct rt_config cfg;
	struct rt_plan plan;
	struct two s;

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
	struct two s;
	struct rt_request rq;
	struct rt_plan plan;

	two_open(&s, NULL);
	rq = two_request(&s);
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

/*
 * Each count is Binomial(n, p[i]). 5 sigma: a correct sampler strays that far with probability
 * below 6e-7 per count whatever the seed, while the plausible bugs (last tie always wins, a
 * replacement probability of 1/2, an unnormalised softmax) miss by tens of sigma at these n.
 */
static void expect_shares(const uint32_t *count, const double *p, uint32_t k, uint32_t n)
{
	for (uint32_t i = 0; i < k; i++) {
		double mean = n * p[i], sd = sqrt(n * p[i] * (1.0 - p[i]));

		cr_assert_leq(fabs(count[i] - mean), 5.0 * sd + EPS,
			      "candidate %u chosen %u of %u times, expected %.1f +- %.1f", i,
			      count[i], n, mean, 5.0 * sd);
	}
}

/* Route and release @rq @n times; count[i]: how often tg[i] was chosen. */
static void sample(struct t_route *t, const struct rt_request *rq, const uint16_t *tg, uint32_t k,
		   uint32_t n, uint32_t *count)
{
	memset(count, 0, k * sizeof(*count));
	for (uint32_t i = 0; i < n; i++) {
		struct rt_plan plan = route_ok(t, rq);
		uint32_t j = 0;

		while (j < k && tg[j] != plan.first.target)
			j++;
		cr_assert_lt(j, k, "chose target %u", plan.first.target);
		count[j]++;
		cr_assert_eq(rt_release(&t->core, plan.first.load), 0);
	}
}

/* Four idle targets and a 32-token prompt: each costs 32/16 + (0 + 2) = 4, an exact tie. */
static void ties_uniform(const struct rt_overrides *ov)
{
	static const struct fig f = {0, 2, 2, 2, 4};
	const double p[4] = {0.25, 0.25, 0.25, 0.25};
	struct t_route t;
	struct rt_request rq;
	uint32_t tok[32], count[4];
	uint16_t tg[4];

	open_agg(&t, NULL, 4, tg);
	t_tokens(tok, 32, 9);
	rq = t_request(&t, "m", tok, 32, 0);
	rq.ov = *ov;
	sample(&t, &rq, tg, 4, 1, count);
	for (uint32_t i = 0; i < 4; i++)
		expect_cand(&t, tg[i], &f);
	sample(&t, &rq, tg, 4, 8000, count);
	expect_shares(count, p, 4, 8000);
	t_route_close(&t);
}

Test(route_cost, exact_ties_are_broken_uniformly)
{
	const struct rt_overrides none = {0};

	ties_uniform(&none);
}

Test(route_cost, equal_costs_under_a_temperature_sample_uniformly)
{
	const struct rt_overrides ov = {.set = RT_OV_TEMPERATURE, .temperature = 0.7};

	ties_uniform(&ov);
}

/*
 * Three targets with fixed, different costs for a 32-token prompt P (2 blocks): A idle, B with
 * 2 blocks in flight, C with 4 (their prefill done, so no prefill tokens):
 *   A: prefill 2, decode 0 + 2, cost 4;  B: 2 + (2 + 2) = 6;  C: 2 + (4 + 2) = 8.
 * Route and release P @n times under config temperature @temp and overrides @ov, and compare
 * the shares with @p.
 */
static void three_shares(double temp, const struct rt_overrides *ov, const double *p, uint32_t n)
{
	static const struct fig f[3] = {{0, 2, 2, 2, 4}, {0, 2, 2, 4, 6}, {0, 2, 2, 6, 8}};
	struct rt_config cfg;
	struct t_route t;
	struct rt_request rq;
	uint32_t r[64], tok[32], count[3];
	uint16_t tg[3];

	t_route_config(&cfg);
	cfg.policy.temperature = temp;
	open_agg(&t, &cfg, 3, tg);
	t_tokens(r, 64, 20);
	cr_assert_eq(rt_first_token(&t.core, load_on(&t, r, 32, tg[1])), 0);
	t_tokens(r, 64, 21);
	cr_assert_eq(rt_first_token(&t.core, load_on(&t, r, 64, tg[2])), 0);
	t_tokens(tok, 32, 10);
	rq = t_request(&t, "m", tok, 32, 0);
	rq.ov = *ov;
	sample(&t, &rq, tg, 3, 1, count);
	for (uint32_t i = 0; i < 3; i++)
		expect_cand(&t, tg[i], &f[i]);
	sample(&t, &rq, tg, 3, n, count);
	expect_shares(count, p, 3, n);
	t_route_close(&t);
}

Test(route_cost, zero_temperature_always_takes_the_minimum)
{
	static const double p[3] = {1, 0, 0}; /* sd 0: every one of the n must be A */
	const struct rt_overrides none = {0};

	three_shares(0.0, &none, p, 1000);
}

Test(route_cost, softmax_probabilities_follow_the_normalised_cost)
{
	/* T = 1, min 4, max 8: weights exp(-(c - 4)/4) = 1, e^-0.5, e^-1 = 1, 0.606531, 0.367879,
	 * sum 1.974410: p = 0.506480, 0.307196, 0.186324. */
	static const double p[3] = {0.506480, 0.307196, 0.186324};
	const struct rt_overrides none = {0};

	three_shares(1.0, &none, p, 20000);
}

Test(route_cost, temperature_override_replaces_the_config_one)
{
	/* Config T = 0, request T = 0.5: weights exp(-(c - 4)/2) = 1, e^-1, e^-2 = 1, 0.367879,
	 * 0.135335, sum 1.503214: p = 0.665241, 0.244728, 0.090031. */
	static const double p[3] = {0.665241, 0.244728, 0.090031};
	const struct rt_overrides ov = {.set = RT_OV_TEMPERATURE, .temperature = 0.5};

	three_shares(0.0, &ov, p, 20000);
}

/* Sample at temperature 1 (uniform where all costs are equal). */
static const struct rt_overrides temp1 = {.set = RT_OV_TEMPERATURE, .temperature = 1.0};

/* Choices of @n route-and-release rounds over 4 idle targets, ties and T = 1 alternating. */
static void choices(uint64_t seed, uint16_t *out, uint32_t n)
{
	struct rt_config cfg;
	struct t_route t;
	struct rt_request rq;
	struct rt_plan plan;
	uint32_t tok[32];
	uint16_t tg[4];

	t_route_config(&cfg);
	cfg.seed = seed;
	open_agg(&t, &cfg, 4, tg);
	t_tokens(tok, 32, 9);
	for (uint32_t i = 0; i < n; i++) {
		rq = t_request(&t, "m", tok, 32, 0);
		if (i & 1)
			rq.ov = temp1;
		plan = route_ok(&t, &rq);
		out[i] = plan.first.target;
		cr_assert_eq(rt_release(&t.core, plan.first.load), 0);
	}
	t_route_close(&t);
}

Test(route_cost, same_seed_repeats_the_same_choices)
{
	uint16_t a[200], b[200], c[200];

	choices(7, a, 200);
	choices(7, b, 200);
	choices(8, c, 200);
	cr_assert_arr_eq(a, b, sizeof(a), "same seed, different choices");
	/* Equal by chance with probability 4^-200: the seed does reach the choices. */
	cr_assert_arr_neq(a, c, sizeof(a), "seeds 7 and 8 chose alike");
}

Test(route_cost, pin_restricts_to_the_pinned_target_even_when_dearer)
{
	struct two s;
	struct rt_request rq;
	struct rt_plan plan;

	two_open(&s, NULL);
	rq = two_request(&s);
	rq.pin_target = s.b;
	plan = route_ok(&s.t, &rq);
	cr_assert_eq(plan.first.target, s.b);
	cr_assert_eq(filter_of(&s.t, s.a), RT_FILTER_PIN);
	expect_cand(&s.t, s.b, &two_b); /* 15.25, though A costs 8.25 */
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

	open_agg(&t, NULL, 1, tg);
	o = t_register(&t, 9, &other);
	t_tokens(tok, 32, 3);
	rq = t_request(&t, "m", tok, 32, 0);
	before = stats(&t);
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
	cr_assert_eq(stats(&t).no_target, before.no_target + 3);
	cr_assert_eq(stats(&t).overloaded, before.overloaded);
	cr_assert_eq(t_load_blocks(&t, tg[0]) + t_load_blocks(&t, o), 0);
	t_route_close(&t);
}

/* Peek @rq and return the target it would take (asserting success). */
static uint16_t peek_target(struct t_route *t, struct rt_request rq)
{
	rq.peek = true;
	return route_ok(t, &rq).first.target;
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
	open_agg(&t, &cfg, 2, tg);
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
	before = stats(&t);
	cr_assert_eq(rt_route(&t.core, &rq, &plan), -EBUSY);
	cr_assert_eq(rt_core_explain(&t.core, RT_STAGE_AGGREGATED)->outcome, -EBUSY);
	cr_assert_eq(stats(&t).overloaded, before.overloaded + 1);
	cr_assert_eq(stats(&t).no_target, before.no_target);
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
	open_agg(&t, &cfg, 1, tg);
	t_tokens(big, 9600, 2);
	t_tokens(p, 32, 3);
	rq = t_request(&t, "m", p, 32, 0);
	h = load_on(&t, big, 9600, tg[0]);
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
	open_agg(&t, &cfg, 2, tg);
	t_tokens(r, 100, 3);
	t_tokens(r2, 16, 4);
	t_tokens(p, 32, 10);
	rq = t_request(&t, "m", p, 32, 0);
	h = load_on(&t, r, 100, tg[0]); /* A: 100 predicted, exactly the limit */
	peek_target(&t, rq);
	cr_assert_eq(filter_of(&t, tg[0]), RT_ELIGIBLE);
	cr_assert_eq(rt_report_load(&t.rt, 1, 0, 0, 101), 0); /* max(100, 101) > 100 */
	cr_assert_eq(peek_target(&t, rq), tg[1]);
	cr_assert_eq(filter_of(&t, tg[0]), RT_FILTER_BUSY_PREFILL);
	cr_assert_eq(rt_report_load(&t.rt, 1, 0, 0, 0), 0);
	h2 = load_on(&t, r2, 16, tg[0]); /* A: 116 predicted, 0 reported */
	cr_assert_eq(peek_target(&t, rq), tg[1]);
	cr_assert_eq(filter_of(&t, tg[0]), RT_FILTER_BUSY_PREFILL);
	cr_assert_eq(rt_report_load(&t.rt, 2, 0, 0, 100), 0);
	cr_assert_eq(peek_target(&t, rq), tg[1]);
	cr_assert_eq(rt_report_load(&t.rt, 2, 0, 0, 101), 0);
	before = stats(&t);
	cr_assert_eq(rt_route(&t.core, &rq, &plan), -EBUSY);
	cr_assert_eq(filter_of(&t, tg[1]), RT_FILTER_BUSY_PREFILL);
	cr_assert_eq(stats(&t).overloaded, before.overloaded + 1);
	/* Reports left the predictions alone, and the first tokens leave the reports alone. */
	cr_assert_eq(t_load_prefill(&t, tg[0]), 116);
	cr_assert_eq(t_load_prefill(&t, tg[1]), 0);
	cr_assert_eq(rt_first_token(&t.core, h), 0);
	cr_assert_eq(rt_first_token(&t.core, h2), 0);
	cr_assert_eq(route_ok(&t, &rq).first.target, tg[0]);
	cr_assert_eq(filter_of(&t, tg[1]), RT_FILTER_BUSY_PREFILL);
	t_route_close(&t);
}

/* A copy of everything a decision may write in the core's share, and its random state. */
struct snap {
	struct rt_share s;
	uint64_t rng;
	void *tl, *map, *req;
	size_t ntl, nmap, nreq;
};

static void snap_take(struct snap *sn, const struct t_route *t)
{
	const struct rt_share *s = &t->core.share;

	memcpy(&sn->s, s, sizeof(*s));
	sn->rng = t->core.rng;
	sn->ntl = t->rt.cfg.max_targets * sizeof(*s->tl);
	sn->nmap = ((size_t)s->map_mask + 1) * sizeof(*s->map);
	sn->nreq = t->rt.cfg.max_requests * sizeof(*s->req);
	sn->tl = memcpy(t_calloc(1, sn->ntl), s->tl, sn->ntl);
	sn->map = memcpy(t_calloc(1, sn->nmap), s->map, sn->nmap);
	sn->req = memcpy(t_calloc(1, sn->nreq), s->req, sn->nreq);
}

/* Assert @t's share and random state are byte for byte as in @sn, then free @sn. */
static void snap_same(struct snap *sn, const struct t_route *t)
{
	const struct rt_share *s = &t->core.share;

	cr_assert_eq(memcmp(&sn->s, s, sizeof(*s)), 0, "share heads or counts changed");
	cr_assert_eq(sn->rng, t->core.rng, "random state moved");
	cr_assert_eq(memcmp(sn->tl, s->tl, sn->ntl), 0, "per-target load changed");
	cr_assert_eq(memcmp(sn->map, s->map, sn->nmap), 0, "dedup table changed");
	cr_assert_eq(memcmp(sn->req, s->req, sn->nreq), 0, "in-flight slots changed");
	free(sn->tl);
	free(sn->map);
	free(sn->req);
}

Test(route_cost, peek_returns_the_route_choice_and_changes_nothing)
{
	struct rt_core_stats before;
	struct snap sn;
	struct two s;
	struct rt_request rq;
	struct rt_plan pk, plan;

	two_open(&s, NULL);
	rq = two_request(&s);
	rq.peek = true;
	before = stats(&s.t);
	snap_take(&sn, &s.t);
	pk = route_ok(&s.t, &rq);
	snap_same(&sn, &s.t);
	expect_cand(&s.t, s.a, &two_a);
	expect_cand(&s.t, s.b, &two_b);
	cr_assert_eq(stats(&s.t).peeks, before.peeks + 1);
	rq.peek = false;
	plan = route_ok(&s.t, &rq);
	cr_assert_eq(pk.first.target, plan.first.target);
	cr_assert_eq(pk.first.overlap, 4);
	cr_assert_eq(plan.first.overlap, 4);
	t_route_close(&s.t);
}

/* Four targets with equal in-flight load (a 32-token request each, prefill pending). */
static void four_loaded(struct t_route *t, uint16_t *tg)
{
	uint32_t r[32];

	open_agg(t, NULL, 4, tg);
	for (uint32_t i = 0; i < 4; i++) {
		t_tokens(r, 32, 30 + i);
		load_on(t, r, 32, tg[i]);
	}
}

Test(route_cost, peek_on_a_random_tie_leaves_later_choices_alone)
{
	/* 48-token prompt on each loaded target: prefill (32 + 48)/16 = 5, decode 2 + 3 = 5,
	 * cost 10: a four-way tie. Odd rounds sample at T = 1 instead. t1 peeks before every
	 * route, t2 only routes: a peek that kept a draw would desynchronise them. */
	static const struct fig f = {0, 3, 5, 5, 10};
	struct t_route t1, t2;
	struct rt_request rq1, rq2;
	struct rt_plan pk, r1, r2;
	struct snap sn;
	uint32_t tok[48];
	uint16_t tg1[4], tg2[4];
	uint32_t moved = 0;

	four_loaded(&t1, tg1);
	four_loaded(&t2, tg2);
	for (uint32_t i = 0; i < 64; i++) {
		t_tokens(tok, 48, 200 + i);
		rq1 = t_request(&t1, "m", tok, 48, 0);
		if (i & 1)
			rq1.ov = temp1;
		rq2 = rq1;
		rq1.peek = true;
		snap_take(&sn, &t1);
		pk = route_ok(&t1, &rq1);
		snap_same(&sn, &t1);
		for (uint32_t j = 0; j < 4; j++)
			expect_cand(&t1, tg1[j], &f);
		rq1.peek = false;
		r1 = route_ok(&t1, &rq1);
		r2 = route_ok(&t2, &rq2);
		cr_assert_eq(pk.first.target, r1.first.target, "round %u", i);
		cr_assert_eq(r1.first.target, r2.first.target, "round %u", i);
		moved += r1.first.target != tg1[0];
		cr_assert_eq(rt_release(&t1.core, r1.first.load), 0);
		cr_assert_eq(rt_release(&t2.core, r2.first.load), 0);
	}
	cr_assert_gt(moved, 0, "the tie never went past the first target");
	cr_assert_eq(t1.core.rng, t2.core.rng);
	t_route_close(&t1);
	t_route_close(&t2);
}

Test(route_cost, unknown_model_gives_enoent)
{
	struct rt_core_stats before;
	struct t_route t;
	struct rt_request rq;
	struct rt_plan plan;
	uint32_t tok[32];
	uint16_t tg[1];

	open_agg(&t, NULL, 1, tg);
	t_tokens(tok, 32, 1);
	rq = t_request(&t, "m", tok, 32, 0);
	before = stats(&t);
	rq.model = 1; /* only model 0 exists */
	cr_assert_eq(rt_route(&t.core, &rq, &plan), -ENOENT);
	rq.model = UINT32_MAX;
	rq.peek = true;
	cr_assert_eq(rt_route(&t.core, &rq, &plan), -ENOENT);
	cr_assert_eq(stats(&t).no_target, before.no_target);
	cr_assert_eq(t_load_blocks(&t, tg[0]) + t_load_prefill(&t, tg[0]), 0);
	t_route_close(&t);
}

Test(route_cost, prompt_shorter_than_one_block_still_routes)
{
	/* 10 tokens, 0 blocks: prefill 10/16 = 0.625, decode 0, cost 0.625; no tokens: cost 0. */
	static const struct fig f = {0, 0, 0.625, 0, 0.625}, empty = {0, 0, 0, 0, 0};
	struct t_route t;
	struct rt_request rq;
	struct rt_plan plan;
	uint32_t tok[10];
	uint16_t tg[1];

	open_agg(&t, NULL, 1, tg);
	t_tokens(tok, 10, 1);
	rq = t_request(&t, "m", tok, 10, 0);
	plan = route_ok(&t, &rq);
	cr_assert_eq(rt_core_explain(&t.core, RT_STAGE_AGGREGATED)->blocks, 0);
	expect_cand(&t, tg[0], &f);
	cr_assert_eq(plan.first.target, tg[0]);
	cr_assert_eq(t_load_blocks(&t, tg[0]), 0);
	cr_assert_eq(t_load_prefill(&t, tg[0]), 10);
	cr_assert_eq(rt_release(&t.core, plan.first.load), 0);
	rq = t_request(&t, "m", NULL, 0, 0);
	route_ok(&t, &rq);
	expect_cand(&t, tg[0], &empty);
	t_route_close(&t);
}
