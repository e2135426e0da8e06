/*
 * A dataplane core: one thread, pinned, that owns an io_uring for its clients and lane i of
 * every worker's mailbox. It accepts connections, reads request frames, routes them
 * (route.h), posts them to workers, carries answers back and runs each request's lifecycle:
 * prefill, hand-off of the KV-transfer params, decode under the topology rule, fallback,
 * retry, timeouts, cancellation. State lives in fixed pools sized at start: the hot path takes
 * no lock, allocates nothing from the general heap and makes no syscall but io_uring's.
 *
 * Polling is adaptive: the core spins while there is work, then sleeps in io_uring, waking at
 * least every wake_ns while requests wait on workers (their answers arrive in shared memory,
 * which no syscall signals) and every 10 ms otherwise. busy_poll never sleeps.
 */
#ifndef PD_DATAPLANE_CORE_H
#define PD_DATAPLANE_CORE_H

#include <stdbool.h>
#include <stdint.h>

#include "hist.h"
#include "ring.h"
#include "route.h"

#define DP_CORE_MAX_LISTEN 8u
#define DP_PREFILL_TIMEOUT_NS 30000000000ull /* default stage timeouts */
#define DP_DECODE_TIMEOUT_NS 600000000000ull

struct dp_core_config {
	uint32_t index;		    /* this core's number: its lane in every mailbox */
	struct rt_router *rt;
	int listen_fds[DP_CORE_MAX_LISTEN]; /* sockets this core accepts on */
	uint32_t nlisten;
	uint32_t max_conns;	    /* client connections on this core; 0: 1024 */
	uint32_t max_frame;	    /* 0: PDC_FRAME_MAX_DEFAULT */
	uint32_t max_prompt_tokens; /* 0: 131072 */
	uint32_t max_inflight_per_conn; /* 0: 256 */
	uint32_t max_requests;	    /* requests in flight on this core; 0: half the routing
				     * core's slots (a disaggregated request holds two: its
				     * prefill's and its decode's) */
	uint64_t idle_timeout_ns;   /* close a connection idle this long (nothing in flight);
				     * 0: off */
	uint64_t prefill_timeout_ns; /* from posting to the prefill answer; 0: 30 s */
	uint64_t decode_timeout_ns;  /* from posting to the last token; 0: 600 s. The policy's
				      * expiry (rt_config.expiry_ns) must outlast both stages, or
				      * load of requests still running is swept. */
	uint32_t decode_retries;    /* re-routes of a decode that fails before its first token */
	bool busy_poll;		    /* never sleep */
	uint64_t spin_ns;	    /* spin this long after the last work; 0: 50 us */
	uint64_t wake_ns;	    /* longest sleep while requests wait on workers; 0: 100 us */
	size_t memory_bytes;	    /* buffer budget of the core; 0: 1 GiB of address space */
	uint32_t ring_entries;	    /* io_uring submission queue; 0: 1024 */
	bool sqpoll;		    /* a kernel thread submits (IORING_SETUP_SQPOLL) */
};

/* Counters; written by the core only (relaxed), read by anyone. One list, so that the
 * admin interface names each field as the structure does. */
#define DP_CORE_STATS(X)                                                                       \
	X(conns_accepted)                                                                      \
	X(conns_closed)                                                                        \
	X(conns_refused)    /* no connection slot left */                                     \
	X(frames_malformed) /* connection closed after an error frame */                      \
	X(conns_idle)	    /* closed by the idle timeout */                                  \
	X(conns_slow)	    /* closed: their unsent answers reached the limit */              \
	X(requests)	    /* request frames decoded */                                      \
	X(completed)	    /* DONE sent */                                                   \
	X(errors)	    /* ERROR sent for a request */                                    \
	X(peeks)                                                                               \
	X(cancelled)                                                                           \
	X(overloaded)	    /* no request slot or buffer: -ENOBUFS */                         \
	X(disagg)	    /* requests that went through a prefill worker */                \
	X(fallbacks)	    /* decode-only: no usable prefill worker, or the prefill failed */ \
	X(decode_retries)                                                                      \
	X(timeouts)                                                                            \
	X(worker_failed)    /* requests failed by a worker's error or departure */            \
	X(answers_stray)    /* a worker's answer for a request it does not hold: dropped */   \
	X(lanes_broken)	    /* lanes given up on for garbage */                               \
	X(lane_full_waits)  /* posts that waited for room in a worker's ring */              \
	X(cancels_dropped)  /* cancels a full ring could not take (the answers go stray) */  \
	X(tokens_out)                                                                          \
	X(prompt_tokens)                                                                       \
	X(cached_tokens)    /* prompt tokens the serving (or prefill) worker held */          \
	X(sleeps)

struct dp_core_stats {
#define DP_STAT_FIELD(name) uint64_t name;
	DP_CORE_STATS(DP_STAT_FIELD)
#undef DP_STAT_FIELD
};

struct dp_core; /* core_pvt.h */

/**
 * dp_core_create - set up dataplane core cfg->index: its io_uring, pools and routing core.
 * @cmd: the consumer side of its command ring (peer.h); the control thread produces.
 * @err: a reason for an error, naming an io_uring feature the kernel lacks.
 *
 * Returns the core, or NULL with @err set.
 * Context: the thread that will run the core (its memory is touched there first).
 */
struct dp_core *dp_core_create(const struct dp_core_config *cfg, struct shm_ring *cmd,
			       char *err, size_t errlen);

/**
 * dp_core_run - run until DP_CMD_STOP: answer in-flight requests with -ESHUTDOWN, flush what
 * clients are owed (at most a second), close every connection.
 *
 * Returns 0, or a negative errno when io_uring failed beyond repair.
 */
int dp_core_run(struct dp_core *c);

/* Copy the counters; any thread. */
void dp_core_stats(const struct dp_core *c, struct dp_core_stats *out);

/* The router's own latencies, each a histogram (hist.h). */
enum dp_lat {
	DP_LAT_IN,    /* a request frame received until its record is published in a worker's
		       * lane (parse, route, hand-off) */
	DP_LAT_OUT,   /* a worker's answer read until the client frame it made is handed to the
		       * kernel (the send's SQE submitted) */
	DP_LAT_ROUTE, /* one routing decision of the policy (hash, index, score, pick) */
	DP_LAT_SEND,  /* the submit syscall that carried sends: the kernel's part of a send,
		       * waking the client included */
	DP_LATS
};

/* Copy the latency histograms, DP_HIST_BUCKETS counts each, into @h[DP_LATS]. Any thread. */
void dp_core_latency(const struct dp_core *c, uint64_t (*h)[DP_HIST_BUCKETS]);

/* Free the core; after dp_core_run() returned. */
void dp_core_destroy(struct dp_core *c);

#endif
