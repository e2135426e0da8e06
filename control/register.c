/*
 * Decoding REGISTER messages (register.h). Every length comes from the worker: each is checked
 * against what is left of the packet before the bytes it covers are copied, and the message
 * must end exactly where its last string does.
 */
#include <errno.h>
#include <string.h>

#include "register.h"
#include "refuse.h"

/* Workers write the protocol's names for the registry's terms: they must be the same numbers. */
#define SAME(a, b) ((int)(a) == (int)(b))
_Static_assert(SAME(PDW_PREFILL, RT_PREFILL) && SAME(PDW_DECODE, RT_DECODE) &&
		       SAME(PDW_AGGREGATED, RT_AGGREGATED),
	       "worker types");
_Static_assert(SAME(PDW_MODEL_CHAT, RT_MODEL_CHAT) &&
		       SAME(PDW_MODEL_COMPLETIONS, RT_MODEL_COMPLETIONS) &&
		       SAME(PDW_MODEL_EMPTY, RT_MODEL_EMPTY),
	       "model types");
_Static_assert(SAME(PDW_NEEDS_PREFILL, RT_NEEDS_PREFILL) &&
		       SAME(PDW_NEEDS_DECODE, RT_NEEDS_DECODE),
	       "needs");
_Static_assert(SAME(PDW_TRANSFER_NONE, RT_TRANSFER_NONE) &&
		       SAME(PDW_TRANSFER_PREFERRED, RT_TRANSFER_PREFERRED) &&
		       SAME(PDW_TRANSFER_REQUIRED, RT_TRANSFER_REQUIRED),
	       "transfer enforcement");
#undef SAME

struct in {
	const unsigned char *p;
	size_t left;
};

/* Take @n bytes into @dst, or fail when the packet has fewer left. */
static int take(struct in *in, void *dst, size_t n)
{
	if (n > in->left)
		return -EBADMSG;
	memcpy(dst, in->p, n);
	in->p += n;
	in->left -= n;
	return 0;
}

/* Take a string of @n wire bytes into @dst (room for RT_NAME_MAX + 1), NUL-terminated. */
static int take_string(struct in *in, char *dst, uint16_t n, char *err, size_t errlen)
{
	if (n > in->left) /* a lie about the packet first: that one ends the connection */
		return dp_refuse(err, errlen, -EBADMSG, "message shorter than its strings");
	if (n > RT_NAME_MAX)
		return dp_refuse(err, errlen, -EINVAL, "a name of %u bytes: at most %u", n,
				 RT_NAME_MAX);
	take(in, dst, n);
	dst[n] = '\0';
	if (memchr(dst, '\0', n))
		return dp_refuse(err, errlen, -EBADMSG, "a name holds a NUL byte");
	return 0;
}

static int decode_header(struct ctl_registration *r, struct in *in, size_t len, char *err,
			 size_t errlen)
{
	struct pdw_hdr h;

	if (take(in, &h, sizeof(h)))
		return dp_refuse(err, errlen, -EBADMSG, "not a pdrouter control message");
	r->seq = h.seq;
	if (h.magic != PDW_MAGIC)
		return dp_refuse(err, errlen, -EBADMSG, "not a pdrouter control message");
	if (h.version != PDW_VERSION)
		return dp_refuse(err, errlen, -EPROTONOSUPPORT,
				 "protocol version %u, this router speaks %u", h.version,
				 PDW_VERSION);
	if (h.type != PDW_REGISTER || h.len != len)
		return dp_refuse(err, errlen, -EBADMSG, "not a REGISTER message of %zu bytes",
				 len);
	return 0;
}

static int decode_domains(struct ctl_registration *r, struct in *in, uint16_t n, char *err,
			  size_t errlen)
{
	int rc = 0;

	if (n > RT_DOMAIN_KEYS)
		return dp_refuse(err, errlen, -EINVAL, "%u topology domains: at most %u", n,
				 RT_DOMAIN_KEYS);
	for (uint16_t i = 0; i < n && !rc; i++) {
		struct pdw_domain d;

		if (take(in, &d, sizeof(d)))
			return dp_refuse(err, errlen, -EBADMSG, "message shorter than its domains");
		rc = take_string(in, r->names[i], d.name_len, err, errlen);
		if (!rc)
			rc = take_string(in, r->values[i], d.value_len, err, errlen);
		r->domains[i] = (struct rt_domain){r->names[i], r->values[i]};
	}
	return rc;
}

int ctl_registration_decode(struct ctl_registration *r, const void *msg, size_t len, char *err,
			    size_t errlen)
{
	struct in in = {msg, len};
	struct pdw_register w;
	int rc;

	memset(r, 0, sizeof(*r));
	rc = decode_header(r, &in, len, err, errlen);
	if (rc)
		return rc;
	if (take(&in, &w, sizeof(w)))
		return dp_refuse(err, errlen, -EBADMSG, "REGISTER shorter than its fixed part");
	rc = take_string(&in, r->model, w.model_len, err, errlen);
	if (!rc)
		rc = take_string(&in, r->endpoint, w.endpoint_len, err, errlen);
	if (!rc)
		rc = take_string(&in, r->transfer, w.transfer_len, err, errlen);
	if (!rc)
		rc = decode_domains(r, &in, w.ndomains, err, errlen);
	if (!rc && in.left)
		rc = dp_refuse(err, errlen, -EBADMSG, "%zu bytes after the last string", in.left);
	if (rc)
		return rc;
	r->spec = (struct rt_worker_spec){
	    .model = r->model,
	    .type = (enum rt_worker_type)w.worker_type,
	    .model_type = (enum rt_model_type)w.model_type,
	    .needs = w.needs,
	    .block_size = w.block_size,
	    .kv_capacity_blocks = w.kv_capacity_blocks,
	    .max_batched_tokens = w.max_batched_tokens,
	    .dp_rank_start = w.dp_rank_start,
	    .dp_ranks = w.dp_ranks,
	    .domains = r->domains,
	    .ndomains = w.ndomains,
	    .transfer = {.domain = w.transfer_len ? r->transfer : NULL,
			 .enforcement = (enum rt_enforcement)w.transfer_enforcement,
			 .preferred_weight = w.preferred_weight},
	};
	return 0;
}
