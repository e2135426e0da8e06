/* The admin interface's client side (admin_client.h). */
#include <errno.h>
#include <poll.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/un.h>
#include <unistd.h>

#include "admin_client.h"
#include "clock.h"

/* Connect with a send timeout, which also bounds connect(): a router whose backlog is full
 * (its control thread stuck) would otherwise hold the caller forever. */
static int connect_within(const char *path, int timeout_ms)
{
	struct sockaddr_un addr = {.sun_family = AF_UNIX};
	struct timeval tv = {.tv_sec = timeout_ms / 1000, .tv_usec = timeout_ms % 1000 * 1000};
	int fd, e;

	if (strlen(path) >= sizeof(addr.sun_path)) {
		errno = ENAMETOOLONG;
		return -1;
	}
	memcpy(addr.sun_path, path, strlen(path) + 1);
	fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return -1;
	if (setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv)) ||
	    connect(fd, (struct sockaddr *)&addr, sizeof(addr))) {
		e = errno;
		close(fd);
		errno = e;
		return -1;
	}
	return fd;
}

/* Read until the router closes the connection (how it marks the end), by @end_ns. */
static char *read_all(int fd, uint64_t end_ns)
{
	size_t len = 0, cap = 4096;
	char *buf = malloc(cap), *bigger;

	while (buf) {
		struct pollfd p = {.fd = fd, .events = POLLIN};
		uint64_t now = dp_now_ns();
		int ready = now < end_ns ? poll(&p, 1, (int)((end_ns - now + 999999) / 1000000)) : 0;
		ssize_t n;

		if (ready < 0 && errno == EINTR)
			continue;
		if (ready <= 0) {
			errno = ready ? errno : ETIMEDOUT;
			break;
		}
		if (len + 1 == cap) {
			if (cap >= PD_ADMIN_ANSWER_MAX) {
				errno = E2BIG;
				break;
			}
			bigger = realloc(buf, cap *= 2);
			if (!bigger)
				break;
			buf = bigger;
		}
		n = read(fd, buf + len, cap - 1 - len);
		if (n == 0) {
			buf[len] = 0;
			return buf;
		}
		if (n < 0 && errno != EINTR && errno != EAGAIN)
			break;
		len += n > 0 ? (size_t)n : 0;
	}
	if (buf) { /* keep the errno of the failure, not of free() */
		int e = errno;

		free(buf);
		errno = e;
	}
	return NULL;
}

char *pd_admin_ask(const char *path, const char *cmd, int timeout_ms)
{
	uint64_t end = dp_now_ns() + (uint64_t)timeout_ms * 1000000;
	size_t n = strlen(cmd);
	char *line = malloc(n + 2), *answer = NULL;
	int fd = line ? connect_within(path, timeout_ms) : -1, e;

	if (fd >= 0) {
		memcpy(line, cmd, n);
		line[n] = '\n';
		if (send(fd, line, n + 1, MSG_NOSIGNAL) == (ssize_t)(n + 1))
			answer = read_all(fd, end);
		else if (errno == EAGAIN)
			errno = ETIMEDOUT;
		e = errno;
		close(fd);
		errno = e;
	} else if (!line) {
		errno = ENOMEM;
	}
	e = errno;
	free(line);
	errno = e;
	return answer;
}
