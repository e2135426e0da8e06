/*
 * Latency histograms with bounded relative error: values under 16 have a bucket each, larger
 * ones 8 buckets per power of two (at most 12.5% wide), up to 2^40 ns. Recording is one
 * relaxed add on a counter only its core writes; readers copy the counters and may diff two
 * copies to get the distribution of an interval. Shared by the router and pdbench.
 */
#ifndef PD_DATAPLANE_HIST_H
#define PD_DATAPLANE_HIST_H

#include <stdatomic.h>
#include <stdint.h>

#include "counter.h"

#define DP_HIST_SUB 8u	    /* buckets per power of two */
#define DP_HIST_BUCKETS 312u /* 16 + (40 - 4 + 1) * 8 */

struct dp_hist {
	_Atomic uint64_t n[DP_HIST_BUCKETS];
};

static inline uint32_t dp_hist_bucket(uint64_t v)
{
	uint32_t e;

	if (v < 16)
		return (uint32_t)v;
	e = 63u - (uint32_t)__builtin_clzll(v);
	if (e > 40)
		return DP_HIST_BUCKETS - 1;
	return 16 + (e - 4) * DP_HIST_SUB + (uint32_t)((v >> (e - 3)) & (DP_HIST_SUB - 1));
}

/* The smallest value of bucket @b. */
static inline uint64_t dp_hist_value(uint32_t b)
{
	uint32_t e, sub;

	if (b < 16)
		return b;
	e = (b - 16) / DP_HIST_SUB + 4;
	sub = (b - 16) % DP_HIST_SUB;
	return (1ull << e) + ((uint64_t)sub << (e - 3));
}

/* Record @v; only the histogram's one writer calls this (counter.h). */
static inline void dp_hist_add(struct dp_hist *h, uint64_t v)
{
	dp_relaxed_add(&h->n[dp_hist_bucket(v)], 1, 0);
}

/* The middle of bucket @b, the value a count there stands for. */
static inline uint64_t dp_hist_mid(uint32_t b)
{
	return b + 1 < DP_HIST_BUCKETS ? (dp_hist_value(b) + dp_hist_value(b + 1)) / 2
				       : dp_hist_value(b);
}

/* The value at quantile @q (0..1) of @n[DP_HIST_BUCKETS] counts: its bucket's middle. */
static inline uint64_t dp_hist_quantile(const uint64_t *n, double q)
{
	uint64_t total = 0, seen = 0, rank;

	for (uint32_t b = 0; b < DP_HIST_BUCKETS; b++)
		total += n[b];
	if (!total)
		return 0;
	rank = (uint64_t)(q * (double)(total - 1));
	for (uint32_t b = 0; b < DP_HIST_BUCKETS; b++) {
		seen += n[b];
		if (seen > rank)
			return dp_hist_mid(b);
	}
	return dp_hist_value(DP_HIST_BUCKETS - 1);
}

#endif
