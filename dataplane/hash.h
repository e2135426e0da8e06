/*
 * Block hashing (routing-semantics §1): the identity of KV blocks and prefixes.
 *
 * A block is block_size consecutive u32 tokens; only full blocks count. Its local hash is
 * XXH3-64 of the tokens as little-endian bytes under a seed derived from the LoRA name and the
 * cache salt; the sequence hash of block i chains the sequence hash of block i-1 with the local
 * hash of block i, so it names the whole prefix. Pure functions, callable from any thread.
 */
#ifndef PD_DATAPLANE_HASH_H
#define PD_DATAPLANE_HASH_H

#include <stddef.h>
#include <stdint.h>

#define XXH_INLINE_ALL /* the 16-byte chain hash must inline to run at a few ns */
#include <xxhash.h>

/* Seed of a request without LoRA adapter or cache salt. */
#define DP_HASH_SEED 1337u

/* Largest block size the router accepts, in tokens (routing-semantics §1). */
#define DP_HASH_MAX_BLOCK 1024u

/**
 * dp_hash_seed - seed for the local hashes of one request.
 * @lora: LoRA adapter name, or NULL; an empty name counts as none.
 * @lora_len: length of @lora in bytes.
 * @salt: cache salt (tenant namespace), or NULL; an empty salt counts as none.
 * @salt_len: length of @salt in bytes.
 *
 * Returns DP_HASH_SEED plus XXH3_64(lora, 0) plus XXH3_64(salt, 1), wrapping.
 */
uint64_t dp_hash_seed(const char *lora, size_t lora_len, const char *salt, size_t salt_len);

/* Is @block_size one the router accepts: a power of two in [1, DP_HASH_MAX_BLOCK]? */
static inline int dp_hash_block_size_ok(uint32_t block_size)
{
	return block_size && block_size <= DP_HASH_MAX_BLOCK && !(block_size & (block_size - 1));
}

/**
 * dp_hash_blocks - local hashes of the full blocks of a token array.
 * @tokens: the prompt; read in place, never copied on little-endian machines.
 * @ntokens: number of tokens; a trailing partial block is ignored.
 * @block_size: tokens per block, a power of two in [1, DP_HASH_MAX_BLOCK].
 * @seed: from dp_hash_seed().
 * @local: output, room for ntokens / block_size hashes.
 *
 * Returns the number of blocks hashed, or -EINVAL when @block_size is not a valid block size.
 */
long dp_hash_blocks(const uint32_t *tokens, size_t ntokens, uint32_t block_size, uint64_t seed,
		    uint64_t *local);

/**
 * dp_hash_chain - sequence hash of a block from its parent's sequence hash and its local hash.
 *
 * XXH3_64(le64(parent_seq) || le64(local), DP_HASH_SEED). Block 0 has no parent: its sequence
 * hash is its local hash.
 */
static inline uint64_t dp_hash_chain(uint64_t parent_seq, uint64_t local)
{
	uint64_t buf[2] = {parent_seq, local};

#if __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
	buf[0] = __builtin_bswap64(buf[0]);
	buf[1] = __builtin_bswap64(buf[1]);
#endif
	return XXH3_64bits_withSeed(buf, sizeof(buf), DP_HASH_SEED);
}

/**
 * dp_hash_sequence - sequence hashes of a run of blocks.
 * @local: local hashes of blocks 0..n-1 of a prompt.
 * @n: number of blocks.
 * @seq: output, n sequence hashes; may not alias @local.
 */
void dp_hash_sequence(const uint64_t *local, size_t n, uint64_t *seq);

#endif
