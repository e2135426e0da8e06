/* Huge-page arrays (huge.h). */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include "huge.h"

#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/lsan_interface.h>
#endif

void *dp_huge_zalloc(size_t bytes)
{
	if (bytes < DP_HUGE_PAGE / 2) {
		size_t rounded = (bytes + 63) & ~(size_t)63;
		void *p = aligned_alloc(64, rounded ? rounded : 64);

		return p ? memset(p, 0, rounded) : NULL;
	}

	/* Huge pages need 2 MiB-aligned ranges: map one page more and trim both ends. */
	size_t len = (bytes + DP_HUGE_PAGE - 1) & ~(size_t)(DP_HUGE_PAGE - 1);
	char *map = mmap(NULL, len + DP_HUGE_PAGE, PROT_READ | PROT_WRITE,
			 MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);

	if (map == MAP_FAILED)
		return NULL;

	char *p = (char *)(((uintptr_t)map + DP_HUGE_PAGE - 1) & ~(uintptr_t)(DP_HUGE_PAGE - 1));

	if (p > map)
		munmap(map, (size_t)(p - map));
	munmap(p + len, (size_t)(map + DP_HUGE_PAGE - p));
	/* Advice only: without THP the memory is just 4 KiB pages. */
	(void)madvise(p, len, MADV_HUGEPAGE);
	/* Fault every page in now, while setting up: a first touch later would stall a lookup
	 * for as long as the kernel takes to clear 2 MiB (about 80 us). Writing zeros keeps the
	 * memory what a fresh mapping holds. */
	memset(p, 0, len);
	return p; /* anonymous mappings start zeroed */
}

void dp_huge_free(void *p, size_t bytes)
{
	if (!p)
		return;
	if (bytes < DP_HUGE_PAGE / 2)
		free(p);
	else
		munmap(p, (bytes + DP_HUGE_PAGE - 1) & ~(size_t)(DP_HUGE_PAGE - 1));
}

void *dp_sparse_zalloc(size_t bytes)
{
	void *p = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS |
		       MAP_NORESERVE, -1, 0);

	if (p == MAP_FAILED)
		return NULL;
#if defined(__SANITIZE_ADDRESS__)
	/* It may hold the only pointers to heap blocks: LeakSanitizer must look inside. */
	__lsan_register_root_region(p, bytes);
#endif
	return p; /* anonymous mappings start zeroed */
}

void dp_sparse_free(void *p, size_t bytes)
{
	if (!p)
		return;
#if defined(__SANITIZE_ADDRESS__)
	__lsan_unregister_root_region(p, bytes);
#endif
	munmap(p, bytes);
}
