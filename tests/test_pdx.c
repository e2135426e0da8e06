/*
 * The prefix index (index.h), its basics: configuration limits, what a store does to the
 * answers of a match and where the depth stops, targets sharing a prefix, matching from
 * tokens, reader handles, and many targets holding one prefix. Event rules and rejections are
 * in test_pdx_events.c, memory in test_pdx_memory.c.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include <criterion/criterion.h>

#include "helpers.h"

TestSuite(pdx, .timeout = 60);

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
	struct t_prompt a;

	cr_assert_eq(pdx_init(&t.x, none), 0);
	cr_assert_eq(pdx_reader_attach(&t.x, &t.r), 0);
	t.max_targets = PDX_DEFAULT_TARGETS;
	t.out = t_calloc(PDX_DEFAULT_TARGETS, sizeof(*t.out));
	t_prompt_init(&a, 1, 2);
	cr_expect_eq(t_store(&t, PDX_DEFAULT_TARGETS - 1, &a, 0, 2), 2);
	cr_expect_eq(t_store(&t, PDX_DEFAULT_TARGETS, &a, 0, 2), -EINVAL);
	size_t k = t_match(&t, a.local, 2);

	cr_expect_eq(k, 1);
	cr_expect_eq(t_depth(&t, k, PDX_DEFAULT_TARGETS - 1), 2);
	t_pdx_close(&t);
}

Test(pdx, store_then_match_reports_the_stored_depth)
{
	struct t_pdx t;
	struct t_prompt a, other;
	uint64_t longer[8];

	t_pdx_open(&t, 8, 0);
	t_prompt_init(&a, 1, 5);
	t_prompt_init(&other, 2, 5);
	cr_assert_eq(t_store(&t, 3, &a, 0, 5), 5, "store returns the blocks newly held");

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
	struct t_prompt a;

	t_pdx_open(&t, 8, 0);
	t_prompt_init(&a, 1, 9);
	cr_assert_eq(t_store(&t, 0, &a, 0, 2), 2);
	cr_assert_eq(t_store(&t, 0, &a, 2, 3), 3);
	cr_assert_eq(t_store(&t, 0, &a, 5, 4), 4);

	size_t k = t_match(&t, a.local, 9);

	cr_expect(k == 1 && t.out[0].depth == 9, "depth %u after three chained events",
		  k ? t.out[0].depth : 0);
	cr_expect_eq(t_stats(&t.x).entries, 9);
	t_pdx_close(&t);
}

Test(pdx, depth_stops_at_the_first_block_a_target_lacks)
{
	struct t_pdx t;
	struct t_prompt a, shifted;

	t_pdx_open(&t, 8, 0);
	t_prompt_init(&a, 1, 4);
	/* Target 0 holds blocks 0, 1 and 3 of a; target 1 holds 1..3 but not 0. */
	cr_assert_eq(t_store(&t, 0, &a, 0, 4), 4);
	cr_assert_eq(t_remove1(&t, 0, t_prompt_ext(&a, 2)), 1);
	cr_assert_eq(t_store(&t, 1, &a, 0, 4), 4);
	cr_assert_eq(t_remove1(&t, 1, t_prompt_ext(&a, 0)), 1);
	/* Target 2 holds the same local hashes as a's blocks 1..3, but after another block 0. */
	t_prompt_init(&shifted, 7, 4);
	memcpy(shifted.local + 1, a.local + 1, 3 * sizeof(uint64_t));
	t_blocks(shifted.local, 0, 4, 0, shifted.b);
	cr_assert_eq(t_store(&t, 2, &shifted, 0, 4), 4);

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
	struct t_prompt a, swapped;

	/* Documents x and y after one system prompt s: [s, x, y] is held, [s, y, x] is asked. */
	t_pdx_open(&t, 8, 0);
	t_prompt_init(&a, 1, 3);
	t_prompt_init(&swapped, 1, 3);
	swapped.local[1] = a.local[2];
	swapped.local[2] = a.local[1];
	t_blocks(swapped.local, 0, 3, 0, swapped.b);
	cr_assert_eq(t_store(&t, 0, &a, 0, 3), 3);

	size_t k = t_match(&t, swapped.local, 3);

	cr_expect(k == 1 && t_depth(&t, k, 0) == 1, "depth %u, want 1: only block 0 is shared",
		  k ? t.out[0].depth : 0);
	cr_expect_eq(t_depth(&t, t_match(&t, a.local, 3), 0), 3);
	t_pdx_close(&t);
}

Test(pdx, a_repeated_block_is_not_a_match_for_another_block)
{
	struct t_pdx t;
	struct t_prompt held, asked;

	/* Held [a, b, c, b]; asked [a, c, b, b]: equal multisets of blocks after block 0. */
	t_pdx_open(&t, 8, 0);
	t_prompt_init(&held, 2, 4);
	held.local[3] = held.local[1];
	t_blocks(held.local, 0, 4, 0, held.b);
	t_prompt_init(&asked, 2, 4);
	asked.local[1] = held.local[2];
	asked.local[2] = held.local[1];
	asked.local[3] = held.local[1];
	t_blocks(asked.local, 0, 4, 0, asked.b);
	cr_assert_eq(t_store(&t, 0, &held, 0, 4), 4);
	cr_expect_eq(t_depth(&t, t_match(&t, asked.local, 4), 0), 1);
	cr_expect_eq(t_depth(&t, t_match(&t, asked.local, 2), 0), 1);
	cr_expect_eq(t_depth(&t, t_match(&t, held.local, 4), 0), 4);
	t_pdx_close(&t);
}

Test(pdx, swapped_blocks_whose_hashes_differ_in_one_bit_are_another_prefix)
{
	struct t_pdx t;
	struct t_prompt held, asked;
	int confused = 0, first = -1;

	/*
	 * Local hashes are whatever the caller says they are. Blocks a and a ^ 2^k differ as
	 * much as any two blocks do: asked in the other order they are another prefix. Any
	 * check weaker than the sequence hash (a sum, say) tends to confuse such pairs.
	 */
	t_pdx_open(&t, 8, 0);
	for (int k = 0; k < 64; k++) {
		t_prompt_init(&held, 300 + (uint64_t)k, 4);
		held.local[2] = held.local[1] ^ (1ull << k);
		t_blocks(held.local, 0, 4, 0, held.b);
		asked = held;
		asked.local[1] = held.local[2];
		asked.local[2] = held.local[1];
		cr_assert_eq(t_store(&t, (uint32_t)k % 8, &held, 0, 4), 4);

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
	struct t_prompt a;

	t_pdx_open(&t, 8, 0);
	t_prompt_init(&a, 1, 6);
	cr_assert_eq(t_store(&t, 0, &a, 0, 6), 6);
	cr_assert_eq(t_remove1(&t, 0, t_prompt_ext(&a, 2)), 1);
	cr_assert_eq(t_depth(&t, t_match(&t, a.local, 6), 0), 2);
	cr_assert_eq(t_store(&t, 0, &a, 2, 1), 1, "block 2 again, after block 1");
	cr_expect_eq(t_depth(&t, t_match(&t, a.local, 6), 0), 6);
	cr_expect_eq(pdx_target_blocks(&t.x, 0), 6);
	t_pdx_close(&t);
}

/*
 * Freeing block 2 of a run makes block 3 the head of the rest; stores chained below it must
 * still find and extend that run, so the writer knows block 3's depth without its parent.
 */
Test(pdx, blocks_after_a_freed_parent_keep_their_place_in_the_prompt)
{
	struct t_pdx t;
	struct t_prompt a;

	t_pdx_open(&t, 8, 0);
	t_prompt_init(&a, 1, 8);
	cr_assert_eq(t_store(&t, 0, &a, 0, 6), 6);
	cr_assert_eq(t_remove1(&t, 0, t_prompt_ext(&a, 2)), 1);
	cr_assert_eq(t_store(&t, 0, &a, 6, 1), 1, "block 6 after block 5, below the hole");
	cr_assert_eq(t_store(&t, 1, &a, 0, 8), 8);

	struct pdx_stats s = t_stats(&t.x);

	cr_expect_eq(s.entries, 8, "target 1 found blocks 3 to 6 where they were");
	cr_expect_eq(s.store_dup_block, 0);

	size_t k = t_match(&t, a.local, 8);

	cr_expect(k == 2 && t_depth(&t, k, 0) == 2 && t_depth(&t, k, 1) == 8);
	cr_assert_eq(t_store(&t, 0, &a, 2, 1), 1, "refilling the hole");
	cr_expect_eq(t_depth(&t, t_match(&t, a.local, 8), 0), 7);
	t_pdx_close(&t);
}

Test(pdx, targets_sharing_a_prefix_get_their_own_depths)
{
	struct t_pdx t;
	struct t_prompt a, b;

	t_pdx_open(&t, 8, 0);
	t_prompt_init(&a, 1, 8);
	t_prompt_branch(&b, &a, 3, 2, 7);
	cr_assert_eq(t_store(&t, 0, &a, 0, 8), 8);
	cr_assert_eq(t_store(&t, 1, &b, 0, 7), 7);

	size_t k = t_match(&t, a.local, 8);

	cr_expect(k == 2 && t_depth(&t, k, 0) == 8 && t_depth(&t, k, 1) == 3);
	k = t_match(&t, b.local, 7);
	cr_expect(k == 2 && t_depth(&t, k, 0) == 3 && t_depth(&t, k, 1) == 7);
	cr_expect_eq(t_stats(&t.x).entries, 12, "the 3 shared blocks are one entry each");

	uint64_t tail[5];

	for (size_t i = 0; i < 5; i++)
		tail[i] = t_prompt_ext(&a, 3 + i);
	cr_assert_eq(pdx_remove(&t.x, 0, tail, 5), 5);
	cr_expect_eq(t_stats(&t.x).entries, 7);
	k = t_match(&t, a.local, 8);
	cr_expect(k == 2 && t_depth(&t, k, 0) == 3 && t_depth(&t, k, 1) == 3);
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
	struct t_prompt a;

	cr_assert_eq(pdx_init(&x, &cfg), 0);
	for (int i = 0; i < 3; i++)
		cr_assert_eq(pdx_reader_attach(&x, &r[i]), 0, "reader %d", i);
	cr_expect_eq(pdx_reader_attach(&x, &r[3]), -EBUSY);
	pdx_reader_detach(r[1]);
	cr_expect_eq(pdx_reader_attach(&x, &r[1]), 0, "a detached handle's place is free again");
	cr_expect_eq(pdx_reader_attach(&x, &r[3]), -EBUSY);

	t_prompt_init(&a, 1, 3);
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

/*
 * Targets 0, stride, 2 * stride, ... and max_targets - 1 hold one prompt: target t the first
 * (t % nblocks) + 1 blocks when @vary, all of them otherwise. Every one must be reported.
 */
static void check_many_targets(uint32_t max_targets, uint32_t stride, size_t nblocks, bool vary)
{
	struct t_pdx t;
	struct t_prompt a;
	size_t holders = 0;

	t_pdx_open(&t, max_targets, 0);
	t_prompt_init(&a, 77, nblocks);
	for (uint32_t i = 0; i < max_targets; i++) {
		size_t d = vary ? i % nblocks + 1 : nblocks;

		if (i % stride && i != max_targets - 1)
			continue;
		cr_assert_eq(t_store(&t, i, &a, 0, d), (long)d, "target %u", i);
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
