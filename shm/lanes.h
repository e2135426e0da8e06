/*
 * The records of a mailbox lane (mailbox.h): requests from the router to a worker, and what the
 * worker answers. An ABI between programs built apart on one machine: fixed parts pinned by
 * _Static_assert, variable parts after them with their counts in them. Both sides decode what
 * the other wrote with shm_lane_check_*(), which checks that a record's length is exactly what
 * its counts say before anything in it is used; a record that fails is -EBADMSG.
 */
#ifndef PD_SHM_LANES_H
#define PD_SHM_LANES_H

#include <errno.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "ring.h"

#define SHM_LANE_MAX_TOKENS (1u << 20) /* prompt tokens of one request */
#define SHM_LANE_MAX_PARAMS (64u << 10) /* bytes of a disaggregated-params blob */
#define SHM_LANE_MAX_SAMPLING 4096u	/* bytes of the client's sampling parameters */
#define SHM_LANE_MAX_ERROR 256u	       /* bytes of an error message */

/* Record types on a lane (ring types; 0 is the ring's pad). */
enum shm_lane_type {
	SHM_LANE_REQUEST = 1,	   /* router -> worker: struct shm_lane_request + tokens + ... */
	SHM_LANE_CANCEL = 2,	   /* router -> worker: struct shm_lane_ref */
	SHM_LANE_TOKENS = 16,	   /* worker -> router: struct shm_lane_tokens + token ids */
	SHM_LANE_PREFILLED = 17,   /* worker -> router: struct shm_lane_prefilled + params */
	SHM_LANE_DONE = 18,	   /* worker -> router: struct shm_lane_done */
	SHM_LANE_ERROR = 19,	   /* worker -> router: struct shm_lane_error + message */
};

/* What a request asks of the worker. */
enum shm_lane_mode {
	SHM_LANE_AGGREGATED = 0, /* prefill and decode here */
	SHM_LANE_PREFILL = 1,	 /* prefill only: one token, then the KV-transfer params */
	SHM_LANE_DECODE = 2,	 /* decode, with the prefill worker's params */
};

/*
 * REQUEST: then uint32_t tokens[ntokens], zeros up to a multiple of 8 bytes, then nsampling
 * bytes of sampling parameters, zeros up to a multiple of 8 bytes, then nparams bytes of
 * params (the last bytes of the record). The sampling parameters are the client's, byte for
 * byte (pdclient.h): the router never looks into them, and they come with every mode.
 */
struct shm_lane_request {
	uint64_t request_id; /* the router's, echoed in every answer */
	uint32_t mode;	     /* enum shm_lane_mode */
	uint32_t ntokens;    /* 1 .. SHM_LANE_MAX_TOKENS */
	uint32_t max_tokens; /* tokens to generate (1 in prefill mode) */
	uint32_t nparams;    /* 0 .. SHM_LANE_MAX_PARAMS; decode mode: the prefill's blob */
	uint32_t prefill_worker; /* decode mode: who prefilled; else 0 */
	uint32_t dp_rank;	  /* the target's DP rank */
	uint64_t room_id;	  /* bootstrap mode: shared with the prefill worker; else 0 */
	uint32_t nsampling;	  /* 0 .. SHM_LANE_MAX_SAMPLING */
	uint32_t reserved;	  /* 0 */
};

/* CANCEL, or any record that names one request only. */
struct shm_lane_ref {
	uint64_t request_id;
};

/* TOKENS: then uint32_t tokens[n]. */
struct shm_lane_tokens {
	uint64_t request_id;
	uint32_t n; /* 1 .. 4096 */
	uint32_t reserved; /* 0 */
};

/* PREFILLED: the first token and, after this, nparams bytes of disaggregated params. */
struct shm_lane_prefilled {
	uint64_t request_id;
	uint32_t first_token;
	uint32_t nparams; /* 0 .. SHM_LANE_MAX_PARAMS */
};

/* DONE: the stream ended normally. */
struct shm_lane_done {
	uint64_t request_id;
	uint32_t finish_reason; /* 0 stop, 1 length */
	uint32_t reserved;	/* 0 */
};

/* ERROR: the request failed; then len bytes of message. */
struct shm_lane_error {
	uint64_t request_id;
	int32_t error; /* a negative errno, -4095 .. -1 */
	uint32_t len;  /* 0 .. SHM_LANE_MAX_ERROR */
};

#define SHM_LANE_MAX_TOKENS_PER_RECORD 4096u

_Static_assert(sizeof(struct shm_lane_request) == 48, "lane ABI");
_Static_assert(offsetof(struct shm_lane_request, room_id) == 32, "lane ABI");
_Static_assert(offsetof(struct shm_lane_request, nsampling) == 40, "lane ABI");
_Static_assert(offsetof(struct shm_lane_request, reserved) == 44, "lane ABI");
_Static_assert(sizeof(struct shm_lane_ref) == 8, "lane ABI");
_Static_assert(sizeof(struct shm_lane_tokens) == 16, "lane ABI");
_Static_assert(sizeof(struct shm_lane_prefilled) == 16, "lane ABI");
_Static_assert(sizeof(struct shm_lane_done) == 16, "lane ABI");
_Static_assert(sizeof(struct shm_lane_error) == 16, "lane ABI");

/* Bytes @n rounded up to a multiple of 8. */
static inline uint64_t shm_lane_pad8(uint64_t n)
{
	return (n + 7) & ~7ull;
}

/* Bytes of a REQUEST with @ntokens tokens, @nsampling bytes of sampling parameters and
 * @nparams bytes of params. */
static inline uint64_t shm_lane_request_bytes(uint32_t ntokens, uint32_t nsampling,
					      uint32_t nparams)
{
	return sizeof(struct shm_lane_request) + shm_lane_pad8(4ull * ntokens) +
	       shm_lane_pad8(nsampling) + nparams;
}

/* A checked REQUEST: the fixed part copied out, pointers into the record for the rest. */
struct shm_lane_request_view {
	struct shm_lane_request req;
	const uint32_t *tokens;	 /* in shared memory: copy what must not change under you */
	const uint8_t *sampling; /* req.nsampling bytes, 8-byte aligned */
	const uint8_t *params;
};

/**
 * shm_lane_check_request - check a REQUEST record of @len bytes at @p.
 *
 * Returns 0 with @v filled, or -EBADMSG: a length that is not exactly what the counts say, a
 * count out of range, an unknown mode, params on a request that is not in decode mode, or a
 * reserved field that is not 0.
 */
static inline int shm_lane_check_request(const uint8_t *p, uint32_t len,
					 struct shm_lane_request_view *v)
{
	if (len < sizeof(v->req))
		return -EBADMSG;
	memcpy(&v->req, p, sizeof(v->req)); /* read once */
	if (!v->req.ntokens || v->req.ntokens > SHM_LANE_MAX_TOKENS ||
	    v->req.nsampling > SHM_LANE_MAX_SAMPLING || v->req.reserved ||
	    v->req.nparams > SHM_LANE_MAX_PARAMS || v->req.mode > SHM_LANE_DECODE ||
	    (v->req.nparams && v->req.mode != SHM_LANE_DECODE) ||
	    len != shm_lane_request_bytes(v->req.ntokens, v->req.nsampling, v->req.nparams))
		return -EBADMSG;
	v->tokens = (const uint32_t *)(p + sizeof(v->req));
	v->sampling = p + sizeof(v->req) + shm_lane_pad8(4ull * v->req.ntokens);
	v->params = p + len - v->req.nparams;
	return 0;
}

/**
 * shm_lane_put_request - router: write a REQUEST into lane ring @r (commit; publish is yours).
 * @req: the fixed part; its reserved field is written as 0 whatever it holds.
 * @tokens: req->ntokens prompt tokens.
 * @sampling: req->nsampling bytes of sampling parameters, or NULL when there are none.
 * @params: req->nparams bytes (decode mode), or NULL.
 *
 * Returns 0, -ENOBUFS when the ring is full (publish, wait, try again), -E2BIG when the request
 * could never fit the ring, -EINVAL for counts out of range, -EBADMSG for a broken ring.
 */
static inline int shm_lane_put_request(struct shm_ring *r, const struct shm_lane_request *req,
				       const uint32_t *tokens, const void *sampling,
				       const void *params)
{
	uint64_t len = shm_lane_request_bytes(req->ntokens, req->nsampling, req->nparams);
	uint64_t toks = 4ull * req->ntokens, at = sizeof(*req) + shm_lane_pad8(toks);
	struct shm_lane_request fixed = *req;
	uint8_t *p;
	int err;

	if (!req->ntokens || req->ntokens > SHM_LANE_MAX_TOKENS || !tokens ||
	    req->nsampling > SHM_LANE_MAX_SAMPLING || (req->nsampling && !sampling) ||
	    req->nparams > SHM_LANE_MAX_PARAMS || req->mode > SHM_LANE_DECODE ||
	    (req->nparams && (req->mode != SHM_LANE_DECODE || !params)))
		return -EINVAL;
	if (len > shm_ring_max_payload(r->size))
		return -E2BIG;
	p = shm_ring_reserve(r, SHM_LANE_REQUEST, 0, (uint32_t)len, &err);
	if (!p)
		return err;
	fixed.reserved = 0;
	memcpy(p, &fixed, sizeof(fixed));
	memcpy(p + sizeof(fixed), tokens, toks);
	/* The padding is written too: the ring's bytes are whatever an earlier record left. */
	memset(p + sizeof(fixed) + toks, 0, at - sizeof(fixed) - toks);
	if (req->nsampling && sampling) /* checked above; this says it to the compiler */
		memcpy(p + at, sampling, req->nsampling);
	memset(p + at + req->nsampling, 0, shm_lane_pad8(req->nsampling) - req->nsampling);
	if (req->nparams && params)
		memcpy(p + len - req->nparams, params, req->nparams);
	shm_ring_commit(r);
	return 0;
}

/* An answer as the router reads it: the fixed part copied out, pointers for the rest. */
struct shm_lane_answer {
	uint16_t type;	     /* enum shm_lane_type */
	uint64_t request_id;
	uint32_t n;	     /* TOKENS: tokens; PREFILLED: params bytes; ERROR: message bytes */
	uint32_t value;	     /* PREFILLED: first token; DONE: finish reason; ERROR: -errno */
	const uint8_t *data; /* the tokens, params or message, in shared memory */
};

/**
 * shm_lane_check_answer - check a worker's record (@type, @len bytes at @p).
 *
 * Returns 0 with @a filled, or -EBADMSG: an unknown type, or a length that is not exactly what
 * the counts say, or a count out of range, or a reserved field that is not 0.
 */
static inline int shm_lane_check_answer(uint16_t type, const uint8_t *p, uint32_t len,
					struct shm_lane_answer *a)
{
	union {
		struct shm_lane_tokens t;
		struct shm_lane_prefilled f;
		struct shm_lane_done d;
		struct shm_lane_error e;
	} u;

	if (len < 16)
		return -EBADMSG;
	memcpy(&u, p, 16); /* every answer's fixed part is 16 bytes; read once */
	a->type = type;
	a->data = p + 16;
	memcpy(&a->request_id, p, sizeof(a->request_id));
	switch (type) {
	case SHM_LANE_TOKENS:
		a->n = u.t.n;
		a->value = 0;
		return u.t.n && u.t.n <= SHM_LANE_MAX_TOKENS_PER_RECORD && !u.t.reserved &&
			       len == 16 + 4ull * u.t.n
			   ? 0
			   : -EBADMSG;
	case SHM_LANE_PREFILLED:
		a->n = u.f.nparams;
		a->value = u.f.first_token;
		return u.f.nparams <= SHM_LANE_MAX_PARAMS && len == 16 + (uint64_t)u.f.nparams
			   ? 0
			   : -EBADMSG;
	case SHM_LANE_DONE:
		a->n = 0;
		a->value = u.d.finish_reason;
		return len == 16 && !u.d.reserved && u.d.finish_reason <= 1 ? 0 : -EBADMSG;
	case SHM_LANE_ERROR:
		a->n = u.e.len;
		a->value = (uint32_t)u.e.error;
		return u.e.error < 0 && u.e.error >= -4095 && u.e.len <= SHM_LANE_MAX_ERROR &&
			       len == 16 + (uint64_t)u.e.len
			   ? 0
			   : -EBADMSG;
	default:
		return -EBADMSG;
	}
}

#endif
