/*
 * Pools of a model (routing-semantics §5): what registration refuses and why (with nothing
 * changed), one block size per pool, when the prefill stage switches on and off, and workers
 * with several DP ranks. struct t_ctx (route_fixture.h) holds the router and one request.
 */
#include <criterion/criterion.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "helpers.h"
#include "route_fixture.h"

#define BS T_BS		  /* block size of every pool unless a test says otherwise */
#define NTOK T_CTX_TOKENS /* prompt length in tokens */
#define NBLK (NTOK / BS)  /* ... and in blocks */

TestSuite(route_pools);

static bool disagg(const struct t_ctx *x)
{
	int m = rt_model_find(&x->t.rt, "m", 1);

	cr_assert_geq(m, 0, "model 'm' unknown");
	return rt_disagg_active(&x->t.rt, (uint32_t)m);
}

/* Members of every pool of every model: a refused registration must not change them. */
static uint32_t pooled(const struct t_ctx *x)
{
	uint32_t n = 0;

	for (uint32_t m = 0; m < x->t.rt.nmodels; m++)
		for (int p = 0; p < RT_WORKER_TYPES; p++)
			n += x->t.rt.model[m].pool[p].n;
	return n;
}

/* rt_register(@worker, @spec) must fail with @rc, give a reason containing @why, change nothing. */
static void refused(struct t_ctx *x, uint32_t worker, const struct rt_worker_spec *spec, int rc,
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
	struct t_ctx x;

	t_ctx_open(&x, NULL, RT_TRANSFER_NONE, 0);
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
	struct t_ctx x;

	t_ctx_open(&x, NULL, RT_TRANSFER_NONE, 0);
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
	struct t_ctx x;

	t_ctx_open(&x, NULL, RT_TRANSFER_NONE, 0);
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
	struct t_ctx x;

	t_ctx_open(&x, NULL, RT_TRANSFER_NONE, 0);
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
	struct t_ctx x;

	t_ctx_open(&x, NULL, RT_TRANSFER_NONE, 0);
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
	struct rt_worker_spec s = t_spec_in(RT_PREFILL, twice, 3);
	struct t_ctx x;

	t_ctx_open(&x, NULL, RT_TRANSFER_NONE, 0);
	refused(&x, 1, &s, -EINVAL, "topology domain 'rack' given twice");
	s = t_spec_in(RT_PREFILL, empty, 1);
	refused(&x, 1, &s, -EINVAL, "name or value empty");
	s = t_spec_in(RT_PREFILL, t_rack1, 1);
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
	struct t_ctx x;
	uint16_t d;

	t_ctx_open(&x, NULL, RT_TRANSFER_NONE, 0);
	d = t_ctx_add(&x, 1, RT_DECODE);
	refused(&x, 1, &other, -EEXIST, "worker 1 is registered already");
	cr_assert_eq(rt_target_find(&x.t.rt, 1, 0), d);
	cr_assert_eq(rt_unregister(&x.t.rt, 1), 0);
	t_register(&x.t, 1, &other);
	t_route_close(&x.t);
}

Test(route_pools, refused_registration_leaves_routing_as_it_was)
{
	struct rt_worker_spec s = t_spec("m", RT_PREFILL, BS);
	struct t_ctx x;
	uint16_t d, p;

	t_ctx_open(&x, NULL, RT_TRANSFER_NONE, 0);
	d = t_ctx_add(&x, 1, RT_DECODE);
	s.needs = 0;
	refused(&x, 2, &s, -EINVAL, "needs decode");
	cr_assert_not(disagg(&x), "a refused prefill worker activated the prefill stage");
	t_ctx_prompt(&x, 1);
	cr_assert_eq(t_ctx_route(&x), 0);
	cr_assert_eq(x.plan.kind, RT_PLAN_FALLBACK, "a decode worker alone serves decode-only");
	cr_assert_eq(x.plan.first.target, d);
	/* The same worker id, now valid, registers and activates the prefill stage. */
	p = t_ctx_add(&x, 2, RT_PREFILL);
	cr_assert(disagg(&x));
	cr_assert_eq(t_ctx_route(&x), 0);
	cr_assert_eq(x.plan.first.target, p);
	t_route_close(&x.t);
}

/* Four targets, three of them taken by worker 1 of "m". */
static void open_three_of_four_taken(struct t_ctx *x)
{
	struct rt_worker_spec s = t_spec("m", RT_AGGREGATED, BS);
	struct rt_config cfg;

	t_route_config(&cfg);
	cfg.max_targets = 4;
	t_ctx_open(x, &cfg, RT_TRANSFER_NONE, 0);
	s.dp_ranks = 3;
	t_register(&x->t, 1, &s);
}

Test(route_pools, running_out_of_targets_is_refused_with_enospc)
{
	struct rt_worker_spec s = t_spec("m", RT_AGGREGATED, BS);
	struct t_ctx x;

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
	struct t_ctx x;

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
	struct t_ctx x;

	t_ctx_open(&x, NULL, RT_TRANSFER_NONE, 0);
	t_ctx_add(&x, 1, RT_DECODE);
	refused(&x, 2, &s, -EINVAL,
		"block size 32 differs from the 16 of the decode/aggregated pool of model 'm'");
	s.block_size = BS;
	t_register(&x.t, 2, &s);
	t_route_close(&x.t);
}

Test(route_pools, decode_and_aggregated_workers_share_one_block_size)
{
	struct rt_worker_spec s = t_spec("m", RT_AGGREGATED, 32);
	struct t_ctx x;

	t_ctx_open(&x, NULL, RT_TRANSFER_NONE, 0);
	t_ctx_add(&x, 1, RT_DECODE);
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
	struct t_ctx x;
	uint16_t p, d;

	t_ctx_open(&x, NULL, RT_TRANSFER_NONE, 0);
	d = t_ctx_add(&x, 1, RT_DECODE);
	p = t_register(&x.t, 2, &s);
	s.block_size = BS;
	refused(&x, 3, &s, -EINVAL, "prefill pool");
	t_ctx_prompt(&x, 1);
	cr_assert_eq(t_ctx_route(&x), 0);
	cr_assert_eq(x.plan.first.target, p);
	cr_assert_eq(t_ctx_explain(&x, RT_STAGE_PREFILL)->blocks, NTOK / 32);
	cr_assert_eq(t_ctx_decode(&x, p), 0);
	cr_assert_eq(x.c.target, d);
	cr_assert_eq(t_ctx_explain(&x, RT_STAGE_DECODE)->blocks, NBLK);
	t_expect_load(&x.t, d, NBLK, 0);
	t_route_close(&x.t);
}

Test(route_pools, emptied_pool_accepts_a_new_block_size)
{
	struct rt_worker_spec s = t_spec("m", RT_DECODE, 32);
	struct t_ctx x;
	uint16_t d;

	t_ctx_open(&x, NULL, RT_TRANSFER_NONE, 0);
	t_ctx_add(&x, 1, RT_DECODE);
	t_ctx_add(&x, 2, RT_AGGREGATED);
	cr_assert_eq(rt_unregister(&x.t.rt, 1), 0);
	refused(&x, 3, &s, -EINVAL, "differs"); /* the aggregated worker still holds 16 */
	cr_assert_eq(rt_unregister(&x.t.rt, 2), 0);
	d = t_register(&x.t, 3, &s);
	t_ctx_prompt(&x, 1);
	cr_assert_eq(t_ctx_route(&x), 0);
	cr_assert_eq(x.plan.first.target, d);
	cr_assert_eq(t_ctx_explain(&x, RT_STAGE_FALLBACK)->blocks, NTOK / 32);
	t_expect_load(&x.t, d, NTOK / 32, NTOK);
	t_route_close(&x.t);
}

/* §5: the prefill stage is active while the model has prefill and serving targets. */

/* Register a @first and a @second worker: the prefill stage switches on with the second. */
static void activates_with_second(enum rt_worker_type first, enum rt_worker_type second)
{
	struct t_ctx x;
	uint16_t a, b;

	t_ctx_open(&x, NULL, RT_TRANSFER_NONE, 0);
	a = t_ctx_add(&x, 1, first);
	cr_assert_not(disagg(&x));
	t_ctx_prompt(&x, 1);
	if (first != RT_PREFILL) { /* decode workers alone: decode-only, counted */
		cr_assert_eq(t_ctx_route(&x), 0);
		cr_assert_eq(x.plan.kind,
			     first == RT_DECODE ? RT_PLAN_FALLBACK : RT_PLAN_AGGREGATED);
		cr_assert_eq(x.plan.first.target, a);
	}
	b = t_ctx_add(&x, 2, second);
	cr_assert(disagg(&x));
	cr_assert_eq(t_ctx_route(&x), 0);
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
	struct t_ctx x;
	uint16_t p;

	t_ctx_open(&x, NULL, RT_TRANSFER_NONE, 0);
	p = t_ctx_add(&x, 1, RT_PREFILL);
	cr_assert_not(disagg(&x));
	t_ctx_prompt(&x, 1);
	cr_assert_eq(t_ctx_route(&x), -ENODEV);
	cr_assert_eq(t_core_stats(&x.t.core).no_target, 1);
	t_expect_load(&x.t, p, 0, 0);
	t_route_close(&x.t);
}

Test(route_pools, prefill_stage_deactivates_when_the_last_prefill_worker_leaves)
{
	struct t_ctx x;
	uint16_t p2, d;

	t_ctx_open(&x, NULL, RT_TRANSFER_NONE, 0);
	t_ctx_add(&x, 1, RT_PREFILL);
	p2 = t_ctx_add(&x, 2, RT_PREFILL);
	d = t_ctx_add(&x, 3, RT_DECODE);
	t_ctx_prompt(&x, 1);
	cr_assert_eq(rt_unregister(&x.t.rt, 1), 0);
	cr_assert(disagg(&x));
	cr_assert_eq(t_ctx_route(&x), 0);
	cr_assert_eq(x.plan.kind, RT_PLAN_DISAGG);
	cr_assert_eq(x.plan.first.target, p2);
	cr_assert_eq(rt_unregister(&x.t.rt, 2), 0);
	cr_assert_not(disagg(&x));
	cr_assert_eq(t_ctx_route(&x), 0);
	cr_assert_eq(x.plan.kind, RT_PLAN_FALLBACK, "decode-only once the prefill stage is gone");
	cr_assert_eq(x.plan.first.target, d);
	cr_assert_eq(t_core_stats(&x.t.core).fallback_no_prefill, 1);
	t_route_close(&x.t);
}

/* Workers with several DP ranks. */

Test(route_pools, dp_ranks_get_one_target_each_and_route_independently)
{
	struct rt_worker_spec s = t_spec("m", RT_AGGREGATED, BS);
	struct rt_config cfg;
	uint32_t seen = 0;
	struct t_ctx x;
	int tg[4];

	t_route_config(&cfg);
	cfg.busy_kv_fraction = 0.5;
	t_ctx_open(&x, &cfg, RT_TRANSFER_NONE, 0);
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
		t_ctx_prompt(&x, i);
		cr_assert_eq(t_ctx_route(&x), 0);
		cr_assert_eq(x.plan.first.worker, 7);
		cr_assert(x.plan.first.dp_rank >= 2 && x.plan.first.dp_rank < 6);
		cr_assert_eq(x.plan.first.target, tg[x.plan.first.dp_rank - 2]);
		cr_assert_not(seen & 1u << x.plan.first.dp_rank, "rank %u chosen twice",
			      x.plan.first.dp_rank);
		seen |= 1u << x.plan.first.dp_rank;
		cr_assert_eq(t_ctx_explain(&x, RT_STAGE_AGGREGATED)->ncand, 4);
		cr_assert_eq(t_ctx_cand(&x, RT_STAGE_AGGREGATED, tg[1])->filter, RT_FILTER_BUSY_KV);
	}
	cr_assert_not(seen & 1u << 3);
	/* Rank 3 recovers: the next prompt goes to the only one without load. */
	cr_assert_eq(rt_report_load(&x.t.rt, 7, 3, 0, 0), 0);
	t_ctx_prompt(&x, 9);
	cr_assert_eq(t_ctx_route(&x), 0);
	cr_assert_eq(x.plan.first.dp_rank, 3);
	cr_assert_eq(x.plan.first.target, tg[1]);
	for (uint32_t r = 0; r < 4; r++)
		t_expect_load(&x.t, (uint16_t)tg[r], NBLK, NTOK);
	t_route_close(&x.t);
}

Test(route_pools, unregister_drops_every_rank_from_pools_and_prefix_index)
{
	struct rt_worker_spec s = t_spec("m", RT_AGGREGATED, BS);
	struct rt_config cfg;
	struct t_ctx x;
	uint16_t tg[4];

	/* Four targets only: the next worker must reuse the ids of the one that left. */
	t_route_config(&cfg);
	cfg.max_targets = 4;
	t_ctx_open(&x, &cfg, RT_TRANSFER_NONE, 0);
	s.dp_ranks = 4;
	t_register(&x.t, 1, &s);
	t_ctx_prompt(&x, 1);
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
	cr_assert_eq(t_ctx_route(&x), -ENODEV);
	t_register(&x.t, 2, &s);
	cr_assert_eq(t_ctx_route(&x), 0);
	cr_assert_eq(x.plan.first.worker, 2);
	cr_assert_eq(x.plan.first.overlap, 0, "the new worker inherited a cached prefix");
	for (uint32_t r = 0; r < 4; r++)
		cr_assert_eq(t_ctx_cand(&x, RT_STAGE_AGGREGATED, tg[r])->overlap, 0);
	t_route_close(&x.t);
}

Test(route_pools, unknown_worker_cannot_be_unregistered_or_report_load)
{
	struct t_ctx x;

	t_ctx_open(&x, NULL, RT_TRANSFER_NONE, 0);
	cr_assert_eq(rt_unregister(&x.t.rt, 99), -ENOENT);
	cr_assert_eq(rt_report_load(&x.t.rt, 99, 0, 1, 1), -ENOENT);
	t_ctx_add(&x, 1, RT_DECODE);
	cr_assert_eq(rt_report_load(&x.t.rt, 1, 0, 1, 1), 0);
	cr_assert_eq(rt_report_load(&x.t.rt, 1, 1, 1, 1), -ENOENT);
	cr_assert_eq(rt_unregister(&x.t.rt, 1), 0);
	cr_assert_eq(rt_unregister(&x.t.rt, 1), -ENOENT);
	cr_assert_eq(rt_report_load(&x.t.rt, 1, 0, 1, 1), -ENOENT);
	t_route_close(&x.t);
}

/*
 * A worker that leaves with requests in flight leaves their load on its target id until they
 * end: the id is not handed to a new worker before that, so no one inherits phantom load.
 */
Test(route_pools, target_id_with_load_in_flight_is_not_reused)
{
	struct rt_worker_spec s = t_spec("m", RT_AGGREGATED, BS);
	struct rt_config cfg;
	struct t_ctx x;
	uint16_t old, fresh;
	rt_load_t load;

	t_route_config(&cfg);
	cfg.max_targets = 2;
	t_ctx_open(&x, &cfg, RT_TRANSFER_NONE, 0);
	old = t_register(&x.t, 1, &s);
	t_ctx_prompt(&x, 1);
	cr_assert_eq(t_ctx_route(&x), 0);
	load = x.plan.first.load;
	cr_assert_eq(rt_unregister(&x.t.rt, 1), 0);
	fresh = t_register(&x.t, 2, &s);
	cr_assert_neq(fresh, old, "target %u still carries a request of the worker that left", old);
	t_expect_load(&x.t, fresh, 0, 0);
	cr_assert_eq(rt_register(&x.t.rt, 3, &s, NULL, 0), -ENOSPC, "the loaded id was handed out");
	cr_assert_eq(rt_release(&x.t.core, load), 0);
	cr_assert_eq(t_register(&x.t, 3, &s), old, "the id is free again once its load is gone");
	t_route_close(&x.t);
}

/* Refused registrations leave no interned name behind: the 8 domain names stay available. */
Test(route_pools, refused_registrations_intern_no_topology_names)
{
	struct rt_worker_spec s;
	struct t_ctx x;
	char name[16];

	t_ctx_open(&x, NULL, RT_TRANSFER_NONE, 0);
	t_ctx_add(&x, 1, RT_DECODE);
	for (uint32_t i = 0; i < 2 * RT_DOMAIN_KEYS; i++) {
		struct rt_domain d = {name, "v"};

		snprintf(name, sizeof(name), "d%u", i);
		s = t_spec_in(RT_DECODE, &d, 1);
		s.block_size = 2 * BS; /* refused: the pool's block size is BS */
		s.transfer = (struct rt_transfer){name, RT_TRANSFER_PREFERRED, 0.5};
		cr_assert_eq(rt_register(&x.t.rt, 10 + i, &s, NULL, 0), -EINVAL);
	}
	cr_assert_eq(x.t.rt.ndomain_keys, 0);
	cr_assert_eq(x.t.rt.ndomain_values, 0);
	t_ctx_add_in(&x, 2, RT_DECODE, t_rack1);
	cr_assert_eq(x.t.rt.ndomain_keys, 1);
	t_route_close(&x.t);
}
