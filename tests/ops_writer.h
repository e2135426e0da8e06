/*
 * Writers of .ops byte streams (FORMAT.md in the shared bench directory) for test_ops.c and the
 * fuzzer: a growable buffer with one builder per record, FORMAT.md's hash chain, a walker that
 * finds every op without using bench/ops.c, and a tiny hand-made stream with every op kind.
 * No Criterion here, so the libFuzzer build can link it; allocation failure aborts.
 */
#ifndef PD_TESTS_OPS_WRITER_H
#define PD_TESTS_OPS_WRITER_H

#include <stddef.h>
#include <stdint.h>

/* A growing byte stream. Zero-initialise it; t_ops_free() releases it. */
struct t_ops {
	uint8_t *buf;
	size_t len, cap;
};

void t_ops_free(struct t_ops *o);
void t_ops_bytes(struct t_ops *o, const void *p, size_t n);
void t_ops_u32(struct t_ops *o, uint32_t v);
void t_ops_u64(struct t_ops *o, uint64_t v);

/* Overwrite a little-endian field already written at @at. */
void t_ops_put32(struct t_ops *o, size_t at, uint32_t v);
void t_ops_put64(struct t_ops *o, size_t at, uint64_t v);

/* The 32-byte header, and the 16-byte header every op starts with. */
void t_ops_header(struct t_ops *o, uint32_t block_size, uint32_t num_workers, uint64_t num_ops);
void t_ops_op(struct t_ops *o, uint8_t kind, uint32_t worker, uint32_t n);

/* Whole ops; @blocks holds n (ext, local) pairs, @answers k (worker, depth) pairs. */
void t_ops_store(struct t_ops *o, uint32_t worker, uint64_t parent, const uint64_t *blocks,
		 uint32_t n);
void t_ops_remove(struct t_ops *o, uint32_t worker, const uint64_t *ext, uint32_t n);
void t_ops_match(struct t_ops *o, const uint64_t *local, uint32_t n, const uint32_t *answers,
		 uint32_t k);

/* FORMAT.md's external hash of a block: chain(p, l) = splitmix64(p ^ splitmix64(l ^ 0x5EED)). */
uint64_t t_ops_chain(uint64_t parent, uint64_t local);

/*
 * Walks the ops of a well-formed stream the way FORMAT.md lays them out, independently of
 * bench/ops.c: at[i] receives the offset of op i for i < max. Returns the number of ops, or
 * -1 if a record runs past @len.
 */
long t_ops_walk(const uint8_t *buf, size_t len, size_t *at, size_t max);

/* Field offsets inside op header at @op_at. */
#define T_OPS_KIND(op_at) (op_at)
#define T_OPS_WORKER(op_at) ((op_at) + 4)
#define T_OPS_N(op_at) ((op_at) + 8)
#define T_OPS_HEADER_NUM_OPS 24

/*
 * The tiny stream: 4 workers, block size 16, T_TINY_OPS ops of every kind, each chained as
 * FORMAT.md says and each MATCH answered truly:
 *   0 MATCH q[0..3) -> none         4 STORE w2 after 0: 1 block
 *   1 STORE w1 after 0: 3 blocks    5 STORE w1 after block 1: blocks 2, 3
 *   2 MATCH q[0..4) -> (1, 3)       6 CLEAR w2
 *   3 REMOVE w1 block 2             7 MATCH q[0..5) -> (1, 4)
 * q[i] is t_ops_tiny_local(i). at[0..T_TINY_OPS) receives op offsets, at[T_TINY_OPS] the length.
 */
#define T_TINY_OPS 8
#define T_TINY_WORKERS 4
void t_ops_tiny(struct t_ops *o, size_t at[T_TINY_OPS + 1]);
uint64_t t_ops_tiny_local(uint32_t i);

#endif
