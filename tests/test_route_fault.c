/*
 * The routing policy and memory: a dataplane core's decisions allocate nothing once set up
 * (every allocation call is counted through fault_alloc.c), and running out of memory at any
 * allocation while setting a router up is reported as -ENOMEM and gives every byte back.
 */
#include <criterion/criterion.h>
#include <errno.h>

#include "fault_alloc.h"
#include "helpers.h"
#include "route_fixture.h"

TestSuite(route_fault, .timeout = 120);

#define PROMPTS 8
#define LEN 200 /* tokens: 12 blocks of 16 */

static void skip_unless_wrapped(void)
{
	if (!t_fault_wrapped())
		cr_skip_test("allocation wrappers not linked (no -Wl,--wrap support)");
}

/* Model "a": two aggregated workers; model "d": a prefill and a decode worker in rack r1. */
static void register_all(struct t_route *t)
{
	static const struct rt_domain rack = {"rack", "r1"};
	struct rt_worker_spec s = t_spec("a", RT_AGGREGATED, 16);

	t_register(t, 1, &s);
	t_register(t, 2, &s);
	s = t_spec("d", RT_PREFILL, 16);
	s.domains = &rack;
	s.ndomains = 1;
	s.transfer = (struct rt_transfer){"rack", RT_TRANSFER_PREFERRED, 0.5};
	t_register(t, 3, &s);
	s = t_spec("d", RT_DECODE, 16);
	s.domains = &rack;
	s.ndomains = 1;
	t_register(t, 4, &s);
}

/* One request's whole life on @model, in one of the ways a dataplane core would run it. */
static void one_request(struct t_route *t, const char *model, const uint32_t *tok, uint64_t now,
			uint32_t variant)
{
	struct rt_request rq = t_request(t, model, tok, LEN, now);
	struct rt_plan plan;
	struct rt_choice d;
	char text[512];

	rq.peek = variant % 5 == 0;
	cr_assert_eq(rt_route(&t->core, &rq, &plan), 0);
	rt_explain_format(&t->rt, rt_core_explain(&t->core, RT_STAGE_AGGREGATED), text,
			  sizeof(text));
	if (rq.peek)
		return;
	if (plan.kind == RT_PLAN_DISAGG) {
		rt_first_token(&t->core, plan.first.load);
		cr_assert_eq(rt_route_decode(&t->core, &rq, plan.first.target, &d), 0);
		rt_release(&t->core, plan.first.load);
		plan.first.load = d.load;
	}
	rt_first_token(&t->core, plan.first.load);
	if (variant % 3)
		rt_release(&t->core, plan.first.load); /* the others are left to the sweep */
}

Test(route_fault, steady_state_routing_allocates_nothing)
{
	static uint32_t tok[PROMPTS][LEN];
	struct rt_config cfg;
	struct t_route t;

	skip_unless_wrapped();
	t_route_config(&cfg);
	cfg.expiry_ns = 50000;
	t_route_open(&t, &cfg);
	register_all(&t);
	for (uint32_t p = 0; p < PROMPTS; p++)
		t_tokens(tok[p], LEN, p);
	t_cache(&t, 0, tok[0], 8, 16);
	t_fault_reset(0);
	t_fault_count(true);
	for (uint32_t i = 0; i < 4000; i++) {
		one_request(&t, i % 2 ? "a" : "d", tok[i % PROMPTS], i * 100ull, i);
		if (i % 64 == 0)
			rt_sweep(&t.core, i * 100ull);
	}
	t_fault_count(false);
	cr_assert_eq(t_fault.calls, 0, "%lu allocation calls while routing", t_fault.calls);
	t_route_close(&t);
}

/* Set up an index, a router with four workers and a core, with allocation @fail_at failing.
 * Returns 0 or the -ENOMEM of the step that failed, after tearing down what was set up. */
static int setup_with_fault(unsigned long fail_at)
{
	static const struct rt_domain where[] = {{"zone", "z1"}, {"rack", "r1"}};
	struct pdx_config xc = {.max_targets = 16, .max_readers = 2};
	struct rt_worker_spec s;
	struct rt_config cfg;
	struct pdx x;
	struct rt_router rt;
	struct rt_core core;
	int rc;

	t_route_config(&cfg);
	cfg.max_targets = 16;
	cfg.transfer = (struct rt_transfer){"rack", RT_TRANSFER_REQUIRED, 0};
	t_fault_reset(fail_at);
	t_fault_count(true);
	rc = pdx_init(&x, &xc);
	if (rc)
		goto out;
	rc = rt_router_init(&rt, &cfg, &x);
	if (rc)
		goto out_index;
	for (uint32_t w = 1; w <= 4 && rc == 0; w++) {
		s = t_spec("m", w == 1 ? RT_PREFILL : w % 2 ? RT_AGGREGATED : RT_DECODE, 16);
		s.domains = where; /* the rack is required, the zone is one more name to intern */
		s.ndomains = 2;
		rc = rt_register(&rt, w, &s, NULL, 0);
	}
	if (rc == 0 && (rc = rt_core_init(&core, &rt, 0)) == 0)
		rt_core_destroy(&core);
	rt_router_destroy(&rt);
out_index:
	pdx_destroy(&x);
out:
	t_fault_count(false);
	return rc;
}

Test(route_fault, every_failed_allocation_in_setup_is_reported_and_leaks_nothing)
{
	unsigned long fail_at;

	skip_unless_wrapped();
	for (fail_at = 1; fail_at < 10000; fail_at++) {
		int rc = setup_with_fault(fail_at);

		if (!t_fault.fired) {
			cr_assert_eq(rc, 0, "no fault injected, yet setup returned %d", rc);
			break;
		}
		cr_assert_eq(rc, -ENOMEM, "allocation %lu (%s of %zu bytes) failed: got %d", fail_at,
			     t_fault.what, t_fault.size, rc);
		cr_assert(!t_fault_live_blocks() && !t_fault_live_map_bytes(),
			  "allocation %lu failed: %zu blocks and %ld mapped bytes never given back",
			  fail_at, t_fault_live_blocks(), (long)t_fault_live_map_bytes());
	}
	cr_assert_gt(fail_at, 10, "setup made only %lu allocations: the wrappers are not counting",
		     fail_at - 1);
}
