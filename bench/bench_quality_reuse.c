/*
 * How much prefix reuse a trace offers, so that a KV hit rate can be read against what was
 * there to hit: the blocks (hash ids) an earlier record already named, and the leading tokens
 * an ideal cache (one worker, never evicting) would hold because an earlier record had the
 * same whole prefix. A prefix is the chain of ids up to a block, as the router's block hashes
 * chain (dataplane/hash.h): a repeated id after a different prefix is no hit.
 */
#include <errno.h>
#include <stdlib.h>

#include "bench.h"
#include "bench_quality.h"

/* An open-addressing set of non-zero 64-bit keys; it never grows, so it is sized up front. */
struct key_set {
	uint64_t *slot;
	size_t mask;
};

/* Room for @n keys at most half full. Returns 0 or -ENOMEM. */
static int set_init(struct key_set *s, uint64_t n)
{
	size_t cap = 64;

	while (cap < 2 * n)
		cap <<= 1;
	s->slot = calloc(cap, sizeof(*s->slot));
	s->mask = cap - 1;
	return s->slot ? 0 : -ENOMEM;
}

/* Add non-zero @key; true when it was there already. */
static bool set_add(struct key_set *s, uint64_t key)
{
	for (size_t i = bench_mix64(key) & s->mask;; i = (i + 1) & s->mask) {
		if (s->slot[i] == key)
			return true;
		if (!s->slot[i]) {
			s->slot[i] = key;
			return false;
		}
	}
}

/* Add record @q's ids and prefixes to the sets and its figures to @u. */
static void measure(const struct load_trace_req *q, struct key_set *ids, struct key_set *chains,
		    struct qual_reuse *u)
{
	uint64_t chain = 0, held = 0;
	bool whole = true; /* every block so far had its whole prefix seen before */

	for (uint32_t b = 0; b < q->nids; b++) {
		chain = bench_mix64(chain ^ q->ids[b]) | 1; /* | 1: never the empty key 0 */
		u->repeated_blocks += set_add(ids, (uint64_t)q->ids[b] + 1);
		whole = set_add(chains, chain) && whole;
		held += whole;
	}
	u->records++;
	u->blocks += q->nids;
	u->prompt_tokens += q->input;
	held *= LOAD_BLOCK;
	u->prefix_tokens += held < q->input ? held : q->input;
}

int qual_reuse_of(const struct load_trace *t, uint32_t n, struct qual_reuse *out)
{
	struct key_set ids, chains;
	uint64_t blocks = 0;
	int rc;

	*out = (struct qual_reuse){0};
	n = n < t->n ? n : t->n;
	for (uint32_t i = 0; i < n; i++)
		blocks += t->reqs[i].nids;
	if ((rc = set_init(&ids, blocks)))
		return rc;
	if ((rc = set_init(&chains, blocks))) {
		free(ids.slot);
		return rc;
	}
	for (uint32_t i = 0; i < n; i++)
		measure(&t->reqs[i], &ids, &chains, out);
	free(ids.slot);
	free(chains.slot);
	return 0;
}
