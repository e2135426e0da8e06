/*
 * A dataplane core's clients, on its io_uring: multishot accept on the listening sockets,
 * multishot receive into a ring of provided buffers, and sends. Frames are cut out of the
 * received bytes where they lie when a buffer holds them whole, and copied into the
 * connection's own buffer only when a frame arrives in pieces. Answers are appended to one of
 * two output buffers per connection while the other is being sent, so one send is in flight
 * per connection and frames written during it go out together in the next.
 *
 * A connection is closed in three steps: it stops taking frames (CLOSING), its socket is shut
 * down so that the kernel ends the receive and any send, and once no operation on it is in
 * flight its descriptor is closed and the slot is reused under a new generation, which
 * completions for the old one no longer match.
 */
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/utsname.h>
#include <unistd.h>

#include "core_pvt.h"
#include "frame.h"

#define IDLE_CHECK_NS 100000000ull /* the idle timeout is checked every 100 ms */
#define IN_KEEP_BYTES (64u << 10)  /* a reassembly buffer up to this size is kept */

enum op { OP_ACCEPT = 1, OP_RECV = 2, OP_SEND = 3 };

/* user_data: the operation, the connection's slot (or the listening socket's index) and its
 * generation, so a completion for a slot that was reused is recognised and ignored. */
static uint64_t tag(enum op op, uint32_t slot, uint32_t gen)
{
	return (uint64_t)op << 56 | (uint64_t)(slot & 0xFFFFFFu) << 32 | gen;
}

static struct io_uring_sqe *sqe_get(struct dp_core *c)
{
	struct io_uring_sqe *sqe = io_uring_get_sqe(&c->ring);

	if (!sqe) { /* the queue is full: hand it to the kernel and take a fresh entry */
		io_uring_submit(&c->ring);
		/* Under SQPOLL the kernel thread frees entries as it gets to them: wait for
		 * one rather than drop the operation. */
		if (c->cfg.sqpoll)
			io_uring_sqring_wait(&c->ring);
		sqe = io_uring_get_sqe(&c->ring);
	}
	return sqe;
}

static void arm_accept(struct dp_core *c, uint32_t k)
{
	struct io_uring_sqe *sqe = sqe_get(c);

	if (!sqe)
		return;
	io_uring_prep_multishot_accept(sqe, c->cfg.listen_fds[k], NULL, NULL, SOCK_CLOEXEC);
	io_uring_sqe_set_data64(sqe, tag(OP_ACCEPT, k, 0));
}

static void arm_recv(struct dp_core *c, uint32_t i)
{
	struct dp_conn *cn = &c->conns[i];
	struct io_uring_sqe *sqe = sqe_get(c);

	if (!sqe)
		return;
	io_uring_prep_recv_multishot(sqe, cn->fd, NULL, 0, 0);
	sqe->flags |= IOSQE_BUFFER_SELECT;
	sqe->buf_group = 0;
	io_uring_sqe_set_data64(sqe, tag(OP_RECV, i, cn->gen));
	cn->recv_armed = true;
	cn->ops++;
}

static void mark_dirty(struct dp_core *c, uint32_t i)
{
	struct dp_conn *cn = &c->conns[i];

	if (!cn->dirty) {
		cn->dirty = true;
		c->dirty_conns[c->ndirty_conns++] = i;
	}
}

/* ---- output ---- */

uint8_t *dp_conn_frame(struct dp_core *c, uint32_t conn, uint32_t gen, size_t len)
{
	struct dp_conn *cn = &c->conns[conn];
	struct dp_buf *b;
	uint8_t *p;

	if (cn->state != DP_CONN_OPEN || cn->gen != gen)
		return NULL;
	b = &cn->out[cn->sending ? !cn->cur : cn->cur];
	if ((uint64_t)cn->out[0].len + cn->out[1].len + len > DP_OUT_LIMIT ||
	    dp_buf_reserve(&c->slab, b, b->len + len)) {
		/* The client does not read what it asked for (or memory ran out): it is closed
		 * at the end of the round, not here, where a request may be mid-update. */
		dp_count(c, DP_STAT(conns_slow), 1);
		cn->state = DP_CONN_CLOSING;
		mark_dirty(c, conn);
		return NULL;
	}
	p = b->p + b->len;
	b->len += (uint32_t)len;
	cn->last_ns = c->now_ns;
	mark_dirty(c, conn);
	return p;
}

static void send_out(struct dp_core *c, uint32_t i)
{
	struct dp_conn *cn = &c->conns[i];
	struct dp_buf *b = &cn->out[cn->cur];
	struct io_uring_sqe *sqe = sqe_get(c);

	if (!sqe)
		return;
	io_uring_prep_send(sqe, cn->fd, b->p + cn->sent, b->len - cn->sent, MSG_NOSIGNAL);
	io_uring_sqe_set_data64(sqe, tag(OP_SEND, i, cn->gen));
	c->sends++;
	cn->sending = true;
	cn->ops++;
}

/* A connection-level error: say why (request id 0), then close once it is sent. */
static void conn_error(struct dp_core *c, uint32_t i, int error, const char *msg)
{
	struct dp_conn *cn = &c->conns[i];
	uint8_t *p = dp_conn_frame(c, i, cn->gen, dp_frame_error_bytes(msg));

	if (p)
		dp_frame_error(p, 0, error, msg);
	cn->close_after_send = true;
}

void dp_conn_close(struct dp_core *c, uint32_t i)
{
	struct dp_conn *cn = &c->conns[i];

	if (cn->state == DP_CONN_FREE)
		return;
	if (cn->state == DP_CONN_OPEN || !cn->dropped) {
		cn->state = DP_CONN_CLOSING;
		cn->dropped = true;
		dp_req_drop_conn(c, i);
		dp_buf_free(&c->slab, &cn->in);
		if (cn->ops) /* the kernel ends the receive and sends; their completions finish */
			shutdown(cn->fd, SHUT_RDWR);
	}
	if (cn->ops)
		return;
	close(cn->fd);
	dp_buf_free(&c->slab, &cn->out[0]);
	dp_buf_free(&c->slab, &cn->out[1]);
	*cn = (struct dp_conn){.gen = cn->gen + 1, .fd = -1};
	cn->free_next = c->free_conn;
	c->free_conn = i;
	dp_count(c, DP_STAT(conns_closed), 1);
}

void dp_conn_finish(struct dp_core *c, uint32_t i)
{
	c->conns[i].close_after_send = true;
	mark_dirty(c, i);
}

void dp_conn_abandon(struct dp_core *c, uint32_t i)
{
	struct dp_conn *cn = &c->conns[i];

	dp_conn_close(c, i);
	if (cn->state == DP_CONN_FREE)
		return;
	close(cn->fd);
	cn->fd = -1;
}

void dp_ingress_flush(struct dp_core *c)
{
	for (uint32_t k = 0; k < c->ndirty_conns; k++) {
		uint32_t i = c->dirty_conns[k];
		struct dp_conn *cn = &c->conns[i];

		cn->dirty = false;
		if (cn->state == DP_CONN_FREE)
			continue;
		if (cn->state == DP_CONN_CLOSING) {
			dp_conn_close(c, i);
			continue;
		}
		if (cn->rearm && !cn->recv_armed) { /* buffers were returned since */
			cn->rearm = false;
			arm_recv(c, i);
		}
		if (!cn->sending && !cn->out[cn->cur].len && cn->out[!cn->cur].len)
			cn->cur = !cn->cur;
		if (!cn->sending && cn->out[cn->cur].len)
			send_out(c, i);
		else if (!cn->sending && cn->close_after_send)
			dp_conn_close(c, i);
	}
	c->ndirty_conns = 0;
}

/* ---- input ---- */

static void dispatch(struct dp_core *c, uint32_t i, const uint8_t *p, uint32_t len)
{
	struct dp_frame_request f;
	struct pdc_hdr h;
	const char *why = "";
	int rc;

	memcpy(&h, p, sizeof(h));
	switch (h.type) {
	case PDC_REQUEST:
		rc = dp_frame_decode_request(p, len, c->cfg.max_prompt_tokens, &f, &why);
		if (rc == -EBADMSG) {
			dp_count(c, DP_STAT(frames_malformed), 1);
			conn_error(c, i, rc, why);
		} else if (rc) {
			dp_count(c, DP_STAT(requests), 1);
			dp_count(c, DP_STAT(errors), 1);
			uint8_t *o =
			    dp_conn_frame(c, i, c->conns[i].gen, dp_frame_error_bytes(why));
			if (o)
				dp_frame_error(o, h.id, rc, why);
		} else {
			dp_req_start(c, i, &f);
		}
		return;
	case PDC_CANCEL:
		if (len == sizeof(h)) {
			dp_req_cancel_client(c, i, h.id);
			return;
		}
		break;
	}
	dp_count(c, DP_STAT(frames_malformed), 1);
	conn_error(c, i, -EBADMSG, "unknown frame type, or a cancel with a body");
}

/*
 * Take the whole frames in @len bytes at @p; returns the bytes used (a partial frame at the
 * end is left), or -1 when the connection stops taking frames.
 */
static long take_frames(struct dp_core *c, uint32_t i, const uint8_t *p, size_t len)
{
	size_t off = 0;

	while (c->conns[i].state == DP_CONN_OPEN && !c->conns[i].close_after_send) {
		long n = dp_frame_length(p + off, len - off, c->cfg.max_frame);

		if (n < 0) {
			dp_count(c, DP_STAT(frames_malformed), 1);
			conn_error(c, i, (int)n,
				   n == -EMSGSIZE ? "frame over the router's limit"
						  : "not a pdrouter frame");
			return -1;
		}
		if (!n || (size_t)n > len - off)
			return (long)off;
		dispatch(c, i, p + off, (uint32_t)n);
		off += (size_t)n;
	}
	return -1;
}

/*
 * Keep @len bytes of an unfinished frame in the connection's own buffer. It grows with the
 * bytes that came (a size class at a time, so copies stay few), never with what a header
 * claims: a client that announces big frames and sends nothing holds no memory.
 */
static int keep_partial(struct dp_core *c, struct dp_conn *cn, const uint8_t *p, size_t len)
{
	if (dp_buf_reserve(&c->slab, &cn->in, cn->in.len + len))
		return -ENOMEM;
	memcpy(cn->in.p + cn->in.len, p, len);
	cn->in.len += (uint32_t)len;
	return 0;
}

static void on_bytes(struct dp_core *c, uint32_t i, const uint8_t *p, size_t len)
{
	struct dp_conn *cn = &c->conns[i];
	long used;

	cn->last_ns = c->now_ns;
	if (!cn->in.len) { /* the common case: frames taken where they lie */
		used = take_frames(c, i, p, len);
		if (used < 0 || (size_t)used == len)
			return;
		p += used;
		len -= (size_t)used;
	}
	if (keep_partial(c, cn, p, len)) {
		dp_count(c, DP_STAT(overloaded), 1);
		conn_error(c, i, -ENOBUFS, "router overloaded: no buffer for a frame");
		return;
	}
	used = take_frames(c, i, cn->in.p, cn->in.len);
	if (used < 0)
		return;
	memmove(cn->in.p, cn->in.p + used, cn->in.len - (size_t)used);
	cn->in.len -= (uint32_t)used;
	if (!cn->in.len && cn->in.cap > IN_KEEP_BYTES)
		dp_buf_free(&c->slab, &cn->in);
}

static void recycle_buffer(struct dp_core *c, uint16_t bid)
{
	io_uring_buf_ring_add(c->bufs, c->buf_mem + (size_t)bid * DP_RECV_BUF_BYTES,
			      DP_RECV_BUF_BYTES, bid, io_uring_buf_ring_mask(DP_RECV_BUFS), 0);
	io_uring_buf_ring_advance(c->bufs, 1);
}

static void on_recv(struct dp_core *c, uint32_t i, const struct io_uring_cqe *cqe)
{
	struct dp_conn *cn = &c->conns[i];
	bool more = cqe->flags & IORING_CQE_F_MORE;

	if (cqe->flags & IORING_CQE_F_BUFFER) {
		uint16_t bid = (uint16_t)(cqe->flags >> IORING_CQE_BUFFER_SHIFT);

		c->frame_ns = dp_now_ns();
		if (cqe->res > 0 && cn->state == DP_CONN_OPEN) {
			on_bytes(c, i, c->buf_mem + (size_t)bid * DP_RECV_BUF_BYTES,
				 (size_t)cqe->res);
			/* Its requests go to the workers now, not after the rest of the round. */
			dp_core_publish(c);
		}
		recycle_buffer(c, bid);
	}
	if (more)
		return;
	cn->ops--;
	cn->recv_armed = false;
	if (cn->state != DP_CONN_OPEN)
		dp_conn_close(c, i);
	else if (cqe->res == -ENOBUFS) { /* every buffer was taken: receive again, later */
		cn->rearm = true;
		mark_dirty(c, i);
	} else if (cqe->res <= 0) /* 0: the client hung up */
		dp_conn_close(c, i);
	else
		arm_recv(c, i);
}

static void on_send(struct dp_core *c, uint32_t i, int res)
{
	struct dp_conn *cn = &c->conns[i];
	struct dp_buf *b = &cn->out[cn->cur];

	cn->ops--;
	cn->sending = false;
	if (res < 0 || cn->state != DP_CONN_OPEN) {
		dp_conn_close(c, i);
		return;
	}
	cn->sent += (uint32_t)res;
	if (cn->sent < b->len) { /* a short send: the rest goes next */
		send_out(c, i);
		return;
	}
	b->len = 0;
	cn->sent = 0;
	cn->cur = !cn->cur;
	mark_dirty(c, i); /* what was written meanwhile goes out at the flush */
}

static void on_accept(struct dp_core *c, uint32_t k, const struct io_uring_cqe *cqe)
{
	uint32_t i;
	int one = 1;

	if (!(cqe->flags & IORING_CQE_F_MORE) && !c->stopping) {
		/* Out of descriptors or memory: accepting again at once would spin on the same
		 * error; the timer re-arms it within a millisecond. */
		if (cqe->res == -EMFILE || cqe->res == -ENFILE || cqe->res == -ENOMEM ||
		    cqe->res == -ENOBUFS)
			c->accept_paused |= 1u << k;
		else
			arm_accept(c, k);
	}
	if (cqe->res < 0)
		return;
	if (c->stopping || c->free_conn == DP_NIL) {
		if (!c->stopping)
			dp_count(c, DP_STAT(conns_refused), 1);
		close(cqe->res);
		return;
	}
	i = c->free_conn;
	c->free_conn = c->conns[i].free_next;
	c->conns[i].fd = cqe->res;
	c->conns[i].state = DP_CONN_OPEN;
	c->conns[i].reqs = (struct dp_list){.head = DP_NIL, .tail = DP_NIL};
	c->conns[i].last_ns = c->now_ns;
	/* Frames are small and latency is the point: no Nagle (fails harmlessly on Unix). */
	setsockopt(cqe->res, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	dp_count(c, DP_STAT(conns_accepted), 1);
	arm_recv(c, i);
}

unsigned dp_ingress_reap(struct dp_core *c)
{
	struct io_uring_cqe *cqe;
	unsigned head, n = 0;

	/* Completion work is waiting (TASKRUN_FLAG): run it now, so its completions are here. */
	if (IO_URING_READ_ONCE(*c->ring.sq.kflags) & IORING_SQ_TASKRUN)
		io_uring_get_events(&c->ring);
	io_uring_for_each_cqe(&c->ring, head, cqe)
	{
		uint64_t t = cqe->user_data;
		uint32_t slot = (uint32_t)(t >> 32) & 0xFFFFFFu, gen = (uint32_t)t;

		n++;
		switch (t >> 56) {
		case OP_ACCEPT:
			on_accept(c, slot, cqe);
			break;
		case OP_RECV:
			if (slot < c->cfg.max_conns && c->conns[slot].gen == gen)
				on_recv(c, slot, cqe);
			else if (cqe->flags & IORING_CQE_F_BUFFER)
				recycle_buffer(c,
					       (uint16_t)(cqe->flags >> IORING_CQE_BUFFER_SHIFT));
			break;
		case OP_SEND:
			if (slot < c->cfg.max_conns && c->conns[slot].gen == gen)
				on_send(c, slot, cqe->res);
			break;
		}
	}
	io_uring_cq_advance(&c->ring, n);
	return n;
}

/* Connections with nothing in flight and no frame for idle_timeout_ns are closed; accepts
 * paused for want of descriptors are armed again. */
void dp_ingress_idle(struct dp_core *c)
{
	for (uint32_t k = 0; c->accept_paused && k < c->cfg.nlisten; k++)
		if (c->accept_paused & (1u << k)) {
			c->accept_paused &= ~(1u << k);
			arm_accept(c, k);
		}
	if (!c->cfg.idle_timeout_ns || c->now_ns - c->last_idle_check < IDLE_CHECK_NS)
		return;
	c->last_idle_check = c->now_ns;
	for (uint32_t i = 0; i < c->cfg.max_conns; i++) {
		struct dp_conn *cn = &c->conns[i];

		if (cn->state == DP_CONN_OPEN && !cn->reqs.n && !cn->close_after_send &&
		    c->now_ns - cn->last_ns > c->cfg.idle_timeout_ns) {
			dp_count(c, DP_STAT(conns_idle), 1);
			conn_error(c, i, -ETIMEDOUT, "connection idle for too long");
		}
	}
}

void dp_ingress_stop_accepting(struct dp_core *c)
{
	struct io_uring_sqe *sqe;

	for (uint32_t k = 0; k < c->cfg.nlisten; k++) {
		sqe = sqe_get(c);
		if (!sqe)
			return;
		io_uring_prep_cancel64(sqe, tag(OP_ACCEPT, k, 0), 0);
		io_uring_sqe_set_data64(sqe, 0);
	}
	io_uring_submit(&c->ring);
}

/* ---- set-up ---- */

/*
 * What the core needs of io_uring, named when missing: accept, receive and send, multishot
 * receive into provided buffer rings (Linux 6.0). Multishot cannot be probed, so the kernel's
 * version stands for it.
 */
static int check_features(struct io_uring *ring, char *err, size_t errlen)
{
	static const struct {
		int op;
		const char *name;
	} ops[] = {{IORING_OP_ACCEPT, "IORING_OP_ACCEPT"},
		   {IORING_OP_RECV, "IORING_OP_RECV"},
		   {IORING_OP_SEND, "IORING_OP_SEND"},
		   {IORING_OP_ASYNC_CANCEL, "IORING_OP_ASYNC_CANCEL"}};
	struct io_uring_probe *probe = io_uring_get_probe_ring(ring);
	struct utsname u;
	unsigned major = 0, minor = 0;

	for (size_t k = 0; probe && k < sizeof(ops) / sizeof(ops[0]); k++)
		if (!io_uring_opcode_supported(probe, ops[k].op)) {
			snprintf(err, errlen, "this kernel's io_uring lacks %s", ops[k].name);
			io_uring_free_probe(probe);
			return -EOPNOTSUPP;
		}
	io_uring_free_probe(probe);
	if (!uname(&u) && sscanf(u.release, "%u.%u", &major, &minor) == 2 && major < 6) {
		snprintf(err, errlen,
			 "io_uring multishot receive with provided buffer rings needs "
			 "Linux 6.0 or later; this kernel is %s",
			 u.release);
		return -EOPNOTSUPP;
	}
	return 0;
}

static int setup_ring(struct dp_core *c, char *err, size_t errlen)
{
	/*
	 * Completion work (a receive's data landing in a provided buffer) runs only when the
	 * core asks for it (DEFER_TASKRUN), flagged in the ring (TASKRUN_FLAG) so the loop
	 * enters the kernel for it only when there is some: a submit then does just the sends,
	 * and a spinning core is never interrupted. SQPOLL cannot defer; older kernels (before
	 * 6.1) get the cooperative mode, and before 5.19 neither.
	 */
	struct io_uring_params p = {.flags = IORING_SETUP_SUBMIT_ALL | IORING_SETUP_SINGLE_ISSUER |
					     IORING_SETUP_DEFER_TASKRUN |
					     IORING_SETUP_TASKRUN_FLAG};
	int rc;

	if (c->cfg.sqpoll) {
		p.flags = IORING_SETUP_SQPOLL | IORING_SETUP_SUBMIT_ALL;
		p.sq_thread_idle = 1000; /* ms before the kernel thread sleeps */
	}
	rc = io_uring_queue_init_params(c->cfg.ring_entries, &c->ring, &p);
	if (rc == -EINVAL && !c->cfg.sqpoll) {
		p.flags = IORING_SETUP_COOP_TASKRUN | IORING_SETUP_TASKRUN_FLAG;
		rc = io_uring_queue_init_params(c->cfg.ring_entries, &c->ring, &p);
	}
	if (rc == -EINVAL) { /* the oldest kernels: no optional flag at all */
		p.flags &= IORING_SETUP_SQPOLL;
		rc = io_uring_queue_init_params(c->cfg.ring_entries, &c->ring, &p);
	}
	if (rc) {
		snprintf(err, errlen, "io_uring_setup: %s%s", strerror(-rc),
			 rc == -ENOSYS || rc == -EPERM ? " (io_uring is unavailable or disabled: "
							 "kernel.io_uring_disabled)"
						       : "");
		return rc;
	}
	rc = check_features(&c->ring, err, errlen);
	if (rc)
		io_uring_queue_exit(&c->ring);
	return rc;
}

int dp_ingress_init(struct dp_core *c, char *err, size_t errlen)
{
	size_t ring_bytes = DP_RECV_BUFS * sizeof(struct io_uring_buf);
	struct io_uring_buf_reg reg = {.ring_entries = DP_RECV_BUFS, .bgid = 0};
	int rc = setup_ring(c, err, errlen);

	if (rc)
		return rc;
	c->bufs =
	    mmap(NULL, ring_bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	c->buf_mem = mmap(NULL, (size_t)DP_RECV_BUFS * DP_RECV_BUF_BYTES, PROT_READ | PROT_WRITE,
			  MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (c->bufs == MAP_FAILED || c->buf_mem == MAP_FAILED) {
		snprintf(err, errlen, "out of memory for receive buffers");
		rc = -ENOMEM;
		goto fail;
	}
	reg.ring_addr = (uint64_t)(uintptr_t)c->bufs;
	rc = io_uring_register_buf_ring(&c->ring, &reg, 0);
	if (rc) {
		snprintf(err, errlen, "io_uring provided buffer rings (Linux 5.19+): %s",
			 strerror(-rc));
		goto fail;
	}
	io_uring_buf_ring_init(c->bufs);
	for (uint16_t b = 0; b < DP_RECV_BUFS; b++)
		io_uring_buf_ring_add(c->bufs, c->buf_mem + (size_t)b * DP_RECV_BUF_BYTES,
				      DP_RECV_BUF_BYTES, b, io_uring_buf_ring_mask(DP_RECV_BUFS),
				      b);
	io_uring_buf_ring_advance(c->bufs, DP_RECV_BUFS);
	c->free_conn = DP_NIL;
	for (uint32_t i = c->cfg.max_conns; i-- > 0;) {
		c->conns[i] = (struct dp_conn){.fd = -1, .free_next = c->free_conn};
		c->free_conn = i;
	}
	c->dirty_conns = calloc(c->cfg.max_conns, sizeof(*c->dirty_conns));
	if (!c->dirty_conns) {
		snprintf(err, errlen, "out of memory");
		rc = -ENOMEM;
		goto fail;
	}
	for (uint32_t k = 0; k < c->cfg.nlisten; k++)
		arm_accept(c, k);
	io_uring_submit(&c->ring);
	return 0;
fail:
	dp_ingress_destroy(c);
	return rc;
}

void dp_ingress_destroy(struct dp_core *c)
{
	if (c->ring.ring_fd > 0)
		io_uring_queue_exit(&c->ring);
	c->ring.ring_fd = -1;
	if (c->bufs && c->bufs != MAP_FAILED)
		munmap(c->bufs, DP_RECV_BUFS * sizeof(struct io_uring_buf));
	if (c->buf_mem && c->buf_mem != MAP_FAILED)
		munmap(c->buf_mem, (size_t)DP_RECV_BUFS * DP_RECV_BUF_BYTES);
	c->bufs = NULL;
	c->buf_mem = NULL;
	free(c->dirty_conns);
	c->dirty_conns = NULL;
}
