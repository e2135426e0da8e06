/*
 * `pdbench index --readers N`: the concurrent phase. One writer thread replays the stream's
 * events while N reader threads run its MATCH queries, each timing every query into its own
 * histogram (a run can make millions, too many to keep). The answers cannot be compared with
 * the file (the index state differs), so each is checked against invariants instead.
 */
#define _GNU_SOURCE /* RUSAGE_THREAD */
#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>

#include "bench.h"
#include "bench_index.h"

/* Latency histogram: exact below 64 ns, then 64 buckets per power of two (under 1.6% wide). */
#define BI_HIST_SUB_BITS 6u
#define BI_HIST_SUB (1u << BI_HIST_SUB_BITS)
#define BI_HIST_BUCKETS ((64u - BI_HIST_SUB_BITS + 1u) * BI_HIST_SUB)

enum { BI_GATE_WAIT, BI_GATE_GO, BI_GATE_ABORT };

/* Start line: threads arrive once set up, and run only when the main thread opens it. */
struct bi_gate {
	pthread_mutex_t mu;
	pthread_cond_t cv;
	uint32_t ready;
	int state;
};

struct bi_phase;

struct bi_reader {
	pthread_t tid;
	struct bi_phase *ph;
	uint32_t id;
	int err; /* pdx_reader_attach() failure */
	struct pdx_reader *h;
	struct pdx_overlap *ans; /* max_targets answers */
	uint32_t *seen;		 /* per worker: the query that last reported it */
	uint32_t stamp;
	uint64_t matches, violations, max_ns, t_start, t_end;
	uint64_t preempted;	      /* involuntary context switches while matching */
	const struct pdops_op *bad_q; /* first violation, printed after the run */
	struct pdx_overlap bad_a;
	size_t bad_n;
	uint64_t hist[BI_HIST_BUCKETS];
};

struct bi_phase {
	const struct bi_stream *s;
	struct pdx x;
	uint32_t nreaders;
	struct bi_gate gate;
	_Atomic bool stop; /* writer: main thread */
	struct bi_reader *rd;
	pthread_t writer;
	uint64_t w_events, w_passes, w_errors, w_start, w_end;
};

static unsigned bi_hist_bucket(uint64_t v)
{
	unsigned e;

	if (v < BI_HIST_SUB)
		return (unsigned)v;
	e = 63u - (unsigned)__builtin_clzll(v);
	return (e - BI_HIST_SUB_BITS + 1u) * BI_HIST_SUB +
	       (unsigned)((v >> (e - BI_HIST_SUB_BITS)) & (BI_HIST_SUB - 1u));
}

/* Largest value that lands in bucket @b. */
static uint64_t bi_hist_high(unsigned b)
{
	unsigned shift;

	if (b < BI_HIST_SUB)
		return b;
	shift = b / BI_HIST_SUB - 1u;
	return ((uint64_t)(BI_HIST_SUB + b % BI_HIST_SUB) << shift) + ((uint64_t)1 << shift) - 1u;
}

/* Nearest-rank percentile @permille of @n samples, capped at the exact maximum. */
static uint64_t bi_hist_pct(const uint64_t *hist, uint64_t n, unsigned permille, uint64_t max)
{
	uint64_t rank = (n * permille + 999u) / 1000u, seen = 0;

	if (n == 0)
		return 0;
	for (unsigned b = 0; b < BI_HIST_BUCKETS; b++) {
		seen += hist[b];
		if (seen >= rank)
			return bi_hist_high(b) < max ? bi_hist_high(b) : max;
	}
	return max;
}

static int bi_gate_arrive(struct bi_gate *g)
{
	int state;

	pthread_mutex_lock(&g->mu);
	g->ready++;
	pthread_cond_broadcast(&g->cv);
	while (g->state == BI_GATE_WAIT)
		pthread_cond_wait(&g->cv, &g->mu);
	state = g->state;
	pthread_mutex_unlock(&g->mu);
	return state;
}

/* Opens the gate once @need threads have arrived (GO), or at once (ABORT). */
static void bi_gate_open(struct bi_gate *g, uint32_t need, int state)
{
	pthread_mutex_lock(&g->mu);
	while (state == BI_GATE_GO && g->ready < need)
		pthread_cond_wait(&g->cv, &g->mu);
	g->state = state;
	pthread_cond_broadcast(&g->cv);
	pthread_mutex_unlock(&g->mu);
}

static bool bi_stopped(struct bi_phase *ph)
{
	/* Relaxed: the flag only says "finish"; results are handed over by pthread_join(). */
	return atomic_load_explicit(&ph->stop, memory_order_relaxed);
}

static void bi_writer_pass(struct bi_phase *ph, bool stoppable)
{
	const struct bi_stream *s = ph->s;

	for (size_t i = 0; i < s->nevent && !(stoppable && bi_stopped(ph)); i++) {
		if (bi_apply_event(&ph->x, s->event[i]) < 0)
			ph->w_errors++;
		ph->w_events++;
	}
	ph->w_passes++;
}

/* Between passes every worker drops everything, so each pass replays from the same state. */
static void bi_writer_clear_all(struct bi_phase *ph)
{
	for (uint32_t w = 0; w < ph->s->file.num_workers && !bi_stopped(ph); w++) {
		if (pdx_clear(&ph->x, w) < 0)
			ph->w_errors++;
		ph->w_events++;
	}
}

static void *bi_writer_main(void *arg)
{
	struct bi_phase *ph = arg;

	bi_writer_pass(ph, false); /* warm-up: readers start on a populated index */
	if (bi_gate_arrive(&ph->gate) != BI_GATE_GO)
		return NULL;
	ph->w_events = 0;
	ph->w_start = dp_now_ns();
	while (!bi_stopped(ph)) {
		bi_writer_clear_all(ph);
		bi_writer_pass(ph, true);
	}
	ph->w_end = dp_now_ns();
	return NULL;
}

static void bi_note(struct bi_reader *rd, const struct pdops_op *q, const struct pdx_overlap *a,
		    size_t n)
{
	if (rd->bad_q)
		return;
	rd->bad_q = q;
	rd->bad_a = a ? *a : (struct pdx_overlap){0};
	rd->bad_n = n;
}

/* Counts answers breaking an invariant: depth in [1, query length], worker valid and once. */
static uint64_t bi_check(struct bi_reader *rd, const struct pdops_op *q, size_t n)
{
	uint32_t workers = rd->ph->s->file.num_workers;
	uint64_t bad = 0;

	if (n > workers) {
		bi_note(rd, q, NULL, n);
		return 1;
	}
	if (++rd->stamp == 0) {
		memset(rd->seen, 0, workers * sizeof(*rd->seen));
		rd->stamp = 1;
	}
	for (size_t j = 0; j < n; j++) {
		const struct pdx_overlap *a = &rd->ans[j];

		if (a->target >= workers || a->depth == 0 || a->depth > q->n ||
		    rd->seen[a->target] == rd->stamp) {
			bi_note(rd, q, a, n);
			bad++;
			continue;
		}
		rd->seen[a->target] = rd->stamp;
	}
	return bad;
}

static void bi_reader_loop(struct bi_reader *rd)
{
	const struct bi_stream *s = rd->ph->s;
	size_t first = rd->id % s->nmatch, i = first;

	while (!bi_stopped(rd->ph)) {
		const struct pdops_op *q = s->match[i];
		uint64_t t0 = dp_now_ns(), ns;
		size_t n = pdx_match(rd->h, q->hashes, q->n, rd->ans);

		ns = dp_now_ns() - t0;
		rd->hist[bi_hist_bucket(ns)]++;
		if (ns > rd->max_ns)
			rd->max_ns = ns;
		rd->violations += bi_check(rd, q, n);
		rd->matches++;
		i += rd->ph->nreaders;
		if (i >= s->nmatch)
			i = first;
	}
}

/* This thread's involuntary context switches: a long max latency with none is the index's. */
static uint64_t bi_preemptions(void)
{
	struct rusage ru;

	return getrusage(RUSAGE_THREAD, &ru) == 0 ? (uint64_t)ru.ru_nivcsw : 0;
}

static void *bi_reader_main(void *arg)
{
	struct bi_reader *rd = arg;

	rd->err = pdx_reader_attach(&rd->ph->x, &rd->h);
	if (bi_gate_arrive(&rd->ph->gate) == BI_GATE_GO && rd->err == 0) {
		rd->preempted = bi_preemptions();
		rd->t_start = dp_now_ns();
		bi_reader_loop(rd);
		rd->t_end = dp_now_ns();
		rd->preempted = bi_preemptions() - rd->preempted;
	}
	if (rd->err == 0)
		pdx_reader_detach(rd->h);
	return NULL;
}

static void bi_phase_free(struct bi_phase *ph)
{
	for (uint32_t k = 0; ph->rd && k < ph->nreaders; k++) {
		free(ph->rd[k].ans);
		free(ph->rd[k].seen);
	}
	free(ph->rd);
	pthread_cond_destroy(&ph->gate.cv);
	pthread_mutex_destroy(&ph->gate.mu);
}

static int bi_phase_alloc(struct bi_phase *ph)
{
	uint32_t workers = ph->s->file.num_workers;

	pthread_mutex_init(&ph->gate.mu, NULL);
	pthread_cond_init(&ph->gate.cv, NULL);
	ph->rd = calloc(ph->nreaders, sizeof(*ph->rd));
	if (!ph->rd)
		return -ENOMEM;
	for (uint32_t k = 0; k < ph->nreaders; k++) {
		struct bi_reader *rd = &ph->rd[k];

		rd->ph = ph;
		rd->id = k;
		rd->ans = calloc(workers, sizeof(*rd->ans));
		rd->seen = calloc(workers, sizeof(*rd->seen));
		if (!rd->ans || !rd->seen)
			return -ENOMEM;
	}
	return 0;
}

/* Starts the writer and every reader; returns how many threads started. */
static uint32_t bi_phase_start(struct bi_phase *ph, int *err)
{
	uint32_t started = 0;

	*err = pthread_create(&ph->writer, NULL, bi_writer_main, ph);
	if (*err)
		return 0;
	for (started = 1; started <= ph->nreaders; started++) {
		struct bi_reader *rd = &ph->rd[started - 1];

		*err = pthread_create(&rd->tid, NULL, bi_reader_main, rd);
		if (*err)
			break;
	}
	return started;
}

static void bi_sleep(double seconds)
{
	struct timespec ts = {(time_t)seconds, (long)((seconds - (double)(time_t)seconds) * 1e9)};

	while (nanosleep(&ts, &ts) < 0 && errno == EINTR)
		;
}

static void bi_phase_join(struct bi_phase *ph, uint32_t started)
{
	if (started > 0)
		pthread_join(ph->writer, NULL);
	for (uint32_t k = 0; k + 1 < started; k++)
		pthread_join(ph->rd[k].tid, NULL);
}

static void bi_print_violation(const struct bi_phase *ph, const struct bi_reader *rd)
{
	const struct pdops_op *q = rd->bad_q;

	fprintf(stderr,
		"pdbench index: reader %u: %" PRIu64 " invariant violations; first: op %zu "
		"(%" PRIu32 " blocks), %zu answers, answer target %u depth %" PRIu32 "\n",
		rd->id, rd->violations, (size_t)(q - ph->s->ops), q->n, rd->bad_n,
		(unsigned)rd->bad_a.target, rd->bad_a.depth);
}

static void bi_summarize_reader(const struct bi_reader *rd, struct bi_reader_result *r)
{
	uint64_t ns = rd->t_end - rd->t_start;

	r->matches = rd->matches;
	r->matches_per_s = ns ? (double)rd->matches * 1e9 / (double)ns : 0;
	r->p50_ns = bi_hist_pct(rd->hist, rd->matches, 500, rd->max_ns);
	r->p99_ns = bi_hist_pct(rd->hist, rd->matches, 990, rd->max_ns);
	r->max_ns = rd->max_ns;
	r->preempted = rd->preempted;
}

static void bi_summarize(struct bi_phase *ph, struct bi_readers_result *out)
{
	uint64_t all[BI_HIST_BUCKETS] = {0};

	out->readers = ph->nreaders;
	for (uint32_t k = 0; k < ph->nreaders; k++) {
		struct bi_reader *rd = &ph->rd[k];
		struct bi_reader_result *r = &out->reader[k];

		bi_summarize_reader(rd, r);
		for (unsigned b = 0; b < BI_HIST_BUCKETS; b++)
			all[b] += rd->hist[b];
		out->matches += r->matches;
		out->matches_per_s += r->matches_per_s;
		out->violations += rd->violations;
		out->preempted += rd->preempted;
		out->worst_p99_ns = r->p99_ns > out->worst_p99_ns ? r->p99_ns : out->worst_p99_ns;
		out->max_ns = r->max_ns > out->max_ns ? r->max_ns : out->max_ns;
		if (rd->violations)
			bi_print_violation(ph, rd);
	}
	out->p99_ns = bi_hist_pct(all, out->matches, 990, out->max_ns);
	out->writer_events = ph->w_events;
	out->writer_passes = ph->w_passes;
	out->writer_errors = ph->w_errors;
	if (ph->w_end > ph->w_start)
		out->writer_events_per_s =
		    (double)ph->w_events * 1e9 / (double)(ph->w_end - ph->w_start);
}

/* Runs the threads for @seconds; returns 0 or the first error (printed). */
static int bi_phase_run(struct bi_phase *ph, double seconds)
{
	int err;
	uint32_t started = bi_phase_start(ph, &err);

	if (err) {
		fprintf(stderr, "pdbench index: pthread_create: %s\n", strerror(err));
		bi_gate_open(&ph->gate, 0, BI_GATE_ABORT);
		bi_phase_join(ph, started);
		return -err;
	}
	bi_gate_open(&ph->gate, ph->nreaders + 1, BI_GATE_GO);
	bi_sleep(seconds);
	atomic_store_explicit(&ph->stop, true, memory_order_relaxed); /* see bi_stopped() */
	bi_phase_join(ph, started);
	for (uint32_t k = 0; k < ph->nreaders; k++) {
		if (ph->rd[k].err) {
			fprintf(stderr, "pdbench index: pdx_reader_attach: %s\n",
				strerror(-ph->rd[k].err));
			return ph->rd[k].err;
		}
	}
	return 0;
}

int bi_readers_run(const struct bi_stream *s, uint32_t readers, double seconds,
		   struct bi_readers_result *out)
{
	/* On the stack: struct pdx is over-aligned for malloc(). */
	struct bi_phase ph = {.s = s, .nreaders = readers};
	struct pdx_config cfg = bi_config(s, readers);
	int err;

	memset(out, 0, sizeof(*out));
	err = pdx_init(&ph.x, &cfg);
	if (err < 0) {
		fprintf(stderr, "pdbench index: pdx_init: %s\n", strerror(-err));
		return err;
	}
	err = bi_phase_alloc(&ph);
	if (err == 0)
		err = bi_phase_run(&ph, seconds);
	if (err == 0)
		bi_summarize(&ph, out);
	pdx_destroy(&ph.x);
	bi_phase_free(&ph);
	return err;
}
