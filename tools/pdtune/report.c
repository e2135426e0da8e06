/*
 * Ranking and printing the candidates (report.h). Runs on pdtune's main thread after the
 * measurements; the ranking is a stable insertion sort, as there are at most PT_MAX_CANDS.
 */
#include <inttypes.h>
#include <string.h>

#include <json.h>

#include "report.h"

#define CPUS_MAX (DP_PIN_MAX_CORES * 12)

uint64_t pt_score_ns(const struct pt_cand *c)
{
	if (!c->fig.route)
		return UINT64_MAX;
	return c->fig.route_p99_ns + (c->fig.mailbox ? 2 * c->fig.mbox_p99_ns : 0);
}

/* True when @a goes before @b. */
static bool better(const struct pt_cand *a, const struct pt_cand *b)
{
	uint64_t sa = pt_score_ns(a), sb = pt_score_ns(b);

	if (a->fig.route != b->fig.route)
		return a->fig.route;
	if (a->fig.load && b->fig.load && a->fig.load_rps != b->fig.load_rps)
		return a->fig.load_rps > b->fig.load_rps;
	if (a->fig.load != b->fig.load)
		return a->fig.load;
	if (sa != sb)
		return sa < sb;
	return a->order < b->order;
}

void pt_rank(struct pt_cand *c, uint32_t n)
{
	for (uint32_t i = 1; i < n; i++) {
		struct pt_cand x = c[i];
		uint32_t j = i;

		for (; j > 0 && better(&x, &c[j - 1]); j--)
			c[j] = c[j - 1];
		c[j] = x;
	}
}

size_t pt_flags(const struct pt_cand *c, char *buf, size_t len)
{
	char cpus[CPUS_MAX];
	int n;

	pt_cpu_list(c->place.core_cpu, c->place.ncores, cpus, sizeof(cpus));
	n = snprintf(buf, len, "--cpus %s --control-cpu %d", cpus, c->place.control_cpu);
	return n > 0 ? (size_t)n : 0;
}

/* @v formatted by @fmt, or "-" when @have is false, right-aligned in @w columns. */
static void cell(FILE *f, int w, bool have, double v, const char *fmt)
{
	char s[32];

	if (have)
		snprintf(s, sizeof(s), fmt, v);
	else
		snprintf(s, sizeof(s), "-");
	fprintf(f, " %*s", w, s);
}

static void print_row(FILE *f, const struct pt_cand *c, uint32_t i, bool ranked)
{
	const struct pt_figures *m = &c->fig;
	char cpus[CPUS_MAX], mbox[48] = "-", ctl[16], worker[16] = "-";

	pt_cpu_list(c->place.core_cpu, c->place.ncores, cpus, sizeof(cpus));
	if (m->mailbox)
		snprintf(mbox, sizeof(mbox), "%" PRIu64 "/%" PRIu64, m->mbox_p50_ns,
			 m->mbox_p99_ns);
	snprintf(ctl, sizeof(ctl), "%d%s", c->place.control_cpu,
		 c->place.shared_control ? "*" : "");
	if (c->worker_cpu >= 0)
		snprintf(worker, sizeof(worker), "%d", c->worker_cpu);
	fprintf(f, "%3u%s %-16s", i + 1, ranked ? "." : " ", c->name);
	cell(f, 9, m->route, m->route_p99_ns / 1e3, "%.2f");
	fprintf(f, " %13s", mbox);
	cell(f, 10, m->load, m->load_rps, "%.0f");
	cell(f, 9, m->load, m->load_e2e_p99_us, "%.1f");
	fprintf(f, "  %-7s %-6s %s\n", ctl, worker, cpus);
}

static void print_legend(const struct pt_proposal *p, FILE *f)
{
	bool shared = false;

	fprintf(f, "\n");
	for (uint32_t i = 0; i < p->n; i++) {
		const struct pt_cand *c = &p->cand[i];

		fprintf(f, "  %-16s %s%s%s%s\n", c->name, c->why, c->also[0] ? " (also: " : "",
			c->also, c->also[0] ? ")" : "");
		if (c->fig.error[0])
			fprintf(f, "  %-16s not measured in full: %s\n", "", c->fig.error);
		shared |= c->place.shared_control != 0;
	}
	if (shared)
		fprintf(f, "  * the control thread shares a physical core with a dataplane core\n");
	for (uint32_t i = 0; i < p->nnotes; i++)
		fprintf(f, "  note: %s\n", p->note[i]);
}

/* How pdrouter's own placement compares with the best, by the figure the ranking used. */
static void print_versus_auto(const struct pt_proposal *p, FILE *f)
{
	const struct pt_cand *best = &p->cand[0], *a = NULL;
	bool load = true;

	for (uint32_t i = 0; i < p->n; i++) {
		if (!strcmp(p->cand[i].name, "auto"))
			a = &p->cand[i];
		load &= p->cand[i].fig.load;
	}
	if (!load)
		fprintf(f,
			"  note: without --load the control thread's cpu is not measured;\n"
			"        candidates differing only there tie (the first proposed wins)\n");
	if (!a || a == best || !a->fig.route)
		return;
	if (load && best->fig.load_rps > 0)
		fprintf(f,
			"  auto (pdrouter's default) serves %.1f%% fewer requests a second "
			"than %s\n",
			100 * (1 - a->fig.load_rps / best->fig.load_rps), best->name);
	else if (pt_score_ns(best) > 0)
		fprintf(f,
			"  auto (pdrouter's default) scores %.1f%% above %s (route p99 + 2 x "
			"mailbox p99)\n",
			100.0 * ((double)pt_score_ns(a) / (double)pt_score_ns(best) - 1),
			best->name);
}

void pt_print_table(const struct pt_proposal *p, bool ranked, FILE *f)
{
	char flags[CPUS_MAX + 64];

	fprintf(f, "%4s %-16s %9s %13s %10s %9s  %-7s %-6s %s\n", ranked ? "rank" : "#",
		"candidate", "route p99", "mailbox", "load", "load e2e", "control", "worker",
		"dataplane cpus");
	fprintf(f, "%4s %-16s %9s %13s %10s %9s\n", "", "", "us", "p50/p99 ns", "req/s", "p99 us");
	for (uint32_t i = 0; i < p->n; i++)
		print_row(f, &p->cand[i], i, ranked);
	print_legend(p, f);
	if (ranked && p->n)
		print_versus_auto(p, f);
	if (ranked && p->n && p->cand[0].fig.route) {
		pt_flags(&p->cand[0], flags, sizeof(flags));
		fprintf(f, "\nbest: %s\n  pdrouter %s\n", p->cand[0].name, flags);
	}
}

/* @s as a JSON string, escaped by json-c. */
static void json_str(FILE *f, const char *s)
{
	struct json_object *o = json_object_new_string(s);

	fputs(o ? json_object_to_json_string_ext(o, JSON_C_TO_STRING_PLAIN) : "\"\"", f);
	json_object_put(o);
}

/* "a, b" as ["a","b"]. */
static void json_names(FILE *f, const char *list)
{
	char name[PT_NAME_LEN];
	const char *s = list;
	bool first = true;

	fputc('[', f);
	while (*s) {
		size_t n = strcspn(s, ",");

		snprintf(name, sizeof(name), "%.*s", (int)n, s);
		fputs(first ? "" : ",", f);
		json_str(f, name);
		first = false;
		s += n;
		s += strspn(s, ", ");
	}
	fputc(']', f);
}

static void json_u64(FILE *f, const char *key, bool have, uint64_t v)
{
	if (have)
		fprintf(f, ",\"%s\":%" PRIu64, key, v);
	else
		fprintf(f, ",\"%s\":null", key);
}

static void json_dbl(FILE *f, const char *key, bool have, double v)
{
	if (have)
		fprintf(f, ",\"%s\":%.1f", key, v);
	else
		fprintf(f, ",\"%s\":null", key);
}

static void json_cand(FILE *f, const struct pt_cand *c, uint32_t i, bool ranked)
{
	const struct pt_figures *m = &c->fig;
	char flags[CPUS_MAX + 64];

	pt_flags(c, flags, sizeof(flags));
	fprintf(f, ranked ? "{\"rank\":%u" : "{\"rank\":null", i + 1);
	fputs(",\"name\":", f);
	json_str(f, c->name);
	fputs(",\"also\":", f);
	json_names(f, c->also);
	fputs(",\"why\":", f);
	json_str(f, c->why);
	fputs(",\"cpus\":[", f);
	for (uint32_t k = 0; k < c->place.ncores; k++)
		fprintf(f, "%s%d", k ? "," : "", c->place.core_cpu[k]);
	fprintf(f, "],\"control_cpu\":%d,\"shared_control\":%s", c->place.control_cpu,
		c->place.shared_control ? "true" : "false");
	if (c->worker_cpu >= 0)
		fprintf(f, ",\"worker_cpu\":%d,\"flags\":", c->worker_cpu);
	else
		fputs(",\"worker_cpu\":null,\"flags\":", f);
	json_str(f, flags);
	json_u64(f, "route_p50_ns", m->route, m->route_p50_ns);
	json_u64(f, "route_p99_ns", m->route, m->route_p99_ns);
	json_u64(f, "mailbox_p50_ns", m->mailbox, m->mbox_p50_ns);
	json_u64(f, "mailbox_p99_ns", m->mailbox, m->mbox_p99_ns);
	json_dbl(f, "load_requests_per_s", m->load, m->load_rps);
	json_dbl(f, "load_e2e_p99_us", m->load, m->load_e2e_p99_us);
	json_u64(f, "score_ns", m->route, pt_score_ns(c));
	fputs(",\"error\":", f);
	if (m->error[0])
		json_str(f, m->error);
	else
		fputs("null", f);
	fputs("}\n", f);
}

void pt_print_json(const struct pt_proposal *p, bool ranked, FILE *f)
{
	for (uint32_t i = 0; i < p->n; i++)
		json_cand(f, &p->cand[i], i, ranked);
}
