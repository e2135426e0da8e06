/*
 * pdrouter end to end when something breaks (DESIGN.md, "Request lifecycle", failure paths): a
 * prefill worker that fails, dies or times out (fallback, or -EPERM when disaggregation is
 * enforced), a decode worker killed before its first token (retried elsewhere) and after it
 * (-ECONNRESET), a decode timeout, a worker that writes garbage into its lane, a worker that
 * leaves with its cache, a router restarted
 * under live workers, and SIGTERM with a request in flight. Real processes (daemon_fixture.h);
 * workers are killed with signals.
 */
#include <criterion/criterion.h>
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "daemon_fixture.h"
#include "pdworker.h"

#define PROMPT 256u /* tokens: four of pdmock's blocks */

TestSuite(daemon_faults, .init = t_daemon_init, .fini = t_daemon_fini, .timeout = 120);

/*
 * A prefill worker's ERROR answer must end the prefill stage at once. A regression guard: an
 * earlier dp_req_answer() (dataplane/request.c) took the ERROR for a stray answer, since it
 * required (type == PREFILLED) == (state == PREFILL), and dropped it; the request then waited
 * for the 30 s prefill timeout, and these two tests saw nothing within their deadline.
 */
Test(daemon_faults, prefill_error_falls_back_unless_the_request_enforces_disagg)
{
	uint32_t tok[PROMPT], decode;
	struct t_result fb = {0}, enf = {0};
	struct pdc_request_args a;
	struct pdc_client *c;
	uint32_t ended = 0;

	t_router_start(NULL);
	t_worker("prefill", "--fail-prefill", "100", NULL);
	decode = t_worker("decode", NULL);
	t_wait_pools(T_MODEL, 1, 1, 0);
	c = t_connect();
	t_prompt(tok, PROMPT, 1);
	/* Both at once, so that a router that hangs on them costs one deadline, not two. */
	a = t_args(1, tok, PROMPT, 6, PDC_STREAM);
	cr_assert_eq(pdc_send(c, &a), 0);
	a = t_args(2, tok, PROMPT, 6, PDC_ENFORCE_DISAGG);
	cr_assert_eq(pdc_send(c, &a), 0);
	while (ended < 2) {
		struct pdc_event ev;
		int rc = t_next(c, &ev);

		cr_assert_eq(rc, 0,
			     "%u of 2 requests ended after the prefill failed, then: %s "
			     "(answers_stray %llu)",
			     ended, strerror(-rc), (unsigned long long)t_counter("answers_stray"));
		cr_assert(ev.id == 1 || ev.id == 2);
		t_result_add(ev.id == 1 ? &fb : &enf, &ev);
		ended += (ev.id == 1 ? &fb : &enf)->ended;
	}
	t_assert_served(&fb, PROMPT, 6);
	cr_assert_eq(fb.routed.plan, PDC_PLAN_FALLBACK, "plan %u after a failed prefill",
		     fb.routed.plan);
	cr_assert_eq(fb.routed.prefill_worker, PDC_NO_WORKER);
	cr_assert_eq(fb.routed.worker, decode);
	t_assert_error(&enf, -EPERM);
	cr_assert_eq(t_counter("fallbacks"), 1);
	cr_assert_eq(t_counter("timeouts"), 0, "the prefill failure was only noticed by timeout");
	cr_assert_eq(t_counter("answers_stray"), 0);
	pdc_close(c);
	t_router_stop();
}

/* The same failure under the router's --enforce-disagg: -EPERM, and no decode worker is
 * posted to. */
Test(daemon_faults, prefill_error_under_enforce_disagg_fails_with_eperm)
{
	uint32_t tok[PROMPT], decode;
	struct pdc_request_args a;
	struct pdc_client *c;
	struct t_target tg;
	struct t_result r;

	t_router_start("--enforce-disagg", NULL);
	t_worker("prefill", "--fail-prefill", "100", NULL);
	decode = t_worker("decode", NULL);
	t_wait_pools(T_MODEL, 1, 1, 0);
	c = t_connect();
	t_prompt(tok, PROMPT, 2);
	a = t_args(1, tok, PROMPT, 6, PDC_STREAM);
	t_run(c, &a, &r);
	t_assert_error(&r, -EPERM);
	cr_assert(!r.ntokens);
	cr_assert_eq(t_counter("fallbacks"), 0);
	cr_assert_eq(t_counter("timeouts"), 0, "the prefill failure was only noticed by timeout");
	cr_assert(t_target(decode, &tg));
	cr_assert_eq(tg.cached_blocks, 0, "the decode worker served the request");
	cr_assert_eq(tg.active_blocks, 0);
	pdc_close(c);
	t_router_stop();
}

/* Send request @id for @tag's prompt, streaming, and read its first answer into @r. */
static void send_first(struct pdc_client *c, uint64_t id, uint32_t tag, uint32_t max_tokens,
		       struct t_result *r)
{
	uint32_t tok[PROMPT];
	struct pdc_request_args a;
	struct pdc_event ev;

	t_prompt(tok, PROMPT, tag);
	a = t_args(id, tok, PROMPT, max_tokens, PDC_STREAM);
	cr_assert_eq(pdc_send(c, &a), 0);
	cr_assert_eq(t_next(c, &ev), 0, "no answer to request %llu", (unsigned long long)id);
	cr_assert_eq(ev.id, id);
	memset(r, 0, sizeof(*r));
	t_result_add(r, &ev);
}

/* A prefill worker that dies holding the prefill: the request is served decode-only. Before
 * the decode stage no ROUTED has been sent, so the client only ever sees the fallback. */
Test(daemon_faults, prefill_worker_death_falls_back_to_decode_only)
{
	uint32_t tok[PROMPT], prefill, decode;
	struct pdc_request_args a;
	struct pdc_client *c;
	struct t_target tg;
	struct t_result r = {0};

	t_router_start(NULL);
	prefill = t_worker("prefill", "--stall-ms", T_STALL, NULL);
	decode = t_worker("decode", NULL);
	t_wait_pools(T_MODEL, 1, 1, 0);
	c = t_connect();
	t_prompt(tok, PROMPT, 5);
	a = t_args(1, tok, PROMPT, 6, PDC_STREAM);
	cr_assert_eq(pdc_send(c, &a), 0);
	T_WAIT(t_target(prefill, &tg) && tg.prefill_tokens == PROMPT,
	       "the prefill stage to be booked on the prefill worker");
	t_worker_kill(prefill, SIGKILL);
	t_collect(c, 1, &r);
	t_assert_served(&r, PROMPT, 6);
	cr_assert_eq(r.routed.plan, PDC_PLAN_FALLBACK);
	cr_assert_eq(r.routed.worker, decode);
	cr_assert_eq(t_counter("fallbacks"), 1);
	pdc_close(c);
	t_router_stop();
}

/* A prefill that does not answer within --prefill-timeout-ms falls back too; a generation that
 * does not finish within --decode-timeout-ms fails with -ETIMEDOUT. */
Test(daemon_faults, stage_timeouts_fall_back_from_prefill_and_fail_the_decode)
{
	uint32_t decode;
	struct pdc_client *c;
	struct t_target tg;
	struct t_result r;

	t_router_start("--prefill-timeout-ms", "300", "--decode-timeout-ms", "300", NULL);
	t_worker("prefill", "--stall-ms", T_STALL, NULL);
	decode = t_worker("decode", "--stall-ms", T_STALL, NULL);
	t_wait_pools(T_MODEL, 1, 1, 0);
	c = t_connect();
	send_first(c, 1, 6, 4, &r);
	cr_assert(r.routed_seen, "no ROUTED first (error %d)", r.error);
	cr_assert_eq(r.routed.plan, PDC_PLAN_FALLBACK, "plan %u after a prefill timeout",
		     r.routed.plan);
	cr_assert_eq(r.routed.worker, decode);
	t_collect(c, 1, &r);
	t_assert_error(&r, -ETIMEDOUT);
	cr_assert_eq(t_counter("timeouts"), 2);
	cr_assert_eq(t_counter("fallbacks"), 1);
	T_WAIT(t_target(decode, &tg) && !tg.active_blocks, "the timed-out decode's load released");
	pdc_close(c);
	t_router_stop();
}

/*
 * A decode worker that holds its requests (--stall-ms) is SIGKILLed after ROUTED named it and
 * before its first token; a healthy decode worker of the same rack has joined meanwhile. The
 * router re-routes the decode stage there (one decode retry): the client gets every token,
 * and no second ROUTED.
 */
Test(daemon_faults, decode_death_before_first_token_retries_on_another_worker)
{
	uint32_t prefill, stalled, healthy;
	struct pdc_client *c;
	struct t_target tg;
	struct t_result r;

	t_router_start("--kv-transfer-domain", "rack", NULL);
	prefill = t_worker("prefill", "--domain", "rack=r1", NULL);
	stalled = t_worker("decode", "--domain", "rack=r1", "--stall-ms", T_STALL, NULL);
	t_wait_pools(T_MODEL, 1, 1, 0);
	c = t_connect();
	send_first(c, 1, 3, 8, &r);
	cr_assert(r.routed_seen, "no ROUTED first (error %d)", r.error);
	cr_assert_eq(r.routed.plan, PDC_PLAN_DISAGG);
	cr_assert_eq(r.routed.prefill_worker, prefill);
	cr_assert_eq(r.routed.worker, stalled);

	healthy = t_worker("decode", "--domain", "rack=r1", NULL);
	t_wait_pools(T_MODEL, 1, 2, 0);
	t_worker_kill(stalled, SIGKILL);
	t_collect(c, 1, &r);
	t_assert_served(&r, PROMPT, 8);
	cr_assert_eq(t_counter("decode_retries"), 1);
	cr_assert_eq(t_counter("completed"), 1);
	cr_assert_eq(t_counter("errors"), 0);
	T_WAIT(!t_target(stalled, &tg), "the killed worker to leave");
	T_WAIT(t_target(healthy, &tg) && tg.cached_blocks > 0,
	       "the healthy worker's blocks: it served the retry");
	pdc_close(c);
	t_router_stop();
}

/*
 * A worker that writes garbage into its response lane (pdmock --corrupt-after: a record of a
 * type no router knows, after its first request) loses its lane and its connection; the
 * router and the other worker carry on, and every later request is served by the other one.
 */
Test(daemon_faults, garbage_in_a_lane_disconnects_that_worker_only)
{
	uint32_t tok[PROMPT], bad, good;
	struct pdc_client *c;
	struct t_target tg;

	t_router_start(NULL);
	bad = t_worker("aggregated", "--corrupt-after", "1", NULL);
	c = t_connect();
	t_prompt(tok, PROMPT, 1);
	{
		struct pdc_request_args a = t_args(1, tok, PROMPT, 4, 0);
		struct t_result r = {0};

		t_run(c, &a, &r);
		t_assert_served(&r, PROMPT, 4);
		cr_assert_eq(r.routed.worker, bad);
	}
	T_WAIT(!t_target(bad, &tg), "the worker that wrote garbage to be dropped");
	cr_assert_eq(t_counter("lanes_broken"), 1);
	good = t_worker("aggregated", NULL);
	for (uint64_t id = 2; id < 6; id++) {
		struct pdc_request_args a = t_args(id, tok, PROMPT, 4, PDC_STREAM);
		struct t_result r = {0};

		t_run(c, &a, &r);
		t_assert_served(&r, PROMPT, 4);
		cr_assert_eq(r.routed.worker, good);
	}
	pdc_close(c);
	t_router_stop();
}

/*
 * A worker (here in the test, on libpdworker) that never reads its requests and then writes a
 * bad index into its request ring while the router has posts waiting for room there: the
 * router gives the lane up between requests, never while posting one (a router that did
 * failed the same request twice and crashed), and every request gets exactly one answer.
 */
Test(daemon_faults, corrupt_request_ring_with_posts_waiting_answers_each_request_once)
{
	static uint32_t tok[131072]; /* 512 KiB a request: three fill the 2 MiB lane ring */
	struct pdw_register_args args = {
		.fixed = {.worker_type = PDW_AGGREGATED, .model_type = PDW_MODEL_CHAT,
			  .block_size = T_BLOCK, .kv_capacity_blocks = 16384,
			  .max_batched_tokens = 8192, .dp_ranks = 1},
		.model = T_MODEL, .endpoint = "hostile"};
	bool ended[7] = {false};
	struct pdc_client *c;
	struct pdw w;
	uint32_t n = 0;

	t_router_start(NULL);
	cr_assert_eq(pdw_connect(&w, t_d.control_path), 0);
	cr_assert_eq(pdw_register(&w, &args, T_DEADLINE_MS), 0);
	t_wait_pools(T_MODEL, 0, 0, 1);
	c = t_connect();
	for (uint32_t i = 0; i < 131072; i++)
		tok[i] = i;
	for (uint64_t id = 1; id <= 6; id++) {
		struct pdc_request_args a = t_args(id, tok, 131072, 4, 0);

		cr_assert_eq(pdc_send(c, &a), 0);
	}
	T_WAIT((pdw_heartbeat(&w), t_counter("lane_full_waits") > 0), "posts waiting for room");
	/* An unaligned tail: the ring's producer (the router) must give it up. */
	atomic_store_explicit(&w.mbox.req[0].sh->tail, 4, memory_order_relaxed);
	while (n < 6) {
		struct pdc_event ev;

		pdw_heartbeat(&w);
		cr_assert_eq(t_next(c, &ev), 0, "%u of 6 requests answered", n);
		cr_assert(ev.id >= 1 && ev.id <= 6);
		if (ev.type != PDC_ERROR && ev.type != PDC_DONE)
			continue;
		cr_assert(!ended[ev.id], "request %llu ended twice", (unsigned long long)ev.id);
		cr_assert_eq(ev.type, PDC_ERROR, "the only worker broke: nothing can be served");
		ended[ev.id] = true;
		n++;
	}
	cr_assert_eq(t_counter("lanes_broken"), 1);
	pdc_close(c);
	pdw_close(&w);
	t_router_stop(); /* exits 0: it survived */
}

/*
 * Draining a prefill worker whose prefill is in flight (pdctl drain): no new request goes to
 * it, but the one it holds finishes disaggregated, its decode routed under the drained
 * worker's rule, and its plan stays DISAGG even under --enforce-disagg.
 */
Test(daemon_faults, drained_prefill_worker_finishes_its_prefill_disaggregated)
{
	uint32_t tok[PROMPT], prefill;
	struct pdc_request_args a;
	struct pdc_client *c;
	struct t_result r = {0};
	char cmd[32], *ans;

	t_router_start("--enforce-disagg", NULL);
	prefill = t_worker("prefill", "--stall-ms", "500", NULL);
	t_worker("decode", NULL);
	t_wait_pools(T_MODEL, 1, 1, 0);
	c = t_connect();
	t_prompt(tok, PROMPT, 9);
	a = t_args(1, tok, PROMPT, 4, PDC_STREAM);
	cr_assert_eq(pdc_send(c, &a), 0);
	T_WAIT(t_counter("disagg") == 1, "the request to reach the prefill worker");
	snprintf(cmd, sizeof(cmd), "drain %u\n", prefill);
	ans = t_admin(cmd);
	cr_assert(strstr(ans, "\"drained\""), "drain: %s", ans);
	free(ans);
	t_collect(c, 1, &r);
	t_assert_served(&r, PROMPT, 4);
	cr_assert_eq(r.routed.plan, PDC_PLAN_DISAGG, "plan %u after the drain", r.routed.plan);
	cr_assert_eq(r.routed.prefill_worker, prefill);
	cr_assert_eq(t_counter("fallbacks"), 0);
	pdc_close(c);
	t_router_stop();
}

/* A decode worker that streams slowly is SIGKILLed after its first token: tokens cannot be
 * taken back, so the client gets -ECONNRESET after some of them, and nothing is retried. */
Test(daemon_faults, decode_death_after_first_token_fails_with_econnreset)
{
	uint32_t slow;
	struct pdc_client *c;
	struct pdc_event ev;
	struct t_result r;

	t_router_start(NULL);
	t_worker("prefill", NULL);
	slow = t_worker("decode", "--speedup", "0.2", NULL); /* ~100 ms a token */
	t_wait_pools(T_MODEL, 1, 1, 0);
	c = t_connect();
	send_first(c, 1, 4, 200, &r);
	while (!r.ntokens && !r.ended) {
		cr_assert_eq(t_next(c, &ev), 0);
		t_result_add(&r, &ev);
	}
	cr_assert_gt(r.ntokens, 0, "no token before the end: error %d", r.error);
	cr_assert_eq(r.routed.worker, slow);
	t_worker_kill(slow, SIGKILL);
	t_collect(c, 1, &r);
	t_assert_error(&r, -ECONNRESET);
	cr_assert_lt(r.ntokens, 200);
	cr_assert_eq(r.wrong, 0);
	cr_assert_eq(t_counter("decode_retries"), 0);
	cr_assert_eq(t_counter("worker_failed"), 1);
	pdc_close(c);
	t_router_stop();
}

/* Serve @tag's prompt pinned to @worker, and wait until its blocks are in the index. */
static void fill_cache(struct pdc_client *c, uint64_t id, uint32_t worker, uint32_t tag)
{
	uint32_t tok[PROMPT];
	struct pdc_request_args a;
	struct t_target tg;
	struct t_result r;

	t_prompt(tok, PROMPT, tag);
	a = t_args(id, tok, PROMPT, 2, 0);
	a.fixed.pin_worker = worker;
	t_run(c, &a, &r);
	t_assert_served(&r, PROMPT, 2);
	cr_assert_eq(r.routed.worker, worker);
	T_WAIT(t_target(worker, &tg) && tg.cached_blocks >= PROMPT / T_BLOCK,
	       "the worker's blocks in the index");
}

/* The overlap the router finds for @tag's prompt (a PEEK: nothing is served). */
static uint32_t peek_overlap(struct pdc_client *c, uint64_t id, uint32_t tag)
{
	uint32_t tok[PROMPT];
	struct pdc_request_args a;
	struct pdc_event ev;

	t_prompt(tok, PROMPT, tag);
	a = t_args(id, tok, PROMPT, 2, PDC_PEEK);
	cr_assert_eq(pdc_send(c, &a), 0);
	cr_assert_eq(t_next(c, &ev), 0);
	cr_assert_eq(ev.type, PDC_ROUTED, "a peek answered with type %u", ev.type);
	cr_assert_eq(ev.id, id);
	return ev.routed.overlap_blocks;
}

/*
 * Three aggregated workers each hold a prompt. One leaves on SIGTERM, one is SIGKILLed: each
 * disappears from the targets, and its prompt no longer finds cached blocks anywhere, while the
 * third keeps its blocks and its prompt's overlap.
 */
Test(daemon_faults, leaving_worker_takes_its_blocks_and_spares_the_others)
{
	uint32_t w[3];
	struct pdc_client *c;
	struct t_target tg;
	uint64_t kept;

	t_router_start(NULL);
	for (uint32_t k = 0; k < 3; k++)
		w[k] = t_worker("aggregated", NULL);
	t_wait_pools(T_MODEL, 0, 0, 3);
	c = t_connect();
	for (uint32_t k = 0; k < 3; k++)
		fill_cache(c, k + 1, w[k], 10 + k);
	cr_assert(t_target(w[2], &tg));
	kept = tg.cached_blocks;
	cr_assert_eq(peek_overlap(c, 10, 10), PROMPT / T_BLOCK);

	t_worker_kill(w[0], SIGTERM);
	T_WAIT(!t_target(w[0], &tg), "the worker that left on SIGTERM to leave the targets");
	cr_assert_eq(peek_overlap(c, 11, 10), 0, "the gone worker's blocks are still matched");
	t_worker_kill(w[1], SIGKILL);
	T_WAIT(!t_target(w[1], &tg), "the SIGKILLed worker to leave the targets");
	cr_assert_eq(peek_overlap(c, 12, 11), 0, "the killed worker's blocks are still matched");
	t_wait_pools(T_MODEL, 0, 0, 1);

	cr_assert(t_target(w[2], &tg), "the remaining worker left too");
	cr_assert_eq(tg.cached_blocks, kept, "the remaining worker's blocks changed");
	cr_assert_eq(peek_overlap(c, 13, 12), PROMPT / T_BLOCK);
	pdc_close(c);
	t_router_stop();
}

/*
 * Workers outlive their router: pdmock --reconnect-ms registers with the next router on the
 * same control socket and dumps its cache there. After a restart the targets show cached
 * blocks again, and a repeated prompt is routed with its overlap.
 */
Test(daemon_faults, restarted_router_takes_back_live_workers_and_their_caches)
{
	struct t_target t[T_MAX_WORKERS];
	uint32_t tok[PROMPT], n;
	struct pdc_request_args a;
	struct pdc_client *c;
	struct t_result r;

	t_router_start(NULL);
	for (uint32_t k = 0; k < 2; k++)
		t_worker("aggregated", "--reconnect-ms", "10000", NULL);
	t_wait_pools(T_MODEL, 0, 0, 2);
	c = t_connect();
	for (uint32_t k = 0; k < 4; k++) {
		t_prompt(tok, PROMPT, 20 + k);
		a = t_args(k + 1, tok, PROMPT, 2, 0);
		t_run(c, &a, &r);
		t_assert_served(&r, PROMPT, 2);
	}
	pdc_close(c);

	t_router_stop();
	t_router_restart();
	t_wait_pools(T_MODEL, 0, 0, 2);
	T_WAIT((n = t_targets(t, T_MAX_WORKERS)) == 2 && t[0].cached_blocks > 0 &&
		   t[1].cached_blocks > 0,
	       "both workers' caches replayed to the new router");
	c = t_connect();
	t_prompt(tok, PROMPT, 21);
	a = t_args(9, tok, PROMPT, 3, PDC_STREAM);
	t_run(c, &a, &r);
	t_assert_served(&r, PROMPT, 3);
	cr_assert_eq(r.routed.overlap_blocks, PROMPT / T_BLOCK,
		     "a prompt served before the restart: overlap %u", r.routed.overlap_blocks);
	pdc_close(c);
	t_router_stop();
}

/* SIGTERM with a request held by a worker: the client gets -ESHUTDOWN for it, then the
 * connection closes; the router exits 0 and removes its sockets (t_router_stop() checks). */
Test(daemon_faults, sigterm_answers_in_flight_with_eshutdown_and_exits_clean)
{
	struct pdc_client *c;
	struct pdc_event ev;
	struct t_result r;

	t_router_start(NULL);
	t_worker("aggregated", "--stall-ms", T_STALL, NULL);
	t_wait_pools(T_MODEL, 0, 0, 1);
	c = t_connect();
	send_first(c, 1, 30, 4, &r);
	cr_assert(r.routed_seen, "no ROUTED first (error %d)", r.error);
	t_router_stop();
	t_collect(c, 1, &r);
	t_assert_error(&r, -ESHUTDOWN);
	cr_assert_eq(t_next(c, &ev), -ECONNRESET, "the connection stayed open");
	pdc_close(c);
}
