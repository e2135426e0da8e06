/*
 * Registration messages from workers (shm/proto.h REGISTER), decoded as hostile input into the
 * registry's terms (dataplane/route.h): the wire format is checked here, the fields' meaning
 * by rt_register(). Control thread.
 */
#ifndef PD_CONTROL_REGISTER_H
#define PD_CONTROL_REGISTER_H

#include <stddef.h>

#include "proto.h"
#include "route.h"

/* A decoded registration: @spec points into the strings beside it. */
struct ctl_registration {
	struct rt_worker_spec spec;
	uint32_t seq; /* the message's number, for the answer (set once the header was read) */
	char model[RT_NAME_MAX + 1];
	char endpoint[RT_NAME_MAX + 1];
	char transfer[RT_NAME_MAX + 1];
	struct rt_domain domains[RT_DOMAIN_KEYS];
	char names[RT_DOMAIN_KEYS][RT_NAME_MAX + 1];
	char values[RT_DOMAIN_KEYS][RT_NAME_MAX + 1];
};

/**
 * ctl_registration_decode - decode the REGISTER message @msg of @len bytes (the packet).
 * @err: receives a reason for the worker when it returns an error; may be NULL.
 *
 * Returns 0, or:
 * -EBADMSG: not a REGISTER message, or its lengths do not add up to @len exactly, or a string
 *           holds a NUL byte;
 * -EPROTONOSUPPORT: another protocol version;
 * -EINVAL: a name longer than RT_NAME_MAX or more than RT_DOMAIN_KEYS domains.
 */
int ctl_registration_decode(struct ctl_registration *r, const void *msg, size_t len, char *err,
			    size_t errlen);

#endif
