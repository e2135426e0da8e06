/*
 * Description: the whole daemon in one process, so that ThreadSanitizer sees every thread: the
 * daemon (control/daemon.h) with two dataplane cores and a control thread polling it; workers
 * on libpdworker that answer at once and keep leaving (closing, vanishing with requests taken,
 * going silent until their lease lapses, writing garbage into a lane) and coming back; clients
 * on libpdclient sending pipelined requests (streamed or not, peeks, pins, cancels); and an
 * admin poller asking for counters, workers and explanations. Every request carries sampling
 * parameters made from its prompt, which every worker it reaches checks byte for byte, in
 * prefill, decode and aggregated mode alike. Every request must end with exactly one final
 * frame: DONE with tokens 1000.. in order, a cancelled DONE, or an ERROR
 * whose code churn explains. When the clients are done, the router's counters must match
 * theirs; at the end, requests still in flight get -ESHUTDOWN and the final counters add up.
 * Built plain (no Criterion) so it runs under ThreadSanitizer. Longer than a file should be:
 * the point is one process holding every party, and splitting it would only scatter the
 * phases that tie them together.
 * Usage: stress_daemon [seconds]; exits 0 after "stress_daemon: ... ok", 77 when the machine
 * cannot place two dataplane cores or has no io_uring.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "daemon.h"
#include "log.h"
#include "pdclient.h"
#include "pdworker.h"
#include "rng.h"
#include "stress_common.h"

#define FAIL(...) T_STRESS_FAIL("stress_daemon", __VA_ARGS__)

#define DEFAULT_SECONDS 3.0
#define LEASE_MS 2000	   /* also the daemon's --lease-ms, below */
#define STR(x) STR_(x)
#define STR_(x) #x
#define BS 16		   /* block size of every worker */
#define MAX_BLOCKS 8	   /* full blocks of a prompt, besides a partial one */
#define PREFIXES 8	   /* shared prompt prefixes, so the index has overlap to find */
#define CLIENTS 3
#define INFLIGHT 12	   /* requests in flight per client connection */
#define LOST_S 12.0	   /* an answer later than this is a lost request */
#define SHUTDOWN_REQS 6	   /* requests left in flight when the daemon stops */
#define FIRST_TOKEN 1000u

/* What a phase of the run lets the threads do; relaxed: polled flags, joined afterwards. */
static atomic_bool clients_stop;  /* clients send nothing new and drain */
static atomic_bool churn_stop;	  /* workers stay registered from now on */
static atomic_bool workers_hold;  /* workers stop taking requests (they stay connected) */
static atomic_bool workers_stop;
static atomic_bool admin_stop;
static atomic_bool control_stop;
static atomic_uint workers_up;	  /* workers registered at least once */
static atomic_uint workers_holding;

static char dir[64], client_addr[96], control_path[96], admin_path[96];
static double t_start;
static struct pd_daemon daemon_;

/* ---- prompts: every token is checkable by the worker that gets it ---- */

/* Token @j of a block whose first token is @key: a worker recomputes it from the key. */
static uint32_t block_token(uint32_t key, uint32_t j)
{
	return j ? (uint32_t)t_mix64((uint64_t)key << 8 | j) : key;
}

/* A prompt of up to MAX_BLOCKS full blocks (the first ones often a shared prefix) and a
 * partial block; returns its length. */
static uint32_t make_prompt(struct t_rng *rng, uint32_t *tok)
{
	uint32_t nb = 1 + t_rng_below(rng, MAX_BLOCKS), tail = t_rng_below(rng, BS);
	uint32_t prefix = t_rng_below(rng, PREFIXES), shared = t_rng_below(rng, nb + 1);

	for (uint32_t b = 0; b <= nb; b++) {
		uint32_t key = b < shared ? (uint32_t)t_mix64(prefix * 64 + b)
					  : (uint32_t)t_rng_next(rng);

		for (uint32_t j = 0; j < (b < nb ? BS : tail); j++)
			tok[b * BS + j] = block_token(key, j);
	}
	return nb * BS + tail;
}

static bool prompt_intact(const uint32_t *tok, uint32_t n)
{
	for (uint32_t i = 0; i < n; i++)
		if (tok[i] != block_token(tok[i - i % BS], i % BS))
			return false;
	return true;
}

/* The sampling parameters sent with the prompt @tok, into @out: none, a few bytes or the most
 * a frame carries, any byte values, all made from a hash of the whole prompt, so that the
 * worker that gets the prompt knows what must come with it. Returns their length. */
static uint32_t make_sampling(const uint32_t *tok, uint32_t n, uint8_t *out)
{
	uint64_t h = n, w;
	uint32_t len;

	for (uint32_t i = 0; i < n; i++)
		h = t_mix64(h ^ tok[i]);
	len = h % 8 == 0 ? 0 : h % 8 == 1 ? PDC_SAMPLING_MAX : (uint32_t)(h >> 8) % 300;
	for (uint32_t i = 0; i < len; i += 8) {
		w = t_mix64(h + i);
		memcpy(out + i, &w, len - i < 8 ? len - i : 8);
	}
	return len;
}

/* Did the request's sampling parameters arrive as the client sent them? */
static bool sampling_intact(const struct pdw_request *r)
{
	static _Thread_local uint8_t want[PDC_SAMPLING_MAX];
	uint32_t n = make_sampling(r->tokens, r->req.ntokens, want);

	return r->req.nsampling == n && (!n || !memcmp(r->sampling, want, n));
}

/* ---- workers ---- */

struct worker {
	enum pdw_worker_type type;
	const char *model, *rack;
	bool garbage; /* breaks a lane now and then */
	bool zombie;  /* once, goes silent until its lease lapses */
	pthread_t tid;
	struct pdw w;
	bool registered;
	struct t_rng rng;
	double leave_at;
	/* Written by the worker's thread, read after join. */
	unsigned registrations, answers, cancels, lanes_broken, leases_lapsed, events_lost;
	unsigned sampled[SHM_LANE_DECODE + 1]; /* requests with sampling parameters, by mode */
};

static struct worker workers[] = {
	{.type = PDW_PREFILL, .model = "dis", .rack = "r1"},
	{.type = PDW_PREFILL, .model = "dis", .rack = "r2"},
	{.type = PDW_DECODE, .model = "dis", .rack = "r1"},
	{.type = PDW_DECODE, .model = "dis", .rack = "r2"},
	{.type = PDW_AGGREGATED, .model = "agg", .rack = "r1", .garbage = true},
	{.type = PDW_AGGREGATED, .model = "agg", .rack = "r2", .zombie = true},
	{.type = PDW_AGGREGATED, .model = "agg", .rack = "r1"},
};

#define NWORKERS (sizeof(workers) / sizeof(workers[0]))

/* Is the router still there? A DUMP is answered with CLEARED alone: these workers keep no
 * cache to resend. */
static bool router_here(struct worker *k)
{
	int rc = pdw_control(&k->w);

	if (rc == PDW_WANTS_DUMP && pdw_publish_cleared(&k->w, 0))
		k->events_lost++;
	return rc >= 0;
}

/* Post an answer, waiting while the lane is full; false when the router went away. */
#define POST(k, call)                                                                    \
	({                                                                               \
		int rc_;                                                                 \
		while ((rc_ = (call)) == -ENOBUFS && router_here(k))                    \
			usleep(50);                                                      \
		if (rc_ && rc_ != -ENOBUFS)                                              \
			FAIL("worker %u: posting an answer: %d\n", k->w.worker, rc_);    \
		rc_ == 0;                                                                \
	})

/* STORED for the prompt's full blocks (by token ids, so the control thread hashes them), and
 * now and then REMOVED for the last of them: the index keeps changing under the cores. */
static void publish_prompt(struct worker *k, const uint32_t *tok, uint32_t n)
{
	uint64_t ext[MAX_BLOCKS], h = 0;
	uint32_t nb = n / BS;

	if (!nb)
		return;
	for (uint32_t b = 0; b < nb; b++)
		ext[b] = (h = t_mix64(h ^ tok[b * BS])) | 1; /* the block's key names its chain */
	if (pdw_publish_stored(&k->w, 0, NULL, ext, nb, NULL, tok))
		k->events_lost++;
	else if (t_rng_chance(&k->rng, 10) && pdw_publish_removed(&k->w, 0, &ext[nb - 1], 1))
		k->events_lost++;
	if (t_rng_chance(&k->rng, 5))
		pdw_publish_load(&k->w, 0, t_rng_below(&k->rng, 100), 0);
}

/* max_tokens tokens FIRST_TOKEN.. in records of random sizes, then DONE. */
static bool answer_tokens(struct worker *k, const struct pdw_request *r)
{
	static _Thread_local uint32_t buf[SHM_LANE_MAX_TOKENS_PER_RECORD];
	uint32_t max = r->req.max_tokens;

	for (uint32_t at = 0; at < max;) {
		uint32_t n = max - at, most = t_rng_chance(&k->rng, 50) ? 4 : 4096;

		n = n < most ? n : most;
		for (uint32_t i = 0; i < n; i++)
			buf[i] = FIRST_TOKEN + at + i;
		if (!POST(k, pdw_post_tokens(&k->w, r->lane, r->req.request_id, buf, n)))
			return false;
		at += n;
	}
	return POST(k, pdw_post_done(&k->w, r->lane, r->req.request_id, 1));
}

/* Is @r what a worker of our type may be asked? */
static bool request_fits(struct worker *k, const struct pdw_request *r)
{
	const struct shm_lane_request *q = &r->req;
	char want[32];

	if (q->dp_rank != 0 || !prompt_intact(r->tokens, q->ntokens) || !q->max_tokens)
		return false;
	switch (k->type) {
	case PDW_PREFILL:
		return q->mode == SHM_LANE_PREFILL && q->max_tokens == 1;
	case PDW_AGGREGATED:
		return q->mode == SHM_LANE_AGGREGATED;
	default: /* decode: a prefill's params, or decode-only (fallback) */
		if (q->mode == SHM_LANE_AGGREGATED)
			return !q->nparams;
		snprintf(want, sizeof(want), "pf:%u", q->prefill_worker);
		return q->mode == SHM_LANE_DECODE && q->nparams == strlen(want) &&
		       !memcmp(r->params, want, q->nparams);
	}
}

/* Answer @r at once; false when the router went away meanwhile. */
static bool answer(struct worker *k, const struct pdw_request *r)
{
	char params[32];
	int n;

	k->answers++;
	if (!request_fits(k, r))
		FAIL("worker %u (type %d) got a request it cannot serve: mode %u, %u tokens\n",
		     k->w.worker, k->type, r->req.mode, r->req.ntokens);
	else if (!sampling_intact(r))
		FAIL("worker %u: %u bytes of sampling parameters in mode %u, not the client's\n",
		     k->w.worker, r->req.nsampling, r->req.mode);
	else if (r->req.nsampling)
		k->sampled[r->req.mode]++;
	if (k->type != PDW_DECODE)
		publish_prompt(k, r->tokens, r->req.ntokens);
	if (t_rng_chance(&k->rng, 2))
		return POST(k, pdw_post_error(&k->w, r->lane, r->req.request_id, -EIO,
					      "injected failure"));
	if (k->type != PDW_PREFILL)
		return answer_tokens(k, r);
	n = snprintf(params, sizeof(params), "pf:%u", k->w.worker);
	return POST(k, pdw_post_prefilled(&k->w, r->lane, r->req.request_id, FIRST_TOKEN, params,
					  (uint32_t)n));
}

/* Take every request waiting; @reply false: take them and answer nothing (a crash). Returns
 * false when the router went away. */
static bool serve(struct worker *k, bool reply)
{
	struct pdw_request r;
	int rc;

	while ((rc = pdw_poll(&k->w, &r)) == 0) {
		bool ok = true;

		if (r.cancel)
			k->cancels++;
		else if (reply)
			ok = answer(k, &r);
		pdw_done_with(&k->w, &r);
		if (!ok)
			return false;
	}
	if (rc != -EAGAIN)
		FAIL("worker %u: pdw_poll: %d (the router broke a lane)\n", k->w.worker, rc);
	return rc == -EAGAIN;
}

static void worker_leave(struct worker *k)
{
	pdw_close(&k->w);
	k->registered = false;
}

static bool worker_join(struct worker *k)
{
	const char *names[] = {"rack"}, *values[] = {k->rack};
	struct pdw_register_args a = {
	    .fixed = {.worker_type = k->type,
		      .model_type = k->type == PDW_PREFILL ? PDW_MODEL_EMPTY : PDW_MODEL_CHAT,
		      .needs = k->type == PDW_PREFILL  ? PDW_NEEDS_DECODE
			       : k->type == PDW_DECODE ? PDW_NEEDS_PREFILL
						       : 0,
		      .block_size = BS, .kv_capacity_blocks = 4096, .max_batched_tokens = 8192,
		      .dp_ranks = 1},
	    .model = k->model, .endpoint = "generate",
	    .domain_names = names, .domain_values = values, .ndomains = 1};
	int rc = pdw_connect(&k->w, control_path);

	if (!rc)
		rc = pdw_register(&k->w, &a, 2000);
	if (rc) {
		if (rc == -EPERM)
			FAIL("worker refused: %s\n", pdw_reason(&k->w));
		pdw_close(&k->w);
		return false;
	}
	if (!k->registrations++)
		atomic_fetch_add_explicit(&workers_up, 1, memory_order_relaxed);
	k->registered = true;
	k->leave_at = now_s() + 0.03 + 0.3 * t_rng_below(&k->rng, 1000) / 1000.0;
	return true;
}

/* Silent (no heartbeat, no answers) until the router lets the lease lapse and hangs up. */
static void go_silent(struct worker *k)
{
	double end = now_s() + 4.0 * LEASE_MS / 1000.0;

	k->zombie = false;
	while (router_here(k)) {
		if (now_s() > end) {
			FAIL("worker %u: silent for %d ms and still registered\n", k->w.worker,
			     4 * LEASE_MS);
			break;
		}
		usleep(5000);
	}
	k->leases_lapsed++;
	worker_leave(k);
}

/* A record type no lane knows on one of our answer lanes: the core reading it must give the
 * lane up and the control thread must then hang up on us. */
static void break_lane(struct worker *k)
{
	struct shm_ring *ring = &k->w.mbox.resp[t_rng_below(&k->rng, k->w.mbox.cfg.lanes)];
	double end = now_s() + 5.0;
	uint8_t *p;
	int err;

	p = shm_ring_reserve(ring, 77, 0, 16, &err);
	if (!p)
		return;
	memset(p, 0xA5, 16);
	shm_ring_commit(ring);
	shm_ring_publish(ring);
	/* The other lane still works until the hang-up: keep serving it. */
	while (router_here(k) && serve(k, true)) {
		if (now_s() > end) {
			FAIL("worker %u: a broken lane for 5 s and still registered\n",
			     k->w.worker);
			break;
		}
		pdw_heartbeat(&k->w);
		pdw_wait(&k->w, 1000000);
	}
	k->lanes_broken++;
	worker_leave(k);
}

/* Time to go: one of the ways a worker leaves, chosen at random. */
static void churn(struct worker *k)
{
	if (k->zombie && now_s() - t_start > 0.3)
		go_silent(k);
	else if (k->garbage && t_rng_chance(&k->rng, 25))
		break_lane(k);
	else
		worker_leave(k);
}

static void *worker_main(void *arg)
{
	struct worker *k = arg;
	bool held = false;

	while (!atomic_load_explicit(&workers_stop, memory_order_relaxed)) {
		bool hold = atomic_load_explicit(&workers_hold, memory_order_relaxed);

		if (hold && !held && k->registered) {
			held = true;
			atomic_fetch_add_explicit(&workers_holding, 1, memory_order_relaxed);
		}
		if (!k->registered) {
			if (!worker_join(k))
				usleep(1000);
			continue;
		}
		pdw_heartbeat(&k->w);
		if (!router_here(k)) {
			worker_leave(k);
			continue;
		}
		if (hold) {
			usleep(1000);
			continue;
		}
		if (!atomic_load_explicit(&churn_stop, memory_order_relaxed) &&
		    now_s() > k->leave_at) {
			/* A crash: what is in the lanes now is taken and never answered. */
			if (t_rng_chance(&k->rng, 30))
				serve(k, false);
			churn(k);
			continue;
		}
		if (!serve(k, true))
			continue;
		pdw_wait(&k->w, 1000000);
	}
	if (k->registered)
		worker_leave(k);
	return NULL;
}

/* ---- clients ---- */

enum outcome { O_DONE, O_CANCELLED, O_PEEK, O_ERROR, OUTCOMES };

/* Error codes a request may end with while workers come and go (docs/protocol.md). */
static const int allowed_errors[] = {-ECONNRESET, -EPERM, -ENODEV, -EBUSY, -EXDEV,
				     -ETIMEDOUT, -ENOBUFS, -EIO};
#define NALLOWED (sizeof(allowed_errors) / sizeof(allowed_errors[0]))

struct pending {
	uint64_t id;
	double sent;
	uint32_t ntokens, max_tokens, flags, received;
	uint32_t pin; /* the worker it is pinned to, or PDC_NO_WORKER */
	bool agg, routed, cancelled;
};

struct client {
	pthread_t tid;
	struct pdc_client *c;
	struct t_rng rng;
	uint64_t next_id;
	struct pending p[INFLIGHT];
	uint32_t n;
	uint32_t pin[2]; /* a worker seen serving each model, for pinned requests */
	/* Read after join. */
	uint64_t sent, outcome[OUTCOMES], errors_by[NALLOWED], tokens;
};

/* Send a random request; false when the connection failed. */
static bool send_one(struct client *cl)
{
	static _Thread_local uint32_t tok[(MAX_BLOCKS + 1) * BS];
	static _Thread_local uint8_t samp[PDC_SAMPLING_MAX];
	struct pending *q = &cl->p[cl->n];
	bool agg = t_rng_chance(&cl->rng, 40);
	struct pdc_request_args a = {
	    .id = cl->next_id++, .model = agg ? "agg" : "dis", .tokens = tok, .sampling = samp};

	pdc_request_defaults(&a.fixed);
	a.ntokens = make_prompt(&cl->rng, tok);
	a.sampling_len = make_sampling(tok, a.ntokens, samp);
	a.max_tokens = t_rng_chance(&cl->rng, 2) ? 3000 + t_rng_below(&cl->rng, 3000)
						 : 1 + t_rng_below(&cl->rng, 40);
	a.flags = (t_rng_chance(&cl->rng, 50) ? PDC_STREAM : 0) |
		  (t_rng_chance(&cl->rng, 10) ? PDC_PEEK : 0);
	if (t_rng_chance(&cl->rng, 5) && cl->pin[agg] != PDC_NO_WORKER) {
		a.fixed.pin_worker = cl->pin[agg];
		a.fixed.pin_dp_rank = 0;
	}
	*q = (struct pending){.id = a.id, .sent = now_s(), .ntokens = a.ntokens,
			      .max_tokens = a.max_tokens, .flags = a.flags,
			      .pin = a.fixed.pin_worker, .agg = agg};
	if (pdc_send(cl->c, &a)) {
		FAIL("pdc_send failed\n");
		return false;
	}
	cl->n++;
	cl->sent++;
	return true;
}

static void finish(struct client *cl, uint32_t i, enum outcome o)
{
	cl->outcome[o]++;
	cl->p[i] = cl->p[--cl->n];
}

static void on_routed(struct client *cl, uint32_t i, const struct pdc_routed *m)
{
	struct pending *q = &cl->p[i];
	bool disagg = m->plan == PDC_PLAN_DISAGG;

	if (q->routed)
		FAIL("request %lu: a second ROUTED\n", (unsigned long)q->id);
	if (q->agg ? m->plan != PDC_PLAN_AGGREGATED : !disagg && m->plan != PDC_PLAN_FALLBACK)
		FAIL("request %lu: plan %u for model %s\n", (unsigned long)q->id, m->plan,
		     q->agg ? "agg" : "dis");
	if ((disagg && m->prefill_worker == PDC_NO_WORKER) ||
	    (m->worker == PDC_NO_WORKER && !(disagg && (q->flags & PDC_PEEK))))
		FAIL("request %lu: ROUTED names no worker\n", (unsigned long)q->id);
	if (q->pin != PDC_NO_WORKER && m->worker != PDC_NO_WORKER && m->worker != q->pin)
		FAIL("request %lu: pinned to worker %u, routed to worker %u\n",
		     (unsigned long)q->id, q->pin, m->worker);
	q->routed = true;
	if (m->worker != PDC_NO_WORKER)
		cl->pin[q->agg] = m->worker;
	if (q->flags & PDC_PEEK)
		finish(cl, i, O_PEEK);
}

static void on_tokens(struct client *cl, uint32_t i, const struct pdc_event *ev)
{
	struct pending *q = &cl->p[i];

	if (!q->routed || (q->flags & PDC_PEEK) || ev->tokens.n > q->max_tokens - q->received) {
		FAIL("request %lu: %u tokens after %u of %u%s\n", (unsigned long)q->id,
		     ev->tokens.n, q->received, q->max_tokens, q->routed ? "" : ", not routed");
		return;
	}
	for (uint32_t t = 0; t < ev->tokens.n; t++) {
		uint32_t id;

		memcpy(&id, ev->tokens.ids + 4 * t, 4);
		if (id != FIRST_TOKEN + q->received + t) {
			FAIL("request %lu: token %u is %u\n", (unsigned long)q->id,
			     q->received + t, id);
			break;
		}
	}
	q->received += ev->tokens.n;
	cl->tokens += ev->tokens.n;
}

static void on_done(struct client *cl, uint32_t i, const struct pdc_done *d)
{
	struct pending *q = &cl->p[i];

	if (d->finish_reason == PDC_FINISH_CANCELLED) {
		if (!q->cancelled)
			FAIL("request %lu: cancelled, but the client did not\n",
			     (unsigned long)q->id);
		finish(cl, i, O_CANCELLED);
		return;
	}
	if (d->finish_reason != PDC_FINISH_LENGTH || !q->routed || (q->flags & PDC_PEEK) ||
	    q->received != q->max_tokens || d->completion_tokens != q->max_tokens ||
	    d->prompt_tokens != q->ntokens || d->cached_tokens > q->ntokens)
		FAIL("request %lu: DONE (finish %u, %u of %u tokens, completion %u, prompt %u "
		     "of %u, cached %u)\n", (unsigned long)q->id, d->finish_reason, q->received,
		     q->max_tokens, d->completion_tokens, d->prompt_tokens, q->ntokens,
		     d->cached_tokens);
	finish(cl, i, O_DONE);
}

static void on_error(struct client *cl, uint32_t i, const struct pdc_event *ev)
{
	struct pending *q = &cl->p[i];

	for (uint32_t k = 0; k < NALLOWED; k++)
		if (ev->error.error == allowed_errors[k]) {
			cl->errors_by[k]++;
			finish(cl, i, O_ERROR);
			return;
		}
	FAIL("request %lu (%s%s%s): ERROR %d \"%.*s\"\n", (unsigned long)q->id,
	     q->agg ? "agg" : "dis", q->flags & PDC_STREAM ? ", stream" : "",
	     q->flags & PDC_PEEK ? ", peek" : "", ev->error.error, (int)ev->error.len,
	     ev->error.msg);
	finish(cl, i, O_ERROR);
}

static void on_event(struct client *cl, const struct pdc_event *ev)
{
	uint32_t i = 0;

	while (i < cl->n && cl->p[i].id != ev->id)
		i++;
	if (i == cl->n) {
		FAIL("frame type %u for request %lu, which has had its last frame%s\n", ev->type,
		     (unsigned long)ev->id, ev->id ? "" : " (a connection error)");
		return;
	}
	switch (ev->type) {
	case PDC_ROUTED: on_routed(cl, i, &ev->routed); break;
	case PDC_TOKENS: on_tokens(cl, i, ev); break;
	case PDC_DONE: on_done(cl, i, &ev->done); break;
	default: on_error(cl, i, ev); break;
	}
}

/* Cancel a request now and then: before it is routed, while it runs, or as it ends. */
static void maybe_cancel(struct client *cl)
{
	struct pending *q;

	if (!cl->n || !t_rng_chance(&cl->rng, 8))
		return;
	q = &cl->p[t_rng_below(&cl->rng, cl->n)];
	if (q->cancelled || (q->flags & PDC_PEEK))
		return;
	q->cancelled = true;
	if (pdc_cancel(cl->c, q->id))
		FAIL("pdc_cancel failed\n");
}

/* Send while the run lasts, then drain: a failure seen on the way does not stop the client,
 * so the counters still add up and only the first cause is reported. */
static void *client_main(void *arg)
{
	struct client *cl = arg;
	struct pdc_event ev;

	for (;;) {
		bool run = !atomic_load_explicit(&clients_stop, memory_order_relaxed);
		int rc;

		if (!run && !cl->n)
			break;
		while (run && cl->n < INFLIGHT)
			if (!send_one(cl))
				return NULL;
		if (run)
			maybe_cancel(cl);
		rc = pdc_next(cl->c, &ev, 20);
		if (rc == 0) {
			on_event(cl, &ev);
			continue;
		}
		if (rc != -ETIMEDOUT) {
			FAIL("pdc_next: %d with %u requests in flight\n", rc, cl->n);
			break;
		}
		for (uint32_t i = 0; i < cl->n; i++)
			if (now_s() - cl->p[i].sent > LOST_S) {
				FAIL("request %lu lost: no last frame in %.0f s\n",
				     (unsigned long)cl->p[i].id, LOST_S);
				cl->p[i--] = cl->p[--cl->n];
			}
	}
	return NULL;
}

/* ---- the admin socket ---- */

/* Send @cmd and read the whole answer into @buf (NUL-terminated); its length, or -1. */
static long admin_ask(const char *cmd, char *buf, size_t cap)
{
	struct sockaddr_un a = {.sun_family = AF_UNIX};
	int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	size_t len = 0;
	ssize_t n = 0;

	strcpy(a.sun_path, admin_path);
	if (fd < 0 || connect(fd, (struct sockaddr *)&a, sizeof(a)) ||
	    send(fd, cmd, strlen(cmd), MSG_NOSIGNAL) != (ssize_t)strlen(cmd)) {
		if (fd >= 0)
			close(fd);
		return -1;
	}
	/* The answer is sent whole, then the router closes: read to the end. */
	while (len < cap - 1 && poll(&(struct pollfd){fd, POLLIN, 0}, 1, 5000) > 0 &&
	       (n = read(fd, buf + len, cap - 1 - len)) > 0)
		len += (size_t)n;
	close(fd);
	buf[len] = 0;
	return n == 0 ? (long)len : -1;
}

/* The number after "@key": in @json from @from on; UINT64_MAX when missing. */
static uint64_t json_u64(const char *json, const char *from, const char *key)
{
	char pat[64];
	const char *at = strstr(json, from);

	snprintf(pat, sizeof(pat), "\"%s\":", key);
	at = at ? strstr(at, pat) : NULL;
	return at ? strtoull(at + strlen(pat), NULL, 10) : UINT64_MAX;
}

struct admin_tally {
	uint64_t answers, no_answer;
};

static void *admin_main(void *arg)
{
	static const char *const cmds[] = {"counters\n", "workers\n", "explain\n", "models\n"};
	struct admin_tally *t = arg;
	size_t cap = 1u << 20;
	char *buf = malloc(cap);

	for (uint32_t k = 0; buf && !atomic_load_explicit(&admin_stop, memory_order_relaxed);
	     k++) {
		const char *cmd = cmds[k % 4];
		long n = admin_ask(cmd, buf, cap);

		if (n <= 0 || (cmd[0] == 'e' ? strncmp(buf, "core 0:", 7) : buf[0] != '{')) {
			FAIL("admin %.*s: %ld bytes: %.80s\n", (int)strlen(cmd) - 1, cmd, n,
			     n > 0 ? buf : "");
			break;
		}
		t->answers++;
		for (const char *s = buf; (s = strstr(s, "no answer")); s++)
			t->no_answer++;
		usleep(2000);
	}
	free(buf);
	return NULL;
}

/* ---- the daemon ---- */

static void *control_main(void *arg)
{
	int rc;

	(void)arg;
	while (!atomic_load_explicit(&control_stop, memory_order_relaxed))
		if ((rc = pd_daemon_poll(&daemon_, 1))) {
			FAIL("pd_daemon_poll: %d\n", rc);
			break;
		}
	return NULL;
}

/*
 * Start the daemon on two dataplane cores: automatic placement first. A machine of two cores
 * keeps one for the control thread there (dp_place() refuses with -ENOSPC), so then the first
 * two cpus this process may use, named with --cpus. Returns 0, 77 to skip (no placement, no
 * io_uring), or 1. The options keep pointing into argv, which is static for that reason.
 */
static int daemon_up(struct pd_options *o)
{
	static char cpus[32];
	static char *argv[] = {"stress_daemon", "--listen", client_addr, "--control-socket",
			       control_path, "--admin-socket", admin_path, "--no-pin",
			       "--lease-ms", STR(LEASE_MS), "--kv-transfer-domain", "rack",
			       "--log-level", "warn", "--max-requests", "4096",
			       "--core-memory-mb", "256", "--prefill-timeout-ms", "5000",
			       "--decode-timeout-ms", "5000", "--dataplane-cores", "2", NULL};
	int argc = sizeof(argv) / sizeof(argv[0]) - 1, rc = 0;
	char err[512];
	cpu_set_t set;

	for (int attempt = 0; attempt < 2; attempt++) {
		optind = 0; /* getopt starts over */
		if (pd_options_parse(o, argc, argv, err, sizeof(err))) {
			fprintf(stderr, "stress_daemon: options: %s\n", err);
			return 1;
		}
		pd_log_setup(o->log_level, o->log_format);
		rc = pd_daemon_start(&daemon_, o, err, sizeof(err));
		if (!rc)
			return 0;
		fprintf(stderr, "stress_daemon: %s %s: %s\n", argv[argc - 2], argv[argc - 1], err);
		pd_daemon_stop(&daemon_);
		memset(&daemon_, 0, sizeof(daemon_));
		if (rc != -ENOSPC || sched_getaffinity(0, sizeof(set), &set))
			break;
		for (int cpu = 0, n = 0; cpu < CPU_SETSIZE && n < 2; cpu++)
			if (CPU_ISSET(cpu, &set))
				snprintf(cpus + strlen(cpus), sizeof(cpus) - strlen(cpus), "%s%d",
					 n++ ? "," : "", cpu);
		argv[argc - 2] = "--cpus";
		argv[argc - 1] = cpus;
		fprintf(stderr, "stress_daemon: trying --cpus %s\n", cpus);
	}
	return rc == -ENOSPC || strstr(err, "io_uring") ? 77 : 1;
}

/* pd_daemon_stop(), its log (the final counters) caught in a file and parsed. */
static int daemon_down(struct dp_core_stats *fin)
{
	char path[128], line[4096];
	int saved = dup(2), fd;
	FILE *f;

	snprintf(path, sizeof(path), "%s/stop.log", dir);
	fd = open(path, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
	if (fd < 0 || saved < 0)
		return -1;
	pd_log_setup(PD_LOG_INFO, PD_LOG_LOGFMT); /* the control thread is joined: no logger */
	dup2(fd, 2);
	pd_daemon_stop(&daemon_);
	dup2(saved, 2);
	close(saved);
	f = fdopen(fd, "r");
	if (!f)
		return -1;
	rewind(f);
	memset(fin, 0xff, sizeof(*fin));
	while (fgets(line, sizeof(line), f)) {
		const char *c = strstr(line, "counters_final");

		if (!c) {
			fputs(line, stderr); /* anything else stop said, sanitizers' reports too */
			continue;
		}
#define FIELD(name) (strstr(c, " " #name "=") ? strtoull(strstr(c, " " #name "=") + \
							  sizeof(#name) + 1, NULL, 10) : UINT64_MAX)
		fin->requests = FIELD(requests);
		fin->completed = FIELD(completed);
		fin->errors = FIELD(errors);
		fin->cancelled = FIELD(cancelled);
		fin->peeks = FIELD(peeks);
#undef FIELD
	}
	fclose(f);
	unlink(path);
	return 0;
}

/* ---- the run ---- */

static bool wait_until(atomic_uint *v, unsigned want, double seconds)
{
	double end = now_s() + seconds;

	while (atomic_load_explicit(v, memory_order_relaxed) < want && now_s() < end)
		usleep(1000);
	return atomic_load_explicit(v, memory_order_relaxed) >= want;
}

/* The clients' totals, after they were joined. */
static void client_totals(struct client *cl, uint64_t *sent, uint64_t *o, uint64_t *tokens)
{
	for (int i = 0; i < CLIENTS; i++) {
		*sent += cl[i].sent;
		*tokens += cl[i].tokens;
		for (int k = 0; k < OUTCOMES; k++)
			o[k] += cl[i].outcome[k];
	}
}

/* With every client answered, the router's counters are the clients'. */
static void check_quiet_counters(uint64_t sent, const uint64_t *o)
{
	static char buf[1 << 20];
	uint64_t req, done, err, canc, peek;

	if (admin_ask("counters\n", buf, sizeof(buf)) <= 0) {
		FAIL("no counters from the admin socket\n");
		return;
	}
	req = json_u64(buf, "\"total\":", "requests");
	done = json_u64(buf, "\"total\":", "completed");
	err = json_u64(buf, "\"total\":", "errors");
	canc = json_u64(buf, "\"total\":", "cancelled");
	peek = json_u64(buf, "\"total\":", "peeks");
	if (req != sent || done != o[O_DONE] || err != o[O_ERROR] || canc != o[O_CANCELLED] ||
	    peek != o[O_PEEK] || req != done + err + canc + peek)
		FAIL("router counts %lu requests = %lu completed + %lu errors + %lu cancelled + "
		     "%lu peeks; the clients sent %lu and saw %lu + %lu + %lu + %lu\n",
		     (unsigned long)req, (unsigned long)done, (unsigned long)err,
		     (unsigned long)canc, (unsigned long)peek, (unsigned long)sent,
		     (unsigned long)o[O_DONE], (unsigned long)o[O_ERROR],
		     (unsigned long)o[O_CANCELLED], (unsigned long)o[O_PEEK]);
}

/* Requests held by workers that stopped taking any: pd_daemon_stop() must answer them. */
static struct pdc_client *leave_in_flight(void)
{
	static uint8_t samp[PDC_SAMPLING_MAX];
	uint32_t tok[BS];
	struct pdc_client *c;
	struct pdc_event ev;
	struct pdc_request_args a = {.model = "agg",
				     .tokens = tok,
				     .ntokens = BS,
				     .max_tokens = 5,
				     .flags = PDC_STREAM,
				     .sampling = samp};
	unsigned routed = 0;

	pdc_request_defaults(&a.fixed);
	for (uint32_t j = 0; j < BS; j++)
		tok[j] = block_token(7, j);
	a.sampling_len = make_sampling(tok, BS, samp);
	if (pdc_connect(client_addr, &c)) {
		FAIL("shutdown client: cannot connect\n");
		return NULL;
	}
	for (a.id = 1; a.id <= SHUTDOWN_REQS; a.id++)
		if (pdc_send(c, &a))
			FAIL("shutdown client: pdc_send failed\n");
	while (routed < SHUTDOWN_REQS && pdc_next(c, &ev, 5000) == 0 && ev.type == PDC_ROUTED)
		routed++;
	if (routed < SHUTDOWN_REQS)
		FAIL("shutdown client: %u of %u requests routed\n", routed, SHUTDOWN_REQS);
	return c;
}

static void check_shutdown_answers(struct pdc_client *c)
{
	struct pdc_event ev;
	unsigned shut = 0;
	int rc;

	while ((rc = pdc_next(c, &ev, 5000)) == 0) {
		if (ev.type == PDC_ERROR && ev.error.error == -ESHUTDOWN && ev.id)
			shut++;
		else
			FAIL("shutdown client: frame %u (error %d) for request %lu\n", ev.type,
			     ev.type == PDC_ERROR ? ev.error.error : 0, (unsigned long)ev.id);
	}
	if (rc != -ECONNRESET || shut != SHUTDOWN_REQS)
		FAIL("shutdown client: %u -ESHUTDOWN answers of %u, then %d\n", shut,
		     SHUTDOWN_REQS, rc);
	pdc_close(c);
}

static void check_final_counters(const struct dp_core_stats *f, uint64_t sent,
				 const uint64_t *o)
{
	if (f->requests != sent + SHUTDOWN_REQS || f->errors != o[O_ERROR] + SHUTDOWN_REQS ||
	    f->requests != f->completed + f->errors + f->cancelled + f->peeks)
		FAIL("final counters: %lu requests = %lu completed + %lu errors + %lu cancelled "
		     "+ %lu peeks; expected %lu requests, %lu errors\n",
		     (unsigned long)f->requests, (unsigned long)f->completed,
		     (unsigned long)f->errors, (unsigned long)f->cancelled,
		     (unsigned long)f->peeks, (unsigned long)(sent + SHUTDOWN_REQS),
		     (unsigned long)(o[O_ERROR] + SHUTDOWN_REQS));
}

static void start_clients(struct client *cl)
{
	for (int i = 0; i < CLIENTS; i++) {
		cl[i].pin[0] = cl[i].pin[1] = PDC_NO_WORKER;
		t_rng_seed(&cl[i].rng, 100 + (uint64_t)i);
		if (pdc_connect(client_addr, &cl[i].c) ||
		    pthread_create(&cl[i].tid, NULL, client_main, &cl[i])) {
			FAIL("client %d: cannot start\n", i);
			exit(1);
		}
	}
}

static void report(const struct client *cl, const uint64_t *o, uint64_t sent, uint64_t tokens,
		   const struct admin_tally *at)
{
	unsigned reg = 0, lanes = 0, leases = 0, answers = 0, cancels = 0, lost = 0;
	unsigned sampled[SHM_LANE_DECODE + 1] = {0};

	for (size_t k = 0; k < NWORKERS; k++) {
		for (int m = 0; m <= SHM_LANE_DECODE; m++)
			sampled[m] += workers[k].sampled[m];
		reg += workers[k].registrations;
		lanes += workers[k].lanes_broken;
		leases += workers[k].leases_lapsed;
		answers += workers[k].answers;
		cancels += workers[k].cancels;
		lost += workers[k].events_lost;
	}
	printf("stress_daemon: %lu requests: %lu done, %lu cancelled, %lu peeks, %lu errors (",
	       (unsigned long)sent, (unsigned long)o[O_DONE], (unsigned long)o[O_CANCELLED],
	       (unsigned long)o[O_PEEK], (unsigned long)o[O_ERROR]);
	for (size_t k = 0; k < NALLOWED; k++) {
		uint64_t n = 0;

		for (int i = 0; i < CLIENTS; i++)
			n += cl[i].errors_by[k];
		printf("%s%s %lu", k ? ", " : "", strerrorname_np(-allowed_errors[k]),
		       (unsigned long)n);
	}
	printf("); %lu tokens; workers: %u registrations, %u answers (sampling parameters "
	       "checked in %u aggregated, %u prefill, %u decode), %u cancels, %u events not "
	       "sent, %u lanes broken, %u leases lapsed; %lu admin answers (%lu explain "
	       "timeouts); ok\n",
	       (unsigned long)tokens, reg, answers, sampled[SHM_LANE_AGGREGATED],
	       sampled[SHM_LANE_PREFILL], sampled[SHM_LANE_DECODE], cancels, lost, lanes, leases,
	       (unsigned long)at->answers, (unsigned long)at->no_answer);
}

int main(int argc, char **argv)
{
	double seconds = argc > 1 ? atof(argv[1]) : DEFAULT_SECONDS;
	static struct client cl[CLIENTS];
	static struct pd_options o;
	struct admin_tally at = {0};
	struct dp_core_stats fin;
	uint64_t sent = 0, outcome[OUTCOMES] = {0}, tokens = 0;
	pthread_t control, admin;
	struct pdc_client *last;
	int rc;

	signal(SIGPIPE, SIG_IGN);
	snprintf(dir, sizeof(dir), "/tmp/pdstress.XXXXXX");
	if (!mkdtemp(dir))
		return 1;
	snprintf(client_addr, sizeof(client_addr), "unix:%s/c.sock", dir);
	snprintf(control_path, sizeof(control_path), "%s/w.sock", dir);
	snprintf(admin_path, sizeof(admin_path), "%s/a.sock", dir);
	t_start = now_s();
	rc = daemon_up(&o);
	if (rc) {
		rmdir(dir);
		return rc;
	}
	if (pthread_create(&control, NULL, control_main, NULL))
		return 1;
	for (size_t k = 0; k < NWORKERS; k++) {
		t_rng_seed(&workers[k].rng, 1 + k);
		if (pthread_create(&workers[k].tid, NULL, worker_main, &workers[k]))
			return 1;
	}
	if (!wait_until(&workers_up, NWORKERS, 10.0))
		FAIL("only %u of %zu workers registered\n",
		     atomic_load_explicit(&workers_up, memory_order_relaxed), NWORKERS);
	start_clients(cl);
	if (pthread_create(&admin, NULL, admin_main, &at))
		return 1;

	/* The run: everything at once. */
	for (double end = now_s() + (seconds > 0 ? seconds : DEFAULT_SECONDS);
	     now_s() < end && !t_stress_failed();)
		usleep(10000);

	/* The clients drain what they have in flight, workers staying put. */
	atomic_store_explicit(&churn_stop, true, memory_order_relaxed);
	atomic_store_explicit(&clients_stop, true, memory_order_relaxed);
	for (int i = 0; i < CLIENTS; i++) {
		pthread_join(cl[i].tid, NULL);
		pdc_close(cl[i].c);
	}
	atomic_store_explicit(&admin_stop, true, memory_order_relaxed);
	pthread_join(admin, NULL);
	client_totals(cl, &sent, outcome, &tokens);
	check_quiet_counters(sent, outcome);

	/* Requests left with workers that stopped taking them, then the daemon stops. */
	atomic_store_explicit(&workers_hold, true, memory_order_relaxed);
	if (!wait_until(&workers_holding, NWORKERS, 10.0))
		FAIL("workers did not settle\n");
	last = leave_in_flight();
	atomic_store_explicit(&control_stop, true, memory_order_relaxed);
	pthread_join(control, NULL);
	if (daemon_down(&fin))
		FAIL("could not catch the final counters\n");
	if (last)
		check_shutdown_answers(last);
	check_final_counters(&fin, sent, outcome);
	atomic_store_explicit(&workers_stop, true, memory_order_relaxed);
	for (size_t k = 0; k < NWORKERS; k++)
		pthread_join(workers[k].tid, NULL);
	rmdir(dir);
	if (sent < 100)
		FAIL("only %lu requests: the run did not run\n", (unsigned long)sent);
	for (int m = 0; m <= SHM_LANE_DECODE; m++) {
		unsigned n = 0;

		for (size_t k = 0; k < NWORKERS; k++)
			n += workers[k].sampled[m];
		if (!n)
			FAIL("no request in lane mode %d carried sampling parameters\n", m);
	}
	if (t_stress_failed())
		return 1;
	report(cl, outcome, sent, tokens, &at);
	return 0;
}
