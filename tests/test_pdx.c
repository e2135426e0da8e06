/*
 * The prefix index (index.h), rule by rule: what each KV event does to the answers, every
 * rejection path and the counter it moves, event ids, reader handles, many targets, and memory
 * that returns to where it started once the blocks are gone.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include <criterion/criterion.h>

#include "helpers.h"

TestSuite(pdx, .timeout = 60);

/* A prompt of n blocks named by @tag: locals, and the STORED blocks with their ext ids. */
struct prompt {
	size_t n;
	uint64_t local[16];
	struct pdx_block b[16];
};

static void prompt_init(struct prompt *p, uint64_t tag, size_t n)
{
	cr_assert_leq(n, 16);
	p->n = n;
	t_locals(tag, n, p->local);
	t_blocks(p->local, 0, n, 0, p->b);
}

/* A prompt that shares its first @shared blocks with @base and then goes its own way. */
static void prompt_branch(struct prompt *p, const struct prompt *base, size_t shared, uint64_t tag,
			  size_t n)
{
	prompt_init(p, tag, n);
	memcpy(p->local, base->local, shared * sizeof(uint64_t));
	t_blocks(p->local, 0, n, 0, p->b);
}

static uint64_t ext(const struct prompt *p, size_t i)
{
	return p->b[i].ext_id;
}

/* Store blocks [from, from + n) of @p on @target, chained after block from - 1. */
static long store(struct t_pdx *t, uint32_t target, const struct prompt *p, size_t from, size_t n)
{
	uint64_t parent = from ? ext(p, from - 1) : 0;

	return pdx_store(&t->x, target, from ? &parent : NULL, p->b + from, n);
}

static long remove1(struct t_pdx *t, uint32_t target, uint64_t ext_id)
{
	return pdx_remove(&t->x, target, &ext_id, 1);
}

Test(pdx, init_rejects_limits_out_of_range)
{
	struct pdx x;
	struct pdx_config cfg = {.max_targets = PDX_TARGETS_LIMIT + 1};

	cr_expect_eq(pdx_init(&x, &cfg), -EINVAL, "max_targets over PDX_TARGETS_LIMIT");
	cfg = (struct pdx_config){.max_readers = PDX_READERS_LIMIT + 1};
	cr_expect_eq(pdx_init(&x, &cfg), -EINVAL, "max_readers over PDX_READERS_LIMIT");
}

Test(pdx, null_config_gives_default_target_count)
{
	struct t_pdx t;
	struct pdx_config *none = NULL;
	struct prompt a;

	cr_assert_eq(pdx_init(&t.x, none), 0);
	cr_assert_eq(pdx_reader_attach(&t.x, &t.r), 0);
	t.max_targets = PDX_DEFAULT_TARGETS;
	t.out = t_calloc(PDX_DEFAULT_TARGETS, sizeof(*t.out));
	prompt_init(&a, 1, 2);
	cr_expect_eq(store(&t, PDX_DEFAULT_TARGETS - 1, &a, 0, 2), 2);
	cr_expect_eq(store(&t, PDX_DEFAULT_TARGETS, &a, 0, 2), -EINVAL);
	size_t k = t_match(&t, a.local, 2);

	cr_expect_eq(k, 1);
	cr_expect_eq(t_depth(&t, k, PDX_DEFAULT_TARGETS - 1), 2);
	t_pdx_close(&t);
}

Test(pdx, store_then_match_reports_the_stored_depth)
{
	struct t_pdx t;
	struct prompt a, other;
	uint64_t longer[8];

	t_pdx_open(&t, 8, 0);
	prompt_init(&a, 1, 5);
	prompt_init(&other, 2, 5);
	cr_assert_eq(store(&t, 3, &a, 0, 5), 5, "store returns the blocks newly held");

	size_t k = t_match(&t, a.local, 5);

	cr_expect_eq(k, 1);
	cr_expect_eq(t.out[0].target, 3);
	cr_expect_eq(t.out[0].depth, 5);
	k = t_match(&t, a.local, 3);
	cr_expect(k == 1 && t.out[0].depth == 3, "a shorter query is held to its end");
	memcpy(longer, a.local, sizeof(a.local[0]) * 5);
	t_locals(9, 3, longer + 5);
	k = t_match(&t, longer, 8);
	cr_expect(k == 1 && t.out[0].depth == 5, "a longer query matches the stored blocks");
	cr_expect_eq(t_match(&t, other.local, 5), 0, "an unrelated prompt matches nothing");
	cr_expect_eq(t_match(&t, a.local, 0), 0, "an empty query matches nothing");

	struct pdx_stats s = t_stats(&t.x);

	cr_expect_eq(s.blocks_stored, 5);
	cr_expect_eq(s.entries, 5);
	cr_expect_eq(pdx_target_blocks(&t.x, 3), 5);
	cr_expect_eq(pdx_target_blocks(&t.x, 2), 0);
	t_pdx_close(&t);
}

Test(pdx, store_with_parent_extends_the_prefix)
{
	struct t_pdx t;
	struct prompt a;

	t_pdx_open(&t, 8, 0);
	prompt_init(&a, 1, 9);
	cr_assert_eq(store(&t, 0, &a, 0, 2), 2);
	cr_assert_eq(store(&t, 0, &a, 2, 3), 3);
	cr_assert_eq(store(&t, 0, &a, 5, 4), 4);

	size_t k = t_match(&t, a.local, 9);

	cr_expect(k == 1 && t.out[0].depth == 9, "depth %u after three chained events",
		  k ? t.out[0].depth : 0);
	cr_expect_eq(t_stats(&t.x).entries, 9);
	t_pdx_close(&t);
}

Test(pdx, depth_stops_at_the_first_block_a_target_lacks)
{
	struct t_pdx t;
	struct prompt a, shifted;

	t_pdx_open(&t, 8, 0);
	prompt_init(&a, 1, 4);
	/* Target 0 holds blocks 0, 1 and 3 of a; target 1 holds 1..3 but not 0. */
	cr_assert_eq(store(&t, 0, &a, 0, 4), 4);
	cr_assert_eq(remove1(&t, 0, ext(&a, 2)), 1);
	cr_assert_eq(store(&t, 1, &a, 0, 4), 4);
	cr_assert_eq(remove1(&t, 1, ext(&a, 0)), 1);
	/* Target 2 holds the same local hashes as a's blocks 1..3, but after another block 0. */
	prompt_init(&shifted, 7, 4);
	memcpy(shifted.local + 1, a.local + 1, 3 * sizeof(uint64_t));
	t_blocks(shifted.local, 0, 4, 0, shifted.b);
	cr_assert_eq(store(&t, 2, &shifted, 0, 4), 4);

	size_t k = t_match(&t, a.local, 4);

	cr_expect_eq(k, 1, "only target 0 holds block 0");
	cr_expect_eq(t_depth(&t, k, 0), 2, "a hole at block 2 stops the count");
	cr_expect_eq(pdx_target_blocks(&t.x, 1), 3);
	cr_expect_eq(t_match(&t, a.local + 1, 3), 0,
		     "blocks 1..3 on their own are another prefix: nobody holds it");
	t_pdx_close(&t);
}

Test(pdx, the_same_blocks_in_another_order_are_another_prefix)
{
	struct t_pdx t;
	struct prompt a, swapped;

	/* Documents x and y after one system prompt s: [s, x, y] is held, [s, y, x] is asked. */
	t_pdx_open(&t, 8, 0);
	prompt_init(&a, 1, 3);
	prompt_init(&swapped, 1, 3);
	swapped.local[1] = a.local[2];
	swapped.local[2] = a.local[1];
	t_blocks(swapped.local, 0, 3, 0, swapped.b);
	cr_assert_eq(store(&t, 0, &a, 0, 3), 3);

	size_t k = t_match(&t, swapped.local, 3);

	cr_expect(k == 1 && t_depth(&t, k, 0) == 1, "depth %u, want 1: only block 0 is shared",
		  k ? t.out[0].depth : 0);
	cr_expect_eq(t_depth(&t, t_match(&t, a.local, 3), 0), 3);
	t_pdx_close(&t);
}

Test(pdx, a_repeated_block_is_not_a_match_for_another_block)
{
	struct t_pdx t;
	struct prompt held, asked;

	/* Held [a, b, c, b]; asked [a, c, b, b]: equal multisets of blocks after block 0. */
	t_pdx_open(&t, 8, 0);
	prompt_init(&held, 2, 4);
	held.local[3] = held.local[1];
	t_blocks(held.local, 0, 4, 0, held.b);
	prompt_init(&asked, 2, 4);
	asked.local[1] = held.local[2];
	asked.local[2] = held.local[1];
	asked.local[3] = held.local[1];
	t_blocks(asked.local, 0, 4, 0, asked.b);
	cr_assert_eq(store(&t, 0, &held, 0, 4), 4);
	cr_expect_eq(t_depth(&t, t_match(&t, asked.local, 4), 0), 1);
	cr_expect_eq(t_depth(&t, t_match(&t, asked.local, 2), 0), 1);
	cr_expect_eq(t_depth(&t, t_match(&t, held.local, 4), 0), 4);
	t_pdx_close(&t);
}

Test(pdx, swapped_blocks_whose_hashes_differ_in_one_bit_are_another_prefix)
{
	struct t_pdx t;
	struct prompt held, asked;
	int confused = 0, first = -1;

	/*
	 * Local hashes are whatever the caller says they are. Blocks a and a ^ 2^k differ as
	 * much as any two blocks do: asked in the other order they are another prefix. Any
	 * check weaker than the sequence hash (a sum, say) tends to confuse such pairs.
	 */
	t_pdx_open(&t, 8, 0);
	for (int k = 0; k < 64; k++) {
		prompt_init(&held, 300 + (uint64_t)k, 4);
		held.local[2] = held.local[1] ^ (1ull << k);
		t_blocks(held.local, 0, 4, 0, held.b);
		asked = held;
		asked.local[1] = held.local[2];
		asked.local[2] = held.local[1];
		cr_assert_eq(store(&t, (uint32_t)k % 8, &held, 0, 4), 4);

		uint32_t d = t_depth(&t, t_match(&t, asked.local, 4), (uint32_t)k % 8);

		if (d != 1 && first < 0)
			first = k;
		confused += d != 1;
	}
	cr_expect_eq(confused, 0, "%d of 64 bits confused, the first at bit %d", confused, first);
	t_pdx_close(&t);
}

Test(pdx, a_refilled_hole_restores_the_depth)
{
	struct t_pdx t;
	struct prompt a;

	t_pdx_open(&t, 8, 0);
	prompt_init(&a, 1, 6);
	cr_assert_eq(store(&t, 0, &a, 0, 6), 6);
	cr_assert_eq(remove1(&t, 0, ext(&a, 2)), 1);
	cr_assert_eq(t_depth(&t, t_match(&t, a.local, 6), 0), 2);
	cr_assert_eq(store(&t, 0, &a, 2, 1), 1, "block 2 again, after block 1");
	cr_expect_eq(t_depth(&t, t_match(&t, a.local, 6), 0), 6);
	cr_expect_eq(pdx_target_blocks(&t.x, 0), 6);
	t_pdx_close(&t);
}

Test(pdx, targets_sharing_a_prefix_get_their_own_depths)
{
	struct t_pdx t;
	struct prompt a, b;

	t_pdx_open(&t, 8, 0);
	prompt_init(&a, 1, 8);
	prompt_branch(&b, &a, 3, 2, 7);
	cr_assert_eq(store(&t, 0, &a, 0, 8), 8);
	cr_assert_eq(store(&t, 1, &b, 0, 7), 7);

	size_t k = t_match(&t, a.local, 8);

	cr_expect(k == 2 && t_depth(&t, k, 0) == 8 && t_depth(&t, k, 1) == 3);
	k = t_match(&t, b.local, 7);
	cr_expect(k == 2 && t_depth(&t, k, 0) == 3 && t_depth(&t, k, 1) == 7);
	cr_expect_eq(t_stats(&t.x).entries, 12, "the 3 shared blocks are one entry each");

	uint64_t tail[5];

	for (size_t i = 0; i < 5; i++)
		tail[i] = ext(&a, 3 + i);
	cr_assert_eq(pdx_remove(&t.x, 0, tail, 5), 5);
	cr_expect_eq(t_stats(&t.x).entries, 7);
	k = t_match(&t, a.local, 8);
	cr_expect(k == 2 && t_depth(&t, k, 0) == 3 && t_depth(&t, k, 1) == 3);
	t_pdx_close(&t);
}

Test(pdx, store_with_unknown_parent_is_dropped_and_counted)
{
	struct t_pdx t;
	struct prompt a;
	uint64_t unknown = 0xDEADBEEF;

	t_pdx_open(&t, 8, 0);
	prompt_init(&a, 1, 6);
	cr_assert_eq(store(&t, 0, &a, 0, 3), 3);
	cr_assert_eq(store(&t, 1, &a, 0, 4), 4);

	struct pdx_stats before = t_stats(&t.x);

	cr_expect_eq(pdx_store(&t.x, 0, &unknown, a.b + 3, 3), -ENOENT);
	cr_expect_eq(store(&t, 2, &a, 4, 2), -ENOENT, "the parent is held by others only");

	struct pdx_stats s = t_stats(&t.x);

	cr_expect_eq(s.store_unknown_parent, before.store_unknown_parent + 2);
	cr_expect_eq(s.entries, before.entries, "nothing applied");
	cr_expect_eq(s.blocks_stored, before.blocks_stored);
	cr_expect_eq(pdx_target_blocks(&t.x, 0), 3);
	cr_expect_eq(pdx_target_blocks(&t.x, 2), 0);

	size_t k = t_match(&t, a.local, 6);

	cr_expect(k == 2 && t_depth(&t, k, 0) == 3 && t_depth(&t, k, 1) == 4);
	t_pdx_close(&t);
}

Test(pdx, store_naming_itself_as_parent_is_rejected)
{
	struct t_pdx t;
	struct prompt a;
	struct pdx_block bad[2];

	t_pdx_open(&t, 8, 0);
	prompt_init(&a, 1, 4);
	cr_assert_eq(store(&t, 0, &a, 0, 2), 2);

	uint64_t parent = ext(&a, 1);

	memcpy(bad, a.b + 2, sizeof(bad));
	bad[0].ext_id = parent;
	cr_expect_eq(pdx_store(&t.x, 0, &parent, bad, 2), -EINVAL);

	struct pdx_stats s = t_stats(&t.x);

	cr_expect_eq(s.store_self_parent, 1);
	cr_expect_eq(s.entries, 2, "nothing applied");
	cr_expect_eq(pdx_target_blocks(&t.x, 0), 2);
	cr_expect_eq(t_depth(&t, t_match(&t, a.local, 4), 0), 2);

	/* With a parent the target does not hold either: still rejected, still nothing applied. */
	uint64_t stranger = 0x5151;

	bad[0].ext_id = stranger;
	cr_expect_lt(pdx_store(&t.x, 0, &stranger, bad, 2), 0);
	cr_expect_eq(t_stats(&t.x).entries, 2);
	t_pdx_close(&t);
}

Test(pdx, store_repeating_an_id_within_the_event_is_rejected)
{
	struct t_pdx t;
	struct prompt a;
	struct pdx_block bad[4];

	t_pdx_open(&t, 8, 0);
	prompt_init(&a, 1, 6);
	memcpy(bad, a.b, sizeof(bad));
	bad[3].ext_id = bad[1].ext_id;
	cr_expect_eq(pdx_store(&t.x, 0, NULL, bad, 4), -EINVAL);
	memcpy(bad, a.b, sizeof(bad));
	bad[1].ext_id = bad[0].ext_id;
	cr_expect_eq(pdx_store(&t.x, 0, NULL, bad, 2), -EINVAL, "adjacent repeat");

	struct pdx_stats s = t_stats(&t.x);

	cr_expect_eq(s.store_repeat_id, 2);
	cr_expect_eq(s.entries, 0, "nothing applied");
	cr_expect_eq(s.blocks_stored, 0);
	cr_expect_eq(pdx_target_blocks(&t.x, 0), 0);
	cr_expect_eq(t_match(&t, a.local, 4), 0);

	/* After a parent it holds: still nothing applied. */
	cr_assert_eq(store(&t, 0, &a, 0, 2), 2);
	memcpy(bad, a.b + 2, sizeof(bad));
	bad[2].ext_id = bad[0].ext_id;

	uint64_t parent = ext(&a, 1);

	cr_expect_eq(pdx_store(&t.x, 0, &parent, bad, 4), -EINVAL);
	cr_expect_eq(t_stats(&t.x).store_repeat_id, 3);
	cr_expect_eq(pdx_target_blocks(&t.x, 0), 2);
	cr_expect_eq(t_depth(&t, t_match(&t, a.local, 6), 0), 2);
	t_pdx_close(&t);
}

Test(pdx, conflicting_external_id_stops_the_event_and_keeps_blocks_before_it)
{
	struct t_pdx t;
	struct prompt a, b;

	t_pdx_open(&t, 8, 0);
	prompt_init(&a, 1, 3);
	prompt_init(&b, 2, 3);
	cr_assert_eq(store(&t, 0, &a, 0, 3), 3);
	b.b[1].ext_id = ext(&a, 1); /* names a's block 1 on target 0 */
	cr_expect_eq(store(&t, 0, &b, 0, 3), -EEXIST);

	struct pdx_stats s = t_stats(&t.x);

	cr_expect_eq(s.store_id_conflict, 1);
	cr_expect_eq(pdx_target_blocks(&t.x, 0), 4, "b's block 0 stays, blocks 1 and 2 do not");
	cr_expect_eq(s.entries, 4);
	cr_expect_eq(t_depth(&t, t_match(&t, b.local, 3), 0), 1);
	cr_expect_eq(t_depth(&t, t_match(&t, a.local, 3), 0), 3, "a is untouched");

	/* The id still names a's block 1. */
	cr_expect_eq(remove1(&t, 0, ext(&a, 1)), 1);
	cr_expect_eq(t_depth(&t, t_match(&t, a.local, 3), 0), 1);
	cr_expect_eq(t_depth(&t, t_match(&t, b.local, 3), 0), 1);

	/* Another target may use the same id for its own block. */
	cr_expect_eq(store(&t, 1, &b, 0, 3), 3);
	t_pdx_close(&t);
}

Test(pdx, storing_a_held_block_again_is_counted_as_duplicate)
{
	struct t_pdx t;
	struct prompt a;

	t_pdx_open(&t, 8, 0);
	prompt_init(&a, 1, 5);
	cr_assert_eq(store(&t, 0, &a, 0, 3), 3);
	cr_expect_eq(store(&t, 0, &a, 0, 3), 0, "nothing newly held");
	cr_expect_eq(t_stats(&t.x).store_dup_block, 3);
	cr_expect_eq(store(&t, 0, &a, 0, 5), 2, "only blocks 3 and 4 are new");
	cr_expect_eq(t_stats(&t.x).store_dup_block, 6);
	cr_expect_eq(store(&t, 1, &a, 0, 5), 5, "a block held by another target is new here");

	struct pdx_stats s = t_stats(&t.x);

	cr_expect_eq(s.store_dup_block, 6);
	cr_expect_eq(s.blocks_stored, 10);
	cr_expect_eq(s.entries, 5);
	cr_expect_eq(pdx_target_blocks(&t.x, 0), 5);

	size_t k = t_match(&t, a.local, 5);

	cr_expect(k == 2 && t_depth(&t, k, 0) == 5 && t_depth(&t, k, 1) == 5);
	t_pdx_close(&t);
}

Test(pdx, remove_of_unknown_id_is_counted_and_ignored)
{
	struct t_pdx t;
	struct prompt a, b;

	t_pdx_open(&t, 8, 0);
	prompt_init(&a, 1, 4);
	prompt_init(&b, 2, 2);
	cr_assert_eq(store(&t, 0, &a, 0, 4), 4);
	cr_assert_eq(store(&t, 1, &b, 0, 2), 2);

	uint64_t ids[] = {0x1234, ext(&a, 3), ext(&b, 0), ext(&a, 3)};

	cr_expect_eq(pdx_remove(&t.x, 0, ids, 4), 1,
		     "a's block 3 only; b's block is target 1's, and the repeat is gone");

	struct pdx_stats s = t_stats(&t.x);

	cr_expect_eq(s.remove_unknown, 3);
	cr_expect_eq(s.blocks_removed, 1);
	cr_expect_eq(pdx_target_blocks(&t.x, 0), 3);
	cr_expect_eq(pdx_target_blocks(&t.x, 1), 2);
	cr_expect_eq(t_depth(&t, t_match(&t, a.local, 4), 0), 3);
	cr_expect_eq(t_depth(&t, t_match(&t, b.local, 2), 1), 2);
	cr_expect_eq(remove1(&t, 5, 0x1234), 0, "a target that never stored anything");
	cr_expect_eq(t_stats(&t.x).remove_unknown, 4);
	t_pdx_close(&t);
}

Test(pdx, entry_is_freed_when_its_last_holder_removes_it)
{
	struct t_pdx t;
	struct prompt a;
	uint64_t ids[4];

	t_pdx_open(&t, 8, 0);
	prompt_init(&a, 1, 4);
	for (size_t i = 0; i < 4; i++)
		ids[i] = ext(&a, i);
	cr_assert_eq(store(&t, 0, &a, 0, 4), 4);
	cr_assert_eq(store(&t, 1, &a, 0, 4), 4);
	cr_expect_eq(pdx_remove(&t.x, 0, ids, 4), 4);
	cr_expect_eq(t_stats(&t.x).entries, 4, "target 1 still holds them");
	cr_expect_eq(t_depth(&t, t_match(&t, a.local, 4), 1), 4);
	cr_expect_eq(pdx_remove(&t.x, 1, ids, 4), 4);

	struct pdx_stats s = t_stats(&t.x);

	cr_expect_eq(s.entries, 0);
	cr_expect_eq(s.holder_sets, 0);
	cr_expect_eq(s.blocks_removed, 8);
	cr_expect_eq(t_match(&t, a.local, 4), 0);
	t_pdx_close(&t);
}

Test(pdx, cleared_target_holds_nothing_and_keeps_its_event_sequence)
{
	struct t_pdx t;
	struct prompt a, b;

	t_pdx_open(&t, 8, 0);
	prompt_init(&a, 1, 4);
	prompt_branch(&b, &a, 2, 2, 5);
	cr_assert_eq(pdx_event_seq(&t.x, 0, 10), 0);
	cr_assert_eq(store(&t, 0, &a, 0, 4), 4);
	cr_assert_eq(store(&t, 0, &b, 2, 3), 3);
	cr_assert_eq(store(&t, 1, &a, 0, 2), 2);
	cr_expect_eq(pdx_clear(&t.x, 0), 7);

	size_t k = t_match(&t, a.local, 4);

	cr_expect(k == 1 && t_depth(&t, k, 1) == 2, "only target 1's blocks are left");
	cr_expect_eq(pdx_target_blocks(&t.x, 0), 0);
	cr_expect_eq(t_stats(&t.x).entries, 2);
	cr_expect_eq(t_stats(&t.x).blocks_removed, 7);
	cr_expect_eq(store(&t, 0, &a, 2, 1), -ENOENT, "its external ids are forgotten");
	cr_expect_eq(pdx_event_seq(&t.x, 0, 10), -EALREADY, "its event sequence is not");
	cr_expect_eq(pdx_event_seq(&t.x, 0, 11), 0);
	cr_expect_eq(pdx_clear(&t.x, 0), 0, "clearing an empty target drops nothing");
	cr_expect_eq(store(&t, 0, &a, 0, 4), 4, "and it can store again from block 0");
	cr_expect_eq(t_depth(&t, t_match(&t, a.local, 4), 0), 4);
	t_pdx_close(&t);
}

Test(pdx, dropped_target_forgets_blocks_ids_and_event_sequence)
{
	struct t_pdx t;
	struct prompt a;

	t_pdx_open(&t, 8, 0);
	prompt_init(&a, 1, 4);
	cr_assert_eq(pdx_event_seq(&t.x, 2, 100), 0);
	cr_assert_eq(store(&t, 2, &a, 0, 4), 4);
	cr_assert_eq(store(&t, 3, &a, 0, 1), 1);
	cr_expect_eq(pdx_drop_target(&t.x, 2), 4);
	cr_expect_eq(pdx_target_blocks(&t.x, 2), 0);
	cr_expect_eq(t_stats(&t.x).entries, 1);
	cr_expect_eq(remove1(&t, 2, ext(&a, 0)), 0, "its external ids are forgotten");
	cr_expect_eq(pdx_event_seq(&t.x, 2, 5), 0, "a new sequence starts at any id");
	cr_expect_eq(pdx_event_seq(&t.x, 2, 6), 0);

	size_t k = t_match(&t, a.local, 4);

	cr_expect(k == 1 && t_depth(&t, k, 3) == 1);
	cr_expect_eq(pdx_drop_target(&t.x, 2), 0);
	t_pdx_close(&t);
}

Test(pdx, first_event_id_starts_the_sequence)
{
	struct t_pdx t;

	t_pdx_open(&t, 8, 0);
	cr_expect_eq(pdx_event_seq(&t.x, 0, 1000), 0);
	cr_expect_eq(pdx_event_seq(&t.x, 1, 0), 0, "id 0 is a valid first id");
	cr_expect_eq(pdx_event_seq(&t.x, 1, 0), -EALREADY, "and then a duplicate");
	cr_expect_eq(pdx_event_seq(&t.x, 1, 1), 0);
	cr_expect_eq(pdx_event_seq(&t.x, 0, 1001), 0, "targets have separate sequences");

	struct pdx_stats s = t_stats(&t.x);

	cr_expect_eq(s.events_gap, 0);
	cr_expect_eq(s.events_missing, 0);
	cr_expect_eq(s.events_dup, 1);
	t_pdx_close(&t);
}

Test(pdx, event_id_gap_returns_the_number_skipped_and_is_counted)
{
	struct t_pdx t;

	t_pdx_open(&t, 8, 0);
	cr_assert_eq(pdx_event_seq(&t.x, 4, 1000), 0);
	cr_expect_eq(pdx_event_seq(&t.x, 4, 1005), 4, "1001..1004 are missing");
	cr_expect_eq(pdx_event_seq(&t.x, 4, 1006), 0, "the sequence goes on from the new id");
	cr_expect_eq(pdx_event_seq(&t.x, 4, 1008), 1);

	struct pdx_stats s = t_stats(&t.x);

	cr_expect_eq(s.events_gap, 2);
	cr_expect_eq(s.events_missing, 5);
	cr_expect_eq(s.events_dup, 0);
	t_pdx_close(&t);
}

Test(pdx, repeated_or_older_event_id_returns_ealready_and_is_counted)
{
	struct t_pdx t;

	t_pdx_open(&t, 8, 0);
	cr_assert_eq(pdx_event_seq(&t.x, 0, 50), 0);
	cr_assert_eq(pdx_event_seq(&t.x, 0, 51), 0);
	cr_expect_eq(pdx_event_seq(&t.x, 0, 51), -EALREADY);
	cr_expect_eq(pdx_event_seq(&t.x, 0, 3), -EALREADY);
	cr_expect_eq(pdx_event_seq(&t.x, 0, 0), -EALREADY);
	cr_expect_eq(pdx_event_seq(&t.x, 0, 52), 0, "a duplicate does not move the sequence");

	struct pdx_stats s = t_stats(&t.x);

	cr_expect_eq(s.events_dup, 3);
	cr_expect_eq(s.events_gap, 0);
	t_pdx_close(&t);
}

static uint64_t bad_targets(const struct t_pdx *t)
{
	return t_stats(&t->x).bad_target;
}

Test(pdx, bad_target_ids_are_rejected_and_counted)
{
	struct t_pdx t;
	struct prompt a;
	uint32_t tokens[32] = {0};
	uint64_t ids[2] = {1, 2};
	const uint32_t bad[] = {8, 9, PDX_TARGETS_LIMIT, UINT32_MAX};

	t_pdx_open(&t, 8, 0);
	prompt_init(&a, 1, 2);
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		uint32_t b = bad[i];
		uint64_t n = bad_targets(&t);

		/* Every event for a bad target is rejected and counted once. */
		cr_expect_eq(store(&t, b, &a, 0, 2), -EINVAL, "store on %u", b);
		cr_expect_eq(bad_targets(&t), ++n, "store on %u not counted", b);
		cr_expect_eq(pdx_store_tokens(&t.x, b, NULL, ids, 2, tokens, 16, DP_HASH_SEED),
			     -EINVAL, "store_tokens on %u", b);
		cr_expect_eq(bad_targets(&t), ++n, "store_tokens on %u not counted", b);
		cr_expect_eq(pdx_remove(&t.x, b, ids, 2), -EINVAL, "remove on %u", b);
		cr_expect_eq(bad_targets(&t), ++n, "remove on %u not counted", b);
		cr_expect_eq(pdx_clear(&t.x, b), -EINVAL, "clear on %u", b);
		cr_expect_eq(bad_targets(&t), ++n, "clear on %u not counted", b);
		/* The contract leaves open whether these two count as events: at most once. */
		cr_expect_eq(pdx_drop_target(&t.x, b), -EINVAL, "drop on %u", b);
		cr_expect_leq(bad_targets(&t), n + 1, "drop on %u counted twice", b);
		n = bad_targets(&t);
		cr_expect_eq(pdx_event_seq(&t.x, b, 1), -EINVAL, "event_seq on %u", b);
		cr_expect_leq(bad_targets(&t), n + 1, "event_seq on %u counted twice", b);
		cr_expect_eq(pdx_target_blocks(&t.x, b), 0);
	}

	struct pdx_stats s = t_stats(&t.x);

	cr_expect_eq(s.entries, 0);
	cr_expect_eq(s.blocks_stored, 0);
	cr_expect_eq(t_match(&t, a.local, 2), 0);
	t_pdx_close(&t);
}

Test(pdx, store_tokens_equals_store_of_hashed_blocks)
{
	struct t_pdx t;
	enum { BS = 16, N = 6 };
	uint32_t tokens[N * BS + 5];
	uint64_t local[N], ids[N];
	struct pdx_block blocks[N];
	uint64_t seed = dp_hash_seed("adapter", 7, "tenant", 6);

	t_pdx_open(&t, 8, 0);
	for (size_t i = 0; i < sizeof(tokens) / sizeof(tokens[0]); i++)
		tokens[i] = (uint32_t)t_mix64(i + 17);
	cr_assert_eq(dp_hash_blocks(tokens, N * BS, BS, seed, local), N);
	t_blocks(local, 0, N, 0, blocks);
	for (size_t i = 0; i < N; i++)
		ids[i] = blocks[i].ext_id;

	cr_expect_eq(pdx_store_tokens(&t.x, 0, NULL, ids, 2, tokens, BS, seed), 2);
	cr_expect_eq(pdx_store_tokens(&t.x, 0, &ids[1], ids + 2, N - 2, tokens + 2 * BS, BS, seed),
		     N - 2, "chained after a parent");
	cr_expect_eq(pdx_store(&t.x, 1, NULL, blocks, N), N);
	cr_expect_eq(t_stats(&t.x).entries, N, "both targets hold the same entries");

	size_t k = t_match(&t, local, N);

	cr_expect(k == 2 && t_depth(&t, k, 0) == N && t_depth(&t, k, 1) == N);
	cr_expect_eq(pdx_remove(&t.x, 0, ids, N), N, "the ids name the blocks");
	cr_expect_eq(pdx_store_tokens(&t.x, 2, NULL, ids, 2, tokens, 24, seed), -EINVAL);
	cr_expect_eq(pdx_store_tokens(&t.x, 2, NULL, ids, 2, tokens, 0, seed), -EINVAL);
	cr_expect_eq(pdx_target_blocks(&t.x, 2), 0);
	cr_expect_eq(t_stats(&t.x).entries, N);
	t_pdx_close(&t);
}

Test(pdx, match_tokens_equals_match_of_hashed_blocks)
{
	struct t_pdx t;
	enum { BS = 32, N = 7 };
	uint32_t tokens[N * BS + 9];
	uint64_t local[N];
	struct pdx_block blocks[N];
	struct pdx_overlap want[8];
	const size_t ntokens = sizeof(tokens) / sizeof(tokens[0]);

	t_pdx_open(&t, 8, 0);
	for (size_t i = 0; i < ntokens; i++)
		tokens[i] = (uint32_t)t_mix64(i ^ 0xF00D);
	cr_assert_eq(dp_hash_blocks(tokens, ntokens, BS, DP_HASH_SEED, local), N);
	t_blocks(local, 0, N, 0, blocks);
	cr_assert_eq(pdx_store(&t.x, 2, NULL, blocks, 5), 5);
	cr_assert_eq(pdx_store(&t.x, 4, NULL, blocks, N), N);
	cr_assert_eq(pdx_store(&t.x, 6, NULL, blocks, 1), 1);

	size_t k = t_match(&t, local, N);

	cr_assert_eq(k, 3);
	memcpy(want, t.out, k * sizeof(want[0]));

	long got = pdx_match_tokens(t.r, tokens, ntokens, BS, DP_HASH_SEED, t.out);

	cr_assert_eq(got, 3);
	t_sort_overlaps(t.out, (size_t)got);
	for (long i = 0; i < got; i++)
		cr_expect(t.out[i].target == want[i].target && t.out[i].depth == want[i].depth,
			  "answer %ld: (%u, %u), want (%u, %u)", i, t.out[i].target, t.out[i].depth,
			  want[i].target, want[i].depth);

	got = pdx_match_tokens(t.r, tokens, 3 * BS + 1, BS, DP_HASH_SEED, t.out);
	t_sort_overlaps(t.out, got > 0 ? (size_t)got : 0);
	cr_expect(got == 3 && t.out[0].depth == 3 && t.out[1].depth == 3 && t.out[2].depth == 1,
		  "a query of 3 full blocks and a partial one");
	cr_expect_eq(pdx_match_tokens(t.r, tokens, ntokens, BS, DP_HASH_SEED + 1, t.out), 0,
		     "another seed is another prefix");
	cr_expect_eq(pdx_match_tokens(t.r, tokens, ntokens, 48, DP_HASH_SEED, t.out), -EINVAL);
	cr_expect_eq(pdx_match_tokens(t.r, tokens, ntokens, 2048, DP_HASH_SEED, t.out), -EINVAL);
	t_pdx_close(&t);
}

Test(pdx, match_tokens_uses_at_most_PDX_MATCH_MAX_BLOCKS_blocks)
{
	struct t_pdx t;
	const size_t n = PDX_MATCH_MAX_BLOCKS + 5;
	uint32_t *tokens = t_calloc(n, sizeof(*tokens));
	uint64_t *local = t_calloc(n, sizeof(*local));
	struct pdx_block *blocks = t_calloc(n, sizeof(*blocks));

	t_pdx_open(&t, 8, 0);
	for (size_t i = 0; i < n; i++)
		tokens[i] = (uint32_t)i;
	cr_assert_eq(dp_hash_blocks(tokens, n, 1, DP_HASH_SEED, local), (long)n);
	t_blocks(local, 0, n, 0, blocks);
	cr_assert_eq(pdx_store(&t.x, 1, NULL, blocks, n), (long)n);

	size_t k = t_match(&t, local, n);

	cr_expect(k == 1 && t.out[0].depth == n, "pdx_match takes any length");
	cr_expect_eq(pdx_match_tokens(t.r, tokens, n, 1, DP_HASH_SEED, t.out), 1);
	cr_expect_eq(t.out[0].depth, PDX_MATCH_MAX_BLOCKS);
	t_pdx_close(&t);
	free(tokens);
	free(local);
	free(blocks);
}

Test(pdx, reader_attach_beyond_max_readers_returns_ebusy)
{
	struct pdx x;
	struct pdx_config cfg = {.max_targets = 4, .max_readers = 3};
	struct pdx_reader *r[4];
	struct pdx_overlap out[4];
	struct prompt a;

	cr_assert_eq(pdx_init(&x, &cfg), 0);
	for (int i = 0; i < 3; i++)
		cr_assert_eq(pdx_reader_attach(&x, &r[i]), 0, "reader %d", i);
	cr_expect_eq(pdx_reader_attach(&x, &r[3]), -EBUSY);
	pdx_reader_detach(r[1]);
	cr_expect_eq(pdx_reader_attach(&x, &r[1]), 0, "a detached handle's place is free again");
	cr_expect_eq(pdx_reader_attach(&x, &r[3]), -EBUSY);

	prompt_init(&a, 1, 3);
	cr_assert_eq(pdx_store(&x, 2, NULL, a.b, 3), 3);
	for (int i = 0; i < 3; i++)
		cr_expect(pdx_match(r[i], a.local, 3, out) == 1 && out[0].target == 2 &&
			      out[0].depth == 3,
			  "reader %d", i);
	for (int i = 0; i < 3; i++)
		pdx_reader_detach(r[i]);
	pdx_destroy(&x);
}

Test(pdx, default_reader_limit_is_16)
{
	struct pdx x;
	struct pdx_reader *r[17];

	cr_assert_eq(pdx_init(&x, NULL), 0);
	for (int i = 0; i < 16; i++)
		cr_assert_eq(pdx_reader_attach(&x, &r[i]), 0, "reader %d", i);
	cr_expect_eq(pdx_reader_attach(&x, &r[16]), -EBUSY);
	for (int i = 0; i < 16; i++)
		pdx_reader_detach(r[i]);
	pdx_destroy(&x);
}

Test(pdx, reclaim_with_idle_readers_frees_every_retired_object)
{
	struct t_pdx t;
	struct prompt a[8];
	struct pdx_reader *idle;

	t_pdx_open(&t, 8, 64);
	cr_assert_eq(pdx_reader_attach(&t.x, &idle), 0);
	for (int round = 0; round < 3; round++) {
		for (uint32_t i = 0; i < 8; i++) {
			prompt_init(&a[i], 100 + i, 16);
			cr_assert_geq(store(&t, i, &a[i], 0, 16), 0);
			cr_assert_geq(store(&t, (i + 1) % 8, &a[i], 0, 8), 0);
			t_match(&t, a[i].local, 16);
		}
		for (uint32_t i = 0; i < 8; i++)
			cr_assert_eq(pdx_drop_target(&t.x, i), 16 + 8);
	}
	cr_expect_eq(pdx_reclaim(&t.x), 0, "no reader is inside a query");

	struct pdx_stats s = t_stats(&t.x);

	cr_expect_eq(s.retired_pending, 0);
	cr_expect_eq(s.entries, 0);
	cr_expect_eq(s.holder_sets, 0);
	pdx_reader_detach(idle);
	t_pdx_close(&t);
}

Test(pdx, table_grows_past_initial_blocks_and_keeps_every_entry)
{
	struct t_pdx t;
	enum { PROMPTS = 1000, N = 12 };
	struct prompt p;

	t_pdx_open(&t, 8, 16);
	for (uint32_t i = 0; i < PROMPTS; i++) {
		prompt_init(&p, 5000 + i, N);
		cr_assert_eq(store(&t, i % 8, &p, 0, N), N);
	}

	struct pdx_stats s = t_stats(&t.x);

	cr_expect_eq(s.entries, PROMPTS * N);
	cr_expect_gt(s.table_grows, 0);
	/* Only run heads (here every block 0) are in the table; the rest follow their parent. */
	cr_expect_geq(s.table_slots, PROMPTS);
	for (uint32_t i = 0; i < PROMPTS; i++) {
		prompt_init(&p, 5000 + i, N);

		size_t k = t_match(&t, p.local, N);

		cr_assert(k == 1 && t_depth(&t, k, i % 8) == N, "prompt %u lost", i);
	}
	t_pdx_close(&t);
}

/*
 * Targets 0, stride, 2 * stride, ... and max_targets - 1 hold one prompt: target t the first
 * (t % nblocks) + 1 blocks when @vary, all of them otherwise. Every one must be reported.
 */
static void check_many_targets(uint32_t max_targets, uint32_t stride, size_t nblocks, bool vary)
{
	struct t_pdx t;
	struct prompt a;
	size_t holders = 0;

	t_pdx_open(&t, max_targets, 0);
	prompt_init(&a, 77, nblocks);
	for (uint32_t i = 0; i < max_targets; i++) {
		size_t d = vary ? i % nblocks + 1 : nblocks;

		if (i % stride && i != max_targets - 1)
			continue;
		cr_assert_eq(store(&t, i, &a, 0, d), (long)d, "target %u", i);
		holders++;
	}

	size_t k = t_match(&t, a.local, nblocks), j = 0;

	cr_assert_eq(k, holders, "%zu of %zu targets reported", k, holders);
	for (uint32_t i = 0; i < max_targets; i++) {
		size_t d = vary ? i % nblocks + 1 : nblocks;

		if (i % stride && i != max_targets - 1)
			continue;
		cr_assert(t.out[j].target == i && t.out[j].depth == d,
			  "answer %zu: (%u, %u), want (%u, %zu)", j, t.out[j].target,
			  t.out[j].depth, i, d);
		j++;
	}
	cr_expect_eq(t_stats(&t.x).entries, nblocks);
	t_pdx_close(&t);
}

Test(pdx, all_1024_targets_holding_one_prefix_are_reported)
{
	check_many_targets(1024, 1, 4, true);
}

Test(pdx, every_target_up_to_the_limit_holding_one_prefix_is_reported)
{
	/*
	 * Each store copies a holder set one target larger: quadratic, 1 s here for 65535
	 * targets, 10 s or more under a sanitizer, which therefore gets every 4th target (and
	 * still the largest id).
	 */
	check_many_targets(PDX_TARGETS_LIMIT, T_SANITIZED ? 4 : 1, 2, false);
}

/*
 * Churn: random stores and removes over a fixed universe of prompts and targets. Whatever is
 * freed must be reusable, so memory after 200k events stays close to memory after warm-up.
 */
enum { CHURN_PROMPTS = 96, CHURN_TARGETS = 12, CHURN_LEN = 16 };

static void churn_universe(struct prompt *u)
{
	for (uint32_t i = 0; i < CHURN_PROMPTS; i++) {
		if (i < 8)
			prompt_init(&u[i], 9000 + i, CHURN_LEN);
		else
			prompt_branch(&u[i], &u[i % 8], 1 + i % 11, 9000 + i, CHURN_LEN);
	}
}

static void churn_step(struct t_pdx *t, const struct prompt *u, struct t_rng *rng)
{
	const struct prompt *p = &u[t_rng_below(rng, CHURN_PROMPTS)];
	uint32_t target = t_rng_below(rng, CHURN_TARGETS);
	size_t from = t_rng_below(rng, CHURN_LEN);
	uint64_t ids[CHURN_LEN];

	if (t_rng_chance(rng, 50)) {
		cr_assert_geq(store(t, target, p, 0, from + 1), 0);
		return;
	}
	for (size_t i = from; i < CHURN_LEN; i++)
		ids[i - from] = ext(p, i);
	cr_assert_geq(pdx_remove(&t->x, target, ids, CHURN_LEN - from), 0);
}

Test(pdx, churn_over_a_fixed_footprint_keeps_memory_bounded)
{
	struct t_pdx t;
	static struct prompt u[CHURN_PROMPTS];
	struct t_rng rng;

	t_pdx_open(&t, CHURN_TARGETS, 256);
	churn_universe(u);
	t_rng_seed(&rng, 2024);

	uint64_t base = t_stats(&t.x).bytes; /* the empty index's fixed cost */

	for (int i = 0; i < 20000; i++)
		churn_step(&t, u, &rng);
	pdx_reclaim(&t.x);

	struct pdx_stats warm = t_stats(&t.x);

	for (int i = 0; i < 200000; i++)
		churn_step(&t, u, &rng);
	cr_expect_eq(pdx_reclaim(&t.x), 0);

	struct pdx_stats hot = t_stats(&t.x);

	cr_expect_leq(hot.entries, CHURN_PROMPTS * CHURN_LEN);
	cr_expect_leq(hot.holder_sets, hot.entries);
	/* Above the fixed cost: at most twice the warm-up's, plus room for one table doubling. */
	cr_expect_leq(hot.bytes - base, 2 * (warm.bytes - base) + hot.table_slots * 16,
		      "bytes %lu after churn, %lu after warm-up, %lu empty",
		      (unsigned long)hot.bytes, (unsigned long)warm.bytes, (unsigned long)base);
	cr_expect_leq(hot.table_slots, 4 * warm.table_slots);
	for (uint32_t i = 0; i < CHURN_TARGETS; i++)
		cr_assert_geq(pdx_clear(&t.x, i), 0);
	cr_expect_eq(pdx_reclaim(&t.x), 0);

	struct pdx_stats empty = t_stats(&t.x);

	cr_expect_eq(empty.entries, 0);
	cr_expect_eq(empty.holder_sets, 0);
	cr_expect_eq(empty.retired_pending, 0);
	cr_expect_eq(empty.blocks_stored, empty.blocks_removed);
	cr_expect_leq(empty.bytes, hot.bytes, "bytes %lu once empty, %lu before",
		      (unsigned long)empty.bytes, (unsigned long)hot.bytes);
	t_pdx_close(&t);
}

Test(pdx, everything_stored_then_removed_leaves_an_empty_index)
{
	struct t_pdx t;
	static struct prompt u[CHURN_PROMPTS];
	uint64_t ids[CHURN_LEN];

	t_pdx_open(&t, CHURN_TARGETS, 0);
	churn_universe(u);
	for (uint32_t i = 0; i < CHURN_PROMPTS; i++)
		for (uint32_t k = 0; k < 3; k++)
			cr_assert_geq(store(&t, (i + k * 5) % CHURN_TARGETS, &u[i], 0, CHURN_LEN),
				      0);

	struct pdx_stats full = t_stats(&t.x);

	cr_assert_gt(full.entries, 0);
	cr_assert_gt(full.holder_sets, 1);
	/* Every id of every prompt, from each target that stored it; shared ids go once. */
	for (uint32_t i = CHURN_PROMPTS; i-- > 0;)
		for (uint32_t k = 0; k < 3; k++) {
			for (size_t b = 0; b < CHURN_LEN; b++)
				ids[b] = ext(&u[i], CHURN_LEN - 1 - b);
			cr_assert_geq(pdx_remove(&t.x, (i + k * 5) % CHURN_TARGETS, ids, CHURN_LEN),
				      0);
		}

	struct pdx_stats s = t_stats(&t.x);

	cr_expect_eq(s.entries, 0);
	cr_expect_eq(s.holder_sets, 0);
	cr_expect_eq(s.blocks_removed, s.blocks_stored);
	for (uint32_t i = 0; i < CHURN_TARGETS; i++)
		cr_expect_eq(pdx_target_blocks(&t.x, i), 0, "target %u", i);
	for (uint32_t i = 0; i < CHURN_PROMPTS; i++)
		cr_expect_eq(t_match(&t, u[i].local, CHURN_LEN), 0);
	cr_expect_eq(pdx_reclaim(&t.x), 0);
	t_pdx_close(&t);
}
