/*
 * Explanations (route.h): every decision leaves its candidates behind with the figures it
 * used, and rt_explain_format() renders them for logs: the chosen target marked, filtered ones
 * with their reason, a cut-short buffer still terminated and sized like snprintf().
 */
#include <criterion/criterion.h>
#include <errno.h>
#include <stdio.h>
#include <string.h>

#include "helpers.h"
#include "route_fixture.h"

TestSuite(route_explain);

/* Two aggregated targets of model "m"; @a caches the first 4 blocks of @tok. */
static void two_targets(struct t_route *t, uint32_t *tok, uint16_t *a, uint16_t *b)
{
	struct rt_worker_spec s = t_spec("m", RT_AGGREGATED, 16);

	t_route_open(t, NULL);
	*a = t_register(t, 1, &s);
	*b = t_register(t, 2, &s);
	t_tokens(tok, 100, 5);
	t_cache(t, *a, tok, 4, 16);
}

Test(route_explain, text_names_stage_outcome_and_marks_the_choice)
{
	const struct rt_explain *ex;
	struct t_route t;
	struct rt_plan plan;
	struct rt_request rq;
	uint32_t tok[100];
	char line[64], buf[1024];
	uint16_t a, b;

	two_targets(&t, tok, &a, &b);
	rq = t_request(&t, "m", tok, 100, 0);
	cr_assert_eq(rt_route(&t.core, &rq, &plan), 0);
	cr_assert_eq(plan.first.target, a);
	ex = rt_core_explain(&t.core, RT_STAGE_AGGREGATED);
	cr_assert_eq(ex->ncand, 2);
	cr_assert_lt(rt_explain_format(&t.rt, ex, buf, sizeof(buf)), sizeof(buf));
	cr_assert(strstr(buf, "stage=aggregated model=m blocks=6 outcome=ok candidates=2"), "%s",
		  buf);
	snprintf(line, sizeof(line), "* target=%u worker=1 rank=0 overlap=4 new_blocks=6", a);
	cr_assert(strstr(buf, line), "chosen line missing in:\n%s", buf);
	snprintf(line, sizeof(line), "  target=%u worker=2 rank=0 overlap=0", b);
	cr_assert(strstr(buf, line), "other candidate missing in:\n%s", buf);
	cr_assert(strstr(buf, "cost=8.250"), "(100 / 16 - 4) + 6 = 8.25 expected in:\n%s", buf);
	t_route_close(&t);
}

Test(route_explain, filtered_candidates_say_why)
{
	struct t_route t;
	struct rt_plan plan;
	struct rt_request rq;
	uint32_t tok[100];
	char line[64], buf[1024];
	uint16_t a, b;

	two_targets(&t, tok, &a, &b);
	rq = t_request(&t, "m", tok, 100, 0);
	rq.pin_target = b;
	cr_assert_eq(rt_route(&t.core, &rq, &plan), 0);
	rt_explain_format(&t.rt, rt_core_explain(&t.core, RT_STAGE_AGGREGATED), buf, sizeof(buf));
	snprintf(line, sizeof(line), "  target=%u worker=1 rank=0 filtered=pin", a);
	cr_assert(strstr(buf, line), "%s", buf);
	snprintf(line, sizeof(line), "* target=%u worker=2", b);
	cr_assert(strstr(buf, line), "%s", buf);
	t_route_close(&t);
}

Test(route_explain, failed_decision_has_no_choice_and_names_the_outcome)
{
	struct rt_worker_spec s = t_spec("m", RT_AGGREGATED, 16);
	struct rt_config cfg;
	struct t_route t;
	struct rt_plan plan;
	struct rt_request rq;
	uint32_t tok[100];
	char buf[1024];

	t_route_config(&cfg);
	cfg.busy_kv_fraction = 0.5;
	t_route_open(&t, &cfg);
	t_register(&t, 1, &s);
	t_register(&t, 2, &s);
	t_tokens(tok, 100, 5);
	cr_assert_eq(rt_report_load(&t.rt, 1, 0, 900, 0), 0);
	cr_assert_eq(rt_report_load(&t.rt, 2, 0, 900, 0), 0);
	rq = t_request(&t, "m", tok, 100, 0);
	cr_assert_eq(rt_route(&t.core, &rq, &plan), -EBUSY);
	rt_explain_format(&t.rt, rt_core_explain(&t.core, RT_STAGE_AGGREGATED), buf, sizeof(buf));
	cr_assert(strstr(buf, "outcome=overloaded"), "%s", buf);
	cr_assert_null(strchr(buf, '*'), "nothing may be marked chosen:\n%s", buf);
	cr_assert(strstr(buf, "filtered=busy_kv used_blocks=900 capacity=1000 limit=0.5"), "%s",
		  buf);
	t_route_close(&t);
}

Test(route_explain, short_buffer_is_cut_terminated_and_sized_like_snprintf)
{
	const struct rt_explain *ex;
	struct t_route t;
	struct rt_plan plan;
	struct rt_request rq;
	uint32_t tok[100];
	char full[1024], small[40];
	size_t need;
	uint16_t a, b;

	two_targets(&t, tok, &a, &b);
	rq = t_request(&t, "m", tok, 100, 0);
	cr_assert_eq(rt_route(&t.core, &rq, &plan), 0);
	ex = rt_core_explain(&t.core, RT_STAGE_AGGREGATED);
	need = rt_explain_format(&t.rt, ex, full, sizeof(full));
	cr_assert_eq(strlen(full), need);
	memset(small, 'x', sizeof(small));
	cr_assert_eq(rt_explain_format(&t.rt, ex, small, sizeof(small)), need);
	cr_assert_eq(strlen(small), sizeof(small) - 1);
	cr_assert_eq(strncmp(small, full, sizeof(small) - 1), 0);
	cr_assert_eq(rt_explain_format(&t.rt, ex, NULL, 0), need);
	t_route_close(&t);
}
