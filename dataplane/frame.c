/*
 * Client frames, the router's side: every count a client writes is checked against the frame's
 * length before anything after the fixed part is read.
 */
#include <errno.h>
#include <math.h>
#include <stdbool.h>
#include <string.h>

#include "frame.h"

long dp_frame_length(const void *p, size_t avail, uint32_t max)
{
	struct pdc_hdr h;

	if (avail < sizeof(h))
		return 0;
	memcpy(&h, p, sizeof(h));
	if (h.magic != PDC_MAGIC || h.version != PDC_VERSION || h.len < sizeof(h))
		return -EBADMSG;
	if (h.len > max)
		return -EMSGSIZE;
	return h.len;
}

static bool override_ok(double v)
{
	return isfinite(v) && v >= 0;
}

/* Is a string of @n bytes free of NUL (names become C strings later)? */
static bool no_nul(const char *s, size_t n)
{
	return !memchr(s, 0, n);
}

int dp_frame_decode_request(const void *p, size_t len, uint32_t max_tokens_prompt,
			    struct dp_frame_request *out, const char **why)
{
	const uint8_t *b = p;
	struct pdc_hdr h;
	struct pdc_request *r = &out->fixed;
	size_t strings, off;

	if (len < sizeof(h) + sizeof(*r)) {
		*why = "request frame shorter than its fixed part";
		return -EBADMSG;
	}
	memcpy(&h, b, sizeof(h));
	memcpy(r, b + sizeof(h), sizeof(*r)); /* read once: the counts cannot change after */
	out->id = h.id;
	strings = (size_t)r->model_len + r->lora_len + r->salt_len;
	/* The sampling length counts here even over its limit: a frame that adds up keeps the
	 * connection, and the request alone is refused below. */
	off = sizeof(h) + sizeof(*r) + ((strings + r->sampling_len + 3) & ~(size_t)3);
	if (r->model_len > PDC_NAME_MAX || r->lora_len > PDC_NAME_MAX ||
	    r->salt_len > PDC_SALT_MAX || len < off || (len - off) % 4 ||
	    (len - off) / 4 != r->ntokens) {
		*why = "request frame length does not match its counts";
		return -EBADMSG;
	}
	out->model = (const char *)b + sizeof(h) + sizeof(*r);
	out->lora = out->model + r->model_len;
	out->salt = out->lora + r->lora_len;
	out->sampling = (const uint8_t *)out->salt + r->salt_len;
	out->tokens = b + off;
	if (!r->model_len || !no_nul(out->model, strings)) {
		*why = "model name empty, or a NUL in a name";
		return -EINVAL;
	}
	if (r->sampling_len > PDC_SAMPLING_MAX) {
		*why = "sampling parameters longer than 4096 bytes";
		return -EINVAL;
	}
	if (!r->ntokens || !r->max_tokens) {
		*why = "a request needs prompt tokens and max_tokens >= 1";
		return -EINVAL;
	}
	if (r->ntokens > max_tokens_prompt) {
		*why = "prompt longer than the router's limit";
		return -E2BIG;
	}
	if (r->reserved2 || r->reserved3) {
		*why = "reserved fields must be 0 (a newer protocol version?)";
		return -EINVAL;
	}
	if ((r->flags & ~PDC_FLAGS_ALL) || (r->override_set & ~PDC_OV_ALL) || r->kv_reuse > 1 ||
	    r->prefill_tokens > 1 || !override_ok(r->overlap_score_credit) ||
	    !override_ok(r->prefill_load_scale) || !override_ok(r->temperature)) {
		*why = "unknown flag or override, or an override out of range";
		return -EINVAL;
	}
	return 0;
}

void dp_frame_header(void *p, uint8_t type, uint64_t id, uint32_t len)
{
	struct pdc_hdr h = {.len = len, .magic = PDC_MAGIC, .version = PDC_VERSION, .type = type,
			    .id = id};

	memcpy(p, &h, sizeof(h));
}

/* An error message's bytes on the wire: cut at PDC_ERROR_MAX. */
static size_t error_len(const char *msg)
{
	size_t n = strlen(msg);

	return n < PDC_ERROR_MAX ? n : PDC_ERROR_MAX;
}

size_t dp_frame_error_bytes(const char *msg)
{
	return DP_FRAME_BYTES(sizeof(struct pdc_error) + error_len(msg));
}

size_t dp_frame_error(void *p, uint64_t id, int error, const char *msg)
{
	size_t n = error_len(msg);
	struct pdc_error e = {.error = error, .len = (uint32_t)n};
	uint8_t *b = p;
	size_t len = DP_FRAME_BYTES(sizeof(e) + n);

	dp_frame_header(b, PDC_ERROR, id, (uint32_t)len);
	memcpy(b + sizeof(struct pdc_hdr), &e, sizeof(e));
	memcpy(b + sizeof(struct pdc_hdr) + sizeof(e), msg, n);
	return len;
}
