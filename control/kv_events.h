/*
 * KV-event intake: the control thread drains each worker's event ring (shm/events.h records)
 * into the prefix index, of which it is the single writer, and stores load reports in the
 * router. Every record is hostile until checked: its length must be exactly what its counts
 * say, every field in range, and arrays are copied out of shared memory before the index
 * sees them, so a worker rewriting its ring mid-read can only spoil its own events.
 */
#ifndef PD_CONTROL_KV_EVENTS_H
#define PD_CONTROL_KV_EVENTS_H

#include <stdbool.h>
#include <stdint.h>

#include "index.h"
#include "ring.h"
#include "route.h"

/* Counters of one worker's intake; written by the control thread only. */
struct ctl_kv_stats {
	uint64_t events;	 /* KV events handed to the index (refused ones count here too) */
	uint64_t duplicates;	 /* event id not newer than the last: dropped */
	uint64_t gaps;		 /* event ids skipped (each gap once): a dump is due */
	uint64_t refused;	 /* events the index refused (unknown parent, repeated ids, ...) */
	uint64_t unknown_rank;	 /* a DP rank the worker did not register: dropped */
	uint64_t unknown_type;	 /* a record type this router does not know: skipped */
	uint64_t loads;		 /* load reports stored */
	uint64_t malformed;	 /* an impossible record: the ring is given up */
	uint64_t blocks_stored;	 /* blocks newly held after STORED events */
	uint64_t blocks_removed; /* blocks dropped by REMOVED and CLEARED events */
};

/* One worker's intake. */
struct ctl_kv {
	struct pdx *index;
	struct rt_router *rt;
	struct shm_ring *ring; /* the consumer end of the worker's event ring */
	uint32_t worker;
	uint32_t block_size; /* the worker's registered block size */
	bool dump_wanted;    /* a gap was seen: ask the worker for a dump of its cache */
	bool broken;	     /* a malformed record: disconnect the worker */
	struct ctl_kv_stats stats;
	/* A STORED event copied out of shared memory before the index sees it. */
	struct pdx_block *blocks;
	uint64_t *hashes;
	uint32_t blocks_cap, hashes_cap;
};

/**
 * ctl_kv_init - an intake for @worker (registered in @rt) reading @ring into @index.
 * @block_size: the block size the worker registered; token-id events must use it.
 */
void ctl_kv_init(struct ctl_kv *k, struct pdx *index, struct rt_router *rt, uint32_t worker,
		 uint32_t block_size, struct shm_ring *ring);

/* Free the intake's scratch; the ring and the index are not its own. */
void ctl_kv_destroy(struct ctl_kv *k);

/**
 * ctl_kv_drain - apply up to @budget records from the ring, then release their space.
 *
 * Returns the number of records taken (0: the ring is empty), or -EBADMSG once a record or
 * the ring itself is malformed (k->broken is set; the worker must be disconnected and its
 * blocks dropped). Bad events that are well-formed (duplicates, unknown parents or ranks) are
 * counted and skipped. -ENOMEM when memory ran out (the event is counted as refused and a
 * dump is asked for; draining can resume). An event the index took only part of (an id
 * conflict) also asks for a dump.
 * Context: control thread.
 */
int ctl_kv_drain(struct ctl_kv *k, uint32_t budget);

#endif
