"""Parties: start the 2 (or 2 + dealer) processes of a secure job and collect their results.

* :func:`run_local` starts every party as a local process (``forkserver``: each party is a fresh
  fork of a clean server process that already imported torch and crypten — fast and fork-safe)
  and returns each party's return value. Every party joins with a bounded timeout, so a stalled
  peer raises instead of hanging for torch's default 30 minutes; the parent also enforces an
  overall deadline and reports which party failed.
* :func:`run_party` runs ONE party in the current process — the entry point for one party per
  host (``pmpc party --rank R --rendezvous tcp://HOST:PORT``).

A job is a picklable callable ``job(rank, world_size) -> picklable`` (plain Python / numpy
values: returning torch tensors through a queue can crash the parent). With ``inputs``, each
rank's private input is handed to that rank's process ONLY (``job(rank, world_size, input)``):
that is how the client's prompt reaches the client and never the server.
"""
from __future__ import annotations

import multiprocessing as mp
import os
import queue as _queue
import socket
import time
import traceback

from pmpc.errors import UserError

ROLE = {0: "client", 1: "server", 2: "dealer"}


class PartyError(UserError):
    """A party failed, stalled or disagreed; the message names the party."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def role(rank: int) -> str:
    return ROLE.get(rank, f"party{rank}")


def _ctx():
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(["torch", "pmpc.crypten_compat", "pmpc.engine", "protocols"])
    return ctx


def run_party(job, rank: int, world_size: int, rendezvous: str, timeout_s: float = 60.0,
              dealer: str = "local", threads: int | None = None, inp=None, has_input: bool = False):
    """Join the session as ``rank`` and run ``job``. ``dealer``: ``local`` (CrypTen's TFP: party 0
    generates the triples — insecure against party 0) or ``ttp`` (a separate dealer process of
    rank ``world_size``, which only serves triples)."""
    from pmpc import crypten_compat as cc

    if threads:
        import torch

        torch.set_num_threads(threads)
    provider = {"local": "TFP", "ttp": "TTP"}[dealer]
    if dealer == "ttp" and rank == world_size:
        import crypten.mpc.provider.ttp_provider as ttp

        cc.init_party(rank, world_size, rendezvous, timeout_s, provider)  # joins as the TTP rank
        ttp.TTPServer()
        return None
    cc.init_party(rank, world_size, rendezvous, timeout_s, provider)
    try:
        return job(rank, world_size, inp) if has_input else job(rank, world_size)
    finally:
        cc.shutdown_party()


def _entry(job, rank, world_size, rendezvous, timeout_s, dealer, threads, q, has_input, inp):
    try:
        out = run_party(job, rank, world_size, rendezvous, timeout_s, dealer, threads, inp, has_input)
        q.put((rank, "ok", out))
    except BaseException as e:  # report to the parent, then exit non-zero
        msg = str(e).strip().splitlines()
        q.put((rank, "error", f"{type(e).__name__}: {msg[0] if msg else ''}", traceback.format_exc()))
        os._exit(1)


def run_local(job, world_size: int = 2, timeout_s: float = 60.0, deadline_s: float | None = None,
              dealer: str = "local", threads: int | None = 1, host: str = "127.0.0.1",
              inputs: dict | None = None) -> list:
    """Run ``job`` in ``world_size`` local party processes; returns the per-rank results.

    ``timeout_s`` bounds each communication wait inside the parties; ``deadline_s`` (default:
    none) bounds the whole job. Raises :class:`PartyError` naming the first party that failed.
    """
    if world_size != 2:
        raise PartyError(f"pmpc runs 2-party computation; got --parties {world_size}")
    ctx = _ctx()
    q = ctx.Queue()
    rendezvous = f"tcp://{host}:{free_port()}"
    n = world_size + (1 if dealer == "ttp" else 0)
    procs = [ctx.Process(target=_entry, args=(job, r, world_size, rendezvous, timeout_s, dealer, threads, q,
                                              inputs is not None, (inputs or {}).get(r)),
                         name=f"pmpc-{role(r)}", daemon=True) for r in range(n)]
    for p in procs:
        p.start()
    results: dict[int, object] = {}
    t0 = time.monotonic()
    needed = set(range(world_size))
    try:
        while not needed.issubset(results):
            try:
                item = q.get(timeout=0.2)
            except _queue.Empty:
                for r, p in enumerate(procs):
                    if r in results or p.is_alive():
                        continue
                    if r < world_size or p.exitcode not in (0, None):
                        # a party that died without reporting (killed, segfault)
                        try:
                            item = q.get(timeout=1.0)
                        except _queue.Empty:
                            raise PartyError(f"party {r} ({role(r)}) died (exit code {p.exitcode})") from None
                        break
                else:
                    if deadline_s and time.monotonic() - t0 > deadline_s:
                        raise PartyError(f"deadline of {deadline_s:.0f}s passed; parties still running: "
                                         + ", ".join(role(r) for r in sorted(needed - set(results))))
                    continue
            if item[1] == "error":
                raise PartyError(f"party {item[0]} ({role(item[0])}) failed: {item[2]}")
            results[item[0]] = item[2]
        return [results[r] for r in range(world_size)]
    finally:
        for p in procs:
            p.join(timeout=2.0 if not results else 10.0)
            if p.is_alive():
                p.terminate()
                p.join(timeout=2.0)
            if p.is_alive():
                p.kill()
                p.join()
        q.close()
