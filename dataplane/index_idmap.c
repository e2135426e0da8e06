/*
 * Per-target maps from an engine's external block id to the index entry it names, so REMOVED
 * events (which carry only external ids) can be applied. Linear probing over two parallel
 * arrays; writer only, so no atomics.
 */
#include <errno.h>
#include <stdlib.h>

#include "index.h"

/* Rebuild at 7/8 full (tombstones included): writer-only, a longer probe costs little. */
#define IDMAP_LOAD_NUM 7
#define IDMAP_LOAD_DEN 8
#define IDMAP_MIN_SLOTS 64u

static inline uint32_t idmap_home(const struct pdx_idmap *m, uint64_t ext)
{
	return (uint32_t)((ext * 0x9E3779B97F4A7C15ull) >> 32) & m->mask;
}

static size_t idmap_bytes(uint32_t slots)
{
	return (size_t)slots * (sizeof(uint64_t) + sizeof(uint32_t));
}

uint32_t pdx_idmap_get(const struct pdx_idmap *m, uint64_t ext)
{
	if (!m->idx)
		return PDX_NONE;
	for (uint32_t pos = idmap_home(m, ext);; pos = (pos + 1) & m->mask) {
		if (m->idx[pos] == PDX_SLOT_EMPTY)
			return PDX_NONE;
		if (m->idx[pos] != PDX_SLOT_TOMB && m->ext[pos] == ext)
			return m->idx[pos];
	}
}

void pdx_idmap_prefetch(const struct pdx_idmap *m, uint64_t ext)
{
	if (m->idx) {
		uint32_t pos = idmap_home(m, ext);

		__builtin_prefetch(&m->ext[pos]);
		__builtin_prefetch(&m->idx[pos]);
	}
}

/* Insert without checks: the caller knows @ext is absent and a free slot exists. */
void pdx_idmap_put(struct pdx_idmap *m, uint64_t ext, uint32_t idx)
{
	uint32_t pos = idmap_home(m, ext);

	while (m->idx[pos] != PDX_SLOT_EMPTY && m->idx[pos] != PDX_SLOT_TOMB)
		pos = (pos + 1) & m->mask;
	if (m->idx[pos] == PDX_SLOT_EMPTY)
		m->used++;
	m->live++;
	m->ext[pos] = ext;
	m->idx[pos] = idx;
}

static int idmap_rebuild(struct pdx *x, struct pdx_idmap *m, uint32_t want)
{
	uint32_t slots = IDMAP_MIN_SLOTS;

	while ((uint64_t)slots * IDMAP_LOAD_NUM / IDMAP_LOAD_DEN < (uint64_t)want * 3 / 2)
		slots <<= 1;

	struct pdx_idmap n = {.mask = slots - 1};

	n.ext = malloc(slots * sizeof(*n.ext));
	n.idx = malloc(slots * sizeof(*n.idx));
	if (!n.ext || !n.idx) {
		free(n.ext);
		free(n.idx);
		return -ENOMEM;
	}
	for (uint32_t i = 0; i < slots; i++)
		n.idx[i] = PDX_SLOT_EMPTY;
	for (uint32_t i = 0; m->idx && i <= m->mask; i++)
		if (m->idx[i] != PDX_SLOT_EMPTY && m->idx[i] != PDX_SLOT_TOMB)
			pdx_idmap_put(&n, m->ext[i], m->idx[i]);
	pdx_idmap_free(x, m);
	pdx_stat_add(x, PDX_STAT(bytes), idmap_bytes(slots));
	*m = n;
	return 0;
}

/* Make room for @more insertions, so that applying an event cannot fail half way. */
int pdx_idmap_reserve(struct pdx *x, struct pdx_idmap *m, uint32_t more)
{
	uint64_t slots = m->idx ? (uint64_t)m->mask + 1 : 0;

	if (((uint64_t)m->used + more) * IDMAP_LOAD_DEN <= slots * IDMAP_LOAD_NUM)
		return 0;
	return idmap_rebuild(x, m, m->live + more);
}

uint32_t pdx_idmap_del(struct pdx_idmap *m, uint64_t ext)
{
	if (!m->idx)
		return PDX_NONE;
	for (uint32_t pos = idmap_home(m, ext);; pos = (pos + 1) & m->mask) {
		uint32_t idx = m->idx[pos];

		if (idx == PDX_SLOT_EMPTY)
			return PDX_NONE;
		if (idx != PDX_SLOT_TOMB && m->ext[pos] == ext) {
			m->idx[pos] = PDX_SLOT_TOMB;
			m->live--;
			return idx;
		}
	}
}

void pdx_idmap_free(struct pdx *x, struct pdx_idmap *m)
{
	if (m->idx)
		pdx_stat_add(x, PDX_STAT(bytes), -(uint64_t)idmap_bytes(m->mask + 1));
	free(m->ext);
	free(m->idx);
	*m = (struct pdx_idmap){0};
}
