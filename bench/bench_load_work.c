/*
 * pdbench load's workload: Mooncake trace records read from JSONL, synthetic prompts drawn
 * from a seed, and the one rule per kind that turns a prompt into token ids. Nothing here
 * depends on the clock, so a workload is the same on every run with the same seed.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bench.h"
#include "bench_load.h"

/* Append @v to the growing id array of @r; -ENOMEM when it cannot grow. */
static int push_id(struct load_trace_req *r, uint32_t *cap, uint32_t v)
{
	if (r->nids == *cap) {
		uint32_t ncap = *cap ? 2 * *cap : 64;
		uint32_t *n = realloc(r->ids, ncap * sizeof(*n));

		if (!n)
			return -ENOMEM;
		r->ids = n;
		*cap = ncap;
	}
	r->ids[r->nids++] = v;
	return 0;
}

/* The keys are found by name, wherever they sit on the line: Mooncake writes them in one
 * order, other tools in another. */
int load_trace_parse_line(const char *line, struct load_trace_req *r)
{
	const char *p;
	uint32_t cap = 0;

	*r = (struct load_trace_req){.output = 16};
	p = strstr(line, "\"timestamp\":");
	if (p)
		r->at_ns = (uint64_t)(strtod(p + 12, NULL) * 1e6);
	p = strstr(line, "\"input_length\":");
	if (!p)
		return -EBADMSG;
	r->input = (uint32_t)strtoul(p + 15, NULL, 10);
	p = strstr(line, "\"output_length\":");
	if (p)
		r->output = (uint32_t)strtoul(p + 16, NULL, 10);
	p = strstr(line, "\"hash_ids\":");
	if (!p || !(p = strchr(p, '[')))
		return -EBADMSG;
	for (p++; *p && *p != ']';) {
		char *end;
		unsigned long v = strtoul(p, &end, 10);

		if (end == p)
			goto bad;
		if (push_id(r, &cap, (uint32_t)v))
			goto nomem;
		for (p = end; *p == ',' || *p == ' ';)
			p++;
	}
	if (r->input > r->nids * LOAD_BLOCK) /* the ids name every prompt token */
		r->input = r->nids * LOAD_BLOCK;
	if (r->input)
		return 0;
bad:
	free(r->ids);
	r->ids = NULL;
	return -EBADMSG;
nomem:
	free(r->ids);
	r->ids = NULL;
	return -ENOMEM;
}

/* Make room for one more record in @t; -ENOMEM when it cannot grow. */
static int trace_grow(struct load_trace *t, uint32_t *cap)
{
	struct load_trace_req *n;

	if (t->n < *cap)
		return 0;
	n = realloc(t->reqs, (*cap ? 2 * *cap : 1024) * sizeof(*n));
	if (!n)
		return -ENOMEM;
	t->reqs = n;
	*cap = *cap ? 2 * *cap : 1024;
	return 0;
}

int load_trace_read(const char *path, uint32_t max_input, struct load_trace *t)
{
	FILE *f = fopen(path, "r");
	char *line = NULL;
	size_t len = 0, lineno = 0;
	uint32_t cap = 0;
	uint64_t t0;
	int rc = 0;

	*t = (struct load_trace){0};
	if (!f) {
		fprintf(stderr, "pdbench load: %s: %s\n", path, strerror(errno));
		return -ENOENT;
	}
	while (!rc && getline(&line, &len, f) > 0) {
		struct load_trace_req *r;

		lineno++;
		if (line[strspn(line, " \t\r\n")] == '\0')
			continue;
		if ((rc = trace_grow(t, &cap)))
			break;
		r = &t->reqs[t->n];
		rc = load_trace_parse_line(line, r);
		if (rc == -EBADMSG)
			fprintf(stderr, "pdbench load: %s:%zu: not a trace record\n", path, lineno);
		if (!rc && max_input && r->input > max_input) {
			free(r->ids);
			t->skipped++;
		} else if (!rc) {
			t->n++;
		}
	}
	free(line);
	fclose(f);
	if (!rc && !t->n) {
		fprintf(stderr, "pdbench load: %s: no usable record\n", path);
		rc = -EBADMSG;
	}
	if (rc) {
		load_trace_free(t);
		return rc;
	}
	t0 = t->reqs[0].at_ns; /* the trace's clock starts at its first record */
	for (uint32_t i = 0; i < t->n; i++)
		t->reqs[i].at_ns = t->reqs[i].at_ns > t0 ? t->reqs[i].at_ns - t0 : 0;
	return 0;
}

void load_trace_free(struct load_trace *t)
{
	for (uint32_t i = 0; i < t->n; i++)
		free(t->reqs[i].ids);
	free(t->reqs);
	*t = (struct load_trace){0};
}

int load_dist_parse(const char *s, enum load_dist_kind *out)
{
	if (!strcmp(s, "fixed"))
		*out = LOAD_DIST_FIXED;
	else if (!strcmp(s, "uniform"))
		*out = LOAD_DIST_UNIFORM;
	else if (!strcmp(s, "exponential"))
		*out = LOAD_DIST_EXP;
	else
		return -EINVAL;
	return 0;
}

/* Uniform: integers in [mean - mean/2, mean + mean/2], symmetric, so the mean is exact.
 * Exponential: rounded, at least 1 and at most LOAD_EXP_CAP means (e^-8 of the mass is cut). */
uint32_t load_dist_draw(enum load_dist_kind kind, uint32_t mean, uint64_t u)
{
	double x, cap = (double)LOAD_EXP_CAP * mean;

	switch (kind) {
	case LOAD_DIST_UNIFORM:
		return mean - mean / 2 + (uint32_t)(u % (2ull * (mean / 2) + 1));
	case LOAD_DIST_EXP:
		x = round(-(double)mean * log(((double)(u >> 11) + 0.5) / 9007199254740992.0));
		return x < 1 ? 1 : x > cap ? (uint32_t)cap : (uint32_t)x;
	default:
		return mean;
	}
}

uint32_t load_dist_max(enum load_dist_kind kind, uint32_t mean)
{
	switch (kind) {
	case LOAD_DIST_UNIFORM:
		return mean + mean / 2;
	case LOAD_DIST_EXP:
		return LOAD_EXP_CAP * mean;
	default:
		return mean;
	}
}

/* A stream of token ids no other (domain, id) shares: prefixes are domain 1, tails 2. */
static uint64_t synth_base(uint64_t seed, uint64_t domain, uint64_t id)
{
	return bench_mix64(seed ^ bench_mix64(domain ^ bench_mix64(id)));
}

void load_synth_prompt(const struct load_synth *s, uint64_t n, struct load_prompt *p)
{
	uint64_t r0 = bench_mix64(s->seed ^ bench_mix64(n)), r1 = bench_mix64(r0), r2 = bench_mix64(r1);
	double prefix;

	*p = (struct load_prompt){.n = n};
	p->input = load_dist_draw(s->prompt_dist, s->prompt_mean, r0);
	p->output = load_dist_draw(s->output_dist, s->output_mean, r1);
	p->group = (uint32_t)(r2 % s->prefixes);
	prefix = round(s->prefix_ratio * p->input);
	p->prefix = prefix > p->input ? p->input : (uint32_t)prefix;
}

void load_trace_prompt(const struct load_trace_req *r, struct load_prompt *p)
{
	*p = (struct load_prompt){.input = r->input, .output = r->output, .ids = r->ids};
}

void load_prompt_tokens(const struct load_prompt *p, uint64_t seed, uint32_t *tok)
{
	uint64_t base;

	if (p->ids) {
		for (uint32_t t = 0; t < p->input; t++)
			tok[t] = p->ids[t / LOAD_BLOCK] * LOAD_BLOCK + t % LOAD_BLOCK;
		return;
	}
	base = synth_base(seed, 1, p->group);
	for (uint32_t t = 0; t < p->prefix; t++)
		tok[t] = (uint32_t)(bench_mix64(base + t) >> 32);
	base = synth_base(seed, 2, p->n);
	for (uint32_t t = p->prefix; t < p->input; t++)
		tok[t] = (uint32_t)(bench_mix64(base + t) >> 32);
}
