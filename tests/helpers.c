/*
 * Helpers shared by the unit tests (see helpers.h). They run inside a Criterion test and fail
 * it with cr_assert when a precondition they rely on does not hold.
 */
#include <stdlib.h>
#include <string.h>

#include <criterion/criterion.h>

#include "helpers.h"

void *t_calloc(size_t n, size_t size)
{
	void *p = calloc(n ? n : 1, size ? size : 1);

	cr_assert(p, "calloc(%zu, %zu) failed", n, size);
	return p;
}

void t_locals(uint64_t tag, size_t n, uint64_t *local)
{
	for (size_t i = 0; i < n; i++)
		local[i] = t_mix64(t_mix64(tag) ^ i) | 1;
}

static uint64_t ext_of(uint64_t seq, uint64_t ext_tag)
{
	return t_mix64(seq ^ t_mix64(ext_tag + 0x5EED)) | 1;
}

void t_blocks(const uint64_t *local, size_t from, size_t n, uint64_t ext_tag, struct pdx_block *out)
{
	uint64_t seq = 0;

	for (size_t i = 0; i < from + n; i++) {
		seq = i ? dp_hash_chain(seq, local[i]) : local[0];
		if (i >= from) {
			out[i - from].ext_id = ext_of(seq, ext_tag);
			out[i - from].local_hash = local[i];
		}
	}
}

uint64_t t_ext_id(const uint64_t *local, size_t i, uint64_t ext_tag)
{
	struct pdx_block b;

	t_blocks(local, i, 1, ext_tag, &b);
	return b.ext_id;
}

void t_pdx_open(struct t_pdx *t, uint32_t max_targets, uint32_t initial_blocks)
{
	struct pdx_config cfg = {
	    .max_targets = max_targets,
	    .max_readers = 4,
	    .initial_blocks = initial_blocks,
	};

	cr_assert_eq(pdx_init(&t->x, &cfg), 0, "pdx_init(max_targets=%u)", max_targets);
	cr_assert_eq(pdx_reader_attach(&t->x, &t->r), 0, "pdx_reader_attach");
	t->max_targets = max_targets ? max_targets : PDX_DEFAULT_TARGETS;
	t->out = t_calloc(t->max_targets, sizeof(*t->out));
}

void t_pdx_close(struct t_pdx *t)
{
	pdx_reader_detach(t->r);
	pdx_destroy(&t->x);
	free(t->out);
}

static int cmp_overlap(const void *a, const void *b)
{
	const struct pdx_overlap *x = a, *y = b;

	return (x->target > y->target) - (x->target < y->target);
}

void t_sort_overlaps(struct pdx_overlap *a, size_t n)
{
	qsort(a, n, sizeof(*a), cmp_overlap);
}

size_t t_match(struct t_pdx *t, const uint64_t *local, size_t n)
{
	size_t k = pdx_match(t->r, local, n, t->out);

	cr_assert_leq(k, t->max_targets, "pdx_match returned %zu answers for %u targets", k,
		      t->max_targets);
	t_sort_overlaps(t->out, k);
	for (size_t i = 0; i < k; i++) {
		cr_assert_lt(t->out[i].target, t->max_targets, "answer for target %u",
			     t->out[i].target);
		cr_assert(i == 0 || t->out[i - 1].target != t->out[i].target,
			  "target %u reported twice", t->out[i].target);
		cr_assert(t->out[i].depth >= 1 && t->out[i].depth <= n,
			  "target %u: depth %u for a query of %zu blocks", t->out[i].target,
			  t->out[i].depth, n);
	}
	return k;
}

uint32_t t_depth(const struct t_pdx *t, size_t nout, uint32_t target)
{
	for (size_t i = 0; i < nout; i++)
		if (t->out[i].target == target)
			return t->out[i].depth;
	return 0;
}

struct pdx_stats t_stats(const struct pdx *x)
{
	struct pdx_stats s;

	pdx_stats(x, &s);
	return s;
}

void t_prompt_init(struct t_prompt *p, uint64_t tag, size_t n)
{
	cr_assert_leq(n, 16);
	p->n = n;
	t_locals(tag, n, p->local);
	t_blocks(p->local, 0, n, 0, p->b);
}

void t_prompt_branch(struct t_prompt *p, const struct t_prompt *base, size_t shared, uint64_t tag,
		     size_t n)
{
	t_prompt_init(p, tag, n);
	memcpy(p->local, base->local, shared * sizeof(uint64_t));
	t_blocks(p->local, 0, n, 0, p->b);
}

uint64_t t_prompt_ext(const struct t_prompt *p, size_t i)
{
	return p->b[i].ext_id;
}

long t_store(struct t_pdx *t, uint32_t target, const struct t_prompt *p, size_t from, size_t n)
{
	uint64_t parent = from ? t_prompt_ext(p, from - 1) : 0;

	return pdx_store(&t->x, target, from ? &parent : NULL, p->b + from, n);
}

long t_remove1(struct t_pdx *t, uint32_t target, uint64_t ext_id)
{
	return pdx_remove(&t->x, target, &ext_id, 1);
}
