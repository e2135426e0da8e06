/*
 * The prefix index against a reference model. The model is the contract of index.h written
 * the slow, obvious way: per target, the set of blocks (sequence hashes) it holds, named by
 * external ids, and an answer that counts the leading query blocks each target holds. Random
 * events from a fixed seed over a small universe of prompts that share prefixes, so holder
 * sets overlap and branch, then every answer and counter is compared. Also: replays of
 * generated .ops streams, whose MATCH ops carry the answers the index must give.
 */
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <criterion/criterion.h>

#include "helpers.h"
#include "ops.h"

TestSuite(pdx_model, .timeout = 120);

#define MAX_LEN 12     /* blocks per prompt */
#define MAX_PROMPTS 64 /* prompts in the universe */
#define MAX_NODES (MAX_PROMPTS * MAX_LEN)
#define MAX_TARGETS 64

struct key_node {
	uint64_t key;
	uint32_t node;
};

/* The universe: prompts, and the distinct prefixes (nodes) they are made of. */
struct universe {
	size_t nprompts, nnodes;
	size_t len[MAX_PROMPTS];
	uint64_t local[MAX_PROMPTS][MAX_LEN];
	uint32_t node[MAX_PROMPTS][MAX_LEN];		      /* node of block i of a prompt */
	uint64_t seq[MAX_NODES];			      /* sequence hash of a node */
	uint64_t ext[MAX_NODES];			      /* external id an engine gives it */
	struct key_node by_seq[MAX_NODES], by_ext[MAX_NODES]; /* sorted, for lookups */
};

/* What index.h promises, kept the obvious way. */
struct model {
	uint32_t ntargets;
	bool held[MAX_TARGETS][MAX_NODES];
	size_t nheld[MAX_TARGETS];
	bool seq_started[MAX_TARGETS];
	uint64_t last_event[MAX_TARGETS];
	struct pdx_stats st; /* the counters the model can predict */
};

struct run {
	struct t_pdx t;
	struct t_rng rng;
	struct universe *u;
	struct model *m;
	uint32_t alphabet; /* distinct local hashes: small, so blocks repeat across prompts */
	size_t matches, answers;
};

static int cmp_key(const void *a, const void *b)
{
	const struct key_node *x = a, *y = b;

	return (x->key > y->key) - (x->key < y->key);
}

static uint32_t lookup(const struct key_node *idx, size_t n, uint64_t key)
{
	struct key_node k = {.key = key};
	const struct key_node *hit = bsearch(&k, idx, n, sizeof(k), cmp_key);

	return hit ? hit->node : UINT32_MAX;
}

static uint32_t node_of_seq(const struct universe *u, uint64_t seq)
{
	return lookup(u->by_seq, u->nnodes, seq);
}

/*
 * Engines name blocks in three dialects, by target: dialect 0 gives a node its id in the
 * universe, dialect 1 another id for every node, dialect 2 the first for even nodes and the
 * second for odd ones. A block then often has several names across targets, and the index
 * keeps all but the first as aliases.
 */
#define DIALECT_SALT 0xD1A1EC70ull /* even: ids stay odd, so never 0 */

static uint64_t ext_of(const struct universe *u, uint32_t target, uint32_t node)
{
	bool salted = target % 3 == 1 || (target % 3 == 2 && node % 2);

	return salted ? u->ext[node] ^ DIALECT_SALT : u->ext[node];
}

/* The node @target names @ext, or UINT32_MAX. */
static uint32_t node_of_ext(const struct universe *u, uint32_t target, uint64_t ext)
{
	uint32_t plain = lookup(u->by_ext, u->nnodes, ext);
	uint32_t salted = lookup(u->by_ext, u->nnodes, ext ^ DIALECT_SALT);

	if (plain != UINT32_MAX && ext_of(u, target, plain) == ext)
		return plain;
	if (salted != UINT32_MAX && ext_of(u, target, salted) == ext)
		return salted;
	return UINT32_MAX;
}

/* Node of @seq while the universe is built (the sorted copy does not exist yet). */
static uint32_t find_seq(const struct universe *u, uint64_t seq)
{
	for (uint32_t i = 0; i < u->nnodes; i++)
		if (u->seq[i] == seq)
			return i;
	return UINT32_MAX;
}

static uint64_t random_local(struct run *r)
{
	return t_mix64(0xA1FA ^ t_rng_below(&r->rng, r->alphabet)) | 1;
}

static void universe_build(struct run *r, size_t nprompts)
{
	struct universe *u = r->u;

	u->nprompts = nprompts;
	for (size_t p = 0; p < nprompts; p++) {
		size_t shared = 0;

		if (p >= 4) {
			size_t base = t_rng_below(&r->rng, (uint32_t)p);

			shared = 1 + t_rng_below(&r->rng, (uint32_t)u->len[base]);
			memcpy(u->local[p], u->local[base], shared * sizeof(uint64_t));
		}
		u->len[p] = shared + t_rng_below(&r->rng, MAX_LEN - (uint32_t)shared + 1);
		if (u->len[p] == 0)
			u->len[p] = 1;
		for (size_t i = shared; i < u->len[p]; i++)
			u->local[p][i] = random_local(r);

		uint64_t seq[MAX_LEN];

		dp_hash_sequence(u->local[p], u->len[p], seq);
		for (size_t i = 0; i < u->len[p]; i++) {
			uint32_t n = find_seq(u, seq[i]);

			if (n == UINT32_MAX) {
				n = (uint32_t)u->nnodes++;
				u->seq[n] = seq[i];
				u->ext[n] = t_mix64(seq[i] ^ 0xE47E47) | 1;
			}
			u->node[p][i] = n;
		}
	}
	for (uint32_t n = 0; n < u->nnodes; n++) {
		u->by_seq[n] = (struct key_node){.key = u->seq[n], .node = n};
		u->by_ext[n] = (struct key_node){.key = u->ext[n], .node = n};
	}
	qsort(u->by_seq, u->nnodes, sizeof(u->by_seq[0]), cmp_key);
	qsort(u->by_ext, u->nnodes, sizeof(u->by_ext[0]), cmp_key);
	for (uint32_t n = 1; n < u->nnodes; n++)
		cr_assert(u->by_ext[n - 1].key != u->by_ext[n].key, "external id collision");
	for (uint32_t n = 0; n < u->nnodes; n++)
		cr_assert(lookup(u->by_ext, u->nnodes, u->ext[n] ^ DIALECT_SALT) == UINT32_MAX,
			  "dialect id collision");
}

/* ---- The model's rules (index.h, pdx_store() and friends). ---- */

static long model_store(struct model *m, const struct universe *u, uint32_t target,
			const uint64_t *parent, const struct pdx_block *b, size_t n,
			const uint32_t *node)
{
	if (target >= m->ntargets) {
		m->st.bad_target++;
		return -EINVAL;
	}
	if (parent && n && b[0].ext_id == *parent) {
		m->st.store_self_parent++;
		return -EINVAL;
	}
	for (size_t i = 0; i < n; i++)
		for (size_t j = 0; j < i; j++)
			if (b[i].ext_id == b[j].ext_id) {
				m->st.store_repeat_id++;
				return -EINVAL;
			}
	if (parent) {
		uint32_t pn = node_of_ext(u, target, *parent);

		if (pn == UINT32_MAX || !m->held[target][pn]) {
			m->st.store_unknown_parent++;
			return -ENOENT;
		}
	}

	long added = 0;

	for (size_t i = 0; i < n; i++) {
		uint32_t named = node_of_ext(u, target, b[i].ext_id);

		if (named != UINT32_MAX && m->held[target][named] && named != node[i]) {
			m->st.store_id_conflict++;
			return -EEXIST;
		}
		if (m->held[target][node[i]]) {
			m->st.store_dup_block++;
			continue;
		}
		m->held[target][node[i]] = true;
		m->nheld[target]++;
		m->st.blocks_stored++;
		added++;
	}
	return added;
}

static long model_remove(struct model *m, const struct universe *u, uint32_t target,
			 const uint64_t *ids, size_t n)
{
	long removed = 0;

	if (target >= m->ntargets) {
		m->st.bad_target++;
		return -EINVAL;
	}
	for (size_t i = 0; i < n; i++) {
		uint32_t nd = node_of_ext(u, target, ids[i]);

		if (nd == UINT32_MAX || !m->held[target][nd]) {
			m->st.remove_unknown++;
			continue;
		}
		m->held[target][nd] = false;
		m->nheld[target]--;
		m->st.blocks_removed++;
		removed++;
	}
	return removed;
}

static long model_clear(struct model *m, uint32_t target, bool drop)
{
	long n = (long)m->nheld[target];

	memset(m->held[target], 0, sizeof(m->held[target]));
	m->nheld[target] = 0;
	m->st.blocks_removed += (uint64_t)n;
	if (drop)
		m->seq_started[target] = false;
	return n;
}

static int model_event_seq(struct model *m, uint32_t target, uint64_t id)
{
	if (!m->seq_started[target] || id == m->last_event[target] + 1) {
		m->seq_started[target] = true;
		m->last_event[target] = id;
		return 0;
	}
	if (id <= m->last_event[target]) {
		m->st.events_dup++;
		return -EALREADY;
	}

	uint64_t missing = id - m->last_event[target] - 1;

	m->st.events_gap++;
	m->st.events_missing += missing;
	m->last_event[target] = id;
	return (int)missing;
}

/* Answers sorted by target: every target holding block 0, with its leading depth. */
static size_t model_match(const struct model *m, const struct universe *u, const uint64_t *seq,
			  size_t n, struct pdx_overlap *out)
{
	uint32_t node[MAX_LEN + 4];
	size_t k = 0;

	for (size_t i = 0; i < n; i++)
		node[i] = node_of_seq(u, seq[i]);
	for (uint32_t t = 0; t < m->ntargets; t++) {
		uint32_t d = 0;

		while (d < n && node[d] != UINT32_MAX && m->held[t][node[d]])
			d++;
		if (d)
			out[k++] = (struct pdx_overlap){.target = (uint16_t)t, .depth = d};
	}
	return k;
}

/* ---- Random events. ---- */

static uint32_t pick_target(struct run *r)
{
	/* Now and then a target id past the end, which must be rejected and counted. */
	if (t_rng_chance(&r->rng, 2))
		return r->m->ntargets + t_rng_below(&r->rng, 3);
	return t_rng_below(&r->rng, r->m->ntargets);
}

/* A held node of @target, or UINT32_MAX. */
static uint32_t pick_held(struct run *r, uint32_t target)
{
	if (target >= r->m->ntargets || r->m->nheld[target] == 0)
		return UINT32_MAX;

	uint32_t k = t_rng_below(&r->rng, (uint32_t)r->m->nheld[target]);

	for (uint32_t n = 0; n < r->u->nnodes; n++)
		if (r->m->held[target][n] && k-- == 0)
			return n;
	return UINT32_MAX;
}

/* Event ids: mostly in order, sometimes a gap, sometimes a repeat. 1: apply the event. */
static bool next_event(struct run *r, uint32_t target)
{
	struct model *m = r->m;

	if (target >= m->ntargets)
		return true;

	uint64_t id = m->seq_started[target] ? m->last_event[target] + 1 : t_rng_next(&r->rng) >> 4;

	if (m->seq_started[target] && t_rng_chance(&r->rng, 2))
		id += 1 + t_rng_below(&r->rng, 4);
	else if (m->seq_started[target] && t_rng_chance(&r->rng, 2))
		id -= 1 + t_rng_below(&r->rng, (uint32_t)(id < 3 ? id : 3));

	int want = model_event_seq(m, target, id);
	int got = pdx_event_seq(&r->t.x, target, id);

	cr_assert_eq(got, want, "event id %lu on target %u: %d, want %d", (unsigned long)id, target,
		     got, want);
	return got >= 0;
}

static void op_store(struct run *r)
{
	struct universe *u = r->u;
	uint32_t target = pick_target(r);
	size_t p = t_rng_below(&r->rng, (uint32_t)u->nprompts), from = 0;

	/* Mostly chain after a block the target holds: look for a prompt through one. */
	if (t_rng_chance(&r->rng, 70)) {
		for (int tries = 0; tries < 16; tries++) {
			size_t q = t_rng_below(&r->rng, (uint32_t)u->nprompts);
			size_t i = t_rng_below(&r->rng, (uint32_t)u->len[q]);

			if (i + 1 < u->len[q] && target < r->m->ntargets &&
			    r->m->held[target][u->node[q][i]]) {
				p = q;
				from = i + 1;
				break;
			}
		}
	}

	size_t n = 1 + t_rng_below(&r->rng, (uint32_t)(u->len[p] - from));
	struct pdx_block b[MAX_LEN];
	uint32_t node[MAX_LEN];
	uint64_t parent = from ? ext_of(u, target, u->node[p][from - 1]) : 0;
	bool has_parent = from > 0;

	for (size_t i = 0; i < n; i++) {
		node[i] = u->node[p][from + i];
		b[i] = (struct pdx_block){.ext_id = ext_of(u, target, node[i]),
					  .local_hash = u->local[p][from + i]};
	}

	/*
	 * At most one fault per event, and faults other than an unknown parent only after a
	 * parent the target holds (or none), so the expected error is never ambiguous.
	 */
	uint32_t fault = t_rng_below(&r->rng, 100);

	if (fault < 3) {
		has_parent = true;
		parent = t_rng_next(&r->rng) | 1; /* unknown parent */
	} else if (fault < 5 && has_parent && target < r->m->ntargets &&
		   r->m->held[target][u->node[p][from - 1]]) {
		b[0].ext_id = parent; /* names itself as parent */
	} else if (fault < 8 && n >= 2) {
		size_t j = 1 + t_rng_below(&r->rng, (uint32_t)n - 1);

		b[j].ext_id = b[t_rng_below(&r->rng, (uint32_t)j)].ext_id; /* repeated id */
	} else if (fault < 14) {
		uint32_t other = pick_held(r, target);
		size_t j = t_rng_below(&r->rng, (uint32_t)n);
		bool clash = other == UINT32_MAX;

		uint64_t id = clash ? 0 : ext_of(u, target, other);

		for (size_t i = 0; i < n && !clash; i++)
			clash = b[i].ext_id == id || (has_parent && parent == id);
		if (!clash)
			b[j].ext_id = id; /* an id naming another block */
	}
	if (!next_event(r, target))
		return;

	const uint64_t *pp = has_parent ? &parent : NULL;
	long want = model_store(r->m, u, target, pp, b, n, node);
	long got = pdx_store(&r->t.x, target, pp, b, n);

	cr_assert_eq(got, want, "store of %zu blocks on target %u (fault %u): %ld, want %ld", n,
		     target, fault, got, want);
}

static void op_remove(struct run *r)
{
	uint32_t target = pick_target(r);
	size_t n = 1 + t_rng_below(&r->rng, 8);
	uint64_t ids[8];

	for (size_t i = 0; i < n; i++) {
		uint32_t k = t_rng_below(&r->rng, 10), held = pick_held(r, target);

		if (k < 6 && held != UINT32_MAX)
			ids[i] = ext_of(r->u, target, held);
		else if (k < 8) /* any node, in any dialect: often another target's name */
			ids[i] = ext_of(r->u, target + k,
					t_rng_below(&r->rng, (uint32_t)r->u->nnodes));
		else if (k < 9 && i > 0)
			ids[i] = ids[t_rng_below(&r->rng, (uint32_t)i)];
		else
			ids[i] = t_rng_next(&r->rng);
	}
	if (!next_event(r, target))
		return;

	long want = model_remove(r->m, r->u, target, ids, n);
	long got = pdx_remove(&r->t.x, target, ids, n);

	cr_assert_eq(got, want, "remove of %zu ids on target %u: %ld, want %ld", n, target, got,
		     want);
}

static void op_clear(struct run *r, bool drop)
{
	uint32_t target = pick_target(r);
	long want, got;

	if (!drop && !next_event(r, target))
		return;

	uint64_t bad_before = t_stats(&r->t.x).bad_target;

	if (target >= r->m->ntargets) {
		want = -EINVAL;
		if (!drop)
			r->m->st.bad_target++;
	} else {
		want = model_clear(r->m, target, drop);
	}
	got = drop ? pdx_drop_target(&r->t.x, target) : pdx_clear(&r->t.x, target);
	if (drop && target >= r->m->ntargets) {
		/* Whether a drop counts as a bad-target event is left open: at most once. */
		uint64_t moved = t_stats(&r->t.x).bad_target - bad_before;

		cr_assert_leq(moved, 1, "a drop of bad target %u counted %lu times", target,
			      (unsigned long)moved);
		r->m->st.bad_target += moved;
	}
	cr_assert_eq(got, want, "%s of target %u: %ld, want %ld", drop ? "drop" : "clear", target,
		     got, want);
}

static void op_match(struct run *r)
{
	struct universe *u = r->u;
	size_t p = t_rng_below(&r->rng, (uint32_t)u->nprompts);
	size_t n = 1 + t_rng_below(&r->rng, (uint32_t)u->len[p]);
	uint64_t q[MAX_LEN + 4], seq[MAX_LEN + 4];
	struct pdx_overlap want[MAX_TARGETS];

	memcpy(q, u->local[p], n * sizeof(uint64_t));
	if (t_rng_chance(&r->rng, 20))
		q[t_rng_below(&r->rng, (uint32_t)n)] = random_local(r);
	if (t_rng_chance(&r->rng, 20))
		for (int i = 0; i < 4; i++)
			q[n++] = random_local(r);
	dp_hash_sequence(q, n, seq);

	size_t nwant = model_match(r->m, u, seq, n, want);
	size_t ngot = t_match(&r->t, q, n);

	r->matches++;
	r->answers += ngot;
	cr_assert_eq(ngot, nwant, "match %zu of prompt %zu (%zu blocks): %zu answers, want %zu",
		     r->matches, p, n, ngot, nwant);
	for (size_t i = 0; i < nwant; i++)
		cr_assert(r->t.out[i].target == want[i].target &&
			      r->t.out[i].depth == want[i].depth,
			  "match %zu: answer (%u, %u), want (%u, %u)", r->matches,
			  r->t.out[i].target, r->t.out[i].depth, want[i].target, want[i].depth);
}

/* Entries, holder sets, per-target blocks and counters, all exactly. */
static void check_stats(struct run *r)
{
	const struct model *m = r->m;
	const struct universe *u = r->u;
	struct pdx_stats s = t_stats(&r->t.x);
	uint64_t entries = 0, sets = 0;
	static uint64_t mask[MAX_NODES][MAX_TARGETS / 64];

	for (uint32_t n = 0; n < u->nnodes; n++) {
		bool any = false;

		memset(mask[n], 0, sizeof(mask[n]));
		for (uint32_t t = 0; t < m->ntargets; t++)
			if (m->held[t][n]) {
				mask[n][t / 64] |= 1ull << (t % 64);
				any = true;
			}
		if (!any)
			continue;
		entries++;

		bool seen = false;

		for (uint32_t o = 0; o < n && !seen; o++)
			seen = memcmp(mask[o], mask[n], sizeof(mask[n])) == 0;
		sets += !seen;
	}
	for (uint32_t t = 0; t < m->ntargets; t++)
		cr_assert_eq(pdx_target_blocks(&r->t.x, t), m->nheld[t], "target %u", t);
	cr_assert_eq(s.entries, entries);
	cr_assert_eq(s.holder_sets, sets, "holder sets %lu, want %lu", (unsigned long)s.holder_sets,
		     (unsigned long)sets);
#define SAME(f)                                                                                    \
	cr_assert_eq(s.f, m->st.f, #f " %lu, want %lu", (unsigned long)s.f, (unsigned long)m->st.f)
	SAME(events_dup);
	SAME(events_gap);
	SAME(events_missing);
	SAME(store_unknown_parent);
	SAME(store_self_parent);
	SAME(store_repeat_id);
	SAME(store_id_conflict);
	SAME(store_dup_block);
	SAME(remove_unknown);
	SAME(bad_target);
	SAME(blocks_stored);
	SAME(blocks_removed);
#undef SAME
}

static void model_run(uint64_t seed, uint32_t ntargets, size_t nprompts, uint32_t alphabet,
		      int nops)
{
	struct run r = {.alphabet = alphabet};

	r.u = t_calloc(1, sizeof(*r.u));
	r.m = t_calloc(1, sizeof(*r.m));
	r.m->ntargets = ntargets;
	t_rng_seed(&r.rng, seed);
	universe_build(&r, nprompts);
	t_pdx_open(&r.t, ntargets, 64);
	for (int i = 0; i < nops; i++) {
		uint32_t k = t_rng_below(&r.rng, 100);

		if (k < 40)
			op_store(&r);
		else if (k < 60)
			op_remove(&r);
		else if (k < 61)
			op_clear(&r, false);
		else if (k < 62)
			op_clear(&r, true);
		else
			op_match(&r);
		if (i % 97 == 0)
			check_stats(&r);
		if (i % 1000 == 0)
			pdx_reclaim(&r.t.x);
	}
	check_stats(&r);
	cr_assert_gt(r.answers, r.matches / 2, "too few answers: the run tests little");
	cr_assert_gt(r.m->st.store_id_conflict, 0);
	cr_assert_gt(r.m->st.store_dup_block, 0);
	cr_assert_gt(r.m->st.remove_unknown, 0);
	for (uint32_t t = 0; t < ntargets; t++)
		cr_assert_eq(pdx_drop_target(&r.t.x, t), (long)r.m->nheld[t]);
	cr_expect_eq(pdx_reclaim(&r.t.x), 0);

	struct pdx_stats s = t_stats(&r.t.x);

	cr_expect_eq(s.entries, 0);
	cr_expect_eq(s.holder_sets, 0);
	t_pdx_close(&r.t);
	free(r.u);
	free(r.m);
}

Test(pdx_model, random_events_on_8_targets_match_the_model)
{
	model_run(1, 8, 40, 6, 100000);
}

Test(pdx_model, random_events_on_64_targets_match_the_model)
{
	/* Distinct local hashes: prompts share blocks only where they share a prefix. */
	model_run(2, 64, 64, 1u << 30, 50000);
}

Test(pdx_model, random_events_on_a_tiny_alphabet_match_the_model)
{
	/*
	 * Two local hashes only: prompts collide into few prefixes, holder sets change all the
	 * time, and the same blocks recur in other orders (documents in another order, padding),
	 * which a match must not mistake for the held prefix.
	 */
	model_run(3, 5, 24, 2, 100000);
}

Test(pdx_model, random_events_over_many_seeds_match_the_model)
{
	/* Short runs of every shape: 1 to 40 targets, small and large universes and alphabets. */
	for (uint64_t seed = 10; seed < 74; seed++)
		model_run(seed, 1 + (uint32_t)(seed * 7 % 40), 8 + seed * 5 % 56,
			  seed % 4 ? 2 + (uint32_t)(seed % 7) : 1u << 30, 4000);
}

/* ---- Replays of generated streams (make_indexer_ops.py; see tests/data/README). ---- */

struct replay {
	size_t stores, removes, clears, matches, hits, mismatches, bad_results;
};

static void replay_op(struct t_pdx *t, const struct pdops_op *op, struct replay *rp)
{
	long rc;

	switch (op->kind) {
	case PDOPS_STORE:
		rc = pdx_store(&t->x, op->worker, op->parent ? &op->parent : NULL, op->blocks,
			       op->n);
		rp->stores++;
		rp->bad_results += rc != (long)op->n; /* the stream stores only missing blocks */
		break;
	case PDOPS_REMOVE:
		rc = pdx_remove(&t->x, op->worker, op->hashes, op->n);
		rp->removes++;
		rp->bad_results += rc != (long)op->n;
		break;
	case PDOPS_CLEAR:
		rp->clears++;
		rp->bad_results += pdx_clear(&t->x, op->worker) < 0;
		break;
	case PDOPS_MATCH: {
		size_t k = t_match(t, op->hashes, op->n);
		bool same = k == op->nexpect;

		for (size_t i = 0; same && i < k; i++)
			same = t->out[i].target == op->expect[i].worker &&
			       t->out[i].depth == op->expect[i].depth;
		if (!same && rp->mismatches < 5)
			cr_log_error(
			    "MATCH %zu: %zu answers, want %u; first (%u, %u), want (%u, %u)",
			    rp->matches, k, op->nexpect, k ? t->out[0].target : 0,
			    k ? t->out[0].depth : 0, op->nexpect ? op->expect[0].worker : 0,
			    op->nexpect ? op->expect[0].depth : 0);
		rp->mismatches += !same;
		rp->hits += k > 0;
		rp->matches++;
		break;
	}
	default:
		cr_assert_fail("op kind %u", op->kind);
	}
}

static void replay_file(const char *name)
{
	char path[PATH_MAX];
	struct pdops_file f;
	struct pdops_op op;
	struct replay rp = {0};
	struct t_pdx t;
	int rc;

	snprintf(path, sizeof(path), "%s/%s", PD_TEST_DATA, name);
	rc = pdops_open(&f, path);
	cr_assert_eq(rc, 0, "%s: %s", path, strerror(-rc));
	t_pdx_open(&t, f.num_workers, 0);
	while ((rc = pdops_next(&f, &op)) == 1)
		replay_op(&t, &op, &rp);
	cr_assert_eq(rc, 0, "%s: malformed op after %lu", name, (unsigned long)f.done);
	cr_expect_eq(rp.mismatches, 0, "%s: %zu of %zu MATCH answers differ", name, rp.mismatches,
		     rp.matches);
	cr_expect_eq(rp.bad_results, 0, "%s: %zu events did not apply in full", name,
		     rp.bad_results);
	cr_assert(rp.stores && rp.removes && rp.hits, "%s: %zu stores, %zu removes, %zu hits", name,
		  rp.stores, rp.removes, rp.hits);

	/* What the workers hold adds up, and dropping them all empties the index. */
	struct pdx_stats s = t_stats(&t.x);
	uint64_t held = 0;

	for (uint32_t w = 0; w < f.num_workers; w++)
		held += pdx_target_blocks(&t.x, w);
	cr_expect_eq(held, s.blocks_stored - s.blocks_removed);
	cr_expect_leq(s.entries, held);
	for (uint32_t w = 0; w < f.num_workers; w++) {
		long n = (long)pdx_target_blocks(&t.x, w);

		cr_assert_eq(pdx_drop_target(&t.x, w), n, "worker %u", w);
	}
	s = t_stats(&t.x);
	cr_expect_eq(s.entries, 0);
	cr_expect_eq(s.blocks_stored, s.blocks_removed);
	t_pdx_close(&t);
	pdops_close(&f);
}

Test(pdx_model, replay_of_small_stream_has_no_mismatch)
{
	replay_file("small.ops");
}

Test(pdx_model, replay_of_shared_prefix_stream_has_no_mismatch)
{
	replay_file("small_shared.ops");
}
