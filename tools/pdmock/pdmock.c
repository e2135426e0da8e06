/*
 * pdmock: a mock inference engine behind pdrouter (routing-semantics §7), built on libpdworker.
 * It keeps a KV cache (cache.h) whose STORED/REMOVED events go to the router, admits requests
 * under a token budget, a sequence limit and a KV watermark, and runs steps whose duration
 * follows the §7 polynomials divided by a speedup. Aggregated workers stream tokens; prefill
 * workers emit one token, model the KV transfer, and answer with params naming themselves and
 * the blocks; decode workers check they were given such params. Faults can be injected.
 *
 * Usage: pdmock --socket PATH [options]; pdmock --help lists them.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "cache.h"
#include "pdworker.h"

#define MK_MAX_PROMPT (1u << 16)

struct mk_opts {
	const char *socket, *model;
	uint32_t mode; /* PDW_PREFILL, PDW_DECODE or PDW_AGGREGATED */
	uint32_t block_size, capacity, max_running, max_batched_tokens;
	double watermark, speedup, kv_bytes_per_token, bandwidth;
	uint32_t fail_prefill_pct, die_after, stall_ms;
};

struct mk_seq {
	bool live, running;
	uint64_t request_id;
	uint32_t lane, max_tokens, generated, ntokens;
	uint32_t *prompt;
};

struct mk {
	struct mk_opts o;
	struct pdw w;
	struct mk_cache cache;
	struct mk_seq *seq; /* max_running slots */
	uint64_t served, rng;
};

static volatile sig_atomic_t stop;

static void on_signal(int sig)
{
	(void)sig;
	stop = 1;
}

static void on_stored(void *ctx, const uint64_t *parent, const uint64_t *ext,
		      const uint32_t *tokens, uint32_t n)
{
	struct mk *m = ctx;

	while (pdw_publish_stored(&m->w, 0, parent, ext, n, NULL, tokens) == -ENOBUFS)
		usleep(100); /* the router is behind: it drains every round */
}

static void on_removed(void *ctx, const uint64_t *ext, uint32_t n)
{
	struct mk *m = ctx;

	while (pdw_publish_removed(&m->w, 0, ext, n) == -ENOBUFS)
		usleep(100);
}

static uint32_t random_pct(struct mk *m)
{
	m->rng = m->rng * 6364136223846793005ull + 1442695040888963407ull;
	return (uint32_t)(m->rng >> 33) % 100;
}

/* An answer that must get through: wait while the lane is full. */
#define POST(call)                                          \
	do {                                                \
		while ((call) == -ENOBUFS && !stop)         \
			usleep(100);                        \
	} while (0)

static void seq_end(struct mk *m, struct mk_seq *s)
{
	mk_cache_release(&m->cache, (uint32_t)(s - m->seq));
	free(s->prompt);
	*s = (struct mk_seq){0};
}

/* Take a request: check it, copy the prompt out of the mailbox, queue it. */
static void take(struct mk *m, const struct pdw_request *r)
{
	struct mk_seq *s = NULL;

	for (uint32_t i = 0; i < m->o.max_running && !s; i++)
		if (!m->seq[i].live)
			s = &m->seq[i];
	if (!s || r->req.ntokens > MK_MAX_PROMPT) {
		POST(pdw_post_error(&m->w, r->lane, r->req.request_id, -EBUSY, "pdmock is full"));
		return;
	}
	if (m->o.mode == PDW_DECODE &&
	    (r->req.nparams < 7 || memcmp(r->params, "pdmock:", 7) != 0)) {
		POST(pdw_post_error(&m->w, r->lane, r->req.request_id, -EINVAL,
				    "decode without a prefill's params"));
		return;
	}
	if (m->o.mode == PDW_PREFILL && random_pct(m) < m->o.fail_prefill_pct) {
		POST(pdw_post_error(&m->w, r->lane, r->req.request_id, -EIO, "injected failure"));
		return;
	}
	*s = (struct mk_seq){.live = true, .request_id = r->req.request_id, .lane = r->lane,
			     .max_tokens = m->o.mode == PDW_PREFILL ? 1 : r->req.max_tokens,
			     .ntokens = r->req.ntokens,
			     .prompt = malloc(4 * (size_t)r->req.ntokens)};
	if (!s->prompt) {
		*s = (struct mk_seq){0};
		return;
	}
	memcpy(s->prompt, r->tokens, 4 * (size_t)r->req.ntokens); /* read once, then ours */
}

static void poll_requests(struct mk *m)
{
	struct pdw_request r;

	while (pdw_poll(&m->w, &r) == 0) {
		if (r.cancel) {
			for (uint32_t i = 0; i < m->o.max_running; i++)
				if (m->seq[i].live && m->seq[i].request_id == r.req.request_id)
					seq_end(m, &m->seq[i]);
		} else {
			take(m, &r);
		}
		pdw_done_with(&m->w, &r);
	}
}

/* Admit waiting sequences into the step; returns the ms their prefills add (§7). */
static double admit(struct mk *m)
{
	uint32_t budget = m->o.max_batched_tokens;
	double ms = 0;

	for (uint32_t i = 0; i < m->o.max_running; i++) {
		struct mk_seq *s = &m->seq[i];
		uint32_t cached, n;
		int rc;

		if (!s->live || s->running)
			continue;
		n = s->ntokens - mk_cache_lookup(&m->cache, s->prompt, s->ntokens) *
				     m->o.block_size;
		if (n > budget || mk_cache_used_fraction(&m->cache) > 1.0 - m->o.watermark)
			break;
		rc = mk_cache_acquire(&m->cache, i, s->prompt, s->ntokens, &cached);
		if (rc == -ENOSPC)
			break; /* no room in the cache yet: it waits */
		if (rc) { /* longer than the cache could ever hold */
			POST(pdw_post_error(&m->w, s->lane, s->request_id, rc,
					    "prompt longer than the KV cache"));
			seq_end(m, s);
			continue;
		}
		budget -= n;
		s->running = true;
		ms += 1.25e-6 * n * n + 0.0741 * n + 26.2;
	}
	return ms;
}

/* One token for every running sequence; finished ones answer and leave. */
static double generate(struct mk *m)
{
	double transfer_ms = 0;

	for (uint32_t i = 0; i < m->o.max_running; i++) {
		struct mk_seq *s = &m->seq[i];
		uint32_t tok = 1000 + s->generated;

		if (!s->running)
			continue;
		mk_cache_extend(&m->cache, i, tok); /* -ENOSPC: this token is not cached */
		s->generated++;
		if (m->o.mode == PDW_PREFILL) {
			char params[96];
			int n = snprintf(params, sizeof(params), "pdmock:worker=%u;blocks=%u",
					 m->w.worker, s->ntokens / m->o.block_size);

			transfer_ms += s->ntokens * m->o.kv_bytes_per_token / m->o.bandwidth * 1e3;
			POST(pdw_post_prefilled(&m->w, s->lane, s->request_id, tok, params,
						(uint32_t)n));
		} else {
			POST(pdw_post_tokens(&m->w, s->lane, s->request_id, &tok, 1));
			if (s->generated == s->max_tokens)
				POST(pdw_post_done(&m->w, s->lane, s->request_id, 1));
		}
		if (s->generated == s->max_tokens) {
			seq_end(m, s);
			if (m->o.die_after && ++m->served == m->o.die_after)
				_exit(3); /* injected: the engine dies with requests in flight */
		}
	}
	return transfer_ms;
}

/* One engine step: admit, decode, sleep for what it would take (§7 times / speedup). */
static void step(struct mk *m)
{
	double p = mk_cache_used_fraction(&m->cache);
	double ms = admit(m) + (-5.47 * p * p + 43.88 * p + 19.44);
	bool busy = false;

	for (uint32_t i = 0; i < m->o.max_running; i++)
		busy |= m->seq[i].running;
	if (!busy) {
		pdw_wait(&m->w, 10000000); /* idle: sleep on the doorbell */
		return;
	}
	ms += generate(m);
	usleep((useconds_t)(ms / m->o.speedup * 1000.0));
}

static const char usage[] =
	"usage: pdmock --socket PATH [--model NAME] [--mode aggregated|prefill|decode]\n"
	"              [--block-size 64] [--capacity 16384] [--max-running 256]\n"
	"              [--max-batched-tokens 8192] [--watermark 0.01] [--speedup 1]\n"
	"              [--fail-prefill PCT] [--die-after N] [--stall-ms MS]\n";

static int parse(int argc, char **argv, struct mk_opts *o)
{
	static const struct option opts[] = {
	    {"socket", 1, 0, 's'},     {"model", 1, 0, 'm'},	   {"mode", 1, 0, 'M'},
	    {"block-size", 1, 0, 'b'}, {"capacity", 1, 0, 'c'},	   {"max-running", 1, 0, 'r'},
	    {"max-batched-tokens", 1, 0, 't'}, {"watermark", 1, 0, 'w'}, {"speedup", 1, 0, 'x'},
	    {"fail-prefill", 1, 0, 'f'}, {"die-after", 1, 0, 'd'}, {"stall-ms", 1, 0, 'S'},
	    {"help", 0, 0, 'h'},	 {0}};
	int c;

	while ((c = getopt_long(argc, argv, "s:m:M:b:c:r:t:w:x:f:d:S:h", opts, NULL)) != -1) {
		switch (c) {
		case 's': o->socket = optarg; break;
		case 'm': o->model = optarg; break;
		case 'M':
			o->mode = !strcmp(optarg, "prefill") ? PDW_PREFILL
				  : !strcmp(optarg, "decode") ? PDW_DECODE
							       : PDW_AGGREGATED;
			break;
		case 'b': o->block_size = (uint32_t)atoi(optarg); break;
		case 'c': o->capacity = (uint32_t)atoi(optarg); break;
		case 'r': o->max_running = (uint32_t)atoi(optarg); break;
		case 't': o->max_batched_tokens = (uint32_t)atoi(optarg); break;
		case 'w': o->watermark = atof(optarg); break;
		case 'x': o->speedup = atof(optarg); break;
		case 'f': o->fail_prefill_pct = (uint32_t)atoi(optarg); break;
		case 'd': o->die_after = (uint32_t)atoi(optarg); break;
		case 'S': o->stall_ms = (uint32_t)atoi(optarg); break;
		case 'h': fputs(usage, stdout); exit(0);
		default: fputs(usage, stderr); return -1;
		}
	}
	if (!o->socket || !o->max_running || !(o->speedup > 0)) {
		fputs(usage, stderr);
		return -1;
	}
	return 0;
}

int main(int argc, char **argv)
{
	struct mk m = {.o = {.model = "pdmock", .mode = PDW_AGGREGATED, .block_size = 64,
			     .capacity = 16384, .max_running = 256, .max_batched_tokens = 8192,
			     .watermark = 0.01, .speedup = 1.0, .kv_bytes_per_token = 131072,
			     .bandwidth = 64e9},
		       .rng = 42};
	struct mk_cache_callbacks cb = {.ctx = &m, .stored = on_stored, .removed = on_removed};
	struct pdw_register_args a;
	uint32_t seq_blocks;
	int rc;

	if (parse(argc, argv, &m.o))
		return 2;
	a = (struct pdw_register_args){
	    .fixed = {.worker_type = m.o.mode,
		      .model_type = m.o.mode == PDW_PREFILL ? PDW_MODEL_EMPTY : PDW_MODEL_CHAT,
		      .needs = m.o.mode == PDW_PREFILL  ? PDW_NEEDS_DECODE
			       : m.o.mode == PDW_DECODE ? PDW_NEEDS_PREFILL
							: 0,
		      .block_size = m.o.block_size, .kv_capacity_blocks = m.o.capacity,
		      .max_batched_tokens = m.o.max_batched_tokens, .dp_ranks = 1},
	    .model = m.o.model,
	    .endpoint = "generate"};
	m.seq = calloc(m.o.max_running, sizeof(*m.seq));
	seq_blocks = MK_MAX_PROMPT / (m.o.block_size ? m.o.block_size : 1) + 64;
	if (seq_blocks > m.o.capacity)
		seq_blocks = m.o.capacity; /* a sequence cannot hold more than the cache */
	if (!m.seq || mk_cache_init(&m.cache, m.o.capacity, m.o.block_size, m.o.max_running,
				    seq_blocks, &cb)) {
		fprintf(stderr, "pdmock: bad cache configuration or out of memory\n");
		return 2;
	}
	if ((rc = pdw_connect(&m.w, m.o.socket)) || (rc = pdw_register(&m.w, &a, 5000))) {
		fprintf(stderr, "pdmock: %s%s%s\n", strerror(-rc), rc == -EPERM ? ": " : "",
			rc == -EPERM ? pdw_reason(&m.w) : "");
		return 1;
	}
	signal(SIGINT, on_signal);
	signal(SIGTERM, on_signal);
	while (!stop) {
		pdw_heartbeat(&m.w);
		if (pdw_control(&m.w) < 0)
			break; /* the router is gone */
		if (m.o.stall_ms)
			usleep(m.o.stall_ms * 1000u); /* injected: a slow engine */
		poll_requests(&m);
		step(&m);
		pdw_publish_load(&m.w, 0, m.cache.nused, 0);
	}
	pdw_close(&m.w);
	mk_cache_destroy(&m.cache);
	free(m.seq);
	return 0;
}
