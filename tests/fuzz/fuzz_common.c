/*
 * The fuzz targets' shared part (fuzz_common.h): t_fuzz_fail(), which saves the failing input
 * to <name>-crash.bin in the replay build, and the replay driver's options and FILE replay.
 * Under -DPD_LIBFUZZER (the *_libfuzzer targets) nothing is saved: libFuzzer saves the input
 * that aborted, and runs its own main().
 */
#define _GNU_SOURCE
#include <errno.h>
#include <getopt.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz_common.h"

unsigned long t_fuzz_input_number;
const char *t_fuzz_input_from;
const char *t_fuzz_crash_ext = ".bin";

static const uint8_t *input_data; /* the input being run, for the crash report */
static size_t input_size;

/* Note the input a failure saves. */
void t_fuzz_set_input(const uint8_t *data, size_t size)
{
	input_data = data;
	input_size = size;
}

#ifdef PD_LIBFUZZER

/* libFuzzer saves the input that aborted. */
static void report_input(void)
{
}

#else

/* Save the input that failed, so the target replays it (as FILE, or fuzz_ops -n 0 FILE). */
static void report_input(void)
{
	char path[256];
	FILE *fp;

	snprintf(path, sizeof(path), "%s-crash%s", t_fuzz_name, t_fuzz_crash_ext);
	if (t_fuzz_input_from)
		fprintf(stderr, "%s: input %lu, from %s\n", t_fuzz_name, t_fuzz_input_number,
			t_fuzz_input_from);
	else
		fprintf(stderr, "%s: input %lu\n", t_fuzz_name, t_fuzz_input_number);
	fp = fopen(path, "wb");
	if (!fp || fwrite(input_data, 1, input_size, fp) != input_size || fclose(fp))
		fprintf(stderr, "%s: cannot save the input to %s\n", t_fuzz_name, path);
	else
		fprintf(stderr, "%s: input saved to %s (%zu bytes)\n", t_fuzz_name, path,
			input_size);
}

#endif

/* Print the message, save the input, abort. */
void t_fuzz_fail(const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	fprintf(stderr, "%s: ", t_fuzz_name);
	vfprintf(stderr, fmt, ap);
	fprintf(stderr, "\n");
	va_end(ap);
	report_input();
	abort();
}

#ifndef PD_LIBFUZZER

/*
 * Parse -n INPUTS and -s SEED, leaving the defaults in place of those not given; returns the
 * index of the first FILE, or -1 after the usage.
 */
static int t_fuzz_args(int argc, char **argv, unsigned long *inputs, uint64_t *seed)
{
	int c;

	while ((c = getopt(argc, argv, "n:s:")) != -1) {
		if (c == 'n')
			*inputs = strtoul(optarg, NULL, 0);
		else if (c == 's')
			*seed = strtoull(optarg, NULL, 0);
		else {
			fprintf(stderr, "usage: %s [-n INPUTS] [-s SEED] [FILE...]\n", t_fuzz_name);
			return -1;
		}
	}
	return optind;
}

/*
 * Read each FILE whole into a block of its size (a read past it is an ASan error) and run it
 * through LLVMFuzzerTestOneInput(); exits 1 if one won't open.
 */
static void t_fuzz_replay_files(int argc, char **argv, int first)
{
	for (int i = first; i < argc; i++) {
		FILE *fp = fopen(argv[i], "rb");
		uint8_t *buf = NULL, *grown;
		size_t len = 0, cap = 0, got;

		if (!fp) {
			fprintf(stderr, "%s: %s: %s\n", t_fuzz_name, argv[i], strerror(errno));
			exit(1);
		}
		do {
			if (len == cap) {
				cap = cap ? 2 * cap : 65536;
				grown = realloc(buf, cap);
				if (!grown) {
					fprintf(stderr, "%s: out of memory for %s\n", t_fuzz_name,
						argv[i]);
					exit(1);
				}
				buf = grown;
			}
			got = fread(buf + len, 1, cap - len, fp);
			len += got;
		} while (got);
		fclose(fp);
		grown = realloc(buf, len ? len : 1);
		buf = grown ? grown : buf;
		LLVMFuzzerTestOneInput(buf, len);
		free(buf);
	}
}

#endif

int t_fuzz_begin(int argc, char **argv, unsigned long *inputs, uint64_t *seed)
{
	int first = t_fuzz_args(argc, argv, inputs, seed);

	if (first < 0)
		return -1;
	t_fuzz_replay_files(argc, argv, first);
	if (first < argc)
		*inputs = 0;
	return argc - first;
}
