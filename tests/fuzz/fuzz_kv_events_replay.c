/*
 * The replay driver of the KV-event intake's fuzz target (fuzz_kv_events.c, whose top says what
 * it checks): main() runs a fixed, seeded number of inputs that a model of a worker writes, in
 * either mode, then mutates or not. The model chains STORED events along prompts of a shared
 * pool (local hashes or token ids, some past 256 blocks, a parent or none, now and then an id
 * repeated or naming the parent), removes blocks it holds or never held, clears, reports load,
 * sends record types from a newer worker, uses event ids in order, repeated, older or jumping,
 * and now and then a DP rank it does not have. Raw-mode inputs are rings a real producer filled
 * and published in steps. Mutations set fields of a record's fixed part to edge values, move
 * lengths, flip bits, move ring indices and truncate.
 * `fuzz_kv_events [-n INPUTS] [-s SEED] [FILE...]` runs FILE... instead (a crash to replay).
 * Not part of the libFuzzer build.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "events.h"
#include "ring.h"
#include "rng.h"

#include "fuzz_common.h"
#include "fuzz_kv_events.h"

#define IN_MAX (1u << 18)
#define MAX_RECS 40

static struct t_rng rng;

/* An input being built, and the worker model writing it. */
struct gen {
	uint8_t buf[IN_MAX];
	size_t len;
	uint32_t rec[MAX_RECS]; /* where each record's payload is in buf */
	uint32_t nrec;
	const struct kvf_worker *w;
	uint64_t next_id[3];
	uint32_t held_p[3], held_d[3]; /* the prompt each rank extends, and how far */
	uint8_t pay[1 << 16];	       /* the record being built */
};

static void put(uint8_t *at, const void *v, size_t n)
{
	memcpy(at, v, n);
}

/* A DP rank: an index into the worker's ranks, or -1 (and a rank it does not have). */
static int gen_rank(struct gen *s, uint32_t *rank)
{
	int i = (int)t_rng_below(&rng, s->w->nranks);

	*rank = s->w->rank0 + (uint32_t)i;
	if (!t_rng_chance(&rng, 5))
		return i;
	*rank = t_rng_chance(&rng, 50) ? s->w->rank0 + s->w->nranks : (uint32_t)t_rng_next(&rng);
	return -1;
}

/* An event id for rank @i: mostly the next one; sometimes repeated, older or jumping. */
static uint64_t gen_id(struct gen *s, int i)
{
	uint64_t *next = &s->next_id[i < 0 ? 0 : i];

	switch (t_rng_below(&rng, 20)) {
	case 0:
		return *next - 1; /* repeated (or, first, whatever it is) */
	case 1:
		return *next - 1 - t_rng_below(&rng, 4);
	case 2:
		*next += 1 + t_rng_below(&rng, 5);
		return (*next)++;
	default:
		return (*next)++;
	}
}

static uint32_t gen_stored(struct gen *s)
{
	const struct kvf_worker *w = s->w;
	struct shm_ev_stored ev = {0};
	uint32_t rank, p, from = 0, k, bs = w->bs;
	int i = gen_rank(s, &rank);
	bool tokens = t_rng_chance(&rng, 50);
	size_t at;

	p = t_rng_below(&rng, POOL);
	if (i >= 0 && s->held_d[i] && s->held_d[i] < POOL_BLOCKS && t_rng_chance(&rng, 65)) {
		p = s->held_p[i];
		from = s->held_d[i];
		ev.has_parent = 1;
		ev.parent_ext = kvf_pool_ext(p, from - 1);
	} else if (t_rng_chance(&rng, 10)) {
		ev.has_parent = 1;
		ev.parent_ext = t_rng_chance(&rng, 50) ? kvf_pool_ext(p, 3) : t_rng_next(&rng);
	}
	k = t_rng_chance(&rng, 6) ? 257 + t_rng_below(&rng, 60) : 1 + t_rng_below(&rng, 8);
	k = k < POOL_BLOCKS - from ? k : POOL_BLOCKS - from;
	ev.event_id = gen_id(s, i);
	ev.dp_rank = rank;
	ev.nblocks = k;
	ev.blocks_kind = tokens ? SHM_EV_TOKEN_IDS : SHM_EV_LOCAL_HASHES;
	ev.block_size = tokens ? bs : 0;
	put(s->pay, &ev, sizeof(ev));
	at = sizeof(ev);
	for (uint32_t j = 0; j < k; j++, at += 8) {
		uint64_t ext = kvf_pool_ext(p, from + j);

		if (t_rng_chance(&rng, 1)) /* an id repeated, or the parent's */
			ext = j && t_rng_chance(&rng, 50) ? kvf_pool_ext(p, from) : ev.parent_ext;
		put(s->pay + at, &ext, 8);
	}
	if (tokens) {
		put(s->pay + at, w->tok + ((size_t)p * POOL_BLOCKS + from) * bs,
		    4 * (size_t)k * bs);
		at += 4 * (size_t)k * bs;
	} else {
		put(s->pay + at, &w->local[p][from], 8 * (size_t)k);
		at += 8 * (size_t)k;
	}
	if (i >= 0) {
		s->held_p[i] = p;
		s->held_d[i] = from + k;
	}
	return (uint32_t)at;
}

static uint32_t gen_removed(struct gen *s)
{
	struct shm_ev_removed ev = {0};
	uint32_t rank, n = t_rng_chance(&rng, 5) ? 300 : 1 + t_rng_below(&rng, 6);
	int i = gen_rank(s, &rank);
	uint32_t p = i >= 0 ? s->held_p[i] : 0, d = i >= 0 ? s->held_d[i] : 1;

	ev.event_id = gen_id(s, i);
	ev.dp_rank = rank;
	ev.n = n;
	put(s->pay, &ev, sizeof(ev));
	for (uint32_t j = 0; j < n; j++) {
		uint64_t ext = t_rng_chance(&rng, 10)
				   ? t_rng_next(&rng)
				   : kvf_pool_ext(p, t_rng_below(&rng, d ? d : 1));

		put(s->pay + sizeof(ev) + 8 * (size_t)j, &ext, 8);
	}
	if (i >= 0 && d)
		s->held_d[i] = t_rng_below(&rng, d);
	return (uint32_t)(sizeof(ev) + 8 * (size_t)n);
}

static uint32_t gen_record(struct gen *s, uint16_t *type)
{
	uint32_t rank, len;
	int i;

	switch (t_rng_below(&rng, 20)) {
	case 0 ... 8:
		*type = SHM_EV_STORED;
		return gen_stored(s);
	case 9 ... 12:
		*type = SHM_EV_REMOVED;
		return gen_removed(s);
	case 13: {
		struct shm_ev_cleared ev = {0};

		i = gen_rank(s, &rank);
		ev.event_id = gen_id(s, i);
		ev.dp_rank = rank;
		if (i >= 0)
			s->held_d[i] = 0;
		*type = SHM_EV_CLEARED;
		put(s->pay, &ev, sizeof(ev));
		return sizeof(ev);
	}
	case 14 ... 17: {
		struct shm_ev_load ev = {.used_blocks = t_rng_below(&rng, 200000),
					 .prefill_tokens = t_rng_next(&rng)};

		gen_rank(s, &rank);
		ev.dp_rank = rank;
		*type = SHM_EV_LOAD;
		put(s->pay, &ev, sizeof(ev));
		return sizeof(ev);
	}
	default: /* a type from a newer worker */
		*type = (uint16_t)(5 + t_rng_below(&rng, 250));
		len = t_rng_below(&rng, 48);
		for (uint32_t j = 0; j < len; j++)
			s->pay[j] = (uint8_t)t_rng_next(&rng);
		return len;
	}
}

/* Records mode: each record framed with its type, op and length. */
static void gen_records(struct gen *s)
{
	uint32_t nrec = 1 + t_rng_below(&rng, MAX_RECS);

	for (s->nrec = 0; s->nrec < nrec; s->nrec++) {
		uint16_t type;
		uint32_t len = gen_record(s, &type);
		uint8_t op = (uint8_t)(t_rng_chance(&rng, 30) ? 1 + t_rng_below(&rng, 15) : 0);

		if (s->len + REC_HDR + len > IN_MAX)
			break;
		op |= (uint8_t)(t_rng_chance(&rng, 50) << 4);
		if (t_rng_chance(&rng, 5))
			op |= (uint8_t)(t_rng_below(&rng, 8) << 5); /* flags: ignored */
		s->buf[s->len] = (uint8_t)type;
		s->buf[s->len + 1] = op;
		s->buf[s->len + 2] = (uint8_t)len;
		s->buf[s->len + 3] = (uint8_t)(len >> 8);
		memcpy(s->buf + s->len + REC_HDR, s->pay, len);
		s->rec[s->nrec] = (uint32_t)(s->len + REC_HDR);
		s->len += REC_HDR + len;
	}
}

/* Raw mode: a real producer fills a ring (size from the mode byte), published in steps. */
static void gen_raw(struct gen *s, void *scratch)
{
	uint32_t size = RAW_SIZE((s->buf[IN_MODE] >> 2) & 7u), full = 0;
	uint32_t start = t_rng_chance(&rng, 50) ? 0 : 0u - 8 * t_rng_below(&rng, 2 * size / 8);
	size_t next = IN_BODY + 8 + size, first = 0;
	struct shm_ring p;
	int err = 0;

	memset(scratch, 0, shm_ring_bytes(size));
	atomic_store_explicit(&((struct shm_ring_shared *)scratch)->head, start,
			      memory_order_relaxed);
	atomic_store_explicit(&((struct shm_ring_shared *)scratch)->tail, start,
			      memory_order_relaxed);
	if (shm_ring_attach(&p, scratch, size, true))
		t_fuzz_fail("producer attach at %#x", start);
	for (s->nrec = 0; s->nrec < MAX_RECS;) {
		uint16_t type;
		uint32_t len = gen_record(s, &type);
		uint8_t *pay = shm_ring_reserve(&p, type, 0, len, &err);

		if (!pay && err == -ENOBUFS && ++full < 4)
			continue;
		if (!pay && err == -E2BIG)
			continue;
		if (!pay)
			break;
		memcpy(pay, s->pay, len);
		s->rec[s->nrec++] = (uint32_t)(IN_BODY + 8 + (size_t)(pay - p.data));
		shm_ring_commit(&p);
		if (t_rng_chance(&rng, 30) && next + 8 <= IN_BODY + 8 + size + 4 * MAX_HEADS) {
			shm_ring_publish(&p);
			put(s->buf + next, &p.published, 4);
			next += 4;
			first = first ? first : next - 4;
		}
	}
	shm_ring_publish(&p);
	put(s->buf + next, &p.published, 4);
	next += 4;
	put(s->buf + IN_BODY, &start, 4);
	put(s->buf + IN_BODY + 4, t_rng_chance(&rng, 20) ? &start : &p.published, 4);
	if (first && t_rng_chance(&rng, 50)) /* the first head: the first step published */
		put(s->buf + IN_BODY + 4, s->buf + first, 4);
	memcpy(s->buf + IN_BODY + 8, p.data, size);
	s->len = next;
}

/* Offsets in a record's fixed part worth setting: id, rank, count, parent flag, kind, ... */
static const uint8_t field_at[] = {0, 8, 12, 16, 24, 25, 26, 28};

static void mutate_once(struct gen *s)
{
	static const uint32_t v[] = {0,	 1,	2,     3,     15,	  16,
				     17, 65535, 65536, 65537, 0x80000000, 0xFFFFFFFF};
	uint32_t at, val = v[t_rng_below(&rng, sizeof(v) / sizeof(v[0]))];

	switch (t_rng_below(&rng, 6)) {
	case 0: /* a field of a record's fixed part */
	case 1:
		if (!s->nrec)
			break;
		at = s->rec[t_rng_below(&rng, s->nrec)] + field_at[t_rng_below(&rng, 8)];
		if (t_rng_chance(&rng, 50)) {
			if (at < s->len)
				s->buf[at] = (uint8_t)val;
		} else if (at + 4 <= s->len) {
			put(s->buf + at, &val, 4);
		}
		break;
	case 2: /* a record's length (records mode: ours; raw: the ring's header) */
		if (!s->nrec)
			break;
		at = s->rec[t_rng_below(&rng, s->nrec)];
		if (s->buf[IN_MODE] & 1) {
			uint32_t len = 0;

			memcpy(&len, s->buf + at - 8, 4);
			len += (uint32_t)t_rng_below(&rng, 17) - 8;
			put(s->buf + at - 8, &len, 4);
		} else {
			uint16_t len = (uint16_t)(s->buf[at - 2] | s->buf[at - 1] << 8);

			len = (uint16_t)(len + t_rng_below(&rng, 17) - 8);
			s->buf[at - 2] = (uint8_t)len;
			s->buf[at - 1] = (uint8_t)(len >> 8);
		}
		break;
	case 3: /* a bit anywhere */
		at = t_rng_below(&rng, (uint32_t)s->len);
		s->buf[at] ^= (uint8_t)(1u << t_rng_below(&rng, 8));
		break;
	case 4: /* raw mode: an index; records mode: a type */
		if (s->buf[IN_MODE] & 1) {
			at = IN_BODY + 4 * t_rng_below(&rng, 2);
			val = kvf_rd32(s->buf, s->len, at) + 8 * t_rng_below(&rng, 5) - 16;
			put(s->buf + at, t_rng_chance(&rng, 50) ? &val : &v[11], 4);
		} else if (s->nrec) {
			s->buf[s->rec[t_rng_below(&rng, s->nrec)] - REC_HDR] = (uint8_t)val;
		}
		break;
	default: /* truncation */
		s->len = IN_BODY + t_rng_below(&rng, (uint32_t)(s->len - IN_BODY) + 1);
	}
}

static void gen_input(struct gen *s, void *scratch)
{
	uint8_t mode = (uint8_t)t_rng_next(&rng);

	memset(s->next_id, 0, sizeof(s->next_id));
	memset(s->held_d, 0, sizeof(s->held_d));
	for (int i = 0; i < 3; i++)
		s->next_id[i] = t_rng_chance(&rng, 50) ? 1 : t_rng_next(&rng) >> 1;
	if (t_rng_chance(&rng, 70))
		mode &= (uint8_t)~1u; /* records mode, mostly */
	s->buf[IN_MODE] = mode;
	s->buf[IN_BUDGET] = (uint8_t)(t_rng_chance(&rng, 50) ? 255 : t_rng_below(&rng, 8));
	s->len = IN_BODY;
	s->w = kvf_worker(mode >> 1 & 1);
	if (mode & 1)
		gen_raw(s, scratch);
	else
		gen_records(s);
	if (t_rng_chance(&rng, 60))
		for (uint32_t k = 1 + t_rng_below(&rng, 3); k; k--)
			mutate_once(s);
}

int main(int argc, char **argv)
{
	int files;
	static struct gen s;
	unsigned long inputs = 100000;
	uint64_t seed = 42;
	const struct ctl_kv_stats *st;
	void *scratch;

	kvf_setup();
	files = t_fuzz_begin(argc, argv, &inputs, &seed);
	if (files < 0)
		return 2;
	if (posix_memalign(&scratch, 64, shm_ring_bytes(RAW_SIZE(7))))
		return 1;
	t_rng_seed(&rng, seed);
	for (t_fuzz_input_number = 0; t_fuzz_input_number < inputs; t_fuzz_input_number++) {
		gen_input(&s, scratch);
		LLVMFuzzerTestOneInput(s.buf, s.len);
	}
	free(scratch);
	st = &kvf_totals.stats;
	if (inputs >= 100 && !kvf_totals.answers)
		t_fuzz_fail("%lu inputs and the index never held a pool prompt", inputs);
	printf("fuzz_kv_events: seed %llu; clean %lu, broken %lu; %llu non-empty answers\n",
	       (unsigned long long)seed, kvf_totals.clean, kvf_totals.broken,
	       (unsigned long long)kvf_totals.answers);
	printf("fuzz_kv_events: events %llu (refused %llu), duplicates %llu, gaps %llu, "
	       "unknown rank %llu, type %llu, loads %llu, blocks %llu stored, %llu removed\n",
	       (unsigned long long)st->events, (unsigned long long)st->refused,
	       (unsigned long long)st->duplicates, (unsigned long long)st->gaps,
	       (unsigned long long)st->unknown_rank, (unsigned long long)st->unknown_type,
	       (unsigned long long)st->loads, (unsigned long long)st->blocks_stored,
	       (unsigned long long)st->blocks_removed);
	printf("fuzz_kv_events: %lu inputs, ok\n", inputs + (unsigned long)files);
	return 0;
}
