/*
 * pdbench quality: the routing policies compared on one trace, with nothing else to start.
 * This file owns the options, finds pdrouter and pdmock in the build tree, measures the
 * trace's prefix reuse, runs every policy in turn (bench_quality_run.c) and reports them side
 * by side: a table or JSON lines, report.md and plots. Runs on the main thread; the children
 * do the work.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "bench.h"
#include "bench_quality.h"

struct qual_opts {
	const char *trace, *out, *pdrouter, *pdmock;
	uint32_t requests;
	struct qual_workers workers;
	double speedup;
	bool json;
};

/* The options, and what they resolve to. */
struct quality {
	struct qual_opts o;
	struct qual_env env;	 /* points into the strings below */
	struct qual_settings set; /* for the reports */
	char self[PATH_MAX], router[PATH_MAX], mock[PATH_MAX], logs[PATH_MAX];
};

static const char usage_text[] =
	"usage: pdbench quality --trace FILE [--requests N] [--workers P:D] [--speedup S]\n"
	"         [--json] [--out DIR] [--pdrouter PATH] [--pdmock PATH]\n"
	"Compares the routing policies on one trace, starting everything itself: for each of\n"
	"round-robin, random, least-loaded and kv (P + D aggregated workers) and kv-disagg\n"
	"(kv with P prefill and D decode workers) it starts pdrouter and pdmock workers, replays\n"
	"the first N records of the trace once with pdbench load, and stops them. Reports per\n"
	"policy: requests, errors, KV hit rate, TTFT mean and p99, end-to-end mean, output\n"
	"tokens/s, and the trace's own prefix reuse to read the hit rates against.\n"
	"  --requests N   trace records to replay (1000); longer than 65536 tokens: skipped\n"
	"  --workers P:D  pool sizes, 1 to 16 each (2:2)\n"
	"  --speedup S    the trace's clock and pdmock's engine both run S times faster (50).\n"
	"                 Times and rates are reported on the engine's clock: measured times\n"
	"                 x S, rates / S. Too low and a run takes long (and a backlog may not\n"
	"                 drain in pdbench load's 30 s); too high and the machine's own\n"
	"                 scheduling delays, also x S, swamp the engine model's.\n"
	"  --json         one JSON object per policy per line instead of the table\n"
	"  --out DIR      report.md, plots (with gnuplot) and every child's log (quality-report)\n"
	"  --pdrouter, --pdmock PATH  the programs (default: beside pdbench in the build tree)\n";

/* ---- options ---- */

static int parse(int argc, char **argv, struct qual_opts *o)
{
	static const struct option opts[] = {
		{"trace", 1, 0, 't'}, {"requests", 1, 0, 'n'}, {"workers", 1, 0, 'w'},
		{"speedup", 1, 0, 'x'}, {"json", 0, 0, 'j'}, {"out", 1, 0, 'o'},
		{"pdrouter", 1, 0, 'R'}, {"pdmock", 1, 0, 'M'}, {"help", 0, 0, 'h'}, {0}};
	char *end;
	int c;

	*o = (struct qual_opts){.out = "quality-report", .requests = 1000, .speedup = 50,
				.workers = {2, 2}};
	optind = 1;
	while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
		switch (c) {
		case 't': o->trace = optarg; break;
		case 'o': o->out = optarg; break;
		case 'R': o->pdrouter = optarg; break;
		case 'M': o->pdmock = optarg; break;
		case 'j': o->json = true; break;
		case 'h': return 1;
		case 'n':
			if (bench_parse_u32("requests", optarg, 1, 1u << 24, &o->requests))
				return -EINVAL;
			break;
		case 'w':
			if (!qual_parse_workers(optarg, &o->workers))
				break;
			fprintf(stderr, "pdbench quality: --workers wants P:D, each 1 to %u, not "
					"'%s'\n", QUAL_MAX_POOL, optarg);
			return -EINVAL;
		case 'x':
			o->speedup = strtod(optarg, &end);
			if (end != optarg && !*end && o->speedup >= 1 && o->speedup <= 10000)
				break;
			fprintf(stderr, "pdbench quality: --speedup wants a number in [1, 10000], "
					"not '%s'\n", optarg);
			return -EINVAL;
		default: return -EINVAL;
		}
	}
	if (optind < argc || !o->trace) {
		fprintf(stderr, "pdbench quality: %s\n",
			o->trace ? "unexpected arguments" : "--trace FILE is required");
		return -EINVAL;
	}
	return 0;
}

/* @out = @path, or else the program @rel beside pdbench's own directory in the build tree. */
static int find_tool(const char *self, const char *path, const char *rel, const char *flag,
		     char *out)
{
	char dir[PATH_MAX], *slash;
	int len;

	memcpy(dir, self, PATH_MAX);
	for (int up = 0; up < 2 && (slash = strrchr(dir, '/')); up++)
		*slash = 0; /* BUILD/bench/pdbench -> BUILD */
	if (path)
		len = snprintf(out, PATH_MAX, "%s", path);
	else
		len = snprintf(out, PATH_MAX, "%s/%s", dir, rel);
	errno = ENAMETOOLONG;
	if (len < PATH_MAX && !access(out, X_OK))
		return 0;
	fprintf(stderr, "pdbench quality: %s not found at %s (%s; build it with ninja, or "
			"give its path with %s PATH)\n",
		strrchr(rel, '/') + 1, out, strerror(errno), flag);
	return -ENOENT;
}

/* "mkdir -p @path". Returns 0 or a negative errno (printed). */
static int make_dir(const char *path)
{
	char buf[PATH_MAX];
	bool last = false;

	snprintf(buf, sizeof(buf), "%s", path);
	for (char *p = buf + 1; !last; p++) {
		if (*p && *p != '/')
			continue;
		last = !*p;
		*p = 0; /* each parent in turn, then the whole path */
		if (mkdir(buf, 0755) && errno != EEXIST) {
			int rc = -errno;

			fprintf(stderr, "pdbench quality: mkdir %s: %s\n", buf, strerror(-rc));
			return rc;
		}
		*p = last ? 0 : '/';
	}
	return 0;
}

/* The trace: readable, its reuse and span over the records replayed. 0 or -EINVAL. */
static int read_trace(struct quality *q)
{
	struct load_trace t = {0};
	uint32_t n;
	int rc;

	if (access(q->o.trace, R_OK)) {
		fprintf(stderr, "pdbench quality: --trace %s: %s\n", q->o.trace, strerror(errno));
		return -EINVAL;
	}
	if (load_trace_read(q->o.trace, QUAL_MAX_INPUT, &t))
		return -EINVAL;
	n = q->o.requests < t.n ? q->o.requests : t.n;
	q->env.span_ms = t.reqs[n - 1].at_ns / 1000000u;
	rc = qual_reuse_of(&t, n, &q->set.reuse);
	load_trace_free(&t);
	return rc ? -EINVAL : 0;
}

/* Options, programs, trace and output directory. 0, 1 (--help) or -EINVAL. */
static int setup(struct quality *q, int argc, char **argv)
{
	ssize_t n;
	int rc = parse(argc, argv, &q->o);

	if (rc)
		return rc;
	q->set = (struct qual_settings){.trace = q->o.trace, .requests = q->o.requests,
					.max_input = QUAL_MAX_INPUT, .workers = q->o.workers,
					.speedup = q->o.speedup};
	n = readlink("/proc/self/exe", q->self, sizeof(q->self) - 1);
	if (n <= 0) {
		fprintf(stderr, "pdbench quality: /proc/self/exe: %s\n", strerror(errno));
		return -EINVAL;
	}
	q->self[n] = 0;
	if (strlen(q->o.out) > PATH_MAX - 64) { /* room for the logs' names */
		fprintf(stderr, "pdbench quality: --out: the path is too long\n");
		return -EINVAL;
	}
	snprintf(q->logs, sizeof(q->logs), "%s/logs", q->o.out);
	if (read_trace(q) ||
	    find_tool(q->self, q->o.pdrouter, "control/pdrouter", "--pdrouter", q->router) ||
	    find_tool(q->self, q->o.pdmock, "tools/pdmock", "--pdmock", q->mock) ||
	    make_dir(q->logs))
		return -EINVAL;
	q->env = (struct qual_env){.router = q->router, .mock = q->mock, .self = q->self,
				   .logs = q->logs, .trace = q->o.trace, .requests = q->o.requests,
				   .workers = q->o.workers, .speedup = q->o.speedup,
				   .span_ms = q->env.span_ms};
	return 0;
}

/* ---- reports ---- */

/* Write @name in the output directory with @fn. Returns 0 or -EIO (printed). */
static int write_file(const struct quality *q, const char *name, const struct qual_result *res,
		      const char *command)
{
	char path[PATH_MAX];
	FILE *f;
	int bad;

	snprintf(path, sizeof(path), "%s/%s", q->o.out, name);
	f = fopen(path, "w");
	if (!f) {
		fprintf(stderr, "pdbench quality: %s: %s\n", path, strerror(errno));
		return -EIO;
	}
	if (!strcmp(name, "report.md"))
		qual_report_md(f, &q->set, res, QUAL_NPOLICIES, command);
	else if (!strcmp(name, "quality.dat"))
		qual_plot_data(f, res, QUAL_NPOLICIES);
	else
		qual_plot_script(f);
	bad = ferror(f);
	if (fclose(f) || bad) {
		fprintf(stderr, "pdbench quality: writing %s failed\n", path);
		return -EIO;
	}
	return 0;
}

/* gnuplot quality.gp in the output directory; a missing gnuplot is a message, not an error. */
static int plot(const struct quality *q)
{
	char *argv[] = {"gnuplot", "quality.gp", NULL};
	pid_t pid = fork();
	int st;

	if (pid == 0) {
		if (!chdir(q->o.out))
			execvp(argv[0], argv);
		_exit(127);
	}
	if (pid < 0 || waitpid(pid, &st, 0) < 0 || !WIFEXITED(st) ||
	    (WEXITSTATUS(st) && WEXITSTATUS(st) != 127)) {
		fprintf(stderr, "pdbench quality: gnuplot failed on %s/quality.gp\n", q->o.out);
		return -EIO;
	}
	if (WEXITSTATUS(st) == 127)
		fprintf(stderr, "pdbench quality: gnuplot not found, so no plots: quality.dat and "
				"quality.gp are in %s (install gnuplot-nox, then run gnuplot "
				"quality.gp there)\n", q->o.out);
	else
		fprintf(stderr, "pdbench quality: plots in %s/hit_rate.png and %s/ttft.png\n",
			q->o.out, q->o.out);
	return 0;
}

/* report.md and the plots. Returns 0 or -EIO. */
static int write_reports(const struct quality *q, const struct qual_result *res, int argc,
			 char **argv)
{
	char command[4096];
	size_t len = 0;
	int rc;

	command[0] = 0;
	for (int i = 0; i < argc && len < sizeof(command); i++)
		len += (size_t)snprintf(command + len, sizeof(command) - len, "%s%s", i ? " " : "",
					argv[i]);
	rc = write_file(q, "report.md", res, command);
	if (!rc && !(rc = write_file(q, "quality.dat", res, NULL)) &&
	    !(rc = write_file(q, "quality.gp", res, NULL)))
		rc = plot(q);
	if (!rc)
		fprintf(stderr, "pdbench quality: report in %s/report.md\n", q->o.out);
	return rc;
}

int bench_quality_main(int argc, char **argv)
{
	static struct quality q;
	struct qual_result res[QUAL_NPOLICIES] = {0};
	uint32_t done = 0;
	bool bad = false;
	int rc = setup(&q, argc, argv);

	if (rc == 1)
		fputs(usage_text, stdout);
	else if (rc)
		fprintf(stderr, "pdbench quality --help lists the options\n");
	if (rc)
		return rc == 1 ? BENCH_OK : BENCH_USAGE;
	qual_catch_signals();
	for (; done < QUAL_NPOLICIES && !qual_interrupted; done++) {
		const struct qual_policy *pol = &qual_policies[done];

		snprintf(res[done].policy, sizeof(res[done].policy), "%s", pol->name);
		fprintf(stderr, "pdbench quality: [%u/%u] %s: %" PRIu64 " records, about %.0f s "
				"of trace at speedup %g\n", done + 1, QUAL_NPOLICIES, pol->name,
			q.set.reuse.records, (double)q.env.span_ms / 1e3 / q.o.speedup,
			q.o.speedup);
		bad |= qual_run_policy(&q.env, pol, &res[done]) || res[done].errors;
		if (q.o.json && !qual_interrupted)
			qual_report_json(stdout, &q.set, &res[done]);
		fflush(stdout);
	}
	if (qual_interrupted) {
		fprintf(stderr, "pdbench quality: interrupted; every child stopped\n");
		return BENCH_FAILED;
	}
	if (!q.o.json)
		qual_report_text(stdout, &q.set, res, QUAL_NPOLICIES);
	fflush(stdout);
	bad |= write_reports(&q, res, argc, argv) != 0;
	return bad ? BENCH_FAILED : BENCH_OK;
}
