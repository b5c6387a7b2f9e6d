"""Helpers for tests/test_protocols.py: float64 references, input sampling, an op-counting
backend, and the MPC jobs (module level so the forkserver parties can import them)."""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

import protocols
from pmpc.mpc import cost
from pmpc.ops import TorchOps

SOFTMAX_ROW = 16  # softmax specs are stated for rows of this length

REFS = {
    "gelu": F.gelu,
    "gelu_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "silu": F.silu,
    "tanh": torch.tanh,
    "exp": torch.exp,
    "reciprocal": lambda x: 1 / x,
    "rsqrt": torch.rsqrt,
    "softmax": lambda x: torch.softmax(x, dim=-1),
}


def sample(fn: str, domain, n: int, gen: torch.Generator) -> torch.Tensor:
    """n inputs on the domain (float64): uniform, log-uniform for positive ranges over >2 decades,
    rows of ``SOFTMAX_ROW`` for softmax; the end points are always included."""
    lo, hi = (float(v) for v in domain)
    if fn == "softmax":
        rows = max(1, n // SOFTMAX_ROW)
        return lo + (hi - lo) * torch.rand(rows, SOFTMAX_ROW, generator=gen, dtype=torch.float64)
    if lo > 0 and hi / lo > 100:
        x = torch.exp(math.log(lo) + (math.log(hi) - math.log(lo)) * torch.rand(n, generator=gen, dtype=torch.float64))
    else:
        x = lo + (hi - lo) * torch.rand(n, generator=gen, dtype=torch.float64)
    x[0], x[-1] = lo, hi
    return x


def evaluate(proto, fn: str, x, ops):
    return proto.softmax(x, ops) if fn == "softmax" else getattr(proto, fn)(x, ops)


def error(spec, y, ref) -> float:
    """Max error of y against ref in the spec's measure (absolute or relative)."""
    d = (torch.as_tensor(y, dtype=torch.float64) - ref).abs()
    if spec.max_abs_err is not None:
        return float(d.max())
    return float((d / ref.abs()).max())


def bound(spec) -> float:
    return spec.max_abs_err if spec.max_abs_err is not None else spec.max_rel_err


class CountingOps(TorchOps):
    """TorchOps that counts compared elements (ltz and A2B bit extraction) and multiplied
    elements — the per-element comparison/multiplication counts a spec states."""

    def __init__(self):
        super().__init__()
        self.comparisons = 0
        self.multiplications = 0

    def ltz(self, x, *a, **k):
        self.comparisons += x.numel()
        return super().ltz(x, *a, **k)

    def ltz_int(self, x, *a, **k):
        self.comparisons += x.numel()
        return super().ltz_int(x, *a, **k)

    def bits(self, x, positions, **kw):
        self.comparisons += x.numel()  # one A2B conversion per element, whatever the bits
        return super().bits(x, positions, **kw)

    def mul(self, x, y):
        out = super().mul(x, y)
        self.multiplications += out.numel()
        return out

    def mul_many(self, pairs, *a, **k):
        out = super().mul_many(pairs, *a, **k)
        self.multiplications += sum(o.numel() for o in out)
        return out

    def combine(self, products=(), terms=(), *a, **k):
        out = super().combine(products, terms, *a, **k)
        self.multiplications += len(products) * out.numel()
        return out


def spec_items(names=None):
    """(protocol name, function name, spec) for every stated spec."""
    for pname in names or protocols.names():
        p = protocols.get(pname)
        for fn, spec in p.specs.items():
            yield pname, fn, spec


# -- MPC jobs ------------------------------------------------------------------------------------
class FunctionsJob:
    """Evaluate many (protocol, function, input) cases under MPC in ONE session; the client
    returns the revealed outputs as numpy arrays."""

    def __init__(self, cases: dict):
        self.cases = {k: np.asarray(v, dtype=np.float64) for k, v in cases.items()}

    def __call__(self, rank, world_size):
        from pmpc.mpc.crypten_ops import CrypTenOps

        ops = CrypTenOps(cost.Tracker(cost.crypten_stats))
        out = {}
        for (pname, fn), arr in self.cases.items():
            p = protocols.get(pname)
            x = ops.share(torch.from_numpy(arr), src=0)
            with ops.scope(f"{pname}.{fn}"):
                y = evaluate(p, fn, x, ops)
            y = ops.reveal(y, dst=0)  # collective: every party calls it, only the client gets values
            out[(pname, fn)] = y.double().numpy() if rank == 0 else None
        return {"out": out, "cost": ops.tracker.snapshot()} if rank == 0 else None


class ForwardBytesJob:
    """One tiny-model prefill per protocol in ONE session; returns total bytes/rounds per protocol."""

    def __init__(self, model: str, names, ids):
        self.model, self.names, self.ids = model, list(names), np.asarray(ids)

    def __call__(self, rank, world_size):
        from pmpc.engine import Engine
        from pmpc.models import load_hf, spec_from_hf
        from pmpc.mpc.crypten_ops import CrypTenOps

        hf, _ = load_hf(self.model)
        spec = spec_from_hf(hf, self.model)
        ids = torch.from_numpy(self.ids)
        res = {}
        for name in self.names:
            ops = CrypTenOps(cost.Tracker(cost.crypten_stats))
            eng = Engine(spec, name, ops)
            with ops.scope("forward"):
                logits = ops.reveal(eng.prefill(ids, use_cache=False), dst=0)  # collective
            tot = ops.tracker.total()
            res[name] = {"bytes": tot.bytes, "rounds": tot.rounds,
                         "logits": logits.double().numpy() if rank == 0 else None}
        return res


class CompareJob:
    """Lane and whole-ring comparisons and ``sum_squares`` of the same shared values in ONE
    session; the client gets the revealed results and the cost of each."""

    def __init__(self, x, coarse_x, rows):
        self.x, self.coarse_x, self.rows = (np.asarray(v, dtype=np.float64) for v in (x, coarse_x, rows))

    def __call__(self, rank, world_size):
        from pmpc.mpc.crypten_ops import CrypTenOps

        ops = CrypTenOps(cost.Tracker(cost.crypten_stats))
        x = ops.share(torch.from_numpy(self.x), src=0)
        xc = ops.share(torch.from_numpy(self.coarse_x), src=0)
        r = ops.share(torch.from_numpy(self.rows), src=0)
        got = {}
        for name, fn in [("ring", lambda: ops.ltz(x)), ("lane32", lambda: ops.ltz(x, bound=2 ** 15)),
                         ("lane32_int", lambda: ops.ltz_int(x, bound=2 ** 15)),
                         ("lane16_coarse", lambda: ops.ltz(xc, bound=2 ** 7, ulp=2 ** -8)),
                         ("sum_squares", lambda: ops.sum_squares(r))]:
            with ops.scope(name):
                y = fn()
            got[name] = ops.reveal(y, dst=0)
            got[name] = got[name].double().numpy() if rank == 0 else None
        return {"out": got, "cost": ops.tracker.snapshot()} if rank == 0 else None


def b2a_opening_job(rank, world_size):
    """Three secret bits through ``b2a_bits``: the opened word the server receives, and the
    arithmetic result (revealed to the client)."""
    from crypten.mpc.primitives.binary import BinarySharedTensor

    from pmpc.mpc.crypten_compat import b2a_bits
    from tests.engine_jobs import Recorder

    bits = torch.tensor([1, 0, 1])
    xb = BinarySharedTensor(bits, src=0)
    rec = Recorder() if rank == 1 else None
    out = b2a_bits(xb).get_plain_text(dst=0)
    if rank == 1:
        return {"opened": torch.cat([g.to(torch.int64) for g in rec.got]).numpy()}
    return {"bits": out.numpy()}


def truncation_job(rank, world_size):
    """16 M secret products 4096 x 1: how many come out wrong by more than one unit; and the
    largest error (units) of dividing secret ring integers by public integers that are not powers
    of two, by one int and elementwise by an int tensor."""
    from crypten.mpc.primitives.arithmetic import ArithmeticSharedTensor

    from pmpc.mpc.crypten_compat import crypten

    n = 16_000_000
    x = crypten.cryptensor(torch.full((n,), 4096.0), src=0)
    y = crypten.cryptensor(torch.ones(n), src=0)
    z = (x * y).get_plain_text(dst=0)
    g = torch.Generator().manual_seed(1)
    v = torch.randint(-2 ** 61, 2 ** 61, (1_000_000,), generator=g)
    d = torch.randint(1, 1000, v.shape, generator=g)
    r = torch.randint(-2 ** 63, 2 ** 63 - 1, v.shape, generator=g)   # uniform shares: v - r and r
    errs = []
    for div in (7, d):
        s = ArithmeticSharedTensor.from_shares(v - r if rank == 0 else r.clone(), precision=0)
        got = s.div_(div).reveal()
        errs.append(int((got - torch.div(v, div, rounding_mode="floor")).abs().max()))
    return (int(((z - 4096.0).abs() > 1.0).sum()), errs) if rank == 0 else None


def zero_sharing_job(rank, world_size):
    """Each party's shares of a bulk and a small arithmetic and binary zero sharing, returned to
    the test (which plays both parties' trusted observer)."""
    from crypten.mpc.primitives import ArithmeticSharedTensor, BinarySharedTensor

    return {"arith": [ArithmeticSharedTensor.PRZS((n,)).share.numpy() for n in (100_000, 10)],
            "bin": [BinarySharedTensor.PRZS((n,)).share.numpy() for n in (100_000, 10)]}


def sleep_job(rank, world_size):
    """Writes this party's pid to $PMPC_TEST_PIDDIR, then idles (a launcher-death test kills the
    launcher meanwhile)."""
    import os
    import pathlib
    import time

    pathlib.Path(os.environ["PMPC_TEST_PIDDIR"], f"{rank}.pid").write_text(str(os.getpid()))
    time.sleep(120)


def negative_divisor_job(rank, world_size):
    """Secret values divided by public integers of either sign (CrypTen allows negative ones): ring
    integers by a negative int and elementwise by an int tensor of both signs, the largest error in
    units; fixed-point values through ``MPCTensor.div``; and a zero divisor, which must refuse."""
    from crypten.mpc.primitives.arithmetic import ArithmeticSharedTensor

    from pmpc.mpc.crypten_compat import crypten

    g = torch.Generator().manual_seed(2)
    v = torch.randint(-2 ** 40, 2 ** 40, (100_000,), generator=g)
    d = torch.randint(1, 1000, v.shape, generator=g) * (1 - 2 * torch.randint(0, 2, v.shape, generator=g))
    r = torch.randint(-2 ** 63, 2 ** 63 - 1, v.shape, generator=g)   # uniform shares: v - r and r
    errs = []
    for div in (-7, -1, d):
        s = ArithmeticSharedTensor.from_shares(v - r if rank == 0 else r.clone(), precision=0)
        got = s.div_(div).reveal()
        errs.append(float((got.double() - v.double() / torch.as_tensor(div).double()).abs().max()))
    x = torch.tensor([[1.5, -2.25], [30.0, -0.5]])
    fixed = crypten.cryptensor(x, src=0).div(torch.tensor([-20, 30])).get_plain_text()
    s = ArithmeticSharedTensor.from_shares(r[:4].clone(), precision=0)
    try:
        s.div_(torch.tensor([3, 0, -3, 1]))
        zero = "divided"
    except ValueError as e:
        zero = str(e)
    return {"errs": errs, "fixed": (fixed - x / torch.tensor([-20, 30])).abs().max().item(), "zero": zero}


def dropout_job(rank, world_size):
    """CrypTen's dropout in training mode on secret ones: the revealed values, where each party drew
    its public mask from its own copy of the "global" stream (different masks would reveal garbage)."""
    from pmpc.mpc.crypten_compat import crypten

    x = crypten.cryptensor(torch.ones(2000), src=0)
    flat = x.dropout(0.25, training=True).get_plain_text()
    y = crypten.cryptensor(torch.ones(8, 40, 3), src=0)
    feat = y._feature_dropout(0.5, training=True).get_plain_text()
    return {"flat": flat.numpy(), "feature": feat.numpy()}


def parallel_job(rank, world_size):
    """Three independent branches under ``ops.parallel`` (a lane comparison, a product, two
    chained products) against the same ops run one after the other: their revealed values and
    the rounds each way."""
    from pmpc.mpc.crypten_ops import CrypTenOps
    from pmpc.mpc.crypten_compat import comm

    ops = CrypTenOps(cost.Tracker(cost.crypten_stats))
    rounds = lambda: comm.get().get_communication_stats()["rounds"]  # noqa: E731
    xs = torch.linspace(-3.0, 3.0, 4000)
    x = ops.share(xs, src=0)
    fns = [lambda: ops.ltz(x, bound=2.0 ** 14), lambda: ops.mul(x, x), lambda: ops.mul(ops.mul(x, x), x)]
    r0 = rounds()
    seq = [f() for f in fns]
    r1 = rounds()
    par = ops.parallel(*fns)
    r2 = rounds()
    seq, par = [ops.reveal(v) for v in seq], [ops.reveal(v) for v in par]
    return {"seq_rounds": r1 - r0, "par_rounds": r2 - r1, "x": xs.numpy(),
            "seq": [v.double().numpy() for v in seq], "par": [v.double().numpy() for v in par]}


class ActTimesJob:
    """A protocol's ``act_times(name, x, u)`` under MPC (revealed to the client)."""

    def __init__(self, pname, name, x, u):
        self.pname, self.name, self.x, self.u = pname, name, np.asarray(x), np.asarray(u)

    def __call__(self, rank, world_size):
        from pmpc.mpc.crypten_ops import CrypTenOps

        ops = CrypTenOps(cost.Tracker(cost.crypten_stats))
        p = protocols.get(self.pname)
        y = p.act_times(self.name, ops.share(torch.from_numpy(self.x), src=0),
                        ops.share(torch.from_numpy(self.u), src=0), ops)
        y = ops.reveal(y, dst=0)
        return y.double().numpy() if rank == 0 else None


def max_job(rank, world_size):
    """``ops.max`` under MPC on a decode-like row set (its plan: one-round gates) and a
    prefill-like one (the adder-circuit plan): the plans, the revealed maxima, the inputs."""
    from pmpc.mpc.crypten_ops import CrypTenOps

    ops = CrypTenOps(cost.Tracker(cost.crypten_stats))
    g = torch.Generator().manual_seed(7)
    out = {}
    for name, shape in (("decode", (1, 9, 1, 41)), ("prefill", (1, 9, 37, 37))):
        x = torch.round(torch.randn(*shape, generator=g, dtype=torch.float64) * 4 * 2 ** 16) / 2 ** 16
        x[..., 3] = x[..., 5]  # a tie
        y = ops.reveal(ops.max(ops.share(x, src=0)), dst=0)
        out[name] = {"x": x.numpy(), "max": y.double().numpy() if rank == 0 else None,
                     "plan": ops.max_plan(math.prod(shape[:-1]), shape[-1])}
    return out if rank == 0 else None


def lean_beaver_job(rank, world_size):
    """The same products through CrypTen's own Beaver code and through pmpc's share-level one,
    each from the same generator states (so the same triples and masks): the shares must be
    identical, bit for bit, and the revealed products right."""
    import crypten.mpc.primitives.beaver as beaver
    from crypten.mpc.primitives.arithmetic import ArithmeticSharedTensor

    from pmpc.mpc import crypten_compat as cc

    lean = getattr(beaver, "__beaver_protocol")
    original = lean.crypten_original
    g = torch.Generator().manual_seed(5)
    cases = [("mul", (3, 4), (3, 4)), ("mul", (2, 1, 5), (2, 7, 5)), ("matmul", (1, 6), (6, 3)),
             ("matmul", (2, 3, 4), (2, 4, 5))]
    gens = [gen for d in cc.crypten.generators.values() for gen in d.values()]
    same, right = [], []
    for op, sx, sy in cases:
        vx, vy = torch.randint(-2 ** 20, 2 ** 20, sx, generator=g), torch.randint(-2 ** 20, 2 ** 20, sy, generator=g)
        rx, ry = torch.randint(-2 ** 62, 2 ** 62, sx, generator=g), torch.randint(-2 ** 62, 2 ** 62, sy, generator=g)
        x = ArithmeticSharedTensor.from_shares(vx - rx if rank == 0 else rx, precision=0)
        y = ArithmeticSharedTensor.from_shares(vy - ry if rank == 0 else ry, precision=0)
        states = [gen.get_state() for gen in gens]
        z0 = original(op, x, y).share.clone()
        for gen, st in zip(gens, states):
            gen.set_state(st)
        z1 = lean(op, x, y)
        same.append(torch.equal(z0, z1.share))
        right.append(torch.equal(z1.reveal(), getattr(torch, op)(vx, vy)))
    return {"same": same, "right": right}


def affinity_job(rank, world_size):
    """The cores this party may run on."""
    import os

    return sorted(os.sched_getaffinity(0))


def heap_job(rank, world_size):
    """Whether a fresh 24 MiB block comes from the heap (not a mapping of its own) in this party,
    and whether freeing it hands the memory back to the kernel (glibc's ``mallinfo2``)."""
    import ctypes

    class Info(ctypes.Structure):
        _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                                   "fsmblks", "uordblks", "fordblks", "keepcost")]

    libc = ctypes.CDLL(None)
    libc.mallinfo2.restype = Info
    libc.malloc.restype = ctypes.c_void_p
    libc.free.argtypes = [ctypes.c_void_p]
    before = libc.mallinfo2()
    block = libc.malloc(24 << 20)
    during = libc.mallinfo2()
    libc.free(block)
    after = libc.mallinfo2()
    return {"mapped": during.hblks > before.hblks,
            "returned": after.arena < during.arena or after.hblkhd < during.hblkhd}
