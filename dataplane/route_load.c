/*
 * Predicted load of one dataplane core (routing-semantics §3): what it routed and has not seen
 * finish. Per target: distinct in-flight blocks (deduplicated by sequence hash with reference
 * counts) and prefill tokens not yet prefilled; per request: a slot that remembers what to give
 * back. Only the owning core runs this file; other cores read the per-target counters.
 *
 * The dedup table is open addressing with linear probing and holds two kinds of slot: a
 * prefix with the targets it is in flight on, and a pair (prefix, target) with its reference
 * count. A prefix in flight on one target only (most of any prompt) names it inline with its
 * count: one slot, one probe. A shared one keeps a bitmap of its targets, so that finding which
 * targets already carry a prompt's leading blocks is a few word ANDs per block, whatever the
 * number of targets, and a pair slot per target, found in O(1). In-flight blocks are
 * prefix-closed (a request brings blocks 0..n-1 together), so holder sets only shrink along a
 * prompt and rt_share_already() stops where the set empties.
 * Deletion shifts slots back instead of leaving tombstones, so probe runs never rot.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "huge.h"
#include "route.h"

#define RT_PREFETCH_AHEAD 8u
/* A prefix slot's value: a bitmap index + 1, or one holder inline with its references. */
#define RT_VAL_SINGLE (1u << 31)
#define RT_VAL_TARGET 0xFFFFu
#define RT_VAL_REFS_SHIFT 16
#define RT_VAL_REFS_MAX 0x7FFFu
#define RT_SETS_BYTES (16u << 20) /* holder bitmaps per core, at most */

static inline uint32_t map_home(const struct rt_share *s, uint64_t seq, uint32_t tag)
{
	uint64_t h = seq ^ ((uint64_t)tag + 1) * 0x9E3779B97F4A7C15ull;

	return (uint32_t)(h ^ h >> 32) & s->map_mask;
}

/* Slot holding (@seq, @tag), or the empty slot that ends its probe run. */
static uint32_t map_find(const struct rt_share *s, uint64_t seq, uint32_t tag)
{
	uint32_t j = map_home(s, seq, tag);

	while (s->map[j].val && (s->map[j].seq != seq || s->map[j].tag != tag))
		j = (j + 1) & s->map_mask;
	return j;
}

/* Empty slot @i and shift later slots of its probe run back into the hole. */
static void map_delete(struct rt_share *s, uint32_t i)
{
	uint32_t j = i;

	for (;;) {
		j = (j + 1) & s->map_mask;
		if (!s->map[j].val)
			break;
		/* The slot at j may fill hole i when i lies between its home and j. */
		if (((j - map_home(s, s->map[j].seq, s->map[j].tag)) & s->map_mask) >=
		    ((j - i) & s->map_mask)) {
			s->map[i] = s->map[j];
			i = j;
		}
	}
	s->map[i].val = 0;
	s->map_live--;
}

static inline uint64_t *set_at(const struct rt_share *s, uint32_t idx)
{
	return &s->sets[(size_t)idx * (s->set_words + 1)];
}

/*
 * Word @k of the holder set of the prefix in slot @p. A prefix held by one target (the usual
 * case for the tail of a prompt) names it inline instead of taking a bitmap.
 */
static inline uint64_t holders_word(const struct rt_share *s, const struct rt_active *p, uint32_t k)
{
	if (p->val & RT_VAL_SINGLE)
		return (p->val & RT_VAL_TARGET) / 64 == k ? 1ull << (p->val & RT_VAL_TARGET) % 64 : 0;
	return set_at(s, p->val - 1)[1 + k];
}


int rt_share_init(struct rt_share *s, const struct rt_config *cfg, uint32_t core)
{
	/* Each request may leave one chunk partly empty. */
	uint32_t nchunks = cfg->max_inflight_blocks / RT_CHUNK_SEQS + cfg->max_requests;
	uint32_t cap = 2, nsets; /* cap < 2^29 slots: max_active_blocks <= RT_ACTIVE_BLOCKS_LIMIT */

	memset(s, 0, sizeof(*s));
	s->core = core;
	/* Pairs and prefixes are at most max_active_blocks each: half full at worst. */
	while (cap < 4 * cfg->max_active_blocks)
		cap <<= 1;
	s->map_mask = cap - 1;
	s->map_limit = cfg->max_active_blocks;
	s->set_words = (cfg->max_targets + 63) / 64;
	/* Only prefixes in flight on two targets or more take a bitmap: the shared ones. */
	nsets = RT_SETS_BYTES / (8 * (s->set_words + 1));
	if (nsets > cfg->max_active_blocks / 4 + 1)
		nsets = cfg->max_active_blocks / 4 + 1;
	s->tl = calloc(cfg->max_targets, sizeof(*s->tl));
	s->inflight = calloc(cfg->max_targets, sizeof(*s->inflight));
	s->map_bytes = (size_t)cap * sizeof(*s->map);
	s->sets_bytes = (size_t)nsets * (s->set_words + 1) * sizeof(uint64_t);
	s->map = dp_huge_zalloc(s->map_bytes);
	s->sets = dp_huge_zalloc(s->sets_bytes);
	s->alive = calloc(s->set_words, sizeof(uint64_t));
	s->chunk_seq = calloc((size_t)nchunks * RT_CHUNK_SEQS, sizeof(uint64_t));
	s->chunk_next = calloc(nchunks, sizeof(uint32_t));
	s->req = calloc(cfg->max_requests, sizeof(*s->req));
	if (!s->tl || !s->inflight || !s->map || !s->sets || !s->alive || !s->chunk_seq ||
	    !s->chunk_next || !s->req) {
		rt_share_destroy(s);
		return -ENOMEM;
	}
	for (uint32_t i = 0; i < nsets; i++)
		set_at(s, i)[0] = i + 1 < nsets ? i + 1 : RT_NIL;
	for (uint32_t c = 0; c < nchunks; c++)
		s->chunk_next[c] = c + 1 < nchunks ? c + 1 : RT_NIL;
	for (uint32_t r = 0; r < cfg->max_requests; r++)
		s->req[r].next = r + 1 < cfg->max_requests ? r + 1 : RT_NIL;
	s->free_head = 0;
	s->fifo_head = s->fifo_tail = RT_NIL;
	return 0;
}

void rt_share_destroy(struct rt_share *s)
{
	free(s->tl);
	free(s->inflight);
	dp_huge_free(s->map, s->map_bytes);
	dp_huge_free(s->sets, s->sets_bytes);
	free(s->alive);
	free(s->chunk_seq);
	free(s->chunk_next);
	free(s->req);
	memset(s, 0, sizeof(*s));
}

/* Targets in @gone leave the walk at block @depth: that many leading blocks are in flight. */
static void walk_drop(uint64_t gone, uint32_t word, uint32_t depth, uint32_t *already,
		      uint16_t *touched, uint32_t *ntouched)
{
	for (; gone; gone &= gone - 1) {
		uint32_t t = word * 64 + (uint32_t)__builtin_ctzll(gone);

		already[t] = depth;
		touched[(*ntouched)++] = (uint16_t)t;
	}
}

void rt_share_already(struct rt_share *s, const uint64_t *seq, uint32_t n, uint32_t *already,
		      uint16_t *touched, uint32_t *ntouched)
{
	const struct rt_active *p;
	uint32_t lo = 0, hi = s->set_words; /* words of @alive that may be non-zero */
	uint32_t i;

	if (!n || !(p = &s->map[map_find(s, seq[0], RT_TAG_PREFIX)])->val)
		return;
	for (uint32_t k = 0; k < s->set_words; k++)
		s->alive[k] = holders_word(s, p, k);
	for (i = 1; i < n; i++) {
		uint32_t next_lo = hi, next_hi = lo;

		if (i + RT_PREFETCH_AHEAD < n)
			__builtin_prefetch(
			    &s->map[map_home(s, seq[i + RT_PREFETCH_AHEAD], RT_TAG_PREFIX)]);
		p = &s->map[map_find(s, seq[i], RT_TAG_PREFIX)];
		for (uint32_t k = lo; k < hi; k++) {
			uint64_t keep = p->val ? s->alive[k] & holders_word(s, p, k) : 0;

			walk_drop(s->alive[k] & ~keep, k, i, already, touched, ntouched);
			s->alive[k] = keep;
			if (keep) {
				next_lo = next_lo < k ? next_lo : k;
				next_hi = k + 1;
			}
		}
		if (next_lo >= next_hi)
			return;
		lo = next_lo; /* most prompts narrow to a target or two within a few blocks */
		hi = next_hi;
	}
	for (uint32_t k = lo; k < hi; k++)
		walk_drop(s->alive[k], k, n, already, touched, ntouched);
}

/* A new holder bitmap with no member, or RT_NIL when none is left. */
static uint32_t set_new(struct rt_share *s)
{
	uint32_t idx = s->set_free;
	uint64_t *set;

	if (idx == RT_NIL)
		return RT_NIL;
	set = set_at(s, idx);
	s->set_free = (uint32_t)set[0];
	memset(set, 0, (s->set_words + 1) * sizeof(uint64_t));
	return idx;
}

static void set_put(struct rt_share *s, uint32_t idx, uint32_t target, bool member)
{
	uint64_t *set = set_at(s, idx);

	if (member)
		set[1 + target / 64] |= 1ull << target % 64;
	else
		set[1 + target / 64] &= ~(1ull << target % 64);
	set[0] += member ? 1 : -1;
}

/*
 * The prefix in slot @p is held by one target alone, inline: give it a bitmap and move that
 * target's references into a pair slot of their own. -ENOSPC when no bitmap is left.
 */
static int prefix_share(struct rt_share *s, uint32_t p)
{
	uint32_t only = s->map[p].val & RT_VAL_TARGET, idx = set_new(s), j;

	if (idx == RT_NIL)
		return -ENOSPC;
	j = map_find(s, s->map[p].seq, only); /* free: a lone holder has no pair slot */
	s->map[j] = (struct rt_active){.seq = s->map[p].seq, .tag = only,
				       .val = s->map[p].val >> RT_VAL_REFS_SHIFT & RT_VAL_REFS_MAX};
	s->map_live++;
	set_put(s, idx, only, true);
	s->map[p].val = idx + 1; /* inserting at j moved no other slot: p still holds it */
	return 0;
}

/*
 * Take a reference on (@seq, @target): 1 when the block is new on the target, 0 when it was in
 * flight there already, -ENOSPC when the table or the holder bitmaps are full. A prefix held by
 * one target (every block of a prompt past what others share) costs one slot and one probe.
 */
static int map_ref(struct rt_share *s, uint64_t seq, uint32_t target)
{
	uint32_t p = map_find(s, seq, RT_TAG_PREFIX), j;
	struct rt_active *pre = &s->map[p];

	if (!pre->val) {
		if (s->pairs >= s->map_limit)
			return -ENOSPC;
		*pre = (struct rt_active){.seq = seq, .tag = RT_TAG_PREFIX,
					  .val = RT_VAL_SINGLE | 1u << RT_VAL_REFS_SHIFT | target};
		s->map_live++;
		s->pairs++;
		return 1;
	}
	if (pre->val & RT_VAL_SINGLE) {
		if ((pre->val & RT_VAL_TARGET) == target &&
		    (pre->val >> RT_VAL_REFS_SHIFT & RT_VAL_REFS_MAX) < RT_VAL_REFS_MAX) {
			pre->val += 1u << RT_VAL_REFS_SHIFT;
			return 0;
		}
		if (prefix_share(s, p)) /* a second holder, or more references than fit */
			return -ENOSPC;
	}
	j = map_find(s, seq, target);
	if (s->map[j].val) {
		s->map[j].val++;
		return 0;
	}
	if (s->pairs >= s->map_limit)
		return -ENOSPC;
	s->map[j] = (struct rt_active){.seq = seq, .tag = target, .val = 1};
	s->map_live++;
	s->pairs++;
	set_put(s, s->map[p].val - 1, target, true); /* p did not move: j was a free slot */
	return 1;
}

/* Drop a reference on (@seq, @target): 1 when the block left the target, 0 otherwise. */
static int map_unref(struct rt_share *s, uint64_t seq, uint32_t target)
{
	uint32_t p = map_find(s, seq, RT_TAG_PREFIX), j, idx;
	struct rt_active *pre = &s->map[p];

	if (!pre->val)
		return 0; /* never taken while the request's record and the table agree */
	if (pre->val & RT_VAL_SINGLE) {
		if ((pre->val & RT_VAL_TARGET) != target)
			return 0;
		if ((pre->val >> RT_VAL_REFS_SHIFT & RT_VAL_REFS_MAX) > 1) {
			pre->val -= 1u << RT_VAL_REFS_SHIFT;
			return 0;
		}
		map_delete(s, p);
		s->pairs--;
		return 1;
	}
	idx = pre->val - 1;
	j = map_find(s, seq, target);
	if (!s->map[j].val || --s->map[j].val)
		return 0;
	map_delete(s, j);
	s->pairs--;
	set_put(s, idx, target, false);
	if (set_at(s, idx)[0] == 0) {
		set_at(s, idx)[0] = s->set_free;
		s->set_free = idx;
		map_delete(s, map_find(s, seq, RT_TAG_PREFIX)); /* deleting j may have moved it */
	}
	return 1;
}

/*
 * A handle: slot + 1 in bits 0-31, the owning core in bits 32-39 (a handle released on another
 * core is refused, not mistaken for that core's request), the slot's generation in bits 40-63
 * (a released handle misses once the slot is reused).
 */
#define RT_GEN_MASK 0xFFFFFFu

static uint64_t handle_of(const struct rt_share *s, uint32_t slot)
{
	return (uint64_t)(s->req[slot].gen & RT_GEN_MASK) << 40 | (uint64_t)s->core << 32 |
	       (slot + 1u);
}

/* Slot of a handle still in flight on this core, or RT_NIL. */
static uint32_t slot_of(const struct rt_share *s, uint32_t max_requests, rt_load_t h)
{
	uint32_t slot = (uint32_t)h - 1u;

	if (!h || slot >= max_requests || (h >> 32 & 0xFF) != s->core || !s->req[slot].live ||
	    (s->req[slot].gen & RT_GEN_MASK) != h >> 40)
		return RT_NIL;
	return slot;
}

static void fifo_append(struct rt_share *s, uint32_t slot)
{
	s->req[slot].prev = s->fifo_tail;
	s->req[slot].next = RT_NIL;
	if (s->fifo_tail != RT_NIL)
		s->req[s->fifo_tail].next = slot;
	else
		s->fifo_head = slot;
	s->fifo_tail = slot;
}

static void fifo_unlink(struct rt_share *s, uint32_t slot)
{
	struct rt_inflight *r = &s->req[slot];

	if (r->prev != RT_NIL)
		s->req[r->prev].next = r->next;
	else
		s->fifo_head = r->next;
	if (r->next != RT_NIL)
		s->req[r->next].prev = r->prev;
	else
		s->fifo_tail = r->prev;
}

/* Record @n blocks of @seq in flight on the request in @slot; returns blocks newly active. */
static uint64_t add_mapped(struct rt_share *s, uint32_t slot, const uint64_t *seq, uint32_t n)
{
	struct rt_inflight *r = &s->req[slot];
	uint32_t *link = &r->chunk, at = RT_CHUNK_SEQS;
	uint64_t *chunk = NULL, fresh = 0;

	for (uint32_t i = 0; i < n; i++) {
		int fresh1;

		if (i + RT_PREFETCH_AHEAD < n) {
			uint64_t ahead = seq[i + RT_PREFETCH_AHEAD];

			__builtin_prefetch(&s->map[map_home(s, ahead, r->target)]);
			__builtin_prefetch(&s->map[map_home(s, ahead, RT_TAG_PREFIX)]);
		}
		if (at == RT_CHUNK_SEQS) {
			if (s->chunk_free == RT_NIL)
				break;
			*link = s->chunk_free;
			chunk = &s->chunk_seq[(size_t)s->chunk_free * RT_CHUNK_SEQS];
			s->chunk_free = s->chunk_next[s->chunk_free];
			link = &s->chunk_next[*link];
			*link = RT_NIL;
			at = 0;
		}
		fresh1 = map_ref(s, seq[i], r->target);
		if (fresh1 < 0)
			break;
		chunk[at++] = seq[i];
		fresh += (uint64_t)fresh1;
		r->nmapped++;
	}
	return fresh;
}

int rt_share_add(struct rt_share *s, const struct rt_share_load *a, rt_load_t *out,
		 uint32_t *untracked)
{
	uint32_t slot = s->free_head;
	struct rt_inflight *r;
	uint64_t fresh;

	if (slot == RT_NIL)
		return -ENOBUFS;
	r = &s->req[slot];
	s->free_head = r->next;
	r->start_ns = a->now_ns;
	r->target = a->target;
	r->live = true;
	r->prefill_tokens = a->prefill_tokens;
	r->prefill_pending = a->prefill_tokens > 0;
	r->nmapped = 0;
	r->chunk = RT_NIL;
	fresh = a->seq ? add_mapped(s, slot, a->seq, a->blocks) : 0;
	r->nprivate = a->blocks - r->nmapped;
	*untracked = a->seq ? r->nprivate : 0;
	dp_relaxed_add(&s->tl[a->target].blocks, fresh + r->nprivate, 0);
	dp_relaxed_add(&s->tl[a->target].prefill_tokens, r->prefill_tokens, 0);
	/* Relaxed, one writer: published to the control thread by the decision's end (R6). */
	dp_relaxed_add(&s->inflight[a->target], 1, 0);
	fifo_append(s, slot);
	*out = handle_of(s, slot);
	return 0;
}

int rt_share_first_token(struct rt_share *s, uint32_t max_requests, rt_load_t h)
{
	uint32_t slot = slot_of(s, max_requests, h);
	struct rt_inflight *r;

	if (slot == RT_NIL)
		return -ESTALE;
	r = &s->req[slot];
	if (r->prefill_pending) {
		dp_relaxed_add(&s->tl[r->target].prefill_tokens, 0, r->prefill_tokens);
		r->prefill_pending = false;
	}
	return 0;
}

/* Give back everything the request in @slot holds and free the slot. */
static void release_slot(struct rt_share *s, uint32_t slot)
{
	struct rt_inflight *r = &s->req[slot];
	uint64_t gone = r->nprivate;
	uint32_t c = r->chunk, left = r->nmapped;

	while (c != RT_NIL) {
		const uint64_t *chunk = &s->chunk_seq[(size_t)c * RT_CHUNK_SEQS];
		uint32_t next = s->chunk_next[c];

		for (uint32_t i = 0; i < RT_CHUNK_SEQS && left; i++, left--)
			gone += (uint64_t)map_unref(s, chunk[i], r->target);
		s->chunk_next[c] = s->chunk_free;
		s->chunk_free = c;
		c = next;
	}
	dp_relaxed_add(&s->tl[r->target].blocks, 0, gone);
	if (r->prefill_pending)
		dp_relaxed_add(&s->tl[r->target].prefill_tokens, 0, r->prefill_tokens);
	dp_relaxed_add(&s->inflight[r->target], 0, 1);
	fifo_unlink(s, slot);
	r->live = false;
	r->gen++;
	r->next = s->free_head;
	s->free_head = slot;
}

int rt_share_release(struct rt_share *s, uint32_t max_requests, rt_load_t h)
{
	uint32_t slot = slot_of(s, max_requests, h);

	if (slot == RT_NIL)
		return -ESTALE;
	release_slot(s, slot);
	return 0;
}

size_t rt_share_sweep(struct rt_share *s, uint64_t now_ns, uint64_t expiry_ns)
{
	size_t n = 0;

	/* The FIFO is in routing order, so the first young request ends the sweep. */
	while (s->fifo_head != RT_NIL) {
		uint64_t start = s->req[s->fifo_head].start_ns;

		if (now_ns < start || now_ns - start < expiry_ns)
			break;
		release_slot(s, s->fifo_head);
		n++;
	}
	return n;
}
