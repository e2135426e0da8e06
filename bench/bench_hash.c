/*
 * pdbench hash: throughput of block hashing (dataplane/hash.h) on one core, the first step of
 * every routing decision. A prompt's local hashes should come at memory speed (XXH3 itself
 * runs above 20 GB/s), and the sequence chain at a few ns a block.
 */
#include <getopt.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>

#include "bench.h"
#include "hash.h"

static const char usage[] =
	"usage: pdbench hash [--tokens N] [--block-size B] [--seconds S] [--json]\n"
	"\n"
	"Hashes one prompt of N random tokens again and again for S seconds on this thread:\n"
	"dp_hash_blocks() (local hashes of the full blocks, read in place) and then\n"
	"dp_hash_sequence() (the sequence-hash chain). Reports GB/s of tokens hashed, ns a block\n"
	"for each step, and prompts/s for both together.\n"
	"\n"
	"  -t, --tokens N      prompt length in tokens (default 8192)\n"
	"  -b, --block-size B  tokens per block, a power of two up to 1024 (default 64)\n"
	"  -s, --seconds S     how long to run (default 1)\n"
	"  -j, --json          one JSON object on one line\n"
	"  -h, --help          this text\n";

struct hash_opts {
	uint32_t tokens, block_size;
	double seconds;
	int json;
};

static int parse(int argc, char **argv, struct hash_opts *o)
{
	static const struct option longopts[] = {
		{"tokens", required_argument, NULL, 't'},
		{"block-size", required_argument, NULL, 'b'},
		{"seconds", required_argument, NULL, 's'},
		{"json", no_argument, NULL, 'j'},
		{"help", no_argument, NULL, 'h'},
		{0},
	};
	int c;

	while ((c = getopt_long(argc, argv, "t:b:s:jh", longopts, NULL)) != -1) {
		int err = 0;

		switch (c) {
		case 't':
			err = bench_parse_u32("tokens", optarg, 1, 1u << 26, &o->tokens);
			break;
		case 'b':
			err = bench_parse_block_size(optarg, &o->block_size);
			break;
		case 's':
			err = bench_parse_seconds("seconds", optarg, &o->seconds);
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
		fprintf(stderr, "pdbench hash: unexpected argument '%s'\n", argv[optind]);
		return -1;
	}
	if (o->tokens < o->block_size) {
		fprintf(stderr, "pdbench hash: --tokens must hold at least one block\n");
		return -1;
	}
	return 0;
}

int bench_hash_main(int argc, char **argv)
{
	struct hash_opts o = {.tokens = 8192, .block_size = 64, .seconds = 1.0};
	int rc = parse(argc, argv, &o);

	if (rc)
		return rc > 0 ? BENCH_OK : BENCH_USAGE;

	size_t nblocks = o.tokens / o.block_size;
	uint32_t *tokens = malloc((size_t)o.tokens * sizeof(*tokens));
	uint64_t *local = malloc(nblocks * sizeof(*local));
	uint64_t *seq = malloc(nblocks * sizeof(*seq));

	if (!tokens || !local || !seq) {
		fprintf(stderr, "pdbench hash: out of memory\n");
		return BENCH_FAILED;
	}
	for (uint32_t i = 0, x = 2463534242u; i < o.tokens; i++) {
		x ^= x << 13, x ^= x >> 17, x ^= x << 5; /* xorshift32: token ids to hash */
		tokens[i] = x % 151936;
	}

	uint64_t seed = dp_hash_seed(NULL, 0, NULL, 0), local_ns = 0, seq_ns = 0, rounds = 0;
	uint64_t end = dp_now_ns() + (uint64_t)(o.seconds * 1e9), check = 0;

	while (dp_now_ns() < end) {
		uint64_t t0 = dp_now_ns();

		dp_hash_blocks(tokens, o.tokens, o.block_size, seed, local);

		uint64_t t1 = dp_now_ns();

		dp_hash_sequence(local, nblocks, seq);
		seq_ns += dp_now_ns() - t1;
		local_ns += t1 - t0;
		check ^= seq[nblocks - 1];
		rounds++;
	}

	double bytes = (double)nblocks * o.block_size * sizeof(uint32_t) * rounds;
	double gbps = bytes / (double)local_ns;
	double local_blk = (double)local_ns / (double)(rounds * nblocks);
	double seq_blk = (double)seq_ns / (double)(rounds * nblocks);
	double prompts = (double)rounds * 1e9 / (double)(local_ns + seq_ns);

	if (o.json)
		printf("{\"tokens\":%" PRIu32 ",\"block_size\":%" PRIu32 ",\"blocks\":%zu,"
		       "\"local_gb_per_s\":%.2f,\"local_ns_per_block\":%.2f,"
		       "\"sequence_ns_per_block\":%.2f,\"prompts_per_s\":%.0f,\"check\":\"%016" PRIx64
		       "\"}\n",
		       o.tokens, o.block_size, nblocks, gbps, local_blk, seq_blk, prompts, check);
	else
		printf("pdbench hash  %" PRIu32 " tokens, %" PRIu32 "-token blocks (%zu), %.1f s\n"
		       "local hashes     %.2f GB/s  %.2f ns/block\n"
		       "sequence chain   %.2f ns/block\n"
		       "both             %.0f prompts/s\n",
		       o.tokens, o.block_size, nblocks, o.seconds, gbps, local_blk, seq_blk, prompts);
	free(tokens);
	free(local);
	free(seq);
	return BENCH_OK;
}
