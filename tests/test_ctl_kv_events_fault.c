/*
 * The KV-event intake (control/kv_events.h) against a worker that breaks the record formats of
 * shm/events.h or the ring itself: every malformed record (short of its fixed part, a length one
 * byte off what its counts say, a count of 0 or past SHM_EV_MAX_BLOCKS, a flag, kind or reserved
 * field out of range, a token block size other than the registered one) and a corrupted ring
 * index end the intake with -EBADMSG and k.broken; what came before is applied, nothing after
 * it is, and the intake stays broken. The largest events the format allows are accepted.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include <criterion/criterion.h>

#include "helpers.h"
#include "kv_fixture.h"

TestSuite(ctl_kv_events_fault, .timeout = 60);

#define N 4u /* blocks of the good events around a bad record */

/* A prompt, stored in part (blocks 0..1, event 1 of rank 0) before the bad record. */
struct fx {
	struct t_kv s;
	uint64_t local[N], ext[N];
	uint32_t tok[N * T_BS];
};

static void fx_open(struct fx *f, uint32_t ring)
{
	t_kv_open(&f->s, ring, NULL);
	t_kv_prompt_tokens(31, N, T_BS, f->tok, f->local);
	t_kv_ext(31, N, f->ext);
	t_kv_stored(&f->s, 0, 1, NULL, f->ext, f->local, 2);
}

/*
 * Put @bad as a record of @type between the good event before it and good records after it
 * (a STORED continuing the prompt, a load report), drain: -EBADMSG, broken, the first event
 * only applied; and every later drain is -EBADMSG too.
 */
static void expect_broken_by(struct fx *f, uint16_t type, struct t_rec bad)
{
	struct t_kv *s = &f->s;

	t_kv_put(s, type, bad);
	t_kv_stored(s, 0, 2, &f->ext[1], f->ext + 2, f->local + 2, 2);
	t_kv_load(s, 1, 999, 9);
	cr_expect_eq(t_kv_drain(s), -EBADMSG);
	cr_expect(s->k.broken);
	cr_expect_eq(s->k.stats.malformed, 1);
	cr_expect_eq(s->k.stats.events, 1, "only the event before the bad record applied");
	cr_expect_eq(t_kv_depth(s, 0, f->local, N), 2);
	cr_expect_eq(s->k.stats.loads, 0);
	cr_expect_eq(atomic_load(&s->t.rt.target[s->tg[1]].reported_used_blocks), 0);
	cr_expect_eq(ctl_kv_drain(&s->k, 10), -EBADMSG, "the intake stays broken");
	cr_expect_eq(s->k.stats.malformed, 1, "counted once");
	cr_expect_eq(s->k.stats.events, 1);
	t_kv_close(s);
}

static struct t_rec good_stored(struct fx *f)
{
	return t_rec_stored(1, 1, NULL, f->ext, f->local, N);
}

static struct t_rec good_tokens(struct fx *f)
{
	return t_rec_tokens(1, 1, NULL, f->ext, f->tok, N, T_BS);
}

Test(ctl_kv_events_fault, stored_shorter_than_its_fixed_part_breaks_the_intake)
{
	struct fx f;
	struct t_rec r;

	fx_open(&f, T_KV_RING);
	r = good_stored(&f);
	t_rec_resize(&r, sizeof(struct shm_ev_stored) - 1);
	expect_broken_by(&f, SHM_EV_STORED, r);
}

Test(ctl_kv_events_fault, stored_of_no_bytes_breaks_the_intake)
{
	struct fx f;

	fx_open(&f, T_KV_RING);
	expect_broken_by(&f, SHM_EV_STORED, t_rec_raw(0));
}

Test(ctl_kv_events_fault, removed_shorter_than_its_fixed_part_breaks_the_intake)
{
	struct fx f;
	struct t_rec r;

	fx_open(&f, T_KV_RING);
	r = t_rec_removed(1, 1, f.ext, 1);
	t_rec_resize(&r, sizeof(struct shm_ev_removed) - 1);
	expect_broken_by(&f, SHM_EV_REMOVED, r);
}

Test(ctl_kv_events_fault, stored_local_hashes_one_byte_longer_breaks_the_intake)
{
	struct fx f;
	struct t_rec r;

	fx_open(&f, T_KV_RING);
	r = good_stored(&f);
	t_rec_resize(&r, r.len + 1);
	expect_broken_by(&f, SHM_EV_STORED, r);
}

Test(ctl_kv_events_fault, stored_local_hashes_one_byte_shorter_breaks_the_intake)
{
	struct fx f;
	struct t_rec r;

	fx_open(&f, T_KV_RING);
	r = good_stored(&f);
	t_rec_resize(&r, r.len - 1);
	expect_broken_by(&f, SHM_EV_STORED, r);
}

Test(ctl_kv_events_fault, stored_one_block_more_than_its_count_breaks_the_intake)
{
	struct fx f;
	struct t_rec r;

	fx_open(&f, T_KV_RING);
	r = good_stored(&f);
	t_stored_hdr(&r)->nblocks = N - 1; /* the bytes of N blocks, a count of N - 1 */
	expect_broken_by(&f, SHM_EV_STORED, r);
}

Test(ctl_kv_events_fault, stored_token_ids_one_byte_longer_breaks_the_intake)
{
	struct fx f;
	struct t_rec r;

	fx_open(&f, T_KV_RING);
	r = good_tokens(&f);
	t_rec_resize(&r, r.len + 1);
	expect_broken_by(&f, SHM_EV_STORED, r);
}

Test(ctl_kv_events_fault, stored_token_ids_one_byte_shorter_breaks_the_intake)
{
	struct fx f;
	struct t_rec r;

	fx_open(&f, T_KV_RING);
	r = good_tokens(&f);
	t_rec_resize(&r, r.len - 1);
	expect_broken_by(&f, SHM_EV_STORED, r);
}

Test(ctl_kv_events_fault, stored_token_ids_sized_as_local_hashes_breaks_the_intake)
{
	struct fx f;
	struct t_rec r;

	fx_open(&f, T_KV_RING);
	r = good_stored(&f);
	t_stored_hdr(&r)->blocks_kind = SHM_EV_TOKEN_IDS;
	t_stored_hdr(&r)->block_size = T_BS;
	expect_broken_by(&f, SHM_EV_STORED, r);
}

Test(ctl_kv_events_fault, stored_of_zero_blocks_breaks_the_intake)
{
	struct fx f;

	fx_open(&f, T_KV_RING);
	expect_broken_by(&f, SHM_EV_STORED, t_rec_stored(1, 1, NULL, f.ext, f.local, 0));
}

Test(ctl_kv_events_fault, stored_of_too_many_blocks_breaks_the_intake)
{
	struct fx f;
	uint32_t n = SHM_EV_MAX_BLOCKS + 1;
	uint64_t *ext = t_calloc(n, 8), *local = t_calloc(n, 8);

	fx_open(&f, T_KV_BIG_RING);
	t_kv_ext(32, n, ext);
	t_locals(32, n, local);
	/* Its length is exactly what its count says: only the count is wrong. */
	expect_broken_by(&f, SHM_EV_STORED, t_rec_stored(1, 1, NULL, ext, local, n));
	free(ext);
	free(local);
}

Test(ctl_kv_events_fault, stored_with_has_parent_2_breaks_the_intake)
{
	struct fx f;
	struct t_rec r;

	fx_open(&f, T_KV_RING);
	r = good_stored(&f);
	t_stored_hdr(&r)->has_parent = 2;
	expect_broken_by(&f, SHM_EV_STORED, r);
}

Test(ctl_kv_events_fault, stored_with_reserved_bits_breaks_the_intake)
{
	struct fx f;
	struct t_rec r;

	fx_open(&f, T_KV_RING);
	r = good_stored(&f);
	t_stored_hdr(&r)->reserved = 0x100;
	expect_broken_by(&f, SHM_EV_STORED, r);
}

Test(ctl_kv_events_fault, stored_of_an_unknown_blocks_kind_breaks_the_intake)
{
	struct fx f;
	struct t_rec r;

	fx_open(&f, T_KV_RING);
	r = good_stored(&f); /* 2: sized as local hashes, which 2 is not */
	t_stored_hdr(&r)->blocks_kind = 2;
	expect_broken_by(&f, SHM_EV_STORED, r);
}

Test(ctl_kv_events_fault, stored_token_ids_of_another_block_size_break_the_intake)
{
	struct fx f;

	fx_open(&f, T_KV_RING);
	/* A well-formed event at block size 8: the worker registered 16. */
	expect_broken_by(&f, SHM_EV_STORED, t_rec_tokens(1, 1, NULL, f.ext, f.tok, N, T_BS / 2));
}

Test(ctl_kv_events_fault, removed_one_byte_longer_or_shorter_breaks_the_intake)
{
	for (int d = -1; d <= 1; d += 2) {
		struct fx f;
		struct t_rec r;

		fx_open(&f, T_KV_RING);
		r = t_rec_removed(0, 5, f.ext, 2);
		t_rec_resize(&r, r.len + (size_t)d);
		expect_broken_by(&f, SHM_EV_REMOVED, r);
	}
}

Test(ctl_kv_events_fault, removed_of_zero_ids_breaks_the_intake)
{
	struct fx f;

	fx_open(&f, T_KV_RING);
	expect_broken_by(&f, SHM_EV_REMOVED, t_rec_removed(0, 5, f.ext, 0));
}

Test(ctl_kv_events_fault, removed_of_too_many_ids_breaks_the_intake)
{
	struct fx f;
	uint32_t n = SHM_EV_MAX_BLOCKS + 1;
	uint64_t *ext = t_calloc(n, 8);

	fx_open(&f, T_KV_BIG_RING);
	t_kv_ext(33, n, ext);
	expect_broken_by(&f, SHM_EV_REMOVED, t_rec_removed(0, 5, ext, n));
	free(ext);
}

Test(ctl_kv_events_fault, cleared_of_a_wrong_length_breaks_the_intake)
{
	static const int delta[] = {-1, 1, 8, -16};

	for (size_t i = 0; i < sizeof(delta) / sizeof(delta[0]); i++) {
		struct fx f;
		struct t_rec r;

		fx_open(&f, T_KV_RING);
		r = t_rec_cleared(0, 5);
		t_rec_resize(&r, r.len + (size_t)delta[i]);
		expect_broken_by(&f, SHM_EV_CLEARED, r);
	}
}

Test(ctl_kv_events_fault, cleared_with_reserved_bits_breaks_the_intake)
{
	struct fx f;
	struct t_rec r;

	fx_open(&f, T_KV_RING);
	r = t_rec_cleared(0, 5);
	((struct shm_ev_cleared *)r.p)->reserved = 1u << 31;
	expect_broken_by(&f, SHM_EV_CLEARED, r);
}

Test(ctl_kv_events_fault, load_of_a_wrong_length_breaks_the_intake)
{
	static const int delta[] = {-1, 1, 8, -24};

	for (size_t i = 0; i < sizeof(delta) / sizeof(delta[0]); i++) {
		struct fx f;
		struct t_rec r;

		fx_open(&f, T_KV_RING);
		r = t_rec_load(1, 999, 9);
		t_rec_resize(&r, r.len + (size_t)delta[i]);
		expect_broken_by(&f, SHM_EV_LOAD, r);
	}
}

Test(ctl_kv_events_fault, load_with_reserved_bits_breaks_the_intake)
{
	struct fx f;
	struct t_rec r;

	fx_open(&f, T_KV_RING);
	r = t_rec_load(1, 999, 9);
	((struct shm_ev_load *)r.p)->reserved = 1;
	expect_broken_by(&f, SHM_EV_LOAD, r);
}

/*
 * The ring's head, moved by @head_delta after a good record was published: a worker that no
 * longer follows the ring's rules. The intake notices when it reads the head again.
 */
static void expect_ring_broken(uint32_t head_delta)
{
	struct fx f;
	struct shm_ring_shared *sh;

	fx_open(&f, T_KV_RING);
	cr_assert_eq(t_kv_drain(&f.s), 1);
	t_kv_stored(&f.s, 0, 2, &f.ext[1], f.ext + 2, f.local + 2, 2);
	sh = f.s.mem;
	atomic_store(&sh->head, atomic_load(&sh->head) + head_delta);
	cr_expect_eq(t_kv_drain(&f.s), -EBADMSG);
	cr_expect(f.s.k.broken);
	cr_expect_eq(f.s.k.stats.malformed, 1);
	cr_expect_eq(f.s.k.stats.events, 1, "the record under the bad head is not applied");
	cr_expect_eq(t_kv_depth(&f.s, 0, f.local, N), 2);
	cr_expect_eq(ctl_kv_drain(&f.s.k, 1), -EBADMSG);
	t_kv_close(&f.s);
}

Test(ctl_kv_events_fault, a_head_past_the_tail_by_more_than_the_ring_breaks_the_intake)
{
	expect_ring_broken(T_KV_RING + 8);
	expect_ring_broken(0u - 80); /* the record is 72 bytes: 8 behind the tail */
	expect_ring_broken(4);	     /* a head not 8-byte aligned */
}

Test(ctl_kv_events_fault, the_largest_events_are_accepted)
{
	struct fx f;
	uint32_t n = SHM_EV_MAX_BLOCKS;
	uint64_t *ext = t_calloc(n, 8), *local = t_calloc(n, 8);

	fx_open(&f, T_KV_BIG_RING);
	cr_assert_eq(t_kv_drain(&f.s), 1);
	t_kv_ext(34, n, ext);
	t_locals(34, n, local);
	t_kv_stored(&f.s, 1, 1, NULL, ext, local, n);
	cr_assert_eq(t_kv_drain(&f.s), 1);
	cr_expect_eq(t_kv_blocks(&f.s, 1), n);
	cr_expect_eq(t_kv_depth(&f.s, 1, local, n), n);
	t_kv_removed(&f.s, 1, 2, ext, n);
	cr_assert_eq(t_kv_drain(&f.s), 1);
	cr_expect_eq(t_kv_blocks(&f.s, 1), 0);
	cr_expect_eq(f.s.k.stats.blocks_stored, n + 2);
	cr_expect_eq(f.s.k.stats.blocks_removed, n);
	t_kv_expect_clean(&f.s);
	t_kv_close(&f.s);
	free(ext);
	free(local);
}

/*
 * A long STORED (300 blocks) that repeats an id, or names its parent, near its end is refused
 * whole, as pdx_store() refuses a shorter one (routing-semantics §2): the intake hands the
 * index the whole event at once, never a chunk of it.
 */
Test(ctl_kv_events_fault, a_repeat_in_a_later_chunk_refuses_the_whole_event)
{
	enum { M = 300 };
	struct fx f;
	uint64_t local[M + 2], ext[M + 2];

	fx_open(&f, T_KV_RING);
	t_locals(35, M + 2, local);
	t_kv_ext(35, M + 2, ext);
	ext[280] = ext[10]; /* chunks 0-255 and 256-299: the repeat is in the second */
	t_kv_stored(&f.s, 1, 1, NULL, ext, local, M);
	t_kv_ext(35, M + 2, ext);
	t_kv_stored(&f.s, 1, 2, NULL, ext, local, 1);
	ext[290] = ext[0]; /* the parent, in the second chunk */
	t_kv_stored(&f.s, 1, 3, &ext[0], ext + 1, local + 1, M);
	cr_assert_eq(t_kv_drain(&f.s), 4);
	cr_expect_eq(f.s.k.stats.refused, 2);
	cr_expect_eq(t_stats(&f.s.t.x).store_repeat_id, 1);
	cr_expect_eq(t_stats(&f.s.t.x).store_self_parent, 1);
	cr_expect_eq(t_kv_blocks(&f.s, 1), 1, "only the one-block event applied");
	cr_expect_eq(f.s.k.stats.blocks_stored, 3, "2 blocks on rank 0, 1 on rank 1");
	t_kv_close(&f.s);
}
