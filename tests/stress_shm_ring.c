/*
 * Description: a producer and a consumer thread on one shared-memory ring (shm/ring.h). The
 * producer sends records of random lengths (now and then the largest the ring takes, so it pads
 * and waits for an empty ring), each carrying its sequence number and a checksum, publishing
 * every k records; the consumer checks order, length, type, flags and bytes, releasing every j.
 * Built plain (no Criterion) so it runs under ThreadSanitizer, ASan and none.
 * Usage: stress_shm_ring [seconds]; exits 0 after "stress_shm_ring: N records, ok", 1 otherwise.
 */
#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ring.h"
#include "rng.h"
#include "stress_common.h"

#define RING_SIZE 4096u
#define MIN_LEN 16u	       /* sequence number and checksum */
#define MAX_RECORDS 20000000ul /* the producer stops after this many records ... */
#define DEFAULT_SECONDS 2.0    /* ... or this much time, whichever comes first */
#define TYPE_DATA 1u
#define TYPE_END 2u /* the last record: its payload is the number sent before it */

static void *mem;

/* Writer: whichever thread fails first. Relaxed: it only ends loops, read after joining. */
static atomic_bool stop;

#define fail(...)                                                  \
	do {                                                       \
		T_STRESS_FAIL("stress_shm_ring", __VA_ARGS__);     \
		atomic_store_explicit(&stop, true, memory_order_relaxed); \
	} while (0)

static bool stopped(void)
{
	return atomic_load_explicit(&stop, memory_order_relaxed);
}

/* The length of record @seq, known to both sides: mostly small, 1 in 64 the largest. */
static uint32_t rec_len(uint64_t seq)
{
	uint64_t h = t_mix64(seq ^ 0x1E4);

	if (h % 64 == 0)
		return shm_ring_max_payload(RING_SIZE) - (uint32_t)(h >> 32) % 8;
	if (h % 64 < 8)
		return MIN_LEN + (uint32_t)(h >> 32) % 1024;
	return MIN_LEN + (uint32_t)(h >> 32) % 200;
}

static uint8_t body_byte(uint64_t seq, uint32_t i)
{
	return (uint8_t)(t_mix64(seq * 1024 + i / 8) >> (8 * (i % 8)));
}

static uint64_t checksum(const uint8_t *p, uint32_t n)
{
	uint64_t h = 0xCBF29CE484222325ull;

	for (uint32_t i = 0; i < n; i++)
		h = (h ^ p[i]) * 0x100000001B3ull;
	return h;
}

/* ---- Producer: the main thread. ---- */

/* Room for a record, publishing and yielding while the ring is full; NULL once stopped. */
static uint8_t *reserve_wait(struct shm_ring *r, uint16_t type, uint16_t flags, uint32_t len)
{
	for (;;) {
		int err;
		uint8_t *p = shm_ring_reserve(r, type, flags, len, &err);

		if (p)
			return p;
		if (err != -ENOBUFS) {
			fail("reserve of %u bytes: %d\n", len, err);
			return NULL;
		}
		/* the consumer cannot free what it has not seen: a pad written to wrap, too */
		shm_ring_publish(r);
		if (stopped())
			return NULL;
		sched_yield();
	}
}

static void put_record(uint8_t *p, uint64_t seq, uint32_t len)
{
	uint64_t sum;

	memcpy(p, &seq, 8);
	for (uint32_t i = 8; i < len - 8; i++)
		p[i] = body_byte(seq, i);
	sum = checksum(p, len - 8);
	memcpy(p + len - 8, &sum, 8);
}

static unsigned long produce(double seconds)
{
	struct t_rng rng = {0x5EED};
	struct shm_ring r;
	double end = now_s() + seconds;
	uint32_t batch = 1, in_batch = 0;
	uint64_t seq;
	uint8_t *p;

	if (shm_ring_attach(&r, mem, RING_SIZE, true)) {
		fail("producer attach\n");
		return 0;
	}
	for (seq = 0; seq < MAX_RECORDS && !stopped(); seq++) {
		uint32_t len = rec_len(seq);

		if (seq % 1024 == 0 && now_s() > end)
			break;
		if (!(p = reserve_wait(&r, TYPE_DATA, (uint16_t)seq, len)))
			return seq;
		put_record(p, seq, len);
		shm_ring_commit(&r);
		if (++in_batch >= batch) {
			shm_ring_publish(&r);
			in_batch = 0;
			batch = 1 + t_rng_below(&rng, 16);
		}
	}
	if ((p = reserve_wait(&r, TYPE_END, 0, 8))) {
		memcpy(p, &seq, 8);
		shm_ring_commit(&r);
		shm_ring_publish(&r);
	}
	return seq;
}

/* ---- Consumer. ---- */

/* 1 when @rec is record @seq, else 0 after reporting what is wrong. */
static int check_record(const struct shm_rec *rec, uint64_t seq)
{
	uint32_t len = rec_len(seq);
	uint64_t got, sum;

	if (rec->type != TYPE_DATA || rec->flags != (uint16_t)seq || rec->len != len) {
		fail("record %lu: type %u, flags %#x, %u bytes; expected %u, %#x, %u\n",
		     (unsigned long)seq, rec->type, rec->flags, rec->len, TYPE_DATA, (uint16_t)seq,
		     len);
		return 0;
	}
	memcpy(&got, rec->payload, 8);
	memcpy(&sum, rec->payload + len - 8, 8);
	if (got != seq || sum != checksum(rec->payload, len - 8)) {
		fail("record %lu: carries %lu, checksum %s\n", (unsigned long)seq,
		     (unsigned long)got, sum != checksum(rec->payload, len - 8) ? "bad" : "ok");
		return 0;
	}
	for (uint32_t i = 8; i < len - 8; i++) {
		if (rec->payload[i] != body_byte(seq, i)) {
			fail("record %lu: byte %u\n", (unsigned long)seq, i);
			return 0;
		}
	}
	return 1;
}

static void *consumer_main(void *arg)
{
	struct t_rng rng = {0xC0E};
	struct shm_ring r;
	uint32_t every = 1, since = 0;
	uint64_t seq = 0, total;
	struct shm_rec rec;
	int rc;

	(void)arg;
	if (shm_ring_attach(&r, mem, RING_SIZE, false)) {
		fail("consumer attach\n");
		return NULL;
	}
	while (!stopped()) {
		rc = shm_ring_peek(&r, &rec);
		if (rc == -EAGAIN) {
			/* the producer may be waiting for what we skipped or consumed */
			shm_ring_release(&r);
			sched_yield();
			continue;
		}
		if (rc) {
			fail("peek after %lu records: %d\n", (unsigned long)seq, rc);
			break;
		}
		if (rec.type == TYPE_END) {
			memcpy(&total, rec.payload, 8);
			if (rec.len != 8 || total != seq)
				fail("end after %lu records says %lu\n", (unsigned long)seq,
				     (unsigned long)total);
			shm_ring_consume(&r);
			shm_ring_release(&r);
			break;
		}
		if (!check_record(&rec, seq))
			break;
		shm_ring_consume(&r);
		seq++;
		if (++since >= every) {
			shm_ring_release(&r);
			since = 0;
			every = 1 + t_rng_below(&rng, 16);
		}
	}
	return NULL;
}

int main(int argc, char **argv)
{
	double seconds = argc > 1 ? atof(argv[1]) : DEFAULT_SECONDS;
	unsigned long sent;
	pthread_t consumer;

	if (posix_memalign(&mem, 64, shm_ring_bytes(RING_SIZE)) ||
	    shm_ring_format(mem, RING_SIZE)) {
		fprintf(stderr, "stress_shm_ring: no ring\n");
		return 1;
	}
	if (pthread_create(&consumer, NULL, consumer_main, NULL)) {
		fprintf(stderr, "stress_shm_ring: cannot start the consumer\n");
		return 1;
	}
	sent = produce(seconds);
	pthread_join(consumer, NULL);
	free(mem);
	if (t_stress_failed()) {
		fprintf(stderr, "stress_shm_ring: %u failures\n",
			t_stress_failed());
		return 1;
	}
	printf("stress_shm_ring: %lu records, ok\n", sent);
	return 0;
}
