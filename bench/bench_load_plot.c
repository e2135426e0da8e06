/*
 * pdbench load --plot DIR: the run's latencies as gnuplot data files and a script, and, when
 * gnuplot is installed (Debian: gnuplot-nox), two PNGs made from them: latency over the run
 * and latency CDFs. Plots are optional, so a missing gnuplot is a message, not a failure;
 * the script stays behind to be run later.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "bench_load.h"

#define CDF_POINTS 2000u /* a CDF file keeps about this many points, and always the maximum */

static FILE *open_in(const char *dir, const char *name)
{
	char path[4096];
	FILE *f;

	snprintf(path, sizeof(path), "%s/%s", dir, name);
	f = fopen(path, "w");
	if (!f) {
		int e = errno;

		fprintf(stderr, "pdbench load: %s: %s\n", path, strerror(e));
		errno = e; /* for the caller's -errno */
	}
	return f;
}

/* Close @f, reporting a write error; returns 0 or -EIO. */
static int close_checked(FILE *f, const char *name)
{
	int bad = ferror(f);

	if (fclose(f) || bad) {
		fprintf(stderr, "pdbench load: writing %s failed\n", name);
		return -EIO;
	}
	return 0;
}

/* latency.dat: scheduled time (s), TTFT and end to end (ms) of each completed request. */
static int write_over_time(const char *dir, const struct load_rec *r, size_t n, uint64_t start)
{
	FILE *f = open_in(dir, "latency.dat");

	if (!f)
		return -errno;
	fprintf(f, "# sched_s ttft_ms e2e_ms\n");
	for (size_t i = 0; i < n; i++) {
		if (r[i].state != LOAD_DONE)
			continue;
		fprintf(f, "%.6f ", (double)(r[i].sched - start) / 1e9);
		if (r[i].first)
			fprintf(f, "%.6f ", (double)(r[i].first - r[i].sched) / 1e6);
		else
			fprintf(f, "? ");
		fprintf(f, "%.6f\n", (double)(r[i].done - r[i].sched) / 1e6);
	}
	return close_checked(f, "latency.dat");
}

/* cdf_NAME.dat: sorted @v[0..n) in ms against the fraction at or below. */
static int write_cdf(const char *dir, const char *name, const uint64_t *v, size_t n)
{
	char file[64];
	size_t stride = n / CDF_POINTS + 1;
	FILE *f;

	snprintf(file, sizeof(file), "cdf_%s.dat", name);
	f = open_in(dir, file);
	if (!f)
		return -errno;
	for (size_t i = 0; i < n; i++)
		if (i % stride == 0 || i == n - 1)
			fprintf(f, "%.6f %.6f\n", (double)v[i] / 1e6, (double)(i + 1) / (double)n);
	return close_checked(f, file);
}

enum { C_ROUTED, C_TTFT, C_E2E, C_ITL, C_N };
static const char *const cdf_names[C_N] = {"routed", "ttft", "e2e", "itl"};
static const char *const cdf_titles[C_N] = {"send -> ROUTED", "time to first token",
					    "end to end", "inter-token"};

/* The sorted samples of @which from completed requests into @v; returns how many. */
static size_t cdf_samples(const struct load_rec *r, size_t n, int which, uint64_t *v)
{
	struct load_dist d;
	size_t k = 0;

	for (size_t i = 0; i < n; i++) {
		const struct load_rec *q = &r[i];
		uint64_t at = which == C_ROUTED ? q->routed : which == C_TTFT ? q->first : q->done;

		if (q->state == LOAD_DONE && at)
			v[k++] = at - q->sched;
	}
	load_dist_of(v, k, &d); /* sorts them */
	return k;
}

static void write_script(FILE *f, const size_t *count)
{
	bool first = true;

	fprintf(f, "# pdbench load --plot: run as `gnuplot plot.gp` in this directory.\n"
		   "set terminal png size 1200,700\nset datafile missing '?'\nset grid\n"
		   "set logscale y\nset key top left\n"
		   "set output 'latency_over_time.png'\n"
		   "set title 'pdbench load: latency by scheduled send time'\n"
		   "set xlabel 'scheduled send time (s)'\nset ylabel 'latency (ms)'\n"
		   "plot 'latency.dat' using 1:3 with points pt 7 ps 0.3 title 'end to end', \\\n"
		   "     'latency.dat' using 1:2 with points pt 7 ps 0.3 \\\n"
		   "     title 'time to first token'\n"
		   "unset logscale y\nset logscale x\nset key bottom right\nset yrange [0:1]\n"
		   "set output 'latency_cdf.png'\nset title 'pdbench load: latency CDFs'\n"
		   "set xlabel 'latency (ms)'\nset ylabel 'fraction of samples at or below'\n"
		   "plot ");
	for (int c = 0; c < C_N; c++) {
		if (!count[c])
			continue;
		fprintf(f, "%s'cdf_%s.dat' using 1:2 with lines lw 2 title '%s'", first ? "" : ", ",
			cdf_names[c], cdf_titles[c]);
		first = false;
	}
	fprintf(f, "%s\n", first ? "NaN notitle" : "");
}

/* Run gnuplot plot.gp in @dir; 0, -ENOENT when there is no gnuplot, or -EIO when it failed. */
static int run_gnuplot(const char *dir)
{
	pid_t pid = fork();
	int status;

	if (pid < 0)
		return -errno;
	if (pid == 0) {
		if (chdir(dir) == 0)
			execlp("gnuplot", "gnuplot", "plot.gp", (char *)NULL);
		_exit(127);
	}
	if (waitpid(pid, &status, 0) < 0)
		return -errno;
	if (WIFEXITED(status) && WEXITSTATUS(status) == 127)
		return -ENOENT;
	return WIFEXITED(status) && WEXITSTATUS(status) == 0 ? 0 : -EIO;
}

/* The data files and the script; 0 or a negative errno (printed). */
static int write_all(const char *dir, const struct load_rec *r, size_t n, const uint64_t *gaps,
		     size_t ngaps, uint64_t start_ns)
{
	uint64_t *v = malloc((n ? n : 1) * sizeof(*v));
	size_t count[C_N] = {0};
	int rc = write_over_time(dir, r, n, start_ns);
	FILE *f;

	for (int c = 0; c < C_N && !rc && v; c++) {
		count[c] = c == C_ITL ? ngaps : cdf_samples(r, n, c, v);
		if (count[c])
			rc = write_cdf(dir, cdf_names[c], c == C_ITL ? gaps : v, count[c]);
	}
	free(v);
	if (!v)
		return -ENOMEM;
	if (rc)
		return rc;
	f = open_in(dir, "plot.gp");
	if (!f)
		return -errno;
	write_script(f, count);
	return close_checked(f, "plot.gp");
}

int load_plot(const char *dir, const struct load_rec *r, size_t n, const uint64_t *gaps,
	      size_t ngaps, uint64_t start_ns)
{
	int rc;

	if (mkdir(dir, 0755) && errno != EEXIST) {
		rc = -errno;
		fprintf(stderr, "pdbench load: --plot %s: %s\n", dir, strerror(-rc));
		return rc;
	}
	rc = write_all(dir, r, n, gaps, ngaps, start_ns);
	if (rc)
		return rc;
	rc = run_gnuplot(dir);
	if (rc == -ENOENT)
		fprintf(stderr, "pdbench load: gnuplot not found, so no PNGs: the data and plot.gp "
				"are in %s (install gnuplot-nox, then run gnuplot plot.gp there)\n",
			dir);
	else if (rc)
		fprintf(stderr, "pdbench load: gnuplot failed on %s/plot.gp\n", dir);
	else
		fprintf(stderr, "pdbench load: plots in %s/latency_over_time.png and "
				"%s/latency_cdf.png\n", dir, dir);
	return rc;
}
