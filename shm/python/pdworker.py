"""pdworker: adapt a Python inference engine to pdrouter, with the standard library only.

A thin ctypes layer over libpdworker (shm/pdworker.h): connect to the router's control
socket, register, publish KV-cache events and load, keep the lease with heartbeats, and serve
requests: poll() or wait() for them, answer with post_tokens(), post_prefilled(), post_done()
or post_error(). Errors come back as OSError with the errno the C library returned; a refused
registration raises RegistrationRefused with the router's reason.

The shared library is found through the PDWORKER_LIB environment variable, else as
"libpdworker.so.0" on the loader's path.
"""

import ctypes
import errno
import os
import time

PREFILL, DECODE, AGGREGATED = 0, 1, 2
# What a request asks of the worker (Request.mode; shm/lanes.h enum shm_lane_mode).
MODE_AGGREGATED, MODE_PREFILL, MODE_DECODE = 0, 1, 2
FINISH_STOP, FINISH_LENGTH = 0, 1
MODEL_CHAT, MODEL_COMPLETIONS, MODEL_EMPTY = 0, 1, 2
NEEDS_PREFILL, NEEDS_DECODE = 1, 2
TRANSFER_NONE, TRANSFER_PREFERRED, TRANSFER_REQUIRED = 0, 1, 2


class _Register(ctypes.Structure):
    """struct pdw_register (shm/proto.h); the C side fills the *_len and ndomains fields."""

    _fields_ = [
        ("worker_type", ctypes.c_uint32),
        ("model_type", ctypes.c_uint32),
        ("needs", ctypes.c_uint32),
        ("block_size", ctypes.c_uint32),
        ("kv_capacity_blocks", ctypes.c_uint64),
        ("max_batched_tokens", ctypes.c_uint32),
        ("dp_rank_start", ctypes.c_uint32),
        ("dp_ranks", ctypes.c_uint32),
        ("transfer_enforcement", ctypes.c_uint32),
        ("preferred_weight", ctypes.c_double),
        ("model_len", ctypes.c_uint16),
        ("endpoint_len", ctypes.c_uint16),
        ("transfer_len", ctypes.c_uint16),
        ("ndomains", ctypes.c_uint16),
    ]


class _RegisterArgs(ctypes.Structure):
    """struct pdw_register_args (shm/proto.h)."""

    _fields_ = [
        ("fixed", _Register),
        ("model", ctypes.c_char_p),
        ("endpoint", ctypes.c_char_p),
        ("transfer_domain", ctypes.c_char_p),
        ("domain_names", ctypes.POINTER(ctypes.c_char_p)),
        ("domain_values", ctypes.POINTER(ctypes.c_char_p)),
        ("ndomains", ctypes.c_uint16),
    ]


assert ctypes.sizeof(_Register) == 56, "out of step with shm/proto.h"


class _LaneRequest(ctypes.Structure):  # struct shm_lane_request
    _fields_ = [("request_id", ctypes.c_uint64), ("mode", ctypes.c_uint32),
                ("ntokens", ctypes.c_uint32), ("max_tokens", ctypes.c_uint32),
                ("nparams", ctypes.c_uint32), ("prefill_worker", ctypes.c_uint32),
                ("dp_rank", ctypes.c_uint32), ("room_id", ctypes.c_uint64),
                ("nsampling", ctypes.c_uint32), ("reserved", ctypes.c_uint32)]


class _PdwRequest(ctypes.Structure):  # struct pdw_request
    _fields_ = [("lane", ctypes.c_uint32), ("cancel", ctypes.c_bool), ("req", _LaneRequest),
                ("tokens", ctypes.POINTER(ctypes.c_uint32)),
                ("params", ctypes.POINTER(ctypes.c_uint8)),
                ("sampling", ctypes.POINTER(ctypes.c_uint8))]


class Request:
    """A request (or a cancel) from the router, copied out of the mailbox: answer it on its
    lane with the Worker's post_*() methods, quoting the request."""

    def __init__(self, r):
        q = r.req
        self.lane, self.cancel, self.id = r.lane, bool(r.cancel), q.request_id
        self.mode, self.max_tokens = q.mode, q.max_tokens
        self.prefill_worker, self.dp_rank, self.room_id = q.prefill_worker, q.dp_rank, q.room_id
        self.tokens = r.tokens[:q.ntokens] if not self.cancel else []
        self.params = ctypes.string_at(r.params, q.nparams) if q.nparams else b""
        self.sampling = ctypes.string_at(r.sampling, q.nsampling) if q.nsampling else b""


class RegistrationRefused(Exception):
    """The router refused the registration; str() is its reason."""


def _load():
    lib = ctypes.CDLL(os.environ.get("PDWORKER_LIB", "libpdworker.so.0"), use_errno=False)
    u32, u64, i32 = ctypes.c_uint32, ctypes.c_uint64, ctypes.c_int
    p, pu64, pu32 = ctypes.c_void_p, ctypes.POINTER(ctypes.c_uint64), ctypes.POINTER(u32)
    sig = {
        "pdw_size": (ctypes.c_size_t, []),
        "pdw_worker_id": (u32, [p]),
        "pdw_reason": (ctypes.c_char_p, [p]),
        "pdw_connect": (i32, [p, ctypes.c_char_p]),
        "pdw_register": (i32, [p, ctypes.POINTER(_RegisterArgs), i32]),
        "pdw_reconnect": (i32, [p, ctypes.c_char_p, ctypes.POINTER(_RegisterArgs), i32]),
        "pdw_publish_stored": (i32, [p, u32, pu64, pu64, u32, pu64, pu32]),
        "pdw_publish_removed": (i32, [p, u32, pu64, u32]),
        "pdw_publish_cleared": (i32, [p, u32]),
        "pdw_publish_load": (i32, [p, u32, u64, u64]),
        "pdw_heartbeat": (None, [p]),
        "pdw_request_size": (ctypes.c_size_t, []),
        "pdw_poll": (i32, [p, ctypes.POINTER(_PdwRequest)]),
        "pdw_done_with": (None, [p, ctypes.POINTER(_PdwRequest)]),
        "pdw_wait": (i32, [p, u64]),
        "pdw_post_tokens": (i32, [p, u32, u64, pu32, u32]),
        "pdw_post_prefilled": (i32, [p, u32, u64, u32, ctypes.c_char_p, u32]),
        "pdw_post_done": (i32, [p, u32, u64, u32]),
        "pdw_post_error": (i32, [p, u32, u64, i32, ctypes.c_char_p]),
        "pdw_control": (i32, [p]),
        "pdw_close": (None, [p]),
    }
    for name, (res, args) in sig.items():
        fn = getattr(lib, name)
        fn.restype, fn.argtypes = res, args
    if lib.pdw_request_size() != ctypes.sizeof(_PdwRequest):
        raise ImportError("libpdworker's struct pdw_request is %d bytes, this binding's %d: "
                          "a library of another version" % (lib.pdw_request_size(),
                                                            ctypes.sizeof(_PdwRequest)))
    return lib


def _check(rc, what):
    if rc < 0:
        raise OSError(-rc, "%s: %s" % (what, os.strerror(-rc)))


def _u64s(values):
    return (ctypes.c_uint64 * len(values))(*values)


class Worker:
    """One registration with a router; use it from one thread."""

    def __init__(self, socket_path):
        self._lib = _load()
        self._w = ctypes.create_string_buffer(self._lib.pdw_size())
        self._path = socket_path.encode()
        _check(self._lib.pdw_connect(self._w, self._path), "connect")
        self._block_size = 0
        self._args = None  # kept for reconnect(); it also keeps its strings alive

    def register(self, model, worker_type=AGGREGATED, model_type=MODEL_CHAT, needs=0,
                 block_size=16, kv_capacity_blocks=16384, max_batched_tokens=8192,
                 dp_rank_start=0, dp_ranks=1, endpoint="generate", domains=None,
                 transfer_domain=None, transfer_enforcement=TRANSFER_NONE,
                 preferred_weight=0.0, timeout_ms=5000):
        """Register; returns the router's worker id. Raises RegistrationRefused or OSError."""
        domains = dict(domains or {})
        names = (ctypes.c_char_p * max(len(domains), 1))(*[k.encode() for k in domains])
        values = (ctypes.c_char_p * max(len(domains), 1))(*[v.encode() for v in domains.values()])
        fixed = _Register(worker_type, model_type, needs, block_size, kv_capacity_blocks,
                          max_batched_tokens, dp_rank_start, dp_ranks, transfer_enforcement,
                          preferred_weight)
        args = _RegisterArgs(fixed, model.encode(), endpoint.encode(),
                             transfer_domain.encode() if transfer_domain else None,
                             names, values, len(domains))
        rc = self._lib.pdw_register(self._w, ctypes.byref(args), timeout_ms)
        self._refused(rc)
        _check(rc, "register")
        self._block_size = block_size
        self._args = args
        return self._lib.pdw_worker_id(self._w)

    def reconnect(self, timeout_ms=5000):
        """After the router went away (wants_dump() raised EPIPE): connect and register again
        as register() did, with event ids starting over; returns the new worker id. Then send
        cleared() and stored() for every block held. Raises OSError (ENOENT or ECONNREFUSED:
        no router listens yet, try again later) or RegistrationRefused."""
        if self._args is None:
            raise ValueError("reconnect() needs a register() before it")
        rc = self._lib.pdw_reconnect(self._w, self._path, ctypes.byref(self._args), timeout_ms)
        self._refused(rc)
        _check(rc, "reconnect")
        return self._lib.pdw_worker_id(self._w)

    def _refused(self, rc):
        if rc == -errno.EPERM:
            raise RegistrationRefused(self._lib.pdw_reason(self._w).decode(errors="replace"))

    def stored(self, dp_rank, ext_ids, tokens=None, local_hashes=None, parent=None):
        """STORED: blocks cached, given by token ids (len(ext_ids) * block_size of them) or by
        local hashes. Raises OSError (ENOBUFS: the event ring is full, try again)."""
        n = len(ext_ids)
        par = ctypes.byref(ctypes.c_uint64(parent)) if parent is not None else None
        loc = _u64s(local_hashes) if local_hashes is not None else None
        tok = (ctypes.c_uint32 * len(tokens))(*tokens) if tokens is not None else None
        if tok is not None and len(tokens) != n * self._block_size:
            raise ValueError("tokens must hold %d ids" % (n * self._block_size))
        _check(self._lib.pdw_publish_stored(self._w, dp_rank, par, _u64s(ext_ids), n, loc, tok),
               "stored")

    def removed(self, dp_rank, ext_ids):
        _check(self._lib.pdw_publish_removed(self._w, dp_rank, _u64s(ext_ids), len(ext_ids)),
               "removed")

    def cleared(self, dp_rank):
        _check(self._lib.pdw_publish_cleared(self._w, dp_rank), "cleared")

    def load(self, dp_rank, used_blocks, prefill_tokens=0):
        _check(self._lib.pdw_publish_load(self._w, dp_rank, used_blocks, prefill_tokens),
               "load")

    def heartbeat(self):
        self._lib.pdw_heartbeat(self._w)

    def wants_dump(self):
        """True when the router asked for the whole cache again (send cleared(), then
        stored() for every block held). Raises OSError (EPIPE) when the router is gone:
        reconnect(), then send the whole cache the same way."""
        rc = self._lib.pdw_control(self._w)
        _check(rc, "control")
        return bool(rc & 1)

    def poll(self):
        """The next request or cancel from the router, or None when there is none."""
        r = _PdwRequest()
        rc = self._lib.pdw_poll(self._w, ctypes.byref(r))
        if rc == -errno.EAGAIN:
            return None
        _check(rc, "poll")
        req = Request(r)
        self._lib.pdw_done_with(self._w, ctypes.byref(r))
        return req

    def wait(self, timeout_s):
        """Sleep until the router has something for us or @timeout_s passes."""
        rc = self._lib.pdw_wait(self._w, int(timeout_s * 1e9))
        if rc not in (0, -errno.ETIMEDOUT, -errno.EINTR):
            _check(rc, "wait")

    def _post(self, what, call, timeout_s=5.0):
        # ENOBUFS: the lane is full until the router reads it, which it does all the time.
        end = time.monotonic() + timeout_s
        while True:
            rc = call()
            if rc != -errno.ENOBUFS or time.monotonic() > end:
                _check(rc, what)
                return
            time.sleep(0.0001)

    def post_tokens(self, req, tokens):
        """Generated tokens of @req (a list of ids; sent in records of up to 4096)."""
        for i in range(0, len(tokens), 4096):
            part = tokens[i:i + 4096]
            arr = (ctypes.c_uint32 * len(part))(*part)
            self._post("post_tokens", lambda: self._lib.pdw_post_tokens(
                self._w, req.lane, req.id, arr, len(part)))

    def post_prefilled(self, req, first_token, params):
        """The prefill of @req is done: its first token and the KV-transfer params (bytes)."""
        self._post("post_prefilled", lambda: self._lib.pdw_post_prefilled(
            self._w, req.lane, req.id, first_token, params, len(params)))

    def post_done(self, req, finish_reason=FINISH_LENGTH):
        self._post("post_done", lambda: self._lib.pdw_post_done(
            self._w, req.lane, req.id, finish_reason))

    def post_error(self, req, error, message):
        """@req failed: @error a positive errno (errno.EIO...), @message for the client."""
        msg = message.encode()[:255]
        self._post("post_error", lambda: self._lib.pdw_post_error(
            self._w, req.lane, req.id, -abs(error), msg))

    def close(self):
        if self._w is not None:
            self._lib.pdw_close(self._w)
            self._w = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
