"""Cost accounting: rounds, bytes and time per function scope, and a network time model.

CrypTen's communicator counts, per party, the number of communication calls ("rounds") and the
bytes sent + received (8 bytes per ring element) between the computing parties; dealt material
(the dealer's requests and answers) is counted apart (``dealer_bytes``, ``dealer_messages``:
:class:`pmpc.mpc.transport.DirectCommunicator`), since it travels beside the rounds. A :class:`pmpc.accounting.Tracker` snapshots those counters at
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

# crypten (through pmpc.mpc.crypten_compat / crypten_ops) is imported inside the functions that run
# in a party: the launcher, the CLI and a machine without crypten import this module without it.

import dataclasses
import json
import pathlib

# the scope accounting every Ops carries sits beneath the protocols; this module adds the network
# model, CrypTen's counters and the tables. Re-exported: callers write cost.Tracker(cost.crypten_stats).
from pmpc import markdown as md
from pmpc.accounting import Cost, Tracker  # noqa: F401


@dataclasses.dataclass(frozen=True)
class Link:
    name: str
    bandwidth_bps: float
    rtt_s: float

    def time(self, rounds: float, bytes_total: float, compute_s: float = 0.0) -> float:
        # a full RTT per round: an upper bound on the direct links, where both parties send a
        # round's message at once and the round costs one one-way delay (RTT / 2) on a symmetric link
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


def crypten_stats() -> tuple[int, int, float]:
    from pmpc.mpc.crypten_compat import comm

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
    out = [f"**{title}**", ""] if title else []
    out += md.table(["scope", "rounds", "MB", "wall s", *(f"{l} s" for l in links)],
                    [[name, c.rounds, f"{c.bytes / 1e6:.2f}", f"{c.seconds:.2f}",
                      *(f"{LINKS[l].time(c.rounds, c.bytes, c.seconds):.2f}" for l in links)] for name, c in rows])
    return "\n".join(out)


def dump(path: str, obj: dict) -> None:
    pathlib.Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        json.dump(obj, f, indent=2, default=str)
