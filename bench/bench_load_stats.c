/*
 * pdbench load's arithmetic: from per-request records and inter-token gaps to distributions,
 * counts and the KV hit rate. Every latency is measured from the request's scheduled time, so
 * a generator (or a router) that falls behind an open-loop schedule shows up as latency
 * rather than hiding it (coordinated omission); the lag itself is reported apart. Records
 * and gaps are kept in chunks that never move, so the run never copies them as they grow.
 */
#include <stdlib.h>
#include <string.h>

#include "bench.h"
#include "bench_load.h"

void load_dist_of(uint64_t *v, size_t n, struct load_dist *d)
{
	unsigned __int128 sum = 0;

	bench_sort_u64(v, n);
	for (size_t i = 0; i < n; i++)
		sum += v[i];
	*d = (struct load_dist){.n = n, .mean = n ? (uint64_t)(sum / n) : 0,
				.p50 = bench_pct(v, n, 500), .p90 = bench_pct(v, n, 900),
				.p99 = bench_pct(v, n, 990), .p999 = bench_pct(v, n, 999),
				.max = n ? v[n - 1] : 0};
}

void load_dist_hist(const uint64_t *h, struct load_dist *d)
{
	unsigned __int128 sum = 0;
	uint64_t n = 0;

	for (uint32_t b = 0; b < DP_HIST_BUCKETS; b++) {
		n += h[b];
		sum += (unsigned __int128)h[b] * dp_hist_mid(b);
	}
	*d = (struct load_dist){.n = n, .mean = n ? (uint64_t)(sum / n) : 0,
				.p50 = dp_hist_quantile(h, 0.5),
				.p90 = dp_hist_quantile(h, 0.9),
				.p99 = dp_hist_quantile(h, 0.99),
				.p999 = dp_hist_quantile(h, 0.999),
				.max = dp_hist_quantile(h, 1.0)};
}

static void count_error(struct load_summary *s, int32_t code)
{
	uint32_t k;

	for (k = 0; k < s->nerrs && s->errs[k].code != code; k++)
		;
	if (k == s->nerrs && s->nerrs < LOAD_MAX_ERRCODES)
		s->errs[s->nerrs++].code = code;
	s->errs[k < s->nerrs ? k : s->nerrs - 1].n++;
}

/* Requests by outcome, tokens, plans and error codes. */
static void count(const struct load_rec *r, size_t n, struct load_summary *s)
{
	for (size_t i = 0; i < n; i++) {
		if (r[i].state == LOAD_FREE)
			continue;
		s->sent++;
		s->tokens += r[i].output;
		if (r[i].state == LOAD_FLIGHT) {
			s->unanswered++;
		} else if (r[i].state == LOAD_ERROR) {
			s->errors++;
			count_error(s, r[i].error);
		} else {
			s->completed++;
			s->prompt += r[i].prompt;
			s->cached += r[i].cached;
			s->plans[r[i].plan & 3]++;
		}
	}
}

enum { M_ROUTED, M_TTFT, M_E2E, M_LAG };

/* The samples of metric @m, from completed requests (send lag: from every request sent). */
static size_t samples(const struct load_rec *r, size_t n, int m, uint64_t *out)
{
	size_t k = 0;

	for (size_t i = 0; i < n; i++) {
		const struct load_rec *q = &r[i];

		if (m == M_LAG && q->state != LOAD_FREE)
			out[k++] = q->sent > q->sched ? q->sent - q->sched : 0;
		if (q->state != LOAD_DONE)
			continue;
		if (m == M_ROUTED && q->routed)
			out[k++] = q->routed - q->sched;
		else if (m == M_TTFT && q->first)
			out[k++] = q->first - q->sched;
		else if (m == M_E2E)
			out[k++] = q->done - q->sched;
	}
	return k;
}

void load_summarize(const struct load_rec *r, size_t n, uint64_t *gaps, size_t ngaps,
		    uint64_t *scratch, uint64_t elapsed_ns, struct load_summary *s)
{
	*s = (struct load_summary){.elapsed_ns = elapsed_ns};
	count(r, n, s);
	load_dist_of(scratch, samples(r, n, M_ROUTED, scratch), &s->routed);
	load_dist_of(scratch, samples(r, n, M_TTFT, scratch), &s->ttft);
	load_dist_of(scratch, samples(r, n, M_E2E, scratch), &s->e2e);
	load_dist_of(scratch, samples(r, n, M_LAG, scratch), &s->lag);
	load_dist_of(gaps, ngaps, &s->itl);
}

double load_hit_rate(const struct load_summary *s)
{
	return s->prompt ? (double)s->cached / (double)s->prompt : 0.0;
}

/* ---- storage that never moves what it holds ---- */

static void *vec_slot(const struct load_vec *v, size_t i)
{
	return v->chunk[i / LOAD_VEC_CHUNK] + (i % LOAD_VEC_CHUNK) * v->size;
}

void *load_vec_push(struct load_vec *v)
{
	size_t c = v->n / LOAD_VEC_CHUNK;

	if (c == v->nchunks) {
		uint8_t **n = realloc(v->chunk, (c + 1) * sizeof(*n));

		if (!n)
			return NULL;
		v->chunk = n;
		n[c] = calloc(LOAD_VEC_CHUNK, v->size);
		if (!n[c])
			return NULL;
		v->nchunks++;
	}
	return vec_slot(v, v->n++);
}

void *load_vec_at(const struct load_vec *v, size_t i)
{
	return i < v->n ? vec_slot(v, i) : NULL;
}

void *load_vec_flat(const struct load_vec *v)
{
	uint8_t *flat = malloc(v->n ? v->n * v->size : 1);

	for (size_t c = 0; flat && c < v->nchunks; c++) {
		size_t k = v->n - c * LOAD_VEC_CHUNK;

		memcpy(flat + c * LOAD_VEC_CHUNK * v->size, v->chunk[c],
		       (k < LOAD_VEC_CHUNK ? k : LOAD_VEC_CHUNK) * v->size);
	}
	return flat;
}

void load_vec_free(struct load_vec *v)
{
	for (size_t c = 0; c < v->nchunks; c++)
		free(v->chunk[c]);
	free(v->chunk);
	*v = (struct load_vec){.size = v->size};
}
