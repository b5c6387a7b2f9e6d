"""Party jobs for tests/test_fss.py: the one-round FSS sign gate under real 2-party runs."""
from __future__ import annotations

import contextlib
import random

import numpy as np
import torch


class SignJob:
    """Shares ring integers ``values`` (int64) from party 0, runs the sign gate on each
    ``(lane, drop)`` case — live from the session's dealer, or dealt ahead (``preprocess``: a
    solo dry run plans the key requests, :func:`pmpc.mpc.dealer.deal` makes them, a Replay serves
    them) — and returns per party: its shares of the input, the revealed 0/1 results, the rounds
    of each case, what it saw opened (y^) and the first key it used (root seed and mask share).
    The torch/numpy/random global generators are reseeded to 0 first: keys must not follow them."""

    def __init__(self, values, cases, preprocess: bool = False, dealer: str = "local", lookup=None,
                 bitwise: bool = False):
        self.values = np.asarray(values, dtype=np.int64)
        self.cases, self.preprocess, self.dealer = list(cases), preprocess, dealer
        self.lookup = lookup  # (k, indices [G, n], tables [G, 2^k]): also one lookup call
        self.bitwise = bitwise  # the packed adder circuit (crypten_compat.lane_ltz) instead of the gate

    def _ltz(self, gates):
        from pmpc.mpc import crypten_compat

        return crypten_compat.lane_ltz if self.bitwise else gates.ltz

    def _run(self, x, d, gates):
        out = [self._ltz(gates)(x, lane, drop) for lane, drop in self.cases]
        if d is not None:
            out.append(gates.lookup(d, self.lookup[0], self.lookup[2]))
        return out

    def __call__(self, rank, world_size):
        from crypten.mpc.primitives.arithmetic import ArithmeticSharedTensor

        from pmpc.mpc import dealer
        from pmpc.mpc.crypten_compat import MPCTensor, comm, solo_dry_run, use_provider
        from pmpc.mpc import gates

        torch.manual_seed(0)
        np.random.seed(0)
        random.seed(0)
        v = torch.from_numpy(self.values)
        a = ArithmeticSharedTensor(v if rank == 0 else None, size=v.shape, precision=0, src=0)
        x = MPCTensor.from_shares(a.share, precision=0)
        d = None
        if self.lookup is not None:
            idx = torch.from_numpy(np.asarray(self.lookup[1], dtype=np.int64))
            d = MPCTensor.from_shares(ArithmeticSharedTensor(idx if rank == 0 else None, size=idx.shape,
                                                             precision=0, src=0).share, precision=0)
        seen, keys = [], []
        evaluate = gates.evaluate

        def spy(party, key, yhat):
            seen.append(yhat.copy())
            keys.append((key.seed[:4].copy(), key.r[:4].copy()))
            return evaluate(party, key, yhat)

        gates.evaluate = spy
        provider = None
        if self.preprocess:
            rec = dealer.ShapeOnly()
            with solo_dry_run(), use_provider(rec):
                self._run(MPCTensor.from_shares(torch.zeros_like(a.share), precision=0),
                          None if d is None else MPCTensor.from_shares(torch.zeros_like(d._tensor.share), precision=0),
                          gates)
            plan = dealer.Plan(rec.requests, {"all": 0})
            provider = dealer.Replay(plan, dealer.deal(plan, 0, len(plan.requests), self.dealer))
            if self.dealer == "ttp" and rank == 0:
                dealer.release()
            comm.get().barrier()
            seen.clear(), keys.clear()
        outs, rounds = [], []
        for lane, drop in self.cases:
            r0 = comm.get().get_communication_stats()["rounds"]
            if provider is not None:
                with use_provider(provider):
                    y = self._ltz(gates)(x, lane, drop)
            else:
                y = self._ltz(gates)(x, lane, drop)
            rounds.append(comm.get().get_communication_stats()["rounds"] - r0)
            outs.append(y._tensor.reveal().numpy())
        looked = None
        if d is not None:
            with use_provider(provider) if provider is not None else contextlib.nullcontext():
                looked = gates.lookup(d, self.lookup[0], self.lookup[2])._tensor.reveal().numpy()
        gates.evaluate = evaluate
        return {"lookup": looked, "share": a.share.numpy(), "out": outs, "rounds": rounds, "seen": seen, "keys": keys}


class OpsCompareJob:
    """``CrypTenOps`` comparisons (whole ring and a 32-bit lane) on shared floats under the
    comparison mode this party's environment selects; revealed results and rounds."""

    def __init__(self, x):
        self.x = np.asarray(x, dtype=np.float64)

    def __call__(self, rank, world_size):
        from pmpc.mpc import cost
        from pmpc.mpc.primitives import PRIMITIVES
        from pmpc.mpc.crypten_ops import CrypTenOps

        ops = CrypTenOps(cost.Tracker(cost.crypten_stats))
        x = ops.share(torch.from_numpy(self.x), src=0)
        PRIMITIVES.reset()
        got = {}
        for name, fn in [("ring", lambda: ops.ltz_int(x)), ("lane32", lambda: ops.ltz_int(x, bound=2 ** 15))]:
            with ops.scope(name):
                y = fn()
            got[name] = y._tensor.reveal().numpy()
        return {"out": got, "cost": ops.tracker.snapshot(), "primitives": PRIMITIVES.snapshot()}


class SliceLookupJob:
    """``CrypTenOps.slice_lookup`` of the shared fixed-point values ``x`` (bits [lo, lo + k) of
    their encoding into ``table``), live from the session's dealer or dealt ahead
    (``preprocess``, as :class:`SignJob`); each party returns the result's ring integers, its
    rounds and its primitive counts."""

    def __init__(self, x, lo: int, k: int, table, preprocess: bool = False, dealer: str = "local"):
        self.x, self.lo, self.k, self.table = np.asarray(x, dtype=np.float64), lo, k, list(table)
        self.preprocess, self.dealer = preprocess, dealer

    def __call__(self, rank, world_size):
        from pmpc.mpc import cost, dealer
        from pmpc.mpc.crypten_compat import comm, solo_dry_run, use_provider
        from pmpc.mpc.crypten_ops import CrypTenOps
        from pmpc.mpc.primitives import PRIMITIVES

        ops = CrypTenOps(cost.Tracker(cost.crypten_stats))
        x = ops.share(torch.from_numpy(self.x), src=0)
        provider = None
        if self.preprocess:
            rec = dealer.ShapeOnly()
            with solo_dry_run(), use_provider(rec):
                ops.slice_lookup(x * 0, self.lo, self.k, self.table)
            plan = dealer.Plan(rec.requests, {"all": 0})
            provider = dealer.Replay(plan, dealer.deal(plan, 0, len(plan.requests), self.dealer))
            if self.dealer == "ttp" and rank == 0:
                dealer.release()
            comm.get().barrier()
        PRIMITIVES.reset()
        r0 = comm.get().get_communication_stats()["rounds"]
        with use_provider(provider) if provider is not None else contextlib.nullcontext():
            y = ops.slice_lookup(x, self.lo, self.k, self.table)
        rounds = comm.get().get_communication_stats()["rounds"] - r0
        got = y._tensor.reveal().numpy()
        return {"out": got, "rounds": rounds, "primitives": PRIMITIVES.snapshot()}


class CrossAndJob:
    """``gates.cross_and`` of party 0's bits ``a`` and party 1's bits ``b`` from the session's
    dealer; each party returns the bits it received from the other (the opening) and the
    revealed product."""

    def __init__(self, a, b, words: bool = False):
        self.a, self.b = np.asarray(a, dtype=np.int64), np.asarray(b, dtype=np.int64)
        self.words = words  # gates.cross_and_words: XOR shares of a & b on whole words

    def __call__(self, rank, world_size):
        from crypten.mpc.primitives.arithmetic import ArithmeticSharedTensor

        from pmpc.mpc import gates
        from pmpc.mpc.crypten_compat import comm

        c = comm.get()
        seen = []
        gather = c.all_gather

        def spy(t):
            out = gather(t)
            seen.append(out[1 - rank].clone())
            return out

        c.all_gather = spy
        r0 = c.get_communication_stats()["rounds"]
        mine = torch.from_numpy(self.a if rank == 0 else self.b)
        out = gates.cross_and_words(mine) if self.words else gates.cross_and(mine)
        rounds = c.get_communication_stats()["rounds"] - r0
        c.all_gather = gather
        if self.words:
            from crypten.mpc.primitives.binary import BinarySharedTensor

            got = BinarySharedTensor.from_shares(out).reveal().numpy()
            return {"seen": seen[0].numpy(), "out": got, "rounds": rounds}
        got = ArithmeticSharedTensor.from_shares(out, precision=0).reveal().numpy()
        n = self.a.size
        return {"seen": gates._unpack_bits(seen[0], n).numpy(), "out": got, "rounds": rounds}


class RingBitsJob:
    """``crypten_compat.ring_bits`` (the pruned bit-plane A2B) of ring integers ``values`` shared
    from party 0, at each set of ``positions``: each party's input share, the revealed bits and
    the rounds of each call."""

    def __init__(self, values, position_sets):
        self.values, self.position_sets = np.asarray(values, dtype=np.int64), [list(p) for p in position_sets]

    def __call__(self, rank, world_size):
        from crypten.mpc.primitives.arithmetic import ArithmeticSharedTensor

        from pmpc.mpc.crypten_compat import MPCTensor, comm, ring_bits

        v = torch.from_numpy(self.values)
        a = ArithmeticSharedTensor(v if rank == 0 else None, size=v.shape, precision=0, src=0)
        x = MPCTensor.from_shares(a.share, precision=0)
        outs, rounds = [], []
        for pos in self.position_sets:
            r0 = comm.get().get_communication_stats()["rounds"]
            b = ring_bits(x, pos)
            rounds.append(comm.get().get_communication_stats()["rounds"] - r0)
            outs.append(b.reveal().numpy())
        return {"share": a.share.numpy(), "out": outs, "rounds": rounds}
