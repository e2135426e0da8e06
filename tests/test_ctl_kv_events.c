/*
 * The KV-event intake (control/kv_events.h) on well-formed records, as a worker writes them
 * into its event ring: STORED with local hashes or token ids (hashed like dp_hash_blocks() with
 * DP_HASH_SEED), chained by parents and chunked past 256 blocks, land in the prefix index at the
 * depth the worker holds; REMOVED and CLEARED take blocks away; the event-id rules hold per DP
 * rank (duplicates dropped, gaps counted and a dump asked for); unknown ranks, unknown record
 * types and events the index refuses are counted and skipped without stopping the intake; LOAD
 * reports reach the router's busy filter; a drain's budget bounds the records it takes and their
 * space goes back to the worker. Malformed records: test_ctl_kv_events_fault.c.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include <criterion/criterion.h>

#include "helpers.h"
#include "kv_fixture.h"

TestSuite(ctl_kv_events, .timeout = 60);

#define BIG 600u /* blocks of the chunked events: more than two chunks of 256 */

Test(ctl_kv_events, stored_local_hashes_are_matched_to_their_depth)
{
	struct t_kv s;
	uint64_t local[8], ext[8];

	t_kv_open(&s, T_KV_RING, NULL);
	t_locals(1, 8, local);
	t_kv_ext(1, 8, ext);
	t_kv_stored(&s, 0, 1, NULL, ext, local, 5);
	cr_assert_eq(t_kv_drain(&s), 1);
	cr_expect_eq(t_kv_depth(&s, 0, local, 8), 5);
	cr_expect_eq(t_kv_depth(&s, 1, local, 8), 0, "rank 1 holds nothing");
	cr_expect_eq(t_kv_depth(&s, 0, local, 3), 3, "depth never exceeds the query");
	cr_expect_eq(s.k.stats.events, 1);
	cr_expect_eq(s.k.stats.blocks_stored, 5);
	cr_expect_eq(t_kv_blocks(&s, 0), 5);
	t_kv_expect_clean(&s);
	t_kv_close(&s);
}

Test(ctl_kv_events, stored_token_ids_hash_like_dp_hash_blocks)
{
	struct t_kv s;
	uint32_t tok[6 * T_BS + 5];
	uint64_t local[6], ext[6];

	t_kv_open(&s, T_KV_RING, NULL);
	t_kv_prompt_tokens(3, 6, T_BS, tok, local);
	t_tokens(tok + 6 * T_BS, 5, 99); /* a partial block the prompt carries on with */
	t_kv_ext(3, 6, ext);
	t_kv_tokens(&s, 1, 1, NULL, ext, tok, 4);
	cr_assert_eq(t_kv_drain(&s), 1);
	cr_expect_eq(t_kv_depth(&s, 1, local, 6), 4, "the intake hashed as dp_hash_blocks does");
	cr_expect_eq(t_kv_depth(&s, 0, local, 6), 0);
	cr_expect_eq(s.k.stats.blocks_stored, 4);

	/* The routing core, hashing the prompt itself, sees the same overlap. */
	struct rt_request rq = t_request(&s.t, "m", tok, sizeof(tok) / sizeof(tok[0]), 0);
	struct rt_plan plan;

	rq.peek = true;
	cr_assert_eq(rt_route(&s.t.core, &rq, &plan), 0);
	cr_expect_eq(t_cand(&s.t.core, s.tg[1])->overlap, 4);
	cr_expect_eq(t_cand(&s.t.core, s.tg[0])->overlap, 0);
	cr_expect_eq(plan.first.target, s.tg[1], "the cheaper target holds the prefix");
	t_kv_expect_clean(&s);
	t_kv_close(&s);
}

Test(ctl_kv_events, stored_with_a_parent_chains_after_an_earlier_event)
{
	struct t_kv s;
	uint32_t tok[8 * T_BS];
	uint64_t local[8], ext[8];

	t_kv_open(&s, T_KV_RING, NULL);
	t_kv_prompt_tokens(4, 8, T_BS, tok, local);
	t_kv_ext(4, 8, ext);
	t_kv_stored(&s, 0, 1, NULL, ext, local, 3);
	t_kv_stored(&s, 0, 2, &ext[2], ext + 3, local + 3, 2);
	/* A token-id event may continue what a local-hash one began. */
	t_kv_tokens(&s, 0, 3, &ext[4], ext + 5, tok + 5 * T_BS, 3);
	cr_assert_eq(t_kv_drain(&s), 3);
	cr_expect_eq(t_kv_depth(&s, 0, local, 8), 8);
	cr_expect_eq(s.k.stats.events, 3);
	cr_expect_eq(s.k.stats.blocks_stored, 8);

	/* Events applied one drain apart chain just the same. */
	uint64_t local2[10], ext2[2];

	memcpy(local2, local, sizeof(local));
	t_locals(44, 2, local2 + 8);
	t_kv_ext(44, 2, ext2);
	t_kv_stored(&s, 0, 4, &ext[7], ext2, local2 + 8, 2);
	cr_assert_eq(t_kv_drain(&s), 1);
	cr_expect_eq(t_kv_depth(&s, 0, local2, 10), 10);
	t_kv_expect_clean(&s);
	t_kv_close(&s);
}

Test(ctl_kv_events, stored_of_more_than_256_blocks_is_chunked_and_matches_fully)
{
	struct t_kv s;
	uint64_t *local = t_calloc(BIG + 4, 8), *ext = t_calloc(BIG + 4, 8);

	t_kv_open(&s, T_KV_RING, NULL);
	t_locals(5, BIG + 4, local);
	t_kv_ext(5, BIG + 4, ext);
	t_kv_stored(&s, 0, 1, NULL, ext, local, 4);
	t_kv_stored(&s, 0, 2, &ext[3], ext + 4, local + 4, BIG);
	cr_assert_eq(t_kv_drain(&s), 2);
	cr_expect_eq(t_kv_depth(&s, 0, local, BIG + 4), BIG + 4);
	cr_expect_eq(s.k.stats.events, 2);
	cr_expect_eq(s.k.stats.blocks_stored, BIG + 4);
	cr_expect_eq(t_kv_blocks(&s, 0), BIG + 4);

	/* Without a parent, the chunks after the first still chain. */
	t_kv_stored(&s, 1, 1, NULL, ext, local, BIG);
	cr_assert_eq(t_kv_drain(&s), 1);
	cr_expect_eq(t_kv_depth(&s, 1, local, BIG + 4), BIG);
	t_kv_expect_clean(&s);
	t_kv_close(&s);
	free(local);
	free(ext);
}

Test(ctl_kv_events, stored_token_ids_of_more_than_256_blocks_with_a_parent_match_fully)
{
	enum { N = 300 };
	struct t_kv s;
	uint32_t *tok = t_calloc((N + 2) * T_BS, 4);
	uint64_t local[N + 2], ext[N + 2];

	t_kv_open(&s, T_KV_RING, NULL);
	t_kv_prompt_tokens(6, N + 2, T_BS, tok, local);
	t_kv_ext(6, N + 2, ext);
	t_kv_tokens(&s, 1, 1, NULL, ext, tok, 2);
	t_kv_tokens(&s, 1, 2, &ext[1], ext + 2, tok + 2 * T_BS, N);
	cr_assert_eq(t_kv_drain(&s), 2);
	cr_expect_eq(t_kv_depth(&s, 1, local, N + 2), N + 2);
	cr_expect_eq(s.k.stats.blocks_stored, N + 2);
	t_kv_expect_clean(&s);
	t_kv_close(&s);
	free(tok);
}

Test(ctl_kv_events, stored_again_counts_only_new_blocks)
{
	struct t_kv s;
	uint64_t local[6], ext[6];

	t_kv_open(&s, T_KV_RING, NULL);
	t_locals(7, 6, local);
	t_kv_ext(7, 6, ext);
	t_kv_stored(&s, 0, 1, NULL, ext, local, 4);
	t_kv_stored(&s, 0, 2, NULL, ext, local, 6);
	cr_assert_eq(t_kv_drain(&s), 2);
	cr_expect_eq(s.k.stats.events, 2);
	cr_expect_eq(s.k.stats.blocks_stored, 6, "the 4 held already count once");
	cr_expect_eq(t_kv_depth(&s, 0, local, 6), 6);
	t_kv_expect_clean(&s);
	t_kv_close(&s);
}

Test(ctl_kv_events, removed_drops_blocks_and_depth_shrinks)
{
	struct t_kv s;
	uint64_t local[8], ext[8];

	t_kv_open(&s, T_KV_RING, NULL);
	t_locals(8, 8, local);
	t_kv_ext(8, 8, ext);
	t_kv_stored(&s, 0, 1, NULL, ext, local, 8);
	t_kv_removed(&s, 0, 2, ext + 5, 3);
	cr_assert_eq(t_kv_drain(&s), 2);
	cr_expect_eq(t_kv_depth(&s, 0, local, 8), 5);
	cr_expect_eq(t_kv_blocks(&s, 0), 5);
	cr_expect_eq(s.k.stats.events, 2);
	cr_expect_eq(s.k.stats.blocks_removed, 3);

	/* A hole: the blocks after it count for nothing. */
	t_kv_removed(&s, 0, 3, ext + 2, 1);
	cr_assert_eq(t_kv_drain(&s), 1);
	cr_expect_eq(t_kv_depth(&s, 0, local, 8), 2);
	cr_expect_eq(s.k.stats.blocks_removed, 4);
	t_kv_expect_clean(&s);
	t_kv_close(&s);
}

Test(ctl_kv_events, removed_of_more_than_256_ids_drops_them_all)
{
	struct t_kv s;
	uint64_t *local = t_calloc(BIG, 8), *ext = t_calloc(BIG, 8);

	t_kv_open(&s, T_KV_RING, NULL);
	t_locals(9, BIG, local);
	t_kv_ext(9, BIG, ext);
	t_kv_stored(&s, 0, 1, NULL, ext, local, BIG);
	t_kv_removed(&s, 0, 2, ext + 100, BIG - 100);
	cr_assert_eq(t_kv_drain(&s), 2);
	cr_expect_eq(t_kv_depth(&s, 0, local, BIG), 100);
	cr_expect_eq(t_kv_blocks(&s, 0), 100);
	cr_expect_eq(s.k.stats.blocks_removed, BIG - 100);
	cr_expect_eq(t_stats(&s.t.x).blocks_removed, BIG - 100);
	t_kv_expect_clean(&s);
	t_kv_close(&s);
	free(local);
	free(ext);
}

Test(ctl_kv_events, removed_of_unknown_ids_is_no_error)
{
	struct t_kv s;
	uint64_t local[4], ext[4], other[3];

	t_kv_open(&s, T_KV_RING, NULL);
	t_locals(10, 4, local);
	t_kv_ext(10, 4, ext);
	t_kv_ext(11, 3, other);
	t_kv_stored(&s, 0, 1, NULL, ext, local, 4);
	t_kv_removed(&s, 0, 2, other, 3);
	t_kv_removed(&s, 1, 1, ext, 4); /* held by rank 0, not by rank 1 */
	cr_assert_eq(t_kv_drain(&s), 3);
	cr_expect_eq(s.k.stats.events, 3);
	cr_expect_eq(s.k.stats.blocks_removed, 0);
	cr_expect_eq(t_stats(&s.t.x).remove_unknown, 7);
	cr_expect_eq(t_kv_depth(&s, 0, local, 4), 4);
	t_kv_expect_clean(&s);
	t_kv_close(&s);
}

Test(ctl_kv_events, cleared_drops_every_block_of_its_rank_only)
{
	struct t_kv s;
	uint64_t local[6], ext[6], ext1[6];

	t_kv_open(&s, T_KV_RING, NULL);
	t_locals(12, 6, local);
	t_kv_ext(12, 6, ext);
	t_kv_ext(13, 6, ext1);
	t_kv_stored(&s, 0, 1, NULL, ext, local, 6);
	t_kv_stored(&s, 1, 1, NULL, ext1, local, 4);
	t_kv_cleared(&s, 0, 2);
	cr_assert_eq(t_kv_drain(&s), 3);
	cr_expect_eq(t_kv_depth(&s, 0, local, 6), 0);
	cr_expect_eq(t_kv_blocks(&s, 0), 0);
	cr_expect_eq(t_kv_depth(&s, 1, local, 6), 4);
	cr_expect_eq(s.k.stats.events, 3);
	cr_expect_eq(s.k.stats.blocks_removed, 6);

	/* The rank's event ids go on after a clear, and it may store again. */
	t_kv_stored(&s, 0, 3, NULL, ext, local, 2);
	cr_assert_eq(t_kv_drain(&s), 1);
	cr_expect_eq(t_kv_depth(&s, 0, local, 6), 2);
	t_kv_expect_clean(&s);
	t_kv_close(&s);
}

Test(ctl_kv_events, repeated_or_older_event_ids_are_dropped_and_counted)
{
	struct t_kv s;
	uint64_t local[8], ext[8];

	t_kv_open(&s, T_KV_RING, NULL);
	t_locals(14, 8, local);
	t_kv_ext(14, 8, ext);
	t_kv_stored(&s, 0, 5, NULL, ext, local, 2);
	t_kv_stored(&s, 0, 5, &ext[1], ext + 2, local + 2, 2); /* repeated */
	t_kv_stored(&s, 0, 3, &ext[1], ext + 2, local + 2, 2); /* older */
	t_kv_removed(&s, 0, 4, ext, 1);			       /* older: block 0 stays */
	t_kv_cleared(&s, 0, 5);				       /* repeated */
	cr_assert_eq(t_kv_drain(&s), 5);
	cr_expect_eq(s.k.stats.duplicates, 4);
	cr_expect_eq(s.k.stats.events, 1);
	cr_expect_eq(s.k.stats.blocks_stored, 2);
	cr_expect_eq(t_kv_depth(&s, 0, local, 8), 2);
	cr_expect_eq(t_stats(&s.t.x).events_dup, 4);

	/* The next id follows the last one applied: no gap. */
	t_kv_stored(&s, 0, 6, &ext[1], ext + 2, local + 2, 2);
	cr_assert_eq(t_kv_drain(&s), 1);
	cr_expect_eq(t_kv_depth(&s, 0, local, 8), 4);
	cr_expect_eq(s.k.stats.gaps, 0);
	cr_expect(!s.k.dump_wanted);
	cr_expect_eq(s.k.stats.refused, 0);
	t_kv_close(&s);
}

Test(ctl_kv_events, an_event_id_jump_counts_a_gap_asks_a_dump_and_still_applies)
{
	struct t_kv s;
	uint64_t local[8], ext[8];

	t_kv_open(&s, T_KV_RING, NULL);
	t_locals(15, 8, local);
	t_kv_ext(15, 8, ext);
	t_kv_stored(&s, 0, 100, NULL, ext, local, 2); /* the first id starts the sequence */
	cr_assert_eq(t_kv_drain(&s), 1);
	cr_expect(!s.k.dump_wanted, "the first id is no gap");
	t_kv_stored(&s, 0, 102, &ext[1], ext + 2, local + 2, 2); /* one id missing */
	cr_assert_eq(t_kv_drain(&s), 1);
	cr_expect_eq(s.k.stats.gaps, 1);
	cr_expect(s.k.dump_wanted);
	cr_expect_eq(t_stats(&s.t.x).events_missing, 1);
	cr_expect_eq(t_kv_depth(&s, 0, local, 8), 4, "the event after the gap applies");
	cr_expect_eq(s.k.stats.events, 2);

	/* The sequence goes on from the jump; each gap counts once, whatever its size. */
	t_kv_stored(&s, 0, 103, &ext[3], ext + 4, local + 4, 2);
	t_kv_removed(&s, 0, 110, ext + 7, 1); /* held by no one: applies all the same */
	t_kv_stored(&s, 0, 111, &ext[5], ext + 6, local + 6, 2);
	cr_assert_eq(t_kv_drain(&s), 3);
	cr_expect_eq(s.k.stats.gaps, 2);
	cr_expect_eq(t_stats(&s.t.x).events_missing, 7);
	cr_expect_eq(s.k.stats.duplicates, 0);
	cr_expect_eq(s.k.stats.events, 5);
	cr_expect_eq(t_kv_depth(&s, 0, local, 8), 8);
	t_kv_close(&s);
}

Test(ctl_kv_events, event_ids_are_per_dp_rank)
{
	struct t_kv s;
	uint64_t local[6], ext0[6], ext1[6];

	t_kv_open(&s, T_KV_RING, NULL);
	t_locals(16, 6, local);
	t_kv_ext(16, 6, ext0);
	t_kv_ext(17, 6, ext1);
	for (uint32_t i = 0; i < 3; i++) {
		t_kv_stored(&s, 0, 1 + i, i ? &ext0[i - 1] : NULL, ext0 + i, local + i, 1);
		/* rank 1 repeats rank 0's ids: no duplicate, no gap */
		t_kv_stored(&s, 1, 1 + i, i ? &ext1[i - 1] : NULL, ext1 + i, local + i, 1);
	}
	t_kv_stored(&s, 0, 4, &ext0[2], ext0 + 3, local + 3, 3);
	cr_assert_eq(t_kv_drain(&s), 7);
	cr_expect_eq(t_kv_depth(&s, 0, local, 6), 6);
	cr_expect_eq(t_kv_depth(&s, 1, local, 6), 3);
	t_kv_expect_clean(&s);

	/* Rank 1's id 4 follows its own 3, whatever rank 0 did; its id 3 again is a duplicate. */
	t_kv_stored(&s, 1, 3, &ext1[2], ext1 + 3, local + 3, 1);
	t_kv_stored(&s, 1, 4, &ext1[2], ext1 + 3, local + 3, 1);
	cr_assert_eq(t_kv_drain(&s), 2);
	cr_expect_eq(s.k.stats.duplicates, 1);
	cr_expect_eq(s.k.stats.gaps, 0);
	cr_expect_eq(t_kv_depth(&s, 1, local, 6), 4);
	t_kv_close(&s);
}

Test(ctl_kv_events, an_unknown_dp_rank_is_counted_dropped_and_intake_goes_on)
{
	struct t_kv s;
	uint64_t local[4], ext[4];

	t_kv_open(&s, T_KV_RING, NULL);
	t_locals(18, 4, local);
	t_kv_ext(18, 4, ext);
	t_kv_stored(&s, 2, 1, NULL, ext, local, 4);
	t_kv_removed(&s, 2, 2, ext, 1);
	t_kv_cleared(&s, UINT32_MAX, 3);
	t_kv_stored(&s, 0, 7, NULL, ext, local, 3);
	cr_assert_eq(t_kv_drain(&s), 4);
	cr_expect_eq(s.k.stats.unknown_rank, 3);
	cr_expect_eq(s.k.stats.events, 1);
	cr_expect_eq(s.k.stats.blocks_stored, 3);
	cr_expect_eq(t_kv_depth(&s, 0, local, 4), 3);
	cr_expect_eq(t_kv_depth(&s, 1, local, 4), 0);
	cr_expect(!s.k.broken);
	cr_expect_eq(s.k.stats.gaps + s.k.stats.duplicates, 0, "no id of another rank consumed");
	t_kv_close(&s);
}

Test(ctl_kv_events, an_unknown_parent_is_refused_and_intake_goes_on)
{
	struct t_kv s;
	uint64_t local[6], ext[6], unknown = 0xDEADBEEF;

	t_kv_open(&s, T_KV_RING, NULL);
	t_locals(19, 6, local);
	t_kv_ext(19, 6, ext);
	t_kv_stored(&s, 0, 1, NULL, ext, local, 2);
	t_kv_stored(&s, 0, 2, &unknown, ext + 2, local + 2, 2);
	t_kv_stored(&s, 1, 1, &ext[1], ext + 2, local + 2, 2); /* rank 0's block, not rank 1's */
	t_kv_stored(&s, 0, 3, &ext[1], ext + 2, local + 2, 4);
	cr_assert_eq(t_kv_drain(&s), 4);
	cr_expect_eq(s.k.stats.refused, 2);
	cr_expect_eq(t_stats(&s.t.x).store_unknown_parent, 2);
	cr_expect_eq(s.k.stats.blocks_stored, 6);
	cr_expect_eq(t_kv_depth(&s, 0, local, 6), 6);
	cr_expect_eq(t_kv_blocks(&s, 1), 0);
	cr_expect(!s.k.broken && !s.k.dump_wanted);
	t_kv_close(&s);
}

Test(ctl_kv_events, a_self_parent_or_repeated_id_is_refused_and_nothing_applied)
{
	struct t_kv s;
	uint64_t local[6], ext[6], bad[3];

	t_kv_open(&s, T_KV_RING, NULL);
	t_locals(20, 6, local);
	t_kv_ext(20, 6, ext);
	t_kv_stored(&s, 0, 1, NULL, ext, local, 2);
	memcpy(bad, ext + 2, sizeof(bad));
	bad[1] = ext[1]; /* the parent again, as the second block */
	t_kv_stored(&s, 0, 2, &ext[1], bad, local + 2, 3);
	memcpy(bad, ext + 2, sizeof(bad));
	bad[2] = bad[0]; /* an id twice */
	t_kv_stored(&s, 0, 3, &ext[1], bad, local + 2, 3);
	t_kv_stored(&s, 1, 1, NULL, bad, local, 3); /* twice, without a parent */
	t_kv_stored(&s, 0, 4, &ext[1], ext + 2, local + 2, 4);
	cr_assert_eq(t_kv_drain(&s), 5);
	cr_expect_eq(s.k.stats.refused, 3);

	struct pdx_stats st = t_stats(&s.t.x);

	cr_expect_eq(st.store_self_parent, 1);
	cr_expect_eq(st.store_repeat_id, 2);
	cr_expect_eq(s.k.stats.blocks_stored, 6, "only the good events stored blocks");
	cr_expect_eq(t_kv_blocks(&s, 1), 0);
	cr_expect_eq(t_kv_depth(&s, 0, local, 6), 6);
	cr_expect_eq(st.entries, 6, "no entry left behind by a refused event");
	cr_expect(!s.k.broken);
	t_kv_close(&s);
}

Test(ctl_kv_events, load_reports_reach_the_router_and_its_busy_filter)
{
	struct rt_config cfg;
	struct t_kv s;
	uint32_t tok[4 * T_BS];

	t_route_config(&cfg);
	cfg.busy_kv_fraction = 0.5; /* of a capacity of 1000 blocks */
	t_kv_open(&s, T_KV_RING, &cfg);
	t_kv_load(&s, 0, 600, 1234);
	t_kv_load(&s, 1, 100, 5);
	cr_assert_eq(t_kv_drain(&s), 2);
	cr_expect_eq(s.k.stats.loads, 2);
	cr_expect_eq(s.k.stats.events, 0, "a load report is no KV event");
	cr_expect_eq(atomic_load(&s.t.rt.target[s.tg[0]].reported_used_blocks), 600);
	cr_expect_eq(atomic_load(&s.t.rt.target[s.tg[0]].reported_prefill_tokens), 1234);
	cr_expect_eq(atomic_load(&s.t.rt.target[s.tg[1]].reported_used_blocks), 100);

	struct rt_plan plan;
	struct rt_request rq;

	t_tokens(tok, 4 * T_BS, 21);
	rq = t_request(&s.t, "m", tok, 4 * T_BS, 0);
	rq.peek = true;
	cr_assert_eq(rt_route(&s.t.core, &rq, &plan), 0);
	cr_expect_eq(plan.first.target, s.tg[1]);
	cr_expect_eq(t_cand(&s.t.core, s.tg[0])->filter, RT_FILTER_BUSY_KV);

	/* A later report replaces the earlier one: rank 0 is no longer busy. */
	t_kv_load(&s, 0, 10, 0);
	t_kv_load(&s, 1, 900, 0);
	cr_assert_eq(t_kv_drain(&s), 2);
	cr_assert_eq(rt_route(&s.t.core, &rq, &plan), 0);
	cr_expect_eq(plan.first.target, s.tg[0]);
	cr_expect_eq(t_cand(&s.t.core, s.tg[1])->filter, RT_FILTER_BUSY_KV);
	t_kv_expect_clean(&s);
	t_kv_close(&s);
}

Test(ctl_kv_events, a_load_report_of_an_unknown_rank_is_counted)
{
	struct t_kv s;

	t_kv_open(&s, T_KV_RING, NULL);
	t_kv_load(&s, 2, 600, 1);
	t_kv_load(&s, 1, 77, 2);
	cr_assert_eq(t_kv_drain(&s), 2);
	cr_expect_eq(s.k.stats.unknown_rank, 1);
	cr_expect_eq(s.k.stats.loads, 1);
	cr_expect_eq(atomic_load(&s.t.rt.target[s.tg[1]].reported_used_blocks), 77);
	cr_expect_eq(atomic_load(&s.t.rt.target[s.tg[0]].reported_used_blocks), 0);
	cr_expect(!s.k.broken);
	t_kv_close(&s);
}

Test(ctl_kv_events, an_unknown_record_type_is_skipped_and_counted)
{
	struct t_kv s;
	struct t_rec junk = t_rec_raw(13);
	uint64_t local[3], ext[3];

	t_kv_open(&s, T_KV_RING, NULL);
	t_locals(22, 3, local);
	t_kv_ext(22, 3, ext);
	memset(junk.p, 0xFF, junk.len); /* whatever a newer worker says */
	t_kv_put(&s, 99, junk);
	t_kv_put(&s, 0xFFFF, t_rec_raw(0));
	t_kv_stored(&s, 0, 1, NULL, ext, local, 3);
	t_kv_load(&s, 1, 5, 5);
	cr_assert_eq(t_kv_drain(&s), 4);
	cr_expect_eq(s.k.stats.unknown_type, 2);
	cr_expect_eq(t_kv_depth(&s, 0, local, 3), 3);
	cr_expect_eq(s.k.stats.loads, 1);
	cr_expect(!s.k.broken);
	t_kv_close(&s);
}

Test(ctl_kv_events, a_drain_takes_at_most_its_budget)
{
	struct t_kv s;
	uint64_t local[5], ext[5];

	t_kv_open(&s, T_KV_RING, NULL);
	t_locals(23, 5, local);
	t_kv_ext(23, 5, ext);
	for (uint32_t i = 0; i < 5; i++)
		t_kv_stored(&s, 0, 1 + i, i ? &ext[i - 1] : NULL, ext + i, local + i, 1);
	cr_expect_eq(ctl_kv_drain(&s.k, 0), 0, "a budget of 0 takes nothing");
	cr_expect_eq(ctl_kv_drain(&s.k, 3), 3);
	cr_expect_eq(t_kv_depth(&s, 0, local, 5), 3);
	cr_expect_eq(ctl_kv_drain(&s.k, 3), 2);
	cr_expect_eq(t_kv_depth(&s, 0, local, 5), 5);
	cr_expect_eq(ctl_kv_drain(&s.k, 3), 0, "the ring is empty");
	cr_expect_eq(s.k.stats.events, 5);
	t_kv_expect_clean(&s);
	t_kv_close(&s);
}

Test(ctl_kv_events, an_empty_ring_drains_to_zero)
{
	struct t_kv s;

	t_kv_open(&s, T_KV_RING, NULL);
	cr_expect_eq(t_kv_drain(&s), 0);
	cr_expect_eq(t_kv_drain(&s), 0);
	cr_expect_eq(s.k.stats.events + s.k.stats.loads, 0);
	t_kv_expect_clean(&s);
	t_kv_close(&s);
}

Test(ctl_kv_events, drained_space_goes_back_to_the_worker)
{
	struct t_kv s;
	uint32_t n = 0, rec = shm_rec_space(sizeof(struct shm_ev_load));
	int err = 0;

	t_kv_open(&s, 1024, NULL);
	for (;;) { /* fill the ring with load reports */
		void *p =
		    shm_ring_reserve(&s.prod, SHM_EV_LOAD, 0, sizeof(struct shm_ev_load), &err);

		if (!p)
			break;
		memcpy(p, &(struct shm_ev_load){.dp_rank = n % 2, .used_blocks = n},
		       sizeof(struct shm_ev_load));
		shm_ring_commit(&s.prod);
		n++;
	}
	cr_assert_eq(err, -ENOBUFS);
	cr_assert_eq(n, 1024 / rec);
	shm_ring_publish(&s.prod);

	cr_expect_eq(ctl_kv_drain(&s.k, 3), 3);
	cr_expect_eq(atomic_load(&((struct shm_ring_shared *)s.mem)->tail), 3 * rec,
		     "the three records' space is released");
	for (uint32_t i = 0; i < 3; i++) /* the worker reuses it */
		t_kv_load(&s, 1, 1000 + i, 0);
	cr_expect_null(shm_ring_reserve(&s.prod, SHM_EV_LOAD, 0, sizeof(struct shm_ev_load), &err));
	cr_expect_eq(err, -ENOBUFS);
	cr_expect_eq(t_kv_drain(&s), (int)n);
	cr_expect_eq(s.k.stats.loads, n + 3);
	cr_expect_eq(atomic_load(&s.t.rt.target[s.tg[1]].reported_used_blocks), 1002,
		     "the last report wins");
	cr_expect_eq(atomic_load(&((struct shm_ring_shared *)s.mem)->tail),
		     atomic_load(&((struct shm_ring_shared *)s.mem)->head));
	t_kv_expect_clean(&s);
	t_kv_close(&s);
}
