/*
 * Predicted load of one dataplane core (routing-semantics §3): what it routed and has not seen
 * finish. Per target: distinct in-flight blocks (deduplicated by sequence hash with reference
 * counts) and prefill tokens not yet prefilled; per request: a slot that remembers what to give
 * back. Only the owning core runs this file; other cores read the per-target counters.
 *
 * The dedup table is open addressing with linear probing, keyed by sequence hash alone, so every
 * target holding a prefix sits in one probe run and one walk finds them all. In-flight blocks
 * are prefix-closed (a request brings blocks 0..n-1 together), so the blocks of a prompt already
 * in flight on a target are a leading run: rt_share_already() stops at the first block no target
 * has. Deletion shifts entries back instead of leaving tombstones, so probe runs never rot.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "route.h"

#define RT_PREFETCH_AHEAD 8u

static inline uint32_t map_home(const struct rt_share *s, uint64_t seq)
{
	return (uint32_t)(seq ^ (seq >> 32)) & s->map_mask;
}

/* Single writer: a relaxed load and store make an exact update; readers take any recent value. */
static inline void tl_add(_Atomic uint64_t *v, uint64_t add, uint64_t sub)
{
	atomic_store_explicit(v, atomic_load_explicit(v, memory_order_relaxed) + add - sub,
			      memory_order_relaxed);
}

int rt_share_init(struct rt_share *s, const struct rt_config *cfg)
{
	uint32_t cap = 2, nchunks = 2 * (cfg->max_active_blocks / RT_CHUNK_SEQS + 1);

	memset(s, 0, sizeof(*s));
	while (cap < 2 * cfg->max_active_blocks)
		cap <<= 1;
	s->map_mask = cap - 1;
	s->map_limit = cfg->max_active_blocks;
	s->tl = calloc(cfg->max_targets, sizeof(*s->tl));
	s->map = calloc(cap, sizeof(*s->map));
	s->chunk_seq = calloc((size_t)nchunks * RT_CHUNK_SEQS, sizeof(uint64_t));
	s->chunk_next = calloc(nchunks, sizeof(uint32_t));
	s->req = calloc(cfg->max_requests, sizeof(*s->req));
	if (!s->tl || !s->map || !s->chunk_seq || !s->chunk_next || !s->req) {
		rt_share_destroy(s);
		return -ENOMEM;
	}
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
	free(s->map);
	free(s->chunk_seq);
	free(s->chunk_next);
	free(s->req);
	memset(s, 0, sizeof(*s));
}

void rt_share_already(const struct rt_share *s, const uint64_t *seq, uint32_t n,
		      uint32_t *already, uint16_t *touched, uint32_t *ntouched)
{
	for (uint32_t i = 0; i < n; i++) {
		bool any = false;

		if (i + RT_PREFETCH_AHEAD < n)
			__builtin_prefetch(&s->map[map_home(s, seq[i + RT_PREFETCH_AHEAD])]);
		for (uint32_t j = map_home(s, seq[i]); s->map[j].refs; j = (j + 1) & s->map_mask) {
			uint32_t t = s->map[j].target;

			/* already[t] == i keeps the count leading-only even if closure broke. */
			if (s->map[j].seq != seq[i] || already[t] != i)
				continue;
			if (i == 0)
				touched[(*ntouched)++] = (uint16_t)t;
			already[t]++;
			any = true;
		}
		if (!any)
			break;
	}
}

/* Take a reference on (@seq, @target): 1 when it is new, 0 when it was in flight already. */
static int map_ref(struct rt_share *s, uint64_t seq, uint32_t target)
{
	uint32_t j = map_home(s, seq);

	for (; s->map[j].refs; j = (j + 1) & s->map_mask) {
		if (s->map[j].seq == seq && s->map[j].target == target) {
			s->map[j].refs++;
			return 0;
		}
	}
	s->map[j] = (struct rt_active){.seq = seq, .target = target, .refs = 1};
	s->map_live++;
	return 1;
}

/* Empty slot @i and shift later entries of its probe run back into the hole. */
static void map_delete(struct rt_share *s, uint32_t i)
{
	uint32_t j = i;

	for (;;) {
		j = (j + 1) & s->map_mask;
		if (!s->map[j].refs)
			break;
		/* The entry at j may fill hole i when i lies between its home and j. */
		if (((j - map_home(s, s->map[j].seq)) & s->map_mask) >= ((j - i) & s->map_mask)) {
			s->map[i] = s->map[j];
			i = j;
		}
	}
	s->map[i].refs = 0;
	s->map_live--;
}

/* Drop a reference on (@seq, @target): 1 when the block left, 0 when others still hold it. */
static int map_unref(struct rt_share *s, uint64_t seq, uint32_t target)
{
	for (uint32_t j = map_home(s, seq); s->map[j].refs; j = (j + 1) & s->map_mask) {
		if (s->map[j].seq == seq && s->map[j].target == target) {
			if (--s->map[j].refs)
				return 0;
			map_delete(s, j);
			return 1;
		}
	}
	return 0; /* never reached while the request's record and the table agree */
}

static uint64_t handle_of(const struct rt_share *s, uint32_t slot)
{
	return (uint64_t)s->req[slot].gen << 32 | (slot + 1u);
}

/* Slot of a handle still in flight, or RT_NIL. */
static uint32_t slot_of(const struct rt_share *s, uint32_t max_requests, rt_load_t h)
{
	uint32_t slot = (uint32_t)h - 1u;

	if (!h || slot >= max_requests || !s->req[slot].live || s->req[slot].gen != h >> 32)
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
		if (i + RT_PREFETCH_AHEAD < n)
			__builtin_prefetch(&s->map[map_home(s, seq[i + RT_PREFETCH_AHEAD])]);
		if (at == RT_CHUNK_SEQS) {
			if (s->chunk_free == RT_NIL || s->map_live >= s->map_limit)
				break;
			*link = s->chunk_free;
			chunk = &s->chunk_seq[(size_t)s->chunk_free * RT_CHUNK_SEQS];
			s->chunk_free = s->chunk_next[s->chunk_free];
			link = &s->chunk_next[*link];
			*link = RT_NIL;
			at = 0;
		} else if (s->map_live >= s->map_limit) {
			break;
		}
		chunk[at++] = seq[i];
		fresh += (uint64_t)map_ref(s, seq[i], r->target);
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
	tl_add(&s->tl[a->target].blocks, fresh + r->nprivate, 0);
	tl_add(&s->tl[a->target].prefill_tokens, r->prefill_tokens, 0);
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
		tl_add(&s->tl[r->target].prefill_tokens, 0, r->prefill_tokens);
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
	tl_add(&s->tl[r->target].blocks, 0, gone);
	if (r->prefill_pending)
		tl_add(&s->tl[r->target].prefill_tokens, 0, r->prefill_tokens);
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
