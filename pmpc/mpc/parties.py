"""Parties: start the 2 (or 2 + dealer) processes of a secure job and collect their results.

* :func:`run_local` starts every party as a local process (``forkserver``: each party is a fresh
  fork of a clean server process that already imported torch and crypten — fast and fork-safe)
  and returns each party's return value. Every party joins with a bounded timeout, so a stalled
  peer raises instead of hanging for torch's default 30 minutes; the parent also enforces an
  overall deadline and reports which party failed.
* :func:`run_party` runs ONE party in the current process — the entry point for one party per
  host (``pmpc party --rank R --rendezvous tcp://HOST:PORT --psk-file FILE``). With
  ``dealer="ttp"`` rank ``world_size`` is the dealer (:func:`pmpc.mpc.dealer.serve`).
* :func:`join_from_env` joins the current process as the party that CrypTen's launcher variables
  (``RANK``, ``WORLD_SIZE``, ``RENDEZVOUS``) name: code written for ``crypten.init()`` runs on pmpc.

A job is a picklable callable ``job(rank, world_size) -> picklable`` (plain Python / numpy
values: returning torch tensors through a queue can crash the parent). With ``inputs``, each
rank's private input is handed to that rank's process ONLY (``job(rank, world_size, input)``):
that is how the client's prompt reaches the client and never the server.

Failures. A party whose peer dies sees its connection close at once; a party whose peer stalls
gives up after ``timeout_s``. Either way it raises :class:`PartyError` naming the peer it lost
(``party 1 (server) ...``). :func:`run_local` also knows which process died or went silent and
names that one first. Fault injection for tests and drills: ``PMPC_FAULT=role:point:mode``
(``role`` client|server|dealer, ``point`` join|startup|plan|offline|prefill|decode, ``mode``
kill|stall), read by each party process (:func:`fault_point`); ``PMPC_FAULT_LOG=path`` appends
the time each fault struck.
"""
from __future__ import annotations

# crypten (through pmpc.mpc.crypten_compat / crypten_ops) is imported inside the functions that run
# in a party: the launcher, the CLI and a machine without crypten import this module without it.

import contextlib
import ctypes
import dataclasses
import datetime
import faulthandler
import multiprocessing as mp
import os
import queue as _queue
import signal
import socket
import sys
import tempfile
import threading
import time
import traceback

from pmpc.errors import UserError
from pmpc.mpc import dealer as dealer_mod
from pmpc.mpc import handshake, wire
from pmpc.mpc.roles import ROLE, current_peer, role, talking_to, who  # noqa: F401  (a party's names)


class PartyError(UserError):
    """A party failed, stalled or disagreed; the message names the party."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# -- fault injection -----------------------------------------------------------------------------
_fired: set = set()


def fault_point(rank: int, point: str) -> None:
    """Die or stall here if ``PMPC_FAULT`` names this party and point (each fires once)."""
    spec = os.environ.get("PMPC_FAULT", "")
    for item in filter(None, (s.strip() for s in spec.split(","))):
        try:
            r, p, mode = item.split(":")
        except ValueError:
            raise UserError(f"PMPC_FAULT={spec!r}: use role:point:mode, e.g. server:prefill:kill") from None
        if (r != role(rank) and r != str(rank)) or p != point or item in _fired:
            continue
        _fired.add(item)
        log = os.environ.get("PMPC_FAULT_LOG")
        if log:  # when the fault struck, for measuring how fast the others notice
            with open(log, "a") as f:
                f.write(f"{item} {time.time():.3f}\n")
        if mode == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        elif mode == "stall":
            while True:
                time.sleep(3600)
        else:
            raise UserError(f"PMPC_FAULT: unknown mode {mode!r} (kill | stall)")


def _blame(rank: int, world_size: int, e: BaseException, timeout_s: float, t0: float) -> PartyError | None:
    """A communication failure as one line naming the peer this party lost (None: not one)."""
    from pmpc.mpc.crypten_compat import comm_failure

    if isinstance(e, UserError):
        return None
    kind = comm_failure(e)
    if kind is None:
        return None
    peer = getattr(e, "pmpc_peer", current_peer(0 if rank != 0 else 1))
    what = ("closed the connection (it died or left)" if kind == "closed"
            else f"did not answer within {timeout_s:.0f} s (stalled or unreachable)")
    seen = f"seen by {who(rank)} {time.monotonic() - t0:.1f} s after start"
    err = PartyError(f"{who(peer)} {what}; {seen}")
    err.lost_peer, err.what, err.seen = peer, what, seen
    return err


def _with_peer_report(err: PartyError, wait_s: float = 3.0) -> PartyError:
    """``err`` (a lost peer) told better by the peer's own failure report, if it left one: a
    computing party that waited on its peer while that peer waited on the dealer learns that the
    dealer is at fault, and names it."""
    peer = err.lost_peer
    report = peer_report(peer, wait_s)
    if report is None:
        return err
    if report["culprit"] not in (None, peer):
        out = PartyError(f"{who(report['culprit'])} {report['what']} (reported by {who(peer)}); {err.seen}")
        out.lost_peer = report["culprit"]
    else:
        out = PartyError(f"{who(peer)} {err.what}: it stopped with \"{report['line'][:200]}\"; {err.seen}")
        out.lost_peer = peer
    out.what, out.seen = report["what"], err.seen
    return out


# -- failure reports through the rendezvous store ---------------------------------------------------
# A party that fails leaves one line in the rendezvous store (a wire frame, never a pickle) before
# it exits, so a peer that only saw a closed connection or a timeout can say why. The store lives
# in party 0's process: party 0 waits (bounded) for the other computing party to read a report
# that blames a third party, which that party cannot see for itself.
def _store():
    from pmpc.mpc import transport

    return transport.store()  # None: not joined, or already torn down


def _report_check(m):
    wire.is_dict(m, {"line", "culprit", "what"}, "failure report")
    wire.is_str(m["line"], 400, "line")
    wire.is_str(m["what"], 200, "what")
    if m["culprit"] is not None:
        wire.is_int(m["culprit"], 0, 2, "culprit")


def _report(rank: int, err: BaseException) -> None:
    culprit = getattr(err, "lost_peer", rank)
    line = (str(err).strip().splitlines() or [type(err).__name__])[0]
    what = getattr(err, "what", None) or f"failed: {line}"
    report_failure(rank, line, culprit, what)


def report_failure(rank: int, line: str, culprit: int | None, what: str) -> None:
    store = _store()
    if store is None:
        return
    try:
        store.set(f"pmpc/failure/{rank}", wire.encode("failure report",
                                                        {"line": line[:400], "culprit": culprit, "what": what[:200]}))
    except Exception:
        pass


def peer_report(peer: int, wait_s: float) -> dict | None:
    store = _store()
    if store is None:
        return None
    key = f"pmpc/failure/{peer}"
    try:
        store.wait([key], datetime.timedelta(seconds=wait_s))
        data = store.get(key)
        store.set(f"pmpc/seen/{peer}", b"1")
    except Exception:  # no report (the peer died without one) or the store is gone with party 0
        return None
    try:
        return wire.decode("failure report", data, peer, _report_check)
    except UserError:
        return None


def _wait_until_read(rank: int, culprit: int, wait_s: float) -> None:
    """Party 0 waits (bounded) until party 1 has read its report, or has named ``culprit`` in a
    report of its own (it reads from the dealer too, and may have seen the fault itself)."""
    store = _store()
    if store is None:
        return
    deadline = time.monotonic() + wait_s
    try:
        while time.monotonic() < deadline:
            if store.check([f"pmpc/seen/{rank}"]):
                return
            if store.check(["pmpc/failure/1"]):
                m = wire.decode("failure report", store.get("pmpc/failure/1"), 1, _report_check)
                if m["culprit"] == culprit:
                    return
            time.sleep(0.05)
    except Exception:  # the store is gone, or party 1's report is malformed: stop waiting
        pass


def run_party(job, rank: int, world_size: int, rendezvous: str, timeout_s: float = 60.0,
              dealer: str = "local", threads: int | None = None, inp=None, has_input: bool = False,
              psk: bytes | None = None, on_stuck=None):
    """Join the session as ``rank`` and run ``job``. ``dealer``: ``local`` (CrypTen's TFP: party 0
    generates the triples — insecure against party 0) or ``ttp`` (a separate dealer process of
    rank ``world_size``, which only serves triples). ``psk``: the pre-shared key every party of
    the session holds (:mod:`pmpc.mpc.handshake`); a party without one refuses to start. Raises
    :class:`PartyError` (one line naming the party at fault) when joining fails or a peer is lost.

    Joining is bounded too: a peer that accepted the connection and then went silent can leave
    the rendezvous store's client blocked in a socket read that no timeout reaches, so a watchdog
    ends this process after the timeout: ``on_stuck(line)`` (default: print ``pmpc: error: line`` and exit 2)."""
    from pmpc.mpc import crypten_compat as cc

    if dealer not in dealer_mod.MODES:
        raise UserError(f"unknown dealer {dealer!r} (one of {', '.join(dealer_mod.MODES)})")
    if rank == world_size and dealer != "ttp":
        raise UserError(f"rank {rank} is the dealer: pass --dealer ttp at every party")
    if psk is None:
        raise UserError(f"{who(rank)}: no pre-shared key: pass --psk-file FILE ({handshake.MAKE_PSK})")
    if threads:
        import torch

        torch.set_num_threads(threads)
    keep_heap()
    t0 = time.monotonic()
    fault_point(rank, "join")
    with _join_watchdog(rank, rendezvous, timeout_s, on_stuck):
        try:
            cc.init_party(rank, world_size, rendezvous, timeout_s, dealer_mod.PROVIDER[dealer], psk=psk)
        except cc.InitError as e:
            raise PartyError(f"{who(rank)}: {e}") from None
    dealer_mod.install()
    try:
        fault_point(rank, "startup")
        if rank == world_size:
            return dealer_mod.serve(fault=lambda point: fault_point(rank, point))
        return job(rank, world_size, inp) if has_input else job(rank, world_size)
    except Exception as e:
        blamed = _blame(rank, world_size, e, timeout_s, t0)
        _report(rank, blamed or e)  # at once: the other computing party may be waiting to read it
        if blamed is not None:
            told = _with_peer_report(blamed)
            if told is not blamed:
                blamed = told
                _report(rank, blamed)
        if rank == 0 and getattr(blamed, "lost_peer", 0) not in (0, 1):
            # party 1 may not see the dealer's fault itself (it waits on party 0)
            _wait_until_read(rank, blamed.lost_peer, min(timeout_s, 10.0))
        if blamed is not None:
            raise blamed from e
        raise
    finally:
        if dealer == "ttp" and rank == 0:
            dealer_mod.terminate()
        cc.shutdown_party()


# -- the C allocator ------------------------------------------------------------------------------------
# glibc's mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
HEAP_MMAP_THRESHOLD = 1 << 30   # blocks up to 1 GiB come from the heap, not a mapping of their own
HEAP_TRIM_THRESHOLD = 1 << 30   # free memory at the heap's top kept up to 1 GiB


def _glibc():
    """The C library when it is glibc (its allocator's controls), else None: elsewhere the
    allocator behaves otherwise and is left as it is."""
    try:
        libc = ctypes.CDLL(None)
        libc.mallopt, libc.malloc_trim  # both, or not glibc
    except (OSError, AttributeError):
        return None
    return libc


def keep_heap() -> bool:
    """Let this process reuse freed memory instead of handing it back to the kernel at once
    (glibc's ``mallopt``; elsewhere nothing changes). A party allocates and frees tensors of the
    same few shapes at every layer; by default glibc serves a block above its mmap threshold
    (128 KiB, raised to the size of the blocks freed, at most 32 MiB) with a fresh mapping and
    unmaps it on free, and shrinks the heap whenever its top holds twice that threshold, so the
    next layer's tensors fault their pages in (the kernel zeroing each) again. Kept in the heap,
    they are reused. SmolLM2 bolt, live ``ttp`` dealer, one call side by side (``results/engine``):
    a decode softmax at batch 50 195-204 -> 147-153 ms, a prefill SiLU over 1,081 tokens 3.7-3.9
    -> 2.1 s; the encrypted 50 x 32 ASR cell 602 -> 535 s.
    Up to 1 GiB of free memory stays at the heap's top, which bounds what this keeps beyond the
    party's peak; what loading and sharing the model free once is handed back on purpose
    (:func:`return_freed_memory`). ``PMPC_MALLOC=off`` leaves glibc's defaults (for measuring).
    Returns whether the settings took."""
    libc = _glibc()
    if os.environ.get("PMPC_MALLOC", "on") == "off" or libc is None:
        return False
    return bool(libc.mallopt(_M_MMAP_THRESHOLD, HEAP_MMAP_THRESHOLD)) and bool(
        libc.mallopt(_M_TRIM_THRESHOLD, HEAP_TRIM_THRESHOLD))


def return_freed_memory() -> None:
    """Hand the heap's free pages back to the system now (glibc keeps freed blocks resident: below
    its mmap threshold by default, up to :data:`HEAP_TRIM_THRESHOLD` under :func:`keep_heap`):
    after loading the model and after each part of the weights is shared, that is the released
    float weights and the sharing's transients, freed once and not needed again."""
    libc = _glibc()
    if libc is not None:
        libc.malloc_trim(0)


ENV_VARS = ("RANK", "WORLD_SIZE", "RENDEZVOUS", "PMPC_PSK_FILE")


def join_from_env(timeout_s: float = 60.0, provider: str | None = None) -> tuple[int, int]:
    """Join a session as the party that the environment names, the way ``crypten.init()`` reads
    CrypTen's launcher variables: ``RANK``, ``WORLD_SIZE`` (the computing parties; rank
    ``WORLD_SIZE`` is the dealer), ``RENDEZVOUS`` (``tcp://HOST:PORT`` or ``file:///PATH``) and
    ``PMPC_PSK_FILE`` (the pre-shared key file every party holds). A program written against
    CrypTen's own start-up (its examples and unit tests) calls this instead of ``crypten.init()``
    and then runs on pmpc's links, seeds, truncation and dealer. ``provider``: ``TFP`` or ``TTP``
    (default: CrypTen's configured ``cfg.mpc.provider``). Returns ``(rank, world_size)``; the
    dealer then calls :func:`pmpc.mpc.dealer.serve`, and party 0 ends the dealer's session with
    :func:`pmpc.mpc.dealer.terminate` before leaving (:func:`pmpc.mpc.crypten_compat.shutdown_party`).
    Raises :class:`UserError` (a missing or bad variable) or :class:`PartyError` (joining failed),
    one line each."""
    from pmpc.mpc import crypten_compat as cc

    missing = [v for v in ENV_VARS if not os.environ.get(v)]
    if missing:
        raise UserError(f"joining from the environment needs {', '.join(ENV_VARS)}; not set: {', '.join(missing)}")
    try:
        rank, world_size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    except ValueError:
        raise UserError(f"RANK and WORLD_SIZE are integers, not {os.environ['RANK']!r} and "
                        f"{os.environ['WORLD_SIZE']!r}") from None
    provider = provider or cc.crypten.cfg.mpc.provider
    if provider not in ("TFP", "TTP"):
        raise UserError(f"provider {provider!r}: pmpc's dealers are TFP (local) and TTP (a dealer process)")
    if not (world_size == 2 and 0 <= rank <= world_size - (provider == "TFP")):
        raise UserError(f"RANK={rank} WORLD_SIZE={world_size}: pmpc runs 2 computing parties (ranks 0 and 1), "
                        "and rank 2 as the dealer with the TTP provider")
    psk = handshake.read_psk(os.environ["PMPC_PSK_FILE"])
    try:
        cc.init_party(rank, world_size, os.environ["RENDEZVOUS"], timeout_s, provider, psk=psk)
    except cc.InitError as e:
        raise PartyError(f"{who(rank)}: {e}") from None
    dealer_mod.install()
    return rank, world_size


@contextlib.contextmanager
def _join_watchdog(rank: int, rendezvous: str, timeout_s: float, on_stuck=None):
    """End the process if joining takes longer than the timeout (plus slack for the start-up)."""
    done = threading.Event()
    limit = timeout_s + max(10.0, timeout_s / 2)  # after torch's own join timeout, never before

    def watch():
        if done.wait(limit):
            return
        line = (f"{who(rank)}: no session at {rendezvous} within {timeout_s:.0f} s (gave up after {limit:.0f} s): "
                "the peer there does not answer (it stopped after it began listening, is not a pmpc party, or "
                "uses another --dealer or number of parties)")
        if on_stuck is not None:
            on_stuck(line)
        sys.stderr.write(f"pmpc: error: {line}\n")
        sys.stderr.flush()
        os._exit(2)

    threading.Thread(target=watch, name="pmpc-join-watchdog", daemon=True).start()
    try:
        yield
    finally:
        done.set()


def _ctx():
    ctx = mp.get_context("forkserver")
    # transformers' model classes too: each party would otherwise import them on its own (seconds
    # of start-up per party, which a short --timeout at its peer may not allow); pmpc.mpc.fss
    # compiles (or loads) its kernels on import
    ctx.set_forkserver_preload(["torch", "pmpc.mpc.crypten_compat", "pmpc.mpc.fss", "pmpc.engine", "protocols",
                                "pmpc.models", "transformers.models.llama.modeling_llama"])
    return ctx


def event_queue():
    """A queue that local party processes started by :func:`run_local` can write to (handed to
    them in their input), read in this process."""
    return _ctx().Queue()


def _exit_with_launcher(launcher: int) -> None:
    """A local party exits when the process that launched it is gone (killed by the OOM killer,
    SIGTERM, ...), instead of computing on as an orphan that holds GBs and a CPU core."""
    def watch():
        while True:
            time.sleep(1.0)
            try:
                os.kill(launcher, 0)
            except ProcessLookupError:
                os._exit(1)
            except PermissionError:
                pass

    threading.Thread(target=watch, name="pmpc-launcher-watch", daemon=True).start()


def _pin(rank: int, world_size: int, threads: int | None) -> None:
    """Local computing parties on cores of their own, when the machine has enough: party r on
    the r-th block of ``threads`` cores it may use; the dealer (rank ``world_size``) is not
    pinned. Left to the scheduler, the two parties of a round-by-round protocol keep landing on
    one core while the dealer holds the other, and every round then waits a time slice (SmolLM2
    bolt decode with the live ``ttp`` dealer on two cores: 2.02-2.13 s/token unpinned, 1.79-1.85
    pinned, one after the other). ``PMPC_PIN=off`` leaves every process to the scheduler."""
    if rank >= world_size or os.environ.get("PMPC_PIN", "on") == "off" or not hasattr(os, "sched_setaffinity"):
        return
    cores = sorted(os.sched_getaffinity(0))
    k = threads or 1
    if len(cores) >= world_size * k:
        os.sched_setaffinity(0, cores[rank * k:(rank + 1) * k])


def _entry(job, rank, world_size, rendezvous, timeout_s, dealer, threads, q, has_input, inp, env, launcher=None,
           psk=None):
    if launcher:
        _exit_with_launcher(launcher)
    os.environ.update(env or {})
    if env and "TMPDIR" in env:
        tempfile.tempdir = None  # recomputed from TMPDIR (the forkserver may have cached /tmp)
    if os.environ.get("PMPC_DEBUG_STACKS"):  # print every thread's stack when the parent stops us
        faulthandler.register(signal.SIGTERM, chain=True)
    _pin(rank, world_size, threads)

    def stuck(line):  # the join hangs: report like any failure, then leave
        q.put((rank, "error", line, "", "failed"))
        q.close()
        q.join_thread()
        os._exit(1)

    try:
        out = run_party(job, rank, world_size, rendezvous, timeout_s, dealer, threads, inp, has_input, psk, stuck)
        q.put((rank, "ok", out))
    except BaseException as e:  # report to the parent, then exit non-zero
        msg = str(e).strip().splitlines()
        text = msg[0] if msg else ""
        q.put((rank, "error", text if isinstance(e, UserError) else f"{type(e).__name__}: {text}",
               traceback.format_exc(), "lost" if hasattr(e, "lost_peer") else "failed"))
        q.close()
        q.join_thread()
        os._exit(1)


def _exit_text(code) -> str:
    if code is None:
        return "still running"
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"


def run_local(job, world_size: int = 2, timeout_s: float = 60.0, deadline_s: float | None = None,
              dealer: str = "local", threads: int | None = 1, host: str = "127.0.0.1",
              inputs: dict | None = None, env: dict | None = None) -> list:
    """Run ``job`` in ``world_size`` local party processes; returns the per-rank results.

    ``timeout_s`` bounds each communication wait inside the parties; ``deadline_s`` (default:
    none) bounds the whole job. ``env`` is set in every party process (e.g. ``PMPC_FAULT``). Each
    run draws a fresh pre-shared key for the parties' start-up key exchange
    (:mod:`pmpc.mpc.handshake`) and hands it to them in their start arguments.
    Raises :class:`PartyError` naming the party that failed first (died or went silent), with
    what the others saw; the error carries ``culprit`` (rank or None), ``exit_codes`` and
    ``exit_times`` (``time.time()`` each process was seen gone). The surviving parties are given
    ``timeout_s`` to exit on their own; whatever is left then is killed. Every process is reaped.
    """
    if world_size != 2:
        raise PartyError(f"pmpc runs 2-party computation; got --parties {world_size}")
    if dealer not in dealer_mod.MODES:
        raise UserError(f"unknown dealer {dealer!r} (one of {', '.join(dealer_mod.MODES)})")

    ctx = _ctx()
    rendezvous = f"tcp://{host}:{free_port()}"
    n = world_size + (1 if dealer == "ttp" else 0)
    psk = handshake.new_psk()  # fresh per run, handed to each party in its start arguments
    run = _LocalRun(ctx.Queue(), [])
    run.procs = [ctx.Process(target=_entry, args=(job, r, world_size, rendezvous, timeout_s, dealer, threads, run.q,
                                                  inputs is not None, (inputs or {}).get(r), env, os.getpid(), psk),
                             name=f"pmpc-{role(r)}", daemon=True) for r in range(n)]
    for p in run.procs:
        p.start()
    failure = None
    try:
        return run.collect(world_size, timeout_s, deadline_s)
    except PartyError as e:
        failure = e
        raise
    finally:
        run.reap(failure, timeout_s)


@dataclasses.dataclass
class _LocalRun:
    """The party processes of one :func:`run_local` and what they reported so far."""

    q: object
    procs: list
    results: dict = dataclasses.field(default_factory=dict)
    errors: dict = dataclasses.field(default_factory=dict)
    kinds: dict = dataclasses.field(default_factory=dict)   # "failed" (its own error) or "lost" (it lost a peer)
    gone: dict = dataclasses.field(default_factory=dict)    # rank -> time.time() it was seen gone

    def watch(self, wait: float) -> None:
        _drain(self.q, self.results, self.errors, wait, self.kinds)
        for r, p in enumerate(self.procs):
            if r not in self.gone and not p.is_alive():
                self.gone[r] = time.time()

    def collect(self, world_size: int, timeout_s: float, deadline_s: float | None) -> list:
        """Every computing party's result, or the :class:`PartyError` of the first failure (raised
        once all but at most one party settled: the one left is the silent one)."""
        n, t0, first_error = len(self.procs), time.monotonic(), None
        while True:
            if not self.errors and set(range(world_size)).issubset(self.results):
                return [self.results[r] for r in range(world_size)]
            if self.errors or any(r in self.gone and r not in self.results and self.procs[r].exitcode != 0
                                  for r in range(n)):
                first_error = first_error or time.monotonic()
                settled = set(self.results) | set(self.errors) | set(self.gone)
                if len(settled) >= n - 1 or time.monotonic() - first_error > timeout_s + 5:
                    self.watch(0.5)
                    raise _verdict(self.procs, self.results, self.errors, self.gone, timeout_s, self.kinds)
            if deadline_s and time.monotonic() - t0 > deadline_s:
                raise PartyError(f"deadline of {deadline_s:.0f}s passed; parties still running: "
                                 + ", ".join(who(r) for r in range(n) if r not in self.results and r not in self.errors))
            self.watch(0.2)

    def reap(self, failure: PartyError | None, timeout_s: float) -> None:
        """Give the surviving parties time to exit on their own (``timeout_s`` after a failure), then
        terminate / kill what is left, the stalled culprit last; every process is joined."""
        culprit = getattr(failure, "culprit", None)
        stop = time.monotonic() + (timeout_s + 5 if failure is not None else 10.0)
        for r, p in enumerate(self.procs):
            if r == culprit and p.is_alive():
                continue  # the stalled party is killed below, after the others had their chance
            while p.is_alive() and time.monotonic() < stop:
                self.watch(0.1)
        for r, p in enumerate(self.procs):
            if p.is_alive():
                p.terminate()
                p.join(timeout=2.0)
            if p.is_alive():
                p.kill()
                p.join()
            self.gone.setdefault(r, time.time())
        if failure is not None:
            failure.exit_codes = {r: p.exitcode for r, p in enumerate(self.procs)}
            failure.exit_times = dict(self.gone)
        self.q.close()
        self.q.join_thread()


def _drain(q, results, errors, wait, kinds):
    try:
        item = q.get(timeout=wait)
    except _queue.Empty:
        return
    while True:
        if item[1] == "error":
            errors[item[0]] = item[2]
            kinds[item[0]] = item[4]
        else:
            results[item[0]] = item[2]
        try:
            item = q.get_nowait()
        except _queue.Empty:
            return


def _verdict(procs, results, errors, gone, timeout_s, kinds) -> PartyError:
    """One line: who failed first (died without a word, failed on its own, or went silent), then
    what the others saw."""
    died = [r for r in sorted(gone, key=gone.get) if r not in results and r not in errors]
    silent = [r for r, p in enumerate(procs) if r not in gone and r not in results and r not in errors]
    failed = [r for r in errors if kinds.get(r) == "failed"]
    seen = "; ".join(f"{who(r)}: {errors[r]}" for r in sorted(errors))
    culprit = None
    if died:
        culprit = died[0]
        head = f"{who(culprit)} died ({_exit_text(procs[culprit].exitcode)})"
    elif failed:
        culprit = failed[0]
        head = ""
        seen = f"{who(culprit)} failed: {errors[culprit]}" + "".join(
            f"; {who(r)}: {errors[r]}" for r in sorted(errors) if r != culprit)
    elif silent and errors:
        culprit = silent[0]
        head = f"{who(culprit)} stopped responding (no answer within {timeout_s:.0f} s)"
    else:
        head = ""
    err = PartyError(head + (" — " if head and seen else "") + seen if (head or seen)
                     else "a party failed without a message")
    err.culprit = culprit
    return err
