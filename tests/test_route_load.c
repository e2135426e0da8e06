/*
 * Predicted load (routing-semantics §3): in-flight blocks deduplicated per target with reference
 * counts, prefill tokens until the first token, release on end/cancel/error exactly once, the
 * expiry sweep, and the flags that switch tracking off.
 */
#include <criterion/criterion.h>
#include <errno.h>

#include "helpers.h"
#include "route_fixture.h"

TestSuite(route_load);

Test(route_load, smoke_routes_to_the_only_worker_and_counts_its_load)
{
	struct t_route t;
	struct rt_worker_spec s;
	struct rt_request rq;
	struct rt_plan plan;
	uint32_t tok[100];
	uint16_t w;

	t_route_open(&t, NULL);
	s = t_spec("m", RT_AGGREGATED, 16);
	w = t_register(&t, 7, &s);
	t_tokens(tok, 100, 1);
	rq = t_request(&t, "m", tok, 100, 0);
	cr_assert_eq(rt_route(&t.core, &rq, &plan), 0);
	cr_assert_eq(plan.kind, RT_PLAN_AGGREGATED);
	cr_assert_eq(plan.first.target, w);
	cr_assert_eq(plan.first.worker, 7);
	cr_assert_eq(t_load_blocks(&t, w), 6);
	cr_assert_eq(t_load_prefill(&t, w), 100);
	cr_assert_eq(rt_first_token(&t.core, plan.first.load), 0);
	cr_assert_eq(t_load_prefill(&t, w), 0);
	cr_assert_eq(rt_release(&t.core, plan.first.load), 0);
	cr_assert_eq(t_load_blocks(&t, w), 0);
	cr_assert_eq(rt_release(&t.core, plan.first.load), -ESTALE);
	t_route_close(&t);
}
