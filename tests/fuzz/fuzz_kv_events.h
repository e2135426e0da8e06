/*
 * What fuzz_kv_events.c (the target) and fuzz_kv_events_replay.c (the replay driver, which
 * models a worker to write inputs) share: the input's layout, the two registered workers and the
 * pool of prompts their events name and the checks query.
 */
#ifndef PD_TESTS_FUZZ_KV_EVENTS_H
#define PD_TESTS_FUZZ_KV_EVENTS_H

#include <stddef.h>
#include <stdint.h>

#include "kv_events.h"

/* The input: mode byte (bit 0 raw ring, bit 1 worker B, bits 2-4 ring size), drain budget. */
#define IN_MODE 0
#define IN_BUDGET 1
#define IN_BODY 2
#define REC_HDR 4 /* records mode: type, op (bits 0-3 drain budget, 4 publish), length u16 */
#define RAW_SIZE(sel) (64u << (sel)) /* raw mode: 64 .. 8192 bytes */
#define MAX_HEADS 64		     /* raw mode: later heads after the data */
#define POOL 4			     /* prompts the checks (and the worker model) use */
#define POOL_BLOCKS 320		     /* blocks of each */

/* A registered worker: A at block size 16 with DP ranks 0-1, B at block size 4 with 3-5. */
struct kvf_worker {
	uint32_t id, bs, rank0, nranks;
	uint16_t tg[3];
	uint32_t *tok;			   /* POOL prompts of POOL_BLOCKS * bs tokens */
	uint64_t local[POOL][POOL_BLOCKS]; /* their local hashes */
};

/* Set up the index, the router and both workers, once; then the workers. */
void kvf_setup(void);
const struct kvf_worker *kvf_worker(int i);

/* External id of block @i of pool prompt @p: names the prefix, as an engine's hash does. */
uint64_t kvf_pool_ext(uint32_t p, uint32_t i);

/* Little-endian u32 at @at of @in[0..n), 0 past the end. */
uint32_t kvf_rd32(const uint8_t *in, size_t n, size_t at);

/* Over every input run so far, for the replay's summary. */
struct kvf_totals {
	struct ctl_kv_stats stats;
	unsigned long clean, broken; /* inputs by how the intake ended */
	uint64_t answers;	     /* non-empty answers of the checks' queries */
};
extern struct kvf_totals kvf_totals;

#endif
