/*
 * pdrouter end to end, the client's side of the protocol (docs/protocol.md): CANCEL and hanging
 * up, malformed frames (connection-level errors that end one connection only), and every
 * request-level refusal a client can provoke: a prompt over the limit, sampling parameters over
 * theirs, an unknown model, too many requests on a connection, a full request pool, a
 * duplicate id. Workers that hold their
 * requests (pdmock --stall-ms) keep requests in flight for as long as a test needs.
 */
#include <criterion/criterion.h>
#include <errno.h>
#include <string.h>

#include "daemon_fixture.h"

#define PROMPT 128u /* tokens: two of pdmock's blocks */

TestSuite(daemon_client, .init = t_daemon_init, .fini = t_daemon_fini, .timeout = 120);

/* Send request @id for @tag's prompt and read its ROUTED: it is then held by a worker. */
static void send_held(struct pdc_client *c, uint64_t id, uint32_t tag, uint32_t flags, uint32_t pin)
{
	uint32_t tok[PROMPT];
	struct pdc_request_args a;
	struct pdc_event ev;

	t_prompt(tok, PROMPT, tag);
	a = t_args(id, tok, PROMPT, 4, flags);
	a.fixed.pin_worker = pin;
	cr_assert_eq(pdc_send(c, &a), 0);
	cr_assert_eq(t_next(c, &ev), 0, "no answer to request %llu", (unsigned long long)id);
	cr_assert_eq(ev.id, id);
	cr_assert_eq(ev.type, PDC_ROUTED, "request %llu: type %u, not ROUTED",
		     (unsigned long long)id, ev.type);
}

/* Send request @id and read its one answer, which must be ERROR @error. */
static void send_refused(struct pdc_client *c, const struct pdc_request_args *a, int error)
{
	struct t_result r;

	t_run(c, a, &r);
	t_assert_error(&r, error);
	cr_assert(!r.routed_seen, "a refused request was routed");
}

/* The router books no load on @worker any more. */
static bool unloaded(uint32_t worker)
{
	struct t_target tg;

	return t_target(worker, &tg) && !tg.active_blocks && !tg.prefill_tokens;
}

/* A CANCEL of a request in flight, streaming or not, is answered DONE CANCELLED with no
 * tokens; the worker's predicted load is released; a CANCEL of an unknown id gets nothing. */
Test(daemon_client, cancel_in_flight_is_answered_done_cancelled)
{
	uint32_t tok[PROMPT], w;
	struct pdc_request_args a;
	struct pdc_client *c;
	struct pdc_event ev;
	struct t_result r;

	t_router_start(NULL);
	w = t_worker("aggregated", "--stall-ms", T_STALL, NULL);
	c = t_connect();
	send_held(c, 1, 1, PDC_STREAM, PDC_NO_WORKER);
	send_held(c, 2, 2, 0, PDC_NO_WORKER);
	for (uint64_t id = 1; id <= 2; id++) {
		r = (struct t_result){.routed_seen = true};
		cr_assert_eq(pdc_cancel(c, id), 0);
		t_collect(c, id, &r);
		cr_assert_eq(r.rc, 0);
		cr_assert(r.done_seen, "request %llu: ERROR %d, not DONE", (unsigned long long)id,
			  r.error);
		cr_assert_eq(r.done.finish_reason, PDC_FINISH_CANCELLED);
		cr_assert_eq(r.done.completion_tokens, 0);
		cr_assert_eq(r.ntokens, 0);
	}
	cr_assert_eq(t_counter("cancelled"), 2);
	T_WAIT(unloaded(w), "the cancelled requests' load to be released");
	/* Unknown now: ignored, and the next request is answered as usual (a PEEK). */
	cr_assert_eq(pdc_cancel(c, 1), 0);
	t_prompt(tok, PROMPT, 3);
	a = t_args(3, tok, PROMPT, 4, PDC_PEEK);
	cr_assert_eq(pdc_send(c, &a), 0);
	cr_assert_eq(t_next(c, &ev), 0);
	cr_assert_eq(ev.id, 3, "an answer for request %llu", (unsigned long long)ev.id);
	cr_assert_eq(ev.type, PDC_ROUTED);
	pdc_close(c);
	t_router_stop();
}

/* A CANCEL while the prefill worker holds the request: DONE CANCELLED, no ROUTED (no decode
 * worker was chosen), and the prefill's booked tokens released. */
Test(daemon_client, cancel_during_prefill_is_answered_done_cancelled)
{
	uint32_t tok[PROMPT], prefill;
	struct pdc_request_args a;
	struct pdc_client *c;
	struct t_target tg;
	struct t_result r = {0};

	t_router_start(NULL);
	prefill = t_worker("prefill", "--stall-ms", T_STALL, NULL);
	t_worker("decode", NULL);
	t_wait_pools(T_MODEL, 1, 1, 0);
	c = t_connect();
	t_prompt(tok, PROMPT, 1);
	a = t_args(1, tok, PROMPT, 4, PDC_STREAM);
	cr_assert_eq(pdc_send(c, &a), 0);
	T_WAIT(t_target(prefill, &tg) && tg.prefill_tokens == PROMPT,
	       "the prefill stage to be booked on the prefill worker");
	cr_assert_eq(pdc_cancel(c, 1), 0);
	t_collect(c, 1, &r);
	cr_assert_eq(r.rc, 0);
	cr_assert(r.done_seen, "ERROR %d, not DONE", r.error);
	cr_assert(!r.routed_seen, "ROUTED before the decode stage");
	cr_assert_eq(r.done.finish_reason, PDC_FINISH_CANCELLED);
	T_WAIT(unloaded(prefill), "the cancelled prefill's load to be released");
	cr_assert_eq(t_counter("cancelled"), 1);
	pdc_close(c);
	t_router_stop();
}

/* Hanging up cancels what the connection had in flight, releases its load, and leaves the
 * router serving new connections. */
Test(daemon_client, hangup_cancels_in_flight_and_new_connections_work)
{
	uint32_t tok[PROMPT], stalled, healthy;
	struct pdc_request_args a;
	struct pdc_client *c;
	struct t_result r;

	t_router_start(NULL);
	stalled = t_worker("aggregated", "--stall-ms", T_STALL, NULL);
	healthy = t_worker("aggregated", NULL);
	c = t_connect();
	send_held(c, 1, 1, PDC_STREAM, stalled);
	send_held(c, 2, 2, 0, stalled);
	pdc_close(c);
	T_WAIT(t_counter("cancelled") == 2, "the hung-up requests to be cancelled");
	T_WAIT(unloaded(stalled), "the hung-up requests' load to be released");
	cr_assert_eq(t_counter("completed"), 0);

	c = t_connect();
	t_prompt(tok, PROMPT, 3);
	a = t_args(1, tok, PROMPT, 5, PDC_STREAM);
	a.fixed.pin_worker = healthy;
	t_run(c, &a, &r);
	t_assert_served(&r, PROMPT, 5);
	pdc_close(c);
	t_router_stop();
}

/* A connection-level error: ERROR with id 0 and @error, then the router closes. */
static void assert_conn_error(struct pdc_client *c, int error)
{
	struct pdc_event ev;

	cr_assert_eq(t_next(c, &ev), 0, "no answer to a malformed frame");
	cr_assert_eq(ev.type, PDC_ERROR, "type %u, not ERROR", ev.type);
	cr_assert_eq(ev.id, 0, "a connection-level error with id %llu", (unsigned long long)ev.id);
	cr_assert_eq(ev.error.error, error, "ERROR %d, not %d", ev.error.error, error);
	cr_assert_eq(t_next(c, &ev), -ECONNRESET, "the connection stayed open");
}

/* Another connection, opened before, still gets its request served. */
static void assert_other_connection_served(struct pdc_client *other, uint64_t id)
{
	uint32_t tok[PROMPT];
	struct pdc_request_args a;
	struct t_result r;

	t_prompt(tok, PROMPT, (uint32_t)id);
	a = t_args(id, tok, PROMPT, 3, 0);
	t_run(other, &a, &r);
	t_assert_served(&r, PROMPT, 3);
}

/* A REQUEST frame for @tag's prompt of @n tokens in @buf; returns its length. */
static size_t encode(uint8_t *buf, size_t cap, uint64_t id, uint32_t *tok, uint32_t n)
{
	struct pdc_request_args a = t_args(id, tok, n, 2, 0);
	long len = pdc_request_encode(buf, cap, &a);

	cr_assert_gt(len, 0, "pdc_request_encode: %s", strerror((int)-len));
	return (size_t)len;
}

/* A frame written one byte at a time, then many frames in one write: the router reassembles
 * the first and cuts the others apart, and answers each. */
Test(daemon_client, frames_in_pieces_and_frames_together_are_all_served)
{
	static uint8_t buf[16 * 1024];
	uint32_t tok[PROMPT];
	struct t_result r[9] = {0};
	struct pdc_client *c;
	size_t len = 0, one;
	uint32_t ended = 0;

	t_router_start(NULL);
	t_worker("aggregated", NULL);
	c = t_connect();
	t_prompt(tok, PROMPT, 1);
	one = encode(buf, sizeof(buf), 1, tok, PROMPT);
	for (size_t k = 0; k < one; k++)
		cr_assert_eq(t_send_raw(c, buf + k, 1), 0);
	t_collect(c, 1, &r[0]);
	t_assert_served(&r[0], PROMPT, 2);
	for (uint64_t id = 2; id <= 9; id++) {
		t_prompt(tok, PROMPT, (uint32_t)id);
		len += encode(buf + len, sizeof(buf) - len, id, tok, PROMPT);
	}
	cr_assert_eq(t_send_raw(c, buf, len), 0);
	while (ended < 8) {
		struct pdc_event ev;

		cr_assert_eq(t_next(c, &ev), 0);
		cr_assert(ev.id >= 2 && ev.id <= 9, "an answer for request %llu",
			  (unsigned long long)ev.id);
		t_result_add(&r[ev.id - 1], &ev);
		ended += r[ev.id - 1].ended;
	}
	for (uint32_t k = 1; k < 9; k++)
		t_assert_served(&r[k], PROMPT, 2);
	cr_assert_eq(t_counter("frames_malformed"), 0);
	pdc_close(c);
	t_router_stop();
}

Test(daemon_client, bad_magic_gets_ebadmsg_on_id_0_then_eof)
{
	uint32_t tok[PROMPT];
	uint8_t buf[1024];
	struct pdc_client *bad, *other;
	size_t len;

	t_router_start(NULL);
	t_worker("aggregated", NULL);
	other = t_connect();
	bad = t_connect();
	t_prompt(tok, PROMPT, 1);
	len = encode(buf, sizeof(buf), 1, tok, PROMPT);
	buf[4] ^= 0xFF; /* the magic's low byte */
	cr_assert_eq(t_send_raw(bad, buf, len), 0);
	assert_conn_error(bad, -EBADMSG);
	cr_assert_eq(t_counter("frames_malformed"), 1);
	assert_other_connection_served(other, 2);
	pdc_close(bad);
	pdc_close(other);
	t_router_stop();
}

/* A REQUEST whose ntokens says more than the frame holds: its lengths do not add up. */
Test(daemon_client, lying_ntokens_gets_ebadmsg_on_id_0_then_eof)
{
	uint32_t tok[PROMPT], lie = PROMPT + 1;
	uint8_t buf[1024];
	struct pdc_client *bad, *other;
	size_t len;

	t_router_start(NULL);
	t_worker("aggregated", NULL);
	other = t_connect();
	bad = t_connect();
	t_prompt(tok, PROMPT, 1);
	len = encode(buf, sizeof(buf), 1, tok, PROMPT);
	memcpy(buf + sizeof(struct pdc_hdr) + offsetof(struct pdc_request, ntokens), &lie, 4);
	cr_assert_eq(t_send_raw(bad, buf, len), 0);
	assert_conn_error(bad, -EBADMSG);
	cr_assert_eq(t_counter("frames_malformed"), 1);
	assert_other_connection_served(other, 2);
	pdc_close(bad);
	pdc_close(other);
	t_router_stop();
}

/* A frame over --max-frame is refused from its header: -EMSGSIZE, then EOF. */
Test(daemon_client, frame_over_max_frame_gets_emsgsize_then_eof)
{
	static uint32_t tok[2048];
	static uint8_t buf[16384];
	struct pdc_client *bad, *other;
	size_t len;

	t_router_start("--max-frame", "4096", NULL);
	t_worker("aggregated", NULL);
	other = t_connect();
	bad = t_connect();
	t_prompt(tok, 2048, 1);
	len = encode(buf, sizeof(buf), 1, tok, 2048);
	/* The router may close before it has read it all: a failed send is no failure here. */
	t_send_raw(bad, buf, len);
	assert_conn_error(bad, -EMSGSIZE);
	cr_assert_eq(t_counter("frames_malformed"), 1);
	assert_other_connection_served(other, 2);
	pdc_close(bad);
	pdc_close(other);
	t_router_stop();
}

/* A prompt over --max-prompt-tokens is one request's error; the connection goes on. */
Test(daemon_client, prompt_over_limit_gets_e2big_and_connection_stays_usable)
{
	uint32_t tok[PROMPT + 1];
	struct pdc_request_args a;
	struct pdc_client *c;
	struct t_result r;

	t_router_start("--max-prompt-tokens", "128", NULL);
	t_worker("aggregated", NULL);
	c = t_connect();
	t_prompt(tok, PROMPT + 1, 1);
	a = t_args(1, tok, PROMPT + 1, 2, 0);
	send_refused(c, &a, -E2BIG);
	a = t_args(2, tok, PROMPT, 2, 0);
	t_run(c, &a, &r);
	t_assert_served(&r, PROMPT, 2);
	cr_assert_eq(t_counter("frames_malformed"), 0);
	pdc_close(c);
	t_router_stop();
}

/* A field out of range (an unknown flag bit) is one request's -EINVAL; a pin to a worker that
 * does not exist is -ENODEV. Neither touches the connection. */
Test(daemon_client, bad_field_gets_einval_and_unknown_pin_gets_enodev)
{
	uint32_t tok[PROMPT], flags = PDC_FLAGS_ALL + 1;
	static uint8_t buf[1024];
	struct pdc_request_args a;
	struct pdc_client *c;
	struct t_result r = {0};
	size_t len;

	t_router_start(NULL);
	t_worker("aggregated", NULL);
	c = t_connect();
	t_prompt(tok, PROMPT, 1);
	len = encode(buf, sizeof(buf), 1, tok, PROMPT);
	memcpy(buf + sizeof(struct pdc_hdr) + offsetof(struct pdc_request, flags), &flags, 4);
	cr_assert_eq(t_send_raw(c, buf, len), 0);
	t_collect(c, 1, &r);
	t_assert_error(&r, -EINVAL);
	a = t_args(2, tok, PROMPT, 2, 0);
	a.fixed.pin_worker = 4242;
	send_refused(c, &a, -ENODEV);
	a = t_args(3, tok, PROMPT, 2, 0);
	t_run(c, &a, &r);
	t_assert_served(&r, PROMPT, 2);
	cr_assert_eq(t_counter("frames_malformed"), 0);
	pdc_close(c);
	t_router_stop();
}

/* Sampling parameters at their limit are served (pdmock ignores them); over it, in a frame
 * whose lengths add up, they are one request's -EINVAL and the connection goes on. */
Test(daemon_client, sampling_over_limit_gets_einval_and_connection_stays_usable)
{
	static uint8_t buf[16384], samp[PDC_SAMPLING_MAX];
	uint32_t tok[PROMPT], ntokens = PROMPT - 1;
	uint16_t over = PDC_SAMPLING_MAX + 4;
	struct pdc_request_args a;
	struct pdc_client *c;
	struct t_result r = {0};
	long len;

	t_router_start(NULL);
	t_worker("aggregated", NULL);
	c = t_connect();
	memset(samp, '{', sizeof(samp));
	t_prompt(tok, PROMPT, 1);
	a = t_args(1, tok, PROMPT, 2, 0);
	a.sampling = samp;
	a.sampling_len = PDC_SAMPLING_MAX;
	t_run(c, &a, &r);
	t_assert_served(&r, PROMPT, 2);
	/* The first token's 4 bytes become sampling bytes: the frame still adds up. */
	a.id = 2;
	len = pdc_request_encode(buf, sizeof(buf), &a);
	cr_assert_gt(len, 0);
	memcpy(buf + sizeof(struct pdc_hdr) + offsetof(struct pdc_request, sampling_len), &over, 2);
	memcpy(buf + sizeof(struct pdc_hdr) + offsetof(struct pdc_request, ntokens), &ntokens, 4);
	cr_assert_eq(t_send_raw(c, buf, (size_t)len), 0);
	r = (struct t_result){0};
	t_collect(c, 2, &r);
	t_assert_error(&r, -EINVAL);
	a.id = 3;
	t_run(c, &a, &r);
	t_assert_served(&r, PROMPT, 2);
	cr_assert_eq(t_counter("frames_malformed"), 0);
	pdc_close(c);
	t_router_stop();
}

/* --idle-timeout-ms: a connection with nothing in flight is closed with -ETIMEDOUT on id 0;
 * one with a request in flight is not. The timeout is long enough that a busy machine does
 * not let the other connection idle out before its request is sent. */
Test(daemon_client, idle_connection_gets_etimedout_on_id_0_then_eof)
{
	struct pdc_client *idle, *busy;
	struct t_result r = {.routed_seen = true};

	t_router_start("--idle-timeout-ms", "1000", NULL);
	t_worker("aggregated", "--stall-ms", T_STALL, NULL);
	busy = t_connect();
	send_held(busy, 1, 1, 0, PDC_NO_WORKER);
	idle = t_connect();
	assert_conn_error(idle, -ETIMEDOUT);
	cr_assert_eq(t_counter("conns_idle"), 1);
	cr_assert_eq(pdc_cancel(busy, 1), 0);
	t_collect(busy, 1, &r);
	cr_assert(r.done_seen && r.done.finish_reason == PDC_FINISH_CANCELLED,
		  "the busy connection's request: error %d", r.error);
	pdc_close(idle);
	pdc_close(busy);
	t_router_stop();
}

Test(daemon_client, unknown_model_gets_enoent)
{
	uint32_t tok[PROMPT];
	struct pdc_request_args a;
	struct pdc_client *c;
	struct t_result r;

	t_router_start(NULL);
	t_worker("aggregated", NULL);
	c = t_connect();
	t_prompt(tok, PROMPT, 1);
	a = t_args(1, tok, PROMPT, 2, 0);
	a.model = "no-such-model";
	send_refused(c, &a, -ENOENT);
	a = t_args(2, tok, PROMPT, 2, 0);
	t_run(c, &a, &r);
	t_assert_served(&r, PROMPT, 2);
	pdc_close(c);
	t_router_stop();
}

/* --max-inflight-per-conn 2: a third request is refused with -EAGAIN, on that connection only;
 * once one ends, the connection takes another. */
Test(daemon_client, too_many_in_flight_on_a_connection_gets_eagain)
{
	uint32_t tok[PROMPT];
	struct pdc_request_args a;
	struct pdc_client *c, *other;
	struct t_result r = {.routed_seen = true};

	t_router_start("--max-inflight-per-conn", "2", NULL);
	t_worker("aggregated", "--stall-ms", T_STALL, NULL);
	c = t_connect();
	send_held(c, 1, 1, 0, PDC_NO_WORKER);
	send_held(c, 2, 2, 0, PDC_NO_WORKER);
	t_prompt(tok, PROMPT, 3);
	a = t_args(3, tok, PROMPT, 2, 0);
	send_refused(c, &a, -EAGAIN);
	other = t_connect();
	send_held(other, 3, 3, 0, PDC_NO_WORKER);
	cr_assert_eq(pdc_cancel(c, 1), 0);
	t_collect(c, 1, &r);
	cr_assert(r.done_seen && r.done.finish_reason == PDC_FINISH_CANCELLED);
	send_held(c, 3, 3, 0, PDC_NO_WORKER);
	pdc_close(other);
	pdc_close(c);
	t_router_stop();
}

/* --max-requests 4 (one core): a fifth request in flight, on any connection, gets -ENOBUFS;
 * it may be sent again once a slot is free. */
Test(daemon_client, full_request_pool_gets_enobufs_until_a_slot_frees)
{
	uint32_t tok[PROMPT];
	struct pdc_request_args a;
	struct pdc_client *c, *other;
	struct t_result r = {.routed_seen = true};

	t_router_start("--max-requests", "4", NULL);
	t_worker("aggregated", "--stall-ms", T_STALL, NULL);
	c = t_connect();
	other = t_connect();
	for (uint32_t k = 1; k <= 4; k++)
		send_held(k % 2 ? c : other, k, k, 0, PDC_NO_WORKER);
	t_prompt(tok, PROMPT, 5);
	a = t_args(5, tok, PROMPT, 2, 0);
	send_refused(c, &a, -ENOBUFS);
	send_refused(other, &a, -ENOBUFS);
	cr_assert_eq(t_counter("overloaded"), 2);
	cr_assert_eq(pdc_cancel(other, 2), 0);
	t_collect(other, 2, &r);
	cr_assert(r.done_seen && r.done.finish_reason == PDC_FINISH_CANCELLED);
	send_held(c, 5, 5, 0, PDC_NO_WORKER);
	pdc_close(other);
	pdc_close(c);
	t_router_stop();
}

/* An id already in flight on the connection is refused with -EALREADY, and the first request
 * is untouched; on another connection the same id is a different request. */
Test(daemon_client, duplicate_id_in_flight_gets_ealready)
{
	uint32_t tok[PROMPT];
	struct pdc_request_args a;
	struct pdc_client *c, *other;
	struct t_result r = {.routed_seen = true};

	t_router_start(NULL);
	t_worker("aggregated", "--stall-ms", T_STALL, NULL);
	c = t_connect();
	send_held(c, 7, 1, PDC_STREAM, PDC_NO_WORKER);
	t_prompt(tok, PROMPT, 2);
	a = t_args(7, tok, PROMPT, 2, 0);
	send_refused(c, &a, -EALREADY);
	other = t_connect();
	send_held(other, 7, 2, 0, PDC_NO_WORKER);
	/* The first request 7 is still the one in flight: it is what the CANCEL ends. */
	cr_assert_eq(pdc_cancel(c, 7), 0);
	t_collect(c, 7, &r);
	cr_assert(r.done_seen && r.done.finish_reason == PDC_FINISH_CANCELLED);
	cr_assert_eq(r.done.prompt_tokens, PROMPT);
	cr_assert_eq(t_counter("cancelled"), 1);
	pdc_close(other);
	pdc_close(c);
	t_router_stop();
}
