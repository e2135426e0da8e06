/*
 * Loading a topology for pdtune (topo.h): hwloc with I/O objects kept, the physical cores
 * reduced to struct pt_unit, network devices and GPUs located by their closest non-I/O
 * ancestor, and the summary pdtune prints first.
 */
#include <errno.h>
#include <stdarg.h>
#include <string.h>

#include "refuse.h"
#include "topo.h"

/* Logical index of the NUMA node whose cpus hold @obj's first cpu; -1: none. */
static int node_index(hwloc_topology_t topo, hwloc_obj_t obj)
{
	int n = hwloc_get_nbobjs_by_type(topo, HWLOC_OBJ_NUMANODE);

	for (int i = 0; i < n; i++) {
		hwloc_obj_t node = hwloc_get_obj_by_type(topo, HWLOC_OBJ_NUMANODE, (unsigned)i);

		if (node->cpuset && hwloc_bitmap_intersects(node->cpuset, obj->cpuset))
			return i;
	}
	return -1;
}

static int ancestor_index(hwloc_topology_t topo, hwloc_obj_type_t type, hwloc_obj_t obj)
{
	hwloc_obj_t a = hwloc_get_ancestor_obj_by_type(topo, type, obj);

	return a ? (int)a->logical_index : -1;
}

/* Fill @u from @obj (a core or a PU); return how many of its PUs this process may use. */
static int unit_from(const struct pt_topo *t, hwloc_obj_t obj, struct pt_unit *u)
{
	hwloc_const_cpuset_t allowed = hwloc_topology_get_allowed_cpuset(t->topo);
	hwloc_obj_t pu = NULL;
	int npus = 0;

	*u = (struct pt_unit){.obj = obj, .cpu = -1, .sibling = -1};
	while ((pu = hwloc_get_next_obj_inside_cpuset_by_type(t->topo, obj->cpuset, HWLOC_OBJ_PU,
							      pu))) {
		if (!hwloc_bitmap_isset(allowed, pu->os_index))
			continue;
		if (npus++ == 0)
			u->cpu = (int)pu->os_index;
		else if (u->sibling < 0)
			u->sibling = (int)pu->os_index;
	}
	u->node = node_index(t->topo, obj);
	u->l3 = ancestor_index(t->topo, HWLOC_OBJ_L3CACHE, obj);
	u->package = ancestor_index(t->topo, HWLOC_OBJ_PACKAGE, obj);
	return npus;
}

/* The physical cores, in hwloc's logical order (NUMA node by node on common machines). */
static void collect_units(struct pt_topo *t)
{
	hwloc_obj_type_t type = t->ncores > 0 ? HWLOC_OBJ_CORE : HWLOC_OBJ_PU;
	int n = hwloc_get_nbobjs_by_type(t->topo, type);

	for (int i = 0; i < n; i++) {
		hwloc_obj_t obj = hwloc_get_obj_by_type(t->topo, type, (unsigned)i);
		struct pt_unit u;
		int npus = unit_from(t, obj, &u);

		if (!npus)
			continue;
		if (npus > t->smt)
			t->smt = npus;
		if (t->nunits == PT_MAX_UNITS) {
			t->units_cut = true;
			continue;
		}
		t->unit[t->nunits++] = u;
	}
}

static void add_dev(struct pt_topo *t, hwloc_obj_t osdev, enum pt_dev_kind kind)
{
	hwloc_obj_t anc = hwloc_get_non_io_ancestor_obj(t->topo, osdev);
	hwloc_obj_t root = hwloc_get_root_obj(t->topo);
	struct pt_dev *d;

	if (t->ndevs == PT_MAX_DEVS || !anc || !anc->cpuset)
		return;
	d = &t->dev[t->ndevs];
	*d = (struct pt_dev){.kind = kind, .node = -1};
	d->cpuset = hwloc_bitmap_dup(anc->cpuset);
	if (!d->cpuset)
		return;
	snprintf(d->name, sizeof(d->name), "%s", osdev->name ? osdev->name : "?");
	d->local = !hwloc_bitmap_isincluded(root->cpuset, anc->cpuset);
	if (anc->nodeset && hwloc_bitmap_weight(anc->nodeset) == 1)
		d->node = node_index(t->topo, anc);
	t->ndevs++;
}

/* Network (Ethernet, RDMA) and GPU (display, compute) OS devices, in hwloc's order. */
static void collect_devs(struct pt_topo *t)
{
	hwloc_obj_t osdev = NULL;

	while ((osdev = hwloc_get_next_osdev(t->topo, osdev))) {
		switch (osdev->attr->osdev.type) {
		case HWLOC_OBJ_OSDEV_NETWORK:
		case HWLOC_OBJ_OSDEV_OPENFABRICS:
			add_dev(t, osdev, PT_DEV_NIC);
			break;
		case HWLOC_OBJ_OSDEV_GPU:
		case HWLOC_OBJ_OSDEV_COPROC:
			add_dev(t, osdev, PT_DEV_GPU);
			break;
		default:
			break;
		}
	}
}

static int count(hwloc_topology_t topo, hwloc_obj_type_t type)
{
	int n = hwloc_get_nbobjs_by_type(topo, type);

	return n > 0 ? n : 0;
}

static int load(struct pt_topo *t, const struct pt_source *src, char *err, size_t errlen)
{
	if (hwloc_topology_set_io_types_filter(t->topo, HWLOC_TYPE_FILTER_KEEP_IMPORTANT))
		return dp_refuse(err, errlen, -EINVAL, "hwloc: cannot keep I/O objects");
	if (src->xml && hwloc_topology_set_xml(t->topo, src->xml))
		return dp_refuse(err, errlen, -EINVAL, "%s: not an hwloc XML topology (%s)",
				 src->xml, strerror(errno));
	if (src->synthetic && hwloc_topology_set_synthetic(t->topo, src->synthetic))
		return dp_refuse(err, errlen, -EINVAL,
				 "synthetic \"%s\": hwloc refused it (e.g. \"pack:2 numa:1 l3:1 "
				 "core:8 pu:2\")",
				 src->synthetic);
	if (hwloc_topology_load(t->topo))
		return dp_refuse(err, errlen, -EINVAL, "hwloc: loading the topology failed: %s",
				 strerror(errno));
	return 0;
}

int pt_topo_open(struct pt_topo *t, const struct pt_source *src, char *err, size_t errlen)
{
	int rc;

	memset(t, 0, sizeof(*t));
	if (src->xml && src->synthetic)
		return dp_refuse(err, errlen, -EINVAL,
				 "give a topology file or a synthetic "
				 "description, not both");
	if (hwloc_topology_init(&t->topo))
		return dp_refuse(err, errlen, -ENOMEM, "hwloc: out of memory");
	rc = load(t, src, err, errlen);
	if (rc) {
		hwloc_topology_destroy(t->topo);
		return rc;
	}
	t->this_machine = !src->xml && !src->synthetic;
	if (src->xml)
		snprintf(t->origin, sizeof(t->origin), "XML file %s", src->xml);
	else if (src->synthetic)
		snprintf(t->origin, sizeof(t->origin), "synthetic \"%s\"", src->synthetic);
	else
		snprintf(t->origin, sizeof(t->origin), "this machine");
	t->npackages = count(t->topo, HWLOC_OBJ_PACKAGE);
	t->nnodes = count(t->topo, HWLOC_OBJ_NUMANODE);
	t->nl3 = count(t->topo, HWLOC_OBJ_L3CACHE);
	t->nl2 = count(t->topo, HWLOC_OBJ_L2CACHE);
	t->ncores = count(t->topo, HWLOC_OBJ_CORE);
	t->npus = count(t->topo, HWLOC_OBJ_PU);
	t->smt = 1;
	collect_units(t);
	collect_devs(t);
	return 0;
}

void pt_topo_close(struct pt_topo *t)
{
	for (uint32_t i = 0; i < t->ndevs; i++)
		hwloc_bitmap_free(t->dev[i].cpuset);
	t->ndevs = 0;
	hwloc_topology_destroy(t->topo);
	t->topo = NULL;
}

int pt_topo_nic(const struct pt_topo *t, const char *name)
{
	for (uint32_t i = 0; i < t->ndevs; i++) {
		const struct pt_dev *d = &t->dev[i];

		if (d->kind != PT_DEV_NIC)
			continue;
		if (name ? !strcmp(d->name, name) : d->local)
			return (int)i;
	}
	return -1;
}

int pt_topo_gpu(const struct pt_topo *t)
{
	for (uint32_t i = 0; i < t->ndevs; i++)
		if (t->dev[i].kind == PT_DEV_GPU && t->dev[i].local)
			return (int)i;
	return -1;
}

int pt_topo_unit_of(const struct pt_topo *t, int cpu)
{
	for (uint32_t i = 0; cpu >= 0 && i < t->nunits; i++)
		if (hwloc_bitmap_isset(t->unit[i].obj->cpuset, (unsigned)cpu))
			return (int)i;
	return -1;
}

/* "16 MiB" or "512 KiB". */
static void put_size(char *buf, size_t len, uint64_t bytes)
{
	if (bytes >= (1u << 20))
		snprintf(buf, len, "%llu MiB", (unsigned long long)(bytes >> 20));
	else
		snprintf(buf, len, "%llu KiB", (unsigned long long)(bytes >> 10));
}

/* One line per object of @type (at most 16, then a count): its cpus and size. */
static void print_objs(const struct pt_topo *t, FILE *f, hwloc_obj_type_t type, const char *what)
{
	int n = count(t->topo, type);

	for (int i = 0; i < n; i++) {
		hwloc_obj_t o = hwloc_get_obj_by_type(t->topo, type, (unsigned)i);
		char cpus[256], size[32] = "";

		if (i == 16) {
			fprintf(f, "  ... and %d more %s\n", n - i, what);
			break;
		}
		hwloc_bitmap_list_snprintf(cpus, sizeof(cpus), o->cpuset);
		if (type == HWLOC_OBJ_NUMANODE && o->attr->numanode.local_memory)
			put_size(size, sizeof(size), o->attr->numanode.local_memory);
		else if (hwloc_obj_type_is_cache(type))
			put_size(size, sizeof(size), o->attr->cache.size);
		fprintf(f, "  %s %d: cpus %s%s%s\n", what, i, cpus, size[0] ? ", " : "", size);
	}
}

/* How many PUs the first object of @type spans: the sharing of that cache level. */
static int pus_per(const struct pt_topo *t, hwloc_obj_type_t type)
{
	hwloc_obj_t o = hwloc_get_obj_by_type(t->topo, type, 0);

	return o ? hwloc_bitmap_weight(o->cpuset) : 0;
}

static void print_dev(FILE *f, const struct pt_dev *d)
{
	char cpus[256];

	hwloc_bitmap_list_snprintf(cpus, sizeof(cpus), d->cpuset);
	if (!d->local)
		fprintf(f,
			"  %s %s: attached to the whole machine (locality unknown or "
			"everywhere)\n",
			d->kind == PT_DEV_NIC ? "NIC" : "GPU", d->name);
	else if (d->node >= 0)
		fprintf(f, "  %s %s: local to cpus %s, NUMA node %d\n",
			d->kind == PT_DEV_NIC ? "NIC" : "GPU", d->name, cpus, d->node);
	else
		fprintf(f, "  %s %s: local to cpus %s\n", d->kind == PT_DEV_NIC ? "NIC" : "GPU",
			d->name, cpus);
}

void pt_topo_print(const struct pt_topo *t, FILE *f)
{
	fprintf(f, "topology: %s\n", t->origin);
	fprintf(f, "  %d package(s), %d NUMA node(s)", t->npackages, t->nnodes);
	if (t->nl3)
		fprintf(f, ", %d L3 (%d PUs each)", t->nl3, pus_per(t, HWLOC_OBJ_L3CACHE));
	if (t->nl2)
		fprintf(f, ", %d L2 (%d PUs each)", t->nl2, pus_per(t, HWLOC_OBJ_L2CACHE));
	fprintf(f, ", %d core(s), %d PU(s)", t->ncores, t->npus);
	if (t->smt > 1)
		fprintf(f, " (SMT: %d PUs a core)\n", t->smt);
	else
		fprintf(f, " (no SMT)\n");
	print_objs(t, f, HWLOC_OBJ_NUMANODE, "NUMA node");
	print_objs(t, f, HWLOC_OBJ_L3CACHE, "L3");
	for (uint32_t i = 0; i < t->ndevs; i++)
		print_dev(f, &t->dev[i]);
	if (!t->ndevs)
		fprintf(f, "  no network device or GPU found (no NIC or GPU locality)\n");
	if (t->units_cut)
		fprintf(f, "  note: only the first %u cores are considered\n", PT_MAX_UNITS);
}
