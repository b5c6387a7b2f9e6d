"""Throughput of the party's random-word sampler: the AES-128-CTR PRG (pmpc.prg, what every
mask, zero sharing and tuple is drawn from) against the non-cryptographic expansion it replaced
(torch's Mersenne Twister for small draws; numpy's PCG64-DXSM keyed by two Mersenne Twister
words for draws of 4,096 words or more), for small and bulk draws, in 64-bit ring words per
second. One thread; the best of ``--repeats`` timed runs per size (a shared machine's noise is
one-sided).

    python bench/prg_throughput.py [--repeats 5] [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from pmpc.prg import PRG  # noqa: E402

SIZES = (1, 8, 64, 512, 4096, 65_536, 1 << 20, 1 << 23)


def replaced(size: int, gen: torch.Generator) -> torch.Tensor:
    """The expansion the PRG replaced, for comparison only (not cryptographic)."""
    if size < 4096:
        return torch.randint(-(2 ** 63), 2 ** 63 - 1, (size,), generator=gen, dtype=torch.long)
    seed = torch.randint(-(2 ** 63), 2 ** 63 - 1, (2,), generator=gen, dtype=torch.long)
    return torch.from_numpy(np.random.PCG64DXSM(seed.numpy().view(np.uint64)).random_raw(size).view(np.int64))


def rate(fn, size: int, repeats: int, budget_s: float = 0.25) -> float:
    """Words per second: the best of ``repeats`` runs, each as many calls as fit ``budget_s``."""
    best = 0.0
    for _ in range(repeats):
        calls, t0 = 0, time.perf_counter()
        while True:
            fn(size)
            calls += 1
            dt = time.perf_counter() - t0
            if dt > budget_s:
                break
        best = max(best, calls * size / dt)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    torch.set_num_threads(1)
    prg, gen = PRG.from_os(), torch.Generator().manual_seed(int.from_bytes(os.urandom(8), "big") >> 1)
    rows = []
    print("| words per draw | AES-128-CTR (M words/s) | replaced MT/PCG64 (M words/s) | AES / replaced |")
    print("|---:|---:|---:|---:|")
    for n in SIZES:
        a = rate(prg.ring, n, args.repeats)
        r = rate(lambda k: replaced(k, gen), n, args.repeats)
        rows.append({"words": n, "aes_words_per_s": a, "replaced_words_per_s": r})
        print(f"| {n:,} | {a / 1e6:.1f} | {r / 1e6:.1f} | {a / r:.2f} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"rows": rows, "load_avg": os.getloadavg(), "cpus": os.cpu_count()}, f, indent=1)


if __name__ == "__main__":
    main()
