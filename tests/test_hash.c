/*
 * Block hashing (hash.h, routing-semantics §1): the golden vectors bit for bit, and the rules
 * around them: seeds, partial blocks, block sizes, and the sequence chain.
 */
#include <errno.h>
#include <string.h>

#include <criterion/criterion.h>

#include "block_hash_vectors.h"
#include "hash.h"
#include "helpers.h"

#define NVECTORS (sizeof(t_hash_vectors) / sizeof(t_hash_vectors[0]))

TestSuite(hash);

static size_t len_or_0(const char *s)
{
	return s ? strlen(s) : 0;
}

/* XXH3-64 of tokens serialised byte by byte, independent of the host's byte order. */
static uint64_t ref_local(const uint32_t *tokens, uint32_t block_size, uint64_t seed)
{
	uint8_t buf[DP_HASH_MAX_BLOCK * 4];

	for (uint32_t i = 0; i < block_size; i++)
		for (int b = 0; b < 4; b++)
			buf[i * 4 + b] = (uint8_t)(tokens[i] >> (8 * b));
	return XXH3_64bits_withSeed(buf, (size_t)block_size * 4, seed);
}

static uint64_t ref_chain(uint64_t parent, uint64_t local)
{
	uint8_t buf[16];

	for (int b = 0; b < 8; b++) {
		buf[b] = (uint8_t)(parent >> (8 * b));
		buf[8 + b] = (uint8_t)(local >> (8 * b));
	}
	return XXH3_64bits_withSeed(buf, sizeof(buf), DP_HASH_SEED);
}

Test(hash, golden_vectors_cover_plain_lora_and_salt_cases)
{
	bool lora = false, salt = false, both = false, partial = false;

	for (size_t i = 0; i < NVECTORS; i++) {
		const struct t_hash_vector *v = &t_hash_vectors[i];

		lora |= v->lora_name && !v->cache_salt;
		salt |= v->cache_salt && !v->lora_name;
		both |= v->lora_name && v->cache_salt;
		partial |= v->ntokens % v->block_size != 0 && v->nblocks > 0;
	}
	cr_assert(NVECTORS >= 9 && lora && salt && both && partial,
		  "the generated header lost cases: regenerate it with tests/gen_vectors.py");
}

Test(hash, seed_of_every_golden_vector_matches)
{
	for (size_t i = 0; i < NVECTORS; i++) {
		const struct t_hash_vector *v = &t_hash_vectors[i];
		uint64_t seed = dp_hash_seed(v->lora_name, len_or_0(v->lora_name), v->cache_salt,
					     len_or_0(v->cache_salt));

		cr_expect_eq(seed, v->seed, "%s: seed %016lx, want %016lx", v->name,
			     (unsigned long)seed, (unsigned long)v->seed);
	}
}

Test(hash, local_hashes_of_every_golden_vector_match)
{
	for (size_t i = 0; i < NVECTORS; i++) {
		const struct t_hash_vector *v = &t_hash_vectors[i];
		uint64_t local[16] = {0};

		cr_assert_leq(v->nblocks, 16, "%s: too many blocks for this test", v->name);
		long n = dp_hash_blocks(v->tokens, v->ntokens, v->block_size, v->seed, local);

		cr_assert_eq(n, (long)v->nblocks, "%s: %ld blocks, want %zu", v->name, n,
			     v->nblocks);
		for (size_t b = 0; b < v->nblocks; b++)
			cr_expect_eq(local[b], v->local[b],
				     "%s: block %zu local %016lx, want %016lx", v->name, b,
				     (unsigned long)local[b], (unsigned long)v->local[b]);
	}
}

Test(hash, sequence_hashes_of_every_golden_vector_match)
{
	for (size_t i = 0; i < NVECTORS; i++) {
		const struct t_hash_vector *v = &t_hash_vectors[i];
		uint64_t local[16], seq[16];

		cr_assert_leq(v->nblocks, 16, "%s: too many blocks for this test", v->name);
		long n = dp_hash_blocks(v->tokens, v->ntokens, v->block_size, v->seed, local);

		cr_assert_eq(n, (long)v->nblocks, "%s", v->name);
		dp_hash_sequence(local, (size_t)n, seq);
		for (size_t b = 0; b < v->nblocks; b++)
			cr_expect_eq(seq[b], v->seq[b],
				     "%s: block %zu sequence %016lx, want %016lx", v->name, b,
				     (unsigned long)seq[b], (unsigned long)v->seq[b]);
	}
}

Test(hash, lora_and_salt_seeds_change_every_local_hash)
{
	for (size_t i = 0; i < NVECTORS; i++) {
		const struct t_hash_vector *v = &t_hash_vectors[i];
		uint64_t plain[16], seeded[16];

		if (!v->lora_name && !v->cache_salt)
			continue;
		cr_assert_leq(v->nblocks, 16, "%s: too many blocks for this test", v->name);
		cr_assert_eq(
		    dp_hash_blocks(v->tokens, v->ntokens, v->block_size, DP_HASH_SEED, plain),
		    (long)v->nblocks);
		cr_assert_eq(dp_hash_blocks(v->tokens, v->ntokens, v->block_size, v->seed, seeded),
			     (long)v->nblocks);
		for (size_t b = 0; b < v->nblocks; b++)
			cr_expect_neq(plain[b], seeded[b], "%s: block %zu ignores the seed",
				      v->name, b);
	}
}

Test(hash, empty_lora_name_and_salt_count_as_none)
{
	cr_expect_eq(dp_hash_seed(NULL, 0, NULL, 0), DP_HASH_SEED);
	cr_expect_eq(dp_hash_seed("", 0, "", 0), DP_HASH_SEED);
	cr_expect_eq(dp_hash_seed("x", 0, NULL, 0), DP_HASH_SEED, "lora_len 0 means no adapter");
	cr_expect_eq(dp_hash_seed("ab", 2, NULL, 0),
		     DP_HASH_SEED + XXH3_64bits_withSeed("ab", 2, 0));
	cr_expect_eq(dp_hash_seed(NULL, 0, "ab", 2),
		     DP_HASH_SEED + XXH3_64bits_withSeed("ab", 2, 1));
	cr_expect_neq(dp_hash_seed("ab", 2, NULL, 0), dp_hash_seed(NULL, 0, "ab", 2),
		      "a LoRA name and an equal salt must give different seeds");
}

Test(hash, trailing_partial_block_is_ignored)
{
	uint32_t tokens[5 * 64];
	uint64_t whole[8], more[8];

	for (size_t i = 0; i < 5 * 64; i++)
		tokens[i] = (uint32_t)t_mix64(i);
	for (uint32_t extra = 1; extra < 64; extra++) {
		for (size_t i = 0; i < 8; i++)
			more[i] = 0xA5A5A5A5A5A5A5A5ull;
		cr_assert_eq(dp_hash_blocks(tokens, 4 * 64, 64, DP_HASH_SEED, whole), 4);
		cr_assert_eq(dp_hash_blocks(tokens, 4 * 64 + extra, 64, DP_HASH_SEED, more), 4,
			     "%u extra tokens made a block", extra);
		cr_assert_arr_eq(whole, more, 4 * sizeof(uint64_t));
		cr_assert_eq(more[4], 0xA5A5A5A5A5A5A5A5ull, "wrote past the full blocks");
	}
	cr_expect_eq(dp_hash_blocks(tokens, 63, 64, DP_HASH_SEED, more), 0);
	cr_expect_eq(dp_hash_blocks(tokens, 0, 64, DP_HASH_SEED, more), 0);
}

Test(hash, invalid_block_sizes_return_einval)
{
	static const uint32_t bad[] = {0,   3,	  5,	6,    7,    12,		48,
				       100, 1023, 1025, 2048, 4096, UINT32_MAX, 1u << 31};
	uint32_t tokens[4096] = {0};
	uint64_t local[4096];

	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
		cr_expect_eq(dp_hash_blocks(tokens, 4096, bad[i], DP_HASH_SEED, local), -EINVAL,
			     "block size %u", bad[i]);
}

Test(hash, every_power_of_two_up_to_1024_is_a_valid_block_size)
{
	static uint32_t tokens[3 * DP_HASH_MAX_BLOCK + 7];
	static uint64_t local[3 * DP_HASH_MAX_BLOCK + 7];
	const size_t ntokens = sizeof(tokens) / sizeof(tokens[0]);

	for (size_t i = 0; i < ntokens; i++)
		tokens[i] = (uint32_t)t_mix64(i ^ 0xBEEF);
	for (uint32_t bs = 1; bs <= DP_HASH_MAX_BLOCK; bs <<= 1) {
		long n = dp_hash_blocks(tokens, ntokens, bs, 77, local);

		cr_assert_eq(n, (long)(ntokens / bs), "block size %u gave %ld blocks", bs, n);
		for (long b = 0; b < n; b++)
			cr_assert_eq(
			    local[b], ref_local(tokens + b * bs, bs, 77),
			    "block size %u, block %ld: not XXH3 of the little-endian tokens", bs,
			    b);
	}
}

Test(hash, local_hash_depends_only_on_the_block_tokens_and_seed)
{
	uint32_t tokens[4 * 16];
	uint64_t local[4];

	for (size_t i = 0; i < 16; i++)
		tokens[i] = tokens[16 + i] = tokens[48 + i] = (uint32_t)(i * 2654435761u);
	for (size_t i = 0; i < 16; i++)
		tokens[32 + i] = tokens[i] ^ 1;
	cr_assert_eq(dp_hash_blocks(tokens, 64, 16, DP_HASH_SEED, local), 4);
	cr_expect_eq(local[0], local[1], "equal blocks at different positions must hash equal");
	cr_expect_eq(local[0], local[3]);
	cr_expect_neq(local[0], local[2], "one flipped bit must change the hash");
}

Test(hash, chain_is_xxh3_of_the_two_little_endian_words)
{
	struct t_rng rng;

	t_rng_seed(&rng, 7);
	for (int i = 0; i < 1000; i++) {
		uint64_t p = t_rng_next(&rng), l = t_rng_next(&rng);

		cr_assert_eq(dp_hash_chain(p, l), ref_chain(p, l), "chain(%016lx, %016lx)",
			     (unsigned long)p, (unsigned long)l);
	}
	cr_expect_neq(dp_hash_chain(1, 2), dp_hash_chain(2, 1), "chain must be ordered");
}

Test(hash, sequence_equals_chaining_dp_hash_chain)
{
	enum { N = 300 };
	uint64_t local[N], seq[N + 1];
	struct t_rng rng;

	t_rng_seed(&rng, 99);
	for (size_t i = 0; i < N; i++)
		local[i] = t_rng_next(&rng);
	seq[N] = 0x5A5A5A5A5A5A5A5Aull;
	dp_hash_sequence(local, N, seq);
	cr_assert_eq(seq[0], local[0], "block 0's sequence hash is its local hash");
	for (size_t i = 1; i < N; i++)
		cr_assert_eq(seq[i], dp_hash_chain(seq[i - 1], local[i]), "block %zu", i);
	cr_assert_eq(seq[N], 0x5A5A5A5A5A5A5A5Aull, "wrote past n");

	/* A prefix's sequence hashes do not depend on what follows it. */
	uint64_t head[10];

	dp_hash_sequence(local, 10, head);
	cr_assert_arr_eq(head, seq, sizeof(head));
}

Test(hash, sequence_of_zero_blocks_writes_nothing)
{
	uint64_t seq[1] = {42}, local[1] = {7};

	dp_hash_sequence(local, 0, seq);
	cr_expect_eq(seq[0], 42);
}
