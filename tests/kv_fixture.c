/* The KV-event intake fixture (kv_fixture.h). */
#include <criterion/criterion.h>
#include <stdlib.h>
#include <string.h>

#include "helpers.h"
#include "kv_fixture.h"

void t_kv_open(struct t_kv *s, uint32_t size, const struct rt_config *cfg)
{
	struct rt_worker_spec spec = t_spec("m", RT_AGGREGATED, T_BS);
	int rc;

	memset(s, 0, sizeof(*s));
	t_route_open(&s->t, cfg);
	spec.dp_ranks = 2;
	s->tg[0] = t_register(&s->t, T_KV_WORKER, &spec);
	rc = rt_target_find(&s->t.rt, T_KV_WORKER, 1);
	cr_assert_geq(rc, 0, "rank 1 has no target");
	s->tg[1] = (uint16_t)rc;
	cr_assert_neq(s->tg[0], s->tg[1]);
	cr_assert_eq(pdx_reader_attach(&s->t.x, &s->r), 0, "pdx_reader_attach");

	s->size = size;
	s->mem = aligned_alloc(64, shm_ring_bytes(size));
	cr_assert(s->mem, "ring of %u bytes", size);
	memset(s->mem, 0xA5, shm_ring_bytes(size)); /* no test passes on zeros */
	cr_assert_eq(shm_ring_format(s->mem, size), 0);
	cr_assert_eq(shm_ring_attach(&s->prod, s->mem, size, true), 0);
	cr_assert_eq(shm_ring_attach(&s->cons, s->mem, size, false), 0);
	ctl_kv_init(&s->k, &s->t.x, &s->t.rt, T_KV_WORKER, T_BS, &s->cons);
}

void t_kv_close(struct t_kv *s)
{
	ctl_kv_destroy(&s->k);
	pdx_reader_detach(s->r);
	t_route_close(&s->t);
	free(s->mem);
}

static struct t_rec rec_new(size_t len)
{
	return (struct t_rec){.p = t_calloc(1, len), .len = len};
}

struct t_rec t_rec_raw(size_t len)
{
	return rec_new(len);
}

void t_rec_resize(struct t_rec *r, size_t len)
{
	uint8_t *p = realloc(r->p, len ? len : 1);

	cr_assert(p, "realloc(%zu)", len);
	if (len > r->len)
		memset(p + r->len, 0, len - r->len);
	r->p = p;
	r->len = len;
}

static struct t_rec stored_head(uint32_t rank, uint64_t id, const uint64_t *parent,
				const uint64_t *ext, uint32_t n, uint8_t kind, uint32_t bs,
				size_t content)
{
	struct shm_ev_stored ev = {
	    .event_id = id,
	    .dp_rank = rank,
	    .nblocks = n,
	    .parent_ext = parent ? *parent : 0,
	    .has_parent = parent != NULL,
	    .blocks_kind = kind,
	    .block_size = bs,
	};
	struct t_rec r = rec_new(sizeof(ev) + 8 * (size_t)n + content);

	memcpy(r.p, &ev, sizeof(ev));
	if (n)
		memcpy(r.p + sizeof(ev), ext, 8 * (size_t)n);
	return r;
}

struct t_rec t_rec_stored(uint32_t rank, uint64_t id, const uint64_t *parent, const uint64_t *ext,
			  const uint64_t *local, uint32_t n)
{
	struct t_rec r =
	    stored_head(rank, id, parent, ext, n, SHM_EV_LOCAL_HASHES, 0, 8 * (size_t)n);

	if (n)
		memcpy(r.p + sizeof(struct shm_ev_stored) + 8 * (size_t)n, local, 8 * (size_t)n);
	return r;
}

struct t_rec t_rec_tokens(uint32_t rank, uint64_t id, const uint64_t *parent, const uint64_t *ext,
			  const uint32_t *tok, uint32_t n, uint32_t bs)
{
	size_t ntok = (size_t)n * bs;
	struct t_rec r = stored_head(rank, id, parent, ext, n, SHM_EV_TOKEN_IDS, bs, 4 * ntok);

	if (ntok)
		memcpy(r.p + sizeof(struct shm_ev_stored) + 8 * (size_t)n, tok, 4 * ntok);
	return r;
}

struct t_rec t_rec_removed(uint32_t rank, uint64_t id, const uint64_t *ext, uint32_t n)
{
	struct shm_ev_removed ev = {.event_id = id, .dp_rank = rank, .n = n};
	struct t_rec r = rec_new(sizeof(ev) + 8 * (size_t)n);

	memcpy(r.p, &ev, sizeof(ev));
	if (n)
		memcpy(r.p + sizeof(ev), ext, 8 * (size_t)n);
	return r;
}

struct t_rec t_rec_cleared(uint32_t rank, uint64_t id)
{
	struct shm_ev_cleared ev = {.event_id = id, .dp_rank = rank};
	struct t_rec r = rec_new(sizeof(ev));

	memcpy(r.p, &ev, sizeof(ev));
	return r;
}

struct t_rec t_rec_load(uint32_t rank, uint64_t used_blocks, uint64_t prefill_tokens)
{
	struct shm_ev_load ev = {
	    .dp_rank = rank, .used_blocks = used_blocks, .prefill_tokens = prefill_tokens};
	struct t_rec r = rec_new(sizeof(ev));

	memcpy(r.p, &ev, sizeof(ev));
	return r;
}

void t_kv_put(struct t_kv *s, uint16_t type, struct t_rec r)
{
	int err = 0;
	uint8_t *pay;

	cr_assert_leq(r.len, UINT32_MAX);
	pay = shm_ring_reserve(&s->prod, type, 0, (uint32_t)r.len, &err);
	cr_assert(pay, "reserve of a type %u record of %zu bytes: %d", type, r.len, err);
	memcpy(pay, r.p, r.len);
	shm_ring_commit(&s->prod);
	shm_ring_publish(&s->prod);
	free(r.p);
}

void t_kv_stored(struct t_kv *s, uint32_t rank, uint64_t id, const uint64_t *parent,
		 const uint64_t *ext, const uint64_t *local, uint32_t n)
{
	t_kv_put(s, SHM_EV_STORED, t_rec_stored(rank, id, parent, ext, local, n));
}

void t_kv_tokens(struct t_kv *s, uint32_t rank, uint64_t id, const uint64_t *parent,
		 const uint64_t *ext, const uint32_t *tok, uint32_t n)
{
	t_kv_put(s, SHM_EV_STORED, t_rec_tokens(rank, id, parent, ext, tok, n, T_BS));
}

void t_kv_removed(struct t_kv *s, uint32_t rank, uint64_t id, const uint64_t *ext, uint32_t n)
{
	t_kv_put(s, SHM_EV_REMOVED, t_rec_removed(rank, id, ext, n));
}

void t_kv_cleared(struct t_kv *s, uint32_t rank, uint64_t id)
{
	t_kv_put(s, SHM_EV_CLEARED, t_rec_cleared(rank, id));
}

void t_kv_load(struct t_kv *s, uint32_t rank, uint64_t used_blocks, uint64_t prefill_tokens)
{
	t_kv_put(s, SHM_EV_LOAD, t_rec_load(rank, used_blocks, prefill_tokens));
}

int t_kv_drain(struct t_kv *s)
{
	return ctl_kv_drain(&s->k, UINT32_MAX);
}

uint32_t t_kv_depth(struct t_kv *s, uint32_t rank, const uint64_t *local, size_t n)
{
	size_t k = pdx_match(s->r, local, n, s->out);
	uint32_t depth = 0;
	bool seen = false;

	cr_assert_leq(k, T_ROUTE_TARGETS);
	for (size_t i = 0; i < k; i++) {
		cr_assert_leq(s->out[i].depth, n, "depth %u of a %zu-block query", s->out[i].depth,
			      n);
		if (s->out[i].target != s->tg[rank])
			continue;
		cr_assert(!seen, "target %u answered twice", s->tg[rank]);
		seen = true;
		depth = s->out[i].depth;
	}
	return depth;
}

size_t t_kv_blocks(const struct t_kv *s, uint32_t rank)
{
	return pdx_target_blocks(&s->t.x, s->tg[rank]);
}

void t_kv_ext(uint64_t tag, size_t n, uint64_t *ext)
{
	for (size_t i = 0; i < n; i++)
		ext[i] = t_mix64(tag << 32 ^ i ^ 0x5EED) | 1;
}

void t_kv_prompt_tokens(uint32_t tag, uint32_t n, uint32_t bs, uint32_t *tok, uint64_t *local)
{
	t_tokens(tok, (size_t)n * bs, tag);
	cr_assert_eq(dp_hash_blocks(tok, (size_t)n * bs, bs, DP_HASH_SEED, local), (long)n);
}

void t_kv_expect_clean(const struct t_kv *s)
{
	const struct ctl_kv_stats *st = &s->k.stats;

	cr_expect_eq(st->duplicates, 0, "duplicates %llu", (unsigned long long)st->duplicates);
	cr_expect_eq(st->gaps, 0, "gaps %llu", (unsigned long long)st->gaps);
	cr_expect_eq(st->refused, 0, "refused %llu", (unsigned long long)st->refused);
	cr_expect_eq(st->unknown_rank, 0, "unknown_rank %llu",
		     (unsigned long long)st->unknown_rank);
	cr_expect_eq(st->unknown_type, 0, "unknown_type %llu",
		     (unsigned long long)st->unknown_type);
	cr_expect_eq(st->malformed, 0, "malformed %llu", (unsigned long long)st->malformed);
	cr_expect(!s->k.broken && !s->k.dump_wanted, "broken %d, dump_wanted %d", s->k.broken,
		  s->k.dump_wanted);
}
