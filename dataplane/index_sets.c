/*
 * Holder sets of the prefix index: immutable sorted arrays of target ids, interned so that
 * equal sets are one object. Entries point at them; readers compare pointers to see where the
 * holders change along a prompt. Only the writer creates, references and retires them.
 *
 * The interning hash is the sum of a mix of each member, so adding or removing a target
 * updates it in O(1); a one-entry memo turns "add target t to set S" over a run of blocks
 * sharing S into one lookup.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "index.h"

static uint64_t member_mix(uint32_t t)
{
	uint64_t z = t + 0x9E3779B97F4A7C15ull;

	z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
	z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
	return z ^ (z >> 31);
}

size_t pdx_set_bytes(uint32_t n)
{
	return sizeof(struct pdx_set) + (size_t)n * sizeof(uint16_t);
}

int pdx_sets_init(struct pdx *x)
{
	x->intern_mask = 1023;
	x->intern = calloc(x->intern_mask + 1, sizeof(*x->intern));
	x->set_scratch = malloc((size_t)x->max_targets * sizeof(uint16_t));
	if (!x->intern || !x->set_scratch)
		return -ENOMEM;
	pdx_stat_add(x, PDX_STAT(bytes), (x->intern_mask + 1) * sizeof(*x->intern));
	return 0;
}

void pdx_sets_destroy(struct pdx *x)
{
	for (struct pdx_set *s = x->unretired_sets, *next; s; s = next) {
		next = s->next;
		free(s);
	}
	for (uint64_t b = 0; x->intern && b <= x->intern_mask; b++) {
		for (struct pdx_set *s = x->intern[b], *next; s; s = next) {
			next = s->next;
			free(s);
		}
	}
	free(x->intern);
	free(x->set_scratch);
}

bool pdx_set_has(const struct pdx_set *s, uint32_t target)
{
	uint32_t lo = 0, hi = s ? s->n : 0;

	while (lo < hi) {
		uint32_t mid = (lo + hi) / 2;

		if (s->member[mid] < target)
			lo = mid + 1;
		else
			hi = mid;
	}
	return s && lo < s->n && s->member[lo] == target;
}

/* Double the intern buckets when sets outnumber them; a failed grow only costs speed. */
static void intern_grow(struct pdx *x)
{
	uint64_t mask = x->intern_mask * 2 + 1;
	struct pdx_set **b = calloc(mask + 1, sizeof(*b));

	if (!b)
		return;
	for (uint64_t i = 0; i <= x->intern_mask; i++) {
		for (struct pdx_set *s = x->intern[i], *next; s; s = next) {
			next = s->next;
			s->next = b[s->sum & mask];
			b[s->sum & mask] = s;
		}
	}
	free(x->intern);
	pdx_stat_add(x, PDX_STAT(bytes), (mask - x->intern_mask) * sizeof(*b));
	x->intern = b;
	x->intern_mask = mask;
}

/* The interned set equal to member[0..n), created if needed; NULL when n is 0 or on ENOMEM. */
static struct pdx_set *set_intern(struct pdx *x, const uint16_t *member, uint32_t n, uint64_t sum)
{
	if (n == 0)
		return NULL;
	for (struct pdx_set *s = x->intern[sum & x->intern_mask]; s; s = s->next)
		if (s->sum == sum && s->n == n && !memcmp(s->member, member, n * sizeof(*member)))
			return s;

	/* Holders words keep the address in bits 4..47 (PDX_SET_MASK). */
	struct pdx_set *s = aligned_alloc(16, (pdx_set_bytes(n) + 15) & ~(size_t)15);

	if (s && ((uintptr_t)s & ~PDX_SET_MASK)) {
		free(s);
		s = NULL;
	}
	if (!s)
		return NULL;
	s->n = n;
	s->refs = 0;
	s->sum = sum;
	memcpy(s->member, member, n * sizeof(*member));
	s->next = x->intern[sum & x->intern_mask];
	x->intern[sum & x->intern_mask] = s;
	pdx_stat_add(x, PDX_STAT(holder_sets), 1);
	pdx_stat_add(x, PDX_STAT(bytes), pdx_set_bytes(n));
	if (atomic_load_explicit(&x->stat[PDX_STAT(holder_sets)], memory_order_relaxed) >
	    x->intern_mask)
		intern_grow(x);
	return s;
}

/* The set @s with @target added (@add) or removed; @s itself when nothing changes. */
static struct pdx_set *set_edit(struct pdx *x, const struct pdx_set *s, uint32_t target, bool add)
{
	struct pdx_set_memo *m = &x->memo;

	if (m->to && m->from == s && m->target == target && m->add == add)
		return m->to;
	if (pdx_set_has(s, target) == add)
		return (struct pdx_set *)s;

	uint32_t n = s ? s->n : 0, k = 0;
	uint64_t sum = s ? s->sum : 0;
	uint16_t *out = x->set_scratch;
	bool placed = !add;

	for (uint32_t i = 0; i < n; i++) {
		if (!placed && s->member[i] > target) {
			out[k++] = (uint16_t)target;
			placed = true;
		}
		if (add || s->member[i] != target)
			out[k++] = s->member[i];
	}
	if (!placed)
		out[k++] = (uint16_t)target;
	sum = add ? sum + member_mix(target) : sum - member_mix(target);

	struct pdx_set *r = set_intern(x, out, k, sum);

	if (r)
		*m = (struct pdx_set_memo){.from = s, .to = r, .target = target, .add = add};
	return r;
}

struct pdx_set *pdx_set_with(struct pdx *x, const struct pdx_set *s, uint32_t target)
{
	return set_edit(x, s, target, true);
}

struct pdx_set *pdx_set_without(struct pdx *x, const struct pdx_set *s, uint32_t target)
{
	return set_edit(x, s, target, false);
}

/* Take @s out of the interning table: no entry will point at it again. */
static void set_unlink(struct pdx *x, struct pdx_set *s)
{
	struct pdx_set **p = &x->intern[s->sum & x->intern_mask];

	while (*p != s)
		p = &(*p)->next;
	*p = s->next;
	/* The memo may name @s; it must not hand it out again. */
	x->memo = (struct pdx_set_memo){0};
	pdx_stat_add(x, PDX_STAT(holder_sets), -1);
}

void pdx_set_drop_unused(struct pdx *x, struct pdx_set *s)
{
	set_unlink(x, s);
	pdx_stat_add(x, PDX_STAT(bytes), -(uint64_t)pdx_set_bytes(s->n));
	free(s); /* no entry ever pointed at it, so no reader can hold it */
}

void pdx_set_unref(struct pdx *x, struct pdx_set *s)
{
	if (!s || --s->refs)
		return;
	set_unlink(x, s);
	/*
	 * Out of memory for the retire list: a reader may still hold the set, so it cannot be
	 * freed now; keep it on a list of its own that pdx_destroy() frees.
	 */
	if (pdx_retire(x, PDX_RETIRED_SET, 0, s) < 0) {
		s->next = x->unretired_sets;
		x->unretired_sets = s;
	}
}
