/*
 * Routing policy: which worker serves a request (routing-semantics §3-§6).
 *
 * A router (struct rt_router) holds the registry the control thread maintains: models, their
 * prefill / decode / aggregated pools, targets (one per worker DP rank), topology domains and
 * worker-reported load. Each dataplane core routes with its own struct rt_core: it hashes the
 * prompt, asks the prefix index for overlaps, scores the eligible targets, picks one and records
 * the predicted load in its own share, which only it writes. No I/O, no locks, no allocation
 * after init. Internals: route_pvt.h.
 */
#ifndef PD_DATAPLANE_ROUTE_H
#define PD_DATAPLANE_ROUTE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "index.h"

#define RT_DEFAULT_EXPIRY_NS (300ull * 1000000000ull)
#define RT_DOMAIN_KEYS 8u	  /* distinct topology domain names (zone, rack, host, ...) */
#define RT_DOMAIN_VALUES 4096u	  /* distinct values over all domain names */
#define RT_NAME_MAX 255u	  /* longest model or domain name / value, in bytes */
#define RT_CORES_LIMIT 64u	  /* dataplane cores sharing one router */
#define RT_ACTIVE_BLOCKS_LIMIT (1u << 26)
#define RT_INFLIGHT_BLOCKS_LIMIT (1u << 28)

enum rt_worker_type { RT_PREFILL, RT_DECODE, RT_AGGREGATED, RT_WORKER_TYPES };

/* What a worker exposes to clients; prefill workers expose nothing ("empty"). */
enum rt_model_type { RT_MODEL_CHAT, RT_MODEL_COMPLETIONS, RT_MODEL_EMPTY };

/* What a worker needs from the others of its model. */
#define RT_NEEDS_PREFILL 1u /* a decode worker: prompts are prefilled elsewhere */
#define RT_NEEDS_DECODE 2u  /* a prefill worker: tokens are generated elsewhere */

enum rt_enforcement { RT_TRANSFER_NONE, RT_TRANSFER_PREFERRED, RT_TRANSFER_REQUIRED };

/* The knobs of one routing stage (routing-semantics §3-§4); defaults in rt_policy_default(). */
struct rt_policy {
	double overlap_score_credit; /* blocks of prefill credit per overlapping block: 1.0 */
	double prefill_load_scale;   /* weight of prefill blocks against decode blocks: 1.0 */
	double temperature;	     /* 0: cheapest wins; T > 0: softmax sampling */
	bool assume_kv_reuse;	     /* dedup in-flight blocks by sequence hash: true */
	bool track_active_blocks;    /* count in-flight blocks as decode load: true */
	bool track_prefill_tokens;   /* count not-yet-prefilled tokens as load: true */
};

/*
 * How a stage chooses among its eligible targets (after pins, topology and busy thresholds).
 * RT_POLICY_KV is routing-semantics §4; the others are baselines to compare it with, and they
 * record predicted load exactly as it does. Under a baseline the temperature (configured or
 * overridden) is ignored, and under least-loaded the overlap credit as well.
 */
enum rt_policy_kind {
	RT_POLICY_KV,		/* cheapest §4 cost, or softmax under a temperature: the default */
	RT_POLICY_ROUND_ROBIN,	/* next eligible target in pool order, a cursor per model and
				 * stage on each core */
	RT_POLICY_RANDOM,	/* uniform over the eligible targets */
	RT_POLICY_LEAST_LOADED,	/* cheapest §4 cost with overlap credit 0, no temperature */
	RT_POLICY_KINDS
};

/* KV-transfer topology rule (routing-semantics §6): domain name, enforcement, weight 0..1. */
struct rt_transfer {
	const char *domain; /* e.g. "rack"; NULL: no rule */
	enum rt_enforcement enforcement;
	double preferred_weight;
};

struct rt_config {
	struct rt_policy policy;
	/* How every stage chooses among its eligible targets; 0: RT_POLICY_KV. */
	enum rt_policy_kind policy_kind;
	struct rt_transfer transfer;	/* global rule; a worker may register its own */
	double busy_kv_fraction;	/* busy when reported used KV / capacity > this; 0: off */
	uint64_t busy_prefill_tokens;	/* busy when active prefill tokens > this; 0: off */
	uint64_t expiry_ns;		/* in-flight requests this old are swept; 0: 300 s */
	bool enforce_disagg;		/* refuse instead of decode-only fallback */
	bool bootstrap;			/* choose prefill and decode up front (SGLang style) */
	uint32_t max_targets;		/* routing targets; 0: as many as the index has */
	uint32_t max_models;		/* 0: 64 */
	uint32_t cores;			/* dataplane cores that will route; 0: 1 */
	uint32_t max_requests;		/* in-flight requests per core; 0: 16384 */
	uint32_t max_active_blocks;	/* distinct (block, target) pairs in flight per core,
					 * at most RT_ACTIVE_BLOCKS_LIMIT; 64 bytes each (the
					 * dedup table, on huge pages); 0: 1 << 18 */
	uint32_t max_inflight_blocks;	/* blocks of all in-flight requests of a core, a
					 * shared block once per request; 8 bytes each;
					 * 0: 4 x max_active_blocks */
	uint32_t max_prompt_blocks;	/* longest prompt in blocks; 0: PDX_MATCH_MAX_BLOCKS */
	uint64_t seed;			/* random source of core i: seed + i; 0 is a seed too */
};

/* A topology domain of a worker: "rack" = "r22". */
struct rt_domain {
	const char *name;
	const char *value;
};

/* Everything a worker registers (routing-semantics §5-§6). */
struct rt_worker_spec {
	const char *model;
	enum rt_worker_type type;
	enum rt_model_type model_type;
	uint32_t needs;			/* RT_NEEDS_*; must agree with @type */
	uint32_t block_size;		/* must equal its pool's */
	uint64_t kv_capacity_blocks;	/* > 0 */
	uint32_t max_batched_tokens;	/* > 0 */
	uint32_t dp_rank_start;
	uint32_t dp_ranks;		/* >= 1: one routing target each */
	const struct rt_domain *domains;
	size_t ndomains;
	struct rt_transfer transfer;	/* domain NULL: the router's rule */
	void *cookie;			/* the caller's, handed back in every rt_choice: the
					 * daemon's worker (its mailbox), published with the
					 * target so a core never sees one without the other */
};

/* Per-request overrides of the stage policy: set a bit in @set to use the field. */
#define RT_OV_CREDIT 1u
#define RT_OV_LOAD_SCALE 2u
#define RT_OV_TEMPERATURE 4u
#define RT_OV_KV_REUSE 8u
#define RT_OV_PREFILL_TOKENS 16u

struct rt_overrides {
	uint32_t set;
	double overlap_score_credit;
	double prefill_load_scale;
	double temperature;
	bool assume_kv_reuse;
	bool track_prefill_tokens;
};

#define RT_NO_PIN (-1)

/* A pin by worker id and DP rank, for callers that know workers rather than target ids. */
struct rt_pin {
	bool set;
	uint32_t worker;
	uint32_t dp_rank;
};

/* A request as the dataplane sees it: every string already turned into an id. */
struct rt_request {
	uint32_t model;		/* rt_model_find() */
	const uint32_t *tokens; /* the prompt, read in place */
	size_t ntokens;
	uint64_t hash_seed;	/* dp_hash_seed() of its LoRA name and cache salt */
	uint64_t now_ns;	/* caller's monotonic clock, for expiry */
	int32_t pin_target;	/* serve only on this decode/aggregated target, or RT_NO_PIN */
	int32_t pin_prefill;	/* prefill only on this target, or RT_NO_PIN */
	/* The same by worker: when set, they win over the two above; the target is looked up
	 * inside the decision, where registrations cannot change it (a worker that is not in
	 * the model's pools leaves no eligible target: -ENODEV). */
	struct rt_pin pin_worker;
	struct rt_pin pin_prefill_worker;
	bool peek;		/* decide and explain, change nothing */
	struct rt_overrides ov;
};

/* Handle of the predicted load one stage put on a target; 0 when none (a peek). */
typedef uint64_t rt_load_t;

/* One stage's choice. */
struct rt_choice {
	uint16_t target;
	uint32_t worker;
	uint32_t dp_rank;
	void *cookie;	  /* the worker's rt_worker_spec.cookie */
	uint32_t overlap; /* leading prompt blocks the target holds; 0 when the stage did not
			   * query the index (decode stage: no credit, no prefill tokens) */
	rt_load_t load;
};

enum rt_plan_kind {
	RT_PLAN_AGGREGATED, /* one stage: the model has no prefill targets */
	RT_PLAN_DISAGG,	    /* prefill now; rt_route_decode() when it returns */
	RT_PLAN_FALLBACK,   /* disaggregated model, no usable prefill target: decode-only */
	RT_PLAN_BOOTSTRAP,  /* prefill and decode chosen together, sharing @room_id */
};

struct rt_plan {
	enum rt_plan_kind kind;
	struct rt_choice first;	 /* prefill target, or the only one */
	struct rt_choice decode; /* RT_PLAN_BOOTSTRAP only */
	uint64_t room_id;	 /* RT_PLAN_BOOTSTRAP only: random, 63 bits */
};

/* Why a candidate was not scored. */
enum rt_filter {
	RT_ELIGIBLE,
	RT_FILTER_PIN,		/* the request pinned another target */
	RT_FILTER_TOPOLOGY,	/* outside the prefill target's required transfer domain */
	RT_FILTER_NO_DECODE,	/* prefill target whose required domain holds no decode target */
	RT_FILTER_BUSY_KV,	/* reported KV use above busy_kv_fraction */
	RT_FILTER_BUSY_PREFILL, /* active prefill tokens above busy_prefill_tokens */
};

/* One candidate of a decision, as it was scored. */
struct rt_candidate {
	uint16_t target;
	uint8_t filter;		/* enum rt_filter */
	uint8_t same_domain;	/* 1: preferred-domain discount applied */
	uint32_t overlap;	/* leading blocks held */
	uint32_t new_blocks;	/* request blocks not already in flight on the target */
	uint32_t busy_over;	/* filtered busy: the KV blocks used (reported) or the prefill
				 * tokens (the larger of predicted and reported) that exceeded the
				 * threshold, saturated at UINT32_MAX */
	double prefill_blocks;	/* (active prefill tokens + isl) / block size */
	double decode_blocks;	/* active blocks + new blocks */
	double cost;
};

enum rt_stage { RT_STAGE_AGGREGATED, RT_STAGE_PREFILL, RT_STAGE_DECODE, RT_STAGE_FALLBACK };

/* The explanation of one stage: valid until the core decides that stage again. */
struct rt_explain {
	enum rt_stage stage;
	int outcome;		/* 0 or the stage's negative errno */
	uint32_t model;
	uint32_t blocks;	/* prompt blocks at the stage's block size */
	struct rt_policy policy; /* after overrides and stage rules */
	enum rt_policy_kind policy_kind; /* the router's: which rule made @chosen */
	uint32_t ncand;
	uint32_t chosen;	/* index into @cand, when outcome is 0 */
	const struct rt_candidate *cand;
};

/* Counters of one core; written by that core only, read relaxed by anyone. */
struct rt_core_stats {
	uint64_t decisions;	    /* stages decided (peeks included) */
	uint64_t peeks;
	uint64_t no_target;	    /* -ENODEV outcomes */
	uint64_t overloaded;	    /* -EBUSY outcomes */
	uint64_t no_decode_domain;  /* -EXDEV outcomes: failed before prefill */
	uint64_t fallback_no_prefill;
	uint64_t fallback_prefill_failed;
	uint64_t enforce_refused;   /* fallback refused by enforce_disagg */
	uint64_t released;
	uint64_t expired;	    /* swept by rt_sweep() */
	uint64_t stale_handle;	    /* release or first token of a handle not in flight */
	uint64_t blocks_untracked;  /* blocks counted without dedup: a dedup limit was reached */
	uint64_t requests_full;	    /* -ENOBUFS: no in-flight slot left */
};

#include "route_pvt.h" /* struct rt_router, struct rt_core: needs the types above */

/* The defaults of routing-semantics §3-§4. */
void rt_policy_default(struct rt_policy *p);

/* Defaults everywhere: rt_policy_default(), expiry 300 s, no busy thresholds, no topology. */
void rt_config_default(struct rt_config *cfg);

/**
 * rt_router_init - set up a router over prefix index @index.
 * @rt: caller-provided storage for the router.
 * @cfg: configuration, copied; NULL for rt_config_default().
 * @index: the prefix index; the router drops a leaving worker's targets from it, so
 *         @cfg->max_targets must not exceed the index's.
 *
 * Returns 0, -EINVAL for a value out of range (a negative or non-finite policy knob, an
 * unknown policy kind, a bad cfg->transfer, a limit too large), or -ENOMEM.
 * Context: control thread, before any core routes.
 */
int rt_router_init(struct rt_router *rt, const struct rt_config *cfg, struct pdx *index);

/* Free what the router holds; every core must have been destroyed first. */
void rt_router_destroy(struct rt_router *rt);

/**
 * rt_register - add a worker and one routing target per DP rank.
 * @worker: the caller's id of the worker (its connection), unique among live workers.
 * @err: receives a reason a worker can print when registration is refused; may be NULL.
 *
 * Returns 0, or a negative errno with nothing changed:
 * -EEXIST: @worker is registered already;
 * -EINVAL: an invalid field, including a block size that differs from its pool's (@err says);
 * -ENOSPC: no free routing target, model slot or domain value left;
 * -ENOMEM.
 * Context: control thread, while cores route: a new target is published to them whole, and
 * a departed target's id is reused only after every core has finished the decision it was in
 * and no load is recorded on it (route_pvt.h).
 */
int rt_register(struct rt_router *rt, uint32_t worker, const struct rt_worker_spec *spec,
		char *err, size_t errlen);

/**
 * rt_unregister - remove a worker: its targets leave their pool and the prefix index.
 *
 * A model's prefill stage deactivates when its last prefill target leaves. Load still in
 * flight on the targets stays counted until its handles are released or swept, and the ids
 * are not handed out again before that.
 * Returns 0, -ENOENT for an unknown worker, or -ENOMEM when the index could not drop every
 * block (the worker is gone from the pools; its target ids stay reserved until
 * rt_unregister() of the same worker succeeds).
 * Context: as rt_register().
 */
int rt_unregister(struct rt_router *rt, uint32_t worker);

/**
 * rt_report_load - store what a worker reports about one DP rank's load.
 *
 * Kept apart from the router's own predictions and used only by the busy thresholds.
 * Returns 0 or -ENOENT for an unknown worker or rank.
 * Context: control thread; cores read the values concurrently.
 */
int rt_report_load(struct rt_router *rt, uint32_t worker, uint32_t dp_rank,
		   uint64_t used_blocks, uint64_t prefill_tokens);

/* Id of model @name for rt_request.model, or -ENOENT. Context: any thread. */
int rt_model_find(const struct rt_router *rt, const char *name, size_t len);

/* Target of (@worker, @dp_rank), or -ENOENT. Context: control thread (cores pin with
 * rt_request.pin_worker: a target found here may be gone by the time a core used it). */
int rt_target_find(const struct rt_router *rt, uint32_t worker, uint32_t dp_rank);

/* Is the model's prefill stage active: it has prefill targets and decode or aggregated ones? */
bool rt_disagg_active(const struct rt_router *rt, uint32_t model);

/* What the admin interface shows of a routing target. */
struct rt_target_info {
	uint32_t worker;
	uint32_t dp_rank;
	const char *model;
	enum rt_worker_type type;
	uint32_t block_size;
	uint64_t kv_capacity_blocks;
	uint64_t reported_used_blocks;
	uint64_t reported_prefill_tokens;
	uint32_t ndomains;
	struct rt_domain domains[RT_DOMAIN_KEYS];
};

/**
 * rt_target_info - describe live target @target. Returns 0, or -ENOENT for one not live.
 * Context: control thread (the strings are the registry's, valid until it changes).
 */
int rt_target_info(const struct rt_router *rt, uint16_t target, struct rt_target_info *out);

/* Models registered so far (ids 0 .. n-1; a model keeps its id). Context: any thread. */
uint32_t rt_model_count(const struct rt_router *rt);

/* Model @model's name and the size of each of its pools (by enum rt_worker_type). */
const char *rt_model_info(const struct rt_router *rt, uint32_t model,
			  uint32_t pool_size[RT_WORKER_TYPES]);

/* Short name of a worker type ("prefill", "decode", "aggregated"). */
const char *rt_worker_type_name(enum rt_worker_type type);

/**
 * rt_core_init - set up dataplane core @index (0 .. cfg.cores-1) of @rt.
 * @core: caller-provided storage.
 *
 * Attaches a reader to the prefix index and allocates everything the core will need.
 * Returns 0, -EINVAL (bad or taken @index), -EBUSY (no index reader left) or -ENOMEM.
 * Context: any thread, also while other cores route and the control thread registers: the
 * share is published whole (R8/A8). The core then belongs to one thread.
 */
int rt_core_init(struct rt_core *core, struct rt_router *rt, uint32_t index);

/* Detach from the index and free what the core holds; its in-flight load goes with it.
 * Context: once no core routes and the control thread registers no more: both read every
 * core's counters. */
void rt_core_destroy(struct rt_core *core);

/**
 * rt_route - decide where a new request goes.
 * @plan: the decision; its handles carry the load recorded for it (none for a peek).
 *
 * A model with prefill targets (rt_disagg_active()) gets a prefill target; the decode target
 * is chosen when prefill returns (rt_route_decode()), or right away with cfg.bootstrap.
 * Without a usable prefill target the request falls back to decode-only (counted), unless
 * cfg.enforce_disagg. Returns 0 or:
 * -ENOENT: unknown model;
 * -ENODEV: no eligible target (none registered, or pins and topology exclude all);
 * -EBUSY:  every eligible target is over a busy threshold (overloaded);
 * -EXDEV:  required topology: no decode target shares any prefill target's transfer domain
 *          (nothing was dispatched);
 * -EINVAL: an override out of range (negative, NaN or infinite), or no tokens with ntokens;
 * -E2BIG:  prompt longer than cfg.max_prompt_blocks;
 * -ENOBUFS: no in-flight slot left on this core (counted).
 * With enforce_disagg, the prefill stage's own -ENODEV or -EBUSY is returned.
 * Context: the thread owning @core; never blocks or allocates.
 */
int rt_route(struct rt_core *core, const struct rt_request *rq, struct rt_plan *plan);

/**
 * rt_route_decode - choose the decode target after prefill target @prefill returned.
 * @prefill: the prefill stage's target; one that has left its pool since (drained or gone)
 *           is still taken while the caller holds the prefill's load handle, which keeps its
 *           id from being handed to another worker.
 *
 * Disaggregated decode stage: no overlap credit, no KV-reuse assumption, no prefill tokens,
 * and @prefill's transfer-domain rule. Returns 0, -ENODEV, -EBUSY or -EXDEV as rt_route()
 * (-EXDEV: @prefill's required domain holds no decode target any more), -ENOENT for an
 * unknown model or @prefill.
 * Context: as rt_route().
 */
int rt_route_decode(struct rt_core *core, const struct rt_request *rq, uint16_t prefill,
		    struct rt_choice *out);

/**
 * rt_route_fallback - decode-only target for a request whose prefill failed.
 *
 * Counted. Returns as rt_route()'s aggregated stage; -EPERM under enforce_disagg (counted).
 * Context: as rt_route().
 */
int rt_route_fallback(struct rt_core *core, const struct rt_request *rq, struct rt_choice *out);

/**
 * rt_first_token - the request behind @load produced its first token (or its prefill
 * returned): its prefill tokens stop counting, its blocks stay.
 *
 * Returns 0 or -ESTALE for a handle no longer in flight (counted).
 * Context: the core that made @load.
 */
int rt_first_token(struct rt_core *core, rt_load_t load);

/**
 * rt_release - the request behind @load ended, was cancelled or failed: drop its load.
 *
 * Returns 0 or -ESTALE (counted) when it was released or swept already, or belongs to
 * another core, so every path may release without double counting.
 * Context: the core that made @load.
 */
int rt_release(struct rt_core *core, rt_load_t load);

/**
 * rt_sweep - release every request routed at least cfg.expiry_ns before @now_ns.
 *
 * Requests are swept in routing order: pass each request's routing time as its now_ns, from
 * one monotonic clock; a request routed with an older time than the one before it is swept
 * only after that one. Returns how many were released (counted in expired).
 * Context: the thread owning @core.
 */
size_t rt_sweep(struct rt_core *core, uint64_t now_ns);

/* The explanation of the core's last decision of @stage. */
const struct rt_explain *rt_core_explain(const struct rt_core *core, enum rt_stage stage);

/**
 * rt_explain_format - an explanation as text: a line for the decision (stage, model, prompt
 * blocks, outcome, the policy kind as policy=NAME and its knobs), then a line per candidate
 * (its figures, or why it was filtered), the chosen one marked '*'.
 * @buf: receives the text, cut short (and terminated) when @len is too small.
 *
 * Returns the length the whole text needs, as snprintf() does.
 * Context: the thread owning the core @ex came from, while no registration runs.
 */
size_t rt_explain_format(const struct rt_router *rt, const struct rt_explain *ex, char *buf,
			 size_t len);

/* Copy the core's counters. */
void rt_core_stats(const struct rt_core *core, struct rt_core_stats *out);

/**
 * rt_target_load - predicted load of @target summed over every core.
 * @blocks: receives its distinct in-flight blocks (deduplicated per core).
 * @prefill_tokens: receives its tokens still to prefill.
 *
 * Context: any thread; each core's share is read relaxed, so the sum may lag a decision.
 */
void rt_target_load(const struct rt_router *rt, uint16_t target, uint64_t *blocks,
		    uint64_t *prefill_tokens);

/* Name of a policy kind ("kv", "round-robin", "random", "least-loaded"); "unknown" else. */
const char *rt_policy_kind_name(enum rt_policy_kind kind);

/* The policy kind named @name (as rt_policy_kind_name() spells it), or -EINVAL. */
int rt_policy_kind_parse(const char *name);

/* Short name of a stage or filter for logs ("prefill", "busy_kv", ...). */
const char *rt_stage_name(enum rt_stage stage);
const char *rt_filter_name(enum rt_filter filter);

#endif
