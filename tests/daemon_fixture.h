/*
 * A fixture for the end-to-end tests of the daemon (test_daemon_*.c): pdrouter and pdmock
 * workers as real processes in a fresh temporary directory, libpdclient connections to the
 * router, and the admin socket (control/admin.h) to watch pools, targets and counters. One
 * fixture per test process, in the global t_d: Criterion forks a process per test, and its
 * .fini (t_daemon_fini) kills and reaps whatever is left even after a failed assertion. Every
 * helper fails the running test through Criterion when something it needs does not work; every
 * wait polls a condition under a deadline (the machine may be small and busy).
 */
#ifndef PD_TESTS_DAEMON_FIXTURE_H
#define PD_TESTS_DAEMON_FIXTURE_H

#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>

#include "pdclient.h"

#include "sanitized.h" /* T_SANITIZED */

#define T_MODEL "m" /* the model every worker serves unless told otherwise */
#define T_BLOCK 64u /* pdmock's block size, in tokens */
#define T_MAX_WORKERS 8u
#define T_MAX_FLAGS 24u
/* How long anything that should happen may take: an answer, a registration, an exit. */
#define T_DEADLINE_MS (T_SANITIZED ? 30000 : 10000)
#define T_STALL "600000" /* --stall-ms of a worker that holds its requests for good */

struct t_daemon {
	char dir[64];
	char listen[96]; /* "unix:DIR/c.sock", what pdc_connect() takes */
	char client_path[80], control_path[80], admin_path[80];
	pid_t router;			/* 0: none running */
	const char *flags[T_MAX_FLAGS]; /* the router's test-specific flags, kept for a restart */
	uint32_t nflags;
	struct {
		pid_t pid;
		uint32_t id; /* the id the router gave it at registration */
	} w[T_MAX_WORKERS];
	uint32_t nworkers;
	uint32_t ids_seen[64]; /* every worker id the router has listed: a new one is news */
	uint32_t nids_seen;
};

extern struct t_daemon t_d;

/* Criterion .init and .fini of every daemon suite: a temporary directory; then everything
 * killed, reaped and removed. */
void t_daemon_init(void);
void t_daemon_fini(void);

/*
 * Start pdrouter on the fixture's sockets with one dataplane core, no pinning and a 1 s lease,
 * then the flags given (a NULL-terminated list), and wait until its three sockets exist and
 * its admin socket answers.
 */
void t_router_start(const char *flag, ...);

/* Start pdrouter again with the flags of the last t_router_start() (after t_router_stop()).
 * Workers that register with it again get its ids, which the fixture does not track (their
 * old ids still name them to t_worker_kill()). */
void t_router_restart(void);

/* SIGTERM the router and wait for it; asserts it exits 0 (a sanitizer finding does not) and
 * removes its three sockets. */
void t_router_stop(void);

/*
 * Start a pdmock worker of model T_MODEL in @mode (aggregated, prefill or decode), speedup
 * 100, no reconnection, then the flags given (NULL-terminated; a flag given twice takes the
 * last value), and wait until the router lists it. Returns the worker id the router gave it.
 */
uint32_t t_worker(const char *mode, ...) __attribute__((sentinel));

/* Send @sig to worker @id and reap it; SIGKILL and SIGTERM both end a pdmock. */
void t_worker_kill(uint32_t id, int sig);

/* The answer of the admin command @cmd ("counters", "workers", "models"), NUL-terminated;
 * the caller frees it. */
char *t_admin(const char *cmd);

/* The router's counter @name summed over its cores ("total" of "counters"). */
uint64_t t_counter(const char *name);

/* A routing target as "workers" lists it. */
struct t_target {
	uint32_t worker;
	char type[16]; /* prefill, decode, aggregated */
	char rack[16]; /* its "rack" domain, "" without one */
	uint64_t cached_blocks;
	uint64_t active_blocks;	 /* predicted load the router books on it */
	uint64_t prefill_tokens; /* the same, tokens still to prefill */
};

/* Fill @out for worker @worker's target; false when the router lists no such worker. */
bool t_target(uint32_t worker, struct t_target *out);

/* The targets the router lists, up to @max of them; returns how many there are. */
uint32_t t_targets(struct t_target *out, uint32_t max);

/* The pools of @model as "models" shows them; false when the router does not know it. */
struct t_pools {
	uint32_t prefill, decode, aggregated;
	bool prefill_active;
};
bool t_pools(const char *model, struct t_pools *out);

/* Wait until @model's pools hold exactly these workers. */
void t_wait_pools(const char *model, uint32_t prefill, uint32_t decode, uint32_t aggregated);

/* Wait until @cond holds, checking it every few ms; fail the test with @what after
 * T_DEADLINE_MS. */
#define T_WAIT(cond, what)                                                                         \
	do {                                                                                       \
		uint64_t t_end_ = t_now_ms() + T_DEADLINE_MS;                                      \
		while (!(cond)) {                                                                  \
			cr_assert(t_now_ms() < t_end_, "timed out waiting for %s", what);          \
			t_nap();                                                                   \
		}                                                                                  \
	} while (0)

uint64_t t_now_ms(void);
void t_nap(void); /* 2 ms: the polling interval */

/* ---- clients ---- */

/* A connection to the router. */
struct pdc_client *t_connect(void);

/* @n prompt tokens named by @tag: equal tags give equal prompts, different tags prompts that
 * differ from their first token. */
void t_prompt(uint32_t *tok, uint32_t n, uint32_t tag);

/* A request for T_MODEL with no pins and no overrides. */
struct pdc_request_args t_args(uint64_t id, const uint32_t *tok, uint32_t n, uint32_t max_tokens,
			       uint32_t flags);

/* Everything a request got back, in the order the protocol requires (t_result_add checks);
 * all zeros before the first answer. */
struct t_result {
	bool routed_seen;
	struct pdc_routed routed;
	uint32_t ntokens; /* generated tokens received */
	uint32_t frames;  /* TOKENS frames */
	uint32_t wrong;	  /* tokens that were not 1000 + their index, as pdmock makes them */
	bool ended;	  /* DONE or ERROR came */
	bool done_seen;
	struct pdc_done done;
	int error; /* the ERROR frame's code, 0 without one */
	char msg[PDC_ERROR_MAX + 1];
	int rc; /* 0, or what pdc_next() failed with before the request ended */
};

/* Add answer @ev to @r; asserts nothing comes after the last frame and ROUTED comes once,
 * first. */
void t_result_add(struct t_result *r, const struct pdc_event *ev);

/* Read answers for request @id into @r until it ends (or pdc_next() fails: r->rc); asserts
 * every answer is @id's. */
void t_collect(struct pdc_client *c, uint64_t id, struct t_result *r);

/* Send @a and collect its answers. */
void t_run(struct pdc_client *c, const struct pdc_request_args *a, struct t_result *r);

/* The next answer on @c, which must come within T_DEADLINE_MS; returns pdc_next()'s code. */
int t_next(struct pdc_client *c, struct pdc_event *ev);

/* Assert @r was served whole: ROUTED, exactly 1000 .. 999 + @n, DONE with finish LENGTH,
 * @prompt prompt tokens and @n completion tokens. */
void t_assert_served(const struct t_result *r, uint32_t prompt, uint32_t n);

/* Assert @r ended with ERROR @error and nothing went wrong on the connection. */
void t_assert_error(const struct t_result *r, int error);

/* Write @len raw bytes on @c's socket (frames a correct client would not send). Returns 0, or
 * the negative errno of send(): the router may close the connection before it has them all. */
int t_send_raw(struct pdc_client *c, const void *buf, size_t len);

#endif
