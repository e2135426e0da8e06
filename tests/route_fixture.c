/* The routing fixture (route_fixture.h). */
#include <criterion/criterion.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

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

void t_open_agg(struct t_route *t, const struct rt_config *cfg, uint16_t *tg, uint32_t n)
{
	struct rt_worker_spec s = t_spec("m", RT_AGGREGATED, T_BS);

	t_route_open(t, cfg);
	for (uint32_t i = 0; i < n; i++)
		tg[i] = t_register(t, i + 1, &s);
}

struct rt_plan t_route_ok(struct t_route *t, const struct rt_request *rq)
{
	struct rt_plan plan;
	int rc = rt_route(&t->core, rq, &plan);

	cr_assert_eq(rc, 0, "rt_route: %d", rc);
	cr_assert_eq(plan.kind, RT_PLAN_AGGREGATED);
	cr_assert_eq(plan.first.load == 0, rq->peek, "load handle %#llx, peek %d",
		     (unsigned long long)plan.first.load, rq->peek);
	return plan;
}

rt_load_t t_load_on(struct t_route *t, const uint32_t *tok, size_t n, uint16_t target)
{
	struct rt_request rq = t_request(t, "m", tok, n, 0);
	struct rt_plan plan;

	rq.pin_target = target;
	plan = t_route_ok(t, &rq);
	cr_assert_eq(plan.first.target, target);
	return plan.first.load;
}

/* The candidate for @target in @core's last decision of @stage. */
static const struct rt_candidate *stage_cand(const struct rt_core *core, enum rt_stage stage,
					     int target)
{
	const struct rt_explain *ex = rt_core_explain(core, stage);

	for (uint32_t i = 0; i < ex->ncand; i++)
		if (ex->cand[i].target == target)
			return &ex->cand[i];
	cr_assert_fail("target %d is no %s candidate", target, rt_stage_name(stage));
	return NULL;
}

const struct rt_candidate *t_cand(const struct rt_core *core, uint16_t target)
{
	return stage_cand(core, RT_STAGE_AGGREGATED, target);
}

struct rt_core_stats t_core_stats(const struct rt_core *core)
{
	struct rt_core_stats st;

	rt_core_stats(core, &st);
	return st;
}

void t_expect_load(const struct t_route *t, uint16_t target, uint64_t blocks, uint64_t prefill)
{
	uint64_t b, p;

	rt_target_load(&t->rt, target, &b, &p);
	cr_assert_eq(b, blocks, "target %u: %" PRIu64 " blocks, want %" PRIu64, target, b, blocks);
	cr_assert_eq(p, prefill, "target %u: %" PRIu64 " prefill tokens, want %" PRIu64, target, p,
		     prefill);
}

void t_expect_cand(const struct t_route *t, uint16_t target, const struct t_fig *f)
{
	const struct rt_candidate *c = t_cand(&t->core, target);

	cr_assert_eq(c->overlap, f->overlap, "target %u overlap %u", target, c->overlap);
	cr_assert_eq(c->new_blocks, f->new_blocks, "target %u new %u", target, c->new_blocks);
	cr_assert_float_eq(c->prefill_blocks, f->prefill, T_EPS, "target %u prefill %g", target,
			   c->prefill_blocks);
	cr_assert_float_eq(c->decode_blocks, f->decode, T_EPS, "target %u decode %g", target,
			   c->decode_blocks);
	cr_assert_float_eq(c->cost, f->cost, T_EPS, "target %u cost %g", target, c->cost);
}

const struct t_fig t_two_a = {4, 6, 6.25, 6, 8.25}, t_two_b = {0, 3, 9.25, 6, 15.25};

void t_two_open(struct t_two *s, const struct rt_config *cfg)
{
	uint16_t tg[2];

	t_open_agg(&s->t, cfg, tg, 2);
	s->a = tg[0];
	s->b = tg[1];
	t_tokens(s->p, 100, 1);
	t_cache(&s->t, s->a, s->p, 4, T_BS);
	t_load_on(&s->t, s->p, 48, s->b); /* Q */
}

struct rt_request t_two_request(const struct t_two *s)
{
	return t_request(&s->t, "m", s->p, 100, 0);
}

const struct rt_domain t_rack1[1] = {{"rack", "r1"}};
const struct rt_domain t_rack2[1] = {{"rack", "r2"}};
const struct rt_domain t_rack3[1] = {{"rack", "r3"}};

void t_ctx_open(struct t_ctx *x, const struct rt_config *cfg, enum rt_enforcement enforcement,
		double weight)
{
	struct rt_config def;

	if (!cfg) {
		t_route_config(&def);
		cfg = &def;
	}
	def = *cfg;
	if (enforcement != RT_TRANSFER_NONE)
		def.transfer = (struct rt_transfer){"rack", enforcement, weight};
	t_route_open(&x->t, &def);
}

void t_ctx_prompt(struct t_ctx *x, uint32_t tag)
{
	t_tokens(x->tok, T_CTX_TOKENS, tag);
	x->rq = t_request(&x->t, "m", x->tok, T_CTX_TOKENS, 0);
}

int t_ctx_route(struct t_ctx *x)
{
	return rt_route(&x->t.core, &x->rq, &x->plan);
}

int t_ctx_decode(struct t_ctx *x, uint16_t prefill)
{
	return rt_route_decode(&x->t.core, &x->rq, prefill, &x->c);
}

struct rt_worker_spec t_spec_in(enum rt_worker_type type, const struct rt_domain *d, size_t nd)
{
	struct rt_worker_spec s = t_spec("m", type, T_BS);

	s.domains = d;
	s.ndomains = nd;
	return s;
}

uint16_t t_ctx_add_in(struct t_ctx *x, uint32_t worker, enum rt_worker_type type,
		      const struct rt_domain *rack)
{
	struct rt_worker_spec s = t_spec_in(type, rack, rack ? 1 : 0);

	return t_register(&x->t, worker, &s);
}

uint16_t t_ctx_add(struct t_ctx *x, uint32_t worker, enum rt_worker_type type)
{
	return t_ctx_add_in(x, worker, type, NULL);
}

const struct rt_explain *t_ctx_explain(const struct t_ctx *x, enum rt_stage stage)
{
	return rt_core_explain(&x->t.core, stage);
}

const struct rt_candidate *t_ctx_cand(const struct t_ctx *x, enum rt_stage stage, int target)
{
	return stage_cand(&x->t.core, stage, target);
}
