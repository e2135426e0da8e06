/*
 * The records a worker writes into its mailbox's event ring (mailbox.h): KV-cache events and
 * load reports. An ABI between the router and workers built apart on the same machine (so
 * both share its byte order): fixed layouts,
 * every size and offset pinned by a _Static_assert, variable parts after the fixed one with
 * their counts in it. The router checks that a record's length is exactly what its counts say
 * (control/kv_events.c) before it reads any of it.
 */
#ifndef PD_SHM_EVENTS_H
#define PD_SHM_EVENTS_H

#include <stddef.h>
#include <stdint.h>

/* Record types on the event ring (shm_ring types; 0 is the ring's pad). */
enum shm_ev_type {
	SHM_EV_STORED = 1,  /* struct shm_ev_stored + ext ids + local hashes or token ids */
	SHM_EV_REMOVED = 2, /* struct shm_ev_removed + ext ids */
	SHM_EV_CLEARED = 3, /* struct shm_ev_cleared */
	SHM_EV_LOAD = 4,    /* struct shm_ev_load */
};

/* How a STORED event gives its blocks' content. */
enum shm_ev_blocks {
	SHM_EV_LOCAL_HASHES = 0, /* one u64 local hash per block (routing-semantics §1) */
	SHM_EV_TOKEN_IDS = 1,	 /* block_size u32 token ids per block; the router hashes them */
};

/* Blocks of one STORED or REMOVED event. A record must also fit the event ring
 * (shm_ring_max_payload()): a worker splits larger events, chaining them by parent. */
#define SHM_EV_MAX_BLOCKS 65536u

/* STORED: @nblocks blocks now cached by DP rank @dp_rank, chained after @parent_ext. */
struct shm_ev_stored {
	uint64_t event_id; /* per (worker, DP rank), increasing by one per event */
	uint32_t dp_rank;
	uint32_t nblocks;	/* 1 .. SHM_EV_MAX_BLOCKS */
	uint64_t parent_ext; /* engine id of the block before the first; ignored without parent */
	uint8_t has_parent;  /* 0: the blocks start at block 0 of a prompt */
	uint8_t blocks_kind; /* enum shm_ev_blocks */
	uint16_t reserved;   /* 0 */
	uint32_t block_size; /* tokens per block (SHM_EV_TOKEN_IDS), the worker's block size */
	/* Then: uint64_t ext_ids[nblocks]; then uint64_t local[nblocks] or
	 * uint32_t tokens[nblocks * block_size]. */
};

/* REMOVED: DP rank @dp_rank evicted the blocks named by the @n ext ids that follow. */
struct shm_ev_removed {
	uint64_t event_id;
	uint32_t dp_rank;
	uint32_t n; /* 1 .. SHM_EV_MAX_BLOCKS */
	/* Then: uint64_t ext_ids[n]. */
};

/* CLEARED: DP rank @dp_rank holds nothing any more. */
struct shm_ev_cleared {
	uint64_t event_id;
	uint32_t dp_rank;
	uint32_t reserved; /* 0 */
};

/* LOAD: what DP rank @dp_rank reports about itself (kept apart from the router's own
 * predictions; feeds the busy thresholds). Not part of the event-id sequence. */
struct shm_ev_load {
	uint32_t dp_rank;
	uint32_t reserved; /* 0 */
	uint64_t used_blocks;
	uint64_t prefill_tokens;
};

_Static_assert(sizeof(struct shm_ev_stored) == 32, "event ABI");
_Static_assert(offsetof(struct shm_ev_stored, parent_ext) == 16, "event ABI");
_Static_assert(offsetof(struct shm_ev_stored, block_size) == 28, "event ABI");
_Static_assert(sizeof(struct shm_ev_removed) == 16, "event ABI");
_Static_assert(sizeof(struct shm_ev_cleared) == 16, "event ABI");
_Static_assert(sizeof(struct shm_ev_load) == 24, "event ABI");

#endif
