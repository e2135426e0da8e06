/*
 * Block hashing: local hashes straight from the caller's token array (no copy, no allocation)
 * and the sequence-hash chain. See hash.h for the scheme.
 */
#include <errno.h>
#include <string.h>

#include "hash.h"

uint64_t dp_hash_seed(const char *lora, size_t lora_len, const char *salt, size_t salt_len)
{
	uint64_t seed = DP_HASH_SEED;

	/* Unsigned additions wrap, as the scheme requires. */
	if (lora && lora_len)
		seed += XXH3_64bits_withSeed(lora, lora_len, 0);
	if (salt && salt_len)
		seed += XXH3_64bits_withSeed(salt, salt_len, 1);
	return seed;
}

/*
 * XXH3 of one block: the little-endian bytes of its tokens, read in place on little-endian
 * machines. @secret: NULL, or the secret XXH3_generateSecret_fromSeed(@seed) makes.
 */
static inline uint64_t hash_block(const uint32_t *tokens, uint32_t block_size, uint64_t seed,
				  const uint8_t *secret)
{
	size_t len = (size_t)block_size * sizeof(uint32_t);
#if __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
	const uint32_t *le = tokens;
#else
	uint32_t le[DP_HASH_MAX_BLOCK];

	for (uint32_t i = 0; i < block_size; i++)
		le[i] = __builtin_bswap32(tokens[i]);
#endif
	if (!secret)
		return XXH3_64bits_withSeed(le, len, seed);
	return XXH3_64bits_withSecretandSeed(le, len, secret, XXH3_SECRET_DEFAULT_SIZE, seed);
}

/* Each block hashing loop is its own function, so each inlines XXH3's path for its size. */
static void hash_short_blocks(const uint32_t *tokens, size_t n, uint32_t block_size,
			      uint64_t seed, uint64_t *local)
{
	for (size_t i = 0; i < n; i++)
		local[i] = hash_block(tokens + i * block_size, block_size, seed, NULL);
}

static void hash_long_blocks(const uint32_t *tokens, size_t n, uint32_t block_size,
			     uint64_t seed, uint64_t *local)
{
	uint8_t secret[XXH3_SECRET_DEFAULT_SIZE];

	XXH3_generateSecret_fromSeed(secret, seed);
	for (size_t i = 0; i < n; i++)
		local[i] = hash_block(tokens + i * block_size, block_size, seed, secret);
}

/*
 * XXH3 with a seed derives a 192-byte secret from the seed for every input over 240 bytes
 * (XXH3_MIDSIZE_MAX), a block of 64 tokens or more. For those, deriving it once per prompt and
 * hashing with the secret and the seed gives exactly the same values (xxhash.h promises it)
 * for a fraction of the work; shorter blocks never use a secret.
 */
long dp_hash_blocks(const uint32_t *tokens, size_t ntokens, uint32_t block_size, uint64_t seed,
		    uint64_t *local)
{
	if (!dp_hash_block_size_ok(block_size))
		return -EINVAL;

	size_t n = ntokens / block_size;

	if ((size_t)block_size * sizeof(uint32_t) <= XXH3_MIDSIZE_MAX)
		hash_short_blocks(tokens, n, block_size, seed, local);
	else if (n)
		hash_long_blocks(tokens, n, block_size, seed, local);
	return (long)n;
}

void dp_hash_sequence(const uint64_t *local, size_t n, uint64_t *seq)
{
	if (n == 0)
		return;
	seq[0] = local[0];
	for (size_t i = 1; i < n; i++)
		seq[i] = dp_hash_chain(seq[i - 1], local[i]);
}
