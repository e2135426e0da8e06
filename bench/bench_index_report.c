/*
 * `pdbench index` output: an aligned table for people, or one JSON object on one line for
 * scripts (keys stable; see bench/README.md). Runs on the main thread after every measurement.
 */
#include <inttypes.h>
#include <stdio.h>
#include <sys/resource.h>
#include <unistd.h>

#include "bench_index.h"

/* clang-format off */
#define BI_STAT(f) {#f, offsetof(struct pdx_stats, f)}
/* clang-format on */

static const struct bi_stat_name {
	const char *name;
	size_t off;
} bi_stat_names[] = {
    BI_STAT(events_dup),	BI_STAT(events_gap),
    BI_STAT(events_missing),	BI_STAT(store_unknown_parent),
    BI_STAT(store_self_parent), BI_STAT(store_repeat_id),
    BI_STAT(store_id_conflict), BI_STAT(store_dup_block),
    BI_STAT(remove_unknown),	BI_STAT(bad_target),
    BI_STAT(blocks_stored),	BI_STAT(blocks_removed),
    BI_STAT(entries),		BI_STAT(holder_sets),
    BI_STAT(table_slots),	BI_STAT(table_grows),
    BI_STAT(retired_pending),	BI_STAT(bytes),
};

#define BI_NSTATS (sizeof(bi_stat_names) / sizeof(bi_stat_names[0]))

static const char *const bi_kind_name[BI_KINDS] = {"?", "STORE", "REMOVE", "CLEAR", "MATCH"};

static uint64_t bi_stat(const struct pdx_stats *st, size_t i)
{
	return *(const uint64_t *)((const char *)st + bi_stat_names[i].off);
}

/* @v per @ns nanoseconds, per second; 0 when nothing was timed. */
static double bi_rate(uint64_t v, uint64_t ns)
{
	return ns ? (double)v * 1e9 / (double)ns : 0;
}

static long bi_peak_rss_kib(void)
{
	struct rusage ru;

	return getrusage(RUSAGE_SELF, &ru) == 0 ? ru.ru_maxrss : -1; /* KiB on Linux */
}

static double bi_mib(uint64_t bytes)
{
	return (double)bytes / (1024.0 * 1024.0);
}

static void bi_human_ops(const struct bi_stream *s, const struct bi_run *r)
{
	printf("%-8s %10s %12s %11s %11s %12s\n", "op", "count", "blocks", "time ms", "ns/op",
	       "blocks/s");
	for (int k = PDOPS_STORE; k <= PDOPS_MATCH; k++) {
		printf("%-8s %10" PRIu64 " %12" PRIu64 " %11.3f %11.0f %12.0f\n", bi_kind_name[k],
		       s->count[k], s->blocks[k], (double)r->ns[k] / 1e6,
		       s->count[k] ? (double)r->ns[k] / (double)s->count[k] : 0,
		       bi_rate(s->blocks[k], r->ns[k]));
	}
	printf("%-8s %10zu %12s %11.3f   (whole loop: answer checks and stats included)\n", "wall",
	       s->nops, "", (double)r->wall_ns / 1e6);
}

static void bi_human_counters(const struct bi_run *r)
{
	int shown = 0;

	printf("%-18s", "counters moved");
	for (size_t i = 0; i < BI_NSTATS; i++) {
		if (bi_stat(&r->after, i) == bi_stat(&r->before, i))
			continue;
		if (shown > 0 && shown % 4 == 0)
			printf("\n%-18s", "");
		printf(" %s=%" PRIu64, bi_stat_names[i].name, bi_stat(&r->after, i));
		shown++;
	}
	printf("\n");
}

static void bi_human_replay(const struct bi_opts *o, const struct bi_stream *s,
			    const struct bi_run *r)
{
	uint64_t mns = r->ns[PDOPS_MATCH];

	printf("pdbench index  %s\n", o->path);
	printf("stream: %zu ops, %" PRIu32 " workers, %" PRIu32 "-token blocks; fastest of %" PRIu32
	       " replay%s on a fresh index, one thread\n\n",
	       s->nops, s->file.num_workers, s->file.block_size, o->repeat,
	       o->repeat > 1 ? "s" : "");
	bi_human_ops(s, r);
	printf("\n%-18s p50 %" PRIu64 "  p99 %" PRIu64 "  p99.9 %" PRIu64 "  max %" PRIu64 "\n",
	       "MATCH latency ns", r->p50_ns, r->p99_ns, r->p999_ns, r->max_ns);
	printf("%-18s %.0f\n", "MATCH/s", bi_rate(s->count[PDOPS_MATCH], mns));
	printf("%-18s %.0f\n", "query blocks/s", bi_rate(s->blocks[PDOPS_MATCH], mns));
	printf("%-18s %" PRIu64 "%s\n", "mismatches", r->mismatches,
	       r->mismatches ? "  (WRONG ANSWERS)" : "");
	printf("%-18s %" PRIu64 "\n", "refused events", r->refused);
	printf("%-18s %" PRIu64 " entries, %" PRIu64 " holder sets, %.1f MiB (peak %.1f MiB)\n",
	       "index at end", r->after.entries, r->after.holder_sets, bi_mib(r->after.bytes),
	       bi_mib(r->peak_bytes));
	bi_human_counters(r);
	printf("%-18s %ld KiB\n", "peak RSS", bi_peak_rss_kib());
}

/* A count over both concurrent runs; with --readers 1 they are the same run. */
static uint64_t bi_both(const struct bi_opts *o, uint64_t one, uint64_t many)
{
	return o->readers > 1 ? one + many : one;
}

static void bi_human_readers_row(const char *name, const struct bi_readers_result *rr)
{
	printf("%-8s %12.0f %10" PRIu64 " %10" PRIu64 " %10" PRIu64 " %11" PRIu64 " %9" PRIu64
	       " %14.0f\n",
	       name, rr->matches_per_s, rr->p99_ns, rr->max_ns, rr->matches, rr->violations,
	       rr->preempted, rr->writer_events_per_s);
}

static void bi_human_readers(const struct bi_opts *o, const struct bi_readers_result *one,
			     const struct bi_readers_result *many)
{
	char name[16];

	printf("\nconcurrent: 1 writer replaying the events in passes, readers running the MATCH "
	       "queries, %.1f s per row, %ld CPUs online\n",
	       o->seconds, sysconf(_SC_NPROCESSORS_ONLN));
	printf("%-8s %12s %10s %10s %10s %11s %9s %14s\n", "readers", "MATCH/s", "p99 ns", "max ns",
	       "matches", "violations", "preempts", "writer ev/s");
	bi_human_readers_row("1", one);
	if (o->readers > 1) {
		snprintf(name, sizeof(name), "%" PRIu32, many->readers);
		bi_human_readers_row(name, many);
	}
	for (uint32_t k = 0; o->readers > 1 && k < many->readers; k++) {
		const struct bi_reader_result *r = &many->reader[k];

		snprintf(name, sizeof(name), "  #%" PRIu32, k);
		printf("%-8s %12.0f %10" PRIu64 " %10" PRIu64 " %10" PRIu64 " %11s %9" PRIu64 "\n",
		       name, r->matches_per_s, r->p99_ns, r->max_ns, r->matches, "", r->preempted);
	}
	printf("%-18s %.2fx with %" PRIu32 " readers over 1; writer errors %" PRIu64 "\n",
	       "scaling", one->matches_per_s > 0 ? many->matches_per_s / one->matches_per_s : 0,
	       many->readers, bi_both(o, one->writer_errors, many->writer_errors));
}

static void bi_json_string(const char *str)
{
	putchar('"');
	for (const unsigned char *c = (const unsigned char *)str; *c; c++) {
		if (*c == '"' || *c == '\\')
			printf("\\%c", *c);
		else if (*c < 0x20)
			printf("\\u%04x", *c);
		else
			putchar(*c);
	}
	putchar('"');
}

static void bi_json_stream(const struct bi_opts *o, const struct bi_stream *s)
{
	printf("{\"file\":");
	bi_json_string(o->path);
	printf(",\"block_size\":%" PRIu32 ",\"workers\":%" PRIu32 ",\"readers\":%" PRIu32
	       ",\"repeat\":%" PRIu32 ",\"ops\":%zu,\"matches\":%" PRIu64 ",\"stores\":%" PRIu64
	       ",\"removes\":%" PRIu64 ",\"clears\":%" PRIu64 ",\"query_blocks\":%" PRIu64
	       ",\"stored_blocks\":%" PRIu64 ",\"removed_blocks\":%" PRIu64
	       ",\"initial_blocks\":%" PRIu32,
	       s->file.block_size, s->file.num_workers, o->readers, o->repeat, s->nops,
	       s->count[PDOPS_MATCH], s->count[PDOPS_STORE], s->count[PDOPS_REMOVE],
	       s->count[PDOPS_CLEAR], s->blocks[PDOPS_MATCH], s->blocks[PDOPS_STORE],
	       s->blocks[PDOPS_REMOVE], s->initial_blocks);
}

static void bi_json_replay(const struct bi_stream *s, const struct bi_run *r)
{
	uint64_t mns = r->ns[PDOPS_MATCH];

	printf(",\"wall_s\":%.6f,\"store_s\":%.6f,\"remove_s\":%.6f,\"clear_s\":%.6f"
	       ",\"match_s\":%.6f,\"match_p50_ns\":%" PRIu64 ",\"match_p99_ns\":%" PRIu64
	       ",\"match_p999_ns\":%" PRIu64 ",\"match_max_ns\":%" PRIu64
	       ",\"matches_per_s\":%.1f,\"query_blocks_per_s\":%.1f,\"store_blocks_per_s\":%.1f"
	       ",\"remove_blocks_per_s\":%.1f,\"mismatches\":%" PRIu64
	       ",\"refused_events\":%" PRIu64,
	       (double)r->wall_ns / 1e9, (double)r->ns[PDOPS_STORE] / 1e9,
	       (double)r->ns[PDOPS_REMOVE] / 1e9, (double)r->ns[PDOPS_CLEAR] / 1e9,
	       (double)mns / 1e9, r->p50_ns, r->p99_ns, r->p999_ns, r->max_ns,
	       bi_rate(s->count[PDOPS_MATCH], mns), bi_rate(s->blocks[PDOPS_MATCH], mns),
	       bi_rate(s->blocks[PDOPS_STORE], r->ns[PDOPS_STORE]),
	       bi_rate(s->blocks[PDOPS_REMOVE], r->ns[PDOPS_REMOVE]), r->mismatches, r->refused);
}

static void bi_json_index(const struct bi_run *r)
{
	const char *sep = "";

	printf(",\"index_bytes\":%" PRIu64 ",\"index_peak_bytes\":%" PRIu64 ",\"entries\":%" PRIu64
	       ",\"holder_sets\":%" PRIu64 ",\"peak_rss_kib\":%ld,\"counters\":{",
	       r->after.bytes, r->peak_bytes, r->after.entries, r->after.holder_sets,
	       bi_peak_rss_kib());
	for (size_t i = 0; i < BI_NSTATS; i++) {
		if (bi_stat(&r->after, i) == bi_stat(&r->before, i))
			continue;
		printf("%s\"%s\":%" PRIu64, sep, bi_stat_names[i].name, bi_stat(&r->after, i));
		sep = ",";
	}
	printf("}");
}

static void bi_json_readers(const struct bi_opts *o, const struct bi_readers_result *one,
			    const struct bi_readers_result *many)
{
	printf(",\"reader_seconds\":%.3f,\"cpus\":%ld,\"reader_matches_per_s\":%.1f"
	       ",\"reader_match_p99_ns\":%" PRIu64 ",\"reader_worst_p99_ns\":%" PRIu64
	       ",\"reader_max_ns\":%" PRIu64 ",\"reader_violations\":%" PRIu64
	       ",\"reader1_matches_per_s\":%.1f,\"reader1_match_p99_ns\":%" PRIu64
	       ",\"reader1_max_ns\":%" PRIu64 ",\"readers_scaling\":%.3f"
	       ",\"reader_preemptions\":%" PRIu64 ",\"writer_events_per_s\":%.1f"
	       ",\"writer_errors\":%" PRIu64,
	       o->seconds, sysconf(_SC_NPROCESSORS_ONLN), many->matches_per_s, many->p99_ns,
	       many->worst_p99_ns, many->max_ns, bi_both(o, one->violations, many->violations),
	       one->matches_per_s, one->p99_ns, one->max_ns,
	       one->matches_per_s > 0 ? many->matches_per_s / one->matches_per_s : 0,
	       many->preempted, many->writer_events_per_s,
	       bi_both(o, one->writer_errors, many->writer_errors));
}

void bi_report(const struct bi_opts *o, const struct bi_stream *s, const struct bi_run *run,
	       const struct bi_readers_result *one, const struct bi_readers_result *many)
{
	if (!o->json) {
		bi_human_replay(o, s, run);
		if (one && many)
			bi_human_readers(o, one, many);
		return;
	}
	bi_json_stream(o, s);
	bi_json_replay(s, run);
	bi_json_index(run);
	if (one && many)
		bi_json_readers(o, one, many);
	printf("}\n");
}
