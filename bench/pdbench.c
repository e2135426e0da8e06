/*
 * pdbench: benchmarks of the router's parts, one subcommand each (`hash`, `index`, `route`,
 * `mailbox`).
 * Runs on the main thread; subcommands start their own threads where they measure concurrency.
 */
#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bench.h"
#include "hash.h"

struct bench_cmd {
	const char *name;
	int (*run)(int argc, char **argv);
	const char *summary;
};

static const struct bench_cmd bench_cmds[] = {
    {"hash", bench_hash_main, "block hashing throughput on one core (dp_hash_*)"},
    {"index", bench_index_main, "replay an .ops stream on the prefix index (pdx_*)"},
    {"route", bench_route_main, "routing decision latency over a populated index (rt_*)"},
    {"mailbox", bench_mailbox_main, "hand-off over a shared-memory lane ring (shm_ring_*)"},
    {"load", bench_load_main, "drive a running pdrouter: latency, throughput, KV hit rate"},
    {"quality", bench_quality_main, "compare the routing policies on a trace, end to end"},
};

#define BENCH_NCMDS (sizeof(bench_cmds) / sizeof(bench_cmds[0]))

static void bench_usage(FILE *out)
{
	fprintf(out, "usage: pdbench COMMAND [OPTIONS]\n"
		     "       pdbench COMMAND --help\n\n"
		     "Benchmarks of pdrouter's parts. Commands:\n");
	for (size_t i = 0; i < BENCH_NCMDS; i++)
		fprintf(out, "  %-10s %s\n", bench_cmds[i].name, bench_cmds[i].summary);
	fprintf(out, "\nExit status: 0 ok, 1 the run found errors (e.g. wrong answers), "
		     "2 bad usage or input.\n");
}

int bench_parse_u32(const char *name, const char *s, uint32_t min, uint32_t max, uint32_t *out)
{
	unsigned long long v;
	char *end;

	errno = 0;
	v = strtoull(s, &end, 10);
	if (errno != 0 || end == s || *end != '\0' || s[0] == '-' || v < min || v > max) {
		fprintf(stderr,
			"pdbench: --%s wants an integer in [%" PRIu32 ", %" PRIu32 "], not '%s'\n",
			name, min, max, s);
		return -EINVAL;
	}
	*out = (uint32_t)v;
	return 0;
}

int bench_parse_block_size(const char *s, uint32_t *out)
{
	if (bench_parse_u32("block-size", s, 1, DP_HASH_MAX_BLOCK, out))
		return -EINVAL;
	if (!dp_hash_block_size_ok(*out)) {
		fprintf(stderr, "pdbench: --block-size wants a power of two, not %s\n", s);
		return -EINVAL;
	}
	return 0;
}

int bench_parse_seconds(const char *name, const char *s, double *out)
{
	double v;
	char *end;

	errno = 0;
	v = strtod(s, &end);
	if (errno != 0 || end == s || *end != '\0' || !isfinite(v) || v <= 0 || v > 86400) {
		fprintf(stderr, "pdbench: --%s wants seconds in (0, 86400], not '%s'\n", name, s);
		return -EINVAL;
	}
	*out = v;
	return 0;
}

int main(int argc, char **argv)
{
	static char prog[64];

	if (argc < 2) {
		bench_usage(stderr);
		return BENCH_USAGE;
	}
	if (strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0 ||
	    strcmp(argv[1], "help") == 0) {
		bench_usage(stdout);
		return BENCH_OK;
	}
	for (size_t i = 0; i < BENCH_NCMDS; i++) {
		if (strcmp(argv[1], bench_cmds[i].name) == 0) {
			/* getopt_long() names argv[0] in its messages: "pdbench index: ..." */
			snprintf(prog, sizeof(prog), "pdbench %s", bench_cmds[i].name);
			argv[1] = prog;
			return bench_cmds[i].run(argc - 1, argv + 1);
		}
	}
	fprintf(stderr, "pdbench: unknown command '%s'\n\n", argv[1]);
	bench_usage(stderr);
	return BENCH_USAGE;
}
