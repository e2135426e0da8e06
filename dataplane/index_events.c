/*
 * KV events applied to the prefix index (routing-semantics §2): STORED, REMOVED, CLEARED, a
 * target leaving, and the per-publisher event-id sequence. Writer only: the control thread.
 * Every rejected event leaves the index as it was and moves a counter.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "hash.h"
#include "index.h"

/* Blocks ahead whose memory a loop over an event's blocks prefetches. */
#define WRITE_AHEAD 8

static int check_target(struct pdx *x, uint32_t target)
{
	if (target < x->max_targets)
		return 0;
	pdx_stat_add(x, PDX_STAT(bad_target), 1);
	return -EINVAL;
}

int pdx_event_seq(struct pdx *x, uint32_t target, uint64_t event_id)
{
	if (check_target(x, target))
		return -EINVAL;

	struct pdx_target_state *ts = &x->targets[target];
	uint64_t last = ts->last_event;

	if (ts->seq_started && event_id <= last) {
		pdx_stat_add(x, PDX_STAT(events_dup), 1);
		return -EALREADY;
	}
	ts->last_event = event_id;
	if (!ts->seq_started || event_id == last + 1) {
		ts->seq_started = true;
		return 0;
	}
	pdx_stat_add(x, PDX_STAT(events_gap), 1);
	pdx_stat_add(x, PDX_STAT(events_missing), event_id - last - 1);
	return event_id - last - 1 > INT32_MAX ? INT32_MAX : (int)(event_id - last - 1);
}

/*
 * Reject an event whose ids repeat or whose block names itself as its parent, in O(n) with an
 * open-addressed set of the ids. Returns 0 or -EINVAL (counted).
 */
static int check_event_ids(struct pdx *x, const uint64_t *parent_ext,
			   const struct pdx_block *blocks, size_t n)
{
	size_t cap = 16;

	while (cap < 2 * (n + 1))
		cap <<= 1;
	if (cap > x->seen_cap) {
		/* Two arrays: the ids, and whether each slot is used (any id is a valid id). */
		uint64_t *seen = realloc(x->seen, cap * (sizeof(uint64_t) + 1));

		if (!seen)
			return -ENOMEM;
		x->seen = seen;
		x->seen_cap = cap;
	}
	uint8_t *used = (uint8_t *)(x->seen + cap);

	memset(used, 0, cap);
	for (size_t j = 0; j <= n; j++) {
		bool is_parent = j == n;
		uint64_t id;

		if (is_parent && !parent_ext)
			break;
		id = is_parent ? *parent_ext : blocks[j].ext_id;
		for (size_t pos = (id * 0x9E3779B97F4A7C15ull) >> 32 & (cap - 1);;
		     pos = (pos + 1) & (cap - 1)) {
			if (!used[pos]) {
				used[pos] = 1;
				x->seen[pos] = id;
				break;
			}
			if (x->seen[pos] == id) {
				pdx_stat_add(x, is_parent ? PDX_STAT(store_self_parent)
							  : PDX_STAT(store_repeat_id), 1);
				return -EINVAL;
			}
		}
	}
	return 0;
}

/*
 * Would entry @e be a PDX_CONT child of @prev, as block number @depth with this @local hash?
 * It must sit right after it with a fitting acc.
 */
static bool fits_after(struct pdx *x, uint32_t prev, uint32_t e, uint64_t local, uint64_t depth)
{
	const struct pdx_chunk *c = pdx_chunk_of(x, e);
	uint32_t s = pdx_slot_of(e);

	return prev != PDX_NONE && e == prev + 1 && s != 0 &&
	       atomic_load_explicit(&c->acc[s], memory_order_relaxed) -
			       atomic_load_explicit(&c->acc[s - 1], memory_order_relaxed) ==
		       pdx_term(local, depth);
}

/*
 * The entry of the child of @prev, block number @depth with this @local hash and sequence hash
 * @key, or PDX_NONE: in the slot after @prev when it carries PDX_CONT (such entries are not in
 * the table), else a run head in the table.
 */
static uint32_t find_child(struct pdx *x, uint32_t prev, uint64_t key, uint64_t local,
			   uint64_t depth)
{
	if (prev != PDX_NONE && pdx_slot_of(prev) + 1 < PDX_CHUNK_SLOTS) {
		const struct pdx_chunk *c = pdx_chunk_of(x, prev + 1);

		if ((atomic_load_explicit(&c->holders[pdx_slot_of(prev + 1)],
					  memory_order_relaxed) & PDX_CONT) &&
		    fits_after(x, prev, prev + 1, local, depth))
			return prev + 1;
	}
	/* Relaxed: the writer itself stored the table pointer. */
	return pdx_table_find(x, atomic_load_explicit(&x->table, memory_order_relaxed), key);
}

/*
 * Give live entry @e (holders word @h) the holder set @set. Its span is zeroed with the new
 * set (the neighbours still hold the old one) until the event's spans are recomputed.
 */
static void swap_set(struct pdx *x, uint32_t e, uint64_t h, struct pdx_set *set)
{
	struct pdx_chunk *c = pdx_chunk_of(x, e);

	set->refs++;
	/* R1: the new set is complete; pairs with A1 in the reader. */
	atomic_store_explicit(&c->holders[pdx_slot_of(e)], pdx_holders_word(set, h & PDX_CONT, 0),
			      memory_order_release);
	pdx_set_unref(x, (struct pdx_set *)pdx_set_of(h));
	pdx_entry_touch(x, e);
}

/* Put @target on existing entry @e; returns 0 or -ENOMEM. */
static int hold_existing(struct pdx *x, uint32_t e, uint32_t target)
{
	struct pdx_chunk *c = pdx_chunk_of(x, e);
	uint32_t s = pdx_slot_of(e);
	uint64_t h = atomic_load_explicit(&c->holders[s], memory_order_relaxed);
	struct pdx_set *old = (struct pdx_set *)pdx_set_of(h);
	struct pdx_set *set = pdx_set_with(x, old, target);

	if (!set)
		return -ENOMEM;
	swap_set(x, e, h, set);
	return 0;
}

/*
 * Create the entry for @key, block number @depth, held by @target alone and named @ext;
 * returns its index or PDX_NONE (ENOMEM, with nothing changed). A run head goes into the
 * table, with its depth for acc.
 */
static uint32_t hold_new(struct pdx *x, uint64_t key, uint64_t local, uint64_t depth,
			 uint64_t ext, uint32_t prev, uint32_t target)
{
	uint32_t e;

	if (pdx_entry_alloc(x, prev, &e))
		return PDX_NONE;

	struct pdx_chunk *c = pdx_chunk_of(x, e);
	uint32_t s = pdx_slot_of(e);
	bool cont = prev != PDX_NONE && e == prev + 1 && s != 0;
	uint64_t acc = depth;
	struct pdx_set *set = pdx_set_with(x, NULL, target);

	/* Never published, so no reader saw the slot: it can go straight back. */
	if (!set || (!cont && pdx_table_reserve(x, 1))) {
		pdx_entry_free_slot(x, e);
		if (set && !set->refs)
			pdx_set_drop_unused(x, set);
		return PDX_NONE;
	}
	*pdx_name_of(x, e) = ext;
	if (cont)
		acc = atomic_load_explicit(&c->acc[s - 1], memory_order_relaxed) +
		      pdx_term(local, depth);
	/* Relaxed: published by R2 (table) or R1 (holders) below. */
	atomic_store_explicit(&c->key[s], key, memory_order_relaxed);
	atomic_store_explicit(&c->acc[s], acc, memory_order_relaxed);
	if (!cont)
		pdx_table_insert(x, key, e); /* room reserved above */
	set->refs++;
	/* R1: key and acc are written; pairs with A1 in the reader. */
	atomic_store_explicit(&c->holders[s], pdx_holders_word(set, cont ? PDX_CONT : 0, 0),
			      memory_order_release);
	pdx_entry_touch(x, e);
	pdx_stat_add(x, PDX_STAT(entries), 1);
	return e;
}

/* Room for @n words in x->keys, the writer's scratch array; 0 or -ENOMEM. */
static int keys_reserve(struct pdx *x, size_t n)
{
	if (n > x->keys_cap) {
		uint64_t *k = realloc(x->keys, n * sizeof(*k));

		if (!k)
			return -ENOMEM;
		x->keys = k;
		x->keys_cap = n;
	}
	return 0;
}

/* Sequence hashes of the event's blocks into x->keys; @key is the parent's, if @has_parent. */
static int event_keys(struct pdx *x, bool has_parent, uint64_t key,
		      const struct pdx_block *blocks, size_t n)
{
	if (keys_reserve(x, n))
		return -ENOMEM;
	for (size_t j = 0; j < n; j++) {
		key = j == 0 && !has_parent ? blocks[0].local_hash
					    : dp_hash_chain(key, blocks[j].local_hash);
		x->keys[j] = key;
	}
	return 0;
}

/* Warm what block @j will touch: its table bucket and its id's bucket in the target's map. */
static void store_warm(const struct pdx *x, uint32_t target, const struct pdx_block *blocks,
		       size_t j)
{
	pdx_table_prefetch(atomic_load_explicit(&x->table, memory_order_relaxed), x->keys[j]);
	pdx_name_prefetch(x, target, blocks[j].ext_id);
}

/* Block @j, id @ext and sequence hash @key, is one @target already has under that id. */
static bool store_known(struct pdx *x, uint32_t known, uint64_t key)
{
	if (atomic_load_explicit(&pdx_chunk_of(x, known)->key[pdx_slot_of(known)],
				 memory_order_relaxed) != key) {
		pdx_stat_add(x, PDX_STAT(store_id_conflict), 1);
		return false;
	}
	pdx_stat_add(x, PDX_STAT(store_dup_block), 1);
	return true;
}

/* Apply blocks @blocks[0..n), the first of them block number @depth, after entry @prev. */
static long store_blocks(struct pdx *x, uint32_t target, uint32_t prev, uint64_t depth,
			 const struct pdx_block *blocks, size_t n)
{
	long applied = 0;

	for (size_t j = 0; j < WRITE_AHEAD && j < n; j++)
		store_warm(x, target, blocks, j);
	for (size_t j = 0; j < n; j++, depth++) {
		uint64_t key = x->keys[j], ext = blocks[j].ext_id;
		uint32_t known = pdx_name_lookup(x, target, ext);

		if (j + WRITE_AHEAD < n)
			store_warm(x, target, blocks, j + WRITE_AHEAD);
		if (known != PDX_NONE) {
			if (!store_known(x, known, key))
				return -EEXIST;
			prev = known;
			continue;
		}
		uint32_t e = find_child(x, prev, key, blocks[j].local_hash, depth);

		if (e == PDX_NONE) {
			e = hold_new(x, key, blocks[j].local_hash, depth, ext, prev, target);
			if (e == PDX_NONE)
				return -ENOMEM;
		} else if (pdx_entry_held_by(x, e, target)) {
			/* Held under another external id: keep the first name. */
			pdx_stat_add(x, PDX_STAT(store_dup_block), 1);
			prev = e;
			continue;
		} else if (pdx_name_hold_reserve(x, target, e, ext) ||
			   hold_existing(x, e, target)) {
			return -ENOMEM;
		}
		pdx_name_hold(x, target, e, ext);
		pdx_stat_add(x, PDX_STAT(blocks_stored), 1);
		applied++;
		prev = e;
	}
	return applied;
}

long pdx_store(struct pdx *x, uint32_t target, const uint64_t *parent_ext,
	       const struct pdx_block *blocks, size_t n)
{
	if (check_target(x, target))
		return -EINVAL;

	int err = check_event_ids(x, parent_ext, blocks, n);

	if (err)
		return err;

	uint32_t prev = PDX_NONE;
	uint64_t key = 0, depth = 0;

	if (parent_ext) {
		prev = pdx_name_lookup(x, target, *parent_ext);
		if (prev == PDX_NONE) {
			pdx_stat_add(x, PDX_STAT(store_unknown_parent), 1);
			return -ENOENT;
		}
		key = atomic_load_explicit(&pdx_chunk_of(x, prev)->key[pdx_slot_of(prev)],
					   memory_order_relaxed);
		depth = pdx_entry_depth(x, prev) + 1;
	}
	if (n > UINT32_MAX || pdx_names_reserve(x, target, (uint32_t)n) ||
	    event_keys(x, parent_ext != NULL, key, blocks, n))
		return -ENOMEM;

	long applied = store_blocks(x, target, prev, depth, blocks, n);

	pdx_reclaim(x);
	return applied;
}

long pdx_store_tokens(struct pdx *x, uint32_t target, const uint64_t *parent_ext,
		      const uint64_t *ext_ids, size_t n, const uint32_t *tokens,
		      uint32_t block_size, uint64_t seed)
{
	if (!dp_hash_block_size_ok(block_size))
		return -EINVAL;
	if (n > x->blocks_cap) {
		struct pdx_block *b = realloc(x->blocks, n * sizeof(*b));

		if (!b)
			return -ENOMEM;
		x->blocks = b;
		x->blocks_cap = n;
	}
	for (size_t j = 0; j < n; j++) {
		uint64_t local;

		dp_hash_blocks(tokens + j * block_size, block_size, block_size, seed, &local);
		x->blocks[j] = (struct pdx_block){.ext_id = ext_ids[j], .local_hash = local};
	}
	return pdx_store(x, target, parent_ext, x->blocks, n);
}

/*
 * Take @target off entry @e, which it held under @ext; frees the entry when no one holds it.
 * Returns 0, or -ENOMEM with nothing changed.
 */
static int drop_holder(struct pdx *x, uint32_t e, uint32_t target, uint64_t ext)
{
	struct pdx_chunk *c = pdx_chunk_of(x, e);
	uint32_t s = pdx_slot_of(e);
	uint64_t h = atomic_load_explicit(&c->holders[s], memory_order_relaxed);
	struct pdx_set *old = (struct pdx_set *)pdx_set_of(h);

	if (old->n == 1) {
		if (pdx_entry_release_reserve(x, e))
			return -ENOMEM;
		pdx_entry_release(x, e);
		pdx_set_unref(x, old);
	} else {
		struct pdx_set *set = pdx_set_without(x, old, target);

		if (!set)
			return -ENOMEM;
		swap_set(x, e, h, set);
	}
	/* After the release: the name is still there (the slot is retired, not reused). */
	pdx_name_drop(x, target, e, ext);
	pdx_stat_add(x, PDX_STAT(blocks_removed), 1);
	return 0;
}

/*
 * The entry @target holds under id @ext, or PDX_NONE. Engines evict a prompt's blocks leaf
 * first, so a REMOVED event tends to list a run from its end: the entry of an id is checked
 * first in the slot before the previous id's entry (@prev), which is nearly always right and
 * costs two lines already in cache, instead of a search of the target's map.
 */
static uint32_t remove_find(const struct pdx *x, uint32_t target, uint32_t prev, uint64_t ext)
{
	if (prev != PDX_NONE && prev > 0 && pdx_name_is(x, target, prev - 1, ext))
		return prev - 1;
	return pdx_name_lookup(x, target, ext);
}

long pdx_remove(struct pdx *x, uint32_t target, const uint64_t *ext_ids, size_t n)
{
	if (check_target(x, target))
		return -EINVAL;

	uint32_t prev = PDX_NONE;
	long removed = 0;

	for (size_t j = 0; j < n; j++) {
		uint32_t e = remove_find(x, target, prev, ext_ids[j]);

		if (e == PDX_NONE) {
			pdx_stat_add(x, PDX_STAT(remove_unknown), 1);
			continue;
		}
		if (drop_holder(x, e, target, ext_ids[j])) {
			pdx_reclaim(x);
			return -ENOMEM;
		}
		prev = e;
		removed++;
	}
	pdx_reclaim(x);
	return removed;
}

/* Drop @target's aliased blocks; -ENOMEM leaves the rest held. Returns the number dropped. */
static long clear_aliases(struct pdx *x, uint32_t target)
{
	struct pdx_idmap *aliases = &x->targets[target].aliases;
	long removed = 0;

	for (uint32_t i = 0; i < aliases->slots; i++) {
		uint32_t e = pdx_idmap_at(aliases, i);

		if (e == PDX_NONE)
			continue;
		if (drop_holder(x, e, target, aliases->ext[i]))
			return -ENOMEM;
		removed++;
	}
	return removed;
}

static int cmp_desc(const void *a, const void *b)
{
	uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;

	return x < y ? 1 : x > y ? -1 : 0;
}

/*
 * Drop every block of @target: its aliases, then the rest children before parents (the higher
 * slot of a run first), so no child is orphaned on the way and the table never grows for run
 * heads that live a moment.
 */
long pdx_clear(struct pdx *x, uint32_t target)
{
	if (check_target(x, target))
		return -EINVAL;

	long removed = clear_aliases(x, target);

	if (removed < 0 || keys_reserve(x, pdx_names_count(x, target))) {
		pdx_reclaim(x);
		return -ENOMEM;
	}

	uint32_t *order = (uint32_t *)x->keys; /* room for as many u64 */
	size_t n = pdx_names_list(x, target, order);

	if (n)
		qsort(order, n, sizeof(*order), cmp_desc);
	for (size_t k = 0; k < n; k++) {
		if (drop_holder(x, order[k], target, *pdx_name_of(x, order[k]))) {
			pdx_reclaim(x);
			return -ENOMEM;
		}
		removed++;
	}
	pdx_names_free(x, target);
	pdx_reclaim(x);
	return removed;
}

long pdx_drop_target(struct pdx *x, uint32_t target)
{
	long removed = pdx_clear(x, target);

	if (removed >= 0) {
		x->targets[target].seq_started = false;
		x->targets[target].last_event = 0;
	}
	return removed;
}

size_t pdx_target_blocks(const struct pdx *x, uint32_t target)
{
	return target < x->max_targets ? pdx_names_count(x, target) : 0;
}
