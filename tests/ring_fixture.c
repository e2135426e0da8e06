/* The ring fixture (ring_fixture.h). */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include <criterion/criterion.h>

#include "ring_fixture.h"
#include "rng.h"

void *t_mem;
struct shm_ring t_prod, t_cons;

void t_ring_free(void)
{
	free(t_mem);
	t_mem = NULL;
}

struct shm_ring_shared *t_ring_sh(void)
{
	return t_mem;
}

void t_ring_new(uint32_t size)
{
	cr_assert_eq(posix_memalign(&t_mem, 64, shm_ring_bytes(size)), 0);
	memset(t_mem, 0xA5, shm_ring_bytes(size));
	cr_assert_eq(shm_ring_format(t_mem, size), 0);
}

void t_ring_set(uint32_t head, uint32_t tail)
{
	atomic_store_explicit(&t_ring_sh()->head, head, memory_order_relaxed);
	atomic_store_explicit(&t_ring_sh()->tail, tail, memory_order_relaxed);
}

void t_ring_attach_both(uint32_t size)
{
	cr_assert_eq(shm_ring_attach(&t_prod, t_mem, size, true), 0);
	cr_assert_eq(shm_ring_attach(&t_cons, t_mem, size, false), 0);
}

uint32_t t_ring_load_head(void)
{
	return atomic_load_explicit(&t_ring_sh()->head, memory_order_relaxed);
}

uint8_t t_ring_pattern(uint64_t seed, uint32_t i)
{
	return (uint8_t)(t_mix64(seed + i / 8) >> (8 * (i % 8)));
}

uint8_t *t_ring_try_push(uint16_t type, uint16_t flags, uint32_t len, uint64_t seed)
{
	int err = 1;
	uint8_t *p = shm_ring_reserve(&t_prod, type, flags, len, &err);

	if (!p) {
		cr_assert_eq(err, -ENOBUFS, "reserve of %u bytes: %d", len, err);
		return NULL;
	}
	cr_assert_eq(err, 0);
	cr_assert_eq((uintptr_t)p % 8, 0, "payload at %p", (void *)p);
	cr_assert(p >= t_prod.data + SHM_REC_HDR && p + len <= t_prod.data + t_prod.size);
	for (uint32_t i = 0; i < len; i++)
		p[i] = t_ring_pattern(seed, i);
	shm_ring_commit(&t_prod);
	return p;
}

uint8_t *t_ring_push(uint16_t type, uint16_t flags, uint32_t len, uint64_t seed)
{
	uint8_t *p = t_ring_try_push(type, flags, len, seed);

	cr_assert_not_null(p, "reserve of %u bytes: -ENOBUFS", len);
	return p;
}

int t_ring_reserve_err(uint16_t type, uint32_t len)
{
	int err = 0;

	cr_assert_null(shm_ring_reserve(&t_prod, type, 0, len, &err), "reserve of %u fit", len);
	return err;
}

const uint8_t *t_ring_pop(uint16_t type, uint16_t flags, uint32_t len, uint64_t seed)
{
	struct shm_rec rec;
	int rc = shm_ring_peek(&t_cons, &rec);

	cr_assert_eq(rc, 0, "peek: %d, expected a record of %u bytes", rc, len);
	cr_assert_eq(rec.type, type);
	cr_assert_eq(rec.flags, flags);
	cr_assert_eq(rec.len, len);
	cr_assert_eq((uintptr_t)rec.payload % 8, 0, "payload at %p", (const void *)rec.payload);
	cr_assert(rec.payload >= t_cons.data + SHM_REC_HDR &&
		  rec.payload + len <= t_cons.data + t_cons.size);
	for (uint32_t i = 0; i < len; i++)
		cr_assert_eq(rec.payload[i], t_ring_pattern(seed, i), "len %u, byte %u", len, i);
	shm_ring_consume(&t_cons);
	return rec.payload;
}

int t_ring_peek(void)
{
	struct shm_rec rec;

	return shm_ring_peek(&t_cons, &rec);
}
