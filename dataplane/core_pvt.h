/*
 * Inside a dataplane core (core.h): connections, requests and the lists that tie them, shared by
 * core.c (the loop, commands, worker lanes, timers), ingress.c (io_uring, client frames) and
 * request.c (the request lifecycle). Everything here belongs to the core's one thread.
 */
#ifndef PD_DATAPLANE_CORE_PVT_H
#define PD_DATAPLANE_CORE_PVT_H

#include <liburing.h>

#include "clock.h"
#include "core.h"
#include "counter.h"
#include "hist.h"
#include "lanes.h"
#include "peer.h"
#include "slab.h"

#define DP_NIL UINT32_MAX
#define DP_MAX_PEERS 1024u	     /* workers a core can know at once */
#define DP_RECV_BUF_BYTES (32u << 10) /* one provided receive buffer */
#define DP_RECV_BUFS 256u	     /* provided receive buffers per core (power of two) */
#define DP_OUT_LIMIT (64u << 20)     /* unsent answer bytes before a client counts as stuck */
#define DP_LAT_SAMPLES 1024u	     /* latencies timed per round; more are not sampled */

/* A few workers, unordered, each at most once: a core's lanes to poll, publish or give up. */
struct dp_peer_set {
	struct dp_peer *p[DP_MAX_PEERS];
	uint32_t n;
};

/* Add @p unless it is there (a full set keeps what it has: it holds every peer). */
static inline void dp_peer_set_add(struct dp_peer_set *s, struct dp_peer *p)
{
	for (uint32_t k = 0; k < s->n; k++)
		if (s->p[k] == p)
			return;
	if (s->n < DP_MAX_PEERS)
		s->p[s->n++] = p;
}

/* Remove @p; returns whether it was there (the last member moves into its place). */
static inline bool dp_peer_set_del(struct dp_peer_set *s, const struct dp_peer *p)
{
	for (uint32_t k = 0; k < s->n; k++)
		if (s->p[k] == p) {
			s->p[k] = s->p[--s->n];
			return true;
		}
	return false;
}

/* A doubly linked list of pool slots, by index. */
struct dp_list {
	uint32_t head, tail, n;
};

struct dp_link {
	uint32_t prev, next;
};

enum dp_conn_state { DP_CONN_FREE, DP_CONN_OPEN, DP_CONN_CLOSING };

struct dp_conn {
	int fd;
	uint32_t gen;	       /* bumped whenever the slot is reused: stale completions see it */
	uint8_t state;	       /* enum dp_conn_state */
	bool recv_armed;       /* a multishot receive is in flight */
	bool sending;	       /* a send is in flight, of out[cur] from sent */
	bool close_after_send; /* flush, then close (after a connection-level error) */
	bool dirty;	       /* on the core's list of connections to flush */
	bool dropped;	       /* closing: its requests were dropped, its socket shut down */
	bool rearm;	       /* the receive ended for want of buffers: arm it at the flush */
	uint16_t ops;	       /* io_uring operations in flight on fd: close when 0 */
	uint8_t cur;	       /* out[cur] is being sent, out[!cur] takes new frames */
	uint32_t sent;
	struct dp_buf in;      /* a frame that came in pieces */
	struct dp_buf out[2];
	struct dp_list reqs;   /* its requests, linked by dp_req.conn_link */
	uint64_t last_ns;      /* last frame in or out: the idle timer */
	uint32_t free_next;    /* free slots are linked through here */
};

/* Which list a request is on, besides its connection's. */
enum dp_queue { DP_Q_NONE, DP_Q_PREFILL, DP_Q_DECODE, DP_Q_BLOCKED, DP_QUEUES };

enum dp_req_state {
	DP_REQ_FREE,
	DP_REQ_PREFILL, /* posted to a prefill worker, waiting for its params */
	DP_REQ_DECODE,	/* posted to the worker that generates (decode or aggregated) */
};

struct dp_req {
	uint64_t gen;	    /* the lane request id is gen << 24 | slot */
	uint8_t state;	    /* enum dp_req_state */
	uint8_t queue;	    /* enum dp_queue */
	uint8_t plan;	    /* enum pdc_plan */
	uint8_t retries;    /* decode re-routes so far */
	uint32_t flags;	    /* PDC_* of the request */
	bool got_token;	    /* the generating worker sent its first token */
	uint32_t conn;
	uint32_t conn_gen;
	uint64_t client_id;
	struct dp_link conn_link;
	struct dp_link q_link;
	uint64_t stage_ns;  /* when the current stage was posted: its timeout runs from here */
	uint64_t start_ns;  /* the frame's arrival (its receive completion) */
	struct dp_peer *peer; /* the worker of the current stage */
	struct rt_request rq; /* rq.tokens points into @tokens */
	struct dp_buf tokens; /* the prompt, copied out of the frame */
	struct dp_buf sampling; /* the client's sampling parameters, for every post; len 0: none */
	struct dp_buf params; /* the prefill's KV-transfer params, kept for a decode retry */
	struct dp_buf acc;    /* generated tokens, when not streaming */
	struct rt_choice prefill; /* load handle 0 once released */
	struct rt_choice gen_choice; /* the generating worker */
	uint32_t max_tokens;
	uint32_t generated;
	uint32_t overlap;   /* prompt blocks the prefill (or only) worker held */
	uint32_t block_size;
};

struct dp_core {
	struct dp_core_config cfg;
	struct io_uring ring;
	struct io_uring_buf_ring *bufs;
	uint8_t *buf_mem;
	struct shm_ring *cmd;
	struct rt_core rt;
	struct dp_slab slab;
	struct dp_conn *conns;
	uint32_t free_conn;
	uint32_t *dirty_conns; /* connections with output to send or closing to finish */
	uint32_t ndirty_conns;
	uint64_t last_idle_check;
	uint32_t accept_paused; /* listening sockets (bits) whose accept waits for the timer */
	struct dp_req *reqs;
	uint32_t nreqs;
	uint32_t free_req;  /* free slots, linked through q_link.next */
	struct dp_list queue[DP_QUEUES];
	struct dp_peer_set peers;  /* lanes polled for answers */
	struct dp_peer_set dirty;  /* lanes with committed, unpublished requests */
	struct dp_peer_set broken; /* lanes found broken while posting */
	bool stopping;
	uint64_t now_ns;    /* the loop's clock, read once per round */
	uint64_t frame_ns;  /* when the receive completion being handled was taken */
	/* The router's own latency, timed per round: a request frame's arrival until its
	 * record is published in the worker's lane, and a worker's answer until the frame it
	 * made is submitted to the kernel. */
	uint64_t in_start[DP_LAT_SAMPLES], out_start[DP_LAT_SAMPLES];
	uint32_t nin, nout;
	struct dp_hist lat[DP_LATS]; /* enum dp_lat */
	uint32_t sends;		     /* sends prepared this round, for DP_LAT_SEND */
	uint64_t last_timer_ns;
	_Atomic uint64_t stats[sizeof(struct dp_core_stats) / sizeof(uint64_t)];
};

#define DP_STAT(name) (offsetof(struct dp_core_stats, name) / sizeof(uint64_t))

/* Add to one of the core's counters (counter.h: the core is its one writer). */
static inline void dp_count(struct dp_core *c, size_t stat, uint64_t v)
{
	dp_relaxed_add(&c->stats[stat], v, 0);
}

/* Lists (core.c). */
void dp_list_push(struct dp_list *l, struct dp_link *(*link)(struct dp_core *, uint32_t),
		  struct dp_core *c, uint32_t i);
void dp_list_del(struct dp_list *l, struct dp_link *(*link)(struct dp_core *, uint32_t),
		 struct dp_core *c, uint32_t i);
struct dp_link *dp_conn_link(struct dp_core *c, uint32_t i);
struct dp_link *dp_queue_link(struct dp_core *c, uint32_t i);

/* core.c: @p's lane has committed requests to publish at the end of the round. */
void dp_core_mark_dirty(struct dp_core *c, struct dp_peer *p);
/* core.c: publish the lanes posted to, timing the hand-offs; doorbells come later. */
void dp_core_publish(struct dp_core *c);
/* core.c: @p's lane broke the rules: it is given up, its requests failed or re-routed and
 * control told, at the next round's start; never while a request is being posted, which may
 * be one of them. */
void dp_core_lane_broken(struct dp_core *c, struct dp_peer *p);

/* ingress.c */
int dp_ingress_init(struct dp_core *c, char *err, size_t errlen);
void dp_ingress_destroy(struct dp_core *c);
/* Take every completion waiting; returns how many. */
unsigned dp_ingress_reap(struct dp_core *c);
/* Room for a @len-byte answer frame on connection @conn of generation @gen, to be filled and
 * then sent at the next flush; NULL when the connection is gone or stuck (then closed). */
uint8_t *dp_conn_frame(struct dp_core *c, uint32_t conn, uint32_t gen, size_t len);
/* Send what connections have queued. */
void dp_ingress_flush(struct dp_core *c);
/* Close a connection: requests cancelled, socket shut down. */
void dp_conn_close(struct dp_core *c, uint32_t conn);
/* Close connection @conn once what it is owed is sent (shutdown). */
void dp_conn_finish(struct dp_core *c, uint32_t conn);
/* Shutdown's end: close @conn's descriptor whatever is still in flight on it (the ring goes
 * next, with the operations). */
void dp_conn_abandon(struct dp_core *c, uint32_t conn);
/* Stop accepting connections (shutdown). */
void dp_ingress_stop_accepting(struct dp_core *c);
/* Close connections idle for longer than idle_timeout_ns; re-arm paused accepts. */
void dp_ingress_idle(struct dp_core *c);

/* request.c */
/* A decoded request frame on connection @conn. */
struct dp_frame_request;
void dp_req_start(struct dp_core *c, uint32_t conn, const struct dp_frame_request *f);
/* The client cancelled @client_id on @conn; ignored when unknown. */
void dp_req_cancel_client(struct dp_core *c, uint32_t conn, uint64_t client_id);
/* End request @i with an error frame (-ESHUTDOWN, -ETIMEDOUT...) and tell its worker. */
void dp_req_abort(struct dp_core *c, uint32_t i, int error, const char *msg);
/* The connection went away: drop its requests, telling the workers. */
void dp_req_drop_conn(struct dp_core *c, uint32_t conn);
/* An answer from @peer's lane. Returns 0, or -EBADMSG when the record is garbage. */
int dp_req_answer(struct dp_core *c, struct dp_peer *p, uint16_t type, const uint8_t *rec,
		  uint32_t len);
/* @p is leaving: fail or re-route every request on it. */
void dp_req_peer_gone(struct dp_core *c, struct dp_peer *p);
/* Retry posts that waited for room in a worker's ring; fire stage timeouts. */
void dp_req_retry_blocked(struct dp_core *c);
void dp_req_timeouts(struct dp_core *c);

#endif
