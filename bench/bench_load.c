/*
 * pdbench load: drive a running pdrouter over the client protocol and measure what clients
 * see. This file owns the options and the run: it sends each request when the schedule says
 * (bench_load_sched.c), with the prompt the workload makes (bench_load_work.c), over the
 * connections of bench_load_io.c, records every answer's time, and hands the records to the
 * summary and the reports (bench_load_stats.c, bench_load_report.c, bench_load_plot.c). One
 * thread does it all; it sleeps until the next arrival or answer, with a 1 ns timer slack.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include "bench.h"
#include "bench_load.h"
#include "bench_load_io.h"

#define DRAIN_NS (30ull * 1000000000ull) /* how long answers may come after the last send */
#define PROGRESS_NS 1000000000ull
#define IDLE_WAIT_NS 10000000ull	  /* a wait with nothing due but answers */

struct load_opts {
	const char *router, *admin, *trace, *model, *csv, *plot;
	enum load_sched_kind sched;
	enum load_io_mode io;
	double rate, speedup, duration;
	uint32_t concurrency, connections, max_tokens, requests, max_input, seed, spin_us;
	struct load_synth synth;
	bool stream, peek, json, progress, sched_set, synth_set;
};

struct load {
	struct load_opts o;
	struct load_io io;
	struct load_trace trace;
	struct load_sched sched;
	struct load_vec recs, gaps; /* struct load_rec per request id - 1; uint64_t ITL gaps */
	uint32_t *tokbuf;
	uint64_t start, inflight, completed, errors, tokens;
	struct { /* the last progress line, for per-second rates */
		uint64_t at, completed, tokens, lag_max;
	} prog;
};

/* ---- options ---- */

static const char usage_text[] =
	"usage: pdbench load --router ADDR [--admin PATH] [--model NAME] [workload]\n"
	"         [schedule] [--duration S] [--requests N] [--connections N] [--stream]\n"
	"         [--peek] [--max-tokens N] [--io auto|uring|poll] [--spin-us N]\n"
	"         [--json] [--csv FILE] [--plot DIR] [--progress]\n"
	"Drives a running pdrouter (ADDR: unix:PATH or HOST:PORT) and reports latency\n"
	"(TTFT, inter-token, end to end; p50/p90/p99/p99.9), throughput, errors, plans,\n"
	"the KV hit rate (cached / prompt tokens, from DONE), the generator's lag behind\n"
	"its schedule, and with --admin the router's own latency over the run.\n"
	"\nWorkload, one of:\n"
	"  --trace FILE   Mooncake JSONL (timestamp ms, input_length, output_length,\n"
	"                 hash_ids); --max-input N skips longer prompts. Token t of a\n"
	"                 request is hash_ids[t / 512] * 512 + t % 512 (mod 2^32): equal\n"
	"                 hash ids are equal tokens, so shared prefixes stay shared.\n"
	"  synthetic      --prompt-tokens MEAN (2048) --prompt-dist D, --output-tokens\n"
	"   (default)     MEAN (16) --output-dist D; D: fixed (default), uniform (MEAN +-\n"
	"                 MEAN/2) or exponential (1 .. 8 x MEAN). --prefixes N (8) groups\n"
	"                 each share the first --prefix-ratio R (0.5) of every prompt\n"
	"                 (a list R1,R2,...: one run each, a sweep);\n"
	"                 the rest is the request's own. --seed N (1).\n"
	"Schedule (--schedule; default: trace with --speedup, poisson with --rate, else\n"
	"closed):\n"
	"  closed   --concurrency N (8) requests always in flight\n"
	"  fixed    --rate R requests/s, evenly spaced\n"
	"  poisson  --rate R requests/s, exponential gaps\n"
	"  trace    the trace's timestamps divided by --speedup X (1), one pass\n"
	"Open-loop latency is measured from each request's scheduled time (no coordinated\n"
	"omission); the send lag behind it is reported. Default: closed loop, 5 s.\n"
	"--spin-us N: poll instead of sleeping within N us of an arrival (less lag, a CPU\n"
	"busy). --csv: a row per request. --plot: gnuplot data, script and PNGs in DIR.\n"
	"--progress: a line a second on stderr (the default when stderr is a terminal).\n";

/* A number in [@min, @max], or in (0, @max] when @min is 0 and @zero_ok false. */
static int parse_real(const char *name, const char *s, double min, double max, bool zero_ok,
		      double *out)
{
	char *end;
	double v;

	errno = 0;
	v = strtod(s, &end);
	if (errno || end == s || *end || !isfinite(v) || v < min || v > max || (!zero_ok && !v)) {
		fprintf(stderr, "pdbench load: --%s wants a number in %s%g, %g], not '%s'\n", name,
			zero_ok ? "[" : "(", min, max, s);
		return -EINVAL;
	}
	*out = v;
	return 0;
}

static int parse_enum(const char *name, const char *s, int rc)
{
	if (rc)
		fprintf(stderr, "pdbench load: --%s: unknown value '%s'\n", name, s);
	return rc;
}

static const struct option long_opts[] = {
	{"router", 1, 0, 'r'}, {"admin", 1, 0, 'a'}, {"trace", 1, 0, 't'},
	{"speedup", 1, 0, 'x'}, {"rate", 1, 0, 'R'}, {"concurrency", 1, 0, 'c'},
	{"duration", 1, 0, 'd'}, {"requests", 1, 0, 'n'}, {"model", 1, 0, 'm'},
	{"max-tokens", 1, 0, 'M'}, {"connections", 1, 0, 'C'}, {"stream", 0, 0, 's'},
	{"peek", 0, 0, 'p'}, {"prompt-tokens", 1, 0, 'P'}, {"prefixes", 1, 0, 'F'},
	{"max-input", 1, 0, 'I'}, {"json", 0, 0, 'j'}, {"help", 0, 0, 'h'},
	{"schedule", 1, 0, 'S'}, {"prefix-ratio", 1, 0, 'X'}, {"prompt-dist", 1, 0, 'D'},
	{"output-tokens", 1, 0, 'O'}, {"output-dist", 1, 0, 'E'}, {"seed", 1, 0, 'e'},
	{"csv", 1, 0, 'V'}, {"plot", 1, 0, 'G'}, {"progress", 0, 0, 'g'},
	{"io", 1, 0, 'i'}, {"spin-us", 1, 0, 'w'}, {0}};

/* One option; 0, -EINVAL (printed) or 1 for --help. */
static int parse_one(int c, struct load_opts *o)
{
	struct load_synth *y = &o->synth;

	o->synth_set |= c && strchr("PFXDOE", c);
	switch (c) {
	case 'r': o->router = optarg; return 0;
	case 'a': o->admin = optarg; return 0;
	case 't': o->trace = optarg; return 0;
	case 'm': o->model = optarg; return 0;
	case 'V': o->csv = optarg; return 0;
	case 'G': o->plot = optarg; return 0;
	case 's': o->stream = true; return 0;
	case 'p': o->peek = true; return 0;
	case 'j': o->json = true; return 0;
	case 'g': o->progress = true; return 0;
	case 'x': return parse_real("speedup", optarg, 0, 1e9, false, &o->speedup);
	case 'R': return parse_real("rate", optarg, 0, 1e9, false, &o->rate);
	case 'X': return parse_real("prefix-ratio", optarg, 0, 1, true, &y->prefix_ratio);
	case 'd': return bench_parse_seconds("duration", optarg, &o->duration);
	case 'c': return bench_parse_u32("concurrency", optarg, 1, 1 << 20, &o->concurrency);
	case 'n': return bench_parse_u32("requests", optarg, 1, 1u << 30, &o->requests);
	case 'M': return bench_parse_u32("max-tokens", optarg, 1, 1 << 20, &o->max_tokens);
	case 'C': return bench_parse_u32("connections", optarg, 1, LOAD_MAX_CONNS, &o->connections);
	case 'P': return bench_parse_u32("prompt-tokens", optarg, 1, 1 << 20, &y->prompt_mean);
	case 'O': return bench_parse_u32("output-tokens", optarg, 1, 1 << 20, &y->output_mean);
	case 'F': return bench_parse_u32("prefixes", optarg, 1, 1 << 20, &y->prefixes);
	case 'I': return bench_parse_u32("max-input", optarg, 1, 1 << 30, &o->max_input);
	case 'e': return bench_parse_u32("seed", optarg, 0, UINT32_MAX, &o->seed);
	case 'w': return bench_parse_u32("spin-us", optarg, 0, 10000, &o->spin_us);
	case 'D': return parse_enum("prompt-dist", optarg,
				    load_dist_parse(optarg, &y->prompt_dist));
	case 'E': return parse_enum("output-dist", optarg,
				    load_dist_parse(optarg, &y->output_dist));
	case 'S':
		o->sched_set = true;
		return parse_enum("schedule", optarg, load_sched_parse(optarg, &o->sched));
	case 'i':
		o->io = !strcmp(optarg, "uring") ? LOAD_IO_URING
			: !strcmp(optarg, "poll") ? LOAD_IO_POLL : LOAD_IO_AUTO;
		return parse_enum("io", optarg, o->io || !strcmp(optarg, "auto") ? 0 : -EINVAL);
	case 'h': return 1;
	default: return -EINVAL;
	}
}

/* The schedule the flags ask for, and whether they agree with each other. */
static int check(struct load_opts *o)
{
	const char *why = NULL;

	if (!o->sched_set)
		o->sched = o->speedup > 0 ? LOAD_SCHED_TRACE
			   : o->rate > 0  ? LOAD_SCHED_POISSON
					  : LOAD_SCHED_CLOSED;
	if (o->sched == LOAD_SCHED_TRACE && !o->speedup)
		o->speedup = 1;
	if (!o->router)
		why = "--router is required";
	else if ((o->sched == LOAD_SCHED_FIXED || o->sched == LOAD_SCHED_POISSON) && !(o->rate > 0))
		why = "--schedule fixed and poisson need --rate";
	else if (o->rate > 0 && o->sched != LOAD_SCHED_FIXED && o->sched != LOAD_SCHED_POISSON)
		why = "--rate goes with --schedule fixed or poisson";
	else if (o->sched == LOAD_SCHED_TRACE && !o->trace)
		why = "--schedule trace needs --trace";
	else if (o->speedup > 0 && o->sched != LOAD_SCHED_TRACE)
		why = "--speedup goes with --schedule trace";
	else if (o->trace && o->synth_set)
		why = "the synthetic workload's options do not go with --trace";
	if (why)
		fprintf(stderr, "pdbench load: %s\n", why);
	return why ? -EINVAL : 0;
}

/* 0, 1 for --help, or -EINVAL. */
static int parse(int argc, char **argv, struct load_opts *o)
{
	int c, rc;

	*o = (struct load_opts){.model = "pdmock", .duration = 5, .concurrency = 8,
				.connections = 4, .seed = 1, .progress = isatty(STDERR_FILENO),
				.synth = {.prefix_ratio = 0.5, .prefixes = 8, .prompt_mean = 2048,
					  .output_mean = 16}};
	optind = 1;
	while ((c = getopt_long(argc, argv, "", long_opts, NULL)) != -1)
		if ((rc = parse_one(c, o)))
			return rc;
	if (optind < argc) {
		fprintf(stderr, "pdbench load: unexpected argument '%s'\n", argv[optind]);
		return -EINVAL;
	}
	o->synth.seed = o->seed;
	return check(o);
}

/* ---- the run ---- */

/* Queue request @id, due at @sched (0: now, closed loop). Returns 0 or -ENOMEM. */
static int send_one(struct load *l, uint64_t id, uint64_t sched)
{
	struct load_rec *r = load_vec_push(&l->recs);
	struct load_prompt p;
	struct pdc_request_args a;
	uint32_t k = (uint32_t)(id % l->o.connections);
	uint8_t *buf;
	size_t len;

	if (!r)
		return -ENOMEM;
	if (l->o.trace)
		load_trace_prompt(&l->trace.reqs[(id - 1) % l->trace.n], &p);
	else
		load_synth_prompt(&l->o.synth, id, &p);
	load_prompt_tokens(&p, l->o.seed, l->tokbuf);
	a = (struct pdc_request_args){
		.id = id, .model = l->o.model, .tokens = l->tokbuf, .ntokens = p.input,
		.max_tokens = l->o.max_tokens ? l->o.max_tokens : p.output ? p.output : 1,
		.flags = (l->o.stream ? PDC_STREAM : 0) | (l->o.peek ? PDC_PEEK : 0)};
	pdc_request_defaults(&a.fixed);
	len = pdc_request_bytes(&a);
	buf = load_io_reserve(&l->io, k, len);
	if (!buf || pdc_request_encode(buf, len, &a) != (long)len)
		return -ENOMEM;
	load_io_commit(&l->io, k, len);
	r->sent = dp_now_ns();
	r->sched = sched ? sched : r->sent;
	r->prompt = p.input;
	r->state = LOAD_FLIGHT;
	if (r->sent - r->sched > l->prog.lag_max)
		l->prog.lag_max = r->sent - r->sched;
	l->inflight++;
	return 0;
}

static void finish(struct load *l, struct load_rec *r, uint64_t now, uint8_t state)
{
	r->done = now;
	r->state = state;
	l->inflight--;
	*(state == LOAD_DONE ? &l->completed : &l->errors) += 1;
}

/* An answer: its time goes into its request's record; a gap between TOKENS frames is ITL. */
static void on_event(void *arg, const struct pdc_event *ev, uint64_t now)
{
	struct load *l = arg;
	struct load_rec *r = ev->id ? load_vec_at(&l->recs, ev->id - 1) : NULL;
	uint64_t *gap;

	if (!r || r->state != LOAD_FLIGHT)
		return;
	switch (ev->type) {
	case PDC_ROUTED:
		r->routed = now;
		r->plan = (uint8_t)ev->routed.plan;
		if (l->o.peek)
			finish(l, r, now, LOAD_DONE);
		break;
	case PDC_TOKENS:
		if (r->last && (gap = load_vec_push(&l->gaps)))
			*gap = now - r->last;
		r->first = r->first ? r->first : now;
		r->last = now;
		r->output += ev->tokens.n;
		l->tokens += ev->tokens.n;
		break;
	case PDC_DONE:
		r->cached = ev->done.cached_tokens;
		finish(l, r, now, LOAD_DONE);
		break;
	case PDC_ERROR:
		r->error = ev->error.error;
		finish(l, r, now, LOAD_ERROR);
		break;
	}
}

static void progress(struct load *l, uint64_t now)
{
	double dt = (double)(now - l->prog.at) / 1e9;

	fprintf(stderr, "pdbench load: %6.1f s  %" PRIu64 " sent, %" PRIu64 " done, %" PRIu64
			" errors, %" PRIu64 " in flight; last %.1f s: %.0f req/s, %.0f tokens/s, "
			"send lag max %.1f us\n",
		(double)(now - l->start) / 1e9, (uint64_t)l->recs.n, l->completed, l->errors,
		l->inflight, dt, (double)(l->completed - l->prog.completed) / dt,
		(double)(l->tokens - l->prog.tokens) / dt, (double)l->prog.lag_max / 1e3);
	l->prog.at = now;
	l->prog.completed = l->completed;
	l->prog.tokens = l->tokens;
	l->prog.lag_max = 0;
}

/* How long the run may sleep: until the next arrival, the next progress line or the end.
 * Within --spin-us of an arrival it does not sleep at all, and so does not wait for the
 * scheduler to wake it (tens of us on a busy machine); it takes a CPU for that. */
static uint64_t wait_ns(const struct load *l, uint64_t now, uint64_t due, bool sending)
{
	uint64_t t = IDLE_WAIT_NS, end = l->start + (uint64_t)(l->o.duration * 1e9);

	if (sending && l->o.sched != LOAD_SCHED_CLOSED)
		t = due > now + l->o.spin_us * 1000ull ? due - now - l->o.spin_us * 1000ull : 0;
	else if (sending && l->inflight < l->o.concurrency)
		t = 0;
	if (sending && end > now && end - now < t)
		t = end - now;
	if (l->o.progress && l->prog.at + PROGRESS_NS > now && l->prog.at + PROGRESS_NS - now < t)
		t = l->prog.at + PROGRESS_NS - now;
	return t;
}

/* Send what is due and take answers until the schedule ends and every answer is in (or
 * DRAIN_NS more has passed). An open-loop run sends every arrival due within --duration, even
 * one it wakes up for late; a closed loop sends until --duration has passed. Returns 0, or a
 * negative errno that ended it early (printed). */
static int run(struct load *l)
{
	uint64_t dur = (uint64_t)(l->o.duration * 1e9), end = l->start + dur, id = 1, off, now;
	bool open = l->o.sched != LOAD_SCHED_CLOSED;
	int rc = 0;

	off = open ? load_sched_next(&l->sched) : 0;
	for (;;) {
		bool sending;

		now = dp_now_ns();
		if (l->o.progress && now >= l->prog.at + PROGRESS_NS)
			progress(l, now);
		sending = (open ? off < dur : now < end) && (!l->o.requests || id <= l->o.requests);
		if ((!sending && !l->inflight) || now > end + DRAIN_NS)
			break;
		while (sending && (open ? l->start + off <= now : l->inflight < l->o.concurrency)) {
			if ((rc = send_one(l, id++, open ? l->start + off : 0)))
				break;
			off = open ? load_sched_next(&l->sched) : 0;
			sending = (!open || off < dur) && (!l->o.requests || id <= l->o.requests);
		}
		if (rc || (rc = load_io_run(&l->io, wait_ns(l, dp_now_ns(), l->start + off,
							      sending), on_event, l)))
			break;
	}
	if (rc)
		fprintf(stderr, "pdbench load: the run stopped early: %s\n", strerror(-rc));
	else if (l->inflight)
		fprintf(stderr, "pdbench load: %" PRIu64 " requests unanswered %.0f s after the "
				"end\n", l->inflight, DRAIN_NS / 1e9);
	return rc;
}

/* ---- setup and results ---- */

static int setup(struct load *l)
{
	uint32_t max_in = load_dist_max(l->o.synth.prompt_dist, l->o.synth.prompt_mean);

	if (l->o.trace) {
		if (load_trace_read(l->o.trace, l->o.max_input, &l->trace))
			return -EINVAL;
		if (l->trace.skipped)
			fprintf(stderr, "pdbench load: %u trace records over --max-input %u tokens "
					"skipped\n", l->trace.skipped, l->o.max_input);
		max_in = 0;
		for (uint32_t i = 0; i < l->trace.n; i++)
			max_in = l->trace.reqs[i].input > max_in ? l->trace.reqs[i].input : max_in;
	}
	l->tokbuf = malloc(max_in * sizeof(*l->tokbuf));
	if (!l->tokbuf)
		return -ENOMEM;
	load_sched_init(&l->sched, l->o.sched, l->o.rate, l->o.speedup, &l->trace, l->o.seed);
	l->recs.size = sizeof(struct load_rec);
	l->gaps.size = sizeof(uint64_t);
	prctl(PR_SET_TIMERSLACK, 1UL); /* wake at the arrival, not up to 50 us after it */
	return load_io_init(&l->io, l->o.router, l->o.connections, l->o.io);
}

/* The router's histograms over the run: @h1 - @h0. */
static void router_delta(struct load_router *rt, uint64_t (*h0)[DP_HIST_BUCKETS],
			 uint64_t (*h1)[DP_HIST_BUCKETS])
{
	for (uint32_t b = 0; b < DP_HIST_BUCKETS; b++) {
		rt->in[b] = h1[0][b] - h0[0][b];
		rt->out[b] = h1[1][b] - h0[1][b];
		rt->route[b] = h1[2][b] - h0[2][b];
		rt->send[b] = h1[3][b] - h0[3][b];
	}
}

static int write_csv(const char *path, const struct load_rec *r, size_t n, uint64_t start)
{
	FILE *f = fopen(path, "w");
	int bad;

	if (!f) {
		fprintf(stderr, "pdbench load: --csv %s: %s\n", path, strerror(errno));
		return -EIO;
	}
	load_report_csv(f, r, n, start);
	bad = ferror(f);
	if (fclose(f) || bad) {
		fprintf(stderr, "pdbench load: writing %s failed\n", path);
		return -EIO;
	}
	return 0;
}

/* Summary, report and files. Returns 0, or -EIO when a file could not be written. */
static int results(struct load *l, const struct load_router *rt, uint64_t elapsed)
{
	struct load_rec *r = load_vec_flat(&l->recs);
	uint64_t *gaps = load_vec_flat(&l->gaps), *scratch = malloc((l->recs.n + 1) * 8);
	struct load_info info = {.sched = l->o.sched, .rate = l->o.rate, .speedup = l->o.speedup,
				 .connections = l->o.connections, .concurrency = l->o.concurrency,
				 .io = l->io.uring ? "io_uring" : "poll",
				 .source = l->o.trace ? l->o.trace : "synthetic",
				 .prefix_ratio = l->o.trace ? -1 : l->o.synth.prefix_ratio};
	struct load_summary s;
	int rc = 0, plot;

	if (!r || !gaps || !scratch) {
		rc = -ENOMEM;
		goto out;
	}
	load_summarize(r, l->recs.n, gaps, l->gaps.n, scratch, elapsed, &s);
	if (l->o.json)
		load_report_json(stdout, &info, &s, rt);
	else
		load_report_text(stdout, &info, &s, rt);
	fflush(stdout);
	if (l->o.csv && write_csv(l->o.csv, r, l->recs.n, l->start))
		rc = -EIO;
	/* No gnuplot is no failure: plots are an extra, and the data is written all the same. */
	if (l->o.plot && (plot = load_plot(l->o.plot, r, l->recs.n, gaps, l->gaps.n, l->start)) &&
	    plot != -ENOENT)
		rc = rc ? rc : -EIO;
out:
	free(r);
	free(gaps);
	free(scratch);
	return rc;
}

/*
 * --prefix-ratio A,B,...: a sweep, one run per ratio, each in a child pdbench load so that
 * every run starts as fresh as a single one. Returns -1 when the option is no list.
 */
static int sweep(int argc, char **argv)
{
	char **args = calloc((size_t)argc + 1, sizeof(*args)), *list = NULL, *save, *v;
	int at = -1, status = BENCH_OK;

	for (int i = 1; i + 1 < argc && at < 0; i++)
		if (!strcmp(argv[i], "--prefix-ratio") && strchr(argv[i + 1], ','))
			at = i + 1;
	if (at < 0 || !args || !(list = strdup(argv[at]))) {
		free(args);
		return at < 0 ? -1 : BENCH_FAILED;
	}
	memcpy(args, argv, (size_t)argc * sizeof(*args));
	for (v = strtok_r(list, ",", &save); v; v = strtok_r(NULL, ",", &save)) {
		char self[] = "/proc/self/exe";
		int ws;
		pid_t pid;

		args[at] = v;
		fflush(stdout);
		pid = fork();
		if (pid == 0) {
			char **full = calloc((size_t)argc + 2, sizeof(*full));
			char load[] = "load";

			/* pdbench load ARGS...: argv[0] here is pdbench's "pdbench load" */
			full[0] = self;
			full[1] = load;
			memcpy(full + 2, args + 1, (size_t)(argc - 1) * sizeof(*full));
			execv(self, full);
			_exit(BENCH_USAGE);
		}
		if (pid < 0 || waitpid(pid, &ws, 0) < 0 || !WIFEXITED(ws)) {
			status = BENCH_FAILED;
			break;
		}
		if (WEXITSTATUS(ws) == BENCH_USAGE) {
			status = BENCH_USAGE;
			break;
		}
		if (WEXITSTATUS(ws) != BENCH_OK)
			status = BENCH_FAILED;
	}
	free(list);
	free(args);
	return status;
}

int bench_load_main(int argc, char **argv)
{
	static struct load l;
	int swept = sweep(argc, argv);

	if (swept >= 0)
		return swept;
	static uint64_t h0[LOAD_ROUTER_HISTS][DP_HIST_BUCKETS];
	static uint64_t h1[LOAD_ROUTER_HISTS][DP_HIST_BUCKETS];
	struct load_router rt = {0};
	int rc = parse(argc, argv, &l.o), status;


	if (rc == 1)
		fputs(usage_text, stdout);
	else if (rc)
		fprintf(stderr, "pdbench load --help lists the options\n");
	if (rc)
		return rc == 1 ? BENCH_OK : BENCH_USAGE;
	if ((rc = setup(&l)))
		return rc == -ENOMEM ? BENCH_FAILED : BENCH_USAGE;
	rt.have = l.o.admin && !load_admin_hists(l.o.admin, h0);
	if (l.o.admin && !rt.have)
		fprintf(stderr, "pdbench load: no counters from %s; router latency not shown\n",
			l.o.admin);
	l.start = l.prog.at = dp_now_ns();
	rc = run(&l);
	if (rt.have && !rc && !load_admin_hists(l.o.admin, h1))
		router_delta(&rt, h0, h1);
	else
		rt.have = false;
	status = results(&l, &rt, dp_now_ns() - l.start) || rc || l.errors || l.inflight
			 ? BENCH_FAILED : BENCH_OK;
	load_io_exit(&l.io);
	load_vec_free(&l.recs);
	load_vec_free(&l.gaps);
	load_trace_free(&l.trace);
	free(l.tokbuf);
	return status;
}
