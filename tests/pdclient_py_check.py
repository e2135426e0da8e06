"""The Python client (dataplane/python/pdclient.py) against a router that test_frame.c plays.

Run by test_frame (suite pdclient_py) as: python3 pdclient_py_check.py PYTHON_DIR SOCKET.
The C side compares every frame this script sends with what libpdclient encodes for the same
request (py_case() in test_frame.c: keep the two lists in step) and answers as below. Any
failed check raises, and a non-zero exit fails the C test. Every wait has a timeout, so that
the script ends by itself when the C side has failed.
"""

import errno
import sys

sys.path.insert(0, sys.argv[1])
import pdclient  # noqa: E402

WAIT = 10.0  # seconds, longest wait for one answer
TOKS = [1, 2, 3, 4, 5, 0xFFFFFFFF, 0, 65536]


def check(cond, what):
    if not cond:
        raise AssertionError(what)


def self_checks():
    """The decoder's refusals, without the router."""
    done = pdclient._HDR.pack(32, pdclient.MAGIC, pdclient.VERSION, pdclient.DONE, 1)
    done += pdclient._DONE.pack(0, 1, 2, 3)
    check(pdclient.decode_event(done).completion_tokens == 3, "a DONE decodes")
    for bad in (done[:-1], done + b"\0", done[:4] + b"\0" + done[5:], done[:7] + b"\x01" + done[8:],
                done[:6] + b"\x02" + done[7:]):
        try:
            pdclient.decode_event(bad)
        except pdclient.ProtocolError:
            continue
        raise AssertionError(f"a malformed frame decoded: {bad.hex()}")
    for bad in (dict(model=""), dict(tokens=[]), dict(max_tokens=0), dict(model="x" * 256),
                dict(cache_salt="s" * 1025), dict(lora="a\0b"), dict(tokens=[1 << 32]),
                dict(overrides={"top_k": 1}), dict(sampling=b"x" * 4097),
                dict(sampling={"stop": "x" * 4096})):
        args = dict(id=1, model="m", tokens=[1], max_tokens=1)
        args.update(bad)
        try:
            pdclient.encode_request(**args)
        except ValueError:
            continue
        raise AssertionError(f"encode_request accepted {bad}")
    check(pdclient.encode_cancel(6) == pdclient._HDR.pack(16, 0x4350, 1, 2, 6), "cancel")
    # Sampling parameters: bytes as they are, str as UTF-8, a dict as compact JSON; never an
    # int, which bytes() would turn into that many zeros.
    frames = [pdclient.encode_request(1, "m", [1], 1, sampling=s)
              for s in (b'{"top_p":0.9}', '{"top_p":0.9}', {"top_p": 0.9})]
    check(frames[0] == frames[1] == frames[2], "sampling as bytes, str and dict")
    check(frames[0][88:88 + 14] == b'm{"top_p":0.9}', "sampling after the strings")
    check(pdclient.encode_request(1, "m", [1], 1, sampling=b"x" * 4096)[34:36] == b"\0\x10",
          "sampling_len 4096")
    try:
        pdclient.encode_request(1, "m", [1], 1, sampling=5)
        raise AssertionError("encode_request took an int for sampling")
    except TypeError:
        pass


def main():
    self_checks()
    c = pdclient.Client("unix:" + sys.argv[2])
    # The requests of py_case(0..2), compared byte for byte by the C side.
    c.send(1, "m", TOKS[:3], 8)
    c.send(0x0123456789ABCDEF, "llama-3-8b", TOKS, 128, stream=True, enforce_disagg=True,
           lora="adapter-1", cache_salt="tenant-42", pin_worker=3, pin_dp_rank=1,
           pin_prefill_worker=9, pin_prefill_dp_rank=2,
           overrides={"overlap_score_credit": 0.5, "prefill_load_scale": 1.25,
                      "temperature": 0.75, "kv_reuse": True, "prefill_tokens": False},
           sampling={"temperature": 0.75})
    c.send(3, "m-\u00fc", [1], 1, peek=True, cache_salt=b"s", pin_prefill_worker=0,
           pin_prefill_dp_rank=5, overrides={"temperature": 2.0}, sampling=b"\0\x01\xff")

    # Request 1's answers, written a few bytes at a time.
    evs = [c.next(WAIT) for _ in range(4)]
    check([e.type for e in evs] == [pdclient.ROUTED, pdclient.TOKENS, pdclient.TOKENS,
                                    pdclient.DONE], f"answers {evs}")
    check(all(e.id == 1 for e in evs), f"ids {evs}")
    r = evs[0]
    check((r.plan, r.prefill_worker, r.prefill_dp_rank, r.worker, r.dp_rank, r.overlap_blocks)
          == (pdclient.PLAN_DISAGG, 4, 1, 7, 0, 12), f"routed {r}")
    check(evs[1].tokens + evs[2].tokens == [10, 11, 12], f"tokens {evs[1:3]}")
    d = evs[3]
    check((d.finish_reason, d.prompt_tokens, d.cached_tokens, d.completion_tokens)
          == (pdclient.FINISH_LENGTH, 3, 1, 3), f"done {d}")
    check(d.as_dict()["completion_tokens"] == 3, "as_dict")

    # generate() of py_case(3): the router answers ERROR -ENODEV.
    try:
        pdclient.generate(c, 4, "m", [7, 8, 9], 4, timeout=WAIT)
        raise AssertionError("generate() did not raise on an ERROR")
    except pdclient.RouterError as e:
        check(e.id == 4 and e.error == -errno.ENODEV, f"error {e}")
        check(e.message == "no eligible worker", f"message {e.message!r}")

    # generate() of py_case(4), a peek: ROUTED is the last frame.
    res = pdclient.generate(c, 5, "m", [9], 2, peek=True, timeout=WAIT)
    check(res.done is None and res.tokens == [], f"peek {res}")
    check(res.routed.worker == pdclient.NO_WORKER and res.routed.prefill_worker == 2,
          f"peek {res}")

    # cancel(6): DONE, cancelled.
    c.cancel(6)
    d = c.next(WAIT)
    check(d.type == pdclient.DONE and d.id == 6, f"cancel answer {d}")
    check(d.finish_reason == pdclient.FINISH_CANCELLED, f"cancel answer {d}")

    try:
        c.next(0.05)
        raise AssertionError("next() returned with nothing sent")
    except TimeoutError:
        pass

    c.cancel(7)  # tells the C side to hang up
    try:
        c.next(WAIT)
        raise AssertionError("next() returned after the hang-up")
    except ConnectionResetError:
        pass
    c.close()
    print("pdclient_py_check: ok")


if __name__ == "__main__":
    main()
