/*
 * Messages on the control socket between a worker and the router (Unix SOCK_SEQPACKET: one
 * message per packet, so a message's length is the packet's). An ABI between programs built
 * apart on one machine: a fixed header with a magic number and a version, fixed bodies whose
 * offsets are pinned by _Static_assert, and strings after the fixed part with their lengths in
 * it (no terminating NUL on the wire). The router decodes what a worker sends as hostile
 * (control/register.c): lengths must add up exactly, strings hold no NUL.
 */
#ifndef PD_SHM_PROTO_H
#define PD_SHM_PROTO_H

#include <stddef.h>
#include <stdint.h>

#define PDW_MAGIC 0x57445050u /* "PPDW", little-endian */
#define PDW_VERSION 1u
#define PDW_MSG_MAX 65536u /* largest message either side sends */

enum pdw_msg_type {
	PDW_REGISTER = 1,     /* worker -> router: struct pdw_register + strings */
	PDW_REGISTERED = 2,   /* router -> worker: struct pdw_registered, the mailbox fd attached */
	PDW_REFUSED = 3,      /* router -> worker: struct pdw_refused + reason */
	PDW_DUMP = 4,	      /* router -> worker, header only: our copy of your cache has a
			       * hole (an event was lost); send CLEARED, then STORED for all of it */
};

/* The registry's terms as a worker writes them (the router's dataplane/route.h agrees). */
enum pdw_worker_type { PDW_PREFILL, PDW_DECODE, PDW_AGGREGATED };
enum pdw_model_type { PDW_MODEL_CHAT, PDW_MODEL_COMPLETIONS, PDW_MODEL_EMPTY };
enum pdw_enforcement { PDW_TRANSFER_NONE, PDW_TRANSFER_PREFERRED, PDW_TRANSFER_REQUIRED };
#define PDW_NEEDS_PREFILL 1u /* a decode worker */
#define PDW_NEEDS_DECODE 2u  /* a prefill worker */

struct pdw_hdr {
	uint32_t magic;
	uint16_t version;
	uint16_t type; /* enum pdw_msg_type */
	uint32_t len;  /* bytes of the whole message, header included */
	uint32_t seq;  /* the sender's message number; a reply carries the request's */
};

/* One topology domain on the wire: the name's and the value's bytes follow, in that order. */
struct pdw_domain {
	uint16_t name_len;
	uint16_t value_len;
};

/*
 * REGISTER: every field of the registry (dataplane/route.h, struct rt_worker_spec). After the
 * fixed part: model_len bytes of model name, endpoint_len of endpoint name, transfer_len of
 * transfer domain name (0: the router's rule), then ndomains times a struct pdw_domain and its
 * two strings.
 */
struct pdw_register {
	uint32_t worker_type; /* enum pdw_worker_type */
	uint32_t model_type;  /* enum pdw_model_type */
	uint32_t needs;	      /* PDW_NEEDS_* */
	uint32_t block_size;
	uint64_t kv_capacity_blocks;
	uint32_t max_batched_tokens;
	uint32_t dp_rank_start;
	uint32_t dp_ranks;
	uint32_t transfer_enforcement; /* enum pdw_enforcement */
	double preferred_weight;
	uint16_t model_len;
	uint16_t endpoint_len;
	uint16_t transfer_len;
	uint16_t ndomains;
};

/* REGISTERED: the worker's id and its mailbox (the memfd travels as SCM_RIGHTS). */
struct pdw_registered {
	uint32_t worker;   /* the router's id for this worker */
	uint32_t reserved; /* 0 */
	uint64_t generation; /* as in the mailbox header */
};

/* REFUSED: a negative errno and, after it, reason_len bytes the worker can print. */
struct pdw_refused {
	int32_t error;
	uint16_t reason_len;
	uint16_t reserved; /* 0 */
};

/* What a worker registers, for pdw_register_encode(); strings NUL-terminated, may be NULL. */
struct pdw_register_args {
	struct pdw_register fixed; /* the *_len and ndomains fields are filled in by the encoder */
	const char *model;
	const char *endpoint;
	const char *transfer_domain; /* NULL: the router's rule */
	const char *const *domain_names;
	const char *const *domain_values;
	uint16_t ndomains;
};

/**
 * pdw_register_encode - a REGISTER message for @a into @buf.
 * @cap: room in @buf.
 * @seq: the message number.
 *
 * Returns the message's length, -EINVAL when @a has domains without names or values, or
 * -E2BIG when a string is longer than 65,535 bytes or the message would not fit @cap or
 * PDW_MSG_MAX.
 */
long pdw_register_encode(void *buf, size_t cap, const struct pdw_register_args *a, uint32_t seq);

_Static_assert(sizeof(struct pdw_hdr) == 16, "control protocol ABI");
_Static_assert(sizeof(struct pdw_domain) == 4, "control protocol ABI");
_Static_assert(offsetof(struct pdw_register, kv_capacity_blocks) == 16, "control protocol ABI");
_Static_assert(offsetof(struct pdw_register, preferred_weight) == 40, "control protocol ABI");
_Static_assert(offsetof(struct pdw_register, model_len) == 48, "control protocol ABI");
_Static_assert(sizeof(struct pdw_register) == 56, "control protocol ABI");
_Static_assert(sizeof(struct pdw_registered) == 16, "control protocol ABI");
_Static_assert(sizeof(struct pdw_refused) == 8, "control protocol ABI");

#endif
