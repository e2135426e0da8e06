/*
 * The prefix index: for a prompt, how many leading KV blocks each routing target holds.
 *
 * One writer (the control thread) applies KV events; any number of readers (dataplane cores)
 * query concurrently without locks and without ever waiting. Entries are keyed by the sequence
 * hash of their prefix (hash.h); each holds the immutable, shared set of targets caching it.
 * Memory is returned once no target holds an entry and every reader has moved on.
 * Design and memory-ordering arguments: index_pvt.h.
 */
#ifndef PD_DATAPLANE_INDEX_H
#define PD_DATAPLANE_INDEX_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "index_pvt.h"

/* Routing targets are dense ids 0 .. max_targets-1 (a worker, or one DP rank of a worker). */
#define PDX_TARGETS_LIMIT 65535u
#define PDX_DEFAULT_TARGETS 1024u
#define PDX_READERS_LIMIT 64u

struct pdx_config {
	uint32_t max_targets;	 /* 0: PDX_DEFAULT_TARGETS; at most PDX_TARGETS_LIMIT */
	uint32_t max_readers;	 /* reader handles that may be attached at once; 0: 16 */
	uint32_t initial_blocks; /* run heads to size the table for; 0: 4096; it grows anyway */
};

/* One block of a STORED event: the engine's opaque id and the local hash of its tokens. */
struct pdx_block {
	uint64_t ext_id;
	uint64_t local_hash;
};

/* One answer of a match: @target holds the first @depth blocks of the query. */
struct pdx_overlap {
	uint16_t target;
	uint32_t depth;
};

/* Counters, written by the writer only; pdx_stats() copies them. */
struct pdx_stats {
	uint64_t events_dup;	      /* event id repeated or older than the last one: dropped */
	uint64_t events_gap;	      /* event id jumped ahead: a gap was detected */
	uint64_t events_missing;      /* sum of the gaps' sizes */
	uint64_t store_unknown_parent; /* STORED naming a parent the target does not hold: dropped */
	uint64_t store_self_parent;   /* STORED whose block names itself as parent: rejected */
	uint64_t store_repeat_id;     /* STORED repeating an external id within itself: rejected */
	uint64_t store_id_conflict;   /* external id already names another block: rest dropped */
	uint64_t store_dup_block;     /* target already held the block: nothing to do */
	uint64_t remove_unknown;      /* REMOVED of an id the target does not hold: ignored */
	uint64_t bad_target;	      /* event for a target id >= max_targets: rejected */
	uint64_t blocks_stored;	      /* (target, block) pairs added */
	uint64_t blocks_removed;      /* (target, block) pairs dropped, by REMOVED/CLEARED/drop */
	uint64_t entries;	      /* live index entries (distinct prefixes held by someone) */
	uint64_t holder_sets;	      /* live distinct holder sets */
	uint64_t table_slots;	      /* capacity of the hash table */
	uint64_t table_grows;	      /* times the table was rebuilt larger (or cleaner) */
	uint64_t retired_pending;     /* objects waiting for readers to move on */
	uint64_t bytes;		      /* memory of the index's structures (not readers' scratch) */
};

/**
 * pdx_init - set up an empty index.
 * @x: caller-provided storage.
 * @cfg: limits, or NULL for the defaults.
 *
 * Returns 0, -EINVAL for a limit out of range, or -ENOMEM.
 * Context: any thread, before the index is shared.
 */
int pdx_init(struct pdx *x, const struct pdx_config *cfg);

/**
 * pdx_destroy - free everything the index holds.
 *
 * Context: after every reader has detached and no thread uses @x any more.
 */
void pdx_destroy(struct pdx *x);

/*
 * Writer side. Exactly one thread at a time (the control thread) may call the functions below;
 * none of them ever waits for a reader.
 */

/**
 * pdx_event_seq - check a publisher's event id before applying the event.
 * @target: the publishing target.
 * @event_id: its monotonically increasing event id.
 *
 * The first id seen from a target (or the first after pdx_drop_target()) starts its sequence.
 * Returns 0 when @event_id follows the previous one, N > 0 when N events were skipped (a gap,
 * counted: apply the event, then ask the worker for a dump), -EALREADY when @event_id is not
 * newer than the last one (a duplicate, counted: drop the event), -EINVAL for a bad @target.
 */
int pdx_event_seq(struct pdx *x, uint32_t target, uint64_t event_id);

/**
 * pdx_store - apply a STORED event: @target now holds @blocks, chained after @parent_ext.
 * @parent_ext: external id of the block before @blocks[0], or NULL when they start at block 0.
 * @blocks: external id and local hash of each block, in prefix order.
 * @n: number of blocks.
 *
 * Returns the number of blocks newly held by @target (repeats of blocks it already held are
 * counted and skipped), or a negative errno with nothing applied:
 * -ENOENT: @parent_ext is not a block @target holds (counted; typical after a restart);
 * -EINVAL: the parent id appears among the blocks (store_self_parent), an id repeats within
 *          the event (store_repeat_id), or a bad target (each counted).
 * Two errors stop the event part way, leaving the blocks before the failing one applied and
 * the index consistent (pdx_target_blocks() tells how many):
 * -EEXIST: an external id already names a different block of @target (store_id_conflict);
 * -ENOMEM: out of memory.
 */
long pdx_store(struct pdx *x, uint32_t target, const uint64_t *parent_ext,
	       const struct pdx_block *blocks, size_t n);

/**
 * pdx_store_tokens - pdx_store() with blocks given as token ids.
 * @ext_ids: external id of each block.
 * @n: number of blocks; @tokens holds n * @block_size tokens.
 * @block_size: tokens per block, as for dp_hash_blocks().
 * @seed: from dp_hash_seed().
 *
 * Returns as pdx_store(); also -EINVAL for a bad block size.
 */
long pdx_store_tokens(struct pdx *x, uint32_t target, const uint64_t *parent_ext,
		      const uint64_t *ext_ids, size_t n, const uint32_t *tokens,
		      uint32_t block_size, uint64_t seed);

/**
 * pdx_remove - apply a REMOVED event: @target evicted the blocks named by @ext_ids.
 *
 * Unknown ids are counted and ignored. Returns the number of blocks removed, -EINVAL for a
 * bad target, or -ENOMEM (the blocks before the failing one stay removed).
 */
long pdx_remove(struct pdx *x, uint32_t target, const uint64_t *ext_ids, size_t n);

/**
 * pdx_clear - apply a CLEARED event: @target holds nothing any more.
 *
 * Its event sequence continues. Returns the number of blocks dropped, -EINVAL, or -ENOMEM
 * (what was dropped stays dropped; call again to finish).
 */
long pdx_clear(struct pdx *x, uint32_t target);

/**
 * pdx_drop_target - forget @target entirely: its blocks, id map and event sequence.
 *
 * Returns the number of blocks dropped, -EINVAL, or -ENOMEM as pdx_clear() (the sequence
 * is then kept, so a retry finishes the job).
 */
long pdx_drop_target(struct pdx *x, uint32_t target);

/**
 * pdx_target_blocks - number of blocks @target holds (0 for a bad target).
 * Context: writer.
 */
size_t pdx_target_blocks(const struct pdx *x, uint32_t target);

/**
 * pdx_stats - copy the counters.
 * Context: writer (a reader may call it too: every counter is read relaxed, each one exact but
 * not all from the same instant).
 */
void pdx_stats(const struct pdx *x, struct pdx_stats *out);

/**
 * pdx_reclaim - free what readers have moved past.
 *
 * Every event call (store, remove, clear, drop) already does this; call it when events stop
 * so memory is returned anyway.
 * Returns the number of objects still waiting for a reader.
 */
size_t pdx_reclaim(struct pdx *x);

/*
 * Reader side. Each reader thread attaches once and then queries with its own handle.
 */

/**
 * pdx_reader_attach - take a reader handle.
 * @out: receives the handle.
 *
 * Returns 0, -EBUSY when max_readers handles are attached, or -ENOMEM.
 * Context: any thread; the handle then belongs to that thread alone.
 */
int pdx_reader_attach(struct pdx *x, struct pdx_reader **out);

/**
 * pdx_reader_detach - give a handle back.
 * Context: the thread owning @r, outside pdx_match().
 */
void pdx_reader_detach(struct pdx_reader *r);

/**
 * pdx_match - overlap of every target with a prompt.
 * @r: this thread's reader handle.
 * @local: local hashes of the prompt's full blocks, in order.
 * @n: number of blocks.
 * @out: room for max_targets answers.
 *
 * For every target holding at least block 0, writes its depth: the number of leading blocks
 * it holds without a hole. Answers are in no particular order. Never blocks, never allocates.
 * Returns the number of answers (0 when no target holds block 0).
 * Context: the thread owning @r.
 */
size_t pdx_match(struct pdx_reader *r, const uint64_t *local, size_t n, struct pdx_overlap *out);

/**
 * pdx_match_tokens - pdx_match() on token ids.
 *
 * Hashes the full blocks of @tokens (at most PDX_MATCH_MAX_BLOCKS of them are used) into the
 * handle's scratch space, then matches. Returns the number of answers, or -EINVAL for a bad
 * block size.
 */
long pdx_match_tokens(struct pdx_reader *r, const uint32_t *tokens, size_t ntokens,
		      uint32_t block_size, uint64_t seed, struct pdx_overlap *out);

#endif
