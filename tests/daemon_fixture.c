/*
 * The daemon fixture (daemon_fixture.h): processes, the admin socket, clients. Children are
 * started with PR_SET_PDEATHSIG, so that a test that crashes or times out, which never runs
 * its .fini, still leaves no process behind.
 */
#define _GNU_SOURCE
#include <criterion/criterion.h>
#include <errno.h>
#include <json-c/json.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "admin_client.h"
#include "daemon_fixture.h"

#define MAX_ARGS 64

struct t_daemon t_d;

uint64_t t_now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

void t_nap(void)
{
	nanosleep(&(struct timespec){.tv_nsec = 2000000}, NULL);
}

/* ---- processes ---- */

static pid_t spawn(const char *path, char *const *argv)
{
	pid_t parent = getpid(), pid = fork();

	cr_assert_neq(pid, -1, "fork: %s", strerror(errno));
	if (pid == 0) {
		sigset_t none;

		/* Dies with the test process, whatever ends it. */
		prctl(PR_SET_PDEATHSIG, SIGKILL);
		if (getppid() != parent)
			_exit(127);
		/* The test runner's signal settings and descriptors are not the daemon's. */
		sigemptyset(&none);
		sigprocmask(SIG_SETMASK, &none, NULL);
		signal(SIGTERM, SIG_DFL);
		signal(SIGINT, SIG_DFL);
		signal(SIGPIPE, SIG_DFL);
		close_range(3, ~0u, 0);
		execv(path, argv);
		fprintf(stderr, "exec %s: %s\n", path, strerror(errno));
		_exit(127);
	}
	return pid;
}

/* Wait up to T_DEADLINE_MS for @pid to exit; returns its status, or -1 when it did not. */
static int reap(pid_t pid)
{
	uint64_t end = t_now_ms() + T_DEADLINE_MS;
	int status;

	for (;;) {
		pid_t rc = waitpid(pid, &status, WNOHANG);

		if (rc == pid)
			return status;
		if (rc < 0 || t_now_ms() >= end)
			return -1;
		t_nap();
	}
}

/* Kill @pid hard and reap it; for the fini, where nothing may fail. */
static void kill_hard(pid_t pid)
{
	kill(pid, SIGKILL);
	waitpid(pid, NULL, 0);
}

static bool is_socket(const char *path)
{
	struct stat st;

	return stat(path, &st) == 0 && S_ISSOCK(st.st_mode);
}

static void describe_status(int status, char *buf, size_t len)
{
	if (status == -1)
		snprintf(buf, len, "still running");
	else if (WIFEXITED(status))
		snprintf(buf, len, "exit %d", WEXITSTATUS(status));
	else if (WIFSIGNALED(status))
		snprintf(buf, len, "killed by signal %d (%s)", WTERMSIG(status),
			 strsignal(WTERMSIG(status)));
	else
		snprintf(buf, len, "status %#x", status);
}

void t_daemon_init(void)
{
	memset(&t_d, 0, sizeof(t_d));
	snprintf(t_d.dir, sizeof(t_d.dir), "/tmp/pdrouter-test-XXXXXX");
	cr_assert_not_null(mkdtemp(t_d.dir), "mkdtemp: %s", strerror(errno));
	snprintf(t_d.client_path, sizeof(t_d.client_path), "%s/c.sock", t_d.dir);
	snprintf(t_d.control_path, sizeof(t_d.control_path), "%s/w.sock", t_d.dir);
	snprintf(t_d.admin_path, sizeof(t_d.admin_path), "%s/a.sock", t_d.dir);
	snprintf(t_d.listen, sizeof(t_d.listen), "unix:%s", t_d.client_path);
}

void t_daemon_fini(void)
{
	for (uint32_t k = 0; k < t_d.nworkers; k++)
		kill_hard(t_d.w[k].pid);
	t_d.nworkers = 0;
	if (t_d.router > 0) {
		/* A clean stop still runs the daemon's shutdown under the sanitizers; a hung one
		 * is killed. */
		int status;
		char how[64];

		kill(t_d.router, SIGTERM);
		status = reap(t_d.router);
		if (status == -1)
			kill_hard(t_d.router);
		if (status == -1 || !WIFEXITED(status) || WEXITSTATUS(status)) {
			describe_status(status, how, sizeof(how));
			fprintf(stderr, "pdrouter did not stop cleanly in the fini: %s\n", how);
		}
		t_d.router = 0;
	}
	unlink(t_d.client_path);
	unlink(t_d.control_path);
	unlink(t_d.admin_path);
	if (t_d.dir[0])
		rmdir(t_d.dir);
}

static void router_spawn(void)
{
	char *argv[MAX_ARGS];
	uint32_t n = 0;
	uint64_t end;

	argv[n++] = PD_PDROUTER;
	argv[n++] = "--listen";
	argv[n++] = t_d.listen;
	argv[n++] = "--control-socket";
	argv[n++] = t_d.control_path;
	argv[n++] = "--admin-socket";
	argv[n++] = t_d.admin_path;
	argv[n++] = "--dataplane-cores";
	argv[n++] = "1";
	argv[n++] = "--no-pin";
	argv[n++] = "--lease-ms";
	argv[n++] = "1000";
	for (uint32_t k = 0; k < t_d.nflags; k++)
		argv[n++] = (char *)t_d.flags[k];
	argv[n] = NULL;
	t_d.router = spawn(PD_PDROUTER, argv);
	end = t_now_ms() + T_DEADLINE_MS;
	while (!is_socket(t_d.client_path) || !is_socket(t_d.control_path) ||
	       !is_socket(t_d.admin_path)) {
		int status;

		if (waitpid(t_d.router, &status, WNOHANG) == t_d.router) {
			char how[64];

			t_d.router = 0;
			describe_status(status, how, sizeof(how));
			cr_assert_fail("pdrouter did not start: %s", how);
		}
		cr_assert(t_now_ms() < end, "pdrouter's sockets did not appear");
		t_nap();
	}
	free(t_admin("models")); /* the control thread runs */
}

void t_router_start(const char *flag, ...)
{
	va_list ap;

	cr_assert_eq(t_d.router, 0, "a router runs already");
	t_d.nflags = 0;
	va_start(ap, flag);
	for (const char *f = flag; f; f = va_arg(ap, const char *)) {
		cr_assert_lt(t_d.nflags, T_MAX_FLAGS, "too many router flags");
		t_d.flags[t_d.nflags++] = f;
	}
	va_end(ap);
	router_spawn();
}

void t_router_restart(void)
{
	cr_assert_eq(t_d.router, 0, "a router runs already");
	router_spawn();
}

void t_router_stop(void)
{
	char how[64];
	int status;

	cr_assert_gt(t_d.router, 0, "no router runs");
	cr_assert_eq(kill(t_d.router, SIGTERM), 0);
	status = reap(t_d.router);
	if (status == -1)
		kill_hard(t_d.router);
	t_d.router = 0;
	describe_status(status, how, sizeof(how));
	cr_assert(status != -1 && WIFEXITED(status) && WEXITSTATUS(status) == 0,
		  "pdrouter did not exit 0 on SIGTERM: %s", how);
	cr_assert(!is_socket(t_d.client_path), "pdrouter left its client socket behind");
	cr_assert(!is_socket(t_d.control_path), "pdrouter left its control socket behind");
	cr_assert(!is_socket(t_d.admin_path), "pdrouter left its admin socket behind");
}

static bool id_seen(uint32_t id)
{
	for (uint32_t k = 0; k < t_d.nids_seen; k++)
		if (t_d.ids_seen[k] == id)
			return true;
	return false;
}

/* A worker id the router lists that no earlier call saw; UINT32_MAX when there is none yet. */
static uint32_t new_worker_id(void)
{
	struct t_target t[T_MAX_WORKERS * 2];
	uint32_t n = t_targets(t, T_MAX_WORKERS * 2), found = UINT32_MAX;

	for (uint32_t k = 0; k < n && k < T_MAX_WORKERS * 2; k++)
		if (!id_seen(t[k].worker) && found == UINT32_MAX)
			found = t[k].worker;
	if (found != UINT32_MAX) {
		cr_assert_lt(t_d.nids_seen, sizeof(t_d.ids_seen) / sizeof(t_d.ids_seen[0]));
		t_d.ids_seen[t_d.nids_seen++] = found;
	}
	return found;
}

uint32_t t_worker(const char *mode, ...)
{
	char *argv[MAX_ARGS];
	uint32_t n = 0, id;
	uint64_t end;
	va_list ap;
	pid_t pid;

	cr_assert_lt(t_d.nworkers, T_MAX_WORKERS, "too many workers");
	argv[n++] = PD_PDMOCK;
	argv[n++] = "--socket";
	argv[n++] = t_d.control_path;
	argv[n++] = "--model";
	argv[n++] = T_MODEL;
	argv[n++] = "--mode";
	argv[n++] = (char *)mode;
	argv[n++] = "--speedup";
	argv[n++] = "100";
	argv[n++] = "--reconnect-ms";
	argv[n++] = "0";
	va_start(ap, mode);
	for (const char *f = va_arg(ap, const char *); f; f = va_arg(ap, const char *)) {
		cr_assert_lt(n, MAX_ARGS - 1, "too many pdmock flags");
		argv[n++] = (char *)f;
	}
	va_end(ap);
	argv[n] = NULL;
	pid = spawn(PD_PDMOCK, argv);
	t_d.w[t_d.nworkers].pid = pid;
	t_d.w[t_d.nworkers].id = UINT32_MAX;
	t_d.nworkers++;
	end = t_now_ms() + T_DEADLINE_MS;
	while ((id = new_worker_id()) == UINT32_MAX) {
		int status;

		if (waitpid(pid, &status, WNOHANG) == pid) {
			char how[64];

			t_d.nworkers--;
			describe_status(status, how, sizeof(how));
			cr_assert_fail("pdmock --mode %s did not register: %s", mode, how);
		}
		cr_assert(t_now_ms() < end, "pdmock --mode %s did not register in time", mode);
		t_nap();
	}
	t_d.w[t_d.nworkers - 1].id = id;
	return id;
}

void t_worker_kill(uint32_t id, int sig)
{
	int status;

	for (uint32_t k = 0; k < t_d.nworkers; k++) {
		if (t_d.w[k].id != id)
			continue;
		cr_assert_eq(kill(t_d.w[k].pid, sig), 0, "kill: %s", strerror(errno));
		status = reap(t_d.w[k].pid);
		if (status == -1)
			kill_hard(t_d.w[k].pid);
		t_d.w[k] = t_d.w[--t_d.nworkers];
		cr_assert_neq(status, -1, "worker %u did not exit on signal %d", id, sig);
		return;
	}
	cr_assert_fail("no worker %u in the fixture", id);
}

/* ---- the admin socket ---- */

/* One admin exchange: the answer, or NULL while the socket does not listen yet or the router
 * closed without one (it gives a client 100 ms to send its line, which a busy machine can
 * miss). */
static char *admin_once(const char *cmd, uint64_t end)
{
	uint64_t now = t_now_ms();
	char *out = pd_admin_ask(t_d.admin_path, cmd, now < end ? (int)(end - now) : 1);

	if (out && !*out) {
		free(out);
		return NULL;
	}
	return out;
}

char *t_admin(const char *cmd)
{
	uint64_t end = t_now_ms() + T_DEADLINE_MS;
	char *out;

	while (!(out = admin_once(cmd, end))) {
		cr_assert(t_now_ms() < end, "the admin socket did not answer '%s'", cmd);
		t_nap();
	}
	return out;
}

static struct json_object *admin_json(const char *cmd)
{
	char *text = t_admin(cmd);
	struct json_object *j = json_tokener_parse(text);

	cr_assert_not_null(j, "admin '%s' answered what is not JSON: %s", cmd, text);
	free(text);
	return j;
}

static struct json_object *member(struct json_object *o, const char *key)
{
	struct json_object *v = NULL;

	cr_assert(json_object_object_get_ex(o, key, &v), "no '%s' in the admin answer", key);
	return v;
}

uint64_t t_counter(const char *name)
{
	struct json_object *j = admin_json("counters");
	uint64_t v = (uint64_t)json_object_get_int64(member(member(j, "total"), name));

	json_object_put(j);
	return v;
}

static void copy_str(char *dst, size_t cap, struct json_object *s)
{
	snprintf(dst, cap, "%s", s ? json_object_get_string(s) : "");
}

static void target_of(struct json_object *o, struct t_target *t)
{
	struct json_object *rack = NULL;

	memset(t, 0, sizeof(*t));
	t->worker = (uint32_t)json_object_get_int64(member(o, "worker"));
	copy_str(t->type, sizeof(t->type), member(o, "type"));
	json_object_object_get_ex(member(o, "domains"), "rack", &rack);
	copy_str(t->rack, sizeof(t->rack), rack);
	t->cached_blocks = (uint64_t)json_object_get_int64(member(o, "cached_blocks"));
	t->active_blocks = (uint64_t)json_object_get_int64(member(o, "active_blocks"));
	t->prefill_tokens = (uint64_t)json_object_get_int64(member(o, "prefill_tokens"));
}

uint32_t t_targets(struct t_target *out, uint32_t max)
{
	struct json_object *j = admin_json("workers");
	struct json_object *a = member(j, "targets");
	uint32_t n = (uint32_t)json_object_array_length(a);

	for (uint32_t k = 0; k < n && k < max; k++)
		target_of(json_object_array_get_idx(a, k), &out[k]);
	json_object_put(j);
	return n;
}

bool t_target(uint32_t worker, struct t_target *out)
{
	struct t_target t[T_MAX_WORKERS * 2];
	uint32_t n = t_targets(t, T_MAX_WORKERS * 2);

	for (uint32_t k = 0; k < n && k < T_MAX_WORKERS * 2; k++)
		if (t[k].worker == worker) {
			*out = t[k];
			return true;
		}
	return false;
}

bool t_pools(const char *model, struct t_pools *out)
{
	struct json_object *j = admin_json("models");
	struct json_object *a = member(j, "models");
	bool found = false;

	for (size_t k = 0; k < json_object_array_length(a) && !found; k++) {
		struct json_object *m = json_object_array_get_idx(a, k);

		if (strcmp(json_object_get_string(member(m, "name")), model))
			continue;
		out->prefill = (uint32_t)json_object_get_int64(member(m, "prefill"));
		out->decode = (uint32_t)json_object_get_int64(member(m, "decode"));
		out->aggregated = (uint32_t)json_object_get_int64(member(m, "aggregated"));
		out->prefill_active = json_object_get_boolean(member(m, "prefill_active"));
		found = true;
	}
	json_object_put(j);
	return found;
}

static bool pools_are(const char *model, uint32_t prefill, uint32_t decode, uint32_t aggregated)
{
	struct t_pools p;

	return t_pools(model, &p) && p.prefill == prefill && p.decode == decode &&
	       p.aggregated == aggregated;
}

void t_wait_pools(const char *model, uint32_t prefill, uint32_t decode, uint32_t aggregated)
{
	T_WAIT(pools_are(model, prefill, decode, aggregated), "the model's pools");
}

/* ---- clients ---- */

struct pdc_client *t_connect(void)
{
	struct pdc_client *c;
	int rc = pdc_connect(t_d.listen, &c);

	cr_assert_eq(rc, 0, "pdc_connect %s: %s", t_d.listen, strerror(-rc));
	return c;
}

void t_prompt(uint32_t *tok, uint32_t n, uint32_t tag)
{
	for (uint32_t i = 0; i < n; i++)
		tok[i] = tag * 65536u + i;
}

struct pdc_request_args t_args(uint64_t id, const uint32_t *tok, uint32_t n, uint32_t max_tokens,
			       uint32_t flags)
{
	struct pdc_request_args a = {.id = id,
				     .model = T_MODEL,
				     .tokens = tok,
				     .ntokens = n,
				     .max_tokens = max_tokens,
				     .flags = flags};

	pdc_request_defaults(&a.fixed);
	return a;
}

void t_result_add(struct t_result *r, const struct pdc_event *ev)
{
	cr_assert(!r->ended, "request %llu: a frame of type %u after its last one",
		  (unsigned long long)ev->id, ev->type);
	switch (ev->type) {
	case PDC_ROUTED:
		cr_assert(!r->routed_seen, "request %llu: a second ROUTED",
			  (unsigned long long)ev->id);
		r->routed_seen = true;
		r->routed = ev->routed;
		break;
	case PDC_TOKENS:
		cr_assert(r->routed_seen, "request %llu: TOKENS before ROUTED",
			  (unsigned long long)ev->id);
		for (uint32_t i = 0; i < ev->tokens.n; i++) {
			uint32_t t;

			memcpy(&t, ev->tokens.ids + 4 * i, 4);
			r->wrong += t != 1000 + r->ntokens;
			r->ntokens++;
		}
		r->frames++;
		break;
	case PDC_DONE:
		r->done_seen = true;
		r->done = ev->done;
		r->ended = true;
		break;
	case PDC_ERROR:
		r->error = ev->error.error;
		snprintf(r->msg, sizeof(r->msg), "%.*s", (int)ev->error.len, ev->error.msg);
		r->ended = true;
		break;
	default:
		cr_assert_fail("an answer of unknown type %u", ev->type);
	}
}

int t_next(struct pdc_client *c, struct pdc_event *ev)
{
	return pdc_next(c, ev, T_DEADLINE_MS);
}

void t_collect(struct pdc_client *c, uint64_t id, struct t_result *r)
{
	while (!r->ended) {
		struct pdc_event ev;
		int rc = t_next(c, &ev);

		if (rc) {
			r->rc = rc;
			return;
		}
		cr_assert_eq(ev.id, id, "an answer for request %llu while waiting for %llu",
			     (unsigned long long)ev.id, (unsigned long long)id);
		t_result_add(r, &ev);
	}
}

void t_run(struct pdc_client *c, const struct pdc_request_args *a, struct t_result *r)
{
	int rc = pdc_send(c, a);

	cr_assert_eq(rc, 0, "pdc_send: %s", strerror(-rc));
	memset(r, 0, sizeof(*r));
	t_collect(c, a->id, r);
}

void t_assert_served(const struct t_result *r, uint32_t prompt, uint32_t n)
{
	cr_assert_eq(r->rc, 0, "the request did not end: %s", strerror(-r->rc));
	cr_assert_eq(r->error, 0, "ERROR %d (%s): %s", r->error, strerror(-r->error), r->msg);
	cr_assert(r->routed_seen, "no ROUTED");
	cr_assert(r->done_seen, "no DONE");
	cr_assert_eq(r->ntokens, n, "%u tokens, not %u", r->ntokens, n);
	cr_assert_eq(r->wrong, 0, "%u tokens out of order or not pdmock's", r->wrong);
	cr_assert_eq(r->done.finish_reason, PDC_FINISH_LENGTH);
	cr_assert_eq(r->done.prompt_tokens, prompt);
	cr_assert_eq(r->done.completion_tokens, n);
}

void t_assert_error(const struct t_result *r, int error)
{
	cr_assert_eq(r->rc, 0, "the request did not end: %s", strerror(-r->rc));
	cr_assert(r->ended && !r->done_seen, "served, not refused with %d (%s)", error,
		  strerror(-error));
	cr_assert_eq(r->error, error, "ERROR %d (%s), not %d (%s): %s", r->error,
		     strerror(-r->error), error, strerror(-error), r->msg);
}

int t_send_raw(struct pdc_client *c, const void *buf, size_t len)
{
	const uint8_t *p = buf;

	while (len) {
		ssize_t n = send(pdc_fd(c), p, len, MSG_NOSIGNAL);

		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0)
			return -errno;
		p += n;
		len -= (size_t)n;
	}
	return 0;
}
