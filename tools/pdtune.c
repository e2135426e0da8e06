/*
 * pdtune: the core-pinning tuner of pdrouter. It reads the machine's topology with hwloc
 * (pdtune/topo.h), proposes placements of the control thread and the dataplane cores
 * (pdtune/propose.h), measures each with pdbench (pdtune/measure.h), ranks them and prints
 * the pdrouter flags of the best (pdtune/report.h). Single-threaded; the benchmarks run as
 * child processes. Exit status: 0 done, 1 no candidate could be measured, 2 usage.
 */
#include <errno.h>
#include <getopt.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "measure.h"
#include "propose.h"
#include "report.h"
#include "topo.h"

enum { PT_OK = 0, PT_FAILED = 1, PT_USAGE = 2 };

struct pt_opts {
	struct pt_source src;
	uint32_t ncores; /* 0: pdrouter's default */
	const char *nic;
	bool dry_run, json, load;
	struct pt_measure_opts m;
};

static const char usage_text[] =
    "usage: pdtune [--cores N] [--nic NAME] [--dry-run] [--json] [--load] [--runs N]\n"
    "              [--topology FILE | --synthetic DESC] [--pdbench PATH] ...\n"
    "Propose placements of pdrouter's control thread and dataplane cores on this machine's\n"
    "topology (hwloc), measure each with pdbench and print them ranked, with the pdrouter\n"
    "flags of the best.\n"
    "\n"
    "  -c, --cores N          dataplane cores (default: as many as pdrouter places itself)\n"
    "  -n, --nic NAME         the NIC to place near (default: the first whose locality is\n"
    "                         known)\n"
    "  -d, --dry-run          propose, measure nothing\n"
    "  -j, --json             one JSON object per candidate on stdout; the rest on stderr\n"
    "  -l, --load             also a pdbench load run through pdrouter and pdmock --instant\n"
    "      --load-seconds S   length of each load run (default 3)\n"
    "  -r, --runs N           runs of each benchmark; the median counts (default 3)\n"
    "      --decisions N      pdbench route decisions a run (default 20000)\n"
    "      --samples N        pdbench mailbox latency samples a run (default 200000)\n"
    "  -t, --topology FILE    an hwloc XML topology instead of this machine (a dry run)\n"
    "  -s, --synthetic DESC   a synthetic hwloc topology, such as\n"
    "                         \"pack:2 numa:1 l3:1 core:8 pu:2\" (a dry run)\n"
    "      --pdbench PATH     default: ../bench/pdbench from pdtune's directory\n"
    "      --pdrouter PATH    default: ../control/pdrouter from pdtune's directory\n"
    "      --pdmock PATH      default: pdmock in pdtune's directory\n"
    "  -v, --verbose          print each command run, as taskset would run it\n"
    "  -h, --help             this text\n"
    "\n"
    "Each candidate runs `pdbench route --targets 256 --prompt-tokens 8192` on every\n"
    "dataplane cpu at once (the slowest counts) and `pdbench mailbox --mode processes`\n"
    "from dataplane core 0 to the cpu where a worker would run. Ranked by load throughput\n"
    "when measured, else by route p99 + 2 x mailbox p99.\n";

static int parse_u32(const char *name, const char *s, uint32_t min, uint32_t max, uint32_t *out)
{
	unsigned long v;
	char *end;

	errno = 0;
	v = strtoul(s, &end, 10);
	if (errno || end == s || *end || s[0] == '-' || v < min || v > max) {
		fprintf(stderr, "pdtune: --%s wants an integer in [%u, %u], not '%s'\n", name, min,
			max, s);
		return -EINVAL;
	}
	*out = (uint32_t)v;
	return 0;
}

static int parse_secs(const char *s, double *out)
{
	char *end;
	double v = strtod(s, &end);

	if (end == s || *end || !isfinite(v) || v <= 0 || v > 3600) {
		fprintf(stderr, "pdtune: --load-seconds wants seconds in (0, 3600], not '%s'\n", s);
		return -EINVAL;
	}
	*out = v;
	return 0;
}

static int parse(int argc, char **argv, struct pt_opts *o)
{
	static const struct option opts[] = {{"cores", 1, 0, 'c'},
					     {"nic", 1, 0, 'n'},
					     {"dry-run", 0, 0, 'd'},
					     {"json", 0, 0, 'j'},
					     {"load", 0, 0, 'l'},
					     {"load-seconds", 1, 0, 'L'},
					     {"runs", 1, 0, 'r'},
					     {"decisions", 1, 0, 'D'},
					     {"samples", 1, 0, 'S'},
					     {"topology", 1, 0, 't'},
					     {"synthetic", 1, 0, 's'},
					     {"pdbench", 1, 0, 'B'},
					     {"pdrouter", 1, 0, 'R'},
					     {"pdmock", 1, 0, 'M'},
					     {"verbose", 0, 0, 'v'},
					     {"help", 0, 0, 'h'},
					     {0}};
	double load_s = 3;
	int c;

	while ((c = getopt_long(argc, argv, "c:n:djlr:t:s:vh", opts, NULL)) != -1) {
		int rc = 0;

		switch (c) {
		case 'c':
			rc = parse_u32("cores", optarg, 1, DP_PIN_MAX_CORES, &o->ncores);
			break;
		case 'n':
			o->nic = optarg;
			break;
		case 'd':
			o->dry_run = true;
			break;
		case 'j':
			o->json = true;
			break;
		case 'l':
			o->load = true;
			break;
		case 'L':
			rc = parse_secs(optarg, &load_s);
			break;
		case 'r':
			rc = parse_u32("runs", optarg, 1, 15, &o->m.runs);
			break;
		case 'D':
			rc = parse_u32("decisions", optarg, 1, 10000000, &o->m.decisions);
			break;
		case 'S':
			rc = parse_u32("samples", optarg, 1, 1u << 26, &o->m.samples);
			break;
		case 't':
			o->src.xml = optarg;
			break;
		case 's':
			o->src.synthetic = optarg;
			break;
		case 'B':
			o->m.pdbench = optarg;
			break;
		case 'R':
			o->m.pdrouter = optarg;
			break;
		case 'M':
			o->m.pdmock = optarg;
			break;
		case 'v':
			o->m.verbose = true;
			break;
		case 'h':
			fputs(usage_text, stdout);
			exit(PT_OK);
		default:
			rc = -EINVAL;
			break;
		}
		if (rc)
			return rc;
	}
	if (optind < argc) {
		fprintf(stderr, "pdtune: unexpected argument '%s'\n", argv[optind]);
		return -EINVAL;
	}
	o->m.load_s = o->load ? load_s : 0;
	return 0;
}

/* @rel from pdtune's own directory, resolved into @buf (PATH_MAX bytes) where it exists. */
static const char *beside_me(const char *rel, char *buf)
{
	char self[PATH_MAX], path[PATH_MAX];
	ssize_t n = readlink("/proc/self/exe", self, sizeof(self) - 1);
	char *slash;

	if (n <= 0)
		return rel;
	self[n] = '\0';
	slash = strrchr(self, '/');
	if (slash)
		*slash = '\0';
	snprintf(path, sizeof(path), "%.*s/%s", PATH_MAX - 64, self, rel);
	if (!realpath(path, buf))
		snprintf(buf, PATH_MAX, "%s", path);
	return buf;
}

/* The programs a measurement runs: given, or found beside pdtune in the build tree. */
static int find_programs(struct pt_opts *o)
{
	static char bench[PATH_MAX], router[PATH_MAX], mock[PATH_MAX];
	const char *need[3] = {NULL, NULL, NULL}, *flag[3] = {"pdbench", "pdrouter", "pdmock"};

	if (!o->m.pdbench)
		o->m.pdbench = beside_me("../bench/pdbench", bench);
	if (!o->m.pdrouter)
		o->m.pdrouter = beside_me("../control/pdrouter", router);
	if (!o->m.pdmock)
		o->m.pdmock = beside_me("pdmock", mock);
	need[0] = o->m.pdbench;
	if (o->load) {
		need[1] = o->m.pdrouter;
		need[2] = o->m.pdmock;
	}
	for (int i = 0; i < 3; i++) {
		if (need[i] && access(need[i], X_OK)) {
			fprintf(stderr,
				"pdtune: cannot run %s (%s): give --%s PATH, or --dry-run\n",
				need[i], strerror(errno), flag[i]);
			return -ENOENT;
		}
	}
	return 0;
}

/* The NIC to stay near; -1 and a message when --nic names none. */
static int choose_nic(const struct pt_topo *t, const char *name, int *nic)
{
	uint32_t nics = 0;

	*nic = pt_topo_nic(t, name);
	if (*nic >= 0 || !name)
		return 0;
	fprintf(stderr, "pdtune: --nic %s: no such network device; this topology has:", name);
	for (uint32_t i = 0; i < t->ndevs; i++) {
		if (t->dev[i].kind == PT_DEV_NIC) {
			fprintf(stderr, " %s", t->dev[i].name);
			nics++;
		}
	}
	fprintf(stderr, "%s\n", nics ? "" : " none");
	return -ENOENT;
}

/* An earlier candidate that ran candidate @i's route benchmark (same cpus), or NULL. */
static const struct pt_cand *same_route(const struct pt_proposal *p, uint32_t i)
{
	for (uint32_t j = 0; j < i; j++)
		if (pt_same_cpus(&p->cand[j].place, &p->cand[i].place))
			return &p->cand[j];
	return NULL;
}

/* An earlier candidate that ran candidate @i's mailbox benchmark (same cpus), or NULL. */
static const struct pt_cand *same_mailbox(const struct pt_proposal *p, uint32_t i)
{
	const struct pt_cand *c = &p->cand[i];

	for (uint32_t j = 0; j < i; j++)
		if (p->cand[j].place.core_cpu[0] == c->place.core_cpu[0] &&
		    p->cand[j].worker_cpu == c->worker_cpu)
			return &p->cand[j];
	return NULL;
}

/*
 * Measure candidate @i. A benchmark whose inputs an earlier candidate already had is
 * not run again: its figures are copied, so that candidates that differ only where it does
 * not look (the control thread's cpu, without --load) tie instead of ranking by noise.
 */
static void measure_one(const struct pt_opts *o, struct pt_proposal *p, uint32_t i)
{
	struct pt_cand *c = &p->cand[i];
	const struct pt_cand *r = same_route(p, i), *m = same_mailbox(p, i);
	struct pt_figures *f = &c->fig;

	*f = (struct pt_figures){0};
	if (r) {
		f->route = r->fig.route;
		f->route_p50_ns = r->fig.route_p50_ns;
		f->route_p99_ns = r->fig.route_p99_ns;
		if (!r->fig.route)
			snprintf(f->error, sizeof(f->error), "%s", r->fig.error);
	} else {
		pt_measure_route(&o->m, c);
	}
	if (m && c->worker_cpu >= 0) {
		f->mailbox = m->fig.mailbox;
		f->mbox_p50_ns = m->fig.mbox_p50_ns;
		f->mbox_p99_ns = m->fig.mbox_p99_ns;
		if (!m->fig.mailbox && !f->error[0])
			snprintf(f->error, sizeof(f->error), "%s", m->fig.error);
	} else if (c->worker_cpu >= 0) {
		pt_measure_mailbox(&o->m, c);
	}
	if (o->load)
		pt_measure_load(&o->m, c);
}

static int measure_all(const struct pt_opts *o, struct pt_proposal *p)
{
	uint32_t ok = 0;

	for (uint32_t i = 0; i < p->n; i++) {
		struct pt_cand *c = &p->cand[i];
		char cpus[DP_PIN_MAX_CORES * 12];

		pt_cpu_list(c->place.core_cpu, c->place.ncores, cpus, sizeof(cpus));
		fprintf(stderr, "measuring %u/%u %s: dataplane cpus %s, control %d, worker %d\n",
			i + 1, p->n, c->name, cpus, c->place.control_cpu, c->worker_cpu);
		measure_one(o, p, i);
		ok += c->fig.route;
		if (c->fig.error[0])
			fprintf(stderr, "  %s\n", c->fig.error);
	}
	pt_rank(p->cand, p->n);
	return ok ? PT_OK : PT_FAILED;
}

/* Propose (and unless a dry run, measure and rank), then print; an exit status. */
static int tune(struct pt_opts *o, const struct pt_topo *t, struct pt_proposal *p)
{
	FILE *info = o->json ? stderr : stdout;
	bool dry = o->dry_run || !t->this_machine;
	char err[256];
	int rc, nic;

	if (choose_nic(t, o->nic, &nic))
		return PT_USAGE;
	rc = o->ncores ? (int)o->ncores : pt_default_cores(t, err, sizeof(err));
	if (rc < 0) {
		fprintf(stderr, "pdtune: pdrouter's own placement fails here: %s\n", err);
		return PT_FAILED;
	}
	fprintf(info, "dataplane cores: %d (%s)\n", rc,
		o->ncores ? "--cores" : "what pdrouter places without --dataplane-cores");
	if (pt_propose(t, (uint32_t)rc, nic, p, err, sizeof(err)) < 0) {
		fprintf(stderr, "pdtune: %s\n", err);
		return PT_FAILED;
	}
	if (!t->this_machine)
		fprintf(info,
			"dry run: the topology is %s, not this machine's, so nothing can be "
			"measured\n",
			t->origin);
	else if (dry)
		fprintf(info, "dry run: nothing measured (--dry-run)\n");
	rc = PT_OK;
	fflush(info);
	if (!dry) {
		if (find_programs(o))
			return PT_USAGE;
		rc = measure_all(o, p);
	}
	fprintf(info, "\n");
	if (o->json)
		pt_print_json(p, !dry, stdout);
	else
		pt_print_table(p, !dry, stdout);
	return rc;
}

int main(int argc, char **argv)
{
	static struct pt_topo topo;
	static struct pt_proposal prop;
	struct pt_opts o = {.m = {.runs = 3, .decisions = 20000, .samples = 200000}};
	char err[256];
	int rc;

	if (parse(argc, argv, &o)) {
		fprintf(stderr, "usage: see pdtune --help\n");
		return PT_USAGE;
	}
	if (pt_topo_open(&topo, &o.src, err, sizeof(err))) {
		fprintf(stderr, "pdtune: %s\n", err);
		return PT_USAGE;
	}
	pt_topo_print(&topo, o.json ? stderr : stdout);
	rc = tune(&o, &topo, &prop);
	pt_topo_close(&topo);
	return rc;
}
