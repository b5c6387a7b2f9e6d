"""Cost accounting: rounds, bytes and time per function scope, and a network time model.

CrypTen's communicator counts, per party, the number of communication calls ("rounds") and the
bytes sent + received (8 bytes per ring element). A :class:`Tracker` snapshots those counters at
scope boundaries; each scope is charged its *exclusive* cost (nested scopes are charged to the
innermost one), so the per-scope rows add up to the total.

Network model. A loopback run hides latency, so a real link's time is modelled as
    t = t_compute + rounds * RTT + bytes_sent * 8 / bandwidth
where ``bytes_sent`` is half of CrypTen's (sent + received) count (the protocols here are
symmetric) and ``t_compute`` is the measured wall time on loopback (which also includes the
loopback transfer itself: a small over-estimate). Presets (our choice, stated, not from a paper):
  * ``lan``: 1 Gbit/s, 0.5 ms RTT — two servers in one datacenter;
  * ``wan``: 100 Mbit/s, 40 ms RTT — two regions of one continent.
Custom links: ``Link(bandwidth_bps, rtt_s)`` or the string ``"BW_MBPS:RTT_MS"`` (e.g. ``"400:20"``).
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import time
from collections import OrderedDict
from typing import Callable


@dataclasses.dataclass(frozen=True)
class Link:
    name: str
    bandwidth_bps: float
    rtt_s: float

    def time(self, rounds: float, bytes_total: float, compute_s: float = 0.0) -> float:
        return compute_s + rounds * self.rtt_s + (bytes_total / 2.0) * 8.0 / self.bandwidth_bps


LINKS = {
    "lan": Link("lan", 1e9, 0.5e-3),
    "wan": Link("wan", 100e6, 40e-3),
}


def parse_link(spec: str) -> Link:
    """``lan``, ``wan`` or ``BW_MBPS:RTT_MS``."""
    if spec in LINKS:
        return LINKS[spec]
    try:
        bw, rtt = spec.split(":")
        return Link(spec, float(bw) * 1e6, float(rtt) * 1e-3)
    except ValueError:
        raise ValueError(f"bad link {spec!r}: use lan, wan or BW_MBPS:RTT_MS (e.g. 400:20)") from None


@dataclasses.dataclass
class Cost:
    rounds: int = 0
    bytes: int = 0
    seconds: float = 0.0       # wall time
    calls: int = 0
    comm_seconds: float = 0.0  # of which spent inside communication calls (CrypTen's timer)

    def add(self, other: "Cost") -> None:
        self.rounds += other.rounds
        self.bytes += other.bytes
        self.seconds += other.seconds
        self.calls += other.calls
        self.comm_seconds += other.comm_seconds

    def __sub__(self, other: "Cost") -> "Cost":
        return Cost(self.rounds - other.rounds, self.bytes - other.bytes, self.seconds - other.seconds,
                    self.calls - other.calls, self.comm_seconds - other.comm_seconds)

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


class Tracker:
    """Scoped counters. ``stats`` returns the party's cumulative (rounds, bytes, comm seconds),
    or None when there is no communication (the plaintext backend): then only time is tracked."""

    def __init__(self, stats: Callable[[], tuple[int, int, float]] | None):
        self._stats = stats
        self.scopes: "OrderedDict[str, Cost]" = OrderedDict()
        self._stack: list[list] = []  # [name, start_counters, child_cost]

    def _now(self) -> Cost:
        r, b, ct = self._stats() if self._stats else (0, 0, 0.0)
        return Cost(r, b, time.perf_counter(), 0, ct)

    @contextlib.contextmanager
    def scope(self, name: str):
        full = name
        start = self._now()
        child = Cost()
        self._stack.append([full, start, child])
        try:
            yield
        finally:
            self._stack.pop()
            incl = self._now() - start
            excl = incl - child
            excl.calls = 1
            self.scopes.setdefault(full, Cost()).add(excl)
            if self._stack:
                incl.calls = 0
                self._stack[-1][2].add(incl)

    def total(self) -> Cost:
        out = Cost()
        for c in self.scopes.values():
            out.add(c)
        out.calls = 0
        return out

    def snapshot(self) -> dict:
        return {k: v.as_dict() for k, v in self.scopes.items()}

    def reset(self) -> None:
        self.scopes.clear()


class Primitives:
    """Counts of the 2-party primitives a party runs (elements, not calls), by kind:
    ``products`` (Beaver multiplications, matmul outputs included), ``truncations``,
    ``comparisons.<bits>`` (a sign read on a ring slice of that many bits; 64 = the whole ring,
    CrypTen's A2B), ``b2a_bits``, ``and_words`` (64-bit Beaver ANDs of the adder circuits),
    ``tuple_bytes`` (the correlated randomness the triples' provider hands this party: 8 bytes
    a ring word), ``dcf.<n>`` (comparisons that ran as one-round DCF gates on n-bit inputs, of
    the ``comparisons.<n+1>``; the rest ran as adder circuits), ``lookups.<k>`` (table lookups
    with k-bit indices) and ``key_bytes`` (this party's FSS key and one-hot material: offline cost). Filled by :mod:`pmpc.crypten_compat`'s instrumentation; one instance per
    process (a party), reset and read around the span of interest."""

    def __init__(self):
        self.counts: dict[str, int] = {}

    def add(self, kind: str, n: int) -> None:
        self.counts[kind] = self.counts.get(kind, 0) + int(n)

    def reset(self) -> None:
        self.counts.clear()

    def snapshot(self) -> dict:
        return dict(sorted(self.counts.items()))


PRIMITIVES = Primitives()


def crypten_stats() -> tuple[int, int, float]:
    from pmpc.crypten_compat import comm

    s = comm.get().get_communication_stats()
    return int(s["rounds"]), int(s["bytes"]), float(s["time"])


def table(scopes: dict, links=("lan", "wan"), title: str | None = None) -> str:
    """A Markdown table of per-scope cost, with a total row and modelled link times."""
    rows = []
    tot = Cost()
    for name, c in scopes.items():
        c = c if isinstance(c, Cost) else Cost(**c)
        tot.add(c)
        rows.append((name, c))
    rows.append(("total", tot))
    head = "| scope | rounds | MB | wall s | " + " | ".join(f"{l} s" for l in links) + " |"
    sep = "|---" * (4 + len(links)) + "|"
    out = [f"**{title}**", ""] if title else []
    out += [head, sep]
    for name, c in rows:
        link_t = [f"{LINKS[l].time(c.rounds, c.bytes, c.seconds):.2f}" for l in links]
        out.append(f"| {name} | {c.rounds} | {c.bytes / 1e6:.2f} | {c.seconds:.2f} | " + " | ".join(link_t) + " |")
    return "\n".join(out)


def dump(path: str, obj: dict) -> None:
    import pathlib

    pathlib.Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        json.dump(obj, f, indent=2, default=str)
