/* Encoding control-socket messages (proto.h): the worker's side of the protocol. */
#include <errno.h>
#include <string.h>

#include "proto.h"

struct out {
	unsigned char *buf;
	size_t cap, len;
	int err;
};

static void put(struct out *o, const void *p, size_t n)
{
	if (!n)
		return;
	if (o->err || n > o->cap - o->len) {
		o->err = -E2BIG;
		return;
	}
	memcpy(o->buf + o->len, p, n);
	o->len += n;
}

/* Length of @s on the wire (0 for NULL); sets o->err when it does not fit a u16. */
static uint16_t wire_len(struct out *o, const char *s)
{
	size_t n = s ? strlen(s) : 0;

	if (n > UINT16_MAX)
		o->err = -E2BIG;
	return (uint16_t)n;
}

long pdw_register_encode(void *buf, size_t cap, const struct pdw_register_args *a, uint32_t seq)
{
	struct out o = {.buf = buf, .cap = cap < PDW_MSG_MAX ? cap : PDW_MSG_MAX};
	struct pdw_register reg = a->fixed;
	struct pdw_hdr hdr = {.magic = PDW_MAGIC, .version = PDW_VERSION, .type = PDW_REGISTER,
			      .seq = seq};

	if (a->ndomains && (!a->domain_names || !a->domain_values))
		return -EINVAL;
	for (uint16_t i = 0; i < a->ndomains; i++)
		if (!a->domain_names[i] || !a->domain_values[i])
			return -EINVAL;
	reg.model_len = wire_len(&o, a->model);
	reg.endpoint_len = wire_len(&o, a->endpoint);
	reg.transfer_len = wire_len(&o, a->transfer_domain);
	reg.ndomains = a->ndomains;
	put(&o, &hdr, sizeof(hdr));
	put(&o, &reg, sizeof(reg));
	put(&o, a->model, reg.model_len);
	put(&o, a->endpoint, reg.endpoint_len);
	put(&o, a->transfer_domain, reg.transfer_len);
	for (uint16_t i = 0; i < a->ndomains; i++) {
		struct pdw_domain d = {wire_len(&o, a->domain_names[i]),
				       wire_len(&o, a->domain_values[i])};

		put(&o, &d, sizeof(d));
		put(&o, a->domain_names[i], d.name_len);
		put(&o, a->domain_values[i], d.value_len);
	}
	if (o.err)
		return o.err;
	hdr.len = (uint32_t)o.len;
	memcpy(buf, &hdr, sizeof(hdr));
	return (long)o.len;
}
