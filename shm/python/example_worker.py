#!/usr/bin/env python3
"""An engine adapter in Python, on pdworker: register, publish a few prompts' KV blocks,
report load, keep the lease, and serve requests until SIGTERM or SIGINT. Its "engine" makes
no tokens worth reading: 1000, 1001, ... max_tokens of them; a prefill answers with params
that name it. Usage: example_worker.py SOCKET [MODEL]"""

import errno
import signal
import sys

import pdworker

BLOCK_SIZE, PROMPTS, BLOCKS = 16, 4, 8


def publish_cache(w):
    for p in range(PROMPTS):
        tokens = [p * 1000 + i for i in range(BLOCKS * BLOCK_SIZE)]
        w.stored(0, [p << 32 | b for b in range(BLOCKS)], tokens=tokens)


def serve(w, wid, req):
    if req.cancel:  # nothing is kept per request here, so there is nothing to stop
        return
    if req.mode == pdworker.MODE_PREFILL:  # compute the KV, hand its whereabouts back
        w.post_prefilled(req, 1000, b"example:worker=%d;tokens=%d" % (wid, len(req.tokens)))
        return
    if req.mode == pdworker.MODE_DECODE and not req.params.startswith(b"example:"):
        w.post_error(req, errno.EINVAL, "decode without this example's prefill params")
        return
    w.post_tokens(req, [1000 + i for i in range(req.max_tokens)])
    w.post_done(req)


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
            try:
                dump = w.wants_dump()
            except BrokenPipeError:  # the router stopped (pdmock shows how to wait for the next)
                print("example_worker.py: the router went away", file=sys.stderr)
                return 0
            if dump:  # the router lost an event: send the whole cache again
                w.cleared(0)
                publish_cache(w)
            req = w.poll()
            while req is not None:
                serve(w, wid, req)
                req = w.poll()
            w.wait(0.2)  # until the router rings the doorbell
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
