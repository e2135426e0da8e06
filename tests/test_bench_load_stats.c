/*
 * pdbench load's report arithmetic (bench/bench_load.h): a tiny run of synthetic records
 * whose every percentile, gap and rate is known, through the summary, the CSV and the JSON;
 * router histograms; and the chunked record storage.
 */
#include <criterion/criterion.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bench_load.h"
#include "pdclient.h"

#define US 1000ull /* ns */
#define T0 1000000000ull /* the run's start: records hold absolute times */

TestSuite(bench_load_stats, .timeout = 60);

/*
 * Ten completed requests (i = 0..9): due at T0 + i ms, sent i us late, ROUTED 5 us after due,
 * first token (i + 1) * 10 us after due, done (i + 1) * 100 us after due; 100 prompt tokens,
 * 10 * i cached, 3 generated. Then two errors (-EBUSY, -EAGAIN) and one never answered.
 */
static size_t tiny_run(struct load_rec *r)
{
	size_t n = 0;

	for (uint64_t i = 0; i < 10; i++) {
		uint64_t due = T0 + i * 1000 * US;

		r[n++] = (struct load_rec){.sched = due, .sent = due + i * US,
					   .routed = due + 5 * US, .first = due + (i + 1) * 10 * US,
					   .last = due + (i + 1) * 10 * US,
					   .done = due + (i + 1) * 100 * US, .prompt = 100,
					   .cached = (uint32_t)(10 * i), .output = 3,
					   .plan = i < 8 ? PDC_PLAN_AGGREGATED : PDC_PLAN_FALLBACK,
					   .state = LOAD_DONE};
	}
	r[n++] = (struct load_rec){.sched = T0 + 20000 * US, .sent = T0 + 20000 * US,
				   .done = T0 + 20001 * US, .prompt = 100, .error = -EBUSY,
				   .state = LOAD_ERROR};
	r[n++] = (struct load_rec){.sched = T0 + 21000 * US, .sent = T0 + 21002 * US,
				   .done = T0 + 21003 * US, .prompt = 100, .error = -EAGAIN,
				   .state = LOAD_ERROR};
	r[n++] = (struct load_rec){.sched = T0 + 22000 * US, .sent = T0 + 22000 * US,
				   .prompt = 100, .state = LOAD_FLIGHT};
	return n;
}

static void summarize_tiny(struct load_summary *s, struct load_rec *r, size_t *n)
{
	static uint64_t gaps[5] = {5 * US, 1 * US, 3 * US, 2 * US, 4 * US};
	uint64_t scratch[16];

	*n = tiny_run(r);
	load_summarize(r, *n, gaps, 5, scratch, 2 * T0, s);
}

Test(bench_load_stats, tiny_run_counts)
{
	struct load_rec r[16];
	struct load_summary s;
	size_t n;

	summarize_tiny(&s, r, &n);
	cr_assert_eq(s.sent, 13);
	cr_assert_eq(s.completed, 10);
	cr_assert_eq(s.errors, 2);
	cr_assert_eq(s.unanswered, 1);
	cr_assert_eq(s.tokens, 30);
	cr_assert_eq(s.prompt, 1000, "prompt tokens of completed requests only");
	cr_assert_eq(s.cached, 450);
	cr_assert_float_eq(load_hit_rate(&s), 0.45, 1e-12);
	cr_assert_eq(s.plans[PDC_PLAN_AGGREGATED], 8);
	cr_assert_eq(s.plans[PDC_PLAN_FALLBACK], 2);
	cr_assert_eq(s.nerrs, 2);
	cr_assert_eq(s.errs[0].code, -EBUSY);
	cr_assert_eq(s.errs[0].n, 1);
	cr_assert_eq(s.errs[1].code, -EAGAIN);
}

/* Nearest rank: of 10 samples, p50 is the 5th, p90 the 9th, p99 and p99.9 the 10th. */
Test(bench_load_stats, tiny_run_percentiles)
{
	struct load_rec r[16];
	struct load_summary s;
	size_t n;

	summarize_tiny(&s, r, &n);
	cr_assert_eq(s.ttft.n, 10);
	cr_assert_eq(s.ttft.p50, 50 * US);
	cr_assert_eq(s.ttft.p90, 90 * US);
	cr_assert_eq(s.ttft.p99, 100 * US);
	cr_assert_eq(s.ttft.p999, 100 * US);
	cr_assert_eq(s.ttft.mean, 55 * US);
	cr_assert_eq(s.e2e.p50, 500 * US);
	cr_assert_eq(s.e2e.p90, 900 * US);
	cr_assert_eq(s.e2e.max, 1000 * US);
	cr_assert_eq(s.routed.n, 10);
	cr_assert_eq(s.routed.p99, 5 * US);
}

/* ITL: the gaps as given, sorted; lag: sent - due of every request sent, errors too. */
Test(bench_load_stats, tiny_run_itl_and_lag)
{
	struct load_rec r[16];
	struct load_summary s;
	size_t n;

	summarize_tiny(&s, r, &n);
	cr_assert_eq(s.itl.n, 5);
	cr_assert_eq(s.itl.p50, 3 * US);
	cr_assert_eq(s.itl.p90, 5 * US);
	cr_assert_eq(s.itl.mean, 3 * US);
	cr_assert_eq(s.lag.n, 13);
	cr_assert_eq(s.lag.p50, 3 * US, "lags 0..9, 0, 2 and 0 us: the 7th of 13 is 3");
	cr_assert_eq(s.lag.max, 9 * US);
}

/* More distinct codes than a summary holds: the last slot takes the rest. */
Test(bench_load_stats, error_codes_beyond_the_table_are_still_counted)
{
	struct load_rec r[LOAD_MAX_ERRCODES + 4];
	struct load_summary s;
	uint64_t scratch[LOAD_MAX_ERRCODES + 4], total = 0;

	for (int i = 0; i < (int)LOAD_MAX_ERRCODES + 4; i++)
		r[i] = (struct load_rec){.sched = 1, .sent = 1, .error = -(i + 1),
					 .state = LOAD_ERROR};
	load_summarize(r, LOAD_MAX_ERRCODES + 4, NULL, 0, scratch, 1, &s);
	cr_assert_eq(s.nerrs, LOAD_MAX_ERRCODES);
	for (uint32_t k = 0; k < s.nerrs; k++)
		total += s.errs[k].n;
	cr_assert_eq(total, LOAD_MAX_ERRCODES + 4);
}

Test(bench_load_stats, empty_run_is_all_zeros)
{
	struct load_summary s;

	load_summarize(NULL, 0, NULL, 0, NULL, 1, &s);
	cr_assert_eq(s.sent, 0);
	cr_assert_eq(s.e2e.n, 0);
	cr_assert_eq(s.e2e.p99, 0);
	cr_assert_float_eq(load_hit_rate(&s), 0.0, 0);
}

/* A router histogram: the same quantiles as dp_hist_quantile(), its count and a max in the
 * last non-empty bucket. */
Test(bench_load_stats, router_histogram_distribution)
{
	uint64_t h[DP_HIST_BUCKETS] = {0};
	struct load_dist d;

	h[dp_hist_bucket(1000)] = 90;
	h[dp_hist_bucket(100000)] = 10;
	load_dist_hist(h, &d);
	cr_assert_eq(d.n, 100);
	cr_assert_eq(d.p50, dp_hist_quantile(h, 0.5));
	cr_assert_eq(d.p99, dp_hist_quantile(h, 0.99));
	cr_assert_eq(dp_hist_bucket(d.p50), dp_hist_bucket(1000));
	cr_assert_eq(dp_hist_bucket(d.max), dp_hist_bucket(100000));
}

/* One CSV row per request, times from the run's start and from the request's due time. */
Test(bench_load_stats, csv_rows)
{
	static const char hdr[] = "id,sched_s,lag_us,routed_us,ttft_us,e2e_us,prompt_tokens,"
				  "cached_tokens,output_tokens,plan,status,error\n";
	struct load_rec r[16];
	char *buf = NULL, *line;
	size_t len = 0, n = tiny_run(r), rows = 0;
	FILE *f = open_memstream(&buf, &len);

	load_report_csv(f, r, n, T0);
	fclose(f);
	cr_assert(!strncmp(buf, hdr, strlen(hdr)), "%s", buf);
	cr_assert_not_null(strstr(buf, "\n2,0.001000,1.000,5.000,20.000,200.000,100,10,3,"
				       "aggregated,done,0\n"), "%s", buf);
	cr_assert_not_null(strstr(buf, "\n11,0.020000,0.000,,,,100,0,0,,error,-16\n"), "%s", buf);
	cr_assert_not_null(strstr(buf, "\n13,0.022000,0.000,,,,100,0,0,,unanswered,0\n"));
	for (line = buf; (line = strchr(line, '\n')); line++)
		rows++;
	cr_assert_eq(rows, 1 + n);
	free(buf);
}

/* The JSON keeps the keys scripts already read and adds the new ones. */
Test(bench_load_stats, json_keys)
{
	static const char *const keys[] = {
		"\"bench\":\"load\"", "\"sent\":13", "\"completed\":10", "\"errors\":2",
		"\"unanswered\":1", "\"kv_hit_rate\":0.4500", "\"fallback\":2", "\"aggregated\":8",
		"\"ttft_p50_us\":50.000", "\"ttft_p90_us\":90.000", "\"ttft_p999_us\":100.000",
		"\"e2e_p99_us\":1000.000", "\"routed_p50_us\":5.000", "\"itl_p50_us\":3.000",
		"\"lag_max_us\":9.000", "\"latency_from\":\"scheduled\"",
		"\"error_codes\":{\"-16\":1,\"-11\":1}", "\"router_route_p50_us\":",
		"\"requests_per_s\":5.0", "\"tokens_per_s\":15.0"};
	struct load_info in = {.sched = LOAD_SCHED_FIXED, .rate = 10, .connections = 1,
			       .io = "poll", .source = "synthetic"};
	struct load_router rt = {.have = true};
	struct load_rec r[16];
	struct load_summary s;
	char *buf = NULL;
	size_t len = 0, n;
	FILE *f = open_memstream(&buf, &len);

	summarize_tiny(&s, r, &n);
	rt.route[dp_hist_bucket(700)] = 3;
	load_report_json(f, &in, &s, &rt);
	fclose(f);
	for (size_t k = 0; k < sizeof(keys) / sizeof(keys[0]); k++)
		cr_assert_not_null(strstr(buf, keys[k]), "no %s in %s", keys[k], buf);
	cr_assert_eq(buf[0], '{');
	cr_assert_str_eq(buf + len - 2, "}\n");
	free(buf);
}

/* Chunked storage: elements stay where they were pushed, and flatten in order. */
Test(bench_load_stats, vec_grows_without_moving)
{
	struct load_vec v = {.size = sizeof(uint64_t)};
	uint64_t *first = load_vec_push(&v), *flat;
	size_t n = 3 * LOAD_VEC_CHUNK + 5;

	cr_assert_not_null(first);
	*first = 0;
	for (uint64_t i = 1; i < n; i++)
		*(uint64_t *)load_vec_push(&v) = i;
	cr_assert_eq(load_vec_at(&v, 0), first);
	cr_assert_eq(*(uint64_t *)load_vec_at(&v, LOAD_VEC_CHUNK), LOAD_VEC_CHUNK);
	cr_assert_null(load_vec_at(&v, n));
	flat = load_vec_flat(&v);
	for (uint64_t i = 0; i < n; i++)
		cr_assert_eq(flat[i], i);
	free(flat);
	load_vec_free(&v);
	cr_assert_eq(v.n, 0);
	cr_assert_eq(v.size, sizeof(uint64_t));
}
