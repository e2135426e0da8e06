/*
 * Size-class buffers for a dataplane core. Carving is a bump of @used; freed buffers go on
 * their class's list, threaded through their first bytes, and are reused first. Memory is never
 * returned to the system: a core's working set stays mapped, which is what a polled core wants.
 */
#include <errno.h>
#include <string.h>
#include <sys/mman.h>

#include "slab.h"

int dp_slab_init(struct dp_slab *s, size_t budget)
{
	size_t chunk = (size_t)1 << DP_SLAB_MAX_SHIFT;

	*s = (struct dp_slab){0};
	s->reserved = (budget + chunk - 1) & ~(chunk - 1);
	if (!s->reserved)
		s->reserved = chunk;
	s->base = mmap(NULL, s->reserved, PROT_READ | PROT_WRITE,
		       MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
	if (s->base == MAP_FAILED) {
		s->base = NULL;
		return -ENOMEM;
	}
	return 0;
}

void dp_slab_destroy(struct dp_slab *s)
{
	if (s->base)
		munmap(s->base, s->reserved);
	*s = (struct dp_slab){0};
}

static unsigned class_of(size_t bytes)
{
	unsigned shift = DP_SLAB_MIN_SHIFT;

	while (((size_t)1 << shift) < bytes)
		shift++;
	return shift - DP_SLAB_MIN_SHIFT;
}

/*
 * The budget is carved: a free buffer of a larger class serves instead (and goes back to its
 * own class), so buffers a burst of big frames left behind are not lost to smaller requests.
 */
static void *larger_free(struct dp_slab *s, unsigned c, uint32_t *cap)
{
	for (unsigned k = c + 1; k < DP_SLAB_CLASSES; k++) {
		void *p = s->free[k];
		size_t size = (size_t)1 << (k + DP_SLAB_MIN_SHIFT);

		if (!p)
			continue;
		memcpy(&s->free[k], p, sizeof(void *));
		*cap = (uint32_t)(size > UINT32_MAX ? UINT32_MAX : size);
		return p;
	}
	s->exhausted++;
	return NULL;
}

void *dp_slab_get(struct dp_slab *s, size_t bytes, uint32_t *cap)
{
	unsigned c;
	size_t size;
	void *p;

	if (bytes > ((size_t)1 << DP_SLAB_MAX_SHIFT)) {
		s->exhausted++;
		return NULL;
	}
	c = class_of(bytes ? bytes : 1);
	size = (size_t)1 << (c + DP_SLAB_MIN_SHIFT);
	p = s->free[c];
	if (p) {
		memcpy(&s->free[c], p, sizeof(void *));
	} else {
		/* Aligned to their size up to a page: small buffers never straddle a cache
		 * line more than they must, large ones start on a page. */
		size_t align = size < 4096 ? size : 4096;
		size_t at = (s->used + align - 1) & ~(align - 1);

		if (at + size > s->reserved)
			return larger_free(s, c, cap);
		p = s->base + at;
		s->used = at + size;
	}
	*cap = (uint32_t)(size > UINT32_MAX ? UINT32_MAX : size);
	return p;
}

void dp_slab_put(struct dp_slab *s, void *p, uint32_t cap)
{
	unsigned c = class_of(cap);

	memcpy(p, &s->free[c], sizeof(void *));
	s->free[c] = p;
}

int dp_buf_reserve(struct dp_slab *s, struct dp_buf *b, size_t need)
{
	uint32_t cap;
	void *p;

	if (need <= b->cap)
		return 0;
	p = dp_slab_get(s, need, &cap);
	if (!p)
		return -ENOMEM;
	if (b->cap) {
		memcpy(p, b->p, b->len);
		dp_slab_put(s, b->p, b->cap);
	}
	b->p = p;
	b->cap = cap;
	return 0;
}

void dp_buf_free(struct dp_slab *s, struct dp_buf *b)
{
	if (b->cap)
		dp_slab_put(s, b->p, b->cap);
	*b = (struct dp_buf){0};
}
