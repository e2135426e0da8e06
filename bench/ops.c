/*
 * .ops stream reader: maps the file, checks the header, decodes ops in place. The file is
 * treated as untrusted: every count is bounds-checked against the bytes left before use, with
 * divisions rather than multiplications so that no size computation can overflow.
 */
#include "ops.h"

#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#define PDOPS_OP_HEADER 16u

static uint32_t rd32(const uint8_t *p)
{
	uint32_t v;

	memcpy(&v, p, sizeof(v));
	return v;
}

static uint64_t rd64(const uint8_t *p)
{
	uint64_t v;

	memcpy(&v, p, sizeof(v));
	return v;
}

static int pdops_check_header(struct pdops_file *f)
{
	const uint8_t *h = f->base;

	if (memcmp(h, PDOPS_MAGIC, 8) != 0 || rd32(h + 8) != PDOPS_VERSION)
		return -EBADMSG;
	f->block_size = rd32(h + 12);
	f->num_workers = rd32(h + 16);
	f->num_ops = rd64(h + 24);
	if (f->block_size == 0 || f->num_workers == 0)
		return -EBADMSG;
	/* Every op takes at least its 16-byte header: a larger count is a lie. */
	if (f->num_ops > (f->len - PDOPS_HEADER_BYTES) / PDOPS_OP_HEADER)
		return -EBADMSG;
	f->off = PDOPS_HEADER_BYTES;
	f->done = 0;
	return 0;
}

static int pdops_map(struct pdops_file *f, int fd)
{
	struct stat st;
	void *p;

	if (fstat(fd, &st) < 0)
		return -errno;
	if (!S_ISREG(st.st_mode))
		return -EINVAL;
	if (st.st_size < (off_t)PDOPS_HEADER_BYTES)
		return -EBADMSG;
	if ((uint64_t)st.st_size > SIZE_MAX)
		return -EFBIG;
	/* MAP_POPULATE: a replay times the index, not page faults on its input. */
	p = mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_PRIVATE | MAP_POPULATE, fd, 0);
	if (p == MAP_FAILED)
		return -errno;
	f->base = p;
	f->len = (size_t)st.st_size;
	return 0;
}

int pdops_open(struct pdops_file *f, const char *path)
{
	int fd, err;

	memset(f, 0, sizeof(*f));
	/* O_NONBLOCK: a FIFO must not block the open before fstat() can refuse it. */
	fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK);
	if (fd < 0)
		return -errno;
	err = pdops_map(f, fd);
	close(fd); /* the mapping keeps the file */
	if (err == 0)
		err = pdops_check_header(f);
	if (err < 0)
		pdops_close(f);
	return err;
}

/* Bytes left after @off, which never passes f->len. */
static size_t pdops_left(const struct pdops_file *f, size_t off)
{
	return f->len - off;
}

/* STORE body: parent, then n (ext, local) pairs. */
static int pdops_store(const struct pdops_file *f, size_t at, struct pdops_op *op, size_t *size)
{
	size_t left = pdops_left(f, at);

	if (left < 8 || op->n > (left - 8) / sizeof(struct pdx_block))
		return -EBADMSG;
	op->parent = rd64(f->base + at);
	op->blocks = (const struct pdx_block *)(f->base + at + 8);
	*size = 8 + (size_t)op->n * sizeof(struct pdx_block);
	return 0;
}

/* REMOVE body, and the first part of a MATCH body: n u64 hashes. */
static int pdops_hashes(const struct pdops_file *f, size_t at, struct pdops_op *op, size_t *size)
{
	if (op->n > pdops_left(f, at) / sizeof(uint64_t))
		return -EBADMSG;
	op->hashes = (const uint64_t *)(f->base + at);
	*size = (size_t)op->n * sizeof(uint64_t);
	return 0;
}

/* Answers must name real workers, in increasing order, each with a depth within the query. */
static int pdops_check_expect(const struct pdops_file *f, const struct pdops_op *op)
{
	for (uint32_t i = 0; i < op->nexpect; i++) {
		const struct pdops_expect *e = &op->expect[i];

		if (e->worker >= f->num_workers || e->depth == 0 || e->depth > op->n)
			return -EBADMSG;
		if (i > 0 && e->worker <= op->expect[i - 1].worker)
			return -EBADMSG;
	}
	return 0;
}

/* MATCH body: n local hashes, u32 k + 4 pad bytes, k (worker, depth) pairs. */
static int pdops_match(const struct pdops_file *f, size_t at, struct pdops_op *op, size_t *size)
{
	size_t qbytes, left;

	if (pdops_hashes(f, at, op, &qbytes) < 0)
		return -EBADMSG;
	at += qbytes;
	left = pdops_left(f, at);
	if (left < 8)
		return -EBADMSG;
	op->nexpect = rd32(f->base + at);
	if (op->nexpect > (left - 8) / sizeof(struct pdops_expect))
		return -EBADMSG;
	op->expect = (const struct pdops_expect *)(f->base + at + 8);
	if (pdops_check_expect(f, op) < 0)
		return -EBADMSG;
	*size = qbytes + 8 + (size_t)op->nexpect * sizeof(struct pdops_expect);
	return 0;
}

/* Decodes the body at @at into @op and sets *@size to its length, or returns -EBADMSG. */
static int pdops_body(const struct pdops_file *f, size_t at, struct pdops_op *op, size_t *size)
{
	*size = 0;
	switch (op->kind) {
	case PDOPS_STORE:
		return pdops_store(f, at, op, size);
	case PDOPS_REMOVE:
		return pdops_hashes(f, at, op, size);
	case PDOPS_CLEAR:
		return op->n == 0 ? 0 : -EBADMSG;
	case PDOPS_MATCH:
		return pdops_match(f, at, op, size);
	default:
		return -EBADMSG;
	}
}

int pdops_next(struct pdops_file *f, struct pdops_op *op)
{
	const uint8_t *h = f->base + f->off;
	struct pdops_op o = {0};
	size_t body;

	if (f->done == f->num_ops)
		return f->off == f->len ? 0 : -EBADMSG; /* trailing bytes: not a file we wrote */
	if (pdops_left(f, f->off) < PDOPS_OP_HEADER)
		return -EBADMSG;
	o.kind = h[0];
	o.worker = rd32(h + 4);
	o.n = rd32(h + 8);
	if (o.worker >= f->num_workers)
		return -EBADMSG;
	if (pdops_body(f, f->off + PDOPS_OP_HEADER, &o, &body) < 0)
		return -EBADMSG;
	f->off += PDOPS_OP_HEADER + body;
	f->done++;
	*op = o;
	return 1;
}

void pdops_rewind(struct pdops_file *f)
{
	f->off = PDOPS_HEADER_BYTES;
	f->done = 0;
}

void pdops_close(struct pdops_file *f)
{
	if (f->base)
		munmap((void *)f->base, f->len);
	memset(f, 0, sizeof(*f));
}
