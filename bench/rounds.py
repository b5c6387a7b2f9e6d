"""Where one decoded token's rounds go, step by step: a protocol's softmax, RMS norm and gated
activation under real 2-party MPC on SmolLM2's decode shapes (9 heads x KEYS keys, hidden 576,
intermediate 1536), with each step's rounds (a round counter around every call; the rounds of
branches run side by side, ``Ops.parallel``, are charged to the step that runs them).

    python bench/rounds.py bolt exact bumblebee crypten     # KEYS=41, REPS=1 by default

CPU ms/call: each party's process time per call (party 0 / party 1), averaged over REPS warm calls.

The engine's own per-scope count of a whole decode (linear layers, RoPE, attention products
included) is ``pmpc bench``'s; tests/test_engine.py holds a decode layer to its round budget.
"""
from __future__ import annotations

import functools
import os
import sys
import threading

import torch

from pmpc.mpc.parties import run_local

STEPS = ("max", "exp_exact", "exp", "reciprocal_times", "denominator_times", "sum_squares", "rsqrt_times", "silu",
         "act_times")


def job(pname: str, keys: int, rank: int, world_size: int):
    import protocols
    from pmpc.mpc import cost
    from pmpc.mpc.crypten_compat import comm
    from pmpc.mpc.crypten_ops import CrypTenOps

    ops = CrypTenOps(cost.Tracker(cost.crypten_stats))
    p = protocols.get(pname)
    rounds = lambda: comm.get().get_communication_stats()["rounds"]  # noqa: E731
    local = threading.local()
    tally: dict = {}

    def wrap(obj, name):
        orig = getattr(obj, name)

        @functools.wraps(orig)
        def step(*a, **k):
            stack = local.__dict__.setdefault("stack", [])
            outer = bool(stack)
            stack.append(name)
            r0 = rounds()
            try:
                return orig(*a, **k)
            finally:
                stack.pop()
                if not outer:  # the outermost step of this thread takes the rounds
                    tally[name] = tally.get(name, 0) + rounds() - r0
        setattr(obj, name, step)

    wrap(ops, "max")
    wrap(ops, "sum_squares")
    for n in STEPS:
        if n not in ("max", "sum_squares") and hasattr(p, n):
            wrap(p, n)
    g = torch.Generator().manual_seed(0)
    scores = ops.share(torch.randn(1, 9, 1, keys, generator=g) * 3, src=0)
    hidden = ops.share(torch.randn(1, 1, 576, generator=g), src=0)
    gate = ops.share(torch.randn(1, 1, 1536, generator=g) * 2, src=0)
    up = ops.share(torch.randn(1, 1, 1536, generator=g), src=0)
    import time

    reps = int(os.environ.get("REPS", "1"))
    out = {}
    for fn, run in (("softmax", lambda: p.softmax(scores, ops)),
                    ("rms_norm", lambda: p.rms_norm(hidden, None, 1e-5, ops)),
                    ("silu(gate) up", lambda: p.act_times("silu", gate, up, ops) if hasattr(p, "act_times")
                     else ops.mul(p.act("silu", gate, ops), up))):
        tally.clear()
        r0 = rounds()
        run()
        out[fn] = (rounds() - r0, dict(tally))
        t = time.process_time()
        for _ in range(reps):  # this party's CPU per call, warm
            run()
        out[fn] += (1e3 * (time.process_time() - t) / reps,)
    return out


def main(names) -> None:
    keys = int(os.environ.get("KEYS", "41"))
    for pname in names:
        both = run_local(functools.partial(job, pname, keys), timeout_s=300, deadline_s=900)
        for fn, (total, steps, cpu0) in both[0].items():
            parts = ", ".join(f"{k} {v}" for k, v in steps.items() if v)
            print(f"{pname:10s} {fn:14s} {total:3d} rounds  ({parts})  CPU ms/call {cpu0:.1f} / {both[1][fn][2]:.1f}")


if __name__ == "__main__":
    main(sys.argv[1:] or ["bolt"])
