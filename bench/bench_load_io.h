/*
 * pdbench load's connections: many client-protocol connections to one router, driven by
 * io_uring (one recv and at most one send in flight per connection), or by ppoll() where
 * io_uring is not available at run time. The run queues encoded frames and is called back
 * with each decoded answer. One thread, the run's, does everything here.
 */
#ifndef PD_BENCH_BENCH_LOAD_IO_H
#define PD_BENCH_BENCH_LOAD_IO_H

#include <liburing.h>
#include <poll.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "hist.h"
#include "pdclient.h"

#define LOAD_MAX_CONNS 256u

struct load_conn {
	int fd;
	uint8_t *in;	/* received bytes, not yet a whole frame */
	size_t in_len, in_cap;
	uint8_t *out;	/* frames queued since the last hand-off to the kernel */
	size_t out_len, out_cap;
	uint8_t *wire;	/* frames being sent: the kernel may read them until the send ends */
	size_t wire_len, wire_off, wire_cap;
	bool recv_busy, send_busy; /* io_uring: an operation on @in or @wire is in flight */
};

enum load_io_mode { LOAD_IO_AUTO, LOAD_IO_URING, LOAD_IO_POLL };

struct load_io {
	struct load_conn conns[LOAD_MAX_CONNS];
	uint32_t n;
	bool uring;
	struct io_uring ring;
	struct pollfd pfd[LOAD_MAX_CONNS];
};

/* Called with each answer and the time its bytes were taken from the kernel. */
typedef void (*load_event_fn)(void *arg, const struct pdc_event *ev, uint64_t now);

/**
 * load_io_init - connect @n connections to the router at @addr ("unix:PATH", "/PATH" or
 * "HOST:PORT") and set up @mode (AUTO: io_uring, else poll, saying so on stderr).
 *
 * Returns 0, or a negative errno of connecting (printed), or of io_uring setup for URING.
 */
int load_io_init(struct load_io *io, const char *addr, uint32_t n, enum load_io_mode mode);

/**
 * load_io_reserve - room for @len more bytes on connection @k's queue.
 *
 * Returns where to write them (commit with load_io_commit()), or NULL when out of memory.
 */
uint8_t *load_io_reserve(struct load_io *io, uint32_t k, size_t len);

/* Queue the @len bytes written at load_io_reserve()'s answer. */
static inline void load_io_commit(struct load_io *io, uint32_t k, size_t len)
{
	io->conns[k].out_len += len;
}

/**
 * load_io_run - hand queued frames to the kernel, wait up to @timeout_ns for answers, and
 * call @fn for each one that came.
 *
 * Returns 0, -ECONNRESET when the router closed a connection (or closed it with an error
 * frame, printed), -EBADMSG for an answer that does not decode, -ENOMEM, or another negative
 * errno of the sockets or the ring.
 */
int load_io_run(struct load_io *io, uint64_t timeout_ns, load_event_fn fn, void *arg);

/* Close every connection and the ring. */
void load_io_exit(struct load_io *io);

#define LOAD_ROUTER_HISTS 4 /* in, out, route, send: the admin interface's order */

/**
 * load_admin_hists - the router's latency histograms from its admin socket's "counters".
 * @h: [0] in, [1] out, [2] route, [3] send; DP_HIST_BUCKETS counts each.
 *
 * Returns 0, or -EIO when the socket does not answer or the answer lacks a histogram.
 */
int load_admin_hists(const char *path, uint64_t (*h)[DP_HIST_BUCKETS]);

#endif
