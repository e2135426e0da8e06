/*
 * pdbench internals shared by the subcommands: their entry points, the clock and argument
 * parsing. Each subcommand lives in bench_<target>.c; the main thread runs it.
 */
#ifndef PD_BENCH_BENCH_H
#define PD_BENCH_BENCH_H

#include <stddef.h>
#include <stdint.h>

#include "clock.h" /* dp_now_ns(): the clock every benchmark times with */

/* splitmix64's finaliser: every input bit moves every output bit (workloads, hash keys). */
static inline uint64_t bench_mix64(uint64_t x)
{
	x += 0x9e3779b97f4a7c15ull;
	x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
	x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
	return x ^ (x >> 31);
}

/* Exit statuses of every subcommand. */
enum { BENCH_OK = 0, BENCH_FAILED = 1, BENCH_USAGE = 2 };

/**
 * bench_hash_main - `pdbench hash`: block hashing throughput on one core.
 * @argc, @argv: the arguments from "hash" on.
 *
 * Returns BENCH_OK, BENCH_FAILED (out of memory) or BENCH_USAGE (bad arguments).
 */
int bench_hash_main(int argc, char **argv);

/**
 * bench_index_main - `pdbench index`: replay an .ops stream on the prefix index.
 * @argc, @argv: the arguments from "index" on.
 *
 * Returns BENCH_OK, BENCH_FAILED (mismatches, refused events, reader invariant violations,
 * writer errors or an error while running) or BENCH_USAGE (bad arguments or input file).
 */
int bench_index_main(int argc, char **argv);

/**
 * bench_route_main - `pdbench route`: routing decision latency over a populated index.
 * @argc, @argv: the arguments from "route" on.
 *
 * Returns BENCH_OK, BENCH_FAILED (a decision failed or out of memory) or BENCH_USAGE.
 */
int bench_route_main(int argc, char **argv);

/**
 * bench_mailbox_main - `pdbench mailbox`: hand-off over a lane ring, threads and processes.
 * @argc, @argv: the arguments from "mailbox" on.
 *
 * Returns BENCH_OK, BENCH_FAILED (a side failed or saw a wrong record) or BENCH_USAGE.
 */
int bench_mailbox_main(int argc, char **argv);

/**
 * bench_load_main - `pdbench load`: requests against a running pdrouter (bench_load*.c), open
 * or closed loop; client latency, throughput, KV hit rate, the generator's lag behind its
 * schedule and the router's own latency.
 * @argc, @argv: the arguments from "load" on.
 *
 * Returns BENCH_OK, BENCH_FAILED (a request failed or went unanswered, the run stopped early,
 * a report file could not be written, out of memory) or BENCH_USAGE (bad arguments, an
 * unreadable trace, no router at the address).
 */
int bench_load_main(int argc, char **argv);

/**
 * bench_quality_main - `pdbench quality`: every routing policy on one trace, end to end
 * (bench_quality*.c): starts pdrouter and pdmock workers per policy, replays the trace with
 * `pdbench load`, stops them, and reports hit rate, TTFT, end to end and throughput side by
 * side.
 * @argc, @argv: the arguments from "quality" on.
 *
 * Returns BENCH_OK, BENCH_FAILED (a policy's run failed or had errors, a report could not be
 * written, interrupted) or BENCH_USAGE (bad arguments, an unreadable trace, pdrouter or pdmock
 * not found).
 */
int bench_quality_main(int argc, char **argv);

/**
 * bench_parse_u32 - parse a decimal integer in [@min, @max] for option @name.
 *
 * Returns 0, or -EINVAL after printing what is wrong to stderr.
 */
int bench_parse_u32(const char *name, const char *s, uint32_t min, uint32_t max, uint32_t *out);

/* bench_parse_u32() of a --block-size: a power of two in [1, DP_HASH_MAX_BLOCK]. */
int bench_parse_block_size(const char *s, uint32_t *out);

/**
 * bench_parse_seconds - parse a duration in seconds, above 0 and at most a day.
 *
 * Returns 0, or -EINVAL after printing what is wrong to stderr.
 */
int bench_parse_seconds(const char *name, const char *s, double *out);

/* Sort latencies ascending, for bench_pct(). */
void bench_sort_u64(uint64_t *v, size_t n);

/* Nearest-rank percentile @permille (500: median) of the sorted @v[0..n); 0 when n is 0. */
uint64_t bench_pct(const uint64_t *v, size_t n, unsigned permille);


#endif
