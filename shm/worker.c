/*
 * libpdworker (pdworker.h): the worker's side of the control socket and of the event ring.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <poll.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "events.h"
#include "pdworker.h"

#define PDW_RANKS_MAX 64u

size_t pdw_request_size(void)
{
	return sizeof(struct pdw_request);
}

size_t pdw_size(void)
{
	return sizeof(struct pdw);
}

uint32_t pdw_worker_id(const struct pdw *w)
{
	return w->worker;
}

const char *pdw_reason(const struct pdw *w)
{
	return w->reason;
}

int pdw_connect(struct pdw *w, const char *path)
{
	struct sockaddr_un addr = {.sun_family = AF_UNIX};

	memset(w, 0, sizeof(*w));
	w->fd = -1;
	w->mbox.fd = -1;
	if (strlen(path) >= sizeof(addr.sun_path))
		return -EINVAL;
	strcpy(addr.sun_path, path);
	w->fd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
	if (w->fd < 0)
		return -errno;
	if (connect(w->fd, (struct sockaddr *)&addr, sizeof(addr))) {
		int rc = -errno;

		close(w->fd);
		w->fd = -1;
		return rc;
	}
	return 0;
}

/* The one descriptor a message carried: -1 for none, -EBADMSG for more (all closed). */
static int take_fd(struct msghdr *msg)
{
	int fd = -1, got = 0;

	for (struct cmsghdr *cm = CMSG_FIRSTHDR(msg); cm; cm = CMSG_NXTHDR(msg, cm)) {
		if (cm->cmsg_level != SOL_SOCKET || cm->cmsg_type != SCM_RIGHTS)
			continue;
		for (size_t i = 0; i < (cm->cmsg_len - CMSG_LEN(0)) / sizeof(int); i++) {
			int one;

			memcpy(&one, CMSG_DATA(cm) + i * sizeof(int), sizeof(int));
			if (got++)
				close(one);
			else
				fd = one;
		}
	}
	if (got > 1 || (msg->msg_flags & MSG_CTRUNC)) {
		if (fd >= 0)
			close(fd);
		return -EBADMSG;
	}
	return fd;
}

/* The router's answer to message @seq: REGISTERED with a mailbox, or REFUSED with a reason. */
static int read_answer(struct pdw *w, uint32_t seq, int timeout_ms)
{
	unsigned char buf[512];
	union {
		char c[CMSG_SPACE(sizeof(int))];
		struct cmsghdr align;
	} ctl;
	struct iovec iov = {buf, sizeof(buf)};
	struct msghdr msg = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = ctl.c,
			     .msg_controllen = sizeof(ctl.c)};
	struct pollfd pfd = {.fd = w->fd, .events = POLLIN};
	struct pdw_hdr h;
	int mfd = -1, rc = poll(&pfd, 1, timeout_ms);
	ssize_t n;

	if (rc <= 0)
		return rc ? -errno : -ETIMEDOUT;
	n = recvmsg(w->fd, &msg, MSG_CMSG_CLOEXEC);
	if (n < 0)
		return -errno;
	mfd = take_fd(&msg);
	if ((size_t)n < sizeof(h) || mfd == -EBADMSG)
		goto bad;
	memcpy(&h, buf, sizeof(h));
	if (h.magic != PDW_MAGIC || h.len != (uint32_t)n || h.seq != seq)
		goto bad;
	if (h.type == PDW_REFUSED && (size_t)n >= sizeof(h) + sizeof(struct pdw_refused)) {
		struct pdw_refused r;
		size_t len;

		memcpy(&r, buf + sizeof(h), sizeof(r));
		len = (size_t)n - sizeof(h) - sizeof(r);
		len = len < sizeof(w->reason) - 1 ? len : sizeof(w->reason) - 1;
		memcpy(w->reason, buf + sizeof(h) + sizeof(r), len);
		w->reason[len] = '\0';
		if (mfd >= 0)
			close(mfd);
		return -EPERM;
	}
	if (h.type != PDW_REGISTERED || (size_t)n != sizeof(h) + sizeof(struct pdw_registered) ||
	    mfd < 0)
		goto bad;
	{
		struct pdw_registered r;

		memcpy(&r, buf + sizeof(h), sizeof(r));
		w->worker = r.worker;
		rc = shm_mbox_attach(&w->mbox, mfd);
		if (rc) {
			close(mfd);
			return rc;
		}
		if (w->mbox.generation != r.generation) { /* not the mailbox this reply names */
			shm_mbox_close(&w->mbox);
			return -ESTALE;
		}
	}
	return 0;
bad:
	if (mfd >= 0)
		close(mfd);
	return -EBADMSG;
}

/* Send one message within @timeout_ms: a router that does not read cannot hold us forever. */
static int send_within(int fd, const void *buf, size_t n, int timeout_ms)
{
	for (;;) {
		struct pollfd p = {.fd = fd, .events = POLLOUT};
		ssize_t sent = send(fd, buf, n, MSG_NOSIGNAL | MSG_DONTWAIT);

		if (sent == (ssize_t)n)
			return 0;
		if (sent >= 0)
			return -EMSGSIZE; /* a packet socket sends all or nothing */
		if (errno == EINTR)
			continue;
		if (errno != EAGAIN && errno != EWOULDBLOCK)
			return -errno;
		if (poll(&p, 1, timeout_ms) == 0)
			return -ETIMEDOUT;
	}
}

int pdw_register(struct pdw *w, const struct pdw_register_args *a, int timeout_ms)
{
	unsigned char buf[PDW_MSG_MAX];
	uint32_t seq = ++w->seq;
	long n;
	int rc;

	if (w->registered)
		return -EISCONN;
	if (a->fixed.dp_ranks > PDW_RANKS_MAX)
		return -EINVAL;
	n = pdw_register_encode(buf, sizeof(buf), a, seq);
	if (n < 0)
		return (int)n;
	rc = send_within(w->fd, buf, (size_t)n, timeout_ms);
	if (rc)
		return rc;
	rc = read_answer(w, seq, timeout_ms);
	if (rc)
		return rc;
	w->registered = true;
	w->dp_rank_start = a->fixed.dp_rank_start;
	w->dp_ranks = a->fixed.dp_ranks;
	w->block_size = a->fixed.block_size;
	for (uint32_t i = 0; i < PDW_RANKS_MAX; i++)
		w->next_event_id[i] = 1;
	pdw_heartbeat(w);
	return 0;
}

/* Slot of absolute DP rank @rank among ours, or -EINVAL. */
static int rank_slot(const struct pdw *w, uint32_t rank)
{
	if (!w->registered)
		return -ENOTCONN;
	if (rank < w->dp_rank_start || rank - w->dp_rank_start >= w->dp_ranks)
		return -EINVAL;
	return (int)(rank - w->dp_rank_start);
}

/* Write one record into @ring from the parts @p[0..n) and publish it. */
static int post_parts(struct shm_ring *ring, uint16_t type, const void *const *p,
		      const size_t *len, int n)
{
	size_t total = 0;
	unsigned char *dst;
	int err;

	for (int i = 0; i < n; i++)
		total += len[i];
	if (total > shm_ring_max_payload(ring->size))
		return -E2BIG;
	dst = shm_ring_reserve(ring, type, 0, (uint32_t)total, &err);
	if (!dst) {
		shm_ring_publish(ring); /* a pad written to wrap must be seen */
		return err;
	}
	for (int i = 0; i < n; i++) {
		if (len[i])
			memcpy(dst, p[i], len[i]);
		dst += len[i];
	}
	shm_ring_commit(ring);
	shm_ring_publish(ring);
	return 0;
}

/* An event record on the event ring. */
static int post(struct pdw *w, uint16_t type, const void *const *p, const size_t *len, int n)
{
	return post_parts(&w->mbox.event, type, p, len, n);
}

/* A KV event of DP rank slot @slot: it takes the rank's next event id (into *@event_id, part
 * of p[0]), which moves on only once the event is in the ring. */
static int post_event(struct pdw *w, int slot, uint16_t type, uint64_t *event_id,
		      const void *const *p, const size_t *len, int n)
{
	int rc;

	*event_id = w->next_event_id[slot];
	rc = post(w, type, p, len, n);
	if (!rc)
		w->next_event_id[slot]++;
	return rc;
}

int pdw_publish_stored(struct pdw *w, uint32_t dp_rank, const uint64_t *parent_ext,
		       const uint64_t *ext_ids, uint32_t n, const uint64_t *local,
		       const uint32_t *tokens)
{
	int slot = rank_slot(w, dp_rank);
	struct shm_ev_stored ev = {.dp_rank = dp_rank, .nblocks = n, .has_parent = !!parent_ext,
				   .parent_ext = parent_ext ? *parent_ext : 0,
				   .blocks_kind = local ? SHM_EV_LOCAL_HASHES : SHM_EV_TOKEN_IDS,
				   .block_size = w->block_size};
	const void *parts[3] = {&ev, ext_ids, local ? (const void *)local : tokens};
	size_t len[3] = {sizeof(ev), 8 * (size_t)n,
			 local ? 8 * (size_t)n : 4 * (size_t)n * w->block_size};

	if (slot < 0)
		return slot;
	if (!n || n > SHM_EV_MAX_BLOCKS || !ext_ids || (!local && !tokens))
		return -EINVAL;
	return post_event(w, slot, SHM_EV_STORED, &ev.event_id, parts, len, 3);
}

int pdw_publish_removed(struct pdw *w, uint32_t dp_rank, const uint64_t *ext_ids, uint32_t n)
{
	int slot = rank_slot(w, dp_rank);
	struct shm_ev_removed ev = {.dp_rank = dp_rank, .n = n};
	const void *parts[2] = {&ev, ext_ids};
	size_t len[2] = {sizeof(ev), 8 * (size_t)n};

	if (slot < 0)
		return slot;
	if (!n || n > SHM_EV_MAX_BLOCKS || !ext_ids)
		return -EINVAL;
	return post_event(w, slot, SHM_EV_REMOVED, &ev.event_id, parts, len, 2);
}

int pdw_publish_cleared(struct pdw *w, uint32_t dp_rank)
{
	int slot = rank_slot(w, dp_rank);
	struct shm_ev_cleared ev = {.dp_rank = dp_rank};
	const void *parts[1] = {&ev};
	size_t len[1] = {sizeof(ev)};

	if (slot < 0)
		return slot;
	return post_event(w, slot, SHM_EV_CLEARED, &ev.event_id, parts, len, 1);
}

int pdw_publish_load(struct pdw *w, uint32_t dp_rank, uint64_t used_blocks,
		     uint64_t prefill_tokens)
{
	int slot = rank_slot(w, dp_rank);
	struct shm_ev_load ev = {.dp_rank = dp_rank, .used_blocks = used_blocks,
				 .prefill_tokens = prefill_tokens};
	const void *parts[1] = {&ev};
	size_t len[1] = {sizeof(ev)};

	return slot < 0 ? slot : post(w, SHM_EV_LOAD, parts, len, 1);
}

int pdw_poll(struct pdw *w, struct pdw_request *r)
{
	struct shm_lane_request_view v;
	struct shm_rec rec;

	if (!w->registered)
		return -ENOTCONN;
	/* From the lane after the last one served: a busy dataplane core's lane cannot starve
	 * the others. */
	for (uint32_t k = 0; k < w->mbox.cfg.lanes; k++) {
		uint32_t lane = (w->next_lane + k) % w->mbox.cfg.lanes;
		struct shm_ring *ring = &w->mbox.req[lane];
		int rc;

		while ((rc = shm_ring_peek(ring, &rec)) == 0) {
			memset(r, 0, sizeof(*r));
			r->lane = lane;
			if (rec.type == SHM_LANE_CANCEL) {
				if (rec.len != sizeof(struct shm_lane_ref))
					return -EBADMSG;
				r->cancel = true;
				memcpy(&r->req.request_id, rec.payload, 8);
				return 0;
			}
			if (rec.type == SHM_LANE_REQUEST) {
				if (shm_lane_check_request(rec.payload, rec.len, &v))
					return -EBADMSG;
				r->req = v.req;
				r->tokens = v.tokens;
				r->params = v.params;
				r->sampling = v.sampling;
				return 0;
			}
			shm_ring_consume(ring); /* a newer router's record: skip it */
		}
		shm_ring_release(ring);
		if (rc != -EAGAIN)
			return rc;
	}
	return -EAGAIN;
}

void pdw_done_with(struct pdw *w, const struct pdw_request *r)
{
	struct shm_ring *ring;

	if (!w->registered || r->lane >= w->mbox.cfg.lanes)
		return;
	ring = &w->mbox.req[r->lane];

	shm_ring_consume(ring);
	shm_ring_release(ring);
	w->next_lane = (r->lane + 1) % w->mbox.cfg.lanes;
}

int pdw_wait(struct pdw *w, uint64_t timeout_ns)
{
	return w->registered ? shm_mbox_wait(&w->mbox, timeout_ns) : -ENOTCONN;
}

/* Write one answer on @lane from the parts @p[0..n) and publish it. */
static int answer(struct pdw *w, uint32_t lane, uint16_t type, const void *const *p,
		  const size_t *len, int n)
{
	if (!w->registered)
		return -ENOTCONN;
	if (lane >= w->mbox.cfg.lanes)
		return -EINVAL;
	return post_parts(&w->mbox.resp[lane], type, p, len, n);
}

int pdw_post_tokens(struct pdw *w, uint32_t lane, uint64_t request_id, const uint32_t *tokens,
		    uint32_t n)
{
	struct shm_lane_tokens t = {.request_id = request_id, .n = n};
	const void *parts[2] = {&t, tokens};
	size_t len[2] = {sizeof(t), 4 * (size_t)n};

	if (!n || n > SHM_LANE_MAX_TOKENS_PER_RECORD)
		return -EINVAL;
	return answer(w, lane, SHM_LANE_TOKENS, parts, len, 2);
}

int pdw_post_prefilled(struct pdw *w, uint32_t lane, uint64_t request_id, uint32_t first_token,
		       const void *params, uint32_t nparams)
{
	struct shm_lane_prefilled f = {.request_id = request_id, .first_token = first_token,
				       .nparams = nparams};
	const void *parts[2] = {&f, params};
	size_t len[2] = {sizeof(f), nparams};

	if (nparams > SHM_LANE_MAX_PARAMS || (nparams && !params))
		return -EINVAL;
	return answer(w, lane, SHM_LANE_PREFILLED, parts, len, 2);
}

int pdw_post_done(struct pdw *w, uint32_t lane, uint64_t request_id, uint32_t finish_reason)
{
	struct shm_lane_done d = {.request_id = request_id, .finish_reason = finish_reason};
	const void *parts[1] = {&d};
	size_t len[1] = {sizeof(d)};

	if (finish_reason > 1)
		return -EINVAL;
	return answer(w, lane, SHM_LANE_DONE, parts, len, 1);
}

int pdw_post_error(struct pdw *w, uint32_t lane, uint64_t request_id, int error,
		   const char *message)
{
	size_t n = message ? strnlen(message, SHM_LANE_MAX_ERROR) : 0;
	struct shm_lane_error e = {.request_id = request_id, .error = error, .len = (uint32_t)n};
	const void *parts[2] = {&e, message};
	size_t len[2] = {sizeof(e), n};

	if (error >= 0 || error < -4095)
		return -EINVAL;
	return answer(w, lane, SHM_LANE_ERROR, parts, len, 2);
}

int pdw_control(struct pdw *w)
{
	unsigned char buf[512];
	int wants = 0;

	if (w->fd < 0)
		return -ENOTCONN;
	for (;;) {
		struct pdw_hdr h;
		ssize_t n = recv(w->fd, buf, sizeof(buf), MSG_DONTWAIT);

		if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR))
			return wants;
		/* A hang-up reads as end of file, or as a reset when the router closed with our
		 * messages unread: both mean it is gone. */
		if (n == 0 || (n < 0 && (errno == ECONNRESET || errno == EPIPE)))
			return -EPIPE;
		if (n < 0)
			return -errno;
		if ((size_t)n < sizeof(h))
			return -EBADMSG;
		memcpy(&h, buf, sizeof(h));
		if (h.magic != PDW_MAGIC || h.len != (uint32_t)n)
			return -EBADMSG;
		if (h.type == PDW_DUMP)
			wants |= PDW_WANTS_DUMP;
	}
}

void pdw_heartbeat(struct pdw *w)
{
	struct timespec ts;

	if (!w->registered)
		return;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	/* Relaxed: a liveness hint the router compares with its own clock, nothing more. */
	atomic_store_explicit(&w->mbox.hdr->worker_heartbeat_ns,
			      (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec,
			      memory_order_relaxed);
}

void pdw_close(struct pdw *w)
{
	if (w->registered)
		shm_mbox_close(&w->mbox);
	if (w->fd >= 0)
		close(w->fd);
	w->fd = -1;
	w->registered = false;
}

int pdw_reconnect(struct pdw *w, const char *path, const struct pdw_register_args *a,
		  int timeout_ms)
{
	int rc;

	pdw_close(w);
	rc = pdw_connect(w, path); /* starts from a clean struct: no seq, ids, mailbox */
	if (!rc)
		rc = pdw_register(w, a, timeout_ms);
	if (rc)
		pdw_close(w); /* keeps w->reason, which says why after -EPERM */
	return rc;
}
