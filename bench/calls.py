"""Wall time, CPU, rounds and bytes of single protocol calls under real 2PC, at a decode step's
or a prefill's shapes, side by side under settings given as environment variables: two local
parties on loopback (and the ``ttp`` dealer process with ``--dealer ttp``), SmolLM2's widths.

    PYTHONPATH=. OMP_NUM_THREADS=1 python bench/calls.py --protocol bolt --dealer ttp \
        --rows 50 --tokens 1 --keys 80 --env PMPC_MALLOC=off --env PMPC_MALLOC=on --repeat 2

``--rows`` sequences of ``--tokens`` tokens each (a decode step: tokens 1; a packed prefill:
rows 1, tokens N), attention over ``--keys`` keys. Each function is called once to warm up, then
``--reps`` times; every setting runs in its own session, the settings alternating ``--repeat``
times so the machine's drift falls on all of them alike. Prints a Markdown table (wall ms a
call, each computing party's CPU ms, rounds, online and dealt MB) and, with ``--json``, writes
the rows. Timing only: not a test."""
from __future__ import annotations

import argparse
import functools
import json
import pathlib
import time

import torch

FUNCTIONS = ("softmax", "rms_norm", "silu_times")


def _job(protocol: str, rows: int, tokens: int, keys: int, reps: int, rank: int, world_size: int):
    import protocols
    from pmpc.mpc import cost
    from pmpc.mpc.crypten_compat import comm
    from pmpc.mpc.crypten_ops import CrypTenOps

    ops = CrypTenOps(cost.Tracker(cost.crypten_stats))
    p = protocols.get(protocol)
    g = torch.Generator().manual_seed(0)
    scores = ops.share(torch.randn(rows * tokens, 9, 1, keys, generator=g) * 3, src=0)
    hidden = ops.share(torch.randn(rows, tokens, 576, generator=g), src=0)
    gate = ops.share(torch.randn(rows, tokens, 1536, generator=g) * 2, src=0)
    up = ops.share(torch.randn(rows, tokens, 1536, generator=g), src=0)
    calls = {"softmax": lambda: p.softmax(scores, ops),
             "rms_norm": lambda: p.rms_norm(hidden, None, 1e-5, ops),
             "silu_times": lambda: p.act_times("silu", gate, up, ops)}
    out = {}
    for name in FUNCTIONS:
        calls[name]()
        s0 = dict(comm.get().get_communication_stats())
        cpu, wall = time.process_time(), time.perf_counter()
        for _ in range(reps):
            calls[name]()
        s1 = dict(comm.get().get_communication_stats())
        out[name] = {"wall_ms": (time.perf_counter() - wall) / reps * 1e3,
                     "cpu_ms": (time.process_time() - cpu) / reps * 1e3,
                     "rounds": (s1["rounds"] - s0["rounds"]) / reps,
                     "online_mb": (s1["bytes"] - s0["bytes"]) / reps / 1e6,
                     "dealt_mb": (s1.get("dealer_bytes", 0) - s0.get("dealer_bytes", 0)) / reps / 1e6}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--protocol", default="bolt")
    ap.add_argument("--dealer", default="ttp", choices=("ttp", "local"))
    ap.add_argument("--rows", type=int, default=50)
    ap.add_argument("--tokens", type=int, default=1)
    ap.add_argument("--keys", type=int, default=80)
    ap.add_argument("--reps", type=int, default=4)
    ap.add_argument("--repeat", type=int, default=2, help="rounds of the alternation")
    ap.add_argument("--env", action="append", default=[],
                    help="a setting, NAME=VALUE[,NAME=VALUE...] (repeatable); none: the defaults")
    ap.add_argument("--json", type=pathlib.Path)
    a = ap.parse_args()
    from pmpc.mpc.parties import run_local

    settings = a.env or [""]
    job = functools.partial(_job, a.protocol, a.rows, a.tokens, a.keys, a.reps)
    rows = []
    for i in range(a.repeat):
        for setting in settings:
            env = dict(kv.split("=", 1) for kv in setting.split(",") if kv)
            res = run_local(job, timeout_s=300, deadline_s=3600, dealer=a.dealer, env=env)
            for fn in FUNCTIONS:
                r0, r1 = res[0][fn], res[1][fn]
                rows.append({"setting": setting or "defaults", "run": i + 1, "function": fn,
                             "wall_ms": r0["wall_ms"], "cpu_ms": [r0["cpu_ms"], r1["cpu_ms"]], "rounds": r0["rounds"],
                             "online_mb": r0["online_mb"], "dealt_mb": r0["dealt_mb"] + r1["dealt_mb"]})
    print(f"{a.protocol}, dealer {a.dealer}, {a.rows} rows x {a.tokens} tokens, {a.keys} keys, {a.reps} calls each\n")
    print("| setting | run | function | wall ms | CPU ms party 0 / 1 | rounds | online MB | dealt MB |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['setting']} | {r['run']} | {r['function']} | {r['wall_ms']:.1f} | {r['cpu_ms'][0]:.1f} / "
              f"{r['cpu_ms'][1]:.1f} | {r['rounds']:.0f} | {r['online_mb']:.2f} | {r['dealt_mb']:.2f} |")
    if a.json:
        a.json.parent.mkdir(parents=True, exist_ok=True)
        a.json.write_text(json.dumps({"protocol": a.protocol, "dealer": a.dealer, "rows": a.rows, "tokens": a.tokens,
                                      "keys": a.keys, "reps": a.reps, "calls": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
