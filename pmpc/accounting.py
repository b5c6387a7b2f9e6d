"""What a function scope costs: rounds, bytes and time, charged exclusively to the innermost scope.

Every :class:`pmpc.ops.Ops` carries a :class:`Tracker`; the MPC runtime hands it CrypTen's
communication counters (:func:`pmpc.mpc.cost.crypten_stats`), the plaintext backend none (time
only). The network model and the tables are :mod:`pmpc.mpc.cost`.
"""
from __future__ import annotations

import contextlib
import dataclasses
import time
from collections import OrderedDict
from typing import Callable


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
