/*
 * pdclient.h - the client side of pdrouter: the wire format clients speak over TCP or a Unix
 * stream socket, and libpdclient, a small blocking client library.
 *
 * Frames are length-prefixed, little-endian, and every frame starts with struct pdc_hdr. A
 * client sends REQUEST and CANCEL frames and may have many requests in flight on one
 * connection; the router answers each request with frames carrying the client's own request
 * id: ROUTED, then TOKENS (streamed, or once at the end), then DONE; or ERROR at any point.
 * docs/protocol.md describes every field, error and limit. This header is installed as
 * <pdrouter/pdclient.h>.
 */
#ifndef PDROUTER_PDCLIENT_H
#define PDROUTER_PDCLIENT_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define PDC_MAGIC 0x4350u		 /* "PC", little-endian */
#define PDC_VERSION 1u
#define PDC_FRAME_MAX_DEFAULT (4u << 20) /* the router's default frame limit */
#define PDC_NAME_MAX 255u		 /* model, LoRA */
#define PDC_SALT_MAX 1024u		 /* cache salt */
#define PDC_SAMPLING_MAX 4096u		 /* sampling parameters, passed to the worker as they are */
#define PDC_ERROR_MAX 256u		 /* bytes of an error message */
#define PDC_NO_WORKER UINT32_MAX

enum pdc_type {
	PDC_REQUEST = 1, /* client -> router: struct pdc_request + strings + sampling + tokens */
	PDC_CANCEL = 2,	 /* client -> router: header only */
	PDC_ROUTED = 16, /* router -> client: struct pdc_routed */
	PDC_TOKENS = 17, /* router -> client: struct pdc_tokens + token ids */
	PDC_DONE = 18,	 /* router -> client: struct pdc_done; the request's last frame */
	PDC_ERROR = 19,	 /* router -> client: struct pdc_error + message; also a last frame */
};

/* Every frame: 16 bytes, then the type's body. */
struct pdc_hdr {
	uint32_t len;	 /* bytes of the whole frame, this header included */
	uint16_t magic;	 /* PDC_MAGIC */
	uint8_t version; /* PDC_VERSION */
	uint8_t type;	 /* enum pdc_type */
	uint64_t id;	 /* the client's request id; 0 in a connection-level ERROR */
};

/* REQUEST flags. */
#define PDC_STREAM 1u		/* send tokens as they come, not once at the end */
#define PDC_PEEK 2u		/* route only: answer ROUTED and change nothing */
#define PDC_ENFORCE_DISAGG 4u	/* fail rather than fall back to decode-only */
#define PDC_FLAGS_ALL 7u

/* REQUEST overrides of the router's policy: a set bit in override_set uses the field. */
#define PDC_OV_CREDIT 1u
#define PDC_OV_LOAD_SCALE 2u
#define PDC_OV_TEMPERATURE 4u
#define PDC_OV_KV_REUSE 8u
#define PDC_OV_PREFILL_TOKENS 16u
#define PDC_OV_ALL 31u

/*
 * REQUEST: then model_len bytes of model name, lora_len of LoRA name, salt_len of cache
 * salt, sampling_len of sampling parameters, zeros up to a multiple of 4 bytes, then ntokens
 * little-endian uint32 token ids. The frame's length must be exactly what these counts say.
 * The sampling parameters are opaque to the router (JSON, or an engine's own encoding): it
 * hands them to every worker that serves the request, byte for byte.
 */
struct pdc_request {
	uint32_t ntokens;    /* 1 .. the router's prompt limit */
	uint32_t max_tokens; /* tokens to generate, >= 1 */
	uint32_t flags;	     /* PDC_STREAM | PDC_PEEK | PDC_ENFORCE_DISAGG */
	uint16_t model_len;  /* 1 .. PDC_NAME_MAX */
	uint16_t lora_len;   /* 0 .. PDC_NAME_MAX */
	uint16_t salt_len;   /* 0 .. PDC_SALT_MAX */
	uint16_t sampling_len;	     /* 0 .. PDC_SAMPLING_MAX */
	uint32_t pin_worker;	     /* serve on this worker only, or PDC_NO_WORKER */
	uint32_t pin_dp_rank;	     /* its DP rank */
	uint32_t pin_prefill_worker; /* prefill on this worker only, or PDC_NO_WORKER */
	uint32_t pin_prefill_dp_rank;
	uint32_t override_set;	  /* PDC_OV_* */
	uint8_t kv_reuse;	  /* PDC_OV_KV_REUSE: 0 or 1 */
	uint8_t prefill_tokens;	  /* PDC_OV_PREFILL_TOKENS: 0 or 1 */
	uint16_t reserved2;	  /* 0 */
	uint32_t reserved3;	  /* 0; aligns the overrides */
	double overlap_score_credit; /* PDC_OV_CREDIT: >= 0 */
	double prefill_load_scale;   /* PDC_OV_LOAD_SCALE: >= 0 */
	double temperature;	     /* PDC_OV_TEMPERATURE: >= 0 */
};

/* How a request was planned. */
enum pdc_plan {
	PDC_PLAN_AGGREGATED = 0, /* one worker prefills and decodes */
	PDC_PLAN_DISAGG = 1,	 /* prefill worker, then decode worker */
	PDC_PLAN_FALLBACK = 2,	 /* disaggregated model served decode-only */
	PDC_PLAN_BOOTSTRAP = 3,	 /* both chosen up front */
};

/*
 * ROUTED: where the request went, sent once the worker that generates its tokens is chosen
 * (for a peek: the decision, and the request's last frame).
 */
struct pdc_routed {
	uint32_t plan;		     /* enum pdc_plan */
	uint32_t prefill_worker;     /* PDC_NO_WORKER when there was no prefill stage */
	uint32_t prefill_dp_rank;
	uint32_t worker;	     /* the decode or aggregated worker; PDC_NO_WORKER in a
				      * disaggregated peek, where decode is chosen later */
	uint32_t dp_rank;
	uint32_t overlap_blocks;     /* leading prompt blocks the (prefill) worker held */
};

/* TOKENS: then n little-endian uint32 token ids. */
struct pdc_tokens {
	uint32_t n;
	uint32_t reserved; /* 0 */
};

enum pdc_finish { PDC_FINISH_STOP = 0, PDC_FINISH_LENGTH = 1, PDC_FINISH_CANCELLED = 2 };

/* DONE: the request ended. */
struct pdc_done {
	uint32_t finish_reason;	    /* enum pdc_finish */
	uint32_t prompt_tokens;
	uint32_t cached_tokens;	    /* prompt tokens the serving worker held (overlap) */
	uint32_t completion_tokens;
};

/* ERROR: then len bytes of message (no NUL). error is a negative errno, docs/protocol.md. */
struct pdc_error {
	int32_t error;
	uint32_t len; /* 0 .. PDC_ERROR_MAX */
};

_Static_assert(sizeof(struct pdc_hdr) == 16, "pdclient ABI");
_Static_assert(sizeof(struct pdc_request) == 72, "pdclient ABI");
_Static_assert(offsetof(struct pdc_request, sampling_len) == 18, "pdclient ABI");
_Static_assert(offsetof(struct pdc_request, overlap_score_credit) == 48, "pdclient ABI");
_Static_assert(sizeof(struct pdc_routed) == 24, "pdclient ABI");
_Static_assert(sizeof(struct pdc_tokens) == 8, "pdclient ABI");
_Static_assert(sizeof(struct pdc_done) == 16, "pdclient ABI");
_Static_assert(sizeof(struct pdc_error) == 8, "pdclient ABI");

/* ---- Encoding and decoding, for clients and tests; no I/O. ---- */

/* What a client asks for; strings NUL-terminated (the frame carries them without). */
struct pdc_request_args {
	uint64_t id;
	const char *model;
	const char *lora;	/* NULL: none */
	const char *cache_salt; /* NULL: none */
	const void *sampling;	/* sampling_len bytes for the worker, any bytes; NULL: none */
	uint32_t sampling_len;	/* 0 .. PDC_SAMPLING_MAX */
	const uint32_t *tokens;
	uint32_t ntokens;
	uint32_t max_tokens;
	uint32_t flags;
	struct pdc_request fixed; /* pins and overrides; the counts and flags above win */
};

/* Defaults for the fixed part: no pins, no overrides. */
void pdc_request_defaults(struct pdc_request *r);

/* Bytes of the REQUEST frame for @a. */
size_t pdc_request_bytes(const struct pdc_request_args *a);

/**
 * pdc_request_encode - write the REQUEST frame for @a into @buf.
 *
 * Returns its length, or -EINVAL (a string or count out of range, sampling_len over
 * PDC_SAMPLING_MAX or without sampling bytes) or -ENOBUFS (@cap too small).
 */
long pdc_request_encode(void *buf, size_t cap, const struct pdc_request_args *a);

/* Write a CANCEL frame for request @id into @buf (16 bytes). */
void pdc_cancel_encode(void *buf, uint64_t id);

/* A decoded answer; pointers point into the frame. */
struct pdc_event {
	uint8_t type; /* enum pdc_type: ROUTED, TOKENS, DONE or ERROR */
	uint64_t id;
	union {
		struct pdc_routed routed;
		struct {
			uint32_t n;
			const uint8_t *ids; /* n little-endian uint32, maybe unaligned */
		} tokens;
		struct pdc_done done;
		struct {
			int32_t error;
			uint32_t len;
			const char *msg;
		} error;
	};
};

/**
 * pdc_event_decode - decode the answer frame of @len bytes at @buf (its header's length).
 *
 * Returns 0 or -EBADMSG: a header, type or length that is not a valid answer's.
 */
int pdc_event_decode(const void *buf, size_t len, struct pdc_event *ev);

/* ---- libpdclient: one blocking connection. ---- */

struct pdc_client;

/**
 * pdc_connect - connect to a router at @addr: "unix:/path", "/path", or "host:port" (TCP).
 *
 * Returns 0 with *@out set, -EINVAL for an address it cannot parse, -ENOMEM, or the negative
 * errno of getaddrinfo/socket/connect.
 */
int pdc_connect(const char *addr, struct pdc_client **out);

/* Send a REQUEST. Returns 0, -EINVAL as pdc_request_encode(), or a negative send() errno. */
int pdc_send(struct pdc_client *c, const struct pdc_request_args *a);

/* Send a CANCEL for request @id. Returns 0 or a negative errno. */
int pdc_cancel(struct pdc_client *c, uint64_t id);

/**
 * pdc_next - wait up to @timeout_ms (-1: forever) for the next answer frame.
 * @ev: valid until the next call on @c.
 *
 * Returns 0, -ETIMEDOUT, -ECONNRESET when the router closed the connection, -EBADMSG for a
 * frame that does not decode (the connection is unusable then), or a negative recv() errno.
 */
int pdc_next(struct pdc_client *c, struct pdc_event *ev, int timeout_ms);

/* The connection's descriptor, for poll(). */
int pdc_fd(const struct pdc_client *c);

/* Close the connection; the router cancels whatever is still in flight. */
void pdc_close(struct pdc_client *c);

#ifdef __cplusplus
}
#endif
#endif
