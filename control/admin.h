/*
 * The admin interface pdctl talks to: a Unix stream socket (mode 0600: the router's user)
 * served by the control thread. A client sends one line, a command and its argument, and gets
 * one answer (JSON, or text for explain), then the router closes the connection:
 *
 *   counters          every core's counters, their sum, the control socket's, and the
 *                     router's own latency (histograms and percentiles, dataplane/hist.h)
 *   workers           every routing target: worker, rank, model, type, domains, predicted
 *                     and reported load, cached blocks, KV-event counters
 *   models            every model, its pools and whether its prefill stage is active
 *   explain           each core's last routing decision of every stage, as text
 *   drain WORKER      stop routing to a worker; what it has in flight finishes
 */
#ifndef PD_CONTROL_ADMIN_H
#define PD_CONTROL_ADMIN_H

#include <stdint.h>

#include "core.h"
#include "peer.h"
#include "server.h"

struct ctl_admin {
	int fd;
	const char *path;
	uint64_t explain_seq;
	struct dp_explain_req explain[SHM_MBOX_LANES_MAX];
};

/* What the admin interface reads; the daemon's. */
struct ctl_admin_view {
	struct ctl_server *server;
	struct dp_core *const *cores;
	uint32_t ncores;
	struct shm_ring *const *cmd; /* the cores' command rings, producer side */
};

/*
 * Listen on @path: a socket left there by a router that died is replaced; a live one gives
 * -EADDRINUSE, anything else there -EEXIST. Returns 0 or a negative errno.
 */
int ctl_admin_open(struct ctl_admin *a, const char *path);

/* Answer every admin client waiting; never blocks for long (a slow client is cut off). */
void ctl_admin_poll(struct ctl_admin *a, const struct ctl_admin_view *v);

void ctl_admin_close(struct ctl_admin *a);

#endif
