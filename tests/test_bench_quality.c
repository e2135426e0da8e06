/*
 * pdbench quality (bench/bench_quality.h): the --workers spec, pdbench load's JSON line and
 * the admin socket's "models" as parsed, the reports as written, and a trace's prefix reuse,
 * all without a process; then one short comparison of every policy, pdbench starting its own
 * pdrouter and pdmock workers from the build tree on a 20-record trace this test writes.
 */
#define _GNU_SOURCE
#include <criterion/criterion.h>
#include <errno.h>
#include <fcntl.h>
#include <json-c/json.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "bench_quality.h"
#include "pdclient.h"

TestSuite(bench_quality, .timeout = 120);

/* ---- --workers ---- */

Test(bench_quality, workers_spec_parses_prefill_and_decode)
{
	struct qual_workers w;

	cr_assert_eq(qual_parse_workers("2:2", &w), 0);
	cr_assert(w.prefill == 2 && w.decode == 2);
	cr_assert_eq(qual_parse_workers("1:16", &w), 0);
	cr_assert(w.prefill == 1 && w.decode == 16);
	cr_assert_eq(qual_parse_workers("3:1", &w), 0);
	cr_assert(w.prefill == 3 && w.decode == 1);
}

Test(bench_quality, workers_spec_rejects_what_is_not_p_colon_d)
{
	static const char *const bad[] = {"", "2", "2:", ":2", "0:2", "2:0", "17:1", "1:17",
					  "a:b", "2:2:2", "-1:2", " 2:2", "2:2 ", "2;2", "100:1",
					  "1.5:2"};
	struct qual_workers w = {7, 7};

	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
		cr_assert_eq(qual_parse_workers(bad[i], &w), -EINVAL, "accepted '%s'", bad[i]);
	cr_assert(w.prefill == 7 && w.decode == 7, "a rejected spec changed the result");
}

/* ---- pdbench load's JSON line ---- */

/* The line pdbench load itself writes for @s (bench_load_report.c), so that a renamed key
 * there fails here. */
static char *load_line(const struct load_summary *s)
{
	struct load_info info = {.sched = LOAD_SCHED_TRACE, .speedup = 50, .connections = 4,
				 .io = "io_uring", .source = "t.jsonl"};
	struct load_router rt = {.have = false};
	char *buf = NULL;
	size_t len = 0;
	FILE *f = open_memstream(&buf, &len);

	cr_assert_not_null(f);
	load_report_json(f, &info, s, &rt);
	fclose(f);
	return buf;
}

static void assert_near(double got, double want, const char *what)
{
	cr_assert(fabs(got - want) <= 1e-6 * fmax(1, fabs(want)), "%s: %g, want %g", what, got,
		  want);
}

Test(bench_quality, load_line_becomes_a_result_on_the_engine_clock)
{
	struct load_summary s = {
		.sent = 100, .completed = 97, .errors = 2, .unanswered = 1, .tokens = 5000,
		.prompt = 200000, .cached = 50000, .elapsed_ns = 2000000000ull,
		.ttft = {.n = 97, .mean = 2000000, .p50 = 1500000, .p99 = 9000000},
		.e2e = {.n = 97, .mean = 4000000, .p99 = 12000000}};
	struct qual_result r = {.policy = "kv", .wall_s = 3};
	char *line;

	s.plans[PDC_PLAN_DISAGG] = 90;
	s.plans[PDC_PLAN_FALLBACK] = 7;
	line = load_line(&s);
	cr_assert_eq(qual_parse_load(line, 50, &r), 0, "did not parse: %s", line);
	cr_assert(r.ran);
	cr_assert_str_eq(r.policy, "kv", "the policy is the caller's");
	assert_near(r.wall_s, 3, "wall_s is the caller's");
	cr_assert_eq(r.requests, 100);
	cr_assert_eq(r.completed, 97);
	cr_assert_eq(r.errors, 3, "failed and unanswered both count");
	cr_assert_eq(r.prompt_tokens, 200000);
	cr_assert_eq(r.cached_tokens, 50000);
	cr_assert_eq(r.disagg, 90);
	cr_assert_eq(r.fallback, 7);
	assert_near(r.hit_rate, 0.25, "hit_rate");
	/* 2 ms measured at speedup 50 is 100 ms of engine time; 2500 tokens/s is 50. */
	assert_near(r.ttft_mean_ms, 100, "ttft_mean_ms");
	assert_near(r.ttft_p50_ms, 75, "ttft_p50_ms");
	assert_near(r.ttft_p99_ms, 450, "ttft_p99_ms");
	assert_near(r.e2e_mean_ms, 200, "e2e_mean_ms");
	assert_near(r.e2e_p99_ms, 600, "e2e_p99_ms");
	assert_near(r.output_tokens_per_s, 50, "output_tokens_per_s");
	free(line);
}

/* @line with its @from replaced by @to; a static buffer. */
static const char *swap(const char *line, const char *from, const char *to)
{
	static char buf[4096];
	const char *at = strstr(line, from);

	cr_assert_not_null(at, "no %s in %s", from, line);
	snprintf(buf, sizeof(buf), "%.*s%s%s", (int)(at - line), line, to, at + strlen(from));
	return buf;
}

Test(bench_quality, load_line_parse_rejects_what_is_not_a_load_report)
{
	static const char *const bad[] = {
		"", "not json", "{}", "[1,2]",
		"{\"bench\":\"index\",\"sent\":1}",
		/* a load report missing every key but two */
		"{\"bench\":\"load\",\"sent\":1,\"completed\":1}",
	};
	struct load_summary s = {.sent = 1, .completed = 1, .elapsed_ns = 1000000000ull};
	struct qual_result r = {0};
	char *line = load_line(&s), *cut;

	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
		cr_assert_eq(qual_parse_load(bad[i], 50, &r), -EBADMSG, "accepted '%s'", bad[i]);
	cr_assert_not(r.ran, "a rejected line filled the result");
	/* Truncated anywhere, the line is no report. */
	for (size_t at = 0; at + 2 < strlen(line); at += 7) {
		cut = strndup(line, at);
		cr_assert_eq(qual_parse_load(cut, 50, &r), -EBADMSG, "accepted '%s'", cut);
		free(cut);
	}
	/* A key of the wrong type, or a negative count. */
	cr_assert_eq(qual_parse_load(swap(line, "\"sent\":1,", "\"sent\":\"1\","), 50, &r),
		     -EBADMSG);
	cr_assert_eq(qual_parse_load(swap(line, "\"sent\":1,", "\"sent\":-1,"), 50, &r),
		     -EBADMSG);
	cr_assert_eq(qual_parse_load(line, 0, &r), -EBADMSG, "speedup 0");
	cr_assert_eq(qual_parse_load(line, 50, &r), 0);
	free(line);
}

/* ---- the admin socket's "models" ---- */

Test(bench_quality, pools_come_from_the_models_answer)
{
	static const char models[] =
		"{\"models\":[{\"name\":\"other\",\"prefill\":9,\"decode\":9,\"aggregated\":9,"
		"\"prefill_active\":true},{\"name\":\"pdmock\",\"prefill\":2,\"decode\":3,"
		"\"aggregated\":0,\"prefill_active\":true}]}\n";
	struct qual_pools p = {0};

	cr_assert_eq(qual_parse_pools(models, "pdmock", &p), 0);
	cr_assert(p.prefill == 2 && p.decode == 3 && p.aggregated == 0);
	cr_assert_eq(qual_parse_pools(models, "missing", &p), -ENOENT);
	cr_assert_eq(qual_parse_pools("{\"models\":[]}", "pdmock", &p), -ENOENT);
	cr_assert_eq(qual_parse_pools("", "pdmock", &p), -EBADMSG);
	cr_assert_eq(qual_parse_pools("{\"workers\":[]}", "pdmock", &p), -EBADMSG);
	cr_assert_eq(qual_parse_pools("{\"models\":[{\"name\":\"pdmock\",\"prefill\":1}]}",
				      "pdmock", &p), -EBADMSG);
}

/* ---- reports ---- */

static const struct qual_settings settings = {
	.trace = "t.jsonl", .requests = 20, .max_input = 65536, .workers = {2, 2}, .speedup = 50,
	.reuse = {.records = 20, .blocks = 100, .repeated_blocks = 40, .prompt_tokens = 1000,
		  .prefix_tokens = 300}};

/* Two policies that ran and one that failed. */
static void results(struct qual_result *r)
{
	r[0] = (struct qual_result){.policy = "round-robin", .ran = true, .pools = {0, 0, 4},
				    .requests = 20, .completed = 20, .hit_rate = 0.05,
				    .ttft_mean_ms = 123.4, .ttft_p99_ms = 456.7,
				    .e2e_mean_ms = 789.1, .output_tokens_per_s = 42.5};
	r[1] = (struct qual_result){.policy = "kv", .ran = true, .pools = {0, 0, 4},
				    .requests = 20, .completed = 19, .errors = 1, .hit_rate = 0.25,
				    .ttft_mean_ms = 100, .ttft_p99_ms = 200, .e2e_mean_ms = 300,
				    .output_tokens_per_s = 50};
	r[2] = (struct qual_result){.policy = "kv-disagg", .pools = {2, 2, 0}};
}

/* What @fn writes, as a malloc'ed string. */
#define CAPTURE(out, call)                                                                         \
	do {                                                                                       \
		size_t len_;                                                                       \
		FILE *f = open_memstream(&(out), &len_);                                           \
		cr_assert_not_null(f);                                                             \
		call;                                                                              \
		fclose(f);                                                                         \
	} while (0)

Test(bench_quality, text_report_has_a_row_per_policy)
{
	struct qual_result r[3];
	char *out = NULL;

	results(r);
	CAPTURE(out, qual_report_text(f, &settings, r, 3));
	cr_assert_not_null(strstr(out, "40.0% of blocks repeat"), "%s", out);
	cr_assert_not_null(strstr(out, "30.0% of prompt tokens"), "%s", out);
	cr_assert_not_null(strstr(out, "engine's clock"), "%s", out);
	cr_assert_not_null(strstr(out, "round-robin   4 aggregated        20      0    5.0%"
					 "         123.4        456.7        789.1         42.5\n"),
			   "%s", out);
	cr_assert_not_null(strstr(out, "kv            4 aggregated        20      1   25.0%"),
			   "%s", out);
	cr_assert_not_null(strstr(out, "kv-disagg     2P + 2D       failed"), "%s", out);
	free(out);
}

Test(bench_quality, json_report_is_one_object_with_the_keys)
{
	static const char *const keys[] = {"policy", "requests", "errors", "hit_rate",
					   "ttft_mean_ms", "ttft_p99_ms", "e2e_mean_ms",
					   "output_tokens_per_s", "speedup", "clock"};
	struct qual_result r[3];
	struct json_object *o, *v;
	char *out = NULL;

	results(r);
	CAPTURE(out, qual_report_json(f, &settings, &r[1]));
	cr_assert_eq(strchr(out, '\n'), out + strlen(out) - 1, "not one line: %s", out);
	o = json_tokener_parse(out);
	cr_assert_not_null(o, "not JSON: %s", out);
	for (size_t k = 0; k < sizeof(keys) / sizeof(keys[0]); k++)
		cr_assert(json_object_object_get_ex(o, keys[k], &v), "no %s: %s", keys[k], out);
	json_object_object_get_ex(o, "hit_rate", &v);
	assert_near(json_object_get_double(v), 0.25, "hit_rate");
	json_object_object_get_ex(o, "errors", &v);
	cr_assert_eq(json_object_get_int(v), 1);
	json_object_put(o);
	free(out);
	/* A failed run says so, and has no figures to mistake for zeros. */
	CAPTURE(out, qual_report_json(f, &settings, &r[2]));
	o = json_tokener_parse(out);
	cr_assert_not_null(o, "not JSON: %s", out);
	json_object_object_get_ex(o, "ran", &v);
	cr_assert_not(json_object_get_boolean(v));
	cr_assert_not(json_object_object_get_ex(o, "hit_rate", &v));
	json_object_put(o);
	free(out);
}

Test(bench_quality, markdown_report_has_the_command_and_a_table)
{
	struct qual_result r[3];
	char *out = NULL, *p;
	int rows = 0;

	results(r);
	CAPTURE(out, qual_report_md(f, &settings, r, 3, "pdbench quality --trace t.jsonl"));
	cr_assert_not_null(strstr(out, "\n    pdbench quality --trace t.jsonl\n"), "%s", out);
	cr_assert_not_null(strstr(out, "| round-robin | 4 aggregated | 20 | 0 | 5.0% | 123.4 |"),
			   "%s", out);
	cr_assert_not_null(strstr(out, "| kv-disagg | 2P + 2D | failed |"), "%s", out);
	for (p = out; (p = strstr(p, "\n| ")); p++)
		rows++;
	cr_assert_eq(rows, 4, "a header and three rows: %s", out);
	free(out);
}

Test(bench_quality, plot_data_has_a_row_per_policy_that_ran)
{
	struct qual_result r[3];
	char *out = NULL;

	results(r);
	CAPTURE(out, qual_plot_data(f, r, 3));
	cr_assert_str_eq(out, "# row policy hit_rate_pct ttft_mean_ms ttft_p99_ms\n"
			      "0 round-robin 5.00 123.400 456.700\n"
			      "1 kv 25.00 100.000 200.000\n");
	free(out);
	CAPTURE(out, qual_plot_script(f));
	cr_assert_not_null(strstr(out, "'hit_rate.png'"));
	cr_assert_not_null(strstr(out, "'ttft.png'"));
	free(out);
}

/* ---- trace reuse ---- */

Test(bench_quality, reuse_counts_repeated_blocks_and_whole_prefixes)
{
	uint32_t a[] = {1, 2, 3}, b[] = {1, 2, 4}, c[] = {5, 2, 3}, d[] = {1, 2, 4};
	struct load_trace_req q[] = {
		{.input = 1536, .nids = 3, .ids = a},
		{.input = 1536, .nids = 3, .ids = b}, /* shares [1, 2] with a */
		{.input = 1536, .nids = 3, .ids = c}, /* 2 and 3 again, after another prefix */
		{.input = 700, .nids = 3, .ids = d},  /* all of b, but only 700 tokens of it */
	};
	struct load_trace t = {.reqs = q, .n = 4};
	struct qual_reuse u;

	cr_assert_eq(qual_reuse_of(&t, 4, &u), 0);
	cr_assert_eq(u.records, 4);
	cr_assert_eq(u.blocks, 12);
	cr_assert_eq(u.repeated_blocks, 2 + 2 + 3);
	cr_assert_eq(u.prompt_tokens, 3 * 1536 + 700);
	cr_assert_eq(u.prefix_tokens, 2 * 512 + 0 + 700, "a repeated id after a new prefix is "
			 "no hit; a hit is at most the prompt");
	cr_assert_eq(qual_reuse_of(&t, 2, &u), 0);
	cr_assert_eq(u.records, 2, "only the first n records");
	cr_assert_eq(u.prefix_tokens, 1024);
	cr_assert_eq(qual_reuse_of(&t, 99, &u), 0);
	cr_assert_eq(u.records, 4, "n past the end is the whole trace");
}

/* ---- the whole comparison ---- */

static char dir[64];

/* Run pdbench with @argv (from "quality"), stdout and stderr into files in dir; its exit
 * status. Killed (failing the test) after @limit_s. */
static int pdbench(char **argv, int limit_s)
{
	char *full[32] = {PD_PDBENCH}, out[128], err[128];
	struct timespec nap = {.tv_nsec = 20000000};
	int status, n = 1;
	pid_t pid;

	for (; argv[n - 1]; n++)
		full[n] = argv[n - 1];
	full[n] = NULL;
	snprintf(out, sizeof(out), "%s/stdout", dir);
	snprintf(err, sizeof(err), "%s/stderr", dir);
	pid = fork();
	cr_assert_neq(pid, -1);
	if (pid == 0) {
		int ofd = open(out, O_WRONLY | O_CREAT | O_TRUNC, 0644);
		int efd = open(err, O_WRONLY | O_CREAT | O_TRUNC, 0644);

		prctl(PR_SET_PDEATHSIG, SIGKILL);
		if (ofd < 0 || efd < 0 || dup2(ofd, 1) < 0 || dup2(efd, 2) < 0)
			_exit(126);
		execv(PD_PDBENCH, full);
		_exit(127);
	}
	for (int i = 0; waitpid(pid, &status, WNOHANG) != pid; i++) {
		if (i > limit_s * 50) {
			/* SIGTERM first: pdbench then stops its own children. */
			kill(pid, SIGTERM);
			waitpid(pid, NULL, 0);
			cr_assert_fail("pdbench quality did not finish in %d s", limit_s);
		}
		nanosleep(&nap, NULL);
	}
	cr_assert(WIFEXITED(status), "pdbench died: status %#x", status);
	return WEXITSTATUS(status);
}

/* The whole of file @name in dir, malloc'ed. */
static char *slurp(const char *name)
{
	char path[128], *buf = NULL;
	size_t len = 0;
	FILE *f, *m = open_memstream(&buf, &len);
	int c;

	snprintf(path, sizeof(path), "%s/%s", dir, name);
	f = fopen(path, "r");
	cr_assert_not_null(f, "no %s", path);
	while ((c = fgetc(f)) != EOF)
		fputc(c, m);
	fclose(f);
	fclose(m);
	return buf;
}

/* 20 records, 50 ms apart: four groups sharing a two-block prefix, then a block of their own. */
static void write_trace(const char *path)
{
	FILE *f = fopen(path, "w");

	cr_assert_not_null(f);
	for (int i = 0; i < 20; i++)
		fprintf(f, "{\"timestamp\": %d, \"input_length\": %d, \"output_length\": %d, "
			   "\"hash_ids\": [%d, %d, %d]}\n", 50 * i, 1200 + 10 * i, 4 + i % 5,
			100 + 2 * (i % 4), 101 + 2 * (i % 4), 1000 + i);
	fclose(f);
}

static void setup_dir(void)
{
	snprintf(dir, sizeof(dir), "/tmp/pdbench-quality-test-XXXXXX");
	cr_assert_not_null(mkdtemp(dir));
}

static void remove_dir(void)
{
	char cmd[96];

	snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
	cr_assert_eq(system(cmd), 0);
}

Test(bench_quality, every_policy_reports_without_errors, .init = setup_dir, .fini = remove_dir)
{
	static const char *const keys[] = {"policy", "requests", "errors", "hit_rate",
					   "ttft_mean_ms", "ttft_p99_ms", "e2e_mean_ms",
					   "output_tokens_per_s"};
	char trace[96], out[96];
	char *argv[] = {"quality", "--trace", trace, "--requests", "20", "--speedup", "1000",
			"--json", "--out", out, NULL};
	char *text, *line, *save = NULL, *md;
	struct stat st;
	uint32_t n = 0;

	snprintf(trace, sizeof(trace), "%s/trace.jsonl", dir);
	snprintf(out, sizeof(out), "%s/report", dir);
	write_trace(trace);
	cr_assert_eq(pdbench(argv, 90), 0, "pdbench quality failed: %s", slurp("stderr"));
	text = slurp("stdout");
	for (line = strtok_r(text, "\n", &save); line; line = strtok_r(NULL, "\n", &save), n++) {
		struct json_object *o = json_tokener_parse(line), *v;

		cr_assert_not_null(o, "not JSON: %s", line);
		cr_assert_lt(n, QUAL_NPOLICIES, "more lines than policies");
		for (size_t k = 0; k < sizeof(keys) / sizeof(keys[0]); k++)
			cr_assert(json_object_object_get_ex(o, keys[k], &v), "no %s: %s", keys[k],
				  line);
		json_object_object_get_ex(o, "policy", &v);
		cr_assert_str_eq(json_object_get_string(v), qual_policies[n].name);
		json_object_object_get_ex(o, "requests", &v);
		cr_assert_eq(json_object_get_int(v), 20, "%s", line);
		json_object_object_get_ex(o, "errors", &v);
		cr_assert_eq(json_object_get_int(v), 0, "%s", line);
		json_object_object_get_ex(o, "hit_rate", &v);
		cr_assert(json_object_get_double(v) >= 0 && json_object_get_double(v) <= 1);
		json_object_object_get_ex(o, qual_policies[n].disagg ? "prefill_workers"
								     : "aggregated_workers", &v);
		cr_assert_eq(json_object_get_int(v), qual_policies[n].disagg ? 2 : 4, "%s", line);
		json_object_put(o);
	}
	cr_assert_eq(n, QUAL_NPOLICIES, "a line per policy");
	md = slurp("report/report.md");
	cr_assert_not_null(strstr(md, "| kv-disagg | 2P + 2D | 20 | 0 |"), "%s", md);
	cr_assert_eq(stat(out, &st), 0);
	free(md);
	free(text);
}

Test(bench_quality, missing_trace_and_programs_are_named, .init = setup_dir, .fini = remove_dir)
{
	char trace[96], out[96];
	char *no_trace[] = {"quality", "--trace", "/nonexistent/trace.jsonl", NULL};
	char *no_router[] = {"quality", "--trace", trace, "--out", out, "--pdrouter",
			     "/nonexistent/pdrouter", NULL};
	char *no_mock[] = {"quality", "--trace", trace, "--out", out, "--pdmock",
			   "/nonexistent/pdmock", NULL};
	char *err;

	snprintf(trace, sizeof(trace), "%s/trace.jsonl", dir);
	snprintf(out, sizeof(out), "%s/report", dir);
	write_trace(trace);
	cr_assert_eq(pdbench(no_trace, 30), 2);
	err = slurp("stderr");
	cr_assert_not_null(strstr(err, "/nonexistent/trace.jsonl: No such file"), "%s", err);
	free(err);
	cr_assert_eq(pdbench(no_router, 30), 2);
	err = slurp("stderr");
	cr_assert_not_null(strstr(err, "pdrouter not found at /nonexistent/pdrouter"), "%s", err);
	free(err);
	cr_assert_eq(pdbench(no_mock, 30), 2);
	err = slurp("stderr");
	cr_assert_not_null(strstr(err, "pdmock not found at /nonexistent/pdmock"), "%s", err);
	free(err);
}

/* A router that cannot start: every policy fails, each with the router's own words. */
Test(bench_quality, a_failing_router_is_reported_with_its_log, .init = setup_dir,
     .fini = remove_dir)
{
	char trace[96], out[96], fake[96];
	char *argv[] = {"quality", "--trace", trace, "--requests", "5", "--json", "--out", out,
			"--pdrouter", fake, NULL};
	char *err, *text;
	FILE *f;

	snprintf(trace, sizeof(trace), "%s/trace.jsonl", dir);
	snprintf(out, sizeof(out), "%s/report", dir);
	snprintf(fake, sizeof(fake), "%s/fake-pdrouter", dir);
	write_trace(trace);
	f = fopen(fake, "w");
	cr_assert_not_null(f);
	fprintf(f, "#!/bin/sh\necho 'fake router: no dataplane core for you' >&2\nexit 1\n");
	fclose(f);
	cr_assert_eq(chmod(fake, 0755), 0);
	cr_assert_eq(pdbench(argv, 60), 1, "a failed policy fails the run");
	err = slurp("stderr");
	cr_assert_not_null(strstr(err, "round-robin failed: pdrouter stopped: exit 1"), "%s", err);
	cr_assert_not_null(strstr(err, "kv-disagg failed: pdrouter stopped: exit 1"), "%s", err);
	cr_assert_not_null(strstr(err, "    fake router: no dataplane core for you\n"), "%s", err);
	text = slurp("stdout");
	cr_assert_not_null(strstr(text, "{\"bench\":\"quality\",\"policy\":\"kv\",\"ran\":false"),
			   "%s", text);
	free(text);
	free(err);
}
