/*
 * What the plain stress programs (stress_pdx.c, stress_pdx_races.c) share besides rng.h.
 * No Criterion here: they build under ThreadSanitizer.
 */
#ifndef PD_TESTS_STRESS_COMMON_H
#define PD_TESTS_STRESS_COMMON_H

#include <time.h>

/* Seconds on the monotonic clock. */
static inline double now_s(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

#endif
