/*
 * pdrouter end to end, the paths that serve (DESIGN.md, "Request lifecycle"): a disaggregated
 * model across two racks under --kv-transfer-domain rack, streaming and not, many requests on
 * one connection; an aggregated model and its cache; a model whose prefill pool appears after
 * traffic started; and the topology rule, required (fail closed) and preferred. The router and
 * pdmock workers run as processes (daemon_fixture.h); pdmock generates 1000, 1001, ..., so
 * every token is checked.
 */
#include <criterion/criterion.h>
#include <errno.h>
#include <string.h>

#include "daemon_fixture.h"

#define PROMPT 256u /* tokens: four of pdmock's blocks */
#define NFLIGHT 32u

TestSuite(daemon_flow, .init = t_daemon_init, .fini = t_daemon_fini, .timeout = 120);

/* A prefill and a decode worker in each of racks r1 and r2; the transfer must stay in one. */
static void start_two_racks(void)
{
	t_router_start("--kv-transfer-domain", "rack", NULL);
	t_worker("prefill", "--domain", "rack=r1", NULL);
	t_worker("prefill", "--domain", "rack=r2", NULL);
	t_worker("decode", "--domain", "rack=r1", NULL);
	t_worker("decode", "--domain", "rack=r2", NULL);
	t_wait_pools(T_MODEL, 2, 2, 0);
}

/* Find @worker among @t[0..n). */
static const struct t_target *find(const struct t_target *t, uint32_t n, uint32_t worker)
{
	for (uint32_t k = 0; k < n; k++)
		if (t[k].worker == worker)
			return &t[k];
	cr_assert_fail("the router lists no worker %u", worker);
	return NULL;
}

/* A disaggregated ROUTED: a prefill and a decode worker of one rack, which is returned. */
static const char *assert_one_rack(const struct pdc_routed *r, const struct t_target *t, uint32_t n)
{
	const struct t_target *p, *d;

	cr_assert_eq(r->plan, PDC_PLAN_DISAGG, "plan %u, not disaggregated", r->plan);
	p = find(t, n, r->prefill_worker);
	d = find(t, n, r->worker);
	cr_assert_str_eq(p->type, "prefill");
	cr_assert_str_eq(d->type, "decode");
	cr_assert_str_eq(p->rack, d->rack, "prefill in rack %s, decode in rack %s", p->rack,
			 d->rack);
	return p->rack;
}

Test(daemon_flow, disagg_streams_exact_tokens_from_one_rack)
{
	struct t_target t[T_MAX_WORKERS];
	uint32_t tok[PROMPT], n;
	struct pdc_request_args a;
	struct pdc_client *c;
	struct t_result r;

	start_two_racks();
	c = t_connect();
	t_prompt(tok, PROMPT, 1);
	a = t_args(1, tok, PROMPT, 16, PDC_STREAM);
	t_run(c, &a, &r);
	t_assert_served(&r, PROMPT, 16);
	cr_assert_gt(r.frames, 1, "a streamed request got its tokens in %u frame", r.frames);
	n = t_targets(t, T_MAX_WORKERS);
	assert_one_rack(&r.routed, t, n);
	cr_assert_eq(t_counter("disagg"), 1);
	cr_assert_eq(t_counter("completed"), 1);
	pdc_close(c);
	t_router_stop();
}

Test(daemon_flow, disagg_without_stream_sends_every_token_in_one_frame_before_done)
{
	struct t_target t[T_MAX_WORKERS];
	uint32_t tok[PROMPT], n;
	struct pdc_request_args a;
	struct pdc_client *c;
	struct t_result r;

	start_two_racks();
	c = t_connect();
	t_prompt(tok, PROMPT, 2);
	a = t_args(7, tok, PROMPT, 24, 0);
	t_run(c, &a, &r);
	t_assert_served(&r, PROMPT, 24);
	cr_assert_eq(r.frames, 1, "%u TOKENS frames without STREAM", r.frames);
	n = t_targets(t, T_MAX_WORKERS);
	assert_one_rack(&r.routed, t, n);
	pdc_close(c);
	t_router_stop();
}

/* NFLIGHT requests sent at once on one connection, half streaming, each with its own prompt
 * and length: each gets its own answers, exact, and the load spreads over both racks. */
Test(daemon_flow, disagg_serves_many_requests_in_flight_on_one_connection)
{
	static uint32_t tok[NFLIGHT][PROMPT];
	struct t_result r[NFLIGHT] = {0};
	struct t_target t[T_MAX_WORKERS];
	uint32_t ended = 0, n, in_r1 = 0;
	struct pdc_client *c;

	start_two_racks();
	c = t_connect();
	for (uint32_t k = 0; k < NFLIGHT; k++) {
		struct pdc_request_args a;

		t_prompt(tok[k], PROMPT, 100 + k);
		a = t_args(k + 1, tok[k], PROMPT, 4 + k % 8, k % 2 ? PDC_STREAM : 0);
		cr_assert_eq(pdc_send(c, &a), 0);
	}
	while (ended < NFLIGHT) {
		struct pdc_event ev;
		int rc = t_next(c, &ev);

		cr_assert_eq(rc, 0, "%u of %u requests ended, then: %s", ended, NFLIGHT,
			     strerror(-rc));
		cr_assert(ev.id >= 1 && ev.id <= NFLIGHT, "an answer for request %llu",
			  (unsigned long long)ev.id);
		t_result_add(&r[ev.id - 1], &ev);
		ended += r[ev.id - 1].ended;
	}
	n = t_targets(t, T_MAX_WORKERS);
	for (uint32_t k = 0; k < NFLIGHT; k++) {
		t_assert_served(&r[k], PROMPT, 4 + k % 8);
		in_r1 += !strcmp(assert_one_rack(&r[k].routed, t, n), "r1");
	}
	cr_expect(in_r1 > 0 && in_r1 < NFLIGHT, "%u of %u requests went to rack r1", in_r1,
		  NFLIGHT);
	cr_assert_eq(t_counter("completed"), NFLIGHT);
	pdc_close(c);
	t_router_stop();
}

/* Aggregated workers only: plan aggregated, no prefill stage, and a repeated prompt goes to
 * the worker that holds it, whose blocks the DONE counts as cached. */
Test(daemon_flow, aggregated_serves_exact_tokens_and_reuses_the_cache)
{
	uint32_t tok[PROMPT];
	struct pdc_request_args a;
	struct pdc_client *c;
	struct t_target tg;
	struct t_result r;
	uint32_t first;

	t_router_start(NULL);
	t_worker("aggregated", NULL);
	t_worker("aggregated", NULL);
	t_wait_pools(T_MODEL, 0, 0, 2);
	c = t_connect();
	t_prompt(tok, PROMPT, 3);
	a = t_args(1, tok, PROMPT, 8, PDC_STREAM);
	t_run(c, &a, &r);
	t_assert_served(&r, PROMPT, 8);
	cr_assert_eq(r.routed.plan, PDC_PLAN_AGGREGATED);
	cr_assert_eq(r.routed.prefill_worker, PDC_NO_WORKER);
	cr_assert_eq(r.routed.overlap_blocks, 0);
	first = r.routed.worker;
	cr_assert(t_target(first, &tg) && !strcmp(tg.type, "aggregated"));
	/* The worker's KV events reach the index after the request ends. */
	T_WAIT(t_target(first, &tg) && tg.cached_blocks >= PROMPT / T_BLOCK,
	       "the worker's blocks in the index");
	a = t_args(2, tok, PROMPT, 8, 0);
	t_run(c, &a, &r);
	t_assert_served(&r, PROMPT, 8);
	cr_assert_eq(r.routed.worker, first, "the repeated prompt went to worker %u, not %u",
		     r.routed.worker, first);
	cr_assert_eq(r.routed.overlap_blocks, PROMPT / T_BLOCK);
	cr_assert_eq(r.done.cached_tokens, PROMPT);
	cr_assert_eq(t_counter("disagg"), 0);
	pdc_close(c);
	t_router_stop();
}

/*
 * Decode workers alone cannot prefill for a disaggregated model: the router serves it
 * decode-only (plan FALLBACK) and says the prefill stage is inactive. Once a prefill worker
 * registers, the stage activates and requests go through it.
 */
Test(daemon_flow, decode_only_model_falls_back_until_a_prefill_worker_joins)
{
	uint32_t tok[PROMPT], decode, prefill;
	struct pdc_request_args a;
	struct pdc_client *c;
	struct t_pools pools;
	struct t_result r;

	t_router_start(NULL);
	decode = t_worker("decode", NULL);
	t_wait_pools(T_MODEL, 0, 1, 0);
	cr_assert(t_pools(T_MODEL, &pools) && !pools.prefill_active);
	c = t_connect();
	t_prompt(tok, PROMPT, 4);
	a = t_args(1, tok, PROMPT, 5, PDC_STREAM);
	t_run(c, &a, &r);
	t_assert_served(&r, PROMPT, 5);
	cr_assert_eq(r.routed.plan, PDC_PLAN_FALLBACK, "plan %u without prefill workers",
		     r.routed.plan);
	cr_assert_eq(r.routed.prefill_worker, PDC_NO_WORKER);
	cr_assert_eq(r.routed.worker, decode);
	cr_assert_eq(t_counter("fallbacks"), 1);

	prefill = t_worker("prefill", NULL);
	t_wait_pools(T_MODEL, 1, 1, 0);
	T_WAIT(t_pools(T_MODEL, &pools) && pools.prefill_active, "the prefill stage to activate");
	t_prompt(tok, PROMPT, 5);
	a = t_args(2, tok, PROMPT, 5, 0);
	t_run(c, &a, &r);
	t_assert_served(&r, PROMPT, 5);
	cr_assert_eq(r.routed.plan, PDC_PLAN_DISAGG, "plan %u with a prefill worker",
		     r.routed.plan);
	cr_assert_eq(r.routed.prefill_worker, prefill);
	cr_assert_eq(r.routed.worker, decode);
	cr_assert_eq(t_counter("fallbacks"), 1);
	cr_assert_eq(t_counter("disagg"), 1);
	pdc_close(c);
	t_router_stop();
}

/* Prefill only in r1, decode only in r2, the transfer required in one rack: the request fails
 * closed with -EXDEV before any worker sees it. */
Test(daemon_flow, required_topology_refuses_with_exdev_and_dispatches_nothing)
{
	uint32_t tok[PROMPT], prefill, decode;
	struct pdc_request_args a;
	struct pdc_client *c;
	struct t_target tg;
	struct t_result r;

	t_router_start("--kv-transfer-domain", "rack", "--kv-transfer-enforcement", "required",
		       NULL);
	prefill = t_worker("prefill", "--domain", "rack=r1", NULL);
	decode = t_worker("decode", "--domain", "rack=r2", NULL);
	t_wait_pools(T_MODEL, 1, 1, 0);
	c = t_connect();
	t_prompt(tok, PROMPT, 6);
	a = t_args(1, tok, PROMPT, 4, PDC_STREAM);
	t_run(c, &a, &r);
	t_assert_error(&r, -EXDEV);
	cr_assert(!r.routed_seen && !r.ntokens, "a refused request was routed");
	cr_assert_eq(t_counter("disagg"), 0, "the prefill stage was posted");
	cr_assert_eq(t_counter("fallbacks"), 0);
	cr_assert_eq(t_counter("completed"), 0);
	/* Nothing was prefilled, nothing is booked. */
	cr_assert(t_target(prefill, &tg));
	cr_assert_eq(tg.cached_blocks, 0);
	cr_assert_eq(tg.prefill_tokens, 0);
	cr_assert(t_target(decode, &tg));
	cr_assert_eq(tg.cached_blocks, 0);
	cr_assert_eq(tg.active_blocks, 0);
	/* The connection is still good for the next request, refused the same way. */
	a = t_args(2, tok, PROMPT, 4, 0);
	t_run(c, &a, &r);
	t_assert_error(&r, -EXDEV);
	pdc_close(c);
	t_router_stop();
}

/* Preferred: a cross-rack transfer is served when it is the only one; once a decode worker
 * shares the prefill worker's rack, it is the one chosen. */
Test(daemon_flow, preferred_topology_serves_across_racks_and_prefers_the_same_rack)
{
	uint32_t tok[PROMPT], prefill, far, near;
	struct pdc_request_args a;
	struct pdc_client *c;
	struct t_result r;

	t_router_start("--kv-transfer-domain", "rack", "--kv-transfer-enforcement", "preferred",
		       NULL);
	prefill = t_worker("prefill", "--domain", "rack=r1", NULL);
	far = t_worker("decode", "--domain", "rack=r2", NULL);
	t_wait_pools(T_MODEL, 1, 1, 0);
	c = t_connect();
	t_prompt(tok, PROMPT, 7);
	a = t_args(1, tok, PROMPT, 4, PDC_STREAM);
	t_run(c, &a, &r);
	t_assert_served(&r, PROMPT, 4);
	cr_assert_eq(r.routed.plan, PDC_PLAN_DISAGG);
	cr_assert_eq(r.routed.prefill_worker, prefill);
	cr_assert_eq(r.routed.worker, far);

	near = t_worker("decode", "--domain", "rack=r1", NULL);
	t_wait_pools(T_MODEL, 1, 2, 0);
	for (uint32_t k = 0; k < 4; k++) {
		t_prompt(tok, PROMPT, 8 + k); /* fresh prompts: no decode worker holds them */
		a = t_args(2 + k, tok, PROMPT, 4, 0);
		t_run(c, &a, &r);
		t_assert_served(&r, PROMPT, 4);
		cr_assert_eq(r.routed.plan, PDC_PLAN_DISAGG);
		cr_assert_eq(r.routed.worker, near,
			     "request %u decoded on worker %u, not %u in "
			     "the prefill's rack",
			     k, r.routed.worker, near);
	}
	pdc_close(c);
	t_router_stop();
}
