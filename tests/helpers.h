/*
 * Helpers shared by the unit tests: a seeded PRNG (tests never call rand()), builders for
 * prefixes of blocks with deterministic local hashes and external ids, and an index fixture
 * with one reader whose answers come back sorted by target, and prompts to store on it.
 * Single-threaded; every helper fails the running test through Criterion when something it
 * needs does not work.
 */
#ifndef PD_TESTS_HELPERS_H
#define PD_TESTS_HELPERS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "hash.h"
#include "index.h"
#include "rng.h" /* t_mix64(), struct t_rng and its t_rng_*() */

#include "sanitized.h" /* T_SANITIZED */

/* calloc that fails the test instead of returning NULL. */
void *t_calloc(size_t n, size_t size);

/*
 * Local hashes of n blocks named by @tag: block i gets t_mix64(tag, i), never 0, distinct for
 * distinct (tag, i) in practice.
 */
void t_locals(uint64_t tag, size_t n, uint64_t *local);

/*
 * A STORED event's blocks for local[from..from+n) of a prompt: the external id of block i is
 * derived from the sequence hash of the prefix 0..i and @ext_tag, as an engine's block hash
 * names the whole prefix. @out receives n blocks.
 */
void t_blocks(const uint64_t *local, size_t from, size_t n, uint64_t ext_tag,
	      struct pdx_block *out);

/* External id t_blocks() gives block @i of the prompt @local under @ext_tag. */
uint64_t t_ext_id(const uint64_t *local, size_t i, uint64_t ext_tag);

/* An index, one attached reader and room for max_targets answers. */
struct t_pdx {
	struct pdx x;
	struct pdx_reader *r;
	struct pdx_overlap *out;
	uint32_t max_targets;
};

void t_pdx_open(struct t_pdx *t, uint32_t max_targets, uint32_t initial_blocks);
void t_pdx_close(struct t_pdx *t);

/* pdx_match() through the fixture's reader; t->out[0..ret) sorted by target, checked unique. */
size_t t_match(struct t_pdx *t, const uint64_t *local, size_t n);

/* Depth t_match() reported for @target, 0 when it was not reported. */
uint32_t t_depth(const struct t_pdx *t, size_t nout, uint32_t target);

/* Sort answers by target. */
void t_sort_overlaps(struct pdx_overlap *a, size_t n);

/* Current counters. */
struct pdx_stats t_stats(const struct pdx *x);

/* A prompt of n blocks named by @tag: locals, and the STORED blocks with their ext ids. */
struct t_prompt {
	size_t n;
	uint64_t local[16];
	struct pdx_block b[16];
};

/* A prompt of n <= 16 blocks named by @tag, as t_locals() and t_blocks() (ext tag 0) make. */
void t_prompt_init(struct t_prompt *p, uint64_t tag, size_t n);

/* A prompt that shares its first @shared blocks with @base and then goes its own way. */
void t_prompt_branch(struct t_prompt *p, const struct t_prompt *base, size_t shared, uint64_t tag,
		     size_t n);

/* External id of block @i of @p. */
uint64_t t_prompt_ext(const struct t_prompt *p, size_t i);

/* Store blocks [from, from + n) of @p on @target, chained after block from - 1: pdx_store(). */
long t_store(struct t_pdx *t, uint32_t target, const struct t_prompt *p, size_t from, size_t n);

/* Remove the one block @ext_id from @target: pdx_remove(). */
long t_remove1(struct t_pdx *t, uint32_t target, uint64_t ext_id);

#endif
