/*
 * libpdworker (shm/pdworker.h) against the router's real control socket (control/server.h):
 * a forked worker process connects, registers, publishes KV events and load through its
 * mailbox; the router's index and registry see them; when the worker exits, its blocks go.
 * A refused registration comes back as -EPERM with the router's reason. pdmock, the mock
 * engine, runs as a child: requests, injected faults, cancels, and its cache dumped to a
 * router that asks for it or that took over after a restart.
 */
#define _GNU_SOURCE
#include <criterion/criterion.h>
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "helpers.h"
#include "pdworker.h"
#include "route_fixture.h"
#include "server.h"

TestSuite(pdworker, .timeout = 30);

struct fx {
	struct t_route t;
	struct ctl_server s;
	char dir[64], path[128];
	int go[2]; /* parent -> worker: "you may exit" */
	long want_blocks; /* what the predicates below wait for */
	uint64_t want_stored, want_removed;
};

static uint64_t now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* A router: a fresh registry and index behind a control socket at f->path. */
static void fx_router_open(struct fx *f)
{
	struct ctl_server_config cfg = {0};

	t_route_open(&f->t, NULL);
	cfg.path = f->path;
	cfg.mbox = (struct shm_mbox_config){.lane_ring_bytes = 4096, .event_ring_bytes = 65536};
	cr_assert_eq(ctl_server_open(&f->s, &cfg, &f->t.rt, &f->t.x), 0);
}

static void fx_router_close(struct fx *f)
{
	ctl_server_close(&f->s);
	t_route_close(&f->t);
}

static void fx_open(struct fx *f)
{
	strcpy(f->dir, "/tmp/pdr-pdw-XXXXXX");
	cr_assert_not_null(mkdtemp(f->dir));
	snprintf(f->path, sizeof(f->path), "%s/control.sock", f->dir);
	fx_router_open(f);
	cr_assert_eq(pipe(f->go), 0);
}

static void fx_close(struct fx *f)
{
	close(f->go[0]);
	close(f->go[1]);
	fx_router_close(f);
	rmdir(f->dir);
}

/* Run the router until @done says so or 5 s pass; returns @done's last answer. */
static bool serve_until(struct fx *f, bool (*done)(struct fx *))
{
	uint64_t end = now_ns() + 5000000000ull;

	while (!done(f) && now_ns() < end)
		cr_assert_geq(ctl_server_poll(&f->s, 5, now_ns()), 0);
	return done(f);
}

static struct pdw_register_args args(uint32_t block_size)
{
	return (struct pdw_register_args){
	    .fixed = {.worker_type = RT_AGGREGATED, .model_type = RT_MODEL_CHAT,
		      .block_size = block_size, .kv_capacity_blocks = 1000,
		      .max_batched_tokens = 8192, .dp_rank_start = 2, .dp_ranks = 2},
	    .model = "m",
	    .endpoint = "generate",
	};
}

/* The worker process: register, publish 4 blocks and a load on rank 3, wait, leave. */
static int worker_main(struct fx *f)
{
	struct pdw_register_args a = args(16);
	uint64_t ext[4], local[4];
	struct pdw w;
	char b;

	if (pdw_connect(&w, f->path) || pdw_register(&w, &a, 5000))
		return 1;
	for (int i = 0; i < 4; i++) {
		ext[i] = 500 + i;
		local[i] = t_mix64(i) | 1;
	}
	if (pdw_publish_stored(&w, 3, NULL, ext, 4, local, NULL) ||
	    pdw_publish_load(&w, 3, 777, 55) || pdw_publish_stored(&w, 9, NULL, ext, 4, local, NULL)
	    != -EINVAL)
		return 2;
	pdw_heartbeat(&w);
	if (read(f->go[0], &b, 1) != 1)
		return 3;
	pdw_close(&w);
	return 0;
}

static int target_of_rank3(struct fx *f)
{
	return f->s.stats.registered ? rt_target_find(&f->t.rt, 0, 3) : -ENOENT;
}

static bool events_in(struct fx *f)
{
	int t = target_of_rank3(f);

	return t >= 0 && pdx_target_blocks(&f->t.x, (uint32_t)t) == 4 &&
	       f->t.rt.target[t].reported_used_blocks == 777;
}

static bool worker_gone(struct fx *f)
{
	return f->s.stats.hangups == 1;
}

Test(pdworker, worker_registers_publishes_and_its_blocks_leave_with_it)
{
	struct fx f;
	pid_t pid;
	int status, t;

	fx_open(&f);
	pid = fork();
	cr_assert_geq(pid, 0);
	if (pid == 0)
		_exit(worker_main(&f));
	cr_assert(serve_until(&f, events_in), "the worker's events never reached the index");
	t = target_of_rank3(&f);
	cr_assert_eq(write(f.go[1], "x", 1), 1);
	cr_assert(serve_until(&f, worker_gone));
	cr_assert_eq(waitpid(pid, &status, 0), pid);
	cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0, "worker exit %d", status);
	cr_assert_eq(pdx_target_blocks(&f.t.x, (uint32_t)t), 0);
	cr_assert_eq(rt_target_find(&f.t.rt, 0, 3), -ENOENT);
	fx_close(&f);
}

/* The refused worker: exits 0 when told -EPERM with the router's reason. */
static int refused_main(struct fx *f)
{
	struct pdw_register_args a = args(3);
	struct pdw w;

	if (pdw_connect(&w, f->path) || pdw_register(&w, &a, 5000) != -EPERM)
		return 1;
	if (!strstr(w.reason, "power of two"))
		return 2;
	if (pdw_publish_cleared(&w, 2) != -ENOTCONN)
		return 3;
	pdw_close(&w);
	return 0;
}

static bool refused(struct fx *f)
{
	return f->s.stats.refused_register == 1;
}

Test(pdworker, refused_registration_returns_eperm_with_the_reason)
{
	struct fx f;
	pid_t pid;
	int status;

	fx_open(&f);
	pid = fork();
	cr_assert_geq(pid, 0);
	if (pid == 0)
		_exit(refused_main(&f));
	cr_assert(serve_until(&f, refused));
	cr_assert(serve_until(&f, worker_gone));
	cr_assert_eq(waitpid(pid, &status, 0), pid);
	cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0, "worker exit %d", status);
	fx_close(&f);
}

Test(pdworker, connecting_where_no_router_listens_fails_cleanly)
{
	struct pdw w;

	cr_assert_eq(pdw_connect(&w, "/tmp/pdr-no-such-router.sock"), -ENOENT);
	cr_assert_eq(w.fd, -1);
	pdw_close(&w);
}

static bool example_published(struct fx *f)
{
	int t = f->s.stats.registered ? rt_target_find(&f->t.rt, 0, 0) : -ENOENT;

	return t >= 0 && pdx_target_blocks(&f->t.x, (uint32_t)t) == 4 * 8;
}

/* tools/example_worker, the SDK's tutorial, works as it says: registers, publishes 4 prompts
 * of 8 blocks, keeps its lease, and leaves on SIGTERM. */
Test(pdworker, example_worker_registers_publishes_and_leaves_on_sigterm)
{
	struct fx f;
	pid_t pid;
	int status;

	fx_open(&f);
	pid = fork();
	cr_assert_geq(pid, 0);
	if (pid == 0) {
		execl(PD_EXAMPLE_WORKER, "example_worker", f.path, "m", (char *)NULL);
		_exit(127);
	}
	cr_assert(serve_until(&f, example_published), "the example's blocks never arrived");
	cr_assert_eq(kill(pid, SIGTERM), 0);
	cr_assert(serve_until(&f, worker_gone));
	cr_assert_eq(waitpid(pid, &status, 0), pid);
	cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0, "example exit %d", status);
	fx_close(&f);
}

static struct shm_lane_answer ask(struct fx *f, struct shm_lane_request *req, const char *params,
				  uint32_t *tokens, char *blob, size_t cap);

/* shm/python/example_worker.py, through the ctypes binding and the shared libpdworker, does
 * what the C example does, and serves requests in every mode. Skipped where there is no
 * python3. */
Test(pdworker, python_example_worker_registers_publishes_serves_and_leaves_on_sigterm)
{
	struct shm_lane_request agg = {.request_id = 1, .max_tokens = 5};
	struct shm_lane_request pre = {.request_id = 2, .mode = SHM_LANE_PREFILL, .max_tokens = 1};
	struct shm_lane_request dec = {.request_id = 3, .mode = SHM_LANE_DECODE, .max_tokens = 3,
				       .nparams = 10};
	struct shm_lane_request bad = {.request_id = 4, .mode = SHM_LANE_DECODE, .max_tokens = 3,
				       .nparams = 5};
	struct shm_lane_answer a;
	char script[512], blob[128];
	uint32_t got;
	struct fx f;
	pid_t pid;
	int status;

	if (T_SANITIZED) /* python3 is not built with the sanitizer the library expects */
		cr_skip_test("a sanitized libpdworker cannot load into python3");
	if (system("command -v python3 >/dev/null 2>&1") != 0)
		cr_skip_test("python3 is not installed");
	snprintf(script, sizeof(script), "%s/example_worker.py", PD_PYTHON_DIR);
	fx_open(&f);
	pid = fork();
	cr_assert_geq(pid, 0);
	if (pid == 0) {
		setenv("PDWORKER_LIB", PD_PDWORKER_LIB, 1);
		setenv("PYTHONPATH", PD_PYTHON_DIR, 1);
		execlp("python3", "python3", script, f.path, "m", (char *)NULL);
		_exit(127);
	}
	cr_assert(serve_until(&f, example_published), "the Python example's blocks never arrived");
	a = ask(&f, &agg, NULL, &got, blob, sizeof(blob));
	cr_assert_eq(a.type, SHM_LANE_DONE, "aggregated: answer type %u", a.type);
	cr_assert_eq(got, 5);
	a = ask(&f, &pre, NULL, &got, blob, sizeof(blob));
	cr_assert_eq(a.type, SHM_LANE_PREFILLED, "prefill: answer type %u", a.type);
	cr_assert(!strncmp(blob, "example:", 8), "params '%s'", blob);
	a = ask(&f, &dec, "example:xy", &got, blob, sizeof(blob));
	cr_assert_eq(a.type, SHM_LANE_DONE, "decode: answer type %u (%s)", a.type, blob);
	cr_assert_eq(got, 3);
	a = ask(&f, &bad, "other", &got, blob, sizeof(blob));
	cr_assert_eq(a.type, SHM_LANE_ERROR, "decode without its params: answer type %u", a.type);
	cr_assert_eq((int32_t)a.value, -EINVAL);
	cr_assert_eq(kill(pid, SIGTERM), 0);
	cr_assert(serve_until(&f, worker_gone));
	cr_assert_eq(waitpid(pid, &status, 0), pid);
	cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0, "example exit %d", status);
	fx_close(&f);
}

static bool registered(struct fx *f)
{
	return f->s.stats.registered == 1 && f->s.nconns == 1;
}

/* Start pdmock against @f's socket in @mode ("aggregated", "prefill", "decode") with @fail
 * percent of prefills failing, then the options @extra (NULL-terminated; later options win);
 * returns its pid once it has registered. */
static pid_t start_pdmock_with(struct fx *f, const char *mode, const char *fail,
			       const char *const *extra)
{
	const char *argv[32] = {"pdmock", "--socket", f->path, "--model", "m", "--mode", mode,
				"--block-size", "16", "--capacity", "256", "--max-running", "8",
				"--speedup", "1000", "--fail-prefill", fail};
	size_t n = 17;
	pid_t pid;

	while (extra && *extra && n < 31)
		argv[n++] = *extra++;
	pid = fork();
	cr_assert_geq(pid, 0);
	if (pid == 0) {
		/* A failed test must not leave a pdmock looking for its router. */
		prctl(PR_SET_PDEATHSIG, SIGKILL);
		execv(PD_PDMOCK, (char *const *)argv);
		_exit(127);
	}
	cr_assert(serve_until(f, registered), "pdmock never registered");
	return pid;
}

static pid_t start_pdmock(struct fx *f, const char *mode, const char *fail)
{
	return start_pdmock_with(f, mode, fail, NULL);
}

static void stop_pdmock(struct fx *f, pid_t pid)
{
	int status;

	cr_assert_eq(kill(pid, SIGTERM), 0);
	cr_assert(serve_until(f, worker_gone));
	cr_assert_eq(waitpid(pid, &status, 0), pid);
	cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0, "pdmock exit %d", status);
}

/* Send @req (params @params, a 40-token prompt) to the one worker, without waiting. */
static void put(struct fx *f, struct shm_lane_request *req, const char *params)
{
	struct ctl_conn *conn = &f->s.conns[0];
	uint32_t prompt[40];

	for (uint32_t i = 0; i < 40; i++)
		prompt[i] = 500 + i;
	req->ntokens = 40;
	cr_assert_eq(shm_lane_put_request(&conn->peer->mbox.req[0], req, prompt, NULL, params), 0);
	shm_ring_publish(&conn->peer->mbox.req[0]);
	shm_mbox_ring_doorbell(&conn->peer->mbox);
}

/* Send @req (params @params) to the one worker and collect its answers until DONE, PREFILLED
 * or ERROR; returns that last answer, *@tokens the tokens before it, @blob its data. */
static struct shm_lane_answer ask(struct fx *f, struct shm_lane_request *req, const char *params,
				  uint32_t *tokens, char *blob, size_t cap)
{
	struct ctl_conn *conn = &f->s.conns[0];
	struct shm_lane_answer a = {0};
	uint64_t end = now_ns() + 5000000000ull;

	put(f, req, params);
	*tokens = 0;
	while (now_ns() < end) {
		struct shm_rec rec;

		cr_assert_geq(ctl_server_poll(&f->s, 1, now_ns()), 0);
		while (shm_ring_peek(&conn->peer->mbox.resp[0], &rec) == 0) {
			cr_assert_eq(shm_lane_check_answer(rec.type, rec.payload, rec.len, &a), 0);
			cr_assert_eq(a.request_id, req->request_id);
			*tokens += a.type == SHM_LANE_TOKENS ? a.n : 0;
			if (a.type != SHM_LANE_TOKENS) {
				memcpy(blob, a.data, a.n < cap - 1 ? a.n : cap - 1);
				blob[a.n < cap - 1 ? a.n : cap - 1] = '\0';
			}
			shm_ring_consume(&conn->peer->mbox.resp[0]);
			shm_ring_release(&conn->peer->mbox.resp[0]);
			if (a.type != SHM_LANE_TOKENS)
				return a;
		}
	}
	cr_assert_fail("no final answer from pdmock");
	return a;
}

/* tools/pdmock serves a request end to end over its mailbox: the prompt's blocks reach the
 * index as KV events, max_tokens tokens come back, then DONE. */
Test(pdworker, pdmock_serves_a_request_and_publishes_its_cache)
{
	struct shm_lane_request req = {.request_id = 77, .max_tokens = 5};
	struct shm_lane_answer a;
	char blob[128];
	uint32_t got;
	struct fx f;
	pid_t pid;
	int t;

	fx_open(&f);
	pid = start_pdmock(&f, "aggregated", "0");
	a = ask(&f, &req, NULL, &got, blob, sizeof(blob));
	cr_assert_eq(a.type, SHM_LANE_DONE);
	cr_assert_eq(got, 5);
	ctl_server_poll(&f.s, 1, now_ns()); /* the last KV events */
	t = rt_target_find(&f.t.rt, f.s.conns[0].worker, 0);
	cr_assert_geq(t, 0);
	cr_assert_geq(pdx_target_blocks(&f.t.x, (uint32_t)t), 2, "the prompt's blocks never came");
	stop_pdmock(&f, pid);
	fx_close(&f);
}

/* A prefill pdmock answers with one token and params naming itself; a decode pdmock refuses a
 * request without such params and serves one with them; injected prefill failures fail. */
Test(pdworker, pdmock_prefill_and_decode_modes_and_injected_failures)
{
	struct shm_lane_request req = {.request_id = 1, .mode = SHM_LANE_PREFILL, .max_tokens = 1};
	struct shm_lane_answer a;
	char blob[128], params[128];
	uint32_t got;
	struct fx f;
	pid_t pid;

	fx_open(&f);
	pid = start_pdmock(&f, "prefill", "0");
	a = ask(&f, &req, NULL, &got, params, sizeof(params));
	cr_assert_eq(a.type, SHM_LANE_PREFILLED);
	cr_assert_eq(strncmp(params, "pdmock:worker=", 14), 0, "params: %s", params);
	cr_assert_not_null(strstr(params, "blocks=2"), "params: %s", params);
	stop_pdmock(&f, pid);

	f.s.stats.registered = 0;
	f.s.stats.hangups = 0;
	pid = start_pdmock(&f, "decode", "0");
	req = (struct shm_lane_request){.request_id = 2, .mode = SHM_LANE_DECODE, .max_tokens = 3};
	a = ask(&f, &req, NULL, &got, blob, sizeof(blob));
	cr_assert_eq(a.type, SHM_LANE_ERROR, "decode without params was served");
	cr_assert_eq((int32_t)a.value, -EINVAL);
	req = (struct shm_lane_request){.request_id = 3, .mode = SHM_LANE_DECODE, .max_tokens = 3,
					.nparams = (uint32_t)strlen(params)};
	a = ask(&f, &req, params, &got, blob, sizeof(blob));
	cr_assert_eq(a.type, SHM_LANE_DONE);
	cr_assert_eq(got, 3);
	stop_pdmock(&f, pid);

	f.s.stats.registered = 0;
	f.s.stats.hangups = 0;
	pid = start_pdmock(&f, "prefill", "100");
	req = (struct shm_lane_request){.request_id = 4, .mode = SHM_LANE_PREFILL, .max_tokens = 1};
	a = ask(&f, &req, NULL, &got, blob, sizeof(blob));
	cr_assert_eq(a.type, SHM_LANE_ERROR);
	cr_assert_eq((int32_t)a.value, -EIO);
	stop_pdmock(&f, pid);
	fx_close(&f);
}

/*
 * The worker of the next test: a gap in its event ids (an event id skipped by hand) makes the
 * router ask for a dump, which pdw_control() reports as PDW_WANTS_DUMP; the router's hang-up
 * reads as -EPIPE; pdw_reconnect() fails with -ENOENT or -ECONNREFUSED until a router
 * listens again, then registers with the event ids starting over.
 */
static int control_of(struct pdw *w, int want)
{
	uint64_t end = now_ns() + 5000000000ull;
	int rc;

	while ((rc = pdw_control(w)) == 0 && now_ns() < end) {
		pdw_heartbeat(w);
		usleep(1000);
	}
	return rc == want ? 0 : -1;
}

static int publish_cache(struct pdw *w, bool with_child)
{
	uint64_t ext[4] = {500, 501, 502, 503}, local[4], child = 600, child_local = 77;

	for (int i = 0; i < 4; i++)
		local[i] = t_mix64(i) | 1;
	if (pdw_publish_stored(w, 2, NULL, ext, 4, local, NULL))
		return -1;
	return with_child ? pdw_publish_stored(w, 2, &ext[3], &child, 1, &child_local, NULL) : 0;
}

static int dump_worker_main(struct fx *f)
{
	struct pdw_register_args a = args(16);
	uint64_t end;
	struct pdw w;
	char b;
	int rc;

	if (pdw_connect(&w, f->path) || pdw_register(&w, &a, 5000) || publish_cache(&w, false))
		return 1;
	w.next_event_id[0]++; /* rank 2 is our first: its next event id is never sent */
	if (publish_cache(&w, true) != 0 || control_of(&w, PDW_WANTS_DUMP))
		return 2;
	if (pdw_publish_cleared(&w, 2) || publish_cache(&w, true))
		return 3;
	if (control_of(&w, -EPIPE))
		return 4; /* the router went away, and we can tell it from a DUMP */
	end = now_ns() + 5000000000ull;
	while ((rc = pdw_reconnect(&w, f->path, &a, 1000)) && now_ns() < end) {
		if (rc != -ENOENT && rc != -ECONNREFUSED)
			return 5;
		usleep(20000);
	}
	if (rc || w.next_event_id[0] != 1 || pdw_control(&w) != 0)
		return 6;
	if (pdw_publish_cleared(&w, 2) || publish_cache(&w, false))
		return 7;
	pdw_heartbeat(&w);
	if (read(f->go[0], &b, 1) != 1)
		return 8;
	pdw_close(&w);
	pdw_close(&w);
	return 0;
}

static long rank2_blocks(struct fx *f)
{
	int t = f->s.nconns && f->s.conns[0].registered
		    ? rt_target_find(&f->t.rt, f->s.conns[0].worker, 2)
		    : -ENOENT;

	return t < 0 ? -1 : (long)pdx_target_blocks(&f->t.x, (uint32_t)t);
}

static bool dumped_after_gap(struct fx *f)
{
	return f->s.stats.dumps_requested == 1 && f->s.nconns == 1 &&
	       f->s.conns[0].kv.stats.gaps == 1 && f->s.conns[0].kv.stats.blocks_removed == 5 &&
	       rank2_blocks(f) == 5;
}

static bool back_with_4_blocks(struct fx *f)
{
	return registered(f) && rank2_blocks(f) == 4;
}

Test(pdworker, control_tells_dump_from_hang_up_and_reconnect_starts_event_ids_over)
{
	struct fx f;
	pid_t pid;
	int status;

	fx_open(&f);
	pid = fork();
	cr_assert_geq(pid, 0);
	if (pid == 0)
		_exit(dump_worker_main(&f));
	cr_assert(serve_until(&f, dumped_after_gap), "no dump after the gap");
	cr_assert_eq(f.s.conns[0].kv.stats.refused, 0);
	fx_router_close(&f); /* the router goes away... */
	usleep(100000);
	fx_router_open(&f); /* ...and a new one takes the socket */
	cr_assert(serve_until(&f, back_with_4_blocks), "the worker never came back");
	cr_assert_eq(f.s.conns[0].kv.stats.gaps, 0, "event ids did not start over");
	cr_assert_eq(f.s.conns[0].kv.stats.duplicates, 0);
	cr_assert_eq(write(f.go[1], "x", 1), 1);
	cr_assert(serve_until(&f, worker_gone));
	cr_assert_eq(waitpid(pid, &status, 0), pid);
	cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0, "worker exit %d", status);
	fx_close(&f);
}

/* The blocks of the one pdmock's DP rank 0 in the index; -1 while it has no target. */
static long mock_blocks(struct fx *f)
{
	int t = f->s.nconns && f->s.conns[0].registered
		    ? rt_target_find(&f->t.rt, f->s.conns[0].worker, 0)
		    : -ENOENT;

	return t < 0 ? -1 : (long)pdx_target_blocks(&f->t.x, (uint32_t)t);
}

/* Serve @ms milliseconds, whatever happens. */
static void serve_for(struct fx *f, uint64_t ms)
{
	uint64_t end = now_ns() + ms * 1000000u;

	while (now_ns() < end)
		cr_assert_geq(ctl_server_poll(&f->s, 5, now_ns()), 0);
}

/* Serve one request of 10 tokens and let its last KV events arrive; returns the blocks. */
static long serve_one(struct fx *f, uint64_t id)
{
	struct shm_lane_request req = {.request_id = id, .max_tokens = 10};
	struct shm_lane_answer a;
	char blob[128];
	uint32_t got;

	a = ask(f, &req, NULL, &got, blob, sizeof(blob));
	cr_assert_eq(a.type, SHM_LANE_DONE);
	cr_assert_eq(got, 10);
	serve_for(f, 50);
	cr_assert_geq(mock_blocks(f), 3, "the prompt's 2 blocks and a decoded one");
	return mock_blocks(f);
}

static bool alive(pid_t pid)
{
	int status;

	return waitpid(pid, &status, WNOHANG) == 0;
}

/* --die-after 2: the second request is answered, then pdmock exits (status 3) with others in
 * flight, and the router sees the hang-up and forgets the worker. */
Test(pdworker, pdmock_die_after_exits_and_the_router_sees_the_hang_up)
{
	const char *const extra[] = {"--die-after", "2", NULL};
	struct shm_lane_request req = {.request_id = 2, .max_tokens = 3};
	uint32_t worker;
	struct fx f;
	pid_t pid;
	int status;

	fx_open(&f);
	pid = start_pdmock_with(&f, "aggregated", "0", extra);
	worker = f.s.conns[0].worker;
	serve_one(&f, 1);
	cr_assert(alive(pid) && f.s.stats.hangups == 0, "pdmock died before its time");
	put(&f, &req, NULL); /* not read back: the mailbox goes with the worker */
	req.request_id = 3;
	put(&f, &req, NULL);
	cr_assert(serve_until(&f, worker_gone), "the router never saw pdmock go");
	cr_assert_eq(waitpid(pid, &status, 0), pid);
	cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 3, "pdmock exit %d", status);
	cr_assert_eq(f.s.nconns, 0);
	cr_assert_eq(rt_target_find(&f.t.rt, worker, 0), -ENOENT);
	fx_close(&f);
}

/* --stall-ms 300: a request is held that long before it starts. */
Test(pdworker, pdmock_stall_answers_only_after_the_stall)
{
	const char *const extra[] = {"--stall-ms", "300", NULL};
	struct shm_lane_request req = {.request_id = 1, .max_tokens = 2};
	struct shm_lane_answer a;
	uint64_t t0, took;
	char blob[128];
	uint32_t got;
	struct fx f;
	pid_t pid;

	fx_open(&f);
	pid = start_pdmock_with(&f, "aggregated", "0", extra);
	t0 = now_ns();
	a = ask(&f, &req, NULL, &got, blob, sizeof(blob));
	took = now_ns() - t0;
	cr_assert_eq(a.type, SHM_LANE_DONE);
	cr_assert_geq(took, 300000000u, "answered after %llu ns", (unsigned long long)took);
	cr_assert_lt(took, 3000000000u, "answered after %llu ns", (unsigned long long)took);
	stop_pdmock(&f, pid);
	fx_close(&f);
}

static void cancel(struct fx *f, uint64_t id)
{
	struct ctl_conn *conn = &f->s.conns[0];
	struct shm_lane_ref ref = {.request_id = id};
	uint8_t *p;
	int err;

	p = shm_ring_reserve(&conn->peer->mbox.req[0], SHM_LANE_CANCEL, 0, sizeof(ref), &err);
	cr_assert_not_null(p, "reserve: %d", err);
	memcpy(p, &ref, sizeof(ref));
	shm_ring_commit(&conn->peer->mbox.req[0]);
	shm_ring_publish(&conn->peer->mbox.req[0]);
	shm_mbox_ring_doorbell(&conn->peer->mbox);
}

static bool prompt_admitted(struct fx *f)
{
	return mock_blocks(f) >= 2;
}

/* A CANCEL while the prompt is prefilling (admitted: its blocks are stored; no token yet)
 * ends the sequence without an answer; the engine goes on serving. */
Test(pdworker, pdmock_cancel_mid_prefill_ends_the_sequence_without_an_answer)
{
	const char *const extra[] = {"--speedup", "0.1", NULL}; /* a step of about 0.5 s */
	struct shm_lane_request req = {.request_id = 5, .max_tokens = 5};
	struct shm_lane_answer a;
	struct shm_rec rec;
	char blob[128];
	uint32_t got;
	struct fx f;
	pid_t pid;

	fx_open(&f);
	pid = start_pdmock_with(&f, "aggregated", "0", extra);
	put(&f, &req, NULL);
	cr_assert(serve_until(&f, prompt_admitted), "the prompt was never admitted");
	cancel(&f, 5);
	serve_for(&f, 1200); /* past the end of the prefill step, and one more */
	cr_assert_eq(shm_ring_peek(&f.s.conns[0].peer->mbox.resp[0], &rec), -EAGAIN,
		     "a cancelled prefill answered (type %u)", rec.type);
	req = (struct shm_lane_request){.request_id = 6, .max_tokens = 1};
	a = ask(&f, &req, NULL, &got, blob, sizeof(blob)); /* asserts every answer is for 6 */
	cr_assert_eq(a.type, SHM_LANE_DONE);
	stop_pdmock(&f, pid);
	fx_close(&f);
}

static bool blocks_back(struct fx *f)
{
	return registered(f) && mock_blocks(f) == f->want_blocks;
}

/* The router restarts under a running pdmock: pdmock keeps its cache, registers with the new
 * router on the same socket within a couple of seconds, and its dump (CLEARED, STORED) gives
 * the new index every block the old one had; then it serves again. */
Test(pdworker, pdmock_reregisters_with_a_restarted_router_and_dumps_its_cache)
{
	const char *const extra[] = {"--reconnect-ms", "5000", NULL};
	const struct ctl_kv_stats *k;
	uint64_t t0;
	struct fx f;
	pid_t pid;

	fx_open(&f);
	pid = start_pdmock_with(&f, "aggregated", "0", extra);
	f.want_blocks = serve_one(&f, 1);
	fx_router_close(&f);
	usleep(250000); /* no router at all for a while: pdmock keeps trying */
	cr_assert(alive(pid), "pdmock exited with its router");
	t0 = now_ns();
	fx_router_open(&f);
	cr_assert(serve_until(&f, registered), "pdmock never came back");
	cr_assert_lt(now_ns() - t0, 2000000000u, "pdmock took over 2 s to come back");
	cr_assert(serve_until(&f, blocks_back), "the dump did not rebuild the index: %ld of %ld",
		  mock_blocks(&f), f.want_blocks);
	k = &f.s.conns[0].kv.stats;
	cr_assert_geq(k->events, 2, "CLEARED and STORED");
	cr_assert_eq(k->blocks_stored, (uint64_t)f.want_blocks);
	cr_assert(k->gaps == 0 && k->refused == 0 && k->duplicates == 0 && k->malformed == 0);
	cr_assert_eq(f.s.stats.dumps_requested, 0, "the dump came unasked");
	serve_one(&f, 2);
	stop_pdmock(&f, pid);
	fx_close(&f);
}

/* --reconnect-ms bounds the search: 0 exits at the hang-up (status 0, as before there was a
 * search), 300 gives up after about that (status 1). */
Test(pdworker, pdmock_without_a_router_exits_after_reconnect_ms)
{
	const char *const now[] = {"--reconnect-ms", "0", NULL};
	const char *const soon[] = {"--reconnect-ms", "300", NULL};
	uint64_t t0;
	struct fx f;
	pid_t pid;
	int status;

	fx_open(&f);
	pid = start_pdmock_with(&f, "aggregated", "0", now);
	fx_router_close(&f);
	cr_assert_eq(waitpid(pid, &status, 0), pid);
	cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0, "pdmock exit %d", status);
	fx_router_open(&f);
	pid = start_pdmock_with(&f, "aggregated", "0", soon);
	fx_router_close(&f);
	t0 = now_ns();
	cr_assert_eq(waitpid(pid, &status, 0), pid);
	cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 1, "pdmock exit %d", status);
	cr_assert_geq(now_ns() - t0, 250000000u, "gave up too soon");
	fx_router_open(&f);
	fx_close(&f);
}

static bool dump_applied(struct fx *f)
{
	const struct ctl_kv_stats *k = &f->s.conns[0].kv.stats;

	return f->s.stats.dumps_requested == 1 && k->blocks_removed == f->want_removed &&
	       k->blocks_stored == f->want_stored && mock_blocks(f) == f->want_blocks;
}

/* A router that lost events asks for a dump; pdmock answers with CLEARED (every block goes)
 * and STORED for its whole cache (every block comes back), with no gap in its event ids. */
Test(pdworker, pdmock_answers_dump_with_cleared_and_its_whole_cache)
{
	const struct ctl_kv_stats *k;
	uint64_t events;
	struct fx f;
	pid_t pid;

	fx_open(&f);
	pid = start_pdmock(&f, "aggregated", "0");
	f.want_blocks = serve_one(&f, 1);
	k = &f.s.conns[0].kv.stats;
	events = k->events;
	f.want_removed = k->blocks_removed + (uint64_t)f.want_blocks;
	f.want_stored = k->blocks_stored + (uint64_t)f.want_blocks;
	f.s.conns[0].kv.dump_wanted = true; /* what a gap in event ids sets (kv_events.c) */
	cr_assert(serve_until(&f, dump_applied), "no dump: %ld blocks, %llu removed, %llu stored",
		  mock_blocks(&f), (unsigned long long)k->blocks_removed,
		  (unsigned long long)k->blocks_stored);
	cr_assert_geq(k->events, events + 2, "CLEARED and STORED");
	cr_assert(k->gaps == 0 && k->refused == 0 && k->duplicates == 0 && k->malformed == 0);
	serve_one(&f, 2);
	stop_pdmock(&f, pid);
	fx_close(&f);
}

/* The Python binding's side of a restart: wants_dump() raises EPIPE when the router goes,
 * reconnect() raises ENOENT or ECONNREFUSED until a new one listens, then registers again. */
static const char py_reconnect[] =
	"import errno, os, sys, time\n"
	"import pdworker\n"
	"w = pdworker.Worker(sys.argv[1])\n"
	"w.register('m', block_size=16)\n"
	"w.stored(0, [900, 901], local_hashes=[11, 12])\n"
	"end = time.time() + 5\n"
	"while True:\n"
	"    try:\n"
	"        w.wants_dump()\n"
	"    except OSError as e:\n"
	"        if e.errno != errno.EPIPE: sys.exit(2)\n"
	"        break\n"
	"    w.heartbeat()\n"
	"    time.sleep(0.005)\n"
	"    if time.time() > end: sys.exit(3)\n"
	"while True:\n"
	"    try:\n"
	"        w.reconnect(timeout_ms=1000)\n"
	"        break\n"
	"    except OSError as e:\n"
	"        if e.errno not in (errno.ENOENT, errno.ECONNREFUSED): sys.exit(4)\n"
	"    if time.time() > end: sys.exit(5)\n"
	"    time.sleep(0.02)\n"
	"w.cleared(0)\n"
	"w.stored(0, [900, 901], local_hashes=[11, 12])\n"
	"w.heartbeat()\n"
	"os.read(0, 1)\n"
	"w.close()\n";

Test(pdworker, python_worker_reconnects_to_a_restarted_router)
{
	struct fx f;
	pid_t pid;
	int status;

	if (T_SANITIZED)
		cr_skip_test("a sanitized libpdworker cannot load into python3");
	if (system("command -v python3 >/dev/null 2>&1") != 0)
		cr_skip_test("python3 is not installed");
	fx_open(&f);
	pid = fork();
	cr_assert_geq(pid, 0);
	if (pid == 0) {
		prctl(PR_SET_PDEATHSIG, SIGKILL);
		setenv("PDWORKER_LIB", PD_PDWORKER_LIB, 1);
		setenv("PYTHONPATH", PD_PYTHON_DIR, 1);
		dup2(f.go[0], 0);
		execlp("python3", "python3", "-c", py_reconnect, f.path, (char *)NULL);
		_exit(127);
	}
	f.want_blocks = 2;
	cr_assert(serve_until(&f, blocks_back), "the Python worker's blocks never arrived");
	fx_router_close(&f);
	usleep(100000);
	fx_router_open(&f);
	cr_assert(serve_until(&f, blocks_back), "the Python worker never came back");
	cr_assert_eq(f.s.conns[0].kv.stats.gaps, 0);
	cr_assert_eq(write(f.go[1], "x", 1), 1);
	cr_assert(serve_until(&f, worker_gone));
	cr_assert_eq(waitpid(pid, &status, 0), pid);
	cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0, "python exit %d", status);
	fx_close(&f);
}
