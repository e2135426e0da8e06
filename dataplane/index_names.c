/*
 * External block ids: which entry a target's id names, for REMOVED events and STORED parents.
 * Writer only, so no atomics.
 *
 * Engines name a block by an id of their own; engines of one model usually agree on it (it is
 * their hash of the prefix), so a per-target map would store the same pairs once per holder.
 * Instead each entry keeps one name, the id it was first stored under, in a table shared by
 * all targets; a target that holds the entry under that name needs no record of its own. Only
 * a target that holds an entry under a different id gets an alias: its `aliases` map from that
 * id to the entry, and the entry in its `aliased` set, so the entry's own name does not count
 * as one of the target's ids.
 *
 * The table is open addressing over buckets of one cache line: twelve 7-bit tags of the names'
 * hashes, compared all at once, and the twelve entry indexes; an entry's name is read only when
 * its tag agrees (1 in 128 for another name). A full bucket sends a new name on to the next
 * one and counts it in its overflow byte; a lookup stops at the first bucket without overflow,
 * so an unknown id (every new block a STORED event brings) costs one line, deletions leave no
 * tombstones, and the table can run 90% full. Several entries may carry the same name (engines
 * whose ids are unique only per engine): a lookup checks every one.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "index.h"

#if defined(__SSE2__)
#include <emmintrin.h>
#endif

#define NAME_MIN_BUCKETS 4u
#define NAME_OVERFLOW_STUCK UINT8_MAX /* too many to count: left as is until a rebuild */

/* Entries ahead whose bucket a rebuild prefetches. */
#define REBUILD_AHEAD 16

_Static_assert(sizeof(struct pdx_name_bucket) == 64, "a bucket is one cache line");

static inline uint64_t name_mix(uint64_t ext)
{
	return ext * 0x9E3779B97F4A7C15ull;
}

static inline uint32_t name_home(const struct pdx_names *t, uint64_t ext)
{
	/* The mix's top 32 bits scaled to [0, buckets): no modulo, any size. */
	return (uint32_t)((name_mix(ext) >> 32) * t->nbuckets >> 32);
}

/* Never 0, which marks a free slot. */
static inline uint8_t name_tag(uint64_t ext)
{
	return (uint8_t)(0x80 | (name_mix(ext) >> 25 & 0x7F));
}

static inline uint32_t name_next(const struct pdx_names *t, uint32_t b)
{
	return b + 1 == t->nbuckets ? 0 : b + 1;
}

/* Bit i set where slot i of @k has @tag (0: the free slots). */
static inline uint32_t tag_matches(const struct pdx_name_bucket *k, uint8_t tag)
{
#if defined(__SSE2__)
	__m128i tags = _mm_load_si128((const __m128i *)k->tag);

	return (uint32_t)_mm_movemask_epi8(_mm_cmpeq_epi8(tags, _mm_set1_epi8((char)tag))) &
	       ((1u << PDX_NAME_SLOTS) - 1);
#else
	uint32_t m = 0;

	for (uint32_t i = 0; i < PDX_NAME_SLOTS; i++)
		m |= (uint32_t)(k->tag[i] == tag) << i;
	return m;
#endif
}

static bool holds(const struct pdx *x, uint32_t e, uint32_t target)
{
	const struct pdx_chunk *c = pdx_chunk_of(x, e);

	return pdx_set_has(pdx_set_of(atomic_load_explicit(&c->holders[pdx_slot_of(e)],
							   memory_order_relaxed)),
			   target);
}

uint32_t pdx_name_lookup(const struct pdx *x, uint32_t target, uint64_t ext)
{
	const struct pdx_target_state *ts = &x->targets[target];
	const struct pdx_names *t = &x->names;

	if (ts->aliases.live) {
		uint32_t e = pdx_idmap_get(&ts->aliases, ext);

		if (e != PDX_NONE)
			return e;
	}
	if (!t->nbuckets)
		return PDX_NONE;

	uint8_t tag = name_tag(ext);

	for (uint32_t b = name_home(t, ext);; b = name_next(t, b)) {
		const struct pdx_name_bucket *k = &t->bucket[b];

		for (uint32_t m = tag_matches(k, tag); m; m &= m - 1) {
			uint32_t e = k->idx[__builtin_ctz(m)];

			if (*pdx_name_of(x, e) == ext && holds(x, e, target) &&
			    (!ts->aliased.live || pdx_idmap_get(&ts->aliased, e) == PDX_NONE))
				return e;
		}
		if (!k->overflow)
			return PDX_NONE;
	}
}

void pdx_name_prefetch(const struct pdx *x, uint64_t ext)
{
	if (x->names.nbuckets)
		__builtin_prefetch(&x->names.bucket[name_home(&x->names, ext)]);
}

void pdx_name_peek(const struct pdx *x, uint64_t ext)
{
	const struct pdx_names *t = &x->names;

	if (!t->nbuckets)
		return;

	const struct pdx_name_bucket *k = &t->bucket[name_home(t, ext)];
	uint32_t m = tag_matches(k, name_tag(ext));

	if (m) {
		uint32_t e = k->idx[__builtin_ctz(m)];

		pdx_entry_prefetch(x, e);
		__builtin_prefetch(pdx_name_of(x, e));
	}
}

/* Put entry @e, named @ext, into a table with room. */
static void name_put(struct pdx_names *t, uint64_t ext, uint32_t e)
{
	for (uint32_t b = name_home(t, ext);; b = name_next(t, b)) {
		struct pdx_name_bucket *k = &t->bucket[b];
		uint32_t free_slots = tag_matches(k, 0);

		if (free_slots) {
			uint32_t i = (uint32_t)__builtin_ctz(free_slots);

			k->tag[i] = name_tag(ext);
			k->idx[i] = e;
			t->live++;
			return;
		}
		if (k->overflow != NAME_OVERFLOW_STUCK)
			k->overflow++;
	}
}

static size_t names_bytes(uint32_t nbuckets)
{
	return (size_t)nbuckets * sizeof(struct pdx_name_bucket);
}

/*
 * Rebuild for @want entries, about 2/3 full, from the chunks: in index order, so the names are
 * read in order, with each bucket prefetched REBUILD_AHEAD entries before it is written.
 */
static int names_rebuild(struct pdx *x, uint64_t want)
{
	uint64_t nbuckets = want * 3 / (2 * PDX_NAME_SLOTS) + 1;

	if (nbuckets < NAME_MIN_BUCKETS)
		nbuckets = NAME_MIN_BUCKETS;
	if (nbuckets > UINT32_MAX / PDX_NAME_SLOTS)
		return -ENOMEM;

	struct pdx_names n = {.nbuckets = (uint32_t)nbuckets};
	uint32_t ring[REBUILD_AHEAD]; /* entries whose bucket is on its way */
	uint64_t seen = 0;

	n.bucket = aligned_alloc(64, names_bytes(n.nbuckets));
	if (!n.bucket)
		return -ENOMEM;
	memset(n.bucket, 0, names_bytes(n.nbuckets));
	for (uint32_t e = 0; e < x->nchunks << PDX_CHUNK_SHIFT; e++) {
		if (!atomic_load_explicit(&pdx_chunk_of(x, e)->holders[pdx_slot_of(e)],
					  memory_order_relaxed))
			continue;
		__builtin_prefetch(&n.bucket[name_home(&n, *pdx_name_of(x, e))], 1);
		if (seen >= REBUILD_AHEAD) {
			uint32_t old = ring[seen % REBUILD_AHEAD];

			name_put(&n, *pdx_name_of(x, old), old);
		}
		ring[seen++ % REBUILD_AHEAD] = e;
	}
	for (uint64_t k = seen > REBUILD_AHEAD ? seen - REBUILD_AHEAD : 0; k < seen; k++)
		name_put(&n, *pdx_name_of(x, ring[k % REBUILD_AHEAD]), ring[k % REBUILD_AHEAD]);
	pdx_names_destroy(x);
	pdx_stat_add(x, PDX_STAT(bytes), names_bytes(n.nbuckets));
	x->names = n;
	return 0;
}

/* Room for @more new entries, so an event cannot fail half way: rebuilt past 9/10 full. */
int pdx_names_reserve(struct pdx *x, uint32_t more)
{
	const struct pdx_names *t = &x->names;

	if (((uint64_t)t->live + more) * 10 <= (uint64_t)t->nbuckets * PDX_NAME_SLOTS * 9)
		return 0;
	return names_rebuild(x, (uint64_t)t->live + more);
}

void pdx_name_new(struct pdx *x, uint32_t e, uint64_t ext)
{
	*pdx_name_of(x, e) = ext;
	name_put(&x->names, ext, e);
}

void pdx_name_forget(struct pdx *x, uint32_t e)
{
	struct pdx_names *t = &x->names;
	uint64_t ext = *pdx_name_of(x, e);

	for (uint32_t b = name_home(t, ext);; b = name_next(t, b)) {
		struct pdx_name_bucket *k = &t->bucket[b];

		for (uint32_t m = tag_matches(k, name_tag(ext)); m; m &= m - 1) {
			uint32_t i = (uint32_t)__builtin_ctz(m);

			if (k->idx[i] == e) {
				k->tag[i] = 0;
				t->live--;
				return;
			}
		}
		/* The name went past this bucket when it went in: it is counted here. */
		if (k->overflow != NAME_OVERFLOW_STUCK)
			k->overflow--;
	}
}

int pdx_name_hold_reserve(struct pdx *x, uint32_t target, uint32_t e, uint64_t ext)
{
	struct pdx_target_state *ts = &x->targets[target];

	if (*pdx_name_of(x, e) == ext)
		return 0;
	if (pdx_idmap_reserve(x, &ts->aliases, 1) || pdx_idmap_reserve(x, &ts->aliased, 1))
		return -ENOMEM;
	return 0;
}

void pdx_name_hold(struct pdx *x, uint32_t target, uint32_t e, uint64_t ext)
{
	struct pdx_target_state *ts = &x->targets[target];

	ts->blocks++;
	if (*pdx_name_of(x, e) == ext)
		return;

	uint32_t pos;

	pdx_idmap_find(&ts->aliases, ext, &pos);
	pdx_idmap_put_at(&ts->aliases, pos, ext, e);
	pdx_idmap_find(&ts->aliased, e, &pos);
	pdx_idmap_put_at(&ts->aliased, pos, e, e);
}

void pdx_name_drop(struct pdx *x, uint32_t target, uint32_t e, uint64_t ext)
{
	struct pdx_target_state *ts = &x->targets[target];
	uint32_t pos;

	ts->blocks--;
	if (ts->aliases.live && pdx_idmap_find(&ts->aliases, ext, &pos) == e) {
		pdx_idmap_del_at(&ts->aliases, pos);
		pdx_idmap_find(&ts->aliased, e, &pos);
		pdx_idmap_del_at(&ts->aliased, pos);
	}
}

void pdx_names_destroy(struct pdx *x)
{
	if (x->names.bucket)
		pdx_stat_add(x, PDX_STAT(bytes), -(uint64_t)names_bytes(x->names.nbuckets));
	free(x->names.bucket);
	x->names = (struct pdx_names){0};
}
