/*
 * pdbench mailbox: the hand-off between the router and a worker over one lane ring
 * (shm/ring.h), between two threads and between two processes, each pinned to its own CPU.
 * One-way latency: the producer stamps a record with the monotonic clock and waits until it
 * has been taken before sending the next, so each sample is one hand-off on an idle ring; the
 * consumer spins and subtracts. Throughput: the producer streams small records, publishing in
 * batches, and the consumer releases in batches, as the router and the SDK do.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <pthread.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include "bench.h"
#include "ring.h"

#define BM_BATCH 32u /* records per publish and per release in the throughput run */

static const char usage[] =
	"usage: pdbench mailbox [--mode threads|processes|both] [--samples N] [--records N]\n"
	"                       [--payload B] [--ring-bytes B] [--cpus A,B] [--json]\n"
	"\n"
	"Hands records from a producer to a consumer over one shared-memory lane ring, between\n"
	"two threads and between two processes, each side pinned to its own CPU (default 0 and\n"
	"1). Reports one-way latency (each record stamped with CLOCK_MONOTONIC, sent on an idle\n"
	"ring) and throughput (records streamed, published and released in batches of 32).\n"
	"\n"
	"  -m, --mode M        threads, processes or both (default both)\n"
	"  -n, --samples N     latency samples (default 200000)\n"
	"  -r, --records N     records in the throughput run (default 20000000)\n"
	"  -p, --payload B     payload bytes of a throughput record, 8..4096 (default 16)\n"
	"  -R, --ring-bytes B  ring size, a power of two (default 65536)\n"
	"  -c, --cpus A,B      producer and consumer CPUs (default 0,1)\n"
	"  -j, --json          one JSON object per mode, one per line\n"
	"  -h, --help          this text\n";

struct bm_opts {
	uint32_t samples, records, payload, ring_bytes;
	int cpu[2];
	bool threads, processes, json;
};

/* What both sides share: the ring, a start flag and the consumer's results. */
struct bm_shared {
	alignas(64) _Atomic uint32_t ready; /* consumers attached */
	alignas(64) _Atomic uint64_t consumer_ns; /* throughput: consumer's first to last record */
	_Atomic uint32_t errors;
	uint64_t *lat; /* [samples], in the same mapping */
	struct shm_ring_shared *ring;
};

static int bm_pin(int cpu)
{
	cpu_set_t set;

	CPU_ZERO(&set);
	CPU_SET(cpu, &set);
	return sched_setaffinity(0, sizeof(set), &set) ? -errno : 0;
}

/* Producer, latency run: one stamped record at a time, each taken before the next. */
static int bm_produce_latency(struct shm_ring *r, uint32_t samples)
{
	for (uint32_t i = 0; i < samples; i++) {
		uint64_t *p;
		int err;

		while (!(p = shm_ring_reserve(r, 1, 0, sizeof(uint64_t), &err)))
			if (err != -ENOBUFS)
				return err;
		*p = dp_now_ns();
		shm_ring_commit(r);
		shm_ring_publish(r);
		do { /* wait until it was taken: the next sample starts from an idle ring */
			if (shm_ring_refresh_tail(r))
				return -EBADMSG;
		} while (r->remote != r->published);
	}
	return 0;
}

static int bm_consume_latency(struct shm_ring *r, uint32_t samples, uint64_t *lat)
{
	struct shm_rec rec;

	for (uint32_t i = 0; i < samples; i++) {
		int rc;
		uint64_t sent;

		while ((rc = shm_ring_peek(r, &rec)) == -EAGAIN)
			;
		if (rc || rec.len != sizeof(uint64_t))
			return rc ? rc : -EBADMSG;
		memcpy(&sent, rec.payload, sizeof(sent));
		lat[i] = dp_now_ns() - sent;
		shm_ring_consume(r);
		shm_ring_release(r);
	}
	return 0;
}

/* Producer, throughput run: records carry their index so the consumer can check the order. */
static int bm_produce_stream(struct shm_ring *r, uint32_t records, uint32_t payload)
{
	for (uint32_t i = 0; i < records; i++) {
		uint8_t *p;
		int err;

		while (!(p = shm_ring_reserve(r, 1, 0, payload, &err))) {
			if (err != -ENOBUFS)
				return err;
			shm_ring_publish(r); /* full: let the consumer see what is there */
		}
		memcpy(p, &i, sizeof(i));
		shm_ring_commit(r);
		if (i % BM_BATCH == BM_BATCH - 1)
			shm_ring_publish(r);
	}
	shm_ring_publish(r);
	return 0;
}

static int bm_consume_stream(struct shm_ring *r, uint32_t records, uint32_t payload,
			     uint64_t *ns)
{
	struct shm_rec rec;
	uint64_t t0 = 0;

	for (uint32_t i = 0; i < records; i++) {
		uint32_t seq;
		int rc;

		while ((rc = shm_ring_peek(r, &rec)) == -EAGAIN)
			shm_ring_release(r); /* idle: hand the space back now */
		if (rc || rec.len != payload)
			return rc ? rc : -EBADMSG;
		if (i == 0)
			t0 = dp_now_ns();
		memcpy(&seq, rec.payload, sizeof(seq));
		if (seq != i)
			return -EBADMSG;
		shm_ring_consume(r);
		if (i % BM_BATCH == BM_BATCH - 1)
			shm_ring_release(r);
	}
	shm_ring_release(r);
	*ns = dp_now_ns() - t0;
	return 0;
}

/* One side of both runs, on its own CPU. */
static int bm_side(const struct bm_opts *o, struct bm_shared *sh, bool producer)
{
	struct shm_ring r;
	uint64_t ns = 0;
	int rc = bm_pin(o->cpu[producer ? 0 : 1]);

	if (!rc)
		rc = shm_ring_attach(&r, sh->ring, o->ring_bytes, producer);
	if (rc)
		return rc;
	if (!producer) /* release: the consumer's handle is set up before the producer starts */
		atomic_store_explicit(&sh->ready, 1, memory_order_release);
	else
		while (!atomic_load_explicit(&sh->ready, memory_order_acquire))
			;
	rc = producer ? bm_produce_latency(&r, o->samples)
		      : bm_consume_latency(&r, o->samples, sh->lat);
	if (!rc)
		rc = producer ? bm_produce_stream(&r, o->records, o->payload)
			      : bm_consume_stream(&r, o->records, o->payload, &ns);
	if (!producer)
		atomic_store_explicit(&sh->consumer_ns, ns, memory_order_relaxed);
	return rc;
}

struct bm_thread_arg {
	const struct bm_opts *o;
	struct bm_shared *sh;
};

static void *bm_consumer_thread(void *arg)
{
	struct bm_thread_arg *a = arg;

	if (bm_side(a->o, a->sh, false))
		atomic_fetch_add_explicit(&a->sh->errors, 1, memory_order_relaxed);
	return NULL;
}

/* Run both sides in @mode over @sh; returns 0 or a negative errno. */
static int bm_run(const struct bm_opts *o, struct bm_shared *sh, bool processes)
{
	struct bm_thread_arg arg = {o, sh};
	pthread_t th;
	pid_t pid = 0;
	int rc, status;

	shm_ring_format(sh->ring, o->ring_bytes);
	atomic_store_explicit(&sh->ready, 0, memory_order_relaxed);
	atomic_store_explicit(&sh->errors, 0, memory_order_relaxed);
	if (processes) {
		pid = fork();
		if (pid < 0)
			return -errno;
		if (pid == 0)
			_exit(bm_side(o, sh, false) ? 1 : 0);
	} else if ((rc = pthread_create(&th, NULL, bm_consumer_thread, &arg))) {
		return -rc;
	}
	rc = bm_side(o, sh, true);
	if (processes) {
		if (waitpid(pid, &status, 0) < 0 || !WIFEXITED(status) || WEXITSTATUS(status))
			rc = rc ? rc : -EBADMSG;
	} else {
		pthread_join(th, NULL);
	}
	if (!rc && atomic_load_explicit(&sh->errors, memory_order_relaxed))
		rc = -EBADMSG;
	return rc;
}

static void bm_report(const struct bm_opts *o, const char *mode, struct bm_shared *sh)
{
	uint64_t ns = atomic_load_explicit(&sh->consumer_ns, memory_order_relaxed);
	double rate = ns ? (double)o->records * 1e9 / (double)ns : 0.0;
	uint64_t p50, p99, p999;

	bench_sort_u64(sh->lat, o->samples);
	p50 = bench_pct(sh->lat, o->samples, 500);
	p99 = bench_pct(sh->lat, o->samples, 990);
	p999 = bench_pct(sh->lat, o->samples, 999);
	if (o->json)
		printf("{\"mode\":\"%s\",\"cpus\":[%d,%d],\"ring_bytes\":%" PRIu32
		       ",\"samples\":%" PRIu32 ",\"oneway_p50_ns\":%" PRIu64 ",\"oneway_p99_ns\":%" PRIu64
		       ",\"oneway_p999_ns\":%" PRIu64 ",\"oneway_max_ns\":%" PRIu64
		       ",\"records\":%" PRIu32 ",\"payload_bytes\":%" PRIu32
		       ",\"records_per_s\":%.0f,\"gb_per_s\":%.2f}\n",
		       mode, o->cpu[0], o->cpu[1], o->ring_bytes, o->samples, p50, p99, p999,
		       sh->lat[o->samples - 1], o->records, o->payload, rate,
		       rate * shm_rec_space(o->payload) / 1e9);
	else
		printf("%-9s %8.0f %8.0f %9.0f %14.0f  (%u-byte payloads, cpus %d,%d)\n", mode,
		       (double)p50, (double)p99, (double)p999, rate, o->payload, o->cpu[0],
		       o->cpu[1]);
	fflush(stdout);
}

static int bm_parse_cpus(const char *s, int *cpu)
{
	char tail;

	if (sscanf(s, "%d,%d%c", &cpu[0], &cpu[1], &tail) != 2 || cpu[0] < 0 || cpu[1] < 0 ||
	    cpu[0] >= CPU_SETSIZE || cpu[1] >= CPU_SETSIZE) {
		fprintf(stderr, "pdbench mailbox: --cpus wants two CPU numbers A,B, not '%s'\n", s);
		return -EINVAL;
	}
	return 0;
}

static int bm_parse(int argc, char **argv, struct bm_opts *o)
{
	static const struct option longopts[] = {
		{"mode", required_argument, NULL, 'm'},
		{"samples", required_argument, NULL, 'n'},
		{"records", required_argument, NULL, 'r'},
		{"payload", required_argument, NULL, 'p'},
		{"ring-bytes", required_argument, NULL, 'R'},
		{"cpus", required_argument, NULL, 'c'},
		{"json", no_argument, NULL, 'j'},
		{"help", no_argument, NULL, 'h'},
		{0},
	};
	int c;

	while ((c = getopt_long(argc, argv, "m:n:r:p:R:c:jh", longopts, NULL)) != -1) {
		int err = 0;

		switch (c) {
		case 'm':
			o->threads = !strcmp(optarg, "threads") || !strcmp(optarg, "both");
			o->processes = !strcmp(optarg, "processes") || !strcmp(optarg, "both");
			if (!o->threads && !o->processes) {
				fprintf(stderr, "pdbench mailbox: --mode is threads, processes or "
						"both, not '%s'\n", optarg);
				err = -EINVAL;
			}
			break;
		case 'n':
			err = bench_parse_u32("samples", optarg, 1, 1u << 26, &o->samples);
			break;
		case 'r':
			err = bench_parse_u32("records", optarg, 1, UINT32_MAX, &o->records);
			break;
		case 'p':
			err = bench_parse_u32("payload", optarg, 8, 4096, &o->payload);
			break;
		case 'R':
			err = bench_parse_u32("ring-bytes", optarg, 4096, SHM_RING_MAX,
					      &o->ring_bytes);
			if (!err && (o->ring_bytes & (o->ring_bytes - 1))) {
				fprintf(stderr, "pdbench mailbox: --ring-bytes must be a power of two\n");
				err = -EINVAL;
			}
			break;
		case 'c':
			err = bm_parse_cpus(optarg, o->cpu);
			break;
		case 'j':
			o->json = true;
			break;
		case 'h':
			fputs(usage, stdout);
			return 1;
		default:
			fputs(usage, stderr);
			return -1;
		}
		if (err)
			return -1;
	}
	if (optind != argc) {
		fprintf(stderr, "pdbench mailbox: unexpected argument '%s'\n", argv[optind]);
		return -1;
	}
	return 0;
}

int bench_mailbox_main(int argc, char **argv)
{
	struct bm_opts o = {.samples = 200000, .records = 20000000, .payload = 16,
			    .ring_bytes = 65536, .cpu = {0, 1}, .threads = true,
			    .processes = true};
	int rc = bm_parse(argc, argv, &o);
	size_t bytes;
	struct bm_shared *sh;

	if (rc)
		return rc > 0 ? BENCH_OK : BENCH_USAGE;
	/* One shared mapping: the header, the ring, the latency samples. */
	bytes = 4096 + shm_ring_bytes(o.ring_bytes) + (size_t)o.samples * sizeof(uint64_t);
	sh = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	if (sh == MAP_FAILED) {
		fprintf(stderr, "pdbench mailbox: mmap: %s\n", strerror(errno));
		return BENCH_FAILED;
	}
	sh->ring = (struct shm_ring_shared *)((char *)sh + 4096);
	sh->lat = (uint64_t *)((char *)sh->ring + shm_ring_bytes(o.ring_bytes));
	if (!o.json)
		printf("pdbench mailbox  one-way ns: p50      p99    p99.9      records/s\n");
	for (int processes = 0; processes <= 1 && rc == 0; processes++) {
		if (!(processes ? o.processes : o.threads))
			continue;
		rc = bm_run(&o, sh, processes);
		if (rc)
			fprintf(stderr, "pdbench mailbox: %s run failed: %s\n",
				processes ? "processes" : "threads", strerror(-rc));
		else
			bm_report(&o, processes ? "processes" : "threads", sh);
	}
	munmap(sh, bytes);
	return rc ? BENCH_FAILED : BENCH_OK;
}
