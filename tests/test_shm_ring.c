/*
 * The shared-memory ring (shm/ring.h): sizes and attach checks, records of every length round
 * trip with their type and flags, wrap-around (pads, indices past 2^32), full and empty rings,
 * batched publish and release, oversize records, two processes across fork(); and, in suite
 * shm_ring_fault, a hostile side scribbling on shared memory: -EBADMSG, never a read outside.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <sched.h>
#include <signal.h>
#include <stdalign.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <criterion/criterion.h>

#include "ring.h"
#include "rng.h"

/* The ring under test: exactly shm_ring_bytes(size) bytes, so ASan sees a read past the end. */
static void *mem;
static struct shm_ring prod, cons;

static void ring_free(void)
{
	free(mem);
	mem = NULL;
}

/* shm_ring_fault: the other side scribbles on shared memory (lying lengths and indices). */
TestSuite(shm_ring, .fini = ring_free, .timeout = 60);
TestSuite(shm_ring_fault, .fini = ring_free, .timeout = 60);

static struct shm_ring_shared *sh(void)
{
	return mem;
}

/* A formatted ring of @size bytes, its data poisoned so no test passes on zeros. */
static void ring_new(uint32_t size)
{
	cr_assert_eq(posix_memalign(&mem, 64, shm_ring_bytes(size)), 0);
	memset(mem, 0xA5, shm_ring_bytes(size));
	cr_assert_eq(shm_ring_format(mem, size), 0);
}

/* Both shared indices, as a side that owns neither would write them. */
static void ring_set(uint32_t head, uint32_t tail)
{
	atomic_store_explicit(&sh()->head, head, memory_order_relaxed);
	atomic_store_explicit(&sh()->tail, tail, memory_order_relaxed);
}

static void attach_both(uint32_t size)
{
	cr_assert_eq(shm_ring_attach(&prod, mem, size, true), 0);
	cr_assert_eq(shm_ring_attach(&cons, mem, size, false), 0);
}

/* A ring of @size bytes whose indices both start at @start, with a producer and a consumer. */
static void ring_at(uint32_t size, uint32_t start)
{
	ring_new(size);
	ring_set(start, start);
	attach_both(size);
}

static uint32_t load_head(void)
{
	return atomic_load_explicit(&sh()->head, memory_order_relaxed);
}

static uint32_t load_tail(void)
{
	return atomic_load_explicit(&sh()->tail, memory_order_relaxed);
}

static uint8_t pattern(uint64_t seed, uint32_t i)
{
	return (uint8_t)(t_mix64(seed + i / 8) >> (8 * (i % 8)));
}

/* Reserve, fill with the pattern of @seed, commit; returns where the payload went, or NULL
 * when the ring is full. */
static uint8_t *try_push(uint16_t type, uint16_t flags, uint32_t len, uint64_t seed)
{
	int err = 1;
	uint8_t *p = shm_ring_reserve(&prod, type, flags, len, &err);

	if (!p) {
		cr_assert_eq(err, -ENOBUFS, "reserve of %u bytes: %d", len, err);
		return NULL;
	}
	cr_assert_eq(err, 0);
	cr_assert_eq((uintptr_t)p % 8, 0, "payload at %p", (void *)p);
	cr_assert(p >= prod.data + SHM_REC_HDR && p + len <= prod.data + prod.size);
	for (uint32_t i = 0; i < len; i++)
		p[i] = pattern(seed, i);
	shm_ring_commit(&prod);
	return p;
}

static uint8_t *push(uint16_t type, uint16_t flags, uint32_t len, uint64_t seed)
{
	uint8_t *p = try_push(type, flags, len, seed);

	cr_assert_not_null(p, "reserve of %u bytes: -ENOBUFS", len);
	return p;
}

/* The reserve error for a record of @len bytes, asserting there is one. */
static int reserve_err(uint16_t type, uint32_t len)
{
	int err = 0;

	cr_assert_null(shm_ring_reserve(&prod, type, 0, len, &err), "reserve of %u fit", len);
	return err;
}

/* Peek the next record, check it is the one push() made with these arguments, consume it. */
static const uint8_t *pop(uint16_t type, uint16_t flags, uint32_t len, uint64_t seed)
{
	struct shm_rec rec;
	int rc = shm_ring_peek(&cons, &rec);

	cr_assert_eq(rc, 0, "peek: %d, expected a record of %u bytes", rc, len);
	cr_assert_eq(rec.type, type);
	cr_assert_eq(rec.flags, flags);
	cr_assert_eq(rec.len, len);
	cr_assert_eq((uintptr_t)rec.payload % 8, 0, "payload at %p", (const void *)rec.payload);
	cr_assert(rec.payload >= cons.data + SHM_REC_HDR &&
		  rec.payload + len <= cons.data + cons.size);
	for (uint32_t i = 0; i < len; i++)
		cr_assert_eq(rec.payload[i], pattern(seed, i), "len %u, byte %u", len, i);
	shm_ring_consume(&cons);
	return rec.payload;
}

static int peek(void)
{
	struct shm_rec rec;

	return shm_ring_peek(&cons, &rec);
}

/* A record header written straight into the data, as a hostile producer would. */
static void put_hdr(uint32_t off, uint32_t len, uint16_t type, uint16_t flags)
{
	uint32_t hdr[2] = {len, (uint32_t)type | (uint32_t)flags << 16};

	memcpy(sh()->data + off, hdr, sizeof(hdr));
}

/* ---- Layout, format and attach. ---- */

Test(shm_ring, indices_and_data_sit_on_separate_cache_lines)
{
	cr_assert_eq(offsetof(struct shm_ring_shared, head), 0);
	cr_assert_eq(offsetof(struct shm_ring_shared, tail), 64);
	cr_assert_eq(offsetof(struct shm_ring_shared, data), 128);
	cr_assert_eq(shm_ring_bytes(4096), 128 + 4096);
	cr_assert_eq(shm_ring_max_payload(256), 248);
	cr_assert_eq(shm_rec_space(0), 8);
	cr_assert_eq(shm_rec_space(1), 16);
	cr_assert_eq(shm_rec_space(8), 16);
	cr_assert_eq(shm_rec_space(9), 24);
}

Test(shm_ring, format_and_attach_reject_bad_sizes_with_einval)
{
	/* SHM_RING_MAX is 1 << 30 */
	static const uint32_t bad[] = {0,	   1,	       32,	  63,	    65,
				       96,	   100,	       192,	  0x300000, 0x3FFFFFC0,
				       0x40000001, 0x80000000, UINT32_MAX};
	alignas(64) uint8_t hdr[sizeof(struct shm_ring_shared)];
	struct shm_ring r;

	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		memset(hdr, 0x5A, sizeof(hdr));
		cr_assert_eq(shm_ring_format(hdr, bad[i]), -EINVAL, "size %u", bad[i]);
		cr_assert_eq(hdr[0], 0x5A, "size %u: format wrote before refusing", bad[i]);
		memset(hdr, 0, sizeof(hdr));
		cr_assert_eq(shm_ring_attach(&r, hdr, bad[i], true), -EINVAL, "size %u", bad[i]);
		cr_assert_eq(shm_ring_attach(&r, hdr, bad[i], false), -EINVAL, "size %u", bad[i]);
	}
}

/* Format and attach touch only the header, so the largest size needs no gigabyte. */
Test(shm_ring, format_accepts_every_power_of_two_from_min_to_max)
{
	alignas(64) uint8_t hdr[sizeof(struct shm_ring_shared)];
	struct shm_ring r;

	for (uint32_t size = SHM_RING_MIN; size && size <= SHM_RING_MAX; size <<= 1) {
		memset(hdr, 0x5A, sizeof(hdr));
		cr_assert_eq(shm_ring_format(hdr, size), 0, "size %u", size);
		cr_assert_eq(shm_ring_attach(&r, hdr, size, true), 0, "size %u", size);
		cr_assert_eq(r.size, size);
		cr_assert_eq(r.mask, size - 1);
		cr_assert_eq(r.local, 0);
		cr_assert_not(r.broken);
	}
}

Test(shm_ring, format_empties_a_used_ring)
{
	ring_new(256);
	ring_set(0x1230, 0x1200);
	cr_assert_eq(shm_ring_format(mem, 256), 0);
	cr_assert_eq(load_head(), 0);
	cr_assert_eq(load_tail(), 0);
	attach_both(256);
	cr_assert_eq(peek(), -EAGAIN);
}

/* A side attached to a ring broken from the start: -EBADMSG now and on every later call. */
static void assert_attach_broken(uint32_t head, uint32_t tail)
{
	int err = 0;

	ring_set(head, tail);
	cr_assert_eq(shm_ring_attach(&prod, mem, 256, true), -EBADMSG, "head %#x tail %#x", head,
		     tail);
	cr_assert_eq(shm_ring_attach(&cons, mem, 256, false), -EBADMSG, "head %#x tail %#x", head,
		     tail);
	for (int i = 0; i < 3; i++) {
		cr_assert_null(shm_ring_reserve(&prod, 1, 0, 8, &err));
		cr_assert_eq(err, -EBADMSG);
		cr_assert_eq(peek(), -EBADMSG);
	}
	shm_ring_publish(&prod);
	shm_ring_release(&cons);
	cr_assert_eq(load_head(), head, "a broken producer published");
	cr_assert_eq(load_tail(), tail, "a broken consumer released");
}

Test(shm_ring, attach_on_head_more_than_a_ring_past_tail_gives_ebadmsg_for_good)
{
	ring_new(256);
	assert_attach_broken(256 + 8, 0);
	assert_attach_broken(0x10000, 0x100);
	assert_attach_broken(0xFFFFFFF8, 0x100); /* head behind tail */
	assert_attach_broken(0x100, 0x108);
}

Test(shm_ring, attach_on_unaligned_indices_gives_ebadmsg_for_good)
{
	ring_new(256);
	assert_attach_broken(4, 0);
	assert_attach_broken(8, 4);
	assert_attach_broken(1, 1);
	assert_attach_broken(0xFFFFFFFF, 0xFFFFFFF8);
}

Test(shm_ring, attach_on_a_full_ring_succeeds_and_reserve_gives_enobufs)
{
	ring_new(256);
	ring_set(0x1100, 0x1000);
	cr_assert_eq(shm_ring_attach(&prod, mem, 256, true), 0);
	cr_assert_eq(reserve_err(1, 0), -ENOBUFS);
	cr_assert_not(prod.broken);
}

/* ---- Round trips. ---- */

Test(shm_ring, records_of_every_length_0_to_300_round_trip)
{
	ring_new(1024);
	attach_both(1024);
	for (uint32_t len = 0; len <= 300; len++) {
		uint16_t type = (uint16_t)(1 + len % 5), flags = (uint16_t)(len * 37);

		push(type, flags, len, len);
		shm_ring_publish(&prod);
		pop(type, flags, len, len);
		cr_assert_eq(peek(), -EAGAIN);
		shm_ring_release(&cons);
	}
	cr_assert_eq(prod.local, cons.local);
	cr_assert_eq(load_tail(), load_head());
}

Test(shm_ring, records_of_every_length_round_trip_in_batches)
{
	uint32_t len = 0;

	ring_new(1024);
	attach_both(1024);
	while (len <= 300) {
		uint32_t first = len;

		/* as many as surely fit, a pad included, then all out */
		while (len <= 300 &&
		       prod.size - (prod.local - load_tail()) >= 2 * shm_rec_space(len)) {
			push(7, (uint16_t)len, len, len * 3);
			len++;
		}
		shm_ring_publish(&prod);
		for (uint32_t l = first; l < len; l++)
			pop(7, (uint16_t)l, l, l * 3);
		cr_assert_eq(peek(), -EAGAIN);
		shm_ring_release(&cons);
	}
}

Test(shm_ring, type_and_flags_keep_all_their_bits)
{
	static const uint16_t types[] = {1, 2, 0x7FFF, 0x8000, 0xFFFF};
	static const uint16_t flags[] = {0, 1, 0x8000, 0xFFFF, 0xA55A};

	ring_new(256);
	attach_both(256);
	for (size_t t = 0; t < 5; t++) {
		for (size_t f = 0; f < 5; f++) {
			push(types[t], flags[f], 3, t * 5 + f);
			shm_ring_publish(&prod);
			pop(types[t], flags[f], 3, t * 5 + f);
			shm_ring_release(&cons);
		}
	}
}

Test(shm_ring, payload_is_in_place_where_the_producer_wrote_it)
{
	uint8_t *p;

	ring_new(256);
	attach_both(256);
	p = push(3, 0, 20, 1);
	cr_assert_eq(p, sh()->data + SHM_REC_HDR);
	shm_ring_publish(&prod);
	cr_assert_eq(pop(3, 0, 20, 1), p);
}

Test(shm_ring, peek_without_consume_returns_the_same_record)
{
	struct shm_rec a, b;

	ring_new(256);
	attach_both(256);
	push(4, 9, 10, 4);
	push(5, 9, 11, 5);
	shm_ring_publish(&prod);
	cr_assert_eq(shm_ring_peek(&cons, &a), 0);
	cr_assert_eq(shm_ring_peek(&cons, &b), 0);
	cr_assert_eq(a.payload, b.payload);
	cr_assert_eq(b.type, 4);
	shm_ring_consume(&cons);
	pop(5, 9, 11, 5);
}

Test(shm_ring, empty_ring_peeks_eagain)
{
	ring_new(64);
	attach_both(64);
	cr_assert_eq(peek(), -EAGAIN);
	cr_assert_eq(peek(), -EAGAIN);
	cr_assert_not(cons.broken);
}

/* ---- Wrap-around. ---- */

Test(shm_ring, record_that_does_not_fit_before_the_end_starts_at_0_after_a_pad)
{
	uint32_t hdr[2];

	ring_new(256);
	attach_both(256);
	cr_assert_eq(push(1, 0, 100, 1), sh()->data + 8);	/* [0, 112) */
	cr_assert_eq(push(1, 0, 100, 2), sh()->data + 112 + 8); /* [112, 224) */
	shm_ring_publish(&prod);
	pop(1, 0, 100, 1);
	pop(1, 0, 100, 2);
	shm_ring_release(&cons);

	/* 112 bytes do not fit in the 32 left: a pad of 24 payload bytes, then offset 0 */
	cr_assert_eq(push(2, 5, 100, 3), sh()->data + 8);
	memcpy(hdr, sh()->data + 224, sizeof(hdr));
	cr_assert_eq(hdr[0], 24);
	cr_assert_eq(hdr[1], SHM_REC_PAD);
	cr_assert_eq(prod.local, 256 + 112);
	shm_ring_publish(&prod);
	cr_assert_eq(pop(2, 5, 100, 3), sh()->data + 8);
	cr_assert_eq(cons.local, 256 + 112);
}

Test(shm_ring, record_that_fits_exactly_before_the_end_needs_no_pad)
{
	ring_new(256);
	attach_both(256);
	push(1, 0, 216, 1); /* [0, 224) */
	shm_ring_publish(&prod);
	pop(1, 0, 216, 1);
	shm_ring_release(&cons);
	cr_assert_eq(push(1, 0, 24, 2), sh()->data + 224 + 8); /* [224, 256) */
	cr_assert_eq(push(1, 0, 0, 3), sh()->data + 8);	       /* then 0 */
	shm_ring_publish(&prod);
	pop(1, 0, 24, 2);
	pop(1, 0, 0, 3);
}

Test(shm_ring, pad_of_one_header_at_the_end_is_skipped)
{
	ring_new(256);
	attach_both(256);
	push(1, 0, 240, 1); /* [0, 248) */
	shm_ring_publish(&prod);
	pop(1, 0, 240, 1);
	shm_ring_release(&cons);
	cr_assert_eq(push(1, 0, 1, 2), sh()->data + 8); /* pad [248, 256) of 0 payload bytes */
	shm_ring_publish(&prod);
	pop(1, 0, 1, 2);
	cr_assert_eq(peek(), -EAGAIN);
}

/*
 * Random records (lengths biased small, now and then up to the maximum) through @size bytes,
 * the producer filling until -ENOBUFS and the consumer draining a random part, @n records in
 * all. The indices start at @start.
 */
static void churn(uint32_t size, uint32_t start, uint32_t n, uint64_t seed)
{
	struct t_rng rng;
	uint32_t sent = 0, got = 0, maxp = shm_ring_max_payload(size);
	uint32_t lens[64];

	t_rng_seed(&rng, seed);
	for (uint32_t i = 0; i < 64; i++)
		lens[i] = t_rng_chance(&rng, 5)
			      ? maxp - t_rng_below(&rng, 16)
			      : t_rng_below(&rng, size / 3 > maxp ? maxp : size / 3);
	ring_at(size, start);
	while (got < n) {
		while (sent < n &&
		       try_push((uint16_t)(1 + sent % 3), (uint16_t)sent, lens[sent % 64], sent)) {
			sent++;
			if (t_rng_chance(&rng, 50))
				shm_ring_publish(&prod);
		}
		shm_ring_publish(&prod);
		for (uint32_t k = 1 + t_rng_below(&rng, 8); k && got < sent; k--, got++)
			pop((uint16_t)(1 + got % 3), (uint16_t)got, lens[got % 64], got);
		if (got == sent)
			cr_assert_eq(peek(), -EAGAIN);
		shm_ring_release(&cons);
	}
	cr_assert_eq(peek(), -EAGAIN);
	cr_assert_eq(load_tail(), load_head());
}

Test(shm_ring, thousands_of_varied_records_through_a_256_byte_ring)
{
	churn(256, 0, 20000, 1);
}

Test(shm_ring, thousands_of_varied_records_through_the_smallest_ring)
{
	churn(SHM_RING_MIN, 0, 20000, 2);
}

Test(shm_ring, indices_wrapping_past_2_32_still_work)
{
	static const uint32_t starts[] = {0xFFFFFF00, 0xFFFFFFF8, 0xFFFFFFE0, 0x7FFFFF00};

	for (size_t i = 0; i < sizeof(starts) / sizeof(starts[0]); i++) {
		churn(256, starts[i], 5000, 10 + i);
		cr_assert_lt(prod.local - starts[i], 0x80000000u);
		cr_assert_gt(prod.local - starts[i], 256 * 100, "start %#x", starts[i]);
		if (starts[i] > 0xF0000000u)
			cr_assert_lt(prod.local, starts[i], "start %#x: never wrapped", starts[i]);
		ring_free();
	}
}

/* The pad that wraps the data and the index at once: the last 32 bytes before 2^32. */
Test(shm_ring, pad_across_the_2_32_wrap_is_skipped)
{
	ring_at(256, 0xFFFFFFE0);
	cr_assert_eq(push(1, 0, 100, 1), sh()->data + 8);
	cr_assert_eq(prod.local, 112);
	shm_ring_publish(&prod);
	cr_assert_eq(pop(1, 0, 100, 1), sh()->data + 8);
	cr_assert_eq(cons.local, 112);
	shm_ring_release(&cons);
	cr_assert_eq(load_tail(), 112);
}

/* ---- Full, empty, publish and release. ---- */

Test(shm_ring, push_to_full_ring_returns_enobufs)
{
	ring_new(256);
	attach_both(256);
	for (uint32_t i = 0; i < 4; i++)
		push(1, 0, 56, i); /* 64 bytes each */
	cr_assert_eq(reserve_err(1, 0), -ENOBUFS);
	shm_ring_publish(&prod);
	cr_assert_eq(reserve_err(1, 0), -ENOBUFS);
	cr_assert_not(prod.broken);
	pop(1, 0, 56, 0);
	shm_ring_release(&cons);
	push(1, 0, 56, 4);
	cr_assert_eq(reserve_err(1, 0), -ENOBUFS);
	shm_ring_publish(&prod);
	for (uint32_t i = 1; i < 5; i++)
		pop(1, 0, 56, i);
}

/* No room even for the pad: nothing is written over the records the consumer still holds. */
Test(shm_ring, enobufs_with_no_room_for_the_pad_writes_no_pad)
{
	uint32_t hdr[2];

	ring_new(256);
	attach_both(256);
	for (uint32_t i = 0; i < 3; i++)
		push(1, 0, 56, i);
	shm_ring_publish(&prod);
	pop(1, 0, 56, 0);
	shm_ring_release(&cons);
	/* the tail at 64; [192, 256) and [256, 320) at offset 0 fill the ring */
	push(1, 0, 56, 3);
	push(1, 0, 56, 4);
	/* 208 bytes would need a pad [64, 256) first, over record 1 */
	cr_assert_eq(reserve_err(1, 200), -ENOBUFS);
	cr_assert_eq(prod.local, 320);
	memcpy(hdr, sh()->data + 64, sizeof(hdr));
	cr_assert_eq(hdr[0], 56, "record 1, not yet consumed, was overwritten");
	cr_assert_eq(hdr[1], 1);
	shm_ring_publish(&prod);
	for (uint32_t i = 1; i < 5; i++)
		pop(1, 0, 56, i);
}

Test(shm_ring, nothing_is_visible_before_publish)
{
	ring_new(256);
	attach_both(256);
	push(1, 2, 30, 1);
	cr_assert_eq(peek(), -EAGAIN);
	cr_assert_eq(load_head(), 0);
	shm_ring_publish(&prod);
	cr_assert_eq(load_head(), 40);
	pop(1, 2, 30, 1);
}

Test(shm_ring, reserved_record_is_not_published_until_committed)
{
	int err;
	uint8_t *p;

	ring_new(256);
	attach_both(256);
	p = shm_ring_reserve(&prod, 1, 0, 16, &err);
	cr_assert_not_null(p);
	memset(p, 0, 16);
	shm_ring_publish(&prod);
	cr_assert_eq(load_head(), 0);
	cr_assert_eq(peek(), -EAGAIN);
	shm_ring_commit(&prod);
	shm_ring_publish(&prod);
	cr_assert_eq(load_head(), 24);
	cr_assert_eq(peek(), 0);
}

Test(shm_ring, reserving_again_without_commit_drops_the_first_reservation)
{
	int err;

	ring_new(256);
	attach_both(256);
	cr_assert_not_null(shm_ring_reserve(&prod, 1, 0, 100, &err));
	push(2, 0, 5, 2);
	shm_ring_publish(&prod);
	pop(2, 0, 5, 2);
	cr_assert_eq(peek(), -EAGAIN);
}

Test(shm_ring, batched_publish_makes_several_records_visible_at_once)
{
	ring_new(1024);
	attach_both(1024);
	for (uint32_t i = 0; i < 6; i++)
		push(1, (uint16_t)i, 10 * i, i);
	cr_assert_eq(peek(), -EAGAIN);
	cr_assert_eq(load_head(), 0);
	shm_ring_publish(&prod);
	cr_assert_eq(load_head(), prod.local);
	for (uint32_t i = 0; i < 6; i++)
		pop(1, (uint16_t)i, 10 * i, i);
	cr_assert_eq(peek(), -EAGAIN);
}

Test(shm_ring, consumer_sees_only_what_was_published_so_far)
{
	ring_new(1024);
	attach_both(1024);
	push(1, 0, 10, 0);
	shm_ring_publish(&prod);
	push(1, 1, 10, 1);
	pop(1, 0, 10, 0);
	cr_assert_eq(peek(), -EAGAIN);
	shm_ring_publish(&prod);
	pop(1, 1, 10, 1);
}

Test(shm_ring, release_is_needed_before_the_producer_sees_the_space)
{
	ring_new(256);
	attach_both(256);
	for (uint32_t i = 0; i < 4; i++)
		push(1, 0, 56, i);
	shm_ring_publish(&prod);
	for (uint32_t i = 0; i < 4; i++)
		pop(1, 0, 56, i);
	cr_assert_eq(peek(), -EAGAIN);
	cr_assert_eq(load_tail(), 0);
	cr_assert_eq(reserve_err(1, 0), -ENOBUFS);
	shm_ring_release(&cons);
	cr_assert_eq(load_tail(), 256);
	for (uint32_t i = 4; i < 8; i++)
		push(1, 0, 56, i);
	shm_ring_publish(&prod);
	for (uint32_t i = 4; i < 8; i++)
		pop(1, 0, 56, i);
}

Test(shm_ring, batched_release_frees_every_consumed_record_at_once)
{
	ring_new(256);
	attach_both(256);
	for (uint32_t i = 0; i < 4; i++)
		push(1, 0, 56, i);
	shm_ring_publish(&prod);
	pop(1, 0, 56, 0);
	pop(1, 0, 56, 1);
	pop(1, 0, 56, 2);
	shm_ring_release(&cons);
	cr_assert_eq(load_tail(), 192);
	push(1, 0, 184, 9); /* 192 bytes: all three, and no more */
	cr_assert_eq(reserve_err(1, 0), -ENOBUFS);
}

/* ---- Oversize records and bad types. ---- */

Test(shm_ring, record_larger_than_max_payload_returns_e2big)
{
	static const uint32_t sizes[] = {64, 256, 4096};

	for (size_t i = 0; i < 3; i++) {
		uint32_t size = sizes[i], maxp = shm_ring_max_payload(size);

		ring_new(size);
		attach_both(size);
		cr_assert_eq(reserve_err(1, maxp + 1), -E2BIG, "size %u", size);
		cr_assert_eq(reserve_err(1, size), -E2BIG);
		cr_assert_eq(reserve_err(1, UINT32_MAX), -E2BIG);
		cr_assert_eq(reserve_err(1, UINT32_MAX - 7), -E2BIG);
		cr_assert_eq(prod.local, 0);
		cr_assert_not(prod.broken);
		ring_free();
	}
}

Test(shm_ring, max_payload_record_takes_the_whole_empty_ring)
{
	uint32_t maxp = shm_ring_max_payload(256);

	ring_new(256);
	attach_both(256);
	cr_assert_eq(push(1, 0, maxp, 1), sh()->data + 8);
	cr_assert_eq(reserve_err(1, 0), -ENOBUFS);
	shm_ring_publish(&prod);
	pop(1, 0, maxp, 1);
	shm_ring_release(&cons);
	cr_assert_eq(push(1, 0, maxp, 2), sh()->data + 8);
	shm_ring_publish(&prod);
	pop(1, 0, maxp, 2);
}

/*
 * Where the ring is empty but the producer is not at offset 0, a max-payload record first
 * needs a pad to the end: the first reserve commits the pad and gives -ENOBUFS. The pad must be
 * published, skipped and released before the record fits; a producer that retries without
 * publishing gets -ENOBUFS for ever.
 */
Test(shm_ring, max_payload_record_after_the_start_needs_the_pad_consumed_first)
{
	uint32_t maxp = shm_ring_max_payload(256);

	ring_new(256);
	attach_both(256);
	push(1, 0, 8, 1);
	shm_ring_publish(&prod);
	pop(1, 0, 8, 1);
	shm_ring_release(&cons);

	cr_assert_eq(reserve_err(1, maxp), -ENOBUFS);
	cr_assert_eq(prod.local, 256, "the pad [16, 256) is committed");
	cr_assert_eq(reserve_err(1, maxp), -ENOBUFS);
	cr_assert_eq(prod.local, 256, "no second pad");
	cr_assert_eq(peek(), -EAGAIN);
	shm_ring_publish(&prod);
	cr_assert_eq(peek(), -EAGAIN, "the pad is skipped, not returned");
	cr_assert_eq(reserve_err(1, maxp), -ENOBUFS, "skipped but not released");
	shm_ring_release(&cons);
	cr_assert_eq(push(1, 0, maxp, 2), sh()->data + 8);
	shm_ring_publish(&prod);
	pop(1, 0, maxp, 2);
}

Test(shm_ring, pad_type_returns_einval)
{
	ring_new(256);
	attach_both(256);
	cr_assert_eq(reserve_err(SHM_REC_PAD, 8), -EINVAL);
	cr_assert_eq(reserve_err(SHM_REC_PAD, 0), -EINVAL);
	cr_assert_eq(reserve_err(SHM_REC_PAD, UINT32_MAX), -EINVAL);
	cr_assert_eq(prod.local, 0);
	cr_assert_not(prod.broken);
	push(1, 0, 8, 1);
}

/* ---- A hostile producer: the consumer checks what it reads. ---- */

/* The consumer gives -EBADMSG now and later, and has not moved. */
static void assert_consumer_broken(void)
{
	uint32_t local = cons.local;

	cr_assert_eq(peek(), -EBADMSG);
	cr_assert_eq(peek(), -EBADMSG);
	cr_assert(cons.broken);
	cr_assert_eq(cons.local, local);
}

/* Two records out and consumed, so the consumer is at 64 with its cached head caught up. */
static void consumer_at_64(void)
{
	ring_new(256);
	attach_both(256);
	push(1, 0, 24, 1);
	push(1, 0, 24, 2);
	shm_ring_publish(&prod);
	pop(1, 0, 24, 1);
	pop(1, 0, 24, 2);
	cr_assert_eq(peek(), -EAGAIN);
}

/* In these the records at the consumer are well formed: only the head is wrong. */
Test(shm_ring_fault, head_moved_backwards_gives_ebadmsg)
{
	consumer_at_64();
	put_hdr(64, 0, 1, 0);
	ring_set(56, 0);
	assert_consumer_broken();
}

Test(shm_ring_fault, head_far_behind_gives_ebadmsg)
{
	consumer_at_64();
	put_hdr(64, 0, 1, 0);
	ring_set(0x80000040, 0);
	assert_consumer_broken();
}

Test(shm_ring_fault, head_more_than_a_ring_ahead_gives_ebadmsg)
{
	consumer_at_64();
	shm_ring_release(&cons);
	put_hdr(64, 184, 1, 0); /* [64, 256) */
	put_hdr(0, 56, 1, 0);	/* [256, 320) */
	ring_set(64 + 256 + 8, 64);
	assert_consumer_broken();
}

Test(shm_ring_fault, head_exactly_a_ring_ahead_is_accepted)
{
	consumer_at_64();
	shm_ring_release(&cons);
	put_hdr(64, 184, 1, 0); /* [64, 256) */
	put_hdr(0, 56, 2, 0);	/* [256, 320) */
	ring_set(64 + 256, 64);
	cr_assert_eq(peek(), 0);
	shm_ring_consume(&cons);
	cr_assert_eq(peek(), 0);
	shm_ring_consume(&cons);
	cr_assert_eq(peek(), -EAGAIN);
}

Test(shm_ring_fault, unaligned_head_gives_ebadmsg)
{
	consumer_at_64();
	put_hdr(64, 0, 1, 0);
	ring_set(64 + 12, 0);
	assert_consumer_broken();
}

/*
 * The head may be at most a ring past the tail the consumer released: a producer claiming more
 * would be writing over records consumed but not yet released.
 */
Test(shm_ring_fault, head_more_than_a_ring_past_the_released_tail_gives_ebadmsg)
{
	consumer_at_64();	/* consumed to 64, released nothing */
	put_hdr(64, 184, 1, 0); /* [64, 256) */
	put_hdr(0, 56, 1, 0);	/* [256, 320): the bytes of the records not yet released */
	ring_set(320, 0);
	assert_consumer_broken();
}

Test(shm_ring_fault, record_longer_than_published_bytes_gives_ebadmsg)
{
	ring_new(256);
	attach_both(256);
	put_hdr(0, 64, 1, 0);
	ring_set(64, 0); /* the record needs 72 */
	assert_consumer_broken();
}

Test(shm_ring_fault, second_record_longer_than_published_bytes_gives_ebadmsg)
{
	ring_new(256);
	attach_both(256);
	push(1, 0, 8, 1); /* [0, 16) */
	put_hdr(16, 8, 1, 0);
	shm_ring_publish(&prod);
	ring_set(24, 0);
	pop(1, 0, 8, 1);
	assert_consumer_broken();
}

Test(shm_ring_fault, record_crossing_the_end_of_the_data_gives_ebadmsg)
{
	ring_new(256);
	ring_set(240, 240);
	attach_both(256);
	put_hdr(240, 64, 1, 0); /* [240, 312) */
	ring_set(240 + 128, 240);
	assert_consumer_broken();
}

Test(shm_ring_fault, record_ending_exactly_at_the_end_of_the_data_is_accepted)
{
	ring_new(256);
	ring_set(240, 240);
	attach_both(256);
	put_hdr(240, 8, 3, 0); /* [240, 256) */
	ring_set(256, 240);
	cr_assert_eq(peek(), 0);
}

Test(shm_ring_fault, pad_not_ending_at_the_end_of_the_data_gives_ebadmsg)
{
	ring_new(256);
	attach_both(256);
	put_hdr(0, 8, SHM_REC_PAD, 0); /* [0, 16) */
	put_hdr(16, 0, 1, 0);
	ring_set(64, 0);
	assert_consumer_broken();
}

Test(shm_ring_fault, pad_with_flags_is_still_a_pad)
{
	ring_new(256);
	ring_set(128, 128);
	attach_both(256);
	put_hdr(128, 120, SHM_REC_PAD, 0xFFFF); /* [128, 256) */
	put_hdr(0, 0, 2, 0);
	ring_set(264, 128);
	cr_assert_eq(peek(), 0);
	cr_assert_eq(cons.local, 256);
}

Test(shm_ring_fault, pad_longer_than_published_bytes_gives_ebadmsg)
{
	ring_new(256);
	ring_set(128, 128);
	attach_both(256);
	put_hdr(128, 120, SHM_REC_PAD, 0); /* [128, 256) */
	ring_set(192, 128);
	assert_consumer_broken();
}

Test(shm_ring_fault, length_near_uint32_max_gives_ebadmsg)
{
	/* 0xFFFFFFF1 and up: shm_rec_space() wraps to 0 or 8 */
	static const uint32_t lens[] = {0xFFFFFFFF, 0xFFFFFFF9, 0xFFFFFFF8, 0xFFFFFFF1,
					0x80000000, 0x10000,	249,	    256};

	for (size_t i = 0; i < sizeof(lens) / sizeof(lens[0]); i++) {
		for (uint16_t type = 0; type < 2; type++) {
			ring_new(256);
			attach_both(256);
			put_hdr(0, lens[i], type, 0);
			ring_set(256, 0);
			assert_consumer_broken();
			ring_free();
		}
	}
}

Test(shm_ring_fault, bad_record_after_good_ones_stops_there_for_good)
{
	ring_new(1024);
	attach_both(1024);
	push(1, 0, 8, 1);
	push(1, 0, 8, 2);
	put_hdr(32, 2000, 1, 0);
	shm_ring_publish(&prod);
	ring_set(1000, 0);
	pop(1, 0, 8, 1);
	pop(1, 0, 8, 2);
	assert_consumer_broken();
}

Test(shm_ring_fault, ebadmsg_sticks_after_the_producer_repairs_the_ring)
{
	consumer_at_64();
	put_hdr(64, 0, 1, 0);
	ring_set(64 + 12, 0);
	cr_assert_eq(peek(), -EBADMSG);
	ring_set(64 + 8, 0);
	assert_consumer_broken();
}

Test(shm_ring_fault, header_changed_after_peek_is_checked_again)
{
	struct shm_rec rec;

	ring_new(256);
	attach_both(256);
	push(1, 0, 8, 1);
	shm_ring_publish(&prod);
	cr_assert_eq(shm_ring_peek(&cons, &rec), 0);
	put_hdr(0, 0xFFFFFFF9, 1, 0); /* shm_rec_space() of this wraps to 8 */
	cr_assert_eq(rec.len, 8, "the record returned is a copy");
	assert_consumer_broken();
}

Test(shm_ring_fault, garbage_everywhere_never_reads_outside_the_data)
{
	struct t_rng rng;

	t_rng_seed(&rng, 99);
	for (int round = 0; round < 2000; round++) {
		uint32_t size = SHM_RING_MIN << t_rng_below(&rng, 4),
			 tail = (uint32_t)t_rng_next(&rng);
		struct shm_rec rec;
		int rc, n = 0;

		ring_new(size);
		for (uint32_t i = 0; i < size; i += 4) {
			uint32_t w = (uint32_t)t_rng_next(&rng);

			if (t_rng_chance(&rng, 60))
				w = t_rng_below(&rng, size); /* lengths that might pass */
			memcpy(sh()->data + i, &w, 4);
		}
		tail &= ~7u;
		ring_set(tail + (t_rng_below(&rng, size + 1) & ~7u), tail);
		attach_both(size);
		while ((rc = shm_ring_peek(&cons, &rec)) == 0 && n++ < 1000) {
			cr_assert(rec.payload >= sh()->data + SHM_REC_HDR);
			cr_assert(rec.payload + rec.len <= sh()->data + size);
			cr_assert_neq(rec.type, SHM_REC_PAD);
			cr_assert_leq(cons.local + shm_rec_space(rec.len) - tail,
				      load_head() - tail);
			shm_ring_consume(&cons);
		}
		cr_assert(rc == -EAGAIN || rc == -EBADMSG, "peek: %d", rc);
		ring_free();
	}
}

/* ---- A hostile consumer: the producer checks the tail. ---- */

/* A full ring of four published records, the consumer having released @released bytes. */
static void producer_full(uint32_t released)
{
	ring_new(256);
	attach_both(256);
	for (uint32_t i = 0; i < 4; i++)
		push(1, 0, 56, i);
	shm_ring_publish(&prod);
	for (uint32_t i = 0; i < released / 64; i++)
		pop(1, 0, 56, i);
	shm_ring_release(&cons);
}

/* The producer gives -EBADMSG now and later, and has not moved. */
static void assert_producer_broken(uint32_t len)
{
	uint32_t local = prod.local;

	cr_assert_eq(reserve_err(1, len), -EBADMSG);
	cr_assert_eq(reserve_err(1, 0), -EBADMSG);
	cr_assert(prod.broken);
	cr_assert_eq(prod.local, local);
}

Test(shm_ring_fault, tail_moved_past_head_gives_ebadmsg)
{
	producer_full(0);
	ring_set(256, 264);
	assert_producer_broken(8);
}

Test(shm_ring_fault, tail_past_published_but_within_committed_gives_ebadmsg)
{
	producer_full(64);
	push(1, 0, 56, 9); /* committed, not published: [256, 320) */
	ring_set(256, 320);
	assert_producer_broken(8);
}

Test(shm_ring_fault, tail_moved_backwards_gives_ebadmsg)
{
	producer_full(128);
	push(1, 0, 56, 9); /* the producer has seen the tail at 128 */
	push(1, 0, 56, 10);
	shm_ring_publish(&prod);
	ring_set(384, 120);
	assert_producer_broken(8);
}

Test(shm_ring_fault, tail_far_behind_gives_ebadmsg)
{
	producer_full(0);
	ring_set(256, 0x80000000u);
	assert_producer_broken(8);
}

Test(shm_ring_fault, unaligned_tail_gives_ebadmsg)
{
	producer_full(0);
	ring_set(256, 4);
	assert_producer_broken(8);
}

Test(shm_ring_fault, ebadmsg_sticks_after_the_consumer_repairs_the_ring)
{
	producer_full(0);
	ring_set(256, 4);
	cr_assert_eq(reserve_err(1, 8), -EBADMSG);
	ring_set(256, 256);
	assert_producer_broken(8);
}

Test(shm_ring_fault, tail_checked_on_the_pad_path_too)
{
	producer_full(64);
	push(1, 0, 8, 9); /* [256, 272): the producer is at 16 */
	shm_ring_publish(&prod);
	ring_set(272, 3); /* a pad [16, 256) needs room: the tail is read, and is bad */
	assert_producer_broken(shm_ring_max_payload(256));
}

/* ---- Two processes. ---- */

#define XP_RECORDS 20000u
#define XP_SIZE 4096u

/* The payload of record @seq: its number, bytes of its own, and a checksum of both. */
static uint32_t xp_len(uint64_t seq)
{
	return 16 + (uint32_t)(t_mix64(seq) % 240);
}

static uint64_t fnv(const uint8_t *p, uint32_t n)
{
	uint64_t h = 0xCBF29CE484222325ull;

	for (uint32_t i = 0; i < n; i++)
		h = (h ^ p[i]) * 0x100000001B3ull;
	return h;
}

/* The child: produce every record, publishing every 8, then exit; no Criterion here. */
static void __attribute__((noreturn)) xp_producer(void *shared)
{
	struct shm_ring r;

	if (shm_ring_attach(&r, shared, XP_SIZE, true))
		_exit(2);
	for (uint64_t seq = 0; seq < XP_RECORDS; seq++) {
		uint32_t len = xp_len(seq);
		uint8_t *p;
		uint64_t sum;
		int err;

		while (!(p = shm_ring_reserve(&r, 1, (uint16_t)seq, len, &err))) {
			if (err != -ENOBUFS)
				_exit(3);
			shm_ring_publish(&r);
			sched_yield();
		}
		memcpy(p, &seq, 8);
		for (uint32_t i = 8; i < len - 8; i++)
			p[i] = pattern(seq, i);
		sum = fnv(p, len - 8);
		memcpy(p + len - 8, &sum, 8);
		shm_ring_commit(&r);
		if (seq % 8 == 7)
			shm_ring_publish(&r);
	}
	shm_ring_publish(&r);
	_exit(0);
}

Test(shm_ring, records_cross_from_a_child_process_in_order)
{
	size_t bytes = shm_ring_bytes(XP_SIZE);
	void *shared = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	struct timespec t0, t;
	uint64_t seq = 0;
	int status;
	pid_t pid;

	cr_assert_neq(shared, MAP_FAILED);
	cr_assert_eq(shm_ring_format(shared, XP_SIZE), 0);
	pid = fork();
	cr_assert_geq(pid, 0);
	if (pid == 0)
		xp_producer(shared);
	cr_assert_eq(shm_ring_attach(&cons, shared, XP_SIZE, false), 0);
	clock_gettime(CLOCK_MONOTONIC, &t0);
	while (seq < XP_RECORDS) {
		struct shm_rec rec;
		uint64_t got, sum;
		int rc = shm_ring_peek(&cons, &rec);

		if (rc == -EAGAIN) {
			shm_ring_release(&cons);
			clock_gettime(CLOCK_MONOTONIC, &t);
			if (t.tv_sec - t0.tv_sec > 20) {
				kill(pid, SIGKILL);
				waitpid(pid, &status, 0);
				cr_assert_fail("stuck after %lu records", (unsigned long)seq);
			}
			sched_yield();
			continue;
		}
		cr_assert_eq(rc, 0, "peek: %d after %lu records", rc, (unsigned long)seq);
		memcpy(&got, rec.payload, 8);
		memcpy(&sum, rec.payload + rec.len - 8, 8);
		cr_assert_eq(got, seq);
		cr_assert_eq(rec.len, xp_len(seq));
		cr_assert_eq(rec.flags, (uint16_t)seq);
		cr_assert_eq(sum, fnv(rec.payload, rec.len - 8), "record %lu", (unsigned long)seq);
		shm_ring_consume(&cons);
		if (++seq % 5 == 0)
			shm_ring_release(&cons);
	}
	cr_assert_eq(waitpid(pid, &status, 0), pid);
	cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0, "child status %#x", status);
	cr_assert_eq(shm_ring_peek(&cons, &(struct shm_rec){0}), -EAGAIN);
	munmap(shared, bytes);
}
