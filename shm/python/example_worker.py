#!/usr/bin/env python3
"""The Python twin of tools/example_worker.c: register, publish a few prompts' KV blocks,
report load, keep the lease until SIGTERM or SIGINT. Usage: example_worker.py SOCKET [MODEL]"""

import signal
import sys
import time

import pdworker

BLOCK_SIZE, PROMPTS, BLOCKS = 16, 4, 8


def publish_cache(w):
    for p in range(PROMPTS):
        tokens = [p * 1000 + i for i in range(BLOCKS * BLOCK_SIZE)]
        w.stored(0, [p << 32 | b for b in range(BLOCKS)], tokens=tokens)


def main(argv):
    if len(argv) < 2:
        print("usage: example_worker.py SOCKET [MODEL]", file=sys.stderr)
        return 2
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    signal.signal(signal.SIGINT, lambda *_: stop.append(1))
    with pdworker.Worker(argv[1]) as w:
        try:
            wid = w.register(argv[2] if len(argv) > 2 else "example-model",
                             block_size=BLOCK_SIZE)
        except pdworker.RegistrationRefused as e:
            print("example_worker.py: refused: %s" % e, file=sys.stderr)
            return 1
        print("example_worker.py: registered as worker %d" % wid, flush=True)
        publish_cache(w)
        w.load(0, PROMPTS * BLOCKS)
        while not stop:
            w.heartbeat()
            if w.wants_dump():  # the router lost an event: send the whole cache again
                w.cleared(0)
                publish_cache(w)
            time.sleep(0.2)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
