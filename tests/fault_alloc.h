/*
 * Allocation fault injection (fault_alloc.c) for the programs linked with -Wl,--wrap= for
 * malloc, calloc, realloc, aligned_alloc, free, mmap, mmap64 and munmap; meson then defines
 * T_FAULT_ALLOC. While counting is on, allocation calls are numbered from 1 and the one
 * chosen with t_fault_arm() fails once. The wrappers also keep what is still allocated, so a
 * test can check that tearing something down gave every block and mapping back.
 * Single-threaded.
 */
#ifndef PD_TESTS_FAULT_ALLOC_H
#define PD_TESTS_FAULT_ALLOC_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct t_fault {
	unsigned long calls;   /* allocation calls counted since t_fault_reset() */
	unsigned long fail_at; /* the call that fails (1-based); 0: none */
	bool fired;	       /* it did */
	const char *what;      /* the call that failed: "malloc", "mmap", ... */
	size_t size;	       /* and the bytes it asked for */
};

extern struct t_fault t_fault;

/* True when the wrappers are linked in (the linker took --wrap). */
bool t_fault_wrapped(void);

/* Forget the counts and what is live; fail call @fail_at of those counted from now (0: none). */
void t_fault_reset(unsigned long fail_at);

/* Count allocation calls (and fail the chosen one) or not. */
void t_fault_count(bool on);

/* Blocks from malloc and friends, and mapped bytes, allocated since t_fault_reset() and not
 * freed. */
size_t t_fault_live_blocks(void);
int64_t t_fault_live_map_bytes(void);

#endif
