/*
 * Fuzz target for the consumer side of the shared-memory ring (shm/ring.h), whose producer may
 * be hostile. LLVMFuzzerTestOneInput() lays the input out as a ring: a size, the shared tail and
 * head, the data, then later heads the "producer" publishes each time the consumer runs dry. The
 * data ends right at a PROT_NONE page. The consumer peeks and consumes until -EAGAIN with no
 * head left, or -EBADMSG. It aborts when attach or peek disagrees with a plain reference model
 * of the rules, a record leaves the data or what was published, an error does not stick, the
 * shared tail is not what was consumed, or the consumer writes into the data.
 *
 * Two builds of this file:
 *  - fuzz_ring, a meson test in suite 'fuzz': main() below runs a fixed, seeded number of
 *    inputs, each a ring a real producer filled (random lengths, pads, indices near 2^32, heads
 *    published in steps), then mutated (header fields, indices, bits, truncation) or not.
 *    `fuzz_ring [-n INPUTS] [-s SEED] [FILE...]` runs FILE... instead (a crash to replay).
 *  - fuzz_ring_libfuzzer, with clang's libFuzzer only (not built by default, not a test):
 *      CC=clang meson setup /tmp/build-fuzz && ninja -C /tmp/build-fuzz tests/fuzz_ring_libfuzzer
 *      /tmp/build-fuzz/tests/fuzz_ring_libfuzzer -max_total_time=30
 *    A crash is saved as crash-<sha1> in the working directory; fuzz_ring FILE replays it.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "ring.h"
#include "rng.h"

#include "fuzz_common.h"

const char t_fuzz_name[] = "fuzz_ring";

/* The input: size selector, control byte, tail, head, data, then heads published later. */
#define IN_SIZE 0
#define IN_CTL 1
#define IN_TAIL 2
#define IN_HEAD 6
#define IN_DATA 10
#define MAX_SIZE 4096u
#define MAX_UPDATES 64

static unsigned long outcome[3]; /* attach refused, ran dry, -EBADMSG */

static uint32_t ring_size(const uint8_t *in, size_t n)
{
	return SHM_RING_MIN << (n > IN_SIZE ? in[IN_SIZE] % 7 : 0);
}

static uint32_t rd32(const uint8_t *in, size_t n, size_t at)
{
	uint32_t v = 0;

	if (at + 4 <= n)
		memcpy(&v, in + at, 4);
	return v;
}

/*
 * The ring's memory, mapped once: a ring of @size bytes is placed so that its data ends where
 * a PROT_NONE page begins, and another guards the start of the mapping.
 */
static void *ring_mem(uint32_t size)
{
	static uint8_t *rw_end;

	if (!rw_end) {
		size_t page = (size_t)sysconf(_SC_PAGESIZE);
		size_t rw = (shm_ring_bytes(MAX_SIZE) + page - 1) / page * page;
		uint8_t *base =
		    mmap(NULL, rw + 2 * page, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);

		if (base == MAP_FAILED || mprotect(base + page, rw, PROT_READ | PROT_WRITE))
			t_fuzz_fail("cannot map the ring");
		rw_end = base + page + rw;
	}
	return rw_end - shm_ring_bytes(size);
}

/* ---- The reference: the rules of ring.h, written plainly with 64-bit arithmetic. ---- */

struct ref {
	uint32_t size, pos, head; /* pos: consumed; head: the last head taken */
	int broken;
};

struct ref_rec {
	uint32_t off, len; /* where the header is, and the payload's length */
	uint16_t type, flags;
};

static void ref_attach(struct ref *m, uint32_t size, uint32_t head, uint32_t tail)
{
	m->size = size;
	m->pos = tail;
	m->head = head;
	m->broken = (uint32_t)(head - tail) > size || head % 8 || tail % 8;
}

static int ref_peek(struct ref *m, const uint8_t *data, uint32_t shared_head, struct ref_rec *e)
{
	while (!m->broken) {
		uint64_t off = m->pos % m->size, len, word, end;

		if (m->pos == m->head) {
			uint32_t ahead = shared_head - m->pos;

			if (ahead > m->size || shared_head % 8)
				break;
			m->head = shared_head;
			if (!ahead)
				return -EAGAIN;
		}
		len = rd32(data, m->size, off);
		word = rd32(data, m->size, off + 4);
		end = off + (SHM_REC_HDR + len + 7) / 8 * 8;
		if (end > m->size || end - off > (uint32_t)(m->head - m->pos))
			break;
		if ((word & 0xFFFF) == SHM_REC_PAD) {
			if (end != m->size)
				break;
			m->pos += (uint32_t)(end - off);
			continue;
		}
		*e = (struct ref_rec){(uint32_t)off, (uint32_t)len, (uint16_t)word,
				      (uint16_t)(word >> 16)};
		return 0;
	}
	m->broken = 1;
	return -EBADMSG;
}

/* ---- The target. ---- */

static uint32_t load_tail(const struct shm_ring_shared *sh)
{
	return atomic_load_explicit(&sh->tail, memory_order_relaxed);
}

/* A record the consumer returned: the one the reference found, inside the data and the
 * published bytes; every payload byte is read, so one past the data meets the guard page. */
static void check_record(const struct shm_ring *r, const struct shm_rec *rec,
			 const struct ref_rec *e, uint32_t tail0, uint32_t head)
{
	const uint8_t *data = r->data;
	uint32_t space = shm_rec_space(rec->len);
	volatile uint8_t sink = 0;

	if (rec->payload != data + e->off + SHM_REC_HDR || rec->len != e->len ||
	    rec->type != e->type || rec->flags != e->flags)
		t_fuzz_fail(
		    "record at %u, %u bytes, type %u, flags %#x; the reference: at %u, %u, %u, %#x",
		    (unsigned)(rec->payload - data - SHM_REC_HDR), rec->len, rec->type, rec->flags,
		    e->off, e->len, e->type, e->flags);
	if (rec->type == SHM_REC_PAD || (uintptr_t)rec->payload % 8 ||
	    rec->payload < data + SHM_REC_HDR || rec->len > r->size - SHM_REC_HDR ||
	    (size_t)(rec->payload - data) + rec->len > r->size)
		t_fuzz_fail("record of %u bytes at %td, type %u, leaves %u bytes of data", rec->len,
			    rec->payload - data, rec->type, r->size);
	if ((r->local & r->mask) != e->off || (uint32_t)(r->local - tail0) > head - tail0 ||
	    space > (uint32_t)(head - r->local))
		t_fuzz_fail("record at %#x (%u bytes) outside what was published: %#x to %#x",
			    r->local, space, tail0, head);
	for (uint32_t i = 0; i < rec->len; i++)
		sink ^= rec->payload[i];
	(void)sink;
}

/* One input: 0 attach refused, 1 ended empty, 2 ended -EBADMSG. */
static int run_ring(const uint8_t *in, size_t n)
{
	uint32_t size = ring_size(in, n), tail0 = rd32(in, n, IN_TAIL), head = rd32(in, n, IN_HEAD);
	uint8_t ctl = n > IN_CTL ? in[IN_CTL] : 0, copy[MAX_SIZE];
	uint32_t every = 1 + ctl % 8, since = 0;
	size_t next = IN_DATA + size, nrec = 0;
	struct shm_ring_shared *sh = ring_mem(size);
	struct shm_ring r;
	struct ref m;
	int attach_rc, rc, want;

	memset(sh->data, 0, size);
	if (n > IN_DATA)
		memcpy(sh->data, in + IN_DATA, n - IN_DATA < size ? n - IN_DATA : size);
	memcpy(copy, sh->data, size);
	atomic_store_explicit(&sh->head, head, memory_order_relaxed);
	atomic_store_explicit(&sh->tail, tail0, memory_order_relaxed);
	attach_rc = shm_ring_attach(&r, sh, size, false);
	ref_attach(&m, size, head, tail0);
	if (attach_rc != (m.broken ? -EBADMSG : 0))
		t_fuzz_fail("attach of head %#x, tail %#x, size %u: %d", head, tail0, size,
			    attach_rc);
	for (;;) {
		struct shm_rec rec = {0};
		struct ref_rec e = {0};

		rc = shm_ring_peek(&r, &rec);
		want = ref_peek(&m, sh->data, head, &e);
		if (rc != want)
			t_fuzz_fail("peek %zu at %#x, head %#x: %d, the reference %d", nrec,
				    r.local, head, rc, want);
		if (rc == -EBADMSG)
			break;
		if (rc == -EAGAIN) {
			if (r.local != m.pos)
				t_fuzz_fail("empty at %#x, the reference at %#x", r.local, m.pos);
			shm_ring_release(&r);
			if (load_tail(sh) != r.local)
				t_fuzz_fail("tail %#x after release at %#x", load_tail(sh),
					    r.local);
			if (next + 4 > n || next >= IN_DATA + size + 4 * MAX_UPDATES)
				break;
			head = rd32(in, n, next);
			next += 4;
			atomic_store_explicit(&sh->head, head, memory_order_relaxed);
			continue;
		}
		check_record(&r, &rec, &e, tail0, head);
		if (ctl & 8) {
			struct shm_rec again = {0};

			if (shm_ring_peek(&r, &again) || again.payload != rec.payload)
				t_fuzz_fail("peek %zu again gave another record", nrec);
		}
		shm_ring_consume(&r);
		m.pos += shm_rec_space(e.len);
		nrec++;
		if (++since >= every) {
			shm_ring_release(&r);
			since = 0;
		}
	}
	if (shm_ring_peek(&r, &(struct shm_rec){0}) != rc)
		t_fuzz_fail("%d did not stick", rc);
	if (memcmp(copy, sh->data, size))
		t_fuzz_fail("the consumer wrote into the data");
	if (attach_rc)
		return 0;
	return rc == -EAGAIN ? 1 : 2;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	t_fuzz_set_input(data, size);
	outcome[run_ring(data, size)]++;
	return 0;
}

#ifndef PD_LIBFUZZER

/* ---- The replay driver: rings a real producer filled, then mutated; for meson test. ---- */

static struct t_rng rng;

/* An input being built: bytes, and the offsets of the record headers in its data. */
struct input {
	uint8_t buf[IN_DATA + MAX_SIZE + 4 * MAX_UPDATES];
	size_t len;
	uint32_t hdr[MAX_SIZE / 8];
	uint32_t nhdr;
};

static void put32(struct input *in, size_t at, uint32_t v)
{
	if (at + 4 <= in->len)
		memcpy(in->buf + at, &v, 4);
}

static uint32_t get32(const struct input *in, size_t at)
{
	return rd32(in->buf, in->len, at);
}

static uint32_t start_index(uint32_t size)
{
	switch (t_rng_below(&rng, 4)) {
	case 0:
		return 0;
	case 1: /* the data and the index wrap close together */
		return 0u - 8 * (1 + t_rng_below(&rng, 2 * size / 8));
	default:
		return (uint32_t)t_rng_next(&rng) & ~7u;
	}
}

static uint32_t record_len(uint32_t size)
{
	uint32_t maxp = shm_ring_max_payload(size);

	switch (t_rng_below(&rng, 32)) {
	case 0: /* most of the ring, often after a pad */
		return maxp - t_rng_below(&rng, 24 < maxp ? 24 : maxp);
	case 1:
	case 2:
		return t_rng_below(&rng, maxp + 1);
	default:
		return t_rng_below(&rng, 64 < maxp ? 64 : maxp);
	}
}

/* A ring a real producer filled, published in steps: the first head, then the later ones.
 * It stops at the fourth time it finds the ring full. */
static void fill_ring(struct input *in, void *scratch)
{
	uint32_t sel = t_rng_below(&rng, 7), size = SHM_RING_MIN << sel, start = start_index(size);
	size_t next = IN_DATA + size;
	struct shm_ring p;
	int err, full = 0;

	in->buf[IN_SIZE] = (uint8_t)(sel + 7 * t_rng_below(&rng, 36));
	in->buf[IN_CTL] = (uint8_t)t_rng_next(&rng);
	in->len = next;
	in->nhdr = 0;
	memset(scratch, 0, shm_ring_bytes(size));
	shm_ring_format(scratch, size);
	atomic_store_explicit(&((struct shm_ring_shared *)scratch)->head, start,
			      memory_order_relaxed);
	atomic_store_explicit(&((struct shm_ring_shared *)scratch)->tail, start,
			      memory_order_relaxed);
	if (shm_ring_attach(&p, scratch, size, true))
		t_fuzz_fail("producer attach at %#x", start);
	for (;;) {
		uint32_t len = record_len(size);
		uint8_t *pay = shm_ring_reserve(&p, (uint16_t)(1 + t_rng_below(&rng, 0xFFFF)),
						(uint16_t)t_rng_next(&rng), len, &err);

		if (!pay && err == -ENOBUFS && ++full < 4)
			continue; /* a smaller one may fit; a pad for this one may stay */
		if (!pay)
			break;
		in->hdr[in->nhdr++] = (uint32_t)(pay - p.data) - SHM_REC_HDR;
		for (uint32_t i = 0; i < len; i++)
			pay[i] = (uint8_t)t_rng_next(&rng);
		shm_ring_commit(&p);
		if (t_rng_chance(&rng, 30) && next + 8 <= IN_DATA + size + 4 * MAX_UPDATES &&
		    p.published != p.local) {
			shm_ring_publish(&p);
			memcpy(in->buf + next, &p.published, 4);
			next += 4;
		}
	}
	if (err != -ENOBUFS)
		t_fuzz_fail("producer: %d", err);
	shm_ring_publish(&p);
	memcpy(in->buf + next, &p.published, 4);
	next += 4;
	memcpy(in->buf + IN_TAIL, &start, 4);
	/* the first head: empty, or the first step published */
	memcpy(in->buf + IN_HEAD,
	       t_rng_chance(&rng, 20) ? (const void *)&start : in->buf + IN_DATA + size, 4);
	memcpy(in->buf + IN_DATA, p.data, size);
	in->len = next;
}

static uint32_t interesting32(uint32_t old, uint32_t size)
{
	static const uint32_t v[] = {0,		 1,	     7,		 8,
				     9,		 0x7FFFFFFF, 0x80000000, 0xFFFFFFF0,
				     0xFFFFFFF7, 0xFFFFFFF8, 0xFFFFFFF9, 0xFFFFFFFF};

	switch (t_rng_below(&rng, 7)) {
	case 0:
		return old + 8 * (t_rng_below(&rng, 5) - 2);
	case 1:
		return old + t_rng_below(&rng, 3) - 1;
	case 2:
		return old + size * (t_rng_below(&rng, 3) - 1) + 8 * t_rng_below(&rng, 2);
	case 3:
		return size - 8 * t_rng_below(&rng, 3);
	case 4:
		return (uint32_t)t_rng_next(&rng);
	default:
		return v[t_rng_below(&rng, sizeof(v) / sizeof(v[0]))];
	}
}

static void mutate_once(struct input *in, uint32_t size)
{
	size_t at, nup = in->len > IN_DATA + size ? (in->len - IN_DATA - size) / 4 : 0;

	switch (t_rng_below(&rng, 8)) {
	case 0: /* a record's length */
	case 1:
		if (in->nhdr) {
			at = IN_DATA + in->hdr[t_rng_below(&rng, in->nhdr)];
			put32(in, at, interesting32(get32(in, at), size));
		}
		break;
	case 2: /* a record's type: a pad where there was none, or flags on one */
		if (in->nhdr) {
			at = IN_DATA + in->hdr[t_rng_below(&rng, in->nhdr)] + 4;
			put32(in, at, t_rng_chance(&rng, 50) ? 0 : (uint32_t)t_rng_next(&rng));
		}
		break;
	case 3: /* the tail or the first head */
		at = t_rng_chance(&rng, 50) ? IN_TAIL : IN_HEAD;
		put32(in, at, interesting32(get32(in, at), size));
		break;
	case 4: /* a later head */
		if (nup) {
			at = IN_DATA + size + 4 * t_rng_below(&rng, (uint32_t)nup);
			put32(in, at, interesting32(get32(in, at), size));
		}
		break;
	case 5: /* a bit anywhere */
		at = t_rng_below(&rng, (uint32_t)in->len);
		in->buf[at] ^= (uint8_t)(1u << t_rng_below(&rng, 8));
		break;
	case 6: /* truncation: the data runs short (zeros) or the heads stop */
		in->len = t_rng_below(&rng, (uint32_t)in->len + 1);
		break;
	default: /* a word anywhere in the data */
		at = IN_DATA + 4 * t_rng_below(&rng, size / 4);
		put32(in, at, interesting32(get32(in, at), size));
	}
}

int main(int argc, char **argv)
{
	int files;
	static struct input in;
	unsigned long inputs = 100000;
	uint64_t seed = 42;
	void *scratch;

	files = t_fuzz_begin(argc, argv, &inputs, &seed);
	if (files < 0)
		return 2;
	if (posix_memalign(&scratch, 64, shm_ring_bytes(MAX_SIZE)))
		return 1;
	t_rng_seed(&rng, seed);
	for (t_fuzz_input_number = 0; t_fuzz_input_number < inputs; t_fuzz_input_number++) {
		uint32_t size;

		fill_ring(&in, scratch);
		size = ring_size(in.buf, in.len);
		if (t_rng_chance(&rng, 75)) {
			for (uint32_t k = 1 + t_rng_below(&rng, 3); k; k--)
				mutate_once(&in, size);
		}
		LLVMFuzzerTestOneInput(in.buf, in.len);
	}
	free(scratch);
	printf("fuzz_ring: seed %llu; attach refused %lu, ran dry %lu, -EBADMSG %lu\n",
	       (unsigned long long)seed, outcome[0], outcome[1], outcome[2]);
	printf("fuzz_ring: %lu inputs, ok\n", inputs + (unsigned long)files);
	return 0;
}

#endif
