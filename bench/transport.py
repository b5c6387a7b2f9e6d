"""Round latency of the parties' channel: one exchange-and-add of a share between two local
processes (what every opening in a secure op costs), for torch.distributed's gloo all_reduce (the
channel the parties used before the direct transport), the direct transport bare
(``PMPC_TLS=off``) and the direct transport with TLS 1.3 (the default), side by side in one run.

Sizes: 8 B (one ring word), 4.6 KB, 175 KB and 1.6 MB of int64 words (a decode-step opening, a
layer's prefill activation, a large prefill product). Each channel runs in a fresh pair of
processes; per size, ``--warmup`` untimed rounds then ``--rounds`` timed ones (fewer for the
large sizes), each timed on its own; the median, 10th and 90th percentile of the wall time are
reported (party 0's clock), and the process CPU time per round (all threads: gloo's I/O threads
included), which a shared machine's load distorts less than the wall time. Both are timed through
CrypTen's communicator interface (``all_reduce``, wrapped in CrypTen's counting decorator: the
call a secure op makes): the direct transport's communicator, and for gloo
``torch.distributed.all_reduce`` on a copy, as CrypTen's ``DistributedCommunicator`` called it.

    PYTHONPATH=. OMP_NUM_THREADS=1 python bench/transport.py [--rounds 400] [--out results/transport]

Writes ``transport.json`` and ``transport.md`` under ``--out``.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import pathlib
import platform
import statistics
import time

SIZES = {"8 B": 1, "4.6 KB": 576, "175 KB": 21_875, "1.6 MB": 200_000}   # int64 words
CHANNELS = ("gloo", "direct TCP", "direct TLS")


def _rounds_for(words: int, rounds: int) -> int:
    return max(20, min(rounds, rounds * 4096 // max(words, 1)))


def _party(channel: str, rank: int, rdv: str, rounds: int, warmup: int, q) -> None:
    os.environ["OMP_NUM_THREADS"] = "1"
    import torch

    torch.set_num_threads(1)
    from pmpc.mpc.crypten_compat import comm, crypten
    from pmpc.mpc import transport

    crypten.cfg.communicator.verbose = True
    if channel == "gloo":
        import torch.distributed as dist
        from crypten.communicator.communicator import _logging

        dist.init_process_group("gloo", init_method=rdv, rank=rank, world_size=2)

        class Gloo(comm.Communicator):
            BYTES_PER_ELEMENT = 8

            def get_world_size(self):
                return 2

            def get_rank(self):
                return rank

            @_logging
            def all_reduce(self, t):
                out = t.clone()
                dist.all_reduce(out)
                return out

        g = Gloo()
        g.reset_communication_stats()
        exchange = g.all_reduce
    else:
        t = transport.join(rank, 2, rdv, 60.0, tls=channel == "direct TLS")
        c = transport.DirectCommunicator(t, rank, 2, False)
        exchange = c.all_reduce
    out = {}
    for name, words in SIZES.items():
        x = torch.randint(-2 ** 62, 2 ** 62, (words,), dtype=torch.long)
        for _ in range(warmup):
            exchange(x)
        times = []
        cpu0 = time.process_time()
        for _ in range(_rounds_for(words, rounds)):
            t0 = time.perf_counter()
            exchange(x)
            times.append(time.perf_counter() - t0)
        cpu = (time.process_time() - cpu0) / len(times)
        times.sort()
        out[name] = {"bytes": 8 * words, "rounds": len(times), "median_ms": 1e3 * statistics.median(times),
                     "cpu_ms": 1e3 * cpu,
                     "p10_ms": 1e3 * times[len(times) // 10], "p90_ms": 1e3 * times[(9 * len(times)) // 10]}
    if channel == "gloo":
        dist.barrier()
        dist.destroy_process_group()
    else:
        transport.leave()
    q.put((rank, out))


def measure(channel: str, rounds: int, warmup: int) -> dict:
    from pmpc.mpc.parties import free_port

    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    rdv = f"tcp://127.0.0.1:{free_port()}"
    procs = [ctx.Process(target=_party, args=(channel, r, rdv, rounds, warmup, q)) for r in range(2)]
    for p in procs:
        p.start()
    got = dict(q.get(timeout=600) for _ in procs)
    for p in procs:
        p.join(60)
    return got[0]


def markdown(res: dict) -> str:
    lines = ["| message | " + " | ".join(f"{c}: wall ms median (p10-p90); CPU ms" for c in CHANNELS)
             + " | gloo / TLS (wall median) |",
             "|---|" + "---|" * (len(CHANNELS) + 1)]
    for name in SIZES:
        cells = [f"{res[c][name]['median_ms']:.3f} ({res[c][name]['p10_ms']:.3f}-{res[c][name]['p90_ms']:.3f}); "
                 f"{res[c][name]['cpu_ms']:.3f}" for c in CHANNELS]
        ratio = res["gloo"][name]["median_ms"] / res["direct TLS"][name]["median_ms"]
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {ratio:.2f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=400, help="timed rounds at the small sizes (fewer when large)")
    ap.add_argument("--warmup", type=int, default=20)
    ap.add_argument("--out", default="results/transport")
    a = ap.parse_args()
    res = {c: measure(c, a.rounds, a.warmup) for c in CHANNELS}
    meta = {"machine": platform.node(), "cpus": os.cpu_count(), "load_avg_at_end": os.getloadavg(),
            "when_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime()), "rounds": a.rounds, "warmup": a.warmup}
    out = pathlib.Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "transport.json").write_text(json.dumps({"meta": meta, "results": res}, indent=2) + "\n")
    md = markdown(res)
    (out / "transport.md").write_text(md)
    print(md, end="")
    print(f"load average at the end: {meta['load_avg_at_end']}")


if __name__ == "__main__":
    main()
