/*
 * pdrouter's flags and config file (options.h). One table lists every setting once: its name
 * (a flag --name, or a key name = value in the file), its argument and its help line; set()
 * applies a value from either source.
 */
#include <errno.h>
#include <getopt.h>
#include <ini.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "options.h"

enum opt {
	O_HELP = 'h', O_VERSION = 'V', O_CONFIG = 'c', O_LISTEN = 'l',
	O_CONTROL_SOCKET = 256, O_DATAPLANE_CORES, O_CPUS, O_CONTROL_CPU, O_NO_PIN, O_BUSY_POLL,
	O_SQPOLL, O_TEMPERATURE, O_CREDIT, O_LOAD_SCALE, O_NO_KV_REUSE, O_NO_ACTIVE_BLOCKS,
	O_NO_PREFILL_TOKENS, O_TRANSFER_DOMAIN, O_TRANSFER_ENFORCEMENT, O_TRANSFER_WEIGHT,
	O_BUSY_KV, O_BUSY_PREFILL, O_ENFORCE_DISAGG, O_PREFILL_TIMEOUT, O_DECODE_TIMEOUT,
	O_DECODE_RETRIES, O_IDLE_TIMEOUT, O_MAX_FRAME, O_MAX_PROMPT, O_MAX_INFLIGHT_CONN,
	O_MAX_REQUESTS, O_MAX_TARGETS, O_LEASE, O_EXPIRY, O_STATS_INTERVAL, O_LOG_LEVEL,
	O_LOG_FORMAT, O_SEED, O_WAKE_US, O_SPIN_US, O_CORE_MEMORY, O_ADMIN_SOCKET, O_BLOCK_SIZE,
	O_POLICY,
};

struct opt_doc {
	const char *name;
	enum opt id;
	const char *arg; /* NULL: a switch */
	const char *help;
};

static const struct opt_doc docs[] = {
	{"listen", O_LISTEN, "ADDR", "client address, tcp:HOST:PORT or unix:PATH; repeat for more "
				     "(default tcp:127.0.0.1:7700)"},
	{"control-socket", O_CONTROL_SOCKET, "PATH", "where workers connect "
						     "(default /tmp/pdrouter.sock)"},
	{"admin-socket", O_ADMIN_SOCKET, "PATH", "where pdctl connects "
						 "(default /tmp/pdrouter.admin.sock)"},
	{"dataplane-cores", O_DATAPLANE_CORES, "N", "dataplane cores (default: half the "
						    "physical cores, at least 1)"},
	{"cpus", O_CPUS, "LIST", "OS cpus of the dataplane cores, e.g. 2,4-5 (no SMT siblings)"},
	{"control-cpu", O_CONTROL_CPU, "CPU", "OS cpu of the control thread (default: the first "
					      "core, left free of dataplane cores)"},
	{"no-pin", O_NO_PIN, NULL, "do not pin threads (the scheduler places them)"},
	{"busy-poll", O_BUSY_POLL, NULL, "dataplane cores never sleep (lowest latency, a full "
					 "core each)"},
	{"sqpoll", O_SQPOLL, NULL, "a kernel thread submits io_uring work (IORING_SETUP_SQPOLL)"},
	{"block-size", O_BLOCK_SIZE, "N", "KV block size in tokens workers must register "
					  "(default: any; a model's pool keeps its first)"},
	{"policy", O_POLICY, "NAME", "kv (KV-aware, default), or a baseline to compare it with: "
				     "round-robin, random or least-loaded"},
	{"router-temperature", O_TEMPERATURE, "T", "softmax temperature; 0 picks the cheapest "
						   "(default 0)"},
	{"kv-overlap-score-credit", O_CREDIT, "X", "prefill blocks credited per cached block "
						   "(default 1)"},
	{"prefill-load-scale", O_LOAD_SCALE, "X", "weight of prefill load against decode load "
						  "(default 1)"},
	{"no-kv-reuse", O_NO_KV_REUSE, NULL, "do not deduplicate in-flight blocks"},
	{"no-track-active-blocks", O_NO_ACTIVE_BLOCKS, NULL, "do not count in-flight blocks"},
	{"no-track-prefill-tokens", O_NO_PREFILL_TOKENS, NULL, "do not count tokens still to "
							      "prefill"},
	{"kv-transfer-domain", O_TRANSFER_DOMAIN, "NAME", "topology domain that holds a KV "
							  "transfer, e.g. rack"},
	{"kv-transfer-enforcement", O_TRANSFER_ENFORCEMENT, "MODE", "none, preferred or required "
								    "(default required with a "
								    "domain)"},
	{"kv-transfer-weight", O_TRANSFER_WEIGHT, "W", "preferred: discount weight 0..1 "
						       "(default 0.5)"},
	{"busy-kv-fraction", O_BUSY_KV, "F", "a worker reporting more KV use is busy (0: off)"},
	{"busy-prefill-tokens", O_BUSY_PREFILL, "N", "a worker with more tokens to prefill is "
						     "busy (0: off)"},
	{"enforce-disagg", O_ENFORCE_DISAGG, NULL, "fail instead of falling back to decode-only"},
	{"prefill-timeout-ms", O_PREFILL_TIMEOUT, "MS", "prefill stage timeout (default 30000)"},
	{"decode-timeout-ms", O_DECODE_TIMEOUT, "MS", "generation timeout (default 600000)"},
	{"decode-retries", O_DECODE_RETRIES, "N", "re-routes of a worker that dies before its "
						  "first token (default 1)"},
	{"idle-timeout-ms", O_IDLE_TIMEOUT, "MS", "close idle client connections (0: never)"},
	{"max-frame", O_MAX_FRAME, "BYTES", "largest client frame (default 4194304)"},
	{"max-prompt-tokens", O_MAX_PROMPT, "N", "longest prompt (default 131072)"},
	{"max-inflight-per-conn", O_MAX_INFLIGHT_CONN, "N", "requests in flight per connection "
							    "(default 256)"},
	{"max-requests", O_MAX_REQUESTS, "N", "requests in flight per dataplane core "
					      "(default 16384)"},
	{"max-targets", O_MAX_TARGETS, "N", "routing targets (worker DP ranks) (default 1024)"},
	{"lease-ms", O_LEASE, "MS", "a worker silent this long is gone (default 3000)"},
	{"expiry-s", O_EXPIRY, "S", "predicted load older than this is dropped (default: both "
				    "stage timeouts and a minute)"},
	{"stats-interval-ms", O_STATS_INTERVAL, "MS", "log counters this often (0: at exit only)"},
	{"log-level", O_LOG_LEVEL, "LEVEL", "debug, info, warn or error (default info)"},
	{"log-format", O_LOG_FORMAT, "FMT", "logfmt or json (default logfmt)"},
	{"seed", O_SEED, "N", "random seed of tie-breaks and sampling (default 0)"},
	{"wake-us", O_WAKE_US, "US", "longest sleep of an idle core while requests wait on "
				     "workers (default 100)"},
	{"spin-us", O_SPIN_US, "US", "spin this long after the last work before sleeping "
				     "(default 50)"},
	{"core-memory-mb", O_CORE_MEMORY, "MB", "buffer budget of each dataplane core "
						"(default 1024)"},
	{"config", O_CONFIG, "FILE", "read settings from an INI file (keys are these flags' "
				     "names)"},
	{"help", O_HELP, NULL, "show this help"},
	{"version", O_VERSION, NULL, "show the version"},
};

#define NDOCS (sizeof(docs) / sizeof(docs[0]))

static void usage(void)
{
	printf("Usage: pdrouter [OPTION]...\n"
	       "Route tokenized LLM requests to prefill and decode workers by KV-cache overlap and "
	       "load.\n\n");
	for (size_t i = 0; i < NDOCS; i++) {
		char left[64];

		snprintf(left, sizeof(left), "--%s%s%s", docs[i].name, docs[i].arg ? " " : "",
			 docs[i].arg ? docs[i].arg : "");
		printf("  %-34s %s\n", left, docs[i].help);
	}
	printf("\nWorkers connect to the control socket (libpdworker); clients speak the frames of "
	       "docs/protocol.md.\n");
}

static int num(const char *v, double lo, double hi, double *out)
{
	char *end;

	errno = 0;
	*out = strtod(v, &end);
	return errno || end == v || *end || !isfinite(*out) || *out < lo || *out > hi ? -EINVAL
										       : 0;
}

/* The largest value of integer setting @id: what its unit conversion can hold. */
static double int_max(enum opt id)
{
	switch (id) {
	case O_PREFILL_TIMEOUT:
	case O_DECODE_TIMEOUT:
	case O_IDLE_TIMEOUT:
	case O_LEASE:
	case O_STATS_INTERVAL:
		return 1e12; /* ms: 31 years, 1e18 ns */
	case O_EXPIRY:
		return 1e9; /* s */
	case O_WAKE_US:
	case O_SPIN_US:
		return 1e12; /* us */
	case O_CORE_MEMORY:
		return 1 << 24; /* MB: 16 TiB */
	default:
		return 1e15;
	}
}

/* Apply @v to setting @id. Returns 0, 1 for --help / --version, or -EINVAL with @err. */
static int set(struct pd_options *o, enum opt id, const char *name, const char *v, char *err,
	       size_t errlen)
{
	const double u32 = UINT32_MAX, big = 1e15;
	double x = 0;
	int rc = 0, k;

	switch (id) {
	case O_HELP:
		usage();
		return 1;
	case O_VERSION:
		printf("pdrouter %s\n", PD_VERSION);
		return 1;
	case O_LISTEN:
		if (o->nlisten == PD_MAX_LISTEN ||
		    (strncmp(v, "tcp:", 4) && strncmp(v, "unix:", 5)))
			rc = -EINVAL;
		else
			o->listen[o->nlisten++] = v;
		break;
	case O_CONTROL_SOCKET: o->control_socket = v; break;
	case O_ADMIN_SOCKET: o->admin_socket = v; break;
	case O_CPUS: o->cpus = v; break;
	case O_NO_PIN: o->no_pin = true; break;
	case O_BUSY_POLL: o->core.busy_poll = true; break;
	case O_SQPOLL: o->core.sqpoll = true; break;
	case O_NO_KV_REUSE: o->rt.policy.assume_kv_reuse = false; break;
	case O_NO_ACTIVE_BLOCKS: o->rt.policy.track_active_blocks = false; break;
	case O_NO_PREFILL_TOKENS: o->rt.policy.track_prefill_tokens = false; break;
	case O_ENFORCE_DISAGG: o->rt.enforce_disagg = true; break;
	case O_TRANSFER_DOMAIN:
		o->rt.transfer.domain = v;
		if (!o->enforcement_given) /* a domain alone means required */
			o->rt.transfer.enforcement = RT_TRANSFER_REQUIRED;
		break;
	case O_TRANSFER_ENFORCEMENT:
		k = !strcmp(v, "none")	    ? RT_TRANSFER_NONE
		    : !strcmp(v, "preferred") ? RT_TRANSFER_PREFERRED
		    : !strcmp(v, "required")  ? RT_TRANSFER_REQUIRED
					      : -1;
		if (k < 0) {
			rc = -EINVAL;
		} else {
			o->rt.transfer.enforcement = (enum rt_enforcement)k;
			o->enforcement_given = true;
		}
		break;
	case O_POLICY:
		if ((k = rt_policy_kind_parse(v)) < 0) {
			snprintf(err, errlen, "unknown %s '%s': kv, round-robin, random or "
					      "least-loaded", name, v);
			return -EINVAL;
		}
		o->rt.policy_kind = (enum rt_policy_kind)k;
		break;
	case O_LOG_LEVEL:
		if ((k = pd_log_level_parse(v)) < 0)
			rc = -EINVAL;
		else
			o->log_level = (enum pd_log_level)k;
		break;
	case O_LOG_FORMAT:
		if ((k = pd_log_format_parse(v)) < 0)
			rc = -EINVAL;
		else
			o->log_format = (enum pd_log_format)k;
		break;
	case O_TEMPERATURE:
		rc = num(v, 0, big, &o->rt.policy.temperature);
		break;
	case O_CREDIT:
		rc = num(v, 0, big, &o->rt.policy.overlap_score_credit);
		break;
	case O_LOAD_SCALE:
		rc = num(v, 0, big, &o->rt.policy.prefill_load_scale);
		break;
	case O_TRANSFER_WEIGHT:
		rc = num(v, 0, 1, &o->rt.transfer.preferred_weight);
		break;
	case O_BUSY_KV:
		rc = num(v, 0, 1, &o->rt.busy_kv_fraction);
		break;
	case O_SEED: { /* all 64 bits: not through a double */
		char *end;

		errno = 0;
		o->rt.seed = strtoull(v, &end, 10);
		if (errno || end == v || *end || *v == '-')
			rc = -EINVAL;
		break;
	}
	default: /* the integers, bounded so that a conversion to ns or bytes cannot wrap */
		rc = num(v, id == O_CONTROL_CPU ? -1 : 0, int_max(id), &x);
		if (!rc && x != floor(x))
			rc = -EINVAL;
		if (rc)
			break;
		switch (id) {
		case O_DATAPLANE_CORES: o->dataplane_cores = (uint32_t)fmin(x, u32); break;
		case O_CONTROL_CPU: o->control_cpu = (int)fmin(x, 1 << 20); break;
		case O_BUSY_PREFILL: o->rt.busy_prefill_tokens = (uint64_t)x; break;
		case O_PREFILL_TIMEOUT: o->core.prefill_timeout_ns = (uint64_t)x * 1000000; break;
		case O_DECODE_TIMEOUT: o->core.decode_timeout_ns = (uint64_t)x * 1000000; break;
		case O_DECODE_RETRIES: o->core.decode_retries = (uint32_t)fmin(x, 16); break;
		case O_IDLE_TIMEOUT: o->core.idle_timeout_ns = (uint64_t)x * 1000000; break;
		case O_MAX_FRAME: o->core.max_frame = (uint32_t)fmin(x, 64u << 20); break;
		case O_MAX_PROMPT: o->core.max_prompt_tokens = (uint32_t)fmin(x, 1u << 20); break;
		case O_MAX_INFLIGHT_CONN: o->core.max_inflight_per_conn = (uint32_t)fmin(x, u32);
			break;
		case O_MAX_REQUESTS: o->core.max_requests = (uint32_t)fmin(x, 1u << 23); break;
		case O_MAX_TARGETS: o->max_targets = (uint32_t)fmin(x, u32); break;
		case O_BLOCK_SIZE:
			if (x < 1 || x > 1u << 16 || ((uint64_t)x & ((uint64_t)x - 1)))
				rc = -EINVAL; /* a power of two, as the hashing wants */
			else
				o->block_size = (uint32_t)x;
			break;
		case O_LEASE: o->lease_ms = (uint64_t)x; break;
		case O_EXPIRY:
			o->rt.expiry_ns = (uint64_t)x * 1000000000ull;
			o->expiry_given = true;
			break;
		case O_STATS_INTERVAL: o->stats_interval_ms = (uint64_t)x; break;
		case O_WAKE_US: o->core.wake_ns = (uint64_t)x * 1000; break;
		case O_SPIN_US: o->core.spin_ns = (uint64_t)x * 1000; break;
		case O_CORE_MEMORY: o->core.memory_bytes = (size_t)x << 20; break;
		default: rc = -EINVAL; break;
		}
	}
	if (rc)
		snprintf(err, errlen, "invalid value for %s: '%s'", name, v ? v : "");
	return rc;
}

static const struct opt_doc *find(const char *name)
{
	for (size_t i = 0; i < NDOCS; i++)
		if (!strcmp(docs[i].name, name))
			return &docs[i];
	return NULL;
}

struct file_ctx {
	struct pd_options *o;
	char *err;
	size_t errlen;
	int rc;
};

/* Settings that keep the string they were given (a path, an address, a name). */
static bool keeps_string(enum opt id)
{
	return id == O_LISTEN || id == O_CONTROL_SOCKET || id == O_ADMIN_SOCKET || id == O_CPUS ||
	       id == O_TRANSFER_DOMAIN;
}

/*
 * A key of the config file: the flag of the same name. Strings a setting keeps live as long as
 * the process (the options point at them). Returns nonzero to inih to go on, 0 after an error.
 */
static int on_key(void *user, const char *section, const char *name, const char *value)
{
	struct file_ctx *f = user;
	const struct opt_doc *d = find(name);
	char *v;

	(void)section;
	if (f->rc)
		return 0;
	v = strdup(value);
	if (!d || d->id == O_CONFIG || d->id == O_HELP || d->id == O_VERSION || !v) {
		snprintf(f->err, f->errlen, "unknown key in the config file: '%s'", name);
		f->rc = -EINVAL;
		free(v);
		return 0;
	}
	if (!d->arg) { /* a switch: true/false */
		if (!strcmp(v, "true") || !strcmp(v, "1"))
			f->rc = set(f->o, d->id, name, v, f->err, f->errlen);
		else if (strcmp(v, "false") && strcmp(v, "0"))
			f->rc = -EINVAL;
		free(v);
		if (f->rc == -EINVAL && !*f->err)
			snprintf(f->err, f->errlen, "%s takes true or false", name);
		return !f->rc;
	}
	f->rc = set(f->o, d->id, name, v, f->err, f->errlen);
	if (f->rc || !keeps_string(d->id))
		free(v);
	return !f->rc;
}

static void defaults(struct pd_options *o)
{
	*o = (struct pd_options){.control_socket = "/tmp/pdrouter.sock",
				 .admin_socket = "/tmp/pdrouter.admin.sock", .control_cpu = -1,
				 .lease_ms = 3000, .max_targets = 1024, .log_level = PD_LOG_INFO,
				 .core = {.decode_retries = 1}};
	rt_config_default(&o->rt);
	o->rt.transfer.preferred_weight = 0.5;
}

int pd_options_parse(struct pd_options *o, int argc, char **argv, char *err, size_t errlen)
{
	struct option longs[NDOCS + 1];
	const char *config = NULL;
	bool listen_flag = false;
	int c, rc;

	defaults(o);
	*err = 0;
	for (size_t i = 0; i < NDOCS; i++)
		longs[i] = (struct option){docs[i].name, docs[i].arg ? required_argument
								    : no_argument, NULL,
					   docs[i].id};
	longs[NDOCS] = (struct option){0};
	/* First pass: only --config (and --help), so the flags can override the file. optind 0
	 * resets glibc's getopt whole, also inside a cluster of short flags (1 does not). */
	optind = 0;
	opterr = 0;
	while ((c = getopt_long(argc, argv, "hVc:l:", longs, NULL)) != -1) {
		if (c == O_CONFIG)
			config = optarg;
		else if (c == O_HELP || c == O_VERSION)
			return set(o, (enum opt)c, "", NULL, err, errlen);
	}
	if (config) {
		struct file_ctx f = {o, err, errlen, 0};
		int line = ini_parse(config, on_key, &f);

		if (line < 0) {
			snprintf(err, errlen, "cannot read the config file %s", config);
			return -EINVAL;
		}
		if (f.rc || line > 0) {
			if (!*err)
				snprintf(err, errlen, "%s: syntax error at line %d", config, line);
			return -EINVAL;
		}
		o->config = config;
	}
	optind = 0;
	opterr = 0;
	while ((c = getopt_long(argc, argv, "hVc:l:", longs, NULL)) != -1) {
		const struct opt_doc *d = NULL;

		if (c == '?' || c == ':') {
			/* What the user typed: a long flag as written, a short one with the
			 * cluster it came in (glibc leaves optind on a cluster until its end). */
			const char *arg = optind < argc && argv[optind][0] == '-' &&
						  argv[optind][1] != '-' && optopt &&
						  strchr(argv[optind], optopt)
					      ? argv[optind]
					      : argv[optind - 1];

			if (strncmp(arg, "--", 2) && optopt > 0 && optopt < 256)
				snprintf(err, errlen,
					 "unknown option or missing value: -%c (in %s)", optopt,
					 arg);
			else
				snprintf(err, errlen, "unknown option or missing value: %s", arg);
			return -EINVAL;
		}
		if (c == O_CONFIG)
			continue;
		if (c == O_LISTEN && !listen_flag) { /* listen flags replace the file's */
			listen_flag = true;
			o->nlisten = 0;
		}
		for (size_t i = 0; i < NDOCS && !d; i++)
			if ((int)docs[i].id == c)
				d = &docs[i];
		rc = set(o, (enum opt)c, d->name, optarg, err, errlen);
		if (rc)
			return rc;
	}
	if (optind < argc) {
		snprintf(err, errlen, "unexpected argument: %s", argv[optind]);
		return -EINVAL;
	}
	if (!o->nlisten)
		o->listen[o->nlisten++] = "tcp:127.0.0.1:7700";
	return 0;
}
