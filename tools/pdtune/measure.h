/*
 * Measuring a candidate placement (propose.h) on this machine with pdbench: the route
 * benchmark on every dataplane cpu at once, the mailbox benchmark between dataplane core 0
 * and the worker cpu, and optionally a load run through a pdrouter placed as the candidate
 * says, with pdmock --instant as the worker. Runs child processes from pdtune's main thread.
 */
#ifndef PD_TOOLS_PDTUNE_MEASURE_H
#define PD_TOOLS_PDTUNE_MEASURE_H

#include <stdbool.h>
#include <stdint.h>

#include "propose.h"

struct pt_measure_opts {
	const char *pdbench;  /* the pdbench binary */
	const char *pdrouter; /* for the load run */
	const char *pdmock;   /* for the load run */
	uint32_t runs;	      /* each benchmark this many times; the median counts */
	uint32_t decisions;   /* pdbench route --decisions */
	uint32_t samples;     /* pdbench mailbox --samples */
	double load_s;	      /* seconds of a pdbench load run; 0: no load run */
	bool verbose;	      /* print each command, as taskset would run it, on stderr */
};

/*
 * Each fills its figures of @c->fig and sets its flag (route, mailbox, load); one that fails
 * leaves the flag false and says why in @c->fig.error, unless an earlier failure is there.
 *
 * Context: pdtune's main thread; blocks for seconds; every process it starts is gone when
 * it returns.
 * Return: 0, or -EIO when the benchmark gave no figures.
 */

/* pt_measure_route - pdbench route on every dataplane cpu of @c at once. */
int pt_measure_route(const struct pt_measure_opts *o, struct pt_cand *c);

/* pt_measure_mailbox - pdbench mailbox from dataplane core 0 to @c->worker_cpu (not -1). */
int pt_measure_mailbox(const struct pt_measure_opts *o, struct pt_cand *c);

/* pt_measure_load - pdbench load through pdrouter placed as @c says (load.h). */
int pt_measure_load(const struct pt_measure_opts *o, struct pt_cand *c);

#endif
