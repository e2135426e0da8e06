/*
 * pdmock's KV cache (tools/pdmock/cache.h, routing-semantics §7): prefix hits, shared blocks,
 * STORED chains named by sequence hashes, LRU eviction leaves first with REMOVED, -ENOSPC
 * without side effects, decode filling blocks, and a randomized run checked against a
 * reference model and against the router's view rebuilt from the events alone, and dumps that
 * rebuild that view from nothing. Longer than most files: the reference model and the event
 * view live here, next to the tests using them.
 */
#include <errno.h>
#include <string.h>

#include <criterion/criterion.h>

#include "cache.h"
#include "hash.h"
#include "helpers.h"

TestSuite(pdmock_cache);

#define V_MAX 1024
#define V_LAST 64

/*
 * What a router believes from the events: the stored blocks and their parents. The callbacks
 * check each event as the router's intake would: a known parent, ids recomputed from the
 * tokens, no id stored twice, only known ids removed, and only leaves removed.
 */
struct view {
	uint32_t block_size;
	uint32_t n;
	struct {
		uint64_t id, parent;
		bool has_parent;
	} b[V_MAX];
	uint32_t stored_events, removed_events, tick, stored_at, removed_at;
	bool last_has_parent;
	uint64_t last_parent, last_ids[V_LAST], last_removed[V_LAST];
	uint32_t last_tokens[V_LAST * 8];
	uint32_t last_n, last_nremoved;
};

static struct view V;

static int view_find(const struct view *v, uint64_t id)
{
	for (uint32_t i = 0; i < v->n; i++)
		if (v->b[i].id == id)
			return (int)i;
	return -1;
}

static void view_add(struct view *v, uint64_t id, const uint64_t *parent)
{
	cr_assert_lt(v->n, V_MAX);
	cr_assert_eq(view_find(v, id), -1, "block %016llx stored twice", (unsigned long long)id);
	v->b[v->n].id = id;
	v->b[v->n].has_parent = parent != NULL;
	v->b[v->n++].parent = parent ? *parent : 0;
}

static void on_stored(void *ctx, const uint64_t *parent, const uint64_t *ids,
		      const uint32_t *tokens, uint32_t n)
{
	uint32_t bs = V.block_size;
	uint64_t local;

	cr_assert_eq(ctx, &V);
	cr_assert_gt(n, 0);
	cr_assert(!parent || view_find(&V, *parent) >= 0, "STORED under an unknown parent");
	for (uint32_t i = 0; i < n; i++) {
		const uint64_t *p = i ? &ids[i - 1] : parent;

		cr_assert_eq(dp_hash_blocks(tokens + (size_t)i * bs, bs, bs, DP_HASH_SEED, &local),
			     1);
		cr_assert_eq(ids[i], p ? dp_hash_chain(*p, local) : local,
			     "ext id is not the seq hash");
		view_add(&V, ids[i], p);
	}
	V.last_has_parent = parent != NULL;
	V.last_parent = parent ? *parent : 0;
	V.last_n = n;
	if (n <= V_LAST && (size_t)n * bs <= sizeof(V.last_tokens) / sizeof(V.last_tokens[0])) {
		memcpy(V.last_ids, ids, n * sizeof(*ids));
		memcpy(V.last_tokens, tokens, (size_t)n * bs * sizeof(*tokens));
	}
	V.stored_events++;
	V.stored_at = ++V.tick;
}

static void on_removed(void *ctx, const uint64_t *ids, uint32_t n)
{
	cr_assert_eq(ctx, &V);
	cr_assert_gt(n, 0);
	for (uint32_t i = 0; i < n; i++) {
		int at = view_find(&V, ids[i]);

		cr_assert_geq(at, 0, "REMOVED of an unknown block");
		for (uint32_t j = 0; j < V.n; j++)
			cr_assert(!(V.b[j].has_parent && V.b[j].parent == ids[i]),
				  "evicted a parent");
		V.b[at] = V.b[--V.n];
		if (i < V_LAST)
			V.last_removed[i] = ids[i];
	}
	V.last_nremoved = n;
	V.removed_events++;
	V.removed_at = ++V.tick;
}

static void open_cache(struct mk_cache *c, uint32_t cap, uint32_t bs, uint32_t seqs,
		       uint32_t max_seq_blocks)
{
	struct mk_cache_callbacks cb = {.ctx = &V, .stored = on_stored, .removed = on_removed};

	memset(&V, 0, sizeof(V));
	V.block_size = bs;
	cr_assert_eq(mk_cache_init(c, cap, bs, seqs, max_seq_blocks, &cb), 0);
}

/* @n tokens named by @tag. */
static void fill(uint32_t *tokens, uint64_t tag, uint32_t n)
{
	for (uint32_t i = 0; i < n; i++)
		tokens[i] = (uint32_t)t_mix64(tag * 1000003u + i);
}

/* Sequence hashes of the full blocks of @tokens, as the router computes them. */
static void seq_hashes(const uint32_t *tokens, uint32_t nblocks, uint32_t bs, uint64_t *out)
{
	uint64_t local[64];

	cr_assert_leq(nblocks, 64);
	cr_assert_eq(dp_hash_blocks(tokens, (size_t)nblocks * bs, bs, DP_HASH_SEED, local),
		     (long)nblocks);
	dp_hash_sequence(local, nblocks, out);
}

static uint32_t refs_of(const struct mk_cache *c, uint64_t id)
{
	uint32_t refs = 0;

	cr_assert(mk_cache_contains(c, id, &refs), "block %016llx not cached",
		  (unsigned long long)id);
	return refs;
}

/* The cache holds exactly what the router's view holds. */
static void assert_view_matches(const struct mk_cache *c)
{
	struct mk_cache_stats s = mk_cache_stats(c);

	cr_assert_eq(s.used_blocks + s.cached_free_blocks, V.n);
	cr_assert_eq(s.used_blocks + s.cached_free_blocks + s.free_blocks, s.capacity_blocks);
	for (uint32_t i = 0; i < V.n; i++)
		cr_assert(mk_cache_contains(c, V.b[i].id, NULL));
}

Test(pdmock_cache, init_rejects_bad_config_and_bad_sequence_ids)
{
	struct mk_cache c;
	uint32_t t[4] = {1, 2, 3, 4};

	cr_assert_eq(mk_cache_init(&c, 0, 64, 1, 1, NULL), -EINVAL);
	cr_assert_eq(mk_cache_init(&c, 16, 3, 1, 1, NULL), -EINVAL);
	cr_assert_eq(mk_cache_init(&c, 16, 2048, 1, 1, NULL), -EINVAL);
	cr_assert_eq(mk_cache_init(&c, 16, 64, 0, 1, NULL), -EINVAL);
	cr_assert_eq(mk_cache_init(&c, 16, 64, 1, 0, NULL), -EINVAL);
	cr_assert_eq(mk_cache_init(&c, 16, 64, 1, 17, NULL), -EINVAL);
	mk_cache_destroy(&c);
	cr_assert_eq(mk_cache_init(&c, MK_CACHE_DEFAULT_CAPACITY_BLOCKS,
				   MK_CACHE_DEFAULT_BLOCK_SIZE, 256, 2048, NULL),
		     0);
	cr_assert_eq(mk_cache_acquire(&c, 256, t, 4, NULL), -EINVAL);
	cr_assert_eq(mk_cache_acquire(&c, 0, NULL, 4, NULL), -EINVAL);
	cr_assert_eq(mk_cache_extend(&c, 0, 1), -EINVAL);
	cr_assert_eq(mk_cache_release(&c, 0), -EINVAL);
	cr_assert_eq(mk_cache_acquire(&c, 0, t, 4, NULL), 0);
	cr_assert_eq(mk_cache_acquire(&c, 0, t, 4, NULL), -EINVAL, "already active");
	cr_assert_eq(mk_cache_release(&c, 0), 0);
	cr_assert_eq(mk_cache_release(&c, 0), -EINVAL);
	mk_cache_destroy(&c);
}

Test(pdmock_cache, prefix_hits_count_only_leading_full_blocks)
{
	struct mk_cache c;
	uint32_t a[16], b[16];
	uint32_t hit = 99;

	open_cache(&c, 64, 4, 4, 8);
	fill(a, 1, 16);
	cr_assert_eq(mk_cache_lookup(&c, a, 10), 0);
	cr_assert_eq(mk_cache_acquire(&c, 0, a, 10, &hit), 0); /* two blocks and 2 tokens */
	cr_assert_eq(hit, 0);
	cr_assert_eq(mk_cache_stats(&c).used_blocks, 2, "the partial block is not cached");
	cr_assert_eq(mk_cache_lookup(&c, a, 10), 2);
	cr_assert_eq(mk_cache_lookup(&c, a, 16), 2);
	cr_assert_eq(mk_cache_lookup(&c, a, 7), 1);
	cr_assert_eq(mk_cache_lookup(&c, a, 3), 0);
	memcpy(b, a, sizeof(b));
	b[5]++;
	cr_assert_eq(mk_cache_lookup(&c, b, 16), 1, "a change in block 1 keeps block 0");
	memcpy(b, a, sizeof(b));
	b[0]++;
	cr_assert_eq(mk_cache_lookup(&c, b, 16), 0, "block 1 is the same but its prefix is not");
	cr_assert_eq(mk_cache_stats(&c).used_blocks, 2, "lookups change nothing");
	cr_assert_eq(V.stored_events, 1);
	mk_cache_destroy(&c);
}

Test(pdmock_cache, shared_prefixes_share_blocks_with_refcounts)
{
	struct mk_cache c;
	uint32_t a[12], b[12];
	uint64_t ha[3], hb[3];
	uint32_t hit = 0;

	open_cache(&c, 64, 4, 4, 8);
	fill(a, 1, 12);
	memcpy(b, a, sizeof(b));
	fill(b + 8, 2, 4);
	seq_hashes(a, 3, 4, ha);
	seq_hashes(b, 3, 4, hb);
	cr_assert_eq(mk_cache_acquire(&c, 0, a, 12, NULL), 0);
	cr_assert_eq(mk_cache_acquire(&c, 1, b, 12, &hit), 0);
	cr_assert_eq(hit, 2);
	cr_assert_eq(refs_of(&c, ha[0]), 2);
	cr_assert_eq(refs_of(&c, ha[1]), 2);
	cr_assert_eq(refs_of(&c, ha[2]), 1);
	cr_assert_eq(refs_of(&c, hb[2]), 1);
	cr_assert_eq(mk_cache_stats(&c).used_blocks, 4);
	cr_assert_eq(mk_cache_stats(&c).hit_blocks, 2);
	cr_assert_eq(V.stored_events, 2);
	cr_assert(V.last_has_parent && V.last_parent == ha[1]);
	cr_assert(V.last_n == 1 && V.last_ids[0] == hb[2]);
	cr_assert_eq(mk_cache_used_fraction(&c), 4.0 / 64.0);
	cr_assert_eq(mk_cache_release(&c, 0), 0);
	cr_assert_eq(refs_of(&c, ha[0]), 1);
	cr_assert_eq(refs_of(&c, ha[2]), 0);
	mk_cache_destroy(&c);
}

Test(pdmock_cache, stored_events_chain_parents_with_sequence_hashes_as_ids)
{
	struct mk_cache c;
	uint32_t a[20];
	uint64_t h[5];

	open_cache(&c, 64, 4, 4, 8);
	fill(a, 3, 20);
	seq_hashes(a, 5, 4, h);
	cr_assert_eq(mk_cache_acquire(&c, 0, a, 12, NULL), 0);
	cr_assert_eq(V.stored_events, 1);
	cr_assert_not(V.last_has_parent, "a prompt's first block has no parent");
	cr_assert_eq(V.last_n, 3);
	cr_assert_arr_eq(V.last_ids, h, 3 * sizeof(h[0]));
	cr_assert_arr_eq(V.last_tokens, a, 12 * sizeof(a[0]));
	cr_assert_eq(mk_cache_acquire(&c, 1, a, 20, NULL), 0);
	cr_assert_eq(V.stored_events, 2, "one event per call");
	cr_assert(V.last_has_parent && V.last_parent == h[2]);
	cr_assert_eq(V.last_n, 2);
	cr_assert_arr_eq(V.last_ids, h + 3, 2 * sizeof(h[0]));
	cr_assert_arr_eq(V.last_tokens, a + 12, 8 * sizeof(a[0]));
	assert_view_matches(&c);
	mk_cache_destroy(&c);
}

Test(pdmock_cache, release_keeps_blocks_cached_and_lookups_hit)
{
	struct mk_cache c;
	uint32_t a[12];
	uint64_t h[3], lru[8];
	uint32_t hit = 0;

	open_cache(&c, 64, 4, 4, 8);
	fill(a, 4, 12);
	seq_hashes(a, 3, 4, h);
	cr_assert_eq(mk_cache_acquire(&c, 0, a, 12, NULL), 0);
	cr_assert_eq(mk_cache_release(&c, 0), 0);
	cr_assert_eq(mk_cache_stats(&c).used_blocks, 0);
	cr_assert_eq(mk_cache_stats(&c).cached_free_blocks, 3);
	cr_assert_eq(mk_cache_used_fraction(&c), 0.0);
	cr_assert_eq(refs_of(&c, h[1]), 0);
	cr_assert_eq(mk_cache_lookup(&c, a, 12), 3);
	cr_assert_eq(mk_cache_lru(&c, lru, 8), 3);
	cr_assert(lru[0] == h[2] && lru[1] == h[1] && lru[2] == h[0], "tail first into the LRU");
	cr_assert_eq(mk_cache_acquire(&c, 2, a, 12, &hit), 0);
	cr_assert_eq(hit, 3);
	cr_assert_eq(V.stored_events, 1, "nothing new to store");
	cr_assert_eq(V.removed_events, 0);
	cr_assert_eq(mk_cache_stats(&c).cached_free_blocks, 0);
	mk_cache_destroy(&c);
}

Test(pdmock_cache, eviction_only_when_needed_lru_leaves_first_with_removed)
{
	struct mk_cache c;
	uint32_t a[6], d[4], e[6], f[2];
	uint64_t ha[3], hd[2], he[3], lru[8];

	open_cache(&c, 4, 2, 4, 4);
	fill(a, 5, 6);
	memcpy(d, a, 2 * sizeof(a[0]));
	fill(d + 2, 6, 2);
	fill(e, 7, 6);
	fill(f, 8, 2);
	seq_hashes(a, 3, 2, ha);
	seq_hashes(d, 2, 2, hd);
	seq_hashes(e, 3, 2, he);
	cr_assert_eq(mk_cache_acquire(&c, 0, a, 6, NULL), 0);
	cr_assert_eq(mk_cache_acquire(&c, 1, d, 4, NULL), 0); /* shares a0, fills the cache */
	cr_assert_eq(V.removed_events, 0, "free capacity first");
	cr_assert_eq(mk_cache_release(&c, 1), 0);
	cr_assert_eq(mk_cache_release(&c, 0), 0);
	cr_assert_eq(mk_cache_lru(&c, lru, 8), 4);
	cr_assert(lru[0] == hd[1] && lru[1] == ha[2] && lru[2] == ha[1] && lru[3] == ha[0]);
	cr_assert_eq(mk_cache_acquire(&c, 2, e, 6, NULL), 0);
	cr_assert_eq(V.removed_events, 1, "one REMOVED event per call");
	cr_assert_eq(V.last_nremoved, 3);
	cr_assert(V.last_removed[0] == hd[1] && V.last_removed[1] == ha[2] &&
		  V.last_removed[2] == ha[1]);
	cr_assert_lt(V.removed_at, V.stored_at, "REMOVED before the STORED that reuses the space");
	cr_assert_eq(refs_of(&c, ha[0]), 0, "the root stays while it is not needed");
	cr_assert_eq(mk_cache_lookup(&c, a, 6), 1);
	cr_assert_eq(mk_cache_acquire(&c, 3, f, 2, NULL), 0);
	cr_assert(V.last_nremoved == 1 && V.last_removed[0] == ha[0]);
	for (int i = 0; i < 3; i++)
		cr_assert_eq(refs_of(&c, he[i]), 1, "referenced blocks are never evicted");
	assert_view_matches(&c);
	mk_cache_destroy(&c);
}

Test(pdmock_cache, enospc_leaves_the_cache_unchanged)
{
	struct mk_cache c;
	uint32_t p[10], q[2], x[8];
	struct mk_cache_stats before, after;
	uint64_t lru_before[8], lru_after[8];
	uint32_t nlru;

	open_cache(&c, 4, 2, 4, 4);
	fill(p, 9, 10);
	fill(q, 10, 2);
	fill(x, 11, 8);
	cr_assert_eq(mk_cache_acquire(&c, 0, p, 4, NULL), 0); /* p0 p1 */
	cr_assert_eq(mk_cache_release(&c, 0), 0);
	cr_assert_eq(mk_cache_acquire(&c, 1, q, 2, NULL), 0); /* q0 held, one block free */
	before = mk_cache_stats(&c);
	nlru = mk_cache_lru(&c, lru_before, 8);
	/* Two misses, one free block; the two free blocks are the prompt's own hits. */
	cr_assert_eq(mk_cache_acquire(&c, 0, p, 8, NULL), -ENOSPC);
	cr_assert_eq(mk_cache_acquire(&c, 2, x, 8, NULL), -ENOSPC); /* 4 misses, 3 evictable */
	after = mk_cache_stats(&c);
	cr_assert_eq(memcmp(&after, &before, sizeof(before)), 0);
	cr_assert_eq(mk_cache_lru(&c, lru_after, 8), nlru);
	cr_assert_arr_eq(lru_after, lru_before, nlru * sizeof(lru_after[0]));
	cr_assert_eq(V.removed_events, 0);
	cr_assert_eq(V.stored_events, 2);
	cr_assert_eq(mk_cache_release(&c, 2), -EINVAL, "a failed acquire starts no sequence");
	cr_assert_eq(mk_cache_acquire(&c, 0, p, 10, NULL), -E2BIG, "5 blocks > max_seq_blocks");
	cr_assert_eq(mk_cache_acquire(&c, 0, p, 6, NULL), 0, "one miss fits");
	assert_view_matches(&c);
	mk_cache_destroy(&c);
}

Test(pdmock_cache, extend_emits_stored_when_a_block_fills)
{
	struct mk_cache c;
	uint32_t a[16];
	uint64_t h[4];

	open_cache(&c, 3, 4, 4, 3);
	fill(a, 12, 16);
	seq_hashes(a, 4, 4, h);
	cr_assert_eq(mk_cache_acquire(&c, 0, a, 6, NULL), 0);
	cr_assert_eq(mk_cache_extend(&c, 0, a[6]), 0);
	cr_assert_eq(V.stored_events, 1, "no event for a partial block");
	cr_assert_eq(mk_cache_extend(&c, 0, a[7]), 0);
	cr_assert_eq(V.stored_events, 2);
	cr_assert(V.last_has_parent && V.last_parent == h[0]);
	cr_assert(V.last_n == 1 && V.last_ids[0] == h[1]);
	cr_assert_arr_eq(V.last_tokens, a + 4, 4 * sizeof(a[0]));
	cr_assert_eq(mk_cache_lookup(&c, a, 8), 2);
	/* The same tokens decoded by another sequence find the block cached. */
	cr_assert_eq(mk_cache_acquire(&c, 1, a, 5, NULL), 0);
	for (int i = 5; i < 8; i++)
		cr_assert_eq(mk_cache_extend(&c, 1, a[i]), 0);
	cr_assert_eq(V.stored_events, 2);
	cr_assert_eq(refs_of(&c, h[1]), 2);
	/* One block left: seq 0 takes it, then seq 1 finds none to fill its third. */
	for (int i = 8; i < 12; i++)
		cr_assert_eq(mk_cache_extend(&c, 0, a[i]), 0);
	cr_assert_eq(mk_cache_acquire(&c, 2, a + 12, 4, NULL), -ENOSPC);
	for (int i = 8; i < 11; i++)
		cr_assert_eq(mk_cache_extend(&c, 1, a[i] + 1), 0);
	cr_assert_eq(mk_cache_extend(&c, 1, a[11] + 1), -ENOSPC);
	for (int i = 12; i < 15; i++)
		cr_assert_eq(mk_cache_extend(&c, 0, a[i]), 0,
			     "a partial fourth block needs no room");
	cr_assert_eq(mk_cache_extend(&c, 0, a[15]), -E2BIG, "max_seq_blocks reached");
	cr_assert_eq(mk_cache_release(&c, 0), 0);
	cr_assert_eq(mk_cache_extend(&c, 1, a[11] + 1), 0, "the token was not appended before");
	cr_assert_eq(V.removed_events, 1);
	cr_assert(V.last_nremoved == 1 && V.last_removed[0] == h[2]);
	cr_assert_eq(mk_cache_lookup(&c, a, 16), 2);
	assert_view_matches(&c);
	mk_cache_destroy(&c);
}

/* The randomized run: a reference model of the cache, simple and slow. */
#define M_CAP 48
#define M_BS 4
#define M_SEQS 6
#define M_MSB 16
#define M_TOK ((M_MSB + 1) * M_BS)
#define M_BASES 3
#define M_BASE_LEN ((M_MSB + 2) * M_BS)

struct m_block {
	uint64_t hash, parent;
	bool has_parent;
	uint32_t refs;
	uint64_t stamp; /* when it last became free */
};

struct m_seq {
	bool active;
	uint32_t base, ntok, nblocks;
	uint32_t tokens[M_TOK];
	uint64_t hash[M_MSB];
};

struct model {
	struct m_block b[M_CAP];
	uint32_t n;
	uint64_t clock;
	struct m_seq s[M_SEQS];
};

static int m_find(const struct model *m, uint64_t hash)
{
	for (uint32_t i = 0; i < m->n; i++)
		if (m->b[i].hash == hash)
			return (int)i;
	return -1;
}

static bool m_has_child(const struct model *m, uint64_t hash)
{
	for (uint32_t i = 0; i < m->n; i++)
		if (m->b[i].has_parent && m->b[i].parent == hash)
			return true;
	return false;
}

/* Evict the free childless block freed longest ago; false when there is none. */
static bool m_evict(struct model *m)
{
	int victim = -1;

	for (uint32_t i = 0; i < m->n; i++)
		if (!m->b[i].refs && !m_has_child(m, m->b[i].hash) &&
		    (victim < 0 || m->b[i].stamp < m->b[victim].stamp))
			victim = (int)i;
	if (victim < 0)
		return false;
	m->b[victim] = m->b[--m->n];
	return true;
}

/* Reference the block @hash under @parent (NULL for none), caching it if needed. */
static bool m_ref(struct model *m, uint64_t hash, const uint64_t *parent)
{
	int at = m_find(m, hash);

	if (at >= 0) {
		m->b[at].refs++;
		return true;
	}
	if (m->n == M_CAP && !m_evict(m))
		return false;
	m->b[m->n++] = (struct m_block){
	    .hash = hash, .parent = parent ? *parent : 0, .has_parent = parent != NULL, .refs = 1};
	return true;
}

static int m_acquire(struct model *m, uint32_t seq, const uint32_t *tokens, uint32_t n)
{
	struct model next = *m;
	struct m_seq *s = &next.s[seq];
	uint32_t nb = n / M_BS;

	if (s->active)
		return -EINVAL;
	if (nb > M_MSB)
		return -E2BIG;
	seq_hashes(tokens, nb, M_BS, s->hash);
	for (uint32_t i = 0; i < nb; i++)
		if (!m_ref(&next, s->hash[i], i ? &s->hash[i - 1] : NULL))
			return -ENOSPC;
	memcpy(s->tokens, tokens, n * sizeof(*tokens));
	s->ntok = n;
	s->nblocks = nb;
	s->active = true;
	*m = next;
	return 0;
}

static int m_extend(struct model *m, uint32_t seq, uint32_t token)
{
	struct m_seq *s = &m->s[seq];
	uint64_t local, hash;

	if (!s->active)
		return -EINVAL;
	if ((s->ntok + 1) % M_BS) {
		s->tokens[s->ntok++] = token;
		return 0;
	}
	if (s->nblocks == M_MSB)
		return -E2BIG;
	s->tokens[s->ntok] = token;
	dp_hash_blocks(s->tokens + s->nblocks * M_BS, M_BS, M_BS, DP_HASH_SEED, &local);
	hash = s->nblocks ? dp_hash_chain(s->hash[s->nblocks - 1], local) : local;
	if (!m_ref(m, hash, s->nblocks ? &s->hash[s->nblocks - 1] : NULL))
		return -ENOSPC;
	s->ntok++;
	s->hash[s->nblocks++] = hash;
	return 0;
}

static int m_release(struct model *m, uint32_t seq)
{
	struct m_seq *s = &m->s[seq];

	if (!s->active)
		return -EINVAL;
	for (uint32_t i = s->nblocks; i-- > 0;) {
		struct m_block *b = &m->b[m_find(m, s->hash[i])];

		if (--b->refs == 0)
			b->stamp = ++m->clock;
	}
	s->active = false;
	return 0;
}

static uint32_t m_lookup(const struct model *m, const uint32_t *tokens, uint32_t n)
{
	uint64_t h[M_MSB + 2];
	uint32_t nb = n / M_BS, i = 0;

	if (nb > M_MSB)
		nb = M_MSB;
	seq_hashes(tokens, nb, M_BS, h);
	while (i < nb && m_find(m, h[i]) >= 0)
		i++;
	return i;
}

/* Cache, model and the events' view agree: blocks, refcounts and the LRU order. */
static void assert_agree(const struct mk_cache *c, const struct model *m, uint64_t op)
{
	uint64_t lru[M_CAP];
	uint32_t nlru = mk_cache_lru(c, lru, M_CAP), k = 0;
	struct mk_cache_stats s = mk_cache_stats(c);

	cr_assert_eq(s.used_blocks + s.cached_free_blocks, m->n, "op %llu", (unsigned long long)op);
	assert_view_matches(c);
	for (uint32_t i = 0; i < m->n; i++) {
		cr_assert_eq(refs_of(c, m->b[i].hash), m->b[i].refs, "op %llu",
			     (unsigned long long)op);
		k += m->b[i].refs == 0;
	}
	cr_assert_eq(nlru, k);
	for (uint32_t i = 0; i < nlru; i++) {
		int at = m_find(m, lru[i]);

		cr_assert(at >= 0 && !m->b[at].refs);
		if (i)
			cr_assert_lt(m->b[m_find(m, lru[i - 1])].stamp, m->b[at].stamp,
				     "LRU order");
	}
}

/* A prompt sharing a random prefix with one of the bases, then its own tokens. */
static uint32_t random_prompt(struct t_rng *r, uint32_t bases[][M_BASE_LEN], uint32_t *tokens,
			      uint32_t *base)
{
	uint32_t n = t_rng_below(r, M_BASE_LEN + 1), shared = t_rng_below(r, n + 1);

	*base = t_rng_below(r, M_BASES);
	memcpy(tokens, bases[*base], shared * sizeof(*tokens));
	for (uint32_t i = shared; i < n; i++)
		tokens[i] = (uint32_t)t_rng_next(r);
	return n;
}

static void random_op(struct mk_cache *c, struct model *m, struct t_rng *r,
		      uint32_t bases[][M_BASE_LEN], int *codes)
{
	uint32_t seq = t_rng_below(r, M_SEQS), tokens[M_BASE_LEN], base, n, hit = 0, look;
	struct m_seq *s = &m->s[seq];
	uint32_t pick = t_rng_below(r, 100);
	int got, want;

	if (!s->active ? pick < 90 : pick < 10) {
		n = random_prompt(r, bases, tokens, &base);
		look = m_lookup(m, tokens, n);
		cr_assert_eq(mk_cache_lookup(c, tokens, n), look);
		want = m_acquire(m, seq, tokens, n);
		got = mk_cache_acquire(c, seq, tokens, n, &hit);
		if (!want) {
			s->base = base;
			cr_assert_eq(hit, look, "cached_blocks is the prefix hit");
		}
	} else if (pick < 75) {
		uint32_t pos = s->ntok;
		uint32_t token = pos < M_BASE_LEN && t_rng_chance(r, 70) ? bases[s->base][pos]
									 : (uint32_t)t_rng_next(r);

		want = m_extend(m, seq, token);
		got = mk_cache_extend(c, seq, token);
	} else {
		want = m_release(m, seq);
		got = mk_cache_release(c, seq);
	}
	cr_assert_eq(got, want);
	codes[got == 0 ? 0 : got == -ENOSPC ? 1 : got == -E2BIG ? 2 : 3]++;
}

Test(pdmock_cache, randomized_ops_match_reference_model_and_replayed_events)
{
	static struct model m;
	static uint32_t bases[M_BASES][M_BASE_LEN];
	struct mk_cache c;
	struct t_rng r;
	int codes[4] = {0};
	uint64_t nops = T_SANITIZED ? 5000 : 20000;

	open_cache(&c, M_CAP, M_BS, M_SEQS, M_MSB);
	memset(&m, 0, sizeof(m));
	t_rng_seed(&r, 0x5eed0c0ffee);
	for (uint32_t b = 0; b < M_BASES; b++)
		for (uint32_t i = 0; i < M_BASE_LEN; i++)
			bases[b][i] = (uint32_t)t_rng_next(&r);
	for (uint64_t op = 0; op < nops; op++) {
		random_op(&c, &m, &r, bases, codes);
		assert_agree(&c, &m, op);
	}
	cr_assert_gt(codes[0], 0);
	cr_assert_gt(codes[1], 0, "-ENOSPC never happened");
	cr_assert_gt(codes[2], 0, "-E2BIG never happened");
	cr_assert_gt(codes[3], 0, "-EINVAL never happened");
	cr_assert_gt(V.removed_events, 0, "nothing was ever evicted");
	cr_assert_gt(mk_cache_stats(&c).hit_blocks, 0, "no prefix was ever shared");
	mk_cache_destroy(&c);
}

/*
 * Dumps. A fresh view replays a dump as a new router's intake would: every chain under a
 * block it already has, ids recomputed from the local hashes, nothing sent twice.
 */
static struct view D;

static int on_dump(void *ctx, const uint64_t *parent, const uint64_t *ids, const uint64_t *local,
		   uint32_t n)
{
	struct view *d = ctx;

	cr_assert_gt(n, 0);
	cr_assert(!parent || view_find(d, *parent) >= 0, "a chain under a block not sent yet");
	for (uint32_t i = 0; i < n; i++) {
		const uint64_t *p = i ? &ids[i - 1] : parent;

		cr_assert_eq(ids[i], p ? dp_hash_chain(*p, local[i]) : local[i],
			     "the local hash does not give the ext id");
		view_add(d, ids[i], p);
	}
	d->last_n = n > d->last_n ? n : d->last_n; /* the longest chain */
	d->stored_events++;
	return 0;
}

/* Dump @c into a fresh D; it must hold exactly V's blocks with V's parents. */
static void dump_and_compare(struct mk_cache *c)
{
	struct mk_cache_stats before = mk_cache_stats(c), after;

	memset(&D, 0, sizeof(D));
	cr_assert_eq(mk_cache_dump(c, on_dump, &D), 0);
	after = mk_cache_stats(c);
	cr_assert_eq(memcmp(&before, &after, sizeof(before)), 0, "a dump changes nothing");
	cr_assert_eq(D.n, V.n);
	cr_assert_leq(D.last_n, c->max_seq_blocks);
	for (uint32_t i = 0; i < V.n; i++) {
		int at = view_find(&D, V.b[i].id);

		cr_assert_geq(at, 0, "block %016llx not dumped", (unsigned long long)V.b[i].id);
		cr_assert_eq(D.b[at].has_parent, V.b[i].has_parent);
		cr_assert_eq(D.b[at].parent, V.b[i].parent);
	}
}

Test(pdmock_cache, dump_of_an_empty_cache_sends_nothing)
{
	struct mk_cache c;

	open_cache(&c, 16, 4, 2, 4);
	dump_and_compare(&c);
	cr_assert_eq(D.stored_events, 0);
	mk_cache_destroy(&c);
}

Test(pdmock_cache, dump_sends_shared_prefixes_once_in_chains_parents_first)
{
	struct mk_cache c;
	uint32_t a[16], b[16], e[8];

	open_cache(&c, 64, 4, 4, 8);
	fill(a, 20, 16);
	memcpy(b, a, 8 * sizeof(b[0]));
	fill(b + 8, 21, 8);
	fill(e, 22, 8);
	cr_assert_eq(mk_cache_acquire(&c, 0, a, 16, NULL), 0); /* a0 a1 a2 a3 */
	cr_assert_eq(mk_cache_acquire(&c, 1, b, 16, NULL), 0); /* a0 a1 b2 b3 */
	cr_assert_eq(mk_cache_acquire(&c, 2, e, 8, NULL), 0);  /* e0 e1 */
	cr_assert_eq(mk_cache_release(&c, 2), 0);	       /* free blocks are dumped too */
	dump_and_compare(&c);
	cr_assert_eq(D.n, 8);
	cr_assert_eq(D.stored_events, 3, "one chain per leaf: a prefix is sent once");
	dump_and_compare(&c);
	cr_assert_eq(D.n, 8, "a second dump sends everything again");
	mk_cache_destroy(&c);
}

static int stop_after_one(void *ctx, const uint64_t *parent, const uint64_t *ids,
			  const uint64_t *local, uint32_t n)
{
	on_dump(ctx, parent, ids, local, n);
	return -ENOBUFS;
}

Test(pdmock_cache, dump_stops_where_the_callback_says_and_the_next_starts_over)
{
	struct mk_cache c;
	uint32_t a[8], b[8];

	open_cache(&c, 16, 4, 2, 4);
	fill(a, 30, 8);
	fill(b, 31, 8);
	cr_assert_eq(mk_cache_acquire(&c, 0, a, 8, NULL), 0);
	cr_assert_eq(mk_cache_acquire(&c, 1, b, 8, NULL), 0);
	memset(&D, 0, sizeof(D));
	cr_assert_eq(mk_cache_dump(&c, stop_after_one, &D), -ENOBUFS);
	cr_assert_eq(D.stored_events, 1);
	cr_assert_eq(D.n, 2);
	dump_and_compare(&c);
	mk_cache_destroy(&c);
}

Test(pdmock_cache, dump_after_its_mark_wraps_still_sends_everything)
{
	struct mk_cache c;
	uint32_t a[8];

	open_cache(&c, 16, 4, 2, 4);
	fill(a, 40, 8);
	cr_assert_eq(mk_cache_acquire(&c, 0, a, 8, NULL), 0);
	dump_and_compare(&c);
	c.dump_epoch = UINT32_MAX; /* the next dump's mark is 0, which some blocks may carry */
	dump_and_compare(&c);
	dump_and_compare(&c);
	cr_assert_eq(D.n, 2);
	mk_cache_destroy(&c);
}

/* The randomized run again, dumped every few operations (with sequences holding blocks or
 * not): each dump alone rebuilds what the events built step by step. */
Test(pdmock_cache, randomized_dumps_replayed_rebuild_the_same_blocks_and_parents)
{
	static struct model m;
	static uint32_t bases[M_BASES][M_BASE_LEN];
	struct mk_cache c;
	struct t_rng r;
	int codes[4] = {0};
	uint64_t nops = T_SANITIZED ? 2000 : 8000, dumps = 0;

	open_cache(&c, M_CAP, M_BS, M_SEQS, M_MSB);
	memset(&m, 0, sizeof(m));
	t_rng_seed(&r, 0xd0d0cafe);
	for (uint32_t b = 0; b < M_BASES; b++)
		for (uint32_t i = 0; i < M_BASE_LEN; i++)
			bases[b][i] = (uint32_t)t_rng_next(&r);
	for (uint64_t op = 0; op < nops; op++) {
		random_op(&c, &m, &r, bases, codes);
		if (op % 37 == 0) {
			dump_and_compare(&c);
			dumps += D.n > 0;
		}
	}
	assert_agree(&c, &m, nops);
	cr_assert_gt(dumps, 10, "the dumps were empty");
	cr_assert_gt(V.removed_events, 0, "nothing was ever evicted");
	mk_cache_destroy(&c);
}
