/* Percentiles of latency samples (bench.h), for every pdbench subcommand and its tests. */
#include <stdlib.h>

#include "bench.h"

static int cmp_u64(const void *a, const void *b)
{
	uint64_t l = *(const uint64_t *)a, r = *(const uint64_t *)b;

	return (l > r) - (l < r);
}

void bench_sort_u64(uint64_t *v, size_t n)
{
	if (n) /* v may be NULL then, which qsort() may not be given */
		qsort(v, n, sizeof(*v), cmp_u64);
}

uint64_t bench_pct(const uint64_t *v, size_t n, unsigned permille)
{
	size_t rank = (n * permille + 999u) / 1000u;

	return n ? v[rank ? rank - 1 : 0] : 0;
}
