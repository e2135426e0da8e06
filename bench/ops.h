/*
 * Reader of prefix-index operation streams (*.ops, see make_indexer_ops.py and FORMAT.md in
 * the bench data directory). The file is mapped read-only and ops are decoded in place: their
 * arrays point straight into the mapping, so a replay copies nothing. Used by pdbench and the
 * tests; any thread, one pdops_file per thread.
 */
#ifndef PD_BENCH_OPS_H
#define PD_BENCH_OPS_H

#include <stddef.h>
#include <stdint.h>

#include "index.h"

/* The format is little-endian and bodies are used in place, so the host must be too. */
#if !defined(__BYTE_ORDER__) || __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "pdops reads .ops files in place: a little-endian host is required"
#endif

#define PDOPS_MAGIC "PDOPS1\0\0"
#define PDOPS_VERSION 1u
#define PDOPS_HEADER_BYTES 32u

enum { PDOPS_STORE = 1, PDOPS_REMOVE = 2, PDOPS_CLEAR = 3, PDOPS_MATCH = 4 };

/* One expected answer of a MATCH: @worker holds the first @depth blocks of the query. */
struct pdops_expect {
	uint32_t worker, depth;
};

/*
 * One decoded op. The arrays point into the file's mapping and stay valid until pdops_close().
 * STORE: @worker now holds @blocks[0..n), chained after @parent (0: they start at block 0).
 * REMOVE: @worker evicted the blocks whose external ids are @hashes[0..n).
 * CLEAR: @worker dropped everything (n = 0).
 * MATCH: query of local hashes @hashes[0..n); @expect[0..nexpect) lists, by increasing worker
 * id, every worker holding a prefix of it and how deep. @worker is 0 and means nothing.
 */
struct pdops_op {
	uint8_t kind;
	uint32_t worker;
	uint32_t n;
	uint64_t parent;
	const struct pdx_block *blocks;
	const uint64_t *hashes;
	uint32_t nexpect;
	const struct pdops_expect *expect;
};

/* An open stream: the mapping, the header's fields and the read position. */
struct pdops_file {
	const uint8_t *base;
	size_t len;
	size_t off;
	uint32_t block_size, num_workers;
	uint64_t num_ops, done;
};

/* STORE bodies are read as struct pdx_block and MATCH answers as struct pdops_expect. */
_Static_assert(sizeof(struct pdx_block) == 16 && offsetof(struct pdx_block, ext_id) == 0 &&
		   offsetof(struct pdx_block, local_hash) == 8,
	       "struct pdx_block must match the .ops STORE pair layout");
_Static_assert(sizeof(struct pdops_expect) == 8, "struct pdops_expect must match the .ops layout");

/**
 * pdops_open - map an .ops file and check its header.
 * @f: receives the open stream, positioned at the first op.
 * @path: file to open.
 *
 * The header must carry the magic, version 1, a block size and a worker count other than 0,
 * and no more ops than the file has room for (each takes at least 16 bytes), so num_ops can
 * size allocations. Ops themselves are checked one at a time by pdops_next().
 * Returns 0, or a negative errno with @f zeroed:
 * -EBADMSG: the file is shorter than a header, or the header is not a valid one;
 * -EINVAL: @path is not a regular file;
 * -EFBIG: the file does not fit in the address space;
 * any errno of open(2), fstat(2) or mmap(2), negated (-ENOENT, -EACCES, -ENOMEM, ...).
 * Context: any thread; may block on file I/O.
 */
int pdops_open(struct pdops_file *f, const char *path);

/**
 * pdops_next - decode the next op.
 * @f: an open stream.
 * @op: receives the op; its arrays point into the mapping.
 *
 * Every length is checked against the bytes left before it is used, so a truncated or hostile
 * file never makes it read outside the mapping. Pad bytes are not checked.
 * Returns 1 with @op filled in, 0 after the header's num_ops ops when the file ends there, or
 * -EBADMSG for a malformed op: an unknown kind, a CLEAR with n != 0, a worker >= num_workers,
 * a body running past the end of the file, a MATCH answer naming a worker >= num_workers, a
 * depth of 0 or above n, or workers not in increasing order; also for a file that ends before
 * num_ops ops or has bytes after them. After -EBADMSG the position does not move.
 * Context: the thread owning @f; never blocks (the mapping may page in).
 */
int pdops_next(struct pdops_file *f, struct pdops_op *op);

/**
 * pdops_rewind - go back to the first op.
 * Context: the thread owning @f.
 */
void pdops_rewind(struct pdops_file *f);

/**
 * pdops_close - unmap the file; ops decoded from it become invalid. @f is zeroed, so closing
 * it twice is harmless.
 * Context: the thread owning @f.
 */
void pdops_close(struct pdops_file *f);

#endif
