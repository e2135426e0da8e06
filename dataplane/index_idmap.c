/*
 * Maps from a 64-bit key to a 32-bit value: a target's aliases (id -> entry, index_names.c)
 * and the depths of heads made by a parent's release (entry -> depth, index_entry.c), both
 * rare. Linear probing over two parallel arrays; writer only, so no atomics. Any size, not a
 * power of two, and between 60% and 90% used.
 */
#include <errno.h>
#include <stdlib.h>

#include "index.h"

#define IDMAP_MIN_SLOTS 16u

/*
 * Rebuild, to 6/10 live, past 9/10 used (tombstones included) or once tombstones take 1/5 of
 * the slots. A search for an absent id (every new block a STORED event brings, every unknown id
 * of a REMOVED one) walks to an empty slot, so tombstones cost as much as live ids; a map that
 * churns at a steady size would otherwise sit near 9/10 used. Clearing them at 1/5 made REMOVE
 * about 15% faster on the shared-prefix stream for about 1% of STORE (at 1/10: a little faster
 * REMOVE, 7% slower STORE); a map without removals is rebuilt as before.
 */
static bool idmap_full(const struct pdx_idmap *m, uint32_t more)
{
	return ((uint64_t)m->used + more) * 10 > (uint64_t)m->slots * 9 ||
	       (uint64_t)(m->used - m->live) * 5 > m->slots;
}

static uint64_t idmap_slots_for(uint64_t live)
{
	uint64_t slots = live * 10 / 6 + 1;

	return slots < IDMAP_MIN_SLOTS ? IDMAP_MIN_SLOTS : slots;
}

static inline uint32_t idmap_home(const struct pdx_idmap *m, uint64_t ext)
{
	/* The mix's top 32 bits scaled to [0, slots): no modulo, any size. */
	return (uint32_t)(((ext * 0x9E3779B97F4A7C15ull) >> 32) * m->slots >> 32);
}

static inline uint32_t idmap_next(const struct pdx_idmap *m, uint32_t pos)
{
	return pos + 1 == m->slots ? 0 : pos + 1;
}

static size_t idmap_bytes(uint32_t slots)
{
	return (size_t)slots * (sizeof(uint64_t) + sizeof(uint32_t));
}

uint32_t pdx_idmap_find(const struct pdx_idmap *m, uint64_t ext, uint32_t *pos)
{
	uint32_t free_pos = UINT32_MAX;

	if (!m->idx)
		return PDX_NONE;
	for (uint32_t p = idmap_home(m, ext);; p = idmap_next(m, p)) {
		if (m->idx[p] == PDX_SLOT_EMPTY) {
			if (pos)
				*pos = free_pos == UINT32_MAX ? p : free_pos;
			return PDX_NONE;
		}
		if (m->idx[p] == PDX_SLOT_TOMB) {
			if (free_pos == UINT32_MAX)
				free_pos = p;
		} else if (m->ext[p] == ext) {
			if (pos)
				*pos = p;
			return m->idx[p];
		}
	}
}

uint32_t pdx_idmap_get(const struct pdx_idmap *m, uint64_t ext)
{
	return pdx_idmap_find(m, ext, NULL);
}

void pdx_idmap_put(struct pdx_idmap *m, uint64_t ext, uint32_t idx)
{
	uint32_t pos;

	pdx_idmap_find(m, ext, &pos); /* the first free slot on its probe: a tombstone is reused */
	if (m->idx[pos] == PDX_SLOT_EMPTY)
		m->used++;
	m->live++;
	m->ext[pos] = ext;
	m->idx[pos] = idx;
}

static int idmap_rebuild(struct pdx *x, struct pdx_idmap *m, uint64_t want)
{
	uint64_t slots = idmap_slots_for(want);

	if (slots >= PDX_SLOT_TOMB)
		return -ENOMEM;

	struct pdx_idmap n = {.slots = (uint32_t)slots};

	n.ext = malloc(slots * sizeof(*n.ext));
	n.idx = malloc(slots * sizeof(*n.idx));
	if (!n.ext || !n.idx) {
		free(n.ext);
		free(n.idx);
		return -ENOMEM;
	}
	for (uint32_t i = 0; i < n.slots; i++)
		n.idx[i] = PDX_SLOT_EMPTY;
	for (uint32_t i = 0; i < m->slots; i++)
		if (m->idx[i] != PDX_SLOT_EMPTY && m->idx[i] != PDX_SLOT_TOMB)
			pdx_idmap_put(&n, m->ext[i], m->idx[i]);
	pdx_idmap_free(x, m);
	pdx_stat_add(x, PDX_STAT(bytes), idmap_bytes(n.slots));
	*m = n;
	return 0;
}

/* Make room for @more insertions, so that applying an event cannot fail half way. */
int pdx_idmap_reserve(struct pdx *x, struct pdx_idmap *m, uint32_t more)
{
	if (m->idx && !idmap_full(m, more))
		return 0;
	return idmap_rebuild(x, m, (uint64_t)m->live + more);
}

void pdx_idmap_del_at(struct pdx_idmap *m, uint32_t pos)
{
	m->idx[pos] = PDX_SLOT_TOMB;
	m->live--;
}

void pdx_idmap_free(struct pdx *x, struct pdx_idmap *m)
{
	if (m->idx)
		pdx_stat_add(x, PDX_STAT(bytes), -(uint64_t)idmap_bytes(m->slots));
	free(m->ext);
	free(m->idx);
	*m = (struct pdx_idmap){0};
}
