"""Independent computations in shared rounds: :func:`parallel` runs a few branches of protocol code
so that their openings travel together, one exchange a round for all of them.

Why: a round costs the same whether it opens one value or a thousand (CPU per message, a network
round trip), and CrypTen opens each product, truncation and comparison on its own. Two branches
that do not depend on each other — a comparison's adder circuit and the polynomial's powers of
the same input; a truncation and a table lookup — then cost the SUM of their rounds. Run under
:func:`parallel` they cost the MAX.

How: each branch runs on a worker thread (kept for the next call), but never two at once: the
coordinator (the calling thread) lets them run one after the other, in their given order, each
until it asks for an opening (CrypTen's ``all_reduce``, or ``all_gather`` for what each party
holds apart) or returns. A planning dry run (``--preprocess``) goes through the same phases, so
its plan lists the tuples in the online order. When every live branch waits, their openings go
out as ONE message (one round on the cost counters, bytes as the sum), each branch gets its own
reply back, and the next phase starts in the same order. So all local work — including every
draw from the random streams the parties or the dealer share — happens in an order both parties
reproduce exactly (the code and the shapes are the same at both), and each party's k-th merged
message matches the peer's. Threads are only the means to suspend a branch mid-call; nothing runs
concurrently.

Other peer calls inside a branch (rare: none of the online ops makes one) run on the spot, in the
same deterministic order at both parties: correct, only not merged. Deferred dealt messages
(:meth:`pmpc.mpc.transport.DirectCommunicator.expect`, ``ride``) keep their order: riders leave
behind the merged message, deferred readers run after it.
"""
from __future__ import annotations

import threading
import timeit

_TLS = threading.local()


def _encodings_per_thread() -> None:
    """CrypTen's Beaver step sets its operands' encoder scales to 1 AROUND its opening
    (``beaver.IgnoreEncodings``) and puts them back after: a branch parked inside that window
    would show another branch the operand (the same object, when both multiply the same value)
    with scale 1. Here each window is recorded per thread, closed while its branch is parked and
    reopened when it resumes, so every branch sees its operands' true scales while it runs."""
    from crypten.mpc.primitives import beaver

    base = beaver.IgnoreEncodings
    if getattr(base, "_pmpc_per_thread", False):
        return

    class IgnoreEncodings(base):
        _pmpc_per_thread = True

        def __enter__(self):
            _TLS.__dict__.setdefault("windows", []).append(self)
            return super().__enter__()

        def __exit__(self, *exc):
            _TLS.windows.remove(self)
            return super().__exit__(*exc)

    beaver.IgnoreEncodings = IgnoreEncodings


def _close_windows() -> list:
    """Put back the true scales of this thread's open windows (its branch is about to park)."""
    ws = list(getattr(_TLS, "windows", ()))
    for w in reversed(ws):
        for i, t in enumerate(w.list_of_tensors):
            t.encoder._scale = w.encodings_cache[i]
    return ws


def _reopen_windows(ws) -> None:
    """Scale 1 again inside the windows (the branch resumes where it parked)."""
    for w in ws:
        for t in w.list_of_tensors:
            t.encoder._scale = 1


class _Branch:
    def __init__(self, fn, worker):
        self.fn = fn
        self.go, self.stopped = worker.go, worker.stopped
        self.pending = None      # (tensors, op, batched) while waiting for an opening
        self.reply = None
        self.done = False
        self.result = None
        self.error: BaseException | None = None
        self.abort = False


class _Worker:
    """A daemon thread that runs one branch at a time when told to, kept for the next call (a
    thread's start costs more CPU than the round a branch saves)."""

    def __init__(self):
        self.go, self.stopped = threading.Event(), threading.Event()
        self.branch: _Branch | None = None
        threading.Thread(target=self._run, daemon=True, name="pmpc-branch").start()

    def _run(self) -> None:
        while True:
            self.go.wait()
            self.go.clear()
            b = self.branch
            _TLS.branch = b
            try:
                if not b.abort:
                    b.result = b.fn()
            except BaseException as e:  # noqa: BLE001 - handed to the caller
                b.error = e
            finally:
                _TLS.branch = None
                b.done = True
                self.stopped.set()


_POOL: list = []


def _reduce_op(op):
    from torch.distributed import ReduceOp

    return ReduceOp.SUM if op is None else op


_GATHER = object()  # the op of a parked ``all_gather``: the reply is both parties' tensors, by rank


def _park(br: _Branch, xs: list, op, batched: bool):
    """Park this branch's opening until the coordinator's merged exchange brings its reply."""
    br.pending = (xs, op, batched)
    windows = _close_windows()
    br.stopped.set()
    br.go.wait()
    br.go.clear()
    _reopen_windows(windows)
    if br.abort:
        raise RuntimeError("pmpc: a parallel branch was abandoned (another branch failed)")
    out = br.reply
    br.reply = None
    return out


def _all_reduce(comm, original):
    """The communicator's ``all_reduce`` while branches run: inside a branch it parks the opening
    until the coordinator sends every branch's together; elsewhere the original."""

    def all_reduce(input, op=None, batched=False):
        br = getattr(_TLS, "branch", None)
        if br is None:
            return original(input, op=op, batched=batched)
        out = _park(br, list(input) if batched else [input], _reduce_op(op), batched)
        return out if batched else out[0]

    return all_reduce


def _all_gather(comm, original):
    """The same for ``all_gather`` (the gates' one-round openings of words and bits that each
    party holds apart: :func:`pmpc.mpc.gates.cross_and`, ``cross_and_words``)."""

    def all_gather(tensor):
        br = getattr(_TLS, "branch", None)
        if br is None:
            return original(tensor)
        return _park(br, [tensor], _GATHER, False)

    return all_gather


def _exchange_merged(comm, branches, original, original_gather) -> None:
    """ONE exchange for the parked openings of ``branches`` (in order), counted as one round.
    A communicator without direct links (a planning dry run's stand-in, which answers at once)
    answers each branch's opening in the same order."""
    import crypten

    from pmpc.mpc.transport import DirectCommunicator, _combine

    if not isinstance(comm, DirectCommunicator):
        for b in branches:
            xs, op, _ = b.pending
            b.reply = original_gather(xs[0]) if op is _GATHER else original(xs, op=op, batched=True)
            b.pending = None
        return
    flat = [t for b in branches for t in b.pending[0]]
    tic = timeit.default_timer()
    theirs = comm._exchange(flat)
    if crypten.cfg.communicator.verbose:
        comm._log_communication(sum(2 * t.nelement() for t in flat))
        comm._log_communication_time(timeit.default_timer() - tic)
    o = 0
    for b in branches:
        xs, op, _ = b.pending
        if op is _GATHER:
            x, y = xs[0], theirs[o]
            b.reply = [x.clone(), y] if comm.get_rank() == 0 else [y, x.clone()]
        else:
            b.reply = [_combine(x, y, op) for x, y in zip(xs, theirs[o:o + len(xs)])]
        o += len(xs)
        b.pending = None
    comm.settle()  # the dealt messages deferred to after this exchange, in the order expected


def parallel(fns) -> list:
    """Run the callables ``fns`` (no arguments) with their openings merged round by round; returns
    their results in order. Exceptions: the first branch's error is raised once all have stopped."""
    from pmpc.mpc.crypten_compat import comm as comm_mod

    fns = list(fns)
    if len(fns) <= 1 or getattr(_TLS, "branch", None) is not None:
        return [f() for f in fns]  # nested: the enclosing branch already shares its rounds
    comm = comm_mod.get()
    _encodings_per_thread()
    while len(_POOL) < len(fns):
        _POOL.append(_Worker())
    workers = _POOL[:len(fns)]
    branches = [_Branch(f, w) for f, w in zip(fns, workers)]
    for w, b in zip(workers, branches):
        w.branch = b
    original, original_gather = comm.all_reduce, comm.all_gather
    # whatever stood on the instance before (a test's or a tool's wrapper) is put back after
    saved = {name: comm.__dict__.get(name) for name in ("all_reduce", "all_gather")}
    comm.all_reduce = _all_reduce(comm, original)
    comm.all_gather = _all_gather(comm, original_gather)
    try:
        live = list(branches)
        while live:
            for b in live:  # one phase: each branch runs until it parks an opening or ends
                b.stopped.clear()
                b.go.set()
                b.stopped.wait()
            live = [b for b in live if not b.done]
            if any(b.error is not None for b in branches):
                break
            if live:
                _exchange_merged(comm, live, original, original_gather)
    finally:
        for name, fn in saved.items():
            if fn is None:
                comm.__dict__.pop(name, None)
            else:
                setattr(comm, name, fn)
        for b in branches:  # a failure: wake the parked ones to unwind before their workers serve again
            if not b.done:
                b.abort = True
                b.stopped.clear()
                b.go.set()
                b.stopped.wait(5)
    for b in branches:
        if b.error is not None:
            raise b.error
    return [b.result for b in branches]
