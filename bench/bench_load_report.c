/*
 * pdbench load's reports: a table for people, one JSON object for scripts (bench/README.md
 * lists its keys) and one CSV row per request. They only format a summary and the records;
 * what the numbers mean is settled in bench_load_stats.c.
 */
#include <inttypes.h>
#include <string.h>

#include "bench_load.h"
#include "pdclient.h"

#define US(v) ((double)(v) / 1e3)

static const char *const plan_names[4] = {
	[PDC_PLAN_AGGREGATED] = "aggregated",
	[PDC_PLAN_DISAGG] = "disagg",
	[PDC_PLAN_FALLBACK] = "fallback",
	[PDC_PLAN_BOOTSTRAP] = "bootstrap",
};

static void describe_run(FILE *f, const struct load_info *in)
{
	fprintf(f, "pdbench load: %s, ", in->source);
	if (in->prefix_ratio >= 0)
		fprintf(f, "shared prefix %.0f%%, ", 100 * in->prefix_ratio);
	if (in->sched == LOAD_SCHED_CLOSED)
		fprintf(f, "closed loop with %u in flight", in->concurrency);
	else if (in->sched == LOAD_SCHED_TRACE)
		fprintf(f, "open loop at the trace's timestamps / %g", in->speedup);
	else
		fprintf(f, "open loop, %s arrivals at %g req/s", load_sched_name(in->sched),
			in->rate);
	fprintf(f, ", %u connections over %s\n", in->connections, in->io);
	if (in->sched != LOAD_SCHED_CLOSED)
		fprintf(f, "latency is from each request's scheduled time, so lag behind the "
			   "schedule counts (no coordinated omission)\n");
}

static void row(FILE *f, const char *name, const struct load_dist *d)
{
	if (!d->n)
		return;
	fprintf(f, "  %-42s %8" PRIu64 " %10.1f %10.1f %10.1f %10.1f %10.1f\n", name, d->n,
		US(d->p50), US(d->p90), US(d->p99), US(d->p999), US(d->max));
}

static void router_rows(FILE *f, const struct load_router *rt)
{
	struct load_dist d;

	load_dist_hist(rt->route, &d);
	row(f, "routing decision (router, rt_route)", &d);
	load_dist_hist(rt->in, &d);
	row(f, "router hand-off in (frame -> worker ring)", &d);
	load_dist_hist(rt->out, &d);
	row(f, "router hand-off out (answer -> to kernel)", &d);
	load_dist_hist(rt->send, &d);
	row(f, "kernel send (submit, wakes the client)", &d);
}

void load_report_text(FILE *f, const struct load_info *in, const struct load_summary *s,
		      const struct load_router *rt)
{
	double secs = (double)s->elapsed_ns / 1e9;

	describe_run(f, in);
	fprintf(f, "requests: %" PRIu64 " sent, %" PRIu64 " completed, %" PRIu64 " errors, %" PRIu64
		   " unanswered in %.2f s: %.1f req/s, %.0f tokens/s\n",
		s->sent, s->completed, s->errors, s->unanswered, secs,
		(double)s->completed / secs, (double)s->tokens / secs);
	fprintf(f, "  %-42s %8s %10s %10s %10s %10s %10s\n", "latency (us)", "n", "p50", "p90",
		"p99", "p99.9", "max");
	row(f, "client send -> ROUTED (after any prefill)", &s->routed);
	row(f, "time to first token", &s->ttft);
	row(f, "inter-token (gaps between TOKENS frames)", &s->itl);
	row(f, "end to end", &s->e2e);
	row(f, "send lag (generator behind schedule)", &s->lag);
	if (rt->have)
		router_rows(f, rt);
	fprintf(f, "KV hit rate: %.1f%% of prompt tokens cached (%" PRIu64 " of %" PRIu64 ")\n",
		100.0 * load_hit_rate(s), s->cached, s->prompt);
	fprintf(f, "plans: %" PRIu64 " disaggregated, %" PRIu64 " fallback (decode-only), %" PRIu64
		   " aggregated, %" PRIu64 " bootstrap\n", s->plans[PDC_PLAN_DISAGG],
		s->plans[PDC_PLAN_FALLBACK], s->plans[PDC_PLAN_AGGREGATED],
		s->plans[PDC_PLAN_BOOTSTRAP]);
	for (uint32_t k = 0; k < s->nerrs; k++)
		fprintf(f, "errors: %" PRIu64 " x %s (%d)\n", s->errs[k].n,
			strerror(-s->errs[k].code), s->errs[k].code);
}

/* "name_n", "name_mean_us" and "name_pXX_us"; @all: also n, mean and max. */
static void json_dist(FILE *f, const char *name, const struct load_dist *d, bool all)
{
	if (all)
		fprintf(f, ",\"%s_n\":%" PRIu64 ",\"%s_mean_us\":%.3f,\"%s_max_us\":%.3f", name,
			d->n, name, US(d->mean), name, US(d->max));
	fprintf(f, ",\"%s_p50_us\":%.3f,\"%s_p90_us\":%.3f,\"%s_p99_us\":%.3f,\"%s_p999_us\":%.3f",
		name, US(d->p50), name, US(d->p90), name, US(d->p99), name, US(d->p999));
}

static void json_router(FILE *f, const struct load_router *rt)
{
	struct load_dist d;

	load_dist_hist(rt->route, &d);
	json_dist(f, "router_route", &d, false);
	load_dist_hist(rt->in, &d);
	json_dist(f, "router_in", &d, false);
	load_dist_hist(rt->out, &d);
	json_dist(f, "router_out", &d, false);
	load_dist_hist(rt->send, &d);
	json_dist(f, "router_send", &d, false);
}

void load_report_json(FILE *f, const struct load_info *in, const struct load_summary *s,
		      const struct load_router *rt)
{
	double secs = (double)s->elapsed_ns / 1e9;

	fprintf(f, "{\"bench\":\"load\",\"source\":\"%s\",\"prefix_ratio\":%g,", in->source,
		in->prefix_ratio);
	fprintf(f, "\"schedule\":\"%s\",\"rate\":%g,\"speedup\":%g,"
		   "\"connections\":%u,\"concurrency\":%u,\"io\":\"%s\",\"latency_from\":\"%s\","
		   "\"seconds\":%.3f,\"sent\":%" PRIu64 ",\"completed\":%" PRIu64
		   ",\"errors\":%" PRIu64 ",\"unanswered\":%" PRIu64 ",\"requests_per_s\":%.1f,"
		   "\"tokens_per_s\":%.1f,\"prompt_tokens\":%" PRIu64 ",\"cached_tokens\":%" PRIu64
		   ",\"kv_hit_rate\":%.4f,\"disagg\":%" PRIu64 ",\"fallback\":%" PRIu64
		   ",\"aggregated\":%" PRIu64 ",\"bootstrap\":%" PRIu64,
		load_sched_name(in->sched), in->rate, in->speedup, in->connections, in->concurrency,
		in->io, in->sched == LOAD_SCHED_CLOSED ? "sent" : "scheduled", secs, s->sent,
		s->completed, s->errors, s->unanswered, (double)s->completed / secs,
		(double)s->tokens / secs, s->prompt, s->cached, load_hit_rate(s),
		s->plans[PDC_PLAN_DISAGG], s->plans[PDC_PLAN_FALLBACK],
		s->plans[PDC_PLAN_AGGREGATED], s->plans[PDC_PLAN_BOOTSTRAP]);
	json_dist(f, "routed", &s->routed, true);
	json_dist(f, "ttft", &s->ttft, true);
	json_dist(f, "itl", &s->itl, true);
	json_dist(f, "e2e", &s->e2e, true);
	json_dist(f, "lag", &s->lag, true);
	if (rt->have)
		json_router(f, rt);
	fprintf(f, ",\"error_codes\":{");
	for (uint32_t k = 0; k < s->nerrs; k++)
		fprintf(f, "%s\"%d\":%" PRIu64, k ? "," : "", s->errs[k].code, s->errs[k].n);
	fprintf(f, "}}\n");
}

/* @v - @from in us, or an empty field when @v did not happen. */
static void csv_us(FILE *f, uint64_t v, uint64_t from)
{
	if (v)
		fprintf(f, ",%.3f", US(v - from));
	else
		fputc(',', f);
}

void load_report_csv(FILE *f, const struct load_rec *r, size_t n, uint64_t start_ns)
{
	static const char *const states[] = {"", "unanswered", "done", "error"};

	fprintf(f, "id,sched_s,lag_us,routed_us,ttft_us,e2e_us,prompt_tokens,cached_tokens,"
		   "output_tokens,plan,status,error\n");
	for (size_t i = 0; i < n; i++) {
		const struct load_rec *q = &r[i];

		if (q->state == LOAD_FREE)
			continue;
		fprintf(f, "%zu,%.6f,%.3f", i + 1, (double)(q->sched - start_ns) / 1e9,
			US(q->sent - q->sched));
		csv_us(f, q->routed, q->sched);
		csv_us(f, q->first, q->sched);
		csv_us(f, q->state == LOAD_DONE ? q->done : 0, q->sched);
		fprintf(f, ",%u,%u,%u,%s,%s,%d\n", q->prompt, q->cached, q->output,
			q->routed ? plan_names[q->plan & 3] : "", states[q->state], q->error);
	}
}
