/*
 * `pdbench index` internals shared by the single-threaded replay (bench_index.c) and the
 * concurrent readers phase (bench_index_readers.c).
 */
#ifndef PD_BENCH_BENCH_INDEX_H
#define PD_BENCH_BENCH_INDEX_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "index.h"
#include "ops.h"

#define BI_KINDS 5 /* arrays indexed by PDOPS_* kind; slot 0 unused */

/* The stream, decoded once so that replays pay nothing for parsing. */
struct bi_stream {
	struct pdops_file file;
	struct pdops_op *ops; /* every op, in file order */
	size_t nops;
	const struct pdops_op **match; /* the MATCH ops, in order */
	size_t nmatch;
	const struct pdops_op **event; /* the STORE, REMOVE and CLEAR ops, in order */
	size_t nevent;
	uint64_t count[BI_KINDS];  /* ops per kind */
	uint64_t blocks[BI_KINDS]; /* blocks per kind: stored, removed, queried */
	uint32_t max_query;	   /* blocks in the longest MATCH */
	uint32_t initial_blocks;   /* pdx_config.initial_blocks for every index built */
};

/* Command line of `pdbench index`. */
struct bi_opts {
	const char *path;
	uint32_t readers; /* 0: no concurrent phase */
	uint32_t repeat;
	uint32_t initial_blocks;
	bool json;
	double seconds;
};

/* Results of one single-threaded replay; time and counts per PDOPS_* kind. */
struct bi_run {
	uint64_t ns[BI_KINDS]; /* inside the index calls */
	uint64_t wall_ns;      /* the whole replay loop, checks included */
	uint64_t mismatches;   /* MATCH answers that differ from the stream's: must be 0 */
	uint64_t refused;      /* events not applied in full: 0 in a faithful replay */
	uint64_t peak_bytes;   /* largest pdx_stats.bytes seen after a STORE */
	uint64_t p50_ns, p99_ns, p999_ns, max_ns; /* per pdx_match() call */
	struct pdx_stats before, after;		  /* counters after pdx_init() and at the end */
};

/* One concurrent reader's results. */
struct bi_reader_result {
	uint64_t matches;
	uint64_t p50_ns, p99_ns, max_ns;
	uint64_t preempted; /* involuntary context switches while matching */
	double matches_per_s;
};

/* Results of one concurrent phase: one writer replaying events, @readers readers matching. */
struct bi_readers_result {
	uint32_t readers;
	uint64_t matches;
	double matches_per_s;  /* aggregate: sum over readers of their own rate */
	uint64_t p99_ns;       /* over all readers' queries */
	uint64_t worst_p99_ns; /* the worst reader's own p99 */
	uint64_t max_ns;
	uint64_t violations;	/* answers breaking an invariant: must be 0 */
	uint64_t preempted;	/* readers' involuntary context switches, summed */
	uint64_t writer_events; /* events applied while the readers ran */
	double writer_events_per_s;
	uint64_t writer_passes; /* passes over the stream's events, warm-up included */
	uint64_t writer_errors; /* events the index refused: 0 in a faithful replay */
	struct bi_reader_result reader[PDX_READERS_LIMIT];
};

/**
 * bi_config - the index configuration every run uses: one target per worker of the stream.
 */
struct pdx_config bi_config(const struct bi_stream *s, uint32_t readers);

/**
 * bi_apply_event - apply a STORE, REMOVE or CLEAR op to @x.
 *
 * Returns the index call's result: blocks applied, or a negative errno.
 * Context: the index's writer.
 */
long bi_apply_event(struct pdx *x, const struct pdops_op *op);

/**
 * bi_readers_run - the concurrent phase: one writer thread replays the events of @s (in
 * passes, clearing every worker between them) on a fresh index while @readers threads run
 * the stream's MATCH queries for @seconds, checking the invariants of each answer.
 *
 * Returns 0, or a negative errno when the index or a thread could not be set up (printed).
 */
int bi_readers_run(const struct bi_stream *s, uint32_t readers, double seconds,
		   struct bi_readers_result *out);

/**
 * bi_report - print the results, as a table or as one JSON line (--json), to stdout.
 * @one, @many: the concurrent phase with 1 and with o->readers readers, or NULL without it.
 */
void bi_report(const struct bi_opts *o, const struct bi_stream *s, const struct bi_run *run,
	       const struct bi_readers_result *one, const struct bi_readers_result *many);

#endif
