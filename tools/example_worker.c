/*
 * example_worker: the smallest engine adapter on libpdworker (shm/pdworker.h). It registers
 * one aggregated worker, publishes the KV blocks of a few made-up prompts as an engine would
 * after prefilling them, reports its load and keeps its lease with heartbeats until
 * interrupted. Read it top to bottom as the SDK's tutorial.
 *
 * Usage: example_worker SOCKET [MODEL]
 */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "pdworker.h"

#define BLOCK_SIZE 16
#define PROMPTS 4
#define BLOCKS 8 /* per prompt */

static volatile sig_atomic_t stop;

static void on_signal(int sig)
{
	(void)sig;
	stop = 1;
}

/* An engine names each KV block by its own id and knows the block's tokens. */
static void publish_prompt(struct pdw *w, uint32_t p)
{
	uint32_t tokens[BLOCKS * BLOCK_SIZE];
	uint64_t ext[BLOCKS];
	int rc;

	for (uint32_t i = 0; i < BLOCKS * BLOCK_SIZE; i++)
		tokens[i] = p * 1000 + i;
	for (uint32_t b = 0; b < BLOCKS; b++)
		ext[b] = (uint64_t)p << 32 | b;
	/* No parent: the blocks start a prompt. The router hashes the token ids itself. */
	rc = pdw_publish_stored(w, 0, NULL, ext, BLOCKS, NULL, tokens);
	if (rc)
		fprintf(stderr, "example_worker: STORED of prompt %u: %s\n", p, strerror(-rc));
}

int main(int argc, char **argv)
{
	struct pdw_register_args a = {
	    .fixed = {.worker_type = PDW_AGGREGATED, .model_type = PDW_MODEL_CHAT,
		      .block_size = BLOCK_SIZE, .kv_capacity_blocks = 16384,
		      .max_batched_tokens = 8192, .dp_ranks = 1},
	    .model = argc > 2 ? argv[2] : "example-model",
	    .endpoint = "generate",
	};
	struct pdw w;
	int rc;

	if (argc < 2) {
		fprintf(stderr, "usage: example_worker SOCKET [MODEL]\n");
		return 2;
	}
	rc = pdw_connect(&w, argv[1]);
	if (rc) {
		fprintf(stderr, "example_worker: no router at %s: %s\n", argv[1], strerror(-rc));
		return 1;
	}
	rc = pdw_register(&w, &a, 5000);
	if (rc) {
		fprintf(stderr, "example_worker: registration failed: %s%s%s\n", strerror(-rc),
			rc == -EPERM ? ": " : "", rc == -EPERM ? w.reason : "");
		pdw_close(&w);
		return 1;
	}
	printf("example_worker: registered as worker %u\n", w.worker);
	for (uint32_t p = 0; p < PROMPTS; p++)
		publish_prompt(&w, p);
	pdw_publish_load(&w, 0, PROMPTS * BLOCKS, 0);
	signal(SIGINT, on_signal);
	signal(SIGTERM, on_signal);
	while (!stop) { /* the lease: a heartbeat well within the router's 3 s */
		pdw_heartbeat(&w);
		rc = pdw_control(&w);
		if (rc == PDW_WANTS_DUMP) { /* the router lost an event: resend the cache */
			pdw_publish_cleared(&w, 0);
			for (uint32_t p = 0; p < PROMPTS; p++)
				publish_prompt(&w, p);
		} else if (rc < 0) {
			fprintf(stderr, "example_worker: the router is gone: %s\n", strerror(-rc));
			break;
		}
		sleep(1);
	}
	pdw_close(&w); /* the router drops our blocks */
	return 0;
}
