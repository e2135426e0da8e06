/*
 * The router's side of the client wire format (pdclient.h): decoding what clients send, as
 * hostile input, and writing answer frames. No I/O: the ingress (dataplane/ingress.c) feeds
 * it bytes and sends what it writes. libpdclient (client.c) shares the header check.
 */
#ifndef PD_DATAPLANE_FRAME_H
#define PD_DATAPLANE_FRAME_H

#include <stddef.h>
#include <stdint.h>

#include "pdclient.h"

/**
 * dp_frame_length - the length of the frame starting at @p, of which @avail bytes are here.
 * @max: the largest frame allowed.
 *
 * Returns the frame's length (>= 16) once its header is here and sound, 0 when fewer than 16
 * bytes are here, -EMSGSIZE for a frame over @max, or -EBADMSG for a header that is not a
 * frame's (magic, version, a length under 16).
 */
long dp_frame_length(const void *p, size_t avail, uint32_t max);

/* A decoded REQUEST; pointers point into the frame. */
struct dp_frame_request {
	uint64_t id;
	struct pdc_request fixed;
	const char *model;
	const char *lora;
	const char *salt;
	const uint8_t *sampling; /* fixed.sampling_len bytes for the workers, never looked into */
	const uint8_t *tokens; /* fixed.ntokens little-endian uint32, 4-byte aligned in the frame */
};

/**
 * dp_frame_decode_request - decode the REQUEST frame of @len bytes at @p, whose header
 * dp_frame_length() accepted with that length.
 * @max_tokens_prompt: prompt limit.
 * @why: receives a static message for an error.
 *
 * Returns 0, -EBADMSG for a frame whose lengths do not add up (the connection is closed), or a
 * request-level error with the connection kept: -E2BIG (prompt over the limit) or -EINVAL (a
 * value out of range: no tokens, max_tokens 0, unknown flags, a bad override, sampling
 * parameters over PDC_SAMPLING_MAX).
 */
int dp_frame_decode_request(const void *p, size_t len, uint32_t max_tokens_prompt,
			    struct dp_frame_request *out, const char **why);

/* Bytes of an answer frame with @body bytes of body. */
#define DP_FRAME_BYTES(body) (sizeof(struct pdc_hdr) + (body))

/* Write a header for a frame of @len bytes. */
void dp_frame_header(void *p, uint8_t type, uint64_t id, uint32_t len);

/* Bytes of the ERROR frame dp_frame_error() writes for @msg. */
size_t dp_frame_error_bytes(const char *msg);

/* Write an ERROR frame with @msg (cut at PDC_ERROR_MAX) at @p; returns its length. */
size_t dp_frame_error(void *p, uint64_t id, int error, const char *msg);

#endif
