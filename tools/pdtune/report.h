/*
 * pdtune's verdict: the ranking of measured candidates (propose.h), the pdrouter flags of a
 * candidate, and the two outputs, a table for people and one JSON object a line for scripts.
 */
#ifndef PD_TOOLS_PDTUNE_REPORT_H
#define PD_TOOLS_PDTUNE_REPORT_H

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

#include "propose.h"

/**
 * pt_score_ns - the latency a request sees from a candidate: route p99 plus twice the mailbox
 * p99 (one routing decision, a hand-off to the worker and one back); the mailbox term is left
 * out where it was not measured (a machine with one cpu).
 *
 * Return: nanoseconds, or UINT64_MAX when the route benchmark was not measured.
 */
uint64_t pt_score_ns(const struct pt_cand *c);

/**
 * pt_rank - sort @n candidates best first: measured before unmeasured; between two with a
 * load run, more requests per second first; then the lower pt_score_ns(); then the order in
 * which they were proposed.
 */
void pt_rank(struct pt_cand *c, uint32_t n);

/**
 * pt_flags - the pdrouter flags of @c, "--cpus 2,4 --control-cpu 0".
 *
 * Return: the length of the whole string, as snprintf() counts it (@len or more: cut short).
 */
size_t pt_flags(const struct pt_cand *c, char *buf, size_t len);

/* pt_print_table - the candidates in their order (@ranked: numbered as a ranking), then the
 * strategies behind them, failures, and the flags of the first when @ranked. */
void pt_print_table(const struct pt_proposal *p, bool ranked, FILE *f);

/* pt_print_json - one JSON object per candidate, one per line, in their order. */
void pt_print_json(const struct pt_proposal *p, bool ranked, FILE *f);

#endif
