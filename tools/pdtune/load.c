/*
 * The load run of a candidate (load.h), as tools/run.sh starts the main job but smaller:
 * pdrouter pins its own threads from --cpus and --control-cpu; pdmock --instant answers at
 * once, so the figures are the router's; pdbench load runs unpinned, where the system puts it.
 * Both daemons log into one file in the run's directory, whose last line explains a failure.
 */
#include <errno.h>
#include <fcntl.h>
#include <json-c/json.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "admin_client.h"
#include "clock.h"
#include "load.h"
#include "proc.h"

#define START_TIMEOUT_MS 10000
#define STOP_TIMEOUT_MS 5000
#define BENCH_GRACE_MS 45000 /* pdbench load waits up to 30 s for answers after its run */
#define PATH_LEN 108	     /* sun_path */

struct load_run {
	char dir[64];
	char client[PATH_LEN], control[PATH_LEN], admin[PATH_LEN], log[PATH_LEN];
	char listen[PATH_LEN + 8];
	int log_fd;
	struct pt_proc router, worker, bench;
};

static void nap(void)
{
	struct timespec ts = {.tv_nsec = 20 * 1000000};

	nanosleep(&ts, NULL);
}

static long long now_ms(void)
{
	return (long long)(dp_now_ns() / 1000000);
}

static bool is_socket(const char *path)
{
	struct stat st;

	return !stat(path, &st) && S_ISSOCK(st.st_mode);
}

/* "@what: <the log's last line>" into @err. */
static void log_tail(const struct load_run *l, const char *what, char *err, size_t errlen)
{
	char buf[512];
	ssize_t n = -1;
	int fd = open(l->log, O_RDONLY | O_CLOEXEC);
	off_t end = fd >= 0 ? lseek(fd, 0, SEEK_END) : -1;

	if (end >= 0)
		n = pread(fd, buf, sizeof(buf) - 1,
			  end > (off_t)sizeof(buf) - 1 ? end - (off_t)sizeof(buf) + 1 : 0);
	if (fd >= 0)
		close(fd);
	buf[n > 0 ? n : 0] = '\0';
	while (n > 0 && (buf[n - 1] == '\n' || buf[n - 1] == ' '))
		buf[--n] = '\0';
	snprintf(err, errlen, "%s%s%s", what, n > 0 ? ": " : "",
		 n > 0 ? (strrchr(buf, '\n') ? strrchr(buf, '\n') + 1 : buf) : "");
}

/* The number of aggregated workers of every model, from the admin socket; -1: no answer. */
static int aggregated_workers(const char *admin)
{
	struct json_object *o, *models;
	char *buf = pd_admin_ask(admin, "models", 1000);
	int count = -1;

	if (!buf)
		return -1;
	o = json_tokener_parse(buf);
	free(buf);
	if (o && json_object_object_get_ex(o, "models", &models)) {
		count = 0;
		for (size_t i = 0; i < json_object_array_length(models); i++) {
			struct json_object *agg;

			if (json_object_object_get_ex(json_object_array_get_idx(models, i),
						      "aggregated", &agg))
				count += json_object_get_int(agg);
		}
	}
	json_object_put(o);
	return count;
}

static int start_router(const struct pt_measure_opts *o, const struct pt_cand *c,
			struct load_run *l, char *err, size_t errlen)
{
	char cpus[DP_PIN_MAX_CORES * 12], ctl[16];
	long long end = now_ms() + START_TIMEOUT_MS;
	int rc;

	pt_cpu_list(c->place.core_cpu, c->place.ncores, cpus, sizeof(cpus));
	snprintf(ctl, sizeof(ctl), "%d", c->place.control_cpu);
	rc = pt_proc_start(&l->router, -1, l->log_fd, o->verbose, o->pdrouter, "--listen",
			   l->listen, "--control-socket", l->control, "--admin-socket", l->admin,
			   "--cpus", cpus, "--control-cpu", ctl, NULL);
	if (rc) {
		snprintf(err, errlen, "load: cannot start pdrouter: %s", strerror(-rc));
		return rc;
	}
	while (!is_socket(l->client) || !is_socket(l->control) || !is_socket(l->admin)) {
		if (!pt_proc_alive(&l->router)) {
			log_tail(l, "load: pdrouter did not start", err, errlen);
			return -EIO;
		}
		if (now_ms() > end) {
			log_tail(l, "load: pdrouter's sockets did not appear", err, errlen);
			return -ETIMEDOUT;
		}
		nap();
	}
	return 0;
}

static int start_worker(const struct pt_measure_opts *o, const struct pt_cand *c,
			struct load_run *l, char *err, size_t errlen)
{
	long long end = now_ms() + START_TIMEOUT_MS;
	int rc = pt_proc_start(&l->worker, c->worker_cpu, l->log_fd, o->verbose, o->pdmock,
			       "--socket", l->control, "--instant", "--reconnect-ms", "0", NULL);

	if (rc) {
		snprintf(err, errlen, "load: cannot start pdmock: %s", strerror(-rc));
		return rc;
	}
	while (aggregated_workers(l->admin) < 1) {
		if (!pt_proc_alive(&l->worker)) {
			log_tail(l, "load: pdmock did not register", err, errlen);
			return -EIO;
		}
		if (now_ms() > end) {
			log_tail(l, "load: pdmock did not register in time", err, errlen);
			return -ETIMEDOUT;
		}
		nap();
	}
	return 0;
}

static int run_bench(const struct pt_measure_opts *o, struct load_run *l, double *rps,
		     double *e2e_p99_us, char *err, size_t errlen)
{
	char secs[32];
	struct json_object *j, *x;
	int64_t completed = 0, errors = 0;
	int rc;

	snprintf(secs, sizeof(secs), "%g", o->load_s);
	rc = pt_proc_start(&l->bench, -1, -1, o->verbose, o->pdbench, "load", "--router", l->listen,
			   "--duration", secs, "--json", NULL);
	if (rc) {
		snprintf(err, errlen, "load: cannot start pdbench: %s", strerror(-rc));
		return rc;
	}
	if (pt_proc_collect(&l->bench, 1, (int)(o->load_s * 1000) + BENCH_GRACE_MS)) {
		pt_proc_why(&l->bench, "pdbench load", err, errlen);
		return -EIO;
	}
	j = pt_proc_json(&l->bench) ? json_tokener_parse(pt_proc_json(&l->bench)) : NULL;
	if (j && json_object_object_get_ex(j, "completed", &x))
		completed = json_object_get_int64(x);
	if (j && json_object_object_get_ex(j, "errors", &x))
		errors = json_object_get_int64(x);
	if (j && json_object_object_get_ex(j, "requests_per_s", &x))
		*rps = json_object_get_double(x);
	if (j && json_object_object_get_ex(j, "e2e_p99_us", &x))
		*e2e_p99_us = json_object_get_double(x);
	json_object_put(j);
	if (completed <= 0) {
		snprintf(err, errlen, "pdbench load: no request completed (%lld errors)",
			 (long long)errors);
		return -EIO;
	}
	return 0;
}

static int open_run(struct load_run *l, char *err, size_t errlen)
{
	int rc;

	snprintf(l->dir, sizeof(l->dir), "/tmp/pdtune.XXXXXX");
	if (!mkdtemp(l->dir)) {
		rc = -errno;
		snprintf(err, errlen, "load: mkdtemp: %s", strerror(-rc));
		return rc;
	}
	snprintf(l->client, sizeof(l->client), "%s/client.sock", l->dir);
	snprintf(l->control, sizeof(l->control), "%s/control.sock", l->dir);
	snprintf(l->admin, sizeof(l->admin), "%s/admin.sock", l->dir);
	snprintf(l->log, sizeof(l->log), "%s/log", l->dir);
	snprintf(l->listen, sizeof(l->listen), "unix:%s", l->client);
	l->log_fd = open(l->log, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
	if (l->log_fd < 0) {
		rc = -errno;
		snprintf(err, errlen, "load: %s: %s", l->log, strerror(-rc));
		rmdir(l->dir);
		return rc;
	}
	return 0;
}

/* Stop the worker, then the router (which removes its sockets), and remove the directory. */
static void close_run(struct load_run *l)
{
	pt_proc_stop(&l->worker, STOP_TIMEOUT_MS);
	pt_proc_stop(&l->router, STOP_TIMEOUT_MS);
	close(l->log_fd);
	unlink(l->client);
	unlink(l->control);
	unlink(l->admin);
	unlink(l->log);
	rmdir(l->dir);
}

int pt_load_run(const struct pt_measure_opts *o, const struct pt_cand *c, double *rps,
		double *e2e_p99_us, char *err, size_t errlen)
{
	static struct load_run l;
	int rc;

	memset(&l, 0, sizeof(l));
	rc = open_run(&l, err, errlen);
	if (rc)
		return rc;
	rc = start_router(o, c, &l, err, errlen);
	if (!rc)
		rc = start_worker(o, c, &l, err, errlen);
	if (!rc)
		rc = run_bench(o, &l, rps, e2e_p99_us, err, errlen);
	close_run(&l);
	return rc;
}
