/*
 * Structured logs on stderr: one line per event, an event name and key=value fields, as
 * logfmt or as JSON objects. Written by the control thread and at start-up; the dataplane
 * cores never log (they count, and the control thread reports their counters).
 */
#ifndef PD_CONTROL_LOG_H
#define PD_CONTROL_LOG_H

#include <stddef.h>

enum pd_log_level { PD_LOG_DEBUG, PD_LOG_INFO, PD_LOG_WARN, PD_LOG_ERROR };
enum pd_log_format { PD_LOG_LOGFMT, PD_LOG_JSON };

/* Set what is logged and how; before any thread logs. */
void pd_log_setup(enum pd_log_level level, enum pd_log_format format);

/* Parse "debug", "info", "warn", "error" / "logfmt", "json"; -1 for anything else. */
int pd_log_level_parse(const char *s);
int pd_log_format_parse(const char *s);

/**
 * pd_log - log @event with fields.
 * @fields: printf format of space-separated key=value pairs; a value with spaces must be
 *          written as key="%s", and a string from outside (a path, an error text, a worker's
 *          reason) through pd_log_quote(), so that its quotes and backslashes are escaped.
 */
/* Escape @s's quotes and backslashes into @buf (@len bytes, cut short if need be) for a
 * quoted field value; returns @buf. */
const char *pd_log_quote(char *buf, size_t len, const char *s);

void pd_log(enum pd_log_level level, const char *event, const char *fields, ...)
	__attribute__((format(printf, 3, 4)));

#endif
