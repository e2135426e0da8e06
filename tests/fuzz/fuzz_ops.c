/*
 * Fuzz target for the .ops reader (bench/ops.c). LLVMFuzzerTestOneInput() puts the input in a
 * memfd, opens it with pdops_open(), decodes it with pdops_next() to the end or the first error,
 * then rewinds and decodes it again. It aborts when an op's arrays leave the mapping, a decoded
 * op or header breaks a rule ops.h promises, a reject is not -EBADMSG, an error does not repeat
 * or moves the position, or the two passes differ. Linked with guard_mmap.c where the linker
 * allows, so a read past the end of an input of whole pages faults.
 *
 * Two builds of this file:
 *  - fuzz_ops, a meson test in suite 'fuzz': main() below decodes a fixed, seeded number of
 *    mutations (bit flips, byte and field sets, whole-page lengths, truncations, splices,
 *    inserts, deletes) of tests/data/small.ops, small_shared.ops and the tiny stream of
 *    ops_writer.h. `fuzz_ops [-n MUTATIONS] [-s SEED] [FILE...]` mutates FILE... in place of
 *    the data files (`-n 0 FILE` replays a crash), and `fuzz_ops -t FILE` writes the tiny stream.
 *  - fuzz_ops_libfuzzer, with clang's libFuzzer only (not built by default, not a test):
 *      CC=clang meson setup /tmp/build-fuzz
 *      ninja -C /tmp/build-fuzz tests/fuzz_ops_libfuzzer tests/fuzz_ops
 *      mkdir -p /tmp/ops-corpus && cp tests/data/small.ops tests/data/small_shared.ops \
 *              /tmp/ops-corpus && /tmp/build-fuzz/tests/fuzz_ops -t /tmp/ops-corpus/tiny.ops
 *      /tmp/build-fuzz/tests/fuzz_ops_libfuzzer -max_total_time=30 /tmp/ops-corpus
 *    It compiles bench/ops.c itself, so the reader carries libFuzzer's coverage instrumentation.
 *    A crash is saved as crash-<sha1> in the working directory; fuzz_ops -n 0 replays it.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "ops.h"
#include "ops_writer.h"
#include "rng.h"

#include "fuzz_common.h"

const char t_fuzz_name[] = "fuzz_ops";

static int input_fd = -1;
static char input_path[64];

/* The file inputs go through: a memfd opened by its /proc path, else an unlinked temp file. */
static void input_unlink(void)
{
	unlink(input_path);
}

static void input_open(void)
{
	input_fd = memfd_create("fuzz_ops", MFD_CLOEXEC);
	if (input_fd >= 0) {
		snprintf(input_path, sizeof(input_path), "/proc/self/fd/%d", input_fd);
		if (access(input_path, R_OK) == 0)
			return;
		close(input_fd);
	}
	strcpy(input_path, "/tmp/fuzz_ops-XXXXXX");
	input_fd = mkstemp(input_path);
	if (input_fd < 0)
		t_fuzz_fail("no memfd and no temp file: %s", strerror(errno));
	atexit(input_unlink);
}

static void input_write(const uint8_t *data, size_t size)
{
	size_t done = 0;

	if (input_fd < 0)
		input_open();
	if (ftruncate(input_fd, 0) < 0)
		t_fuzz_fail("ftruncate: %s", strerror(errno));
	while (done < size) {
		ssize_t w = pwrite(input_fd, data + done, size - done, (off_t)done);

		if (w <= 0)
			t_fuzz_fail("pwrite: %s", strerror(errno));
		done += (size_t)w;
	}
}

/* @count elements of @size bytes at @p lie after the header and inside the mapping. */
static void check_inside(const struct pdops_file *f, const void *p, size_t count, size_t size)
{
	uintptr_t base = (uintptr_t)f->base, at = (uintptr_t)p;
	const volatile uint8_t *b = p;

	if (at < base + PDOPS_HEADER_BYTES || at > base + f->len ||
	    count > (base + f->len - at) / size)
		t_fuzz_fail("op %lu: array of %zu x %zu bytes at +%#lx, outside %zu bytes",
			    (unsigned long)f->done, count, size, (unsigned long)(at - base),
			    f->len);
	if (count) {
		(void)b[0];
		(void)b[count * size - 1];
	}
}

/* Answers name real workers, in increasing order, each with a depth within the query. */
static void check_answers(const struct pdops_file *f, const struct pdops_op *op)
{
	for (uint32_t i = 0; i < op->nexpect; i++) {
		const struct pdops_expect *e = &op->expect[i];

		if (e->worker >= f->num_workers || e->depth == 0 || e->depth > op->n ||
		    (i > 0 && e->worker <= op->expect[i - 1].worker))
			t_fuzz_fail("op %lu: answer %u (%u, %u) accepted", (unsigned long)f->done,
				    i, e->worker, e->depth);
	}
}

static void check_op(const struct pdops_file *f, const struct pdops_op *op)
{
	if (op->kind < PDOPS_STORE || op->kind > PDOPS_MATCH || op->worker >= f->num_workers)
		t_fuzz_fail("op %lu: kind %u for worker %u accepted", (unsigned long)f->done,
			    op->kind, op->worker);
	if ((op->kind == PDOPS_CLEAR && op->n) || (op->kind != PDOPS_MATCH && op->nexpect))
		t_fuzz_fail("op %lu: kind %u with n %u, %u answers", (unsigned long)f->done,
			    op->kind, op->n, op->nexpect);
	if (f->done > f->num_ops || f->off > f->len)
		t_fuzz_fail("op %lu of %lu ends at %zu of %zu", (unsigned long)f->done,
			    (unsigned long)f->num_ops, f->off, f->len);
	if (op->kind == PDOPS_STORE)
		check_inside(f, op->blocks, op->n, sizeof(*op->blocks));
	if (op->kind == PDOPS_REMOVE || op->kind == PDOPS_MATCH)
		check_inside(f, op->hashes, op->n, sizeof(*op->hashes));
	if (op->kind == PDOPS_MATCH) {
		check_inside(f, op->expect, op->nexpect, sizeof(*op->expect));
		check_answers(f, op);
	}
}

static uint64_t digest(uint64_t h, uint64_t v)
{
	return (h ^ v) * 0x100000001B3ull;
}

/* One pass to the end or the first error; returns pdops_next's last return. */
static int decode_pass(struct pdops_file *f, uint64_t *h)
{
	struct pdops_op op;
	size_t off;
	int rc;

	while ((rc = pdops_next(f, &op)) == 1) {
		check_op(f, &op);
		*h = digest(*h, op.kind);
		*h = digest(*h, ((uint64_t)op.worker << 32) | op.n);
		*h = digest(*h, (uintptr_t)(op.kind == PDOPS_STORE ? (const void *)op.blocks
								   : (const void *)op.hashes));
	}
	if (rc == 0 && (f->done != f->num_ops || f->off != f->len))
		t_fuzz_fail("clean end after %lu of %lu ops, at %zu of %zu", (unsigned long)f->done,
			    (unsigned long)f->num_ops, f->off, f->len);
	if (rc == 0)
		return 0;
	off = f->off;
	if (rc != -EBADMSG || pdops_next(f, &op) != rc || f->off != off)
		t_fuzz_fail("op %lu: error %d does not stay -EBADMSG in place",
			    (unsigned long)f->done, rc);
	return rc;
}

/* 0: rejected by pdops_open, 1: by pdops_next, 2: accepted. */
static int decode(size_t size)
{
	static const struct pdops_file zero;
	uint64_t h1 = 0, h2 = 0, done;
	struct pdops_file f;
	int rc, rc2;

	rc = pdops_open(&f, input_path);
	if (rc < 0) {
		if (rc != -EBADMSG || memcmp(&f, &zero, sizeof(f)))
			t_fuzz_fail("pdops_open: %d (%s), stream %szeroed", rc, strerror(-rc),
				    memcmp(&f, &zero, sizeof(f)) ? "not " : "");
		return 0;
	}
	if (f.len != size || f.len < PDOPS_HEADER_BYTES || memcmp(f.base, PDOPS_MAGIC, 8) ||
	    f.base[8] != PDOPS_VERSION || f.base[9] || f.base[10] || f.base[11] || !f.block_size ||
	    !f.num_workers || f.num_ops > (f.len - PDOPS_HEADER_BYTES) / 16)
		t_fuzz_fail("header accepted: %zu bytes, block size %u, %u workers, %lu ops", f.len,
			    f.block_size, f.num_workers, (unsigned long)f.num_ops);
	rc = decode_pass(&f, &h1);
	done = f.done;
	pdops_rewind(&f);
	rc2 = decode_pass(&f, &h2);
	if (rc2 != rc || f.done != done || h2 != h1)
		t_fuzz_fail("second pass differs: %d after %lu ops, then %d after %lu", rc,
			    (unsigned long)done, rc2, (unsigned long)f.done);
	pdops_close(&f);
	return rc == 0 ? 2 : 1;
}

static int decode_input(const uint8_t *data, size_t size)
{
	t_fuzz_set_input(data, size);
	input_write(data, size);
	return decode(size);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	decode_input(data, size);
	return 0;
}

#ifndef PD_LIBFUZZER

/* ---- The replay driver: seeded mutations of fixed seeds, for meson test. ---- */

#include <getopt.h>

#define MAX_FIELDS 4096

/*
 * splitmix64 (rng.h), so a run replays from its seed. t_rng_next() steps the state and t_mix64()
 * steps it once more before mixing, so main() seeds one step back: -s SEED gives the inputs it
 * always gave (canonical splitmix64 from SEED).
 */
static struct t_rng rng;

static size_t rng_below(size_t n)
{
	return n ? (size_t)(t_rng_next(&rng) % n) : 0;
}

/* A seed stream and the offsets of its length, count and id fields, where lies do harm. */
struct seed {
	const char *name;
	struct t_ops o;
	size_t field[MAX_FIELDS];
	size_t nfields;
};

static void add_field(struct seed *s, size_t at)
{
	if (s->nfields < MAX_FIELDS && at + 4 <= s->o.len)
		s->field[s->nfields++] = at;
}

/* Header words; per op its kind, worker and n; per MATCH its k and every answer's two words. */
static void find_fields(struct seed *s)
{
	static size_t at[MAX_FIELDS];
	long n = t_ops_walk(s->o.buf, s->o.len, at, MAX_FIELDS);

	for (size_t h = 8; h < PDOPS_HEADER_BYTES; h += 4)
		add_field(s, h);
	for (long i = 0; i < n && i < MAX_FIELDS; i++) {
		uint32_t nb, k;
		size_t k_at;

		add_field(s, T_OPS_KIND(at[i]));
		add_field(s, T_OPS_WORKER(at[i]));
		add_field(s, T_OPS_N(at[i]));
		if (s->o.buf[at[i]] != PDOPS_MATCH)
			continue;
		memcpy(&nb, s->o.buf + T_OPS_N(at[i]), sizeof(nb));
		k_at = at[i] + 16 + 8 * (size_t)nb;
		memcpy(&k, s->o.buf + k_at, sizeof(k));
		add_field(s, k_at);
		for (size_t a = 0; a < 2 * (size_t)k; a++)
			add_field(s, k_at + 8 + 4 * a);
	}
}

static uint32_t interesting32(uint32_t old)
{
	static const uint32_t v[] = {0,		 1,	     2,		 3,	     4,
				     5,		 7,	     8,		 9,	     0x7f,
				     0xff,	 0x7fffffff, 0x80000000, 0x0fffffff, 0x10000000,
				     0x10000001, 0x1fffffff, 0x20000000, 0x20000001, 0xfffffff0,
				     0xfffffffe, 0xffffffff};

	switch (rng_below(4)) {
	case 0:
		return old + 1;
	case 1:
		return old - 1;
	case 2:
		return (uint32_t)t_rng_next(&rng);
	default:
		return v[rng_below(sizeof(v) / sizeof(v[0]))];
	}
}

/* One input buffer, room for any length a mutation makes. */
struct input {
	uint8_t *buf;
	size_t len, cap;
};

static void put32(struct input *in, size_t at, uint32_t v)
{
	if (at + 4 <= in->len)
		memcpy(in->buf + at, &v, 4);
}

/* Replace [at, at + cut) with @add bytes from @src (NULL: random bytes). */
static void replace(struct input *in, size_t at, size_t cut, const uint8_t *src, size_t add)
{
	if (at > in->len)
		at = in->len;
	if (cut > in->len - at)
		cut = in->len - at;
	if (in->len - cut + add > in->cap)
		add = in->cap - (in->len - cut);
	memmove(in->buf + at + add, in->buf + at + cut, in->len - at - cut);
	for (size_t i = 0; i < add; i++)
		in->buf[at + i] = src ? src[i] : (uint8_t)t_rng_next(&rng);
	in->len = in->len - cut + add;
}

static void mutate_once(struct input *in, const struct seed *s, const struct seed *other)
{
	size_t at = rng_below(in->len), n;
	uint64_t num_ops;

	switch (rng_below(10)) {
	case 0: /* bit flip */
		if (in->len)
			in->buf[at] ^= (uint8_t)(1u << rng_below(8));
		break;
	case 1: /* byte set */
		if (in->len)
			in->buf[at] = (uint8_t)interesting32(in->buf[at]);
		break;
	case 2: /* a lie in a field that sizes or names something */
	case 3:
		at = s->field[rng_below(s->nfields)];
		if (at + 4 <= in->len) {
			uint32_t old;

			memcpy(&old, in->buf + at, 4);
			put32(in, at, interesting32(old));
		}
		break;
	case 4: /* num_ops */
		if (in->len >= PDOPS_HEADER_BYTES) {
			memcpy(&num_ops, in->buf + T_OPS_HEADER_NUM_OPS, 8);
			num_ops = rng_below(2) ? num_ops + rng_below(3) - 1
					       : (in->len - PDOPS_HEADER_BYTES) / 16 + rng_below(2);
			memcpy(in->buf + T_OPS_HEADER_NUM_OPS, &num_ops, 8);
		}
		break;
	case 5: /* truncation, often near a field */
		n = rng_below(2) ? s->field[rng_below(s->nfields)] + rng_below(24) : at;
		if (n < in->len)
			in->len = n;
		break;
	case 6: /* splice: a chunk of either seed over, or into, the input */
		n = 1 + rng_below(64);
		if (other->o.len > n) {
			const uint8_t *src = other->o.buf + rng_below(other->o.len - n);

			replace(in, at, rng_below(2) ? n : 0, src, n);
		}
		break;
	case 7: /* whole pages: a read past the end meets the guard page of guard_mmap.c */
		n = in->len / 4096 * 4096 + (rng_below(2) ? 4096 : 0);
		if (n > in->len)
			replace(in, in->len, 0, NULL, n - in->len);
		else
			in->len = n;
		break;
	case 8: /* delete a range */
		replace(in, at, 1 + rng_below(32), NULL, 0);
		break;
	default: /* insert random bytes */
		replace(in, at, 0, NULL, 1 + rng_below(32));
	}
}

static void mutate(struct input *in, const struct seed *s, const struct seed *other)
{
	size_t rounds = 1 + rng_below(4);

	memcpy(in->buf, s->o.buf, s->o.len);
	in->len = s->o.len;
	for (size_t i = 0; i < rounds; i++)
		mutate_once(in, s, rng_below(4) ? s : other);
}

static void load_seed(struct seed *s, const char *path)
{
	uint8_t chunk[65536];
	FILE *fp = fopen(path, "rb");
	size_t got;

	if (!fp) {
		fprintf(stderr, "fuzz_ops: %s: %s\n", path, strerror(errno));
		exit(1);
	}
	while ((got = fread(chunk, 1, sizeof(chunk), fp)) > 0)
		t_ops_bytes(&s->o, chunk, got);
	fclose(fp);
	s->name = path;
	find_fields(s);
}

static void usage(void)
{
	fprintf(stderr, "usage: fuzz_ops [-n MUTATIONS] [-s SEED] [FILE...]\n"
			"       fuzz_ops -t FILE   (write the tiny stream to FILE)\n");
	exit(2);
}

static int write_tiny(const char *path)
{
	struct seed s = {0};
	size_t at[T_TINY_OPS + 1];
	FILE *fp = fopen(path, "wb");

	t_ops_tiny(&s.o, at);
	if (!fp || fwrite(s.o.buf, 1, s.o.len, fp) != s.o.len || fclose(fp)) {
		fprintf(stderr, "fuzz_ops: cannot write %s\n", path);
		return 1;
	}
	t_ops_free(&s.o);
	return 0;
}

int main(int argc, char **argv)
{
	static struct seed seeds[16];
	unsigned long mutations = 20000, outcome[3] = {0}, inputs = 0;
	uint64_t seed = 42;
	size_t nseeds = 0, cap = 0, at[T_TINY_OPS + 1];
	struct input in = {0};
	int c;

	t_fuzz_crash_ext = ".ops";
	t_fuzz_input_from = "?"; /* which seed the failing input was made from */
	while ((c = getopt(argc, argv, "n:s:t:")) != -1) {
		if (c == 'n')
			mutations = strtoul(optarg, NULL, 0);
		else if (c == 's')
			seed = strtoull(optarg, NULL, 0);
		else if (c == 't')
			return write_tiny(optarg);
		else
			usage();
	}
	if (argc - optind > 15)
		usage();
	for (int i = optind; i < argc; i++)
		load_seed(&seeds[nseeds++], argv[i]);
	if (nseeds == 0) {
		load_seed(&seeds[nseeds++], PD_TEST_DATA "/small.ops");
		load_seed(&seeds[nseeds++], PD_TEST_DATA "/small_shared.ops");
	}
	t_ops_tiny(&seeds[nseeds].o, at);
	seeds[nseeds].name = "the tiny stream";
	find_fields(&seeds[nseeds++]);

	for (size_t i = 0; i < nseeds; i++)
		cap = seeds[i].o.len > cap ? seeds[i].o.len : cap;
	in.cap = 2 * cap + 4096;
	in.buf = malloc(in.cap);
	if (!in.buf)
		return 1;
	t_rng_seed(&rng, seed - T_RNG_STEP);
	for (size_t i = 0; i < nseeds; i++) {
		t_fuzz_input_from = seeds[i].name;
		t_fuzz_input_number = inputs;
		outcome[decode_input(seeds[i].o.buf, seeds[i].o.len)]++;
		inputs++;
		for (unsigned long m = i; m < mutations; m += nseeds, inputs++) {
			t_fuzz_input_number = inputs;
			mutate(&in, &seeds[i], &seeds[rng_below(nseeds)]);
			outcome[decode_input(in.buf, in.len)]++;
		}
	}
	printf("fuzz_ops: seed %llu; rejected by pdops_open %lu, by pdops_next %lu, accepted %lu\n",
	       (unsigned long long)seed, outcome[0], outcome[1], outcome[2]);
	printf("fuzz_ops: %lu inputs, ok\n", inputs);
	for (size_t i = 0; i < nseeds; i++)
		t_ops_free(&seeds[i].o);
	free(in.buf);
	return 0;
}

#endif
