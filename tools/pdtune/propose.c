/*
 * Candidate placements (propose.h). Each strategy picks physical cores (struct pt_unit) for
 * the dataplane and a cpu for the control thread; add_place() then has dp_place() check the
 * result as pdrouter checks --cpus and --control-cpu, chooses where a worker would run for
 * the mailbox benchmark, and folds a placement already proposed into the first one. The
 * strategies, in order:
 *
 *   auto             what pdrouter does by itself (dp_place() with no cpu list)
 *   first-cores      dataplane from the first core, which auto leaves to the system
 *   nic-local        dataplane cores inside the NIC's locality (when hwloc knows it), under
 *                    one L3 of it where one has room
 *   gpu-local        the same for the first GPU, beside the workers (when known)
 *   one-l3/one-numa  all dataplane cores under the first L3 / on the first NUMA node with room
 *   spread           round-robin over the NUMA nodes (or the L3s where there is one node)
 *   control-sibling  auto's cores, the control thread on an SMT sibling of dataplane core 0
 *   control-shared   auto's cores, the control thread on dataplane core 0's cpu (no SMT)
 *
 * Except first-cores, strategies leave the first core to the system as auto does.
 */
#include <errno.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

#include "propose.h"
#include "refuse.h"

/* Physical cores chosen so far for the dataplane, in the order pdrouter will number them. */
struct pick {
	uint32_t n;
	int cpu[DP_PIN_MAX_CORES];
	uint32_t unit[DP_PIN_MAX_CORES];
	bool used[PT_MAX_UNITS];
};

/* Which domain a unit belongs to, for one-l3, one-numa and spread. */
typedef int (*domain_fn)(const struct pt_unit *u);

__attribute__((format(printf, 2, 3))) static void note(struct pt_proposal *out, const char *fmt,
						       ...)
{
	va_list ap;

	if (out->nnotes == PT_MAX_NOTES)
		return;
	va_start(ap, fmt);
	vsnprintf(out->note[out->nnotes++], PT_NOTE_LEN, fmt, ap);
	va_end(ap);
}

static int domain_l3(const struct pt_unit *u)
{
	return u->l3;
}

static int domain_node(const struct pt_unit *u)
{
	return u->node;
}

/* The first core the strategies may take: the system keeps core 0 where there are two. */
static uint32_t first_free(const struct pt_topo *t)
{
	return t->nunits >= 2 ? 1 : 0;
}

static void take(struct pick *p, const struct pt_topo *t, uint32_t u)
{
	p->used[u] = true;
	p->unit[p->n] = u;
	p->cpu[p->n++] = t->unit[u].cpu;
}

/* Take free cores from @from on, those inside @cpus (NULL: any), until @want are taken. */
static void fill(struct pick *p, const struct pt_topo *t, uint32_t want, uint32_t from,
		 hwloc_const_cpuset_t cpus)
{
	for (uint32_t u = from; u < t->nunits && p->n < want; u++)
		if (!p->used[u] && (!cpus || hwloc_bitmap_isset(cpus, (unsigned)t->unit[u].cpu)))
			take(p, t, u);
}

/*
 * The control thread of a pick: the first free core on dataplane core 0's NUMA node (core
 * 0 for picks on node 0, as auto does), else any free core, else an SMT sibling of
 * dataplane core 0, else its very cpu.
 */
static int control_for(const struct pt_topo *t, const struct pick *p)
{
	const struct pt_unit *first = &t->unit[p->unit[0]];

	for (uint32_t u = 0; u < t->nunits; u++)
		if (!p->used[u] && t->unit[u].node == first->node)
			return t->unit[u].cpu;
	for (uint32_t u = 0; u < t->nunits; u++)
		if (!p->used[u])
			return t->unit[u].cpu;
	return first->sibling >= 0 ? first->sibling : first->cpu;
}

static bool runs_pinned(const struct dp_placement *pl, int cpu)
{
	for (uint32_t i = 0; i < pl->ncores; i++)
		if (pl->core_cpu[i] == cpu)
			return true;
	return false;
}

/* No thread of @pl on any PU of core @u. */
static bool unit_idle(const struct pt_unit *u, const struct dp_placement *pl)
{
	if (hwloc_bitmap_isset(u->obj->cpuset, (unsigned)pl->control_cpu))
		return false;
	for (uint32_t i = 0; i < pl->ncores; i++)
		if (hwloc_bitmap_isset(u->obj->cpuset, (unsigned)pl->core_cpu[i]))
			return false;
	return true;
}

/*
 * Where a worker would run, the other side of the mailbox benchmark: a core with no router
 * thread, inside the GPU's locality when one is known (workers sit by their GPU), else on
 * dataplane core 0's node, else anywhere; on a machine that full, any cpu but a dataplane
 * core's. -1 when the dataplane has every cpu.
 */
static int worker_for(const struct pt_topo *t, const struct dp_placement *pl, int gpu)
{
	int u0 = pt_topo_unit_of(t, pl->core_cpu[0]);

	for (int pass = 0; pass < 3; pass++) {
		for (uint32_t u = 0; u < t->nunits; u++) {
			const struct pt_unit *w = &t->unit[u];

			if (!unit_idle(w, pl) || (pass == 0 && gpu < 0))
				continue;
			if (pass == 0 && !hwloc_bitmap_isset(t->dev[gpu].cpuset, (unsigned)w->cpu))
				continue;
			if (pass == 1 && u0 >= 0 && w->node != t->unit[u0].node)
				continue;
			return w->cpu;
		}
	}
	for (uint32_t u = 0; u < t->nunits; u++) {
		if (!runs_pinned(pl, t->unit[u].cpu))
			return t->unit[u].cpu;
		if (t->unit[u].sibling >= 0 && !runs_pinned(pl, t->unit[u].sibling))
			return t->unit[u].sibling;
	}
	return -1;
}

static int cmp_int(const void *a, const void *b)
{
	return (*(const int *)a > *(const int *)b) - (*(const int *)a < *(const int *)b);
}

bool pt_same_cpus(const struct dp_placement *a, const struct dp_placement *b)
{
	int x[DP_PIN_MAX_CORES], y[DP_PIN_MAX_CORES];

	if (a->ncores != b->ncores)
		return false;
	memcpy(x, a->core_cpu, a->ncores * sizeof(int));
	memcpy(y, b->core_cpu, b->ncores * sizeof(int));
	qsort(x, a->ncores, sizeof(int), cmp_int);
	qsort(y, b->ncores, sizeof(int), cmp_int);
	return !memcmp(x, y, a->ncores * sizeof(int));
}

/* The same cpus (in any order) and the same control cpu. */
static bool same_place(const struct dp_placement *a, const struct dp_placement *b)
{
	return a->control_cpu == b->control_cpu && pt_same_cpus(a, b);
}

static void append_also(struct pt_cand *c, const char *name)
{
	size_t at = strlen(c->also);

	snprintf(c->also + at, sizeof(c->also) - at, "%s%s", at ? ", " : "", name);
}

/*
 * Check @pl with dp_place() as pdrouter would check its flags, and add it as candidate
 * @name unless an earlier one has the same placement. -EINVAL when dp_place() refuses it.
 */
static int add_place(const struct pt_topo *t, struct pt_proposal *out, const char *name,
		     const char *why, const struct dp_placement *pl, int gpu)
{
	char list[DP_PIN_MAX_CORES * 12], err[256];
	struct dp_pin_request req = {
	    .ncores = pl->ncores, .cpu_list = list, .control_cpu = pl->control_cpu};
	struct pt_cand *c;

	pt_cpu_list(pl->core_cpu, pl->ncores, list, sizeof(list));
	for (uint32_t i = 0; i < out->n; i++) {
		if (same_place(&out->cand[i].place, pl)) {
			append_also(&out->cand[i], name);
			return 0;
		}
	}
	if (out->n == PT_MAX_CANDS)
		return 0;
	c = &out->cand[out->n];
	*c = (struct pt_cand){.order = out->n};
	if (dp_place(t->topo, &req, &c->place, err, sizeof(err))) {
		note(out, "%s: refused by dp_place(): %s", name, err);
		return -EINVAL;
	}
	snprintf(c->name, sizeof(c->name), "%s", name);
	snprintf(c->why, sizeof(c->why), "%s", why);
	c->worker_cpu = worker_for(t, &c->place, gpu);
	out->n++;
	return 0;
}

/* A pick of @want cores: the control thread by control_for(), or a note when it is short. */
static int add_pick(const struct pt_topo *t, struct pt_proposal *out, const char *name,
		    const char *why, const struct pick *p, int gpu)
{
	struct dp_placement pl = {.ncores = p->n};

	if (p->n < out->ncores) {
		note(out, "%s: only %u free core(s) there, %u wanted", name, p->n, out->ncores);
		return 0;
	}
	memcpy(pl.core_cpu, p->cpu, p->n * sizeof(int));
	pl.control_cpu = control_for(t, p);
	return add_place(t, out, name, why, &pl, gpu);
}

static int propose_auto(const struct pt_topo *t, struct pt_proposal *out, int gpu,
			struct dp_placement *base)
{
	struct dp_pin_request req = {.ncores = out->ncores, .control_cpu = -1};
	char err[256], why[PT_NOTE_LEN];

	if (dp_place(t->topo, &req, base, err, sizeof(err))) {
		note(out, "auto: %s", err);
		return 0;
	}
	snprintf(why, sizeof(why), "pdrouter's own placement (--dataplane-cores %u)", out->ncores);
	return add_place(t, out, "auto", why, base, gpu);
}

static int propose_first(const struct pt_topo *t, struct pt_proposal *out, int gpu)
{
	struct pick p = {0};

	fill(&p, t, out->ncores, 0, NULL);
	return add_pick(t, out, "first-cores",
			"dataplane from core 0 up, the core auto leaves "
			"to the system",
			&p, gpu);
}

/* Free cores (from first_free()) of domain @d, inside @cpus unless it is NULL. */
static uint32_t domain_room(const struct pt_topo *t, domain_fn dom, int d,
			    hwloc_const_cpuset_t cpus)
{
	uint32_t n = 0;

	for (uint32_t u = first_free(t); u < t->nunits; u++)
		n += dom(&t->unit[u]) == d &&
		     (!cpus || hwloc_bitmap_isset(cpus, (unsigned)t->unit[u].cpu));
	return n;
}

/* The first domain with @want free cores inside @cpus (NULL: anywhere); -1: none. */
static int pick_domain(const struct pt_topo *t, domain_fn dom, int ndom, hwloc_const_cpuset_t cpus,
		       uint32_t want)
{
	for (int d = 0; d < ndom; d++)
		if (domain_room(t, dom, d, cpus) >= want)
			return d;
	return -1;
}

/* Take free cores of domain @d inside @cpus (NULL: any) until @want are taken. */
static void fill_domain(struct pick *p, const struct pt_topo *t, uint32_t want, domain_fn dom,
			int d, hwloc_const_cpuset_t cpus)
{
	for (uint32_t u = first_free(t); u < t->nunits && p->n < want; u++)
		if (!p->used[u] && dom(&t->unit[u]) == d &&
		    (!cpus || hwloc_bitmap_isset(cpus, (unsigned)t->unit[u].cpu)))
			take(p, t, u);
}

/*
 * Cores inside device @d's locality, under one L3 of it where one has room; then the rest
 * of its locality; then, when that is too small, the other cores in logical order.
 */
static int propose_local(const struct pt_topo *t, struct pt_proposal *out, const char *name, int d,
			 int gpu)
{
	const struct pt_dev *dev = &t->dev[d];
	int l3 = t->nl3 >= 2 ? pick_domain(t, domain_l3, t->nl3, dev->cpuset, out->ncores) : -1;
	char why[PT_NOTE_LEN], where[32] = "";
	struct pick p = {0};

	if (l3 >= 0)
		fill_domain(&p, t, out->ncores, domain_l3, l3, dev->cpuset);
	fill(&p, t, out->ncores, first_free(t), dev->cpuset);
	if (p.n < out->ncores)
		note(out, "%s: %u core(s) local to %s, %u wanted: the rest elsewhere", name, p.n,
		     dev->name, out->ncores);
	fill(&p, t, out->ncores, first_free(t), NULL);
	if (dev->node >= 0)
		snprintf(where, sizeof(where), "NUMA node %d%s", dev->node, l3 >= 0 ? ", " : "");
	if (l3 >= 0)
		snprintf(where + strlen(where), sizeof(where) - strlen(where), "L3 %d", l3);
	snprintf(why, sizeof(why), "dataplane cores local to %s %s%s%s%s",
		 dev->kind == PT_DEV_NIC ? "NIC" : "GPU", dev->name, where[0] ? " (" : "", where,
		 where[0] ? ")" : "");
	return add_pick(t, out, name, why, &p, gpu);
}

static int propose_one(const struct pt_topo *t, struct pt_proposal *out, const char *name,
		       domain_fn dom, int ndom, int gpu)
{
	const char *what = dom == domain_l3 ? "L3" : "NUMA node";
	struct pick p = {0};
	char why[PT_NOTE_LEN];
	int d;

	if (ndom < 2) {
		note(out, "%s: the machine has %s %s: nothing to choose", name, ndom ? "one" : "no",
		     what);
		return 0;
	}
	d = pick_domain(t, dom, ndom, NULL, out->ncores);
	if (d < 0) {
		note(out, "%s: no %s has %u free cores", name, what, out->ncores);
		return 0;
	}
	fill_domain(&p, t, out->ncores, dom, d, NULL);
	snprintf(why, sizeof(why), "all dataplane cores %s %d, the first with room",
		 dom == domain_l3 ? "under L3" : "on NUMA node", d);
	return add_pick(t, out, name, why, &p, gpu);
}

/* Round-robin over the NUMA nodes, or the L3s on a machine with one node. */
static int propose_spread(const struct pt_topo *t, struct pt_proposal *out, int gpu)
{
	domain_fn dom = t->nnodes >= 2 ? domain_node : domain_l3;
	int ndom = t->nnodes >= 2 ? t->nnodes : t->nl3;
	struct pick p = {0};
	bool took = true;

	if (ndom < 2 || out->ncores < 2) {
		note(out, "spread: %s",
		     out->ncores < 2 ? "one dataplane core"
				     : "one NUMA node and one L3: nothing to spread over");
		return 0;
	}
	while (took && p.n < out->ncores) {
		took = false;
		for (int d = 0; d < ndom && p.n < out->ncores; d++) {
			for (uint32_t u = first_free(t); u < t->nunits; u++) {
				if (!p.used[u] && dom(&t->unit[u]) == d) {
					take(&p, t, u);
					took = true;
					break;
				}
			}
		}
	}
	return add_pick(t, out, "spread",
			t->nnodes >= 2 ? "dataplane cores round-robin over "
					 "the NUMA nodes"
				       : "dataplane cores round-robin over the L3s",
			&p, gpu);
}

/* auto's dataplane cores with the control thread beside dataplane core 0. */
static int propose_control(const struct pt_topo *t, struct pt_proposal *out,
			   const struct dp_placement *base, int gpu)
{
	struct dp_placement pl = *base;
	int u = pt_topo_unit_of(t, base->core_cpu[0]);

	if (!base->ncores || u < 0)
		return 0;
	pl.shared_control = 0;
	if (t->unit[u].sibling >= 0) {
		pl.control_cpu = t->unit[u].sibling;
		return add_place(t, out, "control-sibling",
				 "auto's cores; control on an SMT "
				 "sibling of dataplane core 0, freeing a core",
				 &pl, gpu);
	}
	pl.control_cpu = base->core_cpu[0];
	return add_place(t, out, "control-shared",
			 "auto's cores; control time-shares dataplane "
			 "core 0's cpu (no SMT), freeing a core",
			 &pl, gpu);
}

int pt_default_cores(const struct pt_topo *t, char *err, size_t errlen)
{
	struct dp_pin_request req = {.ncores = 0, .control_cpu = -1};
	struct dp_placement pl;
	int rc = dp_place(t->topo, &req, &pl, err, errlen);

	return rc ? rc : (int)pl.ncores;
}

int pt_propose(const struct pt_topo *t, uint32_t ncores, int nic, struct pt_proposal *out,
	       char *err, size_t errlen)
{
	struct dp_placement base = {0};
	int gpu = pt_topo_gpu(t), rc = 0;

	memset(out, 0, sizeof(*out));
	out->ncores = ncores;
	if (!ncores || ncores > DP_PIN_MAX_CORES)
		return dp_refuse(err, errlen, -EINVAL, "%u dataplane cores: want 1 to %u", ncores,
				 DP_PIN_MAX_CORES);
	if (ncores > t->nunits)
		return dp_refuse(err, errlen, -ENOSPC,
				 "%u dataplane cores need %u physical cores; "
				 "%s has %u",
				 ncores, ncores, t->origin, t->nunits);
	rc |= propose_auto(t, out, gpu, &base);
	rc |= propose_first(t, out, gpu);
	if (nic >= 0 && t->dev[nic].local)
		rc |= propose_local(t, out, "nic-local", nic, gpu);
	else
		note(out, "nic-local: no NIC whose locality hwloc knows");
	if (gpu >= 0 && (nic < 0 || !hwloc_bitmap_isequal(t->dev[gpu].cpuset, t->dev[nic].cpuset)))
		rc |= propose_local(t, out, "gpu-local", gpu, gpu);
	rc |= propose_one(t, out, "one-l3", domain_l3, t->nl3, gpu);
	rc |= propose_one(t, out, "one-numa", domain_node, t->nnodes, gpu);
	rc |= propose_spread(t, out, gpu);
	rc |= propose_control(t, out, base.ncores ? &base : &out->cand[0].place, gpu);
	if (rc)
		return dp_refuse(err, errlen, -EINVAL, "a candidate was refused: %s",
				 out->nnotes ? out->note[out->nnotes - 1] : "?");
	if (!out->n)
		return dp_refuse(err, errlen, -ENOSPC,
				 "no placement of %u dataplane cores fits: %s", ncores,
				 out->nnotes ? out->note[0] : "?");
	return (int)out->n;
}

size_t pt_cpu_list(const int *cpu, uint32_t n, char *buf, size_t len)
{
	size_t at = 0;

	if (buf && len)
		buf[0] = '\0';
	for (uint32_t i = 0; i < n;) {
		uint32_t j = i;
		int w;

		while (j + 1 < n && cpu[j + 1] == cpu[j] + 1)
			j++;
		if (j > i)
			w = snprintf(at < len ? buf + at : NULL, at < len ? len - at : 0, "%s%d-%d",
				     i ? "," : "", cpu[i], cpu[j]);
		else
			w = snprintf(at < len ? buf + at : NULL, at < len ? len - at : 0, "%s%d",
				     i ? "," : "", cpu[i]);
		at += w > 0 ? (size_t)w : 0;
		i = j + 1;
	}
	return at;
}
