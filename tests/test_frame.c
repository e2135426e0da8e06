/*
 * The client wire format (dataplane/pdclient.h, dataplane/frame.h): a REQUEST that
 * pdc_request_encode() writes decodes to what was asked (frame); every malformed or
 * out-of-range REQUEST is refused with its code (frame_fault); answers decode strictly
 * (pdc_event); libpdclient over real Unix and TCP sockets with the test playing the router
 * (pdclient); and the Python client, byte for byte against the C one (pdclient_py). One file,
 * longer than most, because all five suites build their frames with the same few helpers.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <criterion/criterion.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "frame.h"
#include "pdclient.h"

#define HDR sizeof(struct pdc_hdr)
#define FIXED (HDR + sizeof(struct pdc_request))
#define LIMIT 1024u /* the prompt limit the decoder gets here */
#define BUF 8192u

/* Write @val into the fixed part of the REQUEST frame at @buf: a field a test lies about. */
#define SET_FIELD(buf, field, val)                                                                 \
	do {                                                                                       \
		__typeof__(((struct pdc_request *)0)->field) v_ = (val);                           \
		memcpy((uint8_t *)(buf) + HDR + offsetof(struct pdc_request, field), &v_,          \
		       sizeof(v_));                                                                \
	} while (0)

static const uint32_t toks[8] = {1, 2, 3, 4, 5, 0xFFFFFFFFu, 0, 65536};
/* full_args()'s sampling parameters: 20 bytes, so that its strings and these need no padding */
static const char sampling20[] = "{\"temperature\":0.75}";

/* A request with every field set, none of them at its default. */
static struct pdc_request_args full_args(void)
{
	struct pdc_request_args a = {.id = 0x0123456789ABCDEFull,
				     .model = "llama-3-8b",
				     .lora = "adapter-1",
				     .cache_salt = "tenant-42",
				     .sampling = sampling20,
				     .sampling_len = sizeof(sampling20) - 1,
				     .tokens = toks,
				     .ntokens = 8,
				     .max_tokens = 128,
				     .flags = PDC_STREAM | PDC_ENFORCE_DISAGG};

	pdc_request_defaults(&a.fixed);
	a.fixed.pin_worker = 3;
	a.fixed.pin_dp_rank = 1;
	a.fixed.pin_prefill_worker = 9;
	a.fixed.pin_prefill_dp_rank = 2;
	a.fixed.override_set = PDC_OV_ALL;
	a.fixed.kv_reuse = 1;
	a.fixed.prefill_tokens = 0;
	a.fixed.overlap_score_credit = 0.5;
	a.fixed.prefill_load_scale = 1.25;
	a.fixed.temperature = 0.75;
	return a;
}

/* The smallest request: a model and one token. */
static struct pdc_request_args min_args(void)
{
	struct pdc_request_args a = {
	    .id = 1, .model = "m", .tokens = toks, .ntokens = 1, .max_tokens = 1};

	pdc_request_defaults(&a.fixed);
	return a;
}

static size_t encode(uint8_t *buf, const struct pdc_request_args *a)
{
	long n = pdc_request_encode(buf, BUF, a);

	cr_assert_gt(n, 0, "pdc_request_encode: %ld", n);
	cr_assert_eq((size_t)n, pdc_request_bytes(a));
	return (size_t)n;
}

/* dp_frame_decode_request() with the test's limit; an error must come with a reason. */
static int decode_lim(const uint8_t *buf, size_t len, uint32_t limit, struct dp_frame_request *out)
{
	const char *why = NULL;
	int rc = dp_frame_decode_request(buf, len, limit, out, &why);

	if (rc)
		cr_assert(why && *why, "error %d without a reason", rc);
	return rc;
}

static int decode(const uint8_t *buf, size_t len)
{
	struct dp_frame_request out;

	return decode_lim(buf, len, LIMIT, &out);
}

/*
 * A REQUEST written by hand, without the encoder's checks: the fixed part @r as given (its
 * counts may lie), then the strings, padding and @n tokens. Returns the frame's length.
 */
static size_t raw_request(uint8_t *buf, const struct pdc_request *r, const char *m, size_t ml,
			  const char *l, size_t ll, const char *s, size_t sl, uint32_t n)
{
	size_t at = FIXED, len;

	memset(buf, 0, BUF);
	memcpy(buf + HDR, r, sizeof(*r));
	memcpy(buf + at, m, ml);
	memcpy(buf + at + ml, l, ll);
	memcpy(buf + at + ml + ll, s, sl);
	at += (ml + ll + sl + 3) & ~(size_t)3;
	for (uint32_t i = 0; i < n; i++, at += 4)
		memcpy(buf + at, &toks[i % 8], 4);
	len = at;
	dp_frame_header(buf, PDC_REQUEST, 42, (uint32_t)len);
	return len;
}

/* A REQUEST for model "m" with @sl bytes of sampling parameters and @n tokens, written by hand
 * (@sl may be over the limit) into @buf, which has room. Returns the frame's length. */
static size_t raw_sampled(uint8_t *buf, uint16_t sl, uint32_t n);

/* A fixed part whose counts say what raw_request() gets. */
static struct pdc_request raw_fixed(size_t ml, size_t ll, size_t sl, uint32_t n)
{
	struct pdc_request r;

	pdc_request_defaults(&r);
	r.ntokens = n;
	r.max_tokens = 4;
	r.model_len = (uint16_t)ml;
	r.lora_len = (uint16_t)ll;
	r.salt_len = (uint16_t)sl;
	return r;
}

static size_t raw_sampled(uint8_t *buf, uint16_t sl, uint32_t n)
{
	struct pdc_request r = raw_fixed(1, 0, 0, n);
	size_t at = FIXED;

	r.sampling_len = sl;
	memset(buf, 0, FIXED + ((1 + (size_t)sl + 3) & ~(size_t)3));
	memcpy(buf + HDR, &r, sizeof(r));
	buf[at] = 'm';
	memset(buf + at + 1, 0xA7, sl);
	at += (1 + (size_t)sl + 3) & ~(size_t)3;
	for (uint32_t i = 0; i < n; i++, at += 4)
		memcpy(buf + at, &toks[i % 8], 4);
	dp_frame_header(buf, PDC_REQUEST, 42, (uint32_t)at);
	return at;
}

TestSuite(frame);

Test(frame, wire_layout_is_the_documented_one)
{
	/* docs/protocol.md gives these offsets; a change here is a protocol version. */
	cr_expect_eq(offsetof(struct pdc_hdr, len), 0);
	cr_expect_eq(offsetof(struct pdc_hdr, magic), 4);
	cr_expect_eq(offsetof(struct pdc_hdr, version), 6);
	cr_expect_eq(offsetof(struct pdc_hdr, type), 7);
	cr_expect_eq(offsetof(struct pdc_hdr, id), 8);
	cr_expect_eq(offsetof(struct pdc_request, ntokens), 0);
	cr_expect_eq(offsetof(struct pdc_request, max_tokens), 4);
	cr_expect_eq(offsetof(struct pdc_request, flags), 8);
	cr_expect_eq(offsetof(struct pdc_request, model_len), 12);
	cr_expect_eq(offsetof(struct pdc_request, lora_len), 14);
	cr_expect_eq(offsetof(struct pdc_request, salt_len), 16);
	cr_expect_eq(offsetof(struct pdc_request, sampling_len), 18);
	cr_expect_eq(offsetof(struct pdc_request, pin_worker), 20);
	cr_expect_eq(offsetof(struct pdc_request, pin_dp_rank), 24);
	cr_expect_eq(offsetof(struct pdc_request, pin_prefill_worker), 28);
	cr_expect_eq(offsetof(struct pdc_request, pin_prefill_dp_rank), 32);
	cr_expect_eq(offsetof(struct pdc_request, override_set), 36);
	cr_expect_eq(offsetof(struct pdc_request, kv_reuse), 40);
	cr_expect_eq(offsetof(struct pdc_request, prefill_tokens), 41);
	cr_expect_eq(offsetof(struct pdc_request, reserved2), 42);
	cr_expect_eq(offsetof(struct pdc_request, reserved3), 44);
	cr_expect_eq(offsetof(struct pdc_request, overlap_score_credit), 48);
	cr_expect_eq(offsetof(struct pdc_request, prefill_load_scale), 56);
	cr_expect_eq(offsetof(struct pdc_request, temperature), 64);
	cr_expect_eq(sizeof(struct pdc_request), 72);
	cr_expect_eq(offsetof(struct pdc_routed, overlap_blocks), 20);
	cr_expect_eq(offsetof(struct pdc_done, completion_tokens), 12);
	cr_expect_eq(offsetof(struct pdc_error, len), 4);
}

Test(frame, documented_example_is_what_the_encoder_writes)
{
	/* The raw bytes at the end of docs/protocol.md. */
	/* clang-format off */
	static const uint8_t doc[96] = {
	    [0] = 0x60, [4] = 0x50, [5] = 0x43, [6] = 1, [7] = 1, [8] = 1, /* header */
	    [16] = 1, [20] = 1, [28] = 1,				    /* counts */
	    [36] = 0xff, 0xff, 0xff, 0xff, [44] = 0xff, 0xff, 0xff, 0xff,   /* no pins */
	    [88] = 0x6d, [92] = 7};
	/* clang-format on */
	static const uint32_t seven = 7;
	uint8_t buf[sizeof(doc)];
	struct pdc_request_args a = min_args();

	a.tokens = &seven;
	cr_assert_eq(pdc_request_encode(buf, sizeof(buf), &a), (long)sizeof(doc));
	for (size_t i = 0; i < sizeof(doc); i++)
		cr_expect_eq(buf[i], doc[i], "byte %zu", i);
	/* The second example: id 2, sampling parameters "{}" in what was padding. */
	a.id = 2;
	a.sampling = "{}";
	a.sampling_len = 2;
	cr_assert_eq(pdc_request_encode(buf, sizeof(buf), &a), (long)sizeof(doc));
	for (size_t i = 0; i < sizeof(doc); i++) {
		uint8_t want = i == 8 ? 2 : i == 34 ? 2 : i == 89 ? '{' : i == 90 ? '}' : doc[i];

		cr_expect_eq(buf[i], want, "byte %zu of the second example", i);
	}
}

Test(frame, request_round_trip_keeps_every_field)
{
	static uint8_t buf[BUF];
	struct pdc_request_args a = full_args();
	struct dp_frame_request d;
	struct pdc_hdr h;
	size_t len = encode(buf, &a);

	cr_assert_eq(dp_frame_length(buf, len, PDC_FRAME_MAX_DEFAULT), (long)len);
	memcpy(&h, buf, sizeof(h));
	cr_expect_eq(h.type, PDC_REQUEST);
	cr_assert_eq(decode_lim(buf, len, LIMIT, &d), 0);
	cr_expect_eq(d.id, a.id);
	cr_expect_eq(d.fixed.ntokens, 8);
	cr_expect_eq(d.fixed.max_tokens, 128);
	cr_expect_eq(d.fixed.flags, PDC_STREAM | PDC_ENFORCE_DISAGG);
	cr_expect_eq(d.fixed.pin_worker, 3);
	cr_expect_eq(d.fixed.pin_dp_rank, 1);
	cr_expect_eq(d.fixed.pin_prefill_worker, 9);
	cr_expect_eq(d.fixed.pin_prefill_dp_rank, 2);
	cr_expect_eq(d.fixed.override_set, PDC_OV_ALL);
	cr_expect_eq(d.fixed.kv_reuse, 1);
	cr_expect_eq(d.fixed.prefill_tokens, 0);
	cr_expect_eq(d.fixed.overlap_score_credit, 0.5);
	cr_expect_eq(d.fixed.prefill_load_scale, 1.25);
	cr_expect_eq(d.fixed.temperature, 0.75);
	cr_assert_eq(d.fixed.model_len, strlen(a.model));
	cr_assert_eq(d.fixed.lora_len, strlen(a.lora));
	cr_assert_eq(d.fixed.salt_len, strlen(a.cache_salt));
	cr_assert_eq(d.fixed.sampling_len, 20);
	cr_expect_eq(memcmp(d.model, a.model, d.fixed.model_len), 0);
	cr_expect_eq(memcmp(d.lora, a.lora, d.fixed.lora_len), 0);
	cr_expect_eq(memcmp(d.salt, a.cache_salt, d.fixed.salt_len), 0);
	cr_expect_eq(d.sampling, (const uint8_t *)d.salt + d.fixed.salt_len);
	cr_expect_eq(memcmp(d.sampling, sampling20, 20), 0);
	cr_expect_eq((d.tokens - buf) % 4, 0);
	cr_expect_eq(d.tokens + 4 * 8, buf + len);
	for (uint32_t i = 0; i < 8; i++) {
		uint32_t t;

		memcpy(&t, d.tokens + 4 * i, 4);
		cr_expect_eq(t, toks[i], "token %u", i);
	}
}

Test(frame, request_strings_are_padded_with_zeros_to_four_bytes)
{
	static uint8_t buf[BUF];
	static const char s[] = "abcdefghij";

	for (size_t ml = 1; ml <= 9; ml++)
		for (size_t ll = 0; ll <= 3; ll++)
			for (size_t sl = 0; sl <= 3; sl++) {
				char m[16], l[8], c[8];
				struct pdc_request_args a = min_args();
				struct dp_frame_request d;
				size_t len, strings = ml + ll + sl;

				snprintf(m, sizeof(m), "%.*s", (int)ml, s);
				snprintf(l, sizeof(l), "%.*s", (int)ll, s);
				snprintf(c, sizeof(c), "%.*s", (int)sl, s);
				a.model = m;
				a.lora = ll ? l : NULL;
				a.cache_salt = sl ? c : "";
				memset(buf, 0xEE, sizeof(buf));
				len = encode(buf, &a);
				cr_assert_eq(len % 4, 0);
				cr_assert_eq(len, FIXED + ((strings + 3) & ~(size_t)3) + 4);
				for (size_t i = FIXED + strings; i < len - 4; i++)
					cr_assert_eq(buf[i], 0, "padding byte %zu", i);
				cr_assert_eq(decode_lim(buf, len, LIMIT, &d), 0);
				cr_assert_eq(d.fixed.model_len, ml);
				cr_assert_eq(d.fixed.lora_len, ll);
				cr_assert_eq(d.fixed.salt_len, sl);
			}
}

Test(frame, sampling_parameters_are_any_bytes_and_padded_with_the_strings)
{
	static uint8_t buf[BUF];
	static const uint8_t blob[9] = {0, 0xFF, '{', 0, 0x80, '}', 1, 0, 0xFE};

	for (uint32_t sl = 0; sl <= sizeof(blob); sl++) {
		struct pdc_request_args a = min_args();
		struct dp_frame_request d;
		size_t len, used = 3 + sl;

		a.model = "abc";
		a.sampling = sl ? blob : NULL;
		a.sampling_len = sl;
		memset(buf, 0xEE, sizeof(buf));
		len = encode(buf, &a);
		cr_assert_eq(len, FIXED + ((used + 3) & ~(size_t)3) + 4, "%u bytes", sl);
		for (size_t i = FIXED + used; i < len - 4; i++)
			cr_assert_eq(buf[i], 0, "padding byte %zu after %u bytes", i, sl);
		cr_assert_eq(decode_lim(buf, len, LIMIT, &d), 0, "%u bytes", sl);
		cr_assert_eq(d.fixed.sampling_len, sl);
		cr_assert_eq(d.sampling, (const uint8_t *)d.model + 3);
		cr_assert_eq(memcmp(d.sampling, blob, sl), 0, "%u bytes", sl);
		cr_assert_eq((d.tokens - buf) % 4, 0);
		cr_assert_eq(memcmp(d.tokens, toks, 4), 0);
	}
}

Test(frame, sampling_parameters_at_their_limit_round_trip)
{
	static uint8_t buf[BUF], blob[PDC_SAMPLING_MAX];
	struct pdc_request_args a = full_args();
	struct dp_frame_request d;
	size_t len;

	for (uint32_t i = 0; i < PDC_SAMPLING_MAX; i++)
		blob[i] = (uint8_t)(i * 7 + i / 256);
	a.sampling = blob;
	a.sampling_len = PDC_SAMPLING_MAX;
	len = encode(buf, &a);
	cr_assert_eq(len, FIXED + 28 + PDC_SAMPLING_MAX + 4 * 8);
	cr_assert_eq(decode_lim(buf, len, LIMIT, &d), 0);
	cr_assert_eq(d.fixed.sampling_len, PDC_SAMPLING_MAX);
	cr_assert_eq(memcmp(d.sampling, blob, PDC_SAMPLING_MAX), 0);
	cr_assert_eq(memcmp(d.salt, "tenant-42", 9), 0, "the strings before it untouched");
	cr_assert_eq(memcmp(d.tokens, toks, 4 * 8), 0, "the tokens after it untouched");
}

Test(frame, request_defaults_pin_no_worker_and_override_nothing)
{
	struct pdc_request r;

	memset(&r, 0x5A, sizeof(r));
	pdc_request_defaults(&r);
	cr_expect_eq(r.pin_worker, PDC_NO_WORKER);
	cr_expect_eq(r.pin_prefill_worker, PDC_NO_WORKER);
	cr_expect_eq(r.pin_dp_rank, 0);
	cr_expect_eq(r.pin_prefill_dp_rank, 0);
	cr_expect_eq(r.override_set, 0);
	cr_expect_eq(r.ntokens, 0);
	cr_expect_eq(r.flags, 0);
	cr_expect_eq(r.temperature, 0.0);
}

Test(frame, request_encode_refuses_out_of_range_args)
{
	static uint8_t buf[BUF];
	static char longname[PDC_SALT_MAX + 2];
	static uint8_t blob[PDC_SAMPLING_MAX + 1];
	struct pdc_request_args a;

	memset(longname, 'x', sizeof(longname) - 1);
#define REFUSED(stmt, want)                                                                        \
	do {                                                                                       \
		a = min_args();                                                                    \
		stmt;                                                                              \
		cr_expect_eq(pdc_request_encode(buf, BUF, &a), want, "%s", #stmt);                 \
	} while (0)
	REFUSED(a.model = NULL, -EINVAL);
	REFUSED(a.model = "", -EINVAL);
	REFUSED(a.model = longname + sizeof(longname) - 2 - PDC_NAME_MAX, -EINVAL);
	REFUSED(a.model = longname + sizeof(longname) - 1 - PDC_NAME_MAX, 16 + 72 + 256 + 4);
	REFUSED(a.lora = longname + sizeof(longname) - 2 - PDC_NAME_MAX, -EINVAL);
	REFUSED(a.cache_salt = longname, -EINVAL);
	REFUSED(a.cache_salt = longname + 1, 16 + 72 + 1 + 1024 + 3 + 4);
	REFUSED(a.ntokens = 0, -EINVAL);
	REFUSED(a.tokens = NULL, -EINVAL);
	REFUSED(a.max_tokens = 0, -EINVAL);
	REFUSED(a.flags = PDC_FLAGS_ALL + 1, -EINVAL);
	REFUSED(a.flags = 1u << 31, -EINVAL);
	REFUSED(a.ntokens = UINT32_MAX, -EINVAL); /* more than a 32-bit frame length holds */
	REFUSED((a.sampling = blob, a.sampling_len = PDC_SAMPLING_MAX + 1), -EINVAL);
	REFUSED((a.sampling = blob, a.sampling_len = PDC_SAMPLING_MAX), 16 + 72 + 4100 + 4);
	REFUSED(a.sampling_len = 1, -EINVAL); /* counted, but no bytes given */
	REFUSED((a.sampling = "\0", a.sampling_len = 1), 16 + 72 + 4 + 4);
	REFUSED(a.flags = PDC_FLAGS_ALL, 16 + 72 + 4 + 4);
#undef REFUSED
	a = min_args();
	cr_expect_eq(pdc_request_encode(buf, pdc_request_bytes(&a) - 1, &a), -ENOBUFS);
	cr_expect_eq(pdc_request_encode(buf, 0, &a), -ENOBUFS);
	cr_expect_eq(pdc_request_encode(buf, pdc_request_bytes(&a), &a), 16 + 72 + 4 + 4);
}

Test(frame, request_encode_zeroes_reserved_bytes_and_takes_counts_from_args)
{
	static uint8_t buf[BUF];
	struct pdc_request_args a = min_args();
	struct pdc_request r;
	size_t len;

	memset(&a.fixed, 0xA5, sizeof(a.fixed)); /* every reserved byte too */
	a.fixed.overlap_score_credit = a.fixed.prefill_load_scale = a.fixed.temperature = 0;
	len = encode(buf, &a);
	memcpy(&r, buf + HDR, sizeof(r));
	cr_expect_eq(r.sampling_len, 0);
	cr_expect_eq(r.reserved2, 0);
	cr_expect_eq(r.reserved3, 0);
	cr_expect_eq(r.ntokens, 1);
	cr_expect_eq(r.max_tokens, 1);
	cr_expect_eq(r.flags, 0);
	cr_expect_eq(r.model_len, 1);
	cr_expect_eq(r.lora_len, 0);
	cr_expect_eq(r.salt_len, 0);
	cr_expect_eq(r.pin_worker, 0xA5A5A5A5u); /* the rest of the fixed part is the caller's */
	cr_expect_eq(len, FIXED + 4 + 4);
}

Test(frame, cancel_is_a_bare_header)
{
	uint8_t buf[HDR];
	struct pdc_hdr h;

	pdc_cancel_encode(buf, 77);
	memcpy(&h, buf, sizeof(h));
	cr_expect_eq(h.len, 16);
	cr_expect_eq(h.magic, PDC_MAGIC);
	cr_expect_eq(h.version, PDC_VERSION);
	cr_expect_eq(h.type, PDC_CANCEL);
	cr_expect_eq(h.id, 77);
	cr_expect_eq(dp_frame_length(buf, sizeof(buf), PDC_FRAME_MAX_DEFAULT), 16);
	cr_expect_eq(buf[4], 0x50); /* "PC" on the wire */
	cr_expect_eq(buf[5], 0x43);
}

Test(frame, length_waits_for_a_whole_header)
{
	uint8_t buf[HDR];

	dp_frame_header(buf, PDC_ROUTED, 1, 40);
	for (size_t n = 0; n < HDR; n++)
		cr_expect_eq(dp_frame_length(buf, n, PDC_FRAME_MAX_DEFAULT), 0, "%zu bytes", n);
	cr_expect_eq(dp_frame_length(buf, HDR, PDC_FRAME_MAX_DEFAULT), 40);
}

Test(frame, length_refuses_what_is_not_a_header)
{
	uint8_t buf[HDR];

	dp_frame_header(buf, PDC_ROUTED, 1, 40);
	buf[4] ^= 1;
	cr_expect_eq(dp_frame_length(buf, HDR, PDC_FRAME_MAX_DEFAULT), -EBADMSG, "magic");
	dp_frame_header(buf, PDC_ROUTED, 1, 40);
	buf[6] = PDC_VERSION + 1;
	cr_expect_eq(dp_frame_length(buf, HDR, PDC_FRAME_MAX_DEFAULT), -EBADMSG, "version");
	buf[6] = 0;
	cr_expect_eq(dp_frame_length(buf, HDR, PDC_FRAME_MAX_DEFAULT), -EBADMSG, "version 0");
	for (uint32_t len = 0; len < HDR; len++) {
		dp_frame_header(buf, PDC_CANCEL, 1, len);
		cr_expect_eq(dp_frame_length(buf, HDR, PDC_FRAME_MAX_DEFAULT), -EBADMSG, "len %u",
			     len);
	}
	/* The type is the decoder's business: the length check passes any. */
	dp_frame_header(buf, 0xEE, 1, HDR);
	cr_expect_eq(dp_frame_length(buf, HDR, PDC_FRAME_MAX_DEFAULT), 16);
}

Test(frame, length_refuses_frames_over_the_limit)
{
	uint8_t buf[HDR];

	dp_frame_header(buf, PDC_REQUEST, 1, PDC_FRAME_MAX_DEFAULT);
	cr_expect_eq(dp_frame_length(buf, HDR, PDC_FRAME_MAX_DEFAULT), PDC_FRAME_MAX_DEFAULT);
	dp_frame_header(buf, PDC_REQUEST, 1, PDC_FRAME_MAX_DEFAULT + 1);
	cr_expect_eq(dp_frame_length(buf, HDR, PDC_FRAME_MAX_DEFAULT), -EMSGSIZE);
	dp_frame_header(buf, PDC_REQUEST, 1, UINT32_MAX);
	cr_expect_eq(dp_frame_length(buf, HDR, PDC_FRAME_MAX_DEFAULT), -EMSGSIZE);
	dp_frame_header(buf, PDC_REQUEST, 1, 17);
	cr_expect_eq(dp_frame_length(buf, HDR, 16), -EMSGSIZE);
}

Test(frame, error_frame_cuts_long_messages)
{
	static uint8_t buf[BUF];
	char msg[400];
	struct pdc_event ev;
	size_t len;

	memset(msg, 'e', sizeof(msg) - 1);
	msg[sizeof(msg) - 1] = '\0';
	len = dp_frame_error(buf, 9, -ENODEV, msg);
	cr_assert_eq(len, HDR + 8 + PDC_ERROR_MAX);
	cr_assert_eq(pdc_event_decode(buf, len, &ev), 0);
	cr_expect_eq(ev.type, PDC_ERROR);
	cr_expect_eq(ev.id, 9);
	cr_expect_eq(ev.error.error, -ENODEV);
	cr_expect_eq(ev.error.len, PDC_ERROR_MAX);
	len = dp_frame_error(buf, 0, -EBADMSG, "bad");
	cr_assert_eq(pdc_event_decode(buf, len, &ev), 0);
	cr_expect_eq(ev.error.len, 3);
	cr_expect_eq(memcmp(ev.error.msg, "bad", 3), 0);
}

/* ---- Malformed and out-of-range REQUESTs. ---- */

TestSuite(frame_fault);

Test(frame_fault, request_shorter_than_its_fixed_part_is_ebadmsg)
{
	static uint8_t buf[BUF];
	struct pdc_request_args a = min_args();

	encode(buf, &a);
	for (size_t len = 0; len < FIXED; len++)
		cr_expect_eq(decode(buf, len), -EBADMSG, "%zu bytes", len);
}

Test(frame_fault, truncated_or_extended_request_is_ebadmsg)
{
	static uint8_t buf[BUF];
	struct pdc_request_args a = full_args();
	size_t len = encode(buf, &a);

	for (size_t cut = 1; cut <= 8; cut++)
		cr_expect_eq(decode(buf, len - cut), -EBADMSG, "%zu bytes short", cut);
	for (size_t more = 1; more <= 8; more++)
		cr_expect_eq(decode(buf, len + more), -EBADMSG, "%zu bytes more", more);
}

Test(frame_fault, lying_ntokens_is_ebadmsg)
{
	static uint8_t buf[BUF];
	struct pdc_request_args a = full_args();
	size_t len = encode(buf, &a);
	static const uint32_t lies[] = {7, 9, 4, 16, 0x40000000u, 0x3FFFFFFFu + 8, UINT32_MAX};

	for (size_t i = 0; i < sizeof(lies) / sizeof(lies[0]); i++) {
		SET_FIELD(buf, ntokens, lies[i]);
		cr_expect_eq(decode(buf, len), -EBADMSG, "ntokens %u", lies[i]);
	}
	SET_FIELD(buf, ntokens, 8);
	cr_expect_eq(decode(buf, len), 0);
}

Test(frame_fault, lying_string_lengths_are_ebadmsg)
{
	static uint8_t buf[BUF];
	struct pdc_request_args a = full_args(); /* 10 + 9 + 9 + 20 sampling: no padding */
	size_t len = encode(buf, &a);

	SET_FIELD(buf, model_len, 11);
	cr_expect_eq(decode(buf, len), -EBADMSG, "model_len + 1");
	SET_FIELD(buf, model_len, 6);
	cr_expect_eq(decode(buf, len), -EBADMSG, "model_len - 4");
	SET_FIELD(buf, model_len, 10);
	SET_FIELD(buf, lora_len, 13);
	cr_expect_eq(decode(buf, len), -EBADMSG, "lora_len + 4: a token's worth");
	SET_FIELD(buf, lora_len, 9);
	SET_FIELD(buf, salt_len, UINT16_MAX);
	cr_expect_eq(decode(buf, len), -EBADMSG, "salt_len 65535");
	SET_FIELD(buf, salt_len, 9);
	cr_expect_eq(decode(buf, len), 0);
}

Test(frame_fault, lying_sampling_len_is_ebadmsg)
{
	static uint8_t buf[BUF];
	struct pdc_request_args a = full_args(); /* 10 + 9 + 9 + 20 sampling: no padding */
	size_t len = encode(buf, &a);
	static const uint16_t lies[] = {
	    21, 24, 16, 0, PDC_SAMPLING_MAX, PDC_SAMPLING_MAX + 1, UINT16_MAX};

	for (size_t i = 0; i < sizeof(lies) / sizeof(lies[0]); i++) {
		SET_FIELD(buf, sampling_len, lies[i]);
		cr_expect_eq(decode(buf, len), -EBADMSG, "sampling_len %u", lies[i]);
	}
	SET_FIELD(buf, sampling_len, 20);
	cr_expect_eq(decode(buf, len), 0);
}

Test(frame_fault, sampling_over_its_limit_is_einval_when_the_frame_adds_up)
{
	static uint8_t buf[BUF];
	struct dp_frame_request d;
	const char *why = NULL;
	uint8_t *big;
	size_t len;

	len = raw_sampled(buf, PDC_SAMPLING_MAX + 1, 2);
	cr_expect_eq(dp_frame_decode_request(buf, len, LIMIT, &d, &why), -EINVAL);
	cr_expect(why && strstr(why, "sampling"), "why: %s", why ? why : "(none)");
	big = malloc(FIXED + UINT16_MAX + 1 + 4);
	cr_assert_not_null(big);
	len = raw_sampled(big, UINT16_MAX, 1);
	cr_expect_eq(decode(big, len), -EINVAL, "sampling_len 65535, all there");
	free(big);
	/* a frame shorter than its counts say is still malformed, over the limit or not */
	len = raw_sampled(buf, PDC_SAMPLING_MAX + 1, 2);
	SET_FIELD(buf, sampling_len, PDC_SAMPLING_MAX + 5);
	cr_expect_eq(decode(buf, len), -EBADMSG);
	len = raw_sampled(buf, PDC_SAMPLING_MAX, 2);
	cr_expect_eq(decode_lim(buf, len, LIMIT, &d), 0, "at the limit");
	cr_expect_eq(d.fixed.sampling_len, PDC_SAMPLING_MAX);
	cr_expect_eq(d.sampling[0], 0xA7);
	cr_expect_eq(d.sampling[PDC_SAMPLING_MAX - 1], 0xA7);
}

Test(frame_fault, strings_over_their_limits_are_ebadmsg_even_when_lengths_add_up)
{
	static uint8_t buf[BUF];
	static char s[PDC_SALT_MAX + 1];
	struct pdc_request r;
	size_t len;

	memset(s, 's', sizeof(s));
	r = raw_fixed(PDC_NAME_MAX + 1, 0, 0, 2);
	len = raw_request(buf, &r, s, PDC_NAME_MAX + 1, "", 0, "", 0, 2);
	cr_expect_eq(decode(buf, len), -EBADMSG, "model of 256 bytes");
	r = raw_fixed(1, PDC_NAME_MAX + 1, 0, 2);
	len = raw_request(buf, &r, "m", 1, s, PDC_NAME_MAX + 1, "", 0, 2);
	cr_expect_eq(decode(buf, len), -EBADMSG, "lora of 256 bytes");
	r = raw_fixed(1, 0, PDC_SALT_MAX + 1, 2);
	len = raw_request(buf, &r, "m", 1, "", 0, s, PDC_SALT_MAX + 1, 2);
	cr_expect_eq(decode(buf, len), -EBADMSG, "salt of 1025 bytes");
	/* and at the limits, accepted */
	r = raw_fixed(PDC_NAME_MAX, PDC_NAME_MAX, PDC_SALT_MAX, 2);
	len = raw_request(buf, &r, s, PDC_NAME_MAX, s, PDC_NAME_MAX, s, PDC_SALT_MAX, 2);
	cr_expect_eq(decode(buf, len), 0);
}

Test(frame_fault, string_length_reaching_into_the_padding_is_einval)
{
	static uint8_t buf[BUF];
	struct pdc_request_args a = min_args();
	size_t len;

	a.model = "abcde"; /* 5 bytes and 3 of padding: the frame still adds up at 6, 7, 8 */
	len = encode(buf, &a);
	for (uint16_t ml = 6; ml <= 8; ml++) {
		SET_FIELD(buf, model_len, ml);
		cr_expect_eq(decode(buf, len), -EINVAL, "model_len %u: a NUL in the name", ml);
	}
}

Test(frame_fault, empty_model_is_einval)
{
	static uint8_t buf[BUF];
	struct pdc_request r = raw_fixed(0, 4, 0, 1);
	size_t len = raw_request(buf, &r, "", 0, "lora", 4, "", 0, 1);

	cr_expect_eq(decode(buf, len), -EINVAL);
	r = raw_fixed(0, 0, 0, 1);
	len = raw_request(buf, &r, "", 0, "", 0, "", 0, 1);
	cr_expect_eq(decode(buf, len), -EINVAL);
}

Test(frame_fault, nul_in_a_name_or_salt_is_einval)
{
	static uint8_t buf[BUF];
	struct pdc_request r = raw_fixed(3, 3, 3, 1);
	size_t len;

	len = raw_request(buf, &r, "a\0b", 3, "lor", 3, "slt", 3, 1);
	cr_expect_eq(decode(buf, len), -EINVAL, "model");
	len = raw_request(buf, &r, "abc", 3, "lo\0", 3, "slt", 3, 1);
	cr_expect_eq(decode(buf, len), -EINVAL, "lora");
	len = raw_request(buf, &r, "abc", 3, "lor", 3, "\0lt", 3, 1);
	cr_expect_eq(decode(buf, len), -EINVAL, "salt");
	len = raw_request(buf, &r, "abc", 3, "lor", 3, "slt", 3, 1);
	cr_expect_eq(decode(buf, len), 0);
}

Test(frame_fault, no_tokens_or_no_max_tokens_is_einval)
{
	static uint8_t buf[BUF];
	struct pdc_request r = raw_fixed(1, 0, 0, 0);
	size_t len = raw_request(buf, &r, "m", 1, "", 0, "", 0, 0);

	cr_expect_eq(decode(buf, len), -EINVAL, "ntokens 0");
	r = raw_fixed(1, 0, 0, 1);
	r.max_tokens = 0;
	len = raw_request(buf, &r, "m", 1, "", 0, "", 0, 1);
	cr_expect_eq(decode(buf, len), -EINVAL, "max_tokens 0");
}

Test(frame_fault, unknown_flags_and_overrides_are_einval)
{
	static uint8_t buf[BUF];
	struct pdc_request_args a = full_args();
	size_t len = encode(buf, &a);
	static const uint32_t flags[] = {PDC_FLAGS_ALL + 1, 16, 1u << 31, UINT32_MAX};

	for (size_t i = 0; i < sizeof(flags) / sizeof(flags[0]); i++) {
		SET_FIELD(buf, flags, flags[i]);
		cr_expect_eq(decode(buf, len), -EINVAL, "flags %#x", flags[i]);
	}
	SET_FIELD(buf, flags, PDC_FLAGS_ALL);
	cr_expect_eq(decode(buf, len), 0);
	SET_FIELD(buf, override_set, PDC_OV_ALL + 1);
	cr_expect_eq(decode(buf, len), -EINVAL, "override bit 32");
	SET_FIELD(buf, override_set, PDC_OV_ALL);
	SET_FIELD(buf, kv_reuse, 2);
	cr_expect_eq(decode(buf, len), -EINVAL, "kv_reuse 2");
	SET_FIELD(buf, kv_reuse, 1);
	SET_FIELD(buf, prefill_tokens, 2);
	cr_expect_eq(decode(buf, len), -EINVAL, "prefill_tokens 2");
	SET_FIELD(buf, prefill_tokens, 1);
	cr_expect_eq(decode(buf, len), 0);
}

Test(frame_fault, negative_nan_or_infinite_overrides_are_einval)
{
	static uint8_t buf[BUF];
	struct pdc_request_args a = full_args();
	size_t len = encode(buf, &a);
	static const double bad[] = {-1.0, -1e-300, -INFINITY, INFINITY, NAN, -NAN};
	static const double good[] = {0.0, -0.0, 1e-300, 1e300, 5e-324};

	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		SET_FIELD(buf, overlap_score_credit, bad[i]);
		cr_expect_eq(decode(buf, len), -EINVAL, "credit %g", bad[i]);
		SET_FIELD(buf, overlap_score_credit, 0.5);
		SET_FIELD(buf, prefill_load_scale, bad[i]);
		cr_expect_eq(decode(buf, len), -EINVAL, "load scale %g", bad[i]);
		SET_FIELD(buf, prefill_load_scale, 0.5);
		SET_FIELD(buf, temperature, bad[i]);
		cr_expect_eq(decode(buf, len), -EINVAL, "temperature %g", bad[i]);
		SET_FIELD(buf, temperature, 0.5);
	}
	for (size_t i = 0; i < sizeof(good) / sizeof(good[0]); i++) {
		SET_FIELD(buf, overlap_score_credit, good[i]);
		SET_FIELD(buf, prefill_load_scale, good[i]);
		SET_FIELD(buf, temperature, good[i]);
		cr_expect_eq(decode(buf, len), 0, "%g", good[i]);
	}
}

Test(frame_fault, prompt_over_the_limit_is_e2big)
{
	static uint8_t buf[BUF];
	struct dp_frame_request d;
	struct pdc_request_args a = full_args();
	size_t len = encode(buf, &a);

	cr_expect_eq(decode_lim(buf, len, 7, &d), -E2BIG);
	cr_expect_eq(decode_lim(buf, len, 1, &d), -E2BIG);
	cr_expect_eq(decode_lim(buf, len, 8, &d), 0);
	/* the lengths are checked first: a lying ntokens over the limit is still -EBADMSG */
	SET_FIELD(buf, ntokens, 100);
	cr_expect_eq(decode_lim(buf, len, 7, &d), -EBADMSG);
}

/* ---- Answers. ---- */

TestSuite(pdc_event);

static size_t put_routed(uint8_t *p, uint64_t id, const struct pdc_routed *r)
{
	size_t len = DP_FRAME_BYTES(sizeof(*r));

	dp_frame_header(p, PDC_ROUTED, id, (uint32_t)len);
	memcpy(p + HDR, r, sizeof(*r));
	return len;
}

static size_t put_tokens(uint8_t *p, uint64_t id, const uint32_t *t, uint32_t n)
{
	struct pdc_tokens h = {.n = n};
	size_t len = DP_FRAME_BYTES(sizeof(h) + 4 * (size_t)n);

	dp_frame_header(p, PDC_TOKENS, id, (uint32_t)len);
	memcpy(p + HDR, &h, sizeof(h));
	memcpy(p + HDR + sizeof(h), t, 4 * (size_t)n);
	return len;
}

static size_t put_done(uint8_t *p, uint64_t id, const struct pdc_done *d)
{
	size_t len = DP_FRAME_BYTES(sizeof(*d));

	dp_frame_header(p, PDC_DONE, id, (uint32_t)len);
	memcpy(p + HDR, d, sizeof(*d));
	return len;
}

/* Rewrite the header's length to @len (the buffer then holds @len bytes for the decoder). */
static void set_len(uint8_t *p, uint32_t len)
{
	memcpy(p, &len, 4);
}

static const struct pdc_routed routed1 = {PDC_PLAN_DISAGG, 4, 1, 7, 0, 12};
static const struct pdc_done done1 = {PDC_FINISH_LENGTH, 8, 4, 3};

Test(pdc_event, every_answer_type_decodes)
{
	static uint8_t buf[BUF];
	struct pdc_event ev;
	size_t len;

	len = put_routed(buf, 5, &routed1);
	cr_assert_eq(pdc_event_decode(buf, len, &ev), 0);
	cr_expect_eq(ev.type, PDC_ROUTED);
	cr_expect_eq(ev.id, 5);
	cr_expect_eq(memcmp(&ev.routed, &routed1, sizeof(routed1)), 0);

	len = put_tokens(buf, 6, toks, 3);
	cr_assert_eq(pdc_event_decode(buf, len, &ev), 0);
	cr_expect_eq(ev.type, PDC_TOKENS);
	cr_expect_eq(ev.id, 6);
	cr_assert_eq(ev.tokens.n, 3);
	cr_expect_eq(memcmp(ev.tokens.ids, toks, 12), 0);
	cr_expect_eq(ev.tokens.ids, buf + 24);

	len = put_tokens(buf, 6, toks, 0);
	cr_assert_eq(pdc_event_decode(buf, len, &ev), 0, "TOKENS of no tokens");
	cr_expect_eq(ev.tokens.n, 0);

	len = put_done(buf, 7, &done1);
	cr_assert_eq(pdc_event_decode(buf, len, &ev), 0);
	cr_expect_eq(ev.type, PDC_DONE);
	cr_expect_eq(memcmp(&ev.done, &done1, sizeof(done1)), 0);

	len = dp_frame_error(buf, 8, -EBUSY, "every worker busy");
	cr_assert_eq(pdc_event_decode(buf, len, &ev), 0);
	cr_expect_eq(ev.type, PDC_ERROR);
	cr_expect_eq(ev.id, 8);
	cr_expect_eq(ev.error.error, -EBUSY);
	cr_assert_eq(ev.error.len, 17);
	cr_expect_eq(memcmp(ev.error.msg, "every worker busy", 17), 0);

	len = dp_frame_error(buf, 0, -ETIMEDOUT, "");
	cr_assert_eq(pdc_event_decode(buf, len, &ev), 0, "an ERROR without a message");
	cr_expect_eq(ev.error.len, 0);
}

/* Frames of @len bytes whose header says @len, but of one length too many or too few. */
static void expect_bad_lengths(uint8_t *buf, size_t len, const char *what)
{
	struct pdc_event ev;
	static const int delta[] = {-8, -4, -1, 1, 4, 8};

	for (size_t i = 0; i < sizeof(delta) / sizeof(delta[0]); i++) {
		size_t n = len + delta[i];

		set_len(buf, (uint32_t)n);
		cr_expect_eq(pdc_event_decode(buf, n, &ev), -EBADMSG, "%s %+d", what, delta[i]);
		/* and a header that disagrees with the buffer */
		set_len(buf, (uint32_t)len);
		cr_expect_eq(pdc_event_decode(buf, n, &ev), -EBADMSG, "%s buffer %+d", what,
			     delta[i]);
	}
	set_len(buf, (uint32_t)len);
	cr_expect_eq(pdc_event_decode(buf, len, &ev), 0, "%s as built", what);
}

Test(pdc_event, answers_of_the_wrong_length_are_ebadmsg)
{
	static uint8_t buf[BUF];

	expect_bad_lengths(buf, put_routed(buf, 1, &routed1), "ROUTED");
	expect_bad_lengths(buf, put_tokens(buf, 1, toks, 5), "TOKENS");
	expect_bad_lengths(buf, put_done(buf, 1, &done1), "DONE");
	expect_bad_lengths(buf, dp_frame_error(buf, 1, -EIO, "worker says no"), "ERROR");
}

Test(pdc_event, lying_counts_are_ebadmsg)
{
	static uint8_t buf[BUF];
	struct pdc_event ev;
	static const uint32_t lies[] = {0, 2, 4, 0x40000000u, UINT32_MAX};
	size_t len = put_tokens(buf, 1, toks, 3);
	char msg[PDC_ERROR_MAX + 1];
	struct pdc_error e;

	for (size_t i = 0; i < sizeof(lies) / sizeof(lies[0]); i++) {
		memcpy(buf + HDR, &lies[i], 4);
		cr_expect_eq(pdc_event_decode(buf, len, &ev), -EBADMSG, "TOKENS n %u", lies[i]);
	}
	len = dp_frame_error(buf, 1, -EIO, "abc");
	for (size_t i = 0; i < sizeof(lies) / sizeof(lies[0]); i++) {
		memcpy(buf + HDR + 4, &lies[i], 4);
		cr_expect_eq(pdc_event_decode(buf, len, &ev), -EBADMSG, "ERROR len %u", lies[i]);
	}
	/* a message over PDC_ERROR_MAX, the lengths agreeing */
	memset(msg, 'x', sizeof(msg));
	e = (struct pdc_error){.error = -EIO, .len = sizeof(msg)};
	len = DP_FRAME_BYTES(sizeof(e) + sizeof(msg));
	dp_frame_header(buf, PDC_ERROR, 1, (uint32_t)len);
	memcpy(buf + HDR, &e, sizeof(e));
	memcpy(buf + HDR + sizeof(e), msg, sizeof(msg));
	cr_expect_eq(pdc_event_decode(buf, len, &ev), -EBADMSG, "message of 257 bytes");
	e.len = PDC_ERROR_MAX;
	memcpy(buf + HDR, &e, sizeof(e));
	set_len(buf, (uint32_t)len - 1);
	cr_expect_eq(pdc_event_decode(buf, len - 1, &ev), 0, "message of 256 bytes");
}

Test(pdc_event, other_types_and_bad_headers_are_ebadmsg)
{
	static uint8_t buf[BUF];
	struct pdc_event ev;
	static const uint8_t types[] = {0, PDC_REQUEST, PDC_CANCEL, 3, 15, 20, 255};

	for (size_t i = 0; i < sizeof(types) / sizeof(types[0]); i++) {
		dp_frame_header(buf, types[i], 1, HDR);
		cr_expect_eq(pdc_event_decode(buf, HDR, &ev), -EBADMSG, "type %u", types[i]);
		put_done(buf, 1, &done1);
		buf[7] = types[i];
		cr_expect_eq(pdc_event_decode(buf, HDR + 16, &ev), -EBADMSG, "type %u", types[i]);
	}
	put_done(buf, 1, &done1);
	buf[5] ^= 0x80;
	cr_expect_eq(pdc_event_decode(buf, HDR + 16, &ev), -EBADMSG, "magic");
	put_done(buf, 1, &done1);
	buf[6] = 2;
	cr_expect_eq(pdc_event_decode(buf, HDR + 16, &ev), -EBADMSG, "version");
	put_done(buf, 1, &done1);
	for (size_t n = 0; n < HDR + 16; n++)
		cr_expect_eq(pdc_event_decode(buf, n, &ev), -EBADMSG, "%zu bytes", n);
}

/* ---- libpdclient over a socket, the test playing the router. ---- */

#define IO_MS 10000 /* longest a router-side read waits before the test fails */

struct fx {
	char dir[64], path[128];
	int lfd, rfd; /* the router's listening socket and its end of the connection */
	struct pdc_client *c;
};

static int listen_unix(struct fx *f)
{
	struct sockaddr_un sa = {.sun_family = AF_UNIX};
	int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);

	cr_assert_geq(fd, 0);
	strcpy(f->dir, "/tmp/pdr-frame-XXXXXX");
	cr_assert_not_null(mkdtemp(f->dir));
	snprintf(f->path, sizeof(f->path), "%s/router.sock", f->dir);
	strcpy(sa.sun_path, f->path);
	cr_assert_eq(bind(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
	cr_assert_eq(listen(fd, 4), 0);
	return fd;
}

static int accept_within(int lfd)
{
	struct pollfd p = {.fd = lfd, .events = POLLIN};
	int fd;

	cr_assert_eq(poll(&p, 1, IO_MS), 1, "nobody connected");
	fd = accept4(lfd, NULL, NULL, SOCK_CLOEXEC);
	cr_assert_geq(fd, 0);
	return fd;
}

static void fx_open(struct fx *f)
{
	char addr[160];

	f->lfd = listen_unix(f);
	snprintf(addr, sizeof(addr), "unix:%s", f->path);
	cr_assert_eq(pdc_connect(addr, &f->c), 0);
	f->rfd = accept_within(f->lfd);
}

static void fx_close(struct fx *f)
{
	pdc_close(f->c);
	if (f->rfd >= 0)
		close(f->rfd);
	close(f->lfd);
	unlink(f->path);
	rmdir(f->dir);
}

static void r_write(int fd, const void *p, size_t n)
{
	const uint8_t *b = p;

	while (n) {
		ssize_t k = send(fd, b, n, MSG_NOSIGNAL);

		cr_assert_gt(k, 0, "router write: %s", strerror(errno));
		b += k;
		n -= (size_t)k;
	}
}

static void r_read(int fd, void *p, size_t n)
{
	struct pollfd pf = {.fd = fd, .events = POLLIN};
	uint8_t *b = p;

	while (n) {
		ssize_t k;

		cr_assert_eq(poll(&pf, 1, IO_MS), 1, "router read: nothing came");
		k = recv(fd, b, n, 0);
		cr_assert_gt(k, 0, "router read: %s", k ? strerror(errno) : "end of stream");
		b += k;
		n -= (size_t)k;
	}
}

/* Read one client frame into @buf (@cap bytes) as the router's ingress would; its length. */
static size_t r_read_frame(int fd, uint8_t *buf, size_t cap)
{
	long n;

	r_read(fd, buf, HDR);
	n = dp_frame_length(buf, HDR, (uint32_t)cap);
	cr_assert_geq(n, (long)HDR, "router: frame header: %ld", n);
	r_read(fd, buf + HDR, (size_t)n - HDR);
	return (size_t)n;
}

/* A router-side read that must time out: the client sent nothing more. */
static void r_expect_silence(int fd)
{
	struct pollfd pf = {.fd = fd, .events = POLLIN};

	cr_expect_eq(poll(&pf, 1, 20), 0, "the client sent something");
}

TestSuite(pdclient);

Test(pdclient, request_arrives_as_encoded)
{
	static uint8_t want[BUF], got[BUF];
	struct pdc_request_args a = full_args();
	struct dp_frame_request d;
	struct fx f;
	size_t len = encode(want, &a), n;

	fx_open(&f);
	cr_assert_eq(pdc_send(f.c, &a), 0);
	n = r_read_frame(f.rfd, got, sizeof(got));
	cr_assert_eq(n, len);
	cr_expect_eq(memcmp(got, want, len), 0);
	cr_expect_eq(decode_lim(got, n, LIMIT, &d), 0);
	cr_expect_eq(d.id, a.id);
	fx_close(&f);
}

Test(pdclient, cancel_arrives_as_encoded_and_bad_requests_send_nothing)
{
	uint8_t want[HDR], got[BUF];
	struct pdc_request_args a = min_args();
	struct fx f;

	fx_open(&f);
	a.ntokens = 0;
	cr_expect_eq(pdc_send(f.c, &a), -EINVAL);
	a = min_args();
	a.model = "";
	cr_expect_eq(pdc_send(f.c, &a), -EINVAL);
	r_expect_silence(f.rfd);
	cr_assert_eq(pdc_cancel(f.c, 31), 0);
	pdc_cancel_encode(want, 31);
	cr_assert_eq(r_read_frame(f.rfd, got, sizeof(got)), HDR);
	cr_expect_eq(memcmp(got, want, HDR), 0);
	fx_close(&f);
}

/* The three answers of one request, ROUTED, TOKENS, DONE, as one byte stream; frame ends. */
static size_t answer_stream(uint8_t *buf, uint64_t id, size_t end[3])
{
	size_t at = 0;

	at += put_routed(buf + at, id, &routed1);
	end[0] = at;
	at += put_tokens(buf + at, id, toks, 8);
	end[1] = at;
	at += put_done(buf + at, id, &done1);
	end[2] = at;
	return at;
}

static void expect_answer(const struct pdc_event *ev, uint64_t id, int k)
{
	static const uint8_t type[3] = {PDC_ROUTED, PDC_TOKENS, PDC_DONE};

	cr_assert_eq(ev->type, type[k], "answer %d: type %u", k, ev->type);
	cr_assert_eq(ev->id, id);
	if (k == 0)
		cr_expect_eq(memcmp(&ev->routed, &routed1, sizeof(routed1)), 0);
	if (k == 1) {
		cr_assert_eq(ev->tokens.n, 8);
		cr_expect_eq(memcmp(ev->tokens.ids, toks, sizeof(toks)), 0);
	}
	if (k == 2)
		cr_expect_eq(memcmp(&ev->done, &done1, sizeof(done1)), 0);
}

Test(pdclient, answers_split_across_writes_arrive_whole)
{
	static uint8_t buf[BUF];
	static const size_t piece[] = {1, 2, 3, 5, 7, 11, 13, 4, 16, 1};
	struct pdc_event ev;
	size_t end[3], len, at = 0, i = 0;
	struct fx f;
	int got = 0, rc;

	fx_open(&f);
	len = answer_stream(buf, 99, end);
	while (at < len) {
		size_t n = piece[i++ % (sizeof(piece) / sizeof(piece[0]))];

		n = n < len - at ? n : len - at;
		r_write(f.rfd, buf + at, n);
		at += n;
		/* What a whole frame arrived for comes at once; a partial one waits. */
		while ((rc = pdc_next(f.c, &ev, 0)) == 0)
			expect_answer(&ev, 99, got++);
		cr_assert_eq(rc, -ETIMEDOUT, "pdc_next: %d", rc);
		cr_assert_eq(got, (at >= end[0]) + (at >= end[1]) + (at >= end[2]), "at %zu", at);
	}
	cr_expect_eq(got, 3);
	fx_close(&f);
}

Test(pdclient, answers_in_one_write_come_one_by_one)
{
	static uint8_t buf[BUF];
	struct pdc_event ev;
	size_t end[3], len;
	struct fx f;

	fx_open(&f);
	len = answer_stream(buf, 5, end);
	len += dp_frame_error(buf + len, 6, -ENOENT, "unknown model");
	r_write(f.rfd, buf, len);
	for (int k = 0; k < 3; k++) {
		cr_assert_eq(pdc_next(f.c, &ev, 1000), 0);
		expect_answer(&ev, 5, k);
	}
	cr_assert_eq(pdc_next(f.c, &ev, 1000), 0);
	cr_expect_eq(ev.type, PDC_ERROR);
	cr_expect_eq(ev.id, 6);
	cr_expect_eq(ev.error.error, -ENOENT);
	cr_expect_eq(pdc_next(f.c, &ev, 0), -ETIMEDOUT);
	fx_close(&f);
}

Test(pdclient, router_hang_up_is_econnreset)
{
	static uint8_t buf[BUF];
	struct pdc_event ev;
	size_t end[3];
	struct fx f;

	fx_open(&f);
	answer_stream(buf, 5, end);
	r_write(f.rfd, buf, end[0] + 10); /* a whole ROUTED, and part of the TOKENS */
	close(f.rfd);
	f.rfd = -1;
	cr_assert_eq(pdc_next(f.c, &ev, 1000), 0, "what came before the hang-up still comes");
	expect_answer(&ev, 5, 0);
	cr_expect_eq(pdc_next(f.c, &ev, 1000), -ECONNRESET);
	cr_expect_eq(pdc_next(f.c, &ev, -1), -ECONNRESET);
	fx_close(&f);
}

static long elapsed_ms(const struct timespec *t0)
{
	struct timespec t;

	clock_gettime(CLOCK_MONOTONIC, &t);
	return (t.tv_sec - t0->tv_sec) * 1000 + (t.tv_nsec - t0->tv_nsec) / 1000000;
}

Test(pdclient, silence_is_etimedout)
{
	struct pdc_event ev;
	struct timespec t0;
	struct fx f;
	long ms;

	fx_open(&f);
	clock_gettime(CLOCK_MONOTONIC, &t0);
	cr_assert_eq(pdc_next(f.c, &ev, 60), -ETIMEDOUT);
	ms = elapsed_ms(&t0);
	cr_expect_geq(ms, 59, "returned after %ld ms", ms);
	cr_expect_lt(ms, 5000, "returned after %ld ms", ms);
	cr_expect_eq(pdc_next(f.c, &ev, 0), -ETIMEDOUT);
	fx_close(&f);
}

Test(pdclient, malformed_answer_is_ebadmsg_for_good)
{
	static uint8_t buf[BUF];
	struct pdc_event ev;
	size_t len;
	struct fx f;

	fx_open(&f);
	len = put_done(buf, 1, &done1);
	buf[7] = PDC_REQUEST; /* a sound header, but not an answer */
	r_write(f.rfd, buf, len);
	cr_expect_eq(pdc_next(f.c, &ev, 1000), -EBADMSG);
	len = put_done(buf, 2, &done1);
	r_write(f.rfd, buf, len);
	cr_expect_eq(pdc_next(f.c, &ev, 1000), -EBADMSG, "the stream has lost its framing");
	fx_close(&f);

	fx_open(&f);
	dp_frame_header(buf, PDC_TOKENS, 1, PDC_FRAME_MAX_DEFAULT + 1);
	r_write(f.rfd, buf, HDR);
	cr_expect_eq(pdc_next(f.c, &ev, 1000), -EBADMSG, "a frame over the limit");
	fx_close(&f);

	fx_open(&f);
	put_done(buf, 1, &done1);
	buf[4] ^= 1;
	r_write(f.rfd, buf, HDR);
	cr_expect_eq(pdc_next(f.c, &ev, 1000), -EBADMSG, "bad magic");
	fx_close(&f);
}

/* Large frames, both ways: what a thread writes while the other end reads. */
struct big {
	int fd;
	const void *p;
	size_t n;
	struct pdc_client *c;
	const struct pdc_request_args *a;
	int rc;
};

static void *big_send(void *arg)
{
	struct big *b = arg;

	b->rc = pdc_send(b->c, b->a);
	return NULL;
}

static void *big_write(void *arg)
{
	struct big *b = arg;
	const uint8_t *p = b->p;
	size_t n = b->n;

	while (n) {
		ssize_t k = send(b->fd, p, n < 100000 ? n : 100000, MSG_NOSIGNAL);

		if (k <= 0) {
			b->rc = -errno;
			return NULL;
		}
		p += k;
		n -= (size_t)k;
	}
	return NULL;
}

Test(pdclient, large_frames_cross_in_pieces)
{
	const uint32_t n = 300000; /* 1.2 MB each way: the receive buffer must grow */
	uint32_t *t = malloc(4 * (size_t)n);
	uint8_t *want, *got;
	struct pdc_request_args a = min_args();
	struct pdc_event ev;
	struct big b = {0};
	pthread_t th;
	size_t len;
	struct fx f;

	cr_assert_not_null(t);
	for (uint32_t i = 0; i < n; i++)
		t[i] = i * 2654435761u;
	a.tokens = t;
	a.ntokens = n;
	len = pdc_request_bytes(&a);
	want = malloc(len);
	got = malloc(len);
	cr_assert(want && got);
	cr_assert_eq(pdc_request_encode(want, len, &a), (long)len);
	fx_open(&f);
	b = (struct big){.c = f.c, .a = &a};
	cr_assert_eq(pthread_create(&th, NULL, big_send, &b), 0);
	cr_assert_eq(r_read_frame(f.rfd, got, len), len);
	pthread_join(th, NULL);
	cr_assert_eq(b.rc, 0);
	cr_expect_eq(memcmp(got, want, len), 0);
	cr_expect_eq(decode_lim(got, len, n, &(struct dp_frame_request){0}), 0);

	free(want);
	want = malloc(DP_FRAME_BYTES(8 + 4 * (size_t)n));
	cr_assert_not_null(want);
	len = put_tokens(want, 3, t, n);
	b = (struct big){.fd = f.rfd, .p = want, .n = len};
	cr_assert_eq(pthread_create(&th, NULL, big_write, &b), 0);
	cr_assert_eq(pdc_next(f.c, &ev, IO_MS), 0);
	cr_assert_eq(ev.type, PDC_TOKENS);
	cr_assert_eq(ev.tokens.n, n);
	cr_expect_eq(memcmp(ev.tokens.ids, t, 4 * (size_t)n), 0);
	pthread_join(th, NULL);
	cr_assert_eq(b.rc, 0);
	fx_close(&f);
	free(t);
	free(want);
	free(got);
}

Test(pdclient, connect_refuses_what_it_cannot_parse)
{
	static const char *const bad[] = {"unix:",	 "",	  "nohostport",
					  "host:",	 ":80",	  "host:http",
					  "host:123456", "[]:80", "host:-1"};
	struct pdc_client *c = NULL;
	char longpath[200];

	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
		cr_expect_eq(pdc_connect(bad[i], &c), -EINVAL, "\"%s\"", bad[i]);
	snprintf(longpath, sizeof(longpath), "unix:/%0150d", 0);
	cr_expect_eq(pdc_connect(longpath, &c), -EINVAL, "a path longer than sun_path");
	cr_expect_eq(pdc_connect("unix:/nonexistent/pdrouter.sock", &c), -ENOENT);
	cr_expect_eq(pdc_connect("/nonexistent/pdrouter.sock", &c), -ENOENT);
	cr_expect_null(c);
}

Test(pdclient, bare_path_connects_over_unix)
{
	struct pdc_client *c;
	struct fx f;
	int fd, flags;

	f.lfd = listen_unix(&f);
	cr_assert_eq(pdc_connect(f.path, &c), 0);
	fd = accept_within(f.lfd);
	flags = fcntl(pdc_fd(c), F_GETFD);
	cr_expect(flags >= 0 && (flags & FD_CLOEXEC), "close-on-exec");
	pdc_close(c);
	close(fd);
	close(f.lfd);
	unlink(f.path);
	rmdir(f.dir);
}

/* A TCP listener on @host (an address of @family), port chosen by the kernel; -1 if none. */
static int listen_tcp(int family, const char *host, unsigned *port)
{
	struct sockaddr_storage ss = {0};
	socklen_t len = sizeof(ss);
	int fd = socket(family, SOCK_STREAM | SOCK_CLOEXEC, 0), rc;

	if (fd < 0)
		return -1;
	if (family == AF_INET) {
		struct sockaddr_in *in = (struct sockaddr_in *)&ss;

		in->sin_family = AF_INET;
		rc = inet_pton(AF_INET, host, &in->sin_addr);
		len = sizeof(*in);
	} else {
		struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)&ss;

		in6->sin6_family = AF_INET6;
		rc = inet_pton(AF_INET6, host, &in6->sin6_addr);
		len = sizeof(*in6);
	}
	if (rc != 1 || bind(fd, (struct sockaddr *)&ss, len) || listen(fd, 4) ||
	    getsockname(fd, (struct sockaddr *)&ss, &len)) {
		close(fd);
		return -1;
	}
	*port = ntohs(family == AF_INET ? ((struct sockaddr_in *)&ss)->sin_port
					: ((struct sockaddr_in6 *)&ss)->sin6_port);
	return fd;
}

/* Connect to @fmt (with the port), check the socket's options, pass one frame each way. */
static void tcp_round_trip(int lfd, const char *fmt, unsigned port)
{
	static uint8_t want[BUF], got[BUF];
	struct pdc_request_args a = min_args();
	struct pdc_client *c;
	struct pdc_event ev;
	char addr[64];
	int rfd, one = 0, flags;
	socklen_t olen = sizeof(one);
	size_t len;

	snprintf(addr, sizeof(addr), fmt, port);
	cr_assert_eq(pdc_connect(addr, &c), 0, "%s", addr);
	rfd = accept_within(lfd);
	cr_assert_eq(getsockopt(pdc_fd(c), IPPROTO_TCP, TCP_NODELAY, &one, &olen), 0);
	cr_expect_neq(one, 0, "TCP_NODELAY");
	flags = fcntl(pdc_fd(c), F_GETFD);
	cr_expect(flags >= 0 && (flags & FD_CLOEXEC), "close-on-exec");
	cr_assert_eq(pdc_send(c, &a), 0);
	len = encode(want, &a);
	cr_assert_eq(r_read_frame(rfd, got, sizeof(got)), len);
	cr_expect_eq(memcmp(got, want, len), 0);
	len = put_done(want, a.id, &done1);
	r_write(rfd, want, len);
	cr_assert_eq(pdc_next(c, &ev, IO_MS), 0);
	cr_expect_eq(ev.type, PDC_DONE);
	pdc_close(c);
	close(rfd);
}

Test(pdclient, tcp_over_ipv4_sets_nodelay_and_cloexec)
{
	unsigned port;
	int lfd = listen_tcp(AF_INET, "127.0.0.1", &port);

	if (lfd < 0)
		cr_skip_test("no IPv4 loopback here");
	tcp_round_trip(lfd, "127.0.0.1:%u", port);
	tcp_round_trip(lfd, "tcp:127.0.0.1:%u", port);
	tcp_round_trip(lfd, "localhost:%u", port);
	close(lfd);
}

Test(pdclient, tcp_over_ipv6)
{
	unsigned port;
	int lfd = listen_tcp(AF_INET6, "::1", &port);

	if (lfd < 0)
		cr_skip_test("no IPv6 loopback here");
	tcp_round_trip(lfd, "[::1]:%u", port);
	tcp_round_trip(lfd, "::1:%u", port);
	close(lfd);
}

Test(pdclient, refused_tcp_connect_is_econnrefused)
{
	unsigned port;
	struct pdc_client *c;
	char addr[64];
	int lfd = listen_tcp(AF_INET, "127.0.0.1", &port);

	if (lfd < 0)
		cr_skip_test("no IPv4 loopback here");
	close(lfd); /* nobody listens on the port now */
	snprintf(addr, sizeof(addr), "127.0.0.1:%u", port);
	cr_expect_eq(pdc_connect(addr, &c), -ECONNREFUSED);
}

/* ---- The Python client (dataplane/python/pdclient.py) against the same router. ---- */

TestSuite(pdclient_py);

/* The requests tests/pdclient_py_check.py sends, in order: keep the two lists in step. */
static struct pdc_request_args py_case(int k)
{
	static const uint32_t t3[] = {7, 8, 9};
	struct pdc_request_args a = min_args();

	switch (k) {
	case 0:
		a.tokens = toks;
		a.ntokens = 3;
		a.max_tokens = 8;
		break;
	case 1:
		a = full_args();
		a.fixed.prefill_tokens = 0; /* set in override_set, value false */
		break;
	case 2:
		a.id = 3;
		a.model = "m-\xc3\xbc";
		a.cache_salt = "s";
		a.sampling = "\0\001\377"; /* any bytes */
		a.sampling_len = 3;
		a.flags = PDC_PEEK;
		a.fixed.override_set = PDC_OV_TEMPERATURE;
		a.fixed.temperature = 2.0;
		a.fixed.pin_prefill_worker = 0;
		a.fixed.pin_prefill_dp_rank = 5;
		break;
	case 3:
		a.id = 4;
		a.tokens = t3;
		a.ntokens = 3;
		a.max_tokens = 4;
		break;
	default:
		a.id = 5;
		a.tokens = t3 + 2;
		a.ntokens = 1;
		a.max_tokens = 2;
		a.flags = PDC_PEEK;
		break;
	}
	return a;
}

/* Read the next client frame and check it is, byte for byte, C's encoding of @a. */
static void expect_frame(int fd, const uint8_t *want, size_t len, const char *what)
{
	static uint8_t got[BUF];
	size_t n = r_read_frame(fd, got, sizeof(got));

	cr_assert_eq(n, len, "%s: %zu bytes, C writes %zu", what, n, len);
	for (size_t i = 0; i < len; i++)
		cr_assert_eq(got[i], want[i], "%s: byte %zu is %#x, C writes %#x", what, i, got[i],
			     want[i]);
}

static void expect_request(int fd, int k)
{
	static uint8_t want[BUF];
	struct pdc_request_args a = py_case(k);
	char what[32];

	snprintf(what, sizeof(what), "request case %d", k);
	expect_frame(fd, want, encode(want, &a), what);
}

/* Write @len bytes in pieces, pausing between them, so the client sees frames arrive in parts. */
static void write_slowly(int fd, const uint8_t *p, size_t len)
{
	for (size_t at = 0, n; at < len; at += n) {
		n = len - at < 7 ? len - at : 7;
		r_write(fd, p + at, n);
		usleep(1000);
	}
}

static pid_t spawn_python(const char *sock)
{
	pid_t pid = fork();

	cr_assert_geq(pid, 0);
	if (!pid) {
		execlp("python3", "python3", PD_PDCLIENT_PY_CHECK, PD_PDCLIENT_PY_DIR, sock,
		       (char *)NULL);
		_exit(127);
	}
	return pid;
}

Test(pdclient_py, python_client_speaks_the_c_wire_format)
{
	static uint8_t buf[BUF];
	static const uint32_t streamed[] = {10, 11, 12};
	struct pdc_routed peek = {PDC_PLAN_DISAGG, 2, 0, PDC_NO_WORKER, 0, 3};
	struct pdc_done cancelled = {PDC_FINISH_CANCELLED, 3, 0, 0};
	struct pdc_done length = {PDC_FINISH_LENGTH, 3, 1, 3};
	struct fx f;
	size_t len;
	pid_t pid;
	int status;

	if (system("command -v python3 >/dev/null 2>&1") != 0)
		cr_skip_test("python3 is not installed");
	f.lfd = listen_unix(&f);
	pid = spawn_python(f.path);
	f.rfd = accept_within(f.lfd);
	for (int k = 0; k < 3; k++)
		expect_request(f.rfd, k);
	/* Request 1: ROUTED, TOKENS twice, DONE, dribbled out. */
	len = put_routed(buf, 1, &routed1);
	len += put_tokens(buf + len, 1, streamed, 2);
	len += put_tokens(buf + len, 1, streamed + 2, 1);
	len += put_done(buf + len, 1, &length);
	write_slowly(f.rfd, buf, len);
	/* generate() of request 4: an ERROR. */
	expect_request(f.rfd, 3);
	len = dp_frame_error(buf, 4, -ENODEV, "no eligible worker");
	write_slowly(f.rfd, buf, len);
	/* generate() of request 5, a peek: ROUTED is its last frame. */
	expect_request(f.rfd, 4);
	len = put_routed(buf, 5, &peek);
	r_write(f.rfd, buf, len);
	/* cancel(6): DONE, cancelled. */
	pdc_cancel_encode(buf, 6);
	expect_frame(f.rfd, buf, HDR, "cancel");
	len = put_done(buf, 6, &cancelled);
	r_write(f.rfd, buf, len);
	/* cancel(7) says the client has seen its timeout: hang up. */
	pdc_cancel_encode(buf, 7);
	expect_frame(f.rfd, buf, HDR, "cancel");
	close(f.rfd);
	f.rfd = -1;
	cr_assert_eq(waitpid(pid, &status, 0), pid);
	cr_expect(WIFEXITED(status) && WEXITSTATUS(status) == 0,
		  "pdclient_py_check.py failed (status %#x); its output is above", status);
	close(f.lfd);
	unlink(f.path);
	rmdir(f.dir);
}
