/*
 * pdrouter's settings (control/options.h) and structured logs (control/log.h). Options: the
 * defaults, each flag's field, malformed values refused with a message naming the flag and the
 * value (options_fault), the INI config file and a flag winning over it, and parsing twice in
 * one process (getopt's global state). Logs: the level and format names, JSON lines that parse
 * with json-c, escaping of quoted values, the level filter, and logfmt lines as written.
 *
 * Criterion runs each test, and each parameter of a parameterized test, in a process of its
 * own; only the tests named for it parse twice in one process.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <criterion/criterion.h>
#include <criterion/parameterized.h>
#include <json-c/json.h>

#include "log.h"
#include "options.h"

static void release_json(void);

TestSuite(options);
TestSuite(options_fault);
TestSuite(log, .fini = release_json);

#define T_MAX_ARGS 96
#define T_CAPTURE_MAX 65536
#define NELEM(a) (sizeof(a) / sizeof((a)[0]))

static char *t_argv[T_MAX_ARGS];

/* Parse "pdrouter" followed by @args (NULL-terminated); @err receives the message. */
static int parse_args(struct pd_options *o, char *err, size_t errlen, const char *const *args)
{
	int argc = 0;

	memset(t_argv, 0, sizeof(t_argv));
	t_argv[argc++] = "pdrouter";
	for (; *args; args++) {
		cr_assert_lt(argc, T_MAX_ARGS - 1);
		t_argv[argc++] = (char *)*args;
	}
	memset(o, 0xa5, sizeof(*o)); /* the parser must set every field itself */
	err[0] = '\0';
	return pd_options_parse(o, argc, t_argv, err, errlen);
}

#define PARSE(o, err, ...)                                                                         \
	parse_args((o), (err), sizeof(err), (const char *const[]){__VA_ARGS__ __VA_OPT__(, ) NULL})

/* Parse what must be accepted. */
#define PARSE_OK(o, ...)                                                                           \
	do {                                                                                       \
		char ok_err_[256];                                                                 \
		int ok_rc_ = PARSE((o), ok_err_, __VA_ARGS__);                                     \
		cr_assert_eq(ok_rc_, 0, "rc %d: %s", ok_rc_, ok_err_);                             \
	} while (0)

/* @rc must be -EINVAL with a message in @err naming each of the NULL-terminated @words. */
static void assert_refused(int rc, const char *err, const char *const *words)
{
	cr_assert_eq(rc, -EINVAL, "rc %d (message '%s')", rc, err);
	for (; *words; words++)
		cr_assert_not_null(strstr(err, *words), "message '%s' does not name '%s'", err,
				   *words);
}

/*
 * The parameters of the tests below. Criterion copies them into each test's process, which may
 * be a new image: they hold their strings, never pointers.
 */
#define T_WORD 48

/* A flag and a value for it. */
struct t_flag {
	char flag[T_WORD], value[T_WORD];
};

/* One word. */
struct t_word {
	char s[T_WORD];
};

/* @p's flag given its value must be refused with a message naming both. */
static void assert_flag_refuses(const struct t_flag *p)
{
	struct pd_options o;
	char err[256], quoted[128];
	int rc = PARSE(&o, err, p->flag, p->value);

	snprintf(quoted, sizeof(quoted), "'%s'", p->value);
	cr_assert_eq(rc, -EINVAL, "%s %s: rc %d", p->flag, p->value, rc);
	assert_refused(rc, err, (const char *const[]){p->flag + 2, quoted, NULL});
}

/* An argument list (up to the first empty string) and a word the answer must name. */
struct t_args {
	char args[6][T_WORD];
	char named[T_WORD];
};

/* Parse @p's arguments. */
static int parse_t_args(struct pd_options *o, char *err, size_t errlen, const struct t_args *p)
{
	const char *args[NELEM(p->args) + 1] = {0};

	for (size_t i = 0; i < NELEM(p->args) && p->args[i][0]; i++)
		args[i] = p->args[i];
	return parse_args(o, err, errlen, args);
}

/* Output written to @fd between t_capture_begin() and t_capture_end(). */
struct t_capture {
	int fd, saved, file;
	char buf[T_CAPTURE_MAX];
};

/* Static: a failed assertion leaves the test at once, and must leave nothing allocated. */
static struct t_capture t_cap;

static void t_capture_begin(struct t_capture *c, int fd)
{
	char path[] = "/tmp/pdrouter-test-capture-XXXXXX";

	fflush(stdout);
	fflush(stderr);
	c->fd = fd;
	c->file = mkstemp(path);
	cr_assert_geq(c->file, 0, "mkstemp: %s", strerror(errno));
	unlink(path);
	c->saved = dup(fd);
	cr_assert_geq(c->saved, 0);
	cr_assert_geq(dup2(c->file, fd), 0);
}

static const char *t_capture_end(struct t_capture *c)
{
	ssize_t n;

	fflush(stdout);
	fflush(stderr);
	cr_assert_geq(dup2(c->saved, c->fd), 0);
	close(c->saved);
	cr_assert_eq(lseek(c->file, 0, SEEK_SET), 0);
	n = read(c->file, c->buf, sizeof(c->buf) - 1);
	cr_assert_geq(n, 0);
	c->buf[n] = '\0';
	close(c->file);
	return c->buf;
}

/* A config file in a private temp directory: its path, the same buffer for every call. */
static char t_dir[64], t_config[96];

static const char *write_config(const char *text)
{
	FILE *f;

	if (!t_dir[0]) {
		strcpy(t_dir, "/tmp/pdrouter-test-options-XXXXXX");
		cr_assert_not_null(mkdtemp(t_dir), "mkdtemp: %s", strerror(errno));
	}
	snprintf(t_config, sizeof(t_config), "%s/pdrouter.ini", t_dir);
	f = fopen(t_config, "w");
	cr_assert_not_null(f, "%s: %s", t_config, strerror(errno));
	cr_assert_eq(fputs(text, f) >= 0, 1);
	cr_assert_eq(fclose(f), 0);
	return t_config;
}

static void remove_config(void)
{
	if (!t_dir[0])
		return;
	unlink(t_config);
	rmdir(t_dir);
	t_dir[0] = '\0';
}

Test(options, defaults_listen_on_localhost_7700_with_the_documented_sockets)
{
	struct pd_options o;

	PARSE_OK(&o);
	cr_assert_eq(o.nlisten, 1);
	cr_assert_str_eq(o.listen[0], "tcp:127.0.0.1:7700");
	cr_assert_str_eq(o.control_socket, "/tmp/pdrouter.sock");
	cr_assert_str_eq(o.admin_socket, "/tmp/pdrouter.admin.sock");
	cr_assert_eq(o.lease_ms, 3000);
	cr_assert_eq(o.max_targets, 1024);
	cr_assert_eq(o.dataplane_cores, 0, "automatic");
	cr_assert_null(o.cpus);
	cr_assert_eq(o.control_cpu, -1, "automatic");
	cr_assert_eq(o.no_pin, false);
	cr_assert_eq(o.stats_interval_ms, 0);
	cr_assert_null(o.config);
	cr_assert_eq(o.log_format, PD_LOG_LOGFMT);
}

Test(options, defaults_of_the_routing_policy_and_the_cores)
{
	struct pd_options o;

	PARSE_OK(&o);
	cr_assert_float_eq(o.rt.policy.overlap_score_credit, 1.0, 1e-12);
	cr_assert_float_eq(o.rt.policy.prefill_load_scale, 1.0, 1e-12);
	cr_assert_float_eq(o.rt.policy.temperature, 0.0, 1e-12);
	cr_assert(o.rt.policy.assume_kv_reuse);
	cr_assert(o.rt.policy.track_active_blocks);
	cr_assert(o.rt.policy.track_prefill_tokens);
	cr_assert_null(o.rt.transfer.domain);
	cr_assert_eq(o.rt.transfer.enforcement, RT_TRANSFER_NONE);
	cr_assert_float_eq(o.rt.transfer.preferred_weight, 0.5, 1e-12);
	cr_assert_float_eq(o.rt.busy_kv_fraction, 0.0, 1e-12);
	cr_assert_eq(o.rt.busy_prefill_tokens, 0);
	cr_assert_eq(o.rt.enforce_disagg, false);
	cr_assert_eq(o.rt.expiry_ns, RT_DEFAULT_EXPIRY_NS);
	cr_assert_eq(o.rt.seed, 0);
	cr_assert_eq(o.core.decode_retries, 1);
	cr_assert_eq(o.core.busy_poll, false);
	cr_assert_eq(o.core.sqpoll, false);
	cr_assert_eq(o.core.prefill_timeout_ns, 0, "0: the core's 30 s");
	cr_assert_eq(o.core.memory_bytes, 0, "0: the core's 1 GiB");
}

/* --help says "(default info)". */
Test(options, default_log_level_is_info)
{
	struct pd_options o;

	PARSE_OK(&o);
	cr_assert_eq(o.log_level, PD_LOG_INFO, "log_level %d, want info (%d)", (int)o.log_level,
		     (int)PD_LOG_INFO);
}

Test(options, socket_and_placement_flags_set_their_fields)
{
	struct pd_options o;

	PARSE_OK(&o, "--listen", "unix:/tmp/a.sock", "-l", "tcp:0.0.0.0:9000", "--control-socket",
		 "/run/c.sock", "--admin-socket", "/run/a.sock", "--dataplane-cores", "3", "--cpus",
		 "2,4-5", "--control-cpu", "7", "--no-pin", "--busy-poll", "--sqpoll",
		 "--core-memory-mb", "256");
	cr_assert_eq(o.nlisten, 2);
	cr_assert_str_eq(o.listen[0], "unix:/tmp/a.sock");
	cr_assert_str_eq(o.listen[1], "tcp:0.0.0.0:9000");
	cr_assert_str_eq(o.control_socket, "/run/c.sock");
	cr_assert_str_eq(o.admin_socket, "/run/a.sock");
	cr_assert_eq(o.dataplane_cores, 3);
	cr_assert_str_eq(o.cpus, "2,4-5");
	cr_assert_eq(o.control_cpu, 7);
	cr_assert(o.no_pin);
	cr_assert(o.core.busy_poll);
	cr_assert(o.core.sqpoll);
	cr_assert_eq(o.core.memory_bytes, (size_t)256 << 20);
}

Test(options, policy_flags_set_their_fields)
{
	struct pd_options o;

	PARSE_OK(&o, "--router-temperature", "0.5", "--kv-overlap-score-credit", "2",
		 "--prefill-load-scale", "1.5", "--no-track-active-blocks",
		 "--no-track-prefill-tokens", "--kv-transfer-weight", "0.25", "--busy-kv-fraction",
		 "0.9", "--busy-prefill-tokens", "4096", "--enforce-disagg", "--seed", "42",
		 "--max-targets", "64", "--max-requests", "1000", "--expiry-s", "60");
	cr_assert_float_eq(o.rt.policy.temperature, 0.5, 1e-12);
	cr_assert_float_eq(o.rt.policy.overlap_score_credit, 2.0, 1e-12);
	cr_assert_float_eq(o.rt.policy.prefill_load_scale, 1.5, 1e-12);
	cr_assert(o.rt.policy.assume_kv_reuse, "not turned off by the other no- flags");
	cr_assert_not(o.rt.policy.track_active_blocks);
	cr_assert_not(o.rt.policy.track_prefill_tokens);
	cr_assert_float_eq(o.rt.transfer.preferred_weight, 0.25, 1e-12);
	cr_assert_float_eq(o.rt.busy_kv_fraction, 0.9, 1e-12);
	cr_assert_eq(o.rt.busy_prefill_tokens, 4096);
	cr_assert(o.rt.enforce_disagg);
	cr_assert_eq(o.rt.seed, 42);
	cr_assert_eq(o.max_targets, 64);
	cr_assert_eq(o.core.max_requests, 1000);
	cr_assert_eq(o.rt.expiry_ns, 60ull * 1000000000ull);
}

Test(options, timeout_and_limit_flags_set_their_fields_in_their_units)
{
	struct pd_options o;

	PARSE_OK(&o, "--prefill-timeout-ms", "1500", "--decode-timeout-ms", "2500",
		 "--decode-retries", "3", "--idle-timeout-ms", "9000", "--max-frame", "65536",
		 "--max-prompt-tokens", "8192", "--max-inflight-per-conn", "32", "--lease-ms",
		 "5000", "--stats-interval-ms", "1000", "--wake-us", "200", "--spin-us", "20",
		 "--log-level", "warn", "--log-format", "json");
	cr_assert_eq(o.core.prefill_timeout_ns, 1500ull * 1000000);
	cr_assert_eq(o.core.decode_timeout_ns, 2500ull * 1000000);
	cr_assert_eq(o.core.decode_retries, 3);
	cr_assert_eq(o.core.idle_timeout_ns, 9000ull * 1000000);
	cr_assert_eq(o.core.max_frame, 65536);
	cr_assert_eq(o.core.max_prompt_tokens, 8192);
	cr_assert_eq(o.core.max_inflight_per_conn, 32);
	cr_assert_eq(o.lease_ms, 5000);
	cr_assert_eq(o.stats_interval_ms, 1000);
	cr_assert_eq(o.core.wake_ns, 200000);
	cr_assert_eq(o.core.spin_ns, 20000);
	cr_assert_eq(o.log_level, PD_LOG_WARN);
	cr_assert_eq(o.log_format, PD_LOG_JSON);
}

Test(options, flag_equals_value_form_is_accepted)
{
	struct pd_options o;

	PARSE_OK(&o, "--lease-ms=250", "--listen=unix:/tmp/eq.sock");
	cr_assert_eq(o.lease_ms, 250);
	cr_assert_str_eq(o.listen[0], "unix:/tmp/eq.sock");
}

Test(options, no_kv_reuse_turns_off_block_dedup)
{
	struct pd_options o;

	PARSE_OK(&o, "--no-kv-reuse");
	cr_assert_not(o.rt.policy.assume_kv_reuse);
	cr_assert(o.rt.policy.track_active_blocks);
	cr_assert(o.rt.policy.track_prefill_tokens);
}

Test(options, kv_transfer_domain_makes_enforcement_required)
{
	struct pd_options o;

	PARSE_OK(&o, "--kv-transfer-domain", "rack");
	cr_assert_str_eq(o.rt.transfer.domain, "rack");
	cr_assert_eq(o.rt.transfer.enforcement, RT_TRANSFER_REQUIRED);
}

Test(options, kv_transfer_enforcement_preferred_after_the_domain_wins)
{
	struct pd_options o;

	PARSE_OK(&o, "--kv-transfer-domain", "rack", "--kv-transfer-enforcement", "preferred");
	cr_assert_str_eq(o.rt.transfer.domain, "rack");
	cr_assert_eq(o.rt.transfer.enforcement, RT_TRANSFER_PREFERRED);
}

Test(options, kv_transfer_enforcement_preferred_before_the_domain_wins)
{
	struct pd_options o;

	PARSE_OK(&o, "--kv-transfer-enforcement", "preferred", "--kv-transfer-domain", "rack");
	cr_assert_str_eq(o.rt.transfer.domain, "rack");
	cr_assert_eq(o.rt.transfer.enforcement, RT_TRANSFER_PREFERRED);
}

Test(options, kv_transfer_enforcement_none_after_the_domain_wins)
{
	struct pd_options o;

	PARSE_OK(&o, "--kv-transfer-domain", "rack", "--kv-transfer-enforcement", "none");
	cr_assert_eq(o.rt.transfer.enforcement, RT_TRANSFER_NONE);
}

/* An explicit "none" is a choice too, whatever the order: the domain's default must not win. */
Test(options, kv_transfer_enforcement_none_before_the_domain_wins)
{
	struct pd_options o;

	PARSE_OK(&o, "--kv-transfer-enforcement", "none", "--kv-transfer-domain", "rack");
	cr_assert_eq(o.rt.transfer.enforcement, RT_TRANSFER_NONE,
		     "enforcement %d after an explicit none", (int)o.rt.transfer.enforcement);
}

Test(options, kv_transfer_enforcement_takes_required)
{
	struct pd_options o;

	PARSE_OK(&o, "--kv-transfer-enforcement", "required");
	cr_assert_eq(o.rt.transfer.enforcement, RT_TRANSFER_REQUIRED);
	cr_assert_null(o.rt.transfer.domain);
}

ParameterizedTestParameters(options, busy_kv_fraction_takes_0_to_1)
{
	static const struct t_word ok[] = {{"0"}, {"0.0"}, {"0.5"}, {"1"}, {"1.0"}, {"1e-3"}};

	return cr_make_param_array(struct t_word, ok, NELEM(ok));
}

ParameterizedTest(struct t_word *value, options, busy_kv_fraction_takes_0_to_1)
{
	struct pd_options o;

	PARSE_OK(&o, "--busy-kv-fraction", value->s);
	cr_assert_float_eq(o.rt.busy_kv_fraction, strtod(value->s, NULL), 1e-12, "%s", value->s);
}

static const char *const t_addr[] = {"tcp:127.0.0.1:1", "unix:/tmp/2",	   "tcp:127.0.0.1:3",
				     "unix:/tmp/4",	"tcp:127.0.0.1:5", "unix:/tmp/6",
				     "tcp:127.0.0.1:7", "unix:/tmp/8",	   "tcp:127.0.0.1:9"};

Test(options, listen_repeats_up_to_8_in_order)
{
	struct pd_options o;

	PARSE_OK(&o, "-l", t_addr[0], "--listen", t_addr[1], "-l", t_addr[2], "--listen", t_addr[3],
		 "-l", t_addr[4], "--listen", t_addr[5], "-l", t_addr[6], "--listen", t_addr[7]);
	cr_assert_eq(o.nlisten, PD_MAX_LISTEN);
	for (uint32_t i = 0; i < PD_MAX_LISTEN; i++)
		cr_assert_str_eq(o.listen[i], t_addr[i], "listen[%u] in command-line order", i);
}

Test(options_fault, ninth_listen_fails_naming_it)
{
	struct pd_options o;
	char err[256];
	int rc = PARSE(&o, err, "-l", t_addr[0], "--listen", t_addr[1], "-l", t_addr[2], "--listen",
		       t_addr[3], "-l", t_addr[4], "--listen", t_addr[5], "-l", t_addr[6],
		       "--listen", t_addr[7], "--listen", t_addr[8]);

	assert_refused(rc, err, (const char *const[]){"listen", t_addr[8], NULL});
}

ParameterizedTestParameters(options, help_and_version_are_answered_with_1)
{
	static const struct t_args answers[] = {
	    {{"--help"}, "Usage: pdrouter"},
	    {{"-h"}, "Usage: pdrouter"},
	    {{"--lease-ms", "5", "--help"}, "Usage: pdrouter"},
	    {{"--bogus", "--help"}, "Usage: pdrouter"},
	    {{"--help"}, "--kv-transfer-domain NAME"},
	    {{"--help"}, "--config FILE"},
	    {{"--version"}, "pdrouter " PD_VERSION "\n"},
	    {{"-V"}, "pdrouter " PD_VERSION "\n"},
	};

	return cr_make_param_array(struct t_args, answers, NELEM(answers));
}

ParameterizedTest(struct t_args *p, options, help_and_version_are_answered_with_1)
{
	struct t_capture *cap = &t_cap;
	struct pd_options o;
	char err[256];
	const char *out;
	int rc;

	t_capture_begin(cap, STDOUT_FILENO);
	rc = parse_t_args(&o, err, sizeof(err), p);
	out = t_capture_end(cap);
	cr_assert_eq(rc, 1, "%s: rc %d: %s", p->args[0], rc, err);
	cr_assert_not_null(strstr(out, p->named), "%s: stdout '%s' lacks '%s'", p->args[0], out,
			   p->named);
}

Test(options, version_prints_one_line)
{
	struct t_capture *cap = &t_cap;
	struct pd_options o;
	char err[256];
	int rc;

	t_capture_begin(cap, STDOUT_FILENO);
	rc = PARSE(&o, err, "--version");
	cr_assert_str_eq(t_capture_end(cap), "pdrouter " PD_VERSION "\n");
	cr_assert_eq(rc, 1);
}

/* getopt keeps its position in globals; every call must start from argv[1] again. */
Test(options, parsing_twice_in_one_process_gives_the_same_results)
{
	struct pd_options a, b;
	char err[256];

	cr_assert_eq(PARSE(&a, err, "--lease-ms", "x", "--seed", "5", "--no-pin"), -EINVAL,
		     "a call that stops half-way through argv");
	PARSE_OK(&a, "--lease-ms", "10", "--seed", "5", "--no-pin");
	PARSE_OK(&b, "--lease-ms", "10", "--seed", "5", "--no-pin");
	cr_assert_eq(a.lease_ms, 10);
	cr_assert_eq(b.lease_ms, 10);
	cr_assert_eq(a.rt.seed, 5);
	cr_assert_eq(b.rt.seed, 5);
	cr_assert(a.no_pin);
	cr_assert(b.no_pin);
}

Test(options, config_flag_is_read_on_a_second_call)
{
	struct pd_options o;
	char err[256];

	PARSE_OK(&o, "--lease-ms", "10");
	assert_refused(PARSE(&o, err, "--config", "/nonexistent/pdrouter.ini"), err,
		       (const char *const[]){"/nonexistent/pdrouter.ini", NULL});
}

/* A call that stopped inside "-hV" must not leave the rest of that cluster to the next one. */
Test(options, help_in_a_cluster_does_not_leak_into_the_next_call)
{
	struct t_capture *cap = &t_cap;
	struct pd_options o;
	char err[256];
	int rc;

	t_capture_begin(cap, STDOUT_FILENO);
	rc = PARSE(&o, err, "-hV");
	t_capture_end(cap);
	cr_assert_eq(rc, 1);
	t_capture_begin(cap, STDOUT_FILENO);
	rc = PARSE(&o, err, "--lease-ms", "9");
	t_capture_end(cap);
	cr_assert_eq(rc, 0, "rc %d, stdout '%s'", rc, cap->buf);
	cr_assert_eq(o.lease_ms, 9);
}

/* The first call stops at argv[3] (--help); the second has only argv[1]. */
Test(options, second_call_with_fewer_arguments_reads_only_its_own)
{
	struct t_capture *cap = &t_cap;
	struct pd_options o;
	char err[256];
	int rc;

	t_capture_begin(cap, STDOUT_FILENO);
	rc = PARSE(&o, err, "--lease-ms", "5", "--help");
	t_capture_end(cap);
	cr_assert_eq(rc, 1);
	rc = PARSE(&o, err, "--no-pin");
	cr_assert_eq(rc, 0, "rc %d: %s", rc, err);
	cr_assert(o.no_pin);
}

Test(options, config_file_sets_values, .fini = remove_config)
{
	const char *path = write_config("; pdrouter settings\n"
					"lease-ms = 1234\n"
					"control-socket = /run/from-file.sock\n"
					"busy-poll = true\n"
					"log-level = warn\n"
					"kv-transfer-domain = zone\n"
					"\n"
					"[limits]\n"
					"max-targets = 16\n"
					"busy-kv-fraction = 0.75\n");
	struct pd_options o;

	PARSE_OK(&o, "--config", path);
	cr_assert_eq(o.lease_ms, 1234);
	cr_assert_str_eq(o.control_socket, "/run/from-file.sock");
	cr_assert(o.core.busy_poll);
	cr_assert_eq(o.log_level, PD_LOG_WARN);
	cr_assert_str_eq(o.rt.transfer.domain, "zone");
	cr_assert_eq(o.rt.transfer.enforcement, RT_TRANSFER_REQUIRED);
	cr_assert_eq(o.max_targets, 16);
	cr_assert_float_eq(o.rt.busy_kv_fraction, 0.75, 1e-12);
	cr_assert_str_eq(o.config, path);
	cr_assert_str_eq(o.listen[0], "tcp:127.0.0.1:7700", "defaults stay where unset");
}

struct t_switch {
	char word[T_WORD];
	bool on;
};

ParameterizedTestParameters(options, config_switch_takes_true_false_1_0)
{
	static const struct t_switch words[] = {
	    {"true", true}, {"1", true}, {"false", false}, {"0", false}};

	return cr_make_param_array(struct t_switch, words, NELEM(words));
}

ParameterizedTest(struct t_switch *p, options, config_switch_takes_true_false_1_0,
		  .fini = remove_config)
{
	struct pd_options o;
	char text[2 * T_WORD + 32];

	snprintf(text, sizeof(text), "no-pin = %s\nsqpoll = %s\n", p->word, p->word);
	PARSE_OK(&o, "--config", write_config(text));
	cr_assert_eq(o.no_pin, p->on, "no-pin = %s", p->word);
	cr_assert_eq(o.core.sqpoll, p->on, "sqpoll = %s", p->word);
}

Test(options, flag_before_the_config_file_wins_over_it, .fini = remove_config)
{
	const char *path = write_config("lease-ms = 1\nseed = 2\nlog-format = json\n");
	struct pd_options o;

	PARSE_OK(&o, "--lease-ms", "5", "--config", path);
	cr_assert_eq(o.lease_ms, 5);
	cr_assert_eq(o.rt.seed, 2, "the file still sets what no flag gives");
	cr_assert_eq(o.log_format, PD_LOG_JSON);
}

Test(options, flag_after_the_config_file_wins_over_it, .fini = remove_config)
{
	const char *path = write_config("lease-ms = 1\nseed = 2\nlog-format = json\n");
	struct pd_options o;

	PARSE_OK(&o, "--config", path, "--lease-ms", "5");
	cr_assert_eq(o.lease_ms, 5);
	cr_assert_eq(o.rt.seed, 2, "the file still sets what no flag gives");
	cr_assert_eq(o.log_format, PD_LOG_JSON);
}

Test(options, listen_flag_replaces_the_file_listen, .fini = remove_config)
{
	const char *path = write_config("listen = unix:/tmp/from-file.sock\n");
	struct pd_options o;

	PARSE_OK(&o, "--listen", "tcp:127.0.0.1:9", "--config", path);
	cr_assert_eq(o.nlisten, 1, "%u addresses: the flag must win over the file", o.nlisten);
	cr_assert_str_eq(o.listen[0], "tcp:127.0.0.1:9");
}

ParameterizedTestParameters(options_fault, config_switch_refuses_other_words_naming_the_key)
{
	static const struct t_word bad[] = {{"yes"}, {"on"}, {"TRUE"}, {"2"}, {"enabled"}};

	return cr_make_param_array(struct t_word, bad, NELEM(bad));
}

ParameterizedTest(struct t_word *word, options_fault,
		  config_switch_refuses_other_words_naming_the_key, .fini = remove_config)
{
	struct pd_options o;
	char text[64], err[256];

	snprintf(text, sizeof(text), "busy-poll = %s\n", word->s);
	assert_refused(PARSE(&o, err, "--config", write_config(text)), err,
		       (const char *const[]){"busy-poll", NULL});
}

ParameterizedTestParameters(options_fault, config_unknown_key_fails_naming_it)
{
	static const struct t_word keys[] = {
	    {"lease"}, {"no_pin"}, {"config"}, {"help"}, {"version"}};

	return cr_make_param_array(struct t_word, keys, NELEM(keys));
}

ParameterizedTest(struct t_word *key, options_fault, config_unknown_key_fails_naming_it,
		  .fini = remove_config)
{
	struct pd_options o;
	char text[64], err[256];

	snprintf(text, sizeof(text), "%s = 1\n", key->s);
	assert_refused(PARSE(&o, err, "--config", write_config(text)), err,
		       (const char *const[]){key->s, NULL});
}

ParameterizedTestParameters(options_fault, config_bad_value_fails_naming_the_key_and_value)
{
	static const struct t_flag bad[] = {
	    {"lease-ms", "-5"}, {"log-level", "loud"}, {"busy-kv-fraction", "1.5"}};

	return cr_make_param_array(struct t_flag, bad, NELEM(bad));
}

ParameterizedTest(struct t_flag *p, options_fault, config_bad_value_fails_naming_the_key_and_value,
		  .fini = remove_config)
{
	struct pd_options o;
	char text[128], err[256], quoted[64];

	snprintf(text, sizeof(text), "%s = %s\n", p->flag, p->value);
	snprintf(quoted, sizeof(quoted), "'%s'", p->value);
	assert_refused(PARSE(&o, err, "--config", write_config(text)), err,
		       (const char *const[]){p->flag, quoted, NULL});
}

Test(options_fault, missing_config_file_fails_naming_it)
{
	struct pd_options o;
	char err[256];

	assert_refused(PARSE(&o, err, "--config", "/nonexistent/pdrouter.ini"), err,
		       (const char *const[]){"/nonexistent/pdrouter.ini", NULL});
}

Test(options_fault, config_syntax_error_reports_its_line, .fini = remove_config)
{
	const char *path = write_config("; a comment\n\n[section]\nthis line has no equals sign\n");
	struct pd_options o;
	char err[256];

	assert_refused(PARSE(&o, err, "--config", path), err,
		       (const char *const[]){"line 4", NULL});
}

Test(options_fault, config_syntax_error_after_valid_keys_reports_its_line, .fini = remove_config)
{
	const char *path = write_config("lease-ms = 10\nseed = 3\n[broken\n");
	struct pd_options o;
	char err[256];

	assert_refused(PARSE(&o, err, "--config", path), err,
		       (const char *const[]){"line 3", NULL});
}

ParameterizedTestParameters(options_fault, negative_numbers_fail_naming_the_flag_and_value)
{
	static const struct t_flag bad[] = {
	    {"--lease-ms", "-1"},
	    {"--max-targets", "-1"},
	    {"--dataplane-cores", "-1"},
	    {"--seed", "-1"},
	    {"--prefill-timeout-ms", "-1"},
	    {"--decode-retries", "-1"},
	    {"--core-memory-mb", "-1"},
	    {"--router-temperature", "-1"},
	    {"--kv-overlap-score-credit", "-0.5"},
	    {"--kv-transfer-weight", "-1"},
	    {"--busy-kv-fraction", "-0.01"},
	    {"--control-cpu", "-2"},
	};

	return cr_make_param_array(struct t_flag, bad, NELEM(bad));
}

ParameterizedTest(struct t_flag *p, options_fault, negative_numbers_fail_naming_the_flag_and_value)
{
	assert_flag_refuses(p);
}

ParameterizedTestParameters(options_fault, non_numbers_fail_naming_the_flag_and_value)
{
	static const struct t_flag bad[] = {
	    {"--lease-ms", "abc"},	    {"--lease-ms", ""},
	    {"--lease-ms", "12abc"},	    {"--lease-ms", "1 2"},
	    {"--lease-ms", "--"},	    {"--lease-ms", "0x"},
	    {"--max-frame", "1e"},	    {"--prefill-load-scale", "abc"},
	    {"--prefill-load-scale", ""},   {"--prefill-load-scale", "1,5"},
	    {"--busy-kv-fraction", "half"}, {"--seed", "forty-two"},
	};

	return cr_make_param_array(struct t_flag, bad, NELEM(bad));
}

ParameterizedTest(struct t_flag *p, options_fault, non_numbers_fail_naming_the_flag_and_value)
{
	assert_flag_refuses(p);
}

ParameterizedTestParameters(options_fault, fractions_fail_for_integer_flags)
{
	static const struct t_flag bad[] = {
	    {"--lease-ms", "1.5"},     {"--max-targets", "0.001"},  {"--decode-retries", "1.5"},
	    {"--max-frame", "4096.5"}, {"--seed", "1.5"},	    {"--control-cpu", "0.5"},
	    {"--expiry-s", "0.25"},    {"--core-memory-mb", "1.5"}, {"--wake-us", "2.5"},
	};

	return cr_make_param_array(struct t_flag, bad, NELEM(bad));
}

ParameterizedTest(struct t_flag *p, options_fault, fractions_fail_for_integer_flags)
{
	assert_flag_refuses(p);
}

Test(options, fractions_are_accepted_for_real_flags)
{
	struct pd_options o;

	PARSE_OK(&o, "--router-temperature", "1.5", "--prefill-load-scale", "0.001");
	cr_assert_float_eq(o.rt.policy.temperature, 1.5, 1e-12);
	cr_assert_float_eq(o.rt.policy.prefill_load_scale, 0.001, 1e-12);
}

ParameterizedTestParameters(options_fault, nan_and_infinities_fail)
{
	static const struct t_flag bad[] = {
	    {"--router-temperature", "nan"},
	    {"--router-temperature", "inf"},
	    {"--router-temperature", "1e400"},
	    {"--kv-transfer-weight", "NaN"},
	    {"--kv-transfer-weight", "-inf"},
	    {"--busy-kv-fraction", "nan"},
	    {"--lease-ms", "nan"},
	    {"--lease-ms", "infinity"},
	    {"--seed", "inf"},
	    {"--lease-ms", "1e400"},
	};

	return cr_make_param_array(struct t_flag, bad, NELEM(bad));
}

ParameterizedTest(struct t_flag *p, options_fault, nan_and_infinities_fail)
{
	assert_flag_refuses(p);
}

ParameterizedTestParameters(options_fault, bad_names_fail_naming_the_flag_and_value)
{
	static const struct t_flag bad[] = {
	    {"--log-level", "verbose"},
	    {"--log-level", "INFO"},
	    {"--log-format", "xml"},
	    {"--log-format", "JSON"},
	    {"--kv-transfer-enforcement", "strict"},
	    {"--kv-transfer-enforcement", "Preferred"},
	    {"--listen", "127.0.0.1:7700"},
	    {"--listen", "udp:127.0.0.1:7700"},
	    {"--listen", ""},
	};

	return cr_make_param_array(struct t_flag, bad, NELEM(bad));
}

ParameterizedTest(struct t_flag *p, options_fault, bad_names_fail_naming_the_flag_and_value)
{
	assert_flag_refuses(p);
}

Test(options, control_cpu_minus_one_means_automatic)
{
	struct pd_options o;

	PARSE_OK(&o, "--control-cpu", "-1");
	cr_assert_eq(o.control_cpu, -1);
}

ParameterizedTestParameters(options_fault, unknown_flags_fail_naming_them)
{
	static const struct t_args bad[] = {
	    {{"--bogus"}, "--bogus"},
	    {{"--lease-ms", "5", "--no-such-flag=1"}, "--no-such-flag"},
	    {{"-x"}, "-x"},
	    {{"--no-pin=1"}, "--no-pin"},
	};

	return cr_make_param_array(struct t_args, bad, NELEM(bad));
}

ParameterizedTest(struct t_args *p, options_fault, unknown_flags_fail_naming_them)
{
	struct pd_options o;
	char err[256];

	assert_refused(parse_t_args(&o, err, sizeof(err), p), err,
		       (const char *const[]){p->named, NULL});
}

/* getopt stays inside "-xy" after 'x': the message must still name that argument. */
Test(options_fault, unknown_short_flag_in_a_cluster_is_named)
{
	struct pd_options o;
	char err[256];

	assert_refused(PARSE(&o, err, "-xy"), err, (const char *const[]){"-xy", NULL});
}

ParameterizedTestParameters(options_fault, missing_values_fail_naming_the_flag)
{
	static const struct t_args bad[] = {
	    {{"--no-pin", "--lease-ms"}, "--lease-ms"},
	    {{"--no-pin", "--listen"}, "--listen"},
	    {{"--no-pin", "-l"}, "-l"},
	    {{"--no-pin", "--config"}, "--config"},
	    {{"--log-level"}, "--log-level"},
	    {{"--kv-transfer-domain"}, "--kv-transfer-domain"},
	};

	return cr_make_param_array(struct t_args, bad, NELEM(bad));
}

ParameterizedTest(struct t_args *p, options_fault, missing_values_fail_naming_the_flag)
{
	struct pd_options o;
	char err[256];

	assert_refused(parse_t_args(&o, err, sizeof(err), p), err,
		       (const char *const[]){p->named, NULL});
}

ParameterizedTestParameters(options_fault, stray_arguments_fail_naming_them)
{
	static const struct t_args bad[] = {
	    {{"serve"}, "serve"},
	    {{"--lease-ms", "5", "extra", "--no-pin"}, "extra"},
	    {{"--", "--no-pin"}, "--no-pin"},
	};

	return cr_make_param_array(struct t_args, bad, NELEM(bad));
}

ParameterizedTest(struct t_args *p, options_fault, stray_arguments_fail_naming_them)
{
	struct pd_options o;
	char err[256];

	assert_refused(parse_t_args(&o, err, sizeof(err), p), err,
		       (const char *const[]){p->named, NULL});
}

/* A flag whose value is scaled into a 64-bit field: which field, and by what. */
struct t_scaled {
	char flag[T_WORD], value[T_WORD];
	size_t off;
	uint64_t unit;
};

ParameterizedTestParameters(options_fault, values_too_large_for_their_unit_do_not_wrap)
{
	/* 18446744073710 ms is 448384 ns modulo 2^64; 2^44 MiB is 0 bytes, "the default". */
	static const struct t_scaled big[] = {
	    {"--prefill-timeout-ms", "18446744073710",
	     offsetof(struct pd_options, core.prefill_timeout_ns), 1000000},
	    {"--decode-timeout-ms", "18446744073710",
	     offsetof(struct pd_options, core.decode_timeout_ns), 1000000},
	    {"--idle-timeout-ms", "18446744073710",
	     offsetof(struct pd_options, core.idle_timeout_ns), 1000000},
	    {"--expiry-s", "18446744074", offsetof(struct pd_options, rt.expiry_ns), 1000000000},
	    {"--core-memory-mb", "17592186044416", offsetof(struct pd_options, core.memory_bytes),
	     1u << 20},
	};

	return cr_make_param_array(struct t_scaled, big, NELEM(big));
}

/* Refused, or saturated; never wrapped to a small value. */
ParameterizedTest(struct t_scaled *p, options_fault, values_too_large_for_their_unit_do_not_wrap)
{
	struct pd_options o;
	char err[256];
	uint64_t got;
	int rc = PARSE(&o, err, p->flag, p->value);

	_Static_assert(sizeof(o.core.memory_bytes) == sizeof(uint64_t), "64-bit fields");
	memcpy(&got, (const char *)&o + p->off, sizeof(got));
	cr_assert(rc == -EINVAL || (rc == 0 && got >= UINT64_MAX - p->unit),
		  "%s %s: rc %d, field %llu: wrapped", p->flag, p->value, rc,
		  (unsigned long long)got);
}

Test(options_fault, seed_above_2_pow_53_keeps_every_bit)
{
	struct pd_options o;

	PARSE_OK(&o, "--seed", "9007199254740993");
	cr_assert_eq(o.rt.seed, 9007199254740993ull, "seed %llu", (unsigned long long)o.rt.seed);
}

Test(options_fault, seed_takes_the_largest_64_bit_value)
{
	struct pd_options o;

	PARSE_OK(&o, "--seed", "18446744073709551615");
	cr_assert_eq(o.rt.seed, UINT64_MAX);
}

Test(log, level_names_parse_and_others_are_refused)
{
	static const char *const bad[] = {"", "INFO", "Info", "warning", "fatal", "info ", "trace"};

	cr_assert_eq(pd_log_level_parse("debug"), PD_LOG_DEBUG);
	cr_assert_eq(pd_log_level_parse("info"), PD_LOG_INFO);
	cr_assert_eq(pd_log_level_parse("warn"), PD_LOG_WARN);
	cr_assert_eq(pd_log_level_parse("error"), PD_LOG_ERROR);
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
		cr_assert_eq(pd_log_level_parse(bad[i]), -1, "'%s'", bad[i]);
}

Test(log, format_names_parse_and_others_are_refused)
{
	static const char *const bad[] = {"", "JSON", "text", "logfmt2", "jso"};

	cr_assert_eq(pd_log_format_parse("logfmt"), PD_LOG_LOGFMT);
	cr_assert_eq(pd_log_format_parse("json"), PD_LOG_JSON);
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
		cr_assert_eq(pd_log_format_parse(bad[i]), -1, "'%s'", bad[i]);
}

/* The objects json_line() parsed, released after each log test (assertions leave early). */
static struct json_object *t_json[16];
static size_t t_njson;

static void release_json(void)
{
	while (t_njson)
		json_object_put(t_json[--t_njson]);
}

/* Parse @line (up to its newline) as one JSON object, with nothing after it. */
static struct json_object *json_line(const char *line, size_t len)
{
	struct json_tokener *tok = json_tokener_new();
	enum json_tokener_error e;
	struct json_object *j;
	size_t end;

	cr_assert_not_null(tok);
	j = json_tokener_parse_ex(tok, line, (int)len);
	e = json_tokener_get_error(tok);
	end = json_tokener_get_parse_end(tok);
	json_tokener_free(tok);
	cr_assert_not_null(j, "not JSON (%s): %.*s", json_tokener_error_desc(e), (int)len, line);
	cr_assert_lt(t_njson, NELEM(t_json));
	t_json[t_njson++] = j;
	cr_assert_eq(end, len, "bytes after the object: %.*s", (int)len, line);
	cr_assert(json_object_is_type(j, json_type_object), "not an object: %.*s", (int)len, line);
	return j;
}

/* Split @out into lines, each ending in '\n'; returns how many, @line[i] and @len[i]. */
static size_t split_lines(const char *out, const char **line, size_t *len, size_t max)
{
	size_t n = 0;

	while (*out) {
		const char *nl = strchr(out, '\n');

		cr_assert_not_null(nl, "unterminated line: %s", out);
		cr_assert_lt(n, max);
		line[n] = out;
		len[n++] = (size_t)(nl - out);
		out = nl + 1;
	}
	return n;
}

static const char *str_field(struct json_object *j, const char *key)
{
	struct json_object *v;

	cr_assert(json_object_object_get_ex(j, key, &v), "no \"%s\" in %s", key,
		  json_object_to_json_string(j));
	cr_assert(json_object_is_type(v, json_type_string), "\"%s\" is not a string", key);
	return json_object_get_string(v);
}

/* Log one line in JSON at info and return it parsed. */
#define LOG_JSON_ONE(cap, ...)                                                                     \
	({                                                                                         \
		const char *lines_[4];                                                             \
		size_t lens_[4];                                                                   \
		t_capture_begin((cap), STDERR_FILENO);                                             \
		pd_log(PD_LOG_INFO, __VA_ARGS__);                                                  \
		cr_assert_eq(split_lines(t_capture_end(cap), lines_, lens_, 4), 1);                \
		json_line(lines_[0], lens_[0]);                                                    \
	})

Test(log, json_lines_are_objects_with_ts_level_event_and_fields)
{
	struct t_capture *cap = &t_cap;
	struct json_object *j;
	const char *ts;
	int y, mo, d, h, mi, s, ms;
	char z;

	pd_log_setup(PD_LOG_DEBUG, PD_LOG_JSON);
	j = LOG_JSON_ONE(cap, "started", "version=%s cores=%u config=%s", "0.1.0", 4u, "none");
	ts = str_field(j, "ts");
	cr_assert_eq(sscanf(ts, "%4d-%2d-%2dT%2d:%2d:%2d.%3d%c", &y, &mo, &d, &h, &mi, &s, &ms, &z),
		     8, "ts '%s'", ts);
	cr_assert_eq(z, 'Z', "ts '%s' in UTC", ts);
	cr_assert_eq(strlen(ts), strlen("2026-01-01T00:00:00.000Z"), "ts '%s'", ts);
	cr_assert_str_eq(str_field(j, "level"), "info");
	cr_assert_str_eq(str_field(j, "event"), "started");
	cr_assert_str_eq(str_field(j, "version"), "0.1.0");
	cr_assert_str_eq(str_field(j, "cores"), "4");
	cr_assert_str_eq(str_field(j, "config"), "none");
	cr_assert_eq(json_object_object_length(j), 6);
}

Test(log, json_quoted_values_with_spaces_and_backslashes_round_trip)
{
	static const char *const values[] = {"two words",   "C:\\dir\\file", "tab\there",
					     "line\nbreak", "a=b c=d",	     "\\"};
	struct t_capture *cap = &t_cap;

	pd_log_setup(PD_LOG_INFO, PD_LOG_JSON);
	for (size_t i = 0; i < sizeof(values) / sizeof(values[0]); i++) {
		char q[64];
		struct json_object *j = LOG_JSON_ONE(cap, "failed", "error=\"%s\" n=%zu",
						     pd_log_quote(q, sizeof(q), values[i]), i);

		cr_assert_str_eq(str_field(j, "error"), values[i]);
		cr_assert_eq(atoi(str_field(j, "n")), (int)i, "the field after the quoted one");
	}
}

/* log.h: a string from outside goes through pd_log_quote() into key="%s". */
Test(log, json_quoted_values_with_quotes_round_trip)
{
	static const char *const values[] = {"say \"hi\"", "\"", "a \"b\" c=\"d\""};
	static const char *const nth[] = {"0", "1", "2"};
	struct t_capture *cap = &t_cap;

	pd_log_setup(PD_LOG_INFO, PD_LOG_JSON);
	for (size_t i = 0; i < sizeof(values) / sizeof(values[0]); i++) {
		char q[64];
		struct json_object *j = LOG_JSON_ONE(cap, "failed", "error=\"%s\" n=%zu",
						     pd_log_quote(q, sizeof(q), values[i]), i);

		cr_assert_str_eq(str_field(j, "error"), values[i], "logged %s",
				 json_object_to_json_string(j));
		cr_assert_str_eq(str_field(j, "n"), nth[i]);
		cr_assert_eq(json_object_object_length(j), 5, "%s", json_object_to_json_string(j));
	}
}

Test(log, json_long_lines_stay_one_valid_object)
{
	struct t_capture *cap = &t_cap;
	static char big[5000];
	struct json_object *j;

	memset(big, '"', 4999);
	big[4999] = '\0';
	pd_log_setup(PD_LOG_INFO, PD_LOG_JSON);
	j = LOG_JSON_ONE(cap, "big", "a=1 blob=\"%s\"", big);
	cr_assert_str_eq(str_field(j, "a"), "1");
	memset(big, '\\', 4999);
	j = LOG_JSON_ONE(cap, "big", "blob=%s", big);
}

Test(log, lines_below_the_level_are_dropped)
{
	struct t_capture *cap = &t_cap;
	const char *line[8];
	size_t len[8], n;
	struct json_object *j;

	pd_log_setup(PD_LOG_WARN, PD_LOG_JSON);
	t_capture_begin(cap, STDERR_FILENO);
	pd_log(PD_LOG_DEBUG, "d", "n=%d", 0);
	pd_log(PD_LOG_INFO, "i", "n=%d", 1);
	pd_log(PD_LOG_WARN, "w", "n=%d", 2);
	pd_log(PD_LOG_ERROR, "e", "n=%d", 3);
	n = split_lines(t_capture_end(cap), line, len, 8);
	cr_assert_eq(n, 2, "warn and error only: %s", cap->buf);
	j = json_line(line[0], len[0]);
	cr_assert_str_eq(str_field(j, "level"), "warn");
	cr_assert_str_eq(str_field(j, "event"), "w");
	j = json_line(line[1], len[1]);
	cr_assert_str_eq(str_field(j, "level"), "error");
	cr_assert_str_eq(str_field(j, "event"), "e");
}

Test(log, default_is_logfmt_at_info)
{
	struct t_capture *cap = &t_cap;
	const char *out;

	t_capture_begin(cap, STDERR_FILENO);
	pd_log(PD_LOG_DEBUG, "hidden", "n=%d", 1);
	pd_log(PD_LOG_INFO, "shown", "n=%d", 2);
	out = t_capture_end(cap);
	cr_assert_null(strstr(out, "hidden"), "%s", out);
	cr_assert_not_null(strstr(out, " level=info event=shown n=2\n"), "%s", out);
}

Test(log, logfmt_lines_hold_the_event_and_the_fields_as_written)
{
	struct t_capture *cap = &t_cap;
	const char *out;

	pd_log_setup(PD_LOG_DEBUG, PD_LOG_LOGFMT);
	t_capture_begin(cap, STDERR_FILENO);
	pd_log(PD_LOG_WARN, "worker_joined", "worker=%u model=%s note=\"%s\"", 3u, "llama", "a b");
	pd_log(PD_LOG_DEBUG, "tick", "%s", "");
	out = t_capture_end(cap);
	cr_assert_eq(strncmp(out, "ts=", 3), 0, "%s", out);
	cr_assert_not_null(strstr(out, " level=warn event=worker_joined worker=3 model=llama "
				       "note=\"a b\"\n"),
			   "%s", out);
	cr_assert_not_null(strstr(out, " level=debug event=tick\n"), "no trailing space: %s", out);
}
