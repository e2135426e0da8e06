/*
 * Selection among the scored candidates of a routing stage (routing-semantics §4): the minimum,
 * the uniform tie-break and softmax sampling as observed distributions, the same choices from the
 * same seed, and a peek that decides as a route would while leaving the core's state untouched.
 */
#include <criterion/criterion.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "helpers.h"
#include "route_fixture.h"

#define EPS T_EPS /* costs are sums of a few exact binary fractions */

TestSuite(route_select);

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
		struct rt_plan plan = t_route_ok(t, rq);
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
	static const struct t_fig f = {0, 2, 2, 2, 4};
	const double p[4] = {0.25, 0.25, 0.25, 0.25};
	struct t_route t;
	struct rt_request rq;
	uint32_t tok[32], count[4];
	uint16_t tg[4];

	t_open_agg(&t, NULL, tg, 4);
	t_tokens(tok, 32, 9);
	rq = t_request(&t, "m", tok, 32, 0);
	rq.ov = *ov;
	sample(&t, &rq, tg, 4, 1, count);
	for (uint32_t i = 0; i < 4; i++)
		t_expect_cand(&t, tg[i], &f);
	sample(&t, &rq, tg, 4, 8000, count);
	expect_shares(count, p, 4, 8000);
	t_route_close(&t);
}

Test(route_select, exact_ties_are_broken_uniformly)
{
	const struct rt_overrides none = {0};

	ties_uniform(&none);
}

Test(route_select, equal_costs_under_a_temperature_sample_uniformly)
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
	static const struct t_fig f[3] = {{0, 2, 2, 2, 4}, {0, 2, 2, 4, 6}, {0, 2, 2, 6, 8}};
	struct rt_config cfg;
	struct t_route t;
	struct rt_request rq;
	uint32_t r[64], tok[32], count[3];
	uint16_t tg[3];

	t_route_config(&cfg);
	cfg.policy.temperature = temp;
	t_open_agg(&t, &cfg, tg, 3);
	t_tokens(r, 64, 20);
	cr_assert_eq(rt_first_token(&t.core, t_load_on(&t, r, 32, tg[1])), 0);
	t_tokens(r, 64, 21);
	cr_assert_eq(rt_first_token(&t.core, t_load_on(&t, r, 64, tg[2])), 0);
	t_tokens(tok, 32, 10);
	rq = t_request(&t, "m", tok, 32, 0);
	rq.ov = *ov;
	sample(&t, &rq, tg, 3, 1, count);
	for (uint32_t i = 0; i < 3; i++)
		t_expect_cand(&t, tg[i], &f[i]);
	sample(&t, &rq, tg, 3, n, count);
	expect_shares(count, p, 3, n);
	t_route_close(&t);
}

Test(route_select, zero_temperature_always_takes_the_minimum)
{
	static const double p[3] = {1, 0, 0}; /* sd 0: every one of the n must be A */
	const struct rt_overrides none = {0};

	three_shares(0.0, &none, p, 1000);
}

Test(route_select, softmax_probabilities_follow_the_normalised_cost)
{
	/* T = 1, min 4, max 8: weights exp(-(c - 4)/4) = 1, e^-0.5, e^-1 = 1, 0.606531, 0.367879,
	 * sum 1.974410: p = 0.506480, 0.307196, 0.186324. */
	static const double p[3] = {0.506480, 0.307196, 0.186324};
	const struct rt_overrides none = {0};

	three_shares(1.0, &none, p, 20000);
}

Test(route_select, temperature_override_replaces_the_config_one)
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
	t_open_agg(&t, &cfg, tg, 4);
	t_tokens(tok, 32, 9);
	for (uint32_t i = 0; i < n; i++) {
		rq = t_request(&t, "m", tok, 32, 0);
		if (i & 1)
			rq.ov = temp1;
		plan = t_route_ok(&t, &rq);
		out[i] = plan.first.target;
		cr_assert_eq(rt_release(&t.core, plan.first.load), 0);
	}
	t_route_close(&t);
}

Test(route_select, same_seed_repeats_the_same_choices)
{
	uint16_t a[200], b[200], c[200];

	choices(7, a, 200);
	choices(7, b, 200);
	choices(8, c, 200);
	cr_assert_arr_eq(a, b, sizeof(a), "same seed, different choices");
	/* Equal by chance with probability 4^-200: the seed does reach the choices. */
	cr_assert_arr_neq(a, c, sizeof(a), "seeds 7 and 8 chose alike");
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

	/* The decision count moves with peeks too: like the counters, it records that a
	 * decision happened (a peek reads the pools as well), not routing state. */
	cr_assert_eq(atomic_load(&s->decision) % 2, 0, "a decision was left open");
	atomic_store(&sn->s.decision, atomic_load(&s->decision));
	cr_assert_eq(memcmp(&sn->s, s, sizeof(*s)), 0, "share heads or counts changed");
	cr_assert_eq(sn->rng, t->core.rng, "random state moved");
	cr_assert_eq(memcmp(sn->tl, s->tl, sn->ntl), 0, "per-target load changed");
	cr_assert_eq(memcmp(sn->map, s->map, sn->nmap), 0, "dedup table changed");
	cr_assert_eq(memcmp(sn->req, s->req, sn->nreq), 0, "in-flight slots changed");
	free(sn->tl);
	free(sn->map);
	free(sn->req);
}

Test(route_select, peek_returns_the_route_choice_and_changes_nothing)
{
	struct rt_core_stats before;
	struct snap sn;
	struct t_two s;
	struct rt_request rq;
	struct rt_plan pk, plan;

	t_two_open(&s, NULL);
	rq = t_two_request(&s);
	rq.peek = true;
	before = t_core_stats(&s.t.core);
	snap_take(&sn, &s.t);
	pk = t_route_ok(&s.t, &rq);
	snap_same(&sn, &s.t);
	t_expect_cand(&s.t, s.a, &t_two_a);
	t_expect_cand(&s.t, s.b, &t_two_b);
	cr_assert_eq(t_core_stats(&s.t.core).peeks, before.peeks + 1);
	rq.peek = false;
	plan = t_route_ok(&s.t, &rq);
	cr_assert_eq(pk.first.target, plan.first.target);
	cr_assert_eq(pk.first.overlap, 4);
	cr_assert_eq(plan.first.overlap, 4);
	t_route_close(&s.t);
}

/* Four targets with equal in-flight load (a 32-token request each, prefill pending). */
static void four_loaded(struct t_route *t, uint16_t *tg)
{
	uint32_t r[32];

	t_open_agg(t, NULL, tg, 4);
	for (uint32_t i = 0; i < 4; i++) {
		t_tokens(r, 32, 30 + i);
		t_load_on(t, r, 32, tg[i]);
	}
}

Test(route_select, peek_on_a_random_tie_leaves_later_choices_alone)
{
	/* 48-token prompt on each loaded target: prefill (32 + 48)/16 = 5, decode 2 + 3 = 5,
	 * cost 10: a four-way tie. Odd rounds sample at T = 1 instead. t1 peeks before every
	 * route, t2 only routes: a peek that kept a draw would desynchronise them. */
	static const struct t_fig f = {0, 3, 5, 5, 10};
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
		pk = t_route_ok(&t1, &rq1);
		snap_same(&sn, &t1);
		for (uint32_t j = 0; j < 4; j++)
			t_expect_cand(&t1, tg1[j], &f);
		rq1.peek = false;
		r1 = t_route_ok(&t1, &rq1);
		r2 = t_route_ok(&t2, &rq2);
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
