/*
 * libpdworker: what an inference engine links to work behind pdrouter. Connect to the router's
 * control socket, register (and get a shared-memory mailbox), publish KV-cache events and load,
 * keep the lease with heartbeats, and serve requests over the mailbox lanes (shm/lanes.h).
 *
 * One struct pdw per worker process (or per engine instance); its calls are not thread-safe:
 * use it from one thread, or serialise. No call blocks except pdw_register() and
 * pdw_reconnect() (they wait for the router's answer, bounded by a timeout).
 *
 * When the router goes away (pdw_control() says -EPIPE), the worker keeps its engine and its
 * cache: pdw_reconnect() until a router listens again, then publish CLEARED and STORED for
 * every block it holds, as for a DUMP. The new router knows nothing of the old one's requests.
 */
#ifndef PDROUTER_PDWORKER_H
#define PDROUTER_PDWORKER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "lanes.h"
#include "mailbox.h"
#include "proto.h"

#define PDW_REASON_MAX 256

struct pdw {
	int fd;		  /* control socket, -1 when not connected */
	uint32_t seq;	  /* next message number */
	uint32_t worker;  /* the router's id for us, once registered */
	bool registered;
	struct shm_mbox mbox;
	uint64_t next_event_id[64]; /* per DP rank (ranks are relative to dp_rank_start) */
	uint32_t dp_rank_start, dp_ranks, block_size;
	char reason[PDW_REASON_MAX]; /* why the router refused us, after -EPERM */
	uint32_t next_lane; /* pdw_poll() looks here first: lanes take turns */
};

/* For bindings that cannot see the structure (Python's ctypes): its size, to allocate one,
 * and the two fields they need. */
size_t pdw_size(void);
/* The same for struct pdw_request, so a binding can check its own copy of the layout. */
size_t pdw_request_size(void);
uint32_t pdw_worker_id(const struct pdw *w);
const char *pdw_reason(const struct pdw *w);

/**
 * pdw_connect - connect to the router's control socket at @path.
 *
 * Returns 0, -EINVAL for a path too long, or the negative errno of socket() or connect()
 * (-ENOENT or -ECONNREFUSED: no router there, try again later).
 */
int pdw_connect(struct pdw *w, const char *path);

/**
 * pdw_register - register as described by @a and map the mailbox the router hands over.
 * @timeout_ms: how long to wait to send, and then for the router's answer.
 *
 * Returns 0, -EPERM when the router refused (w->reason says why: print it), -ETIMEDOUT,
 * -EBADMSG for an answer that is not a valid reply, -E2BIG when @a does not fit a message,
 * -EISCONN when @w is registered already, -ESTALE when the mailbox is not the one the reply
 * names (generation),
 * -EINVAL when @a has more than 64 DP ranks, or the negative errno of the socket calls or of
 * shm_mbox_attach().
 */
int pdw_register(struct pdw *w, const struct pdw_register_args *a, int timeout_ms);

/**
 * pdw_publish_stored - STORED: @n blocks now cached by DP rank @dp_rank (absolute rank).
 * @parent_ext: the engine's id of the block before the first, or NULL: they start a prompt.
 * @ext_ids: the engine's id of each block.
 * @local: the local hash of each block (routing-semantics §1), or NULL to send @tokens.
 * @tokens: @n * block_size token ids, when @local is NULL.
 *
 * Event ids are numbered per DP rank by the library. Returns 0, -ENOBUFS when the event ring
 * is full (the router is behind: try again), -E2BIG when the event could never fit the ring
 * (split it), -EINVAL for a bad rank or @n, -ENOTCONN before registering.
 */
int pdw_publish_stored(struct pdw *w, uint32_t dp_rank, const uint64_t *parent_ext,
		       const uint64_t *ext_ids, uint32_t n, const uint64_t *local,
		       const uint32_t *tokens);

/* REMOVED: DP rank @dp_rank evicted the @n blocks named by @ext_ids. Returns as above. */
int pdw_publish_removed(struct pdw *w, uint32_t dp_rank, const uint64_t *ext_ids, uint32_t n);

/* CLEARED: DP rank @dp_rank dropped its whole cache. Returns as above. */
int pdw_publish_cleared(struct pdw *w, uint32_t dp_rank);

/* LOAD: what DP rank @dp_rank has in use; feeds the router's busy thresholds. */
int pdw_publish_load(struct pdw *w, uint32_t dp_rank, uint64_t used_blocks,
		     uint64_t prefill_tokens);

/* A request (or a cancel) from the router, as pdw_poll() hands it over. */
struct pdw_request {
	uint32_t lane;	 /* answer on this lane */
	bool cancel;	 /* a CANCEL: stop @request_id; nothing else is set */
	struct shm_lane_request req;
	const uint32_t *tokens; /* req.ntokens prompt tokens, in the mailbox until pdw_done_with() */
	const uint8_t *params;	/* req.nparams bytes (decode mode) */
	/* The client's sampling parameters (temperature, top-p, ...), req.nsampling bytes, in any
	 * mode: opaque to the router, passed byte for byte as the client wrote them (JSON, or
	 * whatever encoding the client and the engine agree on). In the mailbox, like @tokens:
	 * parse or copy them before pdw_done_with(), and treat them as untrusted input. */
	const uint8_t *sampling;
};

/**
 * pdw_poll - the next request or cancel on any lane, without waiting.
 *
 * Returns 0 with @r filled (its tokens, params and sampling parameters stay valid until
 * pdw_done_with(), which must come before the next pdw_poll(): until then it returns the same
 * record), -EAGAIN when there is none (pdw_wait() sleeps until there is), or -EBADMSG when the
 * router broke a lane (reconnect). Unknown record types are skipped. The request's DP rank is
 * the router's word: check it against your own ranks before indexing anything with it.
 */
int pdw_poll(struct pdw *w, struct pdw_request *r);

/* pdw_done_with - give the space of the request pdw_poll() returned back to the router. */
void pdw_done_with(struct pdw *w, const struct pdw_request *r);

/**
 * pdw_wait - sleep until the router has something for us or @timeout_ns passes.
 * Returns 0, -ETIMEDOUT, -EINTR, or -ENOTCONN before registering.
 */
int pdw_wait(struct pdw *w, uint64_t timeout_ns);

/*
 * Answers, on the request's lane. Each returns 0, -ENOBUFS when the lane is full (the router
 * is behind: try again), -E2BIG/-EINVAL for counts out of range, -ENOTCONN before registering.
 */
/* Generated tokens (1 .. SHM_LANE_MAX_TOKENS_PER_RECORD of them). */
int pdw_post_tokens(struct pdw *w, uint32_t lane, uint64_t request_id, const uint32_t *tokens,
		    uint32_t n);
/* Prefill mode: the first token and the KV-transfer params the decode worker will need. */
int pdw_post_prefilled(struct pdw *w, uint32_t lane, uint64_t request_id, uint32_t first_token,
		       const void *params, uint32_t nparams);
/* The stream ended: @finish_reason 0 stop, 1 length. */
int pdw_post_done(struct pdw *w, uint32_t lane, uint64_t request_id, uint32_t finish_reason);
/* The request failed with -errno @error; @message (may be NULL) is cut to 256 bytes. */
int pdw_post_error(struct pdw *w, uint32_t lane, uint64_t request_id, int error,
		   const char *message);

/**
 * pdw_control - read what the router sent on the control socket, without waiting.
 *
 * Returns PDW_WANTS_DUMP when the router asked for a dump of the cache (publish CLEARED, then
 * STORED for every block you hold), 0 when there was nothing, -EPIPE when the router hung up
 * or reset the connection (it is gone: pdw_reconnect(), then dump the cache), -ENOTCONN when
 * @w has no connection (after pdw_close() or a failed pdw_reconnect()), -EBADMSG for a
 * message this library cannot read, or another negative errno of recv(). A DUMP read in the
 * same call as a hang-up is not reported: the dump goes to the next router anyway.
 * Context: the worker's thread; does not block.
 */
#define PDW_WANTS_DUMP 1
int pdw_control(struct pdw *w);

/**
 * pdw_reconnect - come back after the router went away (or restarted), keeping the engine.
 * @w: a worker that pdw_connect() has seen once, whatever became of it since.
 * @path: the router's control socket.
 * @a: the registration, as for pdw_register(); the same one as before, usually.
 * @timeout_ms: how long to wait to send, and then for the router's answer.
 *
 * Closes the old connection and mailbox if any, connects, and registers again. The per-rank
 * event ids start over at 1: a new router has seen none of them. Requests of the old
 * connection are gone with its mailbox; forget them. After success, publish CLEARED and then
 * STORED for every cached block, parents first, so that the new router's index knows the
 * cache.
 *
 * Returns 0, -ENOENT or -ECONNREFUSED while no router listens at @path (try again later),
 * or any error of pdw_connect() or pdw_register() (-EPERM: w->reason says why). On failure
 * @w is left closed, w->reason kept; call pdw_reconnect() again to retry.
 * Context: the worker's thread; blocks up to @timeout_ms for the answer.
 */
int pdw_reconnect(struct pdw *w, const char *path, const struct pdw_register_args *a,
		  int timeout_ms);

/* Heartbeat: tell the router we are alive (call well within its lease, 3 s by default). */
void pdw_heartbeat(struct pdw *w);

/* Disconnect: the router drops our registration and our blocks; call pdw_reconnect() to come
 * back (then publish a dump of the cache). Safe to call twice. */
void pdw_close(struct pdw *w);

#endif
