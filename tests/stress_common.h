/*
 * What the plain stress programs (stress_*.c) share besides rng.h: a clock and failure counting.
 * No Criterion here: they build under ThreadSanitizer.
 */
#ifndef PD_TESTS_STRESS_COMMON_H
#define PD_TESTS_STRESS_COMMON_H

#include <stdatomic.h>
#include <stdio.h>
#include <time.h>

/* Failures seen by any thread of the program; relaxed: read after pthread_join(). */
static atomic_uint t_stress_failures;

/* Count a failure and print the first five, each prefixed with @prog. */
#define T_STRESS_FAIL(prog, ...)                                                          \
	do {                                                                              \
		if (atomic_fetch_add_explicit(&t_stress_failures, 1, memory_order_relaxed) < 5) \
			fprintf(stderr, prog ": " __VA_ARGS__);                           \
	} while (0)

/* Failures so far. */
static inline unsigned t_stress_failed(void)
{
	return atomic_load_explicit(&t_stress_failures, memory_order_relaxed);
}

/* Seconds on the monotonic clock. */
static inline double now_s(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

#endif
