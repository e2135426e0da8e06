/*
 * Mailboxes (mailbox.h): creating, sealing and formatting one on the router's side, checking
 * and mapping it on the worker's, and the futex doorbell between them.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/futex.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "mailbox.h"

#define SHM_MBOX_SEALS (F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL)

static bool ring_size_ok(uint32_t size)
{
	return size >= SHM_RING_MIN && size <= SHM_RING_MAX && !(size & (size - 1));
}

/* Fill in the defaults of @c; -EINVAL for a size out of range. */
static int config_fill(struct shm_mbox_config *c)
{
	if (!c->lane_ring_bytes)
		c->lane_ring_bytes = 256u << 10;
	if (!c->event_ring_bytes)
		c->event_ring_bytes = 1u << 20;
	if (!c->lanes || c->lanes > SHM_MBOX_LANES_MAX || !ring_size_ok(c->lane_ring_bytes) ||
	    !ring_size_ok(c->event_ring_bytes))
		return -EINVAL;
	return 0;
}

/* Bytes a ring of @size takes in the mailbox: cache-line aligned, so lanes share no line. */
static size_t ring_span(uint32_t size)
{
	return (shm_ring_bytes(size) + 63) & ~(size_t)63;
}

size_t shm_mbox_bytes(const struct shm_mbox_config *cfg)
{
	struct shm_mbox_config c = *cfg;

	if (config_fill(&c))
		return 0;
	return SHM_MBOX_HEADER_BYTES + 2 * (size_t)c.lanes * ring_span(c.lane_ring_bytes) +
	       ring_span(c.event_ring_bytes);
}

/* Lane @i's request ring, or its response ring with @resp; the event ring after the lanes. */
static void *lane_ring(const struct shm_mbox *m, uint32_t i, bool resp)
{
	return (char *)m->base + SHM_MBOX_HEADER_BYTES +
	       (2 * (size_t)i + resp) * ring_span(m->cfg.lane_ring_bytes);
}

static void *event_ring(const struct shm_mbox *m)
{
	return lane_ring(m, m->cfg.lanes, false);
}

/* Take our end of every ring: the router produces requests, the worker the rest. */
static int attach_rings(struct shm_mbox *m)
{
	int rc = 0;

	for (uint32_t i = 0; i < m->cfg.lanes && !rc; i++) {
		rc = shm_ring_attach(&m->req[i], lane_ring(m, i, false), m->cfg.lane_ring_bytes,
				     !m->worker);
		if (!rc)
			rc = shm_ring_attach(&m->resp[i], lane_ring(m, i, true),
					     m->cfg.lane_ring_bytes, m->worker);
	}
	if (!rc)
		rc = shm_ring_attach(&m->event, event_ring(m), m->cfg.event_ring_bytes, m->worker);
	return rc;
}

static int map(struct shm_mbox *m)
{
	void *p = mmap(NULL, m->bytes, PROT_READ | PROT_WRITE, MAP_SHARED, m->fd, 0);

	if (p == MAP_FAILED)
		return -errno;
	m->base = p;
	m->hdr = p;
	return 0;
}

static void format(struct shm_mbox *m)
{
	struct shm_mbox_header *h = m->hdr;

	h->magic = SHM_MBOX_MAGIC;
	h->version = SHM_MBOX_VERSION;
	h->header_bytes = SHM_MBOX_HEADER_BYTES;
	h->lanes = m->cfg.lanes;
	h->lane_ring_bytes = m->cfg.lane_ring_bytes;
	h->event_ring_bytes = m->cfg.event_ring_bytes;
	h->total_bytes = m->bytes;
	h->generation = m->generation;
	for (uint32_t i = 0; i < m->cfg.lanes; i++) {
		shm_ring_format(lane_ring(m, i, false), m->cfg.lane_ring_bytes);
		shm_ring_format(lane_ring(m, i, true), m->cfg.lane_ring_bytes);
	}
	shm_ring_format(event_ring(m), m->cfg.event_ring_bytes);
}

int shm_mbox_create(struct shm_mbox *m, const struct shm_mbox_config *cfg, uint64_t generation)
{
	int rc;

	memset(m, 0, sizeof(*m));
	m->fd = -1;
	m->cfg = *cfg;
	if (config_fill(&m->cfg))
		return -EINVAL;
	m->bytes = shm_mbox_bytes(&m->cfg);
	m->generation = generation;
	/* No name in /dev/shm: the descriptor is the only way in, and it goes to one worker. */
	m->fd = memfd_create("pdrouter-mailbox", MFD_CLOEXEC | MFD_ALLOW_SEALING);
	if (m->fd < 0)
		return -errno;
	if (fchmod(m->fd, 0600) || ftruncate(m->fd, (off_t)m->bytes) ||
	    fcntl(m->fd, F_ADD_SEALS, SHM_MBOX_SEALS)) {
		rc = -errno;
		goto fail;
	}
	rc = map(m);
	if (rc)
		goto fail;
	format(m);
	rc = attach_rings(m);
	if (!rc)
		return 0;
fail:
	shm_mbox_close(m);
	return rc;
}

/* Read the worker's copy of the header once and check that it describes this file. */
static int check_header(struct shm_mbox *m, size_t file_bytes)
{
	struct shm_mbox_header h;

	memcpy(&h, m->hdr, offsetof(struct shm_mbox_header, router_heartbeat_ns));
	if (h.magic != SHM_MBOX_MAGIC)
		return -EBADMSG;
	if (h.version != SHM_MBOX_VERSION)
		return -EPROTONOSUPPORT;
	m->cfg = (struct shm_mbox_config){.lanes = h.lanes,
					  .lane_ring_bytes = h.lane_ring_bytes,
					  .event_ring_bytes = h.event_ring_bytes};
	if (h.header_bytes != SHM_MBOX_HEADER_BYTES || !h.lanes || config_fill(&m->cfg) ||
	    h.total_bytes != file_bytes || shm_mbox_bytes(&m->cfg) != file_bytes)
		return -EBADMSG;
	m->generation = h.generation;
	return 0;
}

int shm_mbox_attach(struct shm_mbox *m, int fd)
{
	struct stat st;
	int seals, rc;

	memset(m, 0, sizeof(*m));
	m->fd = -1;
	m->worker = true;
	if (fstat(fd, &st))
		return -errno;
	m->fd = fd;
	seals = fcntl(fd, F_GET_SEALS);
	/* Unsealed, the other side could shrink the file and fault us on a later access. */
	if (seals < 0 || (seals & (F_SEAL_SHRINK | F_SEAL_GROW)) != (F_SEAL_SHRINK | F_SEAL_GROW) ||
	    st.st_size < (off_t)SHM_MBOX_HEADER_BYTES) {
		m->fd = -1;
		return -EBADMSG;
	}
	m->bytes = (size_t)st.st_size;
	rc = map(m);
	if (!rc)
		rc = check_header(m, m->bytes);
	if (!rc)
		rc = attach_rings(m);
	if (rc) {
		if (m->base)
			munmap(m->base, m->bytes);
		m->base = NULL;
		m->fd = -1; /* still the caller's: shm_mbox_close() must not close it */
	}
	return rc;
}

void shm_mbox_close(struct shm_mbox *m)
{
	if (m->base)
		munmap(m->base, m->bytes);
	if (m->fd >= 0)
		close(m->fd);
	m->base = NULL;
	m->fd = -1;
}

static long futex(_Atomic uint32_t *word, int op, uint32_t val, const struct timespec *ts)
{
	/* Not FUTEX_PRIVATE_FLAG: the word is shared between two processes. */
	return syscall(SYS_futex, (uint32_t *)word, op, val, ts, NULL, 0);
}

bool shm_mbox_ring_doorbell(struct shm_mbox *m)
{
	/* F3: the requests' published head comes before we look whether the worker sleeps;
	 * pairs with F4 in shm_mbox_wait(). One of the two sides sees the other's store. */
	atomic_thread_fence(memory_order_seq_cst);
	if (!atomic_load_explicit(&m->hdr->worker_sleeping, memory_order_relaxed))
		return false;
	/* Relaxed: the futex wake orders the worker's re-check; the value only has to change. */
	atomic_fetch_add_explicit(&m->hdr->doorbell, 1, memory_order_relaxed);
	futex(&m->hdr->doorbell, FUTEX_WAKE, 1, NULL);
	return true;
}

/* Does any request ring hold something the worker has not read? */
static bool requests_waiting(struct shm_mbox *m)
{
	for (uint32_t i = 0; i < m->cfg.lanes; i++) {
		struct shm_ring *r = &m->req[i];

		/* Relaxed: only a hint to skip sleeping; shm_ring_peek() acquires properly. */
		if (r->local != r->remote ||
		    atomic_load_explicit(&r->sh->head, memory_order_relaxed) != r->local)
			return true;
	}
	return false;
}

int shm_mbox_wait(struct shm_mbox *m, uint64_t timeout_ns)
{
	struct timespec ts = {.tv_sec = (time_t)(timeout_ns / 1000000000u),
			      .tv_nsec = (long)(timeout_ns % 1000000000u)};
	uint32_t bell = atomic_load_explicit(&m->hdr->doorbell, memory_order_relaxed);
	long rc = 0;

	atomic_store_explicit(&m->hdr->worker_sleeping, 1, memory_order_relaxed);
	/* F4: say we sleep before looking at the rings; pairs with F3. */
	atomic_thread_fence(memory_order_seq_cst);
	if (!requests_waiting(m))
		rc = futex(&m->hdr->doorbell, FUTEX_WAIT, bell, &ts);
	atomic_store_explicit(&m->hdr->worker_sleeping, 0, memory_order_relaxed);
	if (rc && errno == ETIMEDOUT)
		return -ETIMEDOUT;
	if (rc && errno == EINTR)
		return -EINTR;
	return 0; /* woken, or the bell rang before we slept (EAGAIN) */
}
