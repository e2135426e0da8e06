/*
 * Description: one writer applies random KV events (stores, removes, clears, drops) to the
 * prefix index on many targets and prefixes while three reader threads query it without
 * locks. Readers check what must hold at every instant: a prefix target 0 stored once and never
 * removed is always reported complete; no depth exceeds the query; every target is valid and
 * reported once. Built plain (no Criterion) so it runs under ThreadSanitizer, ASan and none.
 * Usage: stress_pdx [seconds]; exits 0 after "stress_pdx: N queries, M events, ok", 1 otherwise.
 */
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "hash.h"
#include "index.h"
#include "rng.h"
#include "stress_common.h"

#define TARGETS 64
#define READERS 3
#define BS 16	     /* tokens per block of the fixed prefix */
#define FIXED_LEN 24 /* blocks of the prefix target 0 never removes */
#define BRANCHES 64  /* prompts that start with part of the fixed prefix */
#define PROMPTS 256  /* all prompts of the universe */
#define PLEN 32	     /* blocks per prompt */
#define FRESH 512    /* writer-only prompts, replaced by new ones all the time */
#define FRESH_LEN 8
#define MAX_EVENTS 400000   /* the writer stops after this many events ... */
#define DEFAULT_SECONDS 5.0 /* ... or this much time, whichever comes first */

struct prompt {
	size_t shared; /* leading blocks taken from the fixed prefix (branches only) */
	uint64_t local[PLEN];
	uint64_t ext[PLEN];
};

static struct pdx idx;
static uint32_t fixed_tokens[FIXED_LEN * BS];
static uint64_t fixed_local[FIXED_LEN];
static uint64_t fixed_ext[FIXED_LEN];
static struct prompt prompts[PROMPTS];

/*
 * writer: main thread. A stop flag and counts, read after pthread_join() (which orders
 * everything before it): relaxed is enough for all three.
 */
static atomic_bool writer_done;
static atomic_ulong queries;

#define fail(...) T_STRESS_FAIL("stress_pdx", __VA_ARGS__)

/* External ids name whole prefixes, as an engine's block hashes do. */
static void fill_ext(const uint64_t *local, size_t n, uint64_t *ext)
{
	uint64_t seq = 0;

	for (size_t i = 0; i < n; i++) {
		seq = i ? dp_hash_chain(seq, local[i]) : local[0];
		ext[i] = t_mix64(seq ^ 0xE47) | 1;
	}
}

static void build_universe(struct t_rng *rng)
{
	for (size_t i = 0; i < FIXED_LEN * BS; i++)
		fixed_tokens[i] = (uint32_t)t_rng_next(rng);
	dp_hash_blocks(fixed_tokens, FIXED_LEN * BS, BS, DP_HASH_SEED, fixed_local);
	fill_ext(fixed_local, FIXED_LEN, fixed_ext);
	for (size_t p = 0; p < PROMPTS; p++) {
		struct prompt *pr = &prompts[p];
		size_t from = 0;

		if (p < BRANCHES) {
			pr->shared = 1 + t_rng_below(rng, FIXED_LEN);
			memcpy(pr->local, fixed_local, pr->shared * sizeof(uint64_t));
			from = pr->shared;
		} else if (p >= BRANCHES + 16) {
			/* Later prompts branch off earlier non-fixed ones: shared holder sets. */
			const struct prompt *base =
			    &prompts[BRANCHES + t_rng_below(rng, (uint32_t)(p - BRANCHES))];

			from = 1 + t_rng_below(rng, PLEN - 1);
			memcpy(pr->local, base->local, from * sizeof(uint64_t));
		}
		for (size_t i = from; i < PLEN; i++)
			pr->local[i] = t_rng_next(rng) | 1;
		fill_ext(pr->local, PLEN, pr->ext);
	}
}

/* ---- Readers. ---- */

struct reader {
	pthread_t thread;
	int id;
	struct t_rng rng;
	struct pdx_reader *r;
	struct pdx_overlap out[TARGETS];
	uint64_t seen[TARGETS]; /* stamp of the query that last reported a target */
	uint64_t stamp;
};

/* Checks every answer; returns the depth reported for target 0 (0 when absent). */
static uint32_t check_answers(struct reader *rd, long k, size_t n, const char *what)
{
	uint32_t d0 = 0;

	rd->stamp++;
	if (k < 0 || k > TARGETS) {
		fail("reader %d, %s: %ld answers\n", rd->id, what, k);
		return 0;
	}
	for (long i = 0; i < k; i++) {
		const struct pdx_overlap *o = &rd->out[i];

		if (o->target >= TARGETS) {
			fail("reader %d, %s: target %u out of range\n", rd->id, what, o->target);
			continue;
		}
		if (rd->seen[o->target] == rd->stamp)
			fail("reader %d, %s: target %u reported twice\n", rd->id, what, o->target);
		rd->seen[o->target] = rd->stamp;
		if (o->depth == 0 || o->depth > n)
			fail("reader %d, %s: target %u depth %u for %zu blocks\n", rd->id, what,
			     o->target, o->depth, n);
		if (o->target == 0)
			d0 = o->depth;
	}
	return d0;
}

static void reader_query(struct reader *rd)
{
	uint32_t kind = t_rng_below(&rd->rng, 4);
	long k;
	uint32_t d0;

	if (kind == 0) {
		k = (long)pdx_match(rd->r, fixed_local, FIXED_LEN, rd->out);
		d0 = check_answers(rd, k, FIXED_LEN, "fixed prefix");
	} else if (kind == 1) {
		k = pdx_match_tokens(rd->r, fixed_tokens, FIXED_LEN * BS, BS, DP_HASH_SEED,
				     rd->out);
		d0 = check_answers(rd, k, FIXED_LEN, "fixed prefix tokens");
	} else {
		const struct prompt *p =
		    &prompts[t_rng_below(&rd->rng, kind == 2 ? BRANCHES : PROMPTS)];
		size_t n = 1 + t_rng_below(&rd->rng, PLEN);
		size_t must = p->shared < n ? p->shared : n;

		k = (long)pdx_match(rd->r, p->local, n, rd->out);
		d0 = check_answers(rd, k, n, "prompt");
		if (d0 < must)
			fail("reader %d: target 0 depth %u on a prompt sharing %zu fixed blocks\n",
			     rd->id, d0, must);
		return;
	}
	if (d0 != FIXED_LEN)
		fail("reader %d: fixed prefix reported at depth %u, want %u\n", rd->id, d0,
		     FIXED_LEN);
}

static void *reader_main(void *arg)
{
	struct reader *rd = arg;
	unsigned long n = 0;

	/* Keep querying until the writer is done, and at least a little in any case. */
	while (!atomic_load_explicit(&writer_done, memory_order_relaxed) || n < 1000) {
		reader_query(rd);
		n++;
	}
	atomic_fetch_add_explicit(&queries, n, memory_order_relaxed);
	return NULL;
}

/* ---- Writer. ---- */

static void writer_store(struct t_rng *rng, uint32_t t)
{
	const struct prompt *p;
	size_t from, n;

	if (t == 0) {
		/* Target 0 only adds or drops tails after the fixed prefix. */
		p = &prompts[t_rng_below(rng, BRANCHES)];
		from = p->shared;
	} else {
		p = &prompts[t_rng_below(rng, PROMPTS)];
		from = t_rng_below(rng, 4) == 0 ? 0 : t_rng_below(rng, PLEN);
	}
	if (from >= PLEN)
		return;
	n = 1 + t_rng_below(rng, (uint32_t)(PLEN - from));

	struct pdx_block b[PLEN];

	for (size_t i = 0; i < n; i++)
		b[i] = (struct pdx_block){.ext_id = p->ext[from + i],
					  .local_hash = p->local[from + i]};

	long rc = pdx_store(&idx, t, from ? &p->ext[from - 1] : NULL, b, n);

	if (rc < 0 && rc != -ENOENT && rc != -EEXIST)
		fail("store on target %u: %ld\n", t, rc);
}

static void writer_remove(struct t_rng *rng, uint32_t t)
{
	const struct prompt *p = &prompts[t_rng_below(rng, t == 0 ? BRANCHES : PROMPTS)];
	size_t from = t == 0 ? p->shared : t_rng_below(rng, PLEN);
	uint64_t ids[PLEN];
	size_t n = 0;

	for (size_t i = from; i < PLEN; i++)
		if (t_rng_below(rng, 3))
			ids[n++] = p->ext[i];
	if (pdx_remove(&idx, t, ids, n) < 0)
		fail("remove on target %u failed\n", t);
}

/*
 * Replace a writer-only prompt by a new one: new keys all the time leave tombstones in the
 * table, so it is rebuilt (and the old one retired) while the readers walk it.
 */
static void writer_fresh(struct t_rng *rng)
{
	static struct {
		uint32_t target;
		uint64_t local[FRESH_LEN], ext[FRESH_LEN];
	} fresh[FRESH];
	struct pdx_block b[FRESH_LEN];
	uint32_t j = t_rng_below(rng, FRESH);

	if (fresh[j].target)
		pdx_remove(&idx, fresh[j].target, fresh[j].ext, FRESH_LEN);
	fresh[j].target = 1 + t_rng_below(rng, TARGETS - 1);
	for (size_t i = 0; i < FRESH_LEN; i++)
		fresh[j].local[i] = t_rng_next(rng) | 1;
	fill_ext(fresh[j].local, FRESH_LEN, fresh[j].ext);
	for (size_t i = 0; i < FRESH_LEN; i++)
		b[i] =
		    (struct pdx_block){.ext_id = fresh[j].ext[i], .local_hash = fresh[j].local[i]};
	if (pdx_store(&idx, fresh[j].target, NULL, b, FRESH_LEN) < 0)
		fail("store of a fresh prompt on target %u failed\n", fresh[j].target);
}

static unsigned long writer_run(struct t_rng *rng, double seconds)
{
	static uint64_t next_event[TARGETS];
	double end = now_s() + seconds;
	unsigned long events;

	for (events = 0; events < MAX_EVENTS; events++) {
		if (events % 256 == 0 && now_s() > end)
			break;

		uint32_t t = t_rng_below(rng, TARGETS), k = t_rng_below(rng, 1000);

		if (pdx_event_seq(&idx, t, ++next_event[t]) < 0)
			fail("event id %lu on target %u refused\n", (unsigned long)next_event[t],
			     t);
		if (k < 150)
			writer_fresh(rng);
		else if (k < 550)
			writer_store(rng, t);
		else if (k < 990)
			writer_remove(rng, t);
		else if (t != 0 && k < 996)
			pdx_clear(&idx, t);
		else if (t != 0) {
			pdx_drop_target(&idx, t);
			next_event[t] = 0;
		}
		if (events % 4096 == 0)
			pdx_reclaim(&idx);
	}
	return events;
}

/* Single-threaded again: empty everything but the fixed prefix, then that too. */
static void final_checks(void)
{
	struct pdx_reader *r;
	struct pdx_overlap out[TARGETS];
	struct pdx_stats s;

	for (size_t p = 0; p < BRANCHES; p++)
		pdx_remove(&idx, 0, prompts[p].ext + prompts[p].shared, PLEN - prompts[p].shared);
	for (uint32_t t = 1; t < TARGETS; t++)
		pdx_drop_target(&idx, t);
	pdx_stats(&idx, &s);
	if (s.entries != FIXED_LEN || pdx_target_blocks(&idx, 0) != FIXED_LEN)
		fail("after the run: %lu entries, target 0 holds %zu blocks, want %u\n",
		     (unsigned long)s.entries, pdx_target_blocks(&idx, 0), FIXED_LEN);
	if (pdx_reader_attach(&idx, &r) != 0) {
		fail("cannot attach a reader after the run\n");
		return;
	}

	size_t k = pdx_match(r, fixed_local, FIXED_LEN, out);

	if (k != 1 || out[0].target != 0 || out[0].depth != FIXED_LEN)
		fail("after the run: %zu answers for the fixed prefix\n", k);
	pdx_reader_detach(r);
	if (pdx_drop_target(&idx, 0) != FIXED_LEN)
		fail("dropping target 0 did not drop the fixed prefix\n");
	if (pdx_reclaim(&idx) != 0)
		fail("objects still retired with no reader attached\n");
	pdx_stats(&idx, &s);
	if (s.entries || s.holder_sets || s.retired_pending)
		fail("empty index: %lu entries, %lu sets, %lu retired\n", (unsigned long)s.entries,
		     (unsigned long)s.holder_sets, (unsigned long)s.retired_pending);
}

int main(int argc, char **argv)
{
	struct pdx_config cfg = {
	    .max_targets = TARGETS, .max_readers = READERS + 1, .initial_blocks = 256};
	static struct reader readers[READERS];
	double seconds = argc > 1 ? atof(argv[1]) : DEFAULT_SECONDS;
	struct t_rng rng = {0x5EED};
	struct pdx_block fixed[FIXED_LEN];

	if (pdx_init(&idx, &cfg) != 0) {
		fprintf(stderr, "stress_pdx: pdx_init failed\n");
		return 1;
	}
	build_universe(&rng);

	/* Target 0 stores the fixed prefix once, before any reader starts. */
	for (size_t i = 0; i < FIXED_LEN; i++)
		fixed[i] = (struct pdx_block){.ext_id = fixed_ext[i], .local_hash = fixed_local[i]};
	if (pdx_store(&idx, 0, NULL, fixed, FIXED_LEN) != FIXED_LEN) {
		fprintf(stderr, "stress_pdx: storing the fixed prefix failed\n");
		return 1;
	}
	for (int i = 0; i < READERS; i++) {
		readers[i].id = i;
		t_rng_seed(&readers[i].rng, 1000 + (uint64_t)i);
		if (pdx_reader_attach(&idx, &readers[i].r) != 0 ||
		    pthread_create(&readers[i].thread, NULL, reader_main, &readers[i]) != 0) {
			fprintf(stderr, "stress_pdx: cannot start reader %d\n", i);
			return 1;
		}
	}

	unsigned long events = writer_run(&rng, seconds);

	atomic_store_explicit(&writer_done, true, memory_order_relaxed);
	for (int i = 0; i < READERS; i++) {
		pthread_join(readers[i].thread, NULL);
		pdx_reader_detach(readers[i].r);
	}
	final_checks();
	pdx_destroy(&idx);
	if (t_stress_failed()) {
		fprintf(stderr, "stress_pdx: %u invariant violations\n",
			t_stress_failed());
		return 1;
	}
	printf("stress_pdx: %lu queries, %lu events, ok\n",
	       atomic_load_explicit(&queries, memory_order_relaxed), events);
	return 0;
}
