/*
 * pdtune's candidate placements: where pdrouter's control thread and dataplane cores could
 * run on a topology (topo.h), each checked with dp_place() as pdrouter would check its
 * --cpus and --control-cpu flags. Pure functions of the topology: nothing here measures.
 */
#ifndef PD_TOOLS_PDTUNE_PROPOSE_H
#define PD_TOOLS_PDTUNE_PROPOSE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "pin.h"
#include "topo.h"

#define PT_MAX_CANDS 16u
#define PT_MAX_NOTES 16u
#define PT_NAME_LEN 24u
#define PT_NOTE_LEN 128u

/* What pdtune measured of a candidate; the flags say which figures are there. */
struct pt_figures {
	bool route, mailbox, load;
	uint64_t route_p50_ns, route_p99_ns; /* the slowest dataplane cpu's, all routing at once */
	uint64_t mbox_p50_ns, mbox_p99_ns;   /* one-way, dataplane core 0 to the worker cpu */
	double load_rps;		     /* pdbench load through a real pdrouter */
	double load_e2e_p99_us;
	char error[PT_NOTE_LEN]; /* why a measurement failed; "" when none did */
};

struct pt_cand {
	char name[PT_NAME_LEN];	   /* "auto", "nic-local", ... */
	char also[PT_NOTE_LEN];	   /* other strategies that gave this same placement */
	char why[PT_NOTE_LEN];	   /* what it tries, for the reader of the table */
	struct dp_placement place; /* as dp_place() accepted it */
	int worker_cpu;		   /* where a worker would run (the mailbox peer); -1: none */
	uint32_t order;		   /* position in the proposal, the ranking's last tie-break */
	struct pt_figures fig;
};

/* The caller's storage for pt_propose(): the candidates and why some were not proposed. */
struct pt_proposal {
	uint32_t ncores; /* dataplane cores in every candidate */
	uint32_t n;
	struct pt_cand cand[PT_MAX_CANDS];
	uint32_t nnotes;
	char note[PT_MAX_NOTES][PT_NOTE_LEN];
};

/**
 * pt_default_cores - how many dataplane cores pdrouter places without --dataplane-cores:
 * dp_place() with ncores 0 on @t.
 *
 * Return: the count (1 or more), or dp_place()'s negative errno with @err saying why.
 */
int pt_default_cores(const struct pt_topo *t, char *err, size_t errlen);

/**
 * pt_propose - the candidate placements of @ncores dataplane cores on @t, distinct, in the
 * order of the strategies (see propose.c); same placements from two strategies are one
 * candidate whose also names the second.
 * @nic: index in @t->dev of the NIC to stay near, or -1.
 * @out: filled; out->note says why a strategy gave nothing (no NIC locality, one L3, ...).
 *
 * No candidate puts two dataplane cores on one physical core. The control thread shares a
 * physical core with a dataplane core (place.shared_control) only in control-sibling and
 * control-shared, or where every core has a dataplane core.
 *
 * Return: the number of candidates (1 or more), or
 * -EINVAL: @ncores is 0 or over DP_PIN_MAX_CORES;
 * -ENOSPC: @t has fewer physical cores than @ncores.
 */
int pt_propose(const struct pt_topo *t, uint32_t ncores, int nic, struct pt_proposal *out,
	       char *err, size_t errlen);

/* pt_same_cpus - whether @a and @b have the same dataplane cpus, in any order. */
bool pt_same_cpus(const struct dp_placement *a, const struct dp_placement *b);

/**
 * pt_cpu_list - write @n cpus as pdrouter's --cpus wants them, in their order, runs of
 * consecutive cpus as ranges: {2, 4, 5, 6} is "2,4-6".
 *
 * Return: the length of the whole list, as snprintf() counts it (@len or more: cut short).
 */
size_t pt_cpu_list(const int *cpu, uint32_t n, char *buf, size_t len);

#endif
