/*
 * pdtune's proposals and ranking (tools/pdtune/): on synthetic hwloc topologies and on an XML
 * machine with a NIC and a GPU (data/pdtune_2pack_nic.xml: two packages of two L3s, the GPU on
 * package 0, the NIC on package 1), without running a benchmark. Every candidate keeps its
 * dataplane cores off each other's SMT siblings, is distinct, and prints flags that dp_place()
 * accepts back; near the NIC means on its NUMA node; the ranking follows fake figures.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <criterion/criterion.h>

#include "propose.h"
#include "report.h"
#include "topo.h"

TestSuite(pdtune);

#define T_NIC_XML PD_TEST_DATA "/pdtune_2pack_nic.xml"

/* Big: a file-scope topology and proposal, one test at a time (--jobs 1, forked tests). */
static struct pt_topo t_topo;
static struct pt_proposal t_prop;

static const char *const t_synthetic[] = {
    "pack:2 numa:1 l3:1 core:8 pu:2", "pack:1 core:4 pu:2", "pack:4 numa:2 l3:2 core:4 pu:2",
    "pack:2 l3:2 core:3 pu:4",	      "core:2 pu:1",	    "pu:4",
};

static void t_open(const char *xml, const char *synthetic)
{
	struct pt_source src = {.xml = xml, .synthetic = synthetic};
	char err[256] = "";

	cr_assert_eq(pt_topo_open(&t_topo, &src, err, sizeof(err)), 0, "%s: %s",
		     xml ? xml : synthetic, err);
}

static void t_propose(uint32_t ncores, int nic)
{
	char err[256] = "";
	int n = pt_propose(&t_topo, ncores, nic, &t_prop, err, sizeof(err));

	cr_assert_gt(n, 0, "%s, %u cores: %s", t_topo.origin, ncores, err);
	cr_assert_eq((uint32_t)n, t_prop.n);
}

/* The physical core of OS cpu @cpu (the PU itself where there are no cores). */
static hwloc_obj_t t_core(int cpu)
{
	hwloc_obj_t pu = hwloc_get_pu_obj_by_os_index(t_topo.topo, (unsigned)cpu);
	hwloc_obj_t core;

	cr_assert_not_null(pu, "%s: cpu %d does not exist", t_topo.origin, cpu);
	core = hwloc_get_ancestor_obj_by_type(t_topo.topo, HWLOC_OBJ_CORE, pu);
	return core ? core : pu;
}

/* The candidate named @name, or folded into another as "also"; NULL when none. */
static const struct pt_cand *t_find(const char *name)
{
	for (uint32_t i = 0; i < t_prop.n; i++) {
		const struct pt_cand *c = &t_prop.cand[i];
		const char *a = strstr(c->also, name);

		if (!strcmp(c->name, name) || (a && (a == c->also || a[-1] == ' ') &&
					       (a[strlen(name)] == ',' || !a[strlen(name)])))
			return c;
	}
	return NULL;
}

static void t_check_no_siblings(const struct pt_cand *c)
{
	const struct dp_placement *p = &c->place;
	bool beside = false;

	for (uint32_t i = 0; i < p->ncores; i++) {
		for (uint32_t j = 0; j < i; j++)
			cr_assert_neq(t_core(p->core_cpu[i]), t_core(p->core_cpu[j]),
				      "%s, %s: dataplane cpus %d and %d are SMT siblings",
				      t_topo.origin, c->name, p->core_cpu[i], p->core_cpu[j]);
		beside |= t_core(p->core_cpu[i]) == t_core(p->control_cpu);
	}
	cr_assert_eq(beside, p->shared_control != 0, "%s, %s: shared_control %d is wrong",
		     t_topo.origin, c->name, p->shared_control);
	if (beside && (uint32_t)t_topo.nunits > p->ncores)
		cr_assert(!strcmp(c->name, "control-sibling") || !strcmp(c->name, "control-shared"),
			  "%s, %s: control cpu %d beside a dataplane core with cores to spare",
			  t_topo.origin, c->name, p->control_cpu);
	if (c->worker_cpu >= 0)
		for (uint32_t i = 0; i < p->ncores; i++)
			cr_assert_neq(c->worker_cpu, p->core_cpu[i], "%s, %s: worker on cpu %d",
				      t_topo.origin, c->name, c->worker_cpu);
}

static void t_check_distinct(void)
{
	for (uint32_t i = 0; i < t_prop.n; i++)
		for (uint32_t j = 0; j < i; j++)
			cr_assert(!pt_same_cpus(&t_prop.cand[i].place, &t_prop.cand[j].place) ||
				      t_prop.cand[i].place.control_cpu !=
					  t_prop.cand[j].place.control_cpu,
				  "%s: %s and %s are the same placement", t_topo.origin,
				  t_prop.cand[i].name, t_prop.cand[j].name);
}

/* The printed flags, parsed as pdrouter parses them, give the candidate's placement. */
static void t_check_flags(const struct pt_cand *c)
{
	char flags[1024], list[1024], err[256] = "";
	struct dp_pin_request req = {.cpu_list = list};
	struct dp_placement back;
	int n = 0;

	pt_flags(c, flags, sizeof(flags));
	cr_assert_eq(sscanf(flags, "--cpus %1023s --control-cpu %d%n", list, &req.control_cpu, &n),
		     2, "%s: flags \"%s\"", c->name, flags);
	cr_assert_eq((size_t)n, strlen(flags), "%s: trailing text in \"%s\"", c->name, flags);
	cr_assert_eq(dp_place(t_topo.topo, &req, &back, err, sizeof(err)), 0,
		     "%s, %s: pdrouter refuses \"%s\": %s", t_topo.origin, c->name, flags, err);
	cr_assert_eq(back.ncores, c->place.ncores);
	for (uint32_t i = 0; i < back.ncores; i++) {
		cr_assert_eq(back.core_cpu[i], c->place.core_cpu[i], "%s: \"%s\"", c->name, flags);
		cr_assert_not_null(
		    hwloc_get_pu_obj_by_os_index(t_topo.topo, (unsigned)back.core_cpu[i]));
	}
	cr_assert_eq(back.control_cpu, c->place.control_cpu);
	cr_assert_eq(back.shared_control, c->place.shared_control);
}

static void t_check_all(uint32_t ncores)
{
	cr_assert_not_null(t_find("auto"), "%s: no auto candidate", t_topo.origin);
	for (uint32_t i = 0; i < t_prop.n; i++) {
		cr_assert_eq(t_prop.cand[i].place.ncores, ncores, "%s: %s", t_topo.origin,
			     t_prop.cand[i].name);
		t_check_no_siblings(&t_prop.cand[i]);
		t_check_flags(&t_prop.cand[i]);
	}
	t_check_distinct();
}

Test(pdtune, synthetic_candidates_are_distinct_sibling_free_and_parse_back)
{
	for (size_t k = 0; k < sizeof(t_synthetic) / sizeof(t_synthetic[0]); k++) {
		char err[256];
		int def;

		t_open(NULL, t_synthetic[k]);
		def = pt_default_cores(&t_topo, err, sizeof(err));
		cr_assert_gt(def, 0, "%s: %s", t_synthetic[k], err);
		for (uint32_t n = 1; n <= 8; n *= 2) {
			if (n >= t_topo.nunits)
				break;
			t_propose(n, pt_topo_nic(&t_topo, NULL));
			t_check_all(n);
		}
		t_propose((uint32_t)def, -1);
		t_check_all((uint32_t)def);
		pt_topo_close(&t_topo);
	}
}

Test(pdtune, default_cores_are_what_dp_place_chooses)
{
	struct dp_pin_request req = {.control_cpu = -1};
	struct dp_placement p;

	t_open(NULL, "pack:2 numa:1 l3:1 core:8 pu:2");
	cr_assert_eq(dp_place(t_topo.topo, &req, &p, NULL, 0), 0);
	cr_assert_eq(pt_default_cores(&t_topo, NULL, 0), (int)p.ncores);
	cr_assert_eq(p.ncores, 8);
	t_propose(p.ncores, -1);
	cr_assert(pt_same_cpus(&t_find("auto")->place, &p));
	pt_topo_close(&t_topo);
}

Test(pdtune, every_core_taken_shares_the_control_thread)
{
	t_open(NULL, "pack:1 core:4 pu:2");
	t_propose(4, -1);
	for (uint32_t i = 0; i < t_prop.n; i++)
		t_check_no_siblings(&t_prop.cand[i]);
	cr_assert_null(t_find("auto"), "auto leaves core 0 to the system: it cannot take all 4");
	cr_assert_not_null(t_find("first-cores"));
	cr_assert(t_find("first-cores")->place.shared_control);
	pt_topo_close(&t_topo);
}

Test(pdtune, xml_finds_the_nic_and_the_gpu_with_their_numa_nodes)
{
	int nic, gpu;

	t_open(T_NIC_XML, NULL);
	cr_assert_eq(t_topo.npackages, 2);
	cr_assert_eq(t_topo.nnodes, 2);
	cr_assert_eq(t_topo.nl3, 4);
	cr_assert_eq(t_topo.nunits, 16);
	cr_assert_eq(t_topo.smt, 2);
	cr_assert_not(t_topo.this_machine, "an XML file is not this machine");
	nic = pt_topo_nic(&t_topo, NULL);
	cr_assert_geq(nic, 0);
	cr_assert_str_eq(t_topo.dev[nic].name, "eth1");
	cr_assert_eq(t_topo.dev[nic].node, 1);
	cr_assert_eq(pt_topo_nic(&t_topo, "mlx5_0"), nic + 1, "the RDMA side is a NIC too");
	cr_assert_eq(pt_topo_nic(&t_topo, "eth9"), -1);
	gpu = pt_topo_gpu(&t_topo);
	cr_assert_geq(gpu, 0);
	cr_assert_str_eq(t_topo.dev[gpu].name, "nvml0");
	cr_assert_eq(t_topo.dev[gpu].node, 0);
	pt_topo_close(&t_topo);
}

Test(pdtune, nic_local_cores_are_on_the_nics_numa_node)
{
	t_open(T_NIC_XML, NULL);
	for (uint32_t n = 1; n <= 8; n *= 2) {
		int nic = pt_topo_nic(&t_topo, NULL);
		const struct pt_cand *c;

		t_propose(n, nic);
		t_check_all(n);
		c = t_find("nic-local");
		cr_assert_not_null(c, "%u cores: no nic-local candidate", n);
		for (uint32_t i = 0; i < n; i++) {
			hwloc_obj_t pu = hwloc_get_pu_obj_by_os_index(
			    t_topo.topo, (unsigned)c->place.core_cpu[i]);

			cr_assert(hwloc_bitmap_isset(t_topo.dev[nic].cpuset, pu->os_index),
				  "%u cores: cpu %d is not local to the NIC", n,
				  c->place.core_cpu[i]);
			cr_assert_eq(hwloc_bitmap_first(pu->nodeset), 1, "cpu %d not on node 1",
				     c->place.core_cpu[i]);
		}
		cr_assert_not(pt_same_cpus(&c->place, &t_find("auto")->place),
			      "auto starts on node 0, away from the NIC");
	}
	pt_topo_close(&t_topo);
}

/* Every dataplane core of @c under one L3. */
static void t_check_one_l3(const struct pt_cand *c)
{
	int l3 = t_topo.unit[pt_topo_unit_of(&t_topo, c->place.core_cpu[0])].l3;

	for (uint32_t i = 0; i < c->place.ncores; i++)
		cr_assert_eq(t_topo.unit[pt_topo_unit_of(&t_topo, c->place.core_cpu[i])].l3, l3,
			     "%s: cpu %d under another L3 than cpu %d", c->name,
			     c->place.core_cpu[i], c->place.core_cpu[0]);
}

/*
 * On package 0 the system keeps core 0, so L3 0 has 3 free cores: 4 cores near the GPU
 * must skip to L3 1 rather than straddle the two.
 */
Test(pdtune, local_cores_stay_under_one_l3_where_one_has_room)
{
	const struct pt_cand *nic, *gpu;

	t_open(T_NIC_XML, NULL);
	t_propose(4, pt_topo_nic(&t_topo, NULL));
	nic = t_find("nic-local");
	gpu = t_find("gpu-local");
	cr_assert_not_null(nic);
	cr_assert_not_null(gpu);
	t_check_one_l3(nic);
	t_check_one_l3(gpu);
	cr_assert_eq(t_topo.unit[pt_topo_unit_of(&t_topo, gpu->place.core_cpu[0])].l3, 1);
	pt_topo_close(&t_topo);
}

Test(pdtune, workers_sit_by_the_gpu_when_a_core_there_is_free)
{
	t_open(T_NIC_XML, NULL);
	t_propose(4, pt_topo_nic(&t_topo, NULL));
	for (uint32_t i = 0; i < t_prop.n; i++) {
		const struct pt_cand *c = &t_prop.cand[i];
		int gpu = pt_topo_gpu(&t_topo);

		cr_assert_geq(c->worker_cpu, 0, "%s: no worker cpu", c->name);
		cr_assert(hwloc_bitmap_isset(t_topo.dev[gpu].cpuset, (unsigned)c->worker_cpu),
			  "%s: worker cpu %d is not local to the GPU", c->name, c->worker_cpu);
	}
	pt_topo_close(&t_topo);
}

Test(pdtune, without_nic_locality_nic_local_is_not_proposed)
{
	t_open(NULL, "pack:2 numa:1 l3:1 core:8 pu:2");
	cr_assert_eq(pt_topo_nic(&t_topo, NULL), -1);
	t_propose(4, -1);
	cr_assert_null(t_find("nic-local"));
	cr_assert_not_null(t_find("spread"));
	cr_assert_not_null(t_find("control-sibling"));
	cr_assert_null(t_find("control-shared"), "with SMT, control goes on a sibling instead");
	pt_topo_close(&t_topo);
}

Test(pdtune, spread_alternates_numa_nodes)
{
	const struct pt_cand *c;

	t_open(NULL, "pack:2 numa:1 l3:1 core:8 pu:2");
	t_propose(4, -1);
	c = t_find("spread");
	cr_assert_not_null(c);
	for (uint32_t i = 0; i < 4; i++)
		cr_assert_eq(t_topo.unit[pt_topo_unit_of(&t_topo, c->place.core_cpu[i])].node,
			     (int)(i % 2), "spread core %u on cpu %d", i, c->place.core_cpu[i]);
	pt_topo_close(&t_topo);
}

Test(pdtune, this_machine_proposes_placements_it_allows)
{
	struct pt_source src = {0};
	char err[256] = "";
	int def;

	cr_assert_eq(pt_topo_open(&t_topo, &src, err, sizeof(err)), 0, "%s", err);
	cr_assert(t_topo.this_machine);
	def = pt_default_cores(&t_topo, err, sizeof(err));
	if (def <= 0) {
		pt_topo_close(&t_topo);
		cr_skip_test("pdrouter places nothing on this machine: %s", err);
	}
	t_propose((uint32_t)def, pt_topo_nic(&t_topo, NULL));
	t_check_all((uint32_t)def);
	pt_topo_close(&t_topo);
}

Test(pdtune, bad_requests_are_refused)
{
	struct pt_source both = {.xml = T_NIC_XML, .synthetic = "core:2 pu:1"};
	struct pt_source bad = {.synthetic = "pack:two"};
	struct pt_source missing = {.xml = PD_TEST_DATA "/no-such-topology.xml"};
	char err[256] = "";

	cr_assert_eq(pt_topo_open(&t_topo, &both, err, sizeof(err)), -EINVAL);
	cr_assert_eq(pt_topo_open(&t_topo, &bad, err, sizeof(err)), -EINVAL);
	cr_assert(strstr(err, "pack:two"), "the error names the description: %s", err);
	cr_assert_eq(pt_topo_open(&t_topo, &missing, err, sizeof(err)), -EINVAL);
	t_open(NULL, "core:2 pu:1");
	cr_assert_eq(pt_propose(&t_topo, 0, -1, &t_prop, err, sizeof(err)), -EINVAL);
	cr_assert_eq(pt_propose(&t_topo, 3, -1, &t_prop, err, sizeof(err)), -ENOSPC);
	cr_assert_eq(pt_propose(&t_topo, DP_PIN_MAX_CORES + 1, -1, &t_prop, err, sizeof(err)),
		     -EINVAL);
	pt_topo_close(&t_topo);
}

Test(pdtune, cpu_lists_use_ranges_in_order)
{
	static const int a[] = {2, 4, 5, 6}, b[] = {5, 4}, c[] = {16, 17, 18, 19, 0, 1};
	char buf[64];

	cr_assert_eq(pt_cpu_list(a, 4, buf, sizeof(buf)), 5);
	cr_assert_str_eq(buf, "2,4-6");
	pt_cpu_list(b, 2, buf, sizeof(buf));
	cr_assert_str_eq(buf, "5,4");
	pt_cpu_list(c, 6, buf, sizeof(buf));
	cr_assert_str_eq(buf, "16-19,0-1");
	cr_assert_eq(pt_cpu_list(c, 6, buf, 4), 9, "the whole length, cut short");
	cr_assert_str_eq(buf, "16-");
}

/* A candidate with fake figures; @route_p99 0: not measured. */
static struct pt_cand t_fake(const char *name, uint32_t order, uint64_t route_p99,
			     uint64_t mbox_p99, double rps)
{
	struct pt_cand c = {.order = order, .worker_cpu = 1};

	snprintf(c.name, sizeof(c.name), "%s", name);
	c.place.ncores = 1;
	c.place.core_cpu[0] = 2;
	c.fig.route = route_p99 > 0;
	c.fig.route_p99_ns = route_p99;
	c.fig.mailbox = mbox_p99 > 0;
	c.fig.mbox_p99_ns = mbox_p99;
	c.fig.load = rps > 0;
	c.fig.load_rps = rps;
	return c;
}

Test(pdtune, ranking_orders_by_route_p99_plus_twice_mailbox_p99)
{
	struct pt_cand c[5] = {
	    t_fake("a", 0, 12000, 400, 0),  /* 12800 */
	    t_fake("b", 1, 0, 0, 0),	    /* not measured: last */
	    t_fake("c", 2, 11000, 900, 0),  /* 12800: ties with a, proposed later */
	    t_fake("d", 3, 10000, 300, 0),  /* 10600: best */
	    t_fake("e", 4, 10500, 1000, 0), /* 12500 */
	};
	static const char *const want[] = {"d", "e", "a", "c", "b"};

	cr_assert_eq(pt_score_ns(&c[0]), 12800);
	cr_assert_eq(pt_score_ns(&c[1]), UINT64_MAX);
	pt_rank(c, 5);
	for (int i = 0; i < 5; i++)
		cr_assert_str_eq(c[i].name, want[i], "rank %d", i + 1);
}

Test(pdtune, ranking_puts_load_throughput_first)
{
	struct pt_cand c[4] = {
	    t_fake("fast-route", 0, 5000, 200, 0), /* no load figure: after those with one */
	    t_fake("slow", 1, 9000, 300, 30000),
	    t_fake("fast", 2, 12000, 300, 45000),
	    t_fake("unmeasured", 3, 0, 0, 0),
	};
	static const char *const want[] = {"fast", "slow", "fast-route", "unmeasured"};

	pt_rank(c, 4);
	for (int i = 0; i < 4; i++)
		cr_assert_str_eq(c[i].name, want[i], "rank %d", i + 1);
}

Test(pdtune, printed_table_and_json_name_the_best_flags)
{
	char *buf = NULL;
	size_t len = 0;
	FILE *f;

	t_open(T_NIC_XML, NULL);
	t_propose(2, pt_topo_nic(&t_topo, NULL));
	for (uint32_t i = 0; i < t_prop.n; i++)
		t_prop.cand[i].fig = t_fake("x", 0, 10000 + 1000 * (t_prop.n - i), 300, 0).fig;
	pt_rank(t_prop.cand, t_prop.n);
	f = open_memstream(&buf, &len);
	pt_print_table(&t_prop, true, f);
	fclose(f);
	cr_assert(strstr(buf, "best: "), "%s", buf);
	cr_assert(strstr(buf, "pdrouter --cpus "), "%s", buf);
	cr_assert(strstr(buf, t_prop.cand[0].name), "%s", buf);
	free(buf);
	f = open_memstream(&buf, &len);
	pt_print_json(&t_prop, true, f);
	fclose(f);
	for (const char *line = buf; *line; line = strchr(line, '\n') + 1)
		cr_assert(!strncmp(line, "{\"rank\":", 8) && strchr(line, '\n')[-1] == '}',
			  "not one object a line: %s", line);
	cr_assert(strstr(buf, "{\"rank\":1,\"name\":\""), "%s", buf);
	free(buf);
	pt_topo_close(&t_topo);
}
