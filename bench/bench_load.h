/*
 * pdbench load, its parts: the workload (a Mooncake trace or synthetic prompts, and the rule
 * that turns either into token ids), the arrival schedule, per-request records and their
 * summary, and the report writers. These are pure (no sockets, no clock of their own), so the
 * tests check them without a router; bench_load_io.c owns the connections and bench_load.c
 * the run. Times are CLOCK_MONOTONIC nanoseconds (dp_now_ns()) unless a name says otherwise.
 */
#ifndef PD_BENCH_BENCH_LOAD_H
#define PD_BENCH_BENCH_LOAD_H

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

#include "hist.h"

#define LOAD_BLOCK 512u		/* tokens per Mooncake hash id */
#define LOAD_MAX_ERRCODES 16u	/* distinct error codes a summary tells apart */
#define LOAD_EXP_CAP 8u		/* an exponential length is at most 8 x its mean */

/* ---- workload (bench_load_work.c) ---- */

/* One record of a Mooncake trace. */
struct load_trace_req {
	uint64_t at_ns;	     /* its timestamp, from the trace's first */
	uint32_t input;	     /* prompt tokens, at most nids * LOAD_BLOCK */
	uint32_t output;     /* tokens to generate */
	uint32_t nids;
	uint32_t *ids;	     /* hash ids, one per LOAD_BLOCK tokens */
};

struct load_trace {
	struct load_trace_req *reqs;
	uint32_t n, skipped; /* records kept; records over max_input left out */
};

/**
 * load_trace_parse_line - parse one JSONL record of a Mooncake trace into @r.
 * @r: its ids are malloc'ed; the caller frees them.
 *
 * Returns 0, -EBADMSG (not a trace record: no input_length or hash_ids, a bad id, no
 * prompt) or -ENOMEM.
 */
int load_trace_parse_line(const char *line, struct load_trace_req *r);

/**
 * load_trace_read - read a whole trace file into @t, leaving out records whose prompt is over
 * @max_input tokens (0: keep all). Timestamps are made relative to the first record's.
 *
 * Returns 0, -ENOENT (cannot open; printed), -EBADMSG (a bad line, printed with its number;
 * or no record kept) or -ENOMEM.
 */
int load_trace_read(const char *path, uint32_t max_input, struct load_trace *t);

void load_trace_free(struct load_trace *t);

enum load_dist_kind { LOAD_DIST_FIXED, LOAD_DIST_UNIFORM, LOAD_DIST_EXP };

/* Parse "fixed", "uniform" or "exponential". Returns 0 or -EINVAL. */
int load_dist_parse(const char *s, enum load_dist_kind *out);

/* Synthetic prompts: groups sharing a prefix, then a tail no other request has. */
struct load_synth {
	double prefix_ratio;	/* of each prompt, the fraction its group shares: 0 .. 1 */
	uint32_t prefixes;	/* groups: distinct shared prefixes, >= 1 */
	uint32_t prompt_mean, output_mean;
	enum load_dist_kind prompt_dist, output_dist;
	uint64_t seed;
};

/* What request number n asks for; with ids, a trace record; else synthetic. */
struct load_prompt {
	uint32_t input, output;
	const uint32_t *ids;	/* trace: the record's hash ids; NULL for synthetic */
	uint32_t prefix;	/* synthetic: leading tokens shared with its group */
	uint32_t group;		/* synthetic: which shared prefix */
	uint64_t n;		/* synthetic: the request number, which keys its own tail */
};

/* A length drawn from @kind with mean @mean (>= 1), using the uniform 64-bit value @u. */
uint32_t load_dist_draw(enum load_dist_kind kind, uint32_t mean, uint64_t u);

/* The longest length load_dist_draw(@kind, @mean, ...) can return. */
uint32_t load_dist_max(enum load_dist_kind kind, uint32_t mean);

/* Synthetic request number @n: deterministic in (@s->seed, @n). */
void load_synth_prompt(const struct load_synth *s, uint64_t n, struct load_prompt *p);

/* Trace record @r as a prompt. */
void load_trace_prompt(const struct load_trace_req *r, struct load_prompt *p);

/*
 * load_prompt_tokens - the token ids of @p, @p->input of them, into @tok.
 *
 * Trace: token t is ids[t / 512] * 512 + t % 512 (mod 2^32), so equal hash ids give equal
 * blocks of tokens and a shared prefix of ids is a shared prefix of tokens. Synthetic: token t
 * is a 32-bit hash of (seed, group, t) for t < prefix, and of (seed, n, t) after it.
 */
void load_prompt_tokens(const struct load_prompt *p, uint64_t seed, uint32_t *tok);

/* ---- arrival schedule (bench_load_sched.c) ---- */

enum load_sched_kind {
	LOAD_SCHED_CLOSED,  /* none: a request goes when one ends (--concurrency) */
	LOAD_SCHED_FIXED,   /* every 1/rate seconds */
	LOAD_SCHED_POISSON, /* exponential gaps of mean 1/rate */
	LOAD_SCHED_TRACE,   /* the trace's timestamps divided by speedup, one pass */
};

struct load_sched {
	enum load_sched_kind kind;
	double rate;	/* requests per second: FIXED, POISSON */
	double speedup; /* TRACE */
	const struct load_trace *trace;
	uint64_t n;	/* arrivals handed out */
	double t_s;	/* POISSON: the last arrival, seconds from the start */
	uint64_t rng;
};

#define LOAD_SCHED_END UINT64_MAX

/* Parse "closed", "fixed", "poisson" or "trace". Returns 0 or -EINVAL. */
int load_sched_parse(const char *s, enum load_sched_kind *out);

const char *load_sched_name(enum load_sched_kind kind);

/* Start a schedule; @trace is needed for LOAD_SCHED_TRACE only. */
void load_sched_init(struct load_sched *s, enum load_sched_kind kind, double rate,
		     double speedup, const struct load_trace *trace, uint64_t seed);

/*
 * load_sched_next - when the next arrival is due, in ns from the start of the run.
 *
 * Returns the offset (non-decreasing, except as a trace's own timestamps are), 0 for CLOSED,
 * or LOAD_SCHED_END when a trace has no more records.
 */
uint64_t load_sched_next(struct load_sched *s);

/* ---- records and summary (bench_load_stats.c) ---- */

enum load_state { LOAD_FREE, LOAD_FLIGHT, LOAD_DONE, LOAD_ERROR };

/* One request. Times are absolute; 0 means it did not happen. */
struct load_rec {
	uint64_t sched;	  /* when it was due: the latency origin (closed loop: = sent) */
	uint64_t sent;	  /* when its frame was queued for the socket */
	uint64_t routed, first, last, done; /* ROUTED, first and last TOKENS, DONE or ERROR */
	uint32_t prompt, cached, output; /* prompt, cached (DONE), generated tokens received */
	int32_t error;	  /* the ERROR frame's code (negative errno), 0 without one */
	uint8_t plan;	  /* enum pdc_plan, from ROUTED */
	uint8_t state;	  /* enum load_state */
};

/* A distribution, nearest rank (as bench_pct()). */
struct load_dist {
	uint64_t n, mean, p50, p90, p99, p999, max;
};

struct load_summary {
	uint64_t sent, completed, errors, unanswered;
	uint64_t tokens, prompt, cached; /* over completed requests; tokens: all received */
	uint64_t plans[4];		 /* completed requests by enum pdc_plan */
	uint64_t elapsed_ns;
	struct load_dist routed, ttft, itl, e2e, lag;
	struct {
		int32_t code;
		uint64_t n;
	} errs[LOAD_MAX_ERRCODES]; /* by code; the last one also takes any further codes */
	uint32_t nerrs;
};

/*
 * A growing array of @size-byte elements in chunks of LOAD_VEC_CHUNK that never move: a
 * push while the run measures costs no copy of what came before. Zero-initialise with .size.
 */
#define LOAD_VEC_CHUNK 65536u
struct load_vec {
	uint8_t **chunk;
	size_t n, nchunks, size;
};

/* A new zeroed element at the end, or NULL when out of memory. */
void *load_vec_push(struct load_vec *v);

/* Element @i, or NULL past the end. */
void *load_vec_at(const struct load_vec *v, size_t i);

/* A malloc'ed copy of every element in one array, or NULL when out of memory. */
void *load_vec_flat(const struct load_vec *v);

void load_vec_free(struct load_vec *v);

/* The distribution of @v[0..n), which it sorts. */
void load_dist_of(uint64_t *v, size_t n, struct load_dist *d);

/* The distribution of histogram counts @h[DP_HIST_BUCKETS] (bucket middles, dp_hist.h). */
void load_dist_hist(const uint64_t *h, struct load_dist *d);

/*
 * load_summarize - the summary of @n records and @ngaps inter-token gaps over @elapsed_ns.
 * @gaps: sorted in place.
 * @scratch: room for @n values.
 */
void load_summarize(const struct load_rec *r, size_t n, uint64_t *gaps, size_t ngaps,
		    uint64_t *scratch, uint64_t elapsed_ns, struct load_summary *s);

/* The KV hit rate: cached over prompt tokens of completed requests; 0 without any. */
double load_hit_rate(const struct load_summary *s);

/* ---- reports (bench_load_report.c) ---- */

/* How the run was made, for the report's header. */
struct load_info {
	enum load_sched_kind sched;
	double rate, speedup;
	uint32_t connections, concurrency;
	const char *io;	    /* "io_uring" or "poll" */
	const char *source; /* the trace's path, or "synthetic" */
	double prefix_ratio; /* synthetic: the shared part of every prompt; a trace: -1 */
};

/* The router's own latency over the run: histogram deltas of its admin "counters". */
struct load_router {
	bool have;
	uint64_t in[DP_HIST_BUCKETS], out[DP_HIST_BUCKETS], route[DP_HIST_BUCKETS];
	uint64_t send[DP_HIST_BUCKETS]; /* the kernel's part of sending the answers */
};

void load_report_text(FILE *f, const struct load_info *info, const struct load_summary *s,
		      const struct load_router *rt);

/* One JSON object on one line. */
void load_report_json(FILE *f, const struct load_info *info, const struct load_summary *s,
		      const struct load_router *rt);

/* One CSV row per request (a header first): record i is request id i + 1; times relative
 * to @start_ns. */
void load_report_csv(FILE *f, const struct load_rec *r, size_t n, uint64_t start_ns);

/* ---- plots (bench_load_plot.c) ---- */

/**
 * load_plot - write gnuplot data and a script into directory @dir (made if missing) and run
 * gnuplot there: latency over time and latency CDFs, as PNGs.
 * @gaps: the run's inter-token gaps, sorted.
 *
 * Returns 0, -ENOENT when gnuplot is not installed (data and script are written; printed), or
 * a negative errno of making the files (printed).
 */
int load_plot(const char *dir, const struct load_rec *r, size_t n, const uint64_t *gaps,
	      size_t ngaps, uint64_t start_ns);

#endif
