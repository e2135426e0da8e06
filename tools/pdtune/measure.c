/*
 * Measuring a candidate (measure.h). pdbench route runs on every dataplane cpu at once, as
 * the cores route at once in pdrouter and share caches and memory bandwidth; the slowest
 * cpu's figures count. pdbench mailbox runs as two processes, the producer on dataplane core
 * 0 and the consumer on the worker cpu, as requests go from the router to a worker. Each
 * benchmark runs o->runs times and the median run counts, which damps a noisy machine.
 */
#include <errno.h>
#include <json-c/json.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>

#include "load.h"
#include "measure.h"
#include "proc.h"

#define PT_RUNS_MAX 15u
#define ROUTE_TIMEOUT_MS 180000
#define MBOX_TIMEOUT_MS 120000
#define MBOX_RECORDS "100000" /* the throughput part of pdbench mailbox: not used, kept short */

/* One child per dataplane core; static because each holds its output buffers. */
static struct pt_proc route_proc[DP_PIN_MAX_CORES];

static bool get_u64(struct json_object *o, const char *key, uint64_t *v)
{
	struct json_object *x;

	if (!json_object_object_get_ex(o, key, &x) || !json_object_is_type(x, json_type_int))
		return false;
	*v = (uint64_t)json_object_get_int64(x);
	return true;
}

/* The figures @keys[0] and @keys[1] of @p's JSON line; false (and @err) when missing. */
static bool parse_pair(const struct pt_proc *p, const char *name, const char *const keys[2],
		       uint64_t *a, uint64_t *b, char *err, size_t errlen)
{
	const char *line = pt_proc_json(p);
	struct json_object *o = line ? json_tokener_parse(line) : NULL;
	bool ok = o && get_u64(o, keys[0], a) && get_u64(o, keys[1], b);

	if (!ok)
		snprintf(err, errlen, "%s: no %s and %s in its JSON output", name, keys[0],
			 keys[1]);
	json_object_put(o);
	return ok;
}

/* Every dataplane cpu at once; the largest p50 and p99 among them. */
static int route_once(const struct pt_measure_opts *o, const struct pt_cand *c, uint64_t *p50,
		      uint64_t *p99, char *err, size_t errlen)
{
	static const char *const keys[2] = {"p50_ns", "p99_ns"};
	char dec[16];
	uint32_t n;
	int rc = 0;

	snprintf(dec, sizeof(dec), "%u", o->decisions);
	for (n = 0; n < c->place.ncores; n++) {
		rc = pt_proc_start(&route_proc[n], c->place.core_cpu[n], -1, o->verbose, o->pdbench,
				   "route", "--targets", "256", "--prompt-tokens", "8192",
				   "--decisions", dec, "--json", NULL);
		if (rc) {
			snprintf(err, errlen, "pdbench route: cannot start: %s", strerror(-rc));
			break;
		}
	}
	if (pt_proc_collect(route_proc, n, ROUTE_TIMEOUT_MS) && !rc) {
		for (uint32_t i = 0; i < n; i++)
			if (!WIFEXITED(route_proc[i].status) || WEXITSTATUS(route_proc[i].status))
				pt_proc_why(&route_proc[i], "pdbench route", err, errlen);
		rc = -EIO;
	}
	*p50 = *p99 = 0;
	for (uint32_t i = 0; i < n && !rc; i++) {
		uint64_t a, b;

		if (!parse_pair(&route_proc[i], "pdbench route", keys, &a, &b, err, errlen))
			return -EIO;
		*p50 = a > *p50 ? a : *p50;
		*p99 = b > *p99 ? b : *p99;
	}
	return rc;
}

static int mailbox_once(const struct pt_measure_opts *o, const struct pt_cand *c, uint64_t *p50,
			uint64_t *p99, char *err, size_t errlen)
{
	static const char *const keys[2] = {"oneway_p50_ns", "oneway_p99_ns"};
	static struct pt_proc p;
	char cpus[32], samples[16];
	int rc;

	snprintf(cpus, sizeof(cpus), "%d,%d", c->place.core_cpu[0], c->worker_cpu);
	snprintf(samples, sizeof(samples), "%u", o->samples);
	rc = pt_proc_start(&p, -1, -1, o->verbose, o->pdbench, "mailbox", "--mode", "processes",
			   "--cpus", cpus, "--samples", samples, "--records", MBOX_RECORDS,
			   "--json", NULL);
	if (rc) {
		snprintf(err, errlen, "pdbench mailbox: cannot start: %s", strerror(-rc));
		return rc;
	}
	if (pt_proc_collect(&p, 1, MBOX_TIMEOUT_MS)) {
		pt_proc_why(&p, "pdbench mailbox", err, errlen);
		return -EIO;
	}
	return parse_pair(&p, "pdbench mailbox", keys, p50, p99, err, errlen) ? 0 : -EIO;
}

static int cmp_u64(const void *a, const void *b)
{
	uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;

	return (x > y) - (x < y);
}

static uint64_t median(uint64_t *v, uint32_t n)
{
	qsort(v, n, sizeof(*v), cmp_u64);
	return v[n / 2];
}

/* @o->runs runs of @once; the medians of what they gave, or the first error. */
static int repeat(const struct pt_measure_opts *o, const struct pt_cand *c,
		  int (*once)(const struct pt_measure_opts *, const struct pt_cand *, uint64_t *,
			      uint64_t *, char *, size_t),
		  uint64_t *p50, uint64_t *p99, char *err, size_t errlen)
{
	uint64_t a[PT_RUNS_MAX], b[PT_RUNS_MAX];
	uint32_t runs = o->runs < 1 ? 1 : o->runs > PT_RUNS_MAX ? PT_RUNS_MAX : o->runs;

	for (uint32_t r = 0; r < runs; r++) {
		int rc = once(o, c, &a[r], &b[r], err, errlen);

		if (rc)
			return rc;
	}
	*p50 = median(a, runs);
	*p99 = median(b, runs);
	return 0;
}

static void first_error(struct pt_figures *f, const char *err)
{
	if (!f->error[0])
		snprintf(f->error, sizeof(f->error), "%s", err);
}

int pt_measure_route(const struct pt_measure_opts *o, struct pt_cand *c)
{
	struct pt_figures *f = &c->fig;
	char err[PT_NOTE_LEN] = "";

	f->route = !repeat(o, c, route_once, &f->route_p50_ns, &f->route_p99_ns, err, sizeof(err));
	if (!f->route)
		first_error(f, err);
	return f->route ? 0 : -EIO;
}

int pt_measure_mailbox(const struct pt_measure_opts *o, struct pt_cand *c)
{
	struct pt_figures *f = &c->fig;
	char err[PT_NOTE_LEN] = "";

	f->mailbox =
	    !repeat(o, c, mailbox_once, &f->mbox_p50_ns, &f->mbox_p99_ns, err, sizeof(err));
	if (!f->mailbox)
		first_error(f, err);
	return f->mailbox ? 0 : -EIO;
}

static int cmp_dbl(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;

	return (x > y) - (x < y);
}

int pt_measure_load(const struct pt_measure_opts *o, struct pt_cand *c)
{
	uint32_t runs = o->runs < 1 ? 1 : o->runs > PT_RUNS_MAX ? PT_RUNS_MAX : o->runs;
	double rps[PT_RUNS_MAX], e2e[PT_RUNS_MAX];
	struct pt_figures *f = &c->fig;
	char err[PT_NOTE_LEN] = "";

	for (uint32_t r = 0; r < runs; r++) {
		if (pt_load_run(o, c, &rps[r], &e2e[r], err, sizeof(err))) {
			first_error(f, err);
			return -EIO;
		}
	}
	qsort(rps, runs, sizeof(double), cmp_dbl);
	qsort(e2e, runs, sizeof(double), cmp_dbl);
	f->load_rps = rps[runs / 2];
	f->load_e2e_p99_us = e2e[runs / 2];
	f->load = true;
	return 0;
}
