/*
 * A dataplane core's size-class buffers (dataplane/slab.h): classes from 256 bytes up to 64 MiB
 * in powers of two, LIFO reuse of a freed buffer, live buffers that never overlap, alignment to
 * min(size, 4096), the budget (refusals counted in `exhausted`, freed buffers reusable after),
 * and growable dp_buf buffers that keep their contents.
 */
#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <criterion/criterion.h>

#include "rng.h"
#include "slab.h"

TestSuite(slab);

#define MIB ((size_t)1 << 20)
#define T_SLAB_MAX ((size_t)1 << DP_SLAB_MAX_SHIFT)

static void t_slab_init(struct dp_slab *s, size_t budget)
{
	cr_assert_eq(dp_slab_init(s, budget), 0, "dp_slab_init(%zu)", budget);
	cr_assert_not_null(s->base);
}

/* A buffer of @bytes that must be granted, with capacity @want, inside the reservation. */
static void *t_get(struct dp_slab *s, size_t bytes, uint32_t want)
{
	uint32_t cap = 0;
	uint8_t *p = dp_slab_get(s, bytes, &cap);

	cr_assert_not_null(p, "dp_slab_get(%zu) refused, used %zu of %zu", bytes, s->used,
			   s->reserved);
	cr_assert_eq(cap, want, "dp_slab_get(%zu): cap %u, want %u", bytes, cap, want);
	cr_assert(p >= s->base && p + cap <= s->base + s->reserved,
		  "buffer at offset %td of %u bytes outside the %zu reserved", p - s->base, cap,
		  s->reserved);
	return p;
}

/* The byte of pattern @tag at offset @i: differs between neighbours and between buffers. */
static uint8_t pattern(uint32_t tag, size_t i)
{
	return (uint8_t)(t_mix64(((uint64_t)tag << 32) ^ (i >> 3)) >> (8 * (i & 7)));
}

static void fill(uint8_t *p, size_t n, uint32_t tag)
{
	for (size_t i = 0; i < n; i++)
		p[i] = pattern(tag, i);
}

static void check(const uint8_t *p, size_t n, uint32_t tag)
{
	for (size_t i = 0; i < n; i++)
		cr_assert_eq(p[i], pattern(tag, i), "buffer %u: byte %zu of %zu clobbered", tag, i,
			     n);
}

Test(slab, init_rounds_the_budget_up_to_64_mib)
{
	struct dp_slab s;

	t_slab_init(&s, 0);
	cr_assert_eq(s.reserved, T_SLAB_MAX);
	dp_slab_destroy(&s);
	t_slab_init(&s, 1);
	cr_assert_eq(s.reserved, T_SLAB_MAX);
	dp_slab_destroy(&s);
	t_slab_init(&s, T_SLAB_MAX + 1);
	cr_assert_eq(s.reserved, 2 * T_SLAB_MAX);
	cr_assert_eq(s.used, 0);
	cr_assert_eq(s.exhausted, 0);
	dp_slab_destroy(&s);
	cr_assert_null(s.base, "destroy leaves the slab empty");
}

Test(slab, sizes_round_up_to_power_of_two_classes_from_256)
{
	struct dp_slab s;

	t_slab_init(&s, 512 * MIB);
	t_get(&s, 0, 256);
	t_get(&s, 1, 256);
	t_get(&s, 255, 256);
	t_get(&s, 256, 256);
	t_get(&s, 257, 512);
	for (unsigned shift = DP_SLAB_MIN_SHIFT + 1; shift <= DP_SLAB_MAX_SHIFT; shift++) {
		size_t size = (size_t)1 << shift;

		t_get(&s, size / 2 + 1, (uint32_t)size);
		t_get(&s, size - 1, (uint32_t)size);
		t_get(&s, size, (uint32_t)size);
	}
	cr_assert_eq(s.exhausted, 0);
	dp_slab_destroy(&s);
}

Test(slab, freed_buffer_is_reused_first_last_in_first_out)
{
	struct dp_slab s;
	void *a, *b, *c;

	t_slab_init(&s, 0);
	a = t_get(&s, 1000, 1024);
	b = t_get(&s, 1000, 1024);
	c = t_get(&s, 1000, 1024);
	dp_slab_put(&s, a, 1024);
	dp_slab_put(&s, c, 1024);
	cr_assert_eq(t_get(&s, 700, 1024), c, "the last buffer freed comes back first");
	cr_assert_eq(t_get(&s, 1024, 1024), a);
	cr_assert_neq(t_get(&s, 1024, 1024), b, "b is still live");
	dp_slab_destroy(&s);
}

Test(slab, freed_buffer_is_not_handed_to_another_class)
{
	struct dp_slab s;
	void *a, *b;
	size_t used;

	t_slab_init(&s, 0);
	a = t_get(&s, 4096, 4096);
	dp_slab_put(&s, a, 4096);
	used = s.used;
	b = t_get(&s, 2048, 2048);
	cr_assert_neq(b, a, "a 2 KiB request must not take the freed 4 KiB buffer");
	cr_assert_gt(s.used, used, "the 2 KiB buffer was carved anew");
	cr_assert_eq(t_get(&s, 3000, 4096), a);
	dp_slab_destroy(&s);
}

struct live {
	uint8_t *p;
	uint32_t cap;
};

static int by_address(const void *a, const void *b)
{
	const struct live *x = a, *y = b;

	return x->p < y->p ? -1 : x->p > y->p;
}

/* No two of @n live buffers from @s share a byte (checked on a sorted copy of their ranges). */
static void assert_disjoint(const struct dp_slab *s, const struct live *live, size_t n)
{
	struct live *sorted = malloc(n * sizeof(*sorted));

	cr_assert_not_null(sorted);
	memcpy(sorted, live, n * sizeof(*sorted));
	qsort(sorted, n, sizeof(*sorted), by_address);
	for (size_t i = 1; i < n; i++)
		cr_assert_leq(sorted[i - 1].p + sorted[i - 1].cap, sorted[i].p,
			      "%u-byte buffer at offset %td overlaps the one at %td",
			      sorted[i - 1].cap, sorted[i - 1].p - s->base, sorted[i].p - s->base);
	free(sorted);
}

Test(slab, live_buffers_of_all_classes_never_overlap)
{
	enum { N = 2000 };
	struct live *live = calloc(N, sizeof(*live));
	struct t_rng r;
	struct dp_slab s;

	cr_assert_not_null(live);
	t_rng_seed(&r, 7);
	t_slab_init(&s, 256 * MIB);
	for (uint32_t i = 0; i < N; i++) {
		size_t bytes = 1 + t_rng_below(&r, 1u << (8 + t_rng_below(&r, 9)));

		live[i].p = dp_slab_get(&s, bytes, &live[i].cap);
		cr_assert_not_null(live[i].p, "buffer %u of %zu bytes", i, bytes);
	}
	assert_disjoint(&s, live, N);
	for (uint32_t i = 0; i < N; i++)
		fill(live[i].p, live[i].cap, i);
	/* Free every third buffer, take new ones (reusing them), and rewrite those. */
	for (uint32_t i = 0; i < N; i += 3)
		dp_slab_put(&s, live[i].p, live[i].cap);
	for (uint32_t i = 0; i < N; i += 3) {
		size_t bytes = 1 + t_rng_below(&r, 1u << (8 + t_rng_below(&r, 9)));

		live[i].p = dp_slab_get(&s, bytes, &live[i].cap);
		cr_assert_not_null(live[i].p, "buffer %u of %zu bytes", i, bytes);
	}
	assert_disjoint(&s, live, N);
	for (uint32_t i = 0; i < N; i += 3)
		fill(live[i].p, live[i].cap, i + N);
	for (uint32_t i = 0; i < N; i++)
		check(live[i].p, live[i].cap, i % 3 ? i : i + N);
	cr_assert_eq(s.exhausted, 0);
	dp_slab_destroy(&s);
	free(live);
}

Test(slab, buffers_are_aligned_to_their_size_up_to_a_page)
{
	struct dp_slab s;

	t_slab_init(&s, 512 * MIB);
	/* Alternate a small class with each class in turn, so the bump pointer is misaligned. */
	for (unsigned shift = DP_SLAB_MIN_SHIFT; shift <= DP_SLAB_MAX_SHIFT; shift++) {
		size_t size = (size_t)1 << shift, align = size < 4096 ? size : 4096;
		uint8_t *odd = t_get(&s, 1, 256), *p = t_get(&s, size, (uint32_t)size);

		cr_assert_eq((uintptr_t)odd % 256, 0);
		cr_assert_eq((uintptr_t)p % align, 0, "%zu-byte buffer at %p, want %zu-aligned",
			     size, (void *)p, align);
	}
	dp_slab_destroy(&s);
}

Test(slab, spent_budget_returns_null_and_counts_exhausted)
{
	const size_t per = 4096, n = T_SLAB_MAX / 4096;
	struct dp_slab s;
	uint32_t cap = 0;

	t_slab_init(&s, 1);
	for (size_t i = 0; i < n; i++)
		t_get(&s, per, (uint32_t)per);
	cr_assert_eq(s.used, s.reserved);
	cr_assert_eq(s.exhausted, 0);
	cr_assert_null(dp_slab_get(&s, per, &cap), "the reservation is used up");
	cr_assert_eq(s.exhausted, 1);
	cr_assert_null(dp_slab_get(&s, 1, &cap), "no room for the smallest class either");
	cr_assert_eq(s.exhausted, 2);
	cr_assert_eq(s.used, s.reserved, "a refusal carves nothing");
	dp_slab_destroy(&s);
}

Test(slab, freed_buffers_are_reusable_after_the_budget_is_spent)
{
	struct dp_slab s;
	uint32_t cap = 0;
	uint8_t *a, *b;

	t_slab_init(&s, 1);
	a = t_get(&s, T_SLAB_MAX / 2, (uint32_t)(T_SLAB_MAX / 2));
	b = t_get(&s, T_SLAB_MAX / 2, (uint32_t)(T_SLAB_MAX / 2));
	cr_assert_null(dp_slab_get(&s, 256, &cap));
	cr_assert_eq(s.exhausted, 1);
	dp_slab_put(&s, b, (uint32_t)(T_SLAB_MAX / 2));
	dp_slab_put(&s, a, (uint32_t)(T_SLAB_MAX / 2));
	cr_assert_eq(t_get(&s, T_SLAB_MAX / 2, (uint32_t)(T_SLAB_MAX / 2)), a);
	cr_assert_eq(t_get(&s, T_SLAB_MAX / 4 + 1, (uint32_t)(T_SLAB_MAX / 2)), b);
	cr_assert_eq(s.exhausted, 1, "reuse is not a refusal");
	fill(a, 4096, 1);
	fill(b, 4096, 2);
	check(a, 4096, 1);
	dp_slab_destroy(&s);
}

Test(slab, requests_over_64_mib_are_refused)
{
	struct dp_slab s;
	uint32_t cap = 12345;

	t_slab_init(&s, 4 * T_SLAB_MAX);
	cr_assert_null(dp_slab_get(&s, T_SLAB_MAX + 1, &cap));
	cr_assert_null(dp_slab_get(&s, SIZE_MAX, &cap));
	cr_assert_eq(cap, 12345, "a refusal leaves *cap alone");
	cr_assert_eq(s.exhausted, 2, "every refusal is counted");
	cr_assert_eq(s.used, 0);
	t_get(&s, T_SLAB_MAX, (uint32_t)T_SLAB_MAX);
	dp_slab_destroy(&s);
}

Test(slab, buf_reserve_keeps_contents_when_growing)
{
	struct dp_buf b = {0};
	struct dp_slab s;
	uint8_t *old;

	t_slab_init(&s, 0);
	cr_assert_eq(dp_buf_reserve(&s, &b, 100), 0);
	cr_assert_eq(b.cap, 256);
	cr_assert_eq(b.len, 0);
	fill(b.p, 200, 9);
	b.len = 200;
	old = b.p;
	cr_assert_eq(dp_buf_reserve(&s, &b, 5000), 0);
	cr_assert_eq(b.cap, 8192);
	cr_assert_eq(b.len, 200);
	cr_assert_neq(b.p, old);
	check(b.p, 200, 9);
	cr_assert_eq(t_get(&s, 256, 256), old, "the outgrown buffer went back to its class");
	dp_slab_destroy(&s);
}

Test(slab, buf_reserve_is_a_no_op_when_big_enough)
{
	struct dp_buf b = {0};
	struct dp_slab s;
	uint8_t *p;
	size_t used;

	t_slab_init(&s, 0);
	cr_assert_eq(dp_buf_reserve(&s, &b, 1024), 0);
	fill(b.p, 1024, 3);
	b.len = 1024;
	p = b.p;
	used = s.used;
	cr_assert_eq(dp_buf_reserve(&s, &b, 1024), 0);
	cr_assert_eq(dp_buf_reserve(&s, &b, 1), 0);
	cr_assert_eq(dp_buf_reserve(&s, &b, 0), 0);
	cr_assert_eq(b.p, p);
	cr_assert_eq(b.cap, 1024);
	cr_assert_eq(b.len, 1024);
	cr_assert_eq(s.used, used, "nothing was carved");
	check(b.p, 1024, 3);
	dp_slab_destroy(&s);
}

Test(slab, buf_reserve_over_the_limit_fails_and_keeps_the_buffer)
{
	struct dp_buf b = {0};
	struct dp_slab s;
	uint8_t *p;

	t_slab_init(&s, 0);
	cr_assert_eq(dp_buf_reserve(&s, &b, 300), 0);
	fill(b.p, 300, 4);
	b.len = 300;
	p = b.p;
	cr_assert_eq(dp_buf_reserve(&s, &b, T_SLAB_MAX + 1), -ENOMEM);
	cr_assert_eq(b.p, p);
	cr_assert_eq(b.cap, 512);
	cr_assert_eq(b.len, 300);
	check(b.p, 300, 4);
	cr_assert_eq(s.exhausted, 1);
	dp_slab_destroy(&s);
}

Test(slab, buf_reserve_with_spent_budget_fails_and_keeps_the_buffer)
{
	struct dp_buf b = {0}, hog = {0};
	struct dp_slab s;

	t_slab_init(&s, 1);
	cr_assert_eq(dp_buf_reserve(&s, &b, 256), 0);
	fill(b.p, 256, 5);
	b.len = 256;
	cr_assert_eq(dp_buf_reserve(&s, &hog, T_SLAB_MAX / 2), 0);
	cr_assert_eq(dp_buf_reserve(&s, &b, T_SLAB_MAX / 2), -ENOMEM);
	cr_assert_eq(b.cap, 256);
	check(b.p, 256, 5);
	dp_buf_free(&s, &hog);
	cr_assert_eq(dp_buf_reserve(&s, &b, T_SLAB_MAX / 2), 0, "the freed half is reusable");
	check(b.p, 256, 5);
	dp_slab_destroy(&s);
}

Test(slab, buf_free_resets_and_returns_the_buffer)
{
	struct dp_buf b = {0};
	struct dp_slab s;
	uint8_t *p;

	t_slab_init(&s, 0);
	dp_buf_free(&s, &b);
	cr_assert_eq(b.cap, 0, "freeing an empty buffer is harmless");
	cr_assert_eq(dp_buf_reserve(&s, &b, 2000), 0);
	b.len = 10;
	p = b.p;
	dp_buf_free(&s, &b);
	cr_assert_null(b.p);
	cr_assert_eq(b.len, 0);
	cr_assert_eq(b.cap, 0);
	cr_assert_eq(t_get(&s, 2048, 2048), p, "its buffer went back to its class");
	cr_assert_eq(dp_buf_reserve(&s, &b, 1), 0, "a freed dp_buf can be used again");
	cr_assert_eq(b.cap, 256);
	dp_slab_destroy(&s);
}
