/*
 * The index's hash table: sequence hash -> entry index, open addressing with linear probing in
 * 16-byte slots (four per cache line). Readers probe it concurrently with the one writer; the
 * writer never resizes in place but builds a new table and swaps it in (R3/A3 in index_pvt.h).
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "index.h"

/* Grow (or rebuild to drop tombstones) once live + tombstones pass 3/4 of the slots. */
#define TABLE_LOAD_NUM 3
#define TABLE_LOAD_DEN 4

static inline uint64_t table_home(const struct pdx_table *t, uint64_t key)
{
	/* Keys are hashes, but workers choose local hashes: mix so no one can aim at a bucket. */
	return (key * 0x9E3779B97F4A7C15ull) >> 20 & t->mask;
}

size_t pdx_table_bytes(uint64_t slots)
{
	return sizeof(struct pdx_table) + slots * sizeof(struct pdx_slot);
}

static struct pdx_table *table_new(uint64_t slots)
{
	size_t bytes = pdx_table_bytes(slots);
	struct pdx_table *t = aligned_alloc(64, (bytes + 63) & ~(size_t)63);

	if (!t)
		return NULL;
	t->mask = slots - 1;
	t->live = 0;
	t->used = 0;
	for (uint64_t i = 0; i < slots; i++) {
		atomic_init(&t->slot[i].key, 0);
		atomic_init(&t->slot[i].idx, PDX_SLOT_EMPTY);
		t->slot[i].pad = 0;
	}
	return t;
}

int pdx_table_init(struct pdx *x, uint64_t slots)
{
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
		const struct pdx_slot *s = &t->slot[pos];
		/* A2: pairs with R2 in table_put(); the key and the entry are complete. */
		uint32_t idx = atomic_load_explicit(&s->idx, memory_order_acquire);

		if (idx == PDX_SLOT_EMPTY)
			return PDX_NONE;
		if (idx == PDX_SLOT_TOMB ||
		    atomic_load_explicit(&s->key, memory_order_relaxed) != key)
			continue;
		/*
		 * The slot may have been emptied and refilled between the two loads, pairing an
		 * old index with a new key. Entry keys never change while a reader can see the
		 * entry (it is retired, not reused), so checking it settles the question.
		 */
		struct pdx_chunk *c = pdx_chunk_of(x, idx);
		uint32_t e = pdx_slot_of(idx);

		/* The caller reads these next: let their misses overlap this one. */
		__builtin_prefetch(&c->holders[e]);
		__builtin_prefetch(&c->span[e]);
		__builtin_prefetch(&c->acc[e]);
		if (atomic_load_explicit(&c->key[e], memory_order_relaxed) == key)
			return idx;
	}
	return PDX_NONE;
}

void pdx_table_prefetch(const struct pdx_table *t, uint64_t key)
{
	__builtin_prefetch(&t->slot[table_home(t, key)]);
}

/* Writer: place key -> idx in the first empty or dead slot of its probe run. */
static void table_put(struct pdx_table *t, uint64_t key, uint32_t idx)
{
	uint64_t pos = table_home(t, key);

	for (;;) {
		struct pdx_slot *s = &t->slot[pos];
		/* Relaxed: the writer is the only one storing slot indices. */
		uint32_t cur = atomic_load_explicit(&s->idx, memory_order_relaxed);

		if (cur == PDX_SLOT_EMPTY || cur == PDX_SLOT_TOMB) {
			if (cur == PDX_SLOT_EMPTY)
				t->used++;
			t->live++;
			atomic_store_explicit(&s->key, key, memory_order_relaxed);
			/* R2: publish the slot after its key; pairs with A2 in pdx_table_find(). */
			atomic_store_explicit(&s->idx, idx, memory_order_release);
			return;
		}
		pos = (pos + 1) & t->mask;
	}
}

/* Writer: copy the live slots into a table sized for twice as many, publish it, retire the old. */
static int table_rebuild(struct pdx *x, struct pdx_table *old)
{
	uint64_t slots = x->min_table_slots;

	while (slots * TABLE_LOAD_NUM / TABLE_LOAD_DEN < (old->live + 1) * 2)
		slots <<= 1;

	struct pdx_table *t = table_new(slots);

	if (!t)
		return -ENOMEM;
	for (uint64_t i = 0; i <= old->mask; i++) {
		uint32_t idx = atomic_load_explicit(&old->slot[i].idx, memory_order_relaxed);

		if (idx != PDX_SLOT_EMPTY && idx != PDX_SLOT_TOMB)
			table_put(t, atomic_load_explicit(&old->slot[i].key, memory_order_relaxed),
				  idx);
	}
	if (pdx_retire(x, PDX_RETIRED_TABLE, 0, old) < 0) {
		free(t);
		return -ENOMEM;
	}
	/* R3: the new table is filled; pairs with A3 where readers load x->table. */
	atomic_store_explicit(&x->table, t, memory_order_release);
	pdx_stat_add(x, PDX_STAT(table_slots), slots - (old->mask + 1));
	pdx_stat_add(x, PDX_STAT(bytes), pdx_table_bytes(slots));
	pdx_stat_add(x, PDX_STAT(table_grows), 1);
	return 0;
}

int pdx_table_insert(struct pdx *x, uint64_t key, uint32_t idx)
{
	struct pdx_table *t = atomic_load_explicit(&x->table, memory_order_relaxed);

	if ((t->used + 1) * TABLE_LOAD_DEN > (t->mask + 1) * TABLE_LOAD_NUM) {
		int err = table_rebuild(x, t);

		if (err)
			return err;
		t = atomic_load_explicit(&x->table, memory_order_relaxed);
	}
	table_put(t, key, idx);
	return 0;
}

void pdx_table_delete(struct pdx *x, uint64_t key, uint32_t idx)
{
	struct pdx_table *t = atomic_load_explicit(&x->table, memory_order_relaxed);
	uint64_t pos = table_home(t, key);

	for (uint64_t probes = 0; probes <= t->mask; probes++, pos = (pos + 1) & t->mask) {
		struct pdx_slot *s = &t->slot[pos];
		uint32_t cur = atomic_load_explicit(&s->idx, memory_order_relaxed);

		if (cur == PDX_SLOT_EMPTY)
			return;
		if (cur == idx) {
			/*
			 * Relaxed: a tombstone publishes nothing. A reader still seeing the old
			 * index finds a retired entry, which stays readable until it leaves.
			 */
			atomic_store_explicit(&s->idx, PDX_SLOT_TOMB, memory_order_relaxed);
			t->live--;
			return;
		}
	}
}
