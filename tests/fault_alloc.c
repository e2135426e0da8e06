/*
 * Allocation fault injection, see fault_alloc.h. The __wrap_ and __real_ names are the
 * linker's: with --wrap=malloc every call to malloc() in the program's own objects (the tests,
 * the static libraries they link) comes here, and __real_malloc is the C library's. Calls made
 * inside shared libraries (Criterion, libc itself) are not seen. Live blocks sit in an
 * open-addressed set of pointers; frees of pointers it does not know pass straight through.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <sys/types.h>

#include "fault_alloc.h"

#ifdef T_FAULT_ALLOC
void *__real_malloc(size_t size);
void *__real_calloc(size_t n, size_t size);
void *__real_realloc(void *p, size_t size);
void *__real_aligned_alloc(size_t align, size_t size);
void __real_free(void *p);
void *__real_mmap(void *addr, size_t len, int prot, int flags, int fd, off_t off);
void *__real_mmap64(void *addr, size_t len, int prot, int flags, int fd, off64_t off);
int __real_munmap(void *addr, size_t len);
void *__wrap_malloc(size_t size);
void *__wrap_calloc(size_t n, size_t size);
void *__wrap_realloc(void *p, size_t size);
void *__wrap_aligned_alloc(size_t align, size_t size);
void __wrap_free(void *p);
void *__wrap_mmap(void *addr, size_t len, int prot, int flags, int fd, off_t off);
void *__wrap_mmap64(void *addr, size_t len, int prot, int flags, int fd, off64_t off);
int __wrap_munmap(void *addr, size_t len);

#define LIVE_SLOTS (1u << 16)

struct t_fault t_fault;

static bool counting, wrapped;
static void *live[LIVE_SLOTS];
static size_t nlive;
static int64_t map_bytes;

static size_t home(const void *p)
{
	return (size_t)(((uintptr_t)p * 0x9E3779B97F4A7C15ull) >> 48) & (LIVE_SLOTS - 1);
}

static void live_add(void *p)
{
	size_t i = home(p);

	if (!p)
		return;
	if (nlive == LIVE_SLOTS - 1) {
		fputs("fault_alloc: too many live blocks to track\n", stderr);
		abort();
	}
	while (live[i])
		i = (i + 1) & (LIVE_SLOTS - 1);
	live[i] = p;
	nlive++;
}

/* Forget @p if it is live; backward-shift deletion keeps every probe chain whole. */
static void live_del(void *p)
{
	size_t i = home(p), j;

	if (!p)
		return;
	while (live[i] != p) {
		if (!live[i])
			return;
		i = (i + 1) & (LIVE_SLOTS - 1);
	}
	for (j = (i + 1) & (LIVE_SLOTS - 1); live[j]; j = (j + 1) & (LIVE_SLOTS - 1)) {
		size_t h = home(live[j]);

		/* live[j] may fill the hole at i unless its home lies cyclically in (i, j]. */
		if (i <= j ? (h <= i || h > j) : (h <= i && h > j)) {
			live[i] = live[j];
			i = j;
		}
	}
	live[i] = NULL;
	nlive--;
}

/* Is this allocation call the one that fails? */
static bool fail_now(const char *what, size_t size)
{
	wrapped = true;
	if (!counting || ++t_fault.calls != t_fault.fail_at)
		return false;
	t_fault.fired = true;
	t_fault.what = what;
	t_fault.size = size;
	errno = ENOMEM;
	return true;
}

bool t_fault_wrapped(void)
{
	bool was = counting;

	counting = false;
	__wrap_free(__wrap_malloc(1));
	counting = was;
	return wrapped;
}

void t_fault_reset(unsigned long fail_at)
{
	for (size_t i = 0; i < LIVE_SLOTS; i++)
		live[i] = NULL;
	nlive = 0;
	map_bytes = 0;
	counting = false;
	t_fault = (struct t_fault){.fail_at = fail_at};
}

void t_fault_count(bool on)
{
	counting = on;
}

size_t t_fault_live_blocks(void)
{
	return nlive;
}

int64_t t_fault_live_map_bytes(void)
{
	return map_bytes;
}

void *__wrap_malloc(size_t size)
{
	void *p = fail_now("malloc", size) ? NULL : __real_malloc(size);

	live_add(p);
	return p;
}

void *__wrap_calloc(size_t n, size_t size)
{
	void *p = fail_now("calloc", n * size) ? NULL : __real_calloc(n, size);

	live_add(p);
	return p;
}

void *__wrap_realloc(void *old, size_t size)
{
	void *p = fail_now("realloc", size) ? NULL : __real_realloc(old, size);

	/* On failure the old block stays as it was. */
	if (p) {
		live_del(old);
		live_add(p);
	}
	return p;
}

void *__wrap_aligned_alloc(size_t align, size_t size)
{
	void *p = fail_now("aligned_alloc", size) ? NULL : __real_aligned_alloc(align, size);

	live_add(p);
	return p;
}

void __wrap_free(void *p)
{
	live_del(p);
	__real_free(p);
}

void *__wrap_mmap(void *addr, size_t len, int prot, int flags, int fd, off_t off)
{
	void *p = fail_now("mmap", len) ? MAP_FAILED : __real_mmap(addr, len, prot, flags, fd, off);

	if (p != MAP_FAILED)
		map_bytes += (int64_t)len;
	return p;
}

/* With _FILE_OFFSET_BITS=64 (meson's default) a call to mmap() links to mmap64. */
void *__wrap_mmap64(void *addr, size_t len, int prot, int flags, int fd, off64_t off)
{
	void *p =
	    fail_now("mmap", len) ? MAP_FAILED : __real_mmap64(addr, len, prot, flags, fd, off);

	if (p != MAP_FAILED)
		map_bytes += (int64_t)len;
	return p;
}

int __wrap_munmap(void *addr, size_t len)
{
	int rc = __real_munmap(addr, len);

	if (rc == 0)
		map_bytes -= (int64_t)len;
	return rc;
}

#else /* no --wrap: nothing can be made to fail, and the tests say so */

struct t_fault t_fault;

bool t_fault_wrapped(void)
{
	return false;
}

void t_fault_reset(unsigned long fail_at)
{
	t_fault = (struct t_fault){.fail_at = fail_at};
}

void t_fault_count(bool on)
{
	(void)on;
}

size_t t_fault_live_blocks(void)
{
	return 0;
}

int64_t t_fault_live_map_bytes(void)
{
	return 0;
}
#endif
