/*
 * pdmock's KV cache (cache.h): a node pool, a chained hash table by sequence hash, an intrusive
 * LRU list of the free cached blocks, and per-sequence block lists, all allocated at init.
 * Invariant: a cached block's parent is cached and at least as referenced, so a free block's
 * children are free and older in the LRU list; the oldest free block is therefore a leaf.
 * A block's depth is at most max_seq_blocks (a sequence held all its ancestors), which bounds
 * the chains mk_cache_dump() assembles in the per-prompt scratch arrays.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "cache.h"
#include "hash.h"

#define NIL UINT32_MAX

struct mk_cache_node {
	uint64_t hash;	   /* sequence hash, also the external id */
	uint64_t local;	   /* local hash (of the tokens alone): what a dump sends for them */
	uint32_t parent;   /* node index, or NIL for a prompt's first block */
	uint32_t refs;	   /* sequences using it */
	uint32_t children; /* cached blocks whose parent it is */
	uint32_t next;	   /* hash chain while cached, free list otherwise */
	uint32_t lru_prev; /* LRU links while cached with refs == 0 */
	uint32_t lru_next;
	uint32_t dumped; /* the dump that sent it last: c->dump_epoch while one runs */
};

struct mk_cache_seq {
	uint32_t nblocks;  /* full blocks held */
	uint32_t npartial; /* tokens of the last, partial block */
	bool active;
};

static uint32_t bucket_of(const struct mk_cache *c, uint64_t hash)
{
	return (uint32_t)(hash ^ (hash >> 32)) & c->bucket_mask;
}

static uint32_t find(const struct mk_cache *c, uint64_t hash)
{
	uint32_t i = c->buckets[bucket_of(c, hash)];

	while (i != NIL && c->nodes[i].hash != hash)
		i = c->nodes[i].next;
	return i;
}

static void hash_insert(struct mk_cache *c, uint32_t idx)
{
	uint32_t *head = &c->buckets[bucket_of(c, c->nodes[idx].hash)];

	c->nodes[idx].next = *head;
	*head = idx;
}

static void hash_remove(struct mk_cache *c, uint32_t idx)
{
	uint32_t *link = &c->buckets[bucket_of(c, c->nodes[idx].hash)];

	while (*link != idx)
		link = &c->nodes[*link].next;
	*link = c->nodes[idx].next;
}

static void lru_push_tail(struct mk_cache *c, uint32_t idx)
{
	struct mk_cache_node *n = &c->nodes[idx];

	n->lru_prev = c->lru_tail;
	n->lru_next = NIL;
	if (c->lru_tail != NIL)
		c->nodes[c->lru_tail].lru_next = idx;
	else
		c->lru_head = idx;
	c->lru_tail = idx;
	c->nlru++;
}

static void lru_unlink(struct mk_cache *c, uint32_t idx)
{
	struct mk_cache_node *n = &c->nodes[idx];

	if (n->lru_prev != NIL)
		c->nodes[n->lru_prev].lru_next = n->lru_next;
	else
		c->lru_head = n->lru_next;
	if (n->lru_next != NIL)
		c->nodes[n->lru_next].lru_prev = n->lru_prev;
	else
		c->lru_tail = n->lru_prev;
	c->nlru--;
}

static void ref(struct mk_cache *c, uint32_t idx)
{
	if (c->nodes[idx].refs++ == 0) {
		lru_unlink(c, idx);
		c->nused++;
	}
}

static void unref(struct mk_cache *c, uint32_t idx)
{
	if (--c->nodes[idx].refs == 0) {
		c->nused--;
		lru_push_tail(c, idx);
	}
}

/*
 * Evict the least recently used free block without cached children and return its node, or
 * NIL when the LRU list is empty. By the invariant above the head is such a block; the scan
 * only guards against a broken invariant.
 */
static uint32_t evict_one(struct mk_cache *c)
{
	uint32_t idx = c->lru_head;

	while (idx != NIL && c->nodes[idx].children)
		idx = c->nodes[idx].lru_next;
	if (idx == NIL)
		return NIL;
	lru_unlink(c, idx);
	hash_remove(c, idx);
	if (c->nodes[idx].parent != NIL)
		c->nodes[c->nodes[idx].parent].children--;
	c->evicted[c->nevicted++] = c->nodes[idx].hash;
	return idx;
}

/* A node for a new block: free capacity first, else an eviction. NIL when neither. */
static uint32_t take_node(struct mk_cache *c)
{
	uint32_t idx = c->free_head;

	if (idx == NIL)
		return evict_one(c);
	c->free_head = c->nodes[idx].next;
	c->nfree--;
	return idx;
}

/* Cache a new block under @parent (NIL for none) with one reference. NIL when full. */
static uint32_t new_block(struct mk_cache *c, uint64_t hash, uint64_t local, uint32_t parent)
{
	uint32_t idx = take_node(c);
	struct mk_cache_node *n;

	if (idx == NIL)
		return NIL;
	n = &c->nodes[idx];
	n->hash = hash;
	n->local = local;
	n->parent = parent;
	n->refs = 1;
	n->children = 0;
	n->lru_prev = n->lru_next = NIL;
	hash_insert(c, idx);
	if (parent != NIL)
		c->nodes[parent].children++;
	c->nused++;
	return idx;
}

/* Report the blocks evicted so far by this call in one REMOVED event. */
static void flush_removed(struct mk_cache *c)
{
	if (!c->nevicted)
		return;
	if (c->cb.removed)
		c->cb.removed(c->cb.ctx, c->evicted, c->nevicted);
	c->removed_blocks += c->nevicted;
	c->nevicted = 0;
}

static void emit_stored(struct mk_cache *c, const uint64_t *parent, const uint64_t *ids,
			const uint32_t *tokens, uint32_t n)
{
	if (c->cb.stored)
		c->cb.stored(c->cb.ctx, parent, ids, tokens, n);
	c->stored_blocks += n;
}

/* Sequence hashes of the first @nblocks (<= max_seq_blocks) blocks into c->seq_hash. */
static void hash_prompt(struct mk_cache *c, const uint32_t *tokens, uint32_t nblocks)
{
	if (!nblocks)
		return;
	dp_hash_blocks(tokens, (size_t)nblocks * c->block_size, c->block_size, DP_HASH_SEED,
		       c->local);
	dp_hash_sequence(c->local, nblocks, c->seq_hash);
}

/* Leading blocks of c->seq_hash[0..nblocks) that are cached. */
static uint32_t leading_hits(const struct mk_cache *c, uint32_t nblocks)
{
	uint32_t i = 0;

	while (i < nblocks && find(c, c->seq_hash[i]) != NIL)
		i++;
	return i;
}

static uint32_t *blocks_of(const struct mk_cache *c, uint32_t seq_id)
{
	return c->seq_blocks + (size_t)seq_id * c->max_seq_blocks;
}

static uint32_t *partial_of(const struct mk_cache *c, uint32_t seq_id)
{
	return c->seq_tokens + (size_t)seq_id * c->block_size;
}

static bool config_ok(uint32_t capacity_blocks, uint32_t block_size, uint32_t max_seqs,
		      uint32_t max_seq_blocks)
{
	return capacity_blocks && capacity_blocks <= MK_CACHE_MAX_CAPACITY_BLOCKS &&
	       dp_hash_block_size_ok(block_size) && max_seqs && max_seqs <= MK_CACHE_MAX_SEQS &&
	       max_seq_blocks && max_seq_blocks <= capacity_blocks;
}

static int alloc_arrays(struct mk_cache *c)
{
	uint32_t nbuckets = 1;

	while (nbuckets < c->capacity_blocks)
		nbuckets <<= 1;
	c->bucket_mask = nbuckets - 1;
	c->nodes = calloc(c->capacity_blocks, sizeof(*c->nodes));
	c->buckets = malloc(nbuckets * sizeof(*c->buckets));
	c->seqs = calloc(c->max_seqs, sizeof(*c->seqs));
	c->seq_blocks = calloc((size_t)c->max_seqs * c->max_seq_blocks, sizeof(*c->seq_blocks));
	c->seq_tokens = calloc((size_t)c->max_seqs * c->block_size, sizeof(*c->seq_tokens));
	c->local = calloc(c->max_seq_blocks, sizeof(*c->local));
	c->seq_hash = calloc(c->max_seq_blocks, sizeof(*c->seq_hash));
	c->evicted = calloc(c->max_seq_blocks, sizeof(*c->evicted));
	if (!c->nodes || !c->buckets || !c->seqs || !c->seq_blocks || !c->seq_tokens || !c->local ||
	    !c->seq_hash || !c->evicted)
		return -ENOMEM;
	memset(c->buckets, 0xff, nbuckets * sizeof(*c->buckets));
	return 0;
}

int mk_cache_init(struct mk_cache *c, uint32_t capacity_blocks, uint32_t block_size,
		  uint32_t max_seqs, uint32_t max_seq_blocks, const struct mk_cache_callbacks *cb)
{
	if (!c)
		return -EINVAL;
	memset(c, 0, sizeof(*c));
	if (!config_ok(capacity_blocks, block_size, max_seqs, max_seq_blocks))
		return -EINVAL;
	c->capacity_blocks = capacity_blocks;
	c->block_size = block_size;
	c->max_seqs = max_seqs;
	c->max_seq_blocks = max_seq_blocks;
	if (cb)
		c->cb = *cb;
	if (alloc_arrays(c)) {
		mk_cache_destroy(c);
		return -ENOMEM;
	}
	for (uint32_t i = 0; i < capacity_blocks; i++)
		c->nodes[i].next = i + 1 < capacity_blocks ? i + 1 : NIL;
	c->free_head = 0;
	c->nfree = capacity_blocks;
	c->lru_head = c->lru_tail = NIL;
	return 0;
}

void mk_cache_destroy(struct mk_cache *c)
{
	free(c->nodes);
	free(c->buckets);
	free(c->seqs);
	free(c->seq_blocks);
	free(c->seq_tokens);
	free(c->local);
	free(c->seq_hash);
	free(c->evicted);
	memset(c, 0, sizeof(*c));
}

uint32_t mk_cache_lookup(struct mk_cache *c, const uint32_t *tokens, uint32_t n)
{
	uint32_t nblocks = n / c->block_size;

	if (nblocks > c->max_seq_blocks)
		nblocks = c->max_seq_blocks;
	hash_prompt(c, tokens, nblocks);
	return leading_hits(c, nblocks);
}

/* Free cached blocks among the first @hits blocks of c->seq_hash. */
static uint32_t free_hits(const struct mk_cache *c, uint32_t hits)
{
	uint32_t n = 0;

	for (uint32_t i = 0; i < hits; i++)
		n += c->nodes[find(c, c->seq_hash[i])].refs == 0;
	return n;
}

int mk_cache_acquire(struct mk_cache *c, uint32_t seq_id, const uint32_t *tokens, uint32_t n,
		     uint32_t *cached_blocks)
{
	uint32_t nblocks = n / c->block_size, hits, tail = n % c->block_size;
	uint32_t *blocks;

	if (seq_id >= c->max_seqs || c->seqs[seq_id].active || (!tokens && n))
		return -EINVAL;
	if (nblocks > c->max_seq_blocks)
		return -E2BIG;
	hash_prompt(c, tokens, nblocks);
	hits = leading_hits(c, nblocks);
	/* Every free block but the hits is evictable, leaves first (the invariant on top). */
	if (nblocks - hits > c->nfree + c->nlru - free_hits(c, hits))
		return -ENOSPC;
	blocks = blocks_of(c, seq_id);
	for (uint32_t i = 0; i < hits; i++) {
		blocks[i] = find(c, c->seq_hash[i]);
		ref(c, blocks[i]);
	}
	for (uint32_t i = hits; i < nblocks; i++)
		blocks[i] = new_block(c, c->seq_hash[i], c->local[i], i ? blocks[i - 1] : NIL);
	flush_removed(c);
	if (nblocks > hits)
		emit_stored(c, hits ? &c->seq_hash[hits - 1] : NULL, &c->seq_hash[hits],
			    tokens + (size_t)hits * c->block_size, nblocks - hits);
	memcpy(partial_of(c, seq_id), tokens + (size_t)nblocks * c->block_size,
	       tail * sizeof(*tokens));
	c->seqs[seq_id] = (struct mk_cache_seq){.nblocks = nblocks, .npartial = tail, .active = 1};
	c->hit_blocks += hits;
	if (cached_blocks)
		*cached_blocks = hits;
	return 0;
}

/* Reference the block that @s's partial tokens have just filled; STORED when newly cached. */
static int fill_block(struct mk_cache *c, uint32_t seq_id, struct mk_cache_seq *s)
{
	uint32_t *blocks = blocks_of(c, seq_id), *tokens = partial_of(c, seq_id);
	uint32_t parent = s->nblocks ? blocks[s->nblocks - 1] : NIL;
	uint64_t local, hash;
	uint32_t idx;

	dp_hash_blocks(tokens, c->block_size, c->block_size, DP_HASH_SEED, &local);
	hash = parent != NIL ? dp_hash_chain(c->nodes[parent].hash, local) : local;
	idx = find(c, hash);
	if (idx != NIL) {
		ref(c, idx);
	} else {
		idx = new_block(c, hash, local, parent);
		if (idx == NIL)
			return -ENOSPC;
		flush_removed(c);
		emit_stored(c, parent != NIL ? &c->nodes[parent].hash : NULL, &hash, tokens, 1);
	}
	blocks[s->nblocks++] = idx;
	return 0;
}

int mk_cache_extend(struct mk_cache *c, uint32_t seq_id, uint32_t token)
{
	struct mk_cache_seq *s;
	int err;

	if (seq_id >= c->max_seqs || !c->seqs[seq_id].active)
		return -EINVAL;
	s = &c->seqs[seq_id];
	partial_of(c, seq_id)[s->npartial] = token;
	if (s->npartial + 1 < c->block_size) {
		s->npartial++;
		return 0;
	}
	if (s->nblocks == c->max_seq_blocks)
		return -E2BIG;
	err = fill_block(c, seq_id, s);
	if (err)
		return err;
	s->npartial = 0;
	return 0;
}

int mk_cache_release(struct mk_cache *c, uint32_t seq_id)
{
	struct mk_cache_seq *s;
	uint32_t *blocks;

	if (seq_id >= c->max_seqs || !c->seqs[seq_id].active)
		return -EINVAL;
	s = &c->seqs[seq_id];
	blocks = blocks_of(c, seq_id);
	for (uint32_t i = s->nblocks; i-- > 0;)
		unref(c, blocks[i]);
	*s = (struct mk_cache_seq){0};
	return 0;
}

double mk_cache_used_fraction(const struct mk_cache *c)
{
	return (double)c->nused / (double)c->capacity_blocks;
}

struct mk_cache_stats mk_cache_stats(const struct mk_cache *c)
{
	return (struct mk_cache_stats){
	    .capacity_blocks = c->capacity_blocks,
	    .used_blocks = c->nused,
	    .cached_free_blocks = c->nlru,
	    .free_blocks = c->nfree,
	    .hit_blocks = c->hit_blocks,
	    .stored_blocks = c->stored_blocks,
	    .removed_blocks = c->removed_blocks,
	};
}

bool mk_cache_contains(const struct mk_cache *c, uint64_t ext_id, uint32_t *refs)
{
	uint32_t idx = find(c, ext_id);

	if (idx == NIL)
		return false;
	if (refs)
		*refs = c->nodes[idx].refs;
	return true;
}

uint32_t mk_cache_lru(const struct mk_cache *c, uint64_t *out, uint32_t max)
{
	uint32_t n = 0;

	for (uint32_t i = c->lru_head; i != NIL && n < max; i = c->nodes[i].lru_next)
		out[n++] = c->nodes[i].hash;
	return n;
}

/*
 * The cached ancestors of @idx not yet sent by this dump, @idx included, into
 * ext[0..n) and local[0..n) root side first, all marked sent; returns n. *@top is the node
 * above the first of them: a block sent earlier in this dump, or NIL.
 */
static uint32_t unsent_chain(struct mk_cache *c, uint32_t idx, uint64_t *ext, uint64_t *local,
			     uint32_t *top)
{
	uint32_t n = 0, i = idx;

	while (i != NIL && c->nodes[i].dumped != c->dump_epoch) {
		n++;
		i = c->nodes[i].parent;
	}
	*top = i;
	for (uint32_t k = n, j = idx; k-- > 0; j = c->nodes[j].parent) {
		ext[k] = c->nodes[j].hash;
		local[k] = c->nodes[j].local;
		c->nodes[j].dumped = c->dump_epoch;
	}
	return n;
}

/* A new dump's mark; at the wrap every node's old mark is cleared, so none looks sent. */
static void next_epoch(struct mk_cache *c)
{
	if (++c->dump_epoch)
		return;
	for (uint32_t i = 0; i < c->capacity_blocks; i++)
		c->nodes[i].dumped = 0;
	c->dump_epoch = 1;
}

int mk_cache_dump(struct mk_cache *c, mk_cache_dump_fn fn, void *ctx)
{
	next_epoch(c);
	/*
	 * Every cached block is in exactly one hash chain, and every block is a leaf or has a
	 * leaf below it: the paths to the leaves cover the cache, one chain (one event) each.
	 */
	for (uint32_t b = 0; b <= c->bucket_mask; b++) {
		for (uint32_t i = c->buckets[b]; i != NIL; i = c->nodes[i].next) {
			uint32_t top, n;
			int rc;

			if (c->nodes[i].children)
				continue;
			n = unsent_chain(c, i, c->seq_hash, c->local, &top);
			rc = fn(ctx, top != NIL ? &c->nodes[top].hash : NULL, c->seq_hash, c->local,
				n);
			if (rc)
				return rc;
		}
	}
	return 0;
}
