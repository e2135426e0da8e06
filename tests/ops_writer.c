/*
 * .ops stream writers for the tests and the fuzzer (see ops_writer.h). Streams are written
 * field by field in little-endian order, as make_indexer_ops.py does, so a test states the
 * bytes it means rather than copying a struct layout from bench/ops.h.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ops_writer.h"
#include "rng.h"

void t_ops_free(struct t_ops *o)
{
	free(o->buf);
	memset(o, 0, sizeof(*o));
}

void t_ops_bytes(struct t_ops *o, const void *p, size_t n)
{
	if (n == 0)
		return; /* p may be NULL: memcpy must not see it */
	if (o->len + n > o->cap) {
		size_t cap = o->cap ? o->cap : 256;

		while (cap < o->len + n)
			cap *= 2;
		o->buf = realloc(o->buf, cap);
		if (!o->buf) {
			fprintf(stderr, "t_ops: out of memory for %zu bytes\n", cap);
			abort();
		}
		o->cap = cap;
	}
	memcpy(o->buf + o->len, p, n);
	o->len += n;
}

void t_ops_u32(struct t_ops *o, uint32_t v)
{
	t_ops_bytes(o, &v, sizeof(v));
}

void t_ops_u64(struct t_ops *o, uint64_t v)
{
	t_ops_bytes(o, &v, sizeof(v));
}

void t_ops_put32(struct t_ops *o, size_t at, uint32_t v)
{
	if (at + sizeof(v) > o->len)
		abort();
	memcpy(o->buf + at, &v, sizeof(v));
}

void t_ops_put64(struct t_ops *o, size_t at, uint64_t v)
{
	if (at + sizeof(v) > o->len)
		abort();
	memcpy(o->buf + at, &v, sizeof(v));
}

void t_ops_header(struct t_ops *o, uint32_t block_size, uint32_t num_workers, uint64_t num_ops)
{
	t_ops_bytes(o, "PDOPS1\0\0", 8);
	t_ops_u32(o, 1);
	t_ops_u32(o, block_size);
	t_ops_u32(o, num_workers);
	t_ops_u32(o, 0);
	t_ops_u64(o, num_ops);
}

void t_ops_op(struct t_ops *o, uint8_t kind, uint32_t worker, uint32_t n)
{
	const uint8_t pad[3] = {0};

	t_ops_bytes(o, &kind, 1);
	t_ops_bytes(o, pad, sizeof(pad));
	t_ops_u32(o, worker);
	t_ops_u32(o, n);
	t_ops_u32(o, 0);
}

void t_ops_store(struct t_ops *o, uint32_t worker, uint64_t parent, const uint64_t *blocks,
		 uint32_t n)
{
	t_ops_op(o, 1, worker, n);
	t_ops_u64(o, parent);
	t_ops_bytes(o, blocks, (size_t)n * 16);
}

void t_ops_remove(struct t_ops *o, uint32_t worker, const uint64_t *ext, uint32_t n)
{
	t_ops_op(o, 2, worker, n);
	t_ops_bytes(o, ext, (size_t)n * 8);
}

void t_ops_match(struct t_ops *o, const uint64_t *local, uint32_t n, const uint32_t *answers,
		 uint32_t k)
{
	t_ops_op(o, 4, 0, n);
	t_ops_bytes(o, local, (size_t)n * 8);
	t_ops_u32(o, k);
	t_ops_u32(o, 0);
	t_ops_bytes(o, answers, (size_t)k * 8);
}

uint64_t t_ops_chain(uint64_t parent, uint64_t local)
{
	uint64_t h = t_mix64(parent ^ t_mix64(local ^ 0x5EED));

	return h ? h : 1;
}

static uint32_t rd32(const uint8_t *p)
{
	uint32_t v;

	memcpy(&v, p, sizeof(v));
	return v;
}

/* Body length of the op at @p (its 16-byte header included), or 0 if it runs past @end. */
static size_t op_size(const uint8_t *p, const uint8_t *end)
{
	size_t left = (size_t)(end - p), n, size;

	if (left < 16)
		return 0;
	n = rd32(p + 8);
	switch (p[0]) {
	case 1:
		size = 16 + 8 + 16 * n;
		break;
	case 2:
		size = 16 + 8 * n;
		break;
	case 4:
		size = 16 + 8 * n + 8;
		if (size > left)
			return 0;
		size += 8 * (size_t)rd32(p + 16 + 8 * n);
		break;
	default:
		size = 16;
	}
	return size <= left ? size : 0;
}

long t_ops_walk(const uint8_t *buf, size_t len, size_t *at, size_t max)
{
	size_t off = 32;
	long n = 0;

	while (off < len) {
		size_t size = op_size(buf + off, buf + len);

		if (size == 0)
			return -1;
		if ((size_t)n < max)
			at[n] = off;
		off += size;
		n++;
	}
	return n;
}

uint64_t t_ops_tiny_local(uint32_t i)
{
	return t_mix64(0x7171 + i) | 1;
}

void t_ops_tiny(struct t_ops *o, size_t at[T_TINY_OPS + 1])
{
	uint64_t q[5], ext[5], pairs[10];
	const uint32_t hit3[] = {1, 3}, hit4[] = {1, 4};
	size_t i = 0;

	for (uint32_t b = 0; b < 5; b++) {
		q[b] = t_ops_tiny_local(b);
		ext[b] = t_ops_chain(b ? ext[b - 1] : 0, q[b]);
		pairs[2 * b] = ext[b];
		pairs[2 * b + 1] = q[b];
	}
	t_ops_header(o, 16, T_TINY_WORKERS, T_TINY_OPS);
	at[i++] = o->len;
	t_ops_match(o, q, 3, NULL, 0);
	at[i++] = o->len;
	t_ops_store(o, 1, 0, pairs, 3);
	at[i++] = o->len;
	t_ops_match(o, q, 4, hit3, 1);
	at[i++] = o->len;
	t_ops_remove(o, 1, &ext[2], 1);
	at[i++] = o->len;
	t_ops_store(o, 2, 0, pairs, 1);
	at[i++] = o->len;
	t_ops_store(o, 1, ext[1], &pairs[4], 2);
	at[i++] = o->len;
	t_ops_op(o, 3, 2, 0);
	at[i++] = o->len;
	t_ops_match(o, q, 5, hit4, 1);
	at[i] = o->len;
}
