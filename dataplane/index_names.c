/*
 * External block ids: which entry a target's id names, for REMOVED events and STORED parents.
 * Writer only, so no atomics.
 *
 * Engines name a block by an id of their own, and engines of one model usually agree on it
 * (their hash of the prefix). So each entry keeps one name, the id it was first stored under
 * (struct pdx_chunk_notes), and a target's map holds, for each block it holds under that
 * name, only the entry index and a tag of the name's hash: 4.6 bytes a pair instead of 16,
 * the name itself read from the entry when a tag agrees. A block a target holds
 * under another id is an alias, kept with its id in the target's `aliases` map.
 *
 * A map is made of buckets of one cache line: fourteen tags, compared all at once, and the
 * fourteen entry indexes in 28 bits each (the index has 2^27 entries at most). A full bucket
 * sends a new pair on to the next one and counts it in its overflow byte; a lookup stops at the
 * first bucket without overflow, so an unknown id (every new block a STORED event brings) costs
 * one line, deletions leave no tombstones, and a map can run 85% full. A target's map is
 * small and its events come together, so it stays in cache while they are applied.
 */
#include <errno.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#include "index.h"

#if defined(__SSE2__)
#include <emmintrin.h>
#endif

#define NAME_OVERFLOW_STUCK UINT8_MAX /* too many to count: left as is until a rebuild */
#define NAME_LOAD_MAX 85	      /* percent full that makes a map grow */
#define NAME_LONG_WALK 8	      /* buckets an insert passes that make a map rebuild */

/* Pairs ahead whose name a rebuild prefetches. */
#define REBUILD_AHEAD 8

_Static_assert(sizeof(struct pdx_name_bucket) == 64, "a bucket is one cache line");
_Static_assert((uint64_t)PDX_MAX_CHUNKS * PDX_CHUNK_SLOTS <= 1u << 28, "indexes fit 28 bits");

#define IDX_MASK ((1u << 28) - 1)

/*
 * Slots 2p and 2p + 1 share bytes 7p..7p+6 of idx[], low 28 bits first. They are read and
 * written as the eight bytes that start one before them (the overflow byte for p = 0), so
 * each access stays in the bucket and a read right after a write of the same pair is served
 * from the store buffer (a narrower write would make it wait).
 */
static inline size_t pair_offset(uint32_t i)
{
	return offsetof(struct pdx_name_bucket, idx) + 7 * (i / 2) - 1;
}

/* Entry index in slot @i of @k. */
static inline uint32_t bucket_idx(const struct pdx_name_bucket *k, uint32_t i)
{
	uint64_t v;

	memcpy(&v, (const unsigned char *)k + pair_offset(i), sizeof(v));
	return (uint32_t)(v >> (8 + i % 2 * 28)) & IDX_MASK;
}

static inline void bucket_set_idx(struct pdx_name_bucket *k, uint32_t i, uint32_t e)
{
	unsigned char *at = (unsigned char *)k + pair_offset(i);
	uint64_t v, shift = 8 + i % 2 * 28;

	memcpy(&v, at, sizeof(v));
	v = (v & ~((uint64_t)IDX_MASK << shift)) | (uint64_t)e << shift;
	memcpy(at, &v, sizeof(v));
}

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

/* The entry in map @t named @ext, or PDX_NONE. */
static uint32_t map_find(const struct pdx *x, const struct pdx_names *t, uint64_t ext)
{
	if (!t->nbuckets)
		return PDX_NONE;

	uint8_t tag = name_tag(ext);
	uint32_t b = name_home(t, ext);

	/*
	 * Once round at most: after deletions two buckets may each count pairs gone on into the
	 * other, so in a small map every bucket can have overflow while the id is in none.
	 */
	for (uint32_t seen = 0; seen < t->nbuckets; seen++, b = name_next(t, b)) {
		const struct pdx_name_bucket *k = &t->bucket[b];

		for (uint32_t m = tag_matches(k, tag); m; m &= m - 1) {
			uint32_t e = bucket_idx(k, (uint32_t)__builtin_ctz(m));

			if (*pdx_name_of(x, e) == ext)
				return e;
		}
		if (!k->overflow)
			break;
	}
	return PDX_NONE;
}

/* Put entry @e, named @ext, into map @t, which has room. */
static void map_put(struct pdx_names *t, uint64_t ext, uint32_t e)
{
	for (uint32_t b = name_home(t, ext), passed = 0;; b = name_next(t, b), passed++) {
		struct pdx_name_bucket *k = &t->bucket[b];
		uint32_t free_slots = tag_matches(k, 0);

		if (passed == NAME_LONG_WALK)
			t->crowded = true;
		if (free_slots) {
			uint32_t i = (uint32_t)__builtin_ctz(free_slots);

			k->tag[i] = name_tag(ext);
			bucket_set_idx(k, i, e);
			t->live++;
			return;
		}
		if (k->overflow != NAME_OVERFLOW_STUCK)
			k->overflow++;
	}
}

/* Take entry @e, named @ext, out of map @t, which holds it. */
static void map_take(struct pdx_names *t, uint64_t ext, uint32_t e)
{
	for (uint32_t b = name_home(t, ext);; b = name_next(t, b)) {
		struct pdx_name_bucket *k = &t->bucket[b];

		for (uint32_t m = tag_matches(k, name_tag(ext)); m; m &= m - 1) {
			uint32_t i = (uint32_t)__builtin_ctz(m);

			if (bucket_idx(k, i) == e) {
				k->tag[i] = 0;
				t->live--;
				return;
			}
		}
		/* The pair went past this bucket when it went in: it is counted here. */
		if (k->overflow != NAME_OVERFLOW_STUCK)
			k->overflow--;
	}
}

static size_t map_bytes(uint32_t nbuckets)
{
	return (size_t)nbuckets * sizeof(struct pdx_name_bucket);
}

static void map_free(struct pdx *x, struct pdx_names *t)
{
	if (t->bucket)
		pdx_stat_add(x, PDX_STAT(bytes), -(uint64_t)map_bytes(t->nbuckets));
	free(t->bucket);
	*t = (struct pdx_names){0};
}

/*
 * Rebuild @t for @want pairs, about 2/3 full. Each pair's name is read from its entry, which
 * is fetched REBUILD_AHEAD pairs early; the new map is small and stays in cache.
 */
static int map_rebuild(struct pdx *x, struct pdx_names *t, uint64_t want)
{
	uint64_t nbuckets = want * 3 / (2 * PDX_NAME_SLOTS) + 1;

	if (nbuckets > UINT32_MAX / PDX_NAME_SLOTS)
		return -ENOMEM;

	struct pdx_names n = {.nbuckets = (uint32_t)nbuckets};
	uint32_t ring[REBUILD_AHEAD]; /* entries whose names are on their way */
	uint64_t seen = 0;

	n.bucket = aligned_alloc(64, map_bytes(n.nbuckets));
	if (!n.bucket)
		return -ENOMEM;
	memset(n.bucket, 0, map_bytes(n.nbuckets));
	for (uint32_t b = 0; b < t->nbuckets; b++) {
		for (uint32_t m = ~tag_matches(&t->bucket[b], 0) & ((1u << PDX_NAME_SLOTS) - 1); m;
		     m &= m - 1) {
			uint32_t e = bucket_idx(&t->bucket[b], (uint32_t)__builtin_ctz(m));

			__builtin_prefetch(pdx_name_of(x, e));
			if (seen >= REBUILD_AHEAD) {
				uint32_t old = ring[seen % REBUILD_AHEAD];

				map_put(&n, *pdx_name_of(x, old), old);
			}
			ring[seen++ % REBUILD_AHEAD] = e;
		}
	}
	for (uint64_t k = seen > REBUILD_AHEAD ? seen - REBUILD_AHEAD : 0; k < seen; k++)
		map_put(&n, *pdx_name_of(x, ring[k % REBUILD_AHEAD]), ring[k % REBUILD_AHEAD]);
	map_free(x, t);
	pdx_stat_add(x, PDX_STAT(bytes), map_bytes(n.nbuckets));
	*t = n;
	return 0;
}

uint32_t pdx_name_lookup(const struct pdx *x, uint32_t target, uint64_t ext)
{
	const struct pdx_target_state *ts = &x->targets[target];

	if (ts->aliases.live) {
		uint32_t e = pdx_idmap_get(&ts->aliases, ext);

		if (e != PDX_NONE)
			return e;
	}
	return map_find(x, &ts->names, ext);
}

bool pdx_name_is(const struct pdx *x, uint32_t target, uint32_t e, uint64_t ext)
{
	const struct pdx_target_state *ts = &x->targets[target];

	if (*pdx_name_of(x, e) != ext)
		return false;
	if (ts->aliases.live) /* it might hold @e under an alias: ask the map */
		return pdx_name_lookup(x, target, ext) == e;
	return pdx_entry_held_by(x, e, target);
}

void pdx_name_prefetch(const struct pdx *x, uint32_t target, uint64_t ext)
{
	const struct pdx_names *t = &x->targets[target].names;

	if (t->nbuckets)
		__builtin_prefetch(&t->bucket[name_home(t, ext)]);
}

/*
 * Rebuilt 2/3 full when an event could take it past NAME_LOAD_MAX, so it finds room for all
 * it brings, or once an insert walked NAME_LONG_WALK buckets: a map that churns at a steady
 * size near full grows runs of full buckets that every lookup of an unknown id walks (at 90%
 * on the shared-prefix stream, 32 buckets a lookup); a rebuild packs the pairs afresh.
 */
int pdx_names_reserve(struct pdx *x, uint32_t target, uint32_t more)
{
	struct pdx_names *t = &x->targets[target].names;

	uint64_t room = (uint64_t)t->nbuckets * PDX_NAME_SLOTS * NAME_LOAD_MAX / 100;

	if (!t->crowded && (uint64_t)t->live + more <= room)
		return 0;
	return map_rebuild(x, t, (uint64_t)t->live + more);
}

int pdx_name_hold_reserve(struct pdx *x, uint32_t target, uint32_t e, uint64_t ext)
{
	if (*pdx_name_of(x, e) == ext)
		return 0;
	return pdx_idmap_reserve(x, &x->targets[target].aliases, 1);
}

void pdx_name_hold(struct pdx *x, uint32_t target, uint32_t e, uint64_t ext)
{
	struct pdx_target_state *ts = &x->targets[target];

	if (*pdx_name_of(x, e) == ext)
		map_put(&ts->names, ext, e);
	else
		pdx_idmap_put(&ts->aliases, ext, e);
}

void pdx_name_drop(struct pdx *x, uint32_t target, uint32_t e, uint64_t ext)
{
	struct pdx_target_state *ts = &x->targets[target];
	uint32_t pos;

	if (*pdx_name_of(x, e) == ext)
		map_take(&ts->names, ext, e);
	else if (pdx_idmap_find(&ts->aliases, ext, &pos) == e)
		pdx_idmap_del_at(&ts->aliases, pos);
}

size_t pdx_names_list(const struct pdx *x, uint32_t target, uint32_t *out)
{
	const struct pdx_names *t = &x->targets[target].names;
	size_t n = 0;

	for (uint32_t b = 0; b < t->nbuckets; b++)
		for (uint32_t m = ~tag_matches(&t->bucket[b], 0) & ((1u << PDX_NAME_SLOTS) - 1);
		     m; m &= m - 1)
			out[n++] = bucket_idx(&t->bucket[b], (uint32_t)__builtin_ctz(m));
	return n;
}

size_t pdx_names_count(const struct pdx *x, uint32_t target)
{
	const struct pdx_target_state *ts = &x->targets[target];

	return ts->names.live + ts->aliases.live;
}

void pdx_names_free(struct pdx *x, uint32_t target)
{
	map_free(x, &x->targets[target].names);
	pdx_idmap_free(x, &x->targets[target].aliases);
}
