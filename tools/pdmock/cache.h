/*
 * pdmock's KV cache (routing-semantics §7): a paged prefix cache after vLLM's. Full blocks are
 * named by the sequence hash of their prefix (dataplane/hash.h at DP_HASH_SEED), counted while
 * sequences use them, then kept in LRU order and evicted leaves first when space is needed. It
 * reports the STORED and REMOVED events an engine publishes, and dumps the whole cache when the
 * router needs it again. Single-threaded: the engine's loop.
 */
#ifndef PD_TOOLS_PDMOCK_CACHE_H
#define PD_TOOLS_PDMOCK_CACHE_H

#include <stdbool.h>
#include <stdint.h>

/* Defaults of routing-semantics §7. */
#define MK_CACHE_DEFAULT_CAPACITY_BLOCKS 16384u
#define MK_CACHE_DEFAULT_BLOCK_SIZE 64u

/* Limits of the configuration; above them mk_cache_init() says -EINVAL. */
#define MK_CACHE_MAX_CAPACITY_BLOCKS (1u << 28)
#define MK_CACHE_MAX_SEQS (1u << 20)

/*
 * Newly filled blocks, one event per call: @parent_or_null is the sequence hash of the block
 * before the first one (NULL for a prompt's first block), @ext_ids their sequence hashes (also
 * the engine's block ids), @tokens their nblocks * block_size token ids.
 */
typedef void (*mk_cache_stored_fn)(void *ctx, const uint64_t *parent_or_null,
				   const uint64_t *ext_ids, const uint32_t *tokens,
				   uint32_t nblocks);
/* Blocks evicted by one call, reported before the STORED event of the blocks replacing them. */
typedef void (*mk_cache_removed_fn)(void *ctx, const uint64_t *ext_ids, uint32_t n);

/*
 * One chain of a dump (mk_cache_dump()): @n blocks, each the child of the one before it, the
 * first the child of *@parent_or_null (a block of an earlier call of the same dump) or a
 * prompt's first block when it is NULL; @ext_ids their sequence hashes (the engine's ids),
 * @local their local hashes (routing-semantics §1), both valid during the call only.
 * Returns 0 to go on, anything else to stop the dump.
 */
typedef int (*mk_cache_dump_fn)(void *ctx, const uint64_t *parent_or_null, const uint64_t *ext_ids,
				const uint64_t *local, uint32_t n);

struct mk_cache_callbacks {
	void *ctx;
	mk_cache_stored_fn stored;   /* or NULL */
	mk_cache_removed_fn removed; /* or NULL */
};

struct mk_cache_stats {
	uint32_t capacity_blocks;
	uint32_t used_blocks;	     /* refcount > 0 */
	uint32_t cached_free_blocks; /* refcount 0, in the LRU list */
	uint32_t free_blocks;	     /* never filled or evicted: free capacity */
	uint64_t hit_blocks;	     /* prompt blocks found cached by mk_cache_acquire() */
	uint64_t stored_blocks;	     /* blocks reported STORED */
	uint64_t removed_blocks;     /* blocks reported REMOVED */
};

struct mk_cache_node;
struct mk_cache_seq;

/* All fields private; every array is allocated by mk_cache_init(). */
struct mk_cache {
	uint32_t capacity_blocks, block_size, max_seqs, max_seq_blocks;
	struct mk_cache_callbacks cb;
	struct mk_cache_node *nodes; /* capacity_blocks */
	uint32_t *buckets;	     /* hash table by sequence hash: node indices */
	uint32_t bucket_mask;
	uint32_t free_head, nfree; /* free capacity, chained through the nodes */
	uint32_t lru_head, lru_tail, nlru;
	uint32_t nused;
	struct mk_cache_seq *seqs;  /* max_seqs */
	uint32_t *seq_blocks;	    /* max_seqs * max_seq_blocks node indices */
	uint32_t *seq_tokens;	    /* max_seqs * block_size tokens of the partial block */
	uint64_t *local, *seq_hash; /* scratch: max_seq_blocks hashes of one prompt */
	uint64_t *evicted;	    /* scratch: ids evicted by the current call */
	uint32_t nevicted;
	uint32_t dump_epoch; /* numbers the dumps, to mark the blocks one has sent */
	uint64_t hit_blocks, stored_blocks, removed_blocks;
};

/**
 * mk_cache_init - allocate an empty cache.
 * @c: the cache, owned by the caller.
 * @capacity_blocks: KV blocks in all, [1, MK_CACHE_MAX_CAPACITY_BLOCKS].
 * @block_size: tokens per block, a power of two in [1, DP_HASH_MAX_BLOCK].
 * @max_seqs: sequence ids are [0, max_seqs), max_seqs in [1, MK_CACHE_MAX_SEQS].
 * @max_seq_blocks: full blocks one sequence may hold, [1, capacity_blocks].
 * @cb: event callbacks, copied; NULL for none.
 *
 * Everything is allocated here; no later call allocates.
 * Returns 0, -EINVAL for a bad configuration, or -ENOMEM.
 * Context: any thread; the cache then belongs to that thread.
 */
int mk_cache_init(struct mk_cache *c, uint32_t capacity_blocks, uint32_t block_size,
		  uint32_t max_seqs, uint32_t max_seq_blocks, const struct mk_cache_callbacks *cb);

/* mk_cache_destroy - free what mk_cache_init() allocated; no events. Safe after a failed init. */
void mk_cache_destroy(struct mk_cache *c);

/**
 * mk_cache_lookup - prefix hit of a prompt, changing nothing.
 * @tokens: the prompt, @n tokens; a trailing partial block never counts.
 *
 * Returns the number of leading full blocks cached (at most max_seq_blocks).
 */
uint32_t mk_cache_lookup(struct mk_cache *c, const uint32_t *tokens, uint32_t n);

/**
 * mk_cache_acquire - start sequence @seq_id on a prompt and reference its full blocks.
 * @tokens: the prompt, @n tokens; the partial tail is kept for mk_cache_extend().
 * @cached_blocks: output, the prompt's leading blocks that were cached; may be NULL.
 *
 * Cached blocks gain a reference; missing ones take free capacity, else evict the least
 * recently used free block that has no cached child, and are reported in one STORED event
 * (after one REMOVED event for the evicted blocks).
 * Returns 0; -EINVAL for a bad or already active @seq_id; -E2BIG when the prompt has more
 * than max_seq_blocks full blocks; -ENOSPC when the blocks cannot all be held even after
 * evicting every free block. On error nothing changed and no event was reported.
 */
int mk_cache_acquire(struct mk_cache *c, uint32_t seq_id, const uint32_t *tokens, uint32_t n,
		     uint32_t *cached_blocks);

/**
 * mk_cache_extend - append one decoded token to sequence @seq_id.
 *
 * When the token fills the sequence's last block, the block is referenced: found cached, or
 * stored from free capacity or an eviction (REMOVED, then STORED chained to its parent).
 * Returns 0; -EINVAL when @seq_id is not active; -E2BIG when the sequence already holds
 * max_seq_blocks blocks; -ENOSPC when no block is free or evictable. On error the token is
 * not appended and nothing changed.
 */
int mk_cache_extend(struct mk_cache *c, uint32_t seq_id, uint32_t token);

/**
 * mk_cache_release - end sequence @seq_id and drop its references.
 *
 * Its blocks stay cached; those no longer referenced enter the LRU list last block first, so
 * that a prompt's tail is evicted before its head (vLLM's order).
 * Returns 0, or -EINVAL when @seq_id is not active.
 */
int mk_cache_release(struct mk_cache *c, uint32_t seq_id);

/* Fraction of the capacity referenced by sequences: p in the step-time model of §7. */
double mk_cache_used_fraction(const struct mk_cache *c);

/* Occupancy and event totals. */
struct mk_cache_stats mk_cache_stats(const struct mk_cache *c);

/* Is the block @ext_id cached? Its reference count goes to @refs when not NULL. */
bool mk_cache_contains(const struct mk_cache *c, uint64_t ext_id, uint32_t *refs);

/* The free cached blocks, least recently used first: copies up to @max ids, returns how many. */
uint32_t mk_cache_lru(const struct mk_cache *c, uint64_t *out, uint32_t max);

/**
 * mk_cache_dump - every cached block, parents before children, in chains for STORED events.
 * @fn: called once per chain (see mk_cache_dump_fn); it must not call the cache, not even
 * mk_cache_lookup(): the chains it is given live in the cache's scratch arrays.
 *
 * What an engine sends after CLEARED when the router asks for its whole cache (DUMP) or a new
 * router takes over: replayed in order, the chains rebuild the same blocks and parent links.
 * One chain per leaf block: its ancestors not sent yet, then itself, so a shared prefix goes
 * once. Blocks in use by sequences are included; reference counts and the LRU order are not.
 * A chain has at most max_seq_blocks blocks. No event callback runs; nothing is allocated.
 * Returns 0 once every block was passed to @fn, or the first nonzero value @fn returned (the
 * dump stopped there: start a new one to resend everything).
 * Context: the cache's thread.
 */
int mk_cache_dump(struct mk_cache *c, mk_cache_dump_fn fn, void *ctx);

#endif
