/*
 * Thread placement with hwloc: where the dataplane cores and the control thread run, and the
 * binding of a thread to its cpu. Called once by the main thread at startup (dp_place()) and
 * by each thread as it starts (dp_pin_thread()); nothing here runs on the hot path.
 */
#include <errno.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>

#include <hwloc.h>

#include "pin.h"
#include "refuse.h"

/* Longest piece of a bad cpu list quoted back in an error. */
#define BAD_PART_MAX 32

/* The PU of OS cpu @cpu, or NULL when the machine has none or this process may not use it. */
static hwloc_obj_t pu_of(hwloc_topology_t topo, int cpu)
{
	hwloc_obj_t pu;

	if (cpu < 0)
		return NULL;
	pu = hwloc_get_pu_obj_by_os_index(topo, (unsigned)cpu);
	if (!pu || !hwloc_bitmap_isset(hwloc_topology_get_allowed_cpuset(topo), (unsigned)cpu))
		return NULL;
	return pu;
}

/*
 * The physical core holding @pu. A topology without core objects (some virtual machines,
 * synthetic descriptions) has nothing to share between PUs, so each PU is its own core.
 */
static hwloc_obj_t core_of(hwloc_topology_t topo, hwloc_obj_t pu)
{
	hwloc_obj_t core = hwloc_get_ancestor_obj_by_type(topo, HWLOC_OBJ_CORE, pu);

	return core ? core : pu;
}

/* The PU after @pu (NULL: the first) inside @obj, in logical order; NULL after the last. */
static hwloc_obj_t next_pu(hwloc_topology_t topo, hwloc_obj_t obj, hwloc_obj_t pu)
{
	return hwloc_get_next_obj_inside_cpuset_by_type(topo, obj->cpuset, HWLOC_OBJ_PU, pu);
}

/* The first PU of @unit (a core, or a PU) that this process may use, or NULL. */
static hwloc_obj_t first_pu(hwloc_topology_t topo, hwloc_obj_t unit)
{
	hwloc_const_cpuset_t allowed = hwloc_topology_get_allowed_cpuset(topo);
	hwloc_obj_t pu = NULL;

	while ((pu = next_pu(topo, unit, pu)))
		if (hwloc_bitmap_isset(allowed, pu->os_index))
			return pu;
	return NULL;
}

/*
 * A walk over the physical cores, those of NUMA node 0 first, then node 1, and so on, each
 * node's in hwloc's logical order; cores no node covers come last. Cores of one node are
 * taken together so that the dataplane cores share a memory controller and an L3 where they
 * can. It allocates nothing: it scans the cores again for each node, once, at startup.
 */
struct core_walk {
	hwloc_topology_t topo;
	hwloc_obj_type_t unit; /* HWLOC_OBJ_CORE, or HWLOC_OBJ_PU where there are no cores */
	int nunits;
	int nnodes;
	int node; /* the node being walked; nnodes: the cores of no node */
	int next; /* logical index of the next unit to look at */
};

static void walk_init(struct core_walk *w, hwloc_topology_t topo)
{
	*w = (struct core_walk){.topo = topo, .unit = HWLOC_OBJ_CORE};
	w->nunits = hwloc_get_nbobjs_by_type(topo, HWLOC_OBJ_CORE);
	if (w->nunits <= 0) {
		w->unit = HWLOC_OBJ_PU;
		w->nunits = hwloc_get_nbobjs_by_type(topo, HWLOC_OBJ_PU);
	}
	w->nnodes = hwloc_get_nbobjs_by_type(topo, HWLOC_OBJ_NUMANODE);
	if (w->nnodes < 0)
		w->nnodes = 0;
}

/* Index of the first NUMA node whose cpus overlap @unit's; nnodes for none. */
static int node_of(const struct core_walk *w, hwloc_obj_t unit)
{
	for (int i = 0; i < w->nnodes; i++) {
		hwloc_obj_t node = hwloc_get_obj_by_type(w->topo, HWLOC_OBJ_NUMANODE, (unsigned)i);

		if (node && node->cpuset && hwloc_bitmap_intersects(unit->cpuset, node->cpuset))
			return i;
	}
	return w->nnodes;
}

/* The next physical core with a usable PU, or NULL at the end of the walk. */
static hwloc_obj_t walk_next(struct core_walk *w)
{
	while (w->node <= w->nnodes) {
		while (w->next < w->nunits) {
			hwloc_obj_t unit =
			    hwloc_get_obj_by_type(w->topo, w->unit, (unsigned)w->next++);

			if (unit && first_pu(w->topo, unit) && node_of(w, unit) == w->node)
				return unit;
		}
		w->node++;
		w->next = 0;
	}
	return NULL;
}

static int count_cores(hwloc_topology_t topo)
{
	struct core_walk w;
	int n = 0;

	walk_init(&w, topo);
	while (walk_next(&w))
		n++;
	return n;
}

/* The dataplane core on physical core @core, or -1. */
static int core_user(hwloc_topology_t topo, const struct dp_placement *p, hwloc_obj_t core)
{
	for (uint32_t i = 0; i < p->ncores; i++)
		if (core_of(topo, pu_of(topo, p->core_cpu[i])) == core)
			return (int)i;
	return -1;
}

/*
 * Automatic dataplane cores: the first physical core stays with the control thread and the
 * system where there are two or more, and each dataplane core takes the first PU of one of the
 * next cores, so that no two pinned threads are SMT siblings.
 */
static int place_auto(hwloc_topology_t topo, uint32_t ncores, struct dp_placement *out, char *err,
		      size_t errlen)
{
	int total = count_cores(topo);
	int reserved = total >= 2 ? 1 : 0;
	uint32_t want = ncores, avail = (uint32_t)(total - reserved);
	struct core_walk w;
	hwloc_obj_t core;

	if (total < 1)
		return dp_refuse(err, errlen, -ENOSPC, "no usable cpu in the topology");
	if (!want) {
		want = total / 2 ? (uint32_t)total / 2 : 1;
		if (want > DP_PIN_MAX_CORES)
			want = DP_PIN_MAX_CORES;
	}
	if (want > DP_PIN_MAX_CORES)
		return dp_refuse(err, errlen, -EINVAL, "%u dataplane cores: at most %u", want,
				 DP_PIN_MAX_CORES);
	if (want > avail)
		return dp_refuse(err, errlen, -ENOSPC,
				 "%u dataplane cores asked for, but the machine has %d physical "
				 "core(s) and %u to spare after the control thread's",
				 want, total, avail);
	walk_init(&w, topo);
	for (int i = 0; i < reserved; i++)
		walk_next(&w);
	while (out->ncores < want && (core = walk_next(&w)))
		out->core_cpu[out->ncores++] = (int)first_pu(topo, core)->os_index;
	return 0;
}

/* Quote @s (@n bytes) back into an error about a bad cpu list. */
static int bad_part(char *err, size_t errlen, const char *list, const char *s, size_t n)
{
	return dp_refuse(err, errlen, -EINVAL,
			 "cpu list \"%.*s\": bad part \"%.*s\" (want cpu numbers or ranges a-b "
			 "with a <= b, separated by commas)",
			 BAD_PART_MAX, list, (int)(n < BAD_PART_MAX ? n : BAD_PART_MAX), s);
}

/*
 * Parse a decimal cpu number at @*s, leaving @*s after it; -1 when there are no digits or the
 * number overflows an int.
 */
static int parse_num(const char **s)
{
	long v = 0;
	const char *p = *s;

	if (*p < '0' || *p > '9')
		return -1;
	while (*p >= '0' && *p <= '9') {
		v = v * 10 + (*p++ - '0');
		if (v > 0x7fffffff)
			return -1;
	}
	*s = p;
	return (int)v;
}

/* Append cpus @lo..@hi to @out; -EINVAL past DP_PIN_MAX_CORES (checked before the loop ends). */
static int add_range(struct dp_placement *out, int lo, int hi, char *err, size_t errlen)
{
	for (long c = lo; c <= hi; c++) {
		if (out->ncores == DP_PIN_MAX_CORES)
			return dp_refuse(err, errlen, -EINVAL, "cpu list names more than %u cpus",
					 DP_PIN_MAX_CORES);
		out->core_cpu[out->ncores++] = (int)c;
	}
	return 0;
}

/* Parse "2,4-5" into @out->core_cpu; strict: digits, commas and a-b ranges, nothing else. */
static int parse_list(const char *list, struct dp_placement *out, char *err, size_t errlen)
{
	const char *s = list;

	for (;;) {
		const char *part = s;
		int lo = parse_num(&s), hi = lo, rc;

		if (lo >= 0 && *s == '-') {
			s++;
			hi = parse_num(&s);
		}
		if (lo < 0 || hi < lo || (*s && *s != ',')) {
			while (*s && *s != ',')
				s++;
			return bad_part(err, errlen, list, part, (size_t)(s - part));
		}
		rc = add_range(out, lo, hi, err, errlen);
		if (rc)
			return rc;
		if (!*s)
			return 0;
		s++;
	}
}

/* Every listed cpu exists, none twice, no two on one physical core. */
static int check_list(hwloc_topology_t topo, const struct dp_placement *p, char *err, size_t errlen)
{
	char allowed[128];

	for (uint32_t i = 0; i < p->ncores; i++) {
		hwloc_obj_t pu = pu_of(topo, p->core_cpu[i]);

		if (!pu) {
			hwloc_bitmap_list_snprintf(allowed, sizeof(allowed),
						   hwloc_topology_get_allowed_cpuset(topo));
			return dp_refuse(err, errlen, -EINVAL,
					 "cpu %d does not exist or is not allowed (cpus: %s)",
					 p->core_cpu[i], allowed);
		}
		for (uint32_t j = 0; j < i; j++) {
			if (p->core_cpu[j] == p->core_cpu[i])
				return dp_refuse(err, errlen, -EINVAL, "cpu %d is listed twice",
						 p->core_cpu[i]);
			if (core_of(topo, pu_of(topo, p->core_cpu[j])) == core_of(topo, pu))
				return dp_refuse(
				    err, errlen, -EINVAL,
				    "cpus %d and %d are SMT siblings (one physical "
				    "core): give each dataplane core a core of its own",
				    p->core_cpu[j], p->core_cpu[i]);
		}
	}
	return 0;
}

/* A PU of @core that no dataplane core uses, or NULL. */
static hwloc_obj_t free_sibling(hwloc_topology_t topo, const struct dp_placement *p,
				hwloc_obj_t core)
{
	hwloc_const_cpuset_t allowed = hwloc_topology_get_allowed_cpuset(topo);
	hwloc_obj_t pu = NULL;

	while ((pu = next_pu(topo, core, pu))) {
		bool used = false;

		for (uint32_t i = 0; i < p->ncores; i++)
			used |= p->core_cpu[i] == (int)pu->os_index;
		if (!used && hwloc_bitmap_isset(allowed, pu->os_index))
			return pu;
	}
	return NULL;
}

/*
 * The control thread's cpu when none was given: the first PU of the first physical core no
 * dataplane core uses, or else a free SMT sibling of dataplane core 0, or else its very cpu.
 */
static void choose_control(hwloc_topology_t topo, struct dp_placement *p)
{
	hwloc_obj_t core, pu;
	struct core_walk w;

	walk_init(&w, topo);
	while ((core = walk_next(&w))) {
		if (core_user(topo, p, core) < 0) {
			p->control_cpu = (int)first_pu(topo, core)->os_index;
			return;
		}
	}
	pu = free_sibling(topo, p, core_of(topo, pu_of(topo, p->core_cpu[0])));
	p->control_cpu = pu ? (int)pu->os_index : p->core_cpu[0];
	p->shared_control = 1;
	p->shared_core = 0;
}

/* An explicit control cpu: it must exist; sharing a core with a dataplane core is reported. */
static int take_control(hwloc_topology_t topo, int cpu, struct dp_placement *p, char *err,
			size_t errlen)
{
	hwloc_obj_t pu = pu_of(topo, cpu);
	int user;

	if (!pu)
		return dp_refuse(err, errlen, -EINVAL,
				 "control cpu %d does not exist or is not allowed", cpu);
	p->control_cpu = cpu;
	user = core_user(topo, p, core_of(topo, pu));
	if (user >= 0) {
		p->shared_control = 1;
		p->shared_core = (uint32_t)user;
	}
	return 0;
}

int dp_place(struct hwloc_topology *topo, const struct dp_pin_request *req,
	     struct dp_placement *out, char *err, size_t errlen)
{
	int rc;

	*out = (struct dp_placement){.control_cpu = -1};
	if (req->control_cpu < -1)
		return dp_refuse(err, errlen, -EINVAL, "control cpu %d: want a cpu number or -1",
				 req->control_cpu);
	if (req->cpu_list) {
		rc = parse_list(req->cpu_list, out, err, errlen);
		if (!rc)
			rc = check_list(topo, out, err, errlen);
		if (!rc && req->ncores && req->ncores != out->ncores)
			rc = dp_refuse(err, errlen, -EINVAL,
				       "%u dataplane cores asked for, but the cpu list names %u",
				       req->ncores, out->ncores);
	} else {
		rc = place_auto(topo, req->ncores, out, err, errlen);
	}
	if (!rc && req->control_cpu >= 0)
		rc = take_control(topo, req->control_cpu, out, err, errlen);
	else if (!rc)
		choose_control(topo, out);
	if (rc)
		*out = (struct dp_placement){.control_cpu = -1};
	return rc;
}

/* snprintf at @*at within @buf of @len, counting what would have been written past the end. */
__attribute__((format(printf, 4, 5))) static void put(char *buf, size_t len, size_t *at,
						      const char *fmt, ...)
{
	va_list ap;
	int n;

	va_start(ap, fmt);
	n = vsnprintf(*at < len ? buf + *at : NULL, *at < len ? len - *at : 0, fmt, ap);
	va_end(ap);
	if (n > 0)
		*at += (size_t)n;
}

size_t dp_placement_format(const struct dp_placement *p, char *buf, size_t len)
{
	size_t at = 0;

	if (buf && len)
		buf[0] = '\0';
	put(buf, len, &at, "dataplane cores:");
	for (uint32_t i = 0; i < p->ncores && i < DP_PIN_MAX_CORES; i++)
		put(buf, len, &at, " %u->cpu%d", i, p->core_cpu[i]);
	put(buf, len, &at, "; control: cpu%d", p->control_cpu);
	if (p->shared_control)
		put(buf, len, &at, " (shares a core with dataplane core %u)", p->shared_core);
	return at;
}

/*
 * Memory follows the cpu's NUMA node. Without HWLOC_MEMBIND_STRICT, hwloc asks Linux for
 * MPOL_PREFERRED, so a full node spills over instead of failing allocations. With one node
 * there is nothing to choose, and the call is skipped (containers often forbid it).
 */
static int bind_memory(hwloc_topology_t topo, hwloc_obj_t pu)
{
	const struct hwloc_topology_support *sup = hwloc_topology_get_support(topo);

	if (hwloc_get_nbobjs_by_type(topo, HWLOC_OBJ_NUMANODE) < 2 || !pu->nodeset ||
	    !sup->membind->set_thisthread_membind || !sup->membind->bind_membind)
		return 0;
	if (!hwloc_set_membind(topo, pu->nodeset, HWLOC_MEMBIND_BIND,
			       HWLOC_MEMBIND_THREAD | HWLOC_MEMBIND_BYNODESET))
		return 0;
	/* Where memory cannot follow, the thread still runs on its cpu: not worth failing for. */
	if (errno == ENOSYS || errno == EXDEV || errno == EPERM)
		return 0;
	return errno ? -errno : -EIO;
}

int dp_pin_thread(struct hwloc_topology *topo, int cpu)
{
	hwloc_obj_t pu = pu_of(topo, cpu);

	if (!pu)
		return -EINVAL;
	if (hwloc_set_cpubind(topo, pu->cpuset, HWLOC_CPUBIND_THREAD))
		return errno ? -errno : -EIO;
	return bind_memory(topo, pu);
}
