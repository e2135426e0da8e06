/*
 * The prefix index (index.h) and its memory: reclaim of retired objects, table growth, and
 * memory that returns to where it started once the blocks are gone, after churn or after
 * everything is removed.
 */
#include <criterion/criterion.h>

#include "helpers.h"

TestSuite(pdx_memory, .timeout = 60);

Test(pdx_memory, reclaim_with_idle_readers_frees_every_retired_object)
{
	struct t_pdx t;
	struct t_prompt a[8];
	struct pdx_reader *idle;

	t_pdx_open(&t, 8, 64);
	cr_assert_eq(pdx_reader_attach(&t.x, &idle), 0);
	for (int round = 0; round < 3; round++) {
		for (uint32_t i = 0; i < 8; i++) {
			t_prompt_init(&a[i], 100 + i, 16);
			cr_assert_geq(t_store(&t, i, &a[i], 0, 16), 0);
			cr_assert_geq(t_store(&t, (i + 1) % 8, &a[i], 0, 8), 0);
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

Test(pdx_memory, table_grows_past_initial_blocks_and_keeps_every_entry)
{
	struct t_pdx t;
	enum { PROMPTS = 1000, N = 12 };
	struct t_prompt p;

	t_pdx_open(&t, 8, 16);
	for (uint32_t i = 0; i < PROMPTS; i++) {
		t_prompt_init(&p, 5000 + i, N);
		cr_assert_eq(t_store(&t, i % 8, &p, 0, N), N);
	}

	struct pdx_stats s = t_stats(&t.x);

	cr_expect_eq(s.entries, PROMPTS * N);
	cr_expect_gt(s.table_grows, 0);
	/* Only run heads (here every block 0) are in the table; the rest follow their parent. */
	cr_expect_geq(s.table_slots, PROMPTS);
	for (uint32_t i = 0; i < PROMPTS; i++) {
		t_prompt_init(&p, 5000 + i, N);

		size_t k = t_match(&t, p.local, N);

		cr_assert(k == 1 && t_depth(&t, k, i % 8) == N, "prompt %u lost", i);
	}
	t_pdx_close(&t);
}

/*
 * Churn: random stores and removes over a fixed universe of prompts and targets. Whatever is
 * freed must be reusable, so memory after 200k events stays close to memory after warm-up.
 */
enum { CHURN_PROMPTS = 96, CHURN_TARGETS = 12, CHURN_LEN = 16 };

static void churn_universe(struct t_prompt *u)
{
	for (uint32_t i = 0; i < CHURN_PROMPTS; i++) {
		if (i < 8)
			t_prompt_init(&u[i], 9000 + i, CHURN_LEN);
		else
			t_prompt_branch(&u[i], &u[i % 8], 1 + i % 11, 9000 + i, CHURN_LEN);
	}
}

static void churn_step(struct t_pdx *t, const struct t_prompt *u, struct t_rng *rng)
{
	const struct t_prompt *p = &u[t_rng_below(rng, CHURN_PROMPTS)];
	uint32_t target = t_rng_below(rng, CHURN_TARGETS);
	size_t from = t_rng_below(rng, CHURN_LEN);
	uint64_t ids[CHURN_LEN];

	if (t_rng_chance(rng, 50)) {
		cr_assert_geq(t_store(t, target, p, 0, from + 1), 0);
		return;
	}
	for (size_t i = from; i < CHURN_LEN; i++)
		ids[i - from] = t_prompt_ext(p, i);
	cr_assert_geq(pdx_remove(&t->x, target, ids, CHURN_LEN - from), 0);
}

Test(pdx_memory, churn_over_a_fixed_footprint_keeps_memory_bounded)
{
	struct t_pdx t;
	static struct t_prompt u[CHURN_PROMPTS];
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

Test(pdx_memory, everything_stored_then_removed_leaves_an_empty_index)
{
	struct t_pdx t;
	static struct t_prompt u[CHURN_PROMPTS];
	uint64_t ids[CHURN_LEN];

	t_pdx_open(&t, CHURN_TARGETS, 0);
	churn_universe(u);
	for (uint32_t i = 0; i < CHURN_PROMPTS; i++)
		for (uint32_t k = 0; k < 3; k++)
			cr_assert_geq(t_store(&t, (i + k * 5) % CHURN_TARGETS, &u[i], 0, CHURN_LEN),
				      0);

	struct pdx_stats full = t_stats(&t.x);

	cr_assert_gt(full.entries, 0);
	cr_assert_gt(full.holder_sets, 1);
	/* Every id of every prompt, from each target that stored it; shared ids go once. */
	for (uint32_t i = CHURN_PROMPTS; i-- > 0;)
		for (uint32_t k = 0; k < 3; k++) {
			for (size_t b = 0; b < CHURN_LEN; b++)
				ids[b] = t_prompt_ext(&u[i], CHURN_LEN - 1 - b);
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

/*
 * One target holding a steady number of blocks while its prompts come and go: its map of ids
 * runs near full for a long time (where runs of full buckets grow, and the map is rebuilt).
 * Every id it holds must still name its block, and its memory must stay put.
 */
Test(pdx_memory, a_target_churning_at_a_steady_size_keeps_every_id)
{
	enum { HELD = 200, ROUNDS = 3000, N = 16 };
	struct t_pdx t;
	struct t_prompt p;
	uint64_t warm_bytes = 0;

	t_pdx_open(&t, 4, 0);
	for (uint32_t r = 0; r < ROUNDS; r++) {
		t_prompt_init(&p, 70000 + r, N);
		cr_assert_eq(t_store(&t, 0, &p, 0, N), N);
		if (r < HELD)
			continue;
		t_prompt_init(&p, 70000 + r - HELD, N);
		for (size_t i = N; i-- > 0;) /* leaf first, as engines evict */
			cr_assert_eq(t_remove1(&t, 0, t_prompt_ext(&p, i)), 1, "round %u", r);
		if (r == 2 * HELD) {
			pdx_reclaim(&t.x);
			warm_bytes = t_stats(&t.x).bytes;
		}
	}
	pdx_reclaim(&t.x);
	cr_expect_eq(pdx_target_blocks(&t.x, 0), HELD * N);
	cr_expect_leq(t_stats(&t.x).bytes, warm_bytes + warm_bytes / 4);
	for (uint32_t r = ROUNDS - HELD; r < ROUNDS; r++) {
		t_prompt_init(&p, 70000 + r, N);
		cr_assert_eq(t_depth(&t, t_match(&t, p.local, N), 0), N, "prompt %u", r);
		for (size_t i = 0; i < N; i++)
			cr_assert_eq(t_remove1(&t, 0, t_prompt_ext(&p, i)), 1, "prompt %u", r);
	}
	cr_expect_eq(pdx_reclaim(&t.x), 0);
	cr_expect_eq(t_stats(&t.x).entries, 0);
	t_pdx_close(&t);
}
