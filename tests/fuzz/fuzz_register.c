/*
 * Fuzz target for the decoding of REGISTER messages (control/register.h), which come from a
 * worker that may be hostile. LLVMFuzzerTestOneInput() hands the input, as one packet, to
 * ctl_registration_decode(). It aborts when the decoder returns anything but 0, -EBADMSG,
 * -EPROTONOSUPPORT or -EINVAL; when an error comes without a terminated reason, or with another
 * code when there is no reason buffer; when a decoded registration holds a string that is not
 * NUL-terminated within its buffer or is longer than RT_NAME_MAX, more than RT_DOMAIN_KEYS
 * domains, or a spec pointing anywhere but into its own strings; or when the registration does
 * not encode back (pdw_register_encode()) to the very bytes it came from. A decoded spec then
 * goes to rt_register() on a router set up once (its own rule: transfer domain "rack"
 * required), which must answer 0 (and rt_unregister() then 0 too), or -EINVAL, -ENOSPC or
 * -ENOMEM with a reason; and it must not crash.
 *
 * Two builds of this file:
 *  - fuzz_register, a meson test in suite 'fuzz': main() below runs a fixed, seeded number of
 *    inputs (default 100,000), each a valid message pdw_register_encode() wrote from random
 *    fields (sometimes with a name of 256 bytes or 9 domains), then mutated (bit flips,
 *    truncation, rewrites of the length fields, header fields, trailing bytes, NULs) or not; an
 *    input left whole must decode as its fields say. Inputs start at every alignment and end
 *    where their heap block does, so that AddressSanitizer sees a read past the packet. The
 *    router starts afresh every 1,024 inputs, so that names earlier inputs interned (they
 *    outlive their workers) do not fill it. `fuzz_register [-n INPUTS] [-s SEED] [FILE...]`
 *    runs FILE... instead (a crash to replay).
 *  - fuzz_register_libfuzzer, with clang's libFuzzer only (not built by default, not a test):
 *      CC=clang meson setup /tmp/build-fuzz && ninja -C /tmp/build-fuzz \
 *              tests/fuzz_register_libfuzzer
 *      /tmp/build-fuzz/tests/fuzz_register_libfuzzer -max_total_time=30
 *    It compiles control/register.c itself, so the decoder carries the coverage
 *    instrumentation. A crash is saved as crash-<sha1> in the working directory;
 *    fuzz_register FILE replays it.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <math.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "proto.h"
#include "register.h"
#include "rng.h"

#include "fuzz_common.h"
#include "route.h"

const char t_fuzz_name[] = "fuzz_register";

#define TARGETS 64u
#define WORKER 7u
#define HDR sizeof(struct pdw_hdr)
#define FIXED (HDR + sizeof(struct pdw_register))

/* Decoder outcomes: 0, -EBADMSG, -EPROTONOSUPPORT, -EINVAL; then rt_register() successes. */
static unsigned long outcome[5];

static struct {
	bool ready;
	struct pdx x;
	struct rt_router rt;
} g;

static void router_setup(void)
{
	struct pdx_config xc = {.max_targets = TARGETS, .max_readers = 1};
	struct rt_config cfg;
	int rc;

	rt_config_default(&cfg);
	cfg.max_targets = TARGETS;
	cfg.max_requests = 16;
	cfg.max_active_blocks = 256;
	cfg.max_prompt_blocks = 256;
	cfg.transfer = (struct rt_transfer){"rack", RT_TRANSFER_REQUIRED, 0.5};
	if (pdx_init(&g.x, &xc))
		t_fuzz_fail("pdx_init");
	rc = rt_router_init(&g.rt, &cfg, &g.x);
	if (rc)
		t_fuzz_fail("rt_router_init: %d", rc);
	g.ready = true;
}

/* A string of the registration: terminated within its @cap bytes, at most RT_NAME_MAX long. */
static void check_string(const char *what, unsigned i, const char *s, size_t cap)
{
	const char *end = memchr(s, '\0', cap);

	if (!end)
		t_fuzz_fail("%s %u is not terminated within its %zu bytes", what, i, cap);
	if ((size_t)(end - s) > RT_NAME_MAX)
		t_fuzz_fail("%s %u is %td bytes long", what, i, end - s);
}

/* A registration encodes back to the message it was decoded from, byte for byte. */
static void check_reencode(const struct ctl_registration *r, const uint8_t *in, size_t n)
{
	static uint8_t out[PDW_MSG_MAX];
	const struct rt_worker_spec *s = &r->spec;
	const char *names[RT_DOMAIN_KEYS], *values[RT_DOMAIN_KEYS];
	struct pdw_register_args a = {
	    .fixed = {.worker_type = (uint32_t)s->type,
		      .model_type = (uint32_t)s->model_type,
		      .needs = s->needs,
		      .block_size = s->block_size,
		      .kv_capacity_blocks = s->kv_capacity_blocks,
		      .max_batched_tokens = s->max_batched_tokens,
		      .dp_rank_start = s->dp_rank_start,
		      .dp_ranks = s->dp_ranks,
		      .transfer_enforcement = (uint32_t)s->transfer.enforcement,
		      .preferred_weight = s->transfer.preferred_weight},
	    .model = s->model,
	    .endpoint = r->endpoint,
	    .transfer_domain = s->transfer.domain,
	    .domain_names = names,
	    .domain_values = values,
	    .ndomains = (uint16_t)s->ndomains,
	};
	struct pdw_hdr h;
	long len;

	for (size_t i = 0; i < s->ndomains; i++) {
		names[i] = s->domains[i].name;
		values[i] = s->domains[i].value;
	}
	memcpy(&h, in, sizeof(h));
	len = pdw_register_encode(out, sizeof(out), &a, h.seq);
	if (len != (long)n)
		t_fuzz_fail("a registration decoded from %zu bytes encodes to %ld", n, len);
	for (size_t i = 0; i < n; i++)
		if (out[i] != in[i])
			t_fuzz_fail(
			    "a registration encodes back to other bytes: byte %zu is %#x, not %#x",
			    i, out[i], in[i]);
}

static void check_decoded(const struct ctl_registration *r, const uint8_t *in, size_t n)
{
	const struct rt_worker_spec *s = &r->spec;

	check_string("model", 0, r->model, sizeof(r->model));
	check_string("endpoint", 0, r->endpoint, sizeof(r->endpoint));
	check_string("transfer domain", 0, r->transfer, sizeof(r->transfer));
	if (s->model != r->model)
		t_fuzz_fail("the spec's model is not the registration's");
	if (s->transfer.domain && s->transfer.domain != r->transfer)
		t_fuzz_fail("the spec's transfer domain is not the registration's");
	if (s->transfer.domain && !r->transfer[0])
		t_fuzz_fail("an empty transfer domain decoded as a name");
	if (s->ndomains > RT_DOMAIN_KEYS)
		t_fuzz_fail("%zu domains", s->ndomains);
	if (s->domains != r->domains)
		t_fuzz_fail("the spec's domains are not the registration's");
	for (unsigned i = 0; i < s->ndomains; i++) {
		if (s->domains[i].name != r->names[i] || s->domains[i].value != r->values[i])
			t_fuzz_fail("domain %u points elsewhere", i);
		check_string("domain name", i, r->names[i], sizeof(r->names[i]));
		check_string("domain value", i, r->values[i], sizeof(r->values[i]));
	}
	check_reencode(r, in, n);
}

/* rt_register() of a decoded spec, and rt_unregister() when it succeeded. */
static void check_register(const struct ctl_registration *r)
{
	char err[128];
	int rc;

	if (!g.ready)
		router_setup();
	memset(err, 0, sizeof(err));
	rc = rt_register(&g.rt, WORKER, &r->spec, err, sizeof(err));
	if (!rc) {
		outcome[4]++;
		rc = rt_unregister(&g.rt, WORKER);
		if (rc)
			t_fuzz_fail("rt_unregister: %d", rc);
		return;
	}
	if (rc != -EINVAL && rc != -ENOSPC && rc != -ENOMEM)
		t_fuzz_fail("rt_register: %d (%s)", rc, err);
	if (!err[0] || !memchr(err, '\0', sizeof(err)))
		t_fuzz_fail("rt_register: %d without a reason", rc);
}

/* One input: what the decoder returned. */
static int run_one(const uint8_t *data, size_t size)
{
	static struct ctl_registration r;
	char err[128];
	int rc, again;

	memset(err, 0, sizeof(err));
	rc = ctl_registration_decode(&r, data, size, err, sizeof(err));
	switch (rc) {
	case 0:
		outcome[0]++;
		check_decoded(&r, data, size);
		check_register(&r);
		break;
	case -EBADMSG:
		outcome[1]++;
		break;
	case -EPROTONOSUPPORT:
		outcome[2]++;
		break;
	case -EINVAL:
		outcome[3]++;
		break;
	default:
		t_fuzz_fail("decode of %zu bytes: %d (%s)", size, rc, err);
	}
	if (rc && (!err[0] || !memchr(err, '\0', sizeof(err))))
		t_fuzz_fail("decode of %zu bytes: %d without a terminated reason", size, rc);
	again = ctl_registration_decode(&r, data, size, NULL, 0);
	if (again != rc)
		t_fuzz_fail("decode of %zu bytes: %d, and %d without a reason buffer", size, rc,
			    again);
	return rc;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	t_fuzz_set_input(data, size);
	run_one(data, size);
	return 0;
}

#ifndef PD_LIBFUZZER

/* ---- The replay driver: messages a worker encoded, then mutated; for meson test. ---- */

#define BUF 8192u
#define EVERY 1024u /* inputs between two fresh routers */

static struct t_rng rng;

static void router_reset(void)
{
	if (!g.ready)
		return;
	rt_router_destroy(&g.rt);
	pdx_destroy(&g.x);
	g.ready = false;
}

/* A message being built: its bytes, where its length fields are, what it decodes to. */
struct input {
	uint8_t buf[BUF];
	size_t len;
	size_t dom[RT_DOMAIN_KEYS + 1]; /* offsets of the domain headers */
	uint32_t ndom;
	int want;
};

/* Domain names: "rack" is the router's rule; eight in all, as many as a router interns. */
static const char *const vocab_name[RT_DOMAIN_KEYS] = {"rack", "zone", "host", "pod",
						       "row",  "dc",   "node", "nic"};
static const char *const vocab_model[] = {"m", "llama-3-8b", "org/qwen2.5"};

/* A random name into @dst (room for RT_NAME_MAX + 2): printable or high bytes, never NUL,
 * mostly short, sometimes 0, 255 or 256 bytes long. */
static const char *random_name(char *dst)
{
	uint32_t k = t_rng_below(&rng, 100), n;

	n = k < 3 ? 0 : k < 8 ? RT_NAME_MAX : k < 10 ? RT_NAME_MAX + 1 : 1 + t_rng_below(&rng, 16);
	for (uint32_t i = 0; i < n; i++)
		dst[i] = (char)(t_rng_chance(&rng, 95) ? 0x21 + t_rng_below(&rng, 0x5E)
						       : 0x80 + t_rng_below(&rng, 0x80));
	dst[n] = '\0';
	return dst;
}

static void random_fixed(struct pdw_register *f)
{
	static const uint32_t mt[RT_WORKER_TYPES] = {RT_MODEL_EMPTY, RT_MODEL_CHAT,
						     RT_MODEL_COMPLETIONS};
	static const uint32_t needs[RT_WORKER_TYPES] = {RT_NEEDS_DECODE, RT_NEEDS_PREFILL, 0};
	static const double weight[] = {0.0, 0.25, 1.0, -0.0, -0.5, 1.5, NAN, INFINITY};
	uint32_t type = t_rng_below(&rng, RT_WORKER_TYPES);

	f->worker_type = t_rng_chance(&rng, 95) ? type : (uint32_t)t_rng_next(&rng);
	f->model_type = t_rng_chance(&rng, 95) ? mt[type] : t_rng_below(&rng, 5);
	f->needs = t_rng_chance(&rng, 95) ? needs[type] : t_rng_below(&rng, 4);
	f->block_size =
	    t_rng_chance(&rng, 90) ? 1u << t_rng_below(&rng, 11) : t_rng_below(&rng, 4096);
	f->kv_capacity_blocks = t_rng_chance(&rng, 95) ? 1 + t_rng_below(&rng, 1u << 20)
						       : t_rng_next(&rng) >> t_rng_below(&rng, 64);
	f->max_batched_tokens = t_rng_chance(&rng, 95) ? 1 + t_rng_below(&rng, 65536) : 0;
	f->dp_rank_start =
	    t_rng_chance(&rng, 90) ? t_rng_below(&rng, 8) : (uint32_t)t_rng_next(&rng);
	f->dp_ranks = t_rng_chance(&rng, 90) ? 1 + t_rng_below(&rng, 4) : t_rng_below(&rng, 100);
	f->transfer_enforcement = t_rng_below(&rng, 4);
	f->preferred_weight = weight[t_rng_below(&rng, sizeof(weight) / sizeof(weight[0]))];
}

/* A valid message of random fields, encoded; in->want: 0, or -EINVAL for an oversized name
 * or 9 domains. */
static void generate(struct input *in)
{
	static char model[RT_NAME_MAX + 2], endpoint[RT_NAME_MAX + 2], transfer[RT_NAME_MAX + 2];
	static char names[RT_DOMAIN_KEYS + 1][RT_NAME_MAX + 2];
	static char values[RT_DOMAIN_KEYS + 1][RT_NAME_MAX + 2];
	const char *np[RT_DOMAIN_KEYS + 1], *vp[RT_DOMAIN_KEYS + 1];
	struct pdw_register_args a = {.domain_names = np, .domain_values = vp};
	uint32_t first = t_rng_below(&rng, RT_DOMAIN_KEYS);
	size_t at, longest = 0;
	long len;

	random_fixed(&a.fixed);
	a.model = t_rng_chance(&rng, 80) ? vocab_model[t_rng_below(&rng, 3)] : random_name(model);
	a.endpoint = random_name(endpoint);
	a.transfer_domain = t_rng_chance(&rng, 40)   ? NULL
			    : t_rng_chance(&rng, 90) ? vocab_name[t_rng_below(&rng, RT_DOMAIN_KEYS)]
						     : random_name(transfer);
	a.ndomains = (uint16_t)(t_rng_chance(&rng, 3) ? RT_DOMAIN_KEYS + 1
						      : t_rng_below(&rng, RT_DOMAIN_KEYS + 1));
	if (a.ndomains && t_rng_chance(&rng, 85))
		first = 0; /* "rack", which the router's rule requires */
	for (uint16_t i = 0; i < a.ndomains; i++) {
		np[i] = t_rng_chance(&rng, 95) ? vocab_name[(first + i) % RT_DOMAIN_KEYS]
					       : random_name(names[i]);
		if (i == RT_DOMAIN_KEYS)
			np[i] = "ninth";
		if (t_rng_chance(&rng, 90)) {
			snprintf(values[i], sizeof(values[i]), "v%u", t_rng_below(&rng, 64));
			vp[i] = values[i];
		} else {
			vp[i] = random_name(values[i]);
		}
	}
	len = pdw_register_encode(in->buf, sizeof(in->buf), &a, (uint32_t)t_rng_next(&rng));
	if (len < (long)FIXED)
		t_fuzz_fail("pdw_register_encode: %ld", len);
	in->len = (size_t)len;
	longest = strlen(a.model) > longest ? strlen(a.model) : longest;
	longest = strlen(a.endpoint) > longest ? strlen(a.endpoint) : longest;
	if (a.transfer_domain && strlen(a.transfer_domain) > longest)
		longest = strlen(a.transfer_domain);
	at = FIXED + strlen(a.model) + strlen(a.endpoint) +
	     (a.transfer_domain ? strlen(a.transfer_domain) : 0);
	for (uint16_t i = 0; i < a.ndomains; i++) {
		in->dom[i] = at;
		at += sizeof(struct pdw_domain) + strlen(np[i]) + strlen(vp[i]);
		longest = strlen(np[i]) > longest ? strlen(np[i]) : longest;
		longest = strlen(vp[i]) > longest ? strlen(vp[i]) : longest;
	}
	if (at != in->len)
		t_fuzz_fail("pdw_register_encode: %zu bytes, the fields say %zu", in->len, at);
	in->ndom = a.ndomains;
	in->want = longest > RT_NAME_MAX || a.ndomains > RT_DOMAIN_KEYS ? -EINVAL : 0;
}

static void put16(struct input *in, size_t at, uint16_t v)
{
	if (at + 2 <= in->len)
		memcpy(in->buf + at, &v, 2);
}

static uint16_t get16(const struct input *in, size_t at)
{
	uint16_t v = 0;

	if (at + 2 <= in->len)
		memcpy(&v, in->buf + at, 2);
	return v;
}

static void put32(struct input *in, size_t at, uint32_t v)
{
	if (at + 4 <= in->len)
		memcpy(in->buf + at, &v, 4);
}

/* The header's len made the packet's again. */
static void fix_len(struct input *in)
{
	put32(in, offsetof(struct pdw_hdr, len), (uint32_t)in->len);
}

static uint16_t interesting16(uint16_t old)
{
	static const uint16_t v[] = {0,
				     1,
				     2,
				     RT_NAME_MAX - 1,
				     RT_NAME_MAX,
				     RT_NAME_MAX + 1,
				     RT_DOMAIN_KEYS,
				     RT_DOMAIN_KEYS + 1,
				     0x7FFF,
				     0x8000,
				     0xFFFF};

	switch (t_rng_below(&rng, 4)) {
	case 0:
		return (uint16_t)(old + t_rng_below(&rng, 5) - 2);
	case 1:
		return (uint16_t)t_rng_next(&rng);
	default:
		return v[t_rng_below(&rng, sizeof(v) / sizeof(v[0]))];
	}
}

/* Offset of one of the message's 16-bit length fields: a string's, ndomains, a domain's. */
static size_t length_field(const struct input *in)
{
	uint32_t k = t_rng_below(&rng, 4 + 2 * in->ndom);

	if (k < 4)
		return HDR + offsetof(struct pdw_register, model_len) + 2 * k;
	k -= 4;
	return in->dom[k / 2] + 2 * (k % 2);
}

static void mutate_once(struct input *in)
{
	size_t at, to;
	uint16_t move;

	switch (t_rng_below(&rng, 10)) {
	case 0: /* a bit anywhere */
	case 1:
		if (in->len) {
			at = t_rng_below(&rng, (uint32_t)in->len);
			in->buf[at] ^= (uint8_t)(1u << t_rng_below(&rng, 8));
		}
		break;
	case 2: /* truncation, the header agreeing or not */
		in->len = t_rng_below(&rng, (uint32_t)in->len + 1);
		if (t_rng_chance(&rng, 50))
			fix_len(in);
		break;
	case 3: /* a length field rewritten */
	case 4:
		at = length_field(in);
		put16(in, at, interesting16(get16(in, at)));
		break;
	case 5: /* bytes moved from one string to the next: the total still adds up */
		at = HDR + offsetof(struct pdw_register, model_len) + 2 * t_rng_below(&rng, 2);
		to = at + 2;
		move = (uint16_t)(1 + t_rng_below(&rng, 4));
		if (get16(in, to) >= move) {
			put16(in, at, (uint16_t)(get16(in, at) + move));
			put16(in, to, (uint16_t)(get16(in, to) - move));
		}
		break;
	case 6: /* the header's len, version, type or magic */
		at = t_rng_below(&rng, 4);
		if (at == 0)
			put32(in, offsetof(struct pdw_hdr, len),
			      (uint32_t)in->len + t_rng_below(&rng, 5) - 2);
		else if (at == 1)
			put16(in, offsetof(struct pdw_hdr, version), interesting16(PDW_VERSION));
		else if (at == 2)
			put16(in, offsetof(struct pdw_hdr, type), (uint16_t)t_rng_below(&rng, 5));
		else
			put32(in, 0, PDW_MAGIC ^ 1u << t_rng_below(&rng, 32));
		break;
	case 7: /* bytes after the message, the header agreeing or not */
		for (uint32_t k = 1 + t_rng_below(&rng, 8); k && in->len < BUF; k--)
			in->buf[in->len++] = (uint8_t)t_rng_next(&rng);
		if (t_rng_chance(&rng, 50))
			fix_len(in);
		break;
	case 8: /* a NUL in the strings */
		if (in->len > FIXED)
			in->buf[FIXED + t_rng_below(&rng, (uint32_t)(in->len - FIXED))] = 0;
		break;
	default: /* a random byte anywhere */
		if (in->len)
			in->buf[t_rng_below(&rng, (uint32_t)in->len)] = (uint8_t)t_rng_next(&rng);
	}
}

/* Run @n bytes of @data from a heap block of their size, @off bytes into it, so that a read
 * past the packet meets AddressSanitizer's redzone; returns what the decoder said. */
static int run_copy(const uint8_t *data, size_t n, size_t off)
{
	uint8_t *p = malloc(off + n + !(off + n));
	int rc;

	if (!p)
		t_fuzz_fail("out of memory");
	memcpy(p + off, data, n);
	t_fuzz_set_input(p + off, n);
	rc = run_one(p + off, n);
	free(p);
	return rc;
}

int main(int argc, char **argv)
{
	int files;
	static struct input in;
	unsigned long inputs = 100000, whole = 0;
	uint64_t seed = 42;
	int rc;

	files = t_fuzz_begin(argc, argv, &inputs, &seed);
	if (files < 0)
		return 2;
	t_rng_seed(&rng, seed);
	for (t_fuzz_input_number = 0; t_fuzz_input_number < inputs; t_fuzz_input_number++) {
		bool mutated = t_rng_chance(&rng, 80);

		if (t_fuzz_input_number % EVERY == 0)
			router_reset();
		generate(&in);
		for (uint32_t k = mutated ? 1 + t_rng_below(&rng, 3) : 0; k; k--)
			mutate_once(&in);
		rc = run_copy(in.buf, in.len, t_fuzz_input_number % 8);
		if (!mutated && rc != in.want)
			t_fuzz_fail("a message as encoded: %d, want %d", rc, in.want);
		whole += !mutated;
	}
	router_reset();
	printf("fuzz_register: seed %llu; %lu whole; decoded %lu (registered %lu), -EBADMSG %lu, "
	       "-EPROTONOSUPPORT %lu, -EINVAL %lu\n",
	       (unsigned long long)seed, whole, outcome[0], outcome[4], outcome[1], outcome[2],
	       outcome[3]);
	printf("fuzz_register: %lu inputs, ok\n", inputs + (unsigned long)files);
	return 0;
}

#endif
