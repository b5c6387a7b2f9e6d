"""Dealer modes and the offline/online split of a secure query.

Every secure multiplication, comparison and share conversion consumes correlated randomness
("tuples": Beaver triples for products, squares, binary AND triples, B2A bits) from a provider.
Two dealer modes (named in every output):

* ``local`` — CrypTen's trusted-first-party provider (TFP): party 0 (the client) draws every
  tuple in plaintext and shares it with pseudo-random zero sharings. Fast, and no offline traffic,
  but the client knows every mask, so it is NOT secure against party 0. Use it to measure the
  online phase only.
* ``ttp`` — a third process or host (rank ``world_size``, the *dealer*) draws the tuples; party 1
  derives its shares from a seed it shares with the dealer and party 0 receives the correction
  terms. Secure against one semi-honest computing party if the dealer colludes with neither.

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
   with the two computing parties kept in step; the dealer then leaves the session.
3. **online** — the query runs against a :class:`Replay` provider that serves the stored tuples
   in order; it talks to nobody but the other computing party, so its time, rounds and bytes are
   the online phase alone.
"""
from __future__ import annotations

import collections
import dataclasses
import hashlib
import math
import time

import torch

from pmpc.prg import PRG

MODES = ("local", "ttp")
PROVIDER = {"local": "TFP", "ttp": "TTP"}

TRUST = {
    "local": "party 0 (the client) generates every Beaver triple in plaintext: secure against a "
             "semi-honest server only; NOT secure against the client. Online-phase cost only.",
    "ttp": "a third, non-colluding dealer process generates the triples: secure against one "
           "semi-honest computing party if the dealer colludes with neither.",
}

KINDS = ("generate_additive_triple", "square", "generate_binary_triple", "wrap_rng", "B2A_rng")
SHORT = {"generate_additive_triple": "triple", "square": "square", "generate_binary_triple": "and",
         "wrap_rng": "wrap", "B2A_rng": "b2a"}
TTP_FN = {"generate_additive_triple": "additive", "square": "square", "generate_binary_triple": "binary",
          "wrap_rng": "wraps", "B2A_rng": "B2A"}
RELEASE = "pmpc-release"       # party 0 -> dealer: the offline phase is over, leave the session
KEEPALIVE = "pmpc-keepalive"   # party 0 -> dealer: still planning, keep waiting
BATCH = "pmpc-batch"           # party 0 -> dealer: produce these tuples in order


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
    a = torch.empty(s0, dtype=torch.float32, device="meta")
    b = torch.empty(s1, dtype=torch.float32, device="meta")
    return tuple(getattr(torch, op)(a, b, **dict(kw)).shape)


def elements(key) -> int:
    """Ring elements of one tuple (a party's share), for the plan's size."""
    name, args, kw = key
    n = lambda s: math.prod(s) if s else 1  # noqa: E731
    if name == "generate_additive_triple":
        return n(args[0]) + n(args[1]) + n(_out_size(args[2], args[0], args[1], kw))
    if name == "generate_binary_triple":
        return n(args[0]) + n(args[1]) + n(torch.broadcast_shapes(args[0], args[1]))
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
    from pmpc.crypten_compat import ring_random

    return ring_random(size, generator)


class ShapeOnly:
    """Plans a query: records every request and hands out junk tuples drawn from a LOCAL generator
    (no communication, no dealer). Each party's junk share is unknown to the other, so every value
    opened during the dry run is still masked; the results are garbage, which a dry run on dummy
    inputs does not need."""

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


class Replay:
    """Serves the tuples dealt offline, in plan order; any deviation is an error."""

    def __init__(self, plan: Plan, tuples: list):
        if len(tuples) != len(plan.requests):
            raise PlanMismatch(f"{len(tuples)} tuples dealt for a plan of {len(plan.requests)}")
        self.queue = collections.deque(zip(plan.requests, tuples))
        self.used = 0

    def _take(self, name, args, kwargs):
        key = request_key(name, args, kwargs)
        if not self.queue:
            raise PlanMismatch(f"the online phase asked for tuple #{self.used + 1} {key}, beyond the plan")
        want, t = self.queue.popleft()
        if want != key:
            raise PlanMismatch(f"online tuple #{self.used + 1} is {key}; the plan has {want}")
        self.used += 1
        return t

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


# -- the offline phase -------------------------------------------------------------------------
def _call(provider, key):
    name, args, kw = key
    return getattr(provider, name)(*args, **dict(kw))


def deal(plan: Plan, lo: int, hi: int, mode: str, chunk_elements: int = 1 << 22) -> list:
    """Produce tuples lo..hi of ``plan`` with the real provider of ``mode``; both computing parties
    call this in step. ``ttp``: party 0 sends the dealer one batch request per chunk and gets the
    correction terms back in one reply; party 1 draws its shares from the seed it shares with the
    dealer (no traffic). After every chunk the two parties meet (so neither waits on the other
    for longer than one chunk)."""
    from pmpc.crypten_compat import comm, crypten_provider

    base = crypten_provider()
    rank = comm.get().get_rank()
    out = []
    i = lo
    while i < hi:
        j, size = i, 0
        while j < hi and (j == i or size + elements(plan.requests[j]) <= chunk_elements):
            size += elements(plan.requests[j])
            j += 1
        keys = plan.requests[i:j]
        if mode == "ttp" and rank == 0:
            out += _deal_ttp_batch(base, keys)
        else:
            out += [_call(base, k) for k in keys]
        comm.get().barrier()
        i = j
    return out


def _deal_ttp_batch(base, keys) -> list:
    """Party 0's side of a batch: one request, one reply; then CrypTen's own TTP client code runs
    for each tuple with the dealer's answers fed in order (so both sides draw the same seeded
    randomness in the same order as CrypTen's one-request-per-tuple protocol)."""
    from crypten.mpc.provider.ttp_provider import TTPClient

    from pmpc.crypten_compat import comm

    c = comm.get()
    client = TTPClient.get()
    ttp = c.get_ttp_rank()
    reqs = [(TTP_FN[k[0]], k[1], k[2]) for k in keys]
    c.send_obj((BATCH, reqs), ttp, client.ttp_group)
    sizes = c.recv_obj(ttp, client.ttp_group)
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


def blame_dealer_in_requests() -> None:
    """In live ``ttp`` mode CrypTen's client asks the dealer for each tuple in the middle of the
    query: a failure there is the dealer's, not the other computing party's (idempotent)."""
    from crypten.mpc.provider.ttp_provider import TTPClient

    from pmpc import parties
    from pmpc.crypten_compat import comm

    inner = TTPClient._TTPClient__TTPClient  # CrypTen's name-mangled singleton class
    if getattr(inner.ttp_request, "_pmpc", False):
        return
    orig = inner.ttp_request

    def ttp_request(self, *args, **kwargs):
        with parties.talking_to(comm.get().get_ttp_rank()):
            return orig(self, *args, **kwargs)

    ttp_request._pmpc = True
    inner.ttp_request = ttp_request


def keepalive(c=None) -> None:
    """Party 0 tells the dealer it is still busy (the dealer's waits are bounded). ``c``: the
    real communicator (during a solo dry run ``comm.get()`` is a stand-in that sends nothing)."""
    from crypten.mpc.provider.ttp_provider import TTPClient

    from pmpc.crypten_compat import comm

    c = c or comm.get()
    c.send_obj(KEEPALIVE, c.get_ttp_rank(), TTPClient.get().ttp_group)


class keepalive_while:
    """``with keepalive_while(every_s): load()`` — party 0 keeps the dealer waiting from a helper
    thread while its main thread does long local work (loading a model) and no communication."""

    def __init__(self, every_s: float):
        import threading

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
    not send it CrypTen's ``terminate`` at shutdown."""
    from crypten.mpc.provider.ttp_provider import TTPClient

    from pmpc.crypten_compat import comm

    c = comm.get()
    c.send_obj(RELEASE, c.get_ttp_rank(), TTPClient.get().ttp_group)
    c.ttp_initialized = False


# -- the dealer process --------------------------------------------------------------------------
def serve(fault=None) -> dict:
    """The dealer (rank ``world_size``): answer party 0's requests until it releases or terminates
    the session. CrypTen's ``TTPServer`` draws the tuples; its own loop is not used because it
    ends quietly when a party fails — here a lost or silent party 0 is an error naming it."""
    from crypten.mpc.provider.ttp_provider import TTP_FUNCTIONS, TTPServer

    from pmpc.crypten_compat import comm

    class Dealer(TTPServer):
        def __init__(self):  # TTPServer.__init__ would enter its own loop
            self.ttp_group = comm.get().ttp_group
            self.comm_group = comm.get().ttp_comm_group
            self.device = "cpu"
            self._setup_generators()

    c = comm.get()
    d = Dealer()
    ttp = c.get_ttp_rank()
    stats = {"requests": 0, "batches": 0, "elements_sent": 0, "seconds_busy": 0.0}
    while True:
        msg = c.recv_obj(0, d.ttp_group)
        if msg == "terminate" or msg == RELEASE:
            stats["ended_by"] = "release" if msg == RELEASE else "terminate"
            return stats
        if msg == KEEPALIVE:
            continue
        t0 = time.perf_counter()
        if isinstance(msg, tuple) and msg and msg[0] == BATCH:
            results = []
            for fn, args, kw in msg[1]:
                if fn not in TTP_FUNCTIONS:
                    raise ValueError(f"dealer: unknown request {fn!r}")
                results.append(getattr(d, fn)(*args, **dict(kw)).reshape(-1))
                if fault:
                    fault("offline")
            c.send_obj(_shapes(msg[1], results), 0, d.ttp_group)
            flat = torch.cat(results) if results else torch.empty(0, dtype=torch.long)
            c.broadcast(flat, ttp, d.comm_group)
            stats["batches"] += 1
            stats["requests"] += len(results)
            stats["elements_sent"] += flat.numel()
        else:  # CrypTen's one-tuple request (live TTP mode, no preprocessing)
            fn = msg["function"]
            if fn not in TTP_FUNCTIONS:
                raise ValueError(f"dealer: unknown request {fn!r}")
            d.device = msg["device"]
            result = getattr(d, fn)(*msg["args"], **msg["kwargs"])
            c.send_obj(result.size(), 0, d.ttp_group)
            c.broadcast(result, ttp, d.comm_group)
            stats["requests"] += 1
            stats["elements_sent"] += result.numel()
            if fault:
                fault("offline")
        stats["seconds_busy"] += time.perf_counter() - t0


def _shapes(reqs, flat_results):
    """The shape of each answer, as the client expects it (the dealer flattened them)."""
    out = []
    for (fn, args, kw), r in zip(reqs, flat_results):
        if fn == "additive":
            out.append(_out_size(args[2], args[0], args[1], kw))
        elif fn == "binary":
            out.append(tuple(torch.broadcast_shapes(args[0], args[1])))
        else:
            out.append(tuple(args[0]))
        if math.prod(out[-1]) != r.numel():
            raise PlanMismatch(f"dealer: answer of {r.numel()} elements for shape {out[-1]}")
    return out
