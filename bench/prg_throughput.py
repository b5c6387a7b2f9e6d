"""Throughput of the party's random-word sampler: the AES-128-CTR PRG (pmpc.mpc.prg, what every
mask, zero sharing and tuple is drawn from) against the non-cryptographic expansion it replaced
(torch's Mersenne Twister for small draws; numpy's PCG64-DXSM keyed by two Mersenne Twister
words for draws of 4,096 words or more), for small and bulk draws, in 64-bit ring words per
second. One thread; the best of ``--repeats`` timed runs per size (a shared machine's noise is
one-sided).

``--in-run MODEL`` instead times the sampler inside a real 2-party generation (``pmpc run``'s
job, the prompt "What is the capital of France?", ``-n 2``): every call of
``pmpc.mpc.crypten_compat.ring_random`` in each party is timed, and its share of the party's time is
printed. It uses only names both the PRG runtime and the one it replaced have, so running it with
``PYTHONPATH`` at an older checkout measures the replaced sampler the same way.

    PYTHONPATH=. python bench/prg_throughput.py [--repeats 5] [--json out.json]
    PYTHONPATH=. python bench/prg_throughput.py --in-run smollm2 [--protocol bolt] [--dealer local]
"""
from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np
import torch

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


def timed_party(cfg, rank, world_size, inp=None):
    """``pmpc run``'s party job with every ring_random call timed."""
    from pmpc.mpc import crypten_compat as cc
    from pmpc.mpc import secure

    inner, acc = cc.ring_random, {"seconds": 0.0, "words": 0, "calls": 0}

    def ring_random(size, generator=None, bits=64):
        t0 = time.perf_counter()
        out = inner(size, generator, bits)
        acc["seconds"] += time.perf_counter() - t0
        acc["words"] += out.numel()
        acc["calls"] += 1
        return out

    cc.ring_random = ring_random  # CrypTen's samplers and pmpc's draws look it up by this name
    t0 = time.perf_counter()
    out = secure.generate_party(cfg, rank, world_size, inp)
    return {"sampler": acc, "party_seconds": time.perf_counter() - t0,
            "online_seconds": sum(out["phases"][p]["seconds"] for p in ("prefill", "decode"))}


def in_run(model: str, protocol: str, dealer: str) -> dict:
    import functools

    from cli.run import _inputs
    from pmpc.mpc import parties
    from pmpc.mpc.secure import ClientInput, GenConfig

    cfg = GenConfig(model=model, protocol=protocol, max_new_tokens=2)
    _, _, ids, attn = _inputs(model, "What is the capital of France?", None, False, False)
    res = parties.run_local(functools.partial(timed_party, cfg), dealer=dealer, timeout_s=600,
                            inputs={0: ClientInput(ids, attn)})
    print("| party | sampler calls | M words | sampler s | party s | sampler share |")
    print("|---|---:|---:|---:|---:|---:|")
    for rank, r in enumerate(res):
        a = r["sampler"]
        print(f"| {parties.who(rank)} | {a['calls']:,} | {a['words'] / 1e6:.1f} | {a['seconds']:.2f} | "
              f"{r['party_seconds']:.1f} | {a['seconds'] / r['party_seconds']:.1%} |")
    return {"model": model, "protocol": protocol, "dealer": dealer, "parties": res}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--json", default=None)
    ap.add_argument("--in-run", default=None, metavar="MODEL")
    ap.add_argument("--protocol", default="bolt")
    ap.add_argument("--dealer", default="local")
    args = ap.parse_args()
    if args.in_run:
        out = in_run(args.in_run, args.protocol, args.dealer)
        if args.json:
            with open(args.json, "w") as f:
                json.dump({**out, "load_avg": os.getloadavg()}, f, indent=1)
        return
    from pmpc.mpc.prg import PRG

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
