/*
 * pdbench load's connections (bench_load_io.h). Both backends keep the same buffers: frames
 * are appended to a connection's out queue; when nothing is being sent, the queue becomes the
 * wire buffer (the two swap), so a send the kernel still reads is never moved by a realloc.
 * io_uring keeps one recv armed per connection and one send per non-empty wire buffer; poll
 * sends and receives until EAGAIN. The admin socket's histograms are read here too.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "admin_client.h"
#include "bench.h"
#include "bench_load_io.h"

#define ADMIN_TIMEOUT_MS 5000 /* the router's counters */
#include "frame.h"

#define RECV_ROOM 65536u      /* free bytes a receive is given */
#define ANSWER_MAX (64u << 20) /* a larger answer frame is a broken stream */
#define UD_SEND 1u	      /* user_data: connection index << 1 | UD_SEND for a send */

/* Grow @*p to hold @need bytes; 0 or -ENOMEM. */
static int reserve(uint8_t **p, size_t *cap, size_t need)
{
	size_t n = *cap ? *cap : 65536;
	uint8_t *q;

	if (need <= *cap)
		return 0;
	while (n < need)
		n *= 2;
	q = realloc(*p, n);
	if (!q)
		return -ENOMEM;
	*p = q;
	*cap = n;
	return 0;
}

/* A non-blocking connection; libpdclient parses the address and tunes the socket. */
static int connect_router(const char *addr)
{
	struct pdc_client *c;
	int fd, rc = pdc_connect(addr, &c);

	if (rc)
		return rc;
	fd = dup(pdc_fd(c));
	pdc_close(c);
	if (fd < 0)
		return -errno;
	fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
	return fd;
}

int load_io_init(struct load_io *io, const char *addr, uint32_t n, enum load_io_mode mode)
{
	int rc = 0;

	memset(io, 0, sizeof(*io));
	for (io->n = 0; io->n < n; io->n++) {
		rc = connect_router(addr);
		if (rc < 0) {
			fprintf(stderr, "pdbench load: cannot connect to %s: %s\n", addr,
				strerror(-rc));
			load_io_exit(io);
			return rc;
		}
		io->conns[io->n].fd = rc;
	}
	if (mode == LOAD_IO_POLL)
		return 0;
	/* At most one recv and one send per connection are ever in flight or queued. */
	rc = io_uring_queue_init(2 * n, &io->ring, 0);
	io->uring = rc == 0;
	if (rc && mode == LOAD_IO_URING) {
		fprintf(stderr, "pdbench load: io_uring: %s\n", strerror(-rc));
		load_io_exit(io);
		return rc;
	}
	if (rc)
		fprintf(stderr, "pdbench load: io_uring unavailable (%s); using poll\n",
			strerror(-rc));
	return 0;
}

uint8_t *load_io_reserve(struct load_io *io, uint32_t k, size_t len)
{
	struct load_conn *c = &io->conns[k];

	if (reserve(&c->out, &c->out_cap, c->out_len + len))
		return NULL;
	return c->out + c->out_len;
}

/* Once the wire buffer is sent, the queue becomes the wire buffer. */
static void take_queue(struct load_conn *c)
{
	uint8_t *p = c->wire;
	size_t cap = c->wire_cap;

	if (c->wire_off < c->wire_len || !c->out_len)
		return;
	c->wire = c->out;
	c->wire_cap = c->out_cap;
	c->wire_len = c->out_len;
	c->wire_off = 0;
	c->out = p;
	c->out_cap = cap;
	c->out_len = 0;
}

/* Decode every whole frame in @c's input and hand it to @fn. */
static int drain(struct load_conn *c, load_event_fn fn, void *arg)
{
	uint64_t now = dp_now_ns();
	size_t off = 0;

	for (;;) {
		long len = dp_frame_length(c->in + off, c->in_len - off, ANSWER_MAX);
		struct pdc_event ev;

		if (len < 0)
			return -EBADMSG;
		if (!len || (size_t)len > c->in_len - off)
			break;
		if (pdc_event_decode(c->in + off, (size_t)len, &ev))
			return -EBADMSG;
		if (ev.type == PDC_ERROR && ev.id == 0) {
			fprintf(stderr, "pdbench load: the router closed a connection: %.*s\n",
				(int)ev.error.len, ev.error.msg);
			return -ECONNRESET;
		}
		fn(arg, &ev, now);
		off += (size_t)len;
	}
	memmove(c->in, c->in + off, c->in_len - off);
	c->in_len -= off;
	return 0;
}

/* ---- io_uring ---- */

/* Arm a recv on every idle connection and a send on every one with bytes to go. The ring
 * has room for two operations per connection, so a submission entry is always free. */
static int uring_arm(struct load_io *io)
{
	for (uint32_t k = 0; k < io->n; k++) {
		struct load_conn *c = &io->conns[k];
		struct io_uring_sqe *sqe;

		if (!c->recv_busy) {
			if (reserve(&c->in, &c->in_cap, c->in_len + RECV_ROOM))
				return -ENOMEM;
			sqe = io_uring_get_sqe(&io->ring);
			io_uring_prep_recv(sqe, c->fd, c->in + c->in_len, c->in_cap - c->in_len, 0);
			io_uring_sqe_set_data64(sqe, (uint64_t)k << 1);
			c->recv_busy = true;
		}
		take_queue(c);
		if (!c->send_busy && c->wire_off < c->wire_len) {
			sqe = io_uring_get_sqe(&io->ring);
			io_uring_prep_send(sqe, c->fd, c->wire + c->wire_off,
					   c->wire_len - c->wire_off, MSG_NOSIGNAL);
			io_uring_sqe_set_data64(sqe, (uint64_t)k << 1 | UD_SEND);
			c->send_busy = true;
		}
	}
	return 0;
}

/* One completion: a short send is resumed by the next uring_arm(), as is an EAGAIN. */
static int uring_complete(struct load_io *io, uint64_t ud, int res, load_event_fn fn, void *arg)
{
	struct load_conn *c = &io->conns[ud >> 1];

	if (ud & UD_SEND) {
		c->send_busy = false;
		if (res >= 0)
			c->wire_off += (size_t)res;
		return res >= 0 || res == -EAGAIN || res == -EINTR ? 0 : res;
	}
	c->recv_busy = false;
	if (res == 0)
		return -ECONNRESET;
	if (res < 0)
		return res == -EAGAIN || res == -EINTR ? 0 : res;
	c->in_len += (size_t)res;
	return drain(c, fn, arg);
}

static int uring_run(struct load_io *io, uint64_t timeout_ns, load_event_fn fn, void *arg)
{
	struct __kernel_timespec ts = {.tv_sec = (long long)(timeout_ns / 1000000000u),
				       .tv_nsec = (long long)(timeout_ns % 1000000000u)};
	struct io_uring_cqe *cqe;
	unsigned head, seen = 0;
	int rc = uring_arm(io), first = 0;

	if (rc)
		return rc;
	rc = timeout_ns ? io_uring_submit_and_wait_timeout(&io->ring, &cqe, 1, &ts, NULL)
			: io_uring_submit(&io->ring);
	if (rc < 0 && rc != -ETIME && rc != -EINTR)
		return rc;
	io_uring_for_each_cqe(&io->ring, head, cqe) {
		rc = uring_complete(io, cqe->user_data, cqe->res, fn, arg);
		first = first ? first : rc;
		seen++;
	}
	io_uring_cq_advance(&io->ring, seen);
	return first;
}

/* ---- poll ---- */

static int poll_send(struct load_conn *c)
{
	for (take_queue(c); c->wire_off < c->wire_len; take_queue(c)) {
		ssize_t n = send(c->fd, c->wire + c->wire_off, c->wire_len - c->wire_off,
				 MSG_NOSIGNAL);

		if (n < 0)
			return errno == EAGAIN || errno == EINTR ? 0 : -errno;
		c->wire_off += (size_t)n;
	}
	return 0;
}

static int poll_recv(struct load_conn *c, load_event_fn fn, void *arg)
{
	for (;;) {
		ssize_t n;
		int rc;

		if (reserve(&c->in, &c->in_cap, c->in_len + RECV_ROOM))
			return -ENOMEM;
		n = recv(c->fd, c->in + c->in_len, c->in_cap - c->in_len, 0);
		if (n == 0)
			return -ECONNRESET;
		if (n < 0)
			return errno == EAGAIN || errno == EINTR ? 0 : -errno;
		c->in_len += (size_t)n;
		rc = drain(c, fn, arg);
		if (rc)
			return rc;
	}
}

static int poll_run(struct load_io *io, uint64_t timeout_ns, load_event_fn fn, void *arg)
{
	struct timespec ts = {.tv_sec = (time_t)(timeout_ns / 1000000000u),
			      .tv_nsec = (long)(timeout_ns % 1000000000u)};
	int rc;

	for (uint32_t k = 0; k < io->n; k++) {
		struct load_conn *c = &io->conns[k];

		rc = poll_send(c);
		if (rc)
			return rc;
		io->pfd[k] = (struct pollfd){
			.fd = c->fd, .events = POLLIN | (c->wire_off < c->wire_len ? POLLOUT : 0)};
	}
	if (ppoll(io->pfd, io->n, &ts, NULL) < 0)
		return errno == EINTR ? 0 : -errno;
	for (uint32_t k = 0; k < io->n; k++) {
		if (!(io->pfd[k].revents & (POLLIN | POLLHUP | POLLERR)))
			continue;
		rc = poll_recv(&io->conns[k], fn, arg);
		if (rc)
			return rc;
	}
	return 0;
}

int load_io_run(struct load_io *io, uint64_t timeout_ns, load_event_fn fn, void *arg)
{
	return io->uring ? uring_run(io, timeout_ns, fn, arg) : poll_run(io, timeout_ns, fn, arg);
}

/* Shut the sockets down so that every operation still in flight ends, and reap them: the
 * kernel may write into a recv's buffer until its completion is seen. */
static void uring_quiesce(struct load_io *io)
{
	uint32_t busy = 0;

	for (uint32_t k = 0; k < io->n; k++) {
		shutdown(io->conns[k].fd, SHUT_RDWR);
		busy += io->conns[k].recv_busy + io->conns[k].send_busy;
	}
	io_uring_submit(&io->ring);
	while (busy) {
		struct __kernel_timespec ts = {.tv_sec = 1};
		struct io_uring_cqe *cqe;
		struct load_conn *c;

		if (io_uring_wait_cqe_timeout(&io->ring, &cqe, &ts))
			break; /* the ring's teardown cancels what is left */
		c = &io->conns[cqe->user_data >> 1];
		*(cqe->user_data & UD_SEND ? &c->send_busy : &c->recv_busy) = false;
		io_uring_cqe_seen(&io->ring, cqe);
		busy--;
	}
	io_uring_queue_exit(&io->ring);
}

void load_io_exit(struct load_io *io)
{
	if (io->uring)
		uring_quiesce(io);
	for (uint32_t k = 0; k < io->n; k++) {
		close(io->conns[k].fd);
		free(io->conns[k].in);
		free(io->conns[k].out);
		free(io->conns[k].wire);
	}
	io->n = 0;
	io->uring = false;
}

/* ---- the router's own latency, over the admin socket ---- */

int load_admin_hists(const char *path, uint64_t (*h)[DP_HIST_BUCKETS])
{
	static const char *const key[LOAD_ROUTER_HISTS] = {"\"in_hist\":[", "\"out_hist\":[",
							   "\"route_hist\":[", "\"send_hist\":["};
	char *buf = pd_admin_ask(path, "counters", ADMIN_TIMEOUT_MS), *p;

	if (!buf)
		return -EIO;
	for (int k = 0; k < LOAD_ROUTER_HISTS; k++) {
		memset(h[k], 0, DP_HIST_BUCKETS * sizeof(h[k][0]));
		p = strstr(buf, key[k]);
		if (!p) {
			free(buf);
			return -EIO;
		}
		p += strlen(key[k]);
		for (uint32_t b = 0; b < DP_HIST_BUCKETS && *p != ']'; b++) {
			h[k][b] = strtoull(p, &p, 10);
			if (*p == ',')
				p++;
		}
	}
	free(buf);
	return 0;
}
