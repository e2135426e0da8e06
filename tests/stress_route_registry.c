/*
 * Description: workers come and go while two dataplane cores route: the main thread, as the
 * control thread, registers and unregisters workers of two DP ranks each (worker w's ranks are
 * 10w and 10w + 1) and reports their load, with no lock between it and the cores. Every choice
 * a core gets must be whole: its worker and DP rank from one registration (a target re-used
 * while a core still read it would mix two), its target in range. Target ids are few, so they
 * are reused all the time. At the end every load is released and must be back to zero.
 * Built plain (no Criterion) so it runs under ThreadSanitizer.
 * Usage: stress_route_registry [seconds]; exits 0 after "...: N decisions, M registrations, ok".
 */
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>

#include "hash.h"
#include "route.h"
#include "rng.h"
#include "stress_common.h"

#define TARGETS 12
#define CORES 2
#define BS 16
#define PLEN 8
#define PROMPTS 16
#define INFLIGHT 16
#define WORKERS 4 /* at most this many registered at once */
#define DEFAULT_SECONDS 3.0

static struct pdx idx;
static struct rt_router router;
static struct rt_core cores[CORES];
static uint32_t tokens[PROMPTS][PLEN * BS];
static atomic_bool stop;	      /* relaxed: polled in a loop, joined afterwards */
static atomic_ulong decisions;	      /* relaxed: summed by the cores, read after join */

#define FAIL(...) T_STRESS_FAIL("stress_route_registry", __VA_ARGS__)

static void *core_main(void *arg)
{
	uint32_t index = (uint32_t)(uintptr_t)arg;
	struct rt_core *core = &cores[index];
	rt_load_t held[INFLIGHT] = {0};
	struct t_rng rng;
	uint64_t n = 0, now = 0;

	t_rng_seed(&rng, 50 + index);
	while (!atomic_load_explicit(&stop, memory_order_relaxed)) {
		uint32_t slot = (uint32_t)(n % INFLIGHT), p = t_rng_below(&rng, PROMPTS);
		struct rt_request rq = {.model = 0, .tokens = tokens[p], .ntokens = PLEN * BS,
					.hash_seed = DP_HASH_SEED, .now_ns = now += 1000,
					.pin_target = RT_NO_PIN, .pin_prefill = RT_NO_PIN,
					.peek = t_rng_chance(&rng, 10)};
		struct rt_plan plan;
		int rc;

		if (held[slot])
			rt_release(core, held[slot]);
		held[slot] = 0;
		rc = rt_route(core, &rq, &plan);
		n++;
		if (rc == -ENODEV || rc == -ENOENT) /* no worker right now, or no model yet */
			continue;
		if (rc) {
			FAIL("rt_route: %d\n", rc);
			break;
		}
		if (plan.first.target >= TARGETS || plan.first.dp_rank / 10 != plan.first.worker)
			FAIL("torn choice: target %u, worker %u, DP rank %u\n", plan.first.target,
			     plan.first.worker, plan.first.dp_rank);
		held[slot] = plan.first.load;
	}
	for (uint32_t i = 0; i < INFLIGHT; i++)
		if (held[i])
			rt_release(core, held[i]);
	atomic_fetch_add_explicit(&decisions, n, memory_order_relaxed);
	return NULL;
}

/* The control thread: keep replacing workers, at most WORKERS of them at a time. */
static uint64_t churn(double seconds)
{
	struct rt_worker_spec spec = {.model = "m", .type = RT_AGGREGATED,
				      .model_type = RT_MODEL_CHAT, .block_size = BS,
				      .kv_capacity_blocks = 1000, .max_batched_tokens = 8192,
				      .dp_ranks = 2};
	double end = now_s() + seconds;
	uint32_t alive[WORKERS], nalive = 0, next = 1;
	uint64_t registrations = 0;
	struct t_rng rng;

	t_rng_seed(&rng, 3);
	while (now_s() < end && !t_stress_failed()) {
		if (nalive == WORKERS || (nalive && t_rng_chance(&rng, 50))) {
			uint32_t i = t_rng_below(&rng, nalive);

			if (rt_unregister(&router, alive[i]))
				FAIL("rt_unregister failed\n");
			alive[i] = alive[--nalive];
			continue;
		}
		spec.dp_rank_start = 10 * next;
		if (rt_register(&router, next, &spec, NULL, 0) == 0) {
			rt_report_load(&router, next, 10 * next, t_rng_below(&rng, 500), 0);
			alive[nalive++] = next;
			registrations++;
		} /* -ENOSPC: every free id still has load in flight or a core looking at it */
		next++;
	}
	return registrations;
}

int main(int argc, char **argv)
{
	double seconds = argc > 1 ? atof(argv[1]) : DEFAULT_SECONDS;
	struct pdx_config xc = {.max_targets = TARGETS, .max_readers = CORES};
	struct rt_config cfg;
	struct t_rng rng;
	pthread_t th[CORES];
	uint64_t registrations;

	t_rng_seed(&rng, 11);
	for (uint32_t p = 0; p < PROMPTS; p++)
		for (uint32_t i = 0; i < PLEN * BS; i++)
			tokens[p][i] = (uint32_t)t_rng_next(&rng);
	rt_config_default(&cfg);
	cfg.cores = CORES;
	cfg.max_requests = INFLIGHT + 1;
	cfg.max_active_blocks = 4096;
	cfg.busy_kv_fraction = 0.9; /* on, so reported load is read while it changes */
	if (pdx_init(&idx, &xc) || rt_router_init(&router, &cfg, &idx))
		return 1;
	for (uint32_t i = 0; i < CORES; i++)
		if (rt_core_init(&cores[i], &router, i))
			return 1;
	for (uintptr_t i = 0; i < CORES; i++)
		if (pthread_create(&th[i], NULL, core_main, (void *)i))
			return 1;
	registrations = churn(seconds > 0 ? seconds : DEFAULT_SECONDS);
	atomic_store_explicit(&stop, true, memory_order_relaxed);
	for (int i = 0; i < CORES; i++)
		pthread_join(th[i], NULL);
	for (uint16_t t = 0; t < TARGETS; t++) {
		uint64_t b, pf;

		rt_target_load(&router, t, &b, &pf);
		if (b || pf)
			FAIL("target %u keeps load after every release\n", t);
	}
	for (int i = 0; i < CORES; i++)
		rt_core_destroy(&cores[i]);
	rt_router_destroy(&router);
	pdx_destroy(&idx);
	if (registrations < 10)
		FAIL("only %llu registrations: the churn did not run\n",
		     (unsigned long long)registrations);
	if (t_stress_failed())
		return 1;
	printf("stress_route_registry: %lu decisions, %llu registrations, ok\n",
	       atomic_load_explicit(&decisions, memory_order_relaxed),
	       (unsigned long long)registrations);
	return 0;
}
