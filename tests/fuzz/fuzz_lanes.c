/*
 * Fuzz target for the mailbox-lane checkers (shm/lanes.h) and libpdworker's pdw_poll()
 * (shm/worker.c), which decode records a hostile peer wrote. It proves that:
 *  - shm_lane_check_request() and shm_lane_check_answer() accept exactly what a plain reference
 *    of the rules accepts, and that what they accept has its pointers and counts inside the
 *    record: every token, sampling, param and message byte is read, and the record ends its
 *    own heap block, so a read past it is an AddressSanitizer error;
 *  - pdw_poll() on a lane ring the "router" fills (a real producer writing requests, cancels,
 *    near-misses and raw records, publishing in steps, sometimes scribbling on the data or the
 *    head) returns only 0, -EAGAIN or -EBADMSG and hands over requests whose tokens, sampling
 *    parameters and params lie inside the ring's data; while nothing was scribbled, it returns
 *    exactly the records written, in order and intact, -EBADMSG for a bad one, and skips
 *    unknown types.
 * The input: byte 0 picks the mode (bits 0-1: 0 the request checker, 1 the answer checker for
 * type answer_types[bits 2-4], 2 or 3 the ring); the rest is the record, or for the ring a start
 * index and operations (run_ring()).
 *
 * Two builds of this file:
 *  - fuzz_lanes, a meson test in suite 'fuzz': main() below runs a fixed, seeded number of
 *    inputs, records and operation lists built valid, then mutated or not.
 *    `fuzz_lanes [-n INPUTS] [-s SEED] [FILE...]` runs FILE... instead (a crash to replay).
 *  - fuzz_lanes_libfuzzer, with clang's libFuzzer only (not built by default, not a test):
 *      CC=clang meson setup /tmp/build-fuzz && ninja -C /tmp/build-fuzz tests/fuzz_lanes_libfuzzer
 *      /tmp/build-fuzz/tests/fuzz_lanes_libfuzzer -max_total_time=30
 *    A crash is saved as crash-<sha1> in the working directory; fuzz_lanes FILE replays it.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "pdworker.h"
#include "rng.h"

#include "fuzz_common.h"

const char t_fuzz_name[] = "fuzz_lanes";

#define LANES 2u
#define LANE_BYTES 1024u
#define QCAP 256u		/* records a lane may hold: LANE_BYTES / 8 at most */
#define MAX_RECORD (64u << 20)	/* longer inputs are skipped */

enum { O_REQ_OK, O_REQ_BAD, O_ANS_OK, O_ANS_BAD, O_POLL_REQ, O_POLL_CANCEL, O_POLL_AGAIN,
       O_POLL_BAD, O_SCRIBBLED, O_N };

static const uint16_t answer_types[8] = {SHM_LANE_TOKENS, SHM_LANE_PREFILLED, SHM_LANE_DONE,
					 SHM_LANE_ERROR, SHM_LANE_REQUEST, SHM_LANE_CANCEL, 0,
					 0xFFFF};
/* A request's mode, ntokens, nparams, nsampling and reserved. */
static const uint8_t req_fields[5] = {8, 12, 20, 40, 44};
static const uint32_t odd32[] = {0, 1, 2, 3, 4, 7, 8, 31, 32, 33, 256, 257, 4096, 4097, 0x10000,
				 0x10001, 1u << 20, (1u << 20) + 1, 0x3FFFFFFF, 0x40000000,
				 0x7FFFFFFF, 0x80000000, 0xFFFFFFF8, 0xFFFFFFFF};
#define NODD (sizeof(odd32) / sizeof(odd32[0]))

static unsigned long outcome[O_N];
static volatile uint32_t sink;

static uint32_t rd32(const uint8_t *p, size_t at)
{
	uint32_t v;

	memcpy(&v, p + at, 4);
	return v;
}

/* ---- The reference: the rules of lanes.h, written plainly with 64-bit arithmetic. ---- */

static bool ref_request(const uint8_t *p, uint64_t len)
{
	uint64_t mode = len >= 48 ? rd32(p, 8) : 0, ntok = len >= 48 ? rd32(p, 12) : 0;
	uint64_t npar = len >= 48 ? rd32(p, 20) : 0, nsamp = len >= 48 ? rd32(p, 40) : 0;
	uint64_t reserved = len >= 48 ? rd32(p, 44) : 0;

	return len >= 48 && ntok >= 1 && ntok <= 1u << 20 && npar <= 1u << 16 && mode <= 2 &&
	       (!npar || mode == 2) && nsamp <= 4096 && !reserved &&
	       len == 48 + (4 * ntok + 7) / 8 * 8 + (nsamp + 7) / 8 * 8 + npar;
}

/* Bytes of data after the 16-byte fixed part of a valid answer, or -1 for an invalid one. */
static int64_t ref_answer(uint16_t type, const uint8_t *p, uint64_t len)
{
	uint64_t a = len >= 16 ? rd32(p, 8) : 0, b = len >= 16 ? rd32(p, 12) : 0;

	if (len < 16)
		return -1;
	if (type == SHM_LANE_TOKENS && a >= 1 && a <= 4096 && !b && len == 16 + 4 * a)
		return (int64_t)(4 * a);
	if (type == SHM_LANE_PREFILLED && b <= 1u << 16 && len == 16 + b)
		return (int64_t)b;
	if (type == SHM_LANE_DONE && a <= 1 && !b && len == 16)
		return 0;
	if (type == SHM_LANE_ERROR && (int32_t)a < 0 && (int32_t)a >= -4095 && b <= 256 &&
	    len == 16 + b)
		return (int64_t)b;
	return -1;
}

/* ---- The checkers, on a record that ends its heap block. ---- */

/* A request handed over: counts in range, tokens, sampling then params inside [lo, hi), in
 * that order and apart, all read. */
static void check_inside(const struct shm_lane_request *q, const uint32_t *tokens,
			 const uint8_t *sampling, const uint8_t *params, const uint8_t *lo,
			 const uint8_t *hi)
{
	uintptr_t t = (uintptr_t)tokens, sa = (uintptr_t)sampling, pa = (uintptr_t)params;
	uintptr_t l = (uintptr_t)lo, h = (uintptr_t)hi;
	uint32_t x = 0;

	if (!q->ntokens || q->ntokens > SHM_LANE_MAX_TOKENS || q->nparams > SHM_LANE_MAX_PARAMS ||
	    q->mode > SHM_LANE_DECODE || (q->nparams && q->mode != SHM_LANE_DECODE) ||
	    q->nsampling > SHM_LANE_MAX_SAMPLING || q->reserved)
		t_fuzz_fail("accepted mode %u, %u tokens, %u sampling, %u params, reserved %u",
			    q->mode, q->ntokens, q->nsampling, q->nparams, q->reserved);
	if (t < l + sizeof(*q) || t % 4 || t > h || (h - t) / 4 < q->ntokens ||
	    sa < t + 4 * (uintptr_t)q->ntokens || sa > h || h - sa < q->nsampling ||
	    pa < sa + q->nsampling || pa > h || h - pa < q->nparams)
		t_fuzz_fail("%u tokens at +%zu, %u sampling at +%zu, %u params at +%zu: outside "
			    "%zu bytes",
			    q->ntokens, (size_t)(t - l), q->nsampling, (size_t)(sa - l), q->nparams,
			    (size_t)(pa - l), (size_t)(h - l));
	for (uint32_t i = 0; i < q->ntokens; i++)
		x ^= tokens[i];
	for (uint32_t i = 0; i < q->nsampling; i++)
		x ^= sampling[i];
	for (uint32_t i = 0; i < q->nparams; i++)
		x ^= params[i];
	sink ^= x;
}

static void run_request(const uint8_t *p, uint32_t len)
{
	struct shm_lane_request_view v;
	int rc = shm_lane_check_request(p, len, &v);
	bool want = ref_request(p, len);

	if (rc != (want ? 0 : -EBADMSG))
		t_fuzz_fail("check_request of %u bytes: %d; the reference accepts: %d", len, rc,
			    want);
	outcome[rc ? O_REQ_BAD : O_REQ_OK]++;
	if (rc)
		return;
	if (memcmp(&v.req, p, sizeof(v.req)) || (const uint8_t *)v.tokens != p + sizeof(v.req) ||
	    v.sampling != p + sizeof(v.req) + shm_lane_pad8(4ull * v.req.ntokens) ||
	    v.params != p + len - v.req.nparams)
		t_fuzz_fail("check_request of %u bytes: the view is not the record's", len);
	check_inside(&v.req, v.tokens, v.sampling, v.params, p, p + len);
}

static void run_answer(uint16_t type, const uint8_t *p, uint32_t len)
{
	struct shm_lane_answer a;
	int rc = shm_lane_check_answer(type, p, len, &a);
	int64_t want = ref_answer(type, p, len);
	uint64_t bytes = type == SHM_LANE_TOKENS ? 4ull * a.n : type == SHM_LANE_DONE ? 0 : a.n;
	uint32_t x = 0;

	if (rc != (want < 0 ? -EBADMSG : 0))
		t_fuzz_fail("check_answer of type %u, %u bytes: %d, the reference %lld", type, len,
			    rc, (long long)want);
	outcome[rc ? O_ANS_BAD : O_ANS_OK]++;
	if (rc)
		return;
	if (a.type != type || memcmp(&a.request_id, p, 8) || a.data != p + 16 ||
	    bytes != (uint64_t)want || a.value != (type == SHM_LANE_TOKENS ? 0 : rd32(p, 8)))
		t_fuzz_fail("check_answer of type %u, %u bytes: n %u, value %u, data at +%td", type,
			    len, a.n, a.value, a.data - p);
	for (uint32_t i = 0; type == SHM_LANE_TOKENS && i < a.n; i++)
		x ^= ((const uint32_t *)a.data)[i];
	for (uint64_t i = 0; type != SHM_LANE_TOKENS && i < bytes; i++)
		x ^= a.data[i];
	sink ^= x;
}

/* ---- Records: valid ones, and one thing put wrong (the ring's near-misses, the replay). ---- */

/* A valid REQUEST at @p: its length. */
static uint32_t make_request(uint8_t *p, uint32_t mode, uint32_t ntok, uint32_t nsamp,
			     uint32_t npar, uint32_t id)
{
	struct shm_lane_request q = {.request_id = id, .mode = mode, .ntokens = ntok,
				     .max_tokens = mode == SHM_LANE_PREFILL ? 1 : 16,
				     .nparams = npar, .nsampling = nsamp};
	uint32_t len = (uint32_t)shm_lane_request_bytes(ntok, nsamp, npar);
	uint32_t samp = (uint32_t)(sizeof(q) + shm_lane_pad8(4ull * ntok));

	memcpy(p, &q, sizeof(q));
	for (uint32_t i = sizeof(q); i < len; i++) /* tokens, sampling, params; zero padding */
		p[i] = (i >= sizeof(q) + 4 * ntok && i < samp) ||
			       (i >= samp + nsamp && i < len - npar)
			   ? 0
			   : (uint8_t)(id + i * 0x9E3779B1u);
	return len;
}

/* Put one thing wrong, chosen by @sel and @val, in the record of @len bytes at @p (with room
 * for 64 more): a count field (@fields) odd or one off, the length longer or shorter, a bit. */
static uint32_t spoil(uint8_t *p, uint32_t len, const uint8_t *fields, uint32_t nfields,
		      uint32_t sel, uint32_t val)
{
	uint32_t at = fields[sel / 5 % nfields], v;

	switch (sel % 5) {
	case 0:
		v = odd32[val % NODD];
		break;
	case 1: /* a request's padding may absorb one token more or less */
		v = at + 4 <= len ? rd32(p, at) + (val & 1 ? 1 : -1) : 0;
		break;
	case 2:
		return len + 1 + val % 64;
	case 3:
		return len > 1 + val % 64 ? len - 1 - val % 64 : 0;
	default:
		if (len)
			p[val % len] ^= (uint8_t)(1u << (sel / 5 % 8));
		return len;
	}
	if (at + 4 <= len)
		memcpy(p + at, &v, 4);
	return len;
}

/* ---- The ring: a router's mailbox and a worker's struct pdw on it, made once. ---- */

enum { K_REQ, K_CANCEL, K_BAD, K_SKIP };

struct entry {
	uint8_t kind;
	uint32_t off, len; /* the payload in the lane's data */
	uint64_t id, hash;
};

static struct {
	bool scribbled;
	struct shm_mbox router;
	struct pdw w;
	struct entry q[LANES][QCAP];
	uint32_t put[LANES], pub[LANES], got[LANES]; /* written, published, consumed */
	uint32_t next_lane; /* where pdw_poll() looks first: after the last lane done with */
} fx;

static const uint8_t *ring_in; /* the ring input, and how much of it was taken */
static size_t ring_n, ring_at;

/* The next @bytes bytes of the ring input, little-endian; zeros past its end. */
static uint32_t take(unsigned bytes)
{
	uint32_t v = 0;

	for (unsigned b = 0; b < bytes; b++)
		v |= (uint32_t)(ring_at < ring_n ? ring_in[ring_at++] : 0) << 8 * b;
	return v;
}

static uint64_t hash(const uint8_t *p, uint32_t n)
{
	uint64_t h = 0xCBF29CE484222325ull;

	for (uint32_t i = 0; i < n; i++)
		h = (h ^ p[i]) * 0x100000001B3ull;
	return h;
}

/* Empty lanes whose indices start at @start; the mailbox is made and attached the first time. */
static void fx_reset(uint32_t start)
{
	struct shm_mbox_config cfg = {.lanes = LANES, .lane_ring_bytes = LANE_BYTES,
				      .event_ring_bytes = 4096};
	int fd;

	if (!fx.router.base) {
		if (shm_mbox_create(&fx.router, &cfg, 1))
			t_fuzz_fail("cannot create the mailbox");
		fd = dup(fx.router.fd);
		if (fd < 0 || shm_mbox_attach(&fx.w.mbox, fd))
			t_fuzz_fail("cannot attach the mailbox");
		fx.w.fd = -1;
		fx.w.registered = true; /* as pdw_register() leaves it, without a control socket */
	}
	for (uint32_t i = 0; i < LANES; i++) {
		struct shm_ring_shared *sh = fx.router.req[i].sh;

		memset(sh->data, 0, LANE_BYTES);
		shm_ring_format(sh, LANE_BYTES);
		atomic_store_explicit(&sh->head, start, memory_order_relaxed);
		atomic_store_explicit(&sh->tail, start, memory_order_relaxed);
		if (shm_ring_attach(&fx.router.req[i], sh, LANE_BYTES, true) ||
		    shm_ring_attach(&fx.w.mbox.req[i], fx.w.mbox.req[i].sh, LANE_BYTES, false))
			t_fuzz_fail("cannot attach lane %u at %#x", i, start);
		fx.put[i] = fx.pub[i] = fx.got[i] = 0;
	}
	fx.next_lane = fx.w.next_lane = 0;
	fx.scribbled = false;
}

/* The router committed a record of @type at @off: what pdw_poll() must make of it. */
static void push(uint32_t lane, uint16_t type, uint32_t off, uint32_t len)
{
	const uint8_t *p = fx.router.req[lane].data + off;
	struct entry *e = &fx.q[lane][fx.put[lane] % QCAP];

	if (fx.scribbled)
		return; /* no model any more */
	if (fx.put[lane] - fx.got[lane] >= QCAP)
		t_fuzz_fail("lane %u holds %u records", lane, QCAP);
	e->kind = type == SHM_LANE_REQUEST  ? (ref_request(p, len) ? K_REQ : K_BAD)
		  : type == SHM_LANE_CANCEL ? (len == 8 ? K_CANCEL : K_BAD)
					    : K_SKIP;
	e->off = off;
	e->len = len;
	e->id = 0;
	memcpy(&e->id, p, len < 8 ? len : 8);
	e->hash = hash(p, len);
	fx.put[lane]++;
}

static void write_rec(uint32_t lane, uint16_t type, const uint8_t *pay, uint32_t len)
{
	struct shm_ring *r = &fx.router.req[lane];
	int err;
	uint8_t *p = shm_ring_reserve(r, type, 0, len, &err);

	if (!p) {
		if (!fx.scribbled && err != -ENOBUFS)
			t_fuzz_fail("reserve of %u bytes on lane %u: %d", len, lane, err);
		return;
	}
	memcpy(p, pay, len);
	shm_ring_commit(r);
	push(lane, type, (uint32_t)(p - r->data), len);
}

/* Ops 0 and 3: a request through shm_lane_put_request(), or a near-miss written raw. */
static void op_request(uint32_t lane, bool spoilt)
{
	uint32_t b = take(2), nsamp = take(1) % 64, id = take(4), sel = take(1), val = take(1);
	uint32_t mode = b % 3, npar = mode == SHM_LANE_DECODE ? b / 128 % 48 : 0, len;
	struct shm_ring *r = &fx.router.req[lane];
	struct shm_lane_request q;
	uint8_t p[384] = {0};
	uint32_t tokens[32];
	int rc;

	len = make_request(p, mode, 1 + b / 4 % 32, nsamp, npar, id);
	if (spoilt) {
		write_rec(lane, SHM_LANE_REQUEST, p, spoil(p, len, req_fields, 5, sel, val));
		return;
	}
	memcpy(&q, p, sizeof(q));
	memcpy(tokens, p + sizeof(q), 4 * q.ntokens);
	rc = shm_lane_put_request(r, &q, tokens, p + sizeof(q) + shm_lane_pad8(4ull * q.ntokens),
				  p + len - npar);
	if (!rc)
		push(lane, SHM_LANE_REQUEST,
		     ((r->local - shm_rec_space(len)) & r->mask) + SHM_REC_HDR, len);
	else if (!fx.scribbled && rc != -ENOBUFS)
		t_fuzz_fail("put_request of %u bytes on lane %u: %d", len, lane, rc);
}

/* One pdw_poll(): against the model while nothing was scribbled, and inside the ring always. */
static int do_poll(bool done)
{
	struct pdw_request r;
	struct entry *e = NULL;
	int rc = pdw_poll(&fx.w, &r), want = -EAGAIN;
	uint32_t lane, *got;
	const uint8_t *data, *rec;

	if (rc && rc != -EAGAIN && rc != -EBADMSG)
		t_fuzz_fail("pdw_poll: %d", rc);
	outcome[!rc ? (r.cancel ? O_POLL_CANCEL : O_POLL_REQ) : rc == -EAGAIN ? O_POLL_AGAIN
									      : O_POLL_BAD]++;
	/* Lanes take turns: from the one after the last record done with. */
	for (uint32_t k = 0; k < LANES && !fx.scribbled && !e; k++) {
		lane = (fx.next_lane + k) % LANES;
		for (got = &fx.got[lane]; *got != fx.pub[lane]; ++*got) /* unknown types: skipped */
			if (fx.q[lane][*got % QCAP].kind != K_SKIP)
				break;
		e = *got != fx.pub[lane] ? &fx.q[lane][*got % QCAP] : NULL;
		want = e ? (e->kind == K_BAD ? -EBADMSG : 0) : -EAGAIN;
	}
	if (!fx.scribbled && rc != want)
		t_fuzz_fail("pdw_poll: %d, the model %d", rc, want);
	if (rc)
		return rc;
	if (r.lane >= LANES)
		t_fuzz_fail("pdw_poll: lane %u", r.lane);
	data = fx.w.mbox.req[r.lane].data;
	if (!r.cancel)
		check_inside(&r.req, r.tokens, r.sampling, r.params, data + SHM_REC_HDR,
			     data + LANE_BYTES);
	rec = e ? data + e->off : NULL;
	if (e && (r.lane != lane || r.cancel != (e->kind == K_CANCEL) ||
		  (r.cancel && r.req.request_id != e->id) || hash(rec, e->len) != e->hash ||
		  (!r.cancel && ((const uint8_t *)r.tokens != rec + sizeof(r.req) ||
				 r.sampling != rec + sizeof(r.req) +
						   shm_lane_pad8(4ull * r.req.ntokens) ||
				 r.params != rec + e->len - r.req.nparams ||
				 memcmp(&r.req, rec, sizeof(r.req))))))
		t_fuzz_fail(
		    "pdw_poll: lane %u, cancel %d, id %llu; the model: lane %u at %u, kind %u",
		    r.lane, r.cancel, (unsigned long long)r.req.request_id, lane, e->off,
		    e->kind);
	if (done) {
		pdw_done_with(&fx.w, &r);
		fx.got[r.lane] += !!e;
		fx.next_lane = (r.lane + 1) % LANES;
	}
	return 0;
}

enum { OP_REQ, OP_CANCEL, OP_RAW, OP_NEAR, OP_PUBLISH, OP_POLL, OP_DRAIN, OP_SCRIBBLE };

/*
 * The ring input: the start index (4 bytes; bit 0: bad records, bit 1: scribbles), then
 * operations, each a byte (bits 0-4 which, by ops[]; bit 5 the lane; bit 6 a flag) and its
 * arguments: OP_REQ and OP_NEAR 9 bytes (shape, sampling bytes, id, what is off), OP_CANCEL
 * 5 (id, length if the flag), OP_RAW 3 (type, length) and the payload, OP_POLL done_with if
 * the flag, OP_DRAIN polls until none, OP_SCRIBBLE 7 (what, value, offset). Then everything is
 * published and polled until none. Without bit 0, OP_RAW and OP_NEAR are OP_REQ and cancels
 * are whole; without bit 1, OP_SCRIBBLE is OP_POLL.
 */
static void run_ring(const uint8_t *in, size_t n)
{
	static const uint8_t ops[32] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 2, 2, 2, 3,
					3, 3, 4, 4, 4, 4, 4, 4, 5, 5, 5, 5, 5, 6, 6, 7};
	static const uint16_t types[8] = {SHM_LANE_REQUEST, SHM_LANE_CANCEL, 3, 15,
					  SHM_LANE_TOKENS, SHM_LANE_ERROR, 0x100, 0xFFFF};
	uint8_t rec[LANE_BYTES] = {0};
	uint32_t start, op, kind, lane, t, v, len;
	struct shm_ring *r;
	unsigned i;

	ring_in = in;
	ring_n = n;
	ring_at = 0;
	start = take(4);
	fx_reset(start & ~7u);
	for (unsigned k = 0; ring_at < n && k < 4096; k++) {
		op = take(1);
		kind = ops[op & 31];
		r = &fx.router.req[lane = op >> 5 & 1];
		if (!(start & 1) && (kind == OP_RAW || kind == OP_NEAR))
			kind = OP_REQ;
		if (!(start & 2) && kind == OP_SCRIBBLE)
			kind = OP_POLL;
		switch (kind) {
		case OP_REQ:
		case OP_NEAR:
			op_request(lane, kind == OP_NEAR);
			break;
		case OP_CANCEL:
			v = take(4);
			memset(rec, 0, 16);
			memcpy(rec, &v, 4);
			len = take(1) % 17;
			write_rec(lane, SHM_LANE_CANCEL, rec, op & 64 && start & 1 ? len : 8);
			break;
		case OP_RAW:
			t = take(1);
			v = take(2);
			len = v >> 14 == 3 ? v % (shm_ring_max_payload(LANE_BYTES) + 1) : v & 0x7F;
			for (i = 0; i < len; i++)
				rec[i] = (uint8_t)take(1);
			write_rec(lane, types[t % 8], rec, len);
			break;
		case OP_PUBLISH:
			shm_ring_publish(r);
			fx.pub[lane] = fx.put[lane];
			break;
		case OP_POLL:
			do_poll(op & 64);
			break;
		case OP_SCRIBBLE: /* the head anywhere or near, or a word of the data */
			t = take(1);
			v = take(4);
			len = take(2) % (LANE_BYTES / 4);
			if (t & 1)
				atomic_store_explicit(&r->sh->head,
						      t & 2 ? v : r->published + v % 2048 - 1024,
						      memory_order_relaxed);
			else
				memcpy(r->data + 4 * len, &v, 4);
			outcome[O_SCRIBBLED] += !fx.scribbled;
			fx.scribbled = true;
			break;
		default:
			for (i = 0; i < 2 * QCAP && !do_poll(true); i++)
				;
		}
	}
	for (lane = 0; lane < LANES; lane++) {
		shm_ring_publish(&fx.router.req[lane]);
		fx.pub[lane] = fx.put[lane];
	}
	for (i = 0; i < 2 * QCAP && !do_poll(true); i++)
		;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	size_t n = size ? size - 1 : 0;
	uint8_t *block;

	t_fuzz_set_input(data, size);
	if (size && data[0] & 2)
		run_ring(data + 1, n);
	if (!size || data[0] & 2 || n > MAX_RECORD)
		return 0;
	block = malloc(n ? n : 1); /* exactly the record: a read past it is an ASan error */
	if (!block)
		t_fuzz_fail("out of memory");
	memcpy(block, data + 1, n);
	if (data[0] & 1)
		run_answer(answer_types[data[0] >> 2 & 7], block + !n, (uint32_t)n);
	else
		run_request(block + !n, (uint32_t)n);
	free(block);
	return 0;
}

#ifndef PD_LIBFUZZER

/* ---- The replay driver: records and operation lists built valid, then spoilt or not. ---- */

static struct t_rng rng;
/* the largest request, one past every limit, with room for three spoils that lengthen it */
static uint8_t buf[1 + 48 + 4 * SHM_LANE_MAX_TOKENS + SHM_LANE_MAX_SAMPLING + 8 +
		   SHM_LANE_MAX_PARAMS + 1 + 3 * 64];

/* A record for a checker: a request or answer whose length fits its counts, which are valid
 * or, now and then, at a limit or one past it; then spoilt or not. */
static size_t gen_record(uint8_t *in)
{
	static const uint8_t ans_fields[2] = {8, 12};
	uint32_t ti = t_rng_below(&rng, 8), id = (uint32_t)t_rng_next(&rng), len, a = id, b = 0;
	uint32_t c = 0;
	uint32_t mode = t_rng_chance(&rng, 3) ? 3 : t_rng_below(&rng, 3);
	bool answer = t_rng_chance(&rng, 50), edge = !t_rng_below(&rng, 100);
	uint16_t type = answer_types[ti];
	uint8_t *p = in + 1;

	in[0] = (uint8_t)((t_rng_next(&rng) & 0xE0) | (answer ? 1 | ti << 2 : 0));
	if (!answer) {
		a = !t_rng_below(&rng, 500) ? SHM_LANE_MAX_TOKENS - 1 + t_rng_below(&rng, 3)
					    : t_rng_below(&rng, 301);
		if (mode == SHM_LANE_DECODE || t_rng_chance(&rng, 3))
			b = edge ? SHM_LANE_MAX_PARAMS - 1 + t_rng_below(&rng, 3)
				 : t_rng_below(&rng, 200);
		if (t_rng_chance(&rng, 50))
			c = edge ? SHM_LANE_MAX_SAMPLING - 1 + t_rng_below(&rng, 3)
				 : t_rng_below(&rng, 100);
		len = make_request(p, mode, a, c, b, id);
	} else {
		if (type == SHM_LANE_TOKENS)
			a = edge ? 4095 + t_rng_below(&rng, 3) : t_rng_below(&rng, 65);
		else if (type == SHM_LANE_PREFILLED)
			b = edge ? SHM_LANE_MAX_PARAMS - 1 + t_rng_below(&rng, 3)
				 : t_rng_below(&rng, 300);
		else if (type == SHM_LANE_DONE)
			a = t_rng_below(&rng, 3);
		else if (type == SHM_LANE_ERROR) {
			a = edge ? odd32[t_rng_below(&rng, NODD)] : -(1 + t_rng_below(&rng, 133));
			b = t_rng_below(&rng, SHM_LANE_MAX_ERROR + 2);
		} else
			b = t_rng_below(&rng, 48);
		len = 16 + (type == SHM_LANE_TOKENS ? 4 * a : type == SHM_LANE_DONE ? 0 : b);
		for (uint32_t i = 0; i < len; i++)
			p[i] = (uint8_t)(id + i * 0x9E3779B1u);
		memcpy(p + 8, &a, 4);
		memcpy(p + 12, &b, 4);
	}
	for (uint32_t k = t_rng_chance(&rng, 60) ? 1 + t_rng_below(&rng, 3) : 0; k; k--)
		len = spoil(p, len, answer ? ans_fields : req_fields, answer ? 2 : 5,
			    (uint32_t)t_rng_next(&rng), (uint32_t)t_rng_next(&rng));
	return 1 + len;
}

/* An operation list for run_ring(): random, with bad records in half, scribbles in some. */
static size_t gen_ring(uint8_t *in)
{
	uint32_t start = t_rng_chance(&rng, 50) ? 0u - 8 * t_rng_below(&rng, 256) /* wraps soon */
						: (uint32_t)t_rng_next(&rng);
	size_t n = 5 + t_rng_below(&rng, 400);

	for (size_t i = 0; i < n; i++)
		in[i] = (uint8_t)t_rng_next(&rng);
	start = (start & ~7u) | t_rng_below(&rng, 2) | (t_rng_chance(&rng, 15) ? 2 : 0);
	in[0] |= 2;
	memcpy(in + 1, &start, 4);
	return n;
}

int main(int argc, char **argv)
{
	int files;
	unsigned long inputs = 100000;
	uint64_t seed = 42;

	files = t_fuzz_begin(argc, argv, &inputs, &seed);
	if (files < 0)
		return 2;
	t_rng_seed(&rng, seed);
	for (t_fuzz_input_number = 0; t_fuzz_input_number < inputs; t_fuzz_input_number++)
		LLVMFuzzerTestOneInput(buf,
				       t_rng_chance(&rng, 60) ? gen_record(buf) : gen_ring(buf));
	if (fx.router.base) {
		pdw_close(&fx.w);
		shm_mbox_close(&fx.router);
	}
	printf("fuzz_lanes: seed %llu; requests %lu ok, %lu refused; answers %lu ok, %lu refused\n",
	       (unsigned long long)seed, outcome[O_REQ_OK], outcome[O_REQ_BAD], outcome[O_ANS_OK],
	       outcome[O_ANS_BAD]);
	printf("fuzz_lanes: polls: %lu requests, %lu cancels, %lu -EAGAIN, %lu -EBADMSG; "
	       "%lu rings scribbled\n", outcome[O_POLL_REQ], outcome[O_POLL_CANCEL],
	       outcome[O_POLL_AGAIN], outcome[O_POLL_BAD], outcome[O_SCRIBBLED]);
	printf("fuzz_lanes: %lu inputs, ok\n", inputs + (unsigned long)files);
	return 0;
}

#endif
