/*
 * pdbench load: drive a running pdrouter with requests and measure what clients see.
 *
 * Requests come from a Mooncake trace (JSONL: timestamp ms, input_length, output_length,
 * hash_ids, one id per 512-token block; equal ids are the same tokens, so shared prefixes
 * stay shared) or are synthetic (prompts from a few shared prefixes). They are sent open loop
 * (--rate, Poisson arrivals; or the trace's own timestamps with --speedup) or closed loop
 * (--concurrency requests always outstanding), over --connections connections, from one
 * thread with poll(). Reported: throughput, client-side latency to the routing decision
 * (ROUTED), to the first token and to the end, the KV hit rate (cached / prompt tokens from
 * DONE), plans (disaggregated, fallback), errors by code, and, with --admin, the router's own
 * added latency over the run (its histograms before and after, dataplane/hist.h).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <inttypes.h>
#include <math.h>
#include <poll.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "bench.h"
#include "frame.h"
#include "hist.h"
#include "pdclient.h"

#define TRACE_BLOCK 512u
#define MAX_CONNS 256u
#define ERR_CODES 4096

struct load_opts {
	const char *router, *admin, *trace, *model;
	double rate, speedup, duration;
	uint32_t concurrency, connections, max_tokens, requests, prompt_tokens, prefixes;
	uint32_t max_input; /* trace records with longer prompts are skipped; 0: none */
	bool stream, peek, json;
};

struct trace_req {
	uint64_t at_ns; /* the trace's timestamp */
	uint32_t input, output, nids;
	uint32_t *ids;
};

struct track {
	uint64_t sent, routed, first, done;
	uint32_t prompt, cached;
	uint8_t plan, state; /* state: 0 free, 1 in flight, 2 done, 3 error */
};

struct lconn {
	int fd;
	uint8_t *out, *in;
	size_t out_len, out_cap, in_len, in_cap, out_off;
};

struct load {
	struct load_opts o;
	struct trace_req *reqs;
	uint32_t nreqs, next_req, skipped;
	struct lconn conns[MAX_CONNS];
	struct track *track;
	uint64_t ntrack, cap_track, inflight, completed, errors, tokens;
	uint64_t err_count[ERR_CODES];
	uint32_t *tokbuf;
	uint64_t rng;
};

/* ---- requests ---- */

static int parse_trace_line(const char *line, struct trace_req *r)
{
	const char *p;
	uint32_t cap = 0;

	p = strstr(line, "\"timestamp\":");
	r->at_ns = p ? (uint64_t)(strtod(p + 12, NULL) * 1e6) : 0;
	p = strstr(line, "\"input_length\":");
	if (!p)
		return -1;
	r->input = (uint32_t)strtoul(p + 15, NULL, 10);
	p = strstr(line, "\"output_length\":");
	r->output = p ? (uint32_t)strtoul(p + 16, NULL, 10) : 16;
	p = strstr(line, "\"hash_ids\":");
	if (!p || !(p = strchr(p, '[')))
		return -1;
	r->nids = 0;
	r->ids = NULL;
	for (p++; *p && *p != ']';) {
		char *end;
		unsigned long v = strtoul(p, &end, 10);

		if (end == p)
			return -1;
		if (r->nids == cap) {
			uint32_t *n = realloc(r->ids, (cap = cap ? 2 * cap : 64) * sizeof(*n));

			if (!n)
				return -1;
			r->ids = n;
		}
		r->ids[r->nids++] = (uint32_t)v;
		p = end;
		while (*p == ',' || *p == ' ')
			p++;
	}
	if (r->input > r->nids * TRACE_BLOCK)
		r->input = r->nids * TRACE_BLOCK;
	return r->input ? 0 : -1;
}

static int load_trace(struct load *l)
{
	FILE *f = fopen(l->o.trace, "r");
	char *line = NULL;
	size_t cap = 0, lineno = 0;
	uint32_t rcap = 0;

	if (!f) {
		fprintf(stderr, "pdbench load: %s: %s\n", l->o.trace, strerror(errno));
		return -EINVAL;
	}
	while (getline(&line, &cap, f) > 0) {
		lineno++;
		if (l->nreqs == rcap) {
			struct trace_req *n = realloc(l->reqs, (rcap = rcap ? 2 * rcap : 1024) *
								   sizeof(*n));
			if (!n)
				break;
			l->reqs = n;
		}
		if (parse_trace_line(line, &l->reqs[l->nreqs])) {
			fprintf(stderr, "pdbench load: %s:%zu: not a trace record\n", l->o.trace,
				lineno);
			free(line);
			fclose(f);
			return -EINVAL;
		}
		if (l->o.max_input && l->reqs[l->nreqs].input > l->o.max_input) {
			free(l->reqs[l->nreqs].ids);
			l->skipped++;
			continue;
		}
		l->nreqs++;
	}
	free(line);
	fclose(f);
	return l->nreqs ? 0 : -EINVAL;
}

/* Synthetic: --prefixes shared prefixes of half the prompt, then a unique tail. */
static int make_synthetic(struct load *l)
{
	uint32_t blocks = (l->o.prompt_tokens + TRACE_BLOCK - 1) / TRACE_BLOCK;

	l->nreqs = 4096;
	l->reqs = calloc(l->nreqs, sizeof(*l->reqs));
	if (!l->reqs)
		return -ENOMEM;
	for (uint32_t i = 0; i < l->nreqs; i++) {
		struct trace_req *r = &l->reqs[i];

		r->input = l->o.prompt_tokens;
		r->output = 16;
		r->nids = blocks;
		r->ids = malloc(blocks * sizeof(*r->ids));
		if (!r->ids)
			return -ENOMEM;
		for (uint32_t b = 0; b < blocks; b++)
			r->ids[b] = b < blocks / 2 ? (i % l->o.prefixes) * 1000000 + b
						   : 100000000 + i * blocks + b;
	}
	return 0;
}

/* ---- connections ---- */

static int connect_router(const char *addr)
{
	int fd;

	if (!strncmp(addr, "unix:", 5) || addr[0] == '/') {
		struct sockaddr_un un = {.sun_family = AF_UNIX};
		const char *path = addr[0] == '/' ? addr : addr + 5;

		snprintf(un.sun_path, sizeof(un.sun_path), "%s", path);
		fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
		if (fd < 0 || connect(fd, (struct sockaddr *)&un, sizeof(un)))
			goto fail;
	} else {
		struct pdc_client *c;
		int rc = pdc_connect(addr, &c);

		if (rc) {
			errno = -rc;
			return -1;
		}
		fd = dup(pdc_fd(c)); /* libpdclient resolves and tunes it; we drive it ourselves */
		pdc_close(c);
	}
	fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
	return fd;
fail:
	if (fd >= 0)
		close(fd);
	return -1;
}

static int reserve(uint8_t **p, size_t *cap, size_t need)
{
	if (need <= *cap)
		return 0;
	size_t n = *cap ? *cap : 65536;

	while (n < need)
		n *= 2;
	uint8_t *q = realloc(*p, n);

	if (!q)
		return -ENOMEM;
	*p = q;
	*cap = n;
	return 0;
}

/* Queue request number @k (of the workload) on a connection. */
static int send_request(struct load *l, uint64_t id)
{
	const struct trace_req *r = &l->reqs[l->next_req++ % l->nreqs];
	struct lconn *c = &l->conns[id % l->o.connections];
	struct pdc_request_args a = {.id = id, .model = l->o.model, .tokens = l->tokbuf,
				     .ntokens = r->input,
				     .max_tokens = l->o.max_tokens ? l->o.max_tokens : r->output,
				     .flags = (l->o.stream ? PDC_STREAM : 0) |
					      (l->o.peek ? PDC_PEEK : 0)};
	long n;

	if (!a.max_tokens)
		a.max_tokens = 1;
	pdc_request_defaults(&a.fixed);
	for (uint32_t t = 0; t < r->input; t++) /* equal hash ids, equal tokens */
		l->tokbuf[t] = r->ids[t / TRACE_BLOCK] * TRACE_BLOCK + t % TRACE_BLOCK;
	if (reserve(&c->out, &c->out_cap, c->out_len + pdc_request_bytes(&a)))
		return -ENOMEM;
	n = pdc_request_encode(c->out + c->out_len, c->out_cap - c->out_len, &a);
	if (n < 0)
		return (int)n;
	c->out_len += (size_t)n;
	if (id >= l->cap_track) {
		uint64_t cap = l->cap_track ? 2 * l->cap_track : 1 << 16;
		struct track *t = realloc(l->track, cap * sizeof(*t));

		if (!t)
			return -ENOMEM;
		memset(t + l->cap_track, 0, (cap - l->cap_track) * sizeof(*t));
		l->track = t;
		l->cap_track = cap;
	}
	l->track[id] = (struct track){.sent = bench_now_ns(), .prompt = r->input, .state = 1};
	l->ntrack = id + 1;
	l->inflight++;
	return 0;
}

static void on_event(struct load *l, const struct pdc_event *ev)
{
	struct track *t = ev->id < l->ntrack ? &l->track[ev->id] : NULL;
	uint64_t now = bench_now_ns();

	if (!t || t->state != 1)
		return;
	switch (ev->type) {
	case PDC_ROUTED:
		t->routed = now;
		t->plan = (uint8_t)ev->routed.plan;
		if (l->o.peek) {
			t->done = now;
			t->state = 2;
			l->inflight--;
			l->completed++;
		}
		break;
	case PDC_TOKENS:
		if (!t->first)
			t->first = now;
		l->tokens += ev->tokens.n;
		break;
	case PDC_DONE:
		t->done = now;
		t->cached = ev->done.cached_tokens;
		t->state = 2;
		l->inflight--;
		l->completed++;
		break;
	case PDC_ERROR:
		t->state = 3;
		l->inflight--;
		l->errors++;
		l->err_count[-ev->error.error < ERR_CODES ? -ev->error.error : 0]++;
		break;
	}
}

/* Read and handle what connection @c has. Returns 0 or -1 (the router closed it). */
static int pump_in(struct load *l, struct lconn *c)
{
	for (;;) {
		ssize_t n;
		size_t off = 0;

		if (reserve(&c->in, &c->in_cap, c->in_len + 65536))
			return -1;
		n = recv(c->fd, c->in + c->in_len, c->in_cap - c->in_len, 0);
		if (n == 0)
			return -1;
		if (n < 0)
			return errno == EAGAIN ? 0 : -1;
		c->in_len += (size_t)n;
		for (;;) {
			long len = dp_frame_length(c->in + off, c->in_len - off, 64u << 20);
			struct pdc_event ev;

			if (len < 0)
				return -1;
			if (!len || (size_t)len > c->in_len - off)
				break;
			if (pdc_event_decode(c->in + off, (size_t)len, &ev))
				return -1;
			if (ev.type == PDC_ERROR && ev.id == 0) {
				fprintf(stderr, "pdbench load: router closed a connection: %.*s\n",
					(int)ev.error.len, ev.error.msg);
				return -1;
			}
			on_event(l, &ev);
			off += (size_t)len;
		}
		memmove(c->in, c->in + off, c->in_len - off);
		c->in_len -= off;
	}
}

static int pump_out(struct lconn *c)
{
	while (c->out_off < c->out_len) {
		ssize_t n = send(c->fd, c->out + c->out_off, c->out_len - c->out_off, MSG_NOSIGNAL);

		if (n < 0)
			return errno == EAGAIN ? 0 : -1;
		c->out_off += (size_t)n;
	}
	c->out_off = c->out_len = 0;
	return 0;
}

/* ---- the router's own latency, over the admin socket ---- */

/* The router's histograms: [0] in, [1] out, [2] route (DP_HIST_BUCKETS each). */
static int admin_hist(const char *path, uint64_t (*h)[DP_HIST_BUCKETS])
{
	struct sockaddr_un un = {.sun_family = AF_UNIX};
	int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	char *buf = NULL, *p;
	size_t len = 0, cap = 0;
	ssize_t n;

	snprintf(un.sun_path, sizeof(un.sun_path), "%s", path);
	if (fd < 0 || connect(fd, (struct sockaddr *)&un, sizeof(un)) ||
	    send(fd, "counters\n", 9, MSG_NOSIGNAL) != 9)
		goto fail;
	do {
		if (len + 65536 > cap && reserve((uint8_t **)&buf, &cap, len + 65537))
			goto fail;
		n = recv(fd, buf + len, cap - len - 1, 0);
		len += n > 0 ? (size_t)n : 0;
	} while (n > 0);
	buf[len] = 0;
	close(fd);
	for (int k = 0; k < 3; k++) {
		static const char *const key[3] = {"\"in_hist\":[", "\"out_hist\":[",
						   "\"route_hist\":["};
		uint64_t *v = h[k];

		memset(v, 0, DP_HIST_BUCKETS * sizeof(*v));
		p = strstr(buf, key[k]);
		if (!p)
			goto fail_buf;
		p = strchr(p, '[') + 1;
		for (uint32_t b = 0; b < DP_HIST_BUCKETS && *p != ']'; b++) {
			v[b] = strtoull(p, &p, 10);
			if (*p == ',')
				p++;
		}
	}
	free(buf);
	return 0;
fail:
	if (fd >= 0)
		close(fd);
fail_buf:
	free(buf);
	return -1;
}

/* ---- report ---- */

static void report(struct load *l, uint64_t elapsed_ns, uint64_t (*h0)[DP_HIST_BUCKETS],
		   uint64_t (*h1)[DP_HIST_BUCKETS], bool have_router)
{
	uint64_t *routed = malloc(l->ntrack * sizeof(uint64_t)),
		 *ttft = malloc(l->ntrack * sizeof(uint64_t)),
		 *e2e = malloc(l->ntrack * sizeof(uint64_t));
	size_t nr = 0, nt = 0, ne = 0;
	uint64_t prompt = 0, cached = 0, plans[4] = {0}, d[3][DP_HIST_BUCKETS];
	double secs = (double)elapsed_ns / 1e9;

	for (uint64_t i = 1; i < l->ntrack && routed && ttft && e2e; i++) {
		const struct track *t = &l->track[i];

		if (t->state != 2)
			continue;
		if (t->routed)
			routed[nr++] = t->routed - t->sent;
		if (t->first)
			ttft[nt++] = t->first - t->sent;
		e2e[ne++] = t->done - t->sent;
		prompt += t->prompt;
		cached += t->cached;
		plans[t->plan & 3]++;
	}
	bench_sort_u64(routed, nr);
	bench_sort_u64(ttft, nt);
	bench_sort_u64(e2e, ne);
	for (uint32_t b = 0; b < DP_HIST_BUCKETS && have_router; b++)
		for (int k = 0; k < 3; k++)
			d[k][b] = h1[k][b] - h0[k][b];
#define US(v) ((double)(v) / 1e3)
	if (l->o.json) {
		printf("{\"bench\":\"load\",\"seconds\":%.3f,\"sent\":%" PRIu64 ",\"completed\":%" PRIu64
		       ",\"errors\":%" PRIu64 ",\"requests_per_s\":%.1f,\"tokens_per_s\":%.1f,"
		       "\"routed_p50_us\":%.1f,\"routed_p99_us\":%.1f,\"ttft_p50_us\":%.1f,"
		       "\"ttft_p99_us\":%.1f,\"e2e_p50_us\":%.1f,\"e2e_p99_us\":%.1f,"
		       "\"kv_hit_rate\":%.4f,\"disagg\":%" PRIu64 ",\"fallback\":%" PRIu64
		       ",\"aggregated\":%" PRIu64,
		       secs, l->ntrack ? l->ntrack - 1 : 0, l->completed, l->errors,
		       (double)l->completed / secs, (double)l->tokens / secs,
		       US(bench_pct(routed, nr, 500)), US(bench_pct(routed, nr, 990)),
		       US(bench_pct(ttft, nt, 500)), US(bench_pct(ttft, nt, 990)),
		       US(bench_pct(e2e, ne, 500)), US(bench_pct(e2e, ne, 990)),
		       prompt ? (double)cached / (double)prompt : 0.0, plans[PDC_PLAN_DISAGG],
		       plans[PDC_PLAN_FALLBACK], plans[PDC_PLAN_AGGREGATED]);
		if (have_router)
			printf(",\"router_route_p50_us\":%.2f,\"router_route_p99_us\":%.2f,"
			       "\"router_in_p50_us\":%.2f,\"router_in_p99_us\":%.2f,"
			       "\"router_out_p50_us\":%.2f,\"router_out_p99_us\":%.2f",
			       US(dp_hist_quantile(d[2], 0.5)), US(dp_hist_quantile(d[2], 0.99)),
			       US(dp_hist_quantile(d[0], 0.5)), US(dp_hist_quantile(d[0], 0.99)),
			       US(dp_hist_quantile(d[1], 0.5)), US(dp_hist_quantile(d[1], 0.99)));
		printf("}\n");
	} else {
		printf("requests: %" PRIu64 " sent, %" PRIu64 " completed, %" PRIu64
		       " errors in %.2f s: %.0f req/s, %.0f tokens/s\n",
		       l->ntrack ? l->ntrack - 1 : 0, l->completed, l->errors, secs,
		       (double)l->completed / secs, (double)l->tokens / secs);
		if (have_router)
			printf("routing decision (router, rt_route):       p50 %.2f us  p99 %.2f us\n",
			       US(dp_hist_quantile(d[2], 0.5)), US(dp_hist_quantile(d[2], 0.99)));
		printf("client send -> ROUTED (after any prefill): p50 %.1f us  p99 %.1f us\n",
		       US(bench_pct(routed, nr, 500)), US(bench_pct(routed, nr, 990)));
		if (nt)
			printf("time to first token:                      p50 %.1f us  p99 %.1f us\n",
			       US(bench_pct(ttft, nt, 500)), US(bench_pct(ttft, nt, 990)));
		printf("end to end:                               p50 %.1f us  p99 %.1f us\n",
		       US(bench_pct(e2e, ne, 500)), US(bench_pct(e2e, ne, 990)));
		if (have_router) {
			printf("router hand-off in (frame -> worker ring): p50 %.2f us  p99 %.2f us\n",
			       US(dp_hist_quantile(d[0], 0.5)), US(dp_hist_quantile(d[0], 0.99)));
			printf("router hand-off out (worker -> frame sent): p50 %.2f us  p99 %.2f us\n",
			       US(dp_hist_quantile(d[1], 0.5)), US(dp_hist_quantile(d[1], 0.99)));
		}
		printf("KV hit rate: %.1f%% of prompt tokens cached\n",
		       prompt ? 100.0 * (double)cached / (double)prompt : 0.0);
		printf("plans: %" PRIu64 " disaggregated, %" PRIu64 " fallback (decode-only), %" PRIu64
		       " aggregated\n", plans[PDC_PLAN_DISAGG], plans[PDC_PLAN_FALLBACK],
		       plans[PDC_PLAN_AGGREGATED]);
		for (int e = 0; e < ERR_CODES; e++)
			if (l->err_count[e])
				printf("errors: %" PRIu64 " x %s (-%d)\n", l->err_count[e],
				       strerror(e), e);
	}
	free(routed);
	free(ttft);
	free(e2e);
}

/* ---- main ---- */

static void usage(FILE *f)
{
	fprintf(f,
		"usage: pdbench load --router ADDR [--admin PATH] [--trace FILE [--speedup X]]\n"
		"                    [--rate R | --concurrency N] [--duration S] [--requests N]\n"
		"                    [--model NAME] [--max-tokens N] [--connections N] [--stream]\n"
		"                    [--peek] [--prompt-tokens N] [--prefixes N] [--max-input N]\n"
		"                    [--json]\n"
		"Drives a running pdrouter (ADDR: unix:PATH or HOST:PORT) and reports client\n"
		"latency, throughput and KV hit rate; with --admin, the router's own added latency.\n"
		"Default: closed loop, --concurrency 8, 5 s, synthetic 2048-token prompts.\n");
}

static int parse(int argc, char **argv, struct load_opts *o)
{
	static const struct option opts[] = {
		{"router", 1, 0, 'r'}, {"admin", 1, 0, 'a'}, {"trace", 1, 0, 't'},
		{"speedup", 1, 0, 'x'}, {"rate", 1, 0, 'R'}, {"concurrency", 1, 0, 'c'},
		{"duration", 1, 0, 'd'}, {"requests", 1, 0, 'n'}, {"model", 1, 0, 'm'},
		{"max-tokens", 1, 0, 'M'}, {"connections", 1, 0, 'C'}, {"stream", 0, 0, 's'},
		{"peek", 0, 0, 'p'}, {"prompt-tokens", 1, 0, 'P'}, {"prefixes", 1, 0, 'F'},
		{"max-input", 1, 0, 'I'}, {"json", 0, 0, 'j'}, {"help", 0, 0, 'h'}, {0}};
	int c;

	*o = (struct load_opts){.model = "pdmock", .duration = 5, .concurrency = 8,
				.connections = 4, .prompt_tokens = 2048, .prefixes = 8};
	optind = 1;
	while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
		int rc = 0;

		switch (c) {
		case 'r': o->router = optarg; break;
		case 'a': o->admin = optarg; break;
		case 't': o->trace = optarg; break;
		case 'm': o->model = optarg; break;
		case 's': o->stream = true; break;
		case 'p': o->peek = true; break;
		case 'j': o->json = true; break;
		case 'x': rc = bench_parse_seconds("speedup", optarg, &o->speedup); break;
		case 'R': rc = bench_parse_seconds("rate", optarg, &o->rate); break;
		case 'd': rc = bench_parse_seconds("duration", optarg, &o->duration); break;
		case 'c': rc = bench_parse_u32("concurrency", optarg, 1, 1 << 20, &o->concurrency);
			break;
		case 'n': rc = bench_parse_u32("requests", optarg, 1, 1u << 30, &o->requests);
			break;
		case 'M': rc = bench_parse_u32("max-tokens", optarg, 1, 1 << 20, &o->max_tokens);
			break;
		case 'C': rc = bench_parse_u32("connections", optarg, 1, MAX_CONNS,
					       &o->connections);
			break;
		case 'P': rc = bench_parse_u32("prompt-tokens", optarg, 1, 1 << 20,
					       &o->prompt_tokens);
			break;
		case 'F': rc = bench_parse_u32("prefixes", optarg, 1, 1 << 20, &o->prefixes);
			break;
		case 'I': rc = bench_parse_u32("max-input", optarg, 1, 1 << 30, &o->max_input);
			break;
		case 'h': usage(stdout); exit(0);
		default: usage(stderr); return -EINVAL;
		}
		if (rc)
			return rc;
	}
	if (!o->router) {
		fprintf(stderr, "pdbench load: --router is required\n");
		usage(stderr);
		return -EINVAL;
	}
	return 0;
}

/* The next arrival: Poisson at --rate, the trace's clock with --speedup, else none. */
static uint64_t next_arrival(struct load *l, uint64_t start, uint64_t prev)
{
	if (l->o.speedup > 0)
		return start + (uint64_t)((double)l->reqs[l->next_req % l->nreqs].at_ns /
					  l->o.speedup); /* one pass of the trace */
	l->rng = l->rng * 6364136223846793005ull + 1442695040888963407ull;
	return prev + (uint64_t)(-log(((double)(l->rng >> 11) + 0.5) / 9007199254740992.0) /
				 l->o.rate * 1e9);
}

int bench_load_main(int argc, char **argv)
{
	static struct load l;
	static uint64_t h0[3][DP_HIST_BUCKETS], h1[3][DP_HIST_BUCKETS];
	struct pollfd pfd[MAX_CONNS];
	uint64_t start, end, next, id = 1, max_in = 0, wait_ns;
	bool have_router, open_loop;
	int rc = parse(argc, argv, &l.o);

	if (rc)
		return 2;
	rc = l.o.trace ? load_trace(&l) : make_synthetic(&l);
	if (rc)
		return 2;
	if (l.skipped)
		fprintf(stderr, "pdbench load: %u trace records over --max-input %u tokens skipped\n",
			l.skipped, l.o.max_input);
	for (uint32_t i = 0; i < l.nreqs; i++)
		max_in = l.reqs[i].input > max_in ? l.reqs[i].input : max_in;
	l.tokbuf = malloc(max_in * sizeof(uint32_t));
	for (uint32_t k = 0; k < l.o.connections; k++) {
		l.conns[k].fd = connect_router(l.o.router);
		if (l.conns[k].fd < 0) {
			fprintf(stderr, "pdbench load: cannot connect to %s: %s\n", l.o.router,
				strerror(errno));
			return 2;
		}
	}
	have_router = l.o.admin && !admin_hist(l.o.admin, h0);
	if (l.o.admin && !have_router)
		fprintf(stderr, "pdbench load: no counters from %s; router latency not shown\n",
			l.o.admin);
	open_loop = l.o.rate > 0 || l.o.speedup > 0;
	start = bench_now_ns();
	end = start + (uint64_t)(l.o.duration * 1e9);
	next = open_loop ? next_arrival(&l, start, start) : start;
	for (;;) {
		uint64_t now = bench_now_ns();
		bool stop_sending = now >= end || (l.o.requests && id > l.o.requests) ||
				    (l.o.speedup > 0 && l.next_req >= l.nreqs);
		struct timespec ts;

		if (stop_sending && !l.inflight)
			break;
		if (now > end + 30ull * 1000000000ull) {
			fprintf(stderr, "pdbench load: %" PRIu64 " requests unanswered 30 s after "
					"the end\n", l.inflight);
			break;
		}
		while (!stop_sending &&
		       (open_loop ? now >= next : l.inflight < l.o.concurrency)) {
			if (send_request(&l, id++)) {
				fprintf(stderr, "pdbench load: out of memory\n");
				return 1;
			}
			if (open_loop)
				next = next_arrival(&l, start, next);
			if (l.o.requests && id > l.o.requests)
				break;
		}
		for (uint32_t k = 0; k < l.o.connections; k++) {
			if (pump_out(&l.conns[k])) {
				fprintf(stderr, "pdbench load: send: %s\n", strerror(errno));
				return 1;
			}
			pfd[k] = (struct pollfd){.fd = l.conns[k].fd,
						 .events = (short)(POLLIN | (l.conns[k].out_len
										 ? POLLOUT : 0))};
		}
		/* Sleep until the next arrival or an answer, to the nanosecond (ppoll), so the
		 * load generator does not take the CPU the router and workers need. */
		now = bench_now_ns();
		wait_ns = open_loop && !stop_sending ? (next > now ? next - now : 0)
			  : stop_sending || l.inflight >= l.o.concurrency ? 10000000 : 0;
		ts = (struct timespec){.tv_sec = (time_t)(wait_ns / 1000000000u),
				       .tv_nsec = (long)(wait_ns % 1000000000u)};
		if (ppoll(pfd, l.o.connections, &ts, NULL) < 0 && errno != EINTR)
			return 1;
		for (uint32_t k = 0; k < l.o.connections; k++)
			if ((pfd[k].revents & (POLLIN | POLLHUP | POLLERR)) &&
			    pump_in(&l, &l.conns[k])) {
				fprintf(stderr, "pdbench load: the router closed the connection\n");
				report(&l, bench_now_ns() - start, h0, h0, false);
				return 1;
			}
	}
	if (have_router && admin_hist(l.o.admin, h1))
		have_router = false;
	report(&l, bench_now_ns() - start, h0, h1, have_router);
	for (uint32_t k = 0; k < l.o.connections; k++) {
		close(l.conns[k].fd);
		free(l.conns[k].in);
		free(l.conns[k].out);
	}
	return l.errors ? 1 : 0;
}
