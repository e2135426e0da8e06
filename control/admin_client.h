/*
 * The client side of the admin interface (admin.h): one question, one whole answer. What pdctl,
 * pdbench, pdtune and the tests use to ask a running pdrouter.
 */
#ifndef PD_CONTROL_ADMIN_CLIENT_H
#define PD_CONTROL_ADMIN_CLIENT_H

#define PD_ADMIN_ANSWER_MAX (64u << 20) /* larger answers are refused (E2BIG) */

/**
 * pd_admin_ask - send @cmd (one line; the newline is added) to the admin socket at @path and
 * read the answer until the router closes the connection, all within @timeout_ms.
 *
 * Returns the answer, NUL-terminated, for the caller to free; or NULL with errno set:
 * ENAMETOOLONG (a path sockaddr_un cannot hold), ETIMEDOUT, E2BIG (over
 * PD_ADMIN_ANSWER_MAX), ENOMEM, or what socket(), connect(), send() or read() failed with
 * (ENOENT or ECONNREFUSED: no router there).
 */
char *pd_admin_ask(const char *path, const char *cmd, int timeout_ms);

#endif
