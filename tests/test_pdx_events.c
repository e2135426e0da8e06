/*
 * The prefix index (index.h), rule by rule for each KV event: every rejection path and the
 * counter it moves, duplicates, removals, cleared and dropped targets, event ids and bad
 * target ids.
 */
#include <errno.h>
#include <string.h>

#include <criterion/criterion.h>

#include "helpers.h"

TestSuite(pdx_events, .timeout = 60);

Test(pdx_events, store_with_unknown_parent_is_dropped_and_counted)
{
	struct t_pdx t;
	struct t_prompt a;
	uint64_t unknown = 0xDEADBEEF;

	t_pdx_open(&t, 8, 0);
	t_prompt_init(&a, 1, 6);
	cr_assert_eq(t_store(&t, 0, &a, 0, 3), 3);
	cr_assert_eq(t_store(&t, 1, &a, 0, 4), 4);

	struct pdx_stats before = t_stats(&t.x);

	cr_expect_eq(pdx_store(&t.x, 0, &unknown, a.b + 3, 3), -ENOENT);
	cr_expect_eq(t_store(&t, 2, &a, 4, 2), -ENOENT, "the parent is held by others only");

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

Test(pdx_events, store_naming_itself_as_parent_is_rejected)
{
	struct t_pdx t;
	struct t_prompt a;
	struct pdx_block bad[2];

	t_pdx_open(&t, 8, 0);
	t_prompt_init(&a, 1, 4);
	cr_assert_eq(t_store(&t, 0, &a, 0, 2), 2);

	uint64_t parent = t_prompt_ext(&a, 1);

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

Test(pdx_events, store_repeating_an_id_within_the_event_is_rejected)
{
	struct t_pdx t;
	struct t_prompt a;
	struct pdx_block bad[4];

	t_pdx_open(&t, 8, 0);
	t_prompt_init(&a, 1, 6);
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
	cr_assert_eq(t_store(&t, 0, &a, 0, 2), 2);
	memcpy(bad, a.b + 2, sizeof(bad));
	bad[2].ext_id = bad[0].ext_id;

	uint64_t parent = t_prompt_ext(&a, 1);

	cr_expect_eq(pdx_store(&t.x, 0, &parent, bad, 4), -EINVAL);
	cr_expect_eq(t_stats(&t.x).store_repeat_id, 3);
	cr_expect_eq(pdx_target_blocks(&t.x, 0), 2);
	cr_expect_eq(t_depth(&t, t_match(&t, a.local, 6), 0), 2);
	t_pdx_close(&t);
}

Test(pdx_events, conflicting_external_id_stops_the_event_and_keeps_blocks_before_it)
{
	struct t_pdx t;
	struct t_prompt a, b;

	t_pdx_open(&t, 8, 0);
	t_prompt_init(&a, 1, 3);
	t_prompt_init(&b, 2, 3);
	cr_assert_eq(t_store(&t, 0, &a, 0, 3), 3);
	b.b[1].ext_id = t_prompt_ext(&a, 1); /* names a's block 1 on target 0 */
	cr_expect_eq(t_store(&t, 0, &b, 0, 3), -EEXIST);

	struct pdx_stats s = t_stats(&t.x);

	cr_expect_eq(s.store_id_conflict, 1);
	cr_expect_eq(pdx_target_blocks(&t.x, 0), 4, "b's block 0 stays, blocks 1 and 2 do not");
	cr_expect_eq(s.entries, 4);
	cr_expect_eq(t_depth(&t, t_match(&t, b.local, 3), 0), 1);
	cr_expect_eq(t_depth(&t, t_match(&t, a.local, 3), 0), 3, "a is untouched");

	/* The id still names a's block 1. */
	cr_expect_eq(t_remove1(&t, 0, t_prompt_ext(&a, 1)), 1);
	cr_expect_eq(t_depth(&t, t_match(&t, a.local, 3), 0), 1);
	cr_expect_eq(t_depth(&t, t_match(&t, b.local, 3), 0), 1);

	/* Another target may use the same id for its own block. */
	cr_expect_eq(t_store(&t, 1, &b, 0, 3), 3);
	t_pdx_close(&t);
}

Test(pdx_events, storing_a_held_block_again_is_counted_as_duplicate)
{
	struct t_pdx t;
	struct t_prompt a;

	t_pdx_open(&t, 8, 0);
	t_prompt_init(&a, 1, 5);
	cr_assert_eq(t_store(&t, 0, &a, 0, 3), 3);
	cr_expect_eq(t_store(&t, 0, &a, 0, 3), 0, "nothing newly held");
	cr_expect_eq(t_stats(&t.x).store_dup_block, 3);
	cr_expect_eq(t_store(&t, 0, &a, 0, 5), 2, "only blocks 3 and 4 are new");
	cr_expect_eq(t_stats(&t.x).store_dup_block, 6);
	cr_expect_eq(t_store(&t, 1, &a, 0, 5), 5, "a block held by another target is new here");

	struct pdx_stats s = t_stats(&t.x);

	cr_expect_eq(s.store_dup_block, 6);
	cr_expect_eq(s.blocks_stored, 10);
	cr_expect_eq(s.entries, 5);
	cr_expect_eq(pdx_target_blocks(&t.x, 0), 5);

	size_t k = t_match(&t, a.local, 5);

	cr_expect(k == 2 && t_depth(&t, k, 0) == 5 && t_depth(&t, k, 1) == 5);
	t_pdx_close(&t);
}

Test(pdx_events, remove_of_unknown_id_is_counted_and_ignored)
{
	struct t_pdx t;
	struct t_prompt a, b;

	t_pdx_open(&t, 8, 0);
	t_prompt_init(&a, 1, 4);
	t_prompt_init(&b, 2, 2);
	cr_assert_eq(t_store(&t, 0, &a, 0, 4), 4);
	cr_assert_eq(t_store(&t, 1, &b, 0, 2), 2);

	uint64_t ids[] = {0x1234, t_prompt_ext(&a, 3), t_prompt_ext(&b, 0), t_prompt_ext(&a, 3)};

	cr_expect_eq(pdx_remove(&t.x, 0, ids, 4), 1,
		     "a's block 3 only; b's block is target 1's, and the repeat is gone");

	struct pdx_stats s = t_stats(&t.x);

	cr_expect_eq(s.remove_unknown, 3);
	cr_expect_eq(s.blocks_removed, 1);
	cr_expect_eq(pdx_target_blocks(&t.x, 0), 3);
	cr_expect_eq(pdx_target_blocks(&t.x, 1), 2);
	cr_expect_eq(t_depth(&t, t_match(&t, a.local, 4), 0), 3);
	cr_expect_eq(t_depth(&t, t_match(&t, b.local, 2), 1), 2);
	cr_expect_eq(t_remove1(&t, 5, 0x1234), 0, "a target that never stored anything");
	cr_expect_eq(t_stats(&t.x).remove_unknown, 4);
	t_pdx_close(&t);
}

Test(pdx_events, entry_is_freed_when_its_last_holder_removes_it)
{
	struct t_pdx t;
	struct t_prompt a;
	uint64_t ids[4];

	t_pdx_open(&t, 8, 0);
	t_prompt_init(&a, 1, 4);
	for (size_t i = 0; i < 4; i++)
		ids[i] = t_prompt_ext(&a, i);
	cr_assert_eq(t_store(&t, 0, &a, 0, 4), 4);
	cr_assert_eq(t_store(&t, 1, &a, 0, 4), 4);
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

/* Target 0 stores @a under its own ids; target 1 stores the same blocks as @mine, renamed. */
static void store_under_two_names(struct t_pdx *t, const struct t_prompt *a,
				  struct pdx_block *mine)
{
	memcpy(mine, a->b, a->n * sizeof(*mine));
	for (size_t i = 0; i < a->n; i++)
		mine[i].ext_id = a->b[i].ext_id ^ 0xA11A5ull;
	cr_assert_eq(t_store(t, 0, a, 0, a->n), (long)a->n);
	cr_assert_eq(pdx_store(&t->x, 1, NULL, mine, a->n), (long)a->n);
	cr_assert_eq(t_stats(&t->x).entries, a->n, "one entry per block, whatever its names");
}

Test(pdx_events, a_block_held_under_two_ids_answers_to_each_targets_own_id)
{
	struct t_pdx t;
	struct t_prompt a;
	struct pdx_block mine[4];

	t_pdx_open(&t, 8, 0);
	t_prompt_init(&a, 1, 4);
	store_under_two_names(&t, &a, mine);

	uint64_t unknown_before = t_stats(&t.x).remove_unknown;

	cr_expect_eq(pdx_remove(&t.x, 1, &a.b[3].ext_id, 1), 0, "target 0's id, not target 1's");
	cr_expect_eq(pdx_remove(&t.x, 0, &mine[3].ext_id, 1), 0, "and the other way round");
	cr_expect_eq(t_stats(&t.x).remove_unknown, unknown_before + 2);
	cr_expect_eq(pdx_store(&t.x, 0, &mine[1].ext_id, a.b + 2, 1), -ENOENT);
	cr_expect_eq(pdx_store(&t.x, 1, &mine[1].ext_id, mine + 2, 1), 0, "held already");

	cr_expect_eq(pdx_remove(&t.x, 1, &mine[3].ext_id, 1), 1);
	cr_expect_eq(pdx_remove(&t.x, 0, &a.b[2].ext_id, 1), 1);

	size_t k = t_match(&t, a.local, 4);

	cr_expect(k == 2 && t_depth(&t, k, 0) == 2 && t_depth(&t, k, 1) == 3);
	cr_expect_eq(pdx_clear(&t.x, 1), 3, "a target holding blocks under other names clears");
	cr_expect_eq(pdx_target_blocks(&t.x, 1), 0);
	cr_expect_eq(pdx_store(&t.x, 1, NULL, mine, 1), 1, "and forgets its names");
	cr_expect_eq(t_stats(&t.x).entries, 3);
	t_pdx_close(&t);
}

Test(pdx_events, a_block_keeps_answering_to_other_targets_ids_after_its_first_namer_leaves)
{
	struct t_pdx t;
	struct t_prompt a;
	struct pdx_block mine[4];
	uint64_t ids[4];

	t_pdx_open(&t, 8, 0);
	t_prompt_init(&a, 1, 4);
	store_under_two_names(&t, &a, mine);
	cr_assert_eq(pdx_clear(&t.x, 0), 4);
	for (size_t i = 0; i < 4; i++)
		ids[i] = a.b[i].ext_id;
	cr_expect_eq(pdx_remove(&t.x, 1, ids, 4), 0, "target 0's ids never were target 1's");
	cr_expect_eq(t_store(&t, 0, &a, 0, 2), 2, "target 0 stores again under its own ids");
	for (size_t i = 0; i < 4; i++)
		ids[i] = mine[i].ext_id;
	cr_expect_eq(pdx_remove(&t.x, 1, ids, 4), 4);
	cr_expect_eq(t_stats(&t.x).entries, 2);
	cr_expect_eq(t_depth(&t, t_match(&t, a.local, 4), 0), 2);
	t_pdx_close(&t);
}

Test(pdx_events, targets_may_give_one_id_to_different_blocks)
{
	struct t_pdx t;
	struct t_prompt a, b;

	t_pdx_open(&t, 8, 0);
	t_prompt_init(&a, 1, 2);
	t_prompt_init(&b, 2, 2);
	/* Target 1's engine numbers its blocks the way target 0's does. */
	for (size_t i = 0; i < 2; i++)
		b.b[i].ext_id = a.b[i].ext_id;
	cr_assert_eq(t_store(&t, 0, &a, 0, 2), 2);
	cr_assert_eq(t_store(&t, 1, &b, 0, 2), 2);
	cr_expect_eq(t_stats(&t.x).entries, 4);
	cr_expect_eq(t_remove1(&t, 1, a.b[1].ext_id), 1, "target 1's block goes, not target 0's");

	size_t k = t_match(&t, a.local, 2);

	cr_expect(k == 1 && t_depth(&t, k, 0) == 2);
	k = t_match(&t, b.local, 2);
	cr_expect(k == 1 && t_depth(&t, k, 1) == 1);
	t_pdx_close(&t);
}

Test(pdx_events, an_id_a_target_gave_no_block_of_its_own_is_free_for_it_to_use)
{
	struct t_pdx t;
	struct t_prompt a, c;
	struct pdx_block mine[1], other[1];

	t_pdx_open(&t, 8, 0);
	t_prompt_init(&a, 1, 1);
	t_prompt_init(&c, 3, 1);
	store_under_two_names(&t, &a, mine);
	/* Target 1 holds block a, named a.b[0].ext_id by target 0: to target 1 that id is free. */
	other[0] = (struct pdx_block){.ext_id = a.b[0].ext_id, .local_hash = c.local[0]};
	cr_assert_eq(pdx_store(&t.x, 1, NULL, other, 1), 1);
	cr_expect_eq(t_remove1(&t, 1, a.b[0].ext_id), 1);

	size_t k = t_match(&t, a.local, 1);

	cr_expect(k == 2, "both still hold block a");
	cr_expect_eq(t_match(&t, c.local, 1), 0, "block c is gone");
	cr_expect_eq(t_remove1(&t, 1, mine[0].ext_id), 1);
	cr_expect_eq(t_match(&t, a.local, 1), 1);
	t_pdx_close(&t);
}

Test(pdx_events, cleared_target_holds_nothing_and_keeps_its_event_sequence)
{
	struct t_pdx t;
	struct t_prompt a, b;

	t_pdx_open(&t, 8, 0);
	t_prompt_init(&a, 1, 4);
	t_prompt_branch(&b, &a, 2, 2, 5);
	cr_assert_eq(pdx_event_seq(&t.x, 0, 10), 0);
	cr_assert_eq(t_store(&t, 0, &a, 0, 4), 4);
	cr_assert_eq(t_store(&t, 0, &b, 2, 3), 3);
	cr_assert_eq(t_store(&t, 1, &a, 0, 2), 2);
	cr_expect_eq(pdx_clear(&t.x, 0), 7);

	size_t k = t_match(&t, a.local, 4);

	cr_expect(k == 1 && t_depth(&t, k, 1) == 2, "only target 1's blocks are left");
	cr_expect_eq(pdx_target_blocks(&t.x, 0), 0);
	cr_expect_eq(t_stats(&t.x).entries, 2);
	cr_expect_eq(t_stats(&t.x).blocks_removed, 7);
	cr_expect_eq(t_store(&t, 0, &a, 2, 1), -ENOENT, "its external ids are forgotten");
	cr_expect_eq(pdx_event_seq(&t.x, 0, 10), -EALREADY, "its event sequence is not");
	cr_expect_eq(pdx_event_seq(&t.x, 0, 11), 0);
	cr_expect_eq(pdx_clear(&t.x, 0), 0, "clearing an empty target drops nothing");
	cr_expect_eq(t_store(&t, 0, &a, 0, 4), 4, "and it can store again from block 0");
	cr_expect_eq(t_depth(&t, t_match(&t, a.local, 4), 0), 4);
	t_pdx_close(&t);
}

Test(pdx_events, dropped_target_forgets_blocks_ids_and_event_sequence)
{
	struct t_pdx t;
	struct t_prompt a;

	t_pdx_open(&t, 8, 0);
	t_prompt_init(&a, 1, 4);
	cr_assert_eq(pdx_event_seq(&t.x, 2, 100), 0);
	cr_assert_eq(t_store(&t, 2, &a, 0, 4), 4);
	cr_assert_eq(t_store(&t, 3, &a, 0, 1), 1);
	cr_expect_eq(pdx_drop_target(&t.x, 2), 4);
	cr_expect_eq(pdx_target_blocks(&t.x, 2), 0);
	cr_expect_eq(t_stats(&t.x).entries, 1);
	cr_expect_eq(t_remove1(&t, 2, t_prompt_ext(&a, 0)), 0, "its external ids are forgotten");
	cr_expect_eq(pdx_event_seq(&t.x, 2, 5), 0, "a new sequence starts at any id");
	cr_expect_eq(pdx_event_seq(&t.x, 2, 6), 0);

	size_t k = t_match(&t, a.local, 4);

	cr_expect(k == 1 && t_depth(&t, k, 3) == 1);
	cr_expect_eq(pdx_drop_target(&t.x, 2), 0);
	t_pdx_close(&t);
}

Test(pdx_events, first_event_id_starts_the_sequence)
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

Test(pdx_events, event_id_gap_returns_the_number_skipped_and_is_counted)
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

Test(pdx_events, repeated_or_older_event_id_returns_ealready_and_is_counted)
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

Test(pdx_events, bad_target_ids_are_rejected_and_counted)
{
	struct t_pdx t;
	struct t_prompt a;
	uint32_t tokens[32] = {0};
	uint64_t ids[2] = {1, 2};
	const uint32_t bad[] = {8, 9, PDX_TARGETS_LIMIT, UINT32_MAX};

	t_pdx_open(&t, 8, 0);
	t_prompt_init(&a, 1, 2);
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		uint32_t b = bad[i];
		uint64_t n = bad_targets(&t);

		/* Every event for a bad target is rejected and counted once. */
		cr_expect_eq(t_store(&t, b, &a, 0, 2), -EINVAL, "store on %u", b);
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
