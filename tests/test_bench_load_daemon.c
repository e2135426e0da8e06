/*
 * pdbench load against the real daemon: pdrouter and one pdmock --instant worker
 * (daemon_fixture.c), and pdbench run as a process for about a second, once open loop at a
 * fixed rate over io_uring with synthetic prompts, once on a small trace's clock over poll.
 * Each run must complete every request with no error and write a JSON report and a CSV row
 * per request that agree with each other.
 */
#define _GNU_SOURCE
#include <criterion/criterion.h>
#include <errno.h>
#include <fcntl.h>
#include <json-c/json.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include "daemon_fixture.h"

TestSuite(bench_load_daemon, .init = t_daemon_init, .fini = t_daemon_fini, .timeout = 120);

/* The fixture's directory, then @name. */
static void in_dir(char *buf, size_t len, const char *name)
{
	snprintf(buf, len, "%s/%s", t_d.dir, name);
}

/* Run pdbench with @argv (NULL-terminated, from "load"), stdout into @out; its exit status. */
static int pdbench(const char *out, char **argv)
{
	char *full[48] = {PD_PDBENCH};
	uint64_t end = t_now_ms() + 60000;
	pid_t pid;
	int status, n = 1;

	for (; argv[n - 1]; n++)
		full[n] = argv[n - 1];
	full[n] = NULL;
	pid = fork();
	cr_assert_neq(pid, -1);
	if (pid == 0) {
		int fd = open(out, O_WRONLY | O_CREAT | O_TRUNC, 0644);

		prctl(PR_SET_PDEATHSIG, SIGKILL);
		if (fd < 0 || dup2(fd, STDOUT_FILENO) < 0)
			_exit(126);
		execv(PD_PDBENCH, full);
		_exit(127);
	}
	while (waitpid(pid, &status, WNOHANG) != pid) {
		if (t_now_ms() > end) {
			kill(pid, SIGKILL);
			waitpid(pid, NULL, 0);
			cr_assert_fail("pdbench load did not finish in 60 s");
		}
		t_nap();
	}
	cr_assert(WIFEXITED(status), "pdbench load died: status %#x", status);
	return WEXITSTATUS(status);
}

static int64_t json_int(struct json_object *o, const char *key)
{
	struct json_object *v;

	cr_assert(json_object_object_get_ex(o, key, &v), "no %s in the JSON", key);
	return json_object_get_int64(v);
}

/* The JSON report in @path: one object, no error, every request completed. */
static struct json_object *check_json(const char *path)
{
	struct json_object *o = json_object_from_file(path);

	cr_assert_not_null(o, "%s is not JSON", path);
	cr_assert_eq(json_int(o, "errors"), 0);
	cr_assert_eq(json_int(o, "unanswered"), 0);
	cr_assert_gt(json_int(o, "completed"), 0);
	cr_assert_eq(json_int(o, "completed"), json_int(o, "sent"));
	cr_assert_eq(json_int(o, "e2e_n"), json_int(o, "completed"));
	return o;
}

/* The CSV in @path: a header, then one "done" row per request, numbered from 1; returns the
 * rows and the prompt tokens they add up to. */
static int64_t check_csv(const char *path, int64_t *prompt)
{
	FILE *f = fopen(path, "r");
	char line[512];
	int64_t rows = 0;

	cr_assert_not_null(f, "no CSV at %s", path);
	cr_assert_not_null(fgets(line, sizeof(line), f));
	cr_assert_str_eq(line, "id,sched_s,lag_us,routed_us,ttft_us,e2e_us,prompt_tokens,"
			       "cached_tokens,output_tokens,plan,status,error\n");
	*prompt = 0;
	while (fgets(line, sizeof(line), f)) {
		long long id;
		double sched, lag, routed, ttft, e2e;
		unsigned p, cached, out;
		char plan[16], status[16];
		int err;

		cr_assert_eq(sscanf(line, "%lld,%lf,%lf,%lf,%lf,%lf,%u,%u,%u,%15[a-z],%15[a-z],%d",
				    &id, &sched, &lag, &routed, &ttft, &e2e, &p, &cached, &out,
				    plan, status, &err), 12, "row: %s", line);
		cr_assert_eq(id, ++rows);
		cr_assert_str_eq(status, "done");
		cr_assert_str_eq(plan, "aggregated");
		cr_assert_eq(err, 0);
		cr_assert(routed <= ttft && ttft <= e2e, "row: %s", line);
		*prompt += p;
	}
	fclose(f);
	return rows;
}

/* Open loop, fixed rate, synthetic prompts with a shared prefix, io_uring. */
Test(bench_load_daemon, fixed_rate_run_completes_and_reports)
{
	char json[128], csv[128];
	int64_t prompt, rows;
	struct json_object *o;
	char *argv[] = {"load", "--router", t_d.listen, "--admin", t_d.admin_path, "--model",
			T_MODEL, "--schedule", "fixed", "--rate", "100", "--duration", "1",
			"--stream", "--prompt-tokens", "256", "--prompt-dist", "uniform",
			"--prefix-ratio", "0.5", "--prefixes", "4", "--connections", "3", "--io",
			"uring", "--json", "--csv", csv, NULL};

	in_dir(json, sizeof(json), "load.json");
	in_dir(csv, sizeof(csv), "load.csv");
	t_router_start(NULL);
	t_worker("aggregated", "--instant", NULL);
	cr_assert_eq(pdbench(json, argv), 0, "pdbench load failed");
	o = check_json(json);
	cr_assert_eq(json_int(o, "sent"), 100, "fixed 100/s for 1 s: due at 0, 10, ... 990 ms");
	rows = check_csv(csv, &prompt);
	cr_assert_eq(rows, 100);
	cr_assert_eq(json_int(o, "prompt_tokens"), prompt);
	unlink(json);
	unlink(csv);
	json_object_put(o);
}

/* The trace's clock over poll: five records, 100 ms apart on the trace, at speedup 2. */
Test(bench_load_daemon, trace_run_over_poll_completes_and_reports)
{
	char trace[128], json[128], csv[128];
	int64_t prompt;
	struct json_object *o;
	FILE *f;
	char *argv[] = {"load", "--router", t_d.listen, "--model", T_MODEL, "--trace", trace,
			"--speedup", "2", "--io", "poll", "--connections", "2", "--json", "--csv",
			csv, NULL};

	in_dir(trace, sizeof(trace), "trace.jsonl");
	in_dir(json, sizeof(json), "load.json");
	in_dir(csv, sizeof(csv), "load.csv");
	f = fopen(trace, "w");
	cr_assert_not_null(f);
	for (int i = 0; i < 5; i++)
		fprintf(f, "{\"timestamp\": %d, \"input_length\": %d, \"output_length\": 4, "
			   "\"hash_ids\": [1, 2, %d]}\n", 100 * i, 1100 + i, 10 + i);
	fclose(f);
	t_router_start(NULL);
	t_worker("aggregated", "--instant", NULL);
	cr_assert_eq(pdbench(json, argv), 0, "pdbench load failed");
	o = check_json(json);
	cr_assert_eq(json_int(o, "sent"), 5, "one pass of the trace");
	cr_assert_eq(check_csv(csv, &prompt), 5);
	cr_assert_eq(prompt, 1100 + 1101 + 1102 + 1103 + 1104);
	cr_assert_eq(json_int(o, "prompt_tokens"), prompt);
	unlink(trace);
	unlink(json);
	unlink(csv);
	json_object_put(o);
}

/* --prefix-ratio A,B: a sweep, one run each, one JSON line each, and the hit rate follows the
 * shared part of the prompts (pdmock's cache model keeps the shared prefixes). */
Test(bench_load_daemon, prefix_ratio_list_sweeps_one_run_per_ratio)
{
	char json[128], line[8192];
	double hit[2] = {0}, ratio[2] = {0};
	int n = 0;
	FILE *f;
	char *argv[] = {"load", "--router", t_d.listen, "--model", T_MODEL, "--concurrency", "4",
			"--requests", "64", "--prompt-tokens", "1024", "--prefixes", "2",
			"--prefix-ratio", "0.1,0.9", "--json", NULL};

	in_dir(json, sizeof(json), "sweep.json");
	t_router_start(NULL);
	t_worker("aggregated", "--speedup", "1000", NULL);
	cr_assert_eq(pdbench(json, argv), 0, "pdbench load sweep failed");
	f = fopen(json, "r");
	cr_assert_not_null(f);
	while (n < 3 && fgets(line, sizeof(line), f)) {
		struct json_object *o = json_tokener_parse(line), *v;

		cr_assert_not_null(o, "not JSON: %s", line);
		cr_assert_lt(n, 2, "more than one line per ratio");
		cr_assert(json_object_object_get_ex(o, "prefix_ratio", &v));
		ratio[n] = json_object_get_double(v);
		cr_assert(json_object_object_get_ex(o, "kv_hit_rate", &v));
		hit[n] = json_object_get_double(v);
		cr_assert_eq(json_int(o, "errors"), 0);
		json_object_put(o);
		n++;
	}
	fclose(f);
	cr_assert_eq(n, 2, "one JSON line per ratio");
	cr_assert_float_eq(ratio[0], 0.1, 1e-9);
	cr_assert_float_eq(ratio[1], 0.9, 1e-9);
	cr_assert_gt(hit[1], hit[0] + 0.3, "hit rates %.3f then %.3f", hit[0], hit[1]);
	unlink(json);
}
