/*
 * Fuzz target for the client wire format: dp_frame_length() and dp_frame_decode_request()
 * (dataplane/frame.c), which read what a hostile client sends, and pdc_event_decode()
 * (dataplane/client.c), which reads what the router sends a client. LLVMFuzzerTestOneInput()
 * gives the input, as one frame, to all three, and aborts when:
 *  - dp_frame_length() disagrees with a plain reference of the header rules, under the default
 *    limit and a small one;
 *  - dp_frame_decode_request() returns anything but 0, -EBADMSG, -EINVAL or -E2BIG, an error
 *    without a reason, or a different answer under a lower prompt limit than -E2BIG where the
 *    prompt is over it; or decodes a request whose strings, sampling parameters or tokens lie
 *    outside the frame or elsewhere than one after the other, whose token count does not match
 *    the frame's length, whose tokens are not 4-byte aligned in the frame, or whose counts,
 *    flags and overrides are out of range; or one that does not encode back
 *    (pdc_request_encode()) to the same bytes, up to the header's length and type and the bytes
 *    the decoder ignores (reserved fields, the padding after the sampling parameters);
 *  - pdc_event_decode() accepts what a plain reference of the answer rules refuses or the other
 *    way round, or hands out a token array or message that is not exactly the rest of the frame.
 * Every byte a decoder points at is read, and the input ends its heap block, so that a read
 * past the frame is an AddressSanitizer error.
 *
 * Two builds of this file:
 *  - fuzz_frame, a meson test in suite 'fuzz': main() below runs a fixed, seeded number of
 *    inputs (default 200,000): REQUEST frames pdc_request_encode() wrote from random fields,
 *    and ROUTED, TOKENS, DONE, ERROR and CANCEL frames, mutated (bit flips, truncation, the
 *    header's fields, the counts, the overrides, NULs in the strings or sampling parameters,
 *    bytes appended) or not; a
 *    frame left whole must decode (a request over the prompt limit, to -E2BIG).
 *    `fuzz_frame [-n INPUTS] [-s SEED] [FILE...]` runs FILE... instead (a crash to replay).
 *  - fuzz_frame_libfuzzer, with clang's libFuzzer only (not built by default, not a test):
 *      CC=clang meson setup /tmp/build-fuzz && ninja -C /tmp/build-fuzz tests/fuzz_frame_libfuzzer
 *      /tmp/build-fuzz/tests/fuzz_frame_libfuzzer -max_total_time=30
 *    It compiles dataplane/frame.c and dataplane/client.c itself, so the decoders carry the
 *    coverage instrumentation. A crash is saved as crash-<sha1> in the working directory;
 *    fuzz_frame FILE replays it.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <math.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "frame.h"
#include "pdclient.h"
#include "rng.h"

#include "fuzz_common.h"

const char t_fuzz_name[] = "fuzz_frame";

#define HDR sizeof(struct pdc_hdr)
#define FIXED (HDR + sizeof(struct pdc_request))
#define SMALL_MAX 256u /* a second frame limit for dp_frame_length() */
#define PROMPT_MAX 48u /* the decoder's prompt limit: under what requests are built with */
#define PROMPT_LOW 8u  /* and a lower one */
/* A REQUEST's bytes before its tokens, at their longest. */
#define HEAD_MAX (FIXED + 2 * PDC_NAME_MAX + PDC_SALT_MAX + PDC_SAMPLING_MAX + 3)

enum { O_LEN_OK, O_REQ_OK, O_REQ_BADMSG, O_REQ_INVAL, O_REQ_2BIG, O_EV_OK, O_EV_BAD, O_N };

static unsigned long outcome[O_N];
static volatile uint32_t sink;

static uint32_t get32(const uint8_t *p)
{
	return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

/* Read every byte of [p, p + n), so that AddressSanitizer sees a pointer past the frame. */
static void touch(const void *p, size_t n)
{
	const uint8_t *b = p;
	uint32_t s = 0;

	for (size_t i = 0; i < n; i++)
		s += b[i];
	sink += s;
}

/* The header rules, read byte by byte: what dp_frame_length() must return. */
static long ref_length(const uint8_t *p, size_t n, uint32_t max)
{
	uint32_t len;

	if (n < HDR)
		return 0;
	len = get32(p);
	if ((p[4] | p[5] << 8) != PDC_MAGIC || p[6] != PDC_VERSION || len < HDR)
		return -EBADMSG;
	return len > max ? -EMSGSIZE : (long)len;
}

static void check_length(const uint8_t *p, size_t n)
{
	static const uint32_t max[] = {PDC_FRAME_MAX_DEFAULT, SMALL_MAX, HDR, UINT32_MAX};

	for (size_t i = 0; i < sizeof(max) / sizeof(max[0]); i++) {
		long got = dp_frame_length(p, n, max[i]), want = ref_length(p, n, max[i]);

		if (got != want)
			t_fuzz_fail("dp_frame_length of %zu bytes, max %u: %ld, want %ld", n,
				    max[i], got, want);
	}
	outcome[O_LEN_OK] += ref_length(p, n, PDC_FRAME_MAX_DEFAULT) > 0;
}

static bool in_frame(const void *q, size_t len, const uint8_t *p, size_t n)
{
	const uint8_t *b = q;

	return b >= p && b <= p + n && len <= (size_t)(p + n - b);
}

static bool override_ok(double v)
{
	return isfinite(v) && v >= 0;
}

/* A decoded request re-encoded is the input, but for what the decoder does not look at. */
static void check_reencode(const struct dp_frame_request *d, const uint8_t *p, size_t n)
{
	static char model[PDC_NAME_MAX + 1], lora[PDC_NAME_MAX + 1], salt[PDC_SALT_MAX + 1];
	static uint8_t want[HEAD_MAX], *out;
	static uint32_t *tokens;
	static size_t out_cap;
	const struct pdc_request *r = &d->fixed;
	struct pdc_request_args a = {.id = d->id,
				     .model = model,
				     .lora = lora,
				     .cache_salt = salt,
				     .sampling = d->sampling, /* any bytes: copied as they are */
				     .sampling_len = r->sampling_len,
				     .ntokens = r->ntokens,
				     .max_tokens = r->max_tokens,
				     .flags = r->flags,
				     .fixed = *r};
	size_t head = (size_t)(d->tokens - p);
	size_t used = FIXED + r->model_len + r->lora_len + r->salt_len + r->sampling_len;
	long len;

	if (n > out_cap) {
		free(out);
		free(tokens);
		out_cap = n;
		out = malloc(out_cap);
		tokens = malloc(out_cap);
		if (!out || !tokens)
			t_fuzz_fail("out of memory");
	}
	/* The frame may sit at any address: its tokens go to an aligned array first. */
	memcpy(tokens, d->tokens, 4 * (size_t)r->ntokens);
	a.tokens = tokens;
	memcpy(model, d->model, r->model_len);
	model[r->model_len] = '\0';
	memcpy(lora, d->lora, r->lora_len);
	lora[r->lora_len] = '\0';
	memcpy(salt, d->salt, r->salt_len);
	salt[r->salt_len] = '\0';
	len = pdc_request_encode(out, out_cap, &a);
	if (len != (long)n)
		t_fuzz_fail("a request decoded from %zu bytes encodes to %ld", n, len);
	/* What the input should have been: its bytes with the header rewritten and the ignored
	 * bytes zeroed. */
	memcpy(want, p, head);
	dp_frame_header(want, PDC_REQUEST, d->id, (uint32_t)n);
	memset(want + HDR + offsetof(struct pdc_request, reserved2), 0, 2);
	memset(want + HDR + offsetof(struct pdc_request, reserved3), 0, 4);
	memset(want + used, 0, head - used);
	if (memcmp(out, want, head) || memcmp(out + head, p + head, n - head))
		t_fuzz_fail("a request decoded from %zu bytes encodes back to other bytes", n);
}

/* What a decoded request must be. */
static void check_request(const struct dp_frame_request *d, const uint8_t *p, size_t n)
{
	const struct pdc_request *r = &d->fixed;
	size_t strings = (size_t)r->model_len + r->lora_len + r->salt_len;

	if (d->model != (const char *)p + FIXED || d->lora != d->model + r->model_len ||
	    d->salt != d->lora + r->lora_len ||
	    d->sampling != (const uint8_t *)d->salt + r->salt_len)
		t_fuzz_fail("the strings are not where the frame has them");
	if (!in_frame(d->model, strings, p, n) || !in_frame(d->sampling, r->sampling_len, p, n) ||
	    !in_frame(d->tokens, 4 * (size_t)r->ntokens, p, n))
		t_fuzz_fail("a pointer past the frame");
	if (d->tokens + 4 * (size_t)r->ntokens != p + n || (d->tokens - p) % 4 ||
	    (size_t)(d->tokens - p) != FIXED + ((strings + r->sampling_len + 3) & ~(size_t)3))
		t_fuzz_fail("%u tokens do not end the frame of %zu bytes", r->ntokens, n);
	if (!r->model_len || r->model_len > PDC_NAME_MAX || r->lora_len > PDC_NAME_MAX ||
	    r->salt_len > PDC_SALT_MAX || r->sampling_len > PDC_SAMPLING_MAX ||
	    memchr(d->model, 0, strings))
		t_fuzz_fail("a string out of range decoded");
	if (!r->ntokens || r->ntokens > PROMPT_MAX || !r->max_tokens ||
	    (r->flags & ~PDC_FLAGS_ALL) || (r->override_set & ~PDC_OV_ALL) || r->kv_reuse > 1 ||
	    r->prefill_tokens > 1 || !override_ok(r->overlap_score_credit) ||
	    !override_ok(r->prefill_load_scale) || !override_ok(r->temperature))
		t_fuzz_fail("a count, flag or override out of range decoded");
	touch(d->model, strings);
	touch(d->sampling, r->sampling_len);
	touch(d->tokens, 4 * (size_t)r->ntokens);
	check_reencode(d, p, n);
}

static int check_decode_request(const uint8_t *p, size_t n)
{
	struct dp_frame_request d, low;
	const char *why = NULL, *why_low = NULL;
	int rc = dp_frame_decode_request(p, n, PROMPT_MAX, &d, &why);
	int rc_low = dp_frame_decode_request(p, n, PROMPT_LOW, &low, &why_low);

	if (rc && rc != -EBADMSG && rc != -EINVAL && rc != -E2BIG)
		t_fuzz_fail("dp_frame_decode_request of %zu bytes: %d", n, rc);
	if ((rc && (!why || !*why)) || (rc_low && (!why_low || !*why_low)))
		t_fuzz_fail("dp_frame_decode_request of %zu bytes: %d without a reason", n, rc);
	/* A lower limit changes only a decodable request's answer, and only to -E2BIG. */
	if (rc == -EBADMSG ? rc_low != -EBADMSG
			   : rc_low != rc && !(rc_low == -E2BIG && d.fixed.ntokens > PROMPT_LOW))
		t_fuzz_fail("%zu bytes: %d under the limit %u, %d under %u", n, rc, PROMPT_MAX,
			    rc_low, PROMPT_LOW);
	outcome[rc == 0		 ? O_REQ_OK
		: rc == -EBADMSG ? O_REQ_BADMSG
		: rc == -EINVAL	 ? O_REQ_INVAL
				 : O_REQ_2BIG]++;
	if (!rc)
		check_request(&d, p, n);
	return rc;
}

/* The answer rules, read byte by byte: does pdc_event_decode() accept the frame? */
static bool ref_event_ok(const uint8_t *p, size_t n)
{
	size_t body = n - HDR;

	if (n < HDR || n > UINT32_MAX || ref_length(p, n, UINT32_MAX) != (long)n)
		return false;
	switch (p[7]) {
	case PDC_ROUTED:
		return body == sizeof(struct pdc_routed);
	case PDC_TOKENS:
		return body >= 8 && body - 8 == 4 * (uint64_t)get32(p + HDR);
	case PDC_DONE:
		return body == sizeof(struct pdc_done);
	case PDC_ERROR:
		return body >= 8 && get32(p + HDR + 4) <= PDC_ERROR_MAX &&
		       body - 8 == get32(p + HDR + 4);
	}
	return false;
}

static int check_event(const uint8_t *p, size_t n)
{
	struct pdc_event ev;
	int rc = pdc_event_decode(p, n, &ev);
	bool ok = ref_event_ok(p, n);

	if (rc && rc != -EBADMSG)
		t_fuzz_fail("pdc_event_decode of %zu bytes: %d", n, rc);
	if (!rc != ok)
		t_fuzz_fail("pdc_event_decode of %zu bytes: %d, the rules say %s", n, rc,
			    ok ? "valid" : "invalid");
	outcome[rc ? O_EV_BAD : O_EV_OK]++;
	if (rc)
		return rc;
	if (ev.type != p[7] || memcmp(&ev.id, p + 8, 8))
		t_fuzz_fail("the event's type or id is not the header's");
	if (ev.type == PDC_TOKENS) {
		if (ev.tokens.ids != p + HDR + 8 ||
		    ev.tokens.ids + 4 * (size_t)ev.tokens.n != p + n)
			t_fuzz_fail("%u tokens are not the rest of the frame", ev.tokens.n);
		touch(ev.tokens.ids, 4 * (size_t)ev.tokens.n);
	}
	if (ev.type == PDC_ERROR) {
		if ((const uint8_t *)ev.error.msg != p + HDR + 8 ||
		    (const uint8_t *)ev.error.msg + ev.error.len != p + n ||
		    ev.error.len > PDC_ERROR_MAX)
			t_fuzz_fail("an error message of %u bytes is not the rest of the frame",
				    ev.error.len);
		touch(ev.error.msg, ev.error.len);
	}
	return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	t_fuzz_set_input(data, size);
	check_length(data, size);
	check_decode_request(data, size);
	check_event(data, size);
	return 0;
}

#ifndef PD_LIBFUZZER

/* ---- The replay driver: frames a client or router wrote, then mutated; for meson test. ---- */

#define BUF (HEAD_MAX + 4 * 64 + 64)
#define MAX_TOKENS 64u

static struct t_rng rng;

/* A frame being built: its bytes, and what its whole form decodes to. */
struct input {
	uint8_t buf[BUF];
	size_t len;
	bool request; /* else an answer (or a CANCEL, which neither decoder takes) */
	bool valid;   /* an answer that decodes as built */
	int want;     /* what a request as built decodes to: 0, or -E2BIG over PROMPT_MAX */
};

/* A string of @n bytes, never NUL, mostly printable. */
static char *random_string(char *dst, size_t n)
{
	for (size_t i = 0; i < n; i++)
		dst[i] = (char)(t_rng_chance(&rng, 90) ? 0x21 + t_rng_below(&rng, 0x5E)
						       : 0x80 + t_rng_below(&rng, 0x80));
	dst[n] = '\0';
	return dst;
}

static uint32_t string_len(uint32_t max)
{
	uint32_t k = t_rng_below(&rng, 100);

	return k < 5 ? max : k < 40 ? 0 : 1 + t_rng_below(&rng, 12);
}

static double random_override(void)
{
	static const double v[] = {0.0, 0.5, 1.0, 2.0, 1e9, -0.0};

	return v[t_rng_below(&rng, sizeof(v) / sizeof(v[0]))];
}

/* Sampling parameters: none, a few bytes, or the most a frame may carry; any byte, NUL too. */
static uint32_t random_sampling(uint8_t *dst)
{
	uint32_t n = t_rng_chance(&rng, 50) ? 0 : string_len(PDC_SAMPLING_MAX);

	for (uint32_t i = 0; i < n; i++)
		dst[i] = (uint8_t)t_rng_next(&rng);
	return n;
}

static void generate_request(struct input *in)
{
	static char model[PDC_NAME_MAX + 1], lora[PDC_NAME_MAX + 1], salt[PDC_SALT_MAX + 1];
	static uint8_t sampling[PDC_SAMPLING_MAX];
	static uint32_t tokens[MAX_TOKENS];
	uint32_t ml = string_len(PDC_NAME_MAX);
	struct pdc_request_args a = {
	    .id = t_rng_next(&rng),
	    .model = random_string(model, ml ? ml : 1),
	    .lora = t_rng_chance(&rng, 50) ? random_string(lora, string_len(PDC_NAME_MAX)) : NULL,
	    .cache_salt =
		t_rng_chance(&rng, 50) ? random_string(salt, string_len(PDC_SALT_MAX)) : NULL,
	    .tokens = tokens,
	    .ntokens = 1 + t_rng_below(&rng, MAX_TOKENS),
	    .max_tokens = 1 + t_rng_below(&rng, 4096),
	    .flags = t_rng_below(&rng, PDC_FLAGS_ALL + 1),
	};
	long len;

	a.sampling = sampling;
	a.sampling_len = random_sampling(sampling);
	pdc_request_defaults(&a.fixed);
	if (t_rng_chance(&rng, 30)) {
		a.fixed.pin_worker = t_rng_below(&rng, 64);
		a.fixed.pin_dp_rank = t_rng_below(&rng, 8);
	}
	if (t_rng_chance(&rng, 30)) {
		a.fixed.override_set = t_rng_below(&rng, PDC_OV_ALL + 1);
		a.fixed.kv_reuse = (uint8_t)t_rng_below(&rng, 2);
		a.fixed.prefill_tokens = (uint8_t)t_rng_below(&rng, 2);
		a.fixed.overlap_score_credit = random_override();
		a.fixed.prefill_load_scale = random_override();
		a.fixed.temperature = random_override();
	}
	for (uint32_t i = 0; i < a.ntokens; i++)
		tokens[i] = (uint32_t)t_rng_next(&rng);
	len = pdc_request_encode(in->buf, sizeof(in->buf), &a);
	if (len < (long)FIXED)
		t_fuzz_fail("pdc_request_encode: %ld", len);
	in->len = (size_t)len;
	in->request = true;
	in->want = a.ntokens > PROMPT_MAX ? -E2BIG : 0;
}

static void generate_answer(struct input *in)
{
	static const uint8_t types[] = {PDC_ROUTED, PDC_TOKENS, PDC_DONE, PDC_ERROR, PDC_CANCEL};
	uint8_t type = types[t_rng_below(&rng, sizeof(types) / sizeof(types[0]))];
	uint64_t id = t_rng_chance(&rng, 10) ? 0 : t_rng_next(&rng);
	uint32_t n = 0;
	size_t body = 0;

	for (size_t i = HDR; i < sizeof(in->buf); i++)
		in->buf[i] = (uint8_t)t_rng_next(&rng);
	switch (type) {
	case PDC_ROUTED:
		body = sizeof(struct pdc_routed);
		break;
	case PDC_TOKENS:
		n = t_rng_below(&rng, MAX_TOKENS);
		body = 8 + 4 * (size_t)n;
		break;
	case PDC_DONE:
		body = sizeof(struct pdc_done);
		break;
	case PDC_ERROR:
		n = t_rng_chance(&rng, 10) ? PDC_ERROR_MAX : t_rng_below(&rng, 40);
		body = 8 + n;
		memcpy(in->buf + HDR + 4, &n, 4);
		n = 0;
		break;
	}
	if (type == PDC_TOKENS) {
		memcpy(in->buf + HDR, &n, 4);
		memset(in->buf + HDR + 4, 0, 4);
	}
	in->len = HDR + body;
	dp_frame_header(in->buf, type, id, (uint32_t)in->len);
	in->request = false;
	in->valid = type != PDC_CANCEL;
}

static void put16(struct input *in, size_t at, uint16_t v)
{
	if (at + 2 <= in->len)
		memcpy(in->buf + at, &v, 2);
}

static void put32(struct input *in, size_t at, uint32_t v)
{
	if (at + 4 <= in->len)
		memcpy(in->buf + at, &v, 4);
}

static void put64(struct input *in, size_t at, uint64_t v)
{
	if (at + 8 <= in->len)
		memcpy(in->buf + at, &v, 8);
}

static uint32_t interesting32(uint32_t old)
{
	static const uint32_t v[] = {0,		 1,
				     2,		 3,
				     4,		 15,
				     16,	 17,
				     255,	 256,
				     1024,	 1025,
				     4096,	 4097,
				     PROMPT_LOW, PROMPT_LOW + 1,
				     PROMPT_MAX, PROMPT_MAX + 1,
				     0x3FFFFFFF, 0x40000000,
				     0x7FFFFFFF, 0xFFFFFFFF};

	switch (t_rng_below(&rng, 3)) {
	case 0:
		return old + t_rng_below(&rng, 9) - 4;
	case 1:
		return (uint32_t)t_rng_next(&rng);
	default:
		return v[t_rng_below(&rng, sizeof(v) / sizeof(v[0]))];
	}
}

#define REQ(field) (HDR + offsetof(struct pdc_request, field))

/* Rewrite one of a REQUEST's counts, flags or overrides. */
static void mutate_request_field(struct input *in)
{
	static const double odd[] = {-1.0, -1e-300, NAN, -NAN, INFINITY, -INFINITY, 0.0, -0.0};
	static const size_t u32s[] = {REQ(ntokens), REQ(max_tokens), REQ(flags), REQ(override_set)};
	static const size_t u16s[] = {REQ(model_len), REQ(lora_len), REQ(salt_len),
				      REQ(sampling_len)};
	static const size_t dbls[] = {REQ(overlap_score_credit), REQ(prefill_load_scale),
				      REQ(temperature)};
	uint32_t k = t_rng_below(&rng, 5);

	if (k == 0)
		put32(in, u32s[t_rng_below(&rng, 4)], interesting32(0));
	else if (k == 1) {
		size_t at = u16s[t_rng_below(&rng, 4)];
		uint16_t v = 0;

		if (at + 2 <= in->len)
			memcpy(&v, in->buf + at, 2);
		put16(in, at,
		      (uint16_t)(t_rng_chance(&rng, 50) ? v + t_rng_below(&rng, 9) - 4
							: interesting32(v)));
	} else if (k == 2) {
		double d = odd[t_rng_below(&rng, sizeof(odd) / sizeof(odd[0]))];
		uint64_t bits;

		memcpy(&bits, &d, 8);
		put64(in, dbls[t_rng_below(&rng, 3)], bits);
	} else if (k == 3 && in->len > REQ(kv_reuse) + 1) {
		in->buf[REQ(kv_reuse) + t_rng_below(&rng, 2)] = (uint8_t)t_rng_below(&rng, 4);
	} else if (in->len > FIXED) { /* a NUL among the strings, the sampling or the padding */
		in->buf[FIXED + t_rng_below(&rng, (uint32_t)(in->len - FIXED))] = 0;
	}
}

/* Rewrite an answer's count (TOKENS n, ERROR len). */
static void mutate_answer_field(struct input *in)
{
	size_t at = HDR + 4 * t_rng_below(&rng, 2);
	uint32_t v = 0;

	if (at + 4 <= in->len)
		memcpy(&v, in->buf + at, 4);
	put32(in, at, interesting32(v));
}

static void mutate_once(struct input *in)
{
	size_t at;

	switch (t_rng_below(&rng, 8)) {
	case 0: /* a bit anywhere */
		if (in->len) {
			at = t_rng_below(&rng, (uint32_t)in->len);
			in->buf[at] ^= (uint8_t)(1u << t_rng_below(&rng, 8));
		}
		break;
	case 1: /* truncation, the header agreeing or not */
		in->len = t_rng_below(&rng, (uint32_t)in->len + 1);
		if (t_rng_chance(&rng, 50))
			put32(in, 0, (uint32_t)in->len);
		break;
	case 2: /* bytes appended, the header agreeing or not */
		for (uint32_t k = 1 + t_rng_below(&rng, 8); k && in->len < BUF; k--)
			in->buf[in->len++] = (uint8_t)t_rng_next(&rng);
		if (t_rng_chance(&rng, 50))
			put32(in, 0, (uint32_t)in->len);
		break;
	case 3: /* the header's length, magic, version or type */
		at = t_rng_below(&rng, 4);
		if (at == 0)
			put32(in, 0, interesting32((uint32_t)in->len));
		else if (at == 1)
			put16(in, 4, (uint16_t)(PDC_MAGIC ^ 1u << t_rng_below(&rng, 16)));
		else if (in->len >= HDR)
			in->buf[4 + at] =
			    (uint8_t)(at == 2 ? t_rng_below(&rng, 3) : t_rng_below(&rng, 24));
		break;
	case 4:
	case 5:
	case 6:
		if (in->request)
			mutate_request_field(in);
		else
			mutate_answer_field(in);
		break;
	default: /* a random byte anywhere */
		if (in->len)
			in->buf[t_rng_below(&rng, (uint32_t)in->len)] = (uint8_t)t_rng_next(&rng);
	}
}

/* Run @n bytes of @data from a heap block of their size, @off bytes into it, so that a read
 * past the frame meets AddressSanitizer's redzone. */
static void run_copy(const struct input *in, size_t off, bool whole)
{
	uint8_t *p = malloc(off + in->len + !(off + in->len));
	int rc_req, rc_ev;

	if (!p)
		t_fuzz_fail("out of memory");
	memcpy(p + off, in->buf, in->len);
	t_fuzz_set_input(p + off, in->len);
	check_length(p + off, in->len);
	rc_req = check_decode_request(p + off, in->len);
	rc_ev = check_event(p + off, in->len);
	if (whole && in->request && rc_req != in->want)
		t_fuzz_fail("a request as written: %d, want %d", rc_req, in->want);
	if (whole && !in->request && in->valid && rc_ev)
		t_fuzz_fail("an answer as written: %d", rc_ev);
	free(p);
}

int main(int argc, char **argv)
{
	int files;
	static struct input in;
	unsigned long inputs = 200000, whole = 0;
	uint64_t seed = 42;

	files = t_fuzz_begin(argc, argv, &inputs, &seed);
	if (files < 0)
		return 2;
	t_rng_seed(&rng, seed);
	for (t_fuzz_input_number = 0; t_fuzz_input_number < inputs; t_fuzz_input_number++) {
		bool mutated = t_rng_chance(&rng, 80);

		if (t_rng_chance(&rng, 60))
			generate_request(&in);
		else
			generate_answer(&in);
		for (uint32_t k = mutated ? 1 + t_rng_below(&rng, 3) : 0; k; k--)
			mutate_once(&in);
		run_copy(&in, t_fuzz_input_number % 8, !mutated);
		whole += !mutated;
	}
	printf("fuzz_frame: seed %llu; %lu whole; sound headers %lu; requests decoded %lu, "
	       "-EBADMSG %lu, -EINVAL %lu, -E2BIG %lu; answers decoded %lu, refused %lu\n",
	       (unsigned long long)seed, whole, outcome[O_LEN_OK], outcome[O_REQ_OK],
	       outcome[O_REQ_BADMSG], outcome[O_REQ_INVAL], outcome[O_REQ_2BIG], outcome[O_EV_OK],
	       outcome[O_EV_BAD]);
	printf("fuzz_frame: %lu inputs, ok\n", inputs + (unsigned long)files);
	return 0;
}

#endif
