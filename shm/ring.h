/*
 * A single-producer / single-consumer ring of variable-length records in shared memory, the
 * lane between the router and a worker (one ring each way). The hot path is inline here, as in
 * liburing: the worker SDK and the router's dataplane both include it.
 *
 * The ring is bytes, a power of two long, with two free-running 32-bit indices in the shared
 * header: head (bytes the producer has published) and tail (bytes the consumer has released).
 * Used space is head - tail, computed in unsigned arithmetic so that it stays right when the
 * indices wrap at 2^32; the position of an index in the data is index & (size - 1). Each side
 * keeps its own index privately and a cached copy of the other's, and touches the shared line
 * of the other side only when its cached copy says the ring is full (producer) or empty
 * (consumer). Publication is batched: shm_ring_publish() makes every committed record visible
 * with one release store.
 *
 * A record is an 8-byte header (payload length, type, flags) and its payload, padded to 8
 * bytes. A record never wraps: when it does not fit before the end of the data, the producer
 * fills the rest with a pad record (type SHM_REC_PAD) and starts again at offset 0.
 *
 * The other side may be hostile. Every index and length read from shared memory is read once
 * into a local and checked before use; a violation is -EBADMSG and the ring must be given up
 * (shm_ring_peek() and shm_ring_reserve() keep returning it).
 */
#ifndef PD_SHM_RING_H
#define PD_SHM_RING_H

#include <errno.h>
#include <stdalign.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#define SHM_RING_MIN 64u	 /* smallest ring, bytes */
#define SHM_RING_MAX (1u << 30)	 /* largest ring, bytes */
#define SHM_REC_HDR 8u		 /* bytes of a record header */
#define SHM_REC_PAD 0u		 /* record type: skip to the end of the data */

/* The shared header; the data (size bytes) follows it. */
struct shm_ring_shared {
	alignas(64) _Atomic uint32_t head; /* writer: producer */
	alignas(64) _Atomic uint32_t tail; /* writer: consumer */
	alignas(64) uint8_t data[];
};

/* One side's private view of a ring: never in shared memory, so the other side cannot touch
 * it. */
struct shm_ring {
	struct shm_ring_shared *sh;
	uint8_t *data;
	uint32_t size, mask;
	uint32_t local;	    /* producer: head incl. unpublished records; consumer: tail */
	uint32_t remote;    /* cached copy of the other side's index */
	uint32_t published; /* producer: head last stored; consumer: tail last stored */
	uint32_t pending;   /* producer: bytes reserved and not committed; consumer: peeked */
	bool broken;	    /* the other side broke the rules: -EBADMSG from now on */
};

/* A record as the consumer sees it: the payload points into the ring until it is consumed. */
struct shm_rec {
	uint16_t type;
	uint16_t flags;
	uint32_t len;
	const uint8_t *payload;
};

/* Bytes a record of @len payload bytes takes in the ring; @len at most a ring's max payload
 * (callers check first: near 2^32 the sum would wrap). */
static inline uint32_t shm_rec_space(uint32_t len)
{
	return (SHM_REC_HDR + len + 7u) & ~7u;
}

/* Bytes of shared memory a ring of @size data bytes needs. */
static inline size_t shm_ring_bytes(uint32_t size)
{
	return sizeof(struct shm_ring_shared) + size;
}

/* Largest payload a ring of @size bytes accepts: a record may take the whole ring. */
static inline uint32_t shm_ring_max_payload(uint32_t size)
{
	return size - SHM_REC_HDR;
}

/**
 * shm_ring_format - make @mem an empty ring of @size data bytes.
 * @mem: shm_ring_bytes(@size) bytes, 64-byte aligned.
 *
 * Returns 0, or -EINVAL when @size is not a power of two in [SHM_RING_MIN, SHM_RING_MAX].
 * Context: before the ring is shared (the router formats a mailbox before passing it on).
 */
int shm_ring_format(void *mem, uint32_t size);

/**
 * shm_ring_attach - one side's handle on a formatted ring.
 *
 * Reads the shared indices once; a ring whose indices are already inconsistent (head - tail
 * greater than @size, or not 8-byte aligned) is attached broken. Returns 0, -EINVAL for a bad
 * @size, or -EBADMSG for a ring broken from the start.
 * Context: the one thread that will produce (or consume) on it.
 */
int shm_ring_attach(struct shm_ring *r, void *mem, uint32_t size, bool producer);

/* The other side broke the ring's rules: stop using it. */
static inline int shm_ring_break(struct shm_ring *r)
{
	r->broken = true;
	return -EBADMSG;
}

/* Producer side. */

/* The consumer's tail, re-read and checked: 0, or -EBADMSG (and the ring is broken). */
static inline int shm_ring_refresh_tail(struct shm_ring *r)
{
	/* A2: the consumer is done with what it released; pairs with R2 in
	 * shm_ring_release(). */
	uint32_t tail = atomic_load_explicit(&r->sh->tail, memory_order_acquire);

	/* The tail may only move forward, never past what we published, and stays aligned. */
	if ((uint32_t)(tail - r->remote) > (uint32_t)(r->published - r->remote) || (tail & 7u))
		return shm_ring_break(r);
	r->remote = tail;
	return 0;
}

/* Room before @need bytes fit after r->local; refreshes the cached tail once if needed. */
static inline int shm_ring_room(struct shm_ring *r, uint32_t need)
{
	if (r->size - (r->local - r->remote) >= need)
		return 0;
	if (shm_ring_refresh_tail(r))
		return -EBADMSG;
	return r->size - (r->local - r->remote) >= need ? 0 : -ENOBUFS;
}

/**
 * shm_ring_reserve - room for a record of @len payload bytes and type @type.
 * @type: any value but SHM_REC_PAD.
 *
 * Returns a pointer to the payload (8-byte aligned, @len bytes, to be filled), or NULL with
 * *err set: -ENOBUFS when the ring is full: call shm_ring_publish() before waiting for the
 * consumer (a pad written to wrap may be committed and must be seen), then try again;
 * -E2BIG when the record is larger than the ring could ever hold; -EINVAL for type
 * SHM_REC_PAD; -EBADMSG when the consumer broke the ring.
 * Nothing is visible until shm_ring_commit() and shm_ring_publish().
 * Context: the producer thread.
 */
static inline void *shm_ring_reserve(struct shm_ring *r, uint16_t type, uint16_t flags,
				     uint32_t len, int *err)
{
	uint32_t need, off, room_to_end;
	uint32_t *hdr;

	r->pending = 0; /* a reservation not committed is abandoned */
	if (r->broken) {
		*err = -EBADMSG;
		return NULL;
	}
	if (type == SHM_REC_PAD || len > shm_ring_max_payload(r->size)) {
		*err = type == SHM_REC_PAD ? -EINVAL : -E2BIG;
		return NULL;
	}
	need = shm_rec_space(len);
	off = r->local & r->mask;
	room_to_end = r->size - off;
	if (need > room_to_end) { /* pad to the end, then start over at offset 0 */
		if ((*err = shm_ring_room(r, room_to_end)))
			return NULL;
		hdr = (uint32_t *)(r->data + off);
		hdr[0] = room_to_end - SHM_REC_HDR;
		hdr[1] = SHM_REC_PAD;
		r->local += room_to_end;
		off = 0;
	}
	if ((*err = shm_ring_room(r, need)))
		return NULL;
	hdr = (uint32_t *)(r->data + off);
	hdr[0] = len;
	hdr[1] = (uint32_t)type | (uint32_t)flags << 16;
	r->pending = need;
	return r->data + off + SHM_REC_HDR;
}

/* shm_ring_commit - the reserved record is complete; it goes out with the next publish. */
static inline void shm_ring_commit(struct shm_ring *r)
{
	r->local += r->pending;
	r->pending = 0;
}

/* shm_ring_publish - make every committed record visible to the consumer at once. */
static inline void shm_ring_publish(struct shm_ring *r)
{
	if (r->published == r->local)
		return;
	/* R1: the records' bytes before the index that covers them; pairs with A1 in
	 * shm_ring_peek(). */
	atomic_store_explicit(&r->sh->head, r->local, memory_order_release);
	r->published = r->local;
}

/* Consumer side. */

/**
 * shm_ring_peek - the next record, left in the ring until shm_ring_consume().
 *
 * Pads are skipped (and count as consumed). Returns 0 with @rec filled, -EAGAIN when the ring
 * is empty (call shm_ring_release() before waiting: the producer may be waiting for the space
 * of what was consumed), or -EBADMSG
 * when the producer broke the rules (an index out of range, a length that overruns what was
 * published or the end of the data, a pad that does not end the data).
 * Context: the consumer thread.
 */
static inline int shm_ring_peek(struct shm_ring *r, struct shm_rec *rec)
{
	for (;;) {
		uint32_t hdr[2], off, space;

		if (r->broken)
			return -EBADMSG;
		if (r->local == r->remote) {
			/* A1: see the records' bytes the index covers; pairs with R1 in
			 * shm_ring_publish(). */
			uint32_t head = atomic_load_explicit(&r->sh->head, memory_order_acquire);

			/* The head may only move forward, at most a ring past the tail we released
			 * (what we consumed but did not release is still ours), and stays aligned. */
			if ((uint32_t)(head - r->local) > r->size - (r->local - r->published) ||
			    (head & 7u))
				return shm_ring_break(r);
			r->remote = head;
			if (head == r->local)
				return -EAGAIN;
		}
		off = r->local & r->mask;
		memcpy(hdr, r->data + off, sizeof(hdr)); /* read once: the producer may scribble */
		if (hdr[0] > shm_ring_max_payload(r->size))
			return shm_ring_break(r);
		space = shm_rec_space(hdr[0]);
		if (space > r->remote - r->local || space > r->size - off)
			return shm_ring_break(r);
		if ((hdr[1] & 0xFFFFu) == SHM_REC_PAD) {
			if (off + space != r->size) /* a pad always runs to the end of the data */
				return shm_ring_break(r);
			r->local += space;
			continue;
		}
		rec->type = (uint16_t)hdr[1];
		rec->flags = (uint16_t)(hdr[1] >> 16);
		rec->len = hdr[0];
		rec->payload = r->data + off + SHM_REC_HDR;
		r->pending = space;
		return 0;
	}
}

/* shm_ring_consume - done with the record shm_ring_peek() returned; its space is freed at the
 * next shm_ring_release(). */
static inline void shm_ring_consume(struct shm_ring *r)
{
	r->local += r->pending;
	r->pending = 0;
}

/* shm_ring_release - give every consumed record's space back to the producer at once. */
static inline void shm_ring_release(struct shm_ring *r)
{
	if (r->published == r->local)
		return;
	/* R2: we are done reading the records before handing their space back; pairs with A2 in
	 * shm_ring_refresh_tail(). */
	atomic_store_explicit(&r->sh->tail, r->local, memory_order_release);
	r->published = r->local;
}

#endif
