/*
 * Fuzz target for the KV-event intake (control/kv_events.h), whose worker may be hostile.
 * LLVMFuzzerTestOneInput() drains the input into a prefix index and a router set up once (two
 * workers: A at block size 16 with DP ranks 0-1, B at block size 4 with ranks 3-5) in one of two
 * modes, chosen by the input's first byte:
 *  - records: the input is a sequence of records (type, op, length, payload) that a real
 *    producer writes into a ring, so the ring's framing is valid and only the records are
 *    hostile; the op byte says when to publish and how much to drain;
 *  - raw ring: the input is laid out as the ring itself (tail, head, data, later heads), as in
 *    fuzz_ring.c, and the intake drains it as the worker "publishes" each head.
 * The ring's data ends right at a PROT_NONE page. It aborts when a drain returns anything but a
 * count within its budget, -EBADMSG (with k.broken, and for good) or -ENOMEM; when the intake's
 * counters do not account for every record it took; when the index then answers a prompt with
 * a target of another worker, twice, or deeper than the query or than the target holds; or when
 * dropping the worker's targets leaves an entry behind. Everything is reset between inputs.
 *
 * Two builds:
 *  - fuzz_kv_events, a meson test in suite 'fuzz': this file and fuzz_kv_events_replay.c,
 *    whose main() runs a fixed, seeded number of inputs a model of a worker writes, mutated or
 *    not. `fuzz_kv_events [-n INPUTS] [-s SEED] [FILE...]` runs FILE... instead (a crash to
 *    replay).
 *  - fuzz_kv_events_libfuzzer, with clang's libFuzzer only (not built by default, not a test):
 *      CC=clang meson setup /tmp/build-fuzz && ninja -C /tmp/build-fuzz \
 *              tests/fuzz_kv_events_libfuzzer
 *      /tmp/build-fuzz/tests/fuzz_kv_events_libfuzzer -max_total_time=30
 *    It compiles control/kv_events.c itself, so the intake carries the coverage instrumentation.
 *    A crash is saved as crash-<sha1> in the working directory; fuzz_kv_events FILE replays it.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "events.h"
#include "hash.h"
#include "kv_events.h"
#include "ring.h"
#include "rng.h"
#include "route.h"

#include "fuzz_common.h"
#include "fuzz_kv_events.h"

#define MAX_RING (1u << 16)
#define TARGETS 16u

static struct {
	struct pdx x;
	struct rt_router rt;
	struct pdx_reader *r;
	struct kvf_worker w[2];
	struct pdx_overlap out[TARGETS];
	uint8_t *rw_end; /* where the ring's data ends: a PROT_NONE page */
} g;

/* Records mode ring sizes: small ones make the worker wait for room. */
static const uint32_t rec_size[8] = {256,      1024,	 4096,	   16384,
				     MAX_RING, MAX_RING, MAX_RING, MAX_RING};
struct kvf_totals kvf_totals;
const char t_fuzz_name[] = "fuzz_kv_events";

uint32_t kvf_rd32(const uint8_t *in, size_t n, size_t at)
{
	uint32_t v = 0;

	if (at + 4 <= n)
		memcpy(&v, in + at, 4);
	return v;
}

/* Token j of block i of pool prompt p: prompts 1 and 2 share their first blocks with 0. */
static uint32_t pool_root(uint32_t p, uint32_t i)
{
	static const uint32_t shared[POOL] = {0, 8, 200, 0};

	return i < shared[p] ? 0 : p;
}

/* External id of block i of pool prompt p: names the prefix, as an engine's hash does. */
uint64_t kvf_pool_ext(uint32_t p, uint32_t i)
{
	return t_mix64((uint64_t)pool_root(p, i) << 32 | i) | 1;
}

static void setup_worker(struct kvf_worker *w, uint32_t id, const char *model, uint32_t bs,
			 uint32_t rank0, uint32_t nranks)
{
	struct rt_worker_spec spec = {
	    .model = model,
	    .type = RT_AGGREGATED,
	    .model_type = RT_MODEL_CHAT,
	    .block_size = bs,
	    .kv_capacity_blocks = 100000,
	    .max_batched_tokens = 8192,
	    .dp_rank_start = rank0,
	    .dp_ranks = nranks,
	};
	char err[128];
	size_t per = (size_t)POOL_BLOCKS * bs;

	*w = (struct kvf_worker){.id = id, .bs = bs, .rank0 = rank0, .nranks = nranks};
	if (rt_register(&g.rt, id, &spec, err, sizeof(err)))
		t_fuzz_fail("rt_register: %s", err);
	for (uint32_t i = 0; i < nranks; i++) {
		int t = rt_target_find(&g.rt, id, rank0 + i);

		if (t < 0)
			t_fuzz_fail("no target for rank %u", rank0 + i);
		w->tg[i] = (uint16_t)t;
	}
	w->tok = malloc(POOL * per * 4);
	if (!w->tok)
		t_fuzz_fail("out of memory");
	for (uint32_t p = 0; p < POOL; p++) {
		uint32_t *tok = w->tok + p * per;

		for (size_t j = 0; j < per; j++)
			tok[j] =
			    (uint32_t)t_mix64((uint64_t)pool_root(p, (uint32_t)(j / bs)) << 40 ^ j);
		if (dp_hash_blocks(tok, per, bs, DP_HASH_SEED, w->local[p]) != POOL_BLOCKS)
			t_fuzz_fail("dp_hash_blocks");
	}
}

/* The index, the router, both workers and the ring's memory, once. */
void kvf_setup(void)
{
	struct pdx_config xc = {.max_targets = TARGETS, .max_readers = 2};
	struct rt_config cfg;
	size_t page = (size_t)sysconf(_SC_PAGESIZE);
	size_t rw = (shm_ring_bytes(MAX_RING) + page - 1) / page * page;
	uint8_t *base;

	if (g.rw_end)
		return;
	rt_config_default(&cfg);
	cfg.max_targets = TARGETS;
	cfg.max_requests = 16;
	cfg.max_active_blocks = 1024;
	if (pdx_init(&g.x, &xc) || rt_router_init(&g.rt, &cfg, &g.x) ||
	    pdx_reader_attach(&g.x, &g.r))
		t_fuzz_fail("setup");
	setup_worker(&g.w[0], 1, "a", 16, 0, 2);
	setup_worker(&g.w[1], 2, "b", 4, 3, 3);
	base = mmap(NULL, rw + 2 * page, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (base == MAP_FAILED || mprotect(base + page, rw, PROT_READ | PROT_WRITE))
		t_fuzz_fail("cannot map the ring");
	g.rw_end = base + page + rw;
}

const struct kvf_worker *kvf_worker(int i)
{
	return &g.w[i];
}

/* A ring of @size bytes whose data ends at the guard page. */
static struct shm_ring_shared *ring_mem(uint32_t size)
{
	return (struct shm_ring_shared *)(g.rw_end - shm_ring_bytes(size));
}

/* What one input's drains returned, for the accounting checks. */
struct run {
	struct ctl_kv k;
	uint64_t taken;	  /* records the drains said they took */
	uint64_t written; /* records mode: records the producer wrote */
	bool records;	  /* records mode */
	bool nomem;	  /* a drain said -ENOMEM: its records are not in taken */
};

static int drain(struct run *u, uint32_t budget)
{
	bool was_broken = u->k.broken;
	int rc = ctl_kv_drain(&u->k, budget);

	if (rc == -EBADMSG) {
		if (!u->k.broken || u->k.stats.malformed != 1)
			t_fuzz_fail("-EBADMSG, broken %d, malformed %llu", u->k.broken,
				    (unsigned long long)u->k.stats.malformed);
	} else if (was_broken) {
		t_fuzz_fail("a broken intake drained again: %d", rc);
	} else if (rc != -ENOMEM && (rc < 0 || (uint32_t)rc > budget)) {
		t_fuzz_fail("drain of budget %u: %d", budget, rc);
	} else if (rc > 0) {
		u->taken += (uint64_t)rc;
	}
	u->nomem |= rc == -ENOMEM;
	if (atomic_load_explicit(&u->k.ring->sh->tail, memory_order_relaxed) != u->k.ring->local)
		t_fuzz_fail("tail %#x after a drain at %#x",
			    atomic_load_explicit(&u->k.ring->sh->tail, memory_order_relaxed),
			    u->k.ring->local);
	return rc;
}

/* Answers for @local[0..n): the worker's targets, once each, no deeper than possible. */
static void check_match(const struct kvf_worker *w, const uint64_t *local, size_t n)
{
	size_t k = pdx_match(g.r, local, n, g.out);
	uint32_t seen = 0;

	if (k > TARGETS)
		t_fuzz_fail("%zu answers", k);
	for (size_t i = 0; i < k; i++) {
		uint32_t r = 0;

		while (r < w->nranks && w->tg[r] != g.out[i].target)
			r++;
		if (r == w->nranks || seen & 1u << r)
			t_fuzz_fail("answer for target %u (another worker's, or twice)",
				    g.out[i].target);
		seen |= 1u << r;
		kvf_totals.answers++;
		if (!g.out[i].depth || g.out[i].depth > n ||
		    g.out[i].depth > pdx_target_blocks(&g.x, g.out[i].target))
			t_fuzz_fail("target %u: depth %u of a %zu-block query, holding %zu",
				    g.out[i].target, g.out[i].depth, n,
				    pdx_target_blocks(&g.x, g.out[i].target));
	}
}

/* After the drains: the counters account for the records, the index answers sanely. */
static void check_after(const struct kvf_worker *w, const struct run *u, const uint8_t *in,
			size_t n)
{
	const struct ctl_kv_stats *st = &u->k.stats;
	uint64_t handled =
	    st->events + st->duplicates + st->unknown_rank + st->unknown_type + st->loads;
	uint64_t prompt[8];

	if (u->k.broken || u->nomem ? handled < u->taken : handled != u->taken)
		t_fuzz_fail("%llu records taken, %llu handled (broken %d)",
			    (unsigned long long)u->taken, (unsigned long long)handled, u->k.broken);
	if (u->records && handled + u->k.broken > u->written)
		t_fuzz_fail("%llu records handled of %llu written", (unsigned long long)handled,
			    (unsigned long long)u->written);
	/* A gap always asks for a dump; so may an event the index took only part of. */
	if ((st->gaps && !u->k.dump_wanted) || (u->k.dump_wanted && !st->gaps && !st->refused) ||
	    st->refused > st->events)
		t_fuzz_fail("dump_wanted %d, gaps %llu, refused %llu of %llu events",
			    u->k.dump_wanted, (unsigned long long)st->gaps,
			    (unsigned long long)st->refused, (unsigned long long)st->events);
	for (uint32_t p = 0; p < POOL; p++) {
		check_match(w, w->local[p], POOL_BLOCKS);
		check_match(w, w->local[p], 1 + p * 3);
	}
	for (size_t i = 0; i < 8; i++) /* whatever the input names */
		prompt[i] = (uint64_t)kvf_rd32(in, n, 8 * i + IN_BODY) << 32 |
			    kvf_rd32(in, n, 8 * i + IN_BODY + 4);
	check_match(w, prompt, 8);
}

/* Forget what the input did: both workers' targets leave the index, loads go to 0. */
static void reset(void)
{
	struct pdx_stats st;

	for (int i = 0; i < 2; i++) {
		for (uint32_t r = 0; r < g.w[i].nranks; r++) {
			if (pdx_drop_target(&g.x, g.w[i].tg[r]) < 0)
				t_fuzz_fail("pdx_drop_target");
			if (pdx_target_blocks(&g.x, g.w[i].tg[r]))
				t_fuzz_fail("target %u holds blocks after a drop", g.w[i].tg[r]);
			rt_report_load(&g.rt, g.w[i].id, g.w[i].rank0 + r, 0, 0);
		}
	}
	pdx_stats(&g.x, &st);
	if (st.entries)
		t_fuzz_fail("%llu entries left with no target holding anything",
			    (unsigned long long)st.entries);
}

/* Records mode: write each record through a producer, publishing and draining as told. */
static void run_records(const struct kvf_worker *w, struct run *u, const uint8_t *in, size_t n)
{
	uint32_t size = rec_size[(in[IN_MODE] >> 2) & 7u], budget = 1u + in[IN_BUDGET];
	struct shm_ring_shared *sh;
	struct shm_ring prod, cons;
	size_t at = IN_BODY;

	u->records = true;
	sh = ring_mem(size);
	if (shm_ring_format(sh, size) || shm_ring_attach(&prod, sh, size, true) ||
	    shm_ring_attach(&cons, sh, size, false))
		t_fuzz_fail("ring of %u bytes", size);
	ctl_kv_init(&u->k, &g.x, &g.rt, w->id, w->bs, &cons);
	while (at + REC_HDR <= n && !u->k.broken) {
		uint16_t type = in[at] ? in[at] : 0x100,
			 len = (uint16_t)(in[at + 2] | in[at + 3] << 8);
		uint8_t op = in[at + 1], *pay;
		int err;

		at += REC_HDR;
		len = (uint16_t)(len < n - at ? len : n - at);
		pay = shm_ring_reserve(&prod, type, op >> 5, len, &err);
		/* The worker waits for room; a pad it wrote to wrap may take a second round. */
		for (int tries = 0; !pay && err == -ENOBUFS && tries < 2; tries++) {
			shm_ring_publish(&prod);
			if (drain(u, UINT32_MAX) == -EBADMSG)
				break;
			pay = shm_ring_reserve(&prod, type, op >> 5, len, &err);
		}
		if (u->k.broken)
			break;
		if (!pay && err != -E2BIG)
			t_fuzz_fail("reserve of %u bytes in a drained ring of %u: %d", len, size,
				    err);
		if (pay) {
			memcpy(pay, in + at, len);
			shm_ring_commit(&prod);
			u->written++;
		}
		at += len;
		if (op & 0x1F)
			shm_ring_publish(&prod);
		if (op & 0xF)
			drain(u, op & 0xFu);
	}
	shm_ring_publish(&prod);
	while (drain(u, budget) > 0)
		;
}

/* Raw mode: the input is the ring; the intake drains it as each later head is published. */
static void run_raw(const struct kvf_worker *w, struct run *u, const uint8_t *in, size_t n)
{
	uint32_t size = RAW_SIZE((in[IN_MODE] >> 2) & 7u), budget = 1u + in[IN_BUDGET];
	size_t next = IN_BODY + 8 + size;
	struct shm_ring_shared *sh = ring_mem(size);
	struct shm_ring cons;

	memset(sh->data, 0, size);
	if (n > IN_BODY + 8)
		memcpy(sh->data, in + IN_BODY + 8, n - IN_BODY - 8 < size ? n - IN_BODY - 8 : size);
	atomic_store_explicit(&sh->tail, kvf_rd32(in, n, IN_BODY), memory_order_relaxed);
	atomic_store_explicit(&sh->head, kvf_rd32(in, n, IN_BODY + 4), memory_order_relaxed);
	shm_ring_attach(&cons, sh, size, false); /* a broken ring is the intake's to refuse */
	ctl_kv_init(&u->k, &g.x, &g.rt, w->id, w->bs, &cons);
	for (int rounds = 0; rounds < 1 << 16; rounds++) { /* the input bounds it anyway */
		int rc = drain(u, budget);

		if (rc == -EBADMSG)
			return;
		if (rc)
			continue;
		if (next + 4 > n || next >= IN_BODY + 8 + size + 4 * MAX_HEADS)
			return;
		atomic_store_explicit(&sh->head, kvf_rd32(in, n, next), memory_order_relaxed);
		next += 4;
	}
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	const struct kvf_worker *w;
	struct run u = {0};

	kvf_setup();
	t_fuzz_set_input(data, size);
	if (size < IN_BODY)
		return 0;
	w = &g.w[data[IN_MODE] >> 1 & 1];
	if (data[IN_MODE] & 1)
		run_raw(w, &u, data, size);
	else
		run_records(w, &u, data, size);
	check_after(w, &u, data, size);
	*(u.k.broken ? &kvf_totals.broken : &kvf_totals.clean) += 1;
	for (size_t i = 0; i < sizeof(u.k.stats) / 8; i++)
		((uint64_t *)&kvf_totals.stats)[i] += ((const uint64_t *)&u.k.stats)[i];
	ctl_kv_destroy(&u.k);
	reset();
	return 0;
}
