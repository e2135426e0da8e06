/*
 * Description: races between the prefix index's writer and its readers that random events
 * (stress_pdx.c) do not show, each set up so that every reader check is exact:
 *   span  target 0 holds a 64-block run throughout; targets 1-3 store only its first 1, 24 or
 *         48 blocks (and blocks of their own after them), are cleared, store again. None may
 *         be reported deeper than its share: a new holder set must not be paired with a span
 *         computed for the old one.
 *   join  target A holds Q, P, F and five more blocks (in 16 lanes); between windows the
 *         writer frees P (F becomes an orphan run head) and stores it again right before F;
 *         inside a window B stores P, F after its own Q (re-joining F to P's run) and removes
 *         them. A query that lies inside a window must see all of A's run.
 *   caps  random events over one prompt of 96 blocks whose first 48 target 0 holds throughout.
 *         Per window, each of targets 1-8 is either frozen (its depth is exact) or kept under a
 *         cap (its depth may not pass it); no target ever passes its fixed limit.
 * A window is a seqlock: the writer makes window_gen odd before it breaks what it promised and
 * even once the new promises hold; a query counts as inside a window only when it read the
 * same even value before and after it. Built plain (no Criterion) for ThreadSanitizer.
 * Usage: stress_pdx_races [seconds]; exits 0 after "stress_pdx_races: ... ok", 1 otherwise.
 */
#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "hash.h"
#include "index.h"
#include "rng.h"
#include "stress_common.h"

#define READERS 2
#define MAX_TARGETS 16
#define MIN_QUERIES 100	    /* per reader and scenario, however short the run */
#define MAX_STEPS 1000000ul /* writer rounds per scenario, however long the run */
#define DEFAULT_SECONDS 4.0 /* all scenarios together */
#define REPORTS 4	    /* violations printed per scenario */

struct reader;

struct scenario {
	const char *name;
	uint32_t ntargets;
	void (*setup)(struct scenario *sc, struct t_rng *rng);
	void (*step)(struct scenario *sc, struct t_rng *rng);
	void (*query)(struct scenario *sc, struct reader *rd);
	unsigned long steps; /* writer-only */
	/* Counts from all threads, read after pthread_join(): relaxed is enough. */
	atomic_ulong queries, windowed, violations;
	atomic_ulong deeper, shorter; /* violations that were depths above / below the bound */
};

struct reader {
	pthread_t thread;
	struct t_rng rng;
	struct scenario *sc;
	struct pdx_reader *r;
	struct pdx_overlap out[MAX_TARGETS];
	uint32_t depth[MAX_TARGETS]; /* of the last query; 0: not reported */
	size_t n;		     /* blocks of the last query */
};

static struct pdx idx;
/* Set by the writer once it is done; relaxed: pthread_join() orders what matters. */
static atomic_bool stop;
/* Odd while the writer changes what it promised readers (see the top of the file). */
static atomic_ulong window_gen;

static size_t min_sz(size_t a, size_t b)
{
	return a < b ? a : b;
}

__attribute__((format(printf, 2, 3))) static void bad(struct scenario *sc, const char *fmt, ...)
{
	char msg[256];
	va_list ap;

	if (atomic_fetch_add_explicit(&sc->violations, 1, memory_order_relaxed) >= REPORTS)
		return;
	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	/* One call, so lines from several readers do not interleave. */
	fprintf(stderr, "stress_pdx_races: %s: %s\n", sc->name, msg);
}

/* Writer: a call that must return @want. */
static void expect_rc(struct scenario *sc, long rc, long want, const char *what)
{
	if (rc != want)
		bad(sc, "writer: %s returned %ld, want %ld", what, rc, want);
}

/* External ids name whole prefixes, as an engine's block hashes do; @tag varies the naming. */
static void fill_blocks(const uint64_t *local, size_t n, uint64_t tag, struct pdx_block *out)
{
	uint64_t seq = 0;

	for (size_t i = 0; i < n; i++) {
		seq = i ? dp_hash_chain(seq, local[i]) : local[0];
		out[i] =
		    (struct pdx_block){.ext_id = t_mix64(seq ^ tag) | 1, .local_hash = local[i]};
	}
}

/* ---- Windows. ---- */

static void window_close(void)
{
	unsigned long g = atomic_load_explicit(&window_gen, memory_order_relaxed);

	/* Relaxed: the writer is the only one storing window_gen. */
	atomic_store_explicit(&window_gen, g + 1, memory_order_relaxed);
	/* W1: a reader that sees any index write after this fence also sees the odd value;
	 * pairs with W2 in window_held(). */
	atomic_thread_fence(memory_order_release);
}

static void window_open(void)
{
	unsigned long g = atomic_load_explicit(&window_gen, memory_order_relaxed);

	/* W3: the promises and the index writes that keep them; pairs with W4. */
	atomic_store_explicit(&window_gen, g + 1, memory_order_release);
}

static unsigned long window_enter(void)
{
	/* W4: pairs with W3; the reads that follow see the window's state or later. */
	return atomic_load_explicit(&window_gen, memory_order_acquire);
}

/* Was the query since window_enter() returned @g0 inside one window from start to end? */
static bool window_held(unsigned long g0)
{
	/* W2: pairs with W1; had the query read a write of the next closed stretch, this load
	 * would see that stretch's odd value. */
	atomic_thread_fence(memory_order_acquire);
	return !(g0 & 1) && atomic_load_explicit(&window_gen, memory_order_relaxed) == g0;
}

/* ---- Reader side, common to the scenarios. ---- */

/* Match @local[0..n) and check what holds of any answer; rd->depth[] gets the depths. */
static void query(struct reader *rd, const uint64_t *local, size_t n)
{
	size_t k = pdx_match(rd->r, local, n, rd->out);

	memset(rd->depth, 0, sizeof(rd->depth));
	rd->n = n;
	if (k > rd->sc->ntargets) {
		bad(rd->sc, "%zu answers for %u targets", k, rd->sc->ntargets);
		return;
	}
	for (size_t i = 0; i < k; i++) {
		uint32_t t = rd->out[i].target, d = rd->out[i].depth;

		if (t >= rd->sc->ntargets || rd->depth[t] || d == 0 || d > n) {
			bad(rd->sc, "answer target %u depth %u for %zu blocks: bad or repeated", t,
			    d, n);
			continue;
		}
		rd->depth[t] = d;
	}
	atomic_fetch_add_explicit(&rd->sc->queries, 1, memory_order_relaxed);
}

/* The last query must have reported @t at a depth in [lo, hi] (0: not reported), both capped
 * at the query's length. */
static void expect_depth(struct reader *rd, uint32_t t, size_t lo, size_t hi, const char *what)
{
	uint32_t d = rd->depth[t];

	lo = min_sz(lo, rd->n);
	hi = min_sz(hi, rd->n);
	if (d < lo || d > hi) {
		atomic_fetch_add_explicit(d > hi ? &rd->sc->deeper : &rd->sc->shorter, 1,
					  memory_order_relaxed);
		bad(rd->sc, "target %u at depth %u on %zu blocks of %s, want %zu..%zu", t, d, rd->n,
		    what, lo, hi);
	}
}

static void *reader_main(void *arg)
{
	struct reader *rd = arg;

	/* Relaxed: a stale false only means one more query. */
	for (unsigned long n = 0;
	     !atomic_load_explicit(&stop, memory_order_relaxed) || n < MIN_QUERIES; n++)
		rd->sc->query(rd->sc, rd);
	return NULL;
}

/* ---- span: holder sets against stale spans (B1). ---- */

#define SPAN_LEN 64   /* the run target 0 holds throughout */
#define SPAN_TAIL 512 /* blocks of its own a sharer stores after its share: a long event */
#define SPAN_TARGETS 4

/* Leading blocks of the run each target holds when it holds anything. */
static const uint32_t span_share[SPAN_TARGETS] = {SPAN_LEN, 1, 24, 48};
/* Target 0: the run; t > 0: its share of the run, then a tail no one else has. */
static uint64_t span_local[SPAN_TARGETS][SPAN_LEN + SPAN_TAIL];
static struct pdx_block span_blocks[SPAN_TARGETS][SPAN_LEN + SPAN_TAIL];
static bool span_holds[SPAN_TARGETS]; /* writer-only */

static size_t span_len(uint32_t t)
{
	return t ? span_share[t] + SPAN_TAIL : SPAN_LEN;
}

static void span_setup(struct scenario *sc, struct t_rng *rng)
{
	for (uint32_t t = 0; t < SPAN_TARGETS; t++) {
		size_t from = t ? span_share[t] : 0;

		memcpy(span_local[t], span_local[0], from * sizeof(uint64_t));
		for (size_t i = from; i < span_len(t); i++)
			span_local[t][i] = t_rng_next(rng) | 1;
		fill_blocks(span_local[t], span_len(t), 0x5A, span_blocks[t]);
		span_holds[t] = false;
	}
	expect_rc(sc, pdx_store(&idx, 0, NULL, span_blocks[0], SPAN_LEN), SPAN_LEN, "run store");
}

static void span_step(struct scenario *sc, struct t_rng *rng)
{
	uint32_t t = 1 + t_rng_below(rng, SPAN_TARGETS - 1);
	long want = (long)span_len(t);

	if (span_holds[t])
		expect_rc(sc, pdx_clear(&idx, t), want, "clear of a sharer");
	else
		expect_rc(sc, pdx_store(&idx, t, NULL, span_blocks[t], span_len(t)), want,
			  "store of a sharer");
	span_holds[t] = !span_holds[t];
}

static void span_query(struct scenario *sc, struct reader *rd)
{
	/* Half the queries: the whole run, where a stale span reaches furthest. */
	uint32_t p = t_rng_below(&rd->rng, 2) ? 0 : 1 + t_rng_below(&rd->rng, SPAN_TARGETS - 1);
	size_t len = min_sz(span_len(p), span_share[p] + 16);
	size_t n = p == 0 && t_rng_below(&rd->rng, 2) ? SPAN_LEN : 1 + t_rng_below(&rd->rng, len);

	(void)sc;
	query(rd, span_local[p], n);
	/* Target 0 holds the run throughout, and prompt p shares span_share[p] blocks of it. */
	expect_depth(rd, 0, span_share[p], span_share[p], "a span prompt");
	for (uint32_t t = 1; t < SPAN_TARGETS; t++)
		expect_depth(rd, t, 0, t == p ? n : min_sz(span_share[t], span_share[p]),
			     "a span prompt");
}

/* ---- join: an orphan run head joined back to its parent's run (B2). ---- */

#define JOIN_LANES 16		 /* copies of the pattern, so one drain serves many joins */
#define JOIN_HELD 8		 /* Q, P, F and five more: what A holds of a lane */
#define JOIN_LEN (JOIN_HELD + 1) /* queries add a block no one holds */
#define JOIN_DRAIN 4096		 /* reclaim attempts before P is stored wherever it lands */

enum { JOIN_A, JOIN_B };

static uint64_t join_local[JOIN_LANES][JOIN_LEN];
static struct pdx_block join_a[JOIN_LANES][JOIN_HELD]; /* A's blocks */
static struct pdx_block join_b[JOIN_LANES][3]; /* B's Q, P, F, under external ids of its own */
/* The lane B works on. Relaxed: readers only aim at it, any lane's checks hold. */
static atomic_uint join_lane;

/*
 * Between windows: A drops P of every lane, so each F loses its parent and becomes a run head
 * in the table; once readers let the slots go, A stores each P again and it lands in its old
 * slot, right before F. Spinning, not sleeping: a reader leaves its query within microseconds.
 */
static void join_orphan(struct scenario *sc)
{
	uint64_t p[JOIN_LANES];

	window_close();
	for (int k = 0; k < JOIN_LANES; k++)
		p[k] = join_a[k][1].ext_id;
	expect_rc(sc, pdx_remove(&idx, JOIN_A, p, JOIN_LANES), JOIN_LANES, "A's remove of P");
	for (int i = 0; i < JOIN_DRAIN && pdx_reclaim(&idx); i++)
		if (i % 256 == 255)
			sched_yield(); /* a reader may be waiting for this core */
	for (int k = 0; k < JOIN_LANES; k++)
		expect_rc(sc, pdx_store(&idx, JOIN_A, &join_a[k][0].ext_id, &join_a[k][1], 1), 1,
			  "A's store of P");
	window_open();
}

static void join_setup(struct scenario *sc, struct t_rng *rng)
{
	for (int k = 0; k < JOIN_LANES; k++) {
		for (size_t i = 0; i < JOIN_LEN; i++)
			join_local[k][i] = t_rng_next(rng) | 1;
		fill_blocks(join_local[k], JOIN_HELD, 0xA, join_a[k]);
		fill_blocks(join_local[k], 3, 0xB, join_b[k]);
		expect_rc(sc, pdx_store(&idx, JOIN_A, NULL, join_a[k], JOIN_HELD), JOIN_HELD,
			  "A's store");
		expect_rc(sc, pdx_store(&idx, JOIN_B, NULL, join_b[k], 1), 1, "B's store of Q");
	}
	join_orphan(sc);
}

static void join_step(struct scenario *sc, struct t_rng *rng)
{
	(void)rng;
	/* Inside a window: B's P, F make A's orphan F continue P's run again, lane by lane. */
	for (unsigned k = 0; k < JOIN_LANES; k++) {
		uint64_t ids[2] = {join_b[k][1].ext_id, join_b[k][2].ext_id};

		atomic_store_explicit(&join_lane, k, memory_order_relaxed);
		expect_rc(sc, pdx_store(&idx, JOIN_B, &join_b[k][0].ext_id, &join_b[k][1], 2), 2,
			  "B's store of P, F");
		expect_rc(sc, pdx_remove(&idx, JOIN_B, ids, 2), 2, "B's remove of P, F");
	}
	join_orphan(sc);
}

static void join_query(struct scenario *sc, struct reader *rd)
{
	uint32_t k = t_rng_below(&rd->rng, 8)
			 ? atomic_load_explicit(&join_lane, memory_order_relaxed)
			 : t_rng_below(&rd->rng, JOIN_LANES);
	size_t n = t_rng_below(&rd->rng, 4) ? JOIN_LEN : 1 + t_rng_below(&rd->rng, JOIN_LEN);
	unsigned long g0 = window_enter();
	bool held;

	query(rd, join_local[k], n);
	held = window_held(g0);
	/* A and B hold Q throughout; inside a window A holds its whole run. */
	expect_depth(rd, JOIN_A, held ? JOIN_HELD : 1, JOIN_HELD,
		     held ? "A's run, in a window" : "A's run");
	expect_depth(rd, JOIN_B, 1, 3, "A's run");
	if (held)
		atomic_fetch_add_explicit(&sc->windowed, 1, memory_order_relaxed);
}

/* ---- caps: depths under caps, and exact for frozen targets, over random events. ---- */

#define CAPS_LEN 96    /* blocks of the prompt */
#define CAPS_PIN 48    /* leading blocks target 0 holds throughout */
#define CAPS_TARGETS 9 /* 0 and 1-8 */
#define CAPS_EVENTS 48 /* events per window */
#define CAPS_BRANCH 4  /* blocks of a branch off the prompt */

static uint64_t caps_local[CAPS_LEN];
static struct pdx_block caps_blocks[CAPS_LEN];
/* The current window's promise: the target's depth is in [lo, hi]. Written while closed. */
static atomic_uint caps_lo[CAPS_TARGETS], caps_hi[CAPS_TARGETS];
/* Writer-only: what each target holds of the prompt, its branch blocks, its cap (frozen: 0). */
static bool caps_held[CAPS_TARGETS][CAPS_LEN];
static size_t caps_nbranch[CAPS_TARGETS];
static uint32_t caps_cap[CAPS_TARGETS];
static bool caps_frozen[CAPS_TARGETS];

/* Target t > 0 never holds a block of the prompt at or past this one. */
static uint32_t caps_limit(uint32_t t)
{
	return 11 * t;
}

static size_t caps_prefix(uint32_t t)
{
	size_t n = 0;

	while (n < CAPS_LEN && caps_held[t][n])
		n++;
	return n;
}

static size_t caps_nheld(uint32_t t)
{
	size_t n = caps_nbranch[t];

	for (size_t i = 0; i < CAPS_LEN; i++)
		n += caps_held[t][i];
	return n;
}

static void caps_setup(struct scenario *sc, struct t_rng *rng)
{
	for (size_t i = 0; i < CAPS_LEN; i++)
		caps_local[i] = t_rng_next(rng) | 1;
	fill_blocks(caps_local, CAPS_LEN, 0xC, caps_blocks);
	memset(caps_held, 0, sizeof(caps_held));
	memset(caps_nbranch, 0, sizeof(caps_nbranch));
	for (uint32_t t = 0; t < CAPS_TARGETS; t++) {
		caps_frozen[t] = true;
		/* Relaxed: readers start after pthread_create(), which orders these stores. */
		atomic_store_explicit(&caps_lo[t], 0, memory_order_relaxed);
		atomic_store_explicit(&caps_hi[t], 0, memory_order_relaxed);
	}
	/* Nothing else held yet, so the first window (open since run_scenario()) promises 0. */
	expect_rc(sc, pdx_store(&idx, 0, NULL, caps_blocks, CAPS_PIN), CAPS_PIN, "pin store");
}

/* Remove prompt blocks @pos[0..n) from t; the model says how many it held. */
static void caps_remove(struct scenario *sc, uint32_t t, const uint32_t *pos, size_t n)
{
	uint64_t ids[CAPS_LEN];
	long want = 0;

	for (size_t i = 0; i < n; i++) {
		ids[i] = caps_blocks[pos[i]].ext_id;
		want += caps_held[t][pos[i]];
		caps_held[t][pos[i]] = false;
	}
	expect_rc(sc, pdx_remove(&idx, t, ids, n), want, "remove");
}

/* Store prompt blocks [a, b) on t after block a - 1, if t holds it. */
static void caps_store_run(struct scenario *sc, uint32_t t, uint32_t a, uint32_t b)
{
	const uint64_t *parent = a ? &caps_blocks[a - 1].ext_id : NULL;
	long want = 0;

	if (a && !caps_held[t][a - 1]) {
		expect_rc(sc, pdx_store(&idx, t, parent, caps_blocks + a, b - a), -ENOENT,
			  "store after a block not held");
		return;
	}
	for (uint32_t i = a; i < b; i++) {
		want += !caps_held[t][i];
		caps_held[t][i] = true;
	}
	expect_rc(sc, pdx_store(&idx, t, parent, caps_blocks + a, b - a), want, "store");
}

/* Store prompt blocks [0, a) and CAPS_BRANCH new ones after them on t. */
static void caps_store_branch(struct scenario *sc, struct t_rng *rng, uint32_t t, uint32_t a)
{
	uint64_t local[CAPS_LEN + CAPS_BRANCH];
	struct pdx_block b[CAPS_LEN + CAPS_BRANCH];
	long want = CAPS_BRANCH;

	memcpy(local, caps_local, a * sizeof(uint64_t));
	for (uint32_t i = a; i < a + CAPS_BRANCH; i++)
		local[i] = t_rng_next(rng) | 1;
	fill_blocks(local, a + CAPS_BRANCH, 0xC, b);
	for (uint32_t i = 0; i < a; i++) {
		want += !caps_held[t][i];
		caps_held[t][i] = true;
	}
	caps_nbranch[t] += CAPS_BRANCH;
	expect_rc(sc, pdx_store(&idx, t, NULL, b, a + CAPS_BRANCH), want, "branch store");
}

static void caps_event(struct scenario *sc, struct t_rng *rng, uint32_t t)
{
	uint32_t c = caps_cap[t], k = t_rng_below(rng, 100), pos[CAPS_LEN], n = 0;

	if (k < 40 && c) {
		uint32_t a = t_rng_below(rng, c);

		caps_store_run(sc, t, a, a + 1 + t_rng_below(rng, c - a));
	} else if (k < 60) {
		caps_store_branch(sc, rng, t, t_rng_below(rng, c + 1));
	} else if (k < 93) {
		for (uint32_t i = 0; i < c; i++)
			if (t_rng_below(rng, 2))
				pos[n++] = i;
		caps_remove(sc, t, pos, n);
	} else {
		expect_rc(sc, pdx_clear(&idx, t), (long)caps_nheld(t), "clear");
		memset(caps_held[t], 0, sizeof(caps_held[t]));
		caps_nbranch[t] = 0;
	}
	expect_rc(sc, (long)pdx_target_blocks(&idx, t), (long)caps_nheld(t), "target blocks");
}

/* A new window: each target 1-8 is frozen or gets a cap, down to which it is cut first. */
static void caps_rewindow(struct scenario *sc, struct t_rng *rng)
{
	window_close();
	for (uint32_t t = 1; t < CAPS_TARGETS; t++) {
		uint32_t pos[CAPS_LEN], n = 0, lo, hi;

		caps_frozen[t] = t_rng_below(rng, 2);
		if (caps_frozen[t]) {
			caps_cap[t] = 0;
			lo = hi = (uint32_t)caps_prefix(t);
		} else {
			caps_cap[t] = t_rng_below(rng, caps_limit(t) + 1);
			for (uint32_t i = caps_cap[t]; i < caps_limit(t); i++)
				pos[n++] = i;
			caps_remove(sc, t, pos, n);
			lo = 0;
			hi = caps_cap[t];
		}
		/* Relaxed: published by W3 in window_open(). */
		atomic_store_explicit(&caps_lo[t], lo, memory_order_relaxed);
		atomic_store_explicit(&caps_hi[t], hi, memory_order_relaxed);
	}
	window_open();
}

static void caps_step(struct scenario *sc, struct t_rng *rng)
{
	uint32_t active[CAPS_TARGETS], na = 0;

	caps_rewindow(sc, rng);
	for (uint32_t t = 1; t < CAPS_TARGETS; t++)
		if (!caps_frozen[t])
			active[na++] = t;
	for (uint32_t e = 0; na && e < CAPS_EVENTS; e++)
		caps_event(sc, rng, active[t_rng_below(rng, na)]);
}

static void caps_query(struct scenario *sc, struct reader *rd)
{
	size_t n = t_rng_below(&rd->rng, 4) ? CAPS_LEN : 1 + t_rng_below(&rd->rng, CAPS_LEN);
	unsigned long g0 = window_enter();
	uint32_t lo[CAPS_TARGETS], hi[CAPS_TARGETS];
	bool held;

	for (uint32_t t = 1; t < CAPS_TARGETS; t++) {
		/* Relaxed: W4 above and W2 below make them this window's, or the query void. */
		lo[t] = atomic_load_explicit(&caps_lo[t], memory_order_relaxed);
		hi[t] = atomic_load_explicit(&caps_hi[t], memory_order_relaxed);
	}
	query(rd, caps_local, n);
	held = window_held(g0);
	expect_depth(rd, 0, CAPS_PIN, CAPS_PIN, "the capped prompt");
	for (uint32_t t = 1; t < CAPS_TARGETS; t++) {
		expect_depth(rd, t, 0, caps_limit(t), "the capped prompt, fixed limit");
		if (held)
			expect_depth(rd, t, lo[t], hi[t], "the capped prompt, in a window");
	}
	if (held)
		atomic_fetch_add_explicit(&sc->windowed, 1, memory_order_relaxed);
}

/* ---- Driver. ---- */

/* Single-threaded again: once every target is gone, nothing may be left. */
static void empty_checks(struct scenario *sc)
{
	struct pdx_stats s;

	for (uint32_t t = 0; t < sc->ntargets; t++)
		if (pdx_drop_target(&idx, t) < 0)
			bad(sc, "drop of target %u failed", t);
	if (pdx_reclaim(&idx) != 0)
		bad(sc, "objects still retired with no reader attached");
	pdx_stats(&idx, &s);
	if (s.entries || s.holder_sets || s.retired_pending)
		bad(sc, "empty index: %lu entries, %lu sets, %lu retired", (unsigned long)s.entries,
		    (unsigned long)s.holder_sets, (unsigned long)s.retired_pending);
}

static int run_scenario(struct scenario *sc, double seconds, struct t_rng *rng)
{
	struct pdx_config cfg = {
	    .max_targets = MAX_TARGETS, .max_readers = READERS, .initial_blocks = 256};
	static struct reader readers[READERS];
	double end;

	if (pdx_init(&idx, &cfg) != 0) {
		fprintf(stderr, "stress_pdx_races: %s: pdx_init failed\n", sc->name);
		return -1;
	}
	/* Relaxed: readers start after pthread_create(), which orders these stores. */
	atomic_store_explicit(&stop, false, memory_order_relaxed);
	atomic_store_explicit(&window_gen, 0, memory_order_relaxed); /* even: a window is open */
	sc->setup(sc, rng);
	for (int i = 0; i < READERS; i++) {
		readers[i] = (struct reader){.rng = {t_rng_next(rng)}, .sc = sc};
		if (pdx_reader_attach(&idx, &readers[i].r) != 0 ||
		    pthread_create(&readers[i].thread, NULL, reader_main, &readers[i]) != 0) {
			fprintf(stderr, "stress_pdx_races: %s: cannot start reader %d\n", sc->name,
				i);
			return -1;
		}
	}
	for (end = now_s() + seconds; sc->steps < MAX_STEPS && now_s() < end; sc->steps++)
		sc->step(sc, rng);
	atomic_store_explicit(&stop, true, memory_order_relaxed);
	for (int i = 0; i < READERS; i++) {
		pthread_join(readers[i].thread, NULL);
		pdx_reader_detach(readers[i].r);
	}
	empty_checks(sc);
	pdx_destroy(&idx);
	return 0;
}

static struct scenario scenarios[] = {
    {.name = "span",
     .ntargets = SPAN_TARGETS,
     .setup = span_setup,
     .step = span_step,
     .query = span_query},
    {.name = "join", .ntargets = 2, .setup = join_setup, .step = join_step, .query = join_query},
    {.name = "caps",
     .ntargets = CAPS_TARGETS,
     .setup = caps_setup,
     .step = caps_step,
     .query = caps_query},
};

#define NSCENARIOS (sizeof(scenarios) / sizeof(scenarios[0]))

/* One line for all scenarios, once every one has run (violations went to stderr before). */
static unsigned long summary(void)
{
	unsigned long total = 0;

	printf("stress_pdx_races:");
	for (size_t i = 0; i < NSCENARIOS; i++) {
		struct scenario *sc = &scenarios[i];
		unsigned long v = atomic_load_explicit(&sc->violations, memory_order_relaxed);

		printf(
		    "%s %s %lu queries (%lu in windows), %lu rounds, %lu violations (%lu deeper, "
		    "%lu shorter)",
		    i ? ";" : "", sc->name,
		    atomic_load_explicit(&sc->queries, memory_order_relaxed),
		    atomic_load_explicit(&sc->windowed, memory_order_relaxed), sc->steps, v,
		    atomic_load_explicit(&sc->deeper, memory_order_relaxed),
		    atomic_load_explicit(&sc->shorter, memory_order_relaxed));
		total += v;
	}
	printf(": %s\n", total ? "FAILED" : "ok");
	return total;
}

int main(int argc, char **argv)
{
	double seconds = argc > 1 ? atof(argv[1]) : DEFAULT_SECONDS;
	struct t_rng rng = {0x5EED5};

	for (size_t i = 0; i < NSCENARIOS; i++)
		if (run_scenario(&scenarios[i], seconds / NSCENARIOS, &rng) != 0)
			return 1;
	return summary() ? 1 : 0;
}
