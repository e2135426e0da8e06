"""pdclient: talk to pdrouter from Python, with the standard library only.

The client protocol (docs/protocol.md, dataplane/pdclient.h) over a TCP or Unix stream
socket: send tokenized requests, many in flight on one connection, and read the router's
answers (ROUTED, TOKENS, DONE, ERROR) as Event objects. encode_request() writes the very
bytes libpdclient's pdc_request_encode() writes (tests/pdclient_py_check.py checks it).

    with Client("unix:/run/pdrouter.sock") as c:
        r = generate(c, 1, "llama-3-8b", [1, 2, 3], max_tokens=16)
        print(r.tokens, r.done.finish_reason)

Errors: ValueError for an argument out of range (what the C library calls -EINVAL),
RouterError for an ERROR frame the router sent, ProtocolError for an answer that does not
decode (the connection is then unusable), TimeoutError and ConnectionResetError from
next(), and OSError from the socket.
"""

import array
import errno
import json
import select
import socket
import struct
import sys
import time

MAGIC = 0x4350
VERSION = 1
FRAME_MAX = 4 << 20  # the router's default frame limit
NAME_MAX = 255  # model, LoRA
SALT_MAX = 1024  # cache salt
SAMPLING_MAX = 4096  # sampling parameters, handed to the worker as they are
ERROR_MAX = 256  # bytes of an error message
NO_WORKER = 0xFFFFFFFF

REQUEST, CANCEL, ROUTED, TOKENS, DONE, ERROR = 1, 2, 16, 17, 18, 19
STREAM, PEEK, ENFORCE_DISAGG = 1, 2, 4
FLAGS_ALL = 7
PLAN_AGGREGATED, PLAN_DISAGG, PLAN_FALLBACK, PLAN_BOOTSTRAP = 0, 1, 2, 3
FINISH_STOP, FINISH_LENGTH, FINISH_CANCELLED = 0, 1, 2

# Overrides of the router's policy: name -> (PDC_OV_* bit, kind).
OVERRIDES = {
    "overlap_score_credit": (1, float),
    "prefill_load_scale": (2, float),
    "temperature": (4, float),
    "kv_reuse": (8, bool),
    "prefill_tokens": (16, bool),
}

_HDR = struct.Struct("<IHBBQ")
# struct pdc_request; the reserved fields (after kv_reuse/prefill_tokens) are zeros.
_REQUEST = struct.Struct("<IIIHHHHIIIIIBBHIddd")
_ROUTED = struct.Struct("<IIIIII")
_TOKENS = struct.Struct("<II")
_DONE = struct.Struct("<IIII")
_ERROR = struct.Struct("<iI")

assert _HDR.size == 16 and _REQUEST.size == 72, "out of step with dataplane/pdclient.h"

_TYPE_NAMES = {ROUTED: "ROUTED", TOKENS: "TOKENS", DONE: "DONE", ERROR: "ERROR"}


class ProtocolError(Exception):
    """An answer frame that does not decode; the connection has lost its framing."""


class RouterError(Exception):
    """An ERROR frame: .error is the negative errno (docs/protocol.md), .message the text."""

    def __init__(self, id, error, message):
        name = errno.errorcode.get(-error, str(error))
        super().__init__(f"request {id}: {name} ({error}): {message}")
        self.id = id
        self.error = error
        self.message = message


class Event:
    """One answer frame: .type (ROUTED, TOKENS, DONE, ERROR), .id, and the type's fields.

    ROUTED: plan, prefill_worker, prefill_dp_rank, worker, dp_rank, overlap_blocks.
    TOKENS: tokens (a list of int).
    DONE: finish_reason, prompt_tokens, cached_tokens, completion_tokens.
    ERROR: error (a negative errno), message (str).
    """

    def __init__(self, type, id, **fields):
        self.type = type
        self.id = id
        self.__dict__.update(fields)

    def as_dict(self):
        return dict(self.__dict__)

    def __repr__(self):
        rest = ", ".join(f"{k}={v!r}" for k, v in self.__dict__.items() if k not in ("type", "id"))
        return f"Event({_TYPE_NAMES.get(self.type, self.type)}, id={self.id}, {rest})"


class Result:
    """What generate() collected: routed (Event), tokens (list of int), done (Event)."""

    def __init__(self, routed, tokens, done):
        self.routed = routed
        self.tokens = tokens
        self.done = done

    def __repr__(self):
        return f"Result(routed={self.routed!r}, tokens={self.tokens!r}, done={self.done!r})"


def _bytes(s, what, limit):
    if s is None:
        return b""
    b = s.encode() if isinstance(s, str) else bytes(s)
    if len(b) > limit:
        raise ValueError(f"{what} is {len(b)} bytes, more than {limit}")
    if b"\0" in b:
        raise ValueError(f"{what} holds a NUL byte")
    return b


def _sampling(sampling):
    """The sampling parameters as bytes: a dict (or list) as compact JSON, str as UTF-8."""
    if sampling is None:
        return b""
    if isinstance(sampling, (dict, list)):
        b = json.dumps(sampling, separators=(",", ":")).encode()
    elif isinstance(sampling, str):
        b = sampling.encode()
    else:
        b = bytes(memoryview(sampling))  # not bytes(n), which would be n zeros
    if len(b) > SAMPLING_MAX:
        raise ValueError(f"sampling is {len(b)} bytes, more than {SAMPLING_MAX}")
    return b


def _u32(v, what):
    v = int(v)
    if not 0 <= v <= 0xFFFFFFFF:
        raise ValueError(f"{what} {v} is not a 32-bit unsigned value")
    return v


def _overrides(overrides):
    """(override_set, kv_reuse, prefill_tokens, credit, load_scale, temperature)."""
    ov = dict(overrides or {})
    unknown = set(ov) - set(OVERRIDES)
    if unknown:
        raise ValueError(f"unknown overrides: {sorted(unknown)}")
    bits = 0
    for name in ov:
        bits |= OVERRIDES[name][0]
    return (
        bits,
        int(bool(ov.get("kv_reuse", False))),
        int(bool(ov.get("prefill_tokens", False))),
        float(ov.get("overlap_score_credit", 0.0)),
        float(ov.get("prefill_load_scale", 0.0)),
        float(ov.get("temperature", 0.0)),
    )


def _token_bytes(tokens):
    """The token ids as little-endian uint32s: through array, fast, where it holds 4 bytes."""
    try:
        if array.array("I").itemsize != 4:
            tokens = list(tokens)
            return struct.pack(f"<{len(tokens)}I", *tokens)
        a = array.array("I", tokens)
    except (OverflowError, struct.error):
        raise ValueError("a token id is not a 32-bit unsigned value") from None
    if sys.byteorder == "big":
        a.byteswap()
    return a.tobytes()


def encode_request(id, model, tokens, max_tokens, stream=False, peek=False,
                   enforce_disagg=False, lora=None, cache_salt=None, pin_worker=None,
                   pin_dp_rank=0, pin_prefill_worker=None, pin_prefill_dp_rank=0,
                   overrides=None, sampling=None):
    """The REQUEST frame, byte for byte what pdc_request_encode() writes for the same request.

    model, lora, cache_salt: str (UTF-8) or bytes, without NUL; pin_worker and
    pin_prefill_worker: a worker id or None; overrides: a dict of the names in OVERRIDES (the
    router checks their ranges); sampling: the sampling parameters every worker serving the
    request gets as they are, bytes (any, up to SAMPLING_MAX), str (UTF-8) or a dict encoded
    as compact JSON, e.g. {"temperature": 0.7, "top_p": 0.9}. Raises ValueError for a value
    out of range.
    """
    if not 0 <= int(id) <= 0xFFFFFFFFFFFFFFFF:
        raise ValueError(f"request id {id} is not a 64-bit unsigned value")
    m = _bytes(model, "model", NAME_MAX)
    lo = _bytes(lora, "lora", NAME_MAX)
    salt = _bytes(cache_salt, "cache_salt", SALT_MAX)
    samp = _sampling(sampling)
    toks = _token_bytes(tokens)
    ntokens = len(toks) // 4
    if not m:
        raise ValueError("a request needs a model name")
    if not ntokens:
        raise ValueError("a request needs prompt tokens")
    if _u32(max_tokens, "max_tokens") < 1:
        raise ValueError("max_tokens must be at least 1")
    flags = (STREAM if stream else 0) | (PEEK if peek else 0)
    flags |= ENFORCE_DISAGG if enforce_disagg else 0
    strings = m + lo + salt + samp
    pad = -len(strings) % 4
    total = _HDR.size + _REQUEST.size + len(strings) + pad + len(toks)
    if total > 0xFFFFFFFF:
        raise ValueError("the request does not fit a frame")
    ov = _overrides(overrides)
    fixed = _REQUEST.pack(
        ntokens, max_tokens, flags, len(m), len(lo), len(salt), len(samp),
        NO_WORKER if pin_worker is None else _u32(pin_worker, "pin_worker"),
        _u32(pin_dp_rank, "pin_dp_rank"),
        NO_WORKER if pin_prefill_worker is None else _u32(pin_prefill_worker, "pin_prefill_worker"),
        _u32(pin_prefill_dp_rank, "pin_prefill_dp_rank"),
        *ov[:3], 0, 0, *ov[3:])
    return b"".join((_HDR.pack(total, MAGIC, VERSION, REQUEST, id), fixed, strings,
                     b"\0" * pad, toks))


def encode_cancel(id):
    """The CANCEL frame for request id (16 bytes)."""
    return _HDR.pack(_HDR.size, MAGIC, VERSION, CANCEL, id)


def frame_length(buf, start=0, limit=FRAME_MAX):
    """The length of the frame at buf[start:], or 0 while its header is not all there.

    Raises ProtocolError for a header that is not a frame's or a frame over limit.
    """
    if len(buf) - start < _HDR.size:
        return 0
    length, magic, version, _, _ = _HDR.unpack_from(buf, start)
    if magic != MAGIC or version != VERSION or length < _HDR.size:
        raise ProtocolError("not a pdrouter frame (magic, version or length)")
    if length > limit:
        raise ProtocolError(f"a frame of {length} bytes, over the limit of {limit}")
    return length


def decode_event(frame):
    """The Event of one whole answer frame; ProtocolError unless it is exactly a valid answer's."""
    frame = memoryview(frame)
    if len(frame) < _HDR.size or frame_length(frame, 0, len(frame)) != len(frame):
        raise ProtocolError("frame length does not match its header")
    _, _, _, type, id = _HDR.unpack_from(frame)
    body = frame[_HDR.size:]
    if type == ROUTED and len(body) == _ROUTED.size:
        f = _ROUTED.unpack(body)
        return Event(type, id, plan=f[0], prefill_worker=f[1], prefill_dp_rank=f[2],
                     worker=f[3], dp_rank=f[4], overlap_blocks=f[5])
    if type == TOKENS and len(body) >= _TOKENS.size:
        n, _ = _TOKENS.unpack_from(body)
        if len(body) == _TOKENS.size + 4 * n:
            return Event(type, id, tokens=list(struct.unpack_from(f"<{n}I", body, _TOKENS.size)))
    if type == DONE and len(body) == _DONE.size:
        f = _DONE.unpack(body)
        return Event(type, id, finish_reason=f[0], prompt_tokens=f[1], cached_tokens=f[2],
                     completion_tokens=f[3])
    if type == ERROR and len(body) >= _ERROR.size:
        error, n = _ERROR.unpack_from(body)
        if n <= ERROR_MAX and len(body) == _ERROR.size + n:
            msg = bytes(body[_ERROR.size:]).decode("utf-8", "replace")
            return Event(type, id, error=error, message=msg)
    raise ProtocolError(f"not a valid answer frame (type {type}, {len(frame)} bytes)")


def _connect(addr):
    """A connected socket for "unix:/path", "/path", "host:port", "[v6]:port" or "tcp:host:port"."""
    if addr.startswith("unix:") or addr.startswith("/"):
        path = addr[5:] if addr.startswith("unix:") else addr
        if not path:
            raise ValueError(f"no path in {addr!r}")
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            s.connect(path)
        except BaseException:
            s.close()
            raise
        return s
    rest = addr[4:] if addr.startswith("tcp:") else addr
    host, sep, port = rest.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not sep or not host or not port.isdigit():
        raise ValueError(f"cannot parse address {addr!r}")
    s = socket.create_connection((host, int(port)))
    # A CANCEL must not wait behind Nagle for the ACK of the REQUEST before it.
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return s


class Client:
    """One blocking connection to a router; not for sharing between threads."""

    def __init__(self, addr):
        self._sock = _connect(addr)
        self._buf = bytearray()
        self._pos = 0  # bytes of _buf already handed out
        self._broken = None

    def fileno(self):
        return self._sock.fileno()

    def send(self, id, model, tokens, max_tokens, stream=False, peek=False,
             enforce_disagg=False, lora=None, cache_salt=None, pin_worker=None, pin_dp_rank=0,
             pin_prefill_worker=None, pin_prefill_dp_rank=0, overrides=None, sampling=None):
        """Send a REQUEST (arguments as encode_request()); its answers come from next()."""
        self._sock.sendall(encode_request(
            id, model, tokens, max_tokens, stream=stream, peek=peek,
            enforce_disagg=enforce_disagg, lora=lora, cache_salt=cache_salt,
            pin_worker=pin_worker, pin_dp_rank=pin_dp_rank,
            pin_prefill_worker=pin_prefill_worker, pin_prefill_dp_rank=pin_prefill_dp_rank,
            overrides=overrides, sampling=sampling))

    def cancel(self, id):
        """Send a CANCEL; the router answers DONE with FINISH_CANCELLED, or nothing for an id
        it does not know."""
        self._sock.sendall(encode_cancel(id))

    def next(self, timeout=None):
        """The next answer as an Event, waiting up to timeout seconds (None: forever).

        Raises TimeoutError, ConnectionResetError when the router closed the connection, or
        ProtocolError for an answer that does not decode (and on every later call).
        """
        if self._broken:
            raise self._broken
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            try:
                n = frame_length(self._buf, self._pos)
                if n and len(self._buf) - self._pos >= n:
                    ev = decode_event(self._buf[self._pos:self._pos + n])
                    self._pos += n
                    return ev
            except ProtocolError as e:
                self._broken = e
                raise
            self._fill(deadline)

    def _fill(self, deadline):
        if self._pos and self._pos * 2 >= len(self._buf):
            del self._buf[:self._pos]  # drop what was handed out once it is half the buffer
            self._pos = 0
        while True:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            ready, _, _ = select.select([self._sock], [], [], left)
            if not ready:
                raise TimeoutError(errno.ETIMEDOUT, "no answer before the timeout")
            data = self._sock.recv(65536)
            if not data:
                raise ConnectionResetError(errno.ECONNRESET, "the router closed the connection")
            self._buf += data
            return

    def close(self):
        """Close the connection; the router cancels whatever is still in flight."""
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def generate(client, id, model, tokens, max_tokens, timeout=None, **kw):
    """Send one request and collect its answers: a Result (routed, tokens, done).

    Keyword arguments as Client.send() (stream is honoured; the tokens are collected either
    way). Answers for other ids are skipped. A peek's Result has routed only. Raises
    RouterError on an ERROR for this request, and what Client.next() raises; timeout applies
    to each answer.
    """
    client.send(id, model, tokens, max_tokens, **kw)
    routed, out = None, []
    while True:
        ev = client.next(timeout)
        if ev.id == 0 and ev.type == ERROR:
            raise RouterError(0, ev.error, ev.message)
        if ev.id != id:
            continue
        if ev.type == ROUTED:
            routed = ev
            if kw.get("peek"):
                return Result(routed, out, None)
        elif ev.type == TOKENS:
            out.extend(ev.tokens)
        elif ev.type == ERROR:
            raise RouterError(id, ev.error, ev.message)
        elif ev.type == DONE:
            return Result(routed, out, ev)
