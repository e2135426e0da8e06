/*
 * pdrouter assembled: what main() runs, and what tests and stress programs run in-process.
 * pd_daemon_start() builds everything from the options and starts the dataplane cores;
 * pd_daemon_poll() is one round of the control thread (the control socket, the admin socket,
 * periodic counters); pd_daemon_stop() stops the cores and tears everything down.
 */
#ifndef PD_CONTROL_DAEMON_H
#define PD_CONTROL_DAEMON_H

#include <hwloc.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>

#include "admin.h"
#include "core.h"
#include "options.h"
#include "pin.h"
#include "server.h"

/* A dataplane core's thread and its command ring. */
struct pd_core_thread {
	pthread_t tid;
	struct dp_core_config cfg;
	struct shm_ring cmd_consumer;
	struct shm_ring cmd_producer;
	void *cmd_mem;
	int cpu; /* -1: not pinned */
	hwloc_topology_t topo;
	struct dp_core *core;
	_Atomic int state; /* 0 starting, 1 running, -1 failed to start */
	char err[256];
};

/* Everything the daemon holds, torn down in reverse by pd_daemon_stop(). */
struct pd_daemon {
	struct pd_options o;
	hwloc_topology_t topo;
	struct dp_placement place;
	struct pdx index;
	bool index_up, router_up, server_up, admin_up;
	struct rt_router rt;
	struct ctl_server server;
	struct ctl_admin admin;
	struct dp_core *cores[DP_PIN_MAX_CORES];
	struct shm_ring *cmd[DP_PIN_MAX_CORES];
	struct pd_core_thread *threads;
	uint32_t nstarted;
	int listen_fds[PD_MAX_LISTEN * DP_PIN_MAX_CORES];
	bool unix_bound[PD_MAX_LISTEN]; /* listen[i] is a Unix path we bound: ours to remove */
	uint32_t nlisten_fds;
	uint64_t next_stats_ns;
};

/**
 * pd_daemon_start - build the daemon @o describes and start its dataplane cores.
 * @d: zeroed storage, kept until pd_daemon_stop().
 * @err: what went wrong, for a log line.
 *
 * Returns 0, or a negative errno with @err set (call pd_daemon_stop() to undo what was built).
 * Context: the thread that will be the control thread.
 */
int pd_daemon_start(struct pd_daemon *d, const struct pd_options *o, char *err, size_t errlen);

/**
 * pd_daemon_poll - one round of the control thread; waits up to @timeout_ms for workers.
 *
 * Returns 0 or the negative errno of the control socket's poll.
 */
int pd_daemon_poll(struct pd_daemon *d, int timeout_ms);

/* Stop the cores (in-flight requests get -ESHUTDOWN), log the final counters, close and free
 * everything, remove the sockets. */
void pd_daemon_stop(struct pd_daemon *d);

#endif
