/*
 * A worker as the daemon's threads share it, and the commands the control thread sends to the
 * dataplane cores about workers.
 *
 * The control thread makes a struct dp_peer when a worker registers and hands its address to
 * the routing policy as the worker's cookie (rt_worker_spec.cookie), so a core that routes to
 * one of the worker's targets holds the peer at once, published with the target. Lane i of the
 * mailbox belongs to dataplane core i: the core produces into req[i] and consumes resp[i], and
 * nothing else touches them.
 *
 * Lifetime: the control thread registers the worker's targets, then announces the peer to
 * every core (DP_CMD_PEER_ADD), which then polls the lane's answers; a core that routes to a
 * target in between posts to the lane and reads the answers once the command arrives, as
 * commands come in order. When the worker leaves, the control thread unregisters the targets,
 * then announces DP_CMD_PEER_GONE. A core that takes GONE
 * fails or re-routes its requests on the peer, forgets it and acknowledges. Once every core
 * has, nothing refers to the peer any more and the control thread unmaps the mailbox: that is
 * the grace period.
 */
#ifndef PD_DATAPLANE_PEER_H
#define PD_DATAPLANE_PEER_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <string.h>

#include "mailbox.h"

struct dp_peer {
	uint32_t block_size;
	char endpoint[256];   /* the endpoint name it registered, for the admin interface */
	struct shm_mbox mbox; /* lanes owned by the cores as above; the rest by control */
	/* Writer: any core that found garbage on its lane (release: its counters and its own
	 * view of the lane are settled). Reader: control, which then disconnects the worker. */
	_Atomic uint32_t broken;
	/* Cores that took DP_CMD_PEER_GONE; release by each core after its last touch of the
	 * mailbox, acquire by the control thread before unmapping it. */
	_Atomic uint32_t gone_acks;
	/* Control thread only: which cores were told (bit i: core i), retried when a command
	 * ring was full. */
	uint64_t told_add;
	uint64_t told_gone;
};

/* Commands on a core's command ring (an shm_ring in the router's own memory, control thread
 * produces, core consumes). Every record's payload is struct dp_cmd. */
enum dp_cmd_type {
	DP_CMD_PEER_ADD = 1,  /* poll this peer's lane */
	DP_CMD_PEER_GONE = 2, /* the peer is leaving: settle its requests, forget it, ack */
	DP_CMD_STOP = 3,      /* shut down: stop accepting, cancel what is in flight, exit */
	DP_CMD_EXPLAIN = 4,   /* write the core's last decisions into @explain */
};

/* An explanation asked of a core for the admin interface. */
struct dp_explain_req {
	char *buf;
	size_t cap;
	/* Writer: the core, once @buf is written (release); the control thread waits for
	 * its sequence number (acquire) before reading @buf. */
	_Atomic uint64_t done;
};

struct dp_cmd {
	struct dp_peer *peer;
	struct dp_explain_req *explain;
	uint64_t seq; /* DP_CMD_EXPLAIN: stored in explain->done when written */
};

/* Post command @type with @cmd on core command ring @r: false when the ring is full. */
static inline bool dp_cmd_post(struct shm_ring *r, enum dp_cmd_type type, const struct dp_cmd *cmd)
{
	int err;
	uint8_t *rec = shm_ring_reserve(r, (uint16_t)type, 0, sizeof(*cmd), &err);

	if (!rec)
		return false;
	memcpy(rec, cmd, sizeof(*cmd));
	shm_ring_commit(r);
	shm_ring_publish(r);
	return true;
}

#endif
