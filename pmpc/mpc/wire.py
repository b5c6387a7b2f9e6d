"""Control messages between parties: JSON in a fixed frame, never pickle.

Everything a party tells another besides the shares themselves (the configuration check, the
client's announcement of the public prompt shape, the dealer's requests and replies, keep-alives)
travels as one message on the direct link (:mod:`pmpc.mpc.transport`):

    header   8 bytes: the payload's length
    payload  UTF-8 JSON (no NaN/Infinity, no object hooks)

The receiver checks the announced length against the message kind's cap BEFORE it allocates the
payload buffer, decodes strictly (UTF-8, plain ``json.loads``), then checks the message's shape
with the kind's checker. Anything malformed raises :class:`WireError`: one line naming the peer
and the message. A peer can therefore make a party stop, but not run code in it (a pickle is not
UTF-8 JSON and is never unpickled) nor make it allocate more than a cap.

Sizes are counted in the communicator's statistics (one round per frame, 8 header bytes
included), as CrypTen counted its pickled messages; a frame to or from the dealer counts as a
dealer message instead (dealt material travels beside the computation's rounds).
"""
from __future__ import annotations

# crypten (through pmpc.mpc.crypten_compat / crypten_ops) is imported inside the functions that run
# in a party: the launcher, the CLI and a machine without crypten import this module without it.

import json
import struct
import time

from pmpc.errors import UserError
from pmpc.mpc.roles import who

KiB, MiB = 1 << 10, 1 << 20

# kind -> the largest payload a party accepts (bytes). Requests for a chunk of tuples are the
# only large messages: a chunk holds up to thousands of small tuple descriptions.
CAPS = {
    "configuration": 4 * KiB,
    "announcement": 64 * KiB,
    "plan": 4 * KiB,
    "dealer request": 16 * MiB,
    "dealer reply": 16 * MiB,
    "failure report": 4 * KiB,
}


class WireError(UserError):
    """A malformed, oversized or unexpected control message (one line, naming the peer)."""


def encode(kind: str, obj) -> bytes:
    if kind not in CAPS:
        raise ValueError(f"unknown message kind {kind!r}")
    data = json.dumps(obj, separators=(",", ":"), allow_nan=False, ensure_ascii=True).encode("utf-8")
    if len(data) > CAPS[kind]:
        raise ValueError(f"{kind} message of {len(data)} bytes exceeds its cap of {CAPS[kind]}")
    return data


def _reject_constant(name):
    raise ValueError(f"{name} is not JSON")


def decode(kind: str, data: bytes, peer: int, check=None):
    """Bytes from ``peer`` -> the message, or :class:`WireError`. ``check(msg)`` raises
    ``ValueError``/``TypeError`` with a reason when the message has the wrong shape."""
    try:
        text = data.decode("utf-8")
        msg = json.loads(text, parse_constant=_reject_constant)
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        reason = "not UTF-8" if isinstance(e, UnicodeDecodeError) else "not JSON"
        raise WireError(f"malformed {kind} from {who(peer)}: {reason} ({len(data)} bytes starting "
                        f"{data[:8].hex()}); refused") from None
    if check is not None:
        try:
            check(msg)
        except (ValueError, TypeError, KeyError) as e:
            raise WireError(f"malformed {kind} from {who(peer)}: {str(e)[:200]}; refused") from None
    return msg


def _length(n: int, kind: str, peer: int) -> int:
    """The announced payload length ``n``, refused (before any buffer exists) beyond the kind's cap."""
    n = int(n)
    if not 0 < n <= CAPS[kind]:
        raise WireError(f"{kind} from {who(peer)} announces {n} bytes (allowed 1..{CAPS[kind]}); refused "
                        "before allocating")
    return n


def _checker(kind: str, peer: int):
    return lambda n: _length(n, kind, peer)


_HEADER = struct.Struct("<q")  # the link's message length (pmpc.mpc.transport)


def _frame(data: bytes) -> tuple[bytes, bytes]:
    return _HEADER.pack(len(data)), data


def _post(dst: int, data: bytes, now: bool = True) -> None:
    """Queue one frame to ``dst`` (its header is the link's message length); ``now``: and send."""
    head, body = _frame(data)
    _link().channel(dst).post_raw(head, body, now=now)


def _count(nbytes: int, seconds: float, peer: int) -> None:
    """One round and the frame's bytes in the communicator's statistics (when it counts), or one
    dealer message where ``peer`` or this party is the dealer."""
    from pmpc.mpc.crypten_compat import CFG, comm

    c = comm.get()
    if c is not None and hasattr(c, "is_dealer_link") and c.is_dealer_link(peer):
        c.count_dealt(nbytes + 8)
    elif c is not None and CFG.communicator.verbose and hasattr(c, "comm_rounds"):
        c.comm_rounds += 1
        c.comm_bytes += nbytes + 8
        c.comm_time += seconds


def _link():
    from pmpc.mpc import transport

    return transport.current()


def _members(group, rank: int) -> list:
    from pmpc.mpc.crypten_compat import comm

    return [p for p in (comm.get().main_group if group is None else group) if p != rank]


def send(kind: str, obj, dst: int, group=None) -> None:
    send_encoded(kind, encode(kind, obj), dst)


def send_encoded(kind: str, data: bytes, dst: int, flush: bool = True) -> None:
    """Send a payload :func:`encode` made (a caller may keep one it sends often). ``flush=False``
    only queues it: it leaves with the next message sent to ``dst`` (one write for both)."""
    t0 = time.perf_counter()
    link = _link()
    with link.lock:
        _post(dst, data, now=flush)
        if flush:
            link.flush(dst)
    _count(len(data), time.perf_counter() - t0, dst)


class Memo(dict):
    """Messages a receiver decoded and checked, by their exact bytes: the same bytes decode to
    the same message and pass the same check, so a repeat is not parsed again. Bounded: small
    payloads only, and a fixed number of them (beyond that, messages are decoded as usual)."""

    MAX_ENTRIES, MAX_BYTES = 4096, 4 * KiB

    def remember(self, data: bytes, msg) -> None:
        if len(data) <= self.MAX_BYTES and len(self) < self.MAX_ENTRIES:
            self[data] = msg


def recv(kind: str, src: int, group=None, check=None, known: bytes | None = None, memo: Memo | None = None):
    """One message of ``kind`` from ``src``, decoded and checked. ``known``: the payload that an
    honest peer sends here and that ``check`` accepts, when the caller knows it: those exact
    bytes are not decoded (returns None); any other payload is decoded and checked in full.
    ``memo``: a :class:`Memo` of payloads decoded and checked before (the message returned is
    the remembered object: the caller does not modify it)."""
    t0 = time.perf_counter()
    data = _link().recv_message(src, _checker(kind, src))
    _count(len(data), time.perf_counter() - t0, src)
    if known is not None and data == known:
        return None
    if memo is not None:
        msg = memo.get(data)
        if msg is None:
            msg = decode(kind, data, src, check)
            memo.remember(data, msg)
        return msg
    return decode(kind, data, src, check)


def broadcast(kind: str, obj, src: int, rank: int, group=None, check=None):
    """``src`` sends ``obj`` to every party of ``group``; each other party receives and checks it."""
    t0 = time.perf_counter()
    if rank == src:
        data = encode(kind, obj)
        link = _link()
        with link.lock:
            for p in _members(group, rank):
                _post(p, data)
                link.flush(p)
        _count(len(data), time.perf_counter() - t0, next(iter(_members(group, rank)), rank))
        return obj
    data = _link().recv_message(src, _checker(kind, src))
    _count(len(data), time.perf_counter() - t0, src)
    return decode(kind, data, src, check)


def exchange(kind: str, obj, rank: int, group=None, check=None) -> list:
    """Two parties swap one message each: ``[party 0's, party 1's]`` at both (each checked)."""
    t0 = time.perf_counter()
    data = encode(kind, obj)
    peer = 1 - rank
    link = _link()
    with link.lock:
        _post(peer, data)
        got = link.recv_message(peer, _checker(kind, peer))
        link.flush(peer)
    _count(max(len(data), len(got)), time.perf_counter() - t0, peer)  # as when both were padded to one size
    theirs = decode(kind, got, peer, check)
    return [obj, theirs] if rank == 0 else [theirs, obj]


# -- checkers for the shapes of messages ----------------------------------------------------------
def is_int(v, lo: int | None = None, hi: int | None = None, what: str = "value") -> int:
    if type(v) is not int:
        raise TypeError(f"{what} must be an integer, got {type(v).__name__}")
    if (lo is not None and v < lo) or (hi is not None and v > hi):
        raise ValueError(f"{what} {v} outside [{lo}, {hi}]")
    return v


def is_str(v, max_len: int = 256, what: str = "value") -> str:
    if type(v) is not str:
        raise TypeError(f"{what} must be a string, got {type(v).__name__}")
    if len(v) > max_len:
        raise ValueError(f"{what} longer than {max_len} characters")
    return v


def is_list(v, max_len: int, what: str = "value") -> list:
    if type(v) is not list:
        raise TypeError(f"{what} must be a list, got {type(v).__name__}")
    if len(v) > max_len:
        raise ValueError(f"{what} has {len(v)} entries (at most {max_len})")
    return v


def is_dict(v, keys: set, what: str = "message", optional: set = frozenset()) -> dict:
    if type(v) is not dict:
        raise TypeError(f"{what} must be an object, got {type(v).__name__}")
    missing, extra = keys - set(v), set(v) - keys - set(optional)
    if missing or extra:
        raise ValueError(f"{what} has keys {sorted(v)}, expected {sorted(keys)}")
    return v


def is_shape(v, max_elements: int, what: str = "shape") -> list:
    is_list(v, 8, what)
    n = 1
    for d in v:
        n *= is_int(d, 0, max_elements, f"{what} dimension")
    if n > max_elements:
        raise ValueError(f"{what} {v} has {n} elements (at most {max_elements})")
    return v
