/*
 * Predicted load against a reference model (routing-semantics §3): random routes, peeks, first
 * tokens, releases (stale handles replayed) and sweeps, with every target's load and the core's
 * counters checked after each operation against what the model computes.
 */
#include <criterion/criterion.h>
#include <errno.h>
#include <inttypes.h>
#include <string.h>

#include "helpers.h"
#include "route_fixture.h"

#define BS T_BS

TestSuite(route_model);

/*
 * The reference model: prompts are prefixes of a few token families, so block i of family f
 * names one sequence hash, and a target's distinct blocks are, per family, the longest prefix
 * a live deduplicated request of that family holds there, plus every block of the requests
 * routed without KV reuse.
 */
#define M_TARGETS 4u
#define M_FAMILIES 3u
#define M_BLOCKS 80u	 /* longest prompt */
#define M_LIVE 64u	 /* cfg.max_requests */
#define M_DEAD 32u	 /* released handles kept to replay */
#define M_EXPIRY 12000u /* even, like every start time: sweeps at odd times never tie */
#define M_OPS 20000u

struct m_req {
	rt_load_t h;
	uint64_t start_ns;
	uint64_t pending; /* prefill tokens still counted */
	uint32_t blocks;
	uint16_t target;
	uint8_t family;
	bool unique; /* routed without KV reuse */
};

struct m_model {
	struct t_route t;
	uint16_t w[M_TARGETS];
	uint32_t tok[M_FAMILIES][(M_BLOCKS + 1) * BS];
	struct m_req live[M_LIVE];
	uint32_t nlive;
	rt_load_t dead[M_DEAD];
	uint32_t ndead;
	uint64_t now, released, stale, expired, full;
};

/* Longest deduplicated prefix of @family live on @target. */
static uint32_t m_held(const struct m_model *m, uint16_t target, uint32_t family)
{
	uint32_t held = 0;

	for (uint32_t i = 0; i < m->nlive; i++) {
		const struct m_req *r = &m->live[i];

		if (r->target == target && r->family == family && !r->unique && r->blocks > held)
			held = r->blocks;
	}
	return held;
}

static void m_check(const struct m_model *m, uint32_t op)
{
	uint32_t mapped = 0;

	for (uint32_t k = 0; k < M_TARGETS; k++) {
		uint64_t blocks = 0, prefill = 0, b, p;
		uint16_t tg = m->w[k];

		for (uint32_t f = 0; f < M_FAMILIES; f++)
			blocks += m_held(m, tg, f);
		mapped += (uint32_t)blocks;
		for (uint32_t i = 0; i < m->nlive; i++) {
			if (m->live[i].target != tg)
				continue;
			blocks += m->live[i].unique ? m->live[i].blocks : 0;
			prefill += m->live[i].pending;
		}
		rt_target_load(&m->t.rt, tg, &b, &p);
		cr_assert_eq(b, blocks, "op %u target %u: %" PRIu64 " blocks, model %" PRIu64, op,
			     tg, b, blocks);
		cr_assert_eq(p, prefill, "op %u target %u: %" PRIu64 " prefill, model %" PRIu64,
			     op, tg, p, prefill);
	}
	cr_assert_eq(m->t.core.share.map_live == 0, mapped == 0, "op %u: dedup table", op);
}

static void m_bury(struct m_model *m, uint32_t i)
{
	m->dead[m->ndead++ % M_DEAD] = m->live[i].h;
	m->live[i] = m->live[--m->nlive];
}

static void m_route(struct m_model *m, struct t_rng *rng, uint32_t op)
{
	uint32_t family = t_rng_below(rng, M_FAMILIES), n = t_rng_below(rng, M_BLOCKS + 1);
	size_t ntokens = (size_t)n * BS + t_rng_below(rng, BS);
	struct rt_request rq = t_request(&m->t, "m", m->tok[family], ntokens, m->now);
	bool unique = t_rng_chance(rng, 15), no_prefill = t_rng_chance(rng, 15);
	struct rt_plan plan;
	int rc, want;

	if (t_rng_chance(rng, 80))
		rq.pin_target = m->w[t_rng_below(rng, M_TARGETS)];
	rq.peek = t_rng_chance(rng, 5);
	rq.ov.set = (unique ? RT_OV_KV_REUSE : 0) | (no_prefill ? RT_OV_PREFILL_TOKENS : 0);
	want = !rq.peek && m->nlive == M_LIVE ? -ENOBUFS : 0;
	rc = rt_route(&m->t.core, &rq, &plan);
	cr_assert_eq(rc, want, "op %u: rt_route %d, model %d", op, rc, want);
	for (uint32_t k = 0; k < M_TARGETS; k++) {
		uint32_t held = unique ? 0 : m_held(m, m->w[k], family);

		cr_assert_eq(t_cand(&m->t.core, m->w[k])->new_blocks, n - (held < n ? held : n),
			     "op %u target %u: new blocks", op, m->w[k]);
	}
	m->full += rc == -ENOBUFS;
	if (rc || rq.peek)
		return;
	cr_assert(rq.pin_target == RT_NO_PIN || plan.first.target == rq.pin_target);
	m->live[m->nlive++] = (struct m_req){
	    .h = plan.first.load,
	    .start_ns = m->now,
	    .pending = no_prefill ? 0 : ntokens,
	    .blocks = n,
	    .target = plan.first.target,
	    .family = (uint8_t)family,
	    .unique = unique,
	};
}

/* Pick a live request's handle (its index in *@live) or, sometimes, a released one. */
static rt_load_t m_pick(const struct m_model *m, struct t_rng *rng, int *live)
{
	*live = -1;
	if (m->nlive && (!m->ndead || t_rng_chance(rng, 85))) {
		*live = (int)t_rng_below(rng, m->nlive);
		return m->live[*live].h;
	}
	if (!m->ndead)
		return 0;
	return m->dead[t_rng_below(rng, m->ndead < M_DEAD ? m->ndead : M_DEAD)];
}

static void m_step(struct m_model *m, struct t_rng *rng, uint32_t op)
{
	uint32_t dice = t_rng_below(rng, 100);
	int live, rc;
	rt_load_t h;

	m->now += 2 * t_rng_below(rng, 64);
	if (dice < 40) {
		m_route(m, rng, op);
	} else if (dice < 60) {
		h = m_pick(m, rng, &live);
		rc = rt_first_token(&m->t.core, h);
		cr_assert_eq(rc, live >= 0 ? 0 : -ESTALE, "op %u: rt_first_token %d", op, rc);
		if (live >= 0)
			m->live[live].pending = 0;
		m->stale += live < 0;
	} else if (dice < 92) {
		h = m_pick(m, rng, &live);
		rc = rt_release(&m->t.core, h);
		cr_assert_eq(rc, live >= 0 ? 0 : -ESTALE, "op %u: rt_release %d", op, rc);
		if (live >= 0)
			m_bury(m, (uint32_t)live);
		m->released += live >= 0;
		m->stale += live < 0;
	} else {
		uint64_t now = m->now + 1;
		size_t want = 0;

		for (uint32_t i = m->nlive; i-- > 0;) {
			if (now - m->live[i].start_ns >= M_EXPIRY) {
				m_bury(m, i);
				want++;
			}
		}
		cr_assert_eq(rt_sweep(&m->t.core, now), want, "op %u: rt_sweep", op);
		m->expired += want;
	}
	m_check(m, op);
}

Test(route_model, random_operations_match_a_reference_model)
{
	static struct m_model m;
	struct rt_config cfg;
	struct rt_core_stats st;
	struct t_rng rng;

	memset(&m, 0, sizeof(m));
	t_route_config(&cfg);
	cfg.max_requests = M_LIVE;
	cfg.max_active_blocks = 1u << 14; /* never full here: the model dedups every block */
	cfg.expiry_ns = M_EXPIRY;
	t_open_agg(&m.t, &cfg, m.w, M_TARGETS);
	for (uint32_t f = 0; f < M_FAMILIES; f++)
		t_tokens(m.tok[f], (M_BLOCKS + 1) * BS, 100 + f);
	t_rng_seed(&rng, 2024);
	for (uint32_t op = 0; op < M_OPS; op++)
		m_step(&m, &rng, op);
	/* The run must have reached every path it checks. */
	cr_assert_gt(m.full, 0, "never filled the request table");
	cr_assert_gt(m.expired, 0, "never swept");
	cr_assert_gt(m.stale, 0, "never replayed a stale handle");
	while (m.nlive) {
		cr_assert_eq(rt_release(&m.t.core, m.live[0].h), 0);
		m_bury(&m, 0);
		m.released++;
	}
	m_check(&m, M_OPS);
	st = t_core_stats(&m.t.core);
	cr_assert_eq(st.released, m.released);
	cr_assert_eq(st.stale_handle, m.stale);
	cr_assert_eq(st.expired, m.expired);
	cr_assert_eq(st.requests_full, m.full);
	cr_assert_eq(st.blocks_untracked, 0);
	t_route_close(&m.t);
}
