/*
 * A dataplane core's loop: take io_uring completions (ingress.c), take commands from the
 * control thread, read every worker lane's answers (request.c runs the lifecycle), publish
 * what was posted to workers in one batch per lane, fire timers, and sleep when idle.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "core_pvt.h"
#include "pdclient.h"

#define TIMER_NS 1000000ull	  /* timeouts are checked every millisecond */
#define IDLE_SLEEP_NS 10000000ull /* longest sleep with nothing waiting on workers */
#define STOP_FLUSH_NS 1000000000ull
#define ANSWERS_PER_LANE 256u /* per round, so one busy worker cannot starve the others */

/* Time what this round handed over: @start's samples end at @end. */
static void time_round(struct dp_hist *h, const uint64_t *start, uint32_t *n, uint64_t end)
{
	for (uint32_t k = 0; k < *n; k++)
		dp_hist_add(h, end - start[k]);
	*n = 0;
}

/* ---- index-linked lists ---- */

struct dp_link *dp_conn_link(struct dp_core *c, uint32_t i)
{
	return &c->reqs[i].conn_link;
}

struct dp_link *dp_queue_link(struct dp_core *c, uint32_t i)
{
	return &c->reqs[i].q_link;
}

void dp_list_push(struct dp_list *l, struct dp_link *(*link)(struct dp_core *, uint32_t),
		  struct dp_core *c, uint32_t i)
{
	struct dp_link *k = link(c, i);

	k->next = DP_NIL;
	k->prev = l->tail;
	if (l->tail != DP_NIL)
		link(c, l->tail)->next = i;
	else
		l->head = i;
	l->tail = i;
	l->n++;
}

void dp_list_del(struct dp_list *l, struct dp_link *(*link)(struct dp_core *, uint32_t),
		 struct dp_core *c, uint32_t i)
{
	struct dp_link *k = link(c, i);

	if (k->prev != DP_NIL)
		link(c, k->prev)->next = k->next;
	else
		l->head = k->next;
	if (k->next != DP_NIL)
		link(c, k->next)->prev = k->prev;
	else
		l->tail = k->prev;
	l->n--;
}

/* ---- worker lanes ---- */

void dp_core_mark_dirty(struct dp_core *c, struct dp_peer *p)
{
	dp_peer_set_add(&c->dirty, p);
}

/* Publish every lane posted to so far; the hand-offs are timed here, once the records are
 * visible to the workers. Cheap (a release store per lane): done after every receive. */
void dp_core_publish(struct dp_core *c)
{
	for (uint32_t k = 0; k < c->dirty.n; k++)
		shm_ring_publish(&c->dirty.p[k]->mbox.req[c->cfg.index]);
	if (c->nin)
		time_round(&c->lat[DP_LAT_IN], c->in_start, &c->nin, dp_now_ns());
}

/* Then wake the workers that sleep (a futex wake each, only for a sleeping one). */
static void ring_doorbells(struct dp_core *c)
{
	for (uint32_t k = 0; k < c->dirty.n; k++)
		shm_mbox_ring_doorbell(&c->dirty.p[k]->mbox);
	c->dirty.n = 0;
}

/* Forget @p on this core (its requests are settled apart); false when it was not polled. */
static bool forget_peer(struct dp_core *c, struct dp_peer *p)
{
	bool known = dp_peer_set_del(&c->peers, p);

	dp_peer_set_del(&c->dirty, p);
	dp_peer_set_del(&c->broken, p); /* its address may be a new worker's once it is gone */
	return known;
}

/* @p broke its lane: give it up now, settle its requests, have control drop the worker. */
static void break_lane(struct dp_core *c, struct dp_peer *p)
{
	if (!forget_peer(c, p))
		return; /* reported already */
	dp_count(c, DP_STAT(lanes_broken), 1);
	dp_req_peer_gone(c, p);
	/* R: the control thread disconnects the worker when it sees this; nothing of ours it
	 * reads depends on it, the release only keeps the report in order with the above. */
	atomic_store_explicit(&p->broken, 1, memory_order_release);
}

void dp_core_lane_broken(struct dp_core *c, struct dp_peer *p)
{
	dp_peer_set_add(&c->broken, p);
}

/* The lanes found broken while posting, given up now that no request is mid-update. */
static void settle_broken(struct dp_core *c)
{
	while (c->broken.n)
		break_lane(c, c->broken.p[--c->broken.n]);
}

/* Read up to ANSWERS_PER_LANE answers from each worker's lane. */
static unsigned poll_lanes(struct dp_core *c)
{
	unsigned work = 0;

	for (uint32_t k = 0; k < c->peers.n; k++) {
		struct dp_peer *p = c->peers.p[k];
		struct shm_ring *r = &p->mbox.resp[c->cfg.index];
		struct shm_rec rec;
		unsigned n = 0;
		int rc = 0;

		while (n < ANSWERS_PER_LANE && (rc = shm_ring_peek(r, &rec)) == 0) {
			if (c->nout < DP_LAT_SAMPLES)
				c->out_start[c->nout++] = dp_now_ns();
			rc = dp_req_answer(c, p, rec.type, rec.payload, rec.len);
			if (rc)
				break;
			shm_ring_consume(r);
			n++;
		}
		if (rc == -EBADMSG) {
			break_lane(c, p);
			k--; /* the last peer moved into slot k */
			continue;
		}
		if (n)
			shm_ring_release(r);
		work += n;
	}
	return work;
}

/* ---- commands from the control thread ---- */

/* The last decision of each stage, as text; the control thread waits, so no registration
 * runs meanwhile (rt_explain_format()'s rule). */
static void explain(struct dp_core *c, struct dp_explain_req *x, uint64_t seq)
{
	size_t at = 0;

	x->buf[0] = 0;
	for (int st = RT_STAGE_AGGREGATED; st <= RT_STAGE_FALLBACK && at < x->cap; st++) {
		const struct rt_explain *ex = rt_core_explain(&c->rt, (enum rt_stage)st);

		if (ex && (ex->ncand || ex->outcome))
			at += rt_explain_format(c->cfg.rt, ex, x->buf + at, x->cap - at);
	}
	/* R10: the text before the sequence number; pairs with A10 in the admin interface. */
	atomic_store_explicit(&x->done, seq, memory_order_release);
}

static unsigned take_commands(struct dp_core *c)
{
	struct shm_rec rec;
	unsigned n = 0;

	while (shm_ring_peek(c->cmd, &rec) == 0) {
		struct dp_cmd cmd;

		memcpy(&cmd, rec.payload, sizeof(cmd));
		switch (rec.type) {
		case DP_CMD_PEER_ADD:
			dp_peer_set_add(&c->peers, cmd.peer);
			break;
		case DP_CMD_PEER_GONE:
			forget_peer(c, cmd.peer);
			dp_req_peer_gone(c, cmd.peer);
			dp_core_publish(c); /* cancels and re-routes to other workers */
			ring_doorbells(c);
			/* R9: every touch of the peer's mailbox above happens before the control
			 * thread sees the count and unmaps it; pairs with A9 in control. */
			atomic_fetch_add_explicit(&cmd.peer->gone_acks, 1, memory_order_release);
			break;
		case DP_CMD_STOP:
			c->stopping = true;
			break;
		case DP_CMD_EXPLAIN:
			explain(c, cmd.explain, cmd.seq);
			break;
		}
		shm_ring_consume(c->cmd);
		n++;
	}
	if (n)
		shm_ring_release(c->cmd);
	return n;
}

/* ---- the loop ---- */

/*
 * Submit what the round queued (sends, re-armed receives) without waiting. The answers of the
 * round are timed to the submit, and the submit apart when it carried sends: for a Unix or
 * loopback socket the kernel sends inline, waking the client, which on a VM can cost more
 * than all the router's own work.
 */
static void submit_round(struct dp_core *c)
{
	uint64_t t = dp_now_ns();

	if (c->nout)
		time_round(&c->lat[DP_LAT_OUT], c->out_start, &c->nout, t);
	if (!io_uring_sq_ready(&c->ring))
		return;
	io_uring_submit(&c->ring);
	if (c->sends)
		dp_hist_add(&c->lat[DP_LAT_SEND], dp_now_ns() - t);
	c->sends = 0;
}

static void timers(struct dp_core *c)
{
	if (c->now_ns - c->last_timer_ns < TIMER_NS)
		return;
	c->last_timer_ns = c->now_ns;
	dp_req_timeouts(c);
	dp_ingress_idle(c);
	rt_sweep(&c->rt, c->now_ns);
}

/* Sleep in io_uring until a completion or the bounded wake-up. */
static void sleep_idle(struct dp_core *c)
{
	bool waiting =
	    c->queue[DP_Q_PREFILL].n || c->queue[DP_Q_DECODE].n || c->queue[DP_Q_BLOCKED].n;
	uint64_t ns = waiting ? c->cfg.wake_ns : IDLE_SLEEP_NS;
	struct __kernel_timespec ts = {.tv_sec = (long long)(ns / 1000000000ull),
				       .tv_nsec = (long long)(ns % 1000000000ull)};
	struct io_uring_cqe *cqe;

	dp_count(c, DP_STAT(sleeps), 1);
	io_uring_submit_and_wait_timeout(&c->ring, &cqe, 1, &ts, NULL);
}

/* Everything in flight gets -ESHUTDOWN; returns when clients have what they are owed. */
static void shut_down(struct dp_core *c)
{
	uint64_t deadline;

	dp_ingress_stop_accepting(c);
	for (int q = DP_Q_PREFILL; q < DP_QUEUES; q++)
		while (c->queue[q].head != DP_NIL)
			dp_req_abort(c, c->queue[q].head, -ESHUTDOWN,
				     "the router is shutting down");
	dp_core_publish(c);
	ring_doorbells(c);
	for (uint32_t i = 0; i < c->cfg.max_conns; i++)
		if (c->conns[i].state == DP_CONN_OPEN)
			dp_conn_finish(c, i);
	dp_ingress_flush(c);
	deadline = dp_now_ns() + STOP_FLUSH_NS;
	for (;;) {
		bool open = false;

		for (uint32_t i = 0; i < c->cfg.max_conns && !open; i++)
			open = c->conns[i].state != DP_CONN_FREE;
		if (!open || dp_now_ns() > deadline)
			break;
		c->now_ns = dp_now_ns();
		if (!dp_ingress_reap(c))
			sleep_idle(c);
		dp_ingress_flush(c);
	}
	for (uint32_t i = 0; i < c->cfg.max_conns; i++)
		if (c->conns[i].state != DP_CONN_FREE)
			dp_conn_abandon(c, i);
}

int dp_core_run(struct dp_core *c)
{
	uint64_t last_work = dp_now_ns();

	while (!c->stopping) {
		unsigned work;

		c->now_ns = dp_now_ns();
		/* New requests first, to the workers at once: a round's answers are not made to
		 * wait for them, nor they for the answers. */
		work = dp_ingress_reap(c);
		work += take_commands(c);
		settle_broken(c);
		dp_core_publish(c);
		ring_doorbells(c);
		work += poll_lanes(c);
		if (c->queue[DP_Q_BLOCKED].n)
			dp_req_retry_blocked(c);
		dp_core_publish(c); /* cancels, re-routes and retried posts of the answers */
		dp_ingress_flush(c);
		submit_round(c);
		ring_doorbells(c);
		timers(c);
		if (work)
			last_work = c->now_ns;
		else if (!c->cfg.busy_poll && c->now_ns - last_work > c->cfg.spin_ns)
			sleep_idle(c);
	}
	shut_down(c);
	return 0;
}

/* ---- set-up ---- */

static void config_defaults(struct dp_core_config *cfg)
{
	if (!cfg->max_conns)
		cfg->max_conns = 1024;
	if (!cfg->max_frame)
		cfg->max_frame = PDC_FRAME_MAX_DEFAULT;
	if (!cfg->max_prompt_tokens)
		cfg->max_prompt_tokens = 131072;
	if (!cfg->max_inflight_per_conn)
		cfg->max_inflight_per_conn = 256;
	if (!cfg->prefill_timeout_ns)
		cfg->prefill_timeout_ns = DP_PREFILL_TIMEOUT_NS;
	if (!cfg->decode_timeout_ns)
		cfg->decode_timeout_ns = DP_DECODE_TIMEOUT_NS;
	if (!cfg->spin_ns)
		cfg->spin_ns = 50000;
	if (!cfg->wake_ns)
		cfg->wake_ns = 100000;
	if (!cfg->memory_bytes)
		cfg->memory_bytes = (size_t)1 << 30;
	if (!cfg->ring_entries)
		cfg->ring_entries = 1024;
}

struct dp_core *dp_core_create(const struct dp_core_config *cfg, struct shm_ring *cmd, char *err,
			       size_t errlen)
{
	struct dp_core *c = calloc(1, sizeof(*c));
	int rc;

	if (!c) {
		snprintf(err, errlen, "out of memory");
		return NULL;
	}
	c->cfg = *cfg;
	config_defaults(&c->cfg);
	c->cmd = cmd;
	c->nreqs = c->cfg.max_requests ? c->cfg.max_requests : cfg->rt->cfg.max_requests / 2;
	if (!c->nreqs || c->nreqs > cfg->rt->cfg.max_requests / 2) {
		snprintf(err, errlen,
			 "%u requests per core need %u routing slots, the router has %u", c->nreqs,
			 2 * c->nreqs, cfg->rt->cfg.max_requests);
		free(c);
		return NULL;
	}
	c->reqs = calloc(c->nreqs, sizeof(*c->reqs));
	c->conns = calloc(c->cfg.max_conns, sizeof(*c->conns));
	if (!c->reqs || !c->conns || dp_slab_init(&c->slab, c->cfg.memory_bytes)) {
		snprintf(err, errlen, "out of memory for the core's pools");
		goto fail;
	}
	rc = rt_core_init(&c->rt, cfg->rt, cfg->index);
	if (rc) {
		snprintf(err, errlen, "routing core %u: %s", cfg->index, strerror(-rc));
		goto fail;
	}
	c->free_req = DP_NIL;
	for (uint32_t i = c->nreqs; i-- > 0;) {
		c->reqs[i] = (struct dp_req){.conn = DP_NIL};
		c->reqs[i].q_link.next = c->free_req;
		c->free_req = i;
	}
	for (int q = 0; q < DP_QUEUES; q++)
		c->queue[q] = (struct dp_list){.head = DP_NIL, .tail = DP_NIL};
	if (dp_ingress_init(c, err, errlen)) {
		rt_core_destroy(&c->rt);
		goto fail;
	}
	return c;
fail:
	dp_slab_destroy(&c->slab);
	free(c->reqs);
	free(c->conns);
	free(c);
	return NULL;
}

void dp_core_destroy(struct dp_core *c)
{
	if (!c)
		return;
	dp_ingress_destroy(c);
	rt_core_destroy(&c->rt);
	dp_slab_destroy(&c->slab);
	free(c->reqs);
	free(c->conns);
	free(c);
}

void dp_core_latency(const struct dp_core *c, uint64_t (*h)[DP_HIST_BUCKETS])
{
	for (int k = 0; k < DP_LATS; k++)
		for (uint32_t b = 0; b < DP_HIST_BUCKETS; b++)
			h[k][b] = atomic_load_explicit(&c->lat[k].n[b], memory_order_relaxed);
}

void dp_core_stats(const struct dp_core *c, struct dp_core_stats *out)
{
	uint64_t *o = (uint64_t *)out;

	for (size_t k = 0; k < sizeof(*out) / sizeof(uint64_t); k++)
		o[k] = atomic_load_explicit(&c->stats[k], memory_order_relaxed);
}
