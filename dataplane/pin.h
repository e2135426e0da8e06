/*
 * Placement of pdrouter's threads on the machine's cores (hwloc): each dataplane core on a
 * physical core of its own, never on the SMT sibling of another pinned thread, memory bound to
 * its NUMA node, and the control thread on a core of its own where the machine has one to spare.
 */
#ifndef PD_DATAPLANE_PIN_H
#define PD_DATAPLANE_PIN_H

#include <stddef.h>
#include <stdint.h>

#define DP_PIN_MAX_CORES 64u

struct dp_placement {
	uint32_t ncores;		/* dataplane cores placed */
	int core_cpu[DP_PIN_MAX_CORES]; /* OS cpu (PU) index of dataplane core i */
	int control_cpu;		/* OS cpu of the control thread */
	int shared_control;		/* 1: the control thread shares a physical core with
					 * dataplane core shared_core (no core left to give
					 * it, or an explicit control cpu put it there) */
	uint32_t shared_core;		/* the dataplane core it shares with; 0 unless shared */
};

struct dp_pin_request {
	uint32_t ncores;      /* 0: automatic (see dp_place()) */
	const char *cpu_list; /* "2,4-5": these OS cpus for the dataplane cores; NULL: choose */
	int control_cpu;      /* -1: choose */
};

struct hwloc_topology;

/**
 * dp_place - choose where the threads go on @topo (a loaded hwloc topology).
 * @topo: the machine (hwloc_topology_load() done), or a synthetic one in tests.
 * @req: the cores asked for; @req->ncores must match the list's length when both are given.
 * @out: the placement; zeroed (control_cpu -1) on failure.
 * @err: a reason a user can act on, for an error (may be NULL).
 * @errlen: the size of @err.
 *
 * Automatic (@req->cpu_list NULL): one dataplane core on the first PU of each physical core,
 * leaving the first physical core to the control thread and the rest of the system when the
 * machine has two or more, up to @req->ncores (0: half the physical cores rounded down, at
 * least 1, at most DP_PIN_MAX_CORES); cores of NUMA node 0 first, then node 1, and so on.
 * An explicit cpu list ("2,4-5": digits, commas and ranges a-b with a <= b) is taken as given
 * but refused when a cpu does not exist or is not allowed, is listed twice, or two of its cpus
 * are SMT siblings.
 *
 * The control thread goes on @req->control_cpu, which must exist; when it is -1, on the first
 * PU of the first physical core no dataplane core uses, or else on a free SMT sibling of
 * dataplane core 0, or else on dataplane core 0's cpu. Sharing a physical core with a
 * dataplane core is allowed but sets @out->shared_control, for the caller to report.
 *
 * Context: any thread, at startup; does not block.
 * Return: 0, or
 * -EINVAL: a list that does not parse, a cpu that does not exist, a cpu listed twice,
 *          siblings, a control cpu below -1 or that does not exist, more cores than
 *          DP_PIN_MAX_CORES, or @req->ncores different from the list's length;
 * -ENOSPC: more automatic cores asked for than the machine has physical cores to spare.
 */
int dp_place(struct hwloc_topology *topo, const struct dp_pin_request *req,
	     struct dp_placement *out, char *err, size_t errlen);

/**
 * dp_placement_format - write @p as one human line, such as
 * "dataplane cores: 0->cpu1 1->cpu3; control: cpu0 (shares a core with dataplane core 0)".
 * @buf: where to write, NUL-terminated and cut short if @len is too small (may be NULL if
 *       @len is 0).
 *
 * Context: any thread; does not block.
 * Return: the length of the whole line without its NUL, as snprintf() counts it: @len or more
 * means it was cut short.
 */
size_t dp_placement_format(const struct dp_placement *p, char *buf, size_t len);

/**
 * dp_pin_thread - bind the calling thread to OS cpu @cpu and its memory allocations to that
 * cpu's NUMA node (preferred, so a full node does not fail allocations).
 *
 * Memory binding is skipped on a machine with one NUMA node, and its failure for lack of
 * support or permission (ENOSYS, EXDEV, EPERM) is ignored: the thread still runs on @cpu.
 *
 * Context: the thread to pin, at its start; makes system calls.
 * Return: 0, -EINVAL for a cpu that does not exist or is not allowed, or a negative errno
 * from hwloc (e.g. -EPERM in a container that forbids binding). If the cpu binding failed the
 * thread runs unpinned; if only the memory binding did, it stays on @cpu. The caller logs it.
 */
int dp_pin_thread(struct hwloc_topology *topo, int cpu);

#endif
