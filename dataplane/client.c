/*
 * libpdclient (pdclient.h): REQUEST and CANCEL frames written, answer frames decoded, and one
 * blocking connection that reads answers through a receive buffer. Everything runs on the
 * caller's thread; a struct pdc_client is not shared between threads. The header check is
 * frame.c's, so that the client and the router agree on what a frame is.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <limits.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "clock.h"
#include "frame.h"
#include "pdclient.h"

/* Frames are copied as structs and tokens sent from the caller's array as they are: the wire is
 * little-endian, and so must the host be (frame.c assumes the same). */
#if __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "libpdclient writes frames in host byte order: little-endian hosts only"
#endif

#define HDR sizeof(struct pdc_hdr)
#define FIXED (HDR + sizeof(struct pdc_request))
/* The head of a REQUEST (all but the tokens) at its longest. */
#define HEAD_MAX (FIXED + 2 * PDC_NAME_MAX + PDC_SALT_MAX + PDC_SAMPLING_MAX + 3)
#define RBUF_INITIAL 65536u

struct pdc_client {
	int fd;
	int broken;   /* 0, or what every later pdc_next() returns: the stream lost its framing */
	uint8_t *buf; /* cap bytes; [start, end) received and not yet handed out */
	size_t cap, start, end;
	size_t handed; /* bytes of the frame the last pdc_next() returned, dropped by the next */
};

static size_t pad4(size_t n)
{
	return (n + 3) & ~(size_t)3;
}

/* Length of @s, counted no further than @max + 1 (enough to tell it is too long); 0 for NULL. */
static size_t str_len(const char *s, size_t max)
{
	return s ? strnlen(s, max + 1) : 0;
}

void pdc_request_defaults(struct pdc_request *r)
{
	memset(r, 0, sizeof(*r));
	r->pin_worker = PDC_NO_WORKER;
	r->pin_prefill_worker = PDC_NO_WORKER;
}

size_t pdc_request_bytes(const struct pdc_request_args *a)
{
	size_t strings = (a->model ? strlen(a->model) : 0) + (a->lora ? strlen(a->lora) : 0) +
			 (a->cache_salt ? strlen(a->cache_salt) : 0);

	return FIXED + pad4(strings + a->sampling_len) + 4 * (size_t)a->ntokens;
}

/*
 * Write the head of @a's REQUEST (header, fixed part, strings, sampling, padding) into @buf,
 * HEAD_MAX bytes. Returns the head's length with *@total set to the frame's, or -EINVAL. The
 * overrides are not checked here: the router answers a bad one with a request-level -EINVAL.
 */
static long encode_head(uint8_t *buf, const struct pdc_request_args *a, size_t *total)
{
	size_t model = str_len(a->model, PDC_NAME_MAX), lora = str_len(a->lora, PDC_NAME_MAX);
	size_t salt = str_len(a->cache_salt, PDC_SALT_MAX), head;
	struct pdc_request r = a->fixed;
	uint8_t *p;

	if (!model || model > PDC_NAME_MAX || lora > PDC_NAME_MAX || salt > PDC_SALT_MAX ||
	    a->sampling_len > PDC_SAMPLING_MAX || (a->sampling_len && !a->sampling) || !a->tokens ||
	    !a->ntokens || !a->max_tokens || (a->flags & ~PDC_FLAGS_ALL))
		return -EINVAL;
	head = FIXED + pad4(model + lora + salt + a->sampling_len);
	if (a->ntokens > (UINT32_MAX - head) / 4) /* the header's length is 32 bits */
		return -EINVAL;
	*total = head + 4 * (size_t)a->ntokens;
	r.ntokens = a->ntokens;
	r.max_tokens = a->max_tokens;
	r.flags = a->flags;
	r.model_len = (uint16_t)model;
	r.lora_len = (uint16_t)lora;
	r.salt_len = (uint16_t)salt;
	r.sampling_len = (uint16_t)a->sampling_len;
	r.reserved2 = 0;
	r.reserved3 = 0;
	memset(buf, 0, head); /* the padding after the strings */
	dp_frame_header(buf, PDC_REQUEST, a->id, (uint32_t)*total);
	memcpy(buf + HDR, &r, sizeof(r));
	p = buf + FIXED;
	memcpy(p, a->model, model);
	if (lora)
		memcpy(p + model, a->lora, lora);
	if (salt)
		memcpy(p + model + lora, a->cache_salt, salt);
	if (a->sampling_len)
		memcpy(p + model + lora + salt, a->sampling, a->sampling_len);
	return (long)head;
}

long pdc_request_encode(void *buf, size_t cap, const struct pdc_request_args *a)
{
	uint8_t head[HEAD_MAX];
	size_t total;
	long n = encode_head(head, a, &total);

	if (n < 0)
		return n;
	if (cap < total)
		return -ENOBUFS;
	memcpy(buf, head, (size_t)n);
	memcpy((uint8_t *)buf + n, a->tokens, total - (size_t)n);
	return (long)total;
}

void pdc_cancel_encode(void *buf, uint64_t id)
{
	dp_frame_header(buf, PDC_CANCEL, id, HDR);
}

/* TOKENS: exactly n token ids after its fixed part. */
static int decode_tokens(const uint8_t *body, size_t len, struct pdc_event *ev)
{
	struct pdc_tokens t;

	if (len < sizeof(t))
		return -EBADMSG;
	memcpy(&t, body, sizeof(t));
	if ((len - sizeof(t)) % 4 || (len - sizeof(t)) / 4 != t.n)
		return -EBADMSG;
	ev->tokens.n = t.n;
	ev->tokens.ids = body + sizeof(t);
	return 0;
}

/* ERROR: exactly len bytes of message after its fixed part, no more than PDC_ERROR_MAX. */
static int decode_error(const uint8_t *body, size_t len, struct pdc_event *ev)
{
	struct pdc_error e;

	if (len < sizeof(e))
		return -EBADMSG;
	memcpy(&e, body, sizeof(e));
	if (e.len > PDC_ERROR_MAX || len - sizeof(e) != e.len)
		return -EBADMSG;
	ev->error.error = e.error;
	ev->error.len = e.len;
	ev->error.msg = (const char *)body + sizeof(e);
	return 0;
}

int pdc_event_decode(const void *buf, size_t len, struct pdc_event *ev)
{
	const uint8_t *b = buf;
	struct pdc_hdr h;
	size_t body;

	/* dp_frame_length() says 0 for fewer than 16 bytes: 0 bytes must not pass as a match. */
	if (len < HDR || len > UINT32_MAX || dp_frame_length(b, len, (uint32_t)len) != (long)len)
		return -EBADMSG;
	memcpy(&h, b, sizeof(h));
	ev->type = h.type;
	ev->id = h.id;
	body = len - HDR;
	switch (h.type) {
	case PDC_ROUTED:
		if (body != sizeof(ev->routed))
			return -EBADMSG;
		memcpy(&ev->routed, b + HDR, body);
		return 0;
	case PDC_TOKENS:
		return decode_tokens(b + HDR, body, ev);
	case PDC_DONE:
		if (body != sizeof(ev->done))
			return -EBADMSG;
		memcpy(&ev->done, b + HDR, body);
		return 0;
	case PDC_ERROR:
		return decode_error(b + HDR, body, ev);
	}
	return -EBADMSG;
}

/* ---- The connection. ---- */

/* connect(), waiting for the outcome when a signal interrupted it (it goes on regardless). */
static int connect_fd(int fd, const struct sockaddr *sa, socklen_t len)
{
	struct pollfd p = {.fd = fd, .events = POLLOUT};
	socklen_t elen = sizeof(int);
	int err = 0;

	if (!connect(fd, sa, len))
		return 0;
	if (errno != EINTR)
		return -errno;
	while (poll(&p, 1, -1) < 0)
		if (errno != EINTR)
			return -errno;
	if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &elen))
		return -errno;
	return -err;
}

/* A connected Unix stream socket at @path, or a negative errno. */
static int connect_unix(const char *path)
{
	struct sockaddr_un sa = {.sun_family = AF_UNIX};
	size_t n = strlen(path);
	int fd, rc;

	if (!n || n >= sizeof(sa.sun_path))
		return -EINVAL;
	memcpy(sa.sun_path, path, n);
	fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return -errno;
	rc = connect_fd(fd, (const struct sockaddr *)&sa, sizeof(sa));
	if (rc) {
		close(fd);
		return rc;
	}
	return fd;
}

/* getaddrinfo()'s EAI_* as a negative errno. */
static int gai_errno(int rc)
{
	switch (rc) {
	case EAI_SYSTEM:
		return errno ? -errno : -EIO;
	case EAI_MEMORY:
		return -ENOMEM;
	case EAI_AGAIN:
		return -EAGAIN;
	default:
		return -ENXIO; /* no such host, or no stream address for it */
	}
}

/* Split "host:port" or "[v6]:port" into @host (NI_MAXHOST bytes); returns the port or NULL. */
static const char *split_host_port(const char *addr, char *host)
{
	const char *colon = strrchr(addr, ':'), *port;
	size_t n;

	if (!colon)
		return NULL;
	port = colon + 1;
	n = (size_t)(colon - addr);
	if (n >= 2 && addr[0] == '[' && addr[n - 1] == ']') {
		addr++;
		n -= 2;
	}
	if (!n || n >= NI_MAXHOST || !*port || strlen(port) > 5 ||
	    strspn(port, "0123456789") != strlen(port))
		return NULL;
	memcpy(host, addr, n);
	host[n] = '\0';
	return port;
}

/* A connected TCP socket to "host:port", trying each address the name has, or a negative errno. */
static int connect_tcp(const char *addr)
{
	struct addrinfo hints = {
	    .ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM, .ai_flags = AI_NUMERICSERV};
	struct addrinfo *res, *ai;
	char host[NI_MAXHOST];
	const char *port = split_host_port(addr, host);
	int fd = -1, rc, one = 1;

	if (!port)
		return -EINVAL;
	rc = getaddrinfo(host, port, &hints, &res);
	if (rc)
		return gai_errno(rc);
	rc = -ENXIO;
	for (ai = res; ai && fd < 0; ai = ai->ai_next) {
		fd = socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC, ai->ai_protocol);
		if (fd < 0) {
			rc = -errno;
			continue;
		}
		rc = connect_fd(fd, ai->ai_addr, ai->ai_addrlen);
		if (rc) {
			close(fd);
			fd = -1;
		}
	}
	freeaddrinfo(res);
	if (fd < 0)
		return rc;
	/* A CANCEL must not wait behind Nagle for the ACK of the REQUEST before it. */
	if (setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one))) {
		rc = -errno;
		close(fd);
		return rc;
	}
	return fd;
}

int pdc_connect(const char *addr, struct pdc_client **out)
{
	struct pdc_client *c = calloc(1, sizeof(*c));
	int fd;

	if (c)
		c->buf = malloc(RBUF_INITIAL);
	if (!c || !c->buf) {
		free(c);
		return -ENOMEM;
	}
	if (!strncmp(addr, "unix:", 5))
		fd = connect_unix(addr + 5);
	else if (addr[0] == '/')
		fd = connect_unix(addr);
	else
		fd = connect_tcp(strncmp(addr, "tcp:", 4) ? addr : addr + 4); /* --listen's form */
	if (fd < 0) {
		free(c->buf);
		free(c);
		return fd;
	}
	c->fd = fd;
	c->cap = RBUF_INITIAL;
	*out = c;
	return 0;
}

/*
 * Send every byte of @iov[0..@n), resuming after short sends and signals. A failure part way
 * leaves half a frame on the stream: the connection is then good only for closing.
 */
static int send_all(int fd, struct iovec *iov, size_t n)
{
	struct msghdr m = {.msg_iov = iov, .msg_iovlen = n};
	ssize_t k;

	while (m.msg_iovlen) {
		k = sendmsg(fd, &m, MSG_NOSIGNAL);
		if (k < 0) {
			if (errno == EINTR)
				continue;
			return -errno;
		}
		while (m.msg_iovlen && (size_t)k >= m.msg_iov->iov_len) {
			k -= (ssize_t)m.msg_iov->iov_len;
			m.msg_iov++;
			m.msg_iovlen--;
		}
		if (m.msg_iovlen) {
			m.msg_iov->iov_base = (uint8_t *)m.msg_iov->iov_base + k;
			m.msg_iov->iov_len -= (size_t)k;
		}
	}
	return 0;
}

int pdc_send(struct pdc_client *c, const struct pdc_request_args *a)
{
	uint8_t head[HEAD_MAX];
	size_t total;
	long n = encode_head(head, a, &total);
	struct iovec iov[2];

	if (n < 0)
		return (int)n;
	/* The tokens go from the caller's array: on a little-endian host they are the wire's. */
	iov[0] = (struct iovec){.iov_base = head, .iov_len = (size_t)n};
	iov[1] = (struct iovec){.iov_base = (void *)a->tokens, .iov_len = total - (size_t)n};
	return send_all(c->fd, iov, 2);
}

int pdc_cancel(struct pdc_client *c, uint64_t id)
{
	uint8_t frame[HDR];
	struct iovec iov = {.iov_base = frame, .iov_len = sizeof(frame)};

	pdc_cancel_encode(frame, id);
	return send_all(c->fd, &iov, 1);
}

/* Milliseconds left until @deadline_ns (rounded up), or -1 when @timeout_ms is -1: forever. */
static int remaining_ms(int timeout_ms, uint64_t deadline_ns)
{
	uint64_t now = dp_now_ns(), ms;

	if (timeout_ms < 0)
		return -1;
	if (now >= deadline_ns)
		return 0;
	ms = (deadline_ns - now + 999999) / 1000000;
	return ms > INT_MAX ? INT_MAX : (int)ms;
}

/*
 * Room in the buffer for a frame of @want bytes from c->start: what is there moves to the
 * front, and the buffer grows (to at most the router's frame limit, which dp_frame_length()
 * already held @want to). Returns 0 or -ENOMEM.
 */
static int make_room(struct pdc_client *c, size_t want)
{
	size_t cap = c->cap;
	uint8_t *grown;

	if (c->start + want <= c->cap)
		return 0;
	memmove(c->buf, c->buf + c->start, c->end - c->start);
	c->end -= c->start;
	c->start = 0;
	if (want <= c->cap)
		return 0;
	while (cap < want)
		cap *= 2;
	if (cap > PDC_FRAME_MAX_DEFAULT)
		cap = PDC_FRAME_MAX_DEFAULT;
	grown = realloc(c->buf, cap);
	if (!grown)
		return -ENOMEM;
	c->buf = grown;
	c->cap = cap;
	return 0;
}

/*
 * Receive at least one more byte towards a frame of @want bytes, waiting until @deadline_ns.
 * Returns 0, -ETIMEDOUT, -ECONNRESET at the end of the stream, -ENOMEM, or a recv()/poll() errno.
 */
static int fill(struct pdc_client *c, size_t want, int timeout_ms, uint64_t deadline_ns)
{
	struct pollfd p = {.fd = c->fd, .events = POLLIN};
	ssize_t k;
	int rc;

	if (c->start == c->end)
		c->start = c->end = 0;
	rc = make_room(c, want);
	if (rc)
		return rc;
	for (;;) {
		/* Read first and poll only when nothing is there: a stream of answers costs one
		 * syscall per buffer, not two per frame. */
		k = recv(c->fd, c->buf + c->end, c->cap - c->end, MSG_DONTWAIT);
		if (k > 0) {
			c->end += (size_t)k;
			return 0;
		}
		if (!k)
			return -ECONNRESET;
		if (errno == EINTR)
			continue;
		if (errno != EAGAIN && errno != EWOULDBLOCK)
			return -errno;
		rc = poll(&p, 1, remaining_ms(timeout_ms, deadline_ns));
		if (!rc)
			return -ETIMEDOUT;
		if (rc < 0 && errno != EINTR)
			return -errno;
	}
}

int pdc_next(struct pdc_client *c, struct pdc_event *ev, int timeout_ms)
{
	uint64_t deadline = timeout_ms > 0 ? dp_now_ns() + (uint64_t)timeout_ms * 1000000u : 0;
	size_t have;
	long n;
	int rc;

	if (c->broken)
		return c->broken;
	c->start += c->handed;
	c->handed = 0;
	for (;;) {
		have = c->end - c->start;
		n = dp_frame_length(c->buf + c->start, have, PDC_FRAME_MAX_DEFAULT);
		if (n < 0)
			return c->broken = -EBADMSG;
		if (n && have >= (size_t)n) {
			if (pdc_event_decode(c->buf + c->start, (size_t)n, ev))
				return c->broken = -EBADMSG;
			c->handed = (size_t)n;
			return 0;
		}
		rc = fill(c, n ? (size_t)n : HDR, timeout_ms, deadline);
		if (rc)
			return rc;
	}
}

int pdc_fd(const struct pdc_client *c)
{
	return c->fd;
}

void pdc_close(struct pdc_client *c)
{
	if (!c)
		return;
	close(c->fd);
	free(c->buf);
	free(c);
}
