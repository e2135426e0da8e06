/*
 * Description: two dataplane cores route concurrently on one router while the main thread,
 * as the control thread, stores and removes prompts in the prefix index and reports worker
 * load. Each core reads the other's load counters to score; nothing is locked. The cores mix
 * an aggregated model with a disaggregated one (prefill, first token, decode), peeks, and
 * expiry sweeps racing their own releases. Checks what must hold at every instant: every
 * choice is a live target of the right pool, a cached prompt pinned to its holder reports its
 * full overlap, and summed loads never wrap below zero; at the end each core's release of
 * everything brings every load back to exactly zero. Built plain (no Criterion) so it runs
 * under ThreadSanitizer.
 * Usage: stress_route [seconds]; exits 0 after "stress_route: N decisions, ok", 1 otherwise.
 */
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>

#include "hash.h"
#include "route.h"
#include "rng.h"
#include "stress_common.h"

#define AGG 16		    /* model 0: aggregated targets 0..15 */
#define PREFILL 4	    /* model 1: prefill targets 16..19, decode targets 20..23 */
#define TARGETS (AGG + 2 * PREFILL)
#define CORES 2
#define BS 16
#define PLEN 24		    /* blocks per prompt */
#define PROMPTS 64
#define INFLIGHT 32	    /* per core */
#define HELD 0		    /* target that always caches prompt 0 */
#define DEFAULT_SECONDS 3.0
#define EXPIRY_NS 24000	    /* 24 decisions: some requests are swept before their release */

static struct pdx idx;
static struct rt_router router;
static struct rt_core cores[CORES]; /* set up and freed by main, used by one thread each */
static uint32_t tokens[PROMPTS][PLEN * BS];
static atomic_bool stop;      /* relaxed: a flag polled in a loop, joined afterwards */
static atomic_ulong decisions; /* relaxed: summed by the cores, read after pthread_join() */

#define FAIL(...) T_STRESS_FAIL("stress_route", __VA_ARGS__)

static void store_prompt(uint32_t target, uint32_t p)
{
	uint64_t ext[PLEN];

	for (uint32_t i = 0; i < PLEN; i++)
		ext[i] = (uint64_t)p << 32 | i;
	if (pdx_store_tokens(&idx, target, NULL, ext, PLEN, tokens[p], BS, DP_HASH_SEED) < 0)
		FAIL("store of prompt %u on target %u failed\n", p, target);
}

/* @ch must be a target of pool [@lo, @hi); its summed load must not have wrapped. */
static void check_choice(const struct rt_choice *ch, uint32_t lo, uint32_t hi)
{
	uint64_t b, pf;

	if (ch->target < lo || ch->target >= hi || ch->worker != ch->target)
		FAIL("choice %u is not a target of the pool [%u, %u)\n", ch->target, lo, hi);
	rt_target_load(&router, ch->target, &b, &pf);
	if (b > (uint64_t)CORES * INFLIGHT * PLEN || pf > (uint64_t)CORES * INFLIGHT * PLEN * BS)
		FAIL("target %u load wrapped: %llu blocks, %llu tokens\n", ch->target,
		     (unsigned long long)b, (unsigned long long)pf);
}

/* Prefill, first token, decode: returns the decode stage's handle (0 on failure). */
static rt_load_t route_disagg(struct rt_core *core, struct rt_request *rq)
{
	struct rt_plan plan;
	struct rt_choice d;

	rq->model = 1;
	if (rt_route(core, rq, &plan) || plan.kind != RT_PLAN_DISAGG) {
		FAIL("disaggregated route failed\n");
		return 0;
	}
	check_choice(&plan.first, AGG, AGG + PREFILL);
	rt_first_token(core, plan.first.load); /* prefill returned */
	if (rt_route_decode(core, rq, plan.first.target, &d)) {
		FAIL("decode stage failed\n");
		rt_release(core, plan.first.load);
		return 0;
	}
	check_choice(&d, AGG + PREFILL, TARGETS);
	rt_release(core, plan.first.load);
	return d.load;
}

static rt_load_t route_one(struct rt_core *core, struct t_rng *rng, uint64_t now)
{
	uint32_t p = t_rng_below(rng, PROMPTS);
	struct rt_request rq = {.model = 0, .tokens = tokens[p], .ntokens = PLEN * BS,
				.hash_seed = DP_HASH_SEED, .now_ns = now,
				.pin_target = t_rng_chance(rng, 30) ? HELD : RT_NO_PIN,
				.pin_prefill = RT_NO_PIN, .peek = t_rng_chance(rng, 10)};
	struct rt_plan plan;

	if (!rq.peek && t_rng_chance(rng, 30)) {
		rq.pin_target = RT_NO_PIN;
		return route_disagg(core, &rq);
	}
	if (rt_route(core, &rq, &plan)) {
		FAIL("rt_route failed\n");
		return 0;
	}
	check_choice(&plan.first, 0, AGG);
	if (p == 0 && rq.pin_target == HELD && plan.first.overlap != PLEN)
		FAIL("prompt 0 on its holder: overlap %u, want %u\n", plan.first.overlap, PLEN);
	if (t_rng_chance(rng, 50))
		rt_first_token(core, plan.first.load);
	return plan.first.load;
}

static void *core_main(void *arg)
{
	uint32_t index = (uint32_t)(uintptr_t)arg;
	struct rt_core *core = &cores[index];
	rt_load_t held[INFLIGHT] = {0};
	struct t_rng rng;
	uint64_t now = 0, n = 0;

	t_rng_seed(&rng, 100 + index);
	while (!atomic_load_explicit(&stop, memory_order_relaxed) &&
	       !t_stress_failed()) {
		uint32_t slot = (uint32_t)(n % INFLIGHT);

		if (held[slot])
			rt_release(core, held[slot]); /* -ESTALE when swept already: counted */
		held[slot] = route_one(core, &rng, now += 1000);
		if (n % 16 == 0)
			rt_sweep(core, now);
		n++;
	}
	for (uint32_t i = 0; i < INFLIGHT; i++)
		if (held[i])
			rt_release(core, held[i]);
	if (core->share.map_live || core->share.pairs)
		FAIL("core %u: dedup table not empty after releasing all\n", index);
	atomic_fetch_add_explicit(&decisions, n, memory_order_relaxed);
	return NULL;
}

static int register_all(void)
{
	struct rt_worker_spec spec = {.model = "m", .type = RT_AGGREGATED,
				      .model_type = RT_MODEL_CHAT, .block_size = BS,
				      .kv_capacity_blocks = 1000, .max_batched_tokens = 8192,
				      .dp_ranks = 1};

	for (uint32_t w = 0; w < TARGETS; w++) {
		if (w == AGG) {
			spec.model = "d";
			spec.type = RT_PREFILL;
			spec.model_type = RT_MODEL_EMPTY;
			spec.needs = RT_NEEDS_DECODE;
		} else if (w == AGG + PREFILL) {
			spec.type = RT_DECODE;
			spec.model_type = RT_MODEL_CHAT;
			spec.needs = RT_NEEDS_PREFILL;
		}
		if (rt_register(&router, w, &spec, NULL, 0) ||
		    rt_target_find(&router, w, 0) != (int)w) /* worker w is target w */
			return -1;
	}
	return 0;
}

static int setup(void)
{
	struct rt_config cfg;
	struct pdx_config xc = {.max_targets = TARGETS, .max_readers = CORES};
	struct t_rng rng;

	t_rng_seed(&rng, 7);
	for (uint32_t p = 0; p < PROMPTS; p++)
		for (uint32_t i = 0; i < PLEN * BS; i++)
			tokens[p][i] = (uint32_t)t_rng_next(&rng);
	rt_config_default(&cfg);
	cfg.cores = CORES;
	cfg.max_requests = INFLIGHT + 2; /* the held ones, and a disaggregated request's two */
	cfg.max_active_blocks = 4096;
	cfg.expiry_ns = EXPIRY_NS;
	cfg.busy_prefill_tokens = 1u << 30; /* on, so the reported load is read concurrently */
	if (pdx_init(&idx, &xc) || rt_router_init(&router, &cfg, &idx) || register_all())
		return -1;
	store_prompt(HELD, 0);
	/* Every core exists before any routes: each reads the others' counters. */
	for (uint32_t i = 0; i < CORES; i++)
		if (rt_core_init(&cores[i], &router, i))
			return -1;
	return 0;
}

/* The control thread: index events and load reports while the cores route. */
static void control(double seconds)
{
	double end = now_s() + seconds;
	struct t_rng rng;

	t_rng_seed(&rng, 9);
	while (now_s() < end && !t_stress_failed()) {
		uint32_t target = t_rng_below(&rng, TARGETS), p = 1 + t_rng_below(&rng, PROMPTS - 1);
		uint64_t ext = (uint64_t)p << 32 | t_rng_below(&rng, PLEN);

		if (t_rng_chance(&rng, 60))
			store_prompt(target, p);
		else if (pdx_remove(&idx, target, &ext, 1) < 0)
			FAIL("remove failed\n");
		rt_report_load(&router, target, 0, t_rng_below(&rng, 1000), t_rng_below(&rng, 5000));
	}
}

int main(int argc, char **argv)
{
	double seconds = argc > 1 ? atof(argv[1]) : DEFAULT_SECONDS;
	pthread_t th[CORES];

	if (setup()) {
		fprintf(stderr, "stress_route: setup failed\n");
		return 1;
	}
	for (uintptr_t i = 0; i < CORES; i++)
		if (pthread_create(&th[i], NULL, core_main, (void *)i))
			return 1;
	control(seconds > 0 ? seconds : DEFAULT_SECONDS);
	atomic_store_explicit(&stop, true, memory_order_relaxed);
	for (int i = 0; i < CORES; i++)
		pthread_join(th[i], NULL);
	for (uint16_t t = 0; t < TARGETS; t++) {
		uint64_t b, pf;

		rt_target_load(&router, t, &b, &pf);
		if (b || pf)
			FAIL("target %u keeps load %llu/%llu after every release\n", t,
			     (unsigned long long)b, (unsigned long long)pf);
	}
	for (int i = 0; i < CORES; i++) {
		struct rt_core_stats st;

		rt_core_stats(&cores[i], &st);
		if (!st.expired || !st.peeks || !st.stale_handle)
			FAIL("core %d never swept, peeked or saw a swept handle\n", i);
		rt_core_destroy(&cores[i]);
	}
	rt_router_destroy(&router);
	pdx_destroy(&idx);
	if (t_stress_failed())
		return 1;
	printf("stress_route: %lu decisions, ok\n",
	       atomic_load_explicit(&decisions, memory_order_relaxed));
	return 0;
}
