/*
 * The REGISTER message of the control socket (shm/proto.h) from pdw_register_encode() to
 * ctl_registration_decode() (control/register.h) and on to rt_register(). It proves that:
 *  - a round trip reproduces every field (types, needs, block size, capacity, batched tokens,
 *    DP ranks, the transfer rule, model, endpoint, 0..8 topology domains), an absent transfer
 *    domain comes back NULL, and the decoded spec registers and routes (aggregated, and a
 *    prefill and a decode worker of one disaggregated model);
 *  - the wire format is checked as hostile input: every truncation, a trailing byte, a wrong
 *    magic, type or length, a NUL in a string and lengths past the packet give -EBADMSG, another
 *    version -EPROTONOSUPPORT, a 256-byte name or 9 domains -EINVAL, each with a reason (and a
 *    NULL reason buffer is allowed);
 *  - what the fields mean is left to rt_register(): a block size of 3 decodes, then is refused;
 *  - the encoder returns -E2BIG for every cap too small (writing nothing past it), for a string
 *    over 65,535 bytes and for a message over PDW_MSG_MAX, and otherwise the header's length.
 */
#include <criterion/criterion.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "helpers.h"
#include "proto.h"
#include "register.h"
#include "route_fixture.h"

#define HDR sizeof(struct pdw_hdr)
#define FIXED (HDR + sizeof(struct pdw_register))
#define OFF_LEN 8		 /* pdw_hdr.len */
#define OFF_MODEL_LEN (HDR + 48) /* pdw_register.model_len */
#define OFF_NDOMAINS (HDR + 54)	 /* pdw_register.ndomains */
#define NTOK 64u

static const char *const dnames[RT_DOMAIN_KEYS + 1] = {"zone", "rack", "host", "pod", "row",
						       "dc",   "node", "nic",  "gpu"};
static const char *const dvalues[RT_DOMAIN_KEYS + 1] = {"z-east-1", "r22", "h7",   "p0", "row-9",
							"dc/2",	    "n",   "nic0", "g"};

/* Messages and decodings are big for a stack: one of each, per test process. */
static unsigned char msg[2 * PDW_MSG_MAX];
static unsigned char copy[2 * PDW_MSG_MAX];
static struct ctl_registration reg;

/* An aggregated worker with every field set to something other than a default. */
static struct pdw_register_args args_agg(uint16_t ndomains)
{
	return (struct pdw_register_args){
	    .fixed = {.worker_type = RT_AGGREGATED,
		      .model_type = RT_MODEL_COMPLETIONS,
		      .needs = 0,
		      .block_size = 32,
		      .kv_capacity_blocks = 1ull << 40 | 7,
		      .max_batched_tokens = 12345,
		      .dp_rank_start = 5,
		      .dp_ranks = 3,
		      .transfer_enforcement = RT_TRANSFER_PREFERRED,
		      .preferred_weight = 0.3}, /* no float holds it: a double all the way */
	    .model = "org/model-7b",
	    .endpoint = "dyn://ns.backend.generate",
	    .transfer_domain = "zone", /* dnames[0]: the router interns at most 8 names */
	    .domain_names = dnames,
	    .domain_values = dvalues,
	    .ndomains = ndomains,
	};
}

static uint32_t rd32(const void *p, size_t at)
{
	uint32_t v;

	memcpy(&v, (const unsigned char *)p + at, 4);
	return v;
}

static void wr32(void *p, size_t at, uint32_t v)
{
	memcpy((unsigned char *)p + at, &v, 4);
}

static void wr16(void *p, size_t at, uint16_t v)
{
	memcpy((unsigned char *)p + at, &v, 2);
}

static size_t slen(const char *s)
{
	return s ? strlen(s) : 0;
}

/* The bytes @a must encode to: header, fixed part, then every string and domain header. */
static size_t wire_size(const struct pdw_register_args *a)
{
	size_t n = FIXED + slen(a->model) + slen(a->endpoint) + slen(a->transfer_domain);

	for (uint16_t i = 0; i < a->ndomains; i++)
		n += sizeof(struct pdw_domain) + slen(a->domain_names[i]) +
		     slen(a->domain_values[i]);
	return n;
}

/* Encode @a into msg: it must succeed with the size and the header of a REGISTER. */
static size_t encode(const struct pdw_register_args *a, uint32_t seq)
{
	long n = pdw_register_encode(msg, sizeof(msg), a, seq);
	struct pdw_hdr h;

	cr_assert_eq(n, (long)wire_size(a), "pdw_register_encode: %ld, want %zu", n, wire_size(a));
	memcpy(&h, msg, sizeof(h));
	cr_assert_eq(h.magic, PDW_MAGIC);
	cr_assert_eq(h.version, PDW_VERSION);
	cr_assert_eq(h.type, PDW_REGISTER);
	cr_assert_eq(h.len, (uint32_t)n, "header len %u, returned %ld", h.len, n);
	cr_assert_eq(h.seq, seq);
	return (size_t)n;
}

/* Decode @len bytes of @m: it must succeed. */
static void decode_ok(const void *m, size_t len)
{
	char err[256] = "";
	int rc = ctl_registration_decode(&reg, m, len, err, sizeof(err));

	cr_assert_eq(rc, 0, "decode of %zu bytes: %d (%s)", len, rc, err);
}

/*
 * Decode @len bytes of @m: it must fail with @want and a reason (containing @needle unless
 * NULL), and fail the same with no reason buffer.
 */
static void expect_refused(const void *m, size_t len, int want, const char *needle,
			   const char *what)
{
	char err[256];
	int rc;

	memset(err, 0, sizeof(err));
	rc = ctl_registration_decode(&reg, m, len, err, sizeof(err));
	cr_assert_eq(rc, want, "%s (%zu bytes): %d '%s', want %d", what, len, rc, err, want);
	cr_assert(err[0], "%s: no reason given", what);
	cr_assert(memchr(err, '\0', sizeof(err)), "%s: reason not terminated", what);
	if (needle)
		cr_assert(strstr(err, needle), "%s: reason '%s' does not mention '%s'", what, err,
			  needle);
	rc = ctl_registration_decode(&reg, m, len, NULL, 0);
	cr_assert_eq(rc, want, "%s, no reason buffer: %d, want %d", what, rc, want);
	rc = ctl_registration_decode(&reg, m, len, NULL, 64);
	cr_assert_eq(rc, want, "%s, NULL reason of 64 bytes: %d, want %d", what, rc, want);
}

/* reg must hold exactly what @a registered, its spec pointing into reg's own strings. */
static void expect_spec(const struct pdw_register_args *a)
{
	const struct rt_worker_spec *s = &reg.spec;
	double w = a->fixed.preferred_weight;

	cr_assert_eq(s->type, (enum rt_worker_type)a->fixed.worker_type);
	cr_assert_eq(s->model_type, (enum rt_model_type)a->fixed.model_type);
	cr_assert_eq(s->needs, a->fixed.needs);
	cr_assert_eq(s->block_size, a->fixed.block_size);
	cr_assert_eq(s->kv_capacity_blocks, a->fixed.kv_capacity_blocks);
	cr_assert_eq(s->max_batched_tokens, a->fixed.max_batched_tokens);
	cr_assert_eq(s->dp_rank_start, a->fixed.dp_rank_start);
	cr_assert_eq(s->dp_ranks, a->fixed.dp_ranks);
	cr_assert_eq(s->transfer.enforcement, (enum rt_enforcement)a->fixed.transfer_enforcement);
	cr_assert_eq(memcmp(&s->transfer.preferred_weight, &w, sizeof(w)), 0, "weight %g, want %g",
		     s->transfer.preferred_weight, w);
	cr_assert_eq((void *)s->model, (void *)reg.model);
	cr_assert_str_eq(s->model, a->model ? a->model : "");
	cr_assert_str_eq(reg.endpoint, a->endpoint ? a->endpoint : "");
	if (slen(a->transfer_domain)) {
		cr_assert_eq((void *)s->transfer.domain, (void *)reg.transfer);
		cr_assert_str_eq(s->transfer.domain, a->transfer_domain);
	} else {
		cr_assert_null(s->transfer.domain);
	}
	cr_assert_eq(s->ndomains, a->ndomains);
	cr_assert_eq((void *)s->domains, (void *)reg.domains);
	for (uint16_t i = 0; i < a->ndomains; i++) {
		cr_assert_eq((void *)s->domains[i].name, (void *)reg.names[i]);
		cr_assert_eq((void *)s->domains[i].value, (void *)reg.values[i]);
		cr_assert_str_eq(s->domains[i].name, a->domain_names[i], "domain %u", i);
		cr_assert_str_eq(s->domains[i].value, a->domain_values[i], "domain %u", i);
	}
}

/* rt_register() of the decoded spec as @worker must succeed. */
static void register_spec(struct t_route *t, uint32_t worker)
{
	char err[256] = "";
	int rc = rt_register(&t->rt, worker, &reg.spec, err, sizeof(err));

	cr_assert_eq(rc, 0, "rt_register(worker %u): %d (%s)", worker, rc, err);
}

Test(ctl_register, round_trip_reproduces_every_field_and_registers_and_routes)
{
	uint32_t tok[NTOK];

	for (uint16_t nd = 0; nd <= RT_DOMAIN_KEYS; nd++) {
		struct pdw_register_args a = args_agg(nd);
		size_t len = encode(&a, 1000u + nd);
		struct t_route t;
		struct rt_request rq;
		struct rt_plan plan;
		int rc;

		decode_ok(msg, len);
		expect_spec(&a);
		t_route_open(&t, NULL);
		register_spec(&t, 40u + nd);
		t_tokens(tok, NTOK, nd);
		rq = t_request(&t, a.model, tok, NTOK, 0);
		rc = rt_route(&t.core, &rq, &plan);
		cr_assert_eq(rc, 0, "%u domains: rt_route %d", nd, rc);
		cr_assert_eq(plan.kind, RT_PLAN_AGGREGATED);
		cr_assert_eq(plan.first.worker, 40u + nd);
		cr_assert(plan.first.dp_rank >= 5 && plan.first.dp_rank < 8, "rank %u",
			  plan.first.dp_rank);
		cr_assert_eq(plan.first.target,
			     rt_target_find(&t.rt, 40u + nd, plan.first.dp_rank));
		cr_assert_eq(rt_release(&t.core, plan.first.load), 0);
		t_route_close(&t);
	}
}

Test(ctl_register, round_trip_of_a_prefill_and_a_decode_worker_routes_disaggregated)
{
	static const char *const rack_name[1] = {"rack"};
	static const char *const rack_value[1] = {"r1"};
	struct pdw_register_args p = {
	    .fixed = {.worker_type = RT_PREFILL,
		      .model_type = RT_MODEL_EMPTY,
		      .needs = RT_NEEDS_DECODE,
		      .block_size = 16,
		      .kv_capacity_blocks = 500,
		      .max_batched_tokens = 4096,
		      .dp_ranks = 1,
		      .transfer_enforcement = RT_TRANSFER_REQUIRED,
		      .preferred_weight = 1.0},
	    .model = "disagg",
	    .endpoint = "prefill-0",
	    .transfer_domain = "rack",
	    .domain_names = rack_name,
	    .domain_values = rack_value,
	    .ndomains = 1,
	};
	struct pdw_register_args d = p;
	uint32_t tok[NTOK];
	struct t_route t;
	struct rt_request rq;
	struct rt_plan plan;
	struct rt_choice c;
	int rc;

	d.fixed.worker_type = RT_DECODE;
	d.fixed.model_type = RT_MODEL_CHAT;
	d.fixed.needs = RT_NEEDS_PREFILL;
	d.fixed.dp_rank_start = 2;
	d.fixed.transfer_enforcement = RT_TRANSFER_NONE;
	d.fixed.preferred_weight = 0.0;
	d.endpoint = "decode-0";
	d.transfer_domain = NULL;
	t_route_open(&t, NULL);
	decode_ok(msg, encode(&p, 1));
	expect_spec(&p);
	register_spec(&t, 1);
	decode_ok(msg, encode(&d, 2));
	expect_spec(&d);
	register_spec(&t, 2);
	t_tokens(tok, NTOK, 9);
	rq = t_request(&t, "disagg", tok, NTOK, 0);
	rc = rt_route(&t.core, &rq, &plan);
	cr_assert_eq(rc, 0, "rt_route: %d", rc);
	cr_assert_eq(plan.kind, RT_PLAN_DISAGG);
	cr_assert_eq(plan.first.worker, 1);
	rc = rt_route_decode(&t.core, &rq, plan.first.target, &c);
	cr_assert_eq(rc, 0, "rt_route_decode: %d", rc);
	cr_assert_eq(c.worker, 2);
	cr_assert_eq(c.dp_rank, 2);
	cr_assert_eq(rt_release(&t.core, plan.first.load), 0);
	cr_assert_eq(rt_release(&t.core, c.load), 0);
	t_route_close(&t);
}

Test(ctl_register, absent_transfer_domain_decodes_to_null)
{
	struct pdw_register_args a = args_agg(2);

	a.transfer_domain = NULL;
	a.fixed.transfer_enforcement = RT_TRANSFER_REQUIRED;
	a.fixed.preferred_weight = 0.5;
	decode_ok(msg, encode(&a, 3));
	cr_assert_null(reg.spec.transfer.domain);
	cr_assert_eq(reg.spec.transfer.enforcement, RT_TRANSFER_REQUIRED);
	cr_assert_float_eq(reg.spec.transfer.preferred_weight, 0.5, 0.0);
	expect_spec(&a);
	/* An empty name is no name on the wire either. */
	a.transfer_domain = "";
	decode_ok(msg, encode(&a, 4));
	cr_assert_null(reg.spec.transfer.domain);
}

Test(ctl_register, every_truncation_is_a_bad_message)
{
	struct pdw_register_args a = args_agg(RT_DOMAIN_KEYS);
	size_t len = encode(&a, 5);
	char what[96];

	for (size_t cut = 0; cut < len; cut++) {
		snprintf(what, sizeof(what), "cut at %zu of %zu", cut, len);
		expect_refused(msg, cut, -EBADMSG, NULL, what);
		/* and with a header that agrees, so the lengths inside must catch it */
		memcpy(copy, msg, cut);
		if (cut >= OFF_LEN + 4)
			wr32(copy, OFF_LEN, (uint32_t)cut);
		snprintf(what, sizeof(what), "cut at %zu of %zu, header len %zu", cut, len, cut);
		expect_refused(copy, cut, -EBADMSG, NULL, what);
	}
	decode_ok(msg, len);
}

Test(ctl_register, trailing_byte_is_a_bad_message)
{
	struct pdw_register_args a = args_agg(3);
	size_t len = encode(&a, 6);

	msg[len] = 'x';
	expect_refused(msg, len + 1, -EBADMSG, NULL, "one byte more than the header says");
	wr32(msg, OFF_LEN, (uint32_t)len + 1);
	expect_refused(msg, len + 1, -EBADMSG, "after the last string",
		       "one byte after the last string");
}

Test(ctl_register, wrong_magic_type_or_length_is_a_bad_message)
{
	static const uint16_t types[] = {0, PDW_REGISTERED, PDW_REFUSED, 4, 0xFFFF};
	struct pdw_register_args a = args_agg(1);
	size_t len = encode(&a, 7);
	const uint32_t lens[] = {0, (uint32_t)len - 1, (uint32_t)len + 1, (uint32_t)len << 16,
				 UINT32_MAX};

	for (int byte = 0; byte < 4; byte++) {
		memcpy(copy, msg, len);
		copy[byte] ^= 0x20;
		expect_refused(copy, len, -EBADMSG, NULL, "a wrong magic");
	}
	for (size_t i = 0; i < sizeof(types) / sizeof(types[0]); i++) {
		memcpy(copy, msg, len);
		memcpy(copy + 6, &types[i], 2);
		expect_refused(copy, len, -EBADMSG, NULL, "a wrong type");
	}
	for (size_t i = 0; i < sizeof(lens) / sizeof(lens[0]); i++) {
		memcpy(copy, msg, len);
		wr32(copy, OFF_LEN, lens[i]);
		expect_refused(copy, len, -EBADMSG, NULL, "a header len not the packet's");
	}
}

Test(ctl_register, another_version_is_not_supported)
{
	static const uint16_t versions[] = {0, PDW_VERSION + 1, 0x100 | PDW_VERSION, 0xFFFF};
	struct pdw_register_args a = args_agg(1);
	size_t len = encode(&a, 8);

	for (size_t i = 0; i < sizeof(versions) / sizeof(versions[0]); i++) {
		memcpy(copy, msg, len);
		memcpy(copy + 4, &versions[i], 2);
		expect_refused(copy, len, -EPROTONOSUPPORT, "version", "another version");
	}
}

/* Note string @s of msg: its offset @at and length; returns the offset after it. */
static size_t note(size_t (*str)[2], int *n, size_t at, const char *s)
{
	str[*n][0] = at;
	str[*n][1] = slen(s);
	++*n;
	return at + slen(s);
}

Test(ctl_register, nul_inside_any_string_is_a_bad_message)
{
	struct pdw_register_args a = args_agg(2);
	size_t len = encode(&a, 9), at = FIXED;
	size_t str[7][2]; /* every string's offset and length in msg */
	int n = 0;

	at = note(str, &n, at, a.model);
	at = note(str, &n, at, a.endpoint);
	at = note(str, &n, at, a.transfer_domain);
	for (uint16_t i = 0; i < a.ndomains; i++) {
		at = note(str, &n, at + sizeof(struct pdw_domain), dnames[i]);
		at = note(str, &n, at, dvalues[i]);
	}
	cr_assert_eq(at, len);
	for (int s = 0; s < n; s++) {
		const size_t where[3] = {0, str[s][1] / 2, str[s][1] - 1};

		for (int w = 0; w < 3; w++) {
			memcpy(copy, msg, len);
			copy[str[s][0] + where[w]] = '\0';
			expect_refused(copy, len, -EBADMSG, "NUL", "a NUL in a string");
		}
	}
}

Test(ctl_register, name_of_256_bytes_is_invalid_and_255_is_fine)
{
	static char n255[RT_NAME_MAX + 1], n256[RT_NAME_MAX + 2];
	const char *names[RT_DOMAIN_KEYS] = {"zone", "rack"};
	const char *values[RT_DOMAIN_KEYS] = {"a", "b"};

	memset(n255, 'a', RT_NAME_MAX);
	memset(n256, 'b', RT_NAME_MAX + 1);
	for (int field = 0; field < 5; field++) {
		for (int over = 0; over < 2; over++) {
			struct pdw_register_args a = args_agg(2);
			const char *s = over ? n256 : n255;

			a.domain_names = names;
			a.domain_values = values;
			names[1] = "rack";
			values[1] = "b";
			if (field == 0)
				a.model = s;
			else if (field == 1)
				a.endpoint = s;
			else if (field == 2)
				a.transfer_domain = s;
			else if (field == 3)
				names[1] = s;
			else
				values[1] = s;
			if (!over) {
				decode_ok(msg, encode(&a, 10));
				expect_spec(&a);
			} else {
				expect_refused(msg, encode(&a, 11), -EINVAL, "255",
					       "a name of 256 bytes");
			}
		}
	}
}

Test(ctl_register, nine_domains_are_invalid)
{
	struct pdw_register_args a = args_agg(RT_DOMAIN_KEYS + 1);

	expect_refused(msg, encode(&a, 12), -EINVAL, "8", "9 domains");
}

Test(ctl_register, lengths_past_the_packet_are_a_bad_message)
{
	struct pdw_register_args a = args_agg(0);
	size_t len = encode(&a, 13);
	uint16_t n;

	/* Without domains, a string that claims more only runs the last one off the end. */
	for (int field = 0; field < 3; field++) {
		size_t at = OFF_MODEL_LEN + 2 * (size_t)field;

		memcpy(&n, msg + at, 2);
		for (uint32_t more = 1; n + more <= RT_NAME_MAX; more += more < 8 ? 1 : 37) {
			memcpy(copy, msg, len);
			wr16(copy, at, (uint16_t)(n + more));
			expect_refused(copy, len, -EBADMSG, "shorter", "a string past the end");
		}
	}
	/* A domain more than the message holds; the last domain's value one byte longer. */
	a = args_agg(4);
	len = encode(&a, 14);
	memcpy(copy, msg, len);
	wr16(copy, OFF_NDOMAINS, 5);
	expect_refused(copy, len, -EBADMSG, "shorter", "a domain past the end");
	memcpy(copy, msg, len);
	wr16(copy, len - strlen(dvalues[3]) - strlen(dnames[3]) - 2,
	     (uint16_t)(strlen(dvalues[3]) + 1));
	expect_refused(copy, len, -EBADMSG, "shorter", "a domain value past the end");
}

Test(ctl_register, semantic_errors_are_left_to_rt_register)
{
	struct pdw_register_args a;
	struct t_route t;
	char err[256];
	int rc;

	t_route_open(&t, NULL);
	for (int k = 0; k < 4; k++) {
		a = args_agg(1);
		if (k == 0)
			a.fixed.block_size = 3;
		else if (k == 1)
			a.fixed.worker_type = 7;
		else if (k == 2)
			a.fixed.needs = RT_NEEDS_PREFILL; /* an aggregated worker needs nothing */
		else
			a.model = ""; /* empty on the wire is fine; no model is not */
		decode_ok(msg, encode(&a, 20u + (uint32_t)k));
		expect_spec(&a);
		err[0] = '\0';
		rc = rt_register(&t.rt, 1, &reg.spec, err, sizeof(err));
		cr_assert_eq(rc, -EINVAL, "case %d: rt_register %d (%s)", k, rc, err);
		cr_assert(err[0], "case %d: no reason", k);
		if (k == 0)
			cr_assert(strstr(err, "block size 3"), "reason '%s'", err);
		cr_assert_eq(rt_model_find(&t.rt, a.model, strlen(a.model)), -ENOENT);
	}
	/* Nothing was left behind: the same worker id registers once the spec is right. */
	a = args_agg(1);
	decode_ok(msg, encode(&a, 30));
	register_spec(&t, 1);
	t_route_close(&t);
}

Test(ctl_register, encoder_refuses_every_cap_too_small)
{
	struct pdw_register_args a = args_agg(RT_DOMAIN_KEYS);
	size_t len = encode(&a, 40);
	long rc;

	memcpy(copy, msg, len);
	for (size_t cap = 0; cap < len; cap++) {
		memset(msg, 0xA5, len);
		rc = pdw_register_encode(msg, cap, &a, 40);
		cr_assert_eq(rc, -E2BIG, "cap %zu of %zu: %ld", cap, len, rc);
		for (size_t i = cap; i < len; i++)
			cr_assert_eq(msg[i], 0xA5, "cap %zu: byte %zu written", cap, i);
	}
	memset(msg, 0xA5, len + 1);
	rc = pdw_register_encode(msg, len, &a, 40);
	cr_assert_eq(rc, (long)len, "cap %zu: %ld", len, rc);
	cr_assert_eq(memcmp(msg, copy, len), 0);
	cr_assert_eq(rd32(msg, OFF_LEN), (uint32_t)len);
	cr_assert_eq(msg[len], 0xA5);
}

Test(ctl_register, encoder_refuses_a_string_over_65535_bytes)
{
	/* 65,536 + 10 bytes would wrap to 10 in a u16 and fit: the encoder must see the size. */
	static const size_t sizes[] = {UINT16_MAX + 1u, UINT16_MAX + 11u, 2u * UINT16_MAX + 7u};
	const char *names[1] = {"zone"}, *values[1] = {"z"};
	static unsigned char big[1 << 20];

	for (size_t i = 0; i < sizeof(sizes) / sizeof(sizes[0]); i++) {
		char *s = malloc(sizes[i] + 1);

		cr_assert(s);
		memset(s, 'q', sizes[i]);
		s[sizes[i]] = '\0';
		for (int field = 0; field < 5; field++) {
			struct pdw_register_args a = args_agg(1);
			long rc;

			a.domain_names = names;
			a.domain_values = values;
			names[0] = "zone";
			values[0] = "z";
			if (field == 0)
				a.model = s;
			else if (field == 1)
				a.endpoint = s;
			else if (field == 2)
				a.transfer_domain = s;
			else if (field == 3)
				names[0] = s;
			else
				values[0] = s;
			rc = pdw_register_encode(big, sizeof(big), &a, 41);
			cr_assert_eq(rc, -E2BIG, "string %d of %zu bytes: %ld", field, sizes[i],
				     rc);
		}
		free(s);
	}
}

Test(ctl_register, encoder_refuses_a_message_over_pdw_msg_max)
{
	static unsigned char big[2 * PDW_MSG_MAX];
	static char m[PDW_MSG_MAX], e[PDW_MSG_MAX];
	size_t half = (PDW_MSG_MAX - FIXED) / 2;
	struct pdw_register_args a = args_agg(0);
	long rc;

	/* model and endpoint fill exactly PDW_MSG_MAX bytes with the header and fixed part */
	memset(m, 'm', half);
	memset(e, 'e', PDW_MSG_MAX - FIXED - half);
	a.model = m;
	a.endpoint = e;
	a.transfer_domain = NULL;
	rc = pdw_register_encode(big, sizeof(big), &a, 42);
	cr_assert_eq(rc, (long)PDW_MSG_MAX, "a message of PDW_MSG_MAX bytes: %ld", rc);
	cr_assert_eq(rd32(big, OFF_LEN), PDW_MSG_MAX);
	a.transfer_domain = "z";
	rc = pdw_register_encode(big, sizeof(big), &a, 42);
	cr_assert_eq(rc, -E2BIG, "a message of PDW_MSG_MAX + 1 bytes: %ld", rc);
	a.transfer_domain = NULL;
	a.domain_names = dnames;
	a.domain_values = dvalues;
	a.ndomains = 1;
	rc = pdw_register_encode(big, sizeof(big), &a, 42);
	cr_assert_eq(rc, -E2BIG, "a domain past PDW_MSG_MAX: %ld", rc);
}
