/*
 * Setting up the shared-memory rings (ring.h); the hot path is inline in the header.
 */
#include "ring.h"

static bool size_ok(uint32_t size)
{
	return size >= SHM_RING_MIN && size <= SHM_RING_MAX && !(size & (size - 1));
}

int shm_ring_format(void *mem, uint32_t size)
{
	struct shm_ring_shared *sh = mem;

	if (!size_ok(size))
		return -EINVAL;
	/* Relaxed: the ring is not shared yet; passing the memory on orders these. */
	atomic_store_explicit(&sh->head, 0, memory_order_relaxed);
	atomic_store_explicit(&sh->tail, 0, memory_order_relaxed);
	return 0;
}

int shm_ring_attach(struct shm_ring *r, void *mem, uint32_t size, bool producer)
{
	struct shm_ring_shared *sh = mem;
	uint32_t head, tail;

	memset(r, 0, sizeof(*r));
	r->broken = true; /* until the checks below pass: a handle never used unchecked */
	if (!size_ok(size))
		return -EINVAL;
	/* Acquire both: whatever the other side wrote before its index is ours to read. */
	head = atomic_load_explicit(&sh->head, memory_order_acquire);
	tail = atomic_load_explicit(&sh->tail, memory_order_acquire);
	r->sh = sh;
	r->data = sh->data;
	r->size = size;
	r->mask = size - 1;
	r->local = r->published = producer ? head : tail;
	r->remote = producer ? tail : head;
	r->broken = (uint32_t)(head - tail) > size || ((head | tail) & 7u);
	return r->broken ? -EBADMSG : 0;
}
