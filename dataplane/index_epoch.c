/*
 * Epoch-based reclamation for the prefix index: reader handles, their announcements, and the
 * writer's list of retired objects freed once every reader has moved past them.
 * Memory-ordering labels (F1, F2, R4, A4) are explained in index_pvt.h.
 */
#include <errno.h>
#include <stdlib.h>

#include "index.h"

int pdx_reader_attach(struct pdx *x, struct pdx_reader **out)
{
	for (uint32_t i = 0; i < x->max_readers; i++) {
		struct pdx_reader *r = &x->readers[i];
		bool expect = false;

		/* Acq_rel: claim the handle and see the previous owner's last stores. */
		if (!atomic_compare_exchange_strong_explicit(&r->attached, &expect, true,
							     memory_order_acq_rel,
							     memory_order_relaxed))
			continue;
		/* Scratch stays with the handle after a detach, for the next thread to use. */
		if (!r->active)
			r->active = malloc(x->max_targets * sizeof(*r->active));
		if (!r->locals)
			r->locals = malloc(PDX_MATCH_MAX_BLOCKS * sizeof(*r->locals));
		if (!r->active || !r->locals) {
			pdx_reader_detach(r);
			return -ENOMEM;
		}
		*out = r;
		return 0;
	}
	return -EBUSY;
}

void pdx_reader_detach(struct pdx_reader *r)
{
	/* Release: this owner's uses of the scratch buffers happen before the next owner's. */
	atomic_store_explicit(&r->attached, false, memory_order_release);
}

/* Writer: queue an unlinked object; it is freed once no reader can still hold it. */
int pdx_retire(struct pdx *x, enum pdx_retired_kind kind, uint32_t idx, void *ptr)
{
	if (x->nretired == x->retired_cap) {
		size_t cap = x->retired_cap ? x->retired_cap * 2 : 1024;
		struct pdx_retired *r = realloc(x->retired, cap * sizeof(*r));

		if (!r)
			return -ENOMEM;
		x->retired = r;
		x->retired_cap = cap;
	}
	x->retired[x->nretired++] = (struct pdx_retired){
		/* Relaxed: the writer is the only one changing the epoch. */
		.epoch = atomic_load_explicit(&x->epoch, memory_order_relaxed),
		.kind = kind,
	};
	if (kind == PDX_RETIRED_ENTRY)
		x->retired[x->nretired - 1].idx = idx;
	else
		x->retired[x->nretired - 1].ptr = ptr;
	return 0;
}

static void retired_free(struct pdx *x, const struct pdx_retired *r)
{
	switch (r->kind) {
	case PDX_RETIRED_ENTRY:
		pdx_entry_free_slot(x, r->idx);
		break;
	case PDX_RETIRED_SET:
		pdx_stat_add(x, PDX_STAT(bytes),
			     -(uint64_t)pdx_set_bytes(((struct pdx_set *)r->ptr)->n));
		free(r->ptr);
		break;
	case PDX_RETIRED_TABLE:
		pdx_stat_add(x, PDX_STAT(bytes),
			     -(uint64_t)pdx_table_bytes(((struct pdx_table *)r->ptr)->mask + 1));
		pdx_table_free(r->ptr);
		break;
	}
}

/* The oldest epoch a reader is still inside, or UINT64_MAX when none is. */
static uint64_t oldest_reader_epoch(const struct pdx *x)
{
	uint64_t oldest = UINT64_MAX;

	for (uint32_t i = 0; i < x->max_readers; i++) {
		/* A4: pairs with R4 (and F1's store) in the reader; its reads happened before. */
		uint64_t e = atomic_load_explicit(&x->readers[i].epoch, memory_order_acquire);

		if (e && e < oldest)
			oldest = e;
	}
	return oldest;
}

size_t pdx_reclaim(struct pdx *x)
{
	/* Spans must stop covering freed slots before those can be reused. */
	pdx_spans_update(x);
	if (x->nretired == 0)
		return 0;
	/* F2: the unlinks above are ordered before the scan of announcements; pairs with F1. */
	atomic_thread_fence(memory_order_seq_cst);

	uint64_t oldest = oldest_reader_epoch(x);
	size_t keep = 0;

	for (size_t i = 0; i < x->nretired; i++) {
		/* Retired at epoch E: a reader inside E may have seen it; one in E+1 cannot. */
		if (x->retired[i].epoch < oldest)
			retired_free(x, &x->retired[i]);
		else
			x->retired[keep++] = x->retired[i];
	}
	x->nretired = keep;
	/*
	 * Later retirements get a new epoch, so readers entering from now on do not pin them.
	 * Relaxed: the writer is the epoch's only writer, and a reader that reads the new value
	 * entered after F2 above, so by F1/F2 it cannot reach what was retired before it.
	 */
	if (keep)
		atomic_store_explicit(&x->epoch, atomic_load_explicit(&x->epoch,
					memory_order_relaxed) + 1, memory_order_relaxed);
	atomic_store_explicit(&x->stat[PDX_STAT(retired_pending)], keep, memory_order_relaxed);
	return keep;
}

void pdx_retired_free_all(struct pdx *x)
{
	for (size_t i = 0; i < x->nretired; i++)
		retired_free(x, &x->retired[i]);
	free(x->retired);
	x->retired = NULL;
	x->nretired = x->retired_cap = 0;
}
