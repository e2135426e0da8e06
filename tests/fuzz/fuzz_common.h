/*
 * What the fuzz targets in this directory share: failing with the input saved (in the replay
 * build; libFuzzer saves it itself under -DPD_LIBFUZZER), and the replay driver's option
 * parsing and FILE replay. Each target defines t_fuzz_name, its name, and its
 * LLVMFuzzerTestOneInput(), which calls t_fuzz_set_input() before it checks anything.
 */
#ifndef PD_TESTS_FUZZ_COMMON_H
#define PD_TESTS_FUZZ_COMMON_H

#include <stddef.h>
#include <stdint.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* The target's name, defined by the target: the prefix of its messages and its crash file. */
extern const char t_fuzz_name[];

/* The replay driver's number of the input being run, printed with a failure. */
extern unsigned long t_fuzz_input_number;

/* Where that input came from (a seed's name), printed after its number when not NULL. */
extern const char *t_fuzz_input_from;

/* The crash file's suffix, after "<name>-crash": ".bin" unless the target sets another. */
extern const char *t_fuzz_crash_ext;

/* Note @size bytes at @data as the input being run, the one a failure saves. */
void t_fuzz_set_input(const uint8_t *data, size_t size);

/* Print "<name>: " and the message, save the input (replay build only), abort. */
void t_fuzz_fail(const char *fmt, ...) __attribute__((noreturn, format(printf, 1, 2)));

/* The replay driver's start: parse the arguments, run the FILEs given and then leave *@inputs
 * 0 (a replay generates nothing). Returns how many FILEs ran, or -1 after the usage. */
int t_fuzz_begin(int argc, char **argv, unsigned long *inputs, uint64_t *seed);

#endif
