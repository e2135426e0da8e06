/*
 * A KV-event intake fixture for test_ctl_kv_events.c and test_ctl_kv_events_fault.c: an index
 * and a router (route_fixture.h) with one aggregated worker of two DP ranks at block size 16, an
 * event ring in plain memory with a producer handle playing the worker and the consumer handle
 * given to ctl_kv_init(), encoders that lay out each record of shm/events.h as a worker would,
 * and a reader to ask the index how deep each rank holds a prompt. Every helper fails the
 * running test through Criterion when something it needs does not work.
 */
#ifndef PD_TESTS_KV_FIXTURE_H
#define PD_TESTS_KV_FIXTURE_H

#include <stddef.h>
#include <stdint.h>

#include "events.h"
#include "kv_events.h"
#include "route_fixture.h"

#define T_KV_WORKER 7u		 /* the worker's id */
#define T_KV_RING (1u << 16)	 /* ring size of t_kv_open(); a 300-block token event fits */
#define T_KV_BIG_RING (1u << 21) /* room for a record of SHM_EV_MAX_BLOCKS + 1 blocks */

struct t_kv {
	struct t_route t;
	struct pdx_reader *r;
	struct pdx_overlap out[T_ROUTE_TARGETS];
	uint16_t tg[2]; /* routing target of DP rank 0 and 1 */
	void *mem;	/* the ring: shm_ring_bytes(size) bytes, 64-byte aligned */
	uint32_t size;
	struct shm_ring prod; /* the worker's end */
	struct shm_ring cons; /* the intake's end, in k */
	struct ctl_kv k;
};

/* Open the fixture with a ring of @size bytes; @cfg as t_route_open(). */
void t_kv_open(struct t_kv *s, uint32_t size, const struct rt_config *cfg);
void t_kv_close(struct t_kv *s);

/* A record's payload being built: heap bytes, freed by t_kv_put(). */
struct t_rec {
	uint8_t *p;
	size_t len;
};

/* STORED with local hashes; @parent NULL: no parent (the field stays 0). */
struct t_rec t_rec_stored(uint32_t rank, uint64_t id, const uint64_t *parent, const uint64_t *ext,
			  const uint64_t *local, uint32_t n);
/* STORED with @n * @bs token ids. */
struct t_rec t_rec_tokens(uint32_t rank, uint64_t id, const uint64_t *parent, const uint64_t *ext,
			  const uint32_t *tok, uint32_t n, uint32_t bs);
struct t_rec t_rec_removed(uint32_t rank, uint64_t id, const uint64_t *ext, uint32_t n);
struct t_rec t_rec_cleared(uint32_t rank, uint64_t id);
struct t_rec t_rec_load(uint32_t rank, uint64_t used_blocks, uint64_t prefill_tokens);
/* A payload of @len bytes, zeroed. */
struct t_rec t_rec_raw(size_t len);

/* Make @r @len bytes long: cut, or padded with zeros. */
void t_rec_resize(struct t_rec *r, size_t len);

/* The fixed part of @r, to tamper with. */
static inline struct shm_ev_stored *t_stored_hdr(struct t_rec *r)
{
	return (struct shm_ev_stored *)r->p;
}

/* Write @r as a record of @type (flags 0) through the producer, publish it, free it. */
void t_kv_put(struct t_kv *s, uint16_t type, struct t_rec r);

/* The same for each record type. */
void t_kv_stored(struct t_kv *s, uint32_t rank, uint64_t id, const uint64_t *parent,
		 const uint64_t *ext, const uint64_t *local, uint32_t n);
void t_kv_tokens(struct t_kv *s, uint32_t rank, uint64_t id, const uint64_t *parent,
		 const uint64_t *ext, const uint32_t *tok, uint32_t n);
void t_kv_removed(struct t_kv *s, uint32_t rank, uint64_t id, const uint64_t *ext, uint32_t n);
void t_kv_cleared(struct t_kv *s, uint32_t rank, uint64_t id);
void t_kv_load(struct t_kv *s, uint32_t rank, uint64_t used_blocks, uint64_t prefill_tokens);

/* ctl_kv_drain() of everything (a large budget). */
int t_kv_drain(struct t_kv *s);

/* Depth of @local[0..n) the index reports for DP rank @rank (0 when not reported). */
uint32_t t_kv_depth(struct t_kv *s, uint32_t rank, const uint64_t *local, size_t n);

/* Blocks DP rank @rank holds. */
size_t t_kv_blocks(const struct t_kv *s, uint32_t rank);

/* External ids of a prompt named by @tag: distinct, never 0. */
void t_kv_ext(uint64_t tag, size_t n, uint64_t *ext);

/* @n blocks of @bs tokens named by @tag, and their local hashes by dp_hash_blocks(). */
void t_kv_prompt_tokens(uint32_t tag, uint32_t n, uint32_t bs, uint32_t *tok, uint64_t *local);

/* Intake counters that must be zero in a test that does not expect them. */
void t_kv_expect_clean(const struct t_kv *s);

#endif
