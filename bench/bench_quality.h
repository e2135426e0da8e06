/*
 * pdbench quality: every routing policy compared end to end on one trace. bench_quality.c owns
 * the options and the reports' files; bench_quality_run.c one policy's run; bench_quality_proc.c
 * the child processes (pdrouter, pdmock workers, pdbench load) and the admin socket;
 * bench_quality_report.c reads what the children answer and formats the reports;
 * bench_quality_reuse.c measures the prefix reuse a trace offers. The parsers, reports and
 * reuse are pure (no processes, no clock), so tests/test_bench_quality.c checks them alone.
 * Everything runs on the main thread.
 */
#ifndef PD_BENCH_BENCH_QUALITY_H
#define PD_BENCH_BENCH_QUALITY_H

#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <sys/types.h>

#include "bench_load.h"

#define QUAL_MAX_POOL 16u /* most workers in one pool (--workers P:D, each) */
#define QUAL_NPOLICIES 5u
#define QUAL_NAME_MAX 24u
#define QUAL_MODEL "pdmock"   /* what the workers serve and the load asks for */
#define QUAL_MAX_INPUT 65536u /* longer records are skipped (pdbench load --max-input) */

/* --workers P:D: P prefill and D decode workers; the aggregated runs get P + D workers. */
struct qual_workers {
	uint32_t prefill, decode;
};

/* One row of the comparison. */
struct qual_policy {
	const char *name;   /* the row's name */
	const char *router; /* pdrouter --policy */
	bool disagg;	    /* P prefill + D decode workers; else P + D aggregated */
};

/* round-robin, random, least-loaded, kv, kv-disagg: the baselines first. */
extern const struct qual_policy qual_policies[QUAL_NPOLICIES];

/* A model's pools as the admin socket's "models" lists them. */
struct qual_pools {
	uint32_t prefill, decode, aggregated;
};

/*
 * One policy's figures. Times and rates are on the engine's clock: what pdbench load
 * measured multiplied (times) or divided (rates) by the speedup, since both the trace's
 * arrivals and pdmock's engine model ran that many times faster than real time.
 */
struct qual_result {
	char policy[QUAL_NAME_MAX];
	bool ran;		      /* false: the run failed and there are no figures */
	struct qual_pools pools;      /* the workers it ran with */
	uint64_t requests, completed; /* sent; completed */
	uint64_t errors;	      /* failed or unanswered */
	uint64_t prompt_tokens, cached_tokens;
	uint64_t disagg, fallback; /* completed requests by plan */
	double hit_rate;	   /* cached over prompt tokens of completed requests */
	double ttft_mean_ms, ttft_p50_ms, ttft_p99_ms, e2e_mean_ms, e2e_p99_ms;
	double output_tokens_per_s; /* generated tokens received over the run */
	double wall_s;		    /* how long the run took, real time */
};

/* How much of a trace's prompts an ideal cache could serve (bench_quality_reuse.c). */
struct qual_reuse {
	uint64_t records;	  /* records measured */
	uint64_t blocks;	  /* hash ids, over all records */
	uint64_t repeated_blocks; /* ids an earlier record had already named */
	uint64_t prompt_tokens;
	uint64_t prefix_tokens; /* leading tokens whose whole prefix came before */
};

/* What the reports say about how the comparison ran. */
struct qual_settings {
	const char *trace;
	uint32_t requests;  /* --requests */
	uint32_t max_input; /* records with longer prompts are skipped */
	struct qual_workers workers;
	double speedup;
	struct qual_reuse reuse; /* of the records replayed */
};

/* What every policy's run is given. */
struct qual_env {
	const char *router, *mock, *self; /* pdrouter, pdmock and pdbench, paths to exec */
	const char *logs;		  /* the directory for the children's logs */
	const char *trace;
	uint32_t requests;
	struct qual_workers workers;
	double speedup;
	uint64_t span_ms; /* the replayed records' span on the trace's clock */
};

/* ---- one policy's run (bench_quality_run.c) ---- */

/**
 * qual_run_policy - start pdrouter with policy @pol and its pdmock workers, replay the trace
 * with `pdbench load`, stop and reap them all, and fill @res (its policy name aside) from the
 * load's report. The children's logs stay in @e->logs, named after the policy.
 *
 * Returns 0, or -EIO after printing why, with the tails of the logs (unless interrupted:
 * qual_interrupted).
 */
int qual_run_policy(const struct qual_env *e, const struct qual_policy *pol,
		    struct qual_result *res);

/* ---- parsers and reports (bench_quality_report.c) ---- */

/**
 * qual_parse_workers - parse a --workers spec "P:D", each in [1, QUAL_MAX_POOL].
 *
 * Returns 0, or -EINVAL for anything else (nothing printed).
 */
int qual_parse_workers(const char *s, struct qual_workers *w);

/**
 * qual_parse_load - fill @r's figures from pdbench load's JSON line @line, converted to the
 * engine's clock with @speedup (> 0). @r->policy and @r->wall_s are left as they are.
 *
 * Returns 0, or -EBADMSG when @line is not a load report (not JSON, or a key missing).
 */
int qual_parse_load(const char *line, double speedup, struct qual_result *r);

/**
 * qual_parse_pools - the pools of @model in the admin socket's "models" answer @json.
 *
 * Returns 0, -ENOENT when the router does not know @model (yet), or -EBADMSG when @json is
 * not a "models" answer.
 */
int qual_parse_pools(const char *json, const char *model, struct qual_pools *p);

/* The table for people: the settings, then one row per policy (a failed one says so). */
void qual_report_text(FILE *f, const struct qual_settings *s, const struct qual_result *r,
		      uint32_t n);

/* One JSON object on one line for policy @r (bench/README.md lists the keys). */
void qual_report_json(FILE *f, const struct qual_settings *s, const struct qual_result *r);

/* report.md: the settings as a list, the table in Markdown, and how to read it. */
void qual_report_md(FILE *f, const struct qual_settings *s, const struct qual_result *r, uint32_t n,
		    const char *command);

/* quality.dat (one row per policy that ran) and quality.gp, which makes hit_rate.png and
 * ttft.png from it. */
void qual_plot_data(FILE *f, const struct qual_result *r, uint32_t n);
void qual_plot_script(FILE *f);

/* ---- trace reuse (bench_quality_reuse.c) ---- */

/**
 * qual_reuse_of - the prefix reuse of the first @n records of @t (all when @n is larger).
 *
 * Returns 0, or -ENOMEM.
 */
int qual_reuse_of(const struct load_trace *t, uint32_t n, struct qual_reuse *out);

/* ---- child processes (bench_quality_proc.c) ---- */

/* Set by SIGINT or SIGTERM once qual_catch_signals() ran: every wait gives up. */
extern volatile sig_atomic_t qual_interrupted;

void qual_catch_signals(void);

/**
 * qual_spawn - start @argv[0] with @argv, stdout and stderr into @out_fd and @err_fd. The
 * child dies with this process (PR_SET_PDEATHSIG), whatever ends it.
 *
 * Returns the child's pid, or a negative errno of fork(); a failed exec exits 127.
 */
pid_t qual_spawn(char *const argv[], int out_fd, int err_fd);

/* Whether @*pid still runs; when it has exited, reap it, store its status in @status and set
 * @*pid to 0. */
bool qual_alive(pid_t *pid, int *status);

/* SIGTERM @*pid, wait up to @timeout_ms, then SIGKILL; reap it and set @*pid to 0. Returns
 * its wait status (a SIGKILL'ed child's says so). Nothing happens when @*pid is 0. */
int qual_stop(pid_t *pid, int timeout_ms);

/* "exit 1", "killed by signal 9 (Killed)": a wait status for a message. */
void qual_describe(int status, char *buf, size_t len);

/* The answer to @cmd on the admin socket @path, NUL-terminated and malloc'ed; NULL when the
 * socket does not answer. */
char *qual_admin(const char *path, const char *cmd);

/* Print the last @lines lines of the file @path to @out, each indented; nothing when the file
 * is empty or missing. */
void qual_tail(FILE *out, const char *path, unsigned lines);

/* Milliseconds on CLOCK_MONOTONIC, and a 20 ms nap for polling loops. */
uint64_t qual_now_ms(void);
void qual_nap(void);

#endif
