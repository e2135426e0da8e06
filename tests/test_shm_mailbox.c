/*
 * Mailboxes (shm/mailbox.h): what the router creates is an anonymous, private, sealed memfd
 * with the documented header; a worker attaches only to a mailbox that is what it claims to be;
 * every ring of every lane runs the right way, also across fork(); the doorbell wakes a
 * sleeping worker and a worker with work waiting does not sleep.
 */
#define _GNU_SOURCE
#include <criterion/criterion.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "mailbox.h"

TestSuite(shm_mailbox, .timeout = 60);

static const struct shm_mbox_config small = {
    .lanes = 3, .lane_ring_bytes = 4096, .event_ring_bytes = 8192};

static void create(struct shm_mbox *m, const struct shm_mbox_config *cfg)
{
	int rc = shm_mbox_create(m, cfg, 77);

	cr_assert_eq(rc, 0, "shm_mbox_create: %s", strerror(-rc));
}

/* Attach a worker's view through a duplicate of the router's descriptor. */
static int attach_dup(const struct shm_mbox *router, struct shm_mbox *worker)
{
	int fd = dup(router->fd), rc;

	cr_assert_geq(fd, 0);
	rc = shm_mbox_attach(worker, fd);
	if (rc)
		close(fd);
	return rc;
}

static void send(struct shm_ring *r, uint16_t type, uint32_t value)
{
	uint32_t *p;
	int err;

	p = shm_ring_reserve(r, type, 0, sizeof(value), &err);
	cr_assert_not_null(p, "reserve: %d", err);
	*p = value;
	shm_ring_commit(r);
	shm_ring_publish(r);
}

static uint32_t receive(struct shm_ring *r, uint16_t type)
{
	struct shm_rec rec = {0};
	uint32_t v;

	cr_assert_eq(shm_ring_peek(r, &rec), 0);
	cr_assert_eq(rec.type, type);
	cr_assert_eq(rec.len, sizeof(v));
	memcpy(&v, rec.payload, sizeof(v));
	shm_ring_consume(r);
	shm_ring_release(r);
	return v;
}

Test(shm_mailbox, created_mailbox_is_a_private_sealed_memfd)
{
	struct shm_mbox m;
	char link[64], target[256];
	struct stat st;
	ssize_t n;

	create(&m, &small);
	cr_assert_eq(fstat(m.fd, &st), 0);
	cr_assert_eq(st.st_mode & 0777, 0600);
	cr_assert_eq((size_t)st.st_size, shm_mbox_bytes(&small));
	cr_assert_eq(fcntl(m.fd, F_GET_SEALS), F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL);
	cr_assert_eq(ftruncate(m.fd, 4096), -1, "a sealed mailbox must not shrink");
	cr_assert_eq(errno, EPERM);
	snprintf(link, sizeof(link), "/proc/self/fd/%d", m.fd);
	n = readlink(link, target, sizeof(target) - 1);
	cr_assert_gt(n, 0);
	target[n] = '\0';
	cr_assert_eq(strncmp(target, "/memfd:", 7), 0, "not an anonymous memfd: %s", target);
	cr_assert_eq(fcntl(m.fd, F_GETFD) & FD_CLOEXEC, FD_CLOEXEC);
	shm_mbox_close(&m);
}

Test(shm_mailbox, header_states_every_size_and_the_generation)
{
	struct shm_mbox m;

	create(&m, &small);
	cr_assert_eq(m.hdr->magic, SHM_MBOX_MAGIC);
	cr_assert_eq(m.hdr->version, SHM_MBOX_VERSION);
	cr_assert_eq(m.hdr->header_bytes, SHM_MBOX_HEADER_BYTES);
	cr_assert_eq(m.hdr->lanes, 3);
	cr_assert_eq(m.hdr->lane_ring_bytes, 4096);
	cr_assert_eq(m.hdr->event_ring_bytes, 8192);
	cr_assert_eq(m.hdr->total_bytes, shm_mbox_bytes(&small));
	cr_assert_eq(m.hdr->generation, 77);
	shm_mbox_close(&m);
}

Test(shm_mailbox, defaults_fill_zero_sizes_and_bad_sizes_are_refused)
{
	struct shm_mbox m;
	struct shm_mbox_config bad[] = {
	    {.lanes = 0},
	    {.lanes = SHM_MBOX_LANES_MAX + 1},
	    {.lanes = 1, .lane_ring_bytes = 3000},
	    {.lanes = 1, .event_ring_bytes = 32},
	};

	create(&m, &(struct shm_mbox_config){.lanes = 1});
	cr_assert_eq(m.hdr->lane_ring_bytes, 256u << 10);
	cr_assert_eq(m.hdr->event_ring_bytes, 1u << 20);
	shm_mbox_close(&m);
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		cr_assert_eq(shm_mbox_create(&m, &bad[i], 1), -EINVAL, "config %zu", i);
		cr_assert_eq(shm_mbox_bytes(&bad[i]), 0);
	}
}

Test(shm_mailbox, every_lane_carries_requests_down_and_responses_up)
{
	struct shm_mbox r, w;

	create(&r, &small);
	cr_assert_eq(attach_dup(&r, &w), 0);
	cr_assert_eq(w.generation, 77);
	cr_assert_eq(w.cfg.lanes, 3);
	for (uint32_t i = 0; i < 3; i++) {
		send(&r.req[i], 1, 100 + i);
		cr_assert_eq(receive(&w.req[i], 1), 100 + i);
		send(&w.resp[i], 2, 200 + i);
		cr_assert_eq(receive(&r.resp[i], 2), 200 + i);
	}
	send(&w.event, 3, 300);
	cr_assert_eq(receive(&r.event, 3), 300);
	shm_mbox_close(&w);
	shm_mbox_close(&r);
}

/* Corrupt the header through the router's mapping, then a worker must refuse to attach. */
static void assert_attach_refused(void (*corrupt)(struct shm_mbox_header *), int rc)
{
	struct shm_mbox r, w;

	create(&r, &small);
	corrupt(r.hdr);
	cr_assert_eq(attach_dup(&r, &w), rc);
	shm_mbox_close(&r);
}

static void bad_magic(struct shm_mbox_header *h)
{
	h->magic ^= 1;
}

static void other_version(struct shm_mbox_header *h)
{
	h->version = SHM_MBOX_VERSION + 1;
}

/* Version 1 lane requests have no sampling parameters: a mailbox of that layout is not ours. */
static void version_1(struct shm_mbox_header *h)
{
	h->version = 1;
}

static void more_lanes(struct shm_mbox_header *h)
{
	h->lanes = 4; /* the file has room for 3 */
}

static void bigger_rings(struct shm_mbox_header *h)
{
	h->lane_ring_bytes = 1u << 20;
}

static void odd_ring(struct shm_mbox_header *h)
{
	h->event_ring_bytes = 8000;
}

static void lying_total(struct shm_mbox_header *h)
{
	h->total_bytes += 4096;
}

static void no_lanes(struct shm_mbox_header *h)
{
	h->lanes = 0;
}

static void broken_ring(struct shm_mbox_header *h)
{
	/* Lane 0's request ring: its head more than a ring past its tail. */
	struct shm_ring_shared *sh = (void *)((char *)h + SHM_MBOX_HEADER_BYTES);

	atomic_store_explicit(&sh->head, 8192, memory_order_relaxed);
}

Test(shm_mailbox, worker_refuses_a_header_that_lies)
{
	assert_attach_refused(bad_magic, -EBADMSG);
	assert_attach_refused(other_version, -EPROTONOSUPPORT);
	assert_attach_refused(version_1, -EPROTONOSUPPORT);
	assert_attach_refused(more_lanes, -EBADMSG);
	assert_attach_refused(bigger_rings, -EBADMSG);
	assert_attach_refused(odd_ring, -EBADMSG);
	assert_attach_refused(lying_total, -EBADMSG);
	assert_attach_refused(no_lanes, -EBADMSG);
	assert_attach_refused(broken_ring, -EBADMSG);
}

Test(shm_mailbox, worker_refuses_an_unsealed_or_tiny_file)
{
	struct shm_mbox r, w;
	void *p;
	int fd;

	/* A copy of a good mailbox in a memfd without seals: it could shrink under us. */
	create(&r, &small);
	fd = memfd_create("unsealed", MFD_CLOEXEC);
	cr_assert_geq(fd, 0);
	cr_assert_eq(ftruncate(fd, (off_t)r.bytes), 0);
	p = mmap(NULL, r.bytes, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	cr_assert_neq(p, MAP_FAILED);
	memcpy(p, r.base, r.bytes);
	munmap(p, r.bytes);
	cr_assert_eq(shm_mbox_attach(&w, fd), -EBADMSG);
	close(fd);
	shm_mbox_close(&r);

	fd = memfd_create("tiny", MFD_CLOEXEC | MFD_ALLOW_SEALING);
	cr_assert_eq(ftruncate(fd, 100), 0);
	cr_assert_eq(fcntl(fd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW), 0);
	cr_assert_eq(shm_mbox_attach(&w, fd), -EBADMSG);
	close(fd);
}

/* The child, a worker: answers every request on lane @lane with its value + 1, then exits. */
static int echo_worker(int fd, uint32_t lane, uint32_t n)
{
	struct shm_mbox w;
	struct shm_rec rec;
	uint32_t got = 0;

	if (shm_mbox_attach(&w, fd))
		return 1;
	while (got < n) {
		int rc = shm_ring_peek(&w.req[lane], &rec), err;
		uint32_t v, *out;

		if (rc == -EAGAIN) {
			shm_ring_release(&w.req[lane]);
			shm_mbox_wait(&w, 100000000);
			continue;
		}
		if (rc || rec.len != sizeof(v))
			return 2;
		memcpy(&v, rec.payload, sizeof(v));
		shm_ring_consume(&w.req[lane]);
		while (!(out = shm_ring_reserve(&w.resp[lane], 1, 0, sizeof(v), &err)))
			if (err != -ENOBUFS)
				return 3;
		*out = v + 1;
		shm_ring_commit(&w.resp[lane]);
		shm_ring_publish(&w.resp[lane]);
		got++;
	}
	shm_ring_release(&w.req[lane]);
	shm_mbox_close(&w);
	return 0;
}

Test(shm_mailbox, forked_worker_answers_every_request_across_processes)
{
	enum { N = 5000, LANE = 2 };
	struct shm_mbox r;
	uint32_t answered = 0;
	int status;
	pid_t pid;

	create(&r, &small);
	pid = fork();
	cr_assert_geq(pid, 0);
	if (pid == 0)
		_exit(echo_worker(dup(r.fd), LANE, N));
	for (uint32_t sent = 0; sent < N || answered < N;) {
		struct shm_rec rec;
		uint32_t *p, v;
		int err;

		if (sent < N && (p = shm_ring_reserve(&r.req[LANE], 1, 0, 4, &err))) {
			*p = sent++;
			shm_ring_commit(&r.req[LANE]);
			shm_ring_publish(&r.req[LANE]);
			shm_mbox_ring_doorbell(&r);
		}
		if (shm_ring_peek(&r.resp[LANE], &rec) == 0) {
			memcpy(&v, rec.payload, sizeof(v));
			cr_assert_eq(v, answered + 1, "answer %u out of order", answered);
			answered++;
			shm_ring_consume(&r.resp[LANE]);
			shm_ring_release(&r.resp[LANE]);
		}
	}
	cr_assert_eq(waitpid(pid, &status, 0), pid);
	cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0, "worker failed: %d", status);
	shm_mbox_close(&r);
}

static uint64_t now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static void *sleeper(void *arg)
{
	struct shm_mbox *w = arg;

	return (void *)(intptr_t)shm_mbox_wait(w, 10ull * 1000000000u);
}

Test(shm_mailbox, doorbell_wakes_a_sleeping_worker)
{
	struct shm_mbox r, w;
	pthread_t th;
	void *ret;
	uint64_t t0;

	create(&r, &small);
	cr_assert_eq(attach_dup(&r, &w), 0);
	cr_assert_eq(pthread_create(&th, NULL, sleeper, &w), 0);
	while (!atomic_load_explicit(&r.hdr->worker_sleeping, memory_order_relaxed))
		sched_yield();
	t0 = now_ns();
	send(&r.req[1], 1, 5);
	/* The worker may still be on its way into the futex: ring until it is out. */
	while (!shm_mbox_ring_doorbell(&r) &&
	       atomic_load_explicit(&r.hdr->worker_sleeping, memory_order_relaxed))
		;
	cr_assert_eq(pthread_join(th, &ret), 0);
	cr_assert_eq((intptr_t)ret, 0, "wait returned %ld", (long)(intptr_t)ret);
	cr_assert_lt(now_ns() - t0, 5ull * 1000000000u, "the worker slept through the bell");
	cr_assert_eq(receive(&w.req[1], 1), 5);
	shm_mbox_close(&w);
	shm_mbox_close(&r);
}

Test(shm_mailbox, worker_with_requests_waiting_does_not_sleep_and_idle_one_times_out)
{
	struct shm_mbox r, w;
	uint64_t t0;

	create(&r, &small);
	cr_assert_eq(attach_dup(&r, &w), 0);
	cr_assert_eq(shm_mbox_wait(&w, 1000000), -ETIMEDOUT);
	cr_assert_eq(atomic_load_explicit(&r.hdr->worker_sleeping, memory_order_relaxed), 0);
	cr_assert_not(shm_mbox_ring_doorbell(&r), "no one sleeps: no wake-up to make");
	send(&r.req[2], 1, 9);
	t0 = now_ns();
	cr_assert_eq(shm_mbox_wait(&w, 10ull * 1000000000u), 0);
	cr_assert_lt(now_ns() - t0, 1000000000u, "slept with a request waiting");
	cr_assert_eq(receive(&w.req[2], 1), 9);
	shm_mbox_close(&w);
	shm_mbox_close(&r);
}
