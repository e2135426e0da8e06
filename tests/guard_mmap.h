/*
 * Guard pages after read-only file mappings (guard_mmap.c), for the .ops tests and fuzzer.
 * Active only in programs linked with -Wl,--wrap=mmap,--wrap=mmap64,--wrap=munmap; meson then
 * defines T_GUARD_PAGES.
 */
#ifndef PD_TESTS_GUARD_MMAP_H
#define PD_TESTS_GUARD_MMAP_H

/* File mappings made with a guard page after them so far. */
extern unsigned long t_guarded_maps;

#endif
