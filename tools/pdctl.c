/*
 * pdctl: the admin CLI of pdrouter. It sends one command line to the router's admin socket
 * (control/admin.h), reads the answer until the router closes the connection, and prints it:
 * as is with --json (for scripts), otherwise as tables and "name value" lines parsed with
 * json-c. Exit status: 0 done, 1 the router refused the command or could not be asked, 2 usage.
 *
 * Usage: pdctl [--admin PATH] [--json] COMMAND [ARG]; pdctl --help lists the commands.
 */
#define _GNU_SOURCE
#include <ctype.h>
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <json-c/json.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "admin_client.h"

#define PDCTL_ADMIN_DEFAULT "/tmp/pdrouter.admin.sock" /* pdrouter's --admin-socket default */
#define PDCTL_TIMEOUT_MS 5000 /* connect, send and the whole answer, together */
/* Far above any real answer (explain is at most 64 KiB a core): a bound on a broken peer. */
#define PDCTL_WORKER_MAX_LEN 20 /* digits of a worker id; UINT32_MAX has 10 */
#define TBL_COLS_MAX 16

enum pdctl_exit { PDCTL_OK = 0, PDCTL_FAILED = 1, PDCTL_USAGE = 2 };

/* A command: its name on the wire, whether it takes an argument, how its answer is shown. */
struct pdctl_cmd {
	const char *name;
	bool takes_arg;
	int (*show)(struct json_object *answer, const char *arg); /* NULL: the answer is text */
};

/* A text table built row by row, its column widths known only when it is printed. */
struct tbl {
	unsigned int ncols;
	uint32_t right; /* bit per column: right-aligned (numbers) */
	size_t ncells, cap;
	char **cells;
};

static const char usage_line[] =
    "usage: pdctl [--admin PATH] [--json] COMMAND [ARG]; pdctl --help lists the commands\n";

static const char usage_text[] =
    "usage: pdctl [--admin PATH] [--json] COMMAND [ARG]\n"
    "Ask a running pdrouter over its admin socket.\n"
    "\n"
    "commands:\n"
    "  models          every model, its pool sizes and whether its prefill stage is active\n"
    "  workers         every routing target (a worker's DP rank): type, domains, load,\n"
    "                  KV events; then the workers draining\n"
    "  counters        the dataplane's totals, the control socket's counters and the\n"
    "                  router's own latency\n"
    "  explain         each dataplane core's last routing decisions, as text\n"
    "  drain WORKER    route no new requests to WORKER (an id from 'workers'); what it has\n"
    "                  in flight finishes\n"
    "\n"
    "options:\n"
    "  --admin PATH    the router's admin socket (pdrouter --admin-socket; default\n"
    "                  " PDCTL_ADMIN_DEFAULT ")\n"
    "  --json          print the router's JSON answer as is (explain stays text)\n"
    "  --help          show this help\n"
    "\n"
    "exit status: 0 done; 1 the router refused the command, or could not be asked;\n"
    "2 a usage error\n";

/* Out of memory in a one-shot CLI: nothing to fall back to, so say so and stop. */
static void *must(void *p)
{
	if (!p) {
		fputs("pdctl: out of memory\n", stderr);
		exit(PDCTL_FAILED);
	}
	return p;
}

/* Append one cell, printf-style; rows fill left to right, header row first. */
static void __attribute__((format(printf, 2, 3))) tbl_cell(struct tbl *t, const char *fmt, ...)
{
	va_list ap;
	char *s;

	va_start(ap, fmt);
	if (vasprintf(&s, fmt, ap) < 0)
		s = NULL;
	va_end(ap);
	if (t->ncells == t->cap) {
		t->cap = t->cap ? t->cap * 2 : 64;
		t->cells = must(reallocarray(t->cells, t->cap, sizeof(*t->cells)));
	}
	t->cells[t->ncells++] = must(s);
}

/*
 * Start a table whose header row is the space-separated names in @head (at most TBL_COLS_MAX);
 * @right marks the numeric columns, a bit each, which are right-aligned.
 */
static void tbl_init(struct tbl *t, const char *head, uint32_t right)
{
	*t = (struct tbl){.right = right};
	for (const char *p = head; *p; t->ncols++) {
		size_t n = strcspn(p, " ");

		tbl_cell(t, "%.*s", (int)n, p);
		p += n + (p[n] == ' ');
	}
}

/* Print the table, columns two spaces apart and as wide as their widest cell; free it. */
static void tbl_print(struct tbl *t)
{
	int width[TBL_COLS_MAX] = {0};

	for (size_t i = 0; i < t->ncells; i++) {
		int w = (int)strlen(t->cells[i]);

		if (w > width[i % t->ncols])
			width[i % t->ncols] = w;
	}
	for (size_t i = 0; i < t->ncells; i++) {
		unsigned int col = (unsigned int)(i % t->ncols);
		bool last = col + 1 == t->ncols || i + 1 == t->ncells;

		if (t->right & (1u << col))
			printf("%*s", width[col], t->cells[i]);
		else /* no trailing blanks after the last column */
			printf("%-*s", last ? 0 : width[col], t->cells[i]);
		fputs(last ? "\n" : "  ", stdout);
		free(t->cells[i]);
	}
	free(t->cells);
}

/* Member @key of @o if it has type @type, else NULL (a field an older router does not send). */
static struct json_object *member(struct json_object *o, const char *key, enum json_type type)
{
	struct json_object *v;

	if (!json_object_object_get_ex(o, key, &v) || !json_object_is_type(v, type))
		return NULL;
	return v;
}

/* A number cell from @key of @o, or "-" where the router sent none (a target without a
 * connection has no KV-event counters). */
static void tbl_u64(struct tbl *t, struct json_object *o, const char *key)
{
	struct json_object *v = member(o, key, json_type_int);

	if (v)
		tbl_cell(t, "%" PRIu64, json_object_get_uint64(v));
	else
		tbl_cell(t, "-");
}

/* String member @key of @o, or "?" where it is missing. */
static const char *str_of(struct json_object *o, const char *key)
{
	struct json_object *v = member(o, key, json_type_string);

	return v ? json_object_get_string(v) : "?";
}

/* models: {"models":[{"name","prefill","decode","aggregated","prefill_active"}]}. */
static int show_models(struct json_object *a, const char *arg)
{
	struct json_object *models = member(a, "models", json_type_array);
	struct tbl t;

	(void)arg;
	if (!models)
		return -EBADMSG;
	if (!json_object_array_length(models)) {
		puts("no models: no worker has registered");
		return 0;
	}
	tbl_init(&t, "MODEL PREFILL DECODE AGGREGATED PREFILL_ACTIVE", 0xe);
	for (size_t i = 0; i < json_object_array_length(models); i++) {
		struct json_object *m = json_object_array_get_idx(models, i);
		struct json_object *active = member(m, "prefill_active", json_type_boolean);

		tbl_cell(&t, "%s", str_of(m, "name"));
		tbl_u64(&t, m, "prefill");
		tbl_u64(&t, m, "decode");
		tbl_u64(&t, m, "aggregated");
		tbl_cell(&t, "%s", !active ? "?" : json_object_get_boolean(active) ? "yes" : "no");
	}
	tbl_print(&t);
	return 0;
}

/* The "domains" object of a target as "name=value,..." ("-" for none). */
static void tbl_domains(struct tbl *t, struct json_object *target)
{
	struct json_object *d = member(target, "domains", json_type_object);
	char *s = NULL;
	size_t len = 0;
	bool first = true;
	FILE *f;

	if (!d || !json_object_object_length(d)) {
		tbl_cell(t, "-");
		return;
	}
	f = must(open_memstream(&s, &len));
	json_object_object_foreach(d, name, value)
	{
		fprintf(f, "%s%s=%s", first ? "" : ",", name, json_object_get_string(value));
		first = false;
	}
	fclose(f);
	tbl_cell(t, "%s", (char *)must(s));
	free(s);
}

/* The ids of the draining workers, one line ("draining: none" when there are none). */
static void print_draining(struct json_object *draining)
{
	size_t n = draining ? json_object_array_length(draining) : 0;

	fputs("draining:", stdout);
	for (size_t i = 0; i < n; i++)
		printf(" %" PRIu64, json_object_get_uint64(json_object_array_get_idx(draining, i)));
	puts(n ? "" : " none");
}

/* workers: {"targets":[{...}],"draining":[ids]}; one row per target, then the draining. */
static int show_workers(struct json_object *a, const char *arg)
{
	struct json_object *targets = member(a, "targets", json_type_array);
	struct tbl t;

	(void)arg;
	if (!targets)
		return -EBADMSG;
	if (!json_object_array_length(targets)) {
		puts("no workers: none is registered (or every one is draining)");
	} else {
		tbl_init(&t,
			 "WORKER RANK MODEL TYPE DOMAINS CACHED_BLK ACTIVE_BLK PREFILL_TOK "
			 "USED/CAP_BLK KV_EVENTS KV_GAPS KV_DUPS",
			 0xfe3);
		for (size_t i = 0; i < json_object_array_length(targets); i++) {
			struct json_object *w = json_object_array_get_idx(targets, i);
			struct json_object *used = member(w, "reported_used_blocks", json_type_int);
			struct json_object *cap = member(w, "kv_capacity_blocks", json_type_int);

			tbl_u64(&t, w, "worker");
			tbl_u64(&t, w, "dp_rank");
			tbl_cell(&t, "%s", str_of(w, "model"));
			tbl_cell(&t, "%s", str_of(w, "type"));
			tbl_domains(&t, w);
			tbl_u64(&t, w, "cached_blocks");
			tbl_u64(&t, w, "active_blocks");
			tbl_u64(&t, w, "prefill_tokens");
			tbl_cell(&t, "%" PRIu64 "/%" PRIu64, json_object_get_uint64(used),
				 json_object_get_uint64(cap));
			tbl_u64(&t, w, "kv_events");
			tbl_u64(&t, w, "kv_gaps");
			tbl_u64(&t, w, "kv_duplicates");
		}
		tbl_print(&t);
	}
	print_draining(member(a, "draining", json_type_array));
	return 0;
}

/* Every member of @o as a "PREFIX.name value" line, values aligned. */
static void print_pairs(struct json_object *o, const char *prefix)
{
	int width = 0;

	json_object_object_foreach(o, key, v)
	{
		int w = (int)(strlen(prefix) + strlen(key));

		(void)v;
		if (w > width)
			width = w;
	}
	json_object_object_foreach(o, name, value)
	{
		printf("%s%-*s %s\n", prefix, width - (int)strlen(prefix), name,
		       json_object_get_string(value));
	}
}

/* One latency line from the NAME_p50_ns.. members of @lat, in microseconds. */
static void print_latency(struct json_object *lat, const char *name, const char *what)
{
	static const char *const q[] = {"p50", "p99", "p999"};
	struct json_object *hist;
	char key[32];
	uint64_t samples = 0;

	printf("%s:", what);
	for (size_t i = 0; i < 3; i++) {
		struct json_object *v;

		snprintf(key, sizeof(key), "%s_%s_ns", name, q[i]);
		v = member(lat, key, json_type_int);
		printf(" %s %.2f us%s", i == 2 ? "p99.9" : q[i],
		       v ? (double)json_object_get_uint64(v) / 1000.0 : 0.0, i == 2 ? "" : " ");
	}
	snprintf(key, sizeof(key), "%s_hist", name);
	hist = member(lat, key, json_type_array);
	for (size_t b = 0; hist && b < json_object_array_length(hist); b++)
		samples += json_object_get_uint64(json_object_array_get_idx(hist, b));
	printf("  (%" PRIu64 " samples)\n", samples);
}

/* counters: the totals, the control socket's counters, then the router's latency. */
static int show_counters(struct json_object *a, const char *arg)
{
	struct json_object *total = member(a, "total", json_type_object);
	struct json_object *control = member(a, "control", json_type_object);
	struct json_object *lat = member(a, "latency", json_type_object);

	(void)arg;
	if (!total || !control || !lat)
		return -EBADMSG;
	print_pairs(total, "");
	/* Prefixed: "lanes_broken" is both a dataplane and a control counter. */
	print_pairs(control, "control.");
	print_latency(lat, "route", "routing decision (rt_route)");
	print_latency(lat, "in", "router in (frame -> worker ring)");
	print_latency(lat, "out", "router out (worker answer -> frame to the kernel)");
	print_latency(lat, "send", "kernel send (submits with sends, waking clients)");
	return 0;
}

/* drain: {"drained":ID}. */
static int show_drain(struct json_object *a, const char *arg)
{
	if (!member(a, "drained", json_type_int))
		return -EBADMSG;
	printf("worker %s draining: no new requests go to it; those in flight finish\n", arg);
	return 0;
}

static const struct pdctl_cmd cmds[] = {
    {"models", false, show_models},	{"workers", false, show_workers},
    {"counters", false, show_counters}, {"explain", false, NULL},
    {"drain", true, show_drain},
};

/* The command named @name, or NULL. */
static const struct pdctl_cmd *find_cmd(const char *name)
{
	for (size_t i = 0; i < sizeof(cmds) / sizeof(cmds[0]); i++)
		if (!strcmp(cmds[i].name, name))
			return &cmds[i];
	return NULL;
}

/* A worker id as the router parses it: decimal digits only (and it keeps the line one line). */
static bool worker_id_ok(const char *s)
{
	size_t n = strlen(s);

	if (!n || n > PDCTL_WORKER_MAX_LEN)
		return false;
	for (size_t i = 0; i < n; i++)
		if (!isdigit((unsigned char)s[i]))
			return false;
	return true;
}

/*
 * Show an answer the router sent for @c. JSON answers are parsed even with --json, so that an
 * error object makes the exit status 1 for scripts too. Returns the exit status.
 */
static int show(const struct pdctl_cmd *c, const char *arg, const char *ans, bool json)
{
	struct json_object *obj, *err;
	int rc = PDCTL_OK;

	if (json || (!c->show && ans[0] != '{'))
		fputs(ans, stdout);
	if (!c->show && ans[0] != '{') /* explain's text; it has JSON only for an error */
		return PDCTL_OK;
	obj = json_tokener_parse(ans);
	if (!obj || !json_object_is_type(obj, json_type_object)) {
		fprintf(stderr, "pdctl: %s: the router's answer is not a JSON object\n", c->name);
		rc = PDCTL_FAILED;
	} else if ((err = member(obj, "error", json_type_string))) {
		if (!json)
			fprintf(stderr, "pdctl: %s: %s\n", c->name, json_object_get_string(err));
		rc = PDCTL_FAILED;
	} else if (!json && c->show && c->show(obj, arg)) {
		fprintf(stderr, "pdctl: %s: unexpected answer from the router (see --json)\n",
			c->name);
		rc = PDCTL_FAILED;
	}
	json_object_put(obj);
	return rc;
}

/* What to do about connect error @err: most often the router is not running at that path. */
static const char *connect_hint(int err)
{
	switch (err) {
	case -EACCES:
		return "the socket is mode 0600: run pdctl as the router's user";
	case -ENAMETOOLONG:
		return "a Unix socket path is at most 107 bytes";
	default:
		return "is pdrouter running? --admin PATH";
	}
}

/* Ask the router at @path for @c (and @arg) and show the answer. Returns the exit status. */
static int run(const char *path, const struct pdctl_cmd *c, const char *arg, bool json)
{
	char line[64], *ans;
	int rc;

	snprintf(line, sizeof(line), "%s%s%s", c->name, arg ? " " : "", arg ? arg : "");
	ans = pd_admin_ask(path, line, PDCTL_TIMEOUT_MS);
	if (!ans && (errno == ENOENT || errno == ECONNREFUSED || errno == EACCES ||
		     errno == EPERM || errno == ENAMETOOLONG || errno == ENOTSOCK)) {
		fprintf(stderr, "pdctl: cannot connect to %s: %s (%s)\n", path, strerror(errno),
			connect_hint(-errno));
		return PDCTL_FAILED;
	}
	if (!ans) {
		if (errno == ETIMEDOUT)
			fprintf(stderr, "pdctl: %s: no answer from %s within %d s\n", c->name, path,
				PDCTL_TIMEOUT_MS / 1000);
		else
			fprintf(stderr, "pdctl: %s: no answer from %s: %s\n", c->name, path,
				strerror(errno));
		return PDCTL_FAILED;
	}
	if (!*ans) {
		fprintf(stderr, "pdctl: %s: %s closed the connection without an answer\n", c->name,
			path);
		free(ans);
		return PDCTL_FAILED;
	}
	rc = show(c, arg, ans, json);
	free(ans);
	return rc;
}

/* A usage error: what is wrong (printf-style), then where to look. Returns the exit status. */
static int __attribute__((format(printf, 1, 2))) usage_error(const char *fmt, ...)
{
	va_list ap;

	fputs("pdctl: ", stderr);
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fprintf(stderr, "\n%s", usage_line);
	return PDCTL_USAGE;
}

/* Parse the command line, ask, and make sure what was printed reached stdout. */
int main(int argc, char **argv)
{
	static const struct option opts[] = {
	    {"admin", required_argument, NULL, 'a'},
	    {"json", no_argument, NULL, 'j'},
	    {"help", no_argument, NULL, 'h'},
	    {0},
	};
	const char *path = PDCTL_ADMIN_DEFAULT;
	const struct pdctl_cmd *c;
	const char *arg;
	bool json = false;
	int opt, rc;

	while ((opt = getopt_long(argc, argv, "a:jh", opts, NULL)) != -1) {
		switch (opt) {
		case 'a':
			path = optarg;
			break;
		case 'j':
			json = true;
			break;
		case 'h':
			fputs(usage_text, stdout);
			return PDCTL_OK;
		default: /* getopt has named the option */
			fputs(usage_line, stderr);
			return PDCTL_USAGE;
		}
	}
	if (optind == argc)
		return usage_error("no command");
	c = find_cmd(argv[optind]);
	if (!c)
		return usage_error("unknown command '%s'; try models, workers, counters, explain, "
				   "drain WORKER",
				   argv[optind]);
	arg = c->takes_arg && optind + 1 < argc ? argv[optind + 1] : NULL;
	if (argc - optind != (c->takes_arg ? 2 : 1))
		return usage_error(c->takes_arg ? "%s takes one WORKER id" : "%s takes no argument",
				   c->name);
	if (c->takes_arg && !worker_id_ok(arg))
		return usage_error("WORKER is a worker id, a number as 'pdctl workers' lists, not "
				   "'%s'",
				   arg);
	rc = run(path, c, arg, json);
	if (fflush(stdout) || ferror(stdout)) {
		perror("pdctl: stdout");
		return PDCTL_FAILED;
	}
	return rc;
}
