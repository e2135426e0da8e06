/*
 * pdrouter: the daemon's entry point. Parses the flags and config file, starts the daemon
 * (daemon.h) and runs its control thread on the main thread until SIGINT or SIGTERM; then the
 * cores stop (in-flight requests answered with -ESHUTDOWN), every worker's connection closes
 * and the sockets are removed.
 */
#include <signal.h>
#include <stdio.h>
#include <string.h>

#include "daemon.h"
#include "log.h"

#define CONTROL_POLL_MS 10

static volatile sig_atomic_t stop_signal;

static void on_signal(int sig)
{
	stop_signal = sig;
}

int main(int argc, char **argv)
{
	static struct pd_daemon d;
	static struct pd_options o;
	struct sigaction sa = {.sa_handler = on_signal};
	char err[512];
	int rc = pd_options_parse(&o, argc, argv, err, sizeof(err));

	if (rc > 0)
		return 0;
	if (rc) {
		fprintf(stderr, "pdrouter: %s\nTry 'pdrouter --help'.\n", err);
		return 2;
	}
	pd_log_setup(o.log_level, o.log_format);
	sigaction(SIGINT, &sa, NULL);
	sigaction(SIGTERM, &sa, NULL);
	signal(SIGPIPE, SIG_IGN);
	rc = pd_daemon_start(&d, &o, err, sizeof(err));
	if (rc) {
		char q[sizeof(err) * 2];

		pd_log(PD_LOG_ERROR, "start_failed", "error=\"%s\"",
		       pd_log_quote(q, sizeof(q), err));
		pd_daemon_stop(&d);
		return 1;
	}
	pd_log(PD_LOG_INFO, "started", "version=%s cores=%u config=%s", PD_VERSION, d.place.ncores,
	       o.config ? o.config : "none");
	while (!stop_signal && (rc = pd_daemon_poll(&d, CONTROL_POLL_MS)) == 0)
		;
	if (rc)
		pd_log(PD_LOG_ERROR, "control_failed", "error=\"%s\"", strerror(-rc));
	pd_log(PD_LOG_INFO, "stopping", "signal=%d", (int)stop_signal);
	pd_daemon_stop(&d);
	pd_log(PD_LOG_INFO, "stopped", "status=%s", rc ? "error" : "ok");
	return rc ? 1 : 0;
}
