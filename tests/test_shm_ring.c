/*
 * The shared-memory ring (shm/ring.h) between well-behaved sides: sizes and attach checks,
 * records of every length round trip with type and flags, wrap-around (pads, indices past 2^32),
 * full and empty rings, batched publish and release, oversize records, two processes by fork().
 */
#define _GNU_SOURCE
#include <errno.h>
#include <sched.h>
#include <signal.h>
#include <stdalign.h>
#include <stddef.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <criterion/criterion.h>

#include "ring.h"
#include "ring_fixture.h"
#include "rng.h"

TestSuite(shm_ring, .fini = t_ring_free, .timeout = 60);

/* A ring of @size bytes whose indices both start at @start, with a producer and a consumer. */
static void ring_at(uint32_t size, uint32_t start)
{
	t_ring_new(size);
	t_ring_set(start, start);
	t_ring_attach_both(size);
}

static uint32_t load_tail(void)
{
	return atomic_load_explicit(&t_ring_sh()->tail, memory_order_relaxed);
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
	t_ring_new(256);
	t_ring_set(0x1230, 0x1200);
	cr_assert_eq(shm_ring_format(t_mem, 256), 0);
	cr_assert_eq(t_ring_load_head(), 0);
	cr_assert_eq(load_tail(), 0);
	t_ring_attach_both(256);
	cr_assert_eq(t_ring_peek(), -EAGAIN);
}

/* A side attached to a ring broken from the start: -EBADMSG now and on every later call. */
static void assert_attach_broken(uint32_t head, uint32_t tail)
{
	int err = 0;

	t_ring_set(head, tail);
	cr_assert_eq(shm_ring_attach(&t_prod, t_mem, 256, true), -EBADMSG, "head %#x tail %#x",
		     head, tail);
	cr_assert_eq(shm_ring_attach(&t_cons, t_mem, 256, false), -EBADMSG, "head %#x tail %#x",
		     head, tail);
	for (int i = 0; i < 3; i++) {
		cr_assert_null(shm_ring_reserve(&t_prod, 1, 0, 8, &err));
		cr_assert_eq(err, -EBADMSG);
		cr_assert_eq(t_ring_peek(), -EBADMSG);
	}
	shm_ring_publish(&t_prod);
	shm_ring_release(&t_cons);
	cr_assert_eq(t_ring_load_head(), head, "a broken producer published");
	cr_assert_eq(load_tail(), tail, "a broken consumer released");
}

Test(shm_ring, attach_on_head_more_than_a_ring_past_tail_gives_ebadmsg_for_good)
{
	t_ring_new(256);
	assert_attach_broken(256 + 8, 0);
	assert_attach_broken(0x10000, 0x100);
	assert_attach_broken(0xFFFFFFF8, 0x100); /* head behind tail */
	assert_attach_broken(0x100, 0x108);
}

Test(shm_ring, attach_on_unaligned_indices_gives_ebadmsg_for_good)
{
	t_ring_new(256);
	assert_attach_broken(4, 0);
	assert_attach_broken(8, 4);
	assert_attach_broken(1, 1);
	assert_attach_broken(0xFFFFFFFF, 0xFFFFFFF8);
}

Test(shm_ring, attach_on_a_full_ring_succeeds_and_reserve_gives_enobufs)
{
	t_ring_new(256);
	t_ring_set(0x1100, 0x1000);
	cr_assert_eq(shm_ring_attach(&t_prod, t_mem, 256, true), 0);
	cr_assert_eq(t_ring_reserve_err(1, 0), -ENOBUFS);
	cr_assert_not(t_prod.broken);
}

/* ---- Round trips. ---- */

Test(shm_ring, records_of_every_length_0_to_300_round_trip)
{
	t_ring_new(1024);
	t_ring_attach_both(1024);
	for (uint32_t len = 0; len <= 300; len++) {
		uint16_t type = (uint16_t)(1 + len % 5), flags = (uint16_t)(len * 37);

		t_ring_push(type, flags, len, len);
		shm_ring_publish(&t_prod);
		t_ring_pop(type, flags, len, len);
		cr_assert_eq(t_ring_peek(), -EAGAIN);
		shm_ring_release(&t_cons);
	}
	cr_assert_eq(t_prod.local, t_cons.local);
	cr_assert_eq(load_tail(), t_ring_load_head());
}

Test(shm_ring, records_of_every_length_round_trip_in_batches)
{
	uint32_t len = 0;

	t_ring_new(1024);
	t_ring_attach_both(1024);
	while (len <= 300) {
		uint32_t first = len;

		/* as many as surely fit, a pad included, then all out */
		while (len <= 300 &&
		       t_prod.size - (t_prod.local - load_tail()) >= 2 * shm_rec_space(len)) {
			t_ring_push(7, (uint16_t)len, len, len * 3);
			len++;
		}
		shm_ring_publish(&t_prod);
		for (uint32_t l = first; l < len; l++)
			t_ring_pop(7, (uint16_t)l, l, l * 3);
		cr_assert_eq(t_ring_peek(), -EAGAIN);
		shm_ring_release(&t_cons);
	}
}

Test(shm_ring, type_and_flags_keep_all_their_bits)
{
	static const uint16_t types[] = {1, 2, 0x7FFF, 0x8000, 0xFFFF};
	static const uint16_t flags[] = {0, 1, 0x8000, 0xFFFF, 0xA55A};

	t_ring_new(256);
	t_ring_attach_both(256);
	for (size_t t = 0; t < 5; t++) {
		for (size_t f = 0; f < 5; f++) {
			t_ring_push(types[t], flags[f], 3, t * 5 + f);
			shm_ring_publish(&t_prod);
			t_ring_pop(types[t], flags[f], 3, t * 5 + f);
			shm_ring_release(&t_cons);
		}
	}
}

Test(shm_ring, payload_is_in_place_where_the_producer_wrote_it)
{
	uint8_t *p;

	t_ring_new(256);
	t_ring_attach_both(256);
	p = t_ring_push(3, 0, 20, 1);
	cr_assert_eq(p, t_ring_sh()->data + SHM_REC_HDR);
	shm_ring_publish(&t_prod);
	cr_assert_eq(t_ring_pop(3, 0, 20, 1), p);
}

Test(shm_ring, peek_without_consume_returns_the_same_record)
{
	struct shm_rec a, b;

	t_ring_new(256);
	t_ring_attach_both(256);
	t_ring_push(4, 9, 10, 4);
	t_ring_push(5, 9, 11, 5);
	shm_ring_publish(&t_prod);
	cr_assert_eq(shm_ring_peek(&t_cons, &a), 0);
	cr_assert_eq(shm_ring_peek(&t_cons, &b), 0);
	cr_assert_eq(a.payload, b.payload);
	cr_assert_eq(b.type, 4);
	shm_ring_consume(&t_cons);
	t_ring_pop(5, 9, 11, 5);
}

Test(shm_ring, empty_ring_peeks_eagain)
{
	t_ring_new(64);
	t_ring_attach_both(64);
	cr_assert_eq(t_ring_peek(), -EAGAIN);
	cr_assert_eq(t_ring_peek(), -EAGAIN);
	cr_assert_not(t_cons.broken);
}

/* ---- Wrap-around. ---- */

Test(shm_ring, record_that_does_not_fit_before_the_end_starts_at_0_after_a_pad)
{
	uint32_t hdr[2];

	t_ring_new(256);
	t_ring_attach_both(256);
	cr_assert_eq(t_ring_push(1, 0, 100, 1), t_ring_sh()->data + 8);	      /* [0, 112) */
	cr_assert_eq(t_ring_push(1, 0, 100, 2), t_ring_sh()->data + 112 + 8); /* [112, 224) */
	shm_ring_publish(&t_prod);
	t_ring_pop(1, 0, 100, 1);
	t_ring_pop(1, 0, 100, 2);
	shm_ring_release(&t_cons);

	/* 112 bytes do not fit in the 32 left: a pad of 24 payload bytes, then offset 0 */
	cr_assert_eq(t_ring_push(2, 5, 100, 3), t_ring_sh()->data + 8);
	memcpy(hdr, t_ring_sh()->data + 224, sizeof(hdr));
	cr_assert_eq(hdr[0], 24);
	cr_assert_eq(hdr[1], SHM_REC_PAD);
	cr_assert_eq(t_prod.local, 256 + 112);
	shm_ring_publish(&t_prod);
	cr_assert_eq(t_ring_pop(2, 5, 100, 3), t_ring_sh()->data + 8);
	cr_assert_eq(t_cons.local, 256 + 112);
}

Test(shm_ring, record_that_fits_exactly_before_the_end_needs_no_pad)
{
	t_ring_new(256);
	t_ring_attach_both(256);
	t_ring_push(1, 0, 216, 1); /* [0, 224) */
	shm_ring_publish(&t_prod);
	t_ring_pop(1, 0, 216, 1);
	shm_ring_release(&t_cons);
	cr_assert_eq(t_ring_push(1, 0, 24, 2), t_ring_sh()->data + 224 + 8); /* [224, 256) */
	cr_assert_eq(t_ring_push(1, 0, 0, 3), t_ring_sh()->data + 8);	     /* then 0 */
	shm_ring_publish(&t_prod);
	t_ring_pop(1, 0, 24, 2);
	t_ring_pop(1, 0, 0, 3);
}

Test(shm_ring, pad_of_one_header_at_the_end_is_skipped)
{
	t_ring_new(256);
	t_ring_attach_both(256);
	t_ring_push(1, 0, 240, 1); /* [0, 248) */
	shm_ring_publish(&t_prod);
	t_ring_pop(1, 0, 240, 1);
	shm_ring_release(&t_cons);
	/* a pad [248, 256) of 0 payload bytes, then offset 0 */
	cr_assert_eq(t_ring_push(1, 0, 1, 2), t_ring_sh()->data + 8);
	shm_ring_publish(&t_prod);
	t_ring_pop(1, 0, 1, 2);
	cr_assert_eq(t_ring_peek(), -EAGAIN);
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
		while (sent < n && t_ring_try_push((uint16_t)(1 + sent % 3), (uint16_t)sent,
						   lens[sent % 64], sent)) {
			sent++;
			if (t_rng_chance(&rng, 50))
				shm_ring_publish(&t_prod);
		}
		shm_ring_publish(&t_prod);
		for (uint32_t k = 1 + t_rng_below(&rng, 8); k && got < sent; k--, got++)
			t_ring_pop((uint16_t)(1 + got % 3), (uint16_t)got, lens[got % 64], got);
		if (got == sent)
			cr_assert_eq(t_ring_peek(), -EAGAIN);
		shm_ring_release(&t_cons);
	}
	cr_assert_eq(t_ring_peek(), -EAGAIN);
	cr_assert_eq(load_tail(), t_ring_load_head());
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
		cr_assert_lt(t_prod.local - starts[i], 0x80000000u);
		cr_assert_gt(t_prod.local - starts[i], 256 * 100, "start %#x", starts[i]);
		if (starts[i] > 0xF0000000u)
			cr_assert_lt(t_prod.local, starts[i], "start %#x: never wrapped",
				     starts[i]);
		t_ring_free();
	}
}

/* The pad that wraps the data and the index at once: the last 32 bytes before 2^32. */
Test(shm_ring, pad_across_the_2_32_wrap_is_skipped)
{
	ring_at(256, 0xFFFFFFE0);
	cr_assert_eq(t_ring_push(1, 0, 100, 1), t_ring_sh()->data + 8);
	cr_assert_eq(t_prod.local, 112);
	shm_ring_publish(&t_prod);
	cr_assert_eq(t_ring_pop(1, 0, 100, 1), t_ring_sh()->data + 8);
	cr_assert_eq(t_cons.local, 112);
	shm_ring_release(&t_cons);
	cr_assert_eq(load_tail(), 112);
}

/* ---- Full, empty, publish and release. ---- */

Test(shm_ring, push_to_full_ring_returns_enobufs)
{
	t_ring_new(256);
	t_ring_attach_both(256);
	for (uint32_t i = 0; i < 4; i++)
		t_ring_push(1, 0, 56, i); /* 64 bytes each */
	cr_assert_eq(t_ring_reserve_err(1, 0), -ENOBUFS);
	shm_ring_publish(&t_prod);
	cr_assert_eq(t_ring_reserve_err(1, 0), -ENOBUFS);
	cr_assert_not(t_prod.broken);
	t_ring_pop(1, 0, 56, 0);
	shm_ring_release(&t_cons);
	t_ring_push(1, 0, 56, 4);
	cr_assert_eq(t_ring_reserve_err(1, 0), -ENOBUFS);
	shm_ring_publish(&t_prod);
	for (uint32_t i = 1; i < 5; i++)
		t_ring_pop(1, 0, 56, i);
}

/* No room even for the pad: nothing is written over the records the consumer still holds. */
Test(shm_ring, enobufs_with_no_room_for_the_pad_writes_no_pad)
{
	uint32_t hdr[2];

	t_ring_new(256);
	t_ring_attach_both(256);
	for (uint32_t i = 0; i < 3; i++)
		t_ring_push(1, 0, 56, i);
	shm_ring_publish(&t_prod);
	t_ring_pop(1, 0, 56, 0);
	shm_ring_release(&t_cons);
	/* the tail at 64; [192, 256) and [256, 320) at offset 0 fill the ring */
	t_ring_push(1, 0, 56, 3);
	t_ring_push(1, 0, 56, 4);
	/* 208 bytes would need a pad [64, 256) first, over record 1 */
	cr_assert_eq(t_ring_reserve_err(1, 200), -ENOBUFS);
	cr_assert_eq(t_prod.local, 320);
	memcpy(hdr, t_ring_sh()->data + 64, sizeof(hdr));
	cr_assert_eq(hdr[0], 56, "record 1, not yet consumed, was overwritten");
	cr_assert_eq(hdr[1], 1);
	shm_ring_publish(&t_prod);
	for (uint32_t i = 1; i < 5; i++)
		t_ring_pop(1, 0, 56, i);
}

Test(shm_ring, nothing_is_visible_before_publish)
{
	t_ring_new(256);
	t_ring_attach_both(256);
	t_ring_push(1, 2, 30, 1);
	cr_assert_eq(t_ring_peek(), -EAGAIN);
	cr_assert_eq(t_ring_load_head(), 0);
	shm_ring_publish(&t_prod);
	cr_assert_eq(t_ring_load_head(), 40);
	t_ring_pop(1, 2, 30, 1);
}

Test(shm_ring, reserved_record_is_not_published_until_committed)
{
	int err;
	uint8_t *p;

	t_ring_new(256);
	t_ring_attach_both(256);
	p = shm_ring_reserve(&t_prod, 1, 0, 16, &err);
	cr_assert_not_null(p);
	memset(p, 0, 16);
	shm_ring_publish(&t_prod);
	cr_assert_eq(t_ring_load_head(), 0);
	cr_assert_eq(t_ring_peek(), -EAGAIN);
	shm_ring_commit(&t_prod);
	shm_ring_publish(&t_prod);
	cr_assert_eq(t_ring_load_head(), 24);
	cr_assert_eq(t_ring_peek(), 0);
}

Test(shm_ring, reserving_again_without_commit_drops_the_first_reservation)
{
	int err;

	t_ring_new(256);
	t_ring_attach_both(256);
	cr_assert_not_null(shm_ring_reserve(&t_prod, 1, 0, 100, &err));
	t_ring_push(2, 0, 5, 2);
	shm_ring_publish(&t_prod);
	t_ring_pop(2, 0, 5, 2);
	cr_assert_eq(t_ring_peek(), -EAGAIN);
}

Test(shm_ring, batched_publish_makes_several_records_visible_at_once)
{
	t_ring_new(1024);
	t_ring_attach_both(1024);
	for (uint32_t i = 0; i < 6; i++)
		t_ring_push(1, (uint16_t)i, 10 * i, i);
	cr_assert_eq(t_ring_peek(), -EAGAIN);
	cr_assert_eq(t_ring_load_head(), 0);
	shm_ring_publish(&t_prod);
	cr_assert_eq(t_ring_load_head(), t_prod.local);
	for (uint32_t i = 0; i < 6; i++)
		t_ring_pop(1, (uint16_t)i, 10 * i, i);
	cr_assert_eq(t_ring_peek(), -EAGAIN);
}

Test(shm_ring, consumer_sees_only_what_was_published_so_far)
{
	t_ring_new(1024);
	t_ring_attach_both(1024);
	t_ring_push(1, 0, 10, 0);
	shm_ring_publish(&t_prod);
	t_ring_push(1, 1, 10, 1);
	t_ring_pop(1, 0, 10, 0);
	cr_assert_eq(t_ring_peek(), -EAGAIN);
	shm_ring_publish(&t_prod);
	t_ring_pop(1, 1, 10, 1);
}

Test(shm_ring, release_is_needed_before_the_producer_sees_the_space)
{
	t_ring_new(256);
	t_ring_attach_both(256);
	for (uint32_t i = 0; i < 4; i++)
		t_ring_push(1, 0, 56, i);
	shm_ring_publish(&t_prod);
	for (uint32_t i = 0; i < 4; i++)
		t_ring_pop(1, 0, 56, i);
	cr_assert_eq(t_ring_peek(), -EAGAIN);
	cr_assert_eq(load_tail(), 0);
	cr_assert_eq(t_ring_reserve_err(1, 0), -ENOBUFS);
	shm_ring_release(&t_cons);
	cr_assert_eq(load_tail(), 256);
	for (uint32_t i = 4; i < 8; i++)
		t_ring_push(1, 0, 56, i);
	shm_ring_publish(&t_prod);
	for (uint32_t i = 4; i < 8; i++)
		t_ring_pop(1, 0, 56, i);
}

Test(shm_ring, batched_release_frees_every_consumed_record_at_once)
{
	t_ring_new(256);
	t_ring_attach_both(256);
	for (uint32_t i = 0; i < 4; i++)
		t_ring_push(1, 0, 56, i);
	shm_ring_publish(&t_prod);
	t_ring_pop(1, 0, 56, 0);
	t_ring_pop(1, 0, 56, 1);
	t_ring_pop(1, 0, 56, 2);
	shm_ring_release(&t_cons);
	cr_assert_eq(load_tail(), 192);
	t_ring_push(1, 0, 184, 9); /* 192 bytes: all three, and no more */
	cr_assert_eq(t_ring_reserve_err(1, 0), -ENOBUFS);
}

/* ---- Oversize records and bad types. ---- */

Test(shm_ring, record_larger_than_max_payload_returns_e2big)
{
	static const uint32_t sizes[] = {64, 256, 4096};

	for (size_t i = 0; i < 3; i++) {
		uint32_t size = sizes[i], maxp = shm_ring_max_payload(size);

		t_ring_new(size);
		t_ring_attach_both(size);
		cr_assert_eq(t_ring_reserve_err(1, maxp + 1), -E2BIG, "size %u", size);
		cr_assert_eq(t_ring_reserve_err(1, size), -E2BIG);
		cr_assert_eq(t_ring_reserve_err(1, UINT32_MAX), -E2BIG);
		cr_assert_eq(t_ring_reserve_err(1, UINT32_MAX - 7), -E2BIG);
		cr_assert_eq(t_prod.local, 0);
		cr_assert_not(t_prod.broken);
		t_ring_free();
	}
}

Test(shm_ring, max_payload_record_takes_the_whole_empty_ring)
{
	uint32_t maxp = shm_ring_max_payload(256);

	t_ring_new(256);
	t_ring_attach_both(256);
	cr_assert_eq(t_ring_push(1, 0, maxp, 1), t_ring_sh()->data + 8);
	cr_assert_eq(t_ring_reserve_err(1, 0), -ENOBUFS);
	shm_ring_publish(&t_prod);
	t_ring_pop(1, 0, maxp, 1);
	shm_ring_release(&t_cons);
	cr_assert_eq(t_ring_push(1, 0, maxp, 2), t_ring_sh()->data + 8);
	shm_ring_publish(&t_prod);
	t_ring_pop(1, 0, maxp, 2);
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

	t_ring_new(256);
	t_ring_attach_both(256);
	t_ring_push(1, 0, 8, 1);
	shm_ring_publish(&t_prod);
	t_ring_pop(1, 0, 8, 1);
	shm_ring_release(&t_cons);

	cr_assert_eq(t_ring_reserve_err(1, maxp), -ENOBUFS);
	cr_assert_eq(t_prod.local, 256, "the pad [16, 256) is committed");
	cr_assert_eq(t_ring_reserve_err(1, maxp), -ENOBUFS);
	cr_assert_eq(t_prod.local, 256, "no second pad");
	cr_assert_eq(t_ring_peek(), -EAGAIN);
	shm_ring_publish(&t_prod);
	cr_assert_eq(t_ring_peek(), -EAGAIN, "the pad is skipped, not returned");
	cr_assert_eq(t_ring_reserve_err(1, maxp), -ENOBUFS, "skipped but not released");
	shm_ring_release(&t_cons);
	cr_assert_eq(t_ring_push(1, 0, maxp, 2), t_ring_sh()->data + 8);
	shm_ring_publish(&t_prod);
	t_ring_pop(1, 0, maxp, 2);
}

Test(shm_ring, pad_type_returns_einval)
{
	t_ring_new(256);
	t_ring_attach_both(256);
	cr_assert_eq(t_ring_reserve_err(SHM_REC_PAD, 8), -EINVAL);
	cr_assert_eq(t_ring_reserve_err(SHM_REC_PAD, 0), -EINVAL);
	cr_assert_eq(t_ring_reserve_err(SHM_REC_PAD, UINT32_MAX), -EINVAL);
	cr_assert_eq(t_prod.local, 0);
	cr_assert_not(t_prod.broken);
	t_ring_push(1, 0, 8, 1);
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
			p[i] = t_ring_pattern(seq, i);
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
	cr_assert_eq(shm_ring_attach(&t_cons, shared, XP_SIZE, false), 0);
	clock_gettime(CLOCK_MONOTONIC, &t0);
	while (seq < XP_RECORDS) {
		struct shm_rec rec;
		uint64_t got, sum;
		int rc = shm_ring_peek(&t_cons, &rec);

		if (rc == -EAGAIN) {
			shm_ring_release(&t_cons);
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
		shm_ring_consume(&t_cons);
		if (++seq % 5 == 0)
			shm_ring_release(&t_cons);
	}
	cr_assert_eq(waitpid(pid, &status, 0), pid);
	cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0, "child status %#x", status);
	cr_assert_eq(shm_ring_peek(&t_cons, &(struct shm_rec){0}), -EAGAIN);
	munmap(shared, bytes);
}
