/*
 * Latency histograms (dataplane/hist.h): the bucket of a value is monotonic in the value, each
 * bucket starts at or below the values it holds and is at most 12.5% wide above 16, values
 * past the range share the last bucket, and quantiles of known distributions land within
 * their bucket's error.
 */
#include <stdint.h>
#include <stdlib.h>

#include <criterion/criterion.h>

#include "hist.h"
#include "rng.h"

TestSuite(hist);

#define T_LAST (DP_HIST_BUCKETS - 1)

static int cmp_u64(const void *a, const void *b)
{
	uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;

	return x < y ? -1 : x > y;
}

/*
 * Every value 0..2^16, each power of two up to 2^63 with its neighbours, and random values
 * of every magnitude up to 2^41, sorted. Returns the count; @v holds them.
 */
static size_t sweep(uint64_t **v)
{
	const size_t dense = 1u << 16, nrand = 200000;
	size_t n = 0, cap = dense + 1 + 64 * 3 + nrand + 1;
	uint64_t *a = malloc(cap * sizeof(*a));
	struct t_rng r;

	cr_assert_not_null(a);
	for (uint64_t x = 0; x <= dense; x++)
		a[n++] = x;
	for (unsigned e = 0; e < 64; e++) {
		a[n++] = (1ull << e) - 1;
		a[n++] = 1ull << e;
		a[n++] = (1ull << e) + 1;
	}
	t_rng_seed(&r, 41);
	for (size_t i = 0; i < nrand; i++)
		a[n++] = t_rng_next(&r) >> (63 - t_rng_below(&r, 42));
	a[n++] = UINT64_MAX;
	qsort(a, n, sizeof(*a), cmp_u64);
	*v = a;
	return n;
}

Test(hist, bucket_is_monotonic_over_a_wide_sweep)
{
	uint64_t *v;
	size_t n = sweep(&v);

	for (size_t i = 1; i < n; i++)
		cr_assert_leq(dp_hist_bucket(v[i - 1]), dp_hist_bucket(v[i]),
			      "bucket(%llu) = %u > bucket(%llu) = %u", (unsigned long long)v[i - 1],
			      dp_hist_bucket(v[i - 1]), (unsigned long long)v[i],
			      dp_hist_bucket(v[i]));
	free(v);
}

Test(hist, bucket_holds_its_value_between_its_start_and_the_next)
{
	uint64_t *v;
	size_t n = sweep(&v);

	for (size_t i = 0; i < n; i++) {
		uint32_t b = dp_hist_bucket(v[i]);

		cr_assert_lt(b, DP_HIST_BUCKETS, "bucket(%llu) = %u", (unsigned long long)v[i], b);
		cr_assert_leq(dp_hist_value(b), v[i], "value(bucket(%llu)) = %llu",
			      (unsigned long long)v[i], (unsigned long long)dp_hist_value(b));
		if (b < T_LAST)
			cr_assert_lt(v[i], dp_hist_value(b + 1), "%llu past its bucket %u",
				     (unsigned long long)v[i], b);
	}
	free(v);
}

Test(hist, values_under_16_have_a_bucket_each)
{
	for (uint32_t v = 0; v < 16; v++) {
		cr_assert_eq(dp_hist_bucket(v), v);
		cr_assert_eq(dp_hist_value(v), v);
	}
	cr_assert_eq(dp_hist_bucket(16), 16);
	cr_assert_eq(dp_hist_value(16), 16);
}

Test(hist, every_bucket_is_its_own_start_and_at_most_an_eighth_wide)
{
	for (uint32_t b = 0; b < DP_HIST_BUCKETS; b++) {
		uint64_t lo = dp_hist_value(b), hi;

		cr_assert_eq(dp_hist_bucket(lo), b, "bucket(value(%u) = %llu)", b,
			     (unsigned long long)lo);
		if (b == T_LAST)
			break;
		hi = dp_hist_value(b + 1);
		cr_assert_gt(hi, lo, "bucket %u is empty", b);
		cr_assert_eq(dp_hist_bucket(hi - 1), b, "the last value of bucket %u", b);
		if (lo >= 16)
			cr_assert_leq((hi - lo) * 8, lo, "bucket %u [%llu, %llu) wider than 12.5%%",
				      b, (unsigned long long)lo, (unsigned long long)hi);
	}
}

Test(hist, values_past_the_range_land_in_the_last_bucket)
{
	const uint64_t top = 1ull << 41;

	cr_assert_eq(dp_hist_bucket((1ull << 40) - 1), 16 + (39 - 4) * DP_HIST_SUB + 7);
	cr_assert_eq(dp_hist_bucket(1ull << 40), T_LAST - 7, "2^40 starts the top octave");
	cr_assert_eq(dp_hist_bucket(top - 1), T_LAST);
	cr_assert_eq(dp_hist_bucket(top), T_LAST);
	cr_assert_eq(dp_hist_bucket(top + 1), T_LAST);
	for (unsigned e = 41; e < 64; e++)
		cr_assert_eq(dp_hist_bucket(1ull << e), T_LAST, "2^%u", e);
	cr_assert_eq(dp_hist_bucket(UINT64_MAX), T_LAST);
	cr_assert_leq(dp_hist_value(T_LAST), 1ull << 41);
}

Test(hist, add_counts_in_the_value_bucket)
{
	static struct dp_hist h;

	dp_hist_add(&h, 0);
	dp_hist_add(&h, 1000);
	dp_hist_add(&h, 1001);
	dp_hist_add(&h, UINT64_MAX);
	cr_assert_eq(h.n[0], 1);
	cr_assert_eq(h.n[dp_hist_bucket(1000)], 2, "1000 and 1001 share a bucket");
	cr_assert_eq(h.n[T_LAST], 1);
}

Test(hist, quantile_of_an_empty_histogram_is_zero)
{
	static uint64_t n[DP_HIST_BUCKETS];

	cr_assert_eq(dp_hist_quantile(n, 0.0), 0);
	cr_assert_eq(dp_hist_quantile(n, 0.5), 0);
	cr_assert_eq(dp_hist_quantile(n, 1.0), 0);
}

/* |@got - @want| within an eighth of @want: a bucket's width, the middle of which is reported. */
static void assert_near(uint64_t got, uint64_t want, const char *what)
{
	uint64_t d = got > want ? got - want : want - got;

	cr_assert_leq(d * 8, want, "%s: %llu, want %llu within 12.5%%", what,
		      (unsigned long long)got, (unsigned long long)want);
}

Test(hist, quantiles_of_a_single_value_are_that_value)
{
	static const uint64_t values[] = {
	    0, 1, 7, 15, 16, 17, 100, 1000, 123456, 1ull << 30, (1ull << 40) - 1};

	for (size_t i = 0; i < sizeof(values) / sizeof(values[0]); i++) {
		uint64_t n[DP_HIST_BUCKETS] = {0}, v = values[i];

		n[dp_hist_bucket(v)] = 1000;
		for (double q = 0; q <= 1.0; q += 0.125) {
			uint64_t got = dp_hist_quantile(n, q);

			if (v < 16)
				cr_assert_eq(got, v, "q%.3f of {%llu}: %llu", q,
					     (unsigned long long)v, (unsigned long long)got);
			else
				assert_near(got, v, "quantile of a single value");
			cr_assert_eq(dp_hist_bucket(got), dp_hist_bucket(v),
				     "q%.3f of {%llu} left its bucket", q, (unsigned long long)v);
		}
	}
}

Test(hist, quantiles_of_uniform_values_are_within_the_bucket_error)
{
	static struct dp_hist h;
	uint64_t n[DP_HIST_BUCKETS];

	for (uint64_t v = 1; v <= 100000; v++)
		dp_hist_add(&h, v);
	for (uint32_t b = 0; b < DP_HIST_BUCKETS; b++)
		n[b] = h.n[b];
	assert_near(dp_hist_quantile(n, 0.5), 50000, "p50");
	assert_near(dp_hist_quantile(n, 0.9), 90000, "p90");
	assert_near(dp_hist_quantile(n, 0.99), 99000, "p99");
	assert_near(dp_hist_quantile(n, 0.999), 99900, "p99.9");
	assert_near(dp_hist_quantile(n, 1.0), 100000, "max");
	cr_assert_eq(dp_hist_quantile(n, 0.0), 1, "min");
}

Test(hist, quantiles_are_monotonic_in_q)
{
	uint64_t n[DP_HIST_BUCKETS] = {0}, last = 0;
	struct t_rng r;

	t_rng_seed(&r, 3);
	for (int i = 0; i < 10000; i++)
		n[dp_hist_bucket(t_rng_next(&r) >> (20 + t_rng_below(&r, 40)))]++;
	for (int i = 0; i <= 1000; i++) {
		uint64_t got = dp_hist_quantile(n, i / 1000.0);

		cr_assert_geq(got, last, "q%.3f: %llu below q%.3f: %llu", i / 1000.0,
			      (unsigned long long)got, (i - 1) / 1000.0, (unsigned long long)last);
		last = got;
	}
}

Test(hist, quantile_splits_two_values_at_the_median)
{
	uint64_t n[DP_HIST_BUCKETS] = {0};

	n[dp_hist_bucket(10)] = 90;
	n[dp_hist_bucket(5000)] = 10;
	cr_assert_eq(dp_hist_quantile(n, 0.5), 10);
	cr_assert_eq(dp_hist_quantile(n, 0.89), 10);
	assert_near(dp_hist_quantile(n, 0.95), 5000, "p95");
	assert_near(dp_hist_quantile(n, 1.0), 5000, "max");
}
