/*
 * Mailbox lanes (shm/lanes.h) between a router and a worker using libpdworker: requests of
 * every mode reach the worker whole (tokens, sampling parameters, params), cancels too; every
 * kind of answer reaches the router and checks out; each side refuses what the other must not
 * send, and neither reads past a record.
 */
#include <criterion/criterion.h>
#include <errno.h>
#include <string.h>
#include <unistd.h>

#include "pdworker.h"

TestSuite(shm_lanes, .timeout = 30);

struct fx {
	struct shm_mbox router;
	struct pdw w;
	uint32_t tokens[2048]; /* enough for every request a test makes, even refused ones */
};

static void fx_open(struct fx *f, uint32_t ring_bytes)
{
	struct shm_mbox_config cfg = {.lanes = 2, .lane_ring_bytes = ring_bytes,
				      .event_ring_bytes = 4096};

	cr_assert_eq(shm_mbox_create(&f->router, &cfg, 1), 0);
	memset(&f->w, 0, sizeof(f->w));
	cr_assert_eq(shm_mbox_attach(&f->w.mbox, dup(f->router.fd)), 0);
	f->w.fd = -1;
	f->w.registered = true; /* as pdw_register() leaves it, without a control socket */
	for (uint32_t i = 0; i < 2048; i++)
		f->tokens[i] = 7000 + i;
}

static void fx_close(struct fx *f)
{
	pdw_close(&f->w);
	shm_mbox_close(&f->router);
}

static void put(struct fx *f, uint32_t lane, const struct shm_lane_request *req,
		const void *sampling, const void *params)
{
	cr_assert_eq(shm_lane_put_request(&f->router.req[lane], req, f->tokens, sampling, params),
		     0);
	shm_ring_publish(&f->router.req[lane]);
}

/* The router's next answer on @lane, checked. */
static struct shm_lane_answer take(struct fx *f, uint32_t lane)
{
	struct shm_lane_answer a;
	struct shm_rec rec;

	cr_assert_eq(shm_ring_peek(&f->router.resp[lane], &rec), 0);
	cr_assert_eq(shm_lane_check_answer(rec.type, rec.payload, rec.len, &a), 0);
	shm_ring_consume(&f->router.resp[lane]);
	shm_ring_release(&f->router.resp[lane]);
	return a;
}

Test(shm_lanes, request_reaches_the_worker_whole_on_its_lane)
{
	struct shm_lane_request req = {.request_id = 42, .mode = SHM_LANE_AGGREGATED,
				       .ntokens = 257, .max_tokens = 100, .dp_rank = 1};
	struct pdw_request r;
	struct fx f;

	fx_open(&f, 8192);
	cr_assert_eq(pdw_poll(&f.w, &r), -EAGAIN);
	put(&f, 1, &req, NULL, NULL);
	cr_assert_eq(pdw_poll(&f.w, &r), 0);
	cr_assert_eq(r.lane, 1);
	cr_assert_not(r.cancel);
	cr_assert_eq(memcmp(&r.req, &req, sizeof(req)), 0);
	cr_assert_eq(memcmp(r.tokens, f.tokens, 257 * 4), 0);
	cr_assert_eq(r.req.nsampling, 0);
	pdw_done_with(&f.w, &r);
	cr_assert_eq(pdw_poll(&f.w, &r), -EAGAIN);
	fx_close(&f);
}

Test(shm_lanes, decode_request_carries_the_prefill_params_and_cancel_arrives)
{
	struct shm_lane_request req = {.request_id = 9, .mode = SHM_LANE_DECODE, .ntokens = 3,
				       .max_tokens = 8, .nparams = 13, .prefill_worker = 4,
				       .room_id = 77};
	struct shm_lane_ref cancel = {.request_id = 9};
	struct pdw_request r;
	struct fx f;
	void *p;
	int err;

	fx_open(&f, 4096);
	put(&f, 0, &req, NULL, "nixl-params!!");
	cr_assert_eq(pdw_poll(&f.w, &r), 0);
	cr_assert_eq(r.req.prefill_worker, 4);
	cr_assert_eq(r.req.room_id, 77);
	cr_assert_eq(memcmp(r.params, "nixl-params!!", 13), 0);
	pdw_done_with(&f.w, &r);
	p = shm_ring_reserve(&f.router.req[0], SHM_LANE_CANCEL, 0, sizeof(cancel), &err);
	memcpy(p, &cancel, sizeof(cancel));
	shm_ring_commit(&f.router.req[0]);
	shm_ring_publish(&f.router.req[0]);
	cr_assert_eq(pdw_poll(&f.w, &r), 0);
	cr_assert(r.cancel);
	cr_assert_eq(r.req.request_id, 9);
	pdw_done_with(&f.w, &r);
	fx_close(&f);
}

Test(shm_lanes, request_layout_is_the_documented_one)
{
	/* shm/lanes.h: fixed part, tokens and sampling each padded to 8, params last. */
	cr_expect_eq(sizeof(struct shm_lane_request), 48);
	cr_expect_eq(offsetof(struct shm_lane_request, nsampling), 40);
	cr_expect_eq(offsetof(struct shm_lane_request, reserved), 44);
	cr_expect_eq(shm_lane_request_bytes(1, 0, 0), 48 + 8);
	cr_expect_eq(shm_lane_request_bytes(2, 0, 0), 48 + 8);
	cr_expect_eq(shm_lane_request_bytes(3, 1, 0), 48 + 16 + 8);
	cr_expect_eq(shm_lane_request_bytes(3, 8, 5), 48 + 16 + 8 + 5);
	cr_expect_eq(shm_lane_request_bytes(3, 9, 5), 48 + 16 + 16 + 5);
	cr_expect_eq(
	    shm_lane_request_bytes(SHM_LANE_MAX_TOKENS, SHM_LANE_MAX_SAMPLING, SHM_LANE_MAX_PARAMS),
	    48 + 4ull * SHM_LANE_MAX_TOKENS + SHM_LANE_MAX_SAMPLING + SHM_LANE_MAX_PARAMS);
}

/* Bytes of sampling parameters that are never 0, and differ from one request to the next. */
static void sampling_pattern(uint8_t *p, uint32_t n, uint32_t seed)
{
	for (uint32_t i = 0; i < n; i++)
		p[i] = (uint8_t)(1 + (i * 37 + seed * 11) % 255);
}

Test(shm_lanes, sampling_parameters_reach_the_worker_byte_exact_in_every_mode)
{
	static const uint32_t counts[] = {1, 7, 8, 9, 100, SHM_LANE_MAX_SAMPLING};
	static uint8_t want[SHM_LANE_MAX_SAMPLING];
	struct pdw_request r;
	uint32_t seed = 0;
	struct fx f;

	fx_open(&f, 16384); /* small: the records wrap over the bytes of earlier ones */
	for (uint32_t mode = SHM_LANE_AGGREGATED; mode <= SHM_LANE_DECODE; mode++)
		for (uint32_t nt = 1; nt <= 3; nt++)
			for (size_t k = 0; k < sizeof(counts) / sizeof(counts[0]); k++, seed++) {
				struct shm_lane_request req = {.request_id = seed,
							       .mode = mode,
							       .ntokens = nt,
							       .max_tokens = 4,
							       .nsampling = counts[k],
							       .nparams =
								   mode == SHM_LANE_DECODE ? 5 : 0};
				const uint8_t *t, *pad;
				uint64_t at = shm_lane_pad8(4ull * nt);

				sampling_pattern(want, counts[k], seed);
				put(&f, 0, &req, want, req.nparams ? "kvxfr" : NULL);
				cr_assert_eq(pdw_poll(&f.w, &r), 0);
				cr_assert_eq(r.req.request_id, seed);
				cr_assert_eq(r.req.nsampling, counts[k]);
				cr_assert_eq(memcmp(r.tokens, f.tokens, 4 * nt), 0);
				t = (const uint8_t *)r.tokens;
				cr_assert_eq(r.sampling, t + at, "sampling after the tokens' pad");
				cr_assert_eq((uintptr_t)r.sampling % 8, 0);
				cr_assert_eq(memcmp(r.sampling, want, counts[k]), 0,
					     "mode %u ntokens %u nsampling %u", mode, nt,
					     counts[k]);
				for (pad = t + 4 * nt; pad < r.sampling; pad++)
					cr_assert_eq(*pad, 0, "padding after the tokens");
				pad = r.sampling + counts[k];
				for (; pad < r.sampling + shm_lane_pad8(counts[k]); pad++)
					cr_assert_eq(*pad, 0, "padding after the sampling");
				if (req.nparams)
					cr_assert_eq(memcmp(pad, "kvxfr", 5), 0);
				pdw_done_with(&f.w, &r);
			}
	fx_close(&f);
}

Test(shm_lanes, router_writes_the_reserved_field_as_zero)
{
	struct shm_lane_request req = {
	    .request_id = 3, .ntokens = 1, .max_tokens = 1, .nsampling = 2, .reserved = 0xDEAD};
	struct pdw_request r;
	struct fx f;

	fx_open(&f, 4096);
	put(&f, 0, &req, "{}", NULL);
	cr_assert_eq(pdw_poll(&f.w, &r), 0);
	cr_assert_eq(r.req.reserved, 0);
	cr_assert_eq(memcmp(r.sampling, "{}", 2), 0);
	pdw_done_with(&f.w, &r);
	fx_close(&f);
}

Test(shm_lanes, every_answer_reaches_the_router_and_checks_out)
{
	struct shm_lane_answer a;
	struct fx f;

	fx_open(&f, 4096);
	cr_assert_eq(pdw_post_tokens(&f.w, 1, 5, f.tokens, 3), 0);
	cr_assert_eq(pdw_post_prefilled(&f.w, 1, 6, 99, "blob", 4), 0);
	cr_assert_eq(pdw_post_done(&f.w, 1, 5, 1), 0);
	cr_assert_eq(pdw_post_error(&f.w, 1, 7, -EIO, "device lost"), 0);
	a = take(&f, 1);
	cr_assert(a.type == SHM_LANE_TOKENS && a.request_id == 5 && a.n == 3);
	cr_assert_eq(memcmp(a.data, f.tokens, 12), 0);
	a = take(&f, 1);
	cr_assert(a.type == SHM_LANE_PREFILLED && a.request_id == 6 && a.value == 99);
	cr_assert(a.n == 4 && memcmp(a.data, "blob", 4) == 0);
	a = take(&f, 1);
	cr_assert(a.type == SHM_LANE_DONE && a.value == 1);
	a = take(&f, 1);
	cr_assert(a.type == SHM_LANE_ERROR && (int32_t)a.value == -EIO && a.n == 11);
	cr_assert_eq(memcmp(a.data, "device lost", 11), 0);
	fx_close(&f);
}

Test(shm_lanes, router_refuses_requests_it_must_not_send)
{
	struct shm_lane_request req = {.request_id = 1, .mode = SHM_LANE_PREFILL, .ntokens = 4,
				       .nparams = 4};
	struct fx f;

	fx_open(&f, 4096);
	cr_assert_eq(shm_lane_put_request(&f.router.req[0], &req, f.tokens, NULL, "abcd"), -EINVAL,
		     "params only go with decode mode");
	req.nparams = 0;
	req.ntokens = 0;
	cr_assert_eq(shm_lane_put_request(&f.router.req[0], &req, f.tokens, NULL, NULL), -EINVAL);
	req.ntokens = 4;
	req.nsampling = 3;
	cr_assert_eq(shm_lane_put_request(&f.router.req[0], &req, f.tokens, NULL, NULL), -EINVAL,
		     "sampling bytes counted but not given");
	req.nsampling = SHM_LANE_MAX_SAMPLING + 1;
	cr_assert_eq(shm_lane_put_request(&f.router.req[0], &req, f.tokens, f.tokens, NULL),
		     -EINVAL, "sampling parameters over their limit");
	req.nsampling = 0;
	req.ntokens = 2000; /* 8 KB: more than the 4 KB ring */
	cr_assert_eq(shm_lane_put_request(&f.router.req[0], &req, f.tokens, NULL, NULL), -E2BIG);
	req.ntokens = 300;
	cr_assert_eq(shm_lane_put_request(&f.router.req[0], &req, f.tokens, NULL, NULL), 0);
	cr_assert_eq(shm_lane_put_request(&f.router.req[0], &req, f.tokens, NULL, NULL), 0);
	cr_assert_eq(shm_lane_put_request(&f.router.req[0], &req, f.tokens, NULL, NULL), 0);
	cr_assert_eq(shm_lane_put_request(&f.router.req[0], &req, f.tokens, NULL, NULL), -ENOBUFS);
	fx_close(&f);
}

Test(shm_lanes, worker_refuses_answers_it_must_not_send)
{
	struct fx f;

	fx_open(&f, 4096);
	cr_assert_eq(pdw_post_tokens(&f.w, 0, 1, f.tokens, 0), -EINVAL);
	cr_assert_eq(pdw_post_tokens(&f.w, 0, 1, f.tokens, SHM_LANE_MAX_TOKENS_PER_RECORD + 1),
		     -EINVAL);
	cr_assert_eq(pdw_post_done(&f.w, 0, 1, 2), -EINVAL);
	cr_assert_eq(pdw_post_error(&f.w, 0, 1, 0, "not an error"), -EINVAL);
	cr_assert_eq(pdw_post_prefilled(&f.w, 0, 1, 5, NULL, 3), -EINVAL);
	cr_assert_eq(pdw_post_done(&f.w, 2, 1, 0), -EINVAL, "lane 2 of 2");
	f.w.registered = false;
	cr_assert_eq(pdw_post_done(&f.w, 0, 1, 0), -ENOTCONN);
	f.w.registered = true;
	fx_close(&f);
}

/* A request whose length lies about its counts: the worker gives the lane up. */
Test(shm_lanes, worker_gives_up_a_lane_with_a_lying_request)
{
	struct shm_lane_request req = {.request_id = 1, .ntokens = 10};
	struct pdw_request r;
	struct fx f;
	uint8_t *p;
	int err;

	fx_open(&f, 4096);
	p = shm_ring_reserve(&f.router.req[0], SHM_LANE_REQUEST, 0, sizeof(req) + 36, &err);
	memcpy(p, &req, sizeof(req)); /* 10 tokens need 40 bytes, the record has 36 */
	shm_ring_commit(&f.router.req[0]);
	shm_ring_publish(&f.router.req[0]);
	cr_assert_eq(pdw_poll(&f.w, &r), -EBADMSG);
	fx_close(&f);
}

/* A REQUEST record with the fixed part @q and room for what @len says, written by hand. */
static int check_raw(const struct shm_lane_request *q, uint32_t len)
{
	static uint8_t rec[8192];
	struct shm_lane_request_view v;

	memset(rec, 0x5A, sizeof(rec));
	memcpy(rec, q, sizeof(*q));
	return shm_lane_check_request(rec, len, &v);
}

Test(shm_lanes, worker_check_refuses_lying_or_oversized_sampling)
{
	struct shm_lane_request q = {
	    .request_id = 1, .ntokens = 2, .max_tokens = 1, .nsampling = 3};
	uint32_t len = (uint32_t)shm_lane_request_bytes(2, 3, 0);

	cr_assert_eq(check_raw(&q, len), 0);
	cr_assert_eq(check_raw(&q, len + 1), -EBADMSG);
	cr_assert_eq(check_raw(&q, len - 1), -EBADMSG);
	q.nsampling = 9; /* a second padded word the record does not have */
	cr_assert_eq(check_raw(&q, len), -EBADMSG);
	q.nsampling = SHM_LANE_MAX_SAMPLING;
	cr_assert_eq(check_raw(&q, (uint32_t)shm_lane_request_bytes(2, q.nsampling, 0)), 0);
	q.nsampling = SHM_LANE_MAX_SAMPLING + 1; /* over the limit, though the length adds up */
	cr_assert_eq(check_raw(&q, (uint32_t)shm_lane_request_bytes(2, q.nsampling, 0)), -EBADMSG);
	q.nsampling = UINT32_MAX;
	cr_assert_eq(check_raw(&q, len), -EBADMSG);
	q.nsampling = 3;
	q.reserved = 1;
	cr_assert_eq(check_raw(&q, len), -EBADMSG, "reserved must be 0");
}

Test(shm_lanes, worker_gives_up_a_lane_with_lying_sampling_counts)
{
	struct shm_lane_request req = {
	    .request_id = 1, .ntokens = 2, .max_tokens = 1, .nsampling = 20};
	struct pdw_request r;
	struct fx f;
	uint8_t *p;
	int err;

	fx_open(&f, 4096);
	p = shm_ring_reserve(&f.router.req[0], SHM_LANE_REQUEST, 0, 48 + 8 + 16, &err);
	memset(p, 0, 48 + 8 + 16);
	memcpy(p, &req, sizeof(req)); /* 20 sampling bytes need 24, the record has 16 */
	shm_ring_commit(&f.router.req[0]);
	shm_ring_publish(&f.router.req[0]);
	cr_assert_eq(pdw_poll(&f.w, &r), -EBADMSG);
	fx_close(&f);
}

Test(shm_lanes, router_check_refuses_every_lying_answer)
{
	struct shm_lane_answer a;
	uint8_t rec[64] = {0};
	struct shm_lane_tokens t = {.request_id = 1, .n = 3};
	struct shm_lane_error e = {.request_id = 1, .error = -EIO, .len = 4};
	struct shm_lane_done d = {.request_id = 1, .finish_reason = 0};

	memcpy(rec, &t, sizeof(t));
	cr_assert_eq(shm_lane_check_answer(SHM_LANE_TOKENS, rec, 28, &a), 0);
	cr_assert_eq(shm_lane_check_answer(SHM_LANE_TOKENS, rec, 27, &a), -EBADMSG);
	cr_assert_eq(shm_lane_check_answer(SHM_LANE_TOKENS, rec, 32, &a), -EBADMSG);
	t.n = 0;
	memcpy(rec, &t, sizeof(t));
	cr_assert_eq(shm_lane_check_answer(SHM_LANE_TOKENS, rec, 16, &a), -EBADMSG);
	memcpy(rec, &e, sizeof(e));
	cr_assert_eq(shm_lane_check_answer(SHM_LANE_ERROR, rec, 20, &a), 0);
	e.error = 5;
	memcpy(rec, &e, sizeof(e));
	cr_assert_eq(shm_lane_check_answer(SHM_LANE_ERROR, rec, 20, &a), -EBADMSG);
	d.reserved = 1;
	memcpy(rec, &d, sizeof(d));
	cr_assert_eq(shm_lane_check_answer(SHM_LANE_DONE, rec, 16, &a), -EBADMSG);
	cr_assert_eq(shm_lane_check_answer(SHM_LANE_REQUEST, rec, 16, &a), -EBADMSG,
		     "a worker does not send requests");
	cr_assert_eq(shm_lane_check_answer(SHM_LANE_DONE, rec, 8, &a), -EBADMSG);
}
