"""CPU seconds per decoded token of each process of a secure generation (client, server, and the
dealer with ``ttp``), measured with ``time.process_time`` around each ``Engine.decode`` call.

    OMP_NUM_THREADS=1 python results/cpu/measure.py [PROTOCOL] [NEW_TOKENS] [local|ttp]

smollm2, public weights, a 37-token prompt (token ids 100..136). The dealer never runs the
engine: a thread in it samples (wall time, process time) every 20 ms, and its CPU during each
decode call is read off those samples at the client's wall-clock bounds of the call.
``PROFILE=DIR``: also write cProfile statistics (process time) of every decode call, and of the
dealer's whole session, to DIR/prof-<rank|dealer>.pstats (profiling inflates the seconds).
"""
from __future__ import annotations

import cProfile
import functools
import json
import os
import sys
import tempfile
import threading
import time

from pmpc.mpc import dealer as _dealer
from pmpc.mpc import parties, secure

PROFILE = os.environ.get("PROFILE")
SAMPLES = os.environ.get("DEALER_SAMPLES") or os.path.join(tempfile.gettempdir(), f"pmpc-dealer-cpu-{os.getpid()}.json")
os.environ["DEALER_SAMPLES"] = SAMPLES  # the party processes (forkserver children) read it at import


def _sampled_serve(serve):
    @functools.wraps(serve)
    def wrapped(*args, **kwargs):
        samples, stop = [], threading.Event()

        def sample():
            while not stop.is_set():
                samples.append((time.time(), time.process_time()))
                stop.wait(0.02)

        th = threading.Thread(target=sample, daemon=True)
        th.start()
        pr = cProfile.Profile(time.process_time) if PROFILE else None
        if pr:
            pr.enable()
        try:
            return serve(*args, **kwargs)
        finally:
            if pr:
                pr.disable()
                pr.dump_stats(os.path.join(PROFILE, "prof-dealer.pstats"))
            stop.set()
            th.join()
            with open(os.environ["DEALER_SAMPLES"], "w") as f:
                json.dump(samples, f)

    return wrapped


_dealer.serve = _sampled_serve(_dealer.serve)


def job(cfg, rank, world_size, inp=None):
    from pmpc import engine

    pr = cProfile.Profile(time.process_time) if PROFILE else None
    cpu, walls = [], []
    decode = engine.Engine.decode

    def timed(self, *a, **k):
        t, w = time.process_time(), time.time()
        if pr:
            pr.enable()
        try:
            return decode(self, *a, **k)
        finally:
            if pr:
                pr.disable()
            cpu.append(time.process_time() - t)
            walls.append((w, time.time()))

    engine.Engine.decode = timed
    try:
        out = secure.generate_party(cfg, rank, world_size, inp)
        out.update(cpu=cpu, walls=walls)
        return out
    finally:
        if pr:
            pr.dump_stats(os.path.join(PROFILE, f"prof-{rank}.pstats"))


def _at(samples, t):
    for (t0, c0), (t1, c1) in zip(samples, samples[1:]):
        if t0 <= t <= t1:
            return c0 + (c1 - c0) * ((t - t0) / (t1 - t0) if t1 > t0 else 0.0)
    return samples[-1][1] if t > samples[-1][0] else samples[0][1]


def main():
    import torch

    proto = sys.argv[1] if len(sys.argv) > 1 else "bolt"
    n = int(sys.argv[2]) if len(sys.argv) > 2 else 5
    dealer = sys.argv[3] if len(sys.argv) > 3 else "ttp"
    cfg = secure.GenConfig(model="smollm2", protocol=proto, max_new_tokens=n)
    ids = torch.tensor([list(range(100, 137))])
    secure.check_dealer(cfg, dealer)
    res = parties.run_local(functools.partial(job, cfg), timeout_s=600, dealer=dealer, threads=1,
                            inputs={0: secure.ClientInput(ids=ids, attn=torch.ones_like(ids))})
    r0 = next(r for r in res if r and r.get("rank") == 0)
    mean = lambda xs: sum(xs) / len(xs)  # noqa: E731
    for r in sorted((r for r in res if r and "cpu" in r), key=lambda r: r["rank"]):
        print(f"party {r['rank']} decode CPU s/token {mean(r['cpu']):.3f}  per token {[round(c, 3) for c in r['cpu']]}")
    if dealer == "ttp":
        with open(SAMPLES) as f:
            s = json.load(f)
        os.unlink(SAMPLES)
        dc = [_at(s, b) - _at(s, a) for a, b in r0["walls"]]
        print(f"dealer  decode CPU s/token {mean(dc):.3f}  per token {[round(c, 3) for c in dc]}")
    d = r0["phases"]["decode"]
    print(f"decode wall {d['seconds'] / d['tokens']:.2f} s/token, {d['rounds'] / d['tokens']:.0f} rounds/token, "
          f"{d['bytes'] / d['tokens'] / 1e6:.1f} MB/token; load average {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
