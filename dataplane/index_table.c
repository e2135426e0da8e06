/*
 * The index's hash table: sequence hash -> entry index, open addressing with linear probing
 * over 8-byte slots (eight per cache line). Readers probe it concurrently with the one writer;
 * the writer never resizes in place but builds a new table and swaps it in (R3/A3 in
 * index_pvt.h).
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "index.h"

/* Rebuild once live + tombstones pass 4/5 of the slots, to a size that is at most 5/8 full. */
#define TABLE_MAX_LOAD(slots) ((slots) / 5 * 4)
#define TABLE_ROOM(live) ((live) + (live) / 4 + 1)

/*
 * Keys are hashes, but workers choose local hashes: mix them so no one can aim at a bucket.
 * The top bits of the mix pick the home slot and its top 32 bits go into the slot beside the
 * entry index, so a rebuild finds every home without reading a single entry.
 */
static inline uint64_t key_mix(uint64_t key)
{
	return key * 0x9E3779B97F4A7C15ull;
}

static inline uint64_t slot_word(uint64_t key, uint32_t idx)
{
	return (key_mix(key) & 0xFFFFFFFF00000000ull) | idx;
}

static inline uint32_t slot_idx(uint64_t word)
{
	return (uint32_t)word;
}

static inline uint64_t table_home(const struct pdx_table *t, uint64_t key)
{
	return key_mix(key) >> t->shift;
}

/* Home of the key a slot word was made from: its top bits are the mix's. */
static inline uint64_t word_home(const struct pdx_table *t, uint64_t word)
{
	return word >> t->shift;
}

size_t pdx_table_bytes(uint64_t slots)
{
	return sizeof(struct pdx_table) + slots * sizeof(uint64_t);
}

static struct pdx_table *table_new(uint64_t slots)
{
	struct pdx_table *t = dp_huge_zalloc(pdx_table_bytes(slots));

	if (!t)
		return NULL;
	t->mask = slots - 1;
	t->shift = 64 - (uint32_t)__builtin_ctzll(slots);
	t->live = 0;
	t->used = 0;
	/* All ones: an empty index (and a tag nothing is compared with). Not yet shared. */
	memset(t->slot, 0xff, slots * sizeof(t->slot[0]));
	return t;
}

static uint64_t table_slots_for(uint64_t min_slots, uint64_t live)
{
	uint64_t slots = min_slots;

	while (TABLE_MAX_LOAD(slots) < TABLE_ROOM(live))
		slots <<= 1;
	return slots;
}

void pdx_table_free(struct pdx_table *t)
{
	if (t)
		dp_huge_free(t, pdx_table_bytes(t->mask + 1));
}

int pdx_table_init(struct pdx *x, uint64_t blocks)
{
	uint64_t slots = table_slots_for(64, blocks);
	struct pdx_table *t = table_new(slots);

	if (!t)
		return -ENOMEM;
	x->min_table_slots = slots;
	atomic_init(&x->table, t);
	pdx_stat_add(x, PDX_STAT(table_slots), slots);
	pdx_stat_add(x, PDX_STAT(bytes), pdx_table_bytes(slots));
	return 0;
}

uint32_t pdx_table_find(const struct pdx *x, const struct pdx_table *t, uint64_t key)
{
	uint64_t pos = table_home(t, key);

	for (uint64_t probes = 0; probes <= t->mask; probes++, pos = (pos + 1) & t->mask) {
		/* A2: pairs with R2 in table_put(); the entry the slot names is complete. */
		uint64_t word = atomic_load_explicit(&t->slot[pos], memory_order_acquire);
		uint32_t idx = slot_idx(word);

		if (idx == PDX_SLOT_EMPTY)
			return PDX_NONE;
		if (idx == PDX_SLOT_TOMB || word != slot_word(key, idx))
			continue;

		struct pdx_chunk *c = pdx_chunk_of(x, idx);
		uint32_t e = pdx_slot_of(idx);

		/* The caller reads these next: let their misses overlap this one. */
		__builtin_prefetch(&c->holders[e]);
		__builtin_prefetch(&c->acc[e]);
		/*
		 * The slot holds half the key. The entry holds all of it, and never changes it
		 * while a reader can see it (it is retired, not reused), so this settles it.
		 */
		if (atomic_load_explicit(&c->key[e], memory_order_relaxed) == key)
			return idx;
	}
	return PDX_NONE;
}

void pdx_table_prefetch(const struct pdx_table *t, uint64_t key)
{
	__builtin_prefetch(&t->slot[table_home(t, key)]);
}

/* Writer: place a slot word in the first empty or dead slot from @pos on. */
static void table_put(struct pdx_table *t, uint64_t pos, uint64_t word)
{
	for (;; pos = (pos + 1) & t->mask) {
		/* Relaxed: the writer is the only one storing slots. */
		uint32_t cur = slot_idx(atomic_load_explicit(&t->slot[pos], memory_order_relaxed));

		if (cur == PDX_SLOT_EMPTY || cur == PDX_SLOT_TOMB) {
			if (cur == PDX_SLOT_EMPTY)
				t->used++;
			t->live++;
			/* R2: publish the slot; pairs with A2 in pdx_table_find(). */
			atomic_store_explicit(&t->slot[pos], word, memory_order_release);
			return;
		}
	}
}

/*
 * Writer: copy the live slots into a table with room for @more, publish it, retire the old
 * one. Tombstones are dropped on the way, so a table that only churns stays the same size.
 */
static int table_rebuild(struct pdx *x, struct pdx_table *old, uint64_t more)
{
	uint64_t slots = table_slots_for(x->min_table_slots, old->live + more);
	struct pdx_table *t = table_new(slots);

	if (!t)
		return -ENOMEM;
	for (uint64_t i = 0; i <= old->mask; i++) {
		uint64_t word = atomic_load_explicit(&old->slot[i], memory_order_relaxed);
		uint32_t idx = slot_idx(word);

		if (idx != PDX_SLOT_EMPTY && idx != PDX_SLOT_TOMB)
			table_put(t, word_home(t, word), word);
	}
	if (pdx_retire(x, PDX_RETIRED_TABLE, 0, old) < 0) {
		pdx_table_free(t);
		return -ENOMEM;
	}
	/* R3: the new table is filled; pairs with A3 where readers load x->table. */
	atomic_store_explicit(&x->table, t, memory_order_release);
	pdx_stat_add(x, PDX_STAT(table_slots), slots - (old->mask + 1));
	pdx_stat_add(x, PDX_STAT(bytes), pdx_table_bytes(slots));
	pdx_stat_add(x, PDX_STAT(table_grows), 1);
	return 0;
}

/* Writer: make room for @more inserts, rebuilding the table if needed; 0 or -ENOMEM. */
int pdx_table_reserve(struct pdx *x, uint64_t more)
{
	struct pdx_table *t = atomic_load_explicit(&x->table, memory_order_relaxed);

	if (t->used + more <= TABLE_MAX_LOAD(t->mask + 1))
		return 0;
	return table_rebuild(x, t, more);
}

/* Writer: insert a run head; the caller has made room with pdx_table_reserve(). */
void pdx_table_insert(struct pdx *x, uint64_t key, uint32_t idx)
{
	/* Relaxed: the writer itself stored the table pointer. */
	struct pdx_table *t = atomic_load_explicit(&x->table, memory_order_relaxed);

	table_put(t, table_home(t, key), slot_word(key, idx));
}

void pdx_table_delete(struct pdx *x, uint64_t key, uint32_t idx)
{
	struct pdx_table *t = atomic_load_explicit(&x->table, memory_order_relaxed);
	uint64_t pos = table_home(t, key);

	for (uint64_t probes = 0; probes <= t->mask; probes++, pos = (pos + 1) & t->mask) {
		uint32_t cur = slot_idx(atomic_load_explicit(&t->slot[pos], memory_order_relaxed));

		if (cur == PDX_SLOT_EMPTY)
			return;
		if (cur == idx) {
			/*
			 * Relaxed: a tombstone publishes nothing. A reader still seeing the old
			 * word finds a retired entry, which stays readable until it leaves.
			 */
			atomic_store_explicit(&t->slot[pos], PDX_SLOT_TOMB, memory_order_relaxed);
			t->live--;
			return;
		}
	}
}
