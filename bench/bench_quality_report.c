/*
 * pdbench quality's words: the --workers spec, the JSON lines its children answer (pdbench
 * load's report, the admin socket's "models") and the reports it writes (a table, JSON lines,
 * report.md, gnuplot data and script). Pure: no processes, no files of its own, so the tests
 * check every format without a router.
 */
#include <errno.h>
#include <inttypes.h>
#include <json-c/json.h>
#include <stdlib.h>
#include <string.h>

#include "bench_quality.h"

const struct qual_policy qual_policies[QUAL_NPOLICIES] = {
	{"round-robin", "round-robin", false},
	{"random", "random", false},
	{"least-loaded", "least-loaded", false},
	{"kv", "kv", false},
	{"kv-disagg", "kv", true},
};

/* ---- parsers ---- */

/* A decimal in [1, QUAL_MAX_POOL] from @s up to @end; -EINVAL for anything else. */
static int pool_size(const char *s, const char *end, uint32_t *out)
{
	uint32_t v = 0;

	if (s == end || end - s > 2)
		return -EINVAL;
	for (; s < end; s++) {
		if (*s < '0' || *s > '9')
			return -EINVAL;
		v = v * 10 + (uint32_t)(*s - '0');
	}
	if (v < 1 || v > QUAL_MAX_POOL)
		return -EINVAL;
	*out = v;
	return 0;
}

int qual_parse_workers(const char *s, struct qual_workers *w)
{
	const char *colon = strchr(s, ':');
	struct qual_workers v;

	if (!colon || pool_size(s, colon, &v.prefill) ||
	    pool_size(colon + 1, colon + 1 + strlen(colon + 1), &v.decode))
		return -EINVAL;
	*w = v;
	return 0;
}

/* Number @key of @o into @out; false when it is missing or not a number. */
static bool num(struct json_object *o, const char *key, double *out)
{
	struct json_object *v;

	if (!json_object_object_get_ex(o, key, &v) ||
	    !(json_object_is_type(v, json_type_int) || json_object_is_type(v, json_type_double)))
		return false;
	*out = json_object_get_double(v);
	return true;
}

/* The load report's keys, in the order of the values qual_parse_load() reads. */
static const char *const load_keys[] = {
	"sent", "completed", "errors", "unanswered", "prompt_tokens", "cached_tokens",
	"disagg", "fallback", "kv_hit_rate", "tokens_per_s", "ttft_mean_us", "ttft_p50_us",
	"ttft_p99_us", "e2e_mean_us", "e2e_p99_us",
};
enum { K_SENT, K_DONE, K_ERR, K_UNANS, K_PROMPT, K_CACHED, K_DISAGG, K_FALLBACK, K_HIT,
       K_TOKS, K_TTFT_MEAN, K_TTFT_P50, K_TTFT_P99, K_E2E_MEAN, K_E2E_P99, K_N };

int qual_parse_load(const char *line, double speedup, struct qual_result *r)
{
	struct json_object *o = json_tokener_parse(line), *bench;
	double v[K_N];
	double ms = speedup / 1e3; /* client microseconds to engine milliseconds */
	bool ok = o && json_object_object_get_ex(o, "bench", &bench) &&
		  !strcmp(json_object_get_string(bench), "load");

	_Static_assert(sizeof(load_keys) / sizeof(load_keys[0]) == K_N, "a key per value");
	for (int k = 0; k < K_N && ok; k++)
		ok = num(o, load_keys[k], &v[k]) && v[k] >= 0;
	json_object_put(o);
	if (!ok || !(speedup > 0))
		return -EBADMSG;
	r->ran = true;
	r->requests = (uint64_t)v[K_SENT];
	r->completed = (uint64_t)v[K_DONE];
	r->errors = (uint64_t)v[K_ERR] + (uint64_t)v[K_UNANS];
	r->prompt_tokens = (uint64_t)v[K_PROMPT];
	r->cached_tokens = (uint64_t)v[K_CACHED];
	r->disagg = (uint64_t)v[K_DISAGG];
	r->fallback = (uint64_t)v[K_FALLBACK];
	r->hit_rate = v[K_HIT];
	r->output_tokens_per_s = v[K_TOKS] / speedup;
	r->ttft_mean_ms = v[K_TTFT_MEAN] * ms;
	r->ttft_p50_ms = v[K_TTFT_P50] * ms;
	r->ttft_p99_ms = v[K_TTFT_P99] * ms;
	r->e2e_mean_ms = v[K_E2E_MEAN] * ms;
	r->e2e_p99_ms = v[K_E2E_P99] * ms;
	return 0;
}

/* Pool @key of model object @m; false when it is missing. */
static bool pool(struct json_object *m, const char *key, uint32_t *out)
{
	struct json_object *v;

	if (!json_object_object_get_ex(m, key, &v) || !json_object_is_type(v, json_type_int))
		return false;
	*out = (uint32_t)json_object_get_int(v);
	return true;
}

int qual_parse_pools(const char *json, const char *model, struct qual_pools *p)
{
	struct json_object *o = json_tokener_parse(json), *models, *m, *name;
	int rc = -EBADMSG;

	if (!o || !json_object_object_get_ex(o, "models", &models) ||
	    !json_object_is_type(models, json_type_array))
		goto out;
	rc = -ENOENT;
	for (size_t i = 0; i < json_object_array_length(models); i++) {
		m = json_object_array_get_idx(models, i);
		if (!json_object_object_get_ex(m, "name", &name) ||
		    strcmp(json_object_get_string(name), model))
			continue;
		rc = pool(m, "prefill", &p->prefill) && pool(m, "decode", &p->decode) &&
		     pool(m, "aggregated", &p->aggregated) ? 0 : -EBADMSG;
		break;
	}
out:
	json_object_put(o);
	return rc;
}

/* ---- reports ---- */

static double pct(uint64_t part, uint64_t whole)
{
	return whole ? 100.0 * (double)part / (double)whole : 0;
}

/* "4 aggregated" or "2P + 2D", the workers a run had. */
static void workers_of(const struct qual_result *r, char *buf, size_t len)
{
	if (r->pools.prefill || r->pools.decode)
		snprintf(buf, len, "%uP + %uD", r->pools.prefill, r->pools.decode);
	else
		snprintf(buf, len, "%u aggregated", r->pools.aggregated);
}

/* The settings, as lines that each start with @lead ("" or "- "). */
static void describe(FILE *f, const struct qual_settings *s, const char *lead)
{
	const struct qual_reuse *u = &s->reuse;

	fprintf(f, "%strace: %s, the first %" PRIu64 " records (--requests %u; records over %u "
		   "prompt tokens skipped)\n", lead, s->trace, u->records, s->requests,
		s->max_input);
	fprintf(f, "%sworkers: %u:%u (the aggregated runs: %u aggregated workers; kv-disagg: "
		   "%u prefill + %u decode)\n", lead, s->workers.prefill, s->workers.decode,
		s->workers.prefill + s->workers.decode, s->workers.prefill, s->workers.decode);
	fprintf(f, "%sprefix reuse in those records: %.1f%% of blocks repeat an earlier "
		   "record's; an ideal cache could serve %.1f%% of prompt tokens\n", lead,
		pct(u->repeated_blocks, u->blocks), pct(u->prefix_tokens, u->prompt_tokens));
	fprintf(f, "%sspeedup %g: the trace's arrivals and pdmock's engine both ran %g times "
		   "faster than real time; times and rates here are on the engine's clock "
		   "(measured times x %g, rates / %g)\n", lead, s->speedup, s->speedup, s->speedup,
		s->speedup);
}

void qual_report_text(FILE *f, const struct qual_settings *s, const struct qual_result *r,
		      uint32_t n)
{
	fprintf(f, "pdbench quality: routing policies on one trace\n");
	describe(f, s, "  ");
	fprintf(f, "%-13s %-13s %8s %6s %7s %13s %12s %12s %12s\n", "policy", "workers",
		"requests", "errors", "KV hit", "TTFT mean ms", "TTFT p99 ms", "e2e mean ms",
		"output tok/s");
	for (uint32_t i = 0; i < n; i++) {
		char w[32];

		workers_of(&r[i], w, sizeof(w));
		if (!r[i].ran) {
			fprintf(f, "%-13s %-13s failed (the reason is above)\n", r[i].policy, w);
			continue;
		}
		fprintf(f, "%-13s %-13s %8" PRIu64 " %6" PRIu64 " %6.1f%% %13.1f %12.1f %12.1f "
			   "%12.1f\n", r[i].policy, w, r[i].requests, r[i].errors,
			100 * r[i].hit_rate, r[i].ttft_mean_ms, r[i].ttft_p99_ms, r[i].e2e_mean_ms,
			r[i].output_tokens_per_s);
	}
}

void qual_report_json(FILE *f, const struct qual_settings *s, const struct qual_result *r)
{
	fprintf(f, "{\"bench\":\"quality\",\"policy\":\"%s\",\"ran\":%s,\"prefill_workers\":%u,"
		   "\"decode_workers\":%u,\"aggregated_workers\":%u,\"speedup\":%g,"
		   "\"clock\":\"engine\",\"records\":%" PRIu64,
		r->policy, r->ran ? "true" : "false", r->pools.prefill, r->pools.decode,
		r->pools.aggregated, s->speedup, s->reuse.records);
	if (r->ran)
		fprintf(f, ",\"requests\":%" PRIu64 ",\"completed\":%" PRIu64 ",\"errors\":%" PRIu64
			   ",\"hit_rate\":%.4f,\"prompt_tokens\":%" PRIu64
			   ",\"cached_tokens\":%" PRIu64 ",\"ttft_mean_ms\":%.3f,"
			   "\"ttft_p50_ms\":%.3f,\"ttft_p99_ms\":%.3f,"
			   "\"e2e_mean_ms\":%.3f,\"e2e_p99_ms\":%.3f,\"output_tokens_per_s\":%.3f,"
			   "\"disagg\":%" PRIu64 ",\"fallback\":%" PRIu64 ",\"wall_s\":%.3f",
			r->requests, r->completed, r->errors, r->hit_rate, r->prompt_tokens,
			r->cached_tokens, r->ttft_mean_ms, r->ttft_p50_ms, r->ttft_p99_ms,
			r->e2e_mean_ms, r->e2e_p99_ms, r->output_tokens_per_s, r->disagg,
			r->fallback, r->wall_s);
	fprintf(f, "}\n");
}

void qual_report_md(FILE *f, const struct qual_settings *s, const struct qual_result *r,
		    uint32_t n, const char *command)
{
	fprintf(f, "# pdbench quality: routing policies on one trace\n\n    %s\n\n", command);
	describe(f, s, "- ");
	fprintf(f, "\n| policy | workers | requests | errors | KV hit rate | TTFT mean ms | "
		   "TTFT p50 ms | TTFT p99 ms | e2e mean ms | e2e p99 ms | output tokens/s |\n"
		   "|---|---|---|---|---|---|---|---|---|---|---|\n");
	for (uint32_t i = 0; i < n; i++) {
		char w[32];

		workers_of(&r[i], w, sizeof(w));
		if (!r[i].ran) {
			fprintf(f, "| %s | %s | failed | | | | | | | | |\n", r[i].policy, w);
			continue;
		}
		fprintf(f, "| %s | %s | %" PRIu64 " | %" PRIu64 " | %.1f%% | %.1f | %.1f | %.1f | "
			   "%.1f | %.1f | %.1f |\n", r[i].policy, w, r[i].requests, r[i].errors,
			100 * r[i].hit_rate, r[i].ttft_mean_ms, r[i].ttft_p50_ms, r[i].ttft_p99_ms,
			r[i].e2e_mean_ms, r[i].e2e_p99_ms, r[i].output_tokens_per_s);
	}
	fprintf(f, "\nKV hit rate: cached over prompt tokens of completed requests, as the "
		   "router's DONE frames report them. Latency is from each request's scheduled "
		   "time (the trace's timestamp), so queueing counts. Output tokens/s: tokens "
		   "received over the whole run, drain included.\n");
}

void qual_plot_data(FILE *f, const struct qual_result *r, uint32_t n)
{
	fprintf(f, "# row policy hit_rate_pct ttft_mean_ms ttft_p99_ms\n");
	for (uint32_t i = 0, row = 0; i < n; i++)
		if (r[i].ran)
			fprintf(f, "%u %s %.2f %.3f %.3f\n", row++, r[i].policy,
				100 * r[i].hit_rate, r[i].ttft_mean_ms, r[i].ttft_p99_ms);
}

void qual_plot_script(FILE *f)
{
	fprintf(f, "# pdbench quality: run as `gnuplot quality.gp` in this directory.\n"
		   "set terminal png size 900,500\nset grid ytics\nset yrange [0:1<*]\n"
		   "set style fill solid 0.6 border -1\nset boxwidth 0.6\n"
		   "set output 'hit_rate.png'\nset title 'KV hit rate by routing policy'\n"
		   "set ylabel 'cached / prompt tokens (%%)'\n"
		   "plot 'quality.dat' using 1:3:xtic(2) with boxes notitle\n"
		   "set output 'ttft.png'\n"
		   "set title 'time to first token by routing policy (engine clock)'\n"
		   "set ylabel 'ms (log scale)'\nset key top left\nset logscale y\n"
		   "set yrange [*:*]\n"
		   "set style data histograms\nset style histogram clustered gap 1\n"
		   "plot 'quality.dat' using 4:xtic(2) title 'mean', '' using 5 title 'p99'\n");
}
