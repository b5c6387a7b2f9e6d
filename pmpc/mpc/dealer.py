"""Dealer modes and the offline/online split of a secure query.

Every secure multiplication, comparison and share conversion consumes correlated randomness
("tuples": Beaver triples for products, squares, binary AND triples, B2A bits; FSS comparison
keys and one-hot table vectors, :mod:`pmpc.mpc.gates`; fixed-operand triples for products with a
private weight, :mod:`pmpc.mpc.fixed_operand`) from a provider.
Two dealer modes (named in every output):

* ``local`` — CrypTen's trusted-first-party provider (TFP): party 0 (the client) draws every
  tuple in plaintext and shares it with pseudo-random zero sharings. Fast, and no offline traffic
  but the FSS keys' correction words, but the client knows every mask, so it is NOT secure
  against party 0. Use it to measure the online phase only.
* ``ttp`` — a third process or host (rank ``world_size``, the *dealer*) draws the tuples; party 1
  derives its shares from a seed it shares with the dealer and party 0 receives the correction
  terms. Secure against one semi-honest computing party if the dealer colludes with neither.
  Live (no ``preprocess``), party 0 sends each request before the opening that uses the tuple and
  reads the answer after it (:func:`_ttp_request`): the dealer's round trip runs beside the peer
  round, so the query has the rounds of the ``local`` mode; the dealt bytes are counted apart.

The offline/online split (``preprocess``):

1. **plan** — a dry run of the query over the same public shapes (the client's tokens replaced by
   zeros, private weights by zero weights) with a :class:`ShapeOnly` provider that hands out junk
   tuples drawn locally. It records each tuple request in order (kind, shapes, op). MPC is
   data-oblivious, so the real query asks for exactly this sequence (checked request by request).
   Each party runs it alone (``crypten_compat.solo_dry_run``: no peer, no traffic, CrypTen's
   shared generators restored afterwards); the two plans must agree. The dry run holds no secret,
   and the plan is a function of public facts only (configuration, batch, prompt lengths, steps),
   so it is cached per process.
2. **offline** — the dealer of the chosen mode produces the planned tuples (for ``ttp`` in
   batches: one request and one reply per chunk, not one round trip per tuple), chunk by chunk,
   with the two computing parties kept in step; the dealer then leaves the session. Each party
   keeps its tuples in a :class:`pmpc.mpc.spool.Spool` (an encrypted, unlinked file read back
   in order), so its memory holds one chunk, not the query's material.
3. **online** — the query runs against a :class:`Replay` provider that serves the stored tuples
   in order; it talks to nobody but the other computing party, so its time, rounds and bytes are
   the online phase alone.
"""
from __future__ import annotations

# crypten (through pmpc.mpc.crypten_compat / crypten_ops) is imported inside the functions that run
# in a party: the launcher, the CLI and a machine without crypten import this module without it.

import collections
import dataclasses
import functools
import hashlib
import math
import resource
import threading
import time

import torch

from pmpc.mpc import gates, wire
from pmpc.mpc.prg import PRG
from pmpc.mpc.roles import talking_to
from pmpc.mpc.spool import Spool

MODES = ("local", "ttp")
PROVIDER = {"local": "TFP", "ttp": "TTP"}

TRUST = {
    "local": "party 0 (the client) generates every Beaver triple in plaintext: secure against a "
             "semi-honest server only; NOT secure against the client. Online-phase cost only.",
    "ttp": "a third, non-colluding dealer process generates the triples: secure against one "
           "semi-honest computing party if the dealer colludes with neither.",
}

# fixed_operand_triple: a product with a private weight against the session's mask of that
# weight (pmpc.mpc.fixed_operand); its args are (weight id, shape of x, shape of W)
KINDS = ("generate_additive_triple", "square", "generate_binary_triple", "wrap_rng", "B2A_rng", "generate_sign",
         "generate_onehot", "fixed_operand_triple", "generate_cross_bits", "generate_cross_words", "fixed_operand_kv_mask",
         "fixed_operand_kv_triple")
SHORT = {"generate_additive_triple": "triple", "square": "square", "generate_binary_triple": "and",
         "wrap_rng": "wrap", "B2A_rng": "b2a", "generate_sign": "sign", "generate_onehot": "onehot",
         "fixed_operand_triple": "fixed", "generate_cross_bits": "cross", "generate_cross_words": "crossw",
         "fixed_operand_kv_mask": "kvmask",
         "fixed_operand_kv_triple": "kv"}
TTP_FN = {"generate_additive_triple": "additive", "square": "square", "generate_binary_triple": "binary",
          "wrap_rng": "wraps", "B2A_rng": "B2A", "generate_sign": "sign", "generate_onehot": "onehot",
          "fixed_operand_triple": "fixed", "generate_cross_bits": "cross_bits", "generate_cross_words": "cross_words",
          "fixed_operand_kv_mask": "kv_mask",
          "fixed_operand_kv_triple": "kv_triple"}


class PlanMismatch(RuntimeError):
    """The online phase asked for a tuple the plan does not hold at that position."""


def _norm(v):
    if isinstance(v, (torch.Size, list, tuple)):
        return tuple(_norm(x) for x in v)
    if isinstance(v, torch.device):
        return str(v)
    return v


def request_key(name: str, args, kwargs) -> tuple:
    """A hashable, device-free description of one tuple request."""
    return (name, _norm(args), tuple(sorted((k, _norm(v)) for k, v in kwargs.items() if k != "device")))


def _out_size(op: str, s0, s1, kw) -> tuple:
    """The shape of ``op`` on operands of shapes s0 and s1 (torch's own rule, on meta tensors).
    Memoised: a query asks for the same few shapes thousands of times, and each meta-tensor
    evaluation costs a fraction of a millisecond of the critical path."""
    try:
        return _out_size_cached(op, tuple(s0), tuple(s1), tuple(kw))
    except TypeError:  # an unhashable keyword value: evaluate without the cache
        return _meta_shape(op, s0, s1, kw)


def _meta_shape(op: str, s0, s1, kw) -> tuple:
    a = torch.empty(s0, dtype=torch.float32, device="meta")
    b = torch.empty(s1, dtype=torch.float32, device="meta")
    return tuple(getattr(torch, op)(a, b, **dict(kw)).shape)


_out_size_cached = functools.lru_cache(maxsize=4096)(_meta_shape)


def elements(key) -> int:
    """Ring elements of one tuple (a party's share), for the plan's size."""
    name, args, kw = key
    n = lambda s: math.prod(s) if s else 1  # noqa: E731
    if name == "generate_additive_triple":
        return n(args[0]) + n(args[1]) + n(_out_size(args[2], args[0], args[1], kw))
    if name == "generate_binary_triple":
        return n(args[0]) + n(args[1]) + n(torch.broadcast_shapes(args[0], args[1]))
    if name == "generate_sign":  # mask and m shares, root seed, correction words (FSS key)
        return n(args[0]) * (4 + gates.key_words(args[1]))
    if name == "generate_onehot":  # mask share and one-hot share of a 2^k-entry table
        return n(args[0]) * (1 + (1 << args[1]))
    if name == "fixed_operand_triple":  # A and C only: B was dealt once, at setup
        return n(args[1]) + n(_out_size("matmul", args[1], args[2], ()))
    if name == "fixed_operand_kv_mask":  # the new rows' mask share
        return n(args[1])
    if name == "fixed_operand_kv_triple":  # A and C against the rows held
        from pmpc.mpc import fixed_operand

        return n(args[1]) + n(fixed_operand.kv_out_size(args[1], args[2], args[3]))
    return 2 * n(args[0])


@dataclasses.dataclass
class Plan:
    """The tuple requests of one query, in order; ``marks`` names phase boundaries (index of
    the first request of each phase)."""
    requests: list
    marks: dict

    def digest(self) -> str:
        return hashlib.sha256(repr((self.requests, sorted(self.marks.items()))).encode()).hexdigest()[:16]

    def span(self, phase: str) -> tuple[int, int]:
        names = sorted(self.marks, key=self.marks.get)
        i = names.index(phase)
        end = self.marks[names[i + 1]] if i + 1 < len(names) else len(self.requests)
        return self.marks[phase], end

    def counts(self, lo: int = 0, hi: int | None = None) -> dict:
        """{kind: [tuples, ring elements per party]} for requests lo..hi."""
        out: dict = {}
        for key in self.requests[lo:hi]:
            c = out.setdefault(SHORT[key[0]], [0, 0])
            c[0] += 1
            c[1] += elements(key)
        return out


# -- providers ---------------------------------------------------------------------------------
def _ring(size, generator=None):
    from pmpc.mpc.crypten_compat import ring_random

    return ring_random(size, generator)


class ShapeOnly:
    """Plans a query: records every request and hands out junk tuples drawn from a LOCAL generator
    (no communication, no dealer). Each party's junk share is unknown to the other, so every value
    opened during the dry run is still masked; the results are garbage, which a dry run on dummy
    inputs does not need."""

    dry_run = True  # what it serves is junk: a fixed operand's setup need not open anything

    def __init__(self):
        self.requests: list = []
        self.gen = PRG.from_os()  # its own stream: the junk touches no shared or global state

    def _arith(self, size):
        from crypten.mpc.primitives import ArithmeticSharedTensor

        return ArithmeticSharedTensor.from_shares(_ring(size, self.gen), precision=0)

    def _binary(self, size):
        from crypten.mpc.primitives import BinarySharedTensor

        return BinarySharedTensor.from_shares(_ring(size, self.gen))

    def generate_additive_triple(self, size0, size1, op, *args, device=None, **kwargs):
        self.requests.append(request_key("generate_additive_triple", (size0, size1, op) + args, kwargs))
        return self._arith(size0), self._arith(size1), self._arith(_out_size(op, size0, size1, kwargs.items()))

    def square(self, size, device=None):
        self.requests.append(request_key("square", (size,), {}))
        return self._arith(size), self._arith(size)

    def generate_binary_triple(self, size0, size1, device=None):
        self.requests.append(request_key("generate_binary_triple", (size0, size1), {}))
        return self._binary(size0), self._binary(size1), self._binary(torch.broadcast_shapes(size0, size1))

    def wrap_rng(self, size, device=None):
        self.requests.append(request_key("wrap_rng", (size,), {}))
        return self._arith(size), self._arith(size)

    def B2A_rng(self, size, device=None):
        self.requests.append(request_key("B2A_rng", (size,), {}))
        return self._arith(size), self._binary(size)

    def generate_sign(self, size, lane, device=None):
        self.requests.append(request_key("generate_sign", (size, lane), {}))
        return gates.junk_sign(self.gen, size, lane)

    def generate_onehot(self, size, k, device=None):
        self.requests.append(request_key("generate_onehot", (size, k), {}))
        return gates.junk_onehot(self.gen, size, k)

    def generate_cross_bits(self, size, device=None):
        self.requests.append(request_key("generate_cross_bits", (size,), {}))
        return gates.junk_cross_bits(self.gen, size)

    def generate_cross_words(self, size, device=None):
        self.requests.append(request_key("generate_cross_words", (size,), {}))
        return gates.junk_cross_words(self.gen, size)

    def fixed_operand_mask(self, wid, size, device=None):
        # not a tuple of the query: the session's masks are dealt at setup, before any plan
        return self._arith(size)

    def fixed_operand_triple(self, wid, size_x, size_w, device=None):
        self.requests.append(request_key("fixed_operand_triple", (wid, size_x, size_w), {}))
        return self._arith(size_x), self._arith(_out_size("matmul", size_x, size_w, ()))

    def fixed_operand_kv_mask(self, wid, size, start, device=None):
        self.requests.append(request_key("fixed_operand_kv_mask", (wid, size, start), {}))
        return self._arith(size)

    def fixed_operand_kv_triple(self, wid, size_x, size_w, transpose, device=None):
        from pmpc.mpc import fixed_operand

        self.requests.append(request_key("fixed_operand_kv_triple", (wid, size_x, size_w, transpose), {}))
        return self._arith(size_x), self._arith(fixed_operand.kv_out_size(size_x, size_w, transpose))


class Replay:
    """Serves the tuples dealt offline, in plan order; any deviation is an error. ``tuples``: the
    offline phase's :class:`pmpc.mpc.spool.Spool` (a list is spooled first)."""

    def __init__(self, plan: Plan, tuples):
        if not isinstance(tuples, Spool):
            tuples = _spooled(tuples)
        if len(tuples) != len(plan.requests):
            raise PlanMismatch(f"{len(tuples)} tuples dealt for a plan of {len(plan.requests)}")
        self.queue = collections.deque(plan.requests)
        self.tuples = tuples
        self.used = 0

    def _take(self, name, args, kwargs):
        key = request_key(name, args, kwargs)
        if not self.queue:
            raise PlanMismatch(f"the online phase asked for tuple #{self.used + 1} {key}, beyond the plan")
        want = self.queue.popleft()
        if want != key:
            raise PlanMismatch(f"online tuple #{self.used + 1} is {key}; the plan has {want}")
        self.used += 1
        return self.tuples.take()

    def left(self) -> int:
        return len(self.queue)

    def generate_additive_triple(self, size0, size1, op, *args, device=None, **kwargs):
        return self._take("generate_additive_triple", (size0, size1, op) + args, kwargs)

    def square(self, size, device=None):
        return self._take("square", (size,), {})

    def generate_binary_triple(self, size0, size1, device=None):
        return self._take("generate_binary_triple", (size0, size1), {})

    def wrap_rng(self, size, device=None):
        return self._take("wrap_rng", (size,), {})

    def B2A_rng(self, size, device=None):
        return self._take("B2A_rng", (size,), {})

    def generate_sign(self, size, lane, device=None):
        return self._take("generate_sign", (size, lane), {})

    def generate_onehot(self, size, k, device=None):
        return self._take("generate_onehot", (size, k), {})

    def generate_cross_bits(self, size, device=None):
        return self._take("generate_cross_bits", (size,), {})

    def generate_cross_words(self, size, device=None):
        return self._take("generate_cross_words", (size,), {})

    def fixed_operand_triple(self, wid, size_x, size_w, device=None):
        return self._take("fixed_operand_triple", (wid, size_x, size_w), {})

    def fixed_operand_kv_mask(self, wid, size, start, device=None):
        return self._take("fixed_operand_kv_mask", (wid, size, start), {})

    def fixed_operand_kv_triple(self, wid, size_x, size_w, transpose, device=None):
        return self._take("fixed_operand_kv_triple", (wid, size_x, size_w, transpose), {})

    def fixed_operand_mask(self, wid, size, device=None):
        raise PlanMismatch("a weight's mask is dealt at setup, not in the online phase")


# -- the offline phase -------------------------------------------------------------------------
def _call(provider, key):
    name, args, kw = key
    return getattr(provider, name)(*args, **dict(kw))


def _spooled(tuples) -> Spool:
    out = Spool()
    for t in tuples:
        out.put(t)
    return out


def deal(plan: Plan, lo: int, hi: int, mode: str, into: Spool | None = None, chunk_elements: int = 1 << 22) -> Spool:
    """Produce tuples lo..hi of ``plan`` with the real provider of ``mode`` into the spool ``into``
    (a new one if None; a chunk at a time: the party's memory holds one chunk) and return it; both
    computing parties call this in step. ``ttp``: party 0 sends the dealer one batch request per chunk and gets the
    correction terms back in one reply; party 1 draws its shares from the seed it shares with the
    dealer (no traffic). After every chunk the two parties meet (so neither waits on the other
    for longer than one chunk)."""
    from pmpc.mpc.crypten_compat import comm, crypten_provider

    base = crypten_provider()
    rank = comm.get().get_rank()
    into = Spool() if into is None else into
    i = lo
    while i < hi:
        j, size = i, 0
        while j < hi and (j == i or size + elements(plan.requests[j]) <= chunk_elements):
            size += elements(plan.requests[j])
            j += 1
        keys = plan.requests[i:j]
        if mode == "ttp" and rank == 0:
            made = _deal_ttp_batch(base, keys)
        else:
            made = [_call(base, k) for k in keys]
        gates.complete_keys(made)  # FSS keys: party 1 gets their correction words now, offline
        for t in made:
            into.put(t)
        del made
        comm.get().barrier()
        i = j
    return into


def _deal_ttp_batch(base, keys) -> list:
    """Party 0's side of a batch: one request, one reply; then CrypTen's own TTP client code runs
    for each tuple with the dealer's answers fed in order (so both sides draw the same seeded
    randomness in the same order as CrypTen's one-request-per-tuple protocol)."""
    from crypten.mpc.provider.ttp_provider import TTPClient

    from pmpc.mpc.crypten_compat import comm

    c = comm.get()
    c.settle()  # answers still owed come first on the link
    client = TTPClient.get()
    ttp = c.get_ttp_rank()
    reqs = [[TTP_FN[k[0]], _jsonable(k[1]), {n: _jsonable(v) for n, v in k[2]}] for k in keys]
    sizes = [answer_shape(*r) for r in reqs]
    wire.send("dealer request", {"op": "batch", "requests": reqs}, ttp, client.ttp_group)
    wire.recv("dealer reply", ttp, client.ttp_group, check=lambda m: _check_reply(m, sizes))
    flat = torch.empty(sum(math.prod(s) for s in sizes), dtype=torch.long)
    c.broadcast(flat, ttp, client.comm_group)
    parts = collections.deque(t.reshape(s) for t, s in zip(flat.split([math.prod(s) for s in sizes]), sizes))

    def answer(func_name, device, *args, **kwargs):
        return parts.popleft()

    client.ttp_request = answer  # instance attribute: shadows the method for this batch only
    try:
        out = [_call(base, k) for k in keys]
    finally:
        del client.ttp_request
    if parts:
        raise PlanMismatch(f"the dealer sent {len(parts)} more answers than requested")
    return out


# -- the dealer's wire protocol (party 0 <-> dealer; JSON frames of pmpc.mpc.wire) -------------------
# party 0 -> dealer: {"op": "batch", "requests": [[fn, args, kwargs], ...]} | {"op": "tuple",
#   "function": fn, "args": [...], "kwargs": {...}} | {"op": "fixed_mask", "id": weight id,
#   "shape": [rows, cols]} | {"op": "keepalive"} | {"op": "peak"} | {"op": "release"} | {"op": "terminate"};
#   dealer -> party 0: {"shapes": [shape, ...]} | {"shape": shape} | {"id": weight id} | {"peak_rss_mb":
#   MB}, then (not after a mask or a peak) the tuple data itself as one int64 tensor (a broadcast in
#   the dealer-party 0 group).
OPS = ("mul", "matmul", "conv1d", "conv2d", "conv_transpose1d", "conv_transpose2d")  # torch ops a triple may use
MAX_ELEMENTS = 1 << 28  # ring elements in one request or batch (2 GiB of int64): the dealer's allocation bound


def _jsonable(v):
    if isinstance(v, (torch.Size, tuple, list)):
        return [_jsonable(x) for x in v]
    if v is None or isinstance(v, (bool, int, str)):
        return v
    raise TypeError(f"a tuple request cannot carry {type(v).__name__}")


def answer_shape(fn: str, args: list, kw: dict) -> list:
    """The shape of the dealer's answer to one request (what party 0 expects back)."""
    if fn == "additive":
        return list(_out_size(args[2], tuple(args[0]), tuple(args[1]), tuple(kw.items())))
    if fn == "binary":
        return list(torch.broadcast_shapes(tuple(args[0]), tuple(args[1])))
    if fn == "sign":  # party 0's correction words and m share, one row per gate
        return [math.prod(args[0]), gates.answer_width(args[1])]
    if fn == "onehot":  # party 0's one-hot share, one row per lookup
        return [math.prod(args[0]), 1 << args[1]]
    if fn == "fixed":
        return list(_out_size("matmul", tuple(args[1]), tuple(args[2]), ()))
    if fn in ("kv_mask", "kv_triple"):
        from pmpc.mpc import fixed_operand

        return fixed_operand.check_kv_request(fn, args, MAX_ELEMENTS)
    return list(args[0])


def _check_request(r) -> int:
    """One tuple request [fn, args, kwargs] as the dealer accepts it; returns its answer's size."""
    from crypten.mpc.provider.ttp_provider import TTP_FUNCTIONS

    wire.is_list(r, 3, "request")
    if len(r) != 3:
        raise ValueError("a request is [function, args, kwargs]")
    fn, args, kw = r
    if fn in ("fixed", "kv_mask", "kv_triple"):
        from pmpc.mpc import fixed_operand  # loads crypten: the dealer module itself does not

        if kw != {}:
            raise ValueError("a fixed-operand triple takes no keywords")
        n = math.prod(fixed_operand.check_request(args, MAX_ELEMENTS) if fn == "fixed"
                      else fixed_operand.check_kv_request(fn, args, MAX_ELEMENTS))
        if n > MAX_ELEMENTS:
            raise ValueError(f"{fn} answer of {n} elements (at most {MAX_ELEMENTS})")
        return n
    if fn not in TTP_FUNCTIONS and fn not in ("sign", "onehot", "cross_bits", "cross_words"):
        raise ValueError(f"unknown tuple function {str(fn)[:40]!r}")
    wire.is_list(args, 8, "args")
    if type(kw) is not dict:
        raise TypeError(f"kwargs must be an object, got {type(kw).__name__}")
    n_sizes = {"additive": 2, "binary": 2}.get(fn, 1)
    if fn in ("sign", "onehot"):  # [shape, lane bits] / [shape, table bits]
        if len(args) != 2:
            raise ValueError(f"{fn} takes a shape and a bit width")
        wire.is_int(args[1], *((2, 64) if fn == "sign" else (1, gates.MAX_TABLE_BITS)), "a bit width")
    elif len(args) < n_sizes or (fn != "additive" and len(args) != n_sizes):
        raise ValueError(f"{fn} takes {n_sizes} shape(s)")
    for a in args[:n_sizes]:
        wire.is_shape(a, MAX_ELEMENTS)
    if fn == "additive":
        if len(args) < 3 or args[2] not in OPS:
            raise ValueError(f"additive triples are for {', '.join(OPS)}")
        for v in list(args[3:]) + list(kw.values()):
            if type(v) is list:
                for x in wire.is_list(v, 8, "an op argument"):
                    wire.is_int(x, 0, 1 << 16, "an op argument")
            else:
                wire.is_int(v, 0, 1 << 16, "an op argument")
        for k in kw:
            wire.is_str(k, 32, "an op keyword")
    try:
        shape = answer_shape(fn, args, kw)
    except (RuntimeError, TypeError, ValueError, IndexError) as e:
        raise ValueError(f"{fn} on shapes {args[:n_sizes]}: {str(e).splitlines()[0][:80]}") from None
    n = math.prod(shape)
    if n > MAX_ELEMENTS:
        raise ValueError(f"{fn} answer of {n} elements (at most {MAX_ELEMENTS})")
    return n


def _check_message(m) -> None:
    wire.is_dict(m, {"op"}, "dealer request", optional={"requests", "function", "args", "kwargs", "id", "shape"})
    op = m["op"]
    if op in ("keepalive", "peak", "release", "terminate"):
        wire.is_dict(m, {"op"}, op)
    elif op == "fixed_mask":  # a weight's mask for the session (pmpc.mpc.fixed_operand)
        from pmpc.mpc import fixed_operand

        wire.is_dict(m, {"op", "id", "shape"}, op)
        fixed_operand.check_id(m["id"])
        wire.is_shape(m["shape"], MAX_ELEMENTS)
        if len(m["shape"]) != 2:
            raise ValueError("a fixed operand is a matrix")
    elif op == "batch":
        wire.is_dict(m, {"op", "requests"}, op)
        total = sum(_check_request(r) for r in wire.is_list(m["requests"], 1 << 20, "requests"))
        if total > MAX_ELEMENTS:
            raise ValueError(f"a batch of {total} elements (at most {MAX_ELEMENTS})")
    elif op == "tuple":
        wire.is_dict(m, {"op", "function", "args", "kwargs"}, op)
        _check_request([m["function"], m["args"], m["kwargs"]])
    else:
        raise ValueError(f"unknown op {str(op)[:40]!r}")


def _check_reply(m, sizes: list) -> None:
    wire.is_dict(m, {"shapes"}, "dealer reply")
    if m["shapes"] != sizes:
        raise ValueError(f"answer shapes differ from the {len(sizes)} requested")


# Kinds whose dealt part a party uses BEFORE the opening that consumes the tuple: their answer is
# read at once. CrypTen's ``wraps`` subtracts theta_r before it gathers x + r; every other kind
# (Beaver c, squares, AND c, B2A's arithmetic bit, fixed-operand C, sign keys, one-hot vectors)
# is used only after its opening, so its answer is read after that exchange.
AT_ONCE = ("wraps",)


@functools.lru_cache(maxsize=4096)
def _request(func_name: str, args: tuple, kw: tuple) -> tuple:
    """One live tuple request as party 0 sends it: (its frame, the answer's shape, the reply an
    honest dealer sends). A query asks for the same few shapes thousands of times, and encoding
    each afresh cost party 0 tens of microseconds a round; the entry is a function of the
    request's own description only, so another shape or keyword is another entry."""
    args, kw = _jsonable(args), {k: _jsonable(v) for k, v in kw}
    shape = answer_shape(func_name, args, kw)
    frame = wire.encode("dealer request", {"op": "tuple", "function": func_name, "args": args, "kwargs": kw})
    return frame, shape, _reply(tuple(shape))


@functools.lru_cache(maxsize=4096)
def _reply(shape: tuple) -> bytes:
    """The dealer's reply announcing an answer of ``shape``."""
    return wire.encode("dealer reply", {"shape": list(shape)})


def _request_for(func_name: str, args, kwargs) -> tuple:
    try:
        return _request(func_name, tuple(args), tuple(kwargs.items()))
    except TypeError:  # an unhashable argument: encode it afresh
        return _request.__wrapped__(func_name, tuple(args), tuple(kwargs.items()))


def _ttp_request(self, func_name, device, *args, **kwargs):
    """Party 0 asks the dealer for ONE tuple (live ``ttp`` mode, no preprocessing): CrypTen's
    ``TTPClient.ttp_request`` with a JSON frame instead of a pickle, and without its wait. The
    request is queued for the next write on the links; the answer is read into the returned
    tensor after the next exchange between the computing parties — the opening that uses the
    tuple — so the dealer's round trip runs beside the peer round instead of before it
    (:meth:`pmpc.mpc.transport.DirectCommunicator.expect`).
    A failure while reading it is the dealer's, not the other computing party's."""
    from pmpc.mpc.crypten_compat import comm

    c = comm.get()
    ttp = c.get_ttp_rank()
    frame, shape, honest_reply = _request_for(func_name, args, kwargs)
    result = torch.empty(shape, dtype=torch.long)
    with talking_to(ttp):
        # queued, not written: it leaves with this party's next wait on any link (every wait
        # moves every link's queue), i.e. as the opening starts, together with any other
        # request made before it: one write for all of them instead of one each
        wire.send_encoded("dealer request", frame, ttp, flush=False)

    def check(m):
        wire.is_dict(m, {"shape"}, "dealer reply")
        if m["shape"] != shape:
            raise ValueError(f"answer shape {str(m['shape'])[:60]} differs from the requested {shape}")

    def read():
        with talking_to(ttp):
            wire.recv("dealer reply", ttp, self.ttp_group, check=check, known=honest_reply)
            c.recv_dealt(result, ttp)

    c.expect(read)
    if func_name in AT_ONCE:
        c.settle()
    return result


def expect_words(words: torch.Tensor) -> None:
    """Party 1: the correction words of a sign key come from the dealer (the same words party 0
    receives), read into ``words`` after the opening of y + r."""
    from pmpc.mpc.crypten_compat import comm

    c = comm.get()
    ttp = c.get_ttp_rank()

    def read():
        with talking_to(ttp):
            c.recv_dealt(words, ttp)

    c.expect(read)


def install() -> None:
    """Route CrypTen's TTP client through :func:`_ttp_request` (its own pickles its messages)."""
    from crypten.mpc.provider.ttp_provider import TTPClient

    TTPClient._TTPClient__TTPClient.ttp_request = _ttp_request  # CrypTen's name-mangled singleton class


def _send(c, op: str) -> None:
    from crypten.mpc.provider.ttp_provider import TTPClient

    wire.send("dealer request", {"op": op}, c.get_ttp_rank(), TTPClient.get().ttp_group)


def peak_rss_mb() -> float:
    """Party 0 asks the dealer for its peak resident memory so far (MB): reported beside the
    parties' own."""
    from crypten.mpc.provider.ttp_provider import TTPClient

    from pmpc.mpc.crypten_compat import comm

    c = comm.get()
    c.settle()  # answers still owed come first on the link
    _send(c, "peak")
    m = wire.recv("dealer reply", c.get_ttp_rank(), TTPClient.get().ttp_group, check=_check_peak)
    return float(m["peak_rss_mb"])


def _check_peak(m) -> None:
    wire.is_dict(m, {"peak_rss_mb"}, "dealer reply")
    if not isinstance(m["peak_rss_mb"], (int, float)) or not 0 <= m["peak_rss_mb"] < 1 << 40:
        raise ValueError("the dealer's peak memory is not a number of MB")


def keepalive(c=None) -> None:
    """Party 0 tells the dealer it is still busy (the dealer's waits are bounded). ``c``: the
    real communicator (during a solo dry run ``comm.get()`` is a stand-in that sends nothing)."""
    from pmpc.mpc.crypten_compat import comm

    _send(c or comm.get(), "keepalive")


class keepalive_while:
    """``with keepalive_while(every_s): load()`` — party 0 keeps the dealer waiting from a helper
    thread while its main thread does long local work (loading a model) and no communication."""

    def __init__(self, every_s: float):
        self.every_s, self.stop = every_s, threading.Event()
        self.thread = threading.Thread(target=self._run, name="pmpc-keepalive", daemon=True)

    def _run(self):
        while not self.stop.wait(self.every_s):
            keepalive()

    def __enter__(self):
        keepalive()
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join()
        return False


def release() -> None:
    """Party 0 tells the dealer the offline phase is over; the dealer leaves, and party 0 does
    not send it a ``terminate`` at shutdown."""
    from pmpc.mpc.crypten_compat import comm

    c = comm.get()
    c.settle()
    _send(c, "release")
    c.ttp_initialized = False


def terminate() -> None:
    """Party 0 ends the dealer's session at shutdown (CrypTen's own shutdown would pickle it);
    best effort: the dealer may be gone already."""
    from pmpc.mpc.crypten_compat import comm

    c = comm.get()
    if c is None or not getattr(c, "ttp_initialized", False) or c.get_rank() != 0:
        return
    c.ttp_initialized = False
    try:
        _send(c, "terminate")
    except Exception:  # a lost dealer: nothing to end
        pass


# -- the dealer process --------------------------------------------------------------------------
def _words_to_party_1(c, fn: str, answer: torch.Tensor) -> None:
    """A sign key's correction words (common to both keys) go to party 1 as well, straight from
    the dealer: party 1 reads them after its opening, so no party relays them on the critical path."""
    if fn == "sign":
        c.send_dealt(answer[:, :-1].contiguous(), 1)


def serve(fault=None) -> dict:
    """The dealer (rank ``world_size``): answer party 0's requests until it releases or terminates
    the session. CrypTen's ``TTPServer`` draws the tuples; its own loop is not used because it
    ends quietly when a party fails (and unpickles its requests) — here a lost or silent party 0
    is an error naming it, and a malformed request is refused before anything is allocated."""
    from crypten.mpc.provider.ttp_provider import TTPServer

    from pmpc.mpc.crypten_compat import comm
    from pmpc.mpc import fixed_operand  # noqa: F401  (gives the dealer its fixed_mask and fixed methods)

    class Dealer(TTPServer):
        def __init__(self):  # TTPServer.__init__ would enter its own loop
            self.ttp_group = comm.get().ttp_group
            self.comm_group = comm.get().ttp_comm_group
            self.device = "cpu"
            self._setup_generators()

        sign = gates.dealer_sign  # FSS comparison keys
        onehot = gates.dealer_onehot  # table lookups
        cross_bits = gates.dealer_cross_bits  # the exact truncation's wrap bit
        cross_words = gates.dealer_cross_words  # an adder circuit's first AND

    c = comm.get()
    d = Dealer()
    ttp = c.get_ttp_rank()
    stats = {"requests": 0, "batches": 0, "elements_sent": 0, "seconds_busy": 0.0}
    # requests decoded and checked before, by their bytes: a query repeats a few thousand distinct
    # ones (the tuple functions read their arguments and never modify them)
    seen = wire.Memo()
    while True:
        msg = wire.recv("dealer request", 0, d.ttp_group, check=_check_message, memo=seen)
        op = msg["op"]
        if op in ("terminate", "release"):
            stats["ended_by"] = op
            return stats
        if op == "keepalive":
            continue
        if op == "peak":
            wire.send("dealer reply", {"peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024},
                      0, d.ttp_group)
            continue
        t0 = time.perf_counter()
        if op == "fixed_mask":
            d.fixed_mask(msg["id"], msg["shape"])
            wire.send("dealer reply", {"id": msg["id"]}, 0, d.ttp_group)
            stats["masks"] = stats.get("masks", 0) + 1
            stats["seconds_busy"] += time.perf_counter() - t0
            continue
        if op == "batch":
            results = []
            for fn, args, kw in msg["requests"]:
                results.append(getattr(d, fn)(*args, **kw))
                if fault:
                    fault("offline")
            wire.send("dealer reply", {"shapes": [answer_shape(*r) for r in msg["requests"]]}, 0, d.ttp_group)
            flat = torch.cat([r.reshape(-1) for r in results]) if results else torch.empty(0, dtype=torch.long)
            c.broadcast(flat, ttp, d.comm_group)
            for (fn, _, _), r in zip(msg["requests"], results):
                _words_to_party_1(c, fn, r)
            stats["batches"] += 1
            stats["requests"] += len(results)
            stats["elements_sent"] += flat.numel()
        else:  # one tuple (live TTP mode, no preprocessing)
            result = getattr(d, msg["function"])(*msg["args"], **msg["kwargs"])
            # queued: it leaves with the answer itself, in one write
            wire.send_encoded("dealer reply", _reply(tuple(result.shape)), 0, flush=False)
            c.broadcast(result, ttp, d.comm_group)
            _words_to_party_1(c, msg["function"], result)
            stats["requests"] += 1
            stats["elements_sent"] += result.numel()
            if fault:
                fault("offline")
        stats["seconds_busy"] += time.perf_counter() - t0
