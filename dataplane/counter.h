/*
 * Counters with one writer and any number of readers: the writer's relaxed load and store make
 * an exact update without a locked instruction, and a reader takes any recent value. Every
 * per-core count of the router (routing load, statistics, latency histograms) is one.
 */
#ifndef PD_DATAPLANE_COUNTER_H
#define PD_DATAPLANE_COUNTER_H

#include <stdatomic.h>
#include <stdint.h>

/* Add @add and take @sub off @v; only its one writer calls this. */
static inline void dp_relaxed_add(_Atomic uint64_t *v, uint64_t add, uint64_t sub)
{
	atomic_store_explicit(v, atomic_load_explicit(v, memory_order_relaxed) + add - sub,
			      memory_order_relaxed);
}

#endif
