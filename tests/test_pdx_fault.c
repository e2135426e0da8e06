/*
 * The prefix index when memory runs out, in the manner of SQLite's *fault.test: one scenario
 * of KV events (stores with shared prefixes on three targets, removes that free entries and
 * orphan run heads, a clear, drops), run once per allocation call it makes, with that call
 * failing (fault_alloc.c). After every event the index must agree with a reference model of
 * what was applied: a failed STORE keeps the blocks before the failing one and nothing after,
 * a failed REMOVE, CLEAR or drop keeps what it dropped. At the end every target is dropped,
 * no entry or holder set may be left, and every block and mapping must have been given back.
 */
#include <errno.h>
#include <stdio.h>
#include <string.h>

#include <criterion/criterion.h>
#include <criterion/parameterized.h>

#include "fault_alloc.h"
#include "helpers.h"

/* Under AddressSanitizer, LeakSanitizer checks the tear-down too (T_SANITIZED covers TSan). */
#if defined(__SANITIZE_ADDRESS__)
#define T_LSAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define T_LSAN 1
#endif
#endif
#ifdef T_LSAN
#include <sanitizer/lsan_interface.h>
#endif

TestSuite(pdx_fault, .timeout = 60);

#define TARGETS 3
#define PROMPTS 4
#define MAX_LEN 96
#define MAX_NODES (PROMPTS * MAX_LEN)
#define MAX_FAULTS 4096

/* Prompts: P0; P1 shares P0's first 5 blocks; P2 shares P1's first 9; P3 is long and alone. */
static const struct {
	size_t len, shared;
	int base; /* prompt it branches off, -1: none */
} shape[PROMPTS] = {{16, 0, -1}, {16, 5, 0}, {16, 9, 1}, {MAX_LEN, 0, -1}};

enum op { STORE, REMOVE, CLEAR, DROP };

/* STORE: blocks [from, from + n) of the prompt after block from - 1. REMOVE: every
 * stride-th block of [from, from + n). */
struct step {
	enum op op;
	uint32_t target, prompt, from, n, stride;
};

/* clang-format off: one event a line */
static const struct step steps[] = {
	{STORE, 0, 0, 0, 16, 0},
	{STORE, 1, 1, 0, 16, 0},	/* 5 blocks shared with target 0, 11 new */
	{STORE, 2, 2, 0, 9, 0},		/* all held by target 1 already */
	{STORE, 2, 2, 9, 7, 0},		/* new blocks after a parent */
	{STORE, 0, 1, 5, 7, 0},		/* target 0 joins target 1's branch */
	{STORE, 1, 0, 0, 16, 0},	/* 5 repeats, 11 blocks of target 0's */
	{REMOVE, 1, 1, 2, 2, 1},	/* holes in target 1's prefix */
	{REMOVE, 1, 1, 10, 6, 5},	/* P1[15] is freed */
	{REMOVE, 0, 0, 10, 6, 1},
	{REMOVE, 1, 0, 12, 4, 1},	/* the end of P0 is freed */
	{REMOVE, 2, 2, 11, 1, 1},	/* freed: P2[12] loses its parent, becomes a run head */
	{STORE, 2, 2, 11, 1, 0},	/* the parent again */
	{STORE, 2, 3, 0, MAX_LEN, 0},
	{REMOVE, 2, 3, 1, 94, 2},	/* every other block: 47 orphans go into the table */
	{CLEAR, 1, 0, 0, 0, 0},
	{STORE, 1, 2, 0, 14, 0},
	{DROP, 0, 0, 0, 0, 0},
	{STORE, 0, 0, 0, 4, 0},
	{CLEAR, 2, 0, 0, 0, 0},
	{DROP, 1, 0, 0, 0, 0},
};
/* clang-format on */

#define NSTEPS (sizeof(steps) / sizeof(steps[0]))

struct universe {
	uint64_t local[PROMPTS][MAX_LEN];
	struct pdx_block b[PROMPTS][MAX_LEN];
	uint32_t node[PROMPTS][MAX_LEN]; /* distinct prefix of block i of a prompt */
	uint64_t seq[MAX_NODES];
	uint32_t nnodes;
};

struct run {
	struct pdx x;
	struct pdx_reader *r;
	struct universe u;
	bool held[TARGETS][MAX_NODES]; /* the model */
	uint64_t event[TARGETS];       /* last event id given to pdx_event_seq() */
	unsigned long fail_at;
	int fired_step;	 /* step whose call hit the fault; -1: setup, -2: none */
	char where[160]; /* what is being checked, for messages */
};

static uint32_t node_of(struct universe *u, uint64_t seq)
{
	for (uint32_t i = 0; i < u->nnodes; i++)
		if (u->seq[i] == seq)
			return i;
	u->seq[u->nnodes] = seq;
	return u->nnodes++;
}

static void universe_init(struct universe *u)
{
	u->nnodes = 0;
	for (int p = 0; p < PROMPTS; p++) {
		uint64_t seq = 0;

		t_locals(0xFA17 + (uint64_t)p, shape[p].len, u->local[p]);
		if (shape[p].base >= 0)
			memcpy(u->local[p], u->local[shape[p].base],
			       shape[p].shared * sizeof(uint64_t));
		t_blocks(u->local[p], 0, shape[p].len, 0, u->b[p]);
		for (size_t i = 0; i < shape[p].len; i++) {
			seq = i ? dp_hash_chain(seq, u->local[p][i]) : u->local[p][0];
			u->node[p][i] = node_of(u, seq);
		}
	}
}

/* ---- The model. ---- */

static size_t model_blocks(const struct run *rn, uint32_t t)
{
	size_t n = 0;

	for (uint32_t i = 0; i < rn->u.nnodes; i++)
		n += rn->held[t][i];
	return n;
}

static uint32_t model_depth(const struct run *rn, uint32_t t, int p)
{
	uint32_t d = 0;

	while (d < shape[p].len && rn->held[t][rn->u.node[p][d]])
		d++;
	return d;
}

/* Entries: nodes someone holds. Holder sets: distinct non-empty sets of holders. */
static void model_counts(const struct run *rn, uint64_t *entries, uint64_t *sets)
{
	bool seen[1u << TARGETS] = {false};

	*entries = *sets = 0;
	for (uint32_t i = 0; i < rn->u.nnodes; i++) {
		unsigned mask = 0;

		for (uint32_t t = 0; t < TARGETS; t++)
			mask |= (unsigned)rn->held[t][i] << t;
		if (!mask)
			continue;
		(*entries)++;
		*sets += !seen[mask];
		seen[mask] = true;
	}
}

/* Blocks of a step, in event order, as nodes; returns how many. */
static size_t step_nodes(const struct run *rn, const struct step *s, uint32_t *node)
{
	size_t n = 0;
	uint32_t stride = s->op == REMOVE ? s->stride : 1;

	for (uint32_t i = s->from; i < s->from + s->n; i += stride)
		node[n++] = rn->u.node[s->prompt][i];
	return n;
}

/*
 * Apply the first @count changes of an event to the model: for a store the first @count
 * blocks it did not hold, for a remove the first @count it held; a clear or drop takes all.
 */
static void model_apply(struct run *rn, const struct step *s, size_t count)
{
	uint32_t node[MAX_LEN];
	size_t n = step_nodes(rn, s, node);
	bool store = s->op == STORE;

	if (s->op == CLEAR || s->op == DROP) {
		memset(rn->held[s->target], 0, sizeof(rn->held[s->target]));
		return;
	}
	for (size_t i = 0; i < n && count; i++) {
		if (rn->held[s->target][node[i]] != store) {
			rn->held[s->target][node[i]] = store;
			count--;
		}
	}
}

/* What the event returns when nothing fails. */
static long model_expect(const struct run *rn, const struct step *s)
{
	uint32_t node[MAX_LEN];
	size_t n = step_nodes(rn, s, node);
	long want = 0;

	if (s->op == CLEAR || s->op == DROP)
		return (long)model_blocks(rn, s->target);
	if (s->op == STORE && s->from && !rn->held[s->target][rn->u.node[s->prompt][s->from - 1]])
		return -ENOENT;
	for (size_t i = 0; i < n; i++)
		want += rn->held[s->target][node[i]] != (s->op == STORE);
	return want;
}

/* ---- Checks. ---- */

/* Every answer and counter against the model; @loose: target @t may hold less than it says. */
static void check_index(struct run *rn, bool loose, uint32_t lt)
{
	struct pdx_overlap out[TARGETS];
	struct pdx_stats st;
	uint64_t entries, sets;

	for (uint32_t t = 0; t < TARGETS; t++)
		if (!loose || t != lt)
			cr_assert_eq(pdx_target_blocks(&rn->x, t), model_blocks(rn, t),
				     "%s: target %u holds %zu blocks, model %zu", rn->where, t,
				     pdx_target_blocks(&rn->x, t), model_blocks(rn, t));
	for (int p = 0; p < PROMPTS; p++) {
		size_t k = pdx_match(rn->r, rn->u.local[p], shape[p].len, out);
		uint32_t depth[TARGETS] = {0};

		cr_assert_leq(k, TARGETS, "%s: %zu answers", rn->where, k);
		for (size_t i = 0; i < k; i++) {
			cr_assert(out[i].target < TARGETS && !depth[out[i].target] && out[i].depth,
				  "%s: bad answer target %u depth %u", rn->where, out[i].target,
				  out[i].depth);
			depth[out[i].target] = out[i].depth;
		}
		for (uint32_t t = 0; t < TARGETS; t++) {
			uint32_t want = model_depth(rn, t, p);

			cr_assert(loose && t == lt ? depth[t] <= want : depth[t] == want,
				  "%s: target %u at depth %u on P%d, model %u", rn->where, t,
				  depth[t], p, want);
		}
	}
	if (loose)
		return;
	pdx_stats(&rn->x, &st);
	model_counts(rn, &entries, &sets);
	cr_assert_eq(st.entries, entries, "%s: %lu entries, model %lu", rn->where,
		     (unsigned long)st.entries, (unsigned long)entries);
	cr_assert_eq(st.holder_sets, sets, "%s: %lu holder sets, model %lu", rn->where,
		     (unsigned long)st.holder_sets, (unsigned long)sets);
}

static const char *op_name(enum op op)
{
	static const char *const name[] = {"STORE", "REMOVE", "CLEAR", "drop"};

	return name[op];
}

static void describe(struct run *rn, size_t k, const char *what)
{
	const struct step *s = &steps[k];
	char fault[80] = "no fault yet";

	if (t_fault.fired)
		snprintf(fault, sizeof(fault), "%s(%zu) failed in step %d", t_fault.what,
			 t_fault.size, rn->fired_step);
	snprintf(rn->where, sizeof(rn->where), "call %lu (%s): %s step %zu, %s t%u P%u[%u..%u)",
		 rn->fail_at, fault, what, k, op_name(s->op), s->target, s->prompt, s->from,
		 s->from + s->n);
}

/* ---- Driving the index. ---- */

/* One counted call: the fault may hit it. Returns what it returned. */
static long counted(struct run *rn, int step, long (*rc_of)(struct run *, const struct step *),
		    const struct step *s)
{
	bool before = t_fault.fired;
	long rc;

	t_fault_count(true);
	rc = rc_of(rn, s);
	t_fault_count(false);
	if (t_fault.fired && !before)
		rn->fired_step = step;
	return rc;
}

static long call_step(struct run *rn, const struct step *s)
{
	const struct pdx_block *b = rn->u.b[s->prompt];
	uint64_t ids[MAX_LEN];
	size_t n = 0;

	switch (s->op) {
	case STORE:
		return pdx_store(&rn->x, s->target, s->from ? &b[s->from - 1].ext_id : NULL,
				 b + s->from, s->n);
	case REMOVE:
		for (uint32_t i = s->from; i < s->from + s->n; i += s->stride)
			ids[n++] = b[i].ext_id;
		return pdx_remove(&rn->x, s->target, ids, n);
	case CLEAR:
		return pdx_clear(&rn->x, s->target);
	case DROP:
		return pdx_drop_target(&rn->x, s->target);
	}
	return -EINVAL;
}

/* A CLEAR or drop that failed part way: what it dropped stays dropped, a retry finishes. */
static void finish_clear(struct run *rn, size_t k, size_t before)
{
	const struct step *s = &steps[k];
	size_t left = pdx_target_blocks(&rn->x, s->target);

	cr_assert_leq(left, before, "%s: %zu blocks left of %zu", rn->where, left, before);
	check_index(rn, true, s->target);
	if (s->op == DROP)
		cr_assert_eq(pdx_event_seq(&rn->x, s->target, rn->event[s->target]), -EALREADY,
			     "%s: a failed drop forgot the event sequence", rn->where);
	cr_assert_eq(call_step(rn, s), (long)left, "%s: the retry did not drop the %zu left",
		     rn->where, left);
}

/* Run step @k, check its return value and bring the model up to date. */
static void run_step(struct run *rn, size_t k)
{
	const struct step *s = &steps[k];
	size_t before = pdx_target_blocks(&rn->x, s->target);
	long want = model_expect(rn, s), rc;

	cr_assert_eq(pdx_event_seq(&rn->x, s->target, ++rn->event[s->target]), 0);
	rc = counted(rn, (int)k, call_step, s);
	describe(rn, k, "after");
	if (rc == -ENOMEM) {
		cr_assert(t_fault.fired, "%s: -ENOMEM with no allocation failed", rn->where);
		if (s->op == CLEAR || s->op == DROP) {
			finish_clear(rn, k, before);
		} else {
			size_t after = pdx_target_blocks(&rn->x, s->target);
			size_t done = s->op == STORE ? after - before : before - after;

			cr_assert(s->op == STORE ? after >= before : after <= before,
				  "%s: %zu blocks before, %zu after", rn->where, before, after);
			cr_assert_leq(done, (size_t)(want < 0 ? 0 : want),
				      "%s: %zu blocks changed, the event has %ld", rn->where, done,
				      want);
			model_apply(rn, s, done);
			check_index(rn, false, 0);
			return;
		}
	} else {
		cr_assert_eq(rc, want, "%s: returned %ld, want %ld", rn->where, rc, want);
	}
	if (want > 0)
		model_apply(rn, s, (size_t)want);
	if (s->op == DROP) {
		cr_assert_eq(pdx_event_seq(&rn->x, s->target, 1), 0,
			     "%s: the drop kept the event sequence", rn->where);
		rn->event[s->target] = 1;
	}
	check_index(rn, false, 0);
}

static long call_init(struct run *rn, const struct step *s)
{
	/* A table of 64 slots: the orphans of step 13 make it grow. */
	struct pdx_config cfg = {.max_targets = TARGETS, .max_readers = 2, .initial_blocks = 8};

	(void)s;
	return pdx_init(&rn->x, &cfg);
}

static long call_attach(struct run *rn, const struct step *s)
{
	(void)s;
	return pdx_reader_attach(&rn->x, &rn->r);
}

/* Set-up under the fault too: a failed init must leave nothing behind. Returns false then. */
static bool setup(struct run *rn)
{
	long rc = counted(rn, -1, call_init, NULL);

	if (rc != 0) {
		cr_assert(rc == -ENOMEM && t_fault.fired, "call %lu: pdx_init returned %ld",
			  rn->fail_at, rc);
		cr_assert(!t_fault_live_blocks() && !t_fault_live_map_bytes(),
			  "call %lu: %s(%zu) failed in pdx_init: %zu blocks and %ld mapped bytes "
			  "left",
			  rn->fail_at, t_fault.what, t_fault.size, t_fault_live_blocks(),
			  (long)t_fault_live_map_bytes());
		return false;
	}
	rc = counted(rn, -1, call_attach, NULL);
	if (rc == -ENOMEM)
		rc = call_attach(rn, NULL);
	cr_assert_eq(rc, 0, "call %lu: pdx_reader_attach returned %ld", rn->fail_at, rc);
	return true;
}

/* Every target dropped and no reader inside: nothing may be left, then nothing at all. */
static void teardown(struct run *rn)
{
	struct pdx_stats st;

	snprintf(rn->where, sizeof(rn->where), "call %lu (%s(%zu) failed in step %d): at the end",
		 rn->fail_at, t_fault.fired ? t_fault.what : "none", t_fault.size, rn->fired_step);
	for (uint32_t t = 0; t < TARGETS; t++)
		cr_assert_geq(pdx_drop_target(&rn->x, t), 0, "%s: drop of target %u", rn->where, t);
	pdx_reader_detach(rn->r);
	cr_assert_eq(pdx_reclaim(&rn->x), 0, "%s: objects still retired", rn->where);
	pdx_stats(&rn->x, &st);
	cr_assert(!st.entries && !st.holder_sets && !st.retired_pending,
		  "%s: empty index has %lu entries, %lu holder sets, %lu retired", rn->where,
		  (unsigned long)st.entries, (unsigned long)st.holder_sets,
		  (unsigned long)st.retired_pending);
	pdx_destroy(&rn->x);
	cr_assert(!t_fault_live_blocks() && !t_fault_live_map_bytes(),
		  "%s: after pdx_destroy %zu blocks and %ld mapped bytes are still allocated",
		  rn->where, t_fault_live_blocks(), (long)t_fault_live_map_bytes());
#ifdef T_LSAN
	cr_assert_eq(__lsan_do_recoverable_leak_check(), 0, "%s: LeakSanitizer found leaks",
		     rn->where);
#endif
}

/* ---- The tests. ---- */

struct fault_param {
	unsigned long fail_at; /* allocation call that fails */
	unsigned long total;   /* calls the scenario makes when none fails */
};

static struct run the_run;

/* The scenario without checks, counting its allocation calls. */
static unsigned long count_calls(void)
{
	struct run *rn = &the_run;

	memset(rn, 0, sizeof(*rn));
	universe_init(&rn->u);
	t_fault_reset(0);
	if (!t_fault_wrapped() || counted(rn, -1, call_init, NULL))
		return 0;
	counted(rn, -1, call_attach, NULL);
	for (size_t k = 0; k < NSTEPS; k++)
		counted(rn, (int)k, call_step, &steps[k]);
	pdx_reader_detach(rn->r);
	pdx_destroy(&rn->x);
	return t_fault.calls;
}

static struct fault_param params[MAX_FAULTS];

ParameterizedTestParameters(pdx_fault, every_failed_allocation_leaves_a_consistent_index)
{
	unsigned long total = count_calls();
	size_t n = total + 1 < MAX_FAULTS ? total + 1 : MAX_FAULTS;

	for (size_t i = 0; i < n; i++)
		params[i] = (struct fault_param){.fail_at = i + 1, .total = total};
	return cr_make_param_array(struct fault_param, params, n);
}

/* Call fail_at fails; the last parameter is past the scenario's calls, so none does. */
ParameterizedTest(struct fault_param *fp, pdx_fault,
		  every_failed_allocation_leaves_a_consistent_index)
{
	struct run *rn = &the_run;

	if (!t_fault_wrapped() || fp->total == 0)
		cr_skip_test(
		    "the linker took no --wrap here, so allocations cannot be made to fail");
	cr_assert_lt(fp->total, MAX_FAULTS, "the scenario makes %lu allocation calls", fp->total);
	memset(rn, 0, sizeof(*rn));
	universe_init(&rn->u);
	rn->fail_at = fp->fail_at;
	rn->fired_step = -2;
	t_fault_reset(fp->fail_at);
	if (!setup(rn))
		return;
	for (size_t k = 0; k < NSTEPS; k++)
		run_step(rn, k);
	teardown(rn);
	cr_assert_eq(t_fault.fired, fp->fail_at <= fp->total, "call %lu of %lu: the fault %s",
		     fp->fail_at, fp->total,
		     t_fault.fired ? "hit a scenario that should have ended" : "never hit");
}
