/*
 * The one monotonic clock every part of pdrouter reads: CLOCK_MONOTONIC in nanoseconds, a vDSO
 * call (no syscall), so it may sit on the hot path and around every timed operation.
 */
#ifndef PD_DATAPLANE_CLOCK_H
#define PD_DATAPLANE_CLOCK_H

#include <stdint.h>
#include <time.h>

static inline uint64_t dp_now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

#endif
