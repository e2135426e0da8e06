/*
 * KV-event intake (kv_events.h): check each record of a worker's event ring, map its DP rank
 * to a routing target, apply the event-id rules, and hand the event to the prefix index in
 * chunks copied out of shared memory. Control thread only.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "events.h"
#include "hash.h"
#include "kv_events.h"

#define CHUNK 256u /* REMOVED ids copied out of the ring at a time */

void ctl_kv_init(struct ctl_kv *k, struct pdx *index, struct rt_router *rt, uint32_t worker,
		 uint32_t block_size, struct shm_ring *ring)
{
	*k = (struct ctl_kv){.index = index, .rt = rt, .ring = ring, .worker = worker,
			     .block_size = block_size};
}

void ctl_kv_destroy(struct ctl_kv *k)
{
	free(k->blocks);
	free(k->hashes);
	k->blocks = NULL;
	k->hashes = NULL;
	k->blocks_cap = k->hashes_cap = 0;
}

static int malformed(struct ctl_kv *k)
{
	k->stats.malformed++;
	k->broken = true;
	return -EBADMSG;
}

/*
 * The target of @dp_rank after the event-id check: -ENOENT (unknown rank), -EALREADY (a
 * duplicate), both counted, or the target. A gap is counted and asks for a dump; the event
 * still applies.
 */
static int event_target(struct ctl_kv *k, uint32_t dp_rank, uint64_t event_id)
{
	int t = rt_target_find(k->rt, k->worker, dp_rank), seq;

	if (t < 0) {
		k->stats.unknown_rank++;
		return -ENOENT;
	}
	seq = pdx_event_seq(k->index, (uint32_t)t, event_id);
	if (seq == -EALREADY) {
		k->stats.duplicates++;
		return -EALREADY;
	}
	if (seq > 0) {
		k->stats.gaps++;
		k->dump_wanted = true;
	}
	return t;
}

/*
 * Count what the index said; returns 0, or the error that ended the event. An event that
 * stopped part way (an id conflict, out of memory) leaves the index behind the worker's
 * cache: ask for a dump.
 */
static int tally(struct ctl_kv *k, long rc)
{
	if (rc >= 0)
		return 0;
	k->stats.refused++;
	if (rc == -EEXIST || rc == -ENOMEM)
		k->dump_wanted = true;
	return (int)rc;
}

/* @p, grown to room for @n items of @size bytes (its capacity in *@cap); NULL when out of
 * memory, @p unchanged. */
static void *grow(void **p, uint32_t *cap, uint32_t n, size_t size)
{
	void *q;

	if (n <= *cap)
		return *p;
	q = realloc(*p, (size_t)n * size);
	if (!q)
		return NULL;
	*cap = n;
	return *p = q;
}

/*
 * Apply a checked STORED event in one call, so that the index sees the whole event (a repeat
 * or self-parent anywhere refuses all of it). Everything is copied out of shared memory
 * first (the event's blocks into the intake's scratch, which grows to the largest event).
 */
static int apply_stored(struct ctl_kv *k, uint32_t t, const struct shm_ev_stored *ev,
			const uint8_t *ext, const uint8_t *content)
{
	struct pdx_block *b = grow((void **)&k->blocks, &k->blocks_cap, ev->nblocks, sizeof(*b));
	uint64_t *local = NULL;
	size_t before = pdx_target_blocks(k->index, t);
	long rc;

	if (ev->blocks_kind == SHM_EV_TOKEN_IDS)
		local = grow((void **)&k->hashes, &k->hashes_cap, ev->nblocks, sizeof(*local));
	if (!b || (ev->blocks_kind == SHM_EV_TOKEN_IDS && !local))
		return tally(k, -ENOMEM);
	for (uint32_t i = 0; i < ev->nblocks; i++)
		memcpy(&b[i].ext_id, ext + 8 * (size_t)i, 8);
	if (local) /* the tokens are read once, by the hashing */
		dp_hash_blocks((const uint32_t *)content, (size_t)ev->nblocks * ev->block_size,
			       ev->block_size, DP_HASH_SEED, local);
	for (uint32_t i = 0; i < ev->nblocks; i++) {
		if (local)
			b[i].local_hash = local[i];
		else
			memcpy(&b[i].local_hash, content + 8 * (size_t)i, 8);
	}
	rc = pdx_store(k->index, t, ev->has_parent ? &ev->parent_ext : NULL, b, ev->nblocks);
	/* Count what the target gained, also when the event stopped part way. */
	k->stats.blocks_stored += pdx_target_blocks(k->index, t) - before;
	return tally(k, rc);
}

static int on_stored(struct ctl_kv *k, const struct shm_rec *rec)
{
	struct shm_ev_stored ev;
	uint64_t want;
	int t;

	if (rec->len < sizeof(ev))
		return malformed(k);
	memcpy(&ev, rec->payload, sizeof(ev)); /* read once: the worker may scribble */
	if (!ev.nblocks || ev.nblocks > SHM_EV_MAX_BLOCKS || ev.has_parent > 1 || ev.reserved ||
	    ev.blocks_kind > SHM_EV_TOKEN_IDS ||
	    (ev.blocks_kind == SHM_EV_TOKEN_IDS && ev.block_size != k->block_size))
		return malformed(k);
	want = sizeof(ev) + 8ull * ev.nblocks +
	       (ev.blocks_kind == SHM_EV_TOKEN_IDS ? 4ull * ev.nblocks * ev.block_size
						   : 8ull * ev.nblocks);
	if (rec->len != want)
		return malformed(k);
	t = event_target(k, ev.dp_rank, ev.event_id);
	if (t < 0)
		return 0;
	k->stats.events++;
	return apply_stored(k, (uint32_t)t, &ev, rec->payload + sizeof(ev),
			    rec->payload + sizeof(ev) + 8ull * ev.nblocks);
}

static int on_removed(struct ctl_kv *k, const struct shm_rec *rec)
{
	struct shm_ev_removed ev;
	uint64_t ids[CHUNK];
	size_t before;
	int t, rc = 0;

	if (rec->len < sizeof(ev))
		return malformed(k);
	memcpy(&ev, rec->payload, sizeof(ev));
	if (!ev.n || ev.n > SHM_EV_MAX_BLOCKS || rec->len != sizeof(ev) + 8ull * ev.n)
		return malformed(k);
	t = event_target(k, ev.dp_rank, ev.event_id);
	if (t < 0)
		return 0;
	k->stats.events++;
	before = pdx_target_blocks(k->index, (uint32_t)t);
	/* Removals are independent of each other: chunks change nothing but the copying. */
	for (uint32_t at = 0; at < ev.n && !rc; at += CHUNK) {
		uint32_t n = ev.n - at < CHUNK ? ev.n - at : CHUNK;

		memcpy(ids, rec->payload + sizeof(ev) + 8 * (size_t)at, 8 * (size_t)n);
		rc = tally(k, pdx_remove(k->index, (uint32_t)t, ids, n));
	}
	k->stats.blocks_removed += before - pdx_target_blocks(k->index, (uint32_t)t);
	return rc;
}

static int on_cleared(struct ctl_kv *k, const struct shm_rec *rec)
{
	struct shm_ev_cleared ev;
	size_t before;
	int t, rc;

	if (rec->len != sizeof(ev))
		return malformed(k);
	memcpy(&ev, rec->payload, sizeof(ev));
	if (ev.reserved)
		return malformed(k);
	t = event_target(k, ev.dp_rank, ev.event_id);
	if (t < 0)
		return 0;
	k->stats.events++;
	before = pdx_target_blocks(k->index, (uint32_t)t);
	rc = tally(k, pdx_clear(k->index, (uint32_t)t));
	k->stats.blocks_removed += before - pdx_target_blocks(k->index, (uint32_t)t);
	return rc;
}

static int on_load(struct ctl_kv *k, const struct shm_rec *rec)
{
	struct shm_ev_load ev;

	if (rec->len != sizeof(ev))
		return malformed(k);
	memcpy(&ev, rec->payload, sizeof(ev));
	if (ev.reserved)
		return malformed(k);
	if (rt_report_load(k->rt, k->worker, ev.dp_rank, ev.used_blocks, ev.prefill_tokens)) {
		k->stats.unknown_rank++;
		return 0;
	}
	k->stats.loads++;
	return 0;
}

static int on_record(struct ctl_kv *k, const struct shm_rec *rec)
{
	switch (rec->type) {
	case SHM_EV_STORED:
		return on_stored(k, rec);
	case SHM_EV_REMOVED:
		return on_removed(k, rec);
	case SHM_EV_CLEARED:
		return on_cleared(k, rec);
	case SHM_EV_LOAD:
		return on_load(k, rec);
	default: /* a newer worker's record: its length is known, so skipping it is safe */
		k->stats.unknown_type++;
		return 0;
	}
}

int ctl_kv_drain(struct ctl_kv *k, uint32_t budget)
{
	struct shm_rec rec;
	uint32_t n = 0;
	bool nomem = false;

	if (budget > INT32_MAX) /* the count is returned as an int */
		budget = INT32_MAX;
	while (!k->broken && n < budget) {
		int rc = shm_ring_peek(k->ring, &rec);

		if (rc == -EAGAIN)
			break;
		if (rc) {
			malformed(k);
			break;
		}
		nomem |= on_record(k, &rec) == -ENOMEM;
		shm_ring_consume(k->ring);
		n++;
	}
	shm_ring_release(k->ring);
	if (k->broken)
		return -EBADMSG;
	return nomem ? -ENOMEM : (int)n;
}
