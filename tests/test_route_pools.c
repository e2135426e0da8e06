/*
 * Pools and stages of disaggregated serving (routing-semantics §5-§6): what registration refuses
 * and why (with nothing changed), one block size per pool, when the prefill stage switches on and
 * off, the stage rules of prefill and decode, fallback, enforce_disagg and bootstrap, the
 * topology rules of the decode choice, and workers with several DP ranks.
 */
#include <criterion/criterion.h>
#include <errno.h>
#include <math.h>
#include <string.h>

#include "helpers.h"
#include "route_fixture.h"

#define BS 16u			/* block size of every pool unless a test says otherwise */
#define NTOK 128u		/* prompt length in tokens */
#define NBLK (NTOK / BS)	/* ... and in blocks */

TestSuite(route_pools);

static const struct rt_domain rack1[] = {{"rack", "r1"}};
static const struct rt_domain rack2[] = {{"rack", "r2"}};
static const struct rt_domain rack3[] = {{"rack", "r3"}};

/* A router, and one request for model "m" with room for what routing it gives. */
struct ctx {
	struct t_route t;
	uint32_t tok[NTOK];
	struct rt_request rq;
	struct rt_plan plan;
	struct rt_choice c;
};

/* Open @x over @cfg (NULL: t_route_config()) with rule @enforcement of "rack" with @weight. */
static void ctx_open(struct ctx *x, const struct rt_config *cfg, enum rt_enforcement enforcement,
		     double weight)
{
	struct rt_config def;

	if (!cfg) {
		t_route_config(&def);
		cfg = &def;
	}
	def = *cfg;
	if (enforcement != RT_TRANSFER_NONE)
		def.transfer = (struct rt_transfer){"rack", enforcement, weight};
	t_route_open(&x->t, &def);
}

/* Make x->rq a request for "m" (registered by now) over NTOK tokens of prompt @tag. */
static void prompt(struct ctx *x, uint32_t tag)
{
	t_tokens(x->tok, NTOK, tag);
	x->rq = t_request(&x->t, "m", x->tok, NTOK, 0);
}

static int route(struct ctx *x)
{
	return rt_route(&x->t.core, &x->rq, &x->plan);
}

static int decode(struct ctx *x, uint16_t prefill)
{
	return rt_route_decode(&x->t.core, &x->rq, prefill, &x->c);
}

/* t_spec() of model "m" at BS, in topology domains @d[0..nd). */
static struct rt_worker_spec spec_in(enum rt_worker_type type, const struct rt_domain *d,
				     size_t nd)
{
	struct rt_worker_spec s = t_spec("m", type, BS);

	s.domains = d;
	s.ndomains = nd;
	return s;
}

/* Register @worker as a one-rank @type worker of "m" in rack @rack (NULL: no topology). */
static uint16_t add_in(struct ctx *x, uint32_t worker, enum rt_worker_type type,
		       const struct rt_domain *rack)
{
	struct rt_worker_spec s = spec_in(type, rack, rack ? 1 : 0);

	return t_register(&x->t, worker, &s);
}

static uint16_t add(struct ctx *x, uint32_t worker, enum rt_worker_type type)
{
	return add_in(x, worker, type, NULL);
}

static bool disagg(const struct ctx *x)
{
	int m = rt_model_find(&x->t.rt, "m", 1);

	cr_assert_geq(m, 0, "model 'm' unknown");
	return rt_disagg_active(&x->t.rt, (uint32_t)m);
}

static struct rt_core_stats stats(const struct ctx *x)
{
	struct rt_core_stats st;

	rt_core_stats(&x->t.core, &st);
	return st;
}

static const struct rt_explain *explain(const struct ctx *x, enum rt_stage stage)
{
	return rt_core_explain(&x->t.core, stage);
}

/* The candidate for @target in the last decision of @stage. */
static const struct rt_candidate *cand(const struct ctx *x, enum rt_stage stage, int target)
{
	const struct rt_explain *ex = explain(x, stage);
	const struct rt_candidate *c = NULL;

	for (uint32_t i = 0; i < ex->ncand; i++)
		if (ex->cand[i].target == target)
			c = &ex->cand[i];
	cr_assert_not_null(c, "target %d is no %s candidate", target, rt_stage_name(stage));
	return c;
}

static void assert_load(const struct ctx *x, uint16_t target, uint64_t blocks, uint64_t prefill)
{
	cr_assert_eq(t_load_blocks(&x->t, target), blocks, "target %u: blocks %lu, expected %lu",
		     target, (unsigned long)t_load_blocks(&x->t, target), (unsigned long)blocks);
	cr_assert_eq(t_load_prefill(&x->t, target), prefill, "target %u: prefill %lu, expected %lu",
		     target, (unsigned long)t_load_prefill(&x->t, target), (unsigned long)prefill);
}

/* Put @nblocks blocks of decode load on @target: a decode stage after @prefill, pinned. */
static void load_decode(struct ctx *x, uint16_t prefill, uint16_t target, uint32_t nblocks)
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

/* Members of every pool of every model: a refused registration must not change them. */
static uint32_t pooled(const struct ctx *x)
{
	uint32_t n = 0;

	for (uint32_t m = 0; m < x->t.rt.nmodels; m++)
		for (int p = 0; p < RT_WORKER_TYPES; p++)
			n += x->t.rt.model[m].pool[p].n;
	return n;
}

/* rt_register(@worker, @spec) must fail with @rc, give a reason containing @why, change nothing. */
static void refused(struct ctx *x, uint32_t worker, const struct rt_worker_spec *spec, int rc,
		    const char *why)
{
	uint32_t members = pooled(x), models = x->t.rt.nmodels;
	char err[256];
	int got = rt_register(&x->t.rt, worker, spec, err, sizeof(err));

	cr_assert_eq(got, rc, "rt_register: %d, expected %d (%s)", got, rc, err);
	cr_assert_not_null(strstr(err, why), "reason '%s' does not say '%s'", err, why);
	cr_assert_eq(pooled(x), members, "a refused registration changed the pools");
	cr_assert_eq(x->t.rt.nmodels, models, "a refused registration created a model");
	if (rc != -EEXIST)
		cr_assert_eq(rt_target_find(&x->t.rt, worker, spec->dp_rank_start), -ENOENT);
}

/* §5: registration refuses every invalid field, says why, and changes nothing. */

Test(route_pools, model_name_empty_or_over_255_bytes_is_refused_with_reason)
{
	struct rt_worker_spec s = t_spec("", RT_DECODE, BS);
	char name[RT_NAME_MAX + 2];
	struct ctx x;

	ctx_open(&x, NULL, RT_TRANSFER_NONE, 0);
	refused(&x, 1, &s, -EINVAL, "model name");
	memset(name, 'a', RT_NAME_MAX + 1);
	name[RT_NAME_MAX + 1] = '\0';
	s.model = name;
	refused(&x, 1, &s, -EINVAL, "model name");
	name[RT_NAME_MAX] = '\0'; /* 255 bytes: the longest allowed */
	t_register(&x.t, 1, &s);
	t_route_close(&x.t);
}

Test(route_pools, worker_and_model_type_must_be_known_and_agree)
{
	struct rt_worker_spec s = t_spec("m", RT_DECODE, BS);
	struct ctx x;

	ctx_open(&x, NULL, RT_TRANSFER_NONE, 0);
	s.type = RT_WORKER_TYPES;
	refused(&x, 1, &s, -EINVAL, "worker type 3 unknown");
	s = t_spec("m", RT_DECODE, BS);
	s.model_type = (enum rt_model_type)7;
	refused(&x, 1, &s, -EINVAL, "model type 7 unknown");
	s = t_spec("m", RT_PREFILL, BS);
	s.model_type = RT_MODEL_CHAT;
	refused(&x, 1, &s, -EINVAL, "prefill worker must register model type empty");
	s.model_type = RT_MODEL_COMPLETIONS;
	refused(&x, 1, &s, -EINVAL, "prefill worker must register model type empty");
	s = t_spec("m", RT_DECODE, BS);
	s.model_type = RT_MODEL_EMPTY;
	refused(&x, 1, &s, -EINVAL, "decode worker must register model type chat or completions");
	s = t_spec("m", RT_AGGREGATED, BS);
	s.model_type = RT_MODEL_EMPTY;
	refused(&x, 1, &s, -EINVAL, "aggregated worker must register model type chat");
	s.model_type = RT_MODEL_COMPLETIONS;
	t_register(&x.t, 1, &s);
	t_route_close(&x.t);
}

Test(route_pools, needs_that_disagree_with_the_worker_type_are_refused_with_reason)
{
	static const struct {
		enum rt_worker_type type;
		uint32_t needs;
		const char *why;
	} bad[] = {
	    {RT_PREFILL, RT_NEEDS_PREFILL, "prefill worker needs decode, not needs=1"},
	    {RT_PREFILL, 0, "prefill worker needs decode, not needs=0"},
	    {RT_PREFILL, RT_NEEDS_PREFILL | RT_NEEDS_DECODE, "needs decode, not needs=3"},
	    {RT_DECODE, RT_NEEDS_DECODE, "decode worker needs prefill, not needs=2"},
	    {RT_DECODE, 0, "decode worker needs prefill"},
	    {RT_AGGREGATED, RT_NEEDS_PREFILL, "aggregated worker needs nothing, not needs=1"},
	    {RT_AGGREGATED, RT_NEEDS_DECODE, "aggregated worker needs nothing"},
	};
	struct ctx x;

	ctx_open(&x, NULL, RT_TRANSFER_NONE, 0);
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		struct rt_worker_spec s = t_spec("m", bad[i].type, BS);

		s.needs = bad[i].needs;
		refused(&x, 1, &s, -EINVAL, bad[i].why);
	}
	t_route_close(&x.t);
}

Test(route_pools, block_size_not_a_power_of_two_up_to_1024_is_refused_with_reason)
{
	static const uint32_t bad[] = {0, 3, 24, 1000, 1025, 2048};
	struct rt_worker_spec s;
	struct ctx x;

	ctx_open(&x, NULL, RT_TRANSFER_NONE, 0);
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		s = t_spec("m", RT_DECODE, bad[i]);
		refused(&x, 1, &s, -EINVAL, "not a power of two in [1, 1024]");
	}
	s = t_spec("m1", RT_DECODE, 1);
	t_register(&x.t, 1, &s);
	s = t_spec("m1024", RT_DECODE, 1024);
	t_register(&x.t, 2, &s);
	t_route_close(&x.t);
}

Test(route_pools, zero_capacity_batch_or_dp_ranks_is_refused_with_reason)
{
	struct rt_worker_spec s = t_spec("m", RT_AGGREGATED, BS);
	struct ctx x;

	ctx_open(&x, NULL, RT_TRANSFER_NONE, 0);
	s.kv_capacity_blocks = 0;
	refused(&x, 1, &s, -EINVAL, "KV capacity");
	s = t_spec("m", RT_AGGREGATED, BS);
	s.max_batched_tokens = 0;
	refused(&x, 1, &s, -EINVAL, "max batched tokens");
	s = t_spec("m", RT_AGGREGATED, BS);
	s.dp_ranks = 0;
	refused(&x, 1, &s, -EINVAL, "DP rank range");
	s.dp_rank_start = UINT32_MAX;
	s.dp_ranks = 2;
	refused(&x, 1, &s, -EINVAL, "DP rank range");
	t_route_close(&x.t);
}

Test(route_pools, bad_topology_domains_and_transfer_rules_are_refused_with_reason)
{
	static const struct rt_domain twice[] = {{"rack", "r1"}, {"zone", "z"}, {"rack", "r2"}};
	static const struct rt_domain empty[] = {{"rack", ""}};
	static const double weight[] = {-0.25, 1.5, NAN, INFINITY};
	struct rt_worker_spec s = spec_in(RT_PREFILL, twice, 3);
	struct ctx x;

	ctx_open(&x, NULL, RT_TRANSFER_NONE, 0);
	refused(&x, 1, &s, -EINVAL, "topology domain 'rack' given twice");
	s = spec_in(RT_PREFILL, empty, 1);
	refused(&x, 1, &s, -EINVAL, "name or value empty");
	s = spec_in(RT_PREFILL, rack1, 1);
	for (size_t i = 0; i < sizeof(weight) / sizeof(weight[0]); i++) {
		s.transfer = (struct rt_transfer){"rack", RT_TRANSFER_PREFERRED, weight[i]};
		refused(&x, 1, &s, -EINVAL, "preferred weight");
	}
	s.transfer = (struct rt_transfer){"rack", (enum rt_enforcement)5, 0.5};
	refused(&x, 1, &s, -EINVAL, "enforcement 5 unknown");
	s.transfer = (struct rt_transfer){"", RT_TRANSFER_REQUIRED, 0.5};
	refused(&x, 1, &s, -EINVAL, "transfer domain name");
	s.transfer = (struct rt_transfer){"rack", RT_TRANSFER_PREFERRED, 1.0};
	t_register(&x.t, 1, &s);
	s.transfer.preferred_weight = 0.0;
	t_register(&x.t, 2, &s);
	t_route_close(&x.t);
}

Test(route_pools, duplicate_worker_id_is_refused_with_eexist_until_it_leaves)
{
	struct rt_worker_spec other = t_spec("other", RT_AGGREGATED, BS);
	struct ctx x;
	uint16_t d;

	ctx_open(&x, NULL, RT_TRANSFER_NONE, 0);
	d = add(&x, 1, RT_DECODE);
	refused(&x, 1, &other, -EEXIST, "worker 1 is registered already");
	cr_assert_eq(rt_target_find(&x.t.rt, 1, 0), d);
	cr_assert_eq(rt_unregister(&x.t.rt, 1), 0);
	t_register(&x.t, 1, &other);
	t_route_close(&x.t);
}

Test(route_pools, refused_registration_leaves_routing_as_it_was)
{
	struct rt_worker_spec s = t_spec("m", RT_PREFILL, BS);
	struct ctx x;
	uint16_t d, p;

	ctx_open(&x, NULL, RT_TRANSFER_NONE, 0);
	d = add(&x, 1, RT_DECODE);
	s.needs = 0;
	refused(&x, 2, &s, -EINVAL, "needs decode");
	cr_assert_not(disagg(&x), "a refused prefill worker activated the prefill stage");
	prompt(&x, 1);
	cr_assert_eq(route(&x), 0);
	cr_assert_eq(x.plan.kind, RT_PLAN_AGGREGATED);
	cr_assert_eq(x.plan.first.target, d);
	/* The same worker id, now valid, registers and activates the prefill stage. */
	p = add(&x, 2, RT_PREFILL);
	cr_assert(disagg(&x));
	cr_assert_eq(route(&x), 0);
	cr_assert_eq(x.plan.first.target, p);
	t_route_close(&x.t);
}

/* Four targets, three of them taken by worker 1 of "m". */
static void open_three_of_four_taken(struct ctx *x)
{
	struct rt_worker_spec s = t_spec("m", RT_AGGREGATED, BS);
	struct rt_config cfg;

	t_route_config(&cfg);
	cfg.max_targets = 4;
	ctx_open(x, &cfg, RT_TRANSFER_NONE, 0);
	s.dp_ranks = 3;
	t_register(&x->t, 1, &s);
}

Test(route_pools, running_out_of_targets_is_refused_with_enospc)
{
	struct rt_worker_spec s = t_spec("m", RT_AGGREGATED, BS);
	struct ctx x;

	open_three_of_four_taken(&x);
	s.dp_ranks = 2;
	refused(&x, 2, &s, -ENOSPC, "no routing target");
	s.dp_ranks = 1;
	t_register(&x.t, 2, &s);
	refused(&x, 3, &s, -ENOSPC, "no routing target");
	t_route_close(&x.t);
}

/* route.h: "a negative errno with nothing changed", a model slot included. */
Test(route_pools, registration_refused_for_lack_of_targets_creates_no_model)
{
	struct rt_worker_spec s = t_spec("other", RT_AGGREGATED, BS);
	struct ctx x;

	open_three_of_four_taken(&x);
	s.dp_ranks = 2;
	cr_assert_eq(rt_register(&x.t.rt, 2, &s, NULL, 0), -ENOSPC);
	cr_assert_eq(rt_model_find(&x.t.rt, "other", 5), -ENOENT,
		     "a refused registration left model 'other' behind");
	t_route_close(&x.t);
}

/* One block size per pool; decode and aggregated share the serving one. */

Test(route_pools, decode_worker_with_other_block_size_is_refused_with_reason)
{
	struct rt_worker_spec s = t_spec("m", RT_DECODE, 32);
	struct ctx x;

	ctx_open(&x, NULL, RT_TRANSFER_NONE, 0);
	add(&x, 1, RT_DECODE);
	refused(&x, 2, &s, -EINVAL,
		"block size 32 differs from the 16 of the decode/aggregated pool of model 'm'");
	s.block_size = BS;
	t_register(&x.t, 2, &s);
	t_route_close(&x.t);
}

Test(route_pools, decode_and_aggregated_workers_share_one_block_size)
{
	struct rt_worker_spec s = t_spec("m", RT_AGGREGATED, 32);
	struct ctx x;

	ctx_open(&x, NULL, RT_TRANSFER_NONE, 0);
	add(&x, 1, RT_DECODE);
	refused(&x, 2, &s, -EINVAL, "decode/aggregated pool");
	s.block_size = BS;
	t_register(&x.t, 2, &s);
	/* Aggregated first works the same way round. */
	s = t_spec("n", RT_AGGREGATED, 64);
	t_register(&x.t, 3, &s);
	s = t_spec("n", RT_DECODE, BS);
	refused(&x, 4, &s, -EINVAL, "differs from the 64 of the");
	t_route_close(&x.t);
}

Test(route_pools, prefill_block_size_may_differ_from_decode_but_not_from_prefill)
{
	struct rt_worker_spec s = t_spec("m", RT_PREFILL, 32);
	struct ctx x;
	uint16_t p, d;

	ctx_open(&x, NULL, RT_TRANSFER_NONE, 0);
	d = add(&x, 1, RT_DECODE);
	p = t_register(&x.t, 2, &s);
	s.block_size = BS;
	refused(&x, 3, &s, -EINVAL, "prefill pool");
	prompt(&x, 1);
	cr_assert_eq(route(&x), 0);
	cr_assert_eq(x.plan.first.target, p);
	cr_assert_eq(explain(&x, RT_STAGE_PREFILL)->blocks, NTOK / 32);
	cr_assert_eq(decode(&x, p), 0);
	cr_assert_eq(x.c.target, d);
	cr_assert_eq(explain(&x, RT_STAGE_DECODE)->blocks, NBLK);
	assert_load(&x, d, NBLK, 0);
	t_route_close(&x.t);
}

Test(route_pools, emptied_pool_accepts_a_new_block_size)
{
	struct rt_worker_spec s = t_spec("m", RT_DECODE, 32);
	struct ctx x;
	uint16_t d;

	ctx_open(&x, NULL, RT_TRANSFER_NONE, 0);
	add(&x, 1, RT_DECODE);
	add(&x, 2, RT_AGGREGATED);
	cr_assert_eq(rt_unregister(&x.t.rt, 1), 0);
	refused(&x, 3, &s, -EINVAL, "differs"); /* the aggregated worker still holds 16 */
	cr_assert_eq(rt_unregister(&x.t.rt, 2), 0);
	d = t_register(&x.t, 3, &s);
	prompt(&x, 1);
	cr_assert_eq(route(&x), 0);
	cr_assert_eq(x.plan.first.target, d);
	cr_assert_eq(explain(&x, RT_STAGE_AGGREGATED)->blocks, NTOK / 32);
	assert_load(&x, d, NTOK / 32, NTOK);
	t_route_close(&x.t);
}

/* §5: the prefill stage is active while the model has prefill and serving targets. */

/* Register a @first and a @second worker: the prefill stage switches on with the second. */
static void activates_with_second(enum rt_worker_type first, enum rt_worker_type second)
{
	struct ctx x;
	uint16_t a, b;

	ctx_open(&x, NULL, RT_TRANSFER_NONE, 0);
	a = add(&x, 1, first);
	cr_assert_not(disagg(&x));
	prompt(&x, 1);
	if (first != RT_PREFILL) {
		cr_assert_eq(route(&x), 0);
		cr_assert_eq(x.plan.kind, RT_PLAN_AGGREGATED);
		cr_assert_eq(x.plan.first.target, a);
	}
	b = add(&x, 2, second);
	cr_assert(disagg(&x));
	cr_assert_eq(route(&x), 0);
	cr_assert_eq(x.plan.kind, RT_PLAN_DISAGG);
	cr_assert_eq(x.plan.first.target, first == RT_PREFILL ? a : b);
	t_route_close(&x.t);
}

Test(route_pools, prefill_then_decode_activates_the_prefill_stage)
{
	activates_with_second(RT_PREFILL, RT_DECODE);
}

Test(route_pools, decode_then_prefill_activates_the_prefill_stage)
{
	activates_with_second(RT_DECODE, RT_PREFILL);
}

Test(route_pools, prefill_and_aggregated_activate_the_prefill_stage)
{
	activates_with_second(RT_PREFILL, RT_AGGREGATED);
	activates_with_second(RT_AGGREGATED, RT_PREFILL);
}

Test(route_pools, only_prefill_workers_cannot_serve)
{
	struct ctx x;
	uint16_t p;

	ctx_open(&x, NULL, RT_TRANSFER_NONE, 0);
	p = add(&x, 1, RT_PREFILL);
	cr_assert_not(disagg(&x));
	prompt(&x, 1);
	cr_assert_eq(route(&x), -ENODEV);
	cr_assert_eq(stats(&x).no_target, 1);
	assert_load(&x, p, 0, 0);
	t_route_close(&x.t);
}

Test(route_pools, prefill_stage_deactivates_when_the_last_prefill_worker_leaves)
{
	struct ctx x;
	uint16_t p2, d;

	ctx_open(&x, NULL, RT_TRANSFER_NONE, 0);
	add(&x, 1, RT_PREFILL);
	p2 = add(&x, 2, RT_PREFILL);
	d = add(&x, 3, RT_DECODE);
	prompt(&x, 1);
	cr_assert_eq(rt_unregister(&x.t.rt, 1), 0);
	cr_assert(disagg(&x));
	cr_assert_eq(route(&x), 0);
	cr_assert_eq(x.plan.kind, RT_PLAN_DISAGG);
	cr_assert_eq(x.plan.first.target, p2);
	cr_assert_eq(rt_unregister(&x.t.rt, 2), 0);
	cr_assert_not(disagg(&x));
	cr_assert_eq(route(&x), 0);
	cr_assert_eq(x.plan.kind, RT_PLAN_AGGREGATED);
	cr_assert_eq(x.plan.first.target, d);
	t_route_close(&x.t);
}

/* §5: the stage rules of prefill and decode. */

Test(route_pools, prefill_stage_scores_overlap_and_loads_prefill_tokens_only)
{
	const struct rt_explain *ex;
	struct ctx x;
	uint16_t p1, p2, d;

	ctx_open(&x, NULL, RT_TRANSFER_NONE, 0);
	p1 = add(&x, 1, RT_PREFILL);
	p2 = add(&x, 2, RT_PREFILL);
	d = add(&x, 3, RT_DECODE);
	prompt(&x, 1);
	t_cache(&x.t, p2, x.tok, 4, BS);
	cr_assert_eq(route(&x), 0);
	cr_assert_eq(x.plan.kind, RT_PLAN_DISAGG);
	cr_assert_eq(x.plan.first.target, p2, "the overlap on p2 did not count");
	cr_assert_eq(x.plan.first.worker, 2);
	cr_assert_eq(x.plan.first.overlap, 4);
	ex = explain(&x, RT_STAGE_PREFILL);
	cr_assert_eq(ex->outcome, 0);
	cr_assert_not(ex->policy.track_active_blocks);
	cr_assert(ex->policy.track_prefill_tokens);
	cr_assert_eq(ex->policy.overlap_score_credit, 1.0);
	cr_assert_eq(cand(&x, RT_STAGE_PREFILL, p1)->decode_blocks, 0.0);
	assert_load(&x, p2, 0, NTOK - 4 * BS);
	assert_load(&x, p1, 0, 0);
	assert_load(&x, d, 0, 0);
	t_route_close(&x.t);
}

Test(route_pools, decode_stage_has_no_overlap_credit_kv_reuse_or_prefill_tokens)
{
	const struct rt_explain *ex;
	struct rt_request peek;
	struct rt_choice c;
	struct ctx x;
	uint16_t p, d1, d2;

	ctx_open(&x, NULL, RT_TRANSFER_NONE, 0);
	p = add(&x, 1, RT_PREFILL);
	d1 = add(&x, 2, RT_DECODE);
	d2 = add(&x, 3, RT_DECODE);
	prompt(&x, 1);
	t_cache(&x.t, d1, x.tok, NBLK, BS);
	load_decode(&x, p, d1, 2);
	/* Aggregated scoring takes d1: its overlap outweighs its two blocks of load... */
	peek = x.rq;
	peek.peek = true;
	cr_assert_eq(rt_route_fallback(&x.t.core, &peek, &c), 0);
	cr_assert_eq(c.target, d1);
	/* ... the decode stage does not chase the prefix. */
	cr_assert_eq(decode(&x, p), 0);
	cr_assert_eq(x.c.target, d2);
	ex = explain(&x, RT_STAGE_DECODE);
	cr_assert_eq(ex->policy.overlap_score_credit, 0.0);
	cr_assert_not(ex->policy.assume_kv_reuse);
	cr_assert_not(ex->policy.track_prefill_tokens);
	cr_assert(ex->policy.track_active_blocks);
	cr_assert_eq(cand(&x, RT_STAGE_DECODE, d1)->overlap, 0);
	cr_assert_eq(cand(&x, RT_STAGE_DECODE, d1)->cost, 2.0 + NBLK);
	cr_assert_eq(cand(&x, RT_STAGE_DECODE, d2)->cost, (double)NBLK);
	assert_load(&x, d2, NBLK, 0);
	t_route_close(&x.t);
}

Test(route_pools, decode_counts_every_block_even_when_the_prompt_is_in_flight)
{
	struct rt_choice c;
	struct ctx x;
	uint16_t p, d;

	ctx_open(&x, NULL, RT_TRANSFER_NONE, 0);
	p = add(&x, 1, RT_PREFILL);
	d = add(&x, 2, RT_DECODE);
	prompt(&x, 1);
	cr_assert_eq(rt_route_fallback(&x.t.core, &x.rq, &c), 0); /* in flight, deduplicated */
	assert_load(&x, d, NBLK, NTOK);
	for (uint32_t i = 2; i <= 3; i++) {
		cr_assert_eq(decode(&x, p), 0);
		cr_assert_eq(cand(&x, RT_STAGE_DECODE, d)->new_blocks, NBLK);
		assert_load(&x, d, i * NBLK, NTOK);
	}
	t_route_close(&x.t);
}

/* §5: fallback to decode-only, and enforce_disagg. */

/* A prefill and a decode worker, the prefill one reported over busy_kv_fraction 0.5. */
static void open_busy_prefill(struct ctx *x, bool enforce, uint16_t *p, uint16_t *d)
{
	struct rt_config cfg;

	t_route_config(&cfg);
	cfg.busy_kv_fraction = 0.5;
	cfg.enforce_disagg = enforce;
	ctx_open(x, &cfg, RT_TRANSFER_NONE, 0);
	*p = add(x, 1, RT_PREFILL);
	*d = add(x, 2, RT_DECODE);
	cr_assert_eq(rt_report_load(&x->t.rt, 1, 0, 600, 0), 0);
	prompt(x, 1);
}

Test(route_pools, busy_prefill_targets_fall_back_to_decode_only)
{
	const struct rt_explain *ex;
	struct rt_policy def;
	struct ctx x;
	uint16_t p, d;

	open_busy_prefill(&x, false, &p, &d);
	cr_assert_eq(route(&x), 0);
	cr_assert_eq(x.plan.kind, RT_PLAN_FALLBACK);
	cr_assert_eq(x.plan.first.target, d);
	cr_assert_eq(cand(&x, RT_STAGE_PREFILL, p)->filter, RT_FILTER_BUSY_KV);
	ex = explain(&x, RT_STAGE_FALLBACK);
	rt_policy_default(&def);
	cr_assert_eq(ex->outcome, 0);
	cr_assert_eq(ex->policy.overlap_score_credit, def.overlap_score_credit);
	cr_assert_eq(ex->policy.assume_kv_reuse, def.assume_kv_reuse);
	cr_assert_eq(ex->policy.track_active_blocks, def.track_active_blocks);
	cr_assert_eq(ex->policy.track_prefill_tokens, def.track_prefill_tokens);
	cr_assert_eq(stats(&x).fallback_no_prefill, 1);
	cr_assert_eq(stats(&x).enforce_refused, 0);
	assert_load(&x, d, NBLK, NTOK);
	assert_load(&x, p, 0, 0);
	t_route_close(&x.t);
}

Test(route_pools, enforce_disagg_refuses_with_the_prefill_stage_error)
{
	struct ctx x;
	uint16_t p, d;

	open_busy_prefill(&x, true, &p, &d);
	cr_assert_eq(route(&x), -EBUSY);
	cr_assert_eq(stats(&x).enforce_refused, 1);
	cr_assert_eq(stats(&x).fallback_no_prefill, 0);
	cr_assert_eq(stats(&x).overloaded, 1);
	assert_load(&x, p, 0, 0);
	assert_load(&x, d, 0, 0);
	t_route_close(&x.t);
}

Test(route_pools, failed_prefill_falls_back_to_decode_only_and_is_counted)
{
	struct ctx x;
	uint16_t p, d;

	ctx_open(&x, NULL, RT_TRANSFER_NONE, 0);
	p = add(&x, 1, RT_PREFILL);
	d = add(&x, 2, RT_DECODE);
	prompt(&x, 1);
	cr_assert_eq(route(&x), 0);
	cr_assert_eq(x.plan.first.target, p);
	cr_assert_eq(rt_release(&x.t.core, x.plan.first.load), 0); /* prefill failed */
	cr_assert_eq(rt_route_fallback(&x.t.core, &x.rq, &x.c), 0);
	cr_assert_eq(x.c.target, d);
	cr_assert_eq(explain(&x, RT_STAGE_FALLBACK)->outcome, 0);
	cr_assert_eq(stats(&x).fallback_prefill_failed, 1);
	assert_load(&x, d, NBLK, NTOK); /* decode-only prefills for itself */
	assert_load(&x, p, 0, 0);
	t_route_close(&x.t);
}

Test(route_pools, failed_prefill_under_enforce_disagg_is_refused_with_eperm)
{
	struct rt_config cfg;
	struct ctx x;
	uint16_t d;

	t_route_config(&cfg);
	cfg.enforce_disagg = true;
	ctx_open(&x, &cfg, RT_TRANSFER_NONE, 0);
	add(&x, 1, RT_PREFILL);
	d = add(&x, 2, RT_DECODE);
	prompt(&x, 1);
	cr_assert_eq(rt_route_fallback(&x.t.core, &x.rq, &x.c), -EPERM);
	cr_assert_eq(stats(&x).fallback_prefill_failed, 1);
	cr_assert_eq(stats(&x).enforce_refused, 1);
	assert_load(&x, d, 0, 0);
	t_route_close(&x.t);
}

/* §5: bootstrap (SGLang) picks both targets up front. */

static void open_bootstrap(struct ctx *x, uint32_t max_requests, uint16_t *p, uint16_t *d)
{
	struct rt_config cfg;

	t_route_config(&cfg);
	cfg.bootstrap = true;
	cfg.busy_kv_fraction = 0.5;
	if (max_requests)
		cfg.max_requests = max_requests;
	ctx_open(x, &cfg, RT_TRANSFER_NONE, 0);
	*p = add(x, 1, RT_PREFILL);
	*d = add(x, 2, RT_DECODE);
	prompt(x, 1);
}

Test(route_pools, bootstrap_chooses_prefill_and_decode_with_a_63_bit_room)
{
	struct rt_plan first;
	struct ctx x;
	uint16_t p, d;

	open_bootstrap(&x, 0, &p, &d);
	cr_assert_eq(route(&x), 0);
	cr_assert_eq(x.plan.kind, RT_PLAN_BOOTSTRAP);
	cr_assert_eq(x.plan.first.target, p);
	cr_assert_eq(x.plan.decode.target, d);
	cr_assert_eq(x.plan.decode.worker, 2);
	cr_assert_neq(x.plan.first.load, 0);
	cr_assert_neq(x.plan.decode.load, 0);
	cr_assert_lt(x.plan.room_id, 1ull << 63);
	assert_load(&x, p, 0, NTOK);
	assert_load(&x, d, NBLK, 0);
	cr_assert_eq(explain(&x, RT_STAGE_DECODE)->policy.overlap_score_credit, 0.0);
	first = x.plan;
	cr_assert_eq(route(&x), 0);
	cr_assert_lt(x.plan.room_id, 1ull << 63);
	cr_assert_neq(x.plan.room_id, first.room_id);
	cr_assert_eq(rt_release(&x.t.core, first.first.load), 0);
	cr_assert_eq(rt_release(&x.t.core, first.decode.load), 0);
	assert_load(&x, p, 0, NTOK); /* the second request's */
	assert_load(&x, d, NBLK, 0);
	t_route_close(&x.t);
}

Test(route_pools, bootstrap_releases_the_prefill_load_when_no_decode_target_fits)
{
	struct ctx x;
	uint16_t p, d;

	/* Four in-flight slots: eight refusals leak none of them. */
	open_bootstrap(&x, 4, &p, &d);
	cr_assert_eq(rt_report_load(&x.t.rt, 2, 0, 900, 0), 0);
	for (int i = 0; i < 8; i++) {
		cr_assert_eq(route(&x), -EBUSY);
		cr_assert_eq(x.plan.first.load, 0);
		assert_load(&x, p, 0, 0);
		assert_load(&x, d, 0, 0);
	}
	cr_assert_eq(stats(&x).overloaded, 8);
	/* Each success takes two slots, prefill and decode: all four must be free. */
	cr_assert_eq(rt_report_load(&x.t.rt, 2, 0, 0, 0), 0);
	for (int i = 0; i < 2; i++)
		cr_assert_eq(route(&x), 0, "in-flight slots leaked");
	cr_assert_eq(stats(&x).requests_full, 0);
	t_route_close(&x.t);
}

/* §6: topology-aware decode choice. */

Test(route_pools, required_rack_keeps_decode_in_the_prefill_rack_even_when_loaded)
{
	struct ctx x;
	uint16_t p, d1, d2, d3;

	ctx_open(&x, NULL, RT_TRANSFER_REQUIRED, 0.0);
	p = add_in(&x, 1, RT_PREFILL, rack1);
	d1 = add_in(&x, 2, RT_DECODE, rack1);
	d2 = add_in(&x, 3, RT_DECODE, rack2);
	d3 = add(&x, 4, RT_DECODE);
	load_decode(&x, p, d1, 6);
	for (uint32_t i = 0; i < 3; i++) {
		prompt(&x, i);
		cr_assert_eq(route(&x), 0);
		cr_assert_eq(x.plan.first.target, p);
		cr_assert_eq(decode(&x, p), 0);
		cr_assert_eq(x.c.target, d1);
		cr_assert_eq(cand(&x, RT_STAGE_DECODE, d1)->filter, RT_ELIGIBLE);
		cr_assert_eq(cand(&x, RT_STAGE_DECODE, d2)->filter, RT_FILTER_TOPOLOGY);
		cr_assert_eq(cand(&x, RT_STAGE_DECODE, d3)->filter, RT_FILTER_TOPOLOGY);
	}
	assert_load(&x, d1, 6 + 3 * NBLK, 0);
	assert_load(&x, d2, 0, 0);
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
	struct ctx x;
	uint16_t p, d1, d2;

	ctx_open(&x, NULL, RT_TRANSFER_PREFERRED, w);
	p = add_in(&x, 1, RT_PREFILL, rack1);
	d1 = add_in(&x, 2, RT_DECODE, rack1);
	d2 = add_in(&x, 3, RT_DECODE, rack2);
	load_decode(&x, p, d1, 6);
	load_decode(&x, p, d2, 2);
	prompt(&x, 1);
	cr_assert_eq(decode(&x, p), 0);
	c1 = cand(&x, RT_STAGE_DECODE, d1);
	c2 = cand(&x, RT_STAGE_DECODE, d2);
	cr_assert(c1->filter == RT_ELIGIBLE && c2->filter == RT_ELIGIBLE);
	cr_assert_eq(c1->same_domain, 1);
	cr_assert_eq(c2->same_domain, 0);
	cr_assert(c1->cost == want, "w %g: cost %.17g, expected %.17g", w, c1->cost, want);
	cr_assert(c2->cost == 2.0 + NBLK, "w %g: the other rack's cost changed", w);
	chosen = x.c.worker;
	t_route_close(&x.t);
	return chosen;
}

Test(route_pools, preferred_rack_multiplies_same_rack_cost_by_exp_minus_tanh_weight)
{
	/* 14 * exp(-tanh(w)) against 10: w = 0.1 gives 12.67, w = 1 gives 6.54. */
	cr_assert_eq(preferred_choice(0.0), 3);
	cr_assert_eq(preferred_choice(0.1), 3);
	cr_assert_eq(preferred_choice(1.0), 2, "the discount did not flip the choice");
}

Test(route_pools, required_rack_without_decode_fails_before_prefill)
{
	struct ctx x;
	uint16_t p1, p2, d;

	ctx_open(&x, NULL, RT_TRANSFER_REQUIRED, 0.0);
	p1 = add_in(&x, 1, RT_PREFILL, rack1);
	p2 = add_in(&x, 2, RT_PREFILL, rack2);
	d = add_in(&x, 3, RT_DECODE, rack3);
	prompt(&x, 1);
	cr_assert_eq(route(&x), -EXDEV);
	cr_assert_eq(x.plan.first.load, 0);
	cr_assert_eq(explain(&x, RT_STAGE_PREFILL)->outcome, -EXDEV);
	cr_assert_eq(cand(&x, RT_STAGE_PREFILL, p1)->filter, RT_FILTER_NO_DECODE);
	cr_assert_eq(cand(&x, RT_STAGE_PREFILL, p2)->filter, RT_FILTER_NO_DECODE);
	assert_load(&x, p1, 0, 0);
	assert_load(&x, p2, 0, 0);
	assert_load(&x, d, 0, 0);
	cr_assert_eq(stats(&x).no_decode_domain, 1);
	cr_assert_eq(stats(&x).fallback_no_prefill, 0);
	t_route_close(&x.t);
}

Test(route_pools, prefill_in_a_rack_without_decode_is_filtered)
{
	struct ctx x;
	uint16_t p1, p2, d;

	ctx_open(&x, NULL, RT_TRANSFER_REQUIRED, 0.0);
	p1 = add_in(&x, 1, RT_PREFILL, rack1);
	p2 = add_in(&x, 2, RT_PREFILL, rack2);
	d = add_in(&x, 3, RT_DECODE, rack2);
	prompt(&x, 1);
	t_cache(&x.t, p1, x.tok, NBLK, BS); /* p1 would be the cheapest by far */
	cr_assert_eq(route(&x), 0);
	cr_assert_eq(x.plan.kind, RT_PLAN_DISAGG);
	cr_assert_eq(x.plan.first.target, p2);
	cr_assert_eq(cand(&x, RT_STAGE_PREFILL, p1)->filter, RT_FILTER_NO_DECODE);
	cr_assert_eq(cand(&x, RT_STAGE_PREFILL, p1)->overlap, NBLK);
	cr_assert_eq(cand(&x, RT_STAGE_PREFILL, p2)->filter, RT_ELIGIBLE);
	cr_assert_eq(decode(&x, p2), 0);
	cr_assert_eq(x.c.target, d);
	t_route_close(&x.t);
}

Test(route_pools, per_worker_transfer_rule_overrides_the_global_one)
{
	static const struct rt_domain z1r1[] = {{"zone", "z1"}, {"rack", "r1"}};
	static const struct rt_domain z2r1[] = {{"zone", "z2"}, {"rack", "r1"}};
	static const struct rt_domain z1r2[] = {{"zone", "z1"}, {"rack", "r2"}};
	struct rt_worker_spec s = spec_in(RT_PREFILL, z1r1, 2);
	uint16_t own, global, d_rack, d_zone;
	struct ctx x;

	ctx_open(&x, NULL, RT_TRANSFER_REQUIRED, 0.0);
	s.transfer = (struct rt_transfer){"zone", RT_TRANSFER_REQUIRED, 0.0};
	own = t_register(&x.t, 1, &s);
	s.transfer = (struct rt_transfer){0};
	global = t_register(&x.t, 2, &s);
	s = spec_in(RT_DECODE, z2r1, 2);
	d_rack = t_register(&x.t, 3, &s);
	s = spec_in(RT_DECODE, z1r2, 2);
	d_zone = t_register(&x.t, 4, &s);
	prompt(&x, 1);
	for (int i = 0; i < 4; i++) {
		cr_assert_eq(decode(&x, own), 0);
		cr_assert_eq(x.c.target, d_zone);
		cr_assert_eq(cand(&x, RT_STAGE_DECODE, d_rack)->filter, RT_FILTER_TOPOLOGY);
		cr_assert_eq(decode(&x, global), 0);
		cr_assert_eq(x.c.target, d_rack);
		cr_assert_eq(cand(&x, RT_STAGE_DECODE, d_zone)->filter, RT_FILTER_TOPOLOGY);
	}
	t_route_close(&x.t);
}

Test(route_pools, prefill_without_the_required_domain_value_is_not_used)
{
	struct ctx x;
	uint16_t bare, p, d;

	ctx_open(&x, NULL, RT_TRANSFER_REQUIRED, 0.0);
	bare = add(&x, 1, RT_PREFILL);
	d = add_in(&x, 2, RT_DECODE, rack1);
	prompt(&x, 1);
	cr_assert_eq(route(&x), -EXDEV);
	cr_assert_eq(cand(&x, RT_STAGE_PREFILL, bare)->filter, RT_FILTER_NO_DECODE);
	cr_assert_eq(decode(&x, bare), -EXDEV);
	cr_assert_eq(cand(&x, RT_STAGE_DECODE, d)->filter, RT_FILTER_TOPOLOGY);
	assert_load(&x, bare, 0, 0);
	assert_load(&x, d, 0, 0);
	p = add_in(&x, 3, RT_PREFILL, rack1);
	cr_assert_eq(route(&x), 0);
	cr_assert_eq(x.plan.first.target, p);
	t_route_close(&x.t);
}

/* Workers with several DP ranks. */

Test(route_pools, dp_ranks_get_one_target_each_and_route_independently)
{
	struct rt_worker_spec s = t_spec("m", RT_AGGREGATED, BS);
	struct rt_config cfg;
	uint32_t seen = 0;
	struct ctx x;
	int tg[4];

	t_route_config(&cfg);
	cfg.busy_kv_fraction = 0.5;
	ctx_open(&x, &cfg, RT_TRANSFER_NONE, 0);
	s.dp_rank_start = 2;
	s.dp_ranks = 4;
	cr_assert_eq(t_register(&x.t, 7, &s), rt_target_find(&x.t.rt, 7, 2));
	for (uint32_t r = 0; r < 4; r++) {
		tg[r] = rt_target_find(&x.t.rt, 7, 2 + r);
		cr_assert_geq(tg[r], 0, "rank %u has no target", 2 + r);
		for (uint32_t q = 0; q < r; q++)
			cr_assert_neq(tg[q], tg[r]);
	}
	cr_assert_eq(rt_target_find(&x.t.rt, 7, 1), -ENOENT);
	cr_assert_eq(rt_target_find(&x.t.rt, 7, 6), -ENOENT);
	cr_assert_eq(rt_report_load(&x.t.rt, 7, 6, 0, 0), -ENOENT);
	/* Rank 3 busy: three prompts spread over the three other ranks. */
	cr_assert_eq(rt_report_load(&x.t.rt, 7, 3, 900, 0), 0);
	for (uint32_t i = 0; i < 3; i++) {
		prompt(&x, i);
		cr_assert_eq(route(&x), 0);
		cr_assert_eq(x.plan.first.worker, 7);
		cr_assert(x.plan.first.dp_rank >= 2 && x.plan.first.dp_rank < 6);
		cr_assert_eq(x.plan.first.target, tg[x.plan.first.dp_rank - 2]);
		cr_assert_not(seen & 1u << x.plan.first.dp_rank, "rank %u chosen twice",
			      x.plan.first.dp_rank);
		seen |= 1u << x.plan.first.dp_rank;
		cr_assert_eq(explain(&x, RT_STAGE_AGGREGATED)->ncand, 4);
		cr_assert_eq(cand(&x, RT_STAGE_AGGREGATED, tg[1])->filter, RT_FILTER_BUSY_KV);
	}
	cr_assert_not(seen & 1u << 3);
	/* Rank 3 recovers: the next prompt goes to the only one without load. */
	cr_assert_eq(rt_report_load(&x.t.rt, 7, 3, 0, 0), 0);
	prompt(&x, 9);
	cr_assert_eq(route(&x), 0);
	cr_assert_eq(x.plan.first.dp_rank, 3);
	cr_assert_eq(x.plan.first.target, tg[1]);
	for (uint32_t r = 0; r < 4; r++)
		assert_load(&x, (uint16_t)tg[r], NBLK, NTOK);
	t_route_close(&x.t);
}

Test(route_pools, unregister_drops_every_rank_from_pools_and_prefix_index)
{
	struct rt_worker_spec s = t_spec("m", RT_AGGREGATED, BS);
	struct rt_config cfg;
	struct ctx x;
	uint16_t tg[4];

	/* Four targets only: the next worker must reuse the ids of the one that left. */
	t_route_config(&cfg);
	cfg.max_targets = 4;
	ctx_open(&x, &cfg, RT_TRANSFER_NONE, 0);
	s.dp_ranks = 4;
	t_register(&x.t, 1, &s);
	prompt(&x, 1);
	for (uint32_t r = 0; r < 4; r++) {
		tg[r] = (uint16_t)rt_target_find(&x.t.rt, 1, r);
		t_cache(&x.t, tg[r], x.tok, NBLK, BS);
		cr_assert_eq(pdx_target_blocks(&x.t.x, tg[r]), NBLK);
	}
	cr_assert_eq(rt_unregister(&x.t.rt, 1), 0);
	cr_assert_eq(pooled(&x), 0);
	for (uint32_t r = 0; r < 4; r++) {
		cr_assert_eq(rt_target_find(&x.t.rt, 1, r), -ENOENT);
		cr_assert_eq(pdx_target_blocks(&x.t.x, tg[r]), 0, "rank %u kept its blocks", r);
	}
	cr_assert_eq(route(&x), -ENODEV);
	t_register(&x.t, 2, &s);
	cr_assert_eq(route(&x), 0);
	cr_assert_eq(x.plan.first.worker, 2);
	cr_assert_eq(x.plan.first.overlap, 0, "the new worker inherited a cached prefix");
	for (uint32_t r = 0; r < 4; r++)
		cr_assert_eq(cand(&x, RT_STAGE_AGGREGATED, tg[r])->overlap, 0);
	t_route_close(&x.t);
}

Test(route_pools, unknown_worker_cannot_be_unregistered_or_report_load)
{
	struct ctx x;

	ctx_open(&x, NULL, RT_TRANSFER_NONE, 0);
	cr_assert_eq(rt_unregister(&x.t.rt, 99), -ENOENT);
	cr_assert_eq(rt_report_load(&x.t.rt, 99, 0, 1, 1), -ENOENT);
	add(&x, 1, RT_DECODE);
	cr_assert_eq(rt_report_load(&x.t.rt, 1, 0, 1, 1), 0);
	cr_assert_eq(rt_report_load(&x.t.rt, 1, 1, 1, 1), -ENOENT);
	cr_assert_eq(rt_unregister(&x.t.rt, 1), 0);
	cr_assert_eq(rt_unregister(&x.t.rt, 1), -ENOENT);
	cr_assert_eq(rt_report_load(&x.t.rt, 1, 0, 1, 1), -ENOENT);
	t_route_close(&x.t);
}
