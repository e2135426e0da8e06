/*
 * The shared-memory ring (shm/ring.h) against a hostile other side scribbling on shared memory
 * (lying lengths, headers and indices): the consumer and the producer give -EBADMSG, for good,
 * and never read or write outside the data.
 */
#include <errno.h>
#include <string.h>

#include <criterion/criterion.h>

#include "ring.h"
#include "ring_fixture.h"
#include "rng.h"

TestSuite(shm_ring_fault, .fini = t_ring_free, .timeout = 60);

/* A record header written straight into the data, as a hostile producer would. */
static void put_hdr(uint32_t off, uint32_t len, uint16_t type, uint16_t flags)
{
	uint32_t hdr[2] = {len, (uint32_t)type | (uint32_t)flags << 16};

	memcpy(t_ring_sh()->data + off, hdr, sizeof(hdr));
}

/* ---- A hostile producer: the consumer checks what it reads. ---- */

/* The consumer gives -EBADMSG now and later, and has not moved. */
static void assert_consumer_broken(void)
{
	uint32_t local = t_cons.local;

	cr_assert_eq(t_ring_peek(), -EBADMSG);
	cr_assert_eq(t_ring_peek(), -EBADMSG);
	cr_assert(t_cons.broken);
	cr_assert_eq(t_cons.local, local);
}

/* Two records out and consumed, so the consumer is at 64 with its cached head caught up. */
static void consumer_at_64(void)
{
	t_ring_new(256);
	t_ring_attach_both(256);
	t_ring_push(1, 0, 24, 1);
	t_ring_push(1, 0, 24, 2);
	shm_ring_publish(&t_prod);
	t_ring_pop(1, 0, 24, 1);
	t_ring_pop(1, 0, 24, 2);
	cr_assert_eq(t_ring_peek(), -EAGAIN);
}

/* In these the records at the consumer are well formed: only the head is wrong. */
Test(shm_ring_fault, head_moved_backwards_gives_ebadmsg)
{
	consumer_at_64();
	put_hdr(64, 0, 1, 0);
	t_ring_set(56, 0);
	assert_consumer_broken();
}

Test(shm_ring_fault, head_far_behind_gives_ebadmsg)
{
	consumer_at_64();
	put_hdr(64, 0, 1, 0);
	t_ring_set(0x80000040, 0);
	assert_consumer_broken();
}

Test(shm_ring_fault, head_more_than_a_ring_ahead_gives_ebadmsg)
{
	consumer_at_64();
	shm_ring_release(&t_cons);
	put_hdr(64, 184, 1, 0); /* [64, 256) */
	put_hdr(0, 56, 1, 0);	/* [256, 320) */
	t_ring_set(64 + 256 + 8, 64);
	assert_consumer_broken();
}

Test(shm_ring_fault, head_exactly_a_ring_ahead_is_accepted)
{
	consumer_at_64();
	shm_ring_release(&t_cons);
	put_hdr(64, 184, 1, 0); /* [64, 256) */
	put_hdr(0, 56, 2, 0);	/* [256, 320) */
	t_ring_set(64 + 256, 64);
	cr_assert_eq(t_ring_peek(), 0);
	shm_ring_consume(&t_cons);
	cr_assert_eq(t_ring_peek(), 0);
	shm_ring_consume(&t_cons);
	cr_assert_eq(t_ring_peek(), -EAGAIN);
}

Test(shm_ring_fault, unaligned_head_gives_ebadmsg)
{
	consumer_at_64();
	put_hdr(64, 0, 1, 0);
	t_ring_set(64 + 12, 0);
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
	t_ring_set(320, 0);
	assert_consumer_broken();
}

Test(shm_ring_fault, record_longer_than_published_bytes_gives_ebadmsg)
{
	t_ring_new(256);
	t_ring_attach_both(256);
	put_hdr(0, 64, 1, 0);
	t_ring_set(64, 0); /* the record needs 72 */
	assert_consumer_broken();
}

Test(shm_ring_fault, second_record_longer_than_published_bytes_gives_ebadmsg)
{
	t_ring_new(256);
	t_ring_attach_both(256);
	t_ring_push(1, 0, 8, 1); /* [0, 16) */
	put_hdr(16, 8, 1, 0);
	shm_ring_publish(&t_prod);
	t_ring_set(24, 0);
	t_ring_pop(1, 0, 8, 1);
	assert_consumer_broken();
}

Test(shm_ring_fault, record_crossing_the_end_of_the_data_gives_ebadmsg)
{
	t_ring_new(256);
	t_ring_set(240, 240);
	t_ring_attach_both(256);
	put_hdr(240, 64, 1, 0); /* [240, 312) */
	t_ring_set(240 + 128, 240);
	assert_consumer_broken();
}

Test(shm_ring_fault, record_ending_exactly_at_the_end_of_the_data_is_accepted)
{
	t_ring_new(256);
	t_ring_set(240, 240);
	t_ring_attach_both(256);
	put_hdr(240, 8, 3, 0); /* [240, 256) */
	t_ring_set(256, 240);
	cr_assert_eq(t_ring_peek(), 0);
}

Test(shm_ring_fault, pad_not_ending_at_the_end_of_the_data_gives_ebadmsg)
{
	t_ring_new(256);
	t_ring_attach_both(256);
	put_hdr(0, 8, SHM_REC_PAD, 0); /* [0, 16) */
	put_hdr(16, 0, 1, 0);
	t_ring_set(64, 0);
	assert_consumer_broken();
}

Test(shm_ring_fault, pad_with_flags_is_still_a_pad)
{
	t_ring_new(256);
	t_ring_set(128, 128);
	t_ring_attach_both(256);
	put_hdr(128, 120, SHM_REC_PAD, 0xFFFF); /* [128, 256) */
	put_hdr(0, 0, 2, 0);
	t_ring_set(264, 128);
	cr_assert_eq(t_ring_peek(), 0);
	cr_assert_eq(t_cons.local, 256);
}

Test(shm_ring_fault, pad_longer_than_published_bytes_gives_ebadmsg)
{
	t_ring_new(256);
	t_ring_set(128, 128);
	t_ring_attach_both(256);
	put_hdr(128, 120, SHM_REC_PAD, 0); /* [128, 256) */
	t_ring_set(192, 128);
	assert_consumer_broken();
}

Test(shm_ring_fault, length_near_uint32_max_gives_ebadmsg)
{
	/* 0xFFFFFFF1 and up: shm_rec_space() wraps to 0 or 8 */
	static const uint32_t lens[] = {0xFFFFFFFF, 0xFFFFFFF9, 0xFFFFFFF8, 0xFFFFFFF1,
					0x80000000, 0x10000,	249,	    256};

	for (size_t i = 0; i < sizeof(lens) / sizeof(lens[0]); i++) {
		for (uint16_t type = 0; type < 2; type++) {
			t_ring_new(256);
			t_ring_attach_both(256);
			put_hdr(0, lens[i], type, 0);
			t_ring_set(256, 0);
			assert_consumer_broken();
			t_ring_free();
		}
	}
}

Test(shm_ring_fault, bad_record_after_good_ones_stops_there_for_good)
{
	t_ring_new(1024);
	t_ring_attach_both(1024);
	t_ring_push(1, 0, 8, 1);
	t_ring_push(1, 0, 8, 2);
	put_hdr(32, 2000, 1, 0);
	shm_ring_publish(&t_prod);
	t_ring_set(1000, 0);
	t_ring_pop(1, 0, 8, 1);
	t_ring_pop(1, 0, 8, 2);
	assert_consumer_broken();
}

Test(shm_ring_fault, ebadmsg_sticks_after_the_producer_repairs_the_ring)
{
	consumer_at_64();
	put_hdr(64, 0, 1, 0);
	t_ring_set(64 + 12, 0);
	cr_assert_eq(t_ring_peek(), -EBADMSG);
	t_ring_set(64 + 8, 0);
	assert_consumer_broken();
}

Test(shm_ring_fault, header_changed_after_peek_is_checked_again)
{
	struct shm_rec rec;

	t_ring_new(256);
	t_ring_attach_both(256);
	t_ring_push(1, 0, 8, 1);
	shm_ring_publish(&t_prod);
	cr_assert_eq(shm_ring_peek(&t_cons, &rec), 0);
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

		t_ring_new(size);
		for (uint32_t i = 0; i < size; i += 4) {
			uint32_t w = (uint32_t)t_rng_next(&rng);

			if (t_rng_chance(&rng, 60))
				w = t_rng_below(&rng, size); /* lengths that might pass */
			memcpy(t_ring_sh()->data + i, &w, 4);
		}
		tail &= ~7u;
		t_ring_set(tail + (t_rng_below(&rng, size + 1) & ~7u), tail);
		t_ring_attach_both(size);
		while ((rc = shm_ring_peek(&t_cons, &rec)) == 0 && n++ < 1000) {
			cr_assert(rec.payload >= t_ring_sh()->data + SHM_REC_HDR);
			cr_assert(rec.payload + rec.len <= t_ring_sh()->data + size);
			cr_assert_neq(rec.type, SHM_REC_PAD);
			cr_assert_leq(t_cons.local + shm_rec_space(rec.len) - tail,
				      t_ring_load_head() - tail);
			shm_ring_consume(&t_cons);
		}
		cr_assert(rc == -EAGAIN || rc == -EBADMSG, "peek: %d", rc);
		t_ring_free();
	}
}

/* ---- A hostile consumer: the producer checks the tail. ---- */

/* A full ring of four published records, the consumer having released @released bytes. */
static void producer_full(uint32_t released)
{
	t_ring_new(256);
	t_ring_attach_both(256);
	for (uint32_t i = 0; i < 4; i++)
		t_ring_push(1, 0, 56, i);
	shm_ring_publish(&t_prod);
	for (uint32_t i = 0; i < released / 64; i++)
		t_ring_pop(1, 0, 56, i);
	shm_ring_release(&t_cons);
}

/* The producer gives -EBADMSG now and later, and has not moved. */
static void assert_producer_broken(uint32_t len)
{
	uint32_t local = t_prod.local;

	cr_assert_eq(t_ring_reserve_err(1, len), -EBADMSG);
	cr_assert_eq(t_ring_reserve_err(1, 0), -EBADMSG);
	cr_assert(t_prod.broken);
	cr_assert_eq(t_prod.local, local);
}

Test(shm_ring_fault, tail_moved_past_head_gives_ebadmsg)
{
	producer_full(0);
	t_ring_set(256, 264);
	assert_producer_broken(8);
}

Test(shm_ring_fault, tail_past_published_but_within_committed_gives_ebadmsg)
{
	producer_full(64);
	t_ring_push(1, 0, 56, 9); /* committed, not published: [256, 320) */
	t_ring_set(256, 320);
	assert_producer_broken(8);
}

Test(shm_ring_fault, tail_moved_backwards_gives_ebadmsg)
{
	producer_full(128);
	t_ring_push(1, 0, 56, 9); /* the producer has seen the tail at 128 */
	t_ring_push(1, 0, 56, 10);
	shm_ring_publish(&t_prod);
	t_ring_set(384, 120);
	assert_producer_broken(8);
}

Test(shm_ring_fault, tail_far_behind_gives_ebadmsg)
{
	producer_full(0);
	t_ring_set(256, 0x80000000u);
	assert_producer_broken(8);
}

Test(shm_ring_fault, unaligned_tail_gives_ebadmsg)
{
	producer_full(0);
	t_ring_set(256, 4);
	assert_producer_broken(8);
}

Test(shm_ring_fault, ebadmsg_sticks_after_the_consumer_repairs_the_ring)
{
	producer_full(0);
	t_ring_set(256, 4);
	cr_assert_eq(t_ring_reserve_err(1, 8), -EBADMSG);
	t_ring_set(256, 256);
	assert_producer_broken(8);
}

Test(shm_ring_fault, tail_checked_on_the_pad_path_too)
{
	producer_full(64);
	t_ring_push(1, 0, 8, 9); /* [256, 272): the producer is at 16 */
	shm_ring_publish(&t_prod);
	t_ring_set(272, 3); /* a pad [16, 256) needs room: the tail is read, and is bad */
	assert_producer_broken(shm_ring_max_payload(256));
}
