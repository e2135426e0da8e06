/*
 * A request's life on a dataplane core (DESIGN.md, "Request lifecycle"):
 *
 *   frame ─▶ route ─┬─ aggregated / fallback ─────────────────────▶ GENERATE ─▶ DONE
 *                   └─ disaggregated ─▶ PREFILL ─▶ params ─▶ decode ─▶ GENERATE ─▶ DONE
 *
 * A prefill that fails (error, timeout, worker gone, lane unusable) falls back to decode-only
 * unless disaggregation is enforced; a generating worker that goes before its first token is
 * replaced (cfg.decode_retries times); after its first token the client gets an error. Every
 * path ends in free_req(), after release_load(), so predicted load is dropped exactly once;
 * rt_release() also refuses a second release of a handle, and handles are zeroed once used.
 */
#include <errno.h>
#include <string.h>

#include "core_pvt.h"
#include "frame.h"
#include "hash.h"

_Static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__, "token ids are copied as they are");
_Static_assert(PDC_SAMPLING_MAX <= SHM_LANE_MAX_SAMPLING, "what a client may send, a lane takes");

#define SLOT_BITS 24u
#define TOKENS_PER_FRAME 65536u

static uint64_t lane_id(const struct dp_core *c, uint32_t i)
{
	return c->reqs[i].gen << SLOT_BITS | i;
}

/* ---- frames to the client ---- */

static uint8_t *frame(struct dp_core *c, struct dp_req *r, uint8_t type, size_t body)
{
	uint8_t *p = dp_conn_frame(c, r->conn, r->conn_gen, DP_FRAME_BYTES(body));

	if (p)
		dp_frame_header(p, type, r->client_id, (uint32_t)DP_FRAME_BYTES(body));
	return p ? p + sizeof(struct pdc_hdr) : NULL;
}

static void send_error_to(struct dp_core *c, uint32_t conn, uint32_t gen, uint64_t id, int error,
			  const char *msg)
{
	uint8_t *p = dp_conn_frame(c, conn, gen, dp_frame_error_bytes(msg));

	if (p)
		dp_frame_error(p, id, error, msg);
	dp_count(c, DP_STAT(errors), 1);
}

static void send_routed(struct dp_core *c, struct dp_req *r, const struct rt_choice *gen)
{
	struct pdc_routed m = {.plan = r->plan,
			       .prefill_worker = PDC_NO_WORKER,
			       .worker = gen ? gen->worker : PDC_NO_WORKER,
			       .dp_rank = gen ? gen->dp_rank : 0,
			       .overlap_blocks = r->overlap};
	uint8_t *p;

	if (r->plan == PDC_PLAN_DISAGG) {
		m.prefill_worker = r->prefill.worker;
		m.prefill_dp_rank = r->prefill.dp_rank;
	}
	p = frame(c, r, PDC_ROUTED, sizeof(m));
	if (p)
		memcpy(p, &m, sizeof(m));
}

static void send_tokens(struct dp_core *c, struct dp_req *r, const void *ids, uint32_t n)
{
	struct pdc_tokens t = {.n = n};
	uint8_t *p = frame(c, r, PDC_TOKENS, sizeof(t) + 4ull * n);

	if (p) {
		memcpy(p, &t, sizeof(t));
		memcpy(p + sizeof(t), ids, 4ull * n);
	}
}

static void send_done(struct dp_core *c, struct dp_req *r, uint32_t finish)
{
	struct pdc_done d = {.finish_reason = finish,
			     .prompt_tokens = (uint32_t)r->rq.ntokens,
			     .cached_tokens = r->overlap * r->block_size,
			     .completion_tokens = r->generated};
	uint8_t *p;

	/* What was kept goes in frames of at most TOKENS_PER_FRAME, well under any frame
	 * limit a client may have. */
	for (uint32_t off = 0; off < r->acc.len; off += 4 * TOKENS_PER_FRAME) {
		uint32_t n = (r->acc.len - off) / 4;

		send_tokens(c, r, r->acc.p + off, n < TOKENS_PER_FRAME ? n : TOKENS_PER_FRAME);
	}
	p = frame(c, r, PDC_DONE, sizeof(d));
	if (p)
		memcpy(p, &d, sizeof(d));
}

/* ---- pool ---- */

static uint32_t alloc_req(struct dp_core *c)
{
	uint32_t i = c->free_req;

	if (i == DP_NIL)
		return DP_NIL;
	c->free_req = c->reqs[i].q_link.next;
	c->reqs[i].gen++;
	return i;
}

static void queue_move(struct dp_core *c, uint32_t i, enum dp_queue q)
{
	struct dp_req *r = &c->reqs[i];

	if (r->queue != DP_Q_NONE)
		dp_list_del(&c->queue[r->queue], dp_queue_link, c, i);
	r->queue = (uint8_t)q;
	if (q != DP_Q_NONE)
		dp_list_push(&c->queue[q], dp_queue_link, c, i);
}

static void release_load(struct dp_core *c, struct dp_req *r)
{
	if (r->prefill.load)
		rt_release(&c->rt, r->prefill.load);
	if (r->gen_choice.load)
		rt_release(&c->rt, r->gen_choice.load);
	r->prefill.load = 0;
	r->gen_choice.load = 0;
}

static void free_req(struct dp_core *c, uint32_t i)
{
	struct dp_req *r = &c->reqs[i];
	uint64_t gen = r->gen;

	release_load(c, r);
	queue_move(c, i, DP_Q_NONE);
	if (r->conn != DP_NIL)
		dp_list_del(&c->conns[r->conn].reqs, dp_conn_link, c, i);
	dp_buf_free(&c->slab, &r->tokens);
	dp_buf_free(&c->slab, &r->sampling);
	dp_buf_free(&c->slab, &r->params);
	dp_buf_free(&c->slab, &r->acc);
	*r = (struct dp_req){.gen = gen, .conn = DP_NIL};
	r->q_link.next = c->free_req;
	c->free_req = i;
}

/* Tell the current stage's worker to stop; best effort: a full ring drops it, and the
 * worker's later answers are dropped as stray. */
static void cancel_on_worker(struct dp_core *c, uint32_t i)
{
	struct dp_req *r = &c->reqs[i];
	struct shm_ring *ring;
	struct shm_lane_ref ref = {.request_id = lane_id(c, i)};
	uint8_t *p;
	int err;

	if (!r->peer || r->queue == DP_Q_BLOCKED)
		return;
	ring = &r->peer->mbox.req[c->cfg.index];
	p = shm_ring_reserve(ring, SHM_LANE_CANCEL, 0, sizeof(ref), &err);
	if (!p) {
		dp_count(c, DP_STAT(cancels_dropped), 1);
		return;
	}
	memcpy(p, &ref, sizeof(ref));
	shm_ring_commit(ring);
	dp_core_mark_dirty(c, r->peer);
}

/* End request @i: an error frame, the worker told, everything released. */
void dp_req_abort(struct dp_core *c, uint32_t i, int error, const char *msg)
{
	struct dp_req *r = &c->reqs[i];

	cancel_on_worker(c, i);
	send_error_to(c, r->conn, r->conn_gen, r->client_id, error, msg);
	free_req(c, i);
}

/* ---- posting to workers ---- */

/*
 * Write the current stage of request @i into its worker's lane: 0, -ENOBUFS (the ring is full:
 * the request waits on DP_Q_BLOCKED), or another error for a worker that cannot take it.
 */
static int post(struct dp_core *c, uint32_t i)
{
	struct dp_req *r = &c->reqs[i];
	bool decode = r->state == DP_REQ_DECODE;
	const struct rt_choice *ch = decode ? &r->gen_choice : &r->prefill;
	struct dp_peer *peer = ch->cookie;
	struct shm_lane_request req = {
	    .request_id = lane_id(c, i),
	    .mode = !decode			 ? SHM_LANE_PREFILL
		    : r->plan == PDC_PLAN_DISAGG ? SHM_LANE_DECODE
						 : SHM_LANE_AGGREGATED,
	    .ntokens = (uint32_t)r->rq.ntokens,
	    .max_tokens = decode ? r->max_tokens : 1,
	    .dp_rank = ch->dp_rank,
	    .nsampling = r->sampling.len, /* every stage samples as the client asked */
	};
	int rc;

	if (!peer)
		return -ENODEV;
	if (req.mode == SHM_LANE_DECODE) {
		req.nparams = r->params.len;
		req.prefill_worker = r->prefill.worker;
	}
	r->peer = peer;
	rc = shm_lane_put_request(&peer->mbox.req[c->cfg.index], &req, r->rq.tokens,
				  req.nsampling ? r->sampling.p : NULL,
				  req.nparams ? r->params.p : NULL);
	if (rc == -ENOBUFS) {
		/* The wait is timed from its start; a retry goes back to the tail. */
		if (r->queue != DP_Q_BLOCKED) {
			r->stage_ns = c->now_ns;
			dp_count(c, DP_STAT(lane_full_waits), 1);
		}
		queue_move(c, i, DP_Q_BLOCKED);
		return 0;
	}
	if (rc == -EBADMSG)
		dp_core_lane_broken(c, peer);
	if (rc) {
		r->peer = NULL; /* nothing of it reached the worker: nothing to cancel there */
		return rc;
	}
	dp_core_mark_dirty(c, peer);
	r->stage_ns = c->now_ns;		    /* the stage's timeout runs from here */
	if (r->start_ns && c->nin < DP_LAT_SAMPLES) /* the first hand-off of the request */
		c->in_start[c->nin++] = r->start_ns;
	r->start_ns = 0;
	queue_move(c, i, decode ? DP_Q_DECODE : DP_Q_PREFILL);
	return 0;
}

static void generate_failed(struct dp_core *c, uint32_t i, bool died, int error, const char *msg);

/* Start the generating stage on @ch: ROUTED to the client, the request to the worker. */
static void start_generate(struct dp_core *c, uint32_t i, const struct rt_choice *ch)
{
	struct dp_req *r = &c->reqs[i];
	int rc;

	r->gen_choice = *ch;
	r->state = DP_REQ_DECODE;
	if (r->plan != PDC_PLAN_DISAGG)
		r->overlap = ch->overlap;
	r->block_size = ch->cookie ? ((struct dp_peer *)ch->cookie)->block_size : 0;
	if (!r->retries)
		send_routed(c, r, ch);
	rc = post(c, i);
	if (rc) /* a broken lane, a prompt its ring cannot hold: another worker may */
		generate_failed(c, i, true, -EIO, "the worker could not take the request");
}

static void prefill_failed(struct dp_core *c, uint32_t i, const char *why);

static void start_prefill(struct dp_core *c, uint32_t i, const struct rt_choice *ch)
{
	struct dp_req *r = &c->reqs[i];

	r->prefill = *ch;
	r->overlap = ch->overlap;
	r->state = DP_REQ_PREFILL;
	dp_count(c, DP_STAT(disagg), 1);
	if (post(c, i))
		prefill_failed(c, i, "the prefill worker could not take the request");
}

static const char *route_error(int rc)
{
	switch (rc) {
	case -ENOENT:
		return "unknown model";
	case -ENODEV:
		return "no eligible worker";
	case -EBUSY:
		return "every eligible worker is over its busy threshold";
	case -EXDEV:
		return "no decode worker shares the prefill worker's transfer domain";
	case -EPERM:
		return "prefill unavailable and disaggregation is enforced";
	case -E2BIG:
		return "prompt longer than the router's limit";
	case -ENOBUFS:
		return "router overloaded: no request slot on this core";
	default:
		return "invalid request";
	}
}

static bool enforced(const struct dp_core *c, const struct dp_req *r)
{
	return (r->flags & PDC_ENFORCE_DISAGG) || c->cfg.rt->cfg.enforce_disagg;
}

/* The prefill stage did not deliver: fall back to decode-only, or fail when enforced. */
static void prefill_failed(struct dp_core *c, uint32_t i, const char *why)
{
	struct dp_req *r = &c->reqs[i];
	struct rt_choice ch;
	int rc;

	cancel_on_worker(c, i);
	if (r->prefill.load)
		rt_release(&c->rt, r->prefill.load);
	r->prefill.load = 0;
	r->peer = NULL;
	if (enforced(c, r)) {
		dp_req_abort(c, i, -EPERM, why);
		return;
	}
	rc = rt_route_fallback(&c->rt, &r->rq, &ch);
	if (rc) {
		dp_req_abort(c, i, rc, route_error(rc));
		return;
	}
	dp_count(c, DP_STAT(fallbacks), 1);
	r->plan = PDC_PLAN_FALLBACK;
	start_generate(c, i, &ch);
}

/*
 * The generating worker failed request @i. @died: it went away or could not take the request,
 * which before the first token is worth another worker; a worker's own error is final.
 */
static void generate_failed(struct dp_core *c, uint32_t i, bool died, int error, const char *msg)
{
	struct dp_req *r = &c->reqs[i];
	struct rt_choice ch;
	int rc;

	dp_count(c, DP_STAT(worker_failed), 1);
	if (!died || r->got_token || r->retries >= c->cfg.decode_retries) {
		dp_req_abort(c, i, r->got_token ? -ECONNRESET : error < 0 ? error : -EIO, msg);
		return;
	}
	cancel_on_worker(c, i);
	if (r->gen_choice.load)
		rt_release(&c->rt, r->gen_choice.load);
	r->gen_choice.load = 0;
	r->peer = NULL;
	r->retries++;
	dp_count(c, DP_STAT(decode_retries), 1);
	rc = r->plan == PDC_PLAN_DISAGG ? rt_route_decode(&c->rt, &r->rq, r->prefill.target, &ch)
					: rt_route_fallback(&c->rt, &r->rq, &ch);
	if (rc && r->plan == PDC_PLAN_DISAGG && !enforced(c, r)) {
		/* No decode worker can take the prefill's KV any more (the prefill worker went
		 * too): one that prefills itself still can. */
		rc = rt_route_fallback(&c->rt, &r->rq, &ch);
		if (!rc) {
			r->plan = PDC_PLAN_FALLBACK;
			dp_count(c, DP_STAT(fallbacks), 1);
		}
	}
	if (rc) {
		dp_req_abort(c, i, -ECONNRESET,
			     "the worker went away and no other could take over");
		return;
	}
	start_generate(c, i, &ch);
}

/* ---- from the client ---- */

static uint32_t find_client_req(struct dp_core *c, uint32_t conn, uint64_t client_id)
{
	for (uint32_t i = c->conns[conn].reqs.head; i != DP_NIL; i = c->reqs[i].conn_link.next)
		if (c->reqs[i].client_id == client_id)
			return i;
	return DP_NIL;
}

static int fill_request(struct dp_core *c, struct dp_req *r, const struct dp_frame_request *f)
{
	const struct pdc_request *x = &f->fixed;
	struct rt_request *rq = &r->rq;
	int rc;

	if (dp_buf_reserve(&c->slab, &r->tokens, 4ull * x->ntokens) ||
	    dp_buf_reserve(&c->slab, &r->sampling, x->sampling_len))
		return -ENOBUFS;
	memcpy(r->tokens.p, f->tokens, 4ull * x->ntokens);
	r->tokens.len = 4 * x->ntokens;
	/* Out of the frame, whose buffer is reused once this returns: retries and the decode
	 * stage post them again long after. */
	if (x->sampling_len)
		memcpy(r->sampling.p, f->sampling, x->sampling_len);
	r->sampling.len = x->sampling_len;
	*rq = (struct rt_request){.tokens = (const uint32_t *)r->tokens.p,
				  .ntokens = x->ntokens,
				  .hash_seed =
				      dp_hash_seed(f->lora, x->lora_len, f->salt, x->salt_len),
				  .now_ns = c->now_ns,
				  .pin_target = RT_NO_PIN,
				  .pin_prefill = RT_NO_PIN,
				  .peek = x->flags & PDC_PEEK,
				  .ov = {.set = x->override_set,
					 .overlap_score_credit = x->overlap_score_credit,
					 .prefill_load_scale = x->prefill_load_scale,
					 .temperature = x->temperature,
					 .assume_kv_reuse = x->kv_reuse,
					 .track_prefill_tokens = x->prefill_tokens}};
	_Static_assert(PDC_OV_CREDIT == RT_OV_CREDIT && PDC_OV_LOAD_SCALE == RT_OV_LOAD_SCALE &&
			   PDC_OV_TEMPERATURE == RT_OV_TEMPERATURE &&
			   PDC_OV_KV_REUSE == RT_OV_KV_REUSE &&
			   PDC_OV_PREFILL_TOKENS == RT_OV_PREFILL_TOKENS,
		       "client overrides are the policy's");
	rc = rt_model_find(c->cfg.rt, f->model, x->model_len);
	if (rc < 0)
		return rc;
	rq->model = (uint32_t)rc;
	rq->pin_worker =
	    (struct rt_pin){x->pin_worker != PDC_NO_WORKER, x->pin_worker, x->pin_dp_rank};
	rq->pin_prefill_worker = (struct rt_pin){x->pin_prefill_worker != PDC_NO_WORKER,
						 x->pin_prefill_worker, x->pin_prefill_dp_rank};
	return 0;
}

static void answer_peek(struct dp_core *c, struct dp_req *r, const struct rt_plan *plan)
{
	r->plan = (uint8_t)plan->kind;
	r->overlap = plan->first.overlap;
	if (plan->kind == RT_PLAN_DISAGG) {
		r->prefill = plan->first;
		send_routed(c, r, NULL);
	} else {
		send_routed(c, r, plan->kind == RT_PLAN_BOOTSTRAP ? &plan->decode : &plan->first);
	}
	dp_count(c, DP_STAT(peeks), 1);
}

void dp_req_start(struct dp_core *c, uint32_t conn, const struct dp_frame_request *f)
{
	struct dp_conn *cn = &c->conns[conn];
	struct rt_plan plan;
	struct dp_req *r;
	uint32_t i;
	int rc;

	dp_count(c, DP_STAT(requests), 1);
	if (c->stopping) {
		send_error_to(c, conn, cn->gen, f->id, -ESHUTDOWN, "the router is shutting down");
		return;
	}
	if (cn->reqs.n >= c->cfg.max_inflight_per_conn) {
		send_error_to(c, conn, cn->gen, f->id, -EAGAIN,
			      "too many requests in flight on this connection");
		return;
	}
	if (find_client_req(c, conn, f->id) != DP_NIL) {
		send_error_to(c, conn, cn->gen, f->id, -EALREADY,
			      "a request with this id is in flight on this connection");
		return;
	}
	i = alloc_req(c);
	if (i == DP_NIL) {
		dp_count(c, DP_STAT(overloaded), 1);
		send_error_to(c, conn, cn->gen, f->id, -ENOBUFS, route_error(-ENOBUFS));
		return;
	}
	r = &c->reqs[i];
	r->conn = conn;
	r->conn_gen = cn->gen;
	r->client_id = f->id;
	r->flags = f->fixed.flags;
	r->max_tokens = f->fixed.max_tokens;
	r->start_ns = c->frame_ns;
	r->state = DP_REQ_PREFILL; /* not free: free_req() unlinks it from the connection */
	dp_list_push(&cn->reqs, dp_conn_link, c, i);
	rc = fill_request(c, r, f);
	if (!rc) {
		uint64_t t0 = dp_now_ns();

		rc = rt_route(&c->rt, &r->rq, &plan);
		dp_hist_add(&c->lat[DP_LAT_ROUTE], dp_now_ns() - t0);
	}
	if (rc) {
		if (rc == -ENOBUFS)
			dp_count(c, DP_STAT(overloaded), 1);
		send_error_to(c, conn, cn->gen, f->id, rc, route_error(rc));
		free_req(c, i);
		return;
	}
	dp_count(c, DP_STAT(prompt_tokens), r->rq.ntokens);
	if (r->rq.peek) {
		answer_peek(c, r, &plan);
		free_req(c, i);
		return;
	}
	r->plan = (uint8_t)plan.kind;
	switch (plan.kind) {
	case RT_PLAN_DISAGG:
		start_prefill(c, i, &plan.first);
		return;
	case RT_PLAN_FALLBACK:
		if (enforced(c, r)) {
			r->gen_choice = plan.first; /* its load goes with the request */
			dp_req_abort(c, i, -EPERM, route_error(-EPERM));
			return;
		}
		dp_count(c, DP_STAT(fallbacks), 1);
		start_generate(c, i, &plan.first);
		return;
	case RT_PLAN_BOOTSTRAP: /* the daemon does not configure bootstrap mode */
		r->prefill = plan.first;
		r->gen_choice = plan.decode;
		dp_req_abort(c, i, -EINVAL, "bootstrap mode is not served by this router");
		return;
	default:
		start_generate(c, i, &plan.first);
		return;
	}
}

void dp_req_cancel_client(struct dp_core *c, uint32_t conn, uint64_t client_id)
{
	uint32_t i = find_client_req(c, conn, client_id);

	if (i == DP_NIL)
		return;
	cancel_on_worker(c, i);
	c->reqs[i].acc.len = 0; /* what was not streamed stays unsent */
	send_done(c, &c->reqs[i], PDC_FINISH_CANCELLED);
	dp_count(c, DP_STAT(cancelled), 1);
	free_req(c, i);
}

void dp_req_drop_conn(struct dp_core *c, uint32_t conn)
{
	while (c->conns[conn].reqs.head != DP_NIL) {
		uint32_t i = c->conns[conn].reqs.head;

		cancel_on_worker(c, i);
		dp_count(c, DP_STAT(cancelled), 1);
		free_req(c, i);
	}
}

/* ---- from the workers ---- */

static void on_prefilled(struct dp_core *c, uint32_t i, const struct shm_lane_answer *a)
{
	struct dp_req *r = &c->reqs[i];
	struct rt_choice ch;
	uint64_t t0;
	int rc;

	/* The prefill's work is done: its prompt tokens stop counting (and the prefill stage
	 * tracks no blocks, so nothing of it is counted any more). The handle is kept until the
	 * request ends: while it is held, the prefill target's id is not handed to another
	 * worker, so the decode stage, and any retry of it, reads the right transfer rule. */
	rt_first_token(&c->rt, r->prefill.load);
	if (dp_buf_reserve(&c->slab, &r->params, a->n ? a->n : 1)) {
		dp_count(c, DP_STAT(overloaded), 1);
		dp_req_abort(c, i, -ENOBUFS,
			     "router overloaded: no buffer for the KV-transfer params");
		return;
	}
	memcpy(r->params.p, a->data, a->n); /* out of shared memory: ours from now on */
	r->params.len = a->n;
	r->peer = NULL;
	t0 = dp_now_ns();
	rc = rt_route_decode(&c->rt, &r->rq, r->prefill.target, &ch);
	dp_hist_add(&c->lat[DP_LAT_ROUTE], dp_now_ns() - t0);
	if (rc == -ENOENT) { /* the prefill worker left before its answer was read */
		prefill_failed(c, i, "the prefill worker went away");
		return;
	}
	if (rc) {
		dp_req_abort(c, i, rc, route_error(rc));
		return;
	}
	start_generate(c, i, &ch);
}

static void on_tokens(struct dp_core *c, uint32_t i, const struct shm_lane_answer *a)
{
	struct dp_req *r = &c->reqs[i];
	uint32_t n = a->n;

	if (!r->got_token) {
		r->got_token = true;
		rt_first_token(&c->rt, r->gen_choice.load);
	}
	if (n > r->max_tokens - r->generated) { /* a worker that overshoots is cut short */
		dp_count(c, DP_STAT(answers_stray), 1);
		n = r->max_tokens - r->generated;
	}
	if (!n)
		return;
	r->generated += n;
	dp_count(c, DP_STAT(tokens_out), n);
	if (r->flags & PDC_STREAM) {
		send_tokens(c, r, a->data, n);
	} else if (dp_buf_reserve(&c->slab, &r->acc, r->acc.len + 4ull * n)) {
		dp_count(c, DP_STAT(overloaded), 1);
		dp_req_abort(c, i, -ENOBUFS,
			     "router overloaded: no buffer for the generated tokens");
	} else {
		memcpy(r->acc.p + r->acc.len, a->data, 4ull * n);
		r->acc.len += 4 * n;
	}
}

int dp_req_answer(struct dp_core *c, struct dp_peer *p, uint16_t type, const uint8_t *rec,
		  uint32_t len)
{
	struct shm_lane_answer a;
	struct dp_req *r;
	uint32_t i;
	char msg[SHM_LANE_MAX_ERROR + 1];

	if (shm_lane_check_answer(type, rec, len, &a))
		return -EBADMSG;
	i = (uint32_t)(a.request_id & ((1u << SLOT_BITS) - 1));
	r = i < c->nreqs ? &c->reqs[i] : NULL;
	/* Only the worker holding the request's current stage may answer it, and only with
	 * what that stage expects; anything else (a late answer to a cancelled request, a
	 * worker guessing ids) is dropped and counted. */
	if (!r || r->gen != a.request_id >> SLOT_BITS || r->state == DP_REQ_FREE || r->peer != p ||
	    r->queue == DP_Q_BLOCKED ||
	    (type == SHM_LANE_PREFILLED && r->state != DP_REQ_PREFILL) ||
	    ((type == SHM_LANE_TOKENS || type == SHM_LANE_DONE) && r->state != DP_REQ_DECODE)) {
		dp_count(c, DP_STAT(answers_stray), 1);
		return 0;
	}
	switch (type) {
	case SHM_LANE_PREFILLED:
		on_prefilled(c, i, &a);
		break;
	case SHM_LANE_TOKENS:
		on_tokens(c, i, &a);
		break;
	case SHM_LANE_DONE:
		send_done(c, r, a.value);
		dp_count(c, DP_STAT(completed), 1);
		dp_count(c, DP_STAT(cached_tokens), (uint64_t)r->overlap * r->block_size);
		free_req(c, i);
		break;
	case SHM_LANE_ERROR:
		memcpy(msg, a.data, a.n);
		msg[a.n] = 0;
		r->peer = NULL; /* the worker ended it: nothing to cancel there */
		if (r->state == DP_REQ_PREFILL)
			prefill_failed(c, i, msg[0] ? msg : "the prefill worker failed");
		else
			generate_failed(c, i, false, (int32_t)a.value,
					msg[0] ? msg : "worker error");
		break;
	}
	return 0;
}

void dp_req_peer_gone(struct dp_core *c, struct dp_peer *p)
{
	for (int q = DP_Q_PREFILL; q < DP_QUEUES; q++) {
		uint32_t i = c->queue[q].head;

		while (i != DP_NIL) {
			uint32_t next = c->reqs[i].q_link.next;
			struct dp_req *r = &c->reqs[i];

			/* A request re-routed below moves to a queue's tail on another peer;
			 * @next was taken first, and a request never returns to a gone peer. */
			if (r->peer == p) {
				r->peer = NULL; /* nothing to cancel on a worker that is gone */
				if (r->state == DP_REQ_PREFILL)
					prefill_failed(c, i, "the prefill worker went away");
				else
					generate_failed(c, i, true, -ECONNRESET,
							"the worker went away");
			}
			i = next;
		}
	}
}

void dp_req_retry_blocked(struct dp_core *c)
{
	uint32_t n = c->queue[DP_Q_BLOCKED].n;

	/* Each waiting post is tried once per round, in order; one that fails again goes back
	 * to the tail. */
	while (n--) {
		uint32_t i = c->queue[DP_Q_BLOCKED].head;
		struct dp_req *r;
		int rc;

		if (i == DP_NIL) /* a failure below settled others that waited too */
			break;
		r = &c->reqs[i];
		rc = post(c, i);

		if (!rc)
			continue;
		if (r->state == DP_REQ_PREFILL)
			prefill_failed(c, i, "the prefill worker could not take the request");
		else
			generate_failed(c, i, true, -EIO, "the worker could not take the request");
	}
}

void dp_req_timeouts(struct dp_core *c)
{
	uint64_t now = c->now_ns;
	uint32_t i;

	/* Each queue is in posting order and one timeout applies to all of it: only heads. */
	while ((i = c->queue[DP_Q_PREFILL].head) != DP_NIL &&
	       now - c->reqs[i].stage_ns > c->cfg.prefill_timeout_ns) {
		dp_count(c, DP_STAT(timeouts), 1);
		prefill_failed(c, i, "the prefill stage timed out");
	}
	while ((i = c->queue[DP_Q_DECODE].head) != DP_NIL &&
	       now - c->reqs[i].stage_ns > c->cfg.decode_timeout_ns) {
		dp_count(c, DP_STAT(timeouts), 1);
		dp_req_abort(c, i, -ETIMEDOUT, "the worker did not finish in time");
	}
	/* Waiting for ring room is bounded by the stage's timeout too. */
	for (i = c->queue[DP_Q_BLOCKED].head; i != DP_NIL;) {
		struct dp_req *r = &c->reqs[i];
		uint32_t next = r->q_link.next;
		uint64_t limit = r->state == DP_REQ_PREFILL ? c->cfg.prefill_timeout_ns
							    : c->cfg.decode_timeout_ns;

		if (now - r->stage_ns > limit) {
			dp_count(c, DP_STAT(timeouts), 1);
			r->peer = NULL; /* never posted */
			if (r->state == DP_REQ_PREFILL)
				prefill_failed(c, i, "the prefill worker's ring stayed full");
			else
				dp_req_abort(c, i, -ETIMEDOUT, "the worker's ring stayed full");
		}
		i = next;
	}
}
