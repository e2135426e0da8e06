/*
 * A worker's mailbox: one memfd the router creates, sizes, seals and passes to the worker, laid
 * out as a header, one lane per dataplane core (a request ring router -> worker and a response
 * ring worker -> router, shm/ring.h) and one event ring (KV events and load reports, worker ->
 * router). The memfd never has a name in /dev/shm, is mode 0600 and sealed against resizing, so
 * a worker cannot shrink it under the router's feet.
 *
 * The layout is an ABI between two programs built apart: the header starts with a magic number
 * and a version, states every size, and every offset is fixed by a _Static_assert. The router
 * trusts nothing in it after creation: it keeps its own copy of the sizes, and the rings check
 * every index the worker writes.
 *
 * Idle workers sleep on a futex doorbell instead of spinning: the router rings it after
 * publishing requests, but only when the worker said it was about to sleep.
 */
#ifndef PD_SHM_MAILBOX_H
#define PD_SHM_MAILBOX_H

#include <stdalign.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "ring.h"

#define SHM_MBOX_MAGIC 0x31584F424D445050ull /* "PPDMBOX1", little-endian */
/* 2: a lane REQUEST carries the client's sampling parameters (lanes.h); a worker built for 1
 * would misread every request, so it refuses the mailbox instead. */
#define SHM_MBOX_VERSION 2u
#define SHM_MBOX_HEADER_BYTES 4096u /* the header has a page to itself */
#define SHM_MBOX_LANES_MAX 64u

/* The header at offset 0 of every mailbox. */
struct shm_mbox_header {
	uint64_t magic;
	uint32_t version;
	uint32_t header_bytes;	   /* SHM_MBOX_HEADER_BYTES */
	uint32_t lanes;		   /* dataplane cores: one lane each */
	uint32_t lane_ring_bytes;  /* data bytes of each ring of a lane */
	uint32_t event_ring_bytes; /* data bytes of the event ring */
	uint32_t reserved;
	uint64_t total_bytes; /* the memfd's size */
	uint64_t generation;  /* the router's id of this mailbox: a new one per connection */
	/* Writer: router. Monotonic ns of its last heartbeat; relaxed, a liveness hint. */
	alignas(64) _Atomic uint64_t router_heartbeat_ns;
	/* Writer: worker. The same for the worker. */
	alignas(64) _Atomic uint64_t worker_heartbeat_ns;
	/* Writer: router (bumps it to wake the worker). The futex word. */
	alignas(64) _Atomic uint32_t doorbell;
	/* Writer: worker. 1 while it is about to sleep or sleeping on the doorbell. */
	_Atomic uint32_t worker_sleeping;
};

_Static_assert(offsetof(struct shm_mbox_header, magic) == 0, "mailbox ABI");
_Static_assert(offsetof(struct shm_mbox_header, version) == 8, "mailbox ABI");
_Static_assert(offsetof(struct shm_mbox_header, lanes) == 16, "mailbox ABI");
_Static_assert(offsetof(struct shm_mbox_header, total_bytes) == 32, "mailbox ABI");
_Static_assert(offsetof(struct shm_mbox_header, generation) == 40, "mailbox ABI");
_Static_assert(offsetof(struct shm_mbox_header, router_heartbeat_ns) == 64, "mailbox ABI");
_Static_assert(offsetof(struct shm_mbox_header, worker_heartbeat_ns) == 128, "mailbox ABI");
_Static_assert(offsetof(struct shm_mbox_header, doorbell) == 192, "mailbox ABI");
_Static_assert(offsetof(struct shm_mbox_header, worker_sleeping) == 196, "mailbox ABI");
_Static_assert(sizeof(struct shm_mbox_header) <= SHM_MBOX_HEADER_BYTES, "mailbox ABI");

/* Sizes of a mailbox, chosen by the router. */
struct shm_mbox_config {
	uint32_t lanes;		   /* 1 .. SHM_MBOX_LANES_MAX */
	uint32_t lane_ring_bytes;  /* power of two, SHM_RING_MIN .. SHM_RING_MAX; 0: 256 KiB */
	uint32_t event_ring_bytes; /* the same; 0: 1 MiB */
};

/* One side's view of a mailbox; private to its process. */
struct shm_mbox {
	int fd;
	bool worker; /* which side this is: it decides which end of each ring we hold */
	void *base;
	size_t bytes;
	struct shm_mbox_header *hdr;
	struct shm_mbox_config cfg; /* our own copy: never re-read from shared memory */
	uint64_t generation;
	struct shm_ring req[SHM_MBOX_LANES_MAX];  /* lane i: router produces, worker consumes */
	struct shm_ring resp[SHM_MBOX_LANES_MAX]; /* lane i: worker produces, router consumes */
	struct shm_ring event;			  /* worker produces, router consumes */
};

/* Bytes of a mailbox with sizes @cfg (defaults filled in). */
size_t shm_mbox_bytes(const struct shm_mbox_config *cfg);

/**
 * shm_mbox_create - the router side: a new sealed memfd mailbox, mapped and formatted.
 * @cfg: sizes; zeros take the defaults.
 * @generation: the router's id for this mailbox, written in the header.
 *
 * Returns 0, -EINVAL for a size out of range, or the negative errno of memfd_create(),
 * ftruncate(), fcntl() or mmap(). m->fd is the descriptor to pass to the worker.
 * Context: control thread.
 */
int shm_mbox_create(struct shm_mbox *m, const struct shm_mbox_config *cfg, uint64_t generation);

/**
 * shm_mbox_attach - the worker side: map the mailbox the router passed as @fd and check it.
 * @fd: the memfd; once attached, the mailbox keeps it and shm_mbox_close() closes it (on
 *       failure it stays the caller's).
 *
 * Returns 0, -EBADMSG when the header or the size is not a mailbox's (wrong magic, sizes that
 * do not add up, a file that is not sealed against resizing), -EPROTONOSUPPORT for another
 * version, or the negative errno of fstat() or mmap().
 * Context: the worker's thread that will use the mailbox.
 */
int shm_mbox_attach(struct shm_mbox *m, int fd);

/* Unmap and close; either side. */
void shm_mbox_close(struct shm_mbox *m);

/**
 * shm_mbox_ring_doorbell - router: wake the worker if it sleeps, after publishing requests.
 *
 * Returns true when it had to wake it (a futex syscall), false when the worker was awake.
 * Context: any router thread.
 */
bool shm_mbox_ring_doorbell(struct shm_mbox *m);

/**
 * shm_mbox_wait - worker: sleep until the router rings the doorbell or @timeout_ns passes,
 * unless a request ring already has something.
 *
 * Returns 0 when woken or something is waiting, -ETIMEDOUT, or -EINTR.
 * Context: the worker thread that consumes the request rings.
 */
int shm_mbox_wait(struct shm_mbox *m, uint64_t timeout_ns);

#endif
