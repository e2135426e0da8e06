/*
 * pdbench quality's child processes: started so that they die with pdbench whatever ends it
 * (PR_SET_PDEATHSIG), polled, stopped with SIGTERM and then SIGKILL, always reaped; the admin
 * socket (control/admin.h) asked one line at a time; and log tails for error messages.
 * SIGINT and SIGTERM only set a flag, so that pdbench stops its children before it exits.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "admin_client.h"
#include "bench_quality.h"
#include "clock.h"

#define ADMIN_TIMEOUT_MS 2000 /* the router answers at once; this is for a busy machine */
#define TAIL_BYTES 4096

volatile sig_atomic_t qual_interrupted;

static void on_signal(int sig)
{
	(void)sig;
	qual_interrupted = 1;
}

void qual_catch_signals(void)
{
	struct sigaction sa = {.sa_handler = on_signal};

	sigemptyset(&sa.sa_mask);
	sigaction(SIGINT, &sa, NULL);
	sigaction(SIGTERM, &sa, NULL);
}

uint64_t qual_now_ms(void)
{
	return dp_now_ns() / 1000000;
}

void qual_nap(void)
{
	nanosleep(&(struct timespec){.tv_nsec = 20000000}, NULL);
}

pid_t qual_spawn(char *const argv[], int out_fd, int err_fd)
{
	pid_t parent = getpid(), pid = fork();
	sigset_t none;

	if (pid)
		return pid < 0 ? -errno : pid;
	prctl(PR_SET_PDEATHSIG, SIGKILL);
	if (getppid() != parent) /* pdbench died before the line above took effect */
		_exit(127);
	/* Our SIGINT and SIGTERM handlers are not the child's. */
	sigemptyset(&none);
	sigprocmask(SIG_SETMASK, &none, NULL);
	signal(SIGINT, SIG_DFL);
	signal(SIGTERM, SIG_DFL);
	if (dup2(out_fd, STDOUT_FILENO) < 0 || dup2(err_fd, STDERR_FILENO) < 0)
		_exit(127);
	close_range(3, ~0u, 0);
	execv(argv[0], argv);
	fprintf(stderr, "pdbench quality: exec %s: %s\n", argv[0], strerror(errno));
	_exit(127);
}

bool qual_alive(pid_t *pid, int *status)
{
	int st;

	if (!*pid)
		return false;
	if (waitpid(*pid, &st, WNOHANG) != *pid)
		return true;
	*pid = 0;
	if (status)
		*status = st;
	return false;
}

int qual_stop(pid_t *pid, int timeout_ms)
{
	uint64_t end = qual_now_ms() + (uint64_t)timeout_ms;
	int status = 0;

	if (!*pid)
		return 0;
	kill(*pid, SIGTERM);
	while (qual_alive(pid, &status) && qual_now_ms() < end)
		nanosleep(&(struct timespec){.tv_nsec = 2000000}, NULL);
	if (*pid) {
		kill(*pid, SIGKILL);
		waitpid(*pid, &status, 0);
		*pid = 0;
	}
	return status;
}

void qual_describe(int status, char *buf, size_t len)
{
	if (WIFEXITED(status))
		snprintf(buf, len, "exit %d", WEXITSTATUS(status));
	else if (WIFSIGNALED(status))
		snprintf(buf, len, "killed by signal %d (%s)", WTERMSIG(status),
			 strsignal(WTERMSIG(status)));
	else
		snprintf(buf, len, "wait status %#x", status);
}

char *qual_admin(const char *path, const char *cmd)
{
	return pd_admin_ask(path, cmd, ADMIN_TIMEOUT_MS);
}

void qual_tail(FILE *out, const char *path, unsigned lines)
{
	char buf[TAIL_BYTES + 1], *p;
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	off_t end = fd >= 0 ? lseek(fd, 0, SEEK_END) : -1;
	ssize_t n = -1;

	if (end > 0)
		n = pread(fd, buf, TAIL_BYTES, end > TAIL_BYTES ? end - TAIL_BYTES : 0);
	if (fd >= 0)
		close(fd);
	if (n <= 0)
		return;
	while (n > 0 && buf[n - 1] == '\n')
		n--;
	buf[n] = 0;
	/* Back to the start of the @lines-th line from the end (or of what was read). */
	for (p = buf + n; p > buf; p--)
		if (p[-1] == '\n' && --lines == 0)
			break;
	fprintf(out, "  %s:\n", path);
	for (char *nl; (nl = strchr(p, '\n')); p = nl + 1)
		fprintf(out, "    %.*s\n", (int)(nl - p), p);
	fprintf(out, "    %s\n", p);
}
