/*
 * pdbench load's pure parts (bench/bench_load.h), without a router: the Mooncake expansion
 * rule and trace reading, synthetic prompts and their length distributions, the arrival
 * schedules over a simulated clock, and the report arithmetic on a tiny run whose every
 * percentile is known.
 */
#include <criterion/criterion.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "bench_load.h"
#include "pdclient.h"

TestSuite(bench_load, .timeout = 60);

static struct load_trace_req parsed(const char *line)
{
	struct load_trace_req r;

	cr_assert_eq(load_trace_parse_line(line, &r), 0, "not parsed: %s", line);
	return r;
}

/* Token t is hash_ids[t / 512] * 512 + t % 512: equal ids, equal blocks of tokens. */
Test(bench_load, trace_tokens_follow_the_expansion_rule)
{
	struct load_trace_req r = parsed("{\"timestamp\": 5, \"input_length\": 1300, "
					 "\"output_length\": 7, \"hash_ids\": [7, 3, 7]}");
	struct load_prompt p;
	uint32_t tok[1300];

	cr_assert_eq(r.input, 1300);
	cr_assert_eq(r.output, 7);
	cr_assert_eq(r.at_ns, 5000000);
	load_trace_prompt(&r, &p);
	load_prompt_tokens(&p, 99, tok); /* the seed is for synthetic prompts only */
	cr_assert_eq(tok[0], 7 * 512);
	cr_assert_eq(tok[511], 7 * 512 + 511);
	cr_assert_eq(tok[512], 3 * 512);
	cr_assert_eq(tok[1023], 3 * 512 + 511);
	for (uint32_t t = 1024; t < 1300; t++)
		cr_assert_eq(tok[t], tok[t - 1024], "hash id 7 again, token %u", t);
	free(r.ids);
}

/* Two records whose ids share a prefix share exactly that many blocks of tokens. */
Test(bench_load, trace_shared_ids_are_a_shared_token_prefix)
{
	struct load_trace_req a = parsed("{\"input_length\": 1536, \"hash_ids\": [0, 1, 2]}"),
			      b = parsed("{\"input_length\": 1536, \"hash_ids\": [0, 1, 9]}");
	struct load_prompt pa, pb;
	uint32_t ta[1536], tb[1536];

	load_trace_prompt(&a, &pa);
	load_trace_prompt(&b, &pb);
	load_prompt_tokens(&pa, 1, ta);
	load_prompt_tokens(&pb, 1, tb);
	cr_assert_eq(memcmp(ta, tb, 1024 * sizeof(ta[0])), 0);
	for (uint32_t t = 1024; t < 1536; t++)
		cr_assert_neq(ta[t], tb[t], "token %u", t);
	free(a.ids);
	free(b.ids);
}

/* The ids name every prompt token: a longer input_length is cut to them. */
Test(bench_load, trace_input_is_capped_by_its_ids)
{
	struct load_trace_req r = parsed("{\"hash_ids\": [1, 2], \"input_length\": 5000}");

	cr_assert_eq(r.input, 1024);
	cr_assert_eq(r.output, 16, "the default output length");
	free(r.ids);
}

Test(bench_load, trace_parse_rejects_what_is_not_a_record)
{
	static const char *const bad[] = {
		"{\"hash_ids\": [1, 2]}",
		"{\"input_length\": 10}",
		"{\"input_length\": 10, \"hash_ids\": [1, x]}",
		"{\"input_length\": 10, \"hash_ids\": []}",
		"{\"input_length\": 0, \"hash_ids\": [4]}",
	};
	struct load_trace_req r;

	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		cr_assert_eq(load_trace_parse_line(bad[i], &r), -EBADMSG, "%s", bad[i]);
		cr_assert_null(r.ids);
	}
}

/* A trace file: blank lines skipped, prompts over max_input left out and counted, and the
 * clock started at the first record. */
Test(bench_load, trace_read_starts_the_clock_at_the_first_record)
{
	char path[] = "/tmp/test_bench_load_XXXXXX";
	int fd = mkstemp(path);
	FILE *f = fdopen(fd, "w");
	struct load_trace t;

	cr_assert_not_null(f);
	fprintf(f, "{\"timestamp\": 1000, \"input_length\": 100, \"hash_ids\": [1]}\n\n"
		   "{\"timestamp\": 1500, \"input_length\": 900, \"hash_ids\": [1, 2]}\n"
		   "{\"timestamp\": 3000.5, \"input_length\": 300, \"hash_ids\": [3]}\n");
	fclose(f);
	cr_assert_eq(load_trace_read(path, 512, &t), 0);
	cr_assert_eq(t.n, 2);
	cr_assert_eq(t.skipped, 1);
	cr_assert_eq(t.reqs[0].at_ns, 0);
	cr_assert_eq(t.reqs[1].at_ns, 2000500000ull);
	load_trace_free(&t);
	f = fopen(path, "w");
	fprintf(f, "{\"timestamp\": 1000, \"input_length\": 100, \"hash_ids\": [1]}\nnonsense\n");
	fclose(f);
	cr_assert_eq(load_trace_read(path, 0, &t), -EBADMSG);
	cr_assert_null(t.reqs);
	unlink(path);
	cr_assert_eq(load_trace_read(path, 0, &t), -ENOENT);
}

/* ---- synthetic ---- */

static struct load_synth synth(double ratio, uint32_t prefixes, enum load_dist_kind dist)
{
	return (struct load_synth){.prefix_ratio = ratio, .prefixes = prefixes,
				   .prompt_mean = 1000, .output_mean = 20, .prompt_dist = dist,
				   .output_dist = dist, .seed = 42};
}

/* Requests of one group share the first prefix_ratio of their prompt and nothing after. */
Test(bench_load, synthetic_groups_share_exactly_their_prefix)
{
	struct load_synth s = synth(0.3, 2, LOAD_DIST_FIXED);
	struct load_prompt p[8];
	uint32_t tok[8][1000];
	uint32_t groups[2] = {0};

	for (uint32_t i = 0; i < 8; i++) {
		load_synth_prompt(&s, i + 1, &p[i]);
		cr_assert_eq(p[i].input, 1000);
		cr_assert_eq(p[i].output, 20);
		cr_assert_eq(p[i].prefix, 300);
		cr_assert_lt(p[i].group, 2);
		groups[p[i].group]++;
		load_prompt_tokens(&p[i], s.seed, tok[i]);
	}
	cr_assert(groups[0] && groups[1], "8 requests all in one of 2 groups");
	for (uint32_t i = 0; i < 8; i++) {
		for (uint32_t j = 0; j < i; j++) {
			bool same = p[i].group == p[j].group;

			cr_assert_eq(!memcmp(tok[i], tok[j], 300 * sizeof(uint32_t)), same);
			cr_assert_neq(tok[i][300], tok[j][300], "tails are their own");
		}
	}
}

/* The same seed and request number give the same prompt; another seed another one. */
Test(bench_load, synthetic_prompts_are_deterministic)
{
	struct load_synth s = synth(0.5, 4, LOAD_DIST_EXP), s2 = s;
	struct load_prompt a, b, c;
	uint32_t ta[8000], tb[8000];

	s2.seed = 43;
	load_synth_prompt(&s, 17, &a);
	load_synth_prompt(&s, 17, &b);
	cr_assert_eq(memcmp(&a, &b, sizeof(a)), 0);
	load_prompt_tokens(&a, s.seed, ta);
	load_prompt_tokens(&b, s.seed, tb);
	cr_assert_eq(memcmp(ta, tb, a.input * sizeof(uint32_t)), 0);
	load_synth_prompt(&s2, 17, &c);
	load_prompt_tokens(&c, s2.seed, tb);
	cr_assert_neq(ta[0], tb[0]);
}

/* Ratio 0: nothing shared; ratio 1: the whole prompt is its group's. */
Test(bench_load, synthetic_prefix_ratio_bounds)
{
	struct load_synth none = synth(0, 1, LOAD_DIST_FIXED), all = synth(1, 1, LOAD_DIST_FIXED);
	struct load_prompt p;

	load_synth_prompt(&none, 5, &p);
	cr_assert_eq(p.prefix, 0);
	load_synth_prompt(&all, 5, &p);
	cr_assert_eq(p.prefix, p.input);
}

/* Mean, bounds and spread of each length distribution over many draws. */
static void check_dist(enum load_dist_kind kind, uint32_t mean, double tol, double cv_lo,
		       double cv_hi)
{
	uint64_t n = 200000, lo = UINT64_MAX, hi = 0;
	double sum = 0, sq = 0, m, cv;

	for (uint64_t i = 0; i < n; i++) {
		uint64_t u = i * 0x9e3779b97f4a7c15ull;
		uint32_t v;

		u = (u ^ (u >> 31)) * 0xbf58476d1ce4e5b9ull;
		v = load_dist_draw(kind, mean, u ^ (u >> 29));
		lo = v < lo ? v : lo;
		hi = v > hi ? v : hi;
		sum += v;
		sq += (double)v * v;
	}
	m = sum / (double)n;
	cv = sqrt(fmax(0, sq / (double)n - m * m)) / m;
	cr_assert(fabs(m - mean) <= tol * mean, "kind %d: mean %f, not %u", kind, m, mean);
	cr_assert(cv >= cv_lo && cv <= cv_hi, "kind %d: coefficient of variation %f", kind, cv);
	cr_assert_geq(lo, 1);
	cr_assert_leq(hi, load_dist_max(kind, mean));
}

Test(bench_load, length_distributions_have_their_mean)
{
	check_dist(LOAD_DIST_FIXED, 512, 0, 0, 0);
	check_dist(LOAD_DIST_UNIFORM, 512, 0.01, 0.27, 0.31); /* uniform +-50%: 1/sqrt(12) */
	check_dist(LOAD_DIST_EXP, 512, 0.02, 0.95, 1.02);
	cr_assert_eq(load_dist_max(LOAD_DIST_UNIFORM, 512), 768);
	cr_assert_eq(load_dist_max(LOAD_DIST_EXP, 512), 4096);
	cr_assert_eq(load_dist_draw(LOAD_DIST_UNIFORM, 1, 12345), 1);
}

/* ---- schedules over a simulated clock ---- */

/* Fixed: exactly rate x seconds arrivals in [0, seconds), each exactly 1/rate apart. */
Test(bench_load, fixed_schedule_is_exact)
{
	struct load_sched s;
	uint64_t t, prev = 0, n = 0;

	load_sched_init(&s, LOAD_SCHED_FIXED, 1000, 0, NULL, 1);
	while ((t = load_sched_next(&s)) < 10000000000ull) {
		if (n)
			cr_assert_eq(t - prev, 1000000, "gap %llu at %llu",
				     (unsigned long long)(t - prev), (unsigned long long)n);
		prev = t;
		n++;
	}
	cr_assert_eq(n, 10000);
	load_sched_init(&s, LOAD_SCHED_FIXED, 3, 0, NULL, 1); /* 1/3 s does not divide a ns */
	for (n = 0; n < 3; n++)
		load_sched_next(&s);
	cr_assert_eq(load_sched_next(&s), 1000000000ull);
}

/* Poisson: the count in 100 s and the mean gap are the rate's, within 3 standard deviations,
 * and the gaps spread as an exponential's (coefficient of variation 1). */
Test(bench_load, poisson_schedule_has_the_rate)
{
	struct load_sched s;
	uint64_t t, prev = 0, n = 0;
	double sum = 0, sq = 0, mean, cv;

	load_sched_init(&s, LOAD_SCHED_POISSON, 1000, 0, NULL, 7);
	while ((t = load_sched_next(&s)) < 100000000000ull) {
		double gap = (double)(t - prev);

		cr_assert_geq(t, prev);
		sum += gap;
		sq += gap * gap;
		prev = t;
		n++;
	}
	cr_assert(n > 100000 - 3 * 317 && n < 100000 + 3 * 317, "%llu arrivals in 100 s",
		  (unsigned long long)n);
	mean = sum / (double)n;
	cv = sqrt(sq / (double)n - mean * mean) / mean;
	cr_assert(fabs(mean - 1e6) < 0.01e6, "mean gap %f ns", mean);
	cr_assert(fabs(cv - 1) < 0.02, "coefficient of variation %f", cv);
}

/* Trace: each record's timestamp divided by the speedup, then the end. */
Test(bench_load, trace_schedule_scales_timestamps)
{
	struct load_trace_req r[3] = {{.at_ns = 0}, {.at_ns = 1000000000}, {.at_ns = 2500000000}};
	struct load_trace t = {.reqs = r, .n = 3};
	struct load_sched s;

	load_sched_init(&s, LOAD_SCHED_TRACE, 0, 10, &t, 1);
	cr_assert_eq(load_sched_next(&s), 0);
	cr_assert_eq(load_sched_next(&s), 100000000);
	cr_assert_eq(load_sched_next(&s), 250000000);
	cr_assert_eq(load_sched_next(&s), LOAD_SCHED_END);
	cr_assert_eq(load_sched_next(&s), LOAD_SCHED_END);
	load_sched_init(&s, LOAD_SCHED_TRACE, 0, 0.5, &t, 1); /* slowed down */
	load_sched_next(&s);
	cr_assert_eq(load_sched_next(&s), 2000000000);
}

Test(bench_load, schedule_names_parse)
{
	enum load_sched_kind k;

	cr_assert_eq(load_sched_parse("poisson", &k), 0);
	cr_assert_eq(k, LOAD_SCHED_POISSON);
	cr_assert_str_eq(load_sched_name(LOAD_SCHED_FIXED), "fixed");
	cr_assert_eq(load_sched_parse("uniform", &k), -EINVAL);
}
