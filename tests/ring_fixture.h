/*
 * A ring fixture for test_shm_ring.c and test_shm_ring_fault.c: one ring in plain memory with a
 * producer and a consumer attached, and the helpers that write and check records through them.
 * Every helper fails the running test through Criterion when something it expects is not so.
 */
#ifndef PD_TESTS_RING_FIXTURE_H
#define PD_TESTS_RING_FIXTURE_H

#include <stdint.h>

#include "ring.h"

/* The ring under test: exactly shm_ring_bytes(size) bytes, so ASan sees a read past the end. */
extern void *t_mem;
/* The producer and the consumer side attached to t_mem. */
extern struct shm_ring t_prod, t_cons;

/* Free the ring (the suites' .fini); safe when there is none. */
void t_ring_free(void);

/* The shared header and data of the ring under test. */
struct shm_ring_shared *t_ring_sh(void);

/* A formatted ring of @size bytes, its data poisoned so no test passes on zeros. */
void t_ring_new(uint32_t size);

/* Both shared indices, as a side that owns neither would write them. */
void t_ring_set(uint32_t head, uint32_t tail);

/* Attach t_prod and t_cons to the ring of @size bytes; both must succeed. */
void t_ring_attach_both(uint32_t size);

/* The shared head index as it is now. */
uint32_t t_ring_load_head(void);

/* Byte @i of the payload pattern of @seed. */
uint8_t t_ring_pattern(uint64_t seed, uint32_t i);

/* Reserve, fill with the pattern of @seed, commit; the payload, or NULL when the ring is full. */
uint8_t *t_ring_try_push(uint16_t type, uint16_t flags, uint32_t len, uint64_t seed);

/* t_ring_try_push() that must find room. */
uint8_t *t_ring_push(uint16_t type, uint16_t flags, uint32_t len, uint64_t seed);

/* The reserve error for a record of @len bytes, asserting there is one. */
int t_ring_reserve_err(uint16_t type, uint32_t len);

/* Peek the next record, check it is the one t_ring_push() made with these, consume it. */
const uint8_t *t_ring_pop(uint16_t type, uint16_t flags, uint32_t len, uint64_t seed);

/* shm_ring_peek() on t_cons, the record thrown away: 0, -EAGAIN or -EBADMSG. */
int t_ring_peek(void);

#endif
