/*
 * The control socket: where workers connect, register and keep their lease. A Unix
 * SOCK_SEQPACKET socket (one message per packet), mode 0660, peers' credentials checked against
 * allowed uid and gid lists; one connection per worker, and the connection is the lease: a
 * hang-up, or no
 * heartbeat in the mailbox for lease_ns, and the worker is gone (its targets leave the pools
 * and its blocks the index). A registered worker gets its mailbox (shm/mailbox.h) over the
 * socket with SCM_RIGHTS, and its KV events are drained into the index on every round; when
 * they show a gap, the worker is sent DUMP to resend its whole cache.
 * Control thread; polled with poll(2), no thread of its own.
 */
#ifndef PD_CONTROL_SERVER_H
#define PD_CONTROL_SERVER_H

#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>
#include <sys/un.h>

#include "kv_events.h"
#include "mailbox.h"
#include "peer.h"
#include "route.h"

#define CTL_DEFAULT_LEASE_NS (3ull * 1000000000u)
#define CTL_MSGS_PER_ROUND 64u /* messages read from one connection per round */
#define CTL_ALLOWED_MAX 16u

struct ctl_server_config {
	const char *path; /* the socket's path; a stale socket there is replaced */
	uid_t allowed_uids[CTL_ALLOWED_MAX]; /* peers allowed in by uid... */
	uint32_t nallowed;
	gid_t allowed_gids[CTL_ALLOWED_MAX]; /* ...or by gid; neither list: the router's own uid */
	uint32_t nallowed_gids;
	uint64_t lease_ns;	     /* 0: CTL_DEFAULT_LEASE_NS */
	uint32_t max_conns;	     /* 0 or over 256: 256 */
	struct shm_mbox_config mbox; /* lanes 0: one per dataplane core of the router */
	uint32_t kv_budget;	     /* event records drained per worker per round; 0: 4096 */
	uint32_t block_size;	     /* workers must register this block size; 0: any (each
				      * model's pool keeps its first worker's) */
	/* The dataplane cores' command rings (producer side), one per core: workers are
	 * announced to them (peer.h) and a leaving worker's mailbox is unmapped only once
	 * every core let go of it. ncores 0: no cores, mailboxes are unmapped at once. */
	struct shm_ring *cmd[SHM_MBOX_LANES_MAX];
	uint32_t ncores;
};

/* Counters; written by the control thread. */
struct ctl_server_stats {
	uint64_t accepted;
	uint64_t refused_peer; /* credentials not in the allowed list: closed */
	uint64_t refused_full; /* max_conns reached: closed */
	uint64_t registered;
	uint64_t refused_register; /* REFUSED sent: the worker may fix it and try again */
	uint64_t malformed;	   /* a message or event ring broke the protocol: disconnected */
	uint64_t hangups;
	uint64_t leases_expired;
	uint64_t dumps_requested;    /* DUMP sent: a worker's events had a gap or did not apply */
	uint64_t unregister_retries; /* a departed worker's blocks could not be dropped yet */
	uint64_t lanes_broken;	     /* a core gave up on a worker's lane: disconnected */
};

struct ctl_conn {
	int fd;
	bool registered;
	bool draining;	   /* out of the pools (ctl_server_drain()); its lease still runs */
	uint32_t worker;   /* the router's id for it, once registered */
	uint64_t since_ns; /* connected, registered, or heartbeat last seen to change: our clock */
	uint64_t beat;	   /* the worker's heartbeat value last seen (its clock, only compared) */
	struct dp_peer *peer; /* its mailbox, shared with the cores; stays put when the slot
			       * moves */
	struct ctl_kv kv;     /* reads peer->mbox.event */
};

struct ctl_server {
	struct ctl_server_config cfg;
	struct rt_router *rt;
	struct pdx *index;
	int listen_fd;
	bool bound; /* the socket's path is ours to remove */
	struct ctl_conn *conns;
	uint32_t nconns;
	uint32_t next_worker; /* ids handed out in order; never reused while the router runs */
	uint64_t accept_paused_until; /* out of descriptors: no accept before this (our clock) */
	uint64_t generation;	      /* of the next mailbox */
	uint32_t *draining;	      /* workers whose rt_unregister() ran out of memory: retried */
	uint32_t ndraining;
	struct dp_peer **retired; /* gone workers' peers, until every core acknowledged */
	uint32_t nretired, retired_cap;
	unsigned char *buf; /* one message: PDW_MSG_MAX bytes */
	struct ctl_server_stats stats;
};

/**
 * ctl_unix_clear_stale - make way for a Unix socket of @type (SOCK_STREAM, SOCK_SEQPACKET) at
 * @addr: a socket file left by a router that died is removed.
 *
 * Returns 0, -EADDRINUSE when a live socket accepts there, -EEXIST when something that is not
 * a socket is there, or the negative errno of lstat(), socket() or unlink().
 * Context: any thread; the control socket, the client socket and the admin socket use it.
 */
int ctl_unix_clear_stale(const struct sockaddr_un *addr, int type);

/**
 * ctl_server_open - listen on cfg->path for workers of @rt, writing KV events into @index.
 *
 * Returns 0, -EINVAL for a bad config (no path, too long), -EADDRINUSE when a live router
 * listens there already, -EEXIST when something other than a socket is there, -ENOMEM, or
 * the negative errno of socket(), bind(), chmod() or listen().
 * Context: control thread.
 */
int ctl_server_open(struct ctl_server *s, const struct ctl_server_config *cfg, struct rt_router *rt,
		    struct pdx *index);

/**
 * ctl_server_poll - one round: accept, read every message, drop workers that hung up, broke
 * the protocol or let their lease lapse, drain KV events.
 * @timeout_ms: how long to wait for something to happen (poll(2)); 0: do not wait.
 * @now_ns: the monotonic clock, for leases.
 *
 * Returns the number of connections that had something, or the negative errno of poll().
 * Context: control thread.
 */
int ctl_server_poll(struct ctl_server *s, int timeout_ms, uint64_t now_ns);

/**
 * ctl_server_drain - stop routing to @worker: its targets leave the pools and its blocks the
 * index, while its connection, mailbox and in-flight requests stay until it leaves.
 *
 * Returns 0, -ENOENT for no such registered worker, or -EALREADY when it drains already.
 * Context: control thread.
 */
int ctl_server_drain(struct ctl_server *s, uint32_t worker);

/* Drop every worker, close the socket and remove its path. */
void ctl_server_close(struct ctl_server *s);

#endif
