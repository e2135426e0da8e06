/*
 * The registry behind routing: the configuration, models and their three pools, workers and
 * their routing targets (one per DP rank); topology names live in route_topology.c.
 * Control thread only; cores read it between registrations (route_pvt.h says who writes what).
 */
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "hash.h"
#include "route.h"
#include "refuse.h"

#define RT_DEFAULT_MODELS 64u
#define RT_DEFAULT_REQUESTS 16384u
#define RT_DEFAULT_ACTIVE_BLOCKS (1u << 18)

void rt_policy_default(struct rt_policy *p)
{
	*p = (struct rt_policy){
	    .overlap_score_credit = 1.0,
	    .prefill_load_scale = 1.0,
	    .temperature = 0.0,
	    .assume_kv_reuse = true,
	    .track_active_blocks = true,
	    .track_prefill_tokens = true,
	};
}

bool rt_policy_ok(const struct rt_policy *p)
{
	/* Written so that NaN fails too; a negative credit or scale would reward load. */
	return p->overlap_score_credit >= 0.0 && isfinite(p->overlap_score_credit) &&
	       p->prefill_load_scale >= 0.0 && isfinite(p->prefill_load_scale) &&
	       p->temperature >= 0.0 && isfinite(p->temperature);
}

void rt_config_default(struct rt_config *cfg)
{
	*cfg = (struct rt_config){.expiry_ns = RT_DEFAULT_EXPIRY_NS};
	rt_policy_default(&cfg->policy);
}

/* Fill the zeros of @cfg with defaults; -EINVAL for a value out of range. */
static int config_check(struct rt_config *cfg, const struct pdx *index)
{
	if (!cfg->max_targets)
		cfg->max_targets = index->max_targets;
	if (!cfg->max_models)
		cfg->max_models = RT_DEFAULT_MODELS;
	if (!cfg->cores)
		cfg->cores = 1;
	if (!cfg->max_requests)
		cfg->max_requests = RT_DEFAULT_REQUESTS;
	if (!cfg->max_active_blocks)
		cfg->max_active_blocks = RT_DEFAULT_ACTIVE_BLOCKS;
	if (!cfg->max_inflight_blocks)
		cfg->max_inflight_blocks = 4 * cfg->max_active_blocks < RT_INFLIGHT_BLOCKS_LIMIT
						   ? 4 * cfg->max_active_blocks
						   : RT_INFLIGHT_BLOCKS_LIMIT;
	if (!cfg->expiry_ns)
		cfg->expiry_ns = RT_DEFAULT_EXPIRY_NS;
	if (!cfg->max_prompt_blocks)
		cfg->max_prompt_blocks = PDX_MATCH_MAX_BLOCKS;
	if (cfg->max_targets > index->max_targets || cfg->cores > RT_CORES_LIMIT ||
	    cfg->max_prompt_blocks > PDX_MATCH_MAX_BLOCKS || cfg->max_models > UINT16_MAX ||
	    cfg->max_requests >= RT_NIL || cfg->max_active_blocks > RT_ACTIVE_BLOCKS_LIMIT ||
	    cfg->max_inflight_blocks > RT_INFLIGHT_BLOCKS_LIMIT)
		return -EINVAL;
	if (!(cfg->busy_kv_fraction >= 0.0) || !rt_policy_ok(&cfg->policy) ||
	    (unsigned)cfg->policy_kind >= RT_POLICY_KINDS)
		return -EINVAL;
	return 0;
}

int rt_router_init(struct rt_router *rt, const struct rt_config *cfg, struct pdx *index)
{
	int rc;

	memset(rt, 0, sizeof(*rt));
	if (cfg)
		rt->cfg = *cfg;
	else
		rt_config_default(&rt->cfg);
	rc = config_check(&rt->cfg, index);
	if (rc)
		return rc;
	rt->index = index;
	rt->target = calloc(rt->cfg.max_targets, sizeof(*rt->target));
	rt->worker = calloc(rt->cfg.max_targets, sizeof(*rt->worker));
	rt->model = calloc(rt->cfg.max_models, sizeof(*rt->model));
	rt->domain_value = calloc(RT_DOMAIN_VALUES, sizeof(*rt->domain_value));
	rt->domain_value_key = calloc(RT_DOMAIN_VALUES, 1);
	rt->gone_seq = calloc((size_t)rt->cfg.max_targets * rt->cfg.cores, sizeof(uint64_t));
	rc = -ENOMEM;
	if (rt->target && rt->worker && rt->model && rt->domain_value && rt->domain_value_key &&
	    rt->gone_seq)
		rc = rt_rule_resolve(rt, &rt->cfg.transfer, &rt->rule, NULL, 0);
	rt->cfg.transfer.domain = NULL; /* resolved into rt->rule; the string stays the caller's */
	if (rc)
		rt_router_destroy(rt);
	return rc;
}

void rt_router_destroy(struct rt_router *rt)
{
	for (uint32_t m = 0; rt->model && m < rt->nmodels; m++) {
		free(rt->model[m].name);
		for (int p = 0; p < RT_WORKER_TYPES; p++)
			free(rt->model[m].pool[p].targets);
	}
	for (uint32_t w = 0; rt->worker && w < rt->nworkers; w++)
		free(rt->worker[w].targets);
	for (uint32_t i = 0; i < rt->ndomain_keys; i++)
		free(rt->domain_key[i]);
	for (uint32_t i = 0; i < rt->ndomain_values; i++)
		free(rt->domain_value[i]);
	free(rt->domain_value);
	free(rt->domain_value_key);
	free(rt->gone_seq);
	free(rt->model);
	free(rt->worker);
	free(rt->target);
	memset(rt, 0, sizeof(*rt));
}

int rt_model_find(const struct rt_router *rt, const char *name, size_t len)
{
	/* A7: see each model's name before its id; pairs with R7 in model_intern(). */
	uint32_t n = atomic_load_explicit(&rt->nmodels, memory_order_acquire);

	for (uint32_t m = 0; m < n; m++)
		if (rt->model[m].len == len && memcmp(rt->model[m].name, name, len) == 0)
			return (int)m;
	return -ENOENT;
}

/* Model @name, created with empty pools on first use. Models keep their id forever. */
static int model_intern(struct rt_router *rt, const char *name)
{
	size_t len = strlen(name);
	int m = rt_model_find(rt, name, len);
	uint32_t n = atomic_load_explicit(&rt->nmodels, memory_order_relaxed); /* our own */
	struct rt_model *md;

	if (m >= 0)
		return m;
	if (n == rt->cfg.max_models)
		return -ENOSPC;
	md = &rt->model[n];
	md->name = strdup(name);
	if (!md->name)
		return -ENOMEM;
	md->len = len;
	for (int p = 0; p < RT_WORKER_TYPES; p++) {
		md->pool[p].targets = calloc(rt->cfg.max_targets, sizeof(*md->pool[p].targets));
		if (!md->pool[p].targets) {
			for (int q = 0; q <= p; q++)
				free(md->pool[q].targets);
			free(md->name);
			memset(md, 0, sizeof(*md));
			return -ENOMEM;
		}
	}
	/* R7: the model's name and pools before the count that lets cores see it. */
	atomic_store_explicit(&rt->nmodels, n + 1, memory_order_release);
	return (int)n;
}

static struct rt_worker *worker_find(const struct rt_router *rt, uint32_t id)
{
	for (uint32_t w = 0; w < rt->nworkers; w++)
		if ((rt->worker[w].live || rt->worker[w].draining) && rt->worker[w].id == id)
			return &rt->worker[w];
	return NULL;
}

static struct rt_worker *worker_slot(struct rt_router *rt)
{
	for (uint32_t w = 0; w < rt->nworkers; w++)
		if (!rt->worker[w].live && !rt->worker[w].draining)
			return &rt->worker[w];
	return rt->nworkers < rt->cfg.max_targets ? &rt->worker[rt->nworkers++] : NULL;
}

int rt_target_find(const struct rt_router *rt, uint32_t worker, uint32_t dp_rank)
{
	const struct rt_worker *w = worker_find(rt, worker);

	if (!w || !w->live)
		return -ENOENT;
	for (uint16_t i = 0; i < w->ntargets; i++)
		if (rt->target[w->targets[i]].dp_rank == dp_rank)
			return w->targets[i];
	return -ENOENT;
}

bool rt_disagg_active(const struct rt_router *rt, uint32_t model)
{
	const struct rt_model *md;

	if (model >= atomic_load_explicit(&rt->nmodels, memory_order_acquire)) /* A7 */
		return false;
	md = &rt->model[model];
	return rt_pool_size(&md->pool[RT_PREFILL]) > 0 &&
	       rt_pool_size(&md->pool[RT_DECODE]) + rt_pool_size(&md->pool[RT_AGGREGATED]) > 0;
}

int rt_target_info(const struct rt_router *rt, uint16_t target, struct rt_target_info *out)
{
	const struct rt_target *tg;

	if (target >= rt->cfg.max_targets)
		return -ENOENT;
	tg = &rt->target[target];
	if (atomic_load_explicit(&tg->state, memory_order_relaxed) != RT_TARGET_LIVE)
		return -ENOENT;
	*out = (struct rt_target_info){
		.worker = tg->worker, .dp_rank = tg->dp_rank, .model = rt->model[tg->model].name,
		.type = (enum rt_worker_type)tg->type, .block_size = tg->block_size,
		.kv_capacity_blocks = tg->kv_capacity_blocks,
		.reported_used_blocks = atomic_load_explicit(&tg->reported_used_blocks,
							     memory_order_relaxed),
		.reported_prefill_tokens = atomic_load_explicit(&tg->reported_prefill_tokens,
								memory_order_relaxed)};
	for (uint32_t k = 0; k < rt->ndomain_keys; k++)
		if (tg->domain[k])
			out->domains[out->ndomains++] = (struct rt_domain){
				rt->domain_key[k], rt->domain_value[tg->domain[k] - 1]};
	return 0;
}

uint32_t rt_model_count(const struct rt_router *rt)
{
	return atomic_load_explicit(&rt->nmodels, memory_order_acquire); /* A7 */
}

const char *rt_model_info(const struct rt_router *rt, uint32_t model,
			  uint32_t pool_size[RT_WORKER_TYPES])
{
	if (model >= rt_model_count(rt))
		return NULL;
	for (int p = 0; p < RT_WORKER_TYPES; p++)
		pool_size[p] = rt_pool_size(&rt->model[model].pool[p]);
	return rt->model[model].name;
}

const char *rt_worker_type_name(enum rt_worker_type type)
{
	static const char *const name[RT_WORKER_TYPES] = {"prefill", "decode", "aggregated"};

	return (unsigned)type < RT_WORKER_TYPES ? name[type] : "unknown";
}

/* The needs and model type each worker type must register with (routing-semantics §5). */
static int spec_check_roles(const struct rt_worker_spec *s, char *err, size_t errlen)
{
	static const uint32_t needs[RT_WORKER_TYPES] = {
	    [RT_PREFILL] = RT_NEEDS_DECODE, [RT_DECODE] = RT_NEEDS_PREFILL, [RT_AGGREGATED] = 0};
	if ((unsigned)s->type >= RT_WORKER_TYPES)
		return dp_refuse(err, errlen, -EINVAL, "worker type %d unknown", (int)s->type);
	if ((unsigned)s->model_type > RT_MODEL_EMPTY)
		return dp_refuse(err, errlen, -EINVAL, "model type %d unknown", (int)s->model_type);
	if ((s->type == RT_PREFILL) != (s->model_type == RT_MODEL_EMPTY))
		return dp_refuse(err, errlen, -EINVAL,
			      "a %s worker must register model type %s", rt_worker_type_name(s->type),
			      s->type == RT_PREFILL ? "empty" : "chat or completions");
	if (s->needs != needs[s->type])
		return dp_refuse(err, errlen, -EINVAL, "a %s worker needs %s, not needs=%u",
			      rt_worker_type_name(s->type),
			      s->type == RT_PREFILL ? "decode"
			      : s->type == RT_DECODE ? "prefill"
						     : "nothing",
			      s->needs);
	return 0;
}

static int spec_check(const struct rt_router *rt, const struct rt_worker_spec *s, char *err,
		      size_t errlen)
{
	int rc;

	if (!rt_name_ok(s->model))
		return dp_refuse(err, errlen, -EINVAL, "model name empty or longer than %u bytes",
			      RT_NAME_MAX);
	rc = spec_check_roles(s, err, errlen);
	if (rc)
		return rc;
	if (!dp_hash_block_size_ok(s->block_size))
		return dp_refuse(err, errlen, -EINVAL,
			      "block size %u is not a power of two in [1, %u]", s->block_size,
			      DP_HASH_MAX_BLOCK);
	if (!s->kv_capacity_blocks || !s->max_batched_tokens)
		return dp_refuse(err, errlen, -EINVAL, "KV capacity and max batched tokens must be > 0");
	if (!s->dp_ranks || s->dp_ranks > rt->cfg.max_targets ||
	    s->dp_rank_start > UINT32_MAX - s->dp_ranks)
		return dp_refuse(err, errlen, -EINVAL, "DP rank range %u+%u invalid", s->dp_rank_start,
			      s->dp_ranks);
	if (s->ndomains > RT_DOMAIN_KEYS || (s->ndomains && !s->domains))
		return dp_refuse(err, errlen, -EINVAL, "more than %u topology domains", RT_DOMAIN_KEYS);
	if ((rc = rt_transfer_check(&s->transfer, err, errlen)))
		return rc;
	for (size_t i = 0; i < s->ndomains; i++) {
		if (!rt_name_ok(s->domains[i].name) || !rt_name_ok(s->domains[i].value))
			return dp_refuse(err, errlen, -EINVAL,
				      "topology domain %zu: name or value empty or too long", i);
		for (size_t j = 0; j < i; j++)
			if (strcmp(s->domains[i].name, s->domains[j].name) == 0)
				return dp_refuse(err, errlen, -EINVAL, "topology domain '%s' given twice",
					      s->domains[i].name);
	}
	return 0;
}

/*
 * Refuse a block size that differs from the pool's: it would give zero overlap forever. Decode
 * and aggregated workers serve one stage together, so their two pools share one block size.
 */
static int pool_check(const struct rt_router *rt, int model, const struct rt_worker_spec *s,
		      char *err, size_t errlen)
{
	const struct rt_model *md = &rt->model[model];

	for (int p = RT_PREFILL; p <= RT_AGGREGATED; p++) {
		const struct rt_pool *pool = &md->pool[p];

		if ((p == RT_PREFILL) != (s->type == RT_PREFILL) || !rt_pool_size(pool) ||
		    rt_pool_block_size(pool) == s->block_size)
			continue;
		return dp_refuse(err, errlen, -EINVAL,
			      "block size %u differs from the %u of the %s pool of model '%s'",
			      s->block_size, rt_pool_block_size(pool),
			      p == RT_PREFILL ? "prefill" : "decode/aggregated", s->model);
	}
	return 0;
}

/*
 * Has every core finished the decision it was in when target @t left its pool? Until then a
 * core may still be reading @t's fields, so they must not change.
 */
static bool grace_over(const struct rt_router *rt, uint16_t t)
{
	const uint64_t *gone = &rt->gone_seq[(size_t)t * rt->cfg.cores];

	for (uint32_t k = 0; k < rt->cfg.cores; k++) {
		/* A6: the core's reads of that decision are done; pairs with R6 in finish(). */
		struct rt_share *share = rt_core_share(rt, k);

		if ((gone[k] & 1) && share &&
		    atomic_load_explicit(&share->decision, memory_order_acquire) == gone[k])
			return false;
	}
	return true;
}

/* Note, for each core, the decision it is in as targets leave their pools (grace_over()). */
static void note_departure(struct rt_router *rt, const uint16_t *ids, uint32_t n)
{
	/* F6: the pools' new contents before we look at the cores; pairs with F5 in
	 * request_begin(): a core that began after this sees the target gone, and one that
	 * began before shows an odd count here. */
	atomic_thread_fence(memory_order_seq_cst);
	for (uint32_t k = 0; k < rt->cfg.cores; k++) {
		struct rt_share *share = rt_core_share(rt, k);
		uint64_t d = share ? atomic_load_explicit(&share->decision, memory_order_acquire) : 0;

		for (uint32_t i = 0; i < n; i++)
			rt->gone_seq[(size_t)ids[i] * rt->cfg.cores + k] = d;
	}
}

/* Reserve @n free target ids into @ids, starting after the last id handed out. */
static int targets_reserve(struct rt_router *rt, uint32_t n, uint16_t *ids)
{
	uint32_t max = rt->cfg.max_targets, got = 0;
	struct rt_shares shares;

	rt_shares_get(rt, &shares);
	for (uint32_t i = 0; i < max && got < n; i++) {
		uint32_t t = (rt->target_cursor + i) % max;

		uint64_t blocks, prefill_tokens;

		/* Relaxed: we are the state's writer. */
		if (atomic_load_explicit(&rt->target[t].state, memory_order_relaxed) !=
			RT_TARGET_FREE ||
		    !grace_over(rt, (uint16_t)t))
			continue;
		/* An id whose last worker left with requests in flight keeps them, and their
		 * load, until they end or are swept: a new worker must not inherit either, and a
		 * request may still read the old worker's fields by the id (its decode stage). */
		rt_shares_sum(&shares, (uint16_t)t, &blocks, &prefill_tokens);
		if (!blocks && !prefill_tokens && !rt_shares_inflight(&shares, (uint16_t)t))
			ids[got++] = (uint16_t)t;
	}
	if (got < n)
		return -ENOSPC;
	rt->target_cursor = (ids[n - 1] + 1u) % max;
	return 0;
}

/* Fill target @t for DP rank @rank of @s; its model is set by the caller. */
static int target_setup(struct rt_router *rt, uint16_t t, uint32_t worker, uint32_t rank,
			const struct rt_worker_spec *s, const struct rt_rule *rule)
{
	struct rt_target *tg = &rt->target[t];
	int key, val;

	memset(tg->domain, 0, sizeof(tg->domain));
	for (size_t i = 0; i < s->ndomains; i++) {
		key = rt_domain_key_intern(rt, s->domains[i].name);
		if (key < 0)
			return key;
		val = rt_domain_value_intern(rt, key, s->domains[i].value);
		if (val < 0)
			return val;
		tg->domain[key] = (uint16_t)val;
	}
	tg->worker = worker;
	tg->dp_rank = rank;
	tg->cookie = s->cookie;
	tg->type = (uint8_t)s->type;
	tg->block_size = s->block_size;
	tg->kv_capacity_blocks = s->kv_capacity_blocks;
	tg->rule = *rule;
	/* Relaxed: the target is not in a pool yet, so no core reads it. */
	atomic_store_explicit(&tg->reported_used_blocks, 0, memory_order_relaxed);
	atomic_store_explicit(&tg->reported_prefill_tokens, 0, memory_order_relaxed);
	return 0;
}

static void pool_add(struct rt_pool *p, uint16_t t);

/* Every check of a registration that changes nothing; sets *model (-ENOENT: a new one). */
static int register_check(const struct rt_router *rt, uint32_t worker,
			  const struct rt_worker_spec *spec, int *model, char *err, size_t errlen)
{
	int rc;

	if (!spec)
		return dp_refuse(err, errlen, -EINVAL, "no registration");
	if (worker_find(rt, worker))
		return dp_refuse(err, errlen, -EEXIST, "worker %u is registered already", worker);
	rc = spec_check(rt, spec, err, errlen);
	if (!rc)
		rc = rt_required_domain_check(rt, spec, err, errlen);
	if (rc)
		return rc;
	*model = rt_model_find(rt, spec->model, strlen(spec->model));
	return *model >= 0 ? pool_check(rt, *model, spec, err, errlen) : 0;
}

/* What a failed registration may have added: undone so that nothing changed. */
struct register_undo {
	uint32_t keys, values, nworkers, cursor;
};

static void register_rollback(struct rt_router *rt, const struct register_undo *u)
{
	while (rt->ndomain_keys > u->keys)
		free(rt->domain_key[--rt->ndomain_keys]);
	while (rt->ndomain_values > u->values)
		free(rt->domain_value[--rt->ndomain_values]);
	rt->nworkers = u->nworkers;
	rt->target_cursor = u->cursor;
}

/* The steps that allocate or intern; on failure the caller rolls back. */
static int register_build(struct rt_router *rt, uint32_t worker,
			  const struct rt_worker_spec *spec, uint16_t *ids, struct rt_worker **w,
			  int *model, char *err, size_t errlen)
{
	struct rt_rule rule = rt->rule;
	int rc = 0;

	if (spec->transfer.domain)
		rc = rt_rule_resolve(rt, &spec->transfer, &rule, err, errlen);
	if (rc)
		return rc;
	*w = worker_slot(rt);
	rc = *w ? targets_reserve(rt, spec->dp_ranks, ids) : -ENOSPC;
	if (rc)
		return dp_refuse(err, errlen, rc, "no routing target left (max_targets %u)",
			      rt->cfg.max_targets);
	for (uint32_t i = 0; rc == 0 && i < spec->dp_ranks; i++)
		rc = target_setup(rt, ids[i], worker, spec->dp_rank_start + i, spec, &rule);
	if (rc)
		return dp_refuse(err, errlen, rc, rc == -ENOMEM ? "out of memory"
					       : "more than %u topology domain names or %u values",
			      RT_DOMAIN_KEYS, RT_DOMAIN_VALUES - 1);
	if (*model < 0 && (*model = rc = model_intern(rt, spec->model)) < 0)
		return dp_refuse(err, errlen, rc, rc == -ENOMEM ? "out of memory"
					       : "no room for another model (max_models %u)",
			      rt->cfg.max_models);
	return 0;
}

int rt_register(struct rt_router *rt, uint32_t worker, const struct rt_worker_spec *spec,
		char *err, size_t errlen)
{
	struct register_undo undo = {rt->ndomain_keys, rt->ndomain_values, rt->nworkers,
				     rt->target_cursor};
	struct rt_worker *w = NULL;
	struct rt_pool *pool;
	uint16_t *ids;
	int rc, model = -ENOENT;

	if (err && errlen)
		err[0] = '\0';
	rc = register_check(rt, worker, spec, &model, err, errlen);
	if (rc)
		return rc;
	ids = calloc(spec->dp_ranks, sizeof(*ids));
	if (!ids)
		return dp_refuse(err, errlen, -ENOMEM, "out of memory");
	rc = register_build(rt, worker, spec, ids, &w, &model, err, errlen);
	if (rc) {
		register_rollback(rt, &undo);
		free(ids);
		return rc;
	}
	*w = (struct rt_worker){.id = worker, .live = true, .ntargets = (uint16_t)spec->dp_ranks,
				.targets = ids};
	pool = &rt->model[model].pool[spec->type];
	/* Relaxed: a hint for filtering, counted before the targets are published. */
	if (rt->target[ids[0]].rule.enforcement == RT_TRANSFER_REQUIRED)
		atomic_store_explicit(&rt->required_rules,
				      atomic_load_explicit(&rt->required_rules,
							   memory_order_relaxed) + spec->dp_ranks,
				      memory_order_relaxed);
	atomic_store_explicit(&pool->block_size, spec->block_size, memory_order_relaxed);
	for (uint32_t i = 0; i < spec->dp_ranks; i++) {
		rt->target[ids[i]].model = (uint16_t)model;
		atomic_store_explicit(&rt->target[ids[i]].state, RT_TARGET_LIVE,
				      memory_order_relaxed);
		pool_add(pool, ids[i]);
	}
	return 0;
}

/* Publish target @t in @p: its fields, written before, come with it. */
static void pool_add(struct rt_pool *p, uint16_t t)
{
	uint32_t n = atomic_load_explicit(&p->n, memory_order_relaxed); /* we are its writer */

	/* R5: the target's fields before the entry, the entry before the size; pairs with A5. */
	atomic_store_explicit(&p->targets[n], t, memory_order_release);
	atomic_store_explicit(&p->n, n + 1, memory_order_release);
}

/* Take @t out of @p: the last entry moves into its place. */
static void pool_remove(struct rt_pool *p, uint16_t t)
{
	uint32_t n = atomic_load_explicit(&p->n, memory_order_relaxed); /* we are its writer */

	for (uint32_t i = 0; i < n; i++) {
		if (atomic_load_explicit(&p->targets[i], memory_order_relaxed) != t)
			continue;
		/* R5, as in pool_add(). A core reading meanwhile sees the old entry or the
		 * moved one, either a target whose fields are whole. */
		atomic_store_explicit(&p->targets[i],
				      atomic_load_explicit(&p->targets[n - 1], memory_order_relaxed),
				      memory_order_release);
		atomic_store_explicit(&p->n, --n, memory_order_release);
		break;
	}
	if (!n)
		atomic_store_explicit(&p->block_size, 0, memory_order_relaxed);
}

int rt_unregister(struct rt_router *rt, uint32_t worker)
{
	struct rt_worker *w = worker_find(rt, worker);
	int rc = 0;

	if (!w)
		return -ENOENT;
	for (uint16_t i = 0; w->live && i < w->ntargets; i++) {
		struct rt_target *tg = &rt->target[w->targets[i]];

		pool_remove(&rt->model[tg->model].pool[tg->type], w->targets[i]);
		if (tg->rule.enforcement == RT_TRANSFER_REQUIRED) /* relaxed: see rt_register() */
			atomic_store_explicit(&rt->required_rules,
					      atomic_load_explicit(&rt->required_rules,
								   memory_order_relaxed) - 1,
					      memory_order_relaxed);
		atomic_store_explicit(&tg->state, RT_TARGET_DRAINING, memory_order_relaxed);
	}
	if (w->live)
		note_departure(rt, w->targets, w->ntargets);
	w->live = false;
	w->draining = true;
	for (uint16_t i = 0; i < w->ntargets; i++) {
		struct rt_target *tg = &rt->target[w->targets[i]];

		if (atomic_load_explicit(&tg->state, memory_order_relaxed) != RT_TARGET_DRAINING)
			continue;
		if (pdx_drop_target(rt->index, w->targets[i]) < 0)
			rc = -ENOMEM;
		else
			atomic_store_explicit(&tg->state, RT_TARGET_FREE, memory_order_relaxed);
	}
	if (rc)
		return rc;
	free(w->targets);
	*w = (struct rt_worker){0};
	return 0;
}

int rt_report_load(struct rt_router *rt, uint32_t worker, uint32_t dp_rank,
		   uint64_t used_blocks, uint64_t prefill_tokens)
{
	int t = rt_target_find(rt, worker, dp_rank);

	if (t < 0)
		return t;
	/* Relaxed: a single writer, and readers act on any recent value (see rt_target). */
	atomic_store_explicit(&rt->target[t].reported_used_blocks, used_blocks,
			      memory_order_relaxed);
	atomic_store_explicit(&rt->target[t].reported_prefill_tokens, prefill_tokens,
			      memory_order_relaxed);
	return 0;
}
