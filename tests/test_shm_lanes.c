/*
 * Mailbox lanes (shm/lanes.h) between a router and a worker using libpdworker: requests of
 * every mode reach the worker whole, cancels too; every kind of answer reaches the router and
 * checks out; each side refuses what the other must not send, and neither reads past a record.
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
		const void *params)
{
	cr_assert_eq(shm_lane_put_request(&f->router.req[lane], req, f->tokens, params), 0);
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
	put(&f, 1, &req, NULL);
	cr_assert_eq(pdw_poll(&f.w, &r), 0);
	cr_assert_eq(r.lane, 1);
	cr_assert_not(r.cancel);
	cr_assert_eq(memcmp(&r.req, &req, sizeof(req)), 0);
	cr_assert_eq(memcmp(r.tokens, f.tokens, 257 * 4), 0);
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
	put(&f, 0, &req, "nixl-params!!");
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
	cr_assert_eq(shm_lane_put_request(&f.router.req[0], &req, f.tokens, "abcd"), -EINVAL,
		     "params only go with decode mode");
	req.nparams = 0;
	req.ntokens = 0;
	cr_assert_eq(shm_lane_put_request(&f.router.req[0], &req, f.tokens, NULL), -EINVAL);
	req.ntokens = 2000; /* 8 KB: more than the 4 KB ring */
	cr_assert_eq(shm_lane_put_request(&f.router.req[0], &req, f.tokens, NULL), -E2BIG);
	req.ntokens = 300;
	cr_assert_eq(shm_lane_put_request(&f.router.req[0], &req, f.tokens, NULL), 0);
	cr_assert_eq(shm_lane_put_request(&f.router.req[0], &req, f.tokens, NULL), 0);
	cr_assert_eq(shm_lane_put_request(&f.router.req[0], &req, f.tokens, NULL), 0);
	cr_assert_eq(shm_lane_put_request(&f.router.req[0], &req, f.tokens, NULL), -ENOBUFS);
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
