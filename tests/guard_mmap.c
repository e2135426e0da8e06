/*
 * Guard pages for the .ops tests and the fuzzer, linked with -Wl,--wrap=mmap,--wrap=mmap64,
 * --wrap=munmap. A read-only mapping of a file gets a PROT_NONE page after it, so a reader that
 * runs past the end of a file whose length is a multiple of the page size faults at once
 * instead of reading the next mapping (or, for other lengths, only the zeros of the last page).
 * Other mappings pass straight through. The __wrap_ and __real_ names are the linker's, not
 * ours. Single-threaded: the tests and the fuzzer map one file at a time.
 */
#define _GNU_SOURCE
#include <stddef.h>
#include <stdint.h>
#include <sys/mman.h>
#include <sys/types.h>
#include <unistd.h>

#include "guard_mmap.h"

void *__real_mmap(void *addr, size_t len, int prot, int flags, int fd, off_t off);
void *__real_mmap64(void *addr, size_t len, int prot, int flags, int fd, off64_t off);
int __real_munmap(void *addr, size_t len);
void *__wrap_mmap(void *addr, size_t len, int prot, int flags, int fd, off_t off);
void *__wrap_mmap64(void *addr, size_t len, int prot, int flags, int fd, off64_t off);
int __wrap_munmap(void *addr, size_t len);

#define MAX_GUARDED 16

/* Guarded mappings still open: where each starts and its span, the guard page included. */
static struct {
	void *addr;
	size_t span;
} guarded[MAX_GUARDED];

unsigned long t_guarded_maps;

static size_t page_size(void)
{
	return (size_t)sysconf(_SC_PAGESIZE);
}

/* Reserve the span and a guard page, then map the file over the start of it. */
static void *guard_map(size_t len, int prot, int flags, int fd, off64_t off)
{
	size_t page = page_size(), span = (len + page - 1) / page * page + page;
	int slot = 0;
	void *p;

	while (slot < MAX_GUARDED && guarded[slot].addr)
		slot++;
	if (slot == MAX_GUARDED)
		return __real_mmap64(NULL, len, prot, flags, fd, off);
	p = __real_mmap64(NULL, span, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (p == MAP_FAILED)
		return p;
	if (__real_mmap64(p, len, prot, flags | MAP_FIXED, fd, off) == MAP_FAILED) {
		__real_munmap(p, span);
		return MAP_FAILED;
	}
	guarded[slot].addr = p;
	guarded[slot].span = span;
	t_guarded_maps++;
	return p;
}

static int wanted(void *addr, size_t len, int prot, int fd)
{
	return !addr && len && fd >= 0 && prot == PROT_READ;
}

void *__wrap_mmap(void *addr, size_t len, int prot, int flags, int fd, off_t off)
{
	if (wanted(addr, len, prot, fd))
		return guard_map(len, prot, flags, fd, off);
	return __real_mmap(addr, len, prot, flags, fd, off);
}

void *__wrap_mmap64(void *addr, size_t len, int prot, int flags, int fd, off64_t off)
{
	if (wanted(addr, len, prot, fd))
		return guard_map(len, prot, flags, fd, off);
	return __real_mmap64(addr, len, prot, flags, fd, off);
}

int __wrap_munmap(void *addr, size_t len)
{
	for (int i = 0; i < MAX_GUARDED; i++) {
		if (guarded[i].addr != addr)
			continue;
		len = guarded[i].span;
		guarded[i].addr = NULL;
		break;
	}
	return __real_munmap(addr, len);
}
