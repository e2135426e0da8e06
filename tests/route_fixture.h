/*
 * A routing fixture for the unit tests: a prefix index, a router over it with one core, and
 * builders for worker registrations, prompts and requests; below them, the helpers that more
 * than one test_route_*.c file shares (aggregated routing of model "m", and a context for pools
 * and stages). Every helper fails the running test through Criterion when something it needs
 * does not work.
 */
#ifndef PD_TESTS_ROUTE_FIXTURE_H
#define PD_TESTS_ROUTE_FIXTURE_H

#include "hash.h"
#include "route.h"

#define T_ROUTE_TARGETS 64u

struct t_route {
	struct pdx x;
	struct rt_router rt;
	struct rt_core core;
};

/* rt_config_default() with a small router: 64 targets, 256 requests, 4096 blocks, seed 1. */
void t_route_config(struct rt_config *cfg);

/* Open the index (T_ROUTE_TARGETS targets), the router over it with @cfg (NULL:
 * t_route_config()) and core 0. */
void t_route_open(struct t_route *t, const struct rt_config *cfg);
void t_route_close(struct t_route *t);

/* A valid registration: @model, @type with its matching model type and needs, @block_size,
 * KV capacity 1000 blocks, 8192 batched tokens, one DP rank (0), no topology. */
struct rt_worker_spec t_spec(const char *model, enum rt_worker_type type, uint32_t block_size);

/* rt_register() that must succeed; returns the target of the spec's first DP rank. */
uint16_t t_register(struct t_route *t, uint32_t worker, const struct rt_worker_spec *spec);

/* @n tokens named by @tag: equal tags give equal prompts, tag and i give token t_mix64-ish. */
void t_tokens(uint32_t *tok, size_t n, uint32_t tag);

/* A request for @model (which must exist) over @tok, seed DP_HASH_SEED, no pins. */
struct rt_request t_request(const struct t_route *t, const char *model, const uint32_t *tok,
			    size_t n, uint64_t now_ns);

/* Make @target hold the first @nblocks blocks of @tok in the index (a STORED event). */
void t_cache(struct t_route *t, uint16_t target, const uint32_t *tok, uint32_t nblocks,
	     uint32_t block_size);

/* Predicted load of @target summed over cores. */
uint64_t t_load_blocks(const struct t_route *t, uint16_t target);
uint64_t t_load_prefill(const struct t_route *t, uint16_t target);

/* Helpers shared by the test_route_*.c files. Every worker they register serves model "m". */

#define T_BS 16u	  /* block size of every worker the helpers below register */
#define T_CTX_TOKENS 128u /* prompt length of struct t_ctx, in tokens */
#define T_EPS 1e-9	  /* costs are sums of a few exact binary fractions */

/* Open @t under @cfg (NULL: t_route_config()) with @n aggregated workers of model "m"
 * (ids 1..n) at block size T_BS; their targets go to @tg. */
void t_open_agg(struct t_route *t, const struct rt_config *cfg, uint16_t *tg, uint32_t n);

/* rt_route() of @rq on t->core: must succeed with an aggregated plan, a handle unless a peek. */
struct rt_plan t_route_ok(struct t_route *t, const struct rt_request *rq);

/* Put the first @n tokens of @tok in flight on @target (pinned); returns the handle. */
rt_load_t t_load_on(struct t_route *t, const uint32_t *tok, size_t n, uint16_t target);

/* The candidate for @target in @core's last aggregated decision. */
const struct rt_candidate *t_cand(const struct rt_core *core, uint16_t target);

/* rt_core_stats() of @core. */
struct rt_core_stats t_core_stats(const struct rt_core *core);

/* The predicted load of @target must be @blocks blocks and @prefill prefill tokens. */
void t_expect_load(const struct t_route *t, uint16_t target, uint64_t blocks, uint64_t prefill);

/* Hand-computed figures of one candidate. */
struct t_fig {
	uint32_t overlap, new_blocks;
	double prefill, decode, cost;
};

/* The candidate for @target in t->core's last aggregated decision must show @f (within T_EPS). */
void t_expect_cand(const struct t_route *t, uint16_t target, const struct t_fig *f);

/*
 * The two-target situation (block size T_BS) most cost tests score:
 * - prompt P: 100 tokens = 6 full blocks; A holds P's first 4 blocks in the index;
 * - B has request Q in flight: P's first 48 tokens (3 blocks, 48 prefill tokens, nothing
 *   cached), so P's first 3 blocks are already active on B.
 * With the defaults, routing P scores
 *   A: overlap 4, new 6, prefill 100/16 = 6.25, adjusted 6.25 - 4 = 2.25, decode 0 + 6 = 6,
 *      cost 2.25 + 6 = 8.25;
 *   B: overlap 0, new 6 - 3 = 3, prefill (48 + 100)/16 = 9.25, adjusted 9.25, decode 3 + 3 = 6,
 *      cost 9.25 + 6 = 15.25.
 * t_two_a and t_two_b are those figures.
 */
struct t_two {
	struct t_route t;
	uint16_t a, b;
	uint32_t p[100];
};

extern const struct t_fig t_two_a, t_two_b;

/* Open the two-target situation under @cfg (NULL: t_route_config()). */
void t_two_open(struct t_two *s, const struct rt_config *cfg);

/* A request for P, no overrides. */
struct rt_request t_two_request(const struct t_two *s);

/* A router, and one request for model "m" with room for what routing it gives. */
struct t_ctx {
	struct t_route t;
	uint32_t tok[T_CTX_TOKENS];
	struct rt_request rq;
	struct rt_plan plan;
	struct rt_choice c;
};

/* One-domain topologies: rack r1, r2 and r3. */
extern const struct rt_domain t_rack1[1], t_rack2[1], t_rack3[1];

/* Open @x over @cfg (NULL: t_route_config()) with rule @enforcement of "rack" with @weight. */
void t_ctx_open(struct t_ctx *x, const struct rt_config *cfg, enum rt_enforcement enforcement,
		double weight);

/* Make x->rq a request for "m" (registered by now) over T_CTX_TOKENS tokens of prompt @tag. */
void t_ctx_prompt(struct t_ctx *x, uint32_t tag);

/* rt_route() of x->rq into x->plan. */
int t_ctx_route(struct t_ctx *x);

/* rt_route_decode() of x->rq after prefill target @prefill, into x->c. */
int t_ctx_decode(struct t_ctx *x, uint16_t prefill);

/* t_spec() of model "m" at T_BS, in topology domains @d[0..nd). */
struct rt_worker_spec t_spec_in(enum rt_worker_type type, const struct rt_domain *d, size_t nd);

/* Register @worker as a one-rank @type worker of "m" in rack @rack (NULL: no topology). */
uint16_t t_ctx_add_in(struct t_ctx *x, uint32_t worker, enum rt_worker_type type,
		      const struct rt_domain *rack);

/* t_ctx_add_in() without topology. */
uint16_t t_ctx_add(struct t_ctx *x, uint32_t worker, enum rt_worker_type type);

/* The explanation of x's core's last decision of @stage. */
const struct rt_explain *t_ctx_explain(const struct t_ctx *x, enum rt_stage stage);

/* The candidate for @target in the last decision of @stage. */
const struct rt_candidate *t_ctx_cand(const struct t_ctx *x, enum rt_stage stage, int target);

#endif
