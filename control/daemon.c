/*
 * The daemon assembled (daemon.h): placement and pinning, the prefix index and the routing
 * policy, one command ring and one thread per dataplane core, the client listeners, the
 * control socket and the admin socket; and their orderly teardown.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <netdb.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "clock.h"
#include "daemon.h"
#include "log.h"

#define CMD_RING_BYTES (64u << 10)

static void *core_main(void *arg)
{
	struct pd_core_thread *t = arg;
	int rc;

	if (t->cpu >= 0 && (rc = dp_pin_thread(t->topo, t->cpu)) != 0)
		pd_log(PD_LOG_WARN, "pin_failed", "core=%u cpu=%d error=\"%s\"", t->cfg.index,
		       t->cpu, strerror(-rc));
	/* Created here, after pinning: the core's memory is first touched on its own node. */
	t->core = dp_core_create(&t->cfg, &t->cmd_consumer, t->err, sizeof(t->err));
	/* R: the core's fields before the state that says it runs; A in wait_started(). */
	atomic_store_explicit(&t->state, t->core ? 1 : -1, memory_order_release);
	if (t->core && (rc = dp_core_run(t->core)) != 0)
		pd_log(PD_LOG_ERROR, "core_failed", "core=%u error=\"%s\"", t->cfg.index,
		       strerror(-rc));
	return NULL;
}

/* Open a client listener for @addr ("tcp:HOST:PORT" or "unix:PATH"); @reuseport for TCP. */
static int open_listener(const char *addr, bool reuseport, char *err, size_t errlen)
{
	int fd, one = 1;

	if (!strncmp(addr, "unix:", 5)) {
		struct sockaddr_un un = {.sun_family = AF_UNIX};
		const char *path = addr + 5;

		if (strlen(path) >= sizeof(un.sun_path) || !*path) {
			snprintf(err, errlen, "%s: bad Unix socket path", addr);
			return -EINVAL;
		}
		strcpy(un.sun_path, path);
		fd = ctl_unix_clear_stale(&un, SOCK_STREAM);
		if (fd) {
			snprintf(err, errlen, "%s: %s", addr,
				 fd == -EADDRINUSE ? "a live router listens there"
				 : fd == -EEXIST  ? "something that is not a socket is there"
						  : strerror(-fd));
			return fd;
		}
		fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
		if (fd < 0 || bind(fd, (struct sockaddr *)&un, sizeof(un)) || listen(fd, 1024)) {
			snprintf(err, errlen, "%s: %s", addr, strerror(errno));
			if (fd >= 0)
				close(fd);
			return -errno;
		}
		return fd;
	} else {
		char host[256];
		const char *colon = strrchr(addr + 4, ':');
		struct addrinfo hints = {.ai_socktype = SOCK_STREAM, .ai_flags = AI_PASSIVE}, *ai;
		int rc;

		if (!colon || (size_t)(colon - (addr + 4)) >= sizeof(host)) {
			snprintf(err, errlen, "%s: expected tcp:HOST:PORT", addr);
			return -EINVAL;
		}
		memcpy(host, addr + 4, (size_t)(colon - (addr + 4)));
		host[colon - (addr + 4)] = 0;
		if (host[0] == '[') { /* [::1] */
			memmove(host, host + 1, strlen(host));
			host[strcspn(host, "]")] = 0;
		}
		rc = getaddrinfo(*host ? host : NULL, colon + 1, &hints, &ai);
		if (rc) {
			snprintf(err, errlen, "%s: %s", addr, gai_strerror(rc));
			return -EINVAL;
		}
		fd = socket(ai->ai_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
		if (fd < 0 || setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) ||
		    (reuseport && setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof(one))) ||
		    bind(fd, ai->ai_addr, ai->ai_addrlen) || listen(fd, 1024)) {
			rc = -errno;
			snprintf(err, errlen, "%s: %s", addr, strerror(errno));
			if (fd >= 0)
				close(fd);
			freeaddrinfo(ai);
			return rc;
		}
		freeaddrinfo(ai);
		return fd;
	}
}

static void log_counters(struct pd_core_thread *t, uint32_t n, const struct ctl_server *s,
			 const char *event)
{
	struct dp_core_stats sum = {0}, one;

	for (uint32_t k = 0; k < n; k++) {
		if (!t[k].core)
			continue;
		dp_core_stats(t[k].core, &one);
		for (size_t f = 0; f < sizeof(one) / sizeof(uint64_t); f++)
			((uint64_t *)&sum)[f] += ((uint64_t *)&one)[f];
	}
	pd_log(PD_LOG_INFO, event,
	       "workers=%u requests=%llu completed=%llu errors=%llu cancelled=%llu peeks=%llu "
	       "disagg=%llu fallbacks=%llu decode_retries=%llu timeouts=%llu overloaded=%llu "
	       "worker_failed=%llu answers_stray=%llu lanes_broken=%llu conns=%llu "
	       "frames_malformed=%llu tokens_out=%llu prompt_tokens=%llu cached_tokens=%llu "
	       "registered=%llu refused_register=%llu hangups=%llu leases_expired=%llu",
	       s->nconns, (unsigned long long)sum.requests, (unsigned long long)sum.completed,
	       (unsigned long long)sum.errors, (unsigned long long)sum.cancelled,
	       (unsigned long long)sum.peeks, (unsigned long long)sum.disagg,
	       (unsigned long long)sum.fallbacks, (unsigned long long)sum.decode_retries,
	       (unsigned long long)sum.timeouts, (unsigned long long)sum.overloaded,
	       (unsigned long long)sum.worker_failed, (unsigned long long)sum.answers_stray,
	       (unsigned long long)sum.lanes_broken, (unsigned long long)sum.conns_accepted,
	       (unsigned long long)sum.frames_malformed, (unsigned long long)sum.tokens_out,
	       (unsigned long long)sum.prompt_tokens, (unsigned long long)sum.cached_tokens,
	       (unsigned long long)s->stats.registered,
	       (unsigned long long)s->stats.refused_register, (unsigned long long)s->stats.hangups,
	       (unsigned long long)s->stats.leases_expired);
}

static void stop_cores(struct pd_daemon *d)
{
	for (uint32_t k = 0; k < d->nstarted; k++) {
		/* The ring has room for thousands of commands; a full one is retried. */
		while (!dp_cmd_post(&d->threads[k].cmd_producer, DP_CMD_STOP, &(struct dp_cmd){0}))
			usleep(1000);
	}
	for (uint32_t k = 0; k < d->nstarted; k++)
		pthread_join(d->threads[k].tid, NULL);
}

void pd_daemon_stop(struct pd_daemon *d)
{
	stop_cores(d);
	if (d->server_up)
		log_counters(d->threads, d->nstarted, &d->server, "counters_final");
	for (uint32_t k = 0; k < d->nstarted; k++)
		dp_core_destroy(d->threads[k].core);
	if (d->admin_up)
		ctl_admin_close(&d->admin);
	if (d->server_up)
		ctl_server_close(&d->server);
	if (d->router_up)
		rt_router_destroy(&d->rt);
	if (d->index_up)
		pdx_destroy(&d->index);
	for (uint32_t k = 0; k < d->nlisten_fds; k++)
		close(d->listen_fds[k]);
	for (uint32_t k = 0; k < d->o.nlisten; k++) /* only the paths this router bound */
		if (d->unix_bound[k])
			unlink(d->o.listen[k] + 5);
	if (d->threads)
		for (uint32_t k = 0; k < d->place.ncores; k++)
			free(d->threads[k].cmd_mem);
	free(d->threads);
	if (d->topo)
		hwloc_topology_destroy(d->topo);
}

static int place(struct pd_daemon *d, char *err, size_t errlen)
{
	struct dp_pin_request req = {
	    .ncores = d->o.dataplane_cores, .cpu_list = d->o.cpus, .control_cpu = d->o.control_cpu};
	char line[512];
	int rc;

	if (hwloc_topology_init(&d->topo) || hwloc_topology_load(d->topo)) {
		snprintf(err, errlen, "hwloc could not read the machine's topology");
		return -EIO;
	}
	rc = dp_place(d->topo, &req, &d->place, err, errlen);
	if (rc)
		return rc;
	dp_placement_format(&d->place, line, sizeof(line));
	pd_log(PD_LOG_INFO, "placement", "pinned=%s detail=\"%s\"", d->o.no_pin ? "no" : "yes",
	       line);
	if (!d->o.no_pin && (rc = dp_pin_thread(d->topo, d->place.control_cpu)) != 0)
		pd_log(PD_LOG_WARN, "pin_failed", "thread=control cpu=%d error=\"%s\"",
		       d->place.control_cpu, strerror(-rc));
	return 0;
}

static int open_listeners(struct pd_daemon *d, char *err, size_t errlen)
{
	for (uint32_t l = 0; l < d->o.nlisten; l++) {
		bool tcp = !strncmp(d->o.listen[l], "tcp:", 4);
		/* TCP: a socket per core on one port (SO_REUSEPORT), so the kernel spreads
		 * connections; Unix: one socket every core accepts on. */
		uint32_t copies = tcp ? d->place.ncores : 1;

		for (uint32_t k = 0; k < copies; k++) {
			int fd =
			    open_listener(d->o.listen[l], tcp && d->place.ncores > 1, err, errlen);

			if (fd < 0)
				return fd;
			d->listen_fds[d->nlisten_fds++] = fd;
			d->unix_bound[l] = !tcp;
			for (uint32_t c = 0; c < d->place.ncores; c++) {
				struct dp_core_config *cfg = &d->threads[c].cfg;

				if (!tcp || c == k)
					cfg->listen_fds[cfg->nlisten++] = fd;
			}
		}
		pd_log(PD_LOG_INFO, "listening", "address=%s", d->o.listen[l]);
	}
	return 0;
}

static int start_cores(struct pd_daemon *d, char *err, size_t errlen)
{
	for (uint32_t k = 0; k < d->place.ncores; k++) {
		struct pd_core_thread *t = &d->threads[k];

		t->cpu = d->o.no_pin ? -1 : d->place.core_cpu[k];
		t->topo = d->topo;
		if (pthread_create(&t->tid, NULL, core_main, t)) {
			snprintf(err, errlen, "cannot start a thread for core %u", k);
			return -EAGAIN;
		}
		d->nstarted++;
		/* A: the core's fields after the state; pairs with the release in core_main(). */
		while (!atomic_load_explicit(&t->state, memory_order_acquire))
			usleep(100);
		if (t->state < 0) {
			snprintf(err, errlen, "dataplane core %u: %s", k, t->err);
			return -EIO;
		}
		d->cores[k] = t->core;
		d->cmd[k] = &t->cmd_producer;
	}
	return 0;
}

/*
 * Predicted load older than the expiry is swept as if its request were gone: the expiry must
 * outlast a request's two stages, or a long generation loses its load while it runs. Raised
 * to fit when left at its default; said when set too short on purpose.
 */
static void expiry_outlasts_stages(struct pd_options *o)
{
	uint64_t stages =
	    (o->core.prefill_timeout_ns ? o->core.prefill_timeout_ns : DP_PREFILL_TIMEOUT_NS) +
	    (o->core.decode_timeout_ns ? o->core.decode_timeout_ns : DP_DECODE_TIMEOUT_NS);
	uint64_t expiry = o->rt.expiry_ns ? o->rt.expiry_ns : RT_DEFAULT_EXPIRY_NS;

	if (expiry > stages)
		return;
	if (o->expiry_given) {
		pd_log(PD_LOG_WARN, "expiry_short", "expiry_s=%llu stages_s=%llu",
		       (unsigned long long)(expiry / 1000000000ull),
		       (unsigned long long)(stages / 1000000000ull));
		return;
	}
	o->rt.expiry_ns = stages + 60ull * 1000000000ull;
}

int pd_daemon_start(struct pd_daemon *d, const struct pd_options *o, char *err, size_t errlen)
{
	struct pdx_config xc = {.max_targets = o->max_targets};
	struct ctl_server_config sc = {.path = o->control_socket,
				       .lease_ns = o->lease_ms * 1000000ull,
				       .block_size = o->block_size,
				       .mbox = {.lane_ring_bytes = 2u << 20}};
	int rc;

	d->o = *o;
	d->next_stats_ns = dp_now_ns() + o->stats_interval_ms * 1000000ull;
	rc = place(d, err, errlen);

	if (rc)
		return rc;
	d->threads = calloc(d->place.ncores, sizeof(*d->threads));
	if (!d->threads)
		return -ENOMEM;
	xc.max_readers = d->place.ncores + 1;
	if ((rc = pdx_init(&d->index, &xc))) {
		snprintf(err, errlen, "prefix index: %s", strerror(-rc));
		return rc;
	}
	d->index_up = true;
	d->o.rt.cores = d->place.ncores;
	/* A disaggregated request holds two routing slots (prefill and decode): the policy has
	 * twice the requests a core takes. */
	if (!d->o.core.max_requests)
		d->o.core.max_requests = 16384;
	d->o.rt.max_requests = 2 * d->o.core.max_requests;
	expiry_outlasts_stages(&d->o);
	d->o.rt.max_targets = d->o.max_targets;
	if ((rc = rt_router_init(&d->rt, &d->o.rt, &d->index))) {
		snprintf(err, errlen, "routing policy: %s (a setting is out of range)",
			 strerror(-rc));
		return rc;
	}
	d->router_up = true;
	sc.ncores = d->place.ncores;
	for (uint32_t k = 0; k < d->place.ncores; k++) {
		struct pd_core_thread *t = &d->threads[k];

		t->cfg = d->o.core;
		t->cfg.index = k;
		t->cfg.rt = &d->rt;
		t->cmd_mem = aligned_alloc(64, shm_ring_bytes(CMD_RING_BYTES));
		if (!t->cmd_mem || shm_ring_format(t->cmd_mem, CMD_RING_BYTES) ||
		    shm_ring_attach(&t->cmd_producer, t->cmd_mem, CMD_RING_BYTES, true) ||
		    shm_ring_attach(&t->cmd_consumer, t->cmd_mem, CMD_RING_BYTES, false))
			return -ENOMEM;
		sc.cmd[k] = &t->cmd_producer;
	}
	/* The control socket first: it finds a live router at its path and leaves it alone. */
	if ((rc = ctl_server_open(&d->server, &sc, &d->rt, &d->index))) {
		snprintf(err, errlen, "control socket %s: %s%s", sc.path, strerror(-rc),
			 rc == -EADDRINUSE ? " (another router runs there)" : "");
		return rc;
	}
	d->server_up = true;
	if ((rc = open_listeners(d, err, errlen)))
		return rc;
	pd_log(PD_LOG_INFO, "control_socket", "path=%s lease_ms=%llu", sc.path,
	       (unsigned long long)d->o.lease_ms);
	if ((rc = ctl_admin_open(&d->admin, d->o.admin_socket))) {
		snprintf(err, errlen, "admin socket %s: %s", d->o.admin_socket, strerror(-rc));
		return rc;
	}
	d->admin_up = true;
	pd_log(PD_LOG_INFO, "admin_socket", "path=%s", d->o.admin_socket);
	return start_cores(d, err, errlen);
}

int pd_daemon_poll(struct pd_daemon *d, int timeout_ms)
{
	uint64_t now = dp_now_ns();
	int rc = ctl_server_poll(&d->server, timeout_ms, now);

	if (rc < 0)
		return rc;
	ctl_admin_poll(&d->admin, &(struct ctl_admin_view){.server = &d->server,
							   .cores = d->cores,
							   .ncores = d->nstarted,
							   .cmd = d->cmd});
	if (d->o.stats_interval_ms && now >= d->next_stats_ns) {
		log_counters(d->threads, d->nstarted, &d->server, "counters");
		d->next_stats_ns = now + d->o.stats_interval_ms * 1000000ull;
	}
	return 0;
}
