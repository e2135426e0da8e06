/*
 * A routing fixture for the unit tests: a prefix index, a router over it with one core, and
 * builders for worker registrations, prompts and requests. Every helper fails the running test
 * through Criterion when something it needs does not work.
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

#endif
