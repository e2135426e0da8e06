/* The routing fixture (route_fixture.h). */
#include <criterion/criterion.h>
#include <stdlib.h>

#include "helpers.h"
#include "route_fixture.h"

void t_route_config(struct rt_config *cfg)
{
	rt_config_default(cfg);
	cfg->max_targets = T_ROUTE_TARGETS;
	cfg->max_requests = 256;
	cfg->max_active_blocks = 4096;
	cfg->max_prompt_blocks = 4096;
	cfg->seed = 1;
}

void t_route_open(struct t_route *t, const struct rt_config *cfg)
{
	struct pdx_config xc = {.max_targets = T_ROUTE_TARGETS, .max_readers = 4};
	struct rt_config def;
	int rc;

	if (!cfg) {
		t_route_config(&def);
		cfg = &def;
	}
	cr_assert_eq(pdx_init(&t->x, &xc), 0, "pdx_init");
	rc = rt_router_init(&t->rt, cfg, &t->x);
	cr_assert_eq(rc, 0, "rt_router_init: %d", rc);
	rc = rt_core_init(&t->core, &t->rt, 0);
	cr_assert_eq(rc, 0, "rt_core_init: %d", rc);
}

void t_route_close(struct t_route *t)
{
	rt_core_destroy(&t->core);
	rt_router_destroy(&t->rt);
	pdx_destroy(&t->x);
}

struct rt_worker_spec t_spec(const char *model, enum rt_worker_type type, uint32_t block_size)
{
	static const enum rt_model_type mt[] = {RT_MODEL_EMPTY, RT_MODEL_CHAT, RT_MODEL_CHAT};
	static const uint32_t needs[] = {RT_NEEDS_DECODE, RT_NEEDS_PREFILL, 0};

	return (struct rt_worker_spec){
	    .model = model,
	    .type = type,
	    .model_type = mt[type],
	    .needs = needs[type],
	    .block_size = block_size,
	    .kv_capacity_blocks = 1000,
	    .max_batched_tokens = 8192,
	    .dp_ranks = 1,
	};
}

uint16_t t_register(struct t_route *t, uint32_t worker, const struct rt_worker_spec *spec)
{
	char err[256];
	int rc = rt_register(&t->rt, worker, spec, err, sizeof(err));

	cr_assert_eq(rc, 0, "rt_register(worker %u): %d %s", worker, rc, err);
	rc = rt_target_find(&t->rt, worker, spec->dp_rank_start);
	cr_assert_geq(rc, 0, "rt_target_find(worker %u)", worker);
	return (uint16_t)rc;
}

void t_tokens(uint32_t *tok, size_t n, uint32_t tag)
{
	for (size_t i = 0; i < n; i++)
		tok[i] = (uint32_t)t_mix64((uint64_t)tag << 32 | i);
}

struct rt_request t_request(const struct t_route *t, const char *model, const uint32_t *tok,
			    size_t n, uint64_t now_ns)
{
	int m = rt_model_find(&t->rt, model, strlen(model));

	cr_assert_geq(m, 0, "model '%s' unknown", model);
	return (struct rt_request){
	    .model = (uint32_t)m,
	    .tokens = tok,
	    .ntokens = n,
	    .hash_seed = DP_HASH_SEED,
	    .now_ns = now_ns,
	    .pin_target = RT_NO_PIN,
	    .pin_prefill = RT_NO_PIN,
	};
}

void t_cache(struct t_route *t, uint16_t target, const uint32_t *tok, uint32_t nblocks,
	     uint32_t block_size)
{
	uint64_t *ext = t_calloc(nblocks ? nblocks : 1, sizeof(*ext));
	long rc;

	for (uint32_t i = 0; i < nblocks; i++)
		ext[i] = t_mix64(tok[i * block_size] ^ (uint64_t)i << 40) | 1;
	rc = pdx_store_tokens(&t->x, target, NULL, ext, nblocks, tok, block_size, DP_HASH_SEED);
	cr_assert_geq(rc, 0, "pdx_store_tokens(target %u, %u blocks): %ld", target, nblocks, rc);
	free(ext);
}

uint64_t t_load_blocks(const struct t_route *t, uint16_t target)
{
	uint64_t b, p;

	rt_target_load(&t->rt, target, &b, &p);
	return b;
}

uint64_t t_load_prefill(const struct t_route *t, uint16_t target)
{
	uint64_t b, p;

	rt_target_load(&t->rt, target, &b, &p);
	return p;
}
