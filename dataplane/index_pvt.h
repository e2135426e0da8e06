/*
 * Prefix index internals. Do not include directly: include index.h.
 *
 * Layout
 *   entries   one per prefix (block) held by at least one target, in chunks of PDX_CHUNK_SLOTS
 *             slots stored as parallel arrays (key, acc, holders word), so a walk reads only
 *             what it needs. Chunks never move; a slot is named by a u32 index.
 *   table     open addressing, linear probing: sequence hash -> entry index of every entry
 *             that does not carry PDX_CONT (the head of a run); the rest are found next to
 *             their parent. Replaced whole (never resized in place) when it fills up.
 *   holders   immutable sorted sets of target ids, interned: every entry held by the same targets
 *             points to the same set, so a block held by one target costs one pointer, and a
 *             reader walking a prompt compares pointers until the set changes.
 *   names     writer-only: each entry's external id (the first it was stored under), and per
 *             target a map of the blocks it holds under those names plus the aliases of those
 *             it holds under another id (index_names.c).
 *
 * Runs. A STORED event usually brings blocks that are new to the index; they get consecutive
 * slots, and a slot whose block is the child of the block in the slot just before carries
 * PDX_CONT in its holders word. Along such a run each slot stores acc, a wrapping sum of the
 * run's blocks, each counted as pdx_term(local, depth) with depth its block number in the
 * prompt: acc[s] = acc[s-1] + term for a PDX_CONT slot. The depth makes the sum see order (a
 * plain sum would match a prompt with two blocks swapped). Readers only take differences of
 * acc along a run, so a run head's acc is free: it holds the head's depth, which gives the
 * writer every slot's depth by walking back to the head (pdx_entry_depth()). The span of
 * a slot counts the slots after it that continue the run with the same holder set; it lives
 * in the holders word, so a reader never pairs a set with a span computed for another one.
 * A reader that has matched block i in slot s checks the span a stride of slots at a time
 * (the sum of the prompt's terms against an acc difference) and the last stride slot by
 * slot, instead of probing per block; only where the prompt leaves a run does it hash and
 * probe the table. Two different runs of honest blocks agree on their sums about as often as
 * two prefixes share a 64-bit sequence hash. Someone choosing blocks could search for a
 * colliding run, but only against a run whose blocks they know, and then they can send those
 * blocks anyway: the worst a collision does is one poor routing choice.
 * The writer keeps PDX_CONT exact (set only when a child is placed right after its parent,
 * cleared before the parent's slot is freed), zeroes a slot's span whenever its holders
 * change, and recomputes the spans around every slot an event touched before anything it
 * freed can be reused. A span read with its holders word therefore describes slots that all
 * had those holders at one moment, and every block a reader counts for a target was held by
 * that target when the reader looked: never deeper than a target ever held, never shorter
 * than what a target held throughout the query.
 *
 * Reclamation. Readers announce the writer's epoch while they query; whatever the writer
 * unlinks (entry slots, sets, old tables) is retired with the current epoch and freed only
 * when no reader is still inside an epoch at or before it. Readers never wait; the writer
 * never waits either, it just frees later.
 *
 * Memory ordering, labelled as pairs (R = release, A = acquire, F = fence):
 *   R1/A1  holders word published: the set, and key and acc of the slot and of every slot its
 *          span covers, are written before the word (R1); a reader loads the word with
 *          acquire (A1) before it reads any of them.
 *   R2/A2  table slot published: key and the entry are complete before the slot's index is
 *          stored (R2); the reader loads the index with acquire (A2) before its key.
 *   R3/A3  new table: filled before its pointer is stored (R3), loaded with acquire (A3).
 *   R5/A5  an orphan (its parent freed) enters the table before its PDX_CONT is cleared with
 *          release (R5); a reader that loads the cleared word (A1 doubles as A5) and then
 *          probes finds it.
 *   F1/F2  epoch: a reader's announcement (then F1) and the writer's unlink (then F2) are
 *          each followed by a seq_cst fence, so either the writer's scan sees the reader or
 *          the reader's walk sees the unlink.
 *   R4/A4  a reader leaving stores 0 with release (R4); the writer reads announcements with
 *          acquire (A4), so everything the reader read happens before the writer frees it.
 */
#ifndef PD_DATAPLANE_INDEX_PVT_H
#define PD_DATAPLANE_INDEX_PVT_H

#include <stdalign.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "counter.h"
#include "huge.h"

#define PDX_CHUNK_SHIFT 12
#define PDX_CHUNK_SLOTS (1u << PDX_CHUNK_SHIFT)
#define PDX_MAX_CHUNKS (1u << 15) /* 2^27 entries */
#define PDX_NONE UINT32_MAX	  /* no entry */

/*
 * Holders word of a slot: the holder set's address, the flags and the span, one atomic word.
 *   bits 0..3    flags: PDX_CONT (the parent sits in the slot before); sets are 16-aligned
 *   bits 4..47   address of the struct pdx_set (user addresses fit in 48 bits)
 *   bits 48..63  span: following slots that continue the run with the same set
 * 0 is a free slot.
 */
#define PDX_CONT ((uint64_t)1)
#define PDX_SET_MASK 0x0000FFFFFFFFFFF0ull
#define PDX_SPAN_SHIFT 48

/* Holder set: the targets caching a prefix, sorted. Immutable once an entry points to it. */
struct pdx_set {
	uint32_t n;
	uint32_t refs;	      /* writer-only: entries pointing here */
	uint64_t sum;	      /* writer-only: sum of mix(member), the interning hash */
	struct pdx_set *next; /* writer-only: intern chain */
	uint16_t member[];
};

struct pdx_chunk {
	_Atomic uint64_t key[PDX_CHUNK_SLOTS];	    /* sequence hash of the prefix */
	_Atomic uint64_t acc[PDX_CHUNK_SLOTS];	    /* sum of local hashes along the run */
	_Atomic uint64_t holders[PDX_CHUNK_SLOTS];  /* set | flags | span, see PDX_CONT */
};

/* Writer-only notes on each slot of a chunk, one allocation per chunk. */
struct pdx_chunk_notes {
	uint64_t name[PDX_CHUNK_SLOTS]; /* external id the entry was first stored under */
};

/* Writer-only bookkeeping of a chunk's slots. */
struct pdx_chunk_meta {
	uint64_t free_map[PDX_CHUNK_SLOTS / 64]; /* 1 = slot free for allocation */
	uint32_t nfree;
	struct pdx_chunk_notes *notes;
};

/*
 * A table slot is one 64-bit word, so readers never see half of one: the entry index in the
 * low half, the top 32 bits of the mixed key in the high half (the entry holds the full key).
 */
#define PDX_SLOT_EMPTY UINT32_MAX
#define PDX_SLOT_TOMB (UINT32_MAX - 1)

struct pdx_table {
	uint64_t mask;
	uint32_t shift; /* 64 - log2(slots): the home slot is the mixed key's top bits */
	uint64_t live; /* writer-only */
	uint64_t used; /* writer-only: live + tombstones */
	alignas(64) _Atomic uint64_t slot[];
};

/* Writer-only map: external id -> entry index (linear probing). */
struct pdx_idmap {
	uint64_t *ext;
	uint32_t *idx; /* PDX_SLOT_EMPTY / PDX_SLOT_TOMB as in the table */
	uint32_t slots;
	uint32_t live;
	uint32_t used;
};

/*
 * Writer-only map of a target's blocks by name, in buckets of one cache line (index_names.c):
 * fourteen slots, their entry indexes packed in 28 bits each, two to seven bytes.
 */
#define PDX_NAME_SLOTS 14

struct pdx_name_bucket {
	alignas(64) uint8_t tag[PDX_NAME_SLOTS]; /* 0: free; else 0x80 | 7 bits of the hash */
	uint8_t overflow; /* pairs that went on past this bucket, full when they came */
	uint8_t idx[PDX_NAME_SLOTS / 2 * 7];
};

struct pdx_names {
	struct pdx_name_bucket *bucket;
	uint32_t nbuckets;
	uint32_t live;
	bool crowded; /* an insert walked far: rebuild at the next chance */
};

struct pdx_target_state {
	struct pdx_names names;	  /* blocks held under their entry's name */
	struct pdx_idmap aliases; /* blocks held under another id: id -> entry */
	uint64_t last_event;
	bool seq_started;
};

struct pdx;

#define PDX_MATCH_MAX_BLOCKS 65536u

struct pdx_reader {
	alignas(64) _Atomic uint64_t epoch; /* 0: not inside a query */
	_Atomic bool attached;
	struct pdx *x;
	uint16_t *active;  /* targets still matching */
	uint64_t *locals;  /* pdx_match_tokens() hashes */
};

enum pdx_retired_kind { PDX_RETIRED_ENTRY, PDX_RETIRED_SET, PDX_RETIRED_TABLE };

struct pdx_retired {
	uint64_t epoch;
	enum pdx_retired_kind kind;
	union {
		uint32_t idx;
		void *ptr;
	};
};

struct pdx_set_memo {
	const struct pdx_set *from;
	struct pdx_set *to;
	uint32_t target;
	bool add;
};

/* Slots an event changed, as ranges within one chunk, whose spans must be recomputed. */
#define PDX_DIRTY_RANGES 32

struct pdx_dirty {
	uint32_t lo, hi; /* entry indices, same chunk */
};

/* Chunks are carved out of slabs of huge pages (dp_huge_zalloc()). */
#define PDX_SLAB_CHUNKS ((uint32_t)(DP_HUGE_PAGE / sizeof(struct pdx_chunk)))

struct pdx {
	/* Shared with readers. */
	_Atomic(struct pdx_table *) table;
	_Atomic(struct pdx_chunk *) *chunk; /* PDX_MAX_CHUNKS pointers */
	alignas(64) _Atomic uint64_t epoch;
	struct pdx_reader *readers;
	uint32_t max_readers;
	uint32_t max_targets;

	/* Writer-only from here on. */
	alignas(64) struct pdx_chunk_meta *meta;
	uint32_t nchunks;
	uint32_t alloc_chunk; /* where allocation continues */
	struct pdx_chunk **slabs;  /* one per PDX_SLAB_CHUNKS chunks */
	uint64_t free_slots;  /* over all chunks */
	struct pdx_target_state *targets;
	struct pdx_idmap head_depth; /* heads made by a parent's release: entry -> depth */
	struct pdx_set **intern; /* buckets by sum */
	struct pdx_set *unretired_sets; /* dead sets the retire list had no room for */
	uint64_t intern_mask;
	struct pdx_set_memo memo;
	uint16_t *set_scratch; /* max_targets members */
	uint64_t *seen;	       /* pdx_store(): open-addressed set of the event's ids */
	size_t seen_cap;
	struct pdx_dirty dirty[PDX_DIRTY_RANGES];
	uint32_t ndirty;
	uint64_t *keys; /* scratch: an event's sequence hashes, a clear's order */
	size_t keys_cap;
	struct pdx_block *blocks; /* pdx_store_tokens() */
	size_t blocks_cap;
	struct pdx_retired *retired;
	size_t nretired, retired_cap;
	uint64_t min_table_slots;
	_Atomic uint64_t stat[18]; /* struct pdx_stats, field by field; written by the writer */
};

/* Stats are relaxed atomics so a reader may copy them; one writer, so no RMW is needed. */
#define PDX_STAT(name) (offsetof(struct pdx_stats, name) / sizeof(uint64_t))

static inline void pdx_stat_add(struct pdx *x, size_t i, uint64_t v)
{
	dp_relaxed_add(&x->stat[i], v, 0); /* single writer: an exact increment */
}

static inline struct pdx_chunk *pdx_chunk_of(const struct pdx *x, uint32_t idx)
{
	/* Relaxed: the chunk pointer is stored before any index into it is published (R1/R2). */
	return atomic_load_explicit(&x->chunk[idx >> PDX_CHUNK_SHIFT], memory_order_relaxed);
}

/*
 * A block's share of a run sum: its local hash mixed with where it sits in the prompt. The
 * shifts and multiply make it nonlinear in both: a plain xor of the depth would let two blocks
 * whose hashes differ only where the two depths' patterns agree swap places unseen. A bijection
 * of the local hash for a given depth, so one term still identifies one block exactly.
 */
#define PDX_TERM_DEPTH 0x9E3779B97F4A7C15ull
#define PDX_TERM_MUL 0xBF58476D1CE4E5B9ull

static inline uint64_t pdx_term(uint64_t local, uint64_t depth)
{
	uint64_t m = local ^ depth * PDX_TERM_DEPTH;

	/* Fold first: a multiply only carries upwards, so a difference in the top bits alone
	 * would otherwise reach just one lower bit through the final shift. */
	m = (m ^ (m >> 32)) * PDX_TERM_MUL;
	return m ^ (m >> 29);
}


static inline uint32_t pdx_slot_of(uint32_t idx)
{
	return idx & (PDX_CHUNK_SLOTS - 1);
}

static inline const struct pdx_set *pdx_set_of(uint64_t holders)
{
	return (const struct pdx_set *)(uintptr_t)(holders & PDX_SET_MASK);
}

static inline uint32_t pdx_span_of(uint64_t holders)
{
	return (uint32_t)(holders >> PDX_SPAN_SHIFT);
}

/* A holders word; a new set always starts with span 0 until the spans are recomputed. */
static inline uint64_t pdx_holders_word(const struct pdx_set *set, uint64_t flags, uint32_t span)
{
	return (uint64_t)(uintptr_t)set | flags | (uint64_t)span << PDX_SPAN_SHIFT;
}

/* index_table.c: reserve, then insert (cannot fail); find returns PDX_NONE if absent */
void pdx_table_free(struct pdx_table *t);
int pdx_table_init(struct pdx *x, uint64_t blocks);
uint32_t pdx_table_find(const struct pdx *x, const struct pdx_table *t, uint64_t key);
void pdx_table_prefetch(const struct pdx_table *t, uint64_t key);
int pdx_table_reserve(struct pdx *x, uint64_t more);
void pdx_table_insert(struct pdx *x, uint64_t key, uint32_t idx);
void pdx_table_delete(struct pdx *x, uint64_t key, uint32_t idx);
size_t pdx_table_bytes(uint64_t slots);

/* index_sets.c: with/without return NULL on ENOMEM (or for the empty set) */
int pdx_sets_init(struct pdx *x);
void pdx_sets_destroy(struct pdx *x);
struct pdx_set *pdx_set_with(struct pdx *x, const struct pdx_set *s, uint32_t target);
struct pdx_set *pdx_set_without(struct pdx *x, const struct pdx_set *s, uint32_t target);
void pdx_set_unref(struct pdx *x, struct pdx_set *s);
void pdx_set_drop_unused(struct pdx *x, struct pdx_set *s);
bool pdx_set_has(const struct pdx_set *s, uint32_t target);

/* Does @target hold entry @idx (no one holds a free slot)? Writer: reads its own store. */
static inline bool pdx_entry_held_by(const struct pdx *x, uint32_t idx, uint32_t target)
{
	const struct pdx_chunk *c = pdx_chunk_of(x, idx);

	return pdx_set_has(pdx_set_of(atomic_load_explicit(&c->holders[pdx_slot_of(idx)],
							   memory_order_relaxed)),
			   target);
}
size_t pdx_set_bytes(uint32_t n);

/* index_epoch.c */
int pdx_retire(struct pdx *x, enum pdx_retired_kind kind, uint32_t idx, void *ptr);
void pdx_retired_free_all(struct pdx *x);

/* index_entry.c: alloc returns 0 or -ENOMEM */
int pdx_entry_alloc(struct pdx *x, uint32_t prev, uint32_t *out);
void pdx_entry_release(struct pdx *x, uint32_t idx);
void pdx_entry_free_slot(struct pdx *x, uint32_t idx);
void pdx_entries_destroy(struct pdx *x);
void pdx_entry_touch(struct pdx *x, uint32_t idx);
/* Block number of entry @idx's block in its prompts. */
uint64_t pdx_entry_depth(const struct pdx *x, uint32_t idx);
/* Room for pdx_entry_release() to make an orphan a head: 0 or -ENOMEM. */
int pdx_entry_release_reserve(struct pdx *x, uint32_t idx);
void pdx_spans_update(struct pdx *x);

/* External id entry @idx was first stored under. */
static inline uint64_t *pdx_name_of(const struct pdx *x, uint32_t idx)
{
	return &x->meta[idx >> PDX_CHUNK_SHIFT].notes->name[pdx_slot_of(idx)];
}

/* index_names.c */
/* Entry @target holds under id @ext, or PDX_NONE. */
uint32_t pdx_name_lookup(const struct pdx *x, uint32_t target, uint64_t ext);
/* Does @target hold entry @e under id @ext? (Then pdx_name_lookup() would answer @e.) */
bool pdx_name_is(const struct pdx *x, uint32_t target, uint32_t e, uint64_t ext);
/* Warm the line a lookup of @ext in @target's map starts with. */
void pdx_name_prefetch(const struct pdx *x, uint32_t target, uint64_t ext);
/* Room for @more blocks in @target's map, so an event cannot fail half way. 0 or -ENOMEM. */
int pdx_names_reserve(struct pdx *x, uint32_t target, uint32_t more);
/* Room to record that @target holds @e under @ext (an alias if not @e's name): 0 or -ENOMEM. */
int pdx_name_hold_reserve(struct pdx *x, uint32_t target, uint32_t e, uint64_t ext);
/* @target now holds @e under @ext; room reserved with one of the two above. */
void pdx_name_hold(struct pdx *x, uint32_t target, uint32_t e, uint64_t ext);
/* @target no longer holds @e, which it held under @ext. */
void pdx_name_drop(struct pdx *x, uint32_t target, uint32_t e, uint64_t ext);
/* Entries @target holds under their own names, into @out (room for pdx_names_count()). */
size_t pdx_names_list(const struct pdx *x, uint32_t target, uint32_t *out);
size_t pdx_names_count(const struct pdx *x, uint32_t target);
void pdx_names_free(struct pdx *x, uint32_t target);

/* index_idmap.c: the alias maps */
/* Entry named by @ext and (if @pos) its slot, or PDX_NONE and the slot to put it at. */
uint32_t pdx_idmap_find(const struct pdx_idmap *m, uint64_t ext, uint32_t *pos);
/* Entry in slot @pos of @m, or PDX_NONE if the slot holds none (empty or deleted). */
static inline uint32_t pdx_idmap_at(const struct pdx_idmap *m, uint32_t pos)
{
	uint32_t idx = m->idx[pos];

	return idx == PDX_SLOT_EMPTY || idx == PDX_SLOT_TOMB ? PDX_NONE : idx;
}
uint32_t pdx_idmap_get(const struct pdx_idmap *m, uint64_t ext);
int pdx_idmap_reserve(struct pdx *x, struct pdx_idmap *m, uint32_t more);
/* Insert an absent @ext into a map with room (pdx_idmap_reserve()). */
void pdx_idmap_put(struct pdx_idmap *m, uint64_t ext, uint32_t idx);
void pdx_idmap_del_at(struct pdx_idmap *m, uint32_t pos);
void pdx_idmap_free(struct pdx *x, struct pdx_idmap *m);

#endif
