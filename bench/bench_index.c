/*
 * `pdbench index`: replays an .ops stream on a fresh prefix index, single-threaded, timing
 * every op and comparing every MATCH answer with the one the stream carries; then, with
 * --readers, measures concurrent readers against a live writer (bench_index_readers.c).
 * Everything a timed region touches is allocated before it. Runs on the main thread.
 */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bench.h"
#include "bench_index.h"

#define BI_PRINT_MAX 5 /* mismatches and refused events detailed on stderr, over all runs */
#define BI_DEFAULT_SECONDS 2.0

/* State of one single-threaded replay. */
struct bi_replay {
	const struct bi_stream *s;
	struct pdx x;
	struct pdx_reader *r;
	struct pdx_overlap *ans; /* max_targets answers */
	uint64_t *query;	 /* the MATCH being timed: room for the longest one */
	uint64_t *lat;		 /* one per MATCH */
	size_t nlat;
	struct bi_run *run;
	unsigned *printed;
};

static const char bi_usage_text[] =
    "usage: pdbench index --ops FILE [--readers N [--seconds S]] [--repeat R] [--json]\n"
    "                     [--initial-blocks N]\n"
    "\n"
    "Replays an .ops stream (from make_indexer_ops.py) on a fresh prefix index, one thread\n"
    "doing everything: STORE/REMOVE/CLEAR events become pdx_store/pdx_remove/pdx_clear, each\n"
    "MATCH becomes pdx_match and its answer is compared with the one in the file.\n"
    "\n"
    "  -o, --ops FILE          the stream to replay (required)\n"
    "  -r, --readers N         then run the concurrent phase: one writer thread replays the\n"
    "                          events in a loop while N reader threads (1..64) run the\n"
    "                          MATCH queries; done with 1 reader and with N for the scaling\n"
    "  -s, --seconds S         length of each concurrent run (default 2)\n"
    "  -n, --repeat R          replay R times on fresh indexes, report the fastest (default 1)\n"
    "  -j, --json              print one JSON object on one line instead of a table\n"
    "  -b, --initial-blocks N  pdx_config.initial_blocks: size the table for N run heads\n"
    "                          up front (default: the index's own; it grows as needed)\n"
    "  -h, --help              this text\n"
    "\n"
    "Rates: MATCH/s and query blocks/s are over the time spent inside pdx_match, STORE and\n"
    "REMOVE blocks/s over the time inside pdx_store and pdx_remove. Latencies are per call,\n"
    "CLOCK_MONOTONIC.\n"
    "\n"
    "Exit status: 0 ok; 1 wrong answers, refused events, reader invariant violations or\n"
    "writer errors; 2 bad usage or input.\n";

static const struct option bi_longopts[] = {
    {"ops", required_argument, NULL, 'o'},     {"readers", required_argument, NULL, 'r'},
    {"seconds", required_argument, NULL, 's'}, {"repeat", required_argument, NULL, 'n'},
    {"json", no_argument, NULL, 'j'},	       {"initial-blocks", required_argument, NULL, 'b'},
    {"help", no_argument, NULL, 'h'},	       {NULL, 0, NULL, 0},
};

static int bi_parse_opt(int c, struct bi_opts *o)
{
	switch (c) {
	case 'o':
		o->path = optarg;
		return 0;
	case 'r':
		return bench_parse_u32("readers", optarg, 1, PDX_READERS_LIMIT, &o->readers);
	case 's':
		return bench_parse_seconds("seconds", optarg, &o->seconds);
	case 'n':
		return bench_parse_u32("repeat", optarg, 1, 1000, &o->repeat);
	case 'j':
		o->json = true;
		return 0;
	case 'b':
		return bench_parse_u32("initial-blocks", optarg, 1, UINT32_MAX, &o->initial_blocks);
	default:
		return -EINVAL; /* getopt_long() said what */
	}
}

/* Returns 0 to run, 1 when --help was printed, or -EINVAL (printed). */
static int bi_parse(int argc, char **argv, struct bi_opts *o)
{
	int c;

	*o = (struct bi_opts){.repeat = 1, .seconds = BI_DEFAULT_SECONDS};
	optind = 1;
	while ((c = getopt_long(argc, argv, "o:r:s:n:jb:h", bi_longopts, NULL)) != -1) {
		if (c == 'h') {
			fputs(bi_usage_text, stdout);
			return 1;
		}
		if (bi_parse_opt(c, o) < 0)
			goto bad;
	}
	if (optind < argc) {
		fprintf(stderr, "pdbench index: unexpected argument '%s'\n", argv[optind]);
		goto bad;
	}
	if (!o->path) {
		fprintf(stderr, "pdbench index: --ops FILE is required\n");
		goto bad;
	}
	return 0;
bad:
	fprintf(stderr, "see: pdbench index --help\n");
	return -EINVAL;
}

/* Counts ops and blocks by kind, and the longest query (to size the timing buffer). */
static void bi_count(struct bi_stream *s, const struct pdops_op *op)
{
	s->count[op->kind]++;
	s->blocks[op->kind] += op->n;
	if (op->kind != PDOPS_MATCH) {
		s->nevent++;
		return;
	}
	s->nmatch++;
	if (op->n > s->max_query)
		s->max_query = op->n;
}

/* Decodes every op into s->ops; returns 0 or -EBADMSG (printed). */
static int bi_decode(struct bi_stream *s, const char *path)
{
	struct pdops_op op;
	int ret;

	while ((ret = pdops_next(&s->file, &op)) == 1) {
		s->ops[s->nops++] = op;
		bi_count(s, &op);
	}
	if (ret < 0)
		fprintf(stderr, "pdbench index: %s: malformed op %" PRIu64 " at byte %zu\n", path,
			s->file.done, s->file.off);
	return ret;
}

static int bi_split(struct bi_stream *s)
{
	size_t m = 0, e = 0;

	s->match = calloc(s->nmatch + 1, sizeof(*s->match));
	s->event = calloc(s->nevent + 1, sizeof(*s->event));
	if (!s->match || !s->event)
		return -ENOMEM;
	for (size_t i = 0; i < s->nops; i++) {
		if (s->ops[i].kind == PDOPS_MATCH)
			s->match[m++] = &s->ops[i];
		else
			s->event[e++] = &s->ops[i];
	}
	return 0;
}

static void bi_stream_free(struct bi_stream *s)
{
	free(s->ops);
	free(s->match);
	free(s->event);
	pdops_close(&s->file);
}

static const char *bi_open_error(int err)
{
	if (err == -EBADMSG)
		return "not an .ops file (bad header)";
	if (err == -EINVAL)
		return "not a regular file";
	return strerror(-err);
}

/* Opens and decodes the stream; returns 0 or a negative errno (printed). */
static int bi_load(struct bi_stream *s, const struct bi_opts *o)
{
	int err = pdops_open(&s->file, o->path);

	if (err < 0) {
		fprintf(stderr, "pdbench index: %s: %s\n", o->path, bi_open_error(err));
		return err;
	}
	if (s->file.num_workers > PDX_TARGETS_LIMIT) {
		fprintf(stderr, "pdbench index: %s: %" PRIu32 " workers, the index takes %u\n",
			o->path, s->file.num_workers, PDX_TARGETS_LIMIT);
		return -E2BIG;
	}
	s->ops = calloc(s->file.num_ops + 1, sizeof(*s->ops)); /* num_ops is bounded by the size */
	err = s->ops ? bi_decode(s, o->path) : -ENOMEM;
	if (err == 0)
		err = bi_split(s);
	if (err == -ENOMEM)
		fprintf(stderr, "pdbench index: %s: out of memory\n", o->path);
	s->initial_blocks = o->initial_blocks;
	return err;
}

struct pdx_config bi_config(const struct bi_stream *s, uint32_t readers)
{
	return (struct pdx_config){
	    .max_targets = s->file.num_workers,
	    .max_readers = readers,
	    .initial_blocks = s->initial_blocks,
	};
}

long bi_apply_event(struct pdx *x, const struct pdops_op *op)
{
	switch (op->kind) {
	case PDOPS_STORE:
		return pdx_store(x, op->worker, op->parent ? &op->parent : NULL, op->blocks, op->n);
	case PDOPS_REMOVE:
		return pdx_remove(x, op->worker, op->hashes, op->n);
	default:
		return pdx_clear(x, op->worker);
	}
}

static int bi_cmp_overlap(const void *a, const void *b)
{
	const struct pdx_overlap *l = a, *r = b;

	return (l->target > r->target) - (l->target < r->target);
}

static void bi_print_answers(const char *what, const struct pdx_overlap *got,
			     const struct pdops_expect *exp, size_t n)
{
	fprintf(stderr, "  %s (%zu):", what, n);
	for (size_t i = 0; i < n && i < 16; i++)
		fprintf(stderr, " %u:%" PRIu32, got ? got[i].target : exp[i].worker,
			got ? got[i].depth : exp[i].depth);
	fprintf(stderr, "%s\n", n > 16 ? " ..." : "");
}

static void bi_print_mismatch(const struct bi_replay *c, const struct pdops_op *q, size_t n,
			      size_t at)
{
	fprintf(stderr,
		"pdbench index: mismatch at op %zu (MATCH %zu, %" PRIu32
		" blocks): expected %" PRIu32 " answers, got %zu; first difference at answer %zu\n",
		(size_t)(q - c->s->ops), c->nlat - 1, q->n, q->nexpect, n, at);
	bi_print_answers("expected", NULL, q->expect, q->nexpect);
	bi_print_answers("got", c->ans, NULL, n);
}

/* Sorts the answer by target and compares it with the stream's. */
static void bi_check_match(struct bi_replay *c, const struct pdops_op *q, size_t n)
{
	size_t i = 0;

	qsort(c->ans, n, sizeof(*c->ans), bi_cmp_overlap);
	while (i < n && i < q->nexpect && c->ans[i].target == q->expect[i].worker &&
	       c->ans[i].depth == q->expect[i].depth)
		i++;
	if (i == n && n == q->nexpect)
		return;
	c->run->mismatches++;
	if ((*c->printed)++ < BI_PRINT_MAX)
		bi_print_mismatch(c, q, n, i);
}

/* The stream only stores blocks a worker lacks and removes blocks it holds: all must apply. */
static void bi_check_event(struct bi_replay *c, const struct pdops_op *op, long ret)
{
	static const char *const kind[] = {"?", "STORE", "REMOVE", "CLEAR", "MATCH"};
	struct pdx_stats st;

	if (op->kind == PDOPS_STORE) {
		pdx_stats(&c->x, &st);
		if (st.bytes > c->run->peak_bytes)
			c->run->peak_bytes = st.bytes;
	}
	if (ret >= 0 && (op->kind == PDOPS_CLEAR || ret == (long)op->n))
		return;
	c->run->refused++;
	if ((*c->printed)++ < BI_PRINT_MAX)
		fprintf(stderr,
			"pdbench index: op %zu %s worker %" PRIu32 " n %" PRIu32
			": index returned %ld%s%s\n",
			(size_t)(op - c->s->ops), kind[op->kind], op->worker, op->n, ret,
			ret < 0 ? " " : "", ret < 0 ? strerror((int)-ret) : "");
}

static void bi_replay_op(struct bi_replay *c, const struct pdops_op *op)
{
	uint64_t t0, ns;
	size_t n = 0;
	long ret = 0;

	/*
	 * A router hashes the prompt right before it matches, so the hashes are in cache; the
	 * stream's copy may not even be paged in. Time the index, not the page faults.
	 */
	if (op->kind == PDOPS_MATCH)
		memcpy(c->query, op->hashes, op->n * sizeof(*c->query));
	t0 = dp_now_ns();
	if (op->kind == PDOPS_MATCH)
		n = pdx_match(c->r, c->query, op->n, c->ans);
	else
		ret = bi_apply_event(&c->x, op);
	ns = dp_now_ns() - t0;
	c->run->ns[op->kind] += ns;
	if (op->kind == PDOPS_MATCH) {
		c->lat[c->nlat++] = ns;
		bi_check_match(c, op, n);
	} else {
		bi_check_event(c, op, ret);
	}
}

static void bi_latencies(struct bi_replay *c)
{
	bench_sort_u64(c->lat, c->nlat);
	c->run->p50_ns = bench_pct(c->lat, c->nlat, 500);
	c->run->p99_ns = bench_pct(c->lat, c->nlat, 990);
	c->run->p999_ns = bench_pct(c->lat, c->nlat, 999);
	c->run->max_ns = c->nlat ? c->lat[c->nlat - 1] : 0;
}

/* One replay on a fresh index: c->x is set up and torn down here. Returns 0 or -errno. */
static int bi_replay_once(struct bi_replay *c)
{
	struct pdx_config cfg = bi_config(c->s, 1);
	uint64_t t0;
	int err;

	err = pdx_init(&c->x, &cfg);
	if (err < 0)
		return err;
	err = pdx_reader_attach(&c->x, &c->r);
	if (err < 0) {
		pdx_destroy(&c->x);
		return err;
	}
	pdx_stats(&c->x, &c->run->before);
	c->run->peak_bytes = c->run->before.bytes;
	c->nlat = 0;
	t0 = dp_now_ns();
	for (size_t i = 0; i < c->s->nops; i++)
		bi_replay_op(c, &c->s->ops[i]);
	c->run->wall_ns = dp_now_ns() - t0;
	pdx_reclaim(&c->x);
	pdx_stats(&c->x, &c->run->after);
	pdx_reader_detach(c->r);
	pdx_destroy(&c->x);
	bi_latencies(c);
	return 0;
}

/* Replays o->repeat times; *best gets the fastest run, with the most mismatches of any run. */
static int bi_replays(const struct bi_opts *o, const struct bi_stream *s, struct bi_run *best)
{
	struct bi_replay c = {.s = s};
	unsigned printed = 0;
	uint64_t worst = 0, worst_refused = 0;
	int err = -ENOMEM;

	c.printed = &printed;
	c.ans = calloc(s->file.num_workers, sizeof(*c.ans));
	c.lat = calloc(s->nmatch + 1, sizeof(*c.lat));
	c.query = calloc(s->max_query + 1, sizeof(*c.query));
	for (uint32_t k = 0; c.ans && c.lat && c.query && k < o->repeat; k++) {
		struct bi_run run = {0};

		c.run = &run;
		err = bi_replay_once(&c);
		if (err < 0) {
			fprintf(stderr, "pdbench index: setting up the index: %s\n",
				strerror(-err));
			break;
		}
		worst = run.mismatches > worst ? run.mismatches : worst;
		worst_refused = run.refused > worst_refused ? run.refused : worst_refused;
		if (k == 0 || run.wall_ns < best->wall_ns)
			*best = run;
	}
	if (!c.ans || !c.lat || !c.query)
		fprintf(stderr, "pdbench index: out of memory\n");
	best->mismatches = worst;
	best->refused = worst_refused;
	free(c.ans);
	free(c.lat);
	free(c.query);
	return err;
}

/* Concurrent phase with 1 reader, then with N. Returns 0 or -errno (printed). */
static int bi_concurrent(const struct bi_opts *o, const struct bi_stream *s,
			 struct bi_readers_result *one, struct bi_readers_result *many)
{
	int err;

	if (s->nmatch == 0) {
		fprintf(stderr, "pdbench index: --readers: the stream has no MATCH ops\n");
		return -EINVAL;
	}
	err = bi_readers_run(s, 1, o->seconds, one);
	if (err == 0 && o->readers > 1)
		err = bi_readers_run(s, o->readers, o->seconds, many);
	else if (err == 0)
		*many = *one;
	return err;
}

/* Whether the run found errors: any of them makes the exit status BENCH_FAILED. */
static bool bi_found_errors(const struct bi_opts *o, const struct bi_run *best,
			    const struct bi_readers_result *one,
			    const struct bi_readers_result *many)
{
	if (best->mismatches || best->refused)
		return true;
	return o->readers &&
	       (one->violations || many->violations || one->writer_errors || many->writer_errors);
}

int bench_index_main(int argc, char **argv)
{
	struct bi_readers_result one = {0}, many = {0};
	struct bi_stream s = {0};
	struct bi_run best = {0};
	struct bi_opts o;
	int rc, err;

	rc = bi_parse(argc, argv, &o);
	if (rc != 0)
		return rc > 0 ? BENCH_OK : BENCH_USAGE;
	err = bi_load(&s, &o);
	if (err < 0) {
		bi_stream_free(&s);
		return BENCH_USAGE;
	}
	err = bi_replays(&o, &s, &best);
	if (err == 0 && o.readers)
		err = bi_concurrent(&o, &s, &one, &many);
	if (err == 0)
		bi_report(&o, &s, &best, o.readers ? &one : NULL, o.readers ? &many : NULL);
	bi_stream_free(&s);
	if (err < 0 || bi_found_errors(&o, &best, &one, &many))
		return BENCH_FAILED;
	return BENCH_OK;
}
