/*
 * The control socket (server.h): accepting workers, registering them, handing over mailboxes,
 * leases and hang-ups, and draining KV events. Control thread only.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "register.h"
#include "server.h"

#define CTL_MAX_CONNS 256u
#define CTL_KV_BUDGET 4096u
#define CTL_ACCEPT_PAUSE_NS 100000000ull /* 100 ms without accepting after EMFILE */

int ctl_unix_clear_stale(const struct sockaddr_un *addr, int type)
{
	struct stat st;
	int probe, live;

	if (lstat(addr->sun_path, &st))
		return errno == ENOENT ? 0 : -errno;
	if (!S_ISSOCK(st.st_mode))
		return -EEXIST;
	/* Of the socket's own type: a connect across types fails and would look like no one. */
	probe = socket(AF_UNIX, type | SOCK_CLOEXEC, 0);
	if (probe < 0)
		return -errno;
	live = connect(probe, (const struct sockaddr *)addr, sizeof(*addr)) == 0;
	close(probe);
	if (live)
		return -EADDRINUSE;
	return unlink(addr->sun_path) ? -errno : 0;
}

int ctl_server_open(struct ctl_server *s, const struct ctl_server_config *cfg, struct rt_router *rt,
		    struct pdx *index)
{
	struct sockaddr_un addr = {.sun_family = AF_UNIX};
	int rc = -ENOMEM;

	memset(s, 0, sizeof(*s));
	s->listen_fd = -1;
	s->cfg = *cfg;
	s->rt = rt;
	s->index = index;
	s->generation = 1;
	if (!cfg->path || strlen(cfg->path) >= sizeof(addr.sun_path) ||
	    cfg->nallowed > CTL_ALLOWED_MAX || cfg->nallowed_gids > CTL_ALLOWED_MAX)
		return -EINVAL;
	if (!s->cfg.nallowed && !s->cfg.nallowed_gids)
		s->cfg.allowed_uids[s->cfg.nallowed++] = getuid();
	if (!s->cfg.lease_ns)
		s->cfg.lease_ns = CTL_DEFAULT_LEASE_NS;
	if (!s->cfg.max_conns || s->cfg.max_conns > CTL_MAX_CONNS) /* one poll() covers them */
		s->cfg.max_conns = CTL_MAX_CONNS;
	if (!s->cfg.kv_budget)
		s->cfg.kv_budget = CTL_KV_BUDGET;
	if (!s->cfg.mbox.lanes)
		s->cfg.mbox.lanes = rt->cfg.cores;
	s->conns = calloc(s->cfg.max_conns, sizeof(*s->conns));
	s->draining = calloc(s->cfg.max_conns, sizeof(*s->draining));
	/* Room to retire every worker at once up front: growing it later may fail, and then a
	 * departed worker's cores would never be told. */
	s->retired = calloc(s->cfg.max_conns, sizeof(*s->retired));
	s->retired_cap = s->retired ? s->cfg.max_conns : 0;
	s->buf = malloc(PDW_MSG_MAX);
	if (!s->conns || !s->draining || !s->buf || s->cfg.ncores > SHM_MBOX_LANES_MAX)
		goto out;
	strcpy(addr.sun_path, cfg->path);
	rc = ctl_unix_clear_stale(&addr, SOCK_SEQPACKET);
	if (rc)
		goto out;
	s->listen_fd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
	if (s->listen_fd < 0 || bind(s->listen_fd, (struct sockaddr *)&addr, sizeof(addr))) {
		rc = -errno;
		goto out;
	}
	s->bound = true;
	if (chmod(cfg->path, 0660) || listen(s->listen_fd, 64)) {
		rc = -errno;
		goto out;
	}
	return 0;
out:
	ctl_server_close(s);
	return rc;
}

/* Is the peer on @fd one we let in? */
static bool peer_allowed(const struct ctl_server *s, int fd)
{
	struct ucred cred;
	socklen_t len = sizeof(cred);

	if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len))
		return false;
	for (uint32_t i = 0; i < s->cfg.nallowed; i++)
		if (cred.uid == s->cfg.allowed_uids[i])
			return true;
	for (uint32_t i = 0; i < s->cfg.nallowed_gids; i++)
		if (cred.gid == s->cfg.allowed_gids[i])
			return true;
	return false;
}

static void accept_all(struct ctl_server *s, uint64_t now_ns)
{
	int fd;

	while ((fd = accept4(s->listen_fd, NULL, NULL, SOCK_CLOEXEC | SOCK_NONBLOCK)) >= 0 ||
	       errno == EINTR || errno == ECONNABORTED) {
		if (fd < 0)
			continue;
		if (!peer_allowed(s, fd)) {
			s->stats.refused_peer++;
			close(fd);
			continue;
		}
		if (s->nconns == s->cfg.max_conns) {
			s->stats.refused_full++;
			close(fd);
			continue;
		}
		s->conns[s->nconns++] = (struct ctl_conn){.fd = fd, .since_ns = now_ns};
		s->stats.accepted++;
	}
	/* Out of descriptors: the pending connection keeps the socket readable, so leave it
	 * out of poll() for a while rather than spin on it. */
	if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS || errno == ENOMEM)
		s->accept_paused_until = now_ns + CTL_ACCEPT_PAUSE_NS;
}

static void peer_free(struct dp_peer *p)
{
	shm_mbox_close(&p->mbox);
	free(p);
}

/*
 * Tell every core what it was not told yet about @p: @type DP_CMD_PEER_ADD or _GONE, @told its
 * mask of cores told. A full command ring is tried again next round.
 */
static void tell_cores(struct ctl_server *s, struct dp_peer *p, enum dp_cmd_type type,
		       uint64_t *told)
{
	struct dp_cmd cmd = {.peer = p};

	for (uint32_t k = 0; k < s->cfg.ncores; k++)
		if (!(*told & (1ull << k)) && dp_cmd_post(s->cfg.cmd[k], type, &cmd))
			*told |= 1ull << k;
}

/* Unmap the mailboxes of departed workers that every core has let go of. */
static void reap_retired(struct ctl_server *s)
{
	uint64_t all = s->cfg.ncores == 64 ? ~0ull : (1ull << s->cfg.ncores) - 1;

	for (uint32_t k = s->nretired; k-- > 0;) {
		struct dp_peer *p = s->retired[k];

		tell_cores(s, p, DP_CMD_PEER_GONE, &p->told_gone);
		/* A9: each core's last touch of the mailbox happened before its ack; pairs with
		 * R9 in the core. */
		if (p->told_gone != all ||
		    atomic_load_explicit(&p->gone_acks, memory_order_acquire) < s->cfg.ncores)
			continue;
		peer_free(p);
		s->retired[k] = s->retired[--s->nretired];
	}
}

/* Keep @p until every core has let go of it; when no room can be had, it is never freed. */
static void retire(struct ctl_server *s, struct dp_peer *p)
{
	if (s->nretired == s->retired_cap) {
		uint32_t cap = s->retired_cap ? 2 * s->retired_cap : 16;
		struct dp_peer **r = realloc(s->retired, cap * sizeof(*r));

		if (!r)
			return; /* a leak, where freeing could pull a mailbox from under a core */
		s->retired = r;
		s->retired_cap = cap;
	}
	s->retired[s->nretired++] = p;
	reap_retired(s);
}

/* Forget connection @i: its worker leaves the registry and the index. */
static void drop(struct ctl_server *s, uint32_t i)
{
	struct ctl_conn *c = &s->conns[i];

	if (c->registered) {
		/* The pools are left at once; -ENOMEM keeps the worker's ids reserved and its
		 * blocks in the index until a retry succeeds (retry_draining()). */
		if (!c->draining && rt_unregister(s->rt, c->worker) &&
		    s->ndraining < s->cfg.max_conns)
			s->draining[s->ndraining++] = c->worker;
		if (!c->draining)
			ctl_kv_destroy(&c->kv);
		/* Cores may still hold requests on it: they let go first (reap_retired()). */
		if (s->cfg.ncores)
			retire(s, c->peer);
		else
			peer_free(c->peer);
	}
	close(c->fd);
	s->conns[i] = s->conns[--s->nconns];
}

/* Try again to forget the workers whose departure ran out of memory. */
static void retry_draining(struct ctl_server *s)
{
	for (uint32_t i = s->ndraining; i-- > 0;) {
		s->stats.unregister_retries++;
		if (rt_unregister(s->rt, s->draining[i]) != -ENOMEM)
			s->draining[i] = s->draining[--s->ndraining];
	}
}

static void send_refused(int fd, uint32_t seq, int error, const char *reason)
{
	struct {
		struct pdw_hdr h;
		struct pdw_refused r;
		char reason[256];
	} m = {.h = {.magic = PDW_MAGIC, .version = PDW_VERSION, .type = PDW_REFUSED, .seq = seq}};
	size_t n = strnlen(reason, sizeof(m.reason));

	m.r = (struct pdw_refused){.error = error, .reason_len = (uint16_t)n};
	memcpy(m.reason, reason, n);
	m.h.len = (uint32_t)(sizeof(m.h) + sizeof(m.r) + n);
	send(fd, &m, m.h.len, MSG_NOSIGNAL | MSG_DONTWAIT);
}

/* REGISTERED with the mailbox's descriptor attached. */
static int send_registered(struct ctl_conn *c, uint32_t seq)
{
	struct {
		struct pdw_hdr h;
		struct pdw_registered r;
	} m = {.h = {.magic = PDW_MAGIC,
		     .version = PDW_VERSION,
		     .type = PDW_REGISTERED,
		     .len = sizeof(m),
		     .seq = seq},
	       .r = {.worker = c->worker, .generation = c->peer->mbox.generation}};
	union {
		char buf[CMSG_SPACE(sizeof(int))];
		struct cmsghdr align;
	} ctl;
	struct iovec iov = {&m, sizeof(m)};
	struct msghdr msg = {.msg_iov = &iov,
			     .msg_iovlen = 1,
			     .msg_control = ctl.buf,
			     .msg_controllen = sizeof(ctl.buf)};
	struct cmsghdr *cm = CMSG_FIRSTHDR(&msg);
	ssize_t n;

	cm->cmsg_level = SOL_SOCKET;
	cm->cmsg_type = SCM_RIGHTS;
	cm->cmsg_len = CMSG_LEN(sizeof(int));
	memcpy(CMSG_DATA(cm), &c->peer->mbox.fd, sizeof(int));
	n = sendmsg(c->fd, &msg, MSG_NOSIGNAL | MSG_DONTWAIT);
	return n == (ssize_t)sizeof(m) ? 0 : n < 0 ? -errno : -EMSGSIZE;
}

/* A REGISTER from connection @c: register, make its mailbox, answer. -EBADMSG: disconnect. */
static int on_register(struct ctl_server *s, struct ctl_conn *c, const void *msg, size_t len,
		       uint64_t now_ns)
{
	struct ctl_registration reg;
	char err[256];
	int rc = ctl_registration_decode(&reg, msg, len, err, sizeof(err));
	uint32_t seq = reg.seq;
	struct dp_peer *peer = NULL;

	if (rc == -EBADMSG || rc == -EPROTONOSUPPORT) {
		send_refused(c->fd, seq, rc, err);
		return -EBADMSG;
	}
	if (!rc && s->cfg.block_size && reg.spec.block_size != s->cfg.block_size) {
		rc = -EINVAL;
		snprintf(err, sizeof(err), "block size %u, but this router serves block size %u",
			 reg.spec.block_size, s->cfg.block_size);
	}
	/* The mailbox first: the worker's targets carry its peer, and a core may route to them
	 * as soon as rt_register() publishes them. */
	if (!rc) {
		peer = calloc(1, sizeof(*peer));
		if (!peer || shm_mbox_create(&peer->mbox, &s->cfg.mbox, s->generation)) {
			free(peer);
			peer = NULL;
			rc = -ENOMEM;
			strcpy(err, "could not create the mailbox");
		}
	}
	if (!rc) {
		peer->block_size = reg.spec.block_size;
		snprintf(peer->endpoint, sizeof(peer->endpoint), "%s", reg.endpoint);
		reg.spec.cookie = peer;
		rc = rt_register(s->rt, s->next_worker, &reg.spec, err, sizeof(err));
		if (rc)
			peer_free(peer);
	}
	if (rc) {
		s->stats.refused_register++;
		send_refused(c->fd, seq, rc, err);
		return 0;
	}
	c->worker = s->next_worker++;
	s->generation++;
	c->registered = true;
	c->peer = peer;
	c->since_ns = now_ns;
	tell_cores(s, peer, DP_CMD_PEER_ADD, &peer->told_add);
	ctl_kv_init(&c->kv, s->index, s->rt, c->worker, reg.spec.block_size, &peer->mbox.event);
	s->stats.registered++;
	return send_registered(c, seq) ? -EBADMSG : 0;
}

/*
 * Read the messages waiting on connection @c, at most CTL_MSGS_PER_ROUND so that one worker
 * cannot hold the control thread; -EBADMSG or -EPIPE: drop it.
 */
static int read_messages(struct ctl_server *s, struct ctl_conn *c, uint64_t now_ns)
{
	for (uint32_t k = 0; k < CTL_MSGS_PER_ROUND; k++) {
		struct iovec iov = {s->buf, PDW_MSG_MAX};
		struct msghdr msg = {.msg_iov = &iov, .msg_iovlen = 1};
		ssize_t n = recvmsg(c->fd, &msg, MSG_DONTWAIT);

		if (n < 0)
			return errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR ? 0
											 : -EPIPE;
		if (n == 0)
			return -EPIPE;
		if (msg.msg_flags & (MSG_TRUNC | MSG_CTRUNC)) /* over PDW_MSG_MAX, or an fd */
			return -EBADMSG;
		if (c->registered) { /* a second REGISTER: say so; anything else is ignored */
			if ((size_t)n >= sizeof(struct pdw_hdr) &&
			    ((struct pdw_hdr *)s->buf)->type == PDW_REGISTER)
				send_refused(c->fd, ((struct pdw_hdr *)s->buf)->seq, -EISCONN,
					     "this connection is registered already");
			continue;
		}
		if (on_register(s, c, s->buf, (size_t)n, now_ns))
			return -EBADMSG;
	}
	return 0;
}

/* The index lost some of @c's events: ask the worker to resend its whole cache. */
static void ask_for_dump(struct ctl_server *s, struct ctl_conn *c)
{
	struct pdw_hdr h = {
	    .magic = PDW_MAGIC, .version = PDW_VERSION, .type = PDW_DUMP, .len = sizeof(h)};

	/* Not sent (the socket is full): the flag stays, and the next round tries again. */
	if (send(c->fd, &h, sizeof(h), MSG_NOSIGNAL | MSG_DONTWAIT) != sizeof(h))
		return;
	c->kv.dump_wanted = false;
	s->stats.dumps_requested++;
}

/*
 * Has the worker on @c let its lease lapse: no heartbeat in its mailbox for lease_ns, or, not
 * registered yet, no registration that long after connecting?
 */
static bool lease_lapsed(const struct ctl_server *s, struct ctl_conn *c, uint64_t now_ns)
{
	if (c->registered) {
		/* Relaxed: a liveness hint written by the worker. Only whether it changed counts,
		 * timed on our clock: a worker's own timestamps cannot buy it a longer lease. */
		uint64_t beat = atomic_load_explicit(&c->peer->mbox.hdr->worker_heartbeat_ns,
						     memory_order_relaxed);

		if (beat != c->beat) {
			c->beat = beat;
			c->since_ns = now_ns;
		}
	}
	return now_ns > c->since_ns && now_ns - c->since_ns > s->cfg.lease_ns;
}

int ctl_server_poll(struct ctl_server *s, int timeout_ms, uint64_t now_ns)
{
	struct pollfd pfd[1 + CTL_MAX_CONNS];
	uint32_t n = s->nconns;
	int ready;

	/* A negative fd is skipped by poll(): the listener rests while accepts are paused. */
	pfd[0] = (struct pollfd){.fd = now_ns < s->accept_paused_until ? -1 : s->listen_fd,
				 .events = POLLIN};
	for (uint32_t i = 0; i < n; i++)
		pfd[1 + i] = (struct pollfd){.fd = s->conns[i].fd, .events = POLLIN};
	ready = poll(pfd, 1 + n, timeout_ms);
	if (ready < 0)
		return errno == EINTR ? 0 : -errno;
	retry_draining(s);
	reap_retired(s);
	/* From the last connection down: drop() moves the last one into the hole. */
	for (uint32_t i = n; i-- > 0;) {
		struct ctl_conn *c = &s->conns[i];
		int rc = 0;

		if (pfd[1 + i].revents & (POLLIN | POLLHUP | POLLERR))
			rc = read_messages(s, c, now_ns);
		if (!rc && c->registered && !c->draining &&
		    ctl_kv_drain(&c->kv, s->cfg.kv_budget) == -EBADMSG)
			rc = -EBADMSG;
		if (!rc && c->registered && !c->draining && c->kv.dump_wanted)
			ask_for_dump(s, c);
		if (!rc && c->registered) { /* relaxed: a liveness hint for the worker */
			atomic_store_explicit(&c->peer->mbox.hdr->router_heartbeat_ns, now_ns,
					      memory_order_relaxed);
			tell_cores(s, c->peer, DP_CMD_PEER_ADD, &c->peer->told_add);
		}
		/* Relaxed: a core's verdict on the lane; nothing else of it is read here. */
		if (!rc && c->registered &&
		    atomic_load_explicit(&c->peer->broken, memory_order_relaxed)) {
			s->stats.lanes_broken++;
			drop(s, i);
			continue;
		}
		if (!rc && lease_lapsed(s, c, now_ns)) {
			s->stats.leases_expired++;
			drop(s, i);
			continue;
		}
		if (rc == -EBADMSG)
			s->stats.malformed++;
		else if (rc)
			s->stats.hangups++;
		if (rc)
			drop(s, i);
	}
	if (pfd[0].revents & POLLIN)
		accept_all(s, now_ns);
	return ready;
}

int ctl_server_drain(struct ctl_server *s, uint32_t worker)
{
	for (uint32_t i = 0; i < s->nconns; i++) {
		struct ctl_conn *c = &s->conns[i];
		int rc;

		if (!c->registered || c->worker != worker)
			continue;
		if (c->draining)
			return -EALREADY;
		/* -ENOMEM: out of the pools already; its blocks leave on a retry. */
		rc = rt_unregister(s->rt, worker);
		if (rc == -ENOMEM && s->ndraining < s->cfg.max_conns)
			s->draining[s->ndraining++] = worker;
		else if (rc && rc != -ENOMEM)
			return rc;
		/* Its events are not read any more: the index holds nothing of it. */
		ctl_kv_destroy(&c->kv);
		c->draining = true;
		return 0;
	}
	return -ENOENT;
}

void ctl_server_close(struct ctl_server *s)
{
	while (s->nconns)
		drop(s, s->nconns - 1);
	/* The cores are gone by now (the daemon stops them first): nothing holds these. */
	while (s->nretired)
		peer_free(s->retired[--s->nretired]);
	if (s->listen_fd >= 0)
		close(s->listen_fd);
	if (s->bound) /* only a path we made is ours to remove */
		unlink(s->cfg.path);
	s->bound = false;
	free(s->conns);
	free(s->draining);
	free(s->retired);
	s->retired = NULL;
	free(s->buf);
	s->conns = NULL;
	s->draining = NULL;
	s->buf = NULL;
	s->listen_fd = -1;
}
