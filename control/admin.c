/*
 * The admin interface (admin.h). Answers are built in a memory stream (open_memstream) and
 * sent whole; the socket is non-blocking and a client gets a short time to send its line, so
 * the control thread is never held by one.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <json.h>

#include "admin.h"
#include "hist.h"

#define CLIENT_WAIT_MS 100  /* for a client's command line */
#define EXPLAIN_WAIT_MS 200 /* for a core's explanation */
#define EXPLAIN_BYTES (64u << 10)

static const char *const stat_names[] = {
#define DP_STAT_NAME(name) #name,
    DP_CORE_STATS(DP_STAT_NAME)
#undef DP_STAT_NAME
};

int ctl_admin_open(struct ctl_admin *a, const char *path)
{
	struct sockaddr_un addr = {.sun_family = AF_UNIX};
	int rc;

	memset(a, 0, sizeof(*a));
	a->fd = -1;
	if (strlen(path) >= sizeof(addr.sun_path))
		return -EINVAL;
	strcpy(addr.sun_path, path);
	rc = ctl_unix_clear_stale(&addr, SOCK_STREAM);
	if (rc)
		return rc;
	a->fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
	if (a->fd < 0 || bind(a->fd, (struct sockaddr *)&addr, sizeof(addr)) || chmod(path, 0600) ||
	    listen(a->fd, 16)) {
		rc = -errno;
		ctl_admin_close(a);
		return rc;
	}
	a->path = path;
	for (uint32_t k = 0; k < SHM_MBOX_LANES_MAX; k++)
		a->explain[k].cap = EXPLAIN_BYTES;
	return 0;
}

void ctl_admin_close(struct ctl_admin *a)
{
	if (a->fd >= 0)
		close(a->fd);
	if (a->path)
		unlink(a->path);
	for (uint32_t k = 0; k < SHM_MBOX_LANES_MAX; k++)
		free(a->explain[k].buf);
	memset(a, 0, sizeof(*a));
	a->fd = -1;
}

static void json_hist(FILE *f, const char *name, const uint64_t *n)
{
	uint32_t last = 0;

	for (uint32_t b = 0; b < DP_HIST_BUCKETS; b++)
		if (n[b])
			last = b + 1;
	fprintf(f, "\"%s_p50_ns\":%llu,\"%s_p99_ns\":%llu,\"%s_p999_ns\":%llu,\"%s_hist\":[", name,
		(unsigned long long)dp_hist_quantile(n, 0.5), name,
		(unsigned long long)dp_hist_quantile(n, 0.99), name,
		(unsigned long long)dp_hist_quantile(n, 0.999), name);
	for (uint32_t b = 0; b < last; b++)
		fprintf(f, "%s%llu", b ? "," : "", (unsigned long long)n[b]);
	fputs("]", f);
}

static void json_stats(FILE *f, const struct dp_core_stats *st)
{
	const uint64_t *v = (const uint64_t *)st;

	fputc('{', f);
	for (size_t k = 0; k < sizeof(*st) / sizeof(uint64_t); k++)
		fprintf(f, "%s\"%s\":%llu", k ? "," : "", stat_names[k], (unsigned long long)v[k]);
	fputc('}', f);
}

static void counters(FILE *f, const struct ctl_admin_view *v)
{
	struct dp_core_stats sum = {0}, one;
	static const char *const lat_name[DP_LATS] = {"in", "out", "route", "send"};
	uint64_t sum_h[DP_LATS][DP_HIST_BUCKETS] = {{0}}, h[DP_LATS][DP_HIST_BUCKETS];
	const struct ctl_server_stats *s = &v->server->stats;

	fputs("{\"cores\":[", f);
	for (uint32_t k = 0; k < v->ncores; k++) {
		dp_core_stats(v->cores[k], &one);
		dp_core_latency(v->cores[k], h);
		for (size_t i = 0; i < sizeof(one) / sizeof(uint64_t); i++)
			((uint64_t *)&sum)[i] += ((uint64_t *)&one)[i];
		for (int l = 0; l < DP_LATS; l++)
			for (uint32_t b = 0; b < DP_HIST_BUCKETS; b++)
				sum_h[l][b] += h[l][b];
		fputs(k ? "," : "", f);
		json_stats(f, &one);
	}
	fputs("],\"total\":", f);
	json_stats(f, &sum);
	fprintf(f,
		",\"control\":{\"workers\":%u,\"accepted\":%llu,\"refused_peer\":%llu,"
		"\"refused_full\":%llu,\"registered\":%llu,\"refused_register\":%llu,"
		"\"malformed\":%llu,\"hangups\":%llu,\"leases_expired\":%llu,"
		"\"dumps_requested\":%llu,\"lanes_broken\":%llu},\"latency\":{",
		v->server->nconns, (unsigned long long)s->accepted,
		(unsigned long long)s->refused_peer, (unsigned long long)s->refused_full,
		(unsigned long long)s->registered, (unsigned long long)s->refused_register,
		(unsigned long long)s->malformed, (unsigned long long)s->hangups,
		(unsigned long long)s->leases_expired, (unsigned long long)s->dumps_requested,
		(unsigned long long)s->lanes_broken);
	for (int l = 0; l < DP_LATS; l++) {
		fputs(l ? "," : "", f);
		json_hist(f, lat_name[l], sum_h[l]);
	}
	fputs("}}\n", f);
}

/* @s as a JSON string, escaped by json-c (names come from workers: anything may be in them). */
static void json_str(FILE *f, const char *s)
{
	struct json_object *o = json_object_new_string(s);

	fputs(o ? json_object_to_json_string_ext(o, JSON_C_TO_STRING_PLAIN) : "\"\"", f);
	json_object_put(o);
}

static const struct ctl_conn *conn_of(const struct ctl_server *s, uint32_t worker)
{
	for (uint32_t i = 0; i < s->nconns; i++)
		if (s->conns[i].registered && s->conns[i].worker == worker)
			return &s->conns[i];
	return NULL;
}

static void workers(FILE *f, const struct ctl_admin_view *v)
{
	struct rt_router *rt = v->server->rt;
	bool first = true;

	fputs("{\"targets\":[", f);
	for (uint32_t t = 0; t < rt->cfg.max_targets; t++) {
		struct rt_target_info ti;
		const struct ctl_conn *c;
		uint64_t blocks, prefill;

		if (rt_target_info(rt, (uint16_t)t, &ti))
			continue;
		rt_target_load(rt, (uint16_t)t, &blocks, &prefill);
		c = conn_of(v->server, ti.worker);
		fprintf(f, "%s{\"target\":%u,\"worker\":%u,\"dp_rank\":%u,\"model\":",
			first ? "" : ",", t, ti.worker, ti.dp_rank);
		json_str(f, ti.model);
		fprintf(f,
			",\"type\":\"%s\",\"block_size\":%u,\"kv_capacity_blocks\":%llu,"
			"\"cached_blocks\":%zu,\"active_blocks\":%llu,\"prefill_tokens\":%llu,"
			"\"reported_used_blocks\":%llu,\"reported_prefill_tokens\":%llu,"
			"\"domains\":{",
			rt_worker_type_name(ti.type), ti.block_size,
			(unsigned long long)ti.kv_capacity_blocks,
			pdx_target_blocks(v->server->index, t), (unsigned long long)blocks,
			(unsigned long long)prefill, (unsigned long long)ti.reported_used_blocks,
			(unsigned long long)ti.reported_prefill_tokens);
		for (uint32_t d = 0; d < ti.ndomains; d++) {
			fputs(d ? "," : "", f);
			json_str(f, ti.domains[d].name);
			fputc(':', f);
			json_str(f, ti.domains[d].value);
		}
		fputc('}', f);
		if (c) {
			fputs(",\"endpoint\":", f);
			json_str(f, c->peer->endpoint);
		}
		if (c)
			fprintf(f,
				",\"kv_events\":%llu,\"kv_duplicates\":%llu,\"kv_gaps\":%llu,"
				"\"kv_refused\":%llu,\"load_reports\":%llu",
				(unsigned long long)c->kv.stats.events,
				(unsigned long long)c->kv.stats.duplicates,
				(unsigned long long)c->kv.stats.gaps,
				(unsigned long long)c->kv.stats.refused,
				(unsigned long long)c->kv.stats.loads);
		fputc('}', f);
		first = false;
	}
	fputs("],\"draining\":[", f);
	first = true;
	for (uint32_t i = 0; i < v->server->nconns; i++)
		if (v->server->conns[i].draining) {
			fprintf(f, "%s%u", first ? "" : ",", v->server->conns[i].worker);
			first = false;
		}
	fputs("]}\n", f);
}

static void models(FILE *f, const struct ctl_admin_view *v)
{
	struct rt_router *rt = v->server->rt;
	uint32_t n = rt_model_count(rt);

	fputs("{\"models\":[", f);
	for (uint32_t m = 0; m < n; m++) {
		uint32_t pool[RT_WORKER_TYPES];
		const char *name = rt_model_info(rt, m, pool);

		fputs(m ? ",{\"name\":" : "{\"name\":", f);
		json_str(f, name);
		fprintf(f, ",\"prefill\":%u,\"decode\":%u,\"aggregated\":%u,\"prefill_active\":%s}",
			pool[RT_PREFILL], pool[RT_DECODE], pool[RT_AGGREGATED],
			rt_disagg_active(rt, m) ? "true" : "false");
	}
	fputs("]}\n", f);
}

/* Has core @k written its answer to request @seq? */
static bool explained(const struct ctl_admin *a, uint32_t k, uint64_t seq)
{
	/* A10: the core's text after its sequence number; pairs with R10 in the core. */
	return atomic_load_explicit(&a->explain[k].done, memory_order_acquire) == seq;
}

/*
 * Ask every core for its last decisions, then wait for them all against one bound: the
 * control thread serves nothing else meanwhile, so the wait must not grow with the cores.
 */
static void explain(FILE *f, struct ctl_admin *a, const struct ctl_admin_view *v)
{
	uint64_t seq = ++a->explain_seq;
	const char *problem[SHM_MBOX_LANES_MAX] = {0};

	for (uint32_t k = 0; k < v->ncores; k++) {
		struct dp_explain_req *x = &a->explain[k];

		if (!x->buf && !(x->buf = malloc(x->cap)))
			problem[k] = "out of memory";
		else if (!dp_cmd_post(v->cmd[k], DP_CMD_EXPLAIN,
				      &(struct dp_cmd){.explain = x, .seq = seq}))
			problem[k] = "busy, try again";
	}
	for (uint32_t k = 0, waited = 0; k < v->ncores; k++)
		while (!problem[k] && !explained(a, k, seq) && waited++ < EXPLAIN_WAIT_MS)
			usleep(1000);
	for (uint32_t k = 0; k < v->ncores; k++) {
		const char *buf = a->explain[k].buf;

		if (problem[k])
			fprintf(f, "core %u: %s\n", k, problem[k]);
		else if (!explained(a, k, seq))
			fprintf(f, "core %u: no answer\n", k);
		else
			fprintf(f, "core %u:\n%s", k, buf[0] ? buf : "  no decision yet\n");
	}
}

static void drain(FILE *f, const struct ctl_admin_view *v, const char *arg)
{
	char *end;
	unsigned long w = strtoul(arg, &end, 10);
	int rc =
	    *arg && !*end && w <= UINT32_MAX ? ctl_server_drain(v->server, (uint32_t)w) : -EINVAL;

	if (rc)
		fprintf(f, "{\"error\":\"%s\"}\n",
			rc == -EINVAL	? "usage: drain WORKER"
			: rc == -ENOENT ? "no such worker"
					: strerror(-rc));
	else
		fprintf(f, "{\"drained\":%lu}\n", w);
}

static void answer(struct ctl_admin *a, const struct ctl_admin_view *v, int fd)
{
	char line[256], *out = NULL, *arg;
	size_t len = 0, got = 0;
	struct pollfd p = {.fd = fd, .events = POLLIN};
	FILE *f;

	while (got < sizeof(line) - 1 && !memchr(line, '\n', got)) {
		ssize_t n;

		if (poll(&p, 1, CLIENT_WAIT_MS) <= 0)
			return;
		n = read(fd, line + got, sizeof(line) - 1 - got);
		if (n <= 0)
			break;
		got += (size_t)n;
	}
	line[got] = 0;
	line[strcspn(line, "\r\n")] = 0;
	arg = strchr(line, ' ');
	if (arg)
		*arg++ = 0;
	f = open_memstream(&out, &len);
	if (!f)
		return;
	if (!strcmp(line, "counters"))
		counters(f, v);
	else if (!strcmp(line, "workers"))
		workers(f, v);
	else if (!strcmp(line, "models"))
		models(f, v);
	else if (!strcmp(line, "explain"))
		explain(f, a, v);
	else if (!strcmp(line, "drain"))
		drain(f, v, arg ? arg : "");
	else
		fputs("{\"error\":\"unknown command; try counters, workers, models, explain, "
		      "drain WORKER\"}\n",
		      f);
	fclose(f);
	for (size_t off = 0; off < len;) {
		ssize_t n = send(fd, out + off, len - off, MSG_NOSIGNAL);

		if (n < 0 && errno == EAGAIN &&
		    poll(&(struct pollfd){fd, POLLOUT, 0}, 1, CLIENT_WAIT_MS) > 0)
			continue;
		if (n <= 0)
			break;
		off += (size_t)n;
	}
	free(out);
}

void ctl_admin_poll(struct ctl_admin *a, const struct ctl_admin_view *v)
{
	int fd;

	if (a->fd < 0)
		return;
	while ((fd = accept4(a->fd, NULL, NULL, SOCK_CLOEXEC | SOCK_NONBLOCK)) >= 0) {
		answer(a, v, fd);
		close(fd);
	}
}
