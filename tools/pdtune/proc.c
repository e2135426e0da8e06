/*
 * Child processes for the measurements (proc.h). A child is pinned between fork() and exec(),
 * as taskset does, and asks the kernel to kill it should pdtune die first.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "clock.h"
#include "proc.h"

#define POLL_MAX 128 /* 64 dataplane cores, two pipes each */

static long long now_ms(void)
{
	return (long long)(dp_now_ns() / 1000000);
}

static void print_cmd(char *const argv[], int cpu)
{
	fprintf(stderr, "+ ");
	if (cpu >= 0)
		fprintf(stderr, "taskset -c %d ", cpu);
	for (size_t i = 0; argv[i]; i++)
		fprintf(stderr, "%s%s", i ? " " : "", argv[i]);
	fprintf(stderr, "\n");
}

/* In the child: pin, wire up the output, exec; never returns. */
static void child(char *const argv[], int cpu, int out, int err)
{
	cpu_set_t set;

	prctl(PR_SET_PDEATHSIG, SIGKILL);
	if (cpu >= 0) {
		CPU_ZERO(&set);
		CPU_SET(cpu, &set);
		if (sched_setaffinity(0, sizeof(set), &set)) {
			dprintf(err, "cannot pin to cpu %d: %s\n", cpu, strerror(errno));
			_exit(126);
		}
	}
	dup2(out, STDOUT_FILENO);
	dup2(err, STDERR_FILENO);
	execv(argv[0], argv);
	fprintf(stderr, "cannot run %s: %s\n", argv[0], strerror(errno));
	_exit(127);
}

static int spawn(struct pt_proc *p, char *const argv[], int cpu, int log_fd, bool verbose)
{
	int out[2] = {log_fd, -1}, err[2] = {log_fd, -1};

	*p = (struct pt_proc){.out_fd = -1, .err_fd = -1};
	if (log_fd < 0 && (pipe2(out, O_CLOEXEC) || pipe2(err, O_CLOEXEC))) {
		int rc = -errno;

		if (out[1] >= 0) {
			close(out[0]);
			close(out[1]);
		}
		return rc;
	}
	if (verbose)
		print_cmd(argv, cpu);
	fflush(NULL);
	p->pid = fork();
	if (p->pid == 0)
		child(argv, cpu, log_fd < 0 ? out[1] : log_fd, log_fd < 0 ? err[1] : log_fd);
	if (log_fd < 0) {
		close(out[1]);
		close(err[1]);
		p->out_fd = out[0];
		p->err_fd = err[0];
	}
	if (p->pid < 0) {
		int rc = -errno;

		p->pid = 0;
		if (log_fd < 0) {
			close(p->out_fd);
			close(p->err_fd);
			p->out_fd = p->err_fd = -1;
		}
		return rc;
	}
	return 0;
}

int pt_proc_start(struct pt_proc *p, int cpu, int log_fd, bool verbose, const char *path, ...)
{
	char *argv[PT_PROC_ARGS_MAX + 1];
	size_t n = 0;
	const char *a;
	va_list ap;

	va_start(ap, path);
	for (a = path; a && n < PT_PROC_ARGS_MAX; a = va_arg(ap, const char *))
		argv[n++] = (char *)a;
	va_end(ap);
	if (a)
		return -E2BIG;
	argv[n] = NULL;
	return spawn(p, argv, cpu, log_fd, verbose);
}

/* Append @n bytes of @in to @buf (@*len of @cap used), keeping the end; NUL-terminated. */
static void keep_tail(char *buf, size_t *len, size_t cap, const char *in, size_t n)
{
	size_t skip = n > cap ? n - cap : 0, keep;

	in += skip;
	n -= skip;
	keep = *len < cap - n ? *len : cap - n;
	memmove(buf, buf + *len - keep, keep);
	memcpy(buf + keep, in, n);
	*len = keep + n;
	buf[*len] = '\0';
}

/* Append what @fd has to @p's stdout or stderr, the end of each kept; close it at EOF. */
static void drain(struct pt_proc *p, int *fd)
{
	char buf[1024];
	ssize_t n = read(*fd, buf, sizeof(buf));

	if (n <= 0) {
		if (n < 0 && (errno == EINTR || errno == EAGAIN))
			return;
		close(*fd);
		*fd = -1;
		return;
	}
	if (fd == &p->out_fd)
		keep_tail(p->out, &p->out_len, PT_PROC_OUT_MAX, buf, (size_t)n);
	else
		keep_tail(p->err, &p->err_len, PT_PROC_ERR_MAX, buf, (size_t)n);
}

const char *pt_proc_json(const struct pt_proc *p)
{
	const char *line = p->out, *found = NULL;

	for (const char *s = p->out; *s; s++) {
		if (s == line && *s == '{')
			found = line;
		if (*s == '\n')
			line = s + 1;
	}
	return found;
}

/* Poll every open pipe of @p until none is left or @deadline; false at the deadline. */
static bool read_all(struct pt_proc *p, size_t n, long long deadline)
{
	for (;;) {
		struct pollfd pfd[POLL_MAX];
		int *fds[POLL_MAX];
		size_t owner[POLL_MAX], k = 0;
		long long left = deadline - now_ms();

		for (size_t i = 0; i < n && k + 2 <= POLL_MAX; i++) {
			int *two[2] = {&p[i].out_fd, &p[i].err_fd};

			for (int j = 0; j < 2; j++) {
				if (*two[j] < 0)
					continue;
				pfd[k] = (struct pollfd){.fd = *two[j], .events = POLLIN};
				owner[k] = i;
				fds[k++] = two[j];
			}
		}
		if (!k)
			return true;
		if (left <= 0)
			return false;
		if (poll(pfd, k, (int)left) < 0 && errno != EINTR)
			return false;
		for (size_t j = 0; j < k; j++)
			if (pfd[j].revents)
				drain(&p[owner[j]], fds[j]);
	}
}

int pt_proc_collect(struct pt_proc *p, size_t n, int timeout_ms)
{
	bool in_time = read_all(p, n, now_ms() + timeout_ms);
	int rc = in_time ? 0 : -ETIMEDOUT;

	for (size_t i = 0; i < n; i++) {
		if (p[i].pid > 0 && !in_time)
			kill(p[i].pid, SIGKILL);
		if (p[i].pid > 0 && waitpid(p[i].pid, &p[i].status, 0) == p[i].pid)
			p[i].pid = 0;
		if (p[i].out_fd >= 0)
			close(p[i].out_fd);
		if (p[i].err_fd >= 0)
			close(p[i].err_fd);
		p[i].out_fd = p[i].err_fd = -1;
		if (!rc && (!WIFEXITED(p[i].status) || WEXITSTATUS(p[i].status)))
			rc = -EIO;
	}
	return rc;
}

bool pt_proc_alive(struct pt_proc *p)
{
	if (p->pid <= 0)
		return false;
	if (waitpid(p->pid, &p->status, WNOHANG) == p->pid)
		p->pid = 0;
	return p->pid > 0;
}

void pt_proc_stop(struct pt_proc *p, int timeout_ms)
{
	long long deadline = now_ms() + timeout_ms;

	if (!pt_proc_alive(p))
		return;
	kill(p->pid, SIGTERM);
	while (now_ms() < deadline) {
		if (!pt_proc_alive(p))
			return;
		usleep(10000);
	}
	kill(p->pid, SIGKILL);
	waitpid(p->pid, &p->status, 0);
	p->pid = 0;
}

void pt_proc_why(const struct pt_proc *p, const char *name, char *buf, size_t len)
{
	char how[32];
	const char *last = p->err;
	size_t n = p->err_len;

	while (n && (p->err[n - 1] == '\n' || p->err[n - 1] == ' '))
		n--;
	for (size_t i = 0; i < n; i++)
		if (p->err[i] == '\n')
			last = p->err + i + 1;
	if (WIFSIGNALED(p->status))
		snprintf(how, sizeof(how), "killed by signal %d", WTERMSIG(p->status));
	else
		snprintf(how, sizeof(how), "exited %d", WEXITSTATUS(p->status));
	snprintf(buf, len, "%s: %s%s%.*s", name, how, last < p->err + n ? ": " : "",
		 (int)(p->err + n - last), last);
}
