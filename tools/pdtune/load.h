/*
 * The load run of a candidate (measure.h): a pdrouter started with the candidate's --cpus
 * and --control-cpu, one pdmock --instant worker on the worker cpu, and pdbench load against
 * them for a few seconds, all in a private temporary directory removed afterwards.
 */
#ifndef PD_TOOLS_PDTUNE_LOAD_H
#define PD_TOOLS_PDTUNE_LOAD_H

#include <stddef.h>

#include "measure.h"

/**
 * pt_load_run - measure @c under load.
 * @rps: completed requests per second.
 * @e2e_p99_us: the client's end-to-end p99.
 * @err: why it failed, for an error (@errlen bytes).
 *
 * Context: pdtune's main thread; blocks for about @o->load_s plus start-up; stops what it
 * started before it returns.
 * Return: 0, -EIO (a process failed, or no request completed) or -ETIMEDOUT (the router or
 * the worker did not come up, or the run overran).
 */
int pt_load_run(const struct pt_measure_opts *o, const struct pt_cand *c, double *rps,
		double *e2e_p99_us, char *err, size_t errlen);

#endif
