/*
 * libpdworker (shm/pdworker.h) against the router's real control socket (control/server.h):
 * a forked worker process connects, registers, publishes KV events and load through its
 * mailbox; the router's index and registry see them; when the worker exits, its blocks go.
 * A refused registration comes back as -EPERM with the router's reason.
 */
#define _GNU_SOURCE
#include <criterion/criterion.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <signal.h>
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
};

static uint64_t now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static void fx_open(struct fx *f)
{
	struct ctl_server_config cfg = {0};

	strcpy(f->dir, "/tmp/pdr-pdw-XXXXXX");
	cr_assert_not_null(mkdtemp(f->dir));
	snprintf(f->path, sizeof(f->path), "%s/control.sock", f->dir);
	t_route_open(&f->t, NULL);
	cfg.path = f->path;
	cfg.mbox = (struct shm_mbox_config){.lane_ring_bytes = 4096, .event_ring_bytes = 65536};
	cr_assert_eq(ctl_server_open(&f->s, &cfg, &f->t.rt, &f->t.x), 0);
	cr_assert_eq(pipe(f->go), 0);
}

static void fx_close(struct fx *f)
{
	close(f->go[0]);
	close(f->go[1]);
	ctl_server_close(&f->s);
	t_route_close(&f->t);
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

/* shm/python/example_worker.py, through the ctypes binding and the shared libpdworker, does
 * what the C example does. Skipped where there is no python3. */
Test(pdworker, python_example_worker_registers_publishes_and_leaves_on_sigterm)
{
	char script[512];
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
 * percent of prefills failing; returns its pid once it has registered. */
static pid_t start_pdmock(struct fx *f, const char *mode, const char *fail)
{
	pid_t pid = fork();

	cr_assert_geq(pid, 0);
	if (pid == 0) {
		execl(PD_PDMOCK, "pdmock", "--socket", f->path, "--model", "m", "--mode", mode,
		      "--block-size", "16", "--capacity", "256", "--max-running", "8",
		      "--speedup", "1000", "--fail-prefill", fail, (char *)NULL);
		_exit(127);
	}
	cr_assert(serve_until(f, registered), "pdmock never registered");
	return pid;
}

static void stop_pdmock(struct fx *f, pid_t pid)
{
	int status;

	cr_assert_eq(kill(pid, SIGTERM), 0);
	cr_assert(serve_until(f, worker_gone));
	cr_assert_eq(waitpid(pid, &status, 0), pid);
	cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0, "pdmock exit %d", status);
}

/* Send @req (params @params) to the one worker and collect its answers until DONE, PREFILLED
 * or ERROR; returns that last answer, *@tokens the tokens before it, @blob its data. */
static struct shm_lane_answer ask(struct fx *f, struct shm_lane_request *req, const char *params,
				  uint32_t *tokens, char *blob, size_t cap)
{
	struct ctl_conn *conn = &f->s.conns[0];
	uint32_t prompt[40];
	struct shm_lane_answer a = {0};
	uint64_t end = now_ns() + 5000000000ull;

	for (uint32_t i = 0; i < 40; i++)
		prompt[i] = 500 + i;
	req->ntokens = 40;
	cr_assert_eq(shm_lane_put_request(&conn->mbox.req[0], req, prompt, params), 0);
	shm_ring_publish(&conn->mbox.req[0]);
	shm_mbox_ring_doorbell(&conn->mbox);
	*tokens = 0;
	while (now_ns() < end) {
		struct shm_rec rec;

		cr_assert_geq(ctl_server_poll(&f->s, 1, now_ns()), 0);
		while (shm_ring_peek(&conn->mbox.resp[0], &rec) == 0) {
			cr_assert_eq(shm_lane_check_answer(rec.type, rec.payload, rec.len, &a), 0);
			cr_assert_eq(a.request_id, req->request_id);
			*tokens += a.type == SHM_LANE_TOKENS ? a.n : 0;
			if (a.type != SHM_LANE_TOKENS) {
				memcpy(blob, a.data, a.n < cap - 1 ? a.n : cap - 1);
				blob[a.n < cap - 1 ? a.n : cap - 1] = '\0';
			}
			shm_ring_consume(&conn->mbox.resp[0]);
			shm_ring_release(&conn->mbox.resp[0]);
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
