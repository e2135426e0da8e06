/*
 * Big zeroed arrays on transparent huge pages, for the structures the dataplane reads at
 * random (the prefix index's table and entry slabs, a core's in-flight dedup table): a lookup
 * touches a few scattered lines, and on 4 KiB pages each also costs a TLB miss, which under
 * virtualisation is a walk of two page tables.
 */
#ifndef PD_DATAPLANE_HUGE_H
#define PD_DATAPLANE_HUGE_H

#include <stddef.h>

#define DP_HUGE_PAGE (2u << 20)

/**
 * dp_huge_zalloc - @bytes of zeroed memory, 64-byte aligned.
 *
 * From DP_HUGE_PAGE / 2 bytes up, a 2 MiB-aligned anonymous mapping advised to use huge pages
 * (the kernel's "madvise" THP mode is enough; without THP it is plain pages), faulted in
 * before it returns so that no later access waits for the kernel. Smaller sizes come from the
 * heap. Returns NULL when out of memory.
 */
void *dp_huge_zalloc(size_t bytes);

/* Free what dp_huge_zalloc(@bytes) returned; NULL is ignored. */
void dp_huge_free(void *p, size_t bytes);

/**
 * dp_sparse_zalloc - @bytes of zeroed address space, backed page by page on first touch.
 *
 * For arrays sized for the most they may ever hold but used from the front (the prefix
 * index's per-chunk arrays): only the pages written cost memory. A plain anonymous mapping,
 * so unlike calloc() it never comes back from the heap already touched. NULL when out of
 * address space.
 */
void *dp_sparse_zalloc(size_t bytes);

/* Free what dp_sparse_zalloc(@bytes) returned; NULL is ignored. */
void dp_sparse_free(void *p, size_t bytes);

#endif
