/*
 * The .ops reader (bench/ops.c). Suite ops: the shipped streams and a hand-made tiny one decode
 * to what FORMAT.md lays out, and their contents agree with a replay of the simulated workers'
 * caches. Suite ops_fault, in the manner of SQLite's *fault.test: truncated, corrupt and lying
 * files, built byte by byte in a temp file under /tmp, are rejected with -EBADMSG (or the errno
 * ops.h documents), never hand out an array outside the mapping, and leave the stream where it
 * was. The reader's mappings get a guard page after them (guard_mmap.c), so reading past the end
 * of a file whose length is a multiple of the page size faults. A test that crashes leaves its
 * /tmp/pdops-test-XXXXXX file behind as a reproducer.
 * Both suites live here (about 1,000 lines, over the usual 600) because they share the temp
 * file, the decoding checks and the stream builders; the fault suite is two thirds of it.
 */
#include <errno.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <criterion/criterion.h>

#include "guard_mmap.h"
#include "helpers.h"
#include "ops.h"
#include "ops_writer.h"

static char tmp_path[32];
static int tmp_fd = -1;

static void tmp_setup(void)
{
	strcpy(tmp_path, "/tmp/pdops-test-XXXXXX");
	tmp_fd = mkstemp(tmp_path);
	cr_assert(tmp_fd >= 0, "mkstemp: %s", strerror(errno));
}

static void tmp_teardown(void)
{
	close(tmp_fd);
	unlink(tmp_path);
}

TestSuite(ops, .init = tmp_setup, .fini = tmp_teardown, .timeout = 60);
TestSuite(ops_fault, .init = tmp_setup, .fini = tmp_teardown, .timeout = 120);

/* Make the temp file hold exactly @buf[0..len). */
static void write_tmp(const void *buf, size_t len)
{
	size_t done = 0;

	cr_assert_eq(ftruncate(tmp_fd, 0), 0, "ftruncate: %s", strerror(errno));
	while (done < len) {
		ssize_t w = pwrite(tmp_fd, (const uint8_t *)buf + done, len - done, (off_t)done);

		cr_assert(w > 0, "pwrite %s: %s", tmp_path, strerror(errno));
		done += (size_t)w;
	}
}

/* tests/data/@name */
static void data_path(char *path, size_t size, const char *name)
{
	snprintf(path, size, "%s/%s", PD_TEST_DATA, name);
}

/* Read tests/data/@name into @o. */
static void read_data(const char *name, struct t_ops *o)
{
	char path[PATH_MAX], chunk[65536];
	FILE *fp;
	size_t got;

	data_path(path, sizeof(path), name);
	fp = fopen(path, "rb");
	cr_assert(fp, "%s: %s", path, strerror(errno));
	while ((got = fread(chunk, 1, sizeof(chunk), fp)) > 0)
		t_ops_bytes(o, chunk, got);
	cr_assert(!ferror(fp), "%s: read error", path);
	fclose(fp);
}

/* Op offsets of a stream read by read_data(): at[i] for each op, at[nops] = the length. */
static size_t walk(const struct t_ops *o, size_t *at, size_t max)
{
	long n = t_ops_walk(o->buf, o->len, at, max);

	cr_assert(n >= 0 && (size_t)n < max, "stream does not walk: %ld ops", n);
	at[n] = o->len;
	return (size_t)n;
}

/* The @count elements of @size bytes at @p lie between the header and the end of the mapping. */
static void assert_inside(const struct pdops_file *f, const void *p, size_t count, size_t size)
{
	uintptr_t base = (uintptr_t)f->base, at = (uintptr_t)p;

	cr_assert(at >= base + PDOPS_HEADER_BYTES && at <= base + f->len, "array outside the file");
	cr_assert(count <= (base + f->len - at) / size, "array of %zu runs past the end", count);
}

static void assert_op_inside(const struct pdops_file *f, const struct pdops_op *op)
{
	if (op->kind == PDOPS_STORE)
		assert_inside(f, op->blocks, op->n, sizeof(*op->blocks));
	if (op->kind == PDOPS_REMOVE || op->kind == PDOPS_MATCH)
		assert_inside(f, op->hashes, op->n, sizeof(*op->hashes));
	if (op->kind == PDOPS_MATCH)
		assert_inside(f, op->expect, op->nexpect, sizeof(*op->expect));
}

/* How decoding the temp file ended: pdops_open's return, pdops_next's last, ops before it. */
struct outcome {
	int open_rc, next_rc;
	uint64_t ops;
};

static struct outcome decode_tmp(void)
{
	static const struct pdops_file zero;
	struct outcome r = {0};
	struct pdops_file f;
	struct pdops_op op;

	r.open_rc = pdops_open(&f, tmp_path);
	if (r.open_rc < 0) {
		cr_assert(!memcmp(&f, &zero, sizeof(f)), "failed open left the stream set");
		return r;
	}
	while ((r.next_rc = pdops_next(&f, &op)) == 1) {
		assert_op_inside(&f, &op);
		r.ops++;
		cr_assert_leq(r.ops, f.num_ops, "more ops than the header's num_ops");
	}
	if (r.next_rc < 0) {
		size_t off = f.off;

		cr_assert_eq(pdops_next(&f, &op), r.next_rc, "an error that does not repeat");
		cr_assert_eq(f.off, off, "an error moved the position");
		cr_assert_eq(f.done, r.ops);
	}
	pdops_close(&f);
	return r;
}

static struct outcome decode(const void *buf, size_t len)
{
	write_tmp(buf, len);
	return decode_tmp();
}

/* Decoding @buf opens, gives @before ops, then -EBADMSG. */
static void expect_rejected(const void *buf, size_t len, uint64_t before, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

static void expect_rejected(const void *buf, size_t len, uint64_t before, const char *fmt, ...)
{
	struct outcome r = decode(buf, len);
	char what[160];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(what, sizeof(what), fmt, ap);
	va_end(ap);
	cr_assert_eq(r.open_rc, 0, "%s: pdops_open: %s", what, strerror(-r.open_rc));
	cr_assert_eq(r.next_rc, -EBADMSG, "%s: pdops_next ended with %d, not -EBADMSG", what,
		     r.next_rc);
	cr_assert_eq(r.ops, before, "%s: rejected after %lu ops, not %lu", what,
		     (unsigned long)r.ops, (unsigned long)before);
}

/* pdops_open on @buf returns -EBADMSG. */
static void expect_open_rejected(const void *buf, size_t len, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void expect_open_rejected(const void *buf, size_t len, const char *fmt, ...)
{
	struct outcome r = decode(buf, len);
	char what[160];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(what, sizeof(what), fmt, ap);
	va_end(ap);
	cr_assert_eq(r.open_rc, -EBADMSG, "%s: pdops_open returned %d, not -EBADMSG", what,
		     r.open_rc);
}

static uint32_t field32(const struct t_ops *o, size_t at)
{
	uint32_t v;

	memcpy(&v, o->buf + at, sizeof(v));
	return v;
}

/* Offset of the u32 k of the MATCH op at @op_at: after its header and n local hashes. */
static size_t match_k_at(const struct t_ops *o, size_t op_at)
{
	return op_at + 16 + 8 * (size_t)field32(o, T_OPS_N(op_at));
}

/* ---- Suite ops: what a well-formed stream decodes to. ---- */

/* (worker, ext) pairs the simulated workers hold: open addressing with tombstones. */
struct held_slot {
	uint64_t ext;
	uint32_t worker, state; /* 0 empty, 1 held, 2 removed */
};

struct caches {
	struct held_slot *slot;
	size_t mask, fill;
	uint32_t workers;
};

static struct held_slot *cache_find(struct caches *c, uint32_t worker, uint64_t ext, bool add)
{
	size_t i = t_mix64(ext ^ ((uint64_t)worker << 56)) & c->mask;
	struct held_slot *free_slot = NULL;

	for (;; i = (i + 1) & c->mask) {
		struct held_slot *s = &c->slot[i];

		if (s->state == 1 && s->ext == ext && s->worker == worker)
			return s;
		if (s->state == 2 && !free_slot)
			free_slot = s;
		if (s->state == 0)
			break;
	}
	if (!add)
		return NULL;
	if (!free_slot) {
		free_slot = &c->slot[i];
		cr_assert_lt(++c->fill, c->mask / 2, "simulation table too small");
	}
	*free_slot = (struct held_slot){.ext = ext, .worker = worker, .state = 1};
	return free_slot;
}

/* Leading blocks of @ext[0..n) that @worker holds. */
static uint32_t cache_depth(struct caches *c, uint32_t worker, const uint64_t *ext, uint32_t n)
{
	uint32_t d = 0;

	while (d < n && cache_find(c, worker, ext[d], false))
		d++;
	return d;
}

static void sim_store(struct caches *c, const struct pdops_op *op, uint64_t *stored)
{
	uint64_t prev = op->parent;

	cr_assert(!prev || cache_find(c, op->worker, prev, false), "STORE after an unheld parent");
	for (uint32_t i = 0; i < op->n; i++) {
		const struct pdx_block *b = &op->blocks[i];

		cr_assert_neq(b->local_hash, 0, "local hash 0 (the generator writes 1)");
		cr_assert_eq(b->ext_id, t_ops_chain(prev, b->local_hash), "block %u off the chain",
			     i);
		cr_assert(!cache_find(c, op->worker, b->ext_id, false), "STORE of a held block");
		cache_find(c, op->worker, b->ext_id, true);
		prev = b->ext_id;
	}
	*stored += op->n;
}

static void sim_remove(struct caches *c, const struct pdops_op *op, uint64_t *removed)
{
	for (uint32_t i = 0; i < op->n; i++) {
		struct held_slot *s = cache_find(c, op->worker, op->hashes[i], false);

		cr_assert(s, "REMOVE of block %u, which worker %u does not hold", i, op->worker);
		s->state = 2;
	}
	*removed += op->n;
}

static void sim_clear(struct caches *c, const struct pdops_op *op)
{
	for (size_t i = 0; i <= c->mask; i++)
		if (c->slot[i].state == 1 && c->slot[i].worker == op->worker)
			c->slot[i].state = 2;
}

/* Every worker's true depth for the query is in the answers, and only those above 0. */
static void sim_match(struct caches *c, const struct pdops_op *op)
{
	uint64_t *ext = t_calloc(op->n, sizeof(*ext)), prev = 0;
	uint32_t next = 0;

	for (uint32_t i = 0; i < op->n; i++)
		prev = ext[i] = t_ops_chain(prev, op->hashes[i]);
	for (uint32_t w = 0; w < c->workers; w++) {
		uint32_t d = cache_depth(c, w, ext, op->n);
		uint32_t want = next < op->nexpect && op->expect[next].worker == w
				    ? op->expect[next++].depth
				    : 0;

		cr_assert_eq(d, want, "worker %u holds %u blocks of the query, answer says %u", w,
			     d, want);
	}
	cr_assert_eq(next, op->nexpect, "answers not in worker order");
	free(ext);
}

struct kinds {
	uint64_t store, remove, clear, match;
};

/* Decode the stream at @path in full and replay it; its op kinds must count to @want. */
static void check_stream(const char *path, struct kinds want)
{
	struct caches c = {.mask = (1u << 17) - 1};
	struct kinds got = {0};
	uint64_t stored = 0, removed = 0;
	struct pdops_file f;
	struct pdops_op op;
	int rc;

	cr_assert_eq(pdops_open(&f, path), 0, "%s", path);
	c.workers = f.num_workers;
	c.slot = t_calloc(c.mask + 1, sizeof(*c.slot));
	while ((rc = pdops_next(&f, &op)) == 1) {
		assert_op_inside(&f, &op);
		cr_assert_lt(op.worker, f.num_workers);
		if (op.kind == PDOPS_STORE)
			got.store++, sim_store(&c, &op, &stored);
		else if (op.kind == PDOPS_REMOVE)
			got.remove++, sim_remove(&c, &op, &removed);
		else if (op.kind == PDOPS_CLEAR)
			got.clear++, sim_clear(&c, &op);
		else if (op.kind == PDOPS_MATCH)
			got.match++, sim_match(&c, &op);
		else
			cr_assert_fail("op %lu: kind %u", (unsigned long)f.done, op.kind);
		cr_assert(op.kind == PDOPS_MATCH || op.nexpect == 0);
	}
	cr_assert_eq(rc, 0, "%s: ended with %d after %lu ops", path, rc, (unsigned long)f.done);
	cr_assert_eq(f.done, f.num_ops);
	cr_assert_eq(f.off, f.len);
	cr_assert_eq(pdops_next(&f, &op), 0, "the end does not repeat");
	cr_assert_eq(got.store, want.store);
	cr_assert_eq(got.remove, want.remove);
	cr_assert_eq(got.clear, want.clear);
	cr_assert_eq(got.match, want.match);
	cr_assert(stored >= removed && (want.remove == 0 || removed > 0));
	free(c.slot);
	pdops_close(&f);
}

Test(ops, small_stream_header_has_the_generator_settings)
{
	char path[PATH_MAX];
	struct pdops_file f;

	data_path(path, sizeof(path), "small.ops");
	cr_assert_eq(pdops_open(&f, path), 0);
	cr_assert_eq(f.block_size, 64);
	cr_assert_eq(f.num_workers, 8);
	cr_assert_eq(f.num_ops, 100);
	cr_assert_eq(f.off, PDOPS_HEADER_BYTES);
	cr_assert_eq(f.done, 0);
	cr_assert_eq(f.len, 283920);
	pdops_close(&f);
}

Test(ops, small_stream_ops_follow_the_format_and_the_answers_are_true)
{
	char path[PATH_MAX];

	data_path(path, sizeof(path), "small.ops");
	check_stream(path, (struct kinds){.store = 37, .remove = 26, .match = 37});
}

Test(ops, shared_prefix_stream_ops_follow_the_format_and_the_answers_are_true)
{
	char path[PATH_MAX];

	data_path(path, sizeof(path), "small_shared.ops");
	check_stream(path, (struct kinds){.store = 29, .remove = 26, .match = 40});
}

Test(ops, tiny_stream_ops_follow_the_format_and_the_answers_are_true)
{
	struct t_ops o = {0};
	size_t at[T_TINY_OPS + 1];

	t_ops_tiny(&o, at);
	write_tmp(o.buf, o.len);
	check_stream(tmp_path, (struct kinds){.store = 3, .remove = 1, .clear = 1, .match = 3});
	t_ops_free(&o);
}

/* Every field of every op of the tiny stream, and where each array points. */
Test(ops, tiny_stream_decodes_to_the_fields_written)
{
	static const struct {
		uint8_t kind;
		uint32_t worker, n, nexpect;
	} want[T_TINY_OPS] = {{4, 0, 3, 0}, {1, 1, 3, 0}, {4, 0, 4, 1}, {2, 1, 1, 0},
			      {1, 2, 1, 0}, {1, 1, 2, 0}, {3, 2, 0, 0}, {4, 0, 5, 1}};
	struct t_ops o = {0};
	size_t at[T_TINY_OPS + 1];
	struct pdops_file f;
	struct pdops_op op;

	t_ops_tiny(&o, at);
	write_tmp(o.buf, o.len);
	cr_assert_eq(pdops_open(&f, tmp_path), 0);
	cr_assert_eq(f.block_size, 16);
	cr_assert_eq(f.num_workers, T_TINY_WORKERS);
	for (size_t i = 0; i < T_TINY_OPS; i++) {
		const uint8_t *body = f.base + at[i] + 16;

		cr_assert_eq(pdops_next(&f, &op), 1, "op %zu", i);
		cr_assert_eq(op.kind, want[i].kind, "op %zu", i);
		cr_assert_eq(op.worker, want[i].worker, "op %zu", i);
		cr_assert_eq(op.n, want[i].n, "op %zu", i);
		cr_assert_eq(op.nexpect, want[i].nexpect, "op %zu", i);
		cr_assert_eq(f.off, at[i + 1], "op %zu", i);
		if (op.kind == PDOPS_STORE) {
			cr_assert_eq((const void *)op.blocks, body + 8);
			cr_assert_eq(op.blocks[0].local_hash, t_ops_tiny_local(i == 5 ? 2 : 0));
		}
		if (op.kind == PDOPS_REMOVE || op.kind == PDOPS_MATCH)
			cr_assert_eq((const void *)op.hashes, body);
		if (op.kind == PDOPS_MATCH) {
			cr_assert_eq(op.hashes[op.n - 1], t_ops_tiny_local(op.n - 1));
			cr_assert_eq((const void *)op.expect, body + 8 * op.n + 8);
		}
	}
	cr_assert_eq(pdops_next(&f, &op), 0);
	pdops_rewind(&f); /* op 5 stores after block 1: its parent is block 1's external hash */
	for (int i = 0; i <= 5; i++)
		cr_assert_eq(pdops_next(&f, &op), 1);
	cr_assert_eq(op.parent,
		     t_ops_chain(t_ops_chain(0, t_ops_tiny_local(0)), t_ops_tiny_local(1)));
	cr_assert_eq(op.blocks[1].ext_id, t_ops_chain(op.blocks[0].ext_id, t_ops_tiny_local(3)));
	pdops_close(&f);
	t_ops_free(&o);
}

Test(ops, header_only_stream_ends_at_once)
{
	struct t_ops o = {0};
	struct outcome r;

	t_ops_header(&o, 64, 1, 0);
	r = decode(o.buf, o.len);
	cr_assert_eq(r.open_rc, 0);
	cr_assert_eq(r.next_rc, 0);
	cr_assert_eq(r.ops, 0);
	t_ops_free(&o);
}

/* ops.h: pad bytes are not checked (nor is the header's reserved word). */
Test(ops, pad_and_reserved_bytes_are_not_checked)
{
	struct t_ops o = {0};
	size_t at[T_TINY_OPS + 1];
	struct outcome r;

	t_ops_tiny(&o, at);
	t_ops_put32(&o, 20, UINT32_MAX);
	for (size_t i = 0; i < T_TINY_OPS; i++) {
		memset(o.buf + at[i] + 1, 0xff, 3);
		t_ops_put32(&o, at[i] + 12, UINT32_MAX);
		if (o.buf[at[i]] == PDOPS_MATCH)
			t_ops_put32(&o, match_k_at(&o, at[i]) + 4, UINT32_MAX);
	}
	r = decode(o.buf, o.len);
	cr_assert_eq(r.open_rc, 0);
	cr_assert_eq(r.next_rc, 0);
	cr_assert_eq(r.ops, T_TINY_OPS);
	t_ops_free(&o);
}

Test(ops, rewind_replays_the_same_ops)
{
	char path[PATH_MAX];
	const void *first[128];
	struct pdops_file f;
	struct pdops_op op;
	size_t n = 0;

	data_path(path, sizeof(path), "small.ops");
	cr_assert_eq(pdops_open(&f, path), 0);
	while (n < 128 && pdops_next(&f, &op) == 1)
		first[n++] = op.kind == PDOPS_STORE ? (const void *)op.blocks : op.hashes;
	cr_assert_eq(n, 100);
	pdops_rewind(&f);
	cr_assert_eq(f.off, PDOPS_HEADER_BYTES);
	for (size_t i = 0; i < n; i++) {
		cr_assert_eq(pdops_next(&f, &op), 1);
		cr_assert_eq(op.kind == PDOPS_STORE ? (const void *)op.blocks : op.hashes,
			     first[i]);
	}
	cr_assert_eq(pdops_next(&f, &op), 0);
	pdops_close(&f);
}

Test(ops, close_zeroes_the_stream_and_closing_twice_is_harmless)
{
	static const struct pdops_file zero;
	char path[PATH_MAX];
	struct pdops_file f;

	data_path(path, sizeof(path), "small.ops");
	cr_assert_eq(pdops_open(&f, path), 0);
	pdops_close(&f);
	cr_assert(!memcmp(&f, &zero, sizeof(f)));
	pdops_close(&f);
	cr_assert(!memcmp(&f, &zero, sizeof(f)));
}

/* ---- Suite ops_fault: malformed files are rejected, never read past. ---- */

/* Make @dst a copy of @src (dst's buffer is reused). */
static void reset(struct t_ops *dst, const struct t_ops *src)
{
	dst->len = 0;
	t_ops_bytes(dst, src->buf, src->len);
}

Test(ops_fault, missing_file_returns_enoent)
{
	static const struct pdops_file zero;
	struct pdops_file f;

	unlink(tmp_path);
	cr_assert_eq(pdops_open(&f, tmp_path), -ENOENT);
	cr_assert(!memcmp(&f, &zero, sizeof(f)));
}

Test(ops_fault, directory_returns_einval)
{
	static const struct pdops_file zero;
	struct pdops_file f;

	cr_assert_eq(pdops_open(&f, "/tmp"), -EINVAL);
	cr_assert(!memcmp(&f, &zero, sizeof(f)));
}

Test(ops_fault, fifo_returns_einval_without_waiting_for_a_writer, .timeout = 10)
{
	static const struct pdops_file zero;
	char path[] = "/tmp/pd_ops_fifo_XXXXXX";
	struct pdops_file f;

	/* A unique name: mkdtemp gives a private directory to put the FIFO in. */
	cr_assert_not_null(mkdtemp(path));

	char fifo[sizeof(path) + 8];

	snprintf(fifo, sizeof(fifo), "%s/fifo", path);
	cr_assert_eq(mkfifo(fifo, 0600), 0);
	cr_expect_eq(pdops_open(&f, fifo), -EINVAL);
	cr_expect(!memcmp(&f, &zero, sizeof(f)));
	unlink(fifo);
	rmdir(path);
}

Test(ops_fault, file_shorter_than_a_header_is_rejected)
{
	struct t_ops o = {0};
	size_t at[T_TINY_OPS + 1];

	t_ops_tiny(&o, at);
	for (size_t len = 0; len < PDOPS_HEADER_BYTES; len++)
		expect_open_rejected(o.buf, len, "%zu bytes", len);
	t_ops_free(&o);
}

Test(ops_fault, bad_magic_is_rejected)
{
	struct t_ops o = {0}, bad = {0};
	size_t at[T_TINY_OPS + 1];

	t_ops_tiny(&o, at);
	for (size_t i = 0; i < 8; i++) {
		reset(&bad, &o);
		bad.buf[i] ^= 0x20;
		expect_open_rejected(bad.buf, bad.len, "magic byte %zu", i);
	}
	reset(&bad, &o);
	memcpy(bad.buf, "PDOPS2\0\0", 8);
	expect_open_rejected(bad.buf, bad.len, "PDOPS2");
	t_ops_free(&bad);
	t_ops_free(&o);
}

Test(ops_fault, bad_version_is_rejected)
{
	static const uint32_t versions[] = {0, 2, 0x01000000, UINT32_MAX};
	struct t_ops o = {0};
	size_t at[T_TINY_OPS + 1];

	t_ops_tiny(&o, at);
	for (size_t i = 0; i < sizeof(versions) / sizeof(versions[0]); i++) {
		t_ops_put32(&o, 8, versions[i]);
		expect_open_rejected(o.buf, o.len, "version %#x", versions[i]);
	}
	t_ops_free(&o);
}

Test(ops_fault, zero_block_size_is_rejected)
{
	struct t_ops o = {0};
	size_t at[T_TINY_OPS + 1];

	t_ops_tiny(&o, at);
	t_ops_put32(&o, 12, 0);
	expect_open_rejected(o.buf, o.len, "block size 0");
	t_ops_free(&o);
}

Test(ops_fault, zero_workers_is_rejected)
{
	struct t_ops o = {0};
	size_t at[T_TINY_OPS + 1];

	t_ops_tiny(&o, at);
	t_ops_put32(&o, 16, 0);
	expect_open_rejected(o.buf, o.len, "0 workers");
	t_ops_free(&o);
}

/* Each op takes 16 bytes or more, so a count above (len - 32) / 16 is a lie, however big. */
Test(ops_fault, num_ops_larger_than_the_file_can_hold_is_rejected)
{
	struct t_ops o = {0};
	uint64_t room, lies[6];

	read_data("small.ops", &o);
	room = (o.len - PDOPS_HEADER_BYTES) / 16;
	lies[0] = room + 1;
	lies[1] = room + 1000;
	lies[2] = 1ull << 60; /* times 16 wraps to 0 */
	lies[3] = (1ull << 60) + 1;
	lies[4] = (UINT64_MAX >> 4) + 1;
	lies[5] = UINT64_MAX;
	for (size_t i = 0; i < sizeof(lies) / sizeof(lies[0]); i++) {
		t_ops_put64(&o, T_OPS_HEADER_NUM_OPS, lies[i]);
		expect_open_rejected(o.buf, o.len, "num_ops %#llx", (unsigned long long)lies[i]);
	}
	t_ops_free(&o);
}

Test(ops_fault, num_ops_above_the_ops_present_is_rejected_where_the_file_ends)
{
	struct t_ops o = {0};

	read_data("small.ops", &o);
	t_ops_put64(&o, T_OPS_HEADER_NUM_OPS, 101);
	expect_rejected(o.buf, o.len, 100, "num_ops 101");
	t_ops_put64(&o, T_OPS_HEADER_NUM_OPS, (o.len - PDOPS_HEADER_BYTES) / 16);
	expect_rejected(o.buf, o.len, 100, "num_ops at the most the file could hold");
	t_ops_free(&o);
}

Test(ops_fault, num_ops_below_the_ops_present_leaves_trailing_bytes_rejected)
{
	static const uint64_t counts[] = {0, 1, 50, 99};
	struct t_ops o = {0};

	read_data("small.ops", &o);
	for (size_t i = 0; i < sizeof(counts) / sizeof(counts[0]); i++) {
		t_ops_put64(&o, T_OPS_HEADER_NUM_OPS, counts[i]);
		expect_rejected(o.buf, o.len, counts[i], "num_ops %lu", (unsigned long)counts[i]);
	}
	t_ops_free(&o);
}

/* After the last op: a byte, a word, a whole CLEAR the header does not count, a page of zeros. */
static void expect_trailing_rejected(const struct t_ops *o, uint64_t nops)
{
	static const uint8_t clear[16] = {PDOPS_CLEAR};
	static const uint8_t zeros[4096];
	struct t_ops bad = {0};
	const size_t extra[] = {1, 7, 8, 4096};

	for (size_t i = 0; i < sizeof(extra) / sizeof(extra[0]); i++) {
		reset(&bad, o);
		t_ops_bytes(&bad, zeros, extra[i]);
		expect_rejected(bad.buf, bad.len, nops, "%zu trailing bytes", extra[i]);
	}
	reset(&bad, o);
	t_ops_bytes(&bad, clear, sizeof(clear));
	expect_rejected(bad.buf, bad.len, nops, "an uncounted CLEAR");
	t_ops_free(&bad);
}

Test(ops_fault, trailing_garbage_is_rejected)
{
	struct t_ops o = {0};
	size_t at[T_TINY_OPS + 1];

	read_data("small.ops", &o);
	expect_trailing_rejected(&o, 100);
	t_ops_free(&o);
	t_ops_tiny(&o, at);
	expect_trailing_rejected(&o, T_TINY_OPS);
	t_ops_free(&o);
}

/*
 * The first @nops ops of @o as a stream of their own, cut at every length from its end down to
 * 0: the header is rejected while shorter than 32 + 16 * nops bytes, then every op that ends
 * before the cut decodes and the one it cuts is rejected; only the whole stream ends cleanly.
 */
static void cut_at_every_byte(const struct t_ops *o, const size_t *at, uint64_t nops)
{
	size_t len = at[nops];

	write_tmp(o->buf, len);
	cr_assert_eq(pwrite(tmp_fd, &nops, sizeof(nops), T_OPS_HEADER_NUM_OPS),
		     (ssize_t)sizeof(nops));
	for (size_t cut = len + 1; cut-- > 0;) {
		struct outcome r;
		uint64_t whole = 0;

		cr_assert_eq(ftruncate(tmp_fd, (off_t)cut), 0);
		r = decode_tmp();
		if (cut < PDOPS_HEADER_BYTES || (cut - PDOPS_HEADER_BYTES) / 16 < nops) {
			cr_assert_eq(r.open_rc, -EBADMSG, "cut at %zu: open gave %d", cut,
				     r.open_rc);
			continue;
		}
		while (whole < nops && at[whole + 1] <= cut)
			whole++;
		cr_assert_eq(r.open_rc, 0, "cut at %zu: open gave %d", cut, r.open_rc);
		cr_assert_eq(r.ops, whole, "cut at %zu: %lu ops, not %lu", cut,
			     (unsigned long)r.ops, (unsigned long)whole);
		cr_assert_eq(r.next_rc, cut == len ? 0 : -EBADMSG, "cut at %zu: ended with %d", cut,
			     r.next_rc);
	}
}

Test(ops_fault, truncation_at_every_byte_of_the_first_ops_is_rejected)
{
	struct t_ops o = {0};
	size_t at[128];

	read_data("small.ops", &o);
	cr_assert_eq(walk(&o, at, 128), 100);
	cut_at_every_byte(&o, at, 4); /* MATCH, STORE, MATCH, STORE: about 25 KiB */
	t_ops_free(&o);
}

Test(ops_fault, truncation_at_every_byte_of_the_tiny_stream_is_rejected)
{
	struct t_ops o = {0};
	size_t at[T_TINY_OPS + 1];

	t_ops_tiny(&o, at);
	cut_at_every_byte(&o, at, T_TINY_OPS);
	t_ops_free(&o);
}

Test(ops_fault, unknown_op_kind_is_rejected)
{
	static const uint8_t kinds[] = {0, 5, 0x80, 0xff};
	struct t_ops o = {0}, bad = {0};
	size_t at[T_TINY_OPS + 1];

	t_ops_tiny(&o, at);
	for (size_t i = 0; i < T_TINY_OPS; i++)
		for (size_t k = 0; k < sizeof(kinds); k++) {
			reset(&bad, &o);
			bad.buf[T_OPS_KIND(at[i])] = kinds[k];
			expect_rejected(bad.buf, bad.len, i, "op %zu of kind %u", i, kinds[k]);
		}
	t_ops_free(&bad);
	t_ops_free(&o);
}

Test(ops_fault, clear_with_blocks_is_rejected)
{
	struct t_ops o = {0};
	size_t at[T_TINY_OPS + 1];

	t_ops_tiny(&o, at);
	cr_assert_eq(o.buf[at[6]], PDOPS_CLEAR);
	t_ops_put32(&o, T_OPS_N(at[6]), 1);
	expect_rejected(o.buf, o.len, 6, "CLEAR of 1 block");
	t_ops_put32(&o, T_OPS_N(at[6]), UINT32_MAX);
	expect_rejected(o.buf, o.len, 6, "CLEAR of 2^32 - 1 blocks");
	t_ops_free(&o);
}

Test(ops_fault, worker_at_or_above_num_workers_is_rejected)
{
	static const uint32_t workers[] = {T_TINY_WORKERS, T_TINY_WORKERS + 1, 1u << 31,
					   UINT32_MAX};
	struct t_ops o = {0}, bad = {0};
	size_t at[T_TINY_OPS + 1];

	t_ops_tiny(&o, at);
	for (size_t i = 0; i < T_TINY_OPS; i++)
		for (size_t w = 0; w < sizeof(workers) / sizeof(workers[0]); w++) {
			reset(&bad, &o);
			t_ops_put32(&bad, T_OPS_WORKER(at[i]), workers[w]);
			expect_rejected(bad.buf, bad.len, i, "op %zu for worker %u", i, workers[w]);
		}
	t_ops_free(&bad);
	t_ops_free(&o);
}

/* A header that says 1 worker under small.ops: op 0 is a MATCH with no answers, op 1 is for w1. */
Test(ops_fault, stream_naming_more_workers_than_its_header_is_rejected)
{
	struct t_ops o = {0};

	read_data("small.ops", &o);
	t_ops_put32(&o, 16, 1);
	expect_rejected(o.buf, o.len, 1, "1 worker");
	t_ops_free(&o);
}

/* Bytes from the body of the op at @op_at to the end of the file. */
static size_t body_left(const struct t_ops *o, size_t op_at)
{
	return o->len - op_at - 16;
}

/* Smallest n that takes the body of the op at @op_at past the end of the file. */
static uint32_t n_past_the_end(const struct t_ops *o, size_t op_at)
{
	size_t left = body_left(o, op_at);

	switch (o->buf[T_OPS_KIND(op_at)]) {
	case PDOPS_STORE:
		return (uint32_t)((left - 8) / 16 + 1);
	case PDOPS_REMOVE:
		return (uint32_t)(left / 8 + 1);
	default: /* MATCH: the hashes fit, the k after them does not */
		return (uint32_t)(left / 8);
	}
}

/* n of op @i set to @n, with every other byte as it was, is rejected after i ops. */
static void expect_count_rejected(const struct t_ops *o, const size_t *at, size_t i, uint32_t n)
{
	struct t_ops bad = {0};

	reset(&bad, o);
	t_ops_put32(&bad, T_OPS_N(at[i]), n);
	expect_rejected(bad.buf, bad.len, i, "op %zu (kind %u) with n = %#x", i, o->buf[at[i]], n);
	t_ops_free(&bad);
}

Test(ops_fault, count_running_past_the_end_is_rejected)
{
	struct t_ops o = {0};
	size_t at[128];

	t_ops_tiny(&o, at);
	for (size_t i = 0; i < T_TINY_OPS; i++) {
		if (o.buf[at[i]] == PDOPS_CLEAR)
			continue;
		expect_count_rejected(&o, at, i, n_past_the_end(&o, at[i]));
		expect_count_rejected(&o, at, i, n_past_the_end(&o, at[i]) + 1);
	}
	t_ops_free(&o);
	read_data("small.ops", &o);
	walk(&o, at, 128);
	for (size_t i = 0; i < 10; i++) /* MATCH, STORE and, at 9, the first REMOVE */
		expect_count_rejected(&o, at, i, n_past_the_end(&o, at[i]));
	t_ops_free(&o);
}

/*
 * Counts whose byte size wraps a 32-bit (or, plus the header, a smaller) size to almost nothing:
 * 16 * 2^28 and 8 * 2^29 are 2^32. The reader must compare counts, not products.
 */
Test(ops_fault, huge_count_is_rejected_without_overflow)
{
	static const uint32_t lies[] = {1u << 28,	(1u << 28) + 1, 1u << 29,
					(1u << 29) + 1, (1u << 29) - 1, 1u << 31,
					UINT32_MAX - 1, UINT32_MAX};
	struct t_ops o = {0};
	size_t at[T_TINY_OPS + 1];

	t_ops_tiny(&o, at);
	for (size_t i = 0; i < T_TINY_OPS; i++)
		for (size_t v = 0;
		     o.buf[at[i]] != PDOPS_CLEAR && v < sizeof(lies) / sizeof(lies[0]); v++)
			expect_count_rejected(&o, at, i, lies[v]);
	t_ops_free(&o);
}

/* k of the MATCH at op @i set to @k is rejected after @before ops. */
static void expect_k_rejected(const struct t_ops *o, const size_t *at, size_t i, uint32_t k,
			      uint64_t before)
{
	struct t_ops bad = {0};

	reset(&bad, o);
	t_ops_put32(&bad, match_k_at(o, at[i]), k);
	expect_rejected(bad.buf, bad.len, before, "MATCH %zu with k = %#x", i, k);
	t_ops_free(&bad);
}

Test(ops_fault, match_k_lying_is_rejected)
{
	static const uint32_t huge[] = {1u << 29, (1u << 29) + 1, 1u << 31, UINT32_MAX};
	struct t_ops o = {0};
	size_t at[T_TINY_OPS + 1], last = T_TINY_OPS - 1;

	t_ops_tiny(&o, at);
	cr_assert_eq(o.buf[at[2]], PDOPS_MATCH);
	cr_assert_eq(o.buf[at[last]], PDOPS_MATCH);
	expect_k_rejected(&o, at, last, 2, last); /* one answer more than the file holds */
	expect_k_rejected(&o, at, last, (uint32_t)(o.len - match_k_at(&o, at[last])) / 8, last);
	for (size_t v = 0; v < sizeof(huge) / sizeof(huge[0]); v++) {
		expect_k_rejected(&o, at, 2, huge[v], 2);
		expect_k_rejected(&o, at, last, huge[v], last);
	}
	expect_k_rejected(&o, at, last, 0, T_TINY_OPS); /* its answer is left as trailing bytes */
	t_ops_free(&o);
}

/* The answer of the last MATCH of the tiny stream (worker 1, depth 4 of a 5-block query). */
static void expect_answer_rejected(uint32_t worker, uint32_t depth)
{
	struct t_ops o = {0};
	size_t at[T_TINY_OPS + 1], last = T_TINY_OPS - 1;

	t_ops_tiny(&o, at);
	t_ops_put32(&o, match_k_at(&o, at[last]) + 8, worker);
	t_ops_put32(&o, match_k_at(&o, at[last]) + 12, depth);
	expect_rejected(o.buf, o.len, last, "answer (%u, %u)", worker, depth);
	t_ops_free(&o);
}

Test(ops_fault, match_answer_for_a_missing_worker_is_rejected)
{
	expect_answer_rejected(T_TINY_WORKERS, 4);
	expect_answer_rejected(UINT32_MAX, 4);
}

Test(ops_fault, match_answer_depth_outside_the_query_is_rejected)
{
	expect_answer_rejected(1, 0);
	expect_answer_rejected(1, 6);
	expect_answer_rejected(1, UINT32_MAX);
}

Test(ops_fault, match_answers_out_of_worker_order_are_rejected)
{
	static const uint32_t ordered[] = {0, 1, 2, 2}, swapped[] = {2, 2, 0, 1},
			      twice[] = {1, 1, 1, 2};
	const uint64_t q[2] = {t_ops_tiny_local(0), t_ops_tiny_local(1)};
	struct t_ops o = {0};
	struct outcome r;

	t_ops_header(&o, 16, T_TINY_WORKERS, 1);
	t_ops_match(&o, q, 2, ordered, 2);
	r = decode(o.buf, o.len);
	cr_assert(r.open_rc == 0 && r.next_rc == 0 && r.ops == 1, "ordered answers rejected");
	memcpy(o.buf + o.len - 16, swapped, 16);
	expect_rejected(o.buf, o.len, 0, "answers for workers 2, 0");
	memcpy(o.buf + o.len - 16, twice, 16);
	expect_rejected(o.buf, o.len, 0, "two answers for worker 1");
	t_ops_free(&o);
}

Test(ops_fault, rejected_op_keeps_the_position_and_rewind_recovers)
{
	struct t_ops o = {0};
	size_t at[T_TINY_OPS + 1];
	struct pdops_file f;
	struct pdops_op op;

	t_ops_tiny(&o, at);
	o.buf[T_OPS_KIND(at[3])] = 9;
	write_tmp(o.buf, o.len);
	cr_assert_eq(pdops_open(&f, tmp_path), 0);
	for (int i = 0; i < 3; i++)
		cr_assert_eq(pdops_next(&f, &op), 1);
	for (int i = 0; i < 3; i++) {
		cr_assert_eq(pdops_next(&f, &op), -EBADMSG);
		cr_assert_eq(f.off, at[3]);
		cr_assert_eq(f.done, 3);
	}
	pdops_rewind(&f);
	cr_assert_eq(pdops_next(&f, &op), 1);
	cr_assert_eq(op.kind, PDOPS_MATCH);
	cr_assert_eq(f.off, at[1]);
	pdops_close(&f);
	t_ops_free(&o);
}

Test(ops_fault, mappings_have_a_guard_page_after_them)
{
#ifdef T_GUARD_PAGES
	unsigned long before = t_guarded_maps;
	struct t_ops o = {0};
	size_t at[T_TINY_OPS + 1];
	struct pdops_file f;

	t_ops_tiny(&o, at);
	write_tmp(o.buf, o.len);
	cr_assert_eq(pdops_open(&f, tmp_path), 0);
	cr_assert_eq(t_guarded_maps, before + 1, "pdops_open did not map through guard_mmap.c");
	pdops_close(&f);
	t_ops_free(&o);
#else
	cr_skip_test("the linker has no --wrap: reads past a file's end may go unnoticed");
#endif
}

/*
 * A MATCH whose answers run exactly to the end of an 8 KiB file (2 pages), then the guard page:
 * k lies by 2^29 (or 3 * 2^29), so 8 * k in 32 bits is the true size. A reader that sizes the
 * answers in 32 bits accepts the count and faults checking answer 1016.
 */
Test(ops_fault, match_k_wrapping_32_bits_is_rejected_before_reading_past_the_end)
{
	static const uint32_t lies[] = {1016 + (1u << 29), 1016 + (3u << 29), 1017};
	const uint64_t q = t_ops_tiny_local(0);
	uint32_t answers[2 * 1016];
	struct t_ops o = {0};

	for (uint32_t i = 0; i < 1016; i++) {
		answers[2 * i] = i;
		answers[2 * i + 1] = 1;
	}
	t_ops_header(&o, 16, UINT32_MAX, 1);
	t_ops_match(&o, &q, 1, answers, 1016);
	cr_assert_eq(o.len, 8192);
	expect_rejected(o.buf, o.len - 8, 0, "answers cut short");
	for (size_t i = 0; i < sizeof(lies) / sizeof(lies[0]); i++) {
		t_ops_put32(&o, match_k_at(&o, 32), lies[i]);
		expect_rejected(o.buf, o.len, 0, "k = %#x", lies[i]);
	}
	t_ops_free(&o);
}
