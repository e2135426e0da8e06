/*
 * One routing stage (routing-semantics §4, §6): find each candidate's overlap and in-flight
 * blocks, filter (pin, topology, busy), cost, select (cheapest with a uniform tie-break, or
 * softmax sampling under a temperature; round-robin or random for those baselines) and record
 * the chosen target's load. The candidate array is the explanation: every figure the decision
 * used stays there until the next one. Runs on the dataplane core that routes; no allocation,
 * no locks.
 */
#include <errno.h>
#include <math.h>
#include <string.h>

#include "hash.h"
#include "route.h"

void rt_target_load(const struct rt_router *rt, uint16_t target, uint64_t *blocks,
		    uint64_t *prefill_tokens)
{
	struct rt_shares sh;

	*blocks = *prefill_tokens = 0;
	if (target >= rt->cfg.max_targets)
		return;
	rt_shares_get(rt, &sh);
	rt_shares_sum(&sh, target, blocks, prefill_tokens);
}

/* Local hashes of the prompt at @bs, computed once per request and block size. */
static void need_local(struct rt_core *c, const struct rt_request *rq, uint32_t bs, uint32_t n)
{
	if (c->hashed_bs == bs)
		return;
	dp_hash_blocks(rq->tokens, (size_t)n * bs, bs, rq->hash_seed, c->local);
	c->hashed_bs = bs;
	c->seq_ready = false;
}

/*
 * Prefix keys of the prompt for the in-flight dedup table: a multiply-xorshift chain over the
 * local hashes, 64 bits like the sequence hash but a few times cheaper. Only this core's table
 * ever compares them, so they need not match any engine's or the index's.
 */
static void need_seq(struct rt_core *c, const struct rt_request *rq, uint32_t bs, uint32_t n)
{
	uint64_t h = 0x243F6A8885A308D3ull; /* pi: any odd constant */

	need_local(c, rq, bs, n);
	if (c->seq_ready)
		return;
	for (uint32_t i = 0; i < n; i++) {
		h = (h ^ c->local[i]) * 0x9FB21C651E98DF25ull;
		h ^= h >> 29;
		c->seq[i] = h;
	}
	c->seq_ready = true;
}

/* Overlap and already-in-flight blocks of every target into the core's per-target scratch. */
static size_t gather(struct rt_core *c, const struct rt_request *rq, const struct rt_stage_in *in,
		     uint32_t n)
{
	size_t nmatch = 0;

	if (!n)
		return 0;
	/* Overlap scores the credit and sets the prefill tokens; the decode stage needs neither. */
	if (in->pol.overlap_score_credit != 0.0 || in->pol.track_prefill_tokens) {
		need_local(c, rq, in->block_size, n);
		nmatch = pdx_match(c->reader, c->local, n, c->match);
		for (size_t i = 0; i < nmatch; i++)
			c->overlap[c->match[i].target] = c->match[i].depth;
	}
	if (in->pol.track_active_blocks && in->pol.assume_kv_reuse) {
		need_seq(c, rq, in->block_size, n);
		rt_share_already(&c->share, c->seq, n, c->already, c->touched, &c->ntouched);
	}
	return nmatch;
}

/* Put the per-target scratch back to all zeros. */
static void scatter_clear(struct rt_core *c, size_t nmatch)
{
	for (size_t i = 0; i < nmatch; i++)
		c->overlap[c->match[i].target] = 0;
	for (uint32_t i = 0; i < c->ntouched; i++)
		c->already[c->touched[i]] = 0;
	c->ntouched = 0;
}

/*
 * Does @t's transfer domain (under its own rule) hold a decode or aggregated target of the
 * model that the request may use (the pinned one, when it pins one)?
 */
static bool domain_has_decode(struct rt_core *c, const struct rt_stage_in *in,
			      const struct rt_target *t)
{
	uint64_t *bits = &c->has_decode[(size_t)t->rule.key * (RT_DOMAIN_VALUES / 64)];
	uint16_t v = t->domain[t->rule.key];
	const struct rt_target *pinned;

	if (in->serve_pin != RT_NO_PIN) {
		if ((uint32_t)in->serve_pin >= c->rt->cfg.max_targets)
			return false;
		if (!rt_pools_hold(in->md, RT_DECODE, RT_AGGREGATED, in->serve_pin))
			return false; /* a pin to no serving target of the model */
		pinned = &c->rt->target[in->serve_pin];
		return v && pinned->domain[t->rule.key] == v;
	}
	if (!(c->has_decode_keys & 1u << t->rule.key)) {
		memset(bits, 0, RT_DOMAIN_VALUES / 8);
		for (int p = RT_DECODE; p <= RT_AGGREGATED; p++) {
			const struct rt_pool *pool = &in->md->pool[p];
			uint32_t n = rt_pool_size(pool);

			for (uint32_t i = 0; i < n; i++) {
				uint16_t dv =
				    c->rt->target[rt_pool_target(pool, i)].domain[t->rule.key];

				bits[dv / 64] |= 1ull << (dv % 64);
			}
		}
		c->has_decode_keys |= 1u << t->rule.key;
	}
	return v && (bits[v / 64] >> (v % 64) & 1);
}

/* Why target @t may not take this stage, or RT_ELIGIBLE. Sets cand->same_domain. */
static enum rt_filter filter(struct rt_core *c, const struct rt_stage_in *in, uint16_t t,
			     uint64_t prefill_tokens, struct rt_candidate *cand)
{
	const struct rt_router *rt = c->rt;
	const struct rt_target *tg = &rt->target[t];
	const struct rt_rule *rule = in->prefill ? &in->prefill->rule : NULL;
	uint64_t reported;

	if (in->pin != RT_NO_PIN && in->pin != t)
		return RT_FILTER_PIN;
	if (rule && rule->enforcement != RT_TRANSFER_NONE) {
		uint16_t pv = in->prefill->domain[rule->key];

		cand->same_domain = pv && tg->domain[rule->key] == pv;
		if (rule->enforcement == RT_TRANSFER_REQUIRED && !cand->same_domain)
			return RT_FILTER_TOPOLOGY;
	}
	if (in->stage == RT_STAGE_PREFILL && tg->rule.enforcement == RT_TRANSFER_REQUIRED &&
	    !domain_has_decode(c, in, tg))
		return RT_FILTER_NO_DECODE;
	/* Relaxed: see struct rt_target. */
	if (rt->cfg.busy_kv_fraction > 0.0) {
		reported = atomic_load_explicit(&tg->reported_used_blocks, memory_order_relaxed);
		cand->busy_over = reported < UINT32_MAX ? (uint32_t)reported : UINT32_MAX;
		if ((double)reported > rt->cfg.busy_kv_fraction * (double)tg->kv_capacity_blocks)
			return RT_FILTER_BUSY_KV;
	}
	if (!rt->cfg.busy_prefill_tokens)
		return RT_ELIGIBLE;
	reported = atomic_load_explicit(&tg->reported_prefill_tokens, memory_order_relaxed);
	reported = reported > prefill_tokens ? reported : prefill_tokens;
	cand->busy_over = reported < UINT32_MAX ? (uint32_t)reported : UINT32_MAX;
	if (reported > rt->cfg.busy_prefill_tokens)
		return RT_FILTER_BUSY_PREFILL;
	return RT_ELIGIBLE;
}

/*
 * What every candidate of a stage is scored with, copied out of the policy once: the loop
 * stores doubles into candidates, which the compiler must otherwise assume could change the
 * policy's doubles, and reload them for every target.
 */
struct scoring {
	double credit, scale, inv_block_size;
	uint64_t isl;
	uint32_t blocks; /* prompt blocks at the stage's block size */
	bool reuse, track_prefill, track_active, filtering;
	struct rt_shares shares;
};

static void scoring_init(const struct rt_core *c, const struct rt_request *rq,
			 const struct rt_stage_in *in, uint32_t n, struct scoring *sc)
{
	sc->credit = in->pol.overlap_score_credit;
	sc->scale = in->pol.prefill_load_scale;
	sc->inv_block_size = in->inv_block_size;
	sc->isl = rq->ntokens;
	sc->blocks = n;
	sc->reuse = in->pol.assume_kv_reuse;
	sc->track_prefill = in->pol.track_prefill_tokens;
	sc->track_active = in->pol.track_active_blocks;
	sc->filtering = in->filtering;
	rt_shares_get(c->rt, &sc->shares);
}

/* Fill the candidate for target @t: filter verdict and, when eligible, its cost. */
static inline void score(struct rt_core *c, const struct rt_stage_in *in,
			 const struct scoring *sc, uint16_t t, struct rt_candidate *cand)
{
	uint64_t blocks, prefill_tokens;
	uint32_t fresh = sc->reuse ? sc->blocks - c->already[t] : sc->blocks;
	double prefill_blocks = 0.0, decode_blocks = 0.0, adjusted, cost;
	uint32_t overlap = c->overlap[t];

	rt_shares_sum(&sc->shares, t, &blocks, &prefill_tokens);
	cand->target = t;
	cand->filter = RT_ELIGIBLE;
	cand->same_domain = 0;
	cand->overlap = overlap;
	cand->new_blocks = fresh;
	cand->busy_over = 0;
	if (sc->filtering)
		cand->filter = (uint8_t)filter(c, in, t, prefill_tokens, cand);
	/* Block sizes are powers of two: multiplying by the inverse divides exactly. Counts go
	 * through int64_t, which converts in one instruction (no count comes near 2^63). */
	if (sc->track_prefill)
		prefill_blocks = (double)(int64_t)(prefill_tokens + sc->isl) * sc->inv_block_size;
	if (sc->track_active)
		decode_blocks = (double)(int64_t)(blocks + fresh);
	adjusted = prefill_blocks - sc->credit * overlap;
	cost = sc->scale * (adjusted > 0.0 ? adjusted : 0.0) + decode_blocks;
	if (cand->same_domain && in->prefill->rule.enforcement == RT_TRANSFER_PREFERRED)
		cost *= in->prefill->rule.discount;
	cand->prefill_blocks = prefill_blocks;
	cand->decode_blocks = decode_blocks;
	cand->cost = cost;
}

/* Uniform in [0, n). */
static uint32_t random_below(struct rt_core *c, uint32_t n)
{
	return (uint32_t)(((rt_core_random(c) >> 32) * (uint64_t)n) >> 32);
}

/*
 * The cheapest candidates so far, offered one by one while scoring (one pass). Exact ties are
 * kept in a list and one of them drawn at the end: idle targets all tie, and a draw per tie
 * would cost more than scoring them.
 */
struct cheapest {
	double cost;
	uint32_t nties; /* candidates at exactly @cost so far, in @tie */
	uint32_t *tie;
};

static inline void cheapest_offer(struct cheapest *m, uint32_t i, double cost)
{
	if (cost < m->cost || m->nties == 0) {
		m->cost = cost;
		m->nties = 0;
	} else if (cost != m->cost) {
		return;
	}
	m->tie[m->nties++] = i;
}

/* One of the cheapest, uniformly. */
static uint32_t cheapest_pick(struct rt_core *c, const struct cheapest *m)
{
	return m->tie[m->nties > 1 ? random_below(c, m->nties) : 0];
}

/* Sample with probability proportional to exp(-(cost - min) / ((max - min) * T)). */
static uint32_t select_softmax(struct rt_core *c, const struct rt_candidate *cand, uint32_t ncand,
			       double temperature)
{
	double lo = INFINITY, hi = -INFINITY, total = 0.0, r;
	uint32_t last = 0;

	for (uint32_t i = 0; i < ncand; i++) {
		if (cand[i].filter != RT_ELIGIBLE)
			continue;
		lo = fmin(lo, cand[i].cost);
		hi = fmax(hi, cand[i].cost);
	}
	for (uint32_t i = 0; i < ncand; i++) {
		c->weight[i] = 0.0;
		if (cand[i].filter != RT_ELIGIBLE)
			continue;
		c->weight[i] = hi > lo ? exp(-(cand[i].cost - lo) / ((hi - lo) * temperature)) : 1.0;
		total += c->weight[i];
		last = i;
	}
	r = (double)(rt_core_random(c) >> 11) * 0x1p-53 * total;
	for (uint32_t i = 0; i < ncand; i++) {
		if (c->weight[i] > 0.0 && r < c->weight[i])
			return i;
		r -= c->weight[i];
	}
	return last; /* rounding left r a hair above the last weight */
}

/* The @k-th eligible candidate from @from on, wrapping round; @k is below the eligible count. */
static uint32_t nth_eligible(const struct rt_candidate *cand, uint32_t ncand, uint32_t from,
			     uint32_t k)
{
	for (uint32_t i = from;; i = i + 1 < ncand ? i + 1 : 0)
		if (cand[i].filter == RT_ELIGIBLE && k-- == 0)
			return i;
}

/*
 * Round-robin: the first eligible candidate from the stage's cursor on, in pool order. A route
 * moves the cursor past it; a peek leaves it. Filtered candidates are skipped, not waited for,
 * and a pool that changed since (a target left: the last entry moved into its place) only
 * shifts where the cycle resumes.
 */
static uint32_t select_round_robin(struct rt_core *c, const struct rt_request *rq,
				   const struct rt_stage_in *in, const struct rt_candidate *cand,
				   uint32_t ncand)
{
	uint32_t *next = &c->rr_next[(size_t)rq->model * RT_STAGES + in->stage];
	uint32_t i = nth_eligible(cand, ncand, *next < ncand ? *next : 0, 0);

	if (!rq->peek)
		*next = i + 1;
	return i;
}

/* Random: uniform over the eligible candidates, one draw (which a peek puts back). */
static uint32_t select_random(struct rt_core *c, const struct rt_candidate *cand, uint32_t ncand,
			      uint32_t eligible)
{
	return nth_eligible(cand, ncand, 0, random_below(c, eligible));
}

/* The stage's error when nothing is eligible: busy wins over topology over "no target". */
static int no_choice(const struct rt_candidate *cand, uint32_t ncand)
{
	bool busy = false, topo = false;

	for (uint32_t i = 0; i < ncand; i++) {
		busy |= cand[i].filter == RT_FILTER_BUSY_KV || cand[i].filter == RT_FILTER_BUSY_PREFILL;
		topo |= cand[i].filter == RT_FILTER_TOPOLOGY || cand[i].filter == RT_FILTER_NO_DECODE;
	}
	return busy ? -EBUSY : topo ? -EXDEV : -ENODEV;
}

/* Record the chosen target's predicted load on this core. */
static int commit(struct rt_core *c, const struct rt_request *rq, const struct rt_stage_in *in,
		  uint32_t n, const struct rt_candidate *cand, rt_load_t *load)
{
	const struct rt_policy *pol = &in->pol;
	uint64_t cached = (uint64_t)cand->overlap * in->block_size;
	struct rt_share_load a = {.now_ns = rq->now_ns, .target = cand->target};
	uint32_t untracked = 0;
	int rc;

	if (pol->track_prefill_tokens && rq->ntokens > cached)
		a.prefill_tokens = rq->ntokens - cached;
	if (pol->track_active_blocks) {
		a.blocks = n;
		if (pol->assume_kv_reuse && n)
			a.seq = c->seq;
	}
	rc = rt_share_add(&c->share, &a, load, &untracked);
	if (rc)
		rt_core_add(c, RT_STAT(requests_full), 1);
	if (untracked)
		rt_core_add(c, RT_STAT(blocks_untracked), untracked);
	return rc;
}

static void fill_choice(const struct rt_core *c, const struct rt_candidate *cand,
			struct rt_choice *out)
{
	const struct rt_target *tg = &c->rt->target[cand->target];

	out->target = cand->target;
	out->worker = tg->worker;
	out->dp_rank = tg->dp_rank;
	out->cookie = tg->cookie;
	out->overlap = cand->overlap;
}

int rt_stage_decide(struct rt_core *c, const struct rt_request *rq, const struct rt_stage_in *in,
		    struct rt_choice *out)
{
	struct rt_explain *ex = &c->explain[in->stage];
	struct rt_candidate *cand = c->cand[in->stage];
	uint32_t n = (uint32_t)(rq->ntokens / in->block_size), ncand = 0, eligible = 0;
	size_t nmatch = gather(c, rq, in, n);
	struct cheapest min = {.tie = c->tie};
	bool offer = in->by_cost && in->pol.temperature == 0.0;
	struct scoring sc;
	int rc = 0;

	scoring_init(c, rq, in, n, &sc);
	for (int p = RT_PREFILL; p <= RT_AGGREGATED; p++) {
		const struct rt_pool *pool = &in->md->pool[p];
		uint32_t n;

		if ((p == RT_PREFILL) != (in->stage == RT_STAGE_PREFILL))
			continue;
		n = rt_pool_size(pool);
		for (uint32_t i = 0; i < n && ncand < c->rt->cfg.max_targets; i++, ncand++) {
			score(c, in, &sc, rt_pool_target(pool, i), &cand[ncand]);
			if (cand[ncand].filter != RT_ELIGIBLE)
				continue;
			eligible++;
			if (offer)
				cheapest_offer(&min, ncand, cand[ncand].cost);
		}
	}
	*ex = (struct rt_explain){.stage = in->stage, .model = rq->model, .blocks = n,
				  .policy = in->pol, .policy_kind = in->kind, .ncand = ncand,
				  .cand = cand};
	if (!eligible)
		rc = no_choice(cand, ncand);
	else if (in->kind == RT_POLICY_ROUND_ROBIN)
		ex->chosen = select_round_robin(c, rq, in, cand, ncand);
	else if (in->kind == RT_POLICY_RANDOM)
		ex->chosen = select_random(c, cand, ncand, eligible);
	else if (in->pol.temperature > 0.0)
		ex->chosen = select_softmax(c, cand, ncand, in->pol.temperature);
	else
		ex->chosen = cheapest_pick(c, &min);
	if (rc == 0) {
		fill_choice(c, &cand[ex->chosen], out);
		if (!rq->peek)
			rc = commit(c, rq, in, n, &cand[ex->chosen], &out->load);
	}
	ex->outcome = rc;
	scatter_clear(c, nmatch);
	rt_core_add(c, RT_STAT(decisions), 1);
	return rc;
}
