"""The direct transport (pmpc.mpc.transport): CrypTen's operations over it, and what its links
protect, checked by playing the attacker.

* Every communicator operation CrypTen uses gives the right tensors (shapes, dtypes, in-place
  broadcast) at both parties, counted as CrypTen counts it, with TLS and with ``PMPC_TLS=off``.
* A listener on the path (a relaying proxy that records every byte) finds the share bytes in the
  bare channel and not on a TLS link.
* A man in the middle who terminates TLS with its own key and relays every message unchanged is
  refused by the key agreement at both ends; the same relay without the fingerprint in the
  transcript would have succeeded (the control: the attack is real, the pinning stops it).
* Parties that disagree on ``PMPC_TLS`` refuse at the hello; a stalled or vanished peer ends a
  wait within the timeout, naming the peer.
"""
from __future__ import annotations

import os
import select
import socket
import threading
import time

import pytest
import torch

from pmpc.mpc import handshake, parties
from pmpc.mpc.crypten_compat import comm_failure
from pmpc.mpc import transport


# -- CrypTen's operations over the links (two party processes) -----------------------------------------
def _value(rank: int, shape, dtype) -> torch.Tensor:
    g = torch.Generator().manual_seed(1000 * rank + len(shape))
    if dtype.is_floating_point:
        return torch.randn(shape, generator=g).to(dtype)
    if dtype == torch.bool:
        return torch.randint(0, 2, shape, generator=g).bool()
    hi = 256 if dtype == torch.uint8 else 1 << 62
    return torch.randint(0, hi, shape, generator=g, dtype=torch.long).to(dtype)


CASES = [((), torch.long), ((5,), torch.long), ((3, 4, 5), torch.long), ((0, 3), torch.long),
         ((7,), torch.float32), ((2, 3), torch.float64), ((33,), torch.uint8), ((4, 4), torch.bool)]


def ops_job(rank, world_size):
    """Each op on each case; returns {name: ok} and the statistics CrypTen's counters recorded."""
    from torch.distributed import ReduceOp

    from pmpc.mpc.crypten_compat import comm

    c = comm.get()
    peer = 1 - rank
    ok = {}
    for shape, dtype in CASES:
        mine, theirs = _value(rank, shape, dtype), _value(peer, shape, dtype)
        key = f"{tuple(shape)}/{dtype}"
        if dtype not in (torch.bool,):
            both = mine + theirs
            ok[f"all_reduce {key}"] = torch.equal(c.all_reduce(mine), both)
            red = c.reduce(mine, 0)
            ok[f"reduce {key}"] = torch.equal(red, both) if rank == 0 else red is None
        if not dtype.is_floating_point:
            op = ReduceOp.BXOR
            ok[f"all_reduce xor {key}"] = torch.equal(c.all_reduce(mine, op=op), mine ^ theirs)
        ag = c.all_gather(mine)
        ok[f"all_gather {key}"] = torch.equal(ag[rank], mine) and torch.equal(ag[peer], theirs)
        buf = mine.clone() if rank == 1 else torch.zeros_like(mine)
        out = c.broadcast(buf, 1)
        ok[f"broadcast in place {key}"] = out is buf and torch.equal(buf, _value(1, shape, dtype))
        g = c.gather(mine, 1)
        ok[f"gather {key}"] = (torch.equal(g[0], _value(0, shape, dtype)) and torch.equal(g[1], mine)) \
            if rank == 1 else g == [None]
        if rank == 0:
            c.send(mine, 1)
            ok[f"send/recv {key}"] = torch.equal(c.recv(torch.zeros_like(mine), 1), theirs)
        else:
            got = c.recv(torch.zeros_like(mine), 0)
            c.send(mine, 0)
            ok[f"send/recv {key}"] = torch.equal(got, theirs)
    # a batch of tensors: ONE message, ONE round, as CrypTen's batched all_reduce of masked values
    xs = [_value(rank, (3, 2), torch.long), _value(rank, (5,), torch.long)]
    ys = [_value(peer, (3, 2), torch.long), _value(peer, (5,), torch.long)]
    c.reset_communication_stats()
    got = c.all_reduce(xs, batched=True)
    stats_batch = dict(c.get_communication_stats())
    ok["all_reduce batched"] = all(torch.equal(a, x + y) for a, x, y in zip(got, xs, ys))
    # a non-contiguous tensor received in place
    nc = torch.zeros(4, 6, dtype=torch.long)[:, ::2]
    src = _value(0, (4, 3), torch.long)
    c.broadcast(src.clone() if rank == 0 else nc, 0)
    ok["broadcast into a strided view"] = rank == 0 or torch.equal(nc, src)
    sc = c.scatter([_value(0, (6,), torch.long), _value(1, (6,), torch.long)], 0, size=(6,))
    ok["scatter"] = torch.equal(sc, _value(rank, (6,), torch.long))
    c.barrier()
    c.reset_communication_stats()
    c.all_reduce(torch.zeros(10, dtype=torch.long))
    c.barrier()
    stats = dict(c.get_communication_stats())
    return {"ok": ok, "stats": stats, "stats_batch": stats_batch, "backend": c.get_distributed_backend()}


@pytest.mark.parametrize("tls", ["on", "off"])
def test_every_operation_gives_the_right_tensors_and_counts(tls):
    out = parties.run_local(ops_job, timeout_s=30, deadline_s=180, env={"PMPC_TLS": tls})
    for rank, r in enumerate(out):
        bad = [k for k, v in r["ok"].items() if not v]
        assert not bad, (rank, bad)
        assert r["backend"] == ("pmpc-tls" if tls == "on" else "pmpc-tcp")
        # CrypTen's accounting: all_reduce of n ring words = 1 round, 2 n 8 bytes; a barrier 1 round, 0 bytes
        assert r["stats"]["rounds"] == 2 and r["stats"]["bytes"] == 2 * 10 * 8
        assert r["stats_batch"]["rounds"] == 1 and r["stats_batch"]["bytes"] == 2 * (6 + 5) * 8


# -- a link between two threads, through a proxy ---------------------------------------------------------
PSK = os.urandom(32)


def _relay(a: socket.socket, b: socket.socket, seen: bytearray, stop: threading.Event) -> None:
    """Copy bytes both ways between two sockets, recording every one (a listener on the path)."""
    socks = {a: b, b: a}
    while not stop.is_set():
        r, _, _ = select.select(list(socks), [], [], 0.05)
        for s in r:
            try:
                data = s.recv(1 << 16)
            except OSError:
                data = b""
            if not data:
                stop.set()
                break
            seen += data
            socks[s].sendall(data)
    a.close()
    b.close()


def _tcp_pair():
    ls, port = _listener()
    a = socket.create_connection(("127.0.0.1", port))
    b, _ = ls.accept()
    ls.close()
    return b, a


def _listener():
    ls = socket.create_server(("127.0.0.1", 0))
    ls.settimeout(10)
    return ls, ls.getsockname()[1]


def _in_threads(*fns):
    """Run the functions at once; their results (or the exceptions they raised), in order."""
    out = [None] * len(fns)

    def run(i, fn):
        try:
            out[i] = fn()
        except BaseException as e:  # noqa: BLE001  (handed back to the test)
            out[i] = e

    threads = [threading.Thread(target=run, args=(i, fn), daemon=True) for i, fn in enumerate(fns)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not any(t.is_alive() for t in threads), "a side did not finish"
    return out


def _linked_through_relay(tls: bool, timeout_s: float = 10.0):
    """Party 0 listens; party 1 connects to a recording relay that connects on to party 0."""
    ls0, port0 = _listener()
    lsr, portr = _listener()
    seen, stop = bytearray(), threading.Event()

    def relay():
        s1, _ = lsr.accept()
        s0 = socket.create_connection(("127.0.0.1", port0))
        threading.Thread(target=_relay, args=(s1, s0, seen, stop), daemon=True).start()

    threading.Thread(target=relay, daemon=True).start()

    def side0():
        s, _ = ls0.accept()
        return transport.links(0, {1: s}, timeout_s, tls)

    def side1():
        return transport.links(1, {0: socket.create_connection(("127.0.0.1", portr))}, timeout_s, tls)

    t0, t1 = _in_threads(side0, side1)
    return t0, t1, seen, stop


def _share(seed: int) -> bytes:
    """A share-like message: 64 KiB of random ring words."""
    return torch.randint(-2 ** 63, 2 ** 63 - 1, (8192,), generator=torch.Generator().manual_seed(seed),
                         dtype=torch.long).numpy().tobytes()


def _keys(t, rank, binding=None):
    peer = 1 - rank
    return handshake.exchange_keys(lambda d: t.swap(peer, d), t.binding(peer) if binding is None else binding,
                                   rank, peer, "test", PSK)


def _appears(needle: bytes, hay: bytes) -> bool:
    """Any 16-byte window of ``needle`` (every 512th) in ``hay``."""
    return any(needle[i:i + 16] in hay for i in range(0, len(needle) - 16, 512))


@pytest.mark.parametrize("tls", [True, False])
def test_a_listener_on_the_path_sees_shares_only_on_the_bare_channel(tls):
    t0, t1, seen, stop = _linked_through_relay(tls)
    try:
        k0, k1 = _in_threads(lambda: _keys(t0, 0), lambda: _keys(t1, 1))
        assert k0.seed("x") == k1.seed("x")
        a, b = _share(1), _share(2)
        got = _in_threads(lambda: t0.swap(1, a), lambda: t1.swap(0, b))
        assert got == [b, a]
        big = _share(3) * 25   # 1.6 MB: many TLS records, both directions at once
        got = _in_threads(lambda: t0.swap(1, big), lambda: t1.swap(0, big[::-1]))
        assert got == [big[::-1], big]
        time.sleep(0.2)
        captured = bytes(seen)
        assert len(captured) > 2 * len(big)
        if tls:
            assert not _appears(a, captured) and not _appears(b, captured) and not _appears(big, captured)
        else:  # the control: the same listener reads every share off the bare channel
            assert _appears(a, captured) and _appears(b, captured)
    finally:
        stop.set()
        t0.close()
        t1.close()


def _mitm(port0: int, lsr, timeout_s: float):
    """An active attacker: terminates TLS towards each party with a key of its own (it plays the
    TLS server to party 1 and the client to party 0) and relays every message unchanged."""
    def run():
        s1, _ = lsr.accept()
        s0 = socket.create_connection(("127.0.0.1", port0))
        to1, to0 = _in_threads(lambda: transport.links(0, {1: s1}, timeout_s, True),
                               lambda: transport.links(1, {0: s0}, timeout_s, True))
        seen = []
        try:
            while True:  # the exchange is in lock step: each side sends, then waits for the other's
                m1 = to1.recv_message(1)
                m0 = to0.recv_message(0)
                seen += [m0, m1]
                to0.send(0, m1)
                to1.send(1, m0)
        except Exception:  # a side hung up
            pass
        finally:
            to0.close()
            to1.close()
        return seen

    return run


@pytest.mark.parametrize("pinned", [True, False])
def test_a_man_in_the_middle_with_its_own_key_is_refused(pinned):
    ls0, port0 = _listener()
    lsr, portr = _listener()
    box = {}
    attacker = threading.Thread(target=lambda: box.setdefault("seen", _mitm(port0, lsr, 5.0)()), daemon=True)
    attacker.start()

    def side(rank):
        if rank == 0:
            s, _ = ls0.accept()
            t = transport.links(0, {1: s}, 5.0, True)
        else:
            t = transport.links(1, {0: socket.create_connection(("127.0.0.1", portr))}, 5.0, True)
        try:
            ln = _keys(t, rank, None if pinned else b"")
            secret = _share(10 + rank)
            return ln, t.swap(1 - rank, secret)
        finally:
            t.close()

    r0, r1 = _in_threads(lambda: side(0), lambda: side(1))
    attacker.join(15)
    if pinned:
        for r in (r0, r1):
            assert isinstance(r, handshake.HandshakeError) and "not authenticated" in str(r), r
    else:  # the control: without the fingerprint in the transcript the relay goes unnoticed ...
        assert not isinstance(r0, Exception) and not isinstance(r1, Exception), (r0, r1)
        assert r0[0].seed("x") == r1[0].seed("x")
        # ... and reads the parties' traffic in the clear
        assert _share(10) in box["seen"] and _share(11) in box["seen"]


# -- joining and failing --------------------------------------------------------------------------------
def test_parties_that_disagree_on_tls_refuse_at_the_hello():
    rdv = f"tcp://127.0.0.1:{parties.free_port()}"
    t0 = time.monotonic()
    r0, r1 = _in_threads(lambda: transport.join(0, 2, rdv, 5.0, tls=True),
                         lambda: transport.join(1, 2, rdv, 5.0, tls=False))
    assert isinstance(r0, ConnectionError) and "PMPC_TLS=off" in str(r0) and "set it the same" in str(r0), r0
    if not isinstance(r1, Exception):  # the bare side has no handshake to fail: its first read does
        with pytest.raises(transport.LinkClosed):
            r1.recv_message(0)
        r1.close()
    assert time.monotonic() - t0 < 15
    transport.leave()


def test_the_switch_is_read_from_the_environment(monkeypatch):
    monkeypatch.delenv("PMPC_TLS", raising=False)
    assert transport.tls_wanted()
    monkeypatch.setenv("PMPC_TLS", "off")
    assert not transport.tls_wanted()
    monkeypatch.setenv("PMPC_TLS", "maybe")
    with pytest.raises(ValueError, match="PMPC_TLS"):
        transport.tls_wanted()


@pytest.mark.parametrize("tls", [True, False])
def test_a_stalled_or_vanished_peer_ends_the_wait_naming_it(tls):
    a, b = _tcp_pair()
    t0, t1 = _in_threads(lambda: transport.links(0, {1: a}, 1.0, tls), lambda: transport.links(1, {0: b}, 1.0, tls))
    start = time.monotonic()
    with pytest.raises(transport.LinkTimeout) as e:
        t0.recv_message(1)   # party 1 is alive and sends nothing
    assert 0.9 < time.monotonic() - start < 3.0
    assert e.value.pmpc_peer == 1 and "party 1 (server)" in str(e.value)
    assert comm_failure(e.value) == "timeout"
    t1.close()               # party 1 goes away
    start = time.monotonic()
    with pytest.raises(transport.LinkClosed) as e:
        t0.recv_into(1, bytearray(8))
    assert time.monotonic() - start < 1.0
    assert e.value.pmpc_peer == 1 and comm_failure(e.value) == "closed"
    t0.close()


def test_parties_out_of_step_stop_with_one_line():
    a, b = _tcp_pair()
    t0, t1 = _in_threads(lambda: transport.links(0, {1: a}, 2.0, True), lambda: transport.links(1, {0: b}, 2.0, True))
    t1.send(0, b"x" * 24)
    with pytest.raises(RuntimeError, match="out of step with party 1 .server.: it sent 24 bytes where this party "
                                           "expected 16"):
        t0.recv_into(1, bytearray(16))
    t0.close()
    t1.close()


def test_a_one_element_tensor_broadcast_from_a_scalar_is_sent_and_filled():
    """CrypTen's broadcasting ops make one-element tensors expanded from a scalar: stride 0, which
    ``is_contiguous`` accepts, and whose bytes cannot be viewed in place. Both ends copy instead."""
    a, b = _tcp_pair()
    t0, t1 = _in_threads(lambda: transport.links(0, {1: a}, 5.0, False), lambda: transport.links(1, {0: b}, 5.0, False))
    sent = torch.tensor(-5, dtype=torch.long).expand(1, 1, 1)
    assert sent.is_contiguous() and sent.reshape(-1).stride(0) == 0
    t1.send(0, transport._buf(sent))
    base = torch.tensor(0, dtype=torch.long)
    into = base.expand(1)
    transport._recv_tensors(t0, 1, [into])
    assert into.item() == -5 and base.item() == -5
    t0.close()
    t1.close()


@pytest.mark.parametrize("tls", [True, False])
def test_a_large_message_lands_in_its_own_buffer(tls):
    """Waiting for a small message reads at most READ_AHEAD bytes of a large one behind it (plus
    one TLS record): the large one is then read straight into its tensor, not buffered whole first."""
    a, b = _tcp_pair()
    t0, t1 = _in_threads(lambda: transport.links(0, {1: a}, 10.0, tls), lambda: transport.links(1, {0: b}, 10.0, tls))
    big = _share(5) * 400   # 26 MB
    sender = threading.Thread(target=lambda: (t1.send(0, b"small"), t1.send(0, big)), daemon=True)
    sender.start()
    time.sleep(0.5)         # let the large one pile up in the kernel behind the small one
    assert t0.recv_message(1) == b"small"
    assert t0.channel(1).pending <= transport.READ_AHEAD + (1 << 14) + 8
    got = bytearray(len(big))
    t0.recv_into(1, got)
    assert got == big
    sender.join(10)
    t0.close()
    t1.close()
