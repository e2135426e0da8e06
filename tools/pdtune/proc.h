/*
 * Child processes for pdtune's measurements: started pinned to one cpu (what taskset -c does),
 * their output read with a deadline, and stopped, so that no benchmark, router or mock
 * worker outlives the measurement (or pdtune: each child dies with its parent).
 */
#ifndef PD_TOOLS_PDTUNE_PROC_H
#define PD_TOOLS_PDTUNE_PROC_H

#include <stdbool.h>
#include <stddef.h>
#include <sys/types.h>

#define PT_PROC_OUT_MAX 8192u /* the end of stdout kept: the benchmarks end with a JSON line */
#define PT_PROC_ERR_MAX 256u  /* the end of stderr kept, for an error message */
#define PT_PROC_ARGS_MAX 32u

struct pt_proc {
	pid_t pid;  /* 0: not running (never started, or reaped) */
	int out_fd; /* read ends of the pipes; -1: not captured */
	int err_fd;
	int status; /* waitpid()'s, once reaped */
	size_t out_len;
	char out[PT_PROC_OUT_MAX + 1]; /* NUL-terminated */
	size_t err_len;
	char err[PT_PROC_ERR_MAX + 1];
};

/**
 * pt_proc_start - start @path with the arguments after it (up to PT_PROC_ARGS_MAX, then a
 * NULL), as execl() takes them, on OS cpu @cpu (-1: anywhere).
 * @log_fd: -1 to capture stdout and stderr for pt_proc_collect(), or a file for both.
 * @verbose: print the command line on stderr first, as "taskset -c CPU ..." when pinned.
 *
 * Return: 0, -E2BIG for too many arguments, or a negative errno from pipe() or fork(); a
 * failed exec shows as exit status 127.
 */
__attribute__((sentinel)) int pt_proc_start(struct pt_proc *p, int cpu, int log_fd, bool verbose,
					    const char *path, ...);

/**
 * pt_proc_collect - read the output of @n captured children until they all close it, then
 * reap them; at @timeout_ms, kill those left.
 *
 * Return: 0 when every one exited 0, -ETIMEDOUT when some were killed, -EIO otherwise.
 */
int pt_proc_collect(struct pt_proc *p, size_t n, int timeout_ms);

/* pt_proc_json - the last line of @p's stdout that opens a JSON object, or NULL. */
const char *pt_proc_json(const struct pt_proc *p);

/* pt_proc_alive - whether @p still runs; reaps it when it has exited. */
bool pt_proc_alive(struct pt_proc *p);

/* pt_proc_stop - SIGTERM, up to @timeout_ms for it to exit, then SIGKILL; reaps it. */
void pt_proc_stop(struct pt_proc *p, int timeout_ms);

/* pt_proc_why - "NAME: exited 2: <last stderr line>", what went wrong, into @buf. */
void pt_proc_why(const struct pt_proc *p, const char *name, char *buf, size_t len);

#endif
