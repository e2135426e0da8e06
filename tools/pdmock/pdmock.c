/*
 * pdmock: a mock inference engine behind pdrouter (routing-semantics §7), built on libpdworker.
 * It keeps a KV cache (cache.h) whose STORED/REMOVED events go to the router, admits requests
 * under a token budget, a sequence limit and a KV watermark, and runs steps whose duration
 * follows the §7 polynomials divided by a speedup. Aggregated workers stream tokens; prefill
 * workers emit one token, model the KV transfer, and answer with params naming themselves and
 * the blocks; decode workers check they were given such params. Faults can be injected.
 * When the router goes away, the engine and its cache stay: pdmock registers with the next
 * router on the same socket and dumps its cache to it, as it does when a router asks (DUMP).
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

#include "clock.h"
#include "cache.h"
#include "events.h"
#include "pdworker.h"

#define MK_MAX_PROMPT (1u << 17) /* the router's default prompt limit */

#define MK_MAX_DOMAINS 8

struct mk_opts {
	const char *socket, *model;
	uint32_t mode; /* PDW_PREFILL, PDW_DECODE or PDW_AGGREGATED */
	uint32_t block_size, capacity, max_running, max_batched_tokens;
	double watermark, speedup, kv_bytes_per_token, bandwidth;
	uint32_t fail_prefill_pct, die_after, stall_ms;
	uint32_t corrupt_after; /* after N requests, a garbage record on the response lane */
	uint32_t reconnect_ms; /* how long to look for a router after a hang-up; 0: exit */
	bool instant;	       /* answer every request at once, no engine model */
	const char *domain_names[MK_MAX_DOMAINS]; /* --domain rack=r1: topology domains */
	const char *domain_values[MK_MAX_DOMAINS];
	uint16_t ndomains;
};

struct mk_seq {
	bool live, running;
	bool transferred; /* decode mode: its KV came from the prefill worker, nothing to prefill */
	uint64_t request_id;
	uint64_t due_ns; /* not admitted before (--stall-ms) */
	uint32_t lane, max_tokens, generated, ntokens;
	uint32_t *prompt;
};

struct mk {
	struct mk_opts o;
	struct pdw w;
	struct mk_cache cache;
	struct mk_seq *seq; /* max_running slots */
	uint64_t served, rng;
	bool gone;	  /* the router hung up: register with the next one */
	bool dump_wanted; /* a DUMP came while waiting, or an event was lost: dump the cache */
};

static volatile sig_atomic_t stop;

static void on_signal(int sig)
{
	(void)sig;
	stop = 1;
}

/*
 * A ring toward the router is full: give the router 100 us to drain it (it does every round).
 * False when waiting is pointless: we are stopping, or the router hung up (then m->gone; a
 * full ring nobody reads would hold us forever). A DUMP read meanwhile is kept for later.
 */
static bool wait_for_router(struct mk *m)
{
	int rc;

	if (stop || m->gone)
		return false;
	rc = pdw_control(&m->w);
	if (rc < 0) {
		m->gone = true;
		return false;
	}
	m->dump_wanted |= rc == PDW_WANTS_DUMP;
	pdw_heartbeat(&m->w);
	usleep(100);
	return true;
}

/*
 * STORED for @n chained blocks under @parent, by @local hashes or else by @tokens, in as many
 * events as the event ring needs. Returns 0, or the error that lost the rest.
 */
static int publish_blocks(struct mk *m, const uint64_t *parent, const uint64_t *ext,
			  const uint64_t *local, const uint32_t *tokens, uint32_t n)
{
	uint32_t most = SHM_EV_MAX_BLOCKS;

	for (uint32_t at = 0; at < n;) {
		uint32_t k = n - at < most ? n - at : most;
		int rc = pdw_publish_stored(&m->w, 0, at ? &ext[at - 1] : parent, ext + at, k,
					    local ? local + at : NULL,
					    local ? NULL : tokens + (size_t)at * m->o.block_size);

		if (rc == -ENOBUFS && wait_for_router(m))
			continue;
		if (rc == -E2BIG && k > 1) { /* more than the ring holds at once */
			most = k / 2;
			continue;
		}
		if (rc)
			return rc;
		at += k;
	}
	return 0;
}

/* An event the router did not get leaves its index behind: resend everything (unless the
 * router is gone: the next one gets a dump anyway). */
static void lost_event(struct mk *m)
{
	if (!m->gone && !stop)
		m->dump_wanted = true;
}

static void on_stored(void *ctx, const uint64_t *parent, const uint64_t *ext,
		      const uint32_t *tokens, uint32_t n)
{
	struct mk *m = ctx;

	if (publish_blocks(m, parent, ext, NULL, tokens, n))
		lost_event(m);
}

static void on_removed(void *ctx, const uint64_t *ext, uint32_t n)
{
	struct mk *m = ctx;
	int rc;

	while ((rc = pdw_publish_removed(&m->w, 0, ext, n)) == -ENOBUFS && wait_for_router(m))
		;
	if (rc)
		lost_event(m);
}

static int dump_chain(void *ctx, const uint64_t *parent, const uint64_t *ext, const uint64_t *local,
		      uint32_t n)
{
	return publish_blocks(ctx, parent, ext, local, NULL, n);
}

/* CLEARED, then STORED for every cached block, parents first: the router rebuilds its copy of
 * our cache from nothing (after DUMP, or as a new router). */
static void dump(struct mk *m)
{
	int rc;

	m->dump_wanted = false;
	while ((rc = pdw_publish_cleared(&m->w, 0)) == -ENOBUFS && wait_for_router(m))
		;
	if (!rc)
		rc = mk_cache_dump(&m->cache, dump_chain, m);
	if (rc && !m->gone && !stop)
		fprintf(stderr, "pdmock: cache dump failed: %s\n", strerror(-rc));
}

static uint32_t random_pct(struct mk *m)
{
	m->rng = m->rng * 6364136223846793005ull + 1442695040888963407ull;
	return (uint32_t)(m->rng >> 33) % 100;
}

/* An answer that must get through: wait while the lane is full (and the router is there). */
#define POST(call)                                                                                 \
	do {                                                                                       \
		while ((call) == -ENOBUFS && wait_for_router(m))                                   \
			;                                                                          \
	} while (0)

static void seq_end(struct mk *m, struct mk_seq *s)
{
	mk_cache_release(&m->cache, (uint32_t)(s - m->seq));
	free(s->prompt);
	*s = (struct mk_seq){0};
}

/* --corrupt-after: a record of a type no router knows, which must cost this worker its
 * connection and nothing else. */
static void corrupt(struct mk *m, uint32_t lane)
{
	struct shm_ring *r = &m->w.mbox.resp[lane];
	int err;
	uint8_t *p = shm_ring_reserve(r, 0x7777, 0, 16, &err);

	if (!p)
		return;
	memset(p, 0xA5, 16);
	shm_ring_commit(r);
	shm_ring_publish(r);
}

/* --instant: the whole answer at once, for measuring the router rather than an engine. */
static void answer_now(struct mk *m, const struct pdw_request *r)
{
	static const char params[] = "pdmock:instant";
	uint32_t tok[SHM_LANE_MAX_TOKENS_PER_RECORD];
	uint32_t n = r->req.max_tokens;

	if (r->req.mode == SHM_LANE_PREFILL) {
		POST(pdw_post_prefilled(&m->w, r->lane, r->req.request_id, 1000, params,
					sizeof(params) - 1));
		return;
	}
	for (uint32_t done = 0; done < n;) {
		uint32_t k = n - done < SHM_LANE_MAX_TOKENS_PER_RECORD
				     ? n - done : SHM_LANE_MAX_TOKENS_PER_RECORD;

		for (uint32_t i = 0; i < k; i++)
			tok[i] = 1000 + done + i;
		POST(pdw_post_tokens(&m->w, r->lane, r->req.request_id, tok, k));
		done += k;
	}
	POST(pdw_post_done(&m->w, r->lane, r->req.request_id, 1));
}

/* Take a request: check it, copy the prompt out of the mailbox, queue it. */
static void take(struct mk *m, const struct pdw_request *r)
{
	struct mk_seq *s = NULL;

	if (m->o.instant) {
		answer_now(m, r);
		return;
	}
	for (uint32_t i = 0; i < m->o.max_running && !s; i++)
		if (!m->seq[i].live)
			s = &m->seq[i];
	if (!s || r->req.ntokens > MK_MAX_PROMPT) {
		POST(pdw_post_error(&m->w, r->lane, r->req.request_id, -EBUSY, "pdmock is full"));
		return;
	}
	/* A decode worker also serves decode-only fallbacks (aggregated mode: it prefills
	 * itself); a request in decode mode must carry a prefill's params. */
	if (r->req.mode == SHM_LANE_DECODE &&
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
			     .transferred = r->req.mode == SHM_LANE_DECODE,
			     .due_ns = dp_now_ns() + m->o.stall_ms * 1000000ull,
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
	uint64_t now = dp_now_ns();
	double ms = 0;

	for (uint32_t i = 0; i < m->o.max_running; i++) {
		struct mk_seq *s = &m->seq[i];
		uint32_t cached, n;
		int rc;

		if (!s->live || s->running || s->due_ns > now)
			continue; /* free, running, or held by --stall-ms */
		n = s->transferred ? 0
				   : s->ntokens - mk_cache_lookup(&m->cache, s->prompt, s->ntokens) *
							  m->o.block_size;
		/* A prompt over the whole budget still goes, alone in its step (what chunked
		 * prefill amounts to), or it would wait forever. */
		if ((n > budget && budget < m->o.max_batched_tokens) ||
		    mk_cache_used_fraction(&m->cache) > 1.0 - m->o.watermark)
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
		budget -= n < budget ? n : budget;
		s->running = true;
		if (!s->transferred) /* a transferred prompt's KV is already here: no prefill */
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
			uint32_t lane = s->lane;

			seq_end(m, s);
			m->served++;
			if (m->o.die_after && m->served == m->o.die_after)
				_exit(3); /* injected: the engine dies with requests in flight */
			if (m->o.corrupt_after && m->served == m->o.corrupt_after)
				corrupt(m, lane);
		}
	}
	return transfer_ms;
}

/*
 * One engine step: admit, run for what the step would take (§7 times / speedup), then answer.
 * Cancels that came while it ran end their sequences first, without an answer: a prefill
 * cancelled half way yields no token.
 */
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
	usleep((useconds_t)(ms / m->o.speedup * 1000.0));
	poll_requests(m);
	ms = generate(m); /* prefill workers: the KV transfer follows the step */
	if (ms > 0)
		usleep((useconds_t)(ms / m->o.speedup * 1000.0));
}

/*
 * The router hung up (or broke the protocol). Its requests go with it: their answers have
 * nowhere to go. The cache stays; register with the next router on the socket, trying every
 * 100 ms for up to --reconnect-ms, and dump the cache to it. Returns 0, or -1: give up.
 */
static int come_back(struct mk *m, const struct pdw_register_args *a)
{
	uint64_t end = dp_now_ns() + m->o.reconnect_ms * 1000000ull;
	int rc = 0, last = 0;

	if (!m->o.reconnect_ms)
		return -1;
	for (uint32_t i = 0; i < m->o.max_running; i++)
		if (m->seq[i].live)
			seq_end(m, &m->seq[i]);
	while (!stop) {
		rc = pdw_reconnect(&m->w, m->o.socket, a, 1000);
		if (!rc) {
			m->gone = false;
			dump(m);
			return 0;
		}
		if (rc == -EPERM && last != rc) /* say it once; a fixed router may take us */
			fprintf(stderr, "pdmock: refused: %s\n", pdw_reason(&m->w));
		last = rc;
		if (dp_now_ns() >= end)
			break;
		usleep(100000);
	}
	if (!stop)
		fprintf(stderr, "pdmock: no router took us back in %u ms: %s\n", m->o.reconnect_ms,
			strerror(-rc));
	return stop ? 0 : -1;
}

/* The engine's loop, until SIGTERM (0), or until the router is gone for good (0 when
 * --reconnect-ms is 0, as a router's hang-up is then the normal end; else 1). */
static int serve(struct mk *m, const struct pdw_register_args *a)
{
	while (!stop) {
		int rc;

		pdw_heartbeat(&m->w);
		rc = pdw_control(&m->w);
		m->gone |= rc < 0;
		if (m->gone) {
			if (come_back(m, a))
				return m->o.reconnect_ms ? 1 : 0;
			continue;
		}
		if (rc == PDW_WANTS_DUMP || m->dump_wanted)
			dump(m);
		poll_requests(m);
		step(m);
		pdw_publish_load(&m->w, 0, m->cache.nused, 0);
	}
	return 0;
}

static const char usage[] =
	"usage: pdmock --socket PATH [--model NAME] [--mode aggregated|prefill|decode]\n"
	"              [--block-size 64] [--capacity 16384] [--max-running 256]\n"
	"              [--max-batched-tokens 8192] [--watermark 0.01] [--speedup 1]\n"
	"              [--fail-prefill PCT] [--die-after N] [--stall-ms MS]\n"
	"              [--reconnect-ms 30000] [--domain NAME=VALUE]... [--instant]\n"
	"              [--corrupt-after N] [--kv-bytes-per-token 131072] [--bandwidth-gbps 64]\n"
	"  --die-after N     exit (status 3) once N requests are served, others in flight\n"
	"  --stall-ms MS     hold every request MS before starting it: a slow engine\n"
	"  --reconnect-ms MS after the router hangs up, look for a new one every 100 ms for\n"
	"                    up to MS, keeping the cache, and dump it there; 0: exit at once\n"
	"  --instant         answer every request at once (no engine model, no KV events):\n"
	"                    a worker for measuring the router itself\n"
	"  --corrupt-after N after N requests are served, write a garbage record on the\n"
	"                    response lane (the router must drop this worker only)\n"
	"  --kv-bytes-per-token B, --bandwidth-gbps G: the prefill's KV transfer time\n";

/* --domain NAME=VALUE: split in place; the strings live as long as argv. */
static int add_domain(struct mk_opts *o, char *arg)
{
	char *eq = strchr(arg, '=');

	if (!eq || eq == arg || !eq[1] || o->ndomains == MK_MAX_DOMAINS)
		return -1;
	*eq = 0;
	o->domain_names[o->ndomains] = arg;
	o->domain_values[o->ndomains++] = eq + 1;
	return 0;
}

static int parse(int argc, char **argv, struct mk_opts *o)
{
	static const struct option opts[] = {
	    {"socket", 1, 0, 's'},     {"model", 1, 0, 'm'},	   {"mode", 1, 0, 'M'},
	    {"block-size", 1, 0, 'b'}, {"capacity", 1, 0, 'c'},	   {"max-running", 1, 0, 'r'},
	    {"max-batched-tokens", 1, 0, 't'}, {"watermark", 1, 0, 'w'}, {"speedup", 1, 0, 'x'},
	    {"fail-prefill", 1, 0, 'f'}, {"die-after", 1, 0, 'd'}, {"stall-ms", 1, 0, 'S'},
	    {"domain", 1, 0, 'D'},	 {"reconnect-ms", 1, 0, 'R'}, {"instant", 0, 0, 'I'},
	    {"corrupt-after", 1, 0, 'C'}, {"kv-bytes-per-token", 1, 0, 'K'},
	    {"bandwidth-gbps", 1, 0, 'B'}, {"help", 0, 0, 'h'},
	    {0}};
	int c;

	while ((c = getopt_long(argc, argv, "s:m:M:b:c:r:t:w:x:f:d:S:D:R:IC:K:B:h", opts, NULL)) != -1) {
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
		case 'R': o->reconnect_ms = (uint32_t)atoi(optarg); break;
		case 'I': o->instant = true; break;
		case 'C': o->corrupt_after = (uint32_t)atoi(optarg); break;
		case 'K': o->kv_bytes_per_token = atof(optarg); break;
		case 'B': o->bandwidth = atof(optarg) * 1e9; break;
		case 'D':
			if (add_domain(o, optarg)) {
				fputs("pdmock: --domain takes NAME=VALUE (at most 8)\n", stderr);
				return -1;
			}
			break;
		case 'h': fputs(usage, stdout); exit(0);
		default: fputs(usage, stderr); return -1;
		}
	}
	if (!o->socket || !o->max_running || !(o->speedup > 0) || !(o->bandwidth > 0) ||
	    !(o->kv_bytes_per_token >= 0)) {
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
			     .bandwidth = 64e9, .reconnect_ms = 30000},
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
	    .endpoint = "generate",
	    .domain_names = m.o.domain_names,
	    .domain_values = m.o.domain_values,
	    .ndomains = m.o.ndomains};
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
	rc = serve(&m, &a);
	pdw_close(&m.w);
	mk_cache_destroy(&m.cache);
	free(m.seq);
	return rc;
}
