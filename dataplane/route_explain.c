/*
 * Explanations as text, for the daemon's debug log and pdctl: one line for the decision, one
 * per candidate. Formatting happens only when someone asks; the decision itself just leaves its
 * candidate array behind (route_score.c).
 */
#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "route.h"

struct out {
	char *buf;
	size_t len, used; /* @used may pass @len: the length a big enough buffer would need */
};

static void put(struct out *o, const char *fmt, ...)
{
	size_t room = o->used < o->len ? o->len - o->used : 0;
	va_list ap;
	int n;

	va_start(ap, fmt);
	n = vsnprintf(room ? o->buf + o->used : NULL, room, fmt, ap);
	va_end(ap);
	if (n > 0)
		o->used += (size_t)n;
}

static const char *outcome_name(int outcome)
{
	switch (outcome) {
	case 0:
		return "ok";
	case -ENODEV:
		return "no_target";
	case -EBUSY:
		return "overloaded";
	case -EXDEV:
		return "no_decode_in_domain";
	case -ENOBUFS:
		return "no_request_slot";
	case -E2BIG:
		return "prompt_too_long";
	default:
		return "error";
	}
}

static void put_candidate(struct out *o, const struct rt_router *rt, const struct rt_candidate *c,
			  bool chosen)
{
	const struct rt_target *t = &rt->target[c->target];

	put(o, "%c target=%u worker=%u rank=%u", chosen ? '*' : ' ', c->target, t->worker,
	    t->dp_rank);
	if (c->filter == RT_FILTER_BUSY_KV) {
		put(o, " filtered=busy_kv used_blocks=%u capacity=%" PRIu64 " limit=%g\n",
		    c->busy_over, t->kv_capacity_blocks, rt->cfg.busy_kv_fraction);
		return;
	}
	if (c->filter == RT_FILTER_BUSY_PREFILL) {
		put(o, " filtered=busy_prefill prefill_tokens=%u limit=%" PRIu64 "\n", c->busy_over,
		    rt->cfg.busy_prefill_tokens);
		return;
	}
	if (c->filter != RT_ELIGIBLE) {
		put(o, " filtered=%s\n", rt_filter_name((enum rt_filter)c->filter));
		return;
	}
	put(o, " overlap=%u new_blocks=%u prefill_blocks=%.3f decode_blocks=%.0f cost=%.3f%s\n",
	    c->overlap, c->new_blocks, c->prefill_blocks, c->decode_blocks, c->cost,
	    c->same_domain ? " same_domain" : "");
}

size_t rt_explain_format(const struct rt_router *rt, const struct rt_explain *ex, char *buf,
			 size_t len)
{
	const struct rt_policy *p = &ex->policy;
	struct out o = {.buf = buf, .len = len};

	if (len)
		buf[0] = '\0';
	put(&o, "stage=%s model=%.*s blocks=%u outcome=%s candidates=%u policy=%s credit=%g "
		"load_scale=%g temperature=%g kv_reuse=%d active_blocks=%d prefill_tokens=%d\n",
	    rt_stage_name(ex->stage), ex->model < rt->nmodels ? (int)rt->model[ex->model].len : 1,
	    ex->model < rt->nmodels ? rt->model[ex->model].name : "?", ex->blocks,
	    outcome_name(ex->outcome), ex->ncand, rt_policy_kind_name(ex->policy_kind),
	    p->overlap_score_credit, p->prefill_load_scale, p->temperature, p->assume_kv_reuse,
	    p->track_active_blocks, p->track_prefill_tokens);
	for (uint32_t i = 0; i < ex->ncand; i++)
		put_candidate(&o, rt, &ex->cand[i], ex->outcome == 0 && i == ex->chosen);
	return o.used;
}
