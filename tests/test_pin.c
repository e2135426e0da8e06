/*
 * Thread placement (pin.h): automatic and explicit placement on synthetic hwloc topologies
 * (never two pinned threads on SMT siblings, NUMA node 0 first, the control thread's core),
 * the cpu list parser, the one-line format, and a real binding of this thread.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <sched.h>
#include <string.h>

#include <criterion/criterion.h>
#include <hwloc.h>

#include "pin.h"

TestSuite(pin);

static hwloc_topology_t synth(const char *desc)
{
	hwloc_topology_t t;

	cr_assert_eq(hwloc_topology_init(&t), 0);
	cr_assert_eq(hwloc_topology_set_synthetic(t, desc), 0, "synthetic \"%s\"", desc);
	cr_assert_eq(hwloc_topology_load(t), 0);
	return t;
}

static int place(hwloc_topology_t t, uint32_t ncores, const char *list, int control,
		 struct dp_placement *p, char *err, size_t errlen)
{
	struct dp_pin_request req = {.ncores = ncores, .cpu_list = list, .control_cpu = control};

	err[0] = '\0';
	return dp_place(t, &req, p, err, errlen);
}

static hwloc_obj_t core_of(hwloc_topology_t t, int cpu)
{
	hwloc_obj_t pu = hwloc_get_pu_obj_by_os_index(t, (unsigned)cpu);

	cr_assert_not_null(pu, "cpu %d", cpu);
	return hwloc_get_ancestor_obj_by_type(t, HWLOC_OBJ_CORE, pu);
}

static unsigned node_of(hwloc_topology_t t, int cpu)
{
	hwloc_obj_t pu = hwloc_get_pu_obj_by_os_index(t, (unsigned)cpu);

	cr_assert_not_null(pu);
	return (unsigned)hwloc_bitmap_first(pu->nodeset);
}

/* No two pinned threads (dataplane or control) on one physical core. */
static void assert_no_siblings(hwloc_topology_t t, const struct dp_placement *p)
{
	for (uint32_t i = 0; i < p->ncores; i++) {
		cr_assert_neq(core_of(t, p->core_cpu[i]), core_of(t, p->control_cpu),
			      "dataplane core %u (cpu%d) beside control cpu%d", i, p->core_cpu[i],
			      p->control_cpu);
		for (uint32_t j = 0; j < i; j++)
			cr_assert_neq(core_of(t, p->core_cpu[i]), core_of(t, p->core_cpu[j]),
				      "cpu%d and cpu%d are siblings", p->core_cpu[i],
				      p->core_cpu[j]);
	}
}

Test(pin, auto_takes_half_the_cores_and_leaves_the_first_to_control)
{
	hwloc_topology_t t = synth("pack:1 core:4 pu:2");
	struct dp_placement p;
	char err[256];

	cr_assert_eq(place(t, 0, NULL, -1, &p, err, sizeof(err)), 0, "%s", err);
	cr_assert_eq(p.ncores, 2);
	cr_assert_eq(p.core_cpu[0], 2);
	cr_assert_eq(p.core_cpu[1], 4);
	cr_assert_eq(p.control_cpu, 0);
	cr_assert_eq(p.shared_control, 0);
	hwloc_topology_destroy(t);
}

Test(pin, auto_never_uses_siblings)
{
	hwloc_topology_t t = synth("pack:1 core:4 pu:2");
	struct dp_placement p;
	char err[256];

	for (uint32_t n = 1; n <= 3; n++) {
		cr_assert_eq(place(t, n, NULL, -1, &p, err, sizeof(err)), 0, "%s", err);
		cr_assert_eq(p.ncores, n);
		cr_assert_eq(p.control_cpu, 0);
		assert_no_siblings(t, &p);
	}
	hwloc_topology_destroy(t);
}

Test(pin, auto_fills_numa_node_0_first)
{
	hwloc_topology_t t = synth("pack:2 numa:1 core:4 pu:2");
	struct dp_placement p;
	char err[256];

	cr_assert_eq(hwloc_get_nbobjs_by_type(t, HWLOC_OBJ_NUMANODE), 2);
	cr_assert_eq(place(t, 3, NULL, -1, &p, err, sizeof(err)), 0, "%s", err);
	for (uint32_t i = 0; i < 3; i++)
		cr_assert_eq(node_of(t, p.core_cpu[i]), 0, "core %u on cpu%d", i, p.core_cpu[i]);
	cr_assert_eq(place(t, 0, NULL, -1, &p, err, sizeof(err)), 0, "%s", err);
	cr_assert_eq(p.ncores, 4);
	cr_assert_eq(node_of(t, p.core_cpu[2]), 0);
	cr_assert_eq(node_of(t, p.core_cpu[3]), 1, "the fourth core spills onto node 1");
	cr_assert_eq(node_of(t, p.control_cpu), 0);
	cr_assert_eq(place(t, 7, NULL, -1, &p, err, sizeof(err)), 0, "%s", err);
	assert_no_siblings(t, &p);
	hwloc_topology_destroy(t);
}

Test(pin, auto_more_cores_than_the_machine_has_returns_enospc)
{
	hwloc_topology_t t = synth("pack:2 numa:1 core:4 pu:2");
	struct dp_placement p;
	char err[256];

	cr_assert_eq(place(t, 8, NULL, -1, &p, err, sizeof(err)), -ENOSPC);
	cr_assert_not_null(strstr(err, "8 dataplane cores"), "%s", err);
	cr_assert_eq(p.ncores, 0);
	hwloc_topology_destroy(t);
	t = synth("core:2 pu:1");
	cr_assert_eq(place(t, 2, NULL, -1, &p, err, sizeof(err)), -ENOSPC);
	hwloc_topology_destroy(t);
}

Test(pin, auto_caps_at_max_cores_and_refuses_more)
{
	hwloc_topology_t t = synth("pack:4 core:40 pu:1");
	struct dp_placement p;
	char err[256];

	cr_assert_eq(place(t, 0, NULL, -1, &p, err, sizeof(err)), 0, "%s", err);
	cr_assert_eq(p.ncores, DP_PIN_MAX_CORES);
	cr_assert_eq(place(t, DP_PIN_MAX_CORES + 1, NULL, -1, &p, err, sizeof(err)), -EINVAL);
	hwloc_topology_destroy(t);
}

Test(pin, two_single_pu_cores_give_dataplane_cpu1_and_control_cpu0)
{
	hwloc_topology_t t = synth("core:2 pu:1");
	struct dp_placement p;
	char err[256];

	cr_assert_eq(place(t, 0, NULL, -1, &p, err, sizeof(err)), 0, "%s", err);
	cr_assert_eq(p.ncores, 1);
	cr_assert_eq(p.core_cpu[0], 1);
	cr_assert_eq(p.control_cpu, 0);
	cr_assert_eq(p.shared_control, 0);
	hwloc_topology_destroy(t);
}

Test(pin, one_core_shares_it_with_control_on_the_sibling)
{
	hwloc_topology_t t = synth("core:1 pu:2");
	struct dp_placement p;
	char err[256];

	cr_assert_eq(place(t, 0, NULL, -1, &p, err, sizeof(err)), 0, "%s", err);
	cr_assert_eq(p.ncores, 1);
	cr_assert_eq(p.core_cpu[0], 0);
	cr_assert_eq(p.control_cpu, 1);
	cr_assert_eq(p.shared_control, 1);
	cr_assert_eq(p.shared_core, 0);
	hwloc_topology_destroy(t);
}

Test(pin, one_pu_shares_it_with_control)
{
	hwloc_topology_t t = synth("core:1 pu:1");
	struct dp_placement p;
	char err[256];

	cr_assert_eq(place(t, 0, NULL, -1, &p, err, sizeof(err)), 0, "%s", err);
	cr_assert_eq(p.core_cpu[0], 0);
	cr_assert_eq(p.control_cpu, 0);
	cr_assert_eq(p.shared_control, 1);
	hwloc_topology_destroy(t);
}

Test(pin, explicit_list_is_taken_as_given)
{
	hwloc_topology_t t = synth("pack:1 core:8 pu:2");
	struct dp_placement p;
	char err[256];

	cr_assert_eq(place(t, 0, "6,2,8-8,10", -1, &p, err, sizeof(err)), 0, "%s", err);
	cr_assert_eq(p.ncores, 4);
	cr_assert_eq(p.core_cpu[0], 6);
	cr_assert_eq(p.core_cpu[1], 2);
	cr_assert_eq(p.core_cpu[2], 8);
	cr_assert_eq(p.core_cpu[3], 10);
	cr_assert_eq(p.control_cpu, 0, "the first core no dataplane core uses");
	cr_assert_eq(p.shared_control, 0);
	cr_assert_eq(place(t, 0, "0,3", -1, &p, err, sizeof(err)), 0, "%s", err);
	cr_assert_eq(p.control_cpu, 4);
	cr_assert_eq(place(t, 2, "0,3", -1, &p, err, sizeof(err)), 0, "%s", err);
	hwloc_topology_destroy(t);
}

Test(pin, explicit_list_filling_every_core_shares_dataplane_core_0)
{
	hwloc_topology_t t = synth("core:2 pu:2");
	struct dp_placement p;
	char err[256];

	cr_assert_eq(place(t, 0, "2,0", -1, &p, err, sizeof(err)), 0, "%s", err);
	cr_assert_eq(p.control_cpu, 3, "the free sibling of cpu2");
	cr_assert_eq(p.shared_control, 1);
	cr_assert_eq(p.shared_core, 0);
	hwloc_topology_destroy(t);
}

Test(pin, explicit_list_refuses_siblings_naming_both)
{
	hwloc_topology_t t = synth("pack:1 core:4 pu:2");
	struct dp_placement p;
	char err[256];

	cr_assert_eq(place(t, 0, "2,4-5", -1, &p, err, sizeof(err)), -EINVAL);
	cr_assert_not_null(strstr(err, "cpus 4 and 5"), "%s", err);
	cr_assert_not_null(strstr(err, "sibling"), "%s", err);
	cr_assert_eq(p.ncores, 0);
	hwloc_topology_destroy(t);
}

Test(pin, explicit_list_refuses_duplicates)
{
	hwloc_topology_t t = synth("pack:1 core:4 pu:2");
	struct dp_placement p;
	char err[256];

	cr_assert_eq(place(t, 0, "2,4,2", -1, &p, err, sizeof(err)), -EINVAL);
	cr_assert_not_null(strstr(err, "cpu 2 is listed twice"), "%s", err);
	cr_assert_eq(place(t, 0, "2-4,3", -1, &p, err, sizeof(err)), -EINVAL);
	hwloc_topology_destroy(t);
}

Test(pin, explicit_list_refuses_an_unknown_cpu)
{
	hwloc_topology_t t = synth("pack:1 core:4 pu:2");
	struct dp_placement p;
	char err[256];

	cr_assert_eq(place(t, 0, "2,99", -1, &p, err, sizeof(err)), -EINVAL);
	cr_assert_not_null(strstr(err, "cpu 99"), "%s", err);
	cr_assert_not_null(strstr(err, "0-7"), "the cpus that exist: %s", err);
	hwloc_topology_destroy(t);
}

Test(pin, explicit_list_refuses_more_than_max_cores)
{
	hwloc_topology_t t = synth("pack:2 core:40 pu:1");
	struct dp_placement p;
	char err[256];

	cr_assert_eq(place(t, 0, "0-63", -1, &p, err, sizeof(err)), 0, "%s", err);
	cr_assert_eq(p.ncores, 64);
	cr_assert_eq(place(t, 0, "0-64", -1, &p, err, sizeof(err)), -EINVAL);
	cr_assert_not_null(strstr(err, "more than 64"), "%s", err);
	cr_assert_eq(place(t, 0, "0-2000000000", -1, &p, err, sizeof(err)), -EINVAL);
	hwloc_topology_destroy(t);
}

Test(pin, explicit_list_length_must_match_ncores)
{
	hwloc_topology_t t = synth("pack:1 core:4 pu:2");
	struct dp_placement p;
	char err[256];

	cr_assert_eq(place(t, 3, "2,4", -1, &p, err, sizeof(err)), -EINVAL);
	cr_assert_not_null(strstr(err, "names 2"), "%s", err);
	hwloc_topology_destroy(t);
}

Test(pin_fault, malformed_lists_name_the_bad_part)
{
	static const struct {
		const char *list, *part;
	} cases[] = {
	    {"", "\"\""},	  {"a", "\"a\""},
	    {"2,x", "\"x\""},	  {"2,", "\"\""},
	    {",2", "\"\""},	  {"3-1", "\"3-1\""},
	    {"1-", "\"1-\""},	  {"-1", "\"-1\""},
	    {"2 ,3", "\"2 \""},	  {"1--2", "\"1--2\""},
	    {"1,2x,3", "\"2x\""}, {"1-2-3", "\"1-2-3\""},
	    {" 1", "\" 1\""},	  {"+1", "\"+1\""},
	    {"1;2", "\"1;2\""},	  {"99999999999", "\"99999999999\""},
	};
	hwloc_topology_t t = synth("pack:1 core:4 pu:2");
	struct dp_placement p;
	char err[256];

	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		cr_assert_eq(place(t, 0, cases[i].list, -1, &p, err, sizeof(err)), -EINVAL,
			     "\"%s\"", cases[i].list);
		cr_assert_not_null(strstr(err, cases[i].part), "\"%s\": %s", cases[i].list, err);
	}
	hwloc_topology_destroy(t);
}

Test(pin_fault, errors_fit_a_small_or_missing_buffer)
{
	hwloc_topology_t t = synth("pack:1 core:4 pu:2");
	struct dp_pin_request req = {.cpu_list = "2,3", .control_cpu = -1};
	struct dp_placement p;
	char err[8];

	cr_assert_eq(dp_place(t, &req, &p, err, sizeof(err)), -EINVAL);
	cr_assert_eq(strlen(err), sizeof(err) - 1);
	cr_assert_eq(dp_place(t, &req, &p, NULL, 0), -EINVAL);
	hwloc_topology_destroy(t);
}

Test(pin, explicit_control_on_a_dataplane_core_is_shared)
{
	hwloc_topology_t t = synth("pack:1 core:4 pu:2");
	struct dp_placement p;
	char err[256];

	cr_assert_eq(place(t, 0, NULL, 5, &p, err, sizeof(err)), 0, "%s", err);
	cr_assert_eq(p.core_cpu[1], 4);
	cr_assert_eq(p.control_cpu, 5);
	cr_assert_eq(p.shared_control, 1, "cpu5 is the sibling of dataplane core 1's cpu4");
	cr_assert_eq(p.shared_core, 1);
	cr_assert_eq(place(t, 0, NULL, 2, &p, err, sizeof(err)), 0, "%s", err);
	cr_assert_eq(p.shared_control, 1);
	cr_assert_eq(p.shared_core, 0);
	cr_assert_eq(place(t, 0, NULL, 1, &p, err, sizeof(err)), 0, "%s", err);
	cr_assert_eq(p.control_cpu, 1);
	cr_assert_eq(p.shared_control, 0);
	hwloc_topology_destroy(t);
}

Test(pin, explicit_control_must_exist)
{
	hwloc_topology_t t = synth("pack:1 core:4 pu:2");
	struct dp_placement p;
	char err[256];

	cr_assert_eq(place(t, 0, NULL, 8, &p, err, sizeof(err)), -EINVAL);
	cr_assert_not_null(strstr(err, "control cpu 8"), "%s", err);
	cr_assert_eq(place(t, 0, NULL, -2, &p, err, sizeof(err)), -EINVAL);
	hwloc_topology_destroy(t);
}

Test(pin, format_names_cores_and_a_shared_control)
{
	struct dp_placement p = {
	    .ncores = 2, .core_cpu = {1, 3}, .control_cpu = 0, .shared_control = 1};
	const char *want = "dataplane cores: 0->cpu1 1->cpu3; control: cpu0 "
			   "(shares a core with dataplane core 0)";
	char buf[128];

	cr_assert_eq(dp_placement_format(&p, buf, sizeof(buf)), strlen(want));
	cr_assert_str_eq(buf, want);
	p.shared_control = 0;
	p.core_cpu[0] = 2;
	p.core_cpu[1] = 4;
	dp_placement_format(&p, buf, sizeof(buf));
	cr_assert_str_eq(buf, "dataplane cores: 0->cpu2 1->cpu4; control: cpu0");
}

Test(pin, format_cut_short_returns_the_whole_length)
{
	struct dp_placement p = {.ncores = 1, .core_cpu = {1}, .control_cpu = 0};
	const char *want = "dataplane cores: 0->cpu1; control: cpu0";
	char buf[10];

	cr_assert_eq(dp_placement_format(&p, buf, sizeof(buf)), strlen(want));
	cr_assert_str_eq(buf, "dataplane");
	cr_assert_eq(dp_placement_format(&p, NULL, 0), strlen(want));
}

Test(pin, pins_this_thread_on_the_real_machine)
{
	hwloc_topology_t t;
	hwloc_bitmap_t saved = hwloc_bitmap_alloc(), now = hwloc_bitmap_alloc();
	hwloc_obj_t pu;
	int cpu, rc;

	cr_assert_eq(hwloc_topology_init(&t), 0);
	cr_assert_eq(hwloc_topology_load(t), 0);
	cr_assert_eq(hwloc_get_cpubind(t, saved, HWLOC_CPUBIND_THREAD), 0);
	hwloc_bitmap_and(now, saved, hwloc_topology_get_allowed_cpuset(t));
	cpu = hwloc_bitmap_last(now);
	cr_assert_geq(cpu, 0, "no allowed cpu in this thread's binding");
	pu = hwloc_get_pu_obj_by_os_index(t, (unsigned)cpu);
	cr_assert_not_null(pu);
	rc = dp_pin_thread(t, cpu);
	if (rc == -EPERM || rc == -ENOSYS) {
		hwloc_bitmap_free(saved);
		hwloc_bitmap_free(now);
		hwloc_topology_destroy(t);
		cr_skip_test("this system forbids binding threads (%s)", strerror(-rc));
	}
	cr_assert_eq(rc, 0, "dp_pin_thread(cpu%d): %s", cpu, strerror(-rc));
	cr_assert_eq(hwloc_get_cpubind(t, now, HWLOC_CPUBIND_THREAD), 0);
	cr_expect(hwloc_bitmap_isequal(now, pu->cpuset), "bound elsewhere than cpu%d", cpu);
	cr_expect_eq(sched_getcpu(), cpu);
	cr_assert_eq(dp_pin_thread(t, -1), -EINVAL);
	cr_assert_eq(dp_pin_thread(t, 1 << 20), -EINVAL);
	cr_assert_eq(hwloc_set_cpubind(t, saved, HWLOC_CPUBIND_THREAD), 0, "restore the binding");
	hwloc_bitmap_free(saved);
	hwloc_bitmap_free(now);
	hwloc_topology_destroy(t);
}

Test(pin, real_machine_auto_placement_has_no_siblings)
{
	hwloc_topology_t t;
	struct dp_placement p;
	char err[256], line[512];

	cr_assert_eq(hwloc_topology_init(&t), 0);
	cr_assert_eq(hwloc_topology_load(t), 0);
	cr_assert_eq(place(t, 0, NULL, -1, &p, err, sizeof(err)), 0, "%s", err);
	cr_assert_geq(p.ncores, 1);
	if (!p.shared_control)
		assert_no_siblings(t, &p);
	dp_placement_format(&p, line, sizeof(line));
	cr_log_info("this machine: %s", line);
	hwloc_topology_destroy(t);
}
