/*
 * pdctl (tools/pdctl.c) against the real daemon: each test starts pdrouter and two pdmock
 * workers of model "m" (prefill and decode, domain rack=r1) in a fresh temp dir, runs pdctl as
 * a process and checks its output and exit status. The suite's fini stops every process and
 * removes the dir, whether the test passed or not.
 */
#define _GNU_SOURCE
#include <criterion/criterion.h>
#include <dirent.h>
#include <errno.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define T_READY_MS 30000 /* the router and both workers up; sanitizer builds start slowly */
#define T_STOP_MS 5000	 /* after SIGTERM, before SIGKILL */
#define T_PDCTL_MS 15000 /* pdctl gives up after 5 s itself */
#define T_OUT_BYTES 65536
#define T_WORKERS 2

/* One pdctl run: its exit status (-1: killed by a signal) and what it printed. */
struct t_run {
	int status;
	char out[T_OUT_BYTES];
	char err[T_OUT_BYTES];
};

/* The test's temp dir and the paths in it, set once by setup(). */
static struct {
	char dir[32];
	char admin[64], control[64], listen[72]; /* the router's sockets */
	char out[64], err[64];			 /* pdctl's stdout and stderr */
	char log[64];				 /* the router's */
} t;
static pid_t router = -1, workers[T_WORKERS] = {-1, -1};
static struct t_run run; /* static: two 64 KiB buffers are too much for a test's stack */

/* CLOCK_MONOTONIC in milliseconds, for the waits' deadlines. */
static long long now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec * 1000ll + ts.tv_nsec / 1000000;
}

/*
 * Start @argv in the temp dir, stdout and stderr to the files @out and @err (one shared open
 * file when they are the same, so that the two streams append rather than overwrite each
 * other). The child gets SIGTERM if this test process dies first, so that a crashed test leaves
 * no daemon behind. Returns its pid (or -1: fork failed).
 */
static pid_t spawn(char *const argv[], const char *out, const char *err)
{
	pid_t parent = getpid(), pid = fork();

	if (pid != 0)
		return pid;
	if (prctl(PR_SET_PDEATHSIG, SIGTERM) || getppid() != parent || chdir(t.dir))
		_exit(127);
	if (!freopen(out, "w", stdout))
		_exit(127);
	if (strcmp(out, err) ? !freopen(err, "w", stderr) : dup2(STDOUT_FILENO, STDERR_FILENO) < 0)
		_exit(127);
	execv(argv[0], argv);
	_exit(127);
}

/* Wait up to @ms for @pid, then SIGKILL it. Returns its exit status, -1 if a signal ended it. */
static int reap(pid_t pid, long long ms)
{
	long long end = now_ms() + ms;
	int status;
	pid_t got;

	while ((got = waitpid(pid, &status, WNOHANG)) == 0 && now_ms() < end)
		usleep(10000);
	if (got == 0) {
		kill(pid, SIGKILL);
		got = waitpid(pid, &status, 0);
	}
	if (got != pid)
		return -1;
	return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

/* Read the file @path into @buf (NUL-terminated, cut at @cap - 1 bytes). */
static void slurp(const char *path, char *buf, size_t cap)
{
	FILE *f = fopen(path, "r");
	size_t n = f ? fread(buf, 1, cap - 1, f) : 0;

	buf[n] = 0;
	if (f)
		fclose(f);
}

/* Run pdctl with the NULL-terminated arguments from @first; fills the static `run`. Returns
 * its exit status. */
static int pdctl(const char *first, ...)
{
	char *argv[16] = {PD_PDCTL, (char *)first};
	size_t n = 1;
	va_list ap;
	pid_t pid;

	va_start(ap, first);
	while (argv[n] && n < 14)
		argv[++n] = va_arg(ap, char *);
	va_end(ap);
	argv[n] = NULL;
	pid = spawn(argv, t.out, t.err);
	cr_assert_gt(pid, 0, "fork: %s", strerror(errno));
	run.status = reap(pid, T_PDCTL_MS);
	slurp(t.out, run.out, sizeof(run.out));
	slurp(t.err, run.err, sizeof(run.err));
	return run.status;
}

/* Fail the test with the router's log when it has exited. */
static void assert_router_alive(void)
{
	static char log[T_OUT_BYTES];

	if (waitpid(router, NULL, WNOHANG) == 0)
		return;
	router = -1;
	slurp(t.log, log, sizeof(log));
	cr_assert_fail("pdrouter exited:\n%s", log);
}

/* Start a pdmock worker of model m in @mode, domain rack=r1, its output to worker@k.log. */
static pid_t start_worker(const char *mode, unsigned int k)
{
	char *argv[] = {PD_PDMOCK,    "--socket", t.control, "--model",	  "m",	 "--mode",
			(char *)mode, "--domain", "rack=r1", "--speedup", "100", NULL};
	char log[64];

	snprintf(log, sizeof(log), "%s/worker%u.log", t.dir, k);
	return spawn(argv, log, log);
}

/* The router, its two workers, and a wait until pdctl sees model m's prefill stage active. */
static void start_all(void)
{
	char *argv[] = {PD_PDROUTER, "--listen",       t.listen, "--control-socket",
			t.control,   "--admin-socket", t.admin,	 "--dataplane-cores",
			"1",	     "--no-pin",       NULL};
	long long end = now_ms() + T_READY_MS;

	cr_assert(t.dir[0], "mkdtemp failed");
	router = spawn(argv, t.log, t.log);
	cr_assert_gt(router, 0);
	/* The workers connect to the control socket; wait for it so they do not fail at once. */
	while (access(t.control, F_OK) && now_ms() < end) {
		assert_router_alive();
		usleep(10000);
	}
	workers[0] = start_worker("prefill", 0);
	workers[1] = start_worker("decode", 1);
	cr_assert(workers[0] > 0 && workers[1] > 0);
	while (now_ms() < end) {
		assert_router_alive();
		if (pdctl("--admin", t.admin, "--json", "models", NULL) == 0 &&
		    strstr(run.out, "\"prefill_active\":true"))
			return;
		usleep(50000);
	}
	cr_assert_fail("model m's prefill stage never became active; last pdctl: %d\n%s%s",
		       run.status, run.out, run.err);
}

/*
 * A fresh temp dir and its paths for each test. Nothing here can fail an assertion: Criterion
 * catches those in the test body, so start_all() does the starting.
 */
static void setup(void)
{
	snprintf(t.dir, sizeof(t.dir), "/tmp/pdctl.XXXXXX");
	if (!mkdtemp(t.dir)) {
		t.dir[0] = 0;
		return;
	}
	snprintf(t.admin, sizeof(t.admin), "%s/a.sock", t.dir);
	snprintf(t.control, sizeof(t.control), "%s/w.sock", t.dir);
	snprintf(t.listen, sizeof(t.listen), "unix:%s/c.sock", t.dir);
	snprintf(t.out, sizeof(t.out), "%s/pdctl.out", t.dir);
	snprintf(t.err, sizeof(t.err), "%s/pdctl.err", t.dir);
	snprintf(t.log, sizeof(t.log), "%s/router.log", t.dir);
}

/* Stop the workers and the router (SIGTERM, then SIGKILL), remove the temp dir. */
static void teardown(void)
{
	struct dirent *e;
	DIR *d;

	for (unsigned int k = 0; k < T_WORKERS; k++)
		if (workers[k] > 0 && !kill(workers[k], SIGTERM))
			reap(workers[k], T_STOP_MS);
	if (router > 0 && !kill(router, SIGTERM))
		reap(router, T_STOP_MS);
	router = workers[0] = workers[1] = -1;
	if (!t.dir[0] || !(d = opendir(t.dir)))
		return;
	while ((e = readdir(d)))
		if (strcmp(e->d_name, ".") && strcmp(e->d_name, ".."))
			unlinkat(dirfd(d), e->d_name, 0);
	closedir(d);
	rmdir(t.dir);
}

TestSuite(pdctl, .init = setup, .fini = teardown, .timeout = 120);

Test(pdctl, models_shows_pools_and_active_prefill)
{
	start_all();
	cr_assert_eq(pdctl("--admin", t.admin, "models", NULL), 0, "%s", run.err);
	cr_assert(strstr(run.out, "PREFILL_ACTIVE"), "%s", run.out);
	/* model m: one prefill, one decode, no aggregated worker; prefill active */
	cr_assert(strstr(run.out, "\nm "), "%s", run.out);
	cr_assert(strstr(run.out, "1       1           0  yes"), "%s", run.out);
	cr_assert_eq(pdctl("--admin", t.admin, "--json", "models", NULL), 0);
	cr_assert(strstr(run.out, "{\"models\":[{\"name\":\"m\",\"prefill\":1,\"decode\":1"), "%s",
		  run.out);
}

Test(pdctl, workers_shows_types_and_domains)
{
	start_all();
	cr_assert_eq(pdctl("--admin", t.admin, "workers", NULL), 0, "%s", run.err);
	cr_assert(strstr(run.out, "WORKER") && strstr(run.out, "DOMAINS"), "%s", run.out);
	cr_assert(strstr(run.out, " m ") && strstr(run.out, "prefill") &&
		      strstr(run.out, "decode") && strstr(run.out, "rack=r1"),
		  "%s", run.out);
	cr_assert(strstr(run.out, "draining: none\n"), "%s", run.out);
	cr_assert_eq(pdctl("--admin", t.admin, "--json", "workers", NULL), 0);
	cr_assert(strstr(run.out, "\"model\":\"m\",\"type\":\"prefill\""), "%s", run.out);
	cr_assert(strstr(run.out, "\"model\":\"m\",\"type\":\"decode\""), "%s", run.out);
	cr_assert(strstr(run.out, "\"domains\":{\"rack\":\"r1\"}"), "%s", run.out);
	cr_assert(strstr(run.out, "\"draining\":[]"), "%s", run.out);
}

Test(pdctl, drain_lists_worker_as_draining)
{
	start_all();
	cr_assert_eq(pdctl("--admin", t.admin, "drain", "1", NULL), 0, "%s", run.err);
	cr_assert(strstr(run.out, "worker 1 draining"), "%s", run.out);
	cr_assert_eq(pdctl("--admin", t.admin, "workers", NULL), 0);
	cr_assert(strstr(run.out, "draining: 1\n"), "%s", run.out);
	cr_assert_eq(pdctl("--admin", t.admin, "--json", "workers", NULL), 0);
	cr_assert(strstr(run.out, "\"draining\":[1]"), "%s", run.out);
}

Test(pdctl, drain_of_unknown_worker_exits_1)
{
	start_all();
	cr_assert_eq(pdctl("--admin", t.admin, "drain", "999", NULL), 1);
	cr_assert(strstr(run.err, "pdctl: drain: no such worker"), "%s", run.err);
	cr_assert_eq(run.out[0], 0, "%s", run.out);
	/* --json prints the router's error object as is, and still exits 1 */
	cr_assert_eq(pdctl("--admin", t.admin, "--json", "drain", "999", NULL), 1);
	cr_assert(strstr(run.out, "{\"error\":\"no such worker\"}"), "%s", run.out);
	cr_assert_eq(pdctl("--admin", t.admin, "workers", NULL), 0);
	cr_assert(strstr(run.out, "draining: none\n"), "%s", run.out);
}

Test(pdctl, usage_errors_exit_2)
{
	start_all();
	cr_assert_eq(pdctl("--admin", t.admin, "bogus", NULL), 2);
	cr_assert(strstr(run.err, "unknown command 'bogus'"), "%s", run.err);
	cr_assert_eq(pdctl("--admin", t.admin, "drain", NULL), 2);
	cr_assert_eq(pdctl("--admin", t.admin, "drain", "x", NULL), 2);
	cr_assert_eq(pdctl("--admin", t.admin, "models", "extra", NULL), 2);
	cr_assert_eq(pdctl("--no-such-option", "models", NULL), 2);
	cr_assert_eq(pdctl(NULL), 2);
	cr_assert_eq(pdctl("--help", NULL), 0);
	cr_assert(strstr(run.out, "drain WORKER"), "%s", run.out);
}

Test(pdctl, wrong_admin_path_says_router_not_running)
{
	char nope[64], want[200];

	start_all();
	snprintf(nope, sizeof(nope), "%s/nope.sock", t.dir);
	snprintf(want, sizeof(want),
		 "pdctl: cannot connect to %s: No such file or directory "
		 "(is pdrouter running? --admin PATH)",
		 nope);
	cr_assert_neq(pdctl("--admin", nope, "models", NULL), 0);
	cr_assert(strstr(run.err, want), "%s", run.err);
	cr_assert_eq(run.out[0], 0, "%s", run.out);
}

Test(pdctl, counters_and_explain)
{
	start_all();
	cr_assert_eq(pdctl("--admin", t.admin, "counters", NULL), 0, "%s", run.err);
	cr_assert(strstr(run.out, "\nrequests "), "%s", run.out);
	cr_assert(strstr(run.out, "\ncontrol.registered "), "%s", run.out);
	cr_assert(strstr(run.out, "\nrouter in (frame -> worker ring): p50 "), "%s", run.out);
	cr_assert(strstr(run.out, "\nrouter out (worker answer -> frame to the kernel): p50 "),
		  "%s", run.out);
	cr_assert(strstr(run.out, "\nkernel send (submits with sends, waking clients): p50 "), "%s",
		  run.out);
	cr_assert(strstr(run.out, "\nrouting decision (rt_route): p50 "), "%s", run.out);
	cr_assert_eq(pdctl("--admin", t.admin, "--json", "counters", NULL), 0);
	cr_assert(strstr(run.out, "\"control\":{\"workers\":2,"), "%s", run.out);
	cr_assert_eq(pdctl("--admin", t.admin, "explain", NULL), 0, "%s", run.err);
	cr_assert(strstr(run.out, "core 0:\n"), "%s", run.out);
}
