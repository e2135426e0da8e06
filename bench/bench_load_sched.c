/*
 * pdbench load's arrival schedules: when each request is due, as an offset from the start of
 * the run. A schedule never reads the clock; the run compares its offsets with the clock, so a
 * simulated clock tests them exactly. Open-loop latency is measured from these times.
 */
#include <errno.h>
#include <math.h>
#include <string.h>

#include "bench_load.h"

static const char *const sched_names[] = {
	[LOAD_SCHED_CLOSED] = "closed",
	[LOAD_SCHED_FIXED] = "fixed",
	[LOAD_SCHED_POISSON] = "poisson",
	[LOAD_SCHED_TRACE] = "trace",
};

int load_sched_parse(const char *s, enum load_sched_kind *out)
{
	for (uint32_t k = 0; k < sizeof(sched_names) / sizeof(sched_names[0]); k++) {
		if (!strcmp(s, sched_names[k])) {
			*out = (enum load_sched_kind)k;
			return 0;
		}
	}
	return -EINVAL;
}

const char *load_sched_name(enum load_sched_kind kind)
{
	return sched_names[kind];
}

void load_sched_init(struct load_sched *s, enum load_sched_kind kind, double rate,
		     double speedup, const struct load_trace *trace, uint64_t seed)
{
	*s = (struct load_sched){.kind = kind, .rate = rate, .speedup = speedup, .trace = trace,
				 .rng = seed};
}

/* The next uniform value in (0, 1) of a 64-bit LCG (Knuth's MMIX constants); its high 53
 * bits are what we use, which are the good ones. */
static double sched_uniform(struct load_sched *s)
{
	s->rng = s->rng * 6364136223846793005ull + 1442695040888963407ull;
	return ((double)(s->rng >> 11) + 0.5) / 9007199254740992.0;
}

/* Fixed arrivals are k / rate, computed from k rather than summed, so no rounding drifts.
 * Poisson sums exponential gaps in double seconds: 2^-52 relative error over a day is far
 * below a nanosecond. The first Poisson arrival is one gap in, as a process started at 0. */
uint64_t load_sched_next(struct load_sched *s)
{
	uint64_t k = s->n;

	switch (s->kind) {
	case LOAD_SCHED_FIXED:
		s->n++;
		return (uint64_t)((double)k * 1e9 / s->rate);
	case LOAD_SCHED_POISSON:
		s->n++;
		s->t_s += -log(sched_uniform(s)) / s->rate;
		return (uint64_t)(s->t_s * 1e9);
	case LOAD_SCHED_TRACE:
		if (k >= s->trace->n)
			return LOAD_SCHED_END;
		s->n++;
		return (uint64_t)((double)s->trace->reqs[k].at_ns / s->speedup);
	default:
		s->n++;
		return 0;
	}
}
