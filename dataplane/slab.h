/*
 * A dataplane core's buffers: power-of-two size classes carved from one reserved mapping, with
 * a free list per class. The hot path takes and returns buffers without touching the general
 * heap (no malloc lock, no page faults once warm) and the memory is first touched by the core
 * that owns it, so it lands on that core's NUMA node. One owner thread; no locks.
 */
#ifndef PD_DATAPLANE_SLAB_H
#define PD_DATAPLANE_SLAB_H

#include <stddef.h>
#include <stdint.h>

#define DP_SLAB_MIN_SHIFT 8u  /* smallest buffer: 256 bytes */
#define DP_SLAB_MAX_SHIFT 26u /* largest: 64 MiB */
#define DP_SLAB_CLASSES (DP_SLAB_MAX_SHIFT - DP_SLAB_MIN_SHIFT + 1)

struct dp_slab {
	uint8_t *base;
	size_t reserved; /* bytes of address space reserved */
	size_t used;	 /* bytes carved so far, never given back */
	void *free[DP_SLAB_CLASSES];
	uint64_t exhausted; /* allocations refused: the budget was spent */
};

/* A growable buffer from a slab. */
struct dp_buf {
	uint8_t *p;
	uint32_t len;
	uint32_t cap; /* 0: no buffer */
};

/**
 * dp_slab_init - reserve @budget bytes of address space (rounded up to 64 MiB); nothing is
 * committed until used. Returns 0 or -ENOMEM.
 */
int dp_slab_init(struct dp_slab *s, size_t budget);

void dp_slab_destroy(struct dp_slab *s);

/* A buffer of at least @bytes (at most 64 MiB), or NULL when the budget is spent and no free
 * buffer is large enough (counted). */
void *dp_slab_get(struct dp_slab *s, size_t bytes, uint32_t *cap);

/* Give back a buffer of capacity @cap from dp_slab_get(). */
void dp_slab_put(struct dp_slab *s, void *p, uint32_t cap);

/* Make room for @need bytes in @b, keeping its contents. Returns 0 or -ENOMEM. */
int dp_buf_reserve(struct dp_slab *s, struct dp_buf *b, size_t need);

/* Give @b's buffer back. */
void dp_buf_free(struct dp_slab *s, struct dp_buf *b);

#endif
