/*
 * The routing flow of a dataplane core (routing-semantics §5): aggregated models take one stage;
 * disaggregated ones a prefill stage, then a decode stage under the prefill target's transfer
 * rule, with decode-only fallback or, under enforce_disagg, a refusal. Also the core's state:
 * its reader on the prefix index, its load share, random source, counters and scratch.
 */
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "hash.h"
#include "route.h"

int rt_core_init(struct rt_core *c, struct rt_router *rt, uint32_t index)
{
	const struct rt_config *cfg = &rt->cfg;
	int rc;

	memset(c, 0, sizeof(*c));
	if (index >= cfg->cores || rt_core_share(rt, index))
		return -EINVAL;
	c->rt = rt;
	c->index = index;
	c->rng = cfg->seed + index;
	rc = pdx_reader_attach(rt->index, &c->reader);
	if (rc)
		return rc;
	rc = rt_share_init(&c->share, cfg, index);
	c->local = calloc(cfg->max_prompt_blocks, sizeof(uint64_t));
	c->seq = calloc(cfg->max_prompt_blocks, sizeof(uint64_t));
	c->match = calloc(rt->index->max_targets, sizeof(*c->match));
	c->overlap = calloc(rt->index->max_targets, sizeof(uint32_t));
	c->already = calloc(cfg->max_targets, sizeof(uint32_t));
	c->touched = calloc(cfg->max_targets, sizeof(uint16_t));
	c->has_decode = calloc(RT_DOMAIN_KEYS * RT_DOMAIN_VALUES / 64, sizeof(uint64_t));
	c->weight = calloc(cfg->max_targets, sizeof(double));
	c->tie = calloc(cfg->max_targets, sizeof(uint32_t));
	if (cfg->policy_kind == RT_POLICY_ROUND_ROBIN) {
		c->rr_next = calloc((size_t)cfg->max_models * RT_STAGES, sizeof(uint32_t));
		rc = rc ? rc : c->rr_next ? 0 : -ENOMEM;
	}
	for (uint32_t s = 0; s < RT_STAGES; s++) {
		c->cand[s] = calloc(cfg->max_targets, sizeof(struct rt_candidate));
		rc = rc ? rc : c->cand[s] ? 0 : -ENOMEM;
	}
	if (rc || !c->local || !c->seq || !c->match || !c->overlap || !c->already ||
	    !c->touched || !c->has_decode || !c->weight || !c->tie) {
		rt_core_destroy(c);
		return -ENOMEM;
	}
	/* R8: the share's arrays before the pointer other threads find them by. */
	atomic_store_explicit(&rt->share[index], &c->share, memory_order_release);
	return 0;
}

void rt_core_destroy(struct rt_core *c)
{
	if (c->rt && rt_core_share(c->rt, c->index) == &c->share)
		atomic_store_explicit(&c->rt->share[c->index], NULL, memory_order_relaxed);
	if (c->reader)
		pdx_reader_detach(c->reader);
	rt_share_destroy(&c->share);
	free(c->local);
	free(c->seq);
	free(c->match);
	free(c->overlap);
	free(c->already);
	free(c->touched);
	free(c->has_decode);
	free(c->weight);
	free(c->tie);
	free(c->rr_next);
	for (uint32_t s = 0; s < RT_STAGES; s++)
		free(c->cand[s]);
	memset(c, 0, sizeof(*c));
}

/* splitmix64: small state, so a peek can put it back. */
uint64_t rt_core_random(struct rt_core *c)
{
	uint64_t x = (c->rng += 0x9E3779B97F4A7C15ull);

	x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
	x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
	return x ^ (x >> 31);
}

void rt_core_add(struct rt_core *c, size_t stat, uint64_t v)
{
	dp_relaxed_add(&c->stat[stat], v, 0); /* this core is the counters' one writer */
}

void rt_core_stats(const struct rt_core *c, struct rt_core_stats *out)
{
	uint64_t v[RT_NSTATS];

	for (size_t i = 0; i < RT_NSTATS; i++)
		v[i] = atomic_load_explicit(&c->stat[i], memory_order_relaxed);
	memcpy(out, v, sizeof(*out));
}

const struct rt_explain *rt_core_explain(const struct rt_core *c, enum rt_stage stage)
{
	return (unsigned)stage < RT_STAGES ? &c->explain[stage] : NULL;
}

/* Apply the fields of @ov whose bits are set. */
static void policy_override(struct rt_policy *p, const struct rt_overrides *ov)
{
	if (ov->set & RT_OV_CREDIT)
		p->overlap_score_credit = ov->overlap_score_credit;
	if (ov->set & RT_OV_LOAD_SCALE)
		p->prefill_load_scale = ov->prefill_load_scale;
	if (ov->set & RT_OV_TEMPERATURE)
		p->temperature = ov->temperature;
	if (ov->set & RT_OV_KV_REUSE)
		p->assume_kv_reuse = ov->assume_kv_reuse;
	if (ov->set & RT_OV_PREFILL_TOKENS)
		p->track_prefill_tokens = ov->track_prefill_tokens;
}

/* The stage policy: the request's (request_begin()), then the stage's rules. */
static void stage_policy(const struct rt_core *c, enum rt_stage stage, struct rt_policy *p)
{
	*p = c->policy;
	if (stage == RT_STAGE_PREFILL) {
		p->track_active_blocks = false; /* prefill workers do not decode */
	} else if (stage == RT_STAGE_DECODE) {
		p->overlap_score_credit = 0.0; /* decode must not chase prefix reuse */
		p->assume_kv_reuse = false;
		p->track_prefill_tokens = false;
	}
}

/* Block size the serving (decode and aggregated) pools share; 0 when both are empty. */
static uint32_t serving_block_size(const struct rt_model *md)
{
	return rt_pool_size(&md->pool[RT_DECODE]) ? rt_pool_block_size(&md->pool[RT_DECODE])
						  : rt_pool_block_size(&md->pool[RT_AGGREGATED]);
}

/*
 * The target of pin @p among @md's pools @lo..@hi, read inside the decision (A5, R6); one that
 * no pool holds comes back as an id no target has, so that the pin excludes every target.
 */
static int32_t pin_lookup(const struct rt_core *c, const struct rt_model *md, int lo, int hi,
			  const struct rt_pin *p)
{
	for (int k = lo; k <= hi; k++) {
		const struct rt_pool *pool = &md->pool[k];
		uint32_t n = rt_pool_size(pool);

		for (uint32_t i = 0; i < n; i++) {
			uint16_t t = rt_pool_target(pool, i);

			if (c->rt->target[t].worker == p->worker &&
			    c->rt->target[t].dp_rank == p->dp_rank)
				return t;
		}
	}
	return (int32_t)c->rt->cfg.max_targets;
}

/* Validate @rq and start a new request's scratch: returns its model or a negative errno. */
static int request_begin(struct rt_core *c, const struct rt_request *rq,
			 const struct rt_model **md)
{
	_Atomic uint64_t *decision = &c->share.decision;

	/* Our own counter: odd from here until finish(). */
	dp_relaxed_add(decision, 1, 0);
	/* F5: say we decide before reading any pool; pairs with F6 in note_departure(). */
	atomic_thread_fence(memory_order_seq_cst);
	if (rq->model >= atomic_load_explicit(&c->rt->nmodels, memory_order_acquire)) /* A7 */
		return -ENOENT;
	c->policy = c->rt->cfg.policy;
	policy_override(&c->policy, &rq->ov);
	if ((!rq->tokens && rq->ntokens) || !rt_policy_ok(&c->policy))
		return -EINVAL;
	if (c->rt->cfg.policy_kind != RT_POLICY_KV) {
		/* The baselines never sample by cost; least-loaded weighs load alone. */
		c->policy.temperature = 0.0;
		if (c->rt->cfg.policy_kind == RT_POLICY_LEAST_LOADED)
			c->policy.overlap_score_credit = 0.0;
	}
	*md = &c->rt->model[rq->model];
	c->pin_serve = rq->pin_worker.set
			       ? pin_lookup(c, *md, RT_DECODE, RT_AGGREGATED, &rq->pin_worker)
			       : rq->pin_target;
	c->pin_prefill = rq->pin_prefill;
	if (rq->pin_prefill_worker.set)
		c->pin_prefill =
			pin_lookup(c, *md, RT_PREFILL, RT_PREFILL, &rq->pin_prefill_worker);
	c->hashed_bs = 0;
	c->has_decode_keys = 0;
	return 0;
}

/* Run stage @stage of @md for @rq; the prompt must fit the stage's block size. */
static int stage_run(struct rt_core *c, const struct rt_request *rq, const struct rt_model *md,
		     enum rt_stage stage, const struct rt_target *prefill, struct rt_choice *out)
{
	struct rt_stage_in in = {
	    .stage = stage,
	    .md = md,
	    .pin = stage == RT_STAGE_PREFILL ? c->pin_prefill : c->pin_serve,
	    .serve_pin = c->pin_serve,
	    .prefill = prefill,
	    .kind = c->rt->cfg.policy_kind,
	};

	stage_policy(c, stage, &in.pol);
	in.block_size = stage == RT_STAGE_PREFILL ? rt_pool_block_size(&md->pool[RT_PREFILL])
						  : serving_block_size(md);
	in.inv_block_size = in.block_size ? 1.0 / in.block_size : 0.0;
	in.filtering = in.pin != RT_NO_PIN || c->rt->cfg.busy_kv_fraction > 0.0 ||
		       c->rt->cfg.busy_prefill_tokens ||
		       (prefill && prefill->rule.enforcement != RT_TRANSFER_NONE) ||
		       (stage == RT_STAGE_PREFILL &&
			atomic_load_explicit(&c->rt->required_rules, memory_order_relaxed));
	in.by_cost = in.kind == RT_POLICY_KV || in.kind == RT_POLICY_LEAST_LOADED;
	memset(out, 0, sizeof(*out));
	if (!in.block_size || rq->ntokens / in.block_size > c->rt->cfg.max_prompt_blocks) {
		int rc = in.block_size ? -E2BIG : -ENODEV; /* no pool, or a prompt too long */

		c->explain[stage] = (struct rt_explain){.stage = stage, .outcome = rc,
							.model = rq->model, .policy = in.pol,
							.policy_kind = in.kind,
							.cand = c->cand[stage]};
		rt_core_add(c, RT_STAT(decisions), 1);
		return rc;
	}
	return rt_stage_decide(c, rq, &in, out);
}

/* Count the final outcome of an API call; a peek puts the random source back. */
static int finish(struct rt_core *c, const struct rt_request *rq, uint64_t rng, int rc)
{
	_Atomic uint64_t *decision = &c->share.decision;

	/* R6: the decision's reads are done (even again); pairs with A6 in grace_over(). */
	atomic_store_explicit(decision, atomic_load_explicit(decision, memory_order_relaxed) + 1,
			      memory_order_release);
	if (rq->peek) {
		c->rng = rng;
		rt_core_add(c, RT_STAT(peeks), 1);
	}
	if (rc == -ENODEV)
		rt_core_add(c, RT_STAT(no_target), 1);
	else if (rc == -EBUSY)
		rt_core_add(c, RT_STAT(overloaded), 1);
	else if (rc == -EXDEV)
		rt_core_add(c, RT_STAT(no_decode_domain), 1);
	return rc;
}

/* Counters a peek leaves alone: they tell operators what happened to real requests. */
static void count_unless_peek(struct rt_core *c, const struct rt_request *rq, size_t stat)
{
	if (!rq->peek)
		rt_core_add(c, stat, 1);
}

/*
 * A model whose decode targets cannot have a prefill stage now (@why: none, or none usable):
 * decode-only, counted, or refused with @why under enforce_disagg.
 */
static int fallback(struct rt_core *c, const struct rt_request *rq, const struct rt_model *md,
		    int why, struct rt_plan *plan)
{
	if (c->rt->cfg.enforce_disagg) {
		count_unless_peek(c, rq, RT_STAT(enforce_refused));
		return why;
	}
	count_unless_peek(c, rq, RT_STAT(fallback_no_prefill));
	plan->kind = RT_PLAN_FALLBACK;
	return stage_run(c, rq, md, RT_STAGE_FALLBACK, NULL, &plan->first);
}

static int route_disagg(struct rt_core *c, const struct rt_request *rq, const struct rt_model *md,
			struct rt_plan *plan)
{
	const struct rt_target *p;
	int rc = stage_run(c, rq, md, RT_STAGE_PREFILL, NULL, &plan->first);

	if (rc == -ENODEV || rc == -EBUSY)
		return fallback(c, rq, md, rc, plan);
	if (rc || !c->rt->cfg.bootstrap)
		return rc;
	p = &c->rt->target[plan->first.target];
	rc = stage_run(c, rq, md, RT_STAGE_DECODE, p, &plan->decode);
	if (rc) {
		if (plan->first.load)
			rt_share_release(&c->share, c->rt->cfg.max_requests, plan->first.load);
		plan->first.load = 0;
		return rc;
	}
	plan->kind = RT_PLAN_BOOTSTRAP;
	plan->room_id = rt_core_random(c) >> 1;
	return 0;
}

int rt_route(struct rt_core *c, const struct rt_request *rq, struct rt_plan *plan)
{
	const struct rt_model *md;
	uint64_t rng = c->rng;
	int rc = request_begin(c, rq, &md);

	memset(plan, 0, sizeof(*plan));
	if (rc)
		return finish(c, rq, rng, rc);
	if (rt_disagg_active(c->rt, rq->model)) {
		plan->kind = RT_PLAN_DISAGG;
		rc = route_disagg(c, rq, md, plan);
	} else if (rt_pool_size(&md->pool[RT_DECODE])) { /* decode workers needing prefill */
		rc = fallback(c, rq, md, -ENODEV, plan);
	} else {
		plan->kind = RT_PLAN_AGGREGATED;
		rc = stage_run(c, rq, md, RT_STAGE_AGGREGATED, NULL, &plan->first);
	}
	return finish(c, rq, rng, rc);
}

int rt_route_decode(struct rt_core *c, const struct rt_request *rq, uint16_t prefill,
		    struct rt_choice *out)
{
	const struct rt_model *md;
	const struct rt_target *p;
	uint64_t rng = c->rng;
	int rc = request_begin(c, rq, &md);

	memset(out, 0, sizeof(*out));
	if (rc)
		return finish(c, rq, rng, rc);
	if (prefill >= c->rt->cfg.max_targets)
		return finish(c, rq, rng, -ENOENT);
	p = &c->rt->target[prefill];
	/* A target still in the prefill pool, or one that left it (drained, or gone) while the
	 * caller's prefill handle is still held: an id with a request in flight is not handed
	 * out again (rt_share.inflight), so its fields are still that worker's. */
	if (!rt_pools_hold(md, RT_PREFILL, RT_PREFILL, prefill) &&
	    !(atomic_load_explicit(&p->state, memory_order_relaxed) != RT_TARGET_LIVE &&
	      p->model == rq->model && p->type == RT_PREFILL))
		return finish(c, rq, rng, -ENOENT);
	rc = stage_run(c, rq, md, RT_STAGE_DECODE, p, out);
	return finish(c, rq, rng, rc);
}

int rt_route_fallback(struct rt_core *c, const struct rt_request *rq, struct rt_choice *out)
{
	const struct rt_model *md;
	uint64_t rng = c->rng;
	int rc = request_begin(c, rq, &md);

	memset(out, 0, sizeof(*out));
	if (rc)
		return finish(c, rq, rng, rc);
	count_unless_peek(c, rq, RT_STAT(fallback_prefill_failed));
	if (c->rt->cfg.enforce_disagg) {
		count_unless_peek(c, rq, RT_STAT(enforce_refused));
		return finish(c, rq, rng, -EPERM);
	}
	rc = stage_run(c, rq, md, RT_STAGE_FALLBACK, NULL, out);
	return finish(c, rq, rng, rc);
}

int rt_first_token(struct rt_core *c, rt_load_t load)
{
	int rc = rt_share_first_token(&c->share, c->rt->cfg.max_requests, load);

	if (rc)
		rt_core_add(c, RT_STAT(stale_handle), 1);
	return rc;
}

int rt_release(struct rt_core *c, rt_load_t load)
{
	int rc = rt_share_release(&c->share, c->rt->cfg.max_requests, load);

	rt_core_add(c, rc ? RT_STAT(stale_handle) : RT_STAT(released), 1);
	return rc;
}

size_t rt_sweep(struct rt_core *c, uint64_t now_ns)
{
	size_t n = rt_share_sweep(&c->share, now_ns, c->rt->cfg.expiry_ns);

	rt_core_add(c, RT_STAT(expired), n);
	return n;
}

const char *rt_stage_name(enum rt_stage stage)
{
	static const char *const name[RT_STAGES] = {"aggregated", "prefill", "decode", "fallback"};

	return (unsigned)stage < RT_STAGES ? name[stage] : "unknown";
}

static const char *const policy_kind_name[RT_POLICY_KINDS] = {"kv", "round-robin", "random",
								 "least-loaded"};

const char *rt_policy_kind_name(enum rt_policy_kind kind)
{
	return (unsigned)kind < RT_POLICY_KINDS ? policy_kind_name[kind] : "unknown";
}

int rt_policy_kind_parse(const char *name)
{
	for (int k = 0; name && k < (int)RT_POLICY_KINDS; k++)
		if (!strcmp(name, policy_kind_name[k]))
			return k;
	return -EINVAL;
}

const char *rt_filter_name(enum rt_filter filter)
{
	static const char *const name[] = {"eligible", "pin", "topology", "no_decode_in_domain",
					   "busy_kv", "busy_prefill"};

	return (unsigned)filter < sizeof(name) / sizeof(name[0]) ? name[filter] : "unknown";
}
