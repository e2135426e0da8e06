/*
 * One policy's run for pdbench quality: pdrouter on sockets in a fresh temporary directory,
 * pdmock workers until the admin socket lists their pools, then `pdbench load` replaying the
 * trace; then all of them stopped and reaped, the client first and the router last. Every
 * child writes into its own log in the report's logs directory; a failure is told with their
 * tails. The parent polls them all every 20 ms, so that one that dies ends the run at once.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "bench.h"
#include "bench_quality.h"

#define START_MS 20000	    /* for sockets, registrations; sanitizer builds are slow */
#define STOP_MS 5000
#define LOAD_DRAIN_MS 30000 /* pdbench load waits this long for answers after its run */
#define LOAD_SLACK_MS 30000
#define TAIL_LINES 12
#define SOCK_LEN 108	    /* sun_path */

/* One policy's world: sockets in a temporary directory, logs in the report's logs directory. */
struct qual_run {
	const struct qual_policy *pol;
	char dir[64], client[SOCK_LEN], control[SOCK_LEN], admin[SOCK_LEN];
	char listen[SOCK_LEN + 8];
	char router_log[PATH_MAX], workers_log[PATH_MAX], load_out[PATH_MAX], load_log[PATH_MAX];
	pid_t router, load, workers[2 * QUAL_MAX_POOL];
	uint32_t nworkers;
	struct qual_pools want;
	char why[320]; /* what went wrong, for the message */
};

static bool is_socket(const char *path)
{
	struct stat st;

	return !stat(path, &st) && S_ISSOCK(st.st_mode);
}

static int open_log(const char *path)
{
	int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_APPEND | O_CLOEXEC, 0644);

	if (fd < 0)
		fprintf(stderr, "pdbench quality: %s: %s\n", path, strerror(errno));
	return fd;
}

/* Start @argv with stdout into @out and stderr into @err (files, made afresh). */
static pid_t start(char **argv, const char *out, const char *err)
{
	int ofd = open_log(out), efd = strcmp(out, err) ? open_log(err) : ofd;
	pid_t pid = ofd >= 0 && efd >= 0 ? qual_spawn(argv, ofd, efd) : -EIO;

	if (ofd >= 0)
		close(ofd);
	if (efd >= 0 && efd != ofd)
		close(efd);
	return pid;
}

/* Keep the first reason a run failed; what follows from it is no news. */
static void say(struct qual_run *r, const char *fmt, ...)
{
	va_list ap;

	if (r->why[0])
		return;
	va_start(ap, fmt);
	vsnprintf(r->why, sizeof(r->why), fmt, ap);
	va_end(ap);
}

/* Whether the router and every worker still run; when one is gone, why says which. */
static bool all_alive(struct qual_run *r)
{
	char how[64];
	int st;

	if (!qual_alive(&r->router, &st)) {
		qual_describe(st, how, sizeof(how));
		say(r, "pdrouter stopped: %s", how);
		return false;
	}
	for (uint32_t k = 0; k < r->nworkers; k++)
		if (!qual_alive(&r->workers[k], &st)) {
			qual_describe(st, how, sizeof(how));
			say(r, "pdmock worker %u stopped: %s", k, how);
			return false;
		}
	return true;
}

static int start_router(const struct qual_env *e, struct qual_run *r)
{
	/* One unpinned dataplane core: the comparison is of routing choices, and pdrouter shares
	 * a small machine with its workers and the client. The lease and the prefill timeout are
	 * real time while the engine runs S times faster, so they are long enough that a slow,
	 * busy machine or an overloaded pool never trips them. */
	char *argv[] = {(char *)e->router, "--listen", r->listen, "--control-socket", r->control,
			"--admin-socket", r->admin, "--policy", (char *)r->pol->router,
			"--dataplane-cores", "1", "--no-pin", "--lease-ms", "30000",
			"--prefill-timeout-ms", "600000", NULL};
	uint64_t end = qual_now_ms() + START_MS;
	pid_t pid = start(argv, r->router_log, r->router_log);

	if (pid < 0) {
		say(r, "cannot start %s", e->router);
		return -EIO;
	}
	r->router = pid;
	while (!is_socket(r->client) || !is_socket(r->control) || !is_socket(r->admin)) {
		if (qual_interrupted || !all_alive(r) || qual_now_ms() > end) {
			say(r, "pdrouter's sockets did not appear");
			return -EIO;
		}
		qual_nap();
	}
	return 0;
}

static int start_worker(const struct qual_env *e, struct qual_run *r, const char *mode)
{
	char speedup[32];
	char *argv[] = {(char *)e->mock, "--socket", r->control, "--model", QUAL_MODEL, "--mode",
			(char *)mode, "--speedup", speedup, "--reconnect-ms", "0", NULL};
	pid_t pid;

	snprintf(speedup, sizeof(speedup), "%g", e->speedup);
	pid = start(argv, r->workers_log, r->workers_log);
	if (pid < 0) {
		say(r, "cannot start %s", e->mock);
		return -EIO;
	}
	r->workers[r->nworkers++] = pid;
	return 0;
}

/* Start the workers @r->want and wait until the admin socket lists exactly those pools. */
static int start_workers(const struct qual_env *e, struct qual_run *r)
{
	uint64_t end = qual_now_ms() + START_MS;
	struct qual_pools got = {0};
	int rc = 0;

	for (uint32_t k = 0; k < r->want.prefill && !rc; k++)
		rc = start_worker(e, r, "prefill");
	for (uint32_t k = 0; k < r->want.decode && !rc; k++)
		rc = start_worker(e, r, "decode");
	for (uint32_t k = 0; k < r->want.aggregated && !rc; k++)
		rc = start_worker(e, r, "aggregated");
	while (!rc) {
		char *models = qual_admin(r->admin, "models");

		if (models && !qual_parse_pools(models, QUAL_MODEL, &got) &&
		    !memcmp(&got, &r->want, sizeof(got)))
			rc = 1;
		free(models);
		if (!rc && (qual_interrupted || !all_alive(r) || qual_now_ms() > end)) {
			say(r, "the workers did not all register in %d s: the router lists %u "
			       "prefill, %u decode, %u aggregated", START_MS / 1000, got.prefill,
			    got.decode, got.aggregated);
			rc = -EIO;
		}
		if (!rc)
			qual_nap();
	}
	return rc < 0 ? rc : 0;
}

/* Replay the trace with pdbench load and wait for it, the others watched meanwhile. */
static int run_load(const struct qual_env *e, struct qual_run *r)
{
	char n[16], speedup[32];
	char *argv[] = {(char *)e->self, "load", "--router", r->listen, "--admin", r->admin,
			"--trace", (char *)e->trace, "--model", QUAL_MODEL, "--schedule", "trace",
			"--speedup", speedup, "--max-input", "65536", "--requests", n, "--stream",
			"--json", "--duration", "86400", NULL};
	uint64_t end = qual_now_ms() + (uint64_t)((double)e->span_ms / e->speedup) +
		       LOAD_DRAIN_MS + LOAD_SLACK_MS;
	char how[64];
	int st = 0;

	_Static_assert(QUAL_MAX_INPUT == 65536, "--max-input above");
	snprintf(n, sizeof(n), "%u", e->requests);
	snprintf(speedup, sizeof(speedup), "%g", e->speedup);
	r->load = start(argv, r->load_out, r->load_log);
	if (r->load < 0) {
		r->load = 0;
		say(r, "cannot start %s load", e->self);
		return -EIO;
	}
	while (qual_alive(&r->load, &st)) {
		if (qual_interrupted || !all_alive(r) || qual_now_ms() > end) {
			say(r, "pdbench load did not finish in time");
			return -EIO;
		}
		qual_nap();
	}
	/* 1: some request failed; the report still comes, and counts them. */
	if (WIFEXITED(st) && WEXITSTATUS(st) <= BENCH_FAILED)
		return 0;
	qual_describe(st, how, sizeof(how));
	say(r, "pdbench load failed: %s", how);
	return -EIO;
}

/* The last JSON line pdbench load wrote, as @res. */
static int read_result(const struct qual_env *e, struct qual_run *r, struct qual_result *res)
{
	FILE *f = fopen(r->load_out, "r");
	char line[8192];
	int rc = -EBADMSG;

	while (f && fgets(line, sizeof(line), f))
		if (line[0] == '{')
			rc = qual_parse_load(line, e->speedup, res);
	if (f)
		fclose(f);
	if (rc)
		say(r, "no report from pdbench load in %s", r->load_out);
	return rc;
}

/* Stop and reap everyone, the client first, the router last; remove the sockets' directory.
 * Returns -EIO when the router did not exit 0 (said in why, unless something was said). */
static int stop_all(struct qual_run *r)
{
	char how[64];
	int st;

	qual_stop(&r->load, STOP_MS);
	for (uint32_t k = 0; k < r->nworkers; k++)
		qual_stop(&r->workers[k], STOP_MS);
	st = r->router ? qual_stop(&r->router, STOP_MS) : 0;
	unlink(r->client);
	unlink(r->control);
	unlink(r->admin);
	rmdir(r->dir);
	if (WIFEXITED(st) && !WEXITSTATUS(st))
		return 0;
	qual_describe(st, how, sizeof(how));
	say(r, "pdrouter did not stop cleanly: %s", how);
	return -EIO;
}

/* The run's sockets and logs. Returns 0, or -ENAMETOOLONG (--out is checked in setup()). */
static int paths(const struct qual_env *e, struct qual_run *r)
{
	const char *p = r->pol->name;
	size_t too_long = 0;

	too_long |= (size_t)snprintf(r->client, SOCK_LEN, "%s/c.sock", r->dir) >= SOCK_LEN;
	too_long |= (size_t)snprintf(r->control, SOCK_LEN, "%s/w.sock", r->dir) >= SOCK_LEN;
	too_long |= (size_t)snprintf(r->admin, SOCK_LEN, "%s/a.sock", r->dir) >= SOCK_LEN;
	too_long |= (size_t)snprintf(r->listen, sizeof(r->listen), "unix:%s", r->client) >=
		    sizeof(r->listen);
	too_long |= (size_t)snprintf(r->router_log, PATH_MAX, "%s/%s-pdrouter.log", e->logs, p) >=
		    PATH_MAX;
	too_long |= (size_t)snprintf(r->workers_log, PATH_MAX, "%s/%s-pdmock.log", e->logs, p) >=
		    PATH_MAX;
	too_long |= (size_t)snprintf(r->load_out, PATH_MAX, "%s/%s-load.json", e->logs, p) >=
		    PATH_MAX;
	too_long |= (size_t)snprintf(r->load_log, PATH_MAX, "%s/%s-load.log", e->logs, p) >=
		    PATH_MAX;
	return too_long ? -ENAMETOOLONG : 0;
}

int qual_run_policy(const struct qual_env *e, const struct qual_policy *pol,
		    struct qual_result *res)
{
	const struct qual_workers *w = &e->workers;
	struct qual_run r = {.pol = pol};
	uint64_t t0 = qual_now_ms();
	int rc;

	r.want = pol->disagg ? (struct qual_pools){w->prefill, w->decode, 0}
			     : (struct qual_pools){0, 0, w->prefill + w->decode};
	res->pools = r.want;

	snprintf(r.dir, sizeof(r.dir), "/tmp/pdbench-quality-XXXXXX");
	if (!mkdtemp(r.dir)) {
		fprintf(stderr, "pdbench quality: mkdtemp: %s\n", strerror(errno));
		return -EIO;
	}
	rc = paths(e, &r);
	if (rc)
		say(&r, "the paths are too long");
	rc = rc ? rc : start_router(e, &r);
	rc = rc ? rc : start_workers(e, &r);
	rc = rc ? rc : run_load(e, &r);
	rc = rc ? rc : read_result(e, &r, res);
	rc = stop_all(&r) || rc ? -EIO : 0;
	res->wall_s = (double)(qual_now_ms() - t0) / 1e3;
	if (rc && !qual_interrupted) {
		res->ran = false;
		fprintf(stderr, "pdbench quality: %s failed: %s\n", pol->name, r.why);
		qual_tail(stderr, r.router_log, TAIL_LINES);
		qual_tail(stderr, r.workers_log, TAIL_LINES);
		qual_tail(stderr, r.load_log, TAIL_LINES);
	}
	return rc;
}
