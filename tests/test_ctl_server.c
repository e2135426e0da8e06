/*
 * The control socket (control/server.h), with a worker played by the test over a real Unix
 * socket: registering hands over a working mailbox; a refusal says why and the worker may try
 * again; KV events written into the mailbox reach the index; a hang-up, a lapsed lease or a
 * malformed message removes the worker and its blocks; strangers and second routers stay out.
 */
#define _GNU_SOURCE
#include <criterion/criterion.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "events.h"
#include "helpers.h"
#include "pdworker.h"
#include "proto.h"
#include "route_fixture.h"
#include "server.h"

struct fx {
	struct t_route t;
	struct ctl_server s;
	struct ctl_server_config cfg;
	char dir[64], path[128];
	uint64_t now;
};

static void fx_open(struct fx *f, uint64_t lease_ns)
{
	strcpy(f->dir, "/tmp/pdr-ctl-XXXXXX");
	cr_assert_not_null(mkdtemp(f->dir));
	snprintf(f->path, sizeof(f->path), "%s/control.sock", f->dir);
	t_route_open(&f->t, NULL);
	f->cfg = (struct ctl_server_config){.path = f->path, .lease_ns = lease_ns,
					    .mbox = {.lane_ring_bytes = 4096,
						     .event_ring_bytes = 65536}};
	cr_assert_eq(ctl_server_open(&f->s, &f->cfg, &f->t.rt, &f->t.x), 0);
	f->now = 1000;
}

static void fx_close(struct fx *f)
{
	ctl_server_close(&f->s);
	t_route_close(&f->t);
	rmdir(f->dir);
}

static void fx_poll(struct fx *f, int rounds)
{
	for (int i = 0; i < rounds; i++)
		cr_assert_geq(ctl_server_poll(&f->s, 10, f->now), 0);
}

static int worker_connect(const struct fx *f)
{
	struct sockaddr_un addr = {.sun_family = AF_UNIX};
	int fd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);

	strcpy(addr.sun_path, f->path);
	cr_assert_eq(connect(fd, (struct sockaddr *)&addr, sizeof(addr)), 0);
	return fd;
}

static void worker_register(int fd, uint32_t block_size)
{
	unsigned char buf[1024];
	struct pdw_register_args a = {
	    .fixed = {.worker_type = RT_AGGREGATED, .model_type = RT_MODEL_CHAT,
		      .block_size = block_size, .kv_capacity_blocks = 1000,
		      .max_batched_tokens = 8192, .dp_ranks = 1},
	    .model = "m",
	    .endpoint = "generate",
	};
	long n = pdw_register_encode(buf, sizeof(buf), &a, 1);

	cr_assert_gt(n, 0);
	cr_assert_eq(send(fd, buf, (size_t)n, 0), n);
}

/* The router's answer: returns its type, with *mbox_fd (or -1) and the body in @body. */
static int worker_reply(int fd, void *body, size_t cap, int *mbox_fd)
{
	unsigned char buf[PDW_MSG_MAX];
	union {
		char c[CMSG_SPACE(sizeof(int))];
		struct cmsghdr align;
	} ctl;
	struct iovec iov = {buf, sizeof(buf)};
	struct msghdr msg = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = ctl.c,
			     .msg_controllen = sizeof(ctl.c)};
	struct cmsghdr *cm;
	struct pdw_hdr h;
	ssize_t n = recvmsg(fd, &msg, MSG_DONTWAIT);

	*mbox_fd = -1;
	if (n <= 0)
		return n == 0 ? 0 : -errno;
	cr_assert_geq((size_t)n, sizeof(h));
	memcpy(&h, buf, sizeof(h));
	cr_assert_eq(h.len, (uint32_t)n);
	cr_assert(h.type == PDW_REFUSED || h.seq == 1, "a reply carries the request's number");
	memcpy(body, buf + sizeof(h), (size_t)n - sizeof(h) < cap ? (size_t)n - sizeof(h) : cap);
	for (cm = CMSG_FIRSTHDR(&msg); cm; cm = CMSG_NXTHDR(&msg, cm))
		if (cm->cmsg_level == SOL_SOCKET && cm->cmsg_type == SCM_RIGHTS)
			memcpy(mbox_fd, CMSG_DATA(cm), sizeof(int));
	return h.type;
}

/* Connect and register a worker; returns its socket, its mailbox in @w and its target. */
static int worker_join(struct fx *f, struct shm_mbox *w, uint16_t *target)
{
	struct pdw_registered r;
	int fd = worker_connect(f), mfd;

	worker_register(fd, 16);
	fx_poll(f, 2);
	cr_assert_eq(worker_reply(fd, &r, sizeof(r), &mfd), PDW_REGISTERED);
	cr_assert_geq(mfd, 0, "no mailbox came with REGISTERED");
	cr_assert_eq(shm_mbox_attach(w, mfd), 0);
	cr_assert_eq(w->generation, r.generation);
	*target = (uint16_t)rt_target_find(&f->t.rt, r.worker, 0);
	cr_assert_lt(*target, T_ROUTE_TARGETS);
	return fd;
}

TestSuite(ctl_server, .timeout = 30);

static void stored_event(struct shm_mbox *w, uint64_t id, uint64_t ext);

Test(ctl_server, worker_registers_and_receives_a_working_mailbox)
{
	struct shm_mbox w;
	struct fx f;
	uint16_t t;
	int fd;

	fx_open(&f, 0);
	fd = worker_join(&f, &w, &t);
	cr_assert_eq(f.s.stats.registered, 1);
	cr_assert_eq(w.cfg.lanes, 1, "one lane per dataplane core of the router");
	f.now += 77;
	fx_poll(&f, 1);
	cr_assert_eq(atomic_load(&w.hdr->router_heartbeat_ns), f.now, "the router beats too");
	shm_mbox_close(&w);
	close(fd);
	fx_close(&f);
}

Test(ctl_server, refused_registration_says_why_and_the_worker_may_retry)
{
	struct {
		struct pdw_refused r;
		char reason[256];
	} body = {0};
	struct pdw_registered ok;
	struct fx f;
	int fd, mfd;

	fx_open(&f, 0);
	fd = worker_connect(&f);
	worker_register(fd, 3);
	fx_poll(&f, 2);
	cr_assert_eq(worker_reply(fd, &body, sizeof(body), &mfd), PDW_REFUSED);
	cr_assert_eq(mfd, -1);
	cr_assert_eq(body.r.error, -EINVAL);
	cr_assert_not_null(strstr(body.reason, "power of two"), "%s", body.reason);
	worker_register(fd, 16);
	fx_poll(&f, 2);
	cr_assert_eq(worker_reply(fd, &ok, sizeof(ok), &mfd), PDW_REGISTERED);
	close(mfd);
	cr_assert_eq(f.s.stats.refused_register, 1);
	close(fd);
	fx_close(&f);
}

Test(ctl_server, kv_events_in_the_mailbox_reach_the_index_and_leave_with_the_worker)
{
	struct {
		struct shm_ev_stored ev;
		uint64_t ext[4], local[4];
	} rec = {.ev = {.event_id = 1, .nblocks = 4}};
	struct shm_mbox w;
	struct fx f;
	uint16_t t;
	void *p;
	int fd, err;

	fx_open(&f, 0);
	fd = worker_join(&f, &w, &t);
	for (int i = 0; i < 4; i++) {
		rec.ext[i] = 100 + i;
		rec.local[i] = t_mix64(i) | 1;
	}
	p = shm_ring_reserve(&w.event, SHM_EV_STORED, 0, sizeof(rec), &err);
	cr_assert_not_null(p);
	memcpy(p, &rec, sizeof(rec));
	shm_ring_commit(&w.event);
	shm_ring_publish(&w.event);
	fx_poll(&f, 1);
	cr_assert_eq(pdx_target_blocks(&f.t.x, t), 4);
	close(fd); /* the lease ends with the connection */
	fx_poll(&f, 2);
	cr_assert_eq(f.s.stats.hangups, 1);
	cr_assert_eq(pdx_target_blocks(&f.t.x, t), 0, "a departed worker's blocks stayed");
	cr_assert_eq(rt_target_find(&f.t.rt, 0, 0), -ENOENT);
	shm_mbox_close(&w);
	fx_close(&f);
}

/* Leases run on the router's clock: a heartbeat counts when the value changes, whatever it
 * says, so a worker cannot buy time by writing a date in the future. */
Test(ctl_server, lease_lapses_without_heartbeats_and_holds_with_them)
{
	struct shm_mbox w;
	struct fx f;
	uint16_t t;
	int fd;

	fx_open(&f, 5000);
	fd = worker_join(&f, &w, &t);
	f.now += 4000;
	atomic_store_explicit(&w.hdr->worker_heartbeat_ns, 1, memory_order_relaxed);
	fx_poll(&f, 1); /* seen at 4 us: the lease runs from here */
	f.now += 4000;
	fx_poll(&f, 1);
	cr_assert_eq(f.s.nconns, 1, "dropped 4 us after a heartbeat, with a 5 us lease");
	f.now += 2000;
	fx_poll(&f, 1);
	cr_assert_eq(f.s.nconns, 0, "kept with no heartbeat for 6 us of a 5 us lease");
	cr_assert_eq(f.s.stats.leases_expired, 1);
	cr_assert_eq(rt_target_find(&f.t.rt, 0, 0), -ENOENT);
	shm_mbox_close(&w);
	close(fd);
	fx_close(&f);
}

Test(ctl_server, a_heartbeat_from_the_future_buys_no_time)
{
	struct shm_mbox w;
	struct fx f;
	uint16_t t;
	int fd;

	fx_open(&f, 5000);
	fd = worker_join(&f, &w, &t);
	atomic_store_explicit(&w.hdr->worker_heartbeat_ns, UINT64_MAX, memory_order_relaxed);
	fx_poll(&f, 1);
	f.now += 6000;
	fx_poll(&f, 1);
	cr_assert_eq(f.s.stats.leases_expired, 1);
	shm_mbox_close(&w);
	close(fd);
	fx_close(&f);
}

/* A worker leaving moves the last connection into its slot; the moved worker's intake must
 * follow its mailbox there, also when a newcomer takes the freed slot. */
Test(ctl_server, workers_keep_their_event_rings_when_slots_move)
{
	struct shm_mbox a, b;
	struct fx f;
	uint16_t ta, tb;
	int fa, fb, fc;

	fx_open(&f, 0);
	fa = worker_join(&f, &a, &ta);
	fb = worker_join(&f, &b, &tb);
	close(fa);
	fx_poll(&f, 2);
	cr_assert_eq(f.s.nconns, 1);
	fc = worker_connect(&f); /* takes the slot b left */
	fx_poll(&f, 2);
	stored_event(&b, 1, 300);
	fx_poll(&f, 2);
	cr_assert_eq(pdx_target_blocks(&f.t.x, tb), 1, "b's event went astray");
	shm_mbox_close(&a);
	shm_mbox_close(&b);
	close(fb);
	close(fc);
	fx_close(&f);
}

/* A REGISTER on a registered connection is answered, not ignored: REFUSED, -EISCONN. */
Test(ctl_server, second_register_on_a_connection_is_refused)
{
	struct {
		struct pdw_refused r;
		char reason[256];
	} body = {0};
	struct shm_mbox w;
	struct fx f;
	uint16_t t;
	int fd, mfd;

	fx_open(&f, 0);
	fd = worker_join(&f, &w, &t);
	worker_register(fd, 16);
	fx_poll(&f, 2);
	cr_assert_eq(worker_reply(fd, &body, sizeof(body), &mfd), PDW_REFUSED);
	cr_assert_eq(body.r.error, -EISCONN);
	cr_assert_eq(f.s.stats.registered, 1);
	shm_mbox_close(&w);
	close(fd);
	fx_close(&f);
}

Test(ctl_server, malformed_message_disconnects_the_worker)
{
	unsigned char junk[64];
	char b;
	struct fx f;
	int fd, mfd;

	fx_open(&f, 0);
	fd = worker_connect(&f);
	for (size_t i = 0; i < sizeof(junk); i++)
		junk[i] = (unsigned char)t_mix64(i);
	cr_assert_eq(send(fd, junk, sizeof(junk), 0), (ssize_t)sizeof(junk));
	fx_poll(&f, 2);
	cr_assert_eq(f.s.stats.malformed, 1);
	cr_assert_eq(f.s.nconns, 0);
	cr_assert_eq(worker_reply(fd, &b, 1, &mfd), PDW_REFUSED, "no reason given");
	cr_assert_eq(recv(fd, &b, 1, 0), 0, "the connection stayed open");
	close(fd);
	fx_close(&f);
}

Test(ctl_server, peer_outside_the_allowed_uids_is_turned_away)
{
	struct fx f;
	char b;
	int fd;

	strcpy(f.dir, "/tmp/pdr-ctl-XXXXXX");
	cr_assert_not_null(mkdtemp(f.dir));
	snprintf(f.path, sizeof(f.path), "%s/control.sock", f.dir);
	t_route_open(&f.t, NULL);
	f.cfg = (struct ctl_server_config){.path = f.path, .nallowed = 1};
	f.cfg.allowed_uids[0] = getuid() + 1;
	cr_assert_eq(ctl_server_open(&f.s, &f.cfg, &f.t.rt, &f.t.x), 0);
	f.now = 1;
	fd = worker_connect(&f);
	fx_poll(&f, 1);
	cr_assert_eq(f.s.stats.refused_peer, 1);
	cr_assert_eq(f.s.nconns, 0);
	cr_assert_eq(recv(fd, &b, 1, 0), 0);
	close(fd);
	fx_close(&f);
}

Test(ctl_server, peer_in_an_allowed_group_is_let_in)
{
	struct fx f;
	int fd;

	strcpy(f.dir, "/tmp/pdr-ctl-XXXXXX");
	cr_assert_not_null(mkdtemp(f.dir));
	snprintf(f.path, sizeof(f.path), "%s/control.sock", f.dir);
	t_route_open(&f.t, NULL);
	f.cfg = (struct ctl_server_config){.path = f.path, .nallowed = 1, .nallowed_gids = 1};
	f.cfg.allowed_uids[0] = getuid() + 1;
	f.cfg.allowed_gids[0] = getgid();
	cr_assert_eq(ctl_server_open(&f.s, &f.cfg, &f.t.rt, &f.t.x), 0);
	f.now = 1;
	fd = worker_connect(&f);
	fx_poll(&f, 1);
	cr_assert_eq(f.s.stats.refused_peer, 0);
	cr_assert_eq(f.s.nconns, 1);
	close(fd);
	fx_close(&f);
}

Test(ctl_server, second_router_on_a_live_path_is_refused_and_a_stale_one_replaced)
{
	struct sockaddr_un addr = {.sun_family = AF_UNIX};
	struct ctl_server other;
	struct fx f;
	FILE *file;
	int stale;

	fx_open(&f, 0);
	cr_assert_eq(ctl_server_open(&other, &f.cfg, &f.t.rt, &f.t.x), -EADDRINUSE);
	cr_assert_eq(access(f.path, F_OK), 0, "the live router's socket was removed");
	ctl_server_close(&f.s);
	/* A socket file whose router died: bound, never listened, closed. */
	strcpy(addr.sun_path, f.path);
	stale = socket(AF_UNIX, SOCK_SEQPACKET, 0);
	cr_assert_eq(bind(stale, (struct sockaddr *)&addr, sizeof(addr)), 0);
	close(stale);
	cr_assert_eq(ctl_server_open(&f.s, &f.cfg, &f.t.rt, &f.t.x), 0);
	ctl_server_close(&f.s);
	file = fopen(f.path, "w"); /* not a socket: not ours to remove */
	fclose(file);
	cr_assert_eq(ctl_server_open(&f.s, &f.cfg, &f.t.rt, &f.t.x), -EEXIST);
	unlink(f.path);
	t_route_close(&f.t);
	rmdir(f.dir);
}

/* Write a STORED of one block with event id @id into the worker's event ring. */
static void stored_event(struct shm_mbox *w, uint64_t id, uint64_t ext)
{
	struct {
		struct shm_ev_stored ev;
		uint64_t ext, local;
	} rec = {.ev = {.event_id = id, .nblocks = 1}, .ext = ext, .local = t_mix64(ext) | 1};
	void *p;
	int err;

	p = shm_ring_reserve(&w->event, SHM_EV_STORED, 0, sizeof(rec), &err);
	cr_assert_not_null(p);
	memcpy(p, &rec, sizeof(rec));
	shm_ring_commit(&w->event);
	shm_ring_publish(&w->event);
}

/* A lost event (ids 1 then 3) leaves a hole in the index: the worker is asked for a dump,
 * once, and libpdworker's pdw_control() reports it. */
Test(ctl_server, a_gap_in_the_events_asks_the_worker_for_a_dump)
{
	struct shm_mbox w;
	struct pdw sdk = {.fd = -1};
	struct fx f;
	uint16_t t;
	int fd;

	fx_open(&f, 0);
	fd = worker_join(&f, &w, &t);
	sdk.fd = fd;
	stored_event(&w, 1, 100);
	fx_poll(&f, 1);
	cr_assert_eq(pdw_control(&sdk), 0, "no dump wanted yet");
	stored_event(&w, 3, 200);
	fx_poll(&f, 1);
	cr_assert_eq(f.s.stats.dumps_requested, 1);
	cr_assert_eq(pdw_control(&sdk), PDW_WANTS_DUMP);
	fx_poll(&f, 1);
	cr_assert_eq(f.s.stats.dumps_requested, 1, "asked twice for one gap");
	cr_assert_eq(pdw_control(&sdk), 0);
	cr_assert_eq(pdx_target_blocks(&f.t.x, t), 2, "the event after the gap still applies");
	shm_mbox_close(&w);
	fx_close(&f);
	cr_assert_eq(pdw_control(&sdk), -EPIPE, "a router that hung up is gone");
	close(fd);
}
