/*
 * @internal Routing policy internals; include route.h, never this file.
 *
 * Who writes what:
 * - struct rt_router (registry): the control thread, while cores route. Cores read the pools
 *   (published entry by entry, R5/A5), the model count (R7/A7), and the fields of the targets
 *   they find there. A target's fields change only while it is in no pool and no core can
 *   still be reading it: a target leaving its pool is reused only after every core has
 *   finished the decision it was in (F5/F6, R6/A6: quiescent-state reclamation, with a
 *   decision as the critical section), and only once no load is recorded on it.
 * - struct rt_share (predicted load of one core): that core alone. Other cores read its
 *   per-target counters relaxed to sum a target's load, so no cache line is written by two
 *   cores per request; a block in flight from two cores on one target counts twice (dedup is
 *   per core), which only errs towards spreading load.
 * - struct rt_core: its thread alone, apart from the counters that rt_core_stats() reads.
 */
#ifndef PD_DATAPLANE_ROUTE_PVT_H
#define PD_DATAPLANE_ROUTE_PVT_H

#ifndef PD_DATAPLANE_ROUTE_H
#error "include route.h, not route_pvt.h"
#endif

#include <stdatomic.h>
#include <stddef.h>

#include "counter.h"

#define RT_NIL UINT32_MAX
#define RT_STAGES 4u
#define RT_CHUNK_SEQS 16u /* prefix keys per chunk of a request's record: two cache lines */

enum rt_target_state { RT_TARGET_FREE, RT_TARGET_LIVE, RT_TARGET_DRAINING };

/* A transfer rule resolved at registration: a domain key id instead of a name. */
struct rt_rule {
	int8_t key;		/* domain key id, or -1: no rule */
	uint8_t enforcement;	/* enum rt_enforcement */
	double discount;	/* exp(-tanh(preferred_weight)) */
};

struct rt_target {
	uint32_t worker;
	uint32_t dp_rank;
	void *cookie; /* rt_worker_spec.cookie */
	uint16_t model;
	uint8_t type;		 /* enum rt_worker_type */
	_Atomic uint8_t state;	 /* enum rt_target_state; the control thread's bookkeeping */
	uint32_t block_size;
	uint64_t kv_capacity_blocks;
	uint16_t domain[RT_DOMAIN_KEYS]; /* value id per domain key; 0: not given */
	struct rt_rule rule;		 /* applies when this target prefills */
	/* Writer: control thread (rt_report_load); cores read relaxed: a stale value only delays
	 * a busy verdict by one report. */
	_Atomic uint64_t reported_used_blocks;
	_Atomic uint64_t reported_prefill_tokens;
};

struct rt_worker {
	uint32_t id;
	bool live;
	bool draining;	  /* unregistered, index drop still owed */
	uint16_t ntargets;
	uint16_t *targets; /* by DP rank, from dp_rank_start */
};

struct rt_pool {
	_Atomic(uint16_t) *targets; /* room for max_targets; writer: control thread */
	_Atomic uint32_t n;
	_Atomic uint32_t block_size; /* of its first target; 0 while empty */
};

/* A5: the pool's size, and with it the entries and fields published before; pairs with R5. */
static inline uint32_t rt_pool_size(const struct rt_pool *p)
{
	return atomic_load_explicit(&p->n, memory_order_acquire);
}

/* A5: entry @i, and the fields of its target; pairs with R5 in pool_add()/pool_remove(). */
static inline uint16_t rt_pool_target(const struct rt_pool *p, uint32_t i)
{
	return atomic_load_explicit(&p->targets[i], memory_order_acquire);
}

static inline uint32_t rt_pool_block_size(const struct rt_pool *p)
{
	/* Relaxed: set with the pool's first target, which R5 publishes. */
	return atomic_load_explicit(&p->block_size, memory_order_relaxed);
}

struct rt_model {
	char *name;
	size_t len;
	struct rt_pool pool[RT_WORKER_TYPES];
};

/*
 * Is target @t in one of @md's pools [@lo, @hi] right now? A target found by id (a pin, the
 * prefill target of an earlier plan) may be read only after this says yes: its fields were
 * published with its entry (A5), and the current decision keeps them from changing (R6).
 */
static inline bool rt_pools_hold(const struct rt_model *md, int lo, int hi, int32_t t)
{
	for (int p = lo; p <= hi; p++) {
		uint32_t n = rt_pool_size(&md->pool[p]);

		for (uint32_t i = 0; i < n; i++)
			if (rt_pool_target(&md->pool[p], i) == t)
				return true;
	}
	return false;
}

struct rt_router {
	struct rt_config cfg;
	struct pdx *index;
	struct rt_rule rule;		   /* the global transfer rule */
	_Atomic uint32_t required_rules; /* live targets whose rule is required; relaxed hint */
	struct rt_target *target;
	uint32_t target_cursor; /* next id to try: ids are reused as late as possible */
	struct rt_worker *worker;
	uint32_t nworkers;
	struct rt_model *model; /* [max_models], never moves */
	_Atomic uint32_t nmodels; /* R7/A7: a model's fields before the count that shows it */
	uint64_t *gone_seq;	  /* [max_targets][cores]: each core's decision when it left */
	char *domain_key[RT_DOMAIN_KEYS];
	uint32_t ndomain_keys;
	char **domain_value; /* [RT_DOMAIN_VALUES], id i + 1 */
	uint8_t *domain_value_key;
	uint32_t ndomain_values;
	/* Set by rt_core_init() before the core routes, read by every core to sum loads;
	 * cores are all set up before routing starts and torn down after it stops. */
	_Atomic(struct rt_share *) share[RT_CORES_LIMIT]; /* R8/A8 in rt_core_share() */
};

/* A core's predicted load on one target. Writer: that core; readers: all cores, relaxed. */
struct rt_tload {
	_Atomic uint64_t blocks;
	_Atomic uint64_t prefill_tokens;
};

/*
 * A slot of a core's dedup table, one of two kinds sharing the table (route_load.c):
 * a prefix, @tag = RT_TAG_PREFIX: the targets holding @seq, either one target inline with its
 *   reference count, or a bitmap (@val - 1) with a pair slot per target;
 * a pair, @tag = target: @val requests on that target carry the prefix @seq in flight.
 * @val 0: empty slot.
 */
struct rt_active {
	uint64_t seq;
	uint32_t tag;
	uint32_t val;
};

#define RT_TAG_PREFIX UINT32_MAX

/* One in-flight request's load. */
struct rt_inflight {
	uint64_t start_ns;
	uint64_t prefill_tokens; /* still counted while prefill_pending */
	uint32_t gen;		 /* bumped on release: stale handles miss */
	uint16_t target;
	bool live;
	bool prefill_pending;
	uint32_t nmapped;  /* blocks in the dedup table, their hashes in chunks */
	uint32_t nprivate; /* blocks counted without dedup */
	uint32_t chunk;	   /* first chunk of hashes, or RT_NIL */
	uint32_t prev, next; /* FIFO by start time while live; next: free list */
};

struct rt_share {
	struct rt_tload *tl; /* [max_targets] */
	/* Requests in flight per target, whatever load they carry (a finished prefill carries
	 * none): a departed target's id is not handed out while any core has one. Writer: the
	 * core; the control thread reads it relaxed, after grace_over()'s acquire (A6). */
	_Atomic uint64_t *inflight; /* [max_targets] */
	uint32_t core;	     /* index of the owning core, part of every handle */
	/* Decisions begun and ended, times two: odd while deciding. Writer: the core; the control
	 * thread reads it to know when a target that left its pool is no longer looked at. */
	_Atomic uint64_t decision;
	struct rt_active *map; /* huge pages: probed at random */
	size_t map_bytes, sets_bytes;
	uint32_t map_mask;
	uint32_t map_live;  /* occupied slots */
	uint32_t map_limit; /* (prefix, target) pairs allowed: the table stays at most half full */
	uint32_t pairs;	    /* in flight, inline or in a pair slot */
	/* Holder sets: bitmaps of set_words words after a word counting the members. */
	uint64_t *sets;
	uint32_t set_words;
	uint32_t set_free; /* free list through word 0, RT_NIL at the end */
	uint64_t *alive;   /* rt_share_already() scratch: set_words words */
	uint64_t *chunk_seq; /* RT_CHUNK_SEQS per chunk */
	uint32_t *chunk_next;
	uint32_t chunk_free;
	struct rt_inflight *req;
	uint32_t free_head;
	uint32_t fifo_head, fifo_tail;
};

#define RT_NSTATS (sizeof(struct rt_core_stats) / sizeof(uint64_t))

struct rt_core {
	struct rt_router *rt;
	uint32_t index;
	int32_t pin_serve, pin_prefill; /* the request's pins as target ids (request_begin()) */
	struct pdx_reader *reader;
	struct rt_share share;
	uint64_t rng; /* splitmix64 state */
	struct rt_policy policy; /* the current request's: the router's with its overrides */
	/* Writer: this core (relaxed load + store, never a locked RMW); rt_core_stats() reads. */
	_Atomic uint64_t stat[RT_NSTATS];
	/* Prompt hashes of the current request, at block size @hashed_bs (0: none yet): local
	 * hashes, and the prefix keys of the dedup table (route_score.c). */
	uint64_t *local;
	uint64_t *seq;
	uint32_t hashed_bs;
	bool seq_ready;
	/* Per-target scratch; all zero between decisions (cleared through @touched). */
	struct pdx_overlap *match;
	uint32_t *overlap;
	uint32_t *already;
	uint16_t *touched;
	uint32_t ntouched;
	/* Domain values that hold a serving target of the model, per key (RT_FILTER_NO_DECODE). */
	uint64_t *has_decode; /* [RT_DOMAIN_KEYS][RT_DOMAIN_VALUES / 64] */
	uint32_t has_decode_keys;
	double *weight; /* temperature sampling */
	uint32_t *tie;	/* candidates tied for the lowest cost */
	/* Round-robin only (else NULL): per model and stage, the candidate index after the last
	 * one chosen, in pool order (route_score.c). */
	uint32_t *rr_next; /* [max_models][RT_STAGES] */
	struct rt_candidate *cand[RT_STAGES];
	struct rt_explain explain[RT_STAGES];
};

/* What one routing stage decides over (route_score.c). */
struct rt_stage_in {
	enum rt_stage stage;
	const struct rt_model *md;
	struct rt_policy pol;
	uint32_t block_size;
	double inv_block_size;
	int32_t pin;
	int32_t serve_pin;		 /* prefill stage: the request's decode pin */
	const struct rt_target *prefill; /* decode stage: whose transfer rule applies; or NULL */
	bool filtering;			 /* some filter may exclude a target */
	bool by_cost;			 /* cheapest or softmax by @pol: kv and least-loaded */
	enum rt_policy_kind kind;
};

/* A stage's load to record (route_load.c). */
struct rt_share_load {
	uint64_t now_ns;
	const uint64_t *seq; /* sequence hashes to deduplicate, or NULL: all blocks count */
	uint32_t blocks;
	uint64_t prefill_tokens;
	uint16_t target;
};


/* Every core's per-target counters, gathered once for a decision or a scan of the targets. */
struct rt_shares {
	uint32_t n;
	const struct rt_tload *tl[RT_CORES_LIMIT];
	_Atomic uint64_t *const *inflight[RT_CORES_LIMIT];
};

/*
 * Core @k's share, or NULL before rt_core_init() of that core. A8: its arrays, set up before
 * the pointer, come with it; pairs with R8 in rt_core_init(). A core is destroyed only once no
 * thread routes or registers any more (route.h), so a share seen here stays valid.
 */
static inline struct rt_share *rt_core_share(const struct rt_router *rt, uint32_t k)
{
	return atomic_load_explicit(&((struct rt_router *)rt)->share[k], memory_order_acquire);
}

static inline void rt_shares_get(const struct rt_router *rt, struct rt_shares *sh)
{
	struct rt_share *share;

	sh->n = 0;
	for (uint32_t k = 0; k < rt->cfg.cores; k++)
		if ((share = rt_core_share(rt, k))) {
			sh->inflight[sh->n] = &share->inflight;
			sh->tl[sh->n++] = share->tl;
		}
}

/* Requests in flight on @target over the cores (relaxed: see rt_share.inflight). */
static inline uint64_t rt_shares_inflight(const struct rt_shares *sh, uint16_t target)
{
	uint64_t n = 0;

	for (uint32_t k = 0; k < sh->n; k++)
		n += atomic_load_explicit(&(*sh->inflight[k])[target], memory_order_relaxed);
	return n;
}

/* Predicted load of @target summed over the cores. */
static inline void rt_shares_sum(const struct rt_shares *sh, uint16_t target, uint64_t *blocks,
				 uint64_t *prefill_tokens)
{
	uint64_t b = 0, p = 0;

	for (uint32_t k = 0; k < sh->n; k++) {
		/* Relaxed: each counter has one writer, and a cost may use a slightly old value. */
		b += atomic_load_explicit(&sh->tl[k][target].blocks, memory_order_relaxed);
		p += atomic_load_explicit(&sh->tl[k][target].prefill_tokens, memory_order_relaxed);
	}
	*blocks = b;
	*prefill_tokens = p;
}

/* route_load.c: the core's own predicted load. */
int rt_share_init(struct rt_share *s, const struct rt_config *cfg, uint32_t core);
void rt_share_destroy(struct rt_share *s);
/* already[t] = leading blocks of @seq in flight on t (for each t with some); those t go to
 * @touched. @already must be zero for them before. */
void rt_share_already(struct rt_share *s, const uint64_t *seq, uint32_t n,
		      uint32_t *already, uint16_t *touched, uint32_t *ntouched);
/* Returns 0 with *out set, or -ENOBUFS; *untracked: blocks not deduplicated (table full). */
int rt_share_add(struct rt_share *s, const struct rt_share_load *a, rt_load_t *out,
		 uint32_t *untracked);
int rt_share_first_token(struct rt_share *s, uint32_t max_requests, rt_load_t h);
int rt_share_release(struct rt_share *s, uint32_t max_requests, rt_load_t h);
size_t rt_share_sweep(struct rt_share *s, uint64_t now_ns, uint64_t expiry_ns);

/* route_score.c: filter, score, select and record one stage. */
int rt_stage_decide(struct rt_core *c, const struct rt_request *rq, const struct rt_stage_in *in,
		    struct rt_choice *out);

/* route_registry.c: are the knobs of @p in range (finite, none negative)? */
bool rt_policy_ok(const struct rt_policy *p);

/* route_topology.c: names, interning (ids outlive their workers; -ENOSPC when full), rules. */
bool rt_name_ok(const char *s); /* non-empty, at most RT_NAME_MAX bytes */
int rt_domain_key_intern(struct rt_router *rt, const char *name);
int rt_domain_value_intern(struct rt_router *rt, int key, const char *value);
int rt_transfer_check(const struct rt_transfer *t, char *err, size_t errlen);
int rt_rule_resolve(struct rt_router *rt, const struct rt_transfer *t, struct rt_rule *out,
		    char *err, size_t errlen);
int rt_required_domain_check(const struct rt_router *rt, const struct rt_worker_spec *s,
			     char *err, size_t errlen);

/* route.c */
uint64_t rt_core_random(struct rt_core *c);
void rt_core_add(struct rt_core *c, size_t stat, uint64_t v);

#define RT_STAT(name) (offsetof(struct rt_core_stats, name) / sizeof(uint64_t))

#endif
