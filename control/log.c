/*
 * Structured logs (log.h). A line is formatted whole, then written with one write(2), so lines
 * of different threads never interleave.
 */
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "log.h"

#define LINE_MAX_BYTES 2048

static enum pd_log_level min_level = PD_LOG_INFO;
static enum pd_log_format format = PD_LOG_LOGFMT;
static const char *const level_name[] = {"debug", "info", "warn", "error"};

void pd_log_setup(enum pd_log_level level, enum pd_log_format fmt)
{
	min_level = level;
	format = fmt;
}

static int lookup(const char *s, const char *const *names, int n)
{
	for (int i = 0; i < n; i++)
		if (!strcmp(s, names[i]))
			return i;
	return -1;
}

int pd_log_level_parse(const char *s)
{
	return lookup(s, level_name, 4);
}

int pd_log_format_parse(const char *s)
{
	static const char *const names[] = {"logfmt", "json"};

	return lookup(s, names, 2);
}

/* Append @s to the JSON line at @o as a string's contents, escaped; returns the new end. */
static size_t json_escape(char *o, size_t at, size_t cap, const char *s, size_t n)
{
	for (size_t i = 0; i < n && at + 7 < cap; i++) {
		unsigned char ch = (unsigned char)s[i];

		if (ch == '"' || ch == '\\')
			at += (size_t)snprintf(o + at, cap - at, "\\%c", ch);
		else if (ch < 0x20)
			at += (size_t)snprintf(o + at, cap - at, "\\u%04x", ch);
		else
			o[at++] = (char)ch;
	}
	return at;
}

/* Turn k=v k2="a b" into ,"k":"v","k2":"a b" after the JSON line's opening. */
static size_t fields_to_json(char *o, size_t at, size_t cap, const char *f)
{
	while (*f && at + 16 < cap) {
		const char *eq, *v, *end;

		while (*f == ' ')
			f++;
		eq = strchr(f, '=');
		if (!*f || !eq)
			break;
		o[at++] = ',';
		o[at++] = '"';
		at = json_escape(o, at, cap, f, (size_t)(eq - f));
		at += (size_t)snprintf(o + at, cap - at, "\":\"");
		v = eq + 1;
		if (*v == '"') { /* quoted: \" and \\ inside (pd_log_quote()) */
			char val[LINE_MAX_BYTES / 2];
			size_t n = 0;

			for (end = ++v; *end && *end != '"' && n < sizeof(val); end++)
				val[n++] = end[0] == '\\' && end[1] ? *++end : *end;
			at = json_escape(o, at, cap, val, n);
			f = *end ? end + 1 : end;
		} else {
			end = strchr(v, ' ');
			end = end ? end : v + strlen(v);
			at = json_escape(o, at, cap, v, (size_t)(end - v));
			f = end;
		}
		if (at + 1 < cap)
			o[at++] = '"';
	}
	return at;
}

const char *pd_log_quote(char *buf, size_t len, const char *s)
{
	size_t at = 0;

	for (; *s && at + 2 < len; s++) {
		if (*s == '"' || *s == '\\')
			buf[at++] = '\\';
		buf[at++] = *s;
	}
	buf[at < len ? at : len - 1] = 0;
	return buf;
}

void pd_log(enum pd_log_level level, const char *event, const char *fields, ...)
{
	char f[LINE_MAX_BYTES / 2], line[LINE_MAX_BYTES], ts[40];
	struct timespec now;
	struct tm tm;
	size_t at;
	va_list ap;

	if (level < min_level)
		return;
	va_start(ap, fields);
	vsnprintf(f, sizeof(f), fields, ap);
	va_end(ap);
	clock_gettime(CLOCK_REALTIME, &now);
	gmtime_r(&now.tv_sec, &tm);
	strftime(ts, sizeof(ts), "%Y-%m-%dT%H:%M:%S", &tm);
	if (format == PD_LOG_JSON) {
		at = (size_t)snprintf(line, sizeof(line),
				      "{\"ts\":\"%s.%03ldZ\",\"level\":\"%s\",\"event\":\"%s\"", ts,
				      now.tv_nsec / 1000000, level_name[level], event);
		at = fields_to_json(line, at, sizeof(line) - 3, f);
		at += (size_t)snprintf(line + at, sizeof(line) - at, "}\n");
	} else {
		at = (size_t)snprintf(line, sizeof(line), "ts=%s.%03ldZ level=%s event=%s%s%s\n",
				      ts, now.tv_nsec / 1000000, level_name[level], event,
				      *f ? " " : "", f);
	}
	if (at >= sizeof(line))
		at = sizeof(line) - 1;
	if (write(STDERR_FILENO, line, at) < 0)
		return; /* nowhere left to say it */
}
