/*
 * The reader side of the prefix index: overlap of every target with a prompt. Runs on the
 * dataplane cores, concurrently with the writer, without locks, waits or allocation.
 *
 * The walk follows the prompt from block 0. Inside a run (index_pvt.h) it jumps a whole span
 * at once by comparing sums of local hashes; at a run's end it looks at the next slot, and
 * only when the prompt leaves the run does it hash and probe the table, hashing a window of
 * blocks ahead and prefetching their buckets, since a prompt that left one run often needs
 * probes for a while. The set of targets still matching is the first entry's holder set until
 * a later entry has a different one; only then is it copied and narrowed.
 */
#include "hash.h"
#include "index.h"

#define PROBE_WINDOW 8

struct walk {
	const struct pdx *x;
	const struct pdx_table *t;
	const uint64_t *local;
	size_t n;
	uint64_t key[PROBE_WINDOW]; /* sequence hashes of blocks [key_from, key_from + key_n) */
	size_t key_from, key_n;
};

/* Targets still matching: @set's members until narrowed, then active[0..na). */
struct matching {
	const struct pdx_set *set;
	bool copied;
	size_t na;
};

static void reader_enter(struct pdx_reader *r)
{
	/* Relaxed: any epoch not newer than the writer's is safe, F1 orders what follows. */
	uint64_t e = atomic_load_explicit(&r->x->epoch, memory_order_relaxed);

	atomic_store_explicit(&r->epoch, e, memory_order_relaxed);
	/* F1: the announcement comes before every read of the index; pairs with F2. */
	atomic_thread_fence(memory_order_seq_cst);
}

static void reader_leave(struct pdx_reader *r)
{
	/* R4: our reads are done; pairs with A4 in the writer's reclaim. */
	atomic_store_explicit(&r->epoch, 0, memory_order_release);
}

/*
 * Sum of the run-sum terms of blocks [from, from + n) of the prompt (pdx_term()). A plain
 * loop: the terms are independent, so it pipelines, and compilers vectorise it where the
 * target has a 64-bit vector multiply (-Dnative=true on AVX-512 machines).
 */
static uint64_t sum_terms(const uint64_t *local, size_t from, size_t n)
{
	uint64_t sum = 0;

	for (size_t i = from; i < from + n; i++)
		sum += pdx_term_at(local[i], i * PDX_TERM_DEPTH);
	return sum;
}

/*
 * Blocks after block @i (in slot @idx) that the prompt follows inside the slot's span, all
 * held by the same targets. The acc differences agree with the prompt's sums up to the first
 * differing block and not after, so the boundary is searched: SEARCH_WAYS points a round, the
 * last one the end of the range (a whole span matching is the common case), all prefetched
 * before any is read so their misses overlap. The prompt's terms are summed once.
 */
#define SEARCH_WAYS 16

static size_t span_match(const struct walk *w, uint32_t idx, size_t i)
{
	const struct pdx_chunk *c = pdx_chunk_of(w->x, idx);
	uint32_t s = pdx_slot_of(idx);
	/* A5: pairs with R5; the acc of every slot the span covers is visible. */
	size_t span = atomic_load_explicit(&c->span[s], memory_order_acquire);

	/* The writer keeps s + span inside the chunk; clamping costs nothing and proves it. */
	if (span > PDX_CHUNK_SLOTS - 1 - s)
		span = PDX_CHUNK_SLOTS - 1 - s;
	if (span > w->n - 1 - i)
		span = w->n - 1 - i;
	if (!span)
		return 0;
	/* Where the walk most likely goes after the span. */
	__builtin_prefetch(&c->span[s + span]);
	if (s + span + 1 < PDX_CHUNK_SLOTS)
		__builtin_prefetch(&c->holders[s + span + 1]);

	uint64_t base = atomic_load_explicit(&c->acc[s], memory_order_relaxed), sum_lo = 0;
	size_t lo = 0, last = span; /* block i+lo is in slot s+lo; the answer is in [lo, last] */

	while (lo < last) {
		size_t step = (last - lo + SEARCH_WAYS - 1) / SEARCH_WAYS;

		for (size_t p = lo + step; p < last; p += step)
			__builtin_prefetch(&c->acc[s + p]);
		__builtin_prefetch(&c->acc[s + last]);
		for (size_t p = lo + step;; p += step) {
			p = p < last ? p : last;

			uint64_t sum = sum_lo + sum_terms(w->local, i + 1 + lo, p - lo);

			if (atomic_load_explicit(&c->acc[s + p], memory_order_relaxed) - base != sum) {
				last = p - 1;
				break;
			}
			lo = p;
			sum_lo = sum;
			if (p == last)
				break;
		}
	}
	return lo;
}

/*
 * Sequence hash of block @i, whose parent's is @parent_key. Most walks end at their first
 * probe, so only the second probe in a row hashes a window ahead.
 */
static uint64_t walk_key(struct walk *w, size_t i, uint64_t parent_key)
{
	if (i - w->key_from < w->key_n)
		return w->key[i - w->key_from];

	size_t window = w->key_n ? PROBE_WINDOW : 1;

	w->key_from = i;
	w->key_n = 0;
	for (uint64_t k = parent_key; w->key_n < window && i + w->key_n < w->n; w->key_n++) {
		k = dp_hash_chain(k, w->local[i + w->key_n]);
		w->key[w->key_n] = k;
		pdx_table_prefetch(w->t, k);
	}
	return w->key[0];
}

/* Entry of block @i, the block after the one in slot @idx; PDX_NONE if no one holds it. */
static uint32_t next_entry(struct walk *w, uint32_t idx, size_t i, const struct pdx_set **set)
{
	const struct pdx_chunk *c = pdx_chunk_of(w->x, idx);
	uint32_t s = pdx_slot_of(idx);

	if (s + 1 < PDX_CHUNK_SLOTS) {
		/* A1: pairs with R1; the slot's acc is visible. */
		uintptr_t h = atomic_load_explicit(&c->holders[s + 1], memory_order_acquire);

		if ((h & PDX_CONT) &&
		    atomic_load_explicit(&c->acc[s + 1], memory_order_relaxed) -
				    atomic_load_explicit(&c->acc[s], memory_order_relaxed) ==
			    pdx_term(w->local[i], i)) {
			*set = pdx_set_of(h);
			return idx + 1;
		}
	}

	uint64_t key = walk_key(w, i, atomic_load_explicit(&c->key[s], memory_order_relaxed));
	uint32_t e = pdx_table_find(w->x, w->t, key);

	if (e == PDX_NONE)
		return PDX_NONE;
	/* A1: pairs with R1. */
	*set = pdx_set_of(atomic_load_explicit(&pdx_chunk_of(w->x, e)->holders[pdx_slot_of(e)],
					       memory_order_acquire));
	return *set ? e : PDX_NONE;
}

/* Keep the targets of @m that are in @set; answer the others with @depth. */
static void narrow(struct pdx_reader *r, struct matching *m, const struct pdx_set *set,
		   uint32_t depth, struct pdx_overlap *out, size_t *nout)
{
	const uint16_t *from = m->copied ? r->active : m->set->member;
	size_t n = m->copied ? m->na : m->set->n, k = 0, j = 0;

	for (size_t i = 0; i < n; i++) {
		uint16_t t = from[i];

		while (j < set->n && set->member[j] < t)
			j++;
		if (j < set->n && set->member[j] == t)
			r->active[k++] = t;
		else
			out[(*nout)++] = (struct pdx_overlap){.target = t, .depth = depth};
	}
	m->copied = true;
	m->na = k;
	m->set = set;
}

static size_t answer(struct pdx_reader *r, const struct matching *m, uint32_t depth,
		     struct pdx_overlap *out, size_t nout)
{
	const uint16_t *from = m->copied ? r->active : m->set->member;
	size_t n = m->copied ? m->na : m->set->n;

	for (size_t k = 0; k < n; k++)
		out[nout++] = (struct pdx_overlap){.target = from[k], .depth = depth};
	return nout;
}

/* The walk proper: @idx holds block 0 with holders m->set. Returns the number of answers. */
static size_t walk_prompt(struct pdx_reader *r, struct walk *w, uint32_t idx, struct matching *m,
			  struct pdx_overlap *out)
{
	size_t nout = 0, i = 0; /* blocks 0..i matched */

	while (i + 1 < w->n) {
		size_t run = span_match(w, idx, i);
		const struct pdx_set *set;

		i += run;
		idx += (uint32_t)run;
		if (i + 1 == w->n)
			break;
		idx = next_entry(w, idx, i + 1, &set);
		if (idx == PDX_NONE)
			break;
		i++;
		if (set != m->set) {
			narrow(r, m, set, (uint32_t)i, out, &nout);
			if (!m->na)
				return nout;
		}
	}
	return answer(r, m, (uint32_t)(i + 1), out, nout);
}

size_t pdx_match(struct pdx_reader *r, const uint64_t *local, size_t n, struct pdx_overlap *out)
{
	if (n == 0)
		return 0;
	reader_enter(r);

	/* A3: pairs with R3; the table is complete. */
	struct walk w = {.x = r->x, .t = atomic_load_explicit(&r->x->table, memory_order_acquire),
			 .local = local, .n = n};
	struct matching m = {0};
	size_t nout = 0;
	uint32_t idx = pdx_table_find(w.x, w.t, local[0]); /* block 0: sequence = local hash */

	if (idx != PDX_NONE)
		/* A1: pairs with R1. */
		m.set = pdx_set_of(atomic_load_explicit(
			&pdx_chunk_of(w.x, idx)->holders[pdx_slot_of(idx)], memory_order_acquire));
	if (m.set) {
		/* The members are needed only at the end or where the holders change. */
		for (uint32_t b = 0; b < m.set->n * sizeof(uint16_t); b += 64)
			__builtin_prefetch((const char *)m.set->member + b);
		nout = walk_prompt(r, &w, idx, &m, out);
	}
	reader_leave(r);
	return nout;
}

long pdx_match_tokens(struct pdx_reader *r, const uint32_t *tokens, size_t ntokens,
		      uint32_t block_size, uint64_t seed, struct pdx_overlap *out)
{
	if (block_size && ntokens / block_size > PDX_MATCH_MAX_BLOCKS)
		ntokens = (size_t)PDX_MATCH_MAX_BLOCKS * block_size;

	long n = dp_hash_blocks(tokens, ntokens, block_size, seed, r->locals);

	return n < 0 ? n : (long)pdx_match(r, r->locals, (size_t)n, out);
}
