/*
 * pdbench route: latency of one routing decision, from token ids to a committed choice
 * (hashing, prefix-index query, in-flight dedup, scoring every target, load update), on one
 * core over a populated index with requests in flight, for a matrix of target counts and
 * prompt lengths.
 */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bench.h"
#include "hash.h"
#include "route.h"

#define BR_FAMILIES 64u	   /* distinct conversations the prompts come from */
#define BR_CACHED_FAMILIES 4u /* families each target holds in its KV cache */
#define BR_INFLIGHT 256u   /* requests in flight while measuring */

static const char usage[] =
	"usage: pdbench route [--targets N] [--prompt-tokens T] [--block-size B]\n"
	"                     [--decisions D] [--seed S] [--json]\n"
	"\n"
	"Times rt_route() on one core: a model with N aggregated targets whose KV caches hold\n"
	"prefixes of 64 conversations (all sharing a system prompt of T/8 tokens), 256 requests\n"
	"in flight, and prompts of T tokens that follow a conversation for a random number of\n"
	"blocks and then diverge. Each decision hashes, queries the index, scores every target\n"
	"and records its load; the oldest request is released after each one (not timed).\n"
	"Without --targets and --prompt-tokens, runs 8, 64, 256 and 1024 targets times 1k, 8k\n"
	"and 32k tokens.\n"
	"\n"
	"  -n, --targets N        routing targets (1..65535)\n"
	"  -t, --prompt-tokens T  prompt length in tokens\n"
	"  -b, --block-size B     tokens per block, a power of two up to 1024 (default 64)\n"
	"  -d, --decisions D      timed decisions per configuration (default 20000)\n"
	"  -S, --seed S           random seed (default 1)\n"
	"  -j, --json             one JSON object per configuration, one per line\n"
	"  -h, --help             this text\n";

struct br_opts {
	uint32_t targets, prompt_tokens, block_size, decisions, seed;
	int json;
};

struct br_result {
	uint64_t p50_ns, p99_ns, p999_ns, max_ns;
	double decisions_per_s, mean_overlap;
	uint64_t blocks_untracked; /* must be 0: every block was deduplicated */
};

static uint64_t br_rand(uint64_t *s)
{
	uint64_t x = (*s += 0x9E3779B97F4A7C15ull);

	x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
	x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
	return x ^ (x >> 31);
}

static int br_parse(int argc, char **argv, struct br_opts *o)
{
	static const struct option longopts[] = {
		{"targets", required_argument, NULL, 'n'},
		{"prompt-tokens", required_argument, NULL, 't'},
		{"block-size", required_argument, NULL, 'b'},
		{"decisions", required_argument, NULL, 'd'},
		{"seed", required_argument, NULL, 'S'},
		{"json", no_argument, NULL, 'j'},
		{"help", no_argument, NULL, 'h'},
		{0},
	};
	int c;

	while ((c = getopt_long(argc, argv, "n:t:b:d:S:jh", longopts, NULL)) != -1) {
		int err = 0;

		switch (c) {
		case 'n':
			err = bench_parse_u32("targets", optarg, 1, PDX_TARGETS_LIMIT, &o->targets);
			break;
		case 't':
			err = bench_parse_u32("prompt-tokens", optarg, 1, 1u << 20,
					      &o->prompt_tokens);
			break;
		case 'b':
			err = bench_parse_block_size(optarg, &o->block_size);
			break;
		case 'd':
			err = bench_parse_u32("decisions", optarg, 1, 1u << 26, &o->decisions);
			break;
		case 'S':
			err = bench_parse_u32("seed", optarg, 0, UINT32_MAX, &o->seed);
			break;
		case 'j':
			o->json = 1;
			break;
		case 'h':
			fputs(usage, stdout);
			return 1;
		default:
			fputs(usage, stderr);
			return -1;
		}
		if (err)
			return -1;
	}
	if (optind != argc) {
		fprintf(stderr, "pdbench route: unexpected argument '%s'\n", argv[optind]);
		return -1;
	}
	if (o->prompt_tokens && (o->prompt_tokens < o->block_size ||
				 o->prompt_tokens / o->block_size > PDX_MATCH_MAX_BLOCKS)) {
		fprintf(stderr, "pdbench route: --prompt-tokens must hold 1 to %u blocks\n",
			PDX_MATCH_MAX_BLOCKS);
		return -1;
	}
	return 0;
}

/* One configuration's world: index, router, core, conversations and the prompt buffer. */
struct br_world {
	const struct br_opts *o;
	uint32_t targets, tokens, blocks;
	struct pdx x;
	struct rt_router rt;
	struct rt_core core;
	uint32_t *family;  /* BR_FAMILIES conversations of @tokens tokens */
	uint32_t *prompt;  /* the request being routed */
	uint64_t *ext;	   /* STORED external ids scratch */
	rt_load_t inflight[BR_INFLIGHT];
	uint64_t rng;
};

/* A token id in a 151,936-word vocabulary (Qwen's), drawn from @s. */
static uint32_t br_token(uint64_t *s)
{
	return (uint32_t)(br_rand(s) % 151936u);
}

/* Token ids of conversation @f: a shared system prompt, then the conversation's own text. */
static void br_families(struct br_world *w)
{
	uint32_t system = w->tokens / 8;

	for (uint32_t f = 0; f < BR_FAMILIES; f++) {
		uint64_t shared = 0, own = f + 1ull;

		for (uint32_t i = 0; i < w->tokens; i++)
			w->family[(size_t)f * w->tokens + i] = br_token(i < system ? &shared : &own);
	}
}

/* Each target caches BR_CACHED_FAMILIES conversations to a random depth. */
static int br_populate(struct br_world *w)
{
	for (uint32_t t = 0; t < w->targets; t++) {
		for (uint32_t k = 0; k < BR_CACHED_FAMILIES; k++) {
			uint32_t f = (uint32_t)(br_rand(&w->rng) % BR_FAMILIES);
			uint32_t depth = 1 + (uint32_t)(br_rand(&w->rng) % w->blocks);
			long rc;

			for (uint32_t i = 0; i < depth; i++)
				w->ext[i] = (uint64_t)f << 32 | i; /* an engine's id names the prefix */
			rc = pdx_store_tokens(&w->x, t, NULL, w->ext, depth,
					      &w->family[(size_t)f * w->tokens], w->o->block_size,
					      DP_HASH_SEED);
			if (rc < 0 && rc != -EEXIST)
				return (int)rc;
		}
	}
	return 0;
}

/* Next prompt: a conversation followed for a random number of blocks, then new text. */
static void br_next_prompt(struct br_world *w)
{
	uint32_t f = (uint32_t)(br_rand(&w->rng) % BR_FAMILIES);
	uint32_t follow = (uint32_t)(br_rand(&w->rng) % (w->blocks + 1)) * w->o->block_size;

	if (follow > w->tokens)
		follow = w->tokens;
	memcpy(w->prompt, &w->family[(size_t)f * w->tokens], follow * sizeof(uint32_t));
	for (uint32_t i = follow; i < w->tokens; i++)
		w->prompt[i] = br_token(&w->rng);
}

static int br_setup(struct br_world *w)
{
	struct pdx_config xc = {.max_targets = w->targets, .max_readers = 2};
	struct rt_config cfg;
	struct rt_worker_spec spec = {
	    .model = "bench",
	    .type = RT_AGGREGATED,
	    .model_type = RT_MODEL_CHAT,
	    .block_size = w->o->block_size,
	    .kv_capacity_blocks = 65536,
	    .max_batched_tokens = 8192,
	    .dp_ranks = 1,
	};
	int rc;

	rt_config_default(&cfg);
	cfg.seed = w->o->seed;
	cfg.max_prompt_blocks = w->blocks;
	/* Room to deduplicate every block in flight: the run measures the full path. */
	cfg.max_active_blocks = BR_INFLIGHT * w->blocks > (1u << 18) ? BR_INFLIGHT * w->blocks : 0;
	if ((rc = pdx_init(&w->x, &xc)))
		return rc;
	if ((rc = rt_router_init(&w->rt, &cfg, &w->x)))
		return rc;
	for (uint32_t t = 0; t < w->targets; t++)
		if ((rc = rt_register(&w->rt, t, &spec, NULL, 0)))
			return rc;
	if ((rc = rt_core_init(&w->core, &w->rt, 0)))
		return rc;
	w->family = malloc((size_t)BR_FAMILIES * w->tokens * sizeof(uint32_t));
	w->prompt = malloc((size_t)w->tokens * sizeof(uint32_t));
	w->ext = malloc(((size_t)w->blocks + 1) * sizeof(uint64_t));
	if (!w->family || !w->prompt || !w->ext)
		return -ENOMEM;
	br_families(w);
	return br_populate(w);
}

static void br_teardown(struct br_world *w)
{
	rt_core_destroy(&w->core);
	rt_router_destroy(&w->rt);
	pdx_destroy(&w->x);
	free(w->family);
	free(w->prompt);
	free(w->ext);
}

/* Route @n requests, keeping BR_INFLIGHT in flight; time each rt_route() into @lat if set. */
static int br_route(struct br_world *w, uint32_t n, uint64_t *lat, uint64_t *overlap)
{
	struct rt_request rq = {.model = 0, .ntokens = w->tokens, .hash_seed = DP_HASH_SEED,
				.pin_target = RT_NO_PIN, .pin_prefill = RT_NO_PIN};
	struct rt_plan plan;

	rq.tokens = w->prompt;
	for (uint32_t i = 0; i < n; i++) {
		uint32_t slot = i % BR_INFLIGHT;
		uint64_t t0;
		int rc;

		br_next_prompt(w);
		if (w->inflight[slot])
			rt_release(&w->core, w->inflight[slot]);
		t0 = dp_now_ns();
		rc = rt_route(&w->core, &rq, &plan);
		if (lat)
			lat[i] = dp_now_ns() - t0;
		if (rc)
			return rc;
		*overlap += plan.first.overlap;
		w->inflight[slot] = plan.first.load;
	}
	return 0;
}

static int br_run(const struct br_opts *o, uint32_t targets, uint32_t tokens, struct br_result *r)
{
	struct br_world w = {.o = o, .targets = targets, .tokens = tokens,
			     .blocks = tokens / o->block_size, .rng = o->seed};
	uint64_t *lat = malloc((size_t)o->decisions * sizeof(uint64_t)), overlap = 0, sum = 0;
	int rc = lat ? br_setup(&w) : -ENOMEM;

	if (!rc)
		rc = br_route(&w, BR_INFLIGHT * 2, NULL, &overlap); /* warm up and fill */
	overlap = 0;
	if (!rc)
		rc = br_route(&w, o->decisions, lat, &overlap);
	if (!rc) {
		for (uint32_t i = 0; i < o->decisions; i++)
			sum += lat[i];
		bench_sort_u64(lat, o->decisions);
		r->p50_ns = bench_pct(lat, o->decisions, 500);
		r->p99_ns = bench_pct(lat, o->decisions, 990);
		r->p999_ns = bench_pct(lat, o->decisions, 999);
		r->max_ns = lat[o->decisions - 1];
		r->decisions_per_s = (double)o->decisions * 1e9 / (double)(sum ? sum : 1);
		r->mean_overlap = (double)overlap / o->decisions;
	}
	if (!rc) {
		struct rt_core_stats st;

		rt_core_stats(&w.core, &st);
		r->blocks_untracked = st.blocks_untracked;
	}
	br_teardown(&w);
	free(lat);
	return rc;
}

static void br_print(const struct br_opts *o, uint32_t targets, uint32_t tokens,
		     const struct br_result *r)
{
	if (o->json)
		printf("{\"targets\":%" PRIu32 ",\"prompt_tokens\":%" PRIu32
		       ",\"block_size\":%" PRIu32 ",\"decisions\":%" PRIu32 ",\"p50_ns\":%" PRIu64
		       ",\"p99_ns\":%" PRIu64 ",\"p999_ns\":%" PRIu64 ",\"max_ns\":%" PRIu64
		       ",\"decisions_per_s\":%.0f,\"mean_overlap_blocks\":%.1f"
		       ",\"blocks_untracked\":%" PRIu64 "}\n",
		       targets, tokens, o->block_size, o->decisions, r->p50_ns, r->p99_ns,
		       r->p999_ns, r->max_ns, r->decisions_per_s, r->mean_overlap,
		       r->blocks_untracked);
	else
		printf("%8" PRIu32 " %8" PRIu32 " %9.2f %9.2f %9.2f %12.0f %10.1f\n", targets,
		       tokens, r->p50_ns / 1e3, r->p99_ns / 1e3, r->p999_ns / 1e3,
		       r->decisions_per_s, r->mean_overlap);
	fflush(stdout);
}

int bench_route_main(int argc, char **argv)
{
	static const uint32_t matrix_targets[] = {8, 64, 256, 1024};
	static const uint32_t matrix_tokens[] = {1024, 8192, 32768};
	struct br_opts o = {.block_size = 64, .decisions = 20000, .seed = 1};
	int rc = br_parse(argc, argv, &o);

	if (rc)
		return rc > 0 ? BENCH_OK : BENCH_USAGE;
	if (!o.json)
		printf("pdbench route  block size %" PRIu32 ", %" PRIu32 " decisions each\n"
		       " targets   tokens   p50 us    p99 us  p99.9 us  decisions/s  overlap\n",
		       o.block_size, o.decisions);
	for (size_t i = 0; i < sizeof(matrix_targets) / sizeof(matrix_targets[0]); i++) {
		uint32_t targets = o.targets ? o.targets : matrix_targets[i];

		for (size_t j = 0; j < sizeof(matrix_tokens) / sizeof(matrix_tokens[0]); j++) {
			uint32_t tokens = o.prompt_tokens ? o.prompt_tokens : matrix_tokens[j];
			struct br_result r;

			rc = br_run(&o, targets, tokens, &r);
			if (rc) {
				fprintf(stderr, "pdbench route: %" PRIu32 " targets, %" PRIu32
						" tokens: %s\n", targets, tokens, strerror(-rc));
				return BENCH_FAILED;
			}
			br_print(&o, targets, tokens, &r);
			if (o.prompt_tokens)
				break;
		}
		if (o.targets)
			break;
	}
	return BENCH_OK;
}
