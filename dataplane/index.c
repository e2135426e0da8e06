/*
 * Prefix index: set-up, tear-down and counters. The parts live beside this file:
 * index_table.c (hash table), index_entry.c (entry slots), index_sets.c (holder sets),
 * index_idmap.c (external ids), index_events.c (the writer), index_match.c (the readers),
 * index_epoch.c (reclamation).
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "hash.h"
#include "index.h"

_Static_assert(sizeof(struct pdx_stats) == sizeof(((struct pdx *)0)->stat),
	       "struct pdx_stats and pdx.stat must have the same fields");
_Static_assert(PDX_TARGETS_LIMIT <= UINT16_MAX + 1u, "holder sets store target ids as u16");

/* Reader handles; their scratch space is allocated when a thread first attaches. */
static int readers_init(struct pdx *x)
{
	x->readers = aligned_alloc(64, x->max_readers * sizeof(*x->readers));
	if (!x->readers)
		return -ENOMEM;
	memset(x->readers, 0, x->max_readers * sizeof(*x->readers));
	for (uint32_t i = 0; i < x->max_readers; i++) {
		atomic_init(&x->readers[i].epoch, 0);
		atomic_init(&x->readers[i].attached, false);
		x->readers[i].x = x;
	}
	return 0;
}

static int pdx_init_parts(struct pdx *x)
{
	x->chunk = dp_sparse_zalloc(PDX_MAX_CHUNKS * sizeof(*x->chunk));
	x->meta = dp_sparse_zalloc(PDX_MAX_CHUNKS * sizeof(*x->meta));
	x->slabs = calloc(PDX_MAX_CHUNKS / PDX_SLAB_CHUNKS + 1, sizeof(*x->slabs));
	x->targets = calloc(x->max_targets, sizeof(*x->targets));
	if (!x->chunk || !x->meta || !x->slabs || !x->targets)
		return -ENOMEM;
	/* The chunk and meta arrays are reserved whole but backed a page at a time: they count
	 * as chunks are added (chunk_add()). */
	pdx_stat_add(x, PDX_STAT(bytes), x->max_targets * sizeof(*x->targets));

	int err = readers_init(x);

	if (!err)
		err = pdx_sets_init(x);
	return err;
}

int pdx_init(struct pdx *x, const struct pdx_config *cfg)
{
	struct pdx_config c = cfg ? *cfg : (struct pdx_config){0};

	if (!c.max_targets)
		c.max_targets = PDX_DEFAULT_TARGETS;
	if (!c.max_readers)
		c.max_readers = 16;
	if (!c.initial_blocks)
		c.initial_blocks = 4096;
	if (c.max_targets > PDX_TARGETS_LIMIT || c.max_readers > PDX_READERS_LIMIT)
		return -EINVAL;

	memset(x, 0, sizeof(*x));
	x->max_targets = c.max_targets;
	x->max_readers = c.max_readers;
	atomic_init(&x->epoch, 1);
	for (size_t i = 0; i < sizeof(x->stat) / sizeof(x->stat[0]); i++)
		atomic_init(&x->stat[i], 0);

	int err = pdx_init_parts(x);

	if (!err)
		err = pdx_table_init(x, c.initial_blocks);
	if (err)
		pdx_destroy(x);
	return err;
}

void pdx_destroy(struct pdx *x)
{
	pdx_retired_free_all(x);
	for (uint32_t i = 0; x->targets && i < x->max_targets; i++)
		pdx_names_free(x, i);
	pdx_idmap_free(x, &x->head_depth);
	free(x->targets);
	pdx_sets_destroy(x);
	pdx_entries_destroy(x);
	pdx_table_free(atomic_load_explicit(&x->table, memory_order_relaxed));
	for (uint32_t i = 0; x->readers && i < x->max_readers; i++) {
		free(x->readers[i].active);
		free(x->readers[i].locals);
	}
	free(x->readers);
	free(x->seen);
	free(x->blocks);
	free(x->keys);
	memset(x, 0, sizeof(*x));
}

void pdx_stats(const struct pdx *x, struct pdx_stats *out)
{
	uint64_t *v = (uint64_t *)out;

	/* Relaxed: each counter has one writer; a snapshot need not be consistent across them. */
	for (size_t i = 0; i < sizeof(*out) / sizeof(uint64_t); i++)
		v[i] = atomic_load_explicit(&x->stat[i], memory_order_relaxed);
}
