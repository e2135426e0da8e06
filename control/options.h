/*
 * pdrouter's settings: command-line flags in the style of its peers (Dynamo's router flags
 * where one exists), and the same names as keys of an optional INI config file (libinih). A
 * flag given on the command line wins over the file, whatever their order.
 */
#ifndef PD_CONTROL_OPTIONS_H
#define PD_CONTROL_OPTIONS_H

#include <stdbool.h>
#include <stdint.h>

#include "core.h"
#include "log.h"
#include "route.h"

#define PD_MAX_LISTEN 8u

struct pd_options {
	const char *listen[PD_MAX_LISTEN]; /* "tcp:HOST:PORT" or "unix:PATH" */
	uint32_t nlisten;
	const char *control_socket;
	const char *admin_socket;
	uint32_t dataplane_cores;	   /* 0: automatic */
	const char *cpus;		   /* explicit dataplane cpu list, or NULL */
	int control_cpu;		   /* -1: automatic */
	bool no_pin;			   /* leave placement to the scheduler */
	struct rt_config rt;
	struct dp_core_config core;	   /* the per-core settings every core shares */
	uint32_t max_targets;
	uint32_t block_size; /* 0: whatever workers register (per model pool) */
	uint64_t lease_ms;
	uint64_t stats_interval_ms;	   /* 0: no periodic counters in the log */
	enum pd_log_level log_level;
	enum pd_log_format log_format;
	const char *config;		   /* the file read, for the start-up line */
	bool enforcement_given;		   /* --kv-transfer-enforcement was set, even to none */
	bool expiry_given;		   /* --expiry-s was set */
};

/**
 * pd_options_parse - fill @o from defaults, then the config file (--config), then the flags.
 * @err: what is wrong, for a usage error.
 *
 * Returns 0, 1 when --help or --version was answered (exit 0), or -EINVAL with @err set.
 */
int pd_options_parse(struct pd_options *o, int argc, char **argv, char *err, size_t errlen);

#endif
