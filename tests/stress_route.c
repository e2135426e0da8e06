/*
 * Description: two dataplane cores route concurrently on one router while the main thread,
 * as the control thread, stores and removes prompts in the prefix index and reports worker
 * load. Each core reads the other's load counters to score; nothing is locked. Checks what must
 * hold at every instant: every choice is a live target of the pool, a cached prompt pinned to
 * its holder reports its full overlap, and summed loads never wrap below zero; at the end each
 * core's release of everything brings every load back to exactly zero. Built plain (no
 * Criterion) so it runs under ThreadSanitizer.
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

#define TARGETS 16
#define CORES 2
#define BS 16
#define PLEN 24		    /* blocks per prompt */
#define PROMPTS 64
#define INFLIGHT 32	    /* per core */
#define HELD 0		    /* target that always caches prompt 0 */
#define DEFAULT_SECONDS 3.0

static struct pdx idx;
static struct rt_router router;
static struct rt_core cores[CORES]; /* set up and freed by main, used by one thread each */
static uint32_t tokens[PROMPTS][PLEN * BS];
static atomic_bool stop;      /* relaxed: a flag polled in a loop, joined afterwards */
static atomic_uint failures;  /* relaxed: read after pthread_join() */
static atomic_ulong decisions; /* relaxed: summed by the cores, read after pthread_join() */

#define FAIL(...)                                                                       \
	do {                                                                            \
		fprintf(stderr, "stress_route: " __VA_ARGS__);                          \
		atomic_fetch_add_explicit(&failures, 1, memory_order_relaxed);          \
	} while (0)

static void store_prompt(uint32_t target, uint32_t p)
{
	uint64_t ext[PLEN];

	for (uint32_t i = 0; i < PLEN; i++)
		ext[i] = (uint64_t)p << 32 | i;
	if (pdx_store_tokens(&idx, target, NULL, ext, PLEN, tokens[p], BS, DP_HASH_SEED) < 0)
		FAIL("store of prompt %u on target %u failed\n", p, target);
}

static void check_choice(const struct rt_choice *ch, const struct rt_request *rq, uint32_t p)
{
	uint64_t b, pf;

	if (ch->target >= TARGETS || ch->worker != ch->target)
		FAIL("choice %u is not a target of the pool\n", ch->target);
	if (p == 0 && rq->pin_target == HELD && ch->overlap != PLEN)
		FAIL("prompt 0 on its holder: overlap %u, want %u\n", ch->overlap, PLEN);
	rt_target_load(&router, ch->target, &b, &pf);
	if (b > (uint64_t)CORES * INFLIGHT * PLEN || pf > (uint64_t)CORES * INFLIGHT * PLEN * BS)
		FAIL("target %u load wrapped: %llu blocks, %llu tokens\n", ch->target,
		     (unsigned long long)b, (unsigned long long)pf);
}

static void *core_main(void *arg)
{
	uint32_t index = (uint32_t)(uintptr_t)arg;
	struct rt_core *core = &cores[index];
	rt_load_t held[INFLIGHT] = {0};
	struct t_rng rng;
	uint64_t now = 0, n = 0;

	t_rng_seed(&rng, 100 + index);
	while (!atomic_load_explicit(&stop, memory_order_relaxed)) {
		uint32_t p = t_rng_below(&rng, PROMPTS), slot = (uint32_t)(n % INFLIGHT);
		struct rt_request rq = {.model = 0, .tokens = tokens[p], .ntokens = PLEN * BS,
					.hash_seed = DP_HASH_SEED, .now_ns = now += 1000,
					.pin_target = t_rng_chance(&rng, 30) ? HELD : RT_NO_PIN,
					.pin_prefill = RT_NO_PIN};
		struct rt_plan plan;

		if (held[slot] && rt_release(core, held[slot]))
			FAIL("release of a live handle failed\n");
		held[slot] = 0;
		if (rt_route(core, &rq, &plan)) {
			FAIL("rt_route failed\n");
			break;
		}
		check_choice(&plan.first, &rq, p);
		if (t_rng_chance(&rng, 50))
			rt_first_token(core, plan.first.load);
		held[slot] = plan.first.load;
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

static int setup(void)
{
	struct rt_config cfg;
	struct pdx_config xc = {.max_targets = TARGETS, .max_readers = CORES};
	struct rt_worker_spec spec = {.model = "m", .type = RT_AGGREGATED,
				      .model_type = RT_MODEL_CHAT, .block_size = BS,
				      .kv_capacity_blocks = 1000, .max_batched_tokens = 8192,
				      .dp_ranks = 1};
	struct t_rng rng;

	t_rng_seed(&rng, 7);
	for (uint32_t p = 0; p < PROMPTS; p++)
		for (uint32_t i = 0; i < PLEN * BS; i++)
			tokens[p][i] = (uint32_t)t_rng_next(&rng);
	rt_config_default(&cfg);
	cfg.cores = CORES;
	cfg.max_requests = INFLIGHT + 1;
	cfg.max_active_blocks = 4096;
	cfg.busy_prefill_tokens = 1u << 30; /* on, so the reported load is read concurrently */
	if (pdx_init(&idx, &xc) || rt_router_init(&router, &cfg, &idx))
		return -1;
	for (uint32_t w = 0; w < TARGETS; w++)
		if (rt_register(&router, w, &spec, NULL, 0))
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
	while (now_s() < end && !atomic_load_explicit(&failures, memory_order_relaxed)) {
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
	for (int i = 0; i < CORES; i++)
		rt_core_destroy(&cores[i]);
	rt_router_destroy(&router);
	pdx_destroy(&idx);
	if (atomic_load_explicit(&failures, memory_order_relaxed))
		return 1;
	printf("stress_route: %lu decisions, ok\n",
	       atomic_load_explicit(&decisions, memory_order_relaxed));
	return 0;
}
