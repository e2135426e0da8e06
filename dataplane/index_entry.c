/*
 * Entry slots of the prefix index: chunks of slots that never move, allocation that places a
 * child right after its parent when it can (so readers walk instead of probe, see PDX_CONT in
 * index_pvt.h), and the release of entries no target holds any more. Writer only.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "index.h"

/* A chunk is worth continuing in while at least this many of its slots are free. */
#define CHUNK_ROOMY (PDX_CHUNK_SLOTS / 64)

static bool slot_is_free(const struct pdx *x, uint32_t idx)
{
	const struct pdx_chunk_meta *m = &x->meta[idx >> PDX_CHUNK_SHIFT];
	uint32_t s = pdx_slot_of(idx);

	return m->free_map[s / 64] >> (s % 64) & 1;
}

static void slot_take(struct pdx *x, uint32_t idx)
{
	struct pdx_chunk_meta *m = &x->meta[idx >> PDX_CHUNK_SHIFT];
	uint32_t s = pdx_slot_of(idx);

	m->free_map[s / 64] &= ~(1ull << (s % 64));
	m->nfree--;
	x->free_slots--;
}

static int chunk_add(struct pdx *x)
{
	if (x->nchunks == PDX_MAX_CHUNKS)
		return -ENOMEM;

	uint32_t slab = x->nchunks / PDX_SLAB_CHUNKS;
	struct pdx_chunk_meta *m = &x->meta[x->nchunks];

	m->notes = malloc(sizeof(*m->notes));
	if (m->notes && !x->slabs[slab]) {
		x->slabs[slab] = dp_huge_zalloc(PDX_SLAB_CHUNKS * sizeof(struct pdx_chunk));
		if (x->slabs[slab])
			pdx_stat_add(x, PDX_STAT(bytes), DP_HUGE_PAGE); /* the whole mapping */
	}
	if (!m->notes || !x->slabs[slab]) {
		free(m->notes);
		m->notes = NULL;
		return -ENOMEM;
	}

	struct pdx_chunk *c = &x->slabs[slab][x->nchunks % PDX_SLAB_CHUNKS];

	for (uint32_t i = 0; i < PDX_CHUNK_SLOTS; i++) {
		atomic_init(&c->key[i], 0);
		atomic_init(&c->acc[i], 0);
		atomic_init(&c->holders[i], 0);
	}
	memset(m->free_map, 0xff, sizeof(m->free_map));
	m->nfree = PDX_CHUNK_SLOTS;
	/* Relaxed: no reader looks into the chunk before an index into it is published (R1/R2). */
	atomic_store_explicit(&x->chunk[x->nchunks], c, memory_order_relaxed);
	x->alloc_chunk = x->nchunks++;
	x->free_slots += PDX_CHUNK_SLOTS;
	pdx_stat_add(x, PDX_STAT(bytes), sizeof(*m->notes) + sizeof(x->chunk[0]) + sizeof(*m));
	return 0;
}

/* Pick the chunk to allocate from: the current one while roomy, else a roomy or new one. */
static int chunk_pick(struct pdx *x)
{
	if (x->nchunks && x->meta[x->alloc_chunk].nfree >= CHUNK_ROOMY)
		return 0;
	for (uint32_t i = 1; i <= x->nchunks; i++) {
		uint32_t c = (x->alloc_chunk + i) % x->nchunks;

		if (x->meta[c].nfree >= CHUNK_ROOMY) {
			x->alloc_chunk = c;
			return 0;
		}
	}
	/* Fragmented but half empty: use up scattered slots rather than grow. */
	if (x->free_slots * 2 > (uint64_t)x->nchunks * PDX_CHUNK_SLOTS) {
		for (uint32_t c = 0; c < x->nchunks; c++) {
			if (x->meta[c].nfree) {
				x->alloc_chunk = c;
				return 0;
			}
		}
	}
	return chunk_add(x);
}

int pdx_entry_alloc(struct pdx *x, uint32_t prev, uint32_t *out)
{
	if (prev != PDX_NONE && pdx_slot_of(prev) + 1 < PDX_CHUNK_SLOTS &&
	    slot_is_free(x, prev + 1)) {
		slot_take(x, prev + 1);
		*out = prev + 1;
		return 0;
	}

	int err = chunk_pick(x);

	if (err)
		return err;

	struct pdx_chunk_meta *m = &x->meta[x->alloc_chunk];

	for (uint32_t w = 0; w < PDX_CHUNK_SLOTS / 64; w++) {
		if (m->free_map[w]) {
			uint32_t idx = x->alloc_chunk << PDX_CHUNK_SHIFT | (w * 64 +
				       (uint32_t)__builtin_ctzll(m->free_map[w]));

			slot_take(x, idx);
			*out = idx;
			return 0;
		}
	}
	return -ENOMEM; /* unreachable: chunk_pick() found free slots */
}

/* Return a slot to the allocator: retired ones once readers moved on, or one never published. */
void pdx_entry_free_slot(struct pdx *x, uint32_t idx)
{
	struct pdx_chunk_meta *m = &x->meta[idx >> PDX_CHUNK_SHIFT];
	uint32_t s = pdx_slot_of(idx);

	m->free_map[s / 64] |= 1ull << (s % 64);
	m->nfree++;
	x->free_slots++;
}

uint64_t pdx_entry_depth(const struct pdx *x, uint32_t idx)
{
	const struct pdx_chunk *c = pdx_chunk_of(x, idx);
	uint32_t s = pdx_slot_of(idx);

	/* PDX_CONT never marks a chunk's first slot, so the walk stays in the chunk. */
	while (atomic_load_explicit(&c->holders[s], memory_order_relaxed) & PDX_CONT)
		s--;

	uint32_t head = idx - (pdx_slot_of(idx) - s);
	uint32_t promoted = pdx_idmap_get(&x->head_depth, head);

	return (promoted != PDX_NONE ? promoted
				     : atomic_load_explicit(&c->acc[s], memory_order_relaxed)) +
	       (idx - head);
}

/* Does freeing entry @idx make an orphan of the child in the next slot? */
static bool has_next_child(const struct pdx *x, uint32_t idx)
{
	const struct pdx_chunk *c = pdx_chunk_of(x, idx);
	uint32_t s = pdx_slot_of(idx);

	return s + 1 < PDX_CHUNK_SLOTS &&
	       (atomic_load_explicit(&c->holders[s + 1], memory_order_relaxed) & PDX_CONT);
}

int pdx_entry_release_reserve(struct pdx *x, uint32_t idx)
{
	if (!has_next_child(x, idx))
		return 0;
	return pdx_table_reserve(x, 1) || pdx_idmap_reserve(x, &x->head_depth, 1) ? -ENOMEM : 0;
}

/*
 * An orphan's acc continues its old parent's and cannot change under readers, so its depth,
 * as a new run head, is kept aside. Depths past what the map can hold (no prompt is that
 * long) are kept short: only terms no reader ever asks for come out different.
 */
static void promoted_put(struct pdx *x, uint32_t idx, uint64_t depth)
{
	pdx_idmap_put(&x->head_depth, idx,
		      depth < PDX_SLOT_TOMB ? (uint32_t)depth : PDX_SLOT_TOMB - 1);
}

/*
 * Free entry @idx, which no target holds any more. If the next slot holds its child, that
 * child becomes the head of its run and goes into the table: the caller has made room with
 * pdx_entry_release_reserve(), so this cannot fail.
 */
void pdx_entry_release(struct pdx *x, uint32_t idx)
{
	struct pdx_chunk *c = pdx_chunk_of(x, idx);
	uint32_t s = pdx_slot_of(idx), pos;
	uint64_t h = atomic_load_explicit(&c->holders[s], memory_order_relaxed);

	if (!(h & PDX_CONT))
		pdx_table_delete(x, atomic_load_explicit(&c->key[s], memory_order_relaxed), idx);
	if (has_next_child(x, idx)) {
		uint64_t child = atomic_load_explicit(&c->holders[s + 1], memory_order_relaxed);

		promoted_put(x, idx + 1, pdx_entry_depth(x, idx) + 1);
		pdx_table_insert(x, atomic_load_explicit(&c->key[s + 1], memory_order_relaxed),
				 idx + 1);
		/*
		 * R5: the orphan is in the table before it loses PDX_CONT, so a reader that sees
		 * the bit gone finds it by probing. A reader that still sees the bit reads the old
		 * parent, retired and readable until it leaves.
		 */
		atomic_store_explicit(&c->holders[s + 1], child & ~PDX_CONT, memory_order_release);
	}
	if (x->head_depth.live && pdx_idmap_find(&x->head_depth, idx, &pos) != PDX_NONE)
		pdx_idmap_del_at(&x->head_depth, pos);
	/* Relaxed: an empty holders word publishes nothing; readers treat it as absent. */
	atomic_store_explicit(&c->holders[s], 0, memory_order_relaxed);
	pdx_entry_touch(x, idx);
	pdx_stat_add(x, PDX_STAT(entries), -1);
	/* Out of memory for the retire list: the slot leaks rather than being reused under a reader. */
	(void)pdx_retire(x, PDX_RETIRED_ENTRY, idx, NULL);
}

/* Note that slot @idx changed, so the spans around it get recomputed. */
void pdx_entry_touch(struct pdx *x, uint32_t idx)
{
	struct pdx_dirty *d = x->ndirty ? &x->dirty[x->ndirty - 1] : NULL;

	if (d && idx >> PDX_CHUNK_SHIFT == d->lo >> PDX_CHUNK_SHIFT && idx + 1 >= d->lo &&
	    idx <= d->hi + 1) {
		d->lo = idx < d->lo ? idx : d->lo;
		d->hi = idx > d->hi ? idx : d->hi;
		return;
	}
	if (x->ndirty == PDX_DIRTY_RANGES)
		pdx_spans_update(x);
	x->dirty[x->ndirty++] = (struct pdx_dirty){.lo = idx, .hi = idx};
}

/* Does slot @s + 1 continue slot @s's run with the same holders? */
static bool continues(const struct pdx_chunk *c, uint32_t s)
{
	uint64_t h = atomic_load_explicit(&c->holders[s], memory_order_relaxed);

	if (!h || s + 1 >= PDX_CHUNK_SLOTS)
		return false;

	uint64_t next = atomic_load_explicit(&c->holders[s + 1], memory_order_relaxed);

	return (next & (PDX_SET_MASK | PDX_CONT)) == ((h & PDX_SET_MASK) | PDX_CONT);
}

/*
 * Recompute the spans from the last dirty slot down: span(s) = span(s+1) + 1 while the run
 * continues. Below the dirty range, stop at the first span that was already right.
 */
static void spans_fix(struct pdx *x, uint32_t lo_idx, uint32_t hi_idx)
{
	struct pdx_chunk *c = pdx_chunk_of(x, lo_idx);
	uint32_t lo = pdx_slot_of(lo_idx);

	for (int64_t s = pdx_slot_of(hi_idx); s >= 0; s--) {
		uint64_t h = atomic_load_explicit(&c->holders[s], memory_order_relaxed);
		uint32_t next = s + 1 < PDX_CHUNK_SLOTS ?
			pdx_span_of(atomic_load_explicit(&c->holders[s + 1], memory_order_relaxed)) :
			0;
		uint32_t span = continues(c, (uint32_t)s) ? next + 1 : 0;

		if (s < lo && span == pdx_span_of(h))
			break;
		if (!h)
			continue;
		/* R1: the slots the span covers are complete; pairs with A1 in the reader. */
		atomic_store_explicit(&c->holders[s],
				      (h & ~(~0ull << PDX_SPAN_SHIFT)) |
					      (uint64_t)span << PDX_SPAN_SHIFT,
				      memory_order_release);
	}
}

void pdx_spans_update(struct pdx *x)
{
	/* Any order: each fix-up carries on downwards until the spans below it are right. */
	while (x->ndirty) {
		struct pdx_dirty *d = &x->dirty[--x->ndirty];

		spans_fix(x, d->lo, d->hi);
	}
}

void pdx_entries_destroy(struct pdx *x)
{
	for (uint32_t i = 0; i < x->nchunks; i++)
		free(x->meta[i].notes);
	for (uint32_t i = 0; i < x->nchunks; i += PDX_SLAB_CHUNKS)
		dp_huge_free(x->slabs[i / PDX_SLAB_CHUNKS],
			      PDX_SLAB_CHUNKS * sizeof(struct pdx_chunk));
	free(x->slabs);
	dp_sparse_free(x->chunk, PDX_MAX_CHUNKS * sizeof(*x->chunk));
	dp_sparse_free(x->meta, PDX_MAX_CHUNKS * sizeof(*x->meta));
}
