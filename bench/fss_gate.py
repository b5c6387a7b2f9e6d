"""Wall time, rounds and bytes of ONE secure comparison call by tensor size: the dealer-keyed
DCF gate (pmpc.mpc.gates) against the packed bitwise adder circuit, two local parties on
loopback, ``local`` dealer (keys made live by party 0), party 0's numbers.

    PYTHONPATH=. OMP_NUM_THREADS=1 python bench/fss_gate.py [--sizes 1000,10000,100000,1000000]

Prints a Markdown table and writes results/fss/gate.json. Timing only: not a test."""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import time

import torch


class GateJob:
    def __init__(self, sizes, lanes):
        self.sizes, self.lanes = sizes, lanes

    def __call__(self, rank, world_size):
        from pmpc.mpc.primitives import PRIMITIVES
        from pmpc.mpc.crypten_compat import MPCTensor, comm, lane_ltz
        from pmpc.mpc import gates

        rows = []
        for n in self.sizes:
            x = MPCTensor.from_shares(torch.randint(-2 ** 62, 2 ** 62, (n,)), precision=0)
            for lane in self.lanes:
                for mode in ("dcf", "bitwise"):
                    fn = (lambda: gates.ltz(x, lane, 0)) if mode == "dcf" else (
                        (lambda: lane_ltz(x, lane, 0)) if lane < 64 else (lambda: _ring_bitwise(x)))
                    fn()  # warm
                    comm.get().barrier()
                    s0 = comm.get().get_communication_stats()
                    PRIMITIVES.reset()
                    t0 = time.perf_counter()
                    fn()
                    dt = time.perf_counter() - t0
                    s1 = comm.get().get_communication_stats()
                    rows.append({"n": n, "lane": lane, "mode": mode, "seconds": dt,
                                 "rounds": s1["rounds"] - s0["rounds"], "bytes": s1["bytes"] - s0["bytes"],
                                 "key_bytes": PRIMITIVES.counts.get("key_bytes", 0)})
        return rows if rank == 0 else None


def _ring_bitwise(x):
    from pmpc.mpc.crypten_ops import CrypTenOps

    return CrypTenOps().bits(x, [63], lift=False)[0]


def main():
    from pmpc.mpc.parties import run_local

    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="1000,10000,100000,1000000")
    ap.add_argument("--lanes", default="32,64")
    ap.add_argument("--out", default="results/fss/gate.json")
    a = ap.parse_args()
    sizes = [int(s) for s in a.sizes.split(",")]
    lanes = [int(s) for s in a.lanes.split(",")]
    rows = run_local(GateJob(sizes, lanes), timeout_s=600, deadline_s=3000)[0]
    print("| elements | lane | mode | party 0 s | rounds | online MB | key MB |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['n']:,} | {r['lane']} | {r['mode']} | {r['seconds']:.3f} | {r['rounds']} | "
              f"{r['bytes'] / 1e6:.2f} | {r['key_bytes'] / 1e6:.2f} |")
    pathlib.Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    pathlib.Path(a.out).write_text(json.dumps({"rows": rows, "load": os.getloadavg()}, indent=1))


if __name__ == "__main__":
    main()
