/*
 * The reader side of the prefix index: overlap of every target with a prompt. Runs on the
 * dataplane cores, concurrently with the writer, without locks, waits or allocation.
 *
 * The walk follows the prompt from block 0. Inside a run (index_pvt.h) it crosses a span a
 * stride at a time by comparing sums of the prompt's terms with acc differences; at a run's
 * end it looks at the next slot, and only when the prompt leaves the run does it hash and
 * probe the table, hashing a window of blocks ahead and prefetching their buckets, since a
 * prompt that left one run often needs probes for a while. The set of targets still matching
 * is the first entry's holder set until a later entry has a different one; only then is it
 * copied and narrowed.
 */
#include <stdlib.h>

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
 * Sum of the run-sum terms of blocks [from, from + n) of the prompt (pdx_term()): the one
 * computation a deep match does per block, so it gets a vector version where the CPU has a
 * 64-bit vector multiply (AVX-512DQ), picked once at start-up. On this project's machines it
 * takes the synthetic stream from 3.3 to 4.4 M MATCH/s (bench/RESULTS.md).
 */
static uint64_t sum_terms_scalar(const uint64_t *local, size_t from, size_t n)
{
	uint64_t sum = 0;

	for (size_t i = from; i < from + n; i++)
		sum += pdx_term(local[i], i);
	return sum;
}

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>

/* pdx_term() of eight blocks at a time. */
__attribute__((target("avx512f,avx512dq"))) static uint64_t
sum_terms_avx512(const uint64_t *local, size_t from, size_t n)
{
	const __m512i mul = _mm512_set1_epi64((long long)PDX_TERM_MUL);
	const __m512i step = _mm512_set1_epi64((long long)(8 * PDX_TERM_DEPTH));
	__m512i depth = _mm512_mullo_epi64(
		_mm512_add_epi64(_mm512_set1_epi64((long long)from),
				 _mm512_set_epi64(7, 6, 5, 4, 3, 2, 1, 0)),
		_mm512_set1_epi64((long long)PDX_TERM_DEPTH));
	__m512i sum = _mm512_setzero_si512();
	size_t i = 0;

	for (; i + 8 <= n; i += 8) {
		__m512i m = _mm512_xor_si512(_mm512_loadu_si512(local + from + i), depth);

		m = _mm512_mullo_epi64(_mm512_xor_si512(m, _mm512_srli_epi64(m, 32)), mul);
		sum = _mm512_add_epi64(sum, _mm512_xor_si512(m, _mm512_srli_epi64(m, 29)));
		depth = _mm512_add_epi64(depth, step);
	}
	/* Lane by lane as unsigned: the reduce intrinsic adds as signed, which may overflow. */
	uint64_t lane[8], total = sum_terms_scalar(local, from + i, n - i);

	_mm512_storeu_si512(lane, sum);
	for (int k = 0; k < 8; k++)
		total += lane[k];
	return total;
}

static uint64_t (*sum_terms)(const uint64_t *, size_t, size_t) = sum_terms_scalar;

/* PDROUTER_NO_AVX512 in the environment keeps the scalar code (the tests run both). */
__attribute__((constructor)) static void sum_terms_pick(void)
{
	__builtin_cpu_init();
	if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512dq") &&
	    !getenv("PDROUTER_NO_AVX512"))
		sum_terms = sum_terms_avx512;
}
#else
#define sum_terms sum_terms_scalar
#endif

/*
 * Blocks after block @i (in slot @idx) that the prompt follows inside the slot's span, all
 * held by the same targets. The acc differences agree with the prompt's sums up to the first
 * differing block and not after, so the end is found in two steps: the sums at every
 * SPAN_STRIDE-th slot (and the span's last) place it within one stride, then the slots of
 * that stride are compared one by one. The strided lines were prefetched when the walk
 * reached the run (prefetch_run()), so the first step costs one memory latency in all.
 */
#define SPAN_STRIDE 32	  /* slots: four cache lines of acc */
#define PREFETCH_STRIDES 32 /* how far ahead a run is prefetched, in strides */

/* @limit, cut to the slots left in the chunk after slot @s and the blocks left after @i. */
static size_t slots_ahead(const struct walk *w, uint32_t s, size_t i, size_t limit)
{
	if (limit > PDX_CHUNK_SLOTS - 1 - s)
		limit = PDX_CHUNK_SLOTS - 1 - s;
	if (limit > w->n - 1 - i)
		limit = w->n - 1 - i;
	return limit;
}

static void prefetch_run(const struct walk *w, uint32_t idx, size_t i)
{
	const struct pdx_chunk *c = pdx_chunk_of(w->x, idx);
	uint32_t s = pdx_slot_of(idx);
	size_t reach = slots_ahead(w, s, i, SPAN_STRIDE * PREFETCH_STRIDES);

	for (size_t p = SPAN_STRIDE; p <= reach; p += SPAN_STRIDE)
		__builtin_prefetch(&c->acc[s + p]);
}

static size_t span_match(const struct walk *w, uint32_t idx, uint64_t word, size_t i)
{
	const struct pdx_chunk *c = pdx_chunk_of(w->x, idx);
	uint32_t s = pdx_slot_of(idx);
	/*
	 * From the holders word loaded with A1: the acc of every slot it covers is visible. The
	 * writer keeps s + span inside the chunk; clamping to it costs nothing and proves it.
	 */
	size_t span = slots_ahead(w, s, i, pdx_span_of(word));

	if (!span)
		return 0;
	/* Where the walk most likely goes after the span. */
	__builtin_prefetch(&c->acc[s + span]);
	__builtin_prefetch(&c->holders[s + span]);

	uint64_t base = atomic_load_explicit(&c->acc[s], memory_order_relaxed), sum = 0;
	size_t lo = 0, last = span; /* block i+lo is in slot s+lo; the answer is in [lo, last] */

	for (size_t p = SPAN_STRIDE; p < span; p += SPAN_STRIDE)
		__builtin_prefetch(&c->acc[s + p]); /* not all runs were reached by prefetch_run() */
	for (size_t p = SPAN_STRIDE < span ? SPAN_STRIDE : span;; p += SPAN_STRIDE) {
		p = p < span ? p : span;
		sum += sum_terms(w->local, i + 1 + lo, p - lo);
		if (atomic_load_explicit(&c->acc[s + p], memory_order_relaxed) - base != sum) {
			last = p - 1;
			break;
		}
		lo = p;
		if (p == span)
			return span;
	}
	for (size_t k = lo + 1; k <= last; k += 8)
		__builtin_prefetch(&c->acc[s + k]);
	for (uint64_t prev = atomic_load_explicit(&c->acc[s + lo], memory_order_relaxed);
	     lo < last; lo++) {
		uint64_t acc = atomic_load_explicit(&c->acc[s + lo + 1], memory_order_relaxed);

		if (acc - prev != pdx_term(w->local[i + lo + 1], i + lo + 1))
			break;
		prev = acc;
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

/*
 * Entry of block @i, the block after the one in slot @idx, and its holders word in *@word;
 * PDX_NONE if no one holds it.
 */
static uint32_t next_entry(struct walk *w, uint32_t idx, size_t i, uint64_t *word)
{
	const struct pdx_chunk *c = pdx_chunk_of(w->x, idx);
	uint32_t s = pdx_slot_of(idx);

	if (s + 1 < PDX_CHUNK_SLOTS) {
		/* A1: pairs with R1; the slot's acc is visible. */
		uint64_t h = atomic_load_explicit(&c->holders[s + 1], memory_order_acquire);

		if ((h & PDX_CONT) &&
		    atomic_load_explicit(&c->acc[s + 1], memory_order_relaxed) -
				    atomic_load_explicit(&c->acc[s], memory_order_relaxed) ==
			    pdx_term(w->local[i], i)) {
			*word = h;
			return idx + 1;
		}
	}

	uint64_t key = walk_key(w, i, atomic_load_explicit(&c->key[s], memory_order_relaxed));
	uint32_t e = pdx_table_find(w->x, w->t, key);

	if (e == PDX_NONE)
		return PDX_NONE;
	prefetch_run(w, e, i);
	/* A1: pairs with R1. */
	*word = atomic_load_explicit(&pdx_chunk_of(w->x, e)->holders[pdx_slot_of(e)],
				     memory_order_acquire);
	return *word ? e : PDX_NONE;
}

/* Keep the targets of @m that are in @set; answer the others with @depth. */
static void narrow(struct pdx_reader *r, struct matching *m, const struct pdx_set *set,
		   uint32_t depth, struct pdx_overlap *out, size_t *nout)
{
	const uint16_t *from = m->copied ? r->active : m->set->member;
	size_t n = m->copied ? m->na : m->set->n, k = 0, j = 0;

	/* Both lists are sorted: a merge. Whether a target stays is data, not a branch: it is
	 * written to both lists and only the right one's count moves (a set of 1,024 narrowed to
	 * a few dozen would otherwise mispredict at every dropped target). */
	for (size_t i = 0; i < n; i++) {
		uint16_t t = from[i];
		bool stays;

		while (j < set->n && set->member[j] < t)
			j++;
		stays = j < set->n && set->member[j] == t;
		r->active[k] = t;
		out[*nout] = (struct pdx_overlap){.target = t, .depth = depth};
		k += stays;
		*nout += !stays;
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

/*
 * Targets still matching after a slot whose holders are @set: narrowed to them, the others
 * answered with @depth. Returns false when none is left.
 */
static bool settle(struct pdx_reader *r, struct matching *m, const struct pdx_set *set,
		   uint32_t depth, struct pdx_overlap *out, size_t *nout)
{
	static const struct pdx_set none = {0};

	if (set == m->set)
		return true;
	narrow(r, m, set ? set : &none, depth, out, nout);
	return m->na != 0;
}

/*
 * The walk proper: slot @idx holds block 0, its holders word @word (set m->set). Each block
 * counted for a target was held by it when the walk looked: after a span, the slot it ended
 * on is read again for its own span, and may show the holders have changed since.
 */
static size_t walk_prompt(struct pdx_reader *r, struct walk *w, uint32_t idx, uint64_t word,
			  struct matching *m, struct pdx_overlap *out)
{
	size_t nout = 0, i = 0; /* blocks 0..i matched */

	for (;;) {
		size_t run = span_match(w, idx, word, i);

		if (run) {
			i += run;
			idx += (uint32_t)run;
			/* A1: pairs with R1. */
			word = atomic_load_explicit(&pdx_chunk_of(w->x, idx)->holders[pdx_slot_of(idx)],
						    memory_order_acquire);
			if (!settle(r, m, pdx_set_of(word), (uint32_t)(i + 1), out, &nout))
				return nout;
		}
		if (i + 1 == w->n)
			break;
		idx = next_entry(w, idx, i + 1, &word);
		if (idx == PDX_NONE)
			break;
		i++;
		if (!settle(r, m, pdx_set_of(word), (uint32_t)i, out, &nout))
			return nout;
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
	uint64_t word = 0;

	if (idx != PDX_NONE)
		/* A1: pairs with R1. */
		word = atomic_load_explicit(&pdx_chunk_of(w.x, idx)->holders[pdx_slot_of(idx)],
					    memory_order_acquire);
	m.set = pdx_set_of(word);
	if (m.set) {
		prefetch_run(&w, idx, 0);
		/* The members are needed only at the end or where the holders change. */
		for (uint32_t b = 0; b < m.set->n * sizeof(uint16_t); b += 64)
			__builtin_prefetch((const char *)m.set->member + b);
		nout = walk_prompt(r, &w, idx, word, &m, out);
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
