/*
 * Refusals with a reason: the registry, the placement, the tuner and REGISTER decoding all
 * turn a bad input into a negative errno and a sentence a user can act on.
 */
#ifndef PD_DATAPLANE_REFUSE_H
#define PD_DATAPLANE_REFUSE_H

#include <stddef.h>

/**
 * dp_refuse - print a reason into @err (when @err and @errlen are set) and return @rc, so
 * that a refusal is one statement: return dp_refuse(err, errlen, -EINVAL, "...", ...);
 */
int dp_refuse(char *err, size_t errlen, int rc, const char *fmt, ...)
	__attribute__((format(printf, 4, 5)));

#endif
