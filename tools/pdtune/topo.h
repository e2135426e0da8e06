/*
 * pdtune's view of a machine: an hwloc topology (this machine, an XML file or a synthetic
 * description) reduced to what placement needs: the physical cores in hwloc's logical order
 * with their NUMA node and L3, and the locality of network devices and GPUs. Loaded once by
 * pdtune's main thread; everything after reads it.
 */
#ifndef PD_TOOLS_PDTUNE_TOPO_H
#define PD_TOOLS_PDTUNE_TOPO_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include <hwloc.h>

#define PT_MAX_UNITS 1024u /* physical cores looked at; the rest are left out, with a note */
#define PT_MAX_DEVS 16u	   /* network and GPU devices remembered */
#define PT_DEV_NAME_LEN 32u

/* One physical core, or one PU where the topology has no core objects. */
struct pt_unit {
	hwloc_obj_t obj; /* the core (or PU) in the topology */
	int cpu;	 /* OS index of its first allowed PU */
	int sibling;	 /* OS index of another allowed PU of the same core; -1: no SMT */
	int node;	 /* logical index of its NUMA node; -1: none */
	int l3;		 /* logical index of the L3 above it; -1: none */
	int package;	 /* logical index of its package; -1: none */
};

enum pt_dev_kind { PT_DEV_NIC, PT_DEV_GPU };

/* A network device (Ethernet or RDMA) or a GPU, and where it sits. */
struct pt_dev {
	char name[PT_DEV_NAME_LEN];
	enum pt_dev_kind kind;
	bool local;	       /* its locality is narrower than the whole machine */
	int node;	       /* logical index of its one NUMA node; -1: several or unknown */
	hwloc_bitmap_t cpuset; /* cpus of its closest non-I/O ancestor (owned) */
};

/* Where the topology comes from: at most one of @xml and @synthetic; neither: this machine. */
struct pt_source {
	const char *xml;
	const char *synthetic;
};

struct pt_topo {
	hwloc_topology_t topo;
	bool this_machine; /* false for XML and synthetic: nothing can be measured */
	char origin[160];  /* "this machine", "XML file F", "synthetic \"D\"" */
	uint32_t nunits;
	bool units_cut; /* more physical cores than PT_MAX_UNITS */
	struct pt_unit unit[PT_MAX_UNITS];
	uint32_t ndevs;
	struct pt_dev dev[PT_MAX_DEVS];
	int npackages, nnodes, nl3, nl2, ncores, npus;
	int smt; /* most allowed PUs on one core */
};

/**
 * pt_topo_open - load the topology @src names into @t, I/O devices included.
 * @err: a reason a user can act on, for an error (@errlen bytes).
 *
 * Return: 0, or -EINVAL (hwloc refused the description or the file) or -ENOMEM; @t needs no
 * pt_topo_close() after a failure.
 */
int pt_topo_open(struct pt_topo *t, const struct pt_source *src, char *err, size_t errlen);

/* pt_topo_close - release what pt_topo_open() took. */
void pt_topo_close(struct pt_topo *t);

/**
 * pt_topo_nic - the network device the proposals stay near: the one named @name, or, when
 * @name is NULL, the first whose locality is narrower than the machine.
 *
 * Return: its index in @t->dev, or -1 (no such device, or none with a known locality).
 */
int pt_topo_nic(const struct pt_topo *t, const char *name);

/* pt_topo_gpu - the first GPU with a locality narrower than the machine; -1: none. */
int pt_topo_gpu(const struct pt_topo *t);

/* pt_topo_unit_of - the index in @t->unit of the core holding OS cpu @cpu; -1: none. */
int pt_topo_unit_of(const struct pt_topo *t, int cpu);

/* pt_topo_print - the summary: counts, NUMA nodes, L3 caches, devices and their locality. */
void pt_topo_print(const struct pt_topo *t, FILE *f);

#endif
