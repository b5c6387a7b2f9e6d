"""Who a party is, and whom it is talking to: the names every failure message uses.

Kept apart from :mod:`pmpc.mpc.parties` so that the wire, the handshake and the dealer can name a
peer without importing the process launcher.
"""
from __future__ import annotations

import contextlib

ROLE = {0: "client", 1: "server", 2: "dealer"}


def role(rank: int) -> str:
    return ROLE.get(rank, f"party{rank}")


def who(rank: int) -> str:
    return f"party {rank} ({role(rank)})"


# -- whom a party is talking to (a failure inside is blamed on that peer) ---------------------
_PEER: list = []


@contextlib.contextmanager
def talking_to(rank: int):
    """Inside, a communication failure is blamed on ``rank`` (e.g. party 0 and the dealer)."""
    _PEER.append(rank)
    try:
        yield
    except BaseException as e:
        if not hasattr(e, "pmpc_peer"):
            e.pmpc_peer = rank  # remembered: the blame is laid after this block has exited
        raise
    finally:
        _PEER.pop()


def current_peer(default: int) -> int:
    """The peer of the innermost :func:`talking_to` block, or ``default`` outside every block."""
    return _PEER[-1] if _PEER else default
