"""Seed agreement: an authenticated X25519 key exchange between every pair of parties that
shares randomness, and the configuration check bound to it.

Pairs. The two computing parties (their pairwise "next"/"prev" streams — pseudo-random zero
sharings — and the "global" stream), and each computing party with the dealer (the stream from
which both draw that party's tuple shares).

Exchange, per pair (``pair``), the first messages on the pair's direct link
(:mod:`pmpc.mpc.transport`), of fixed size (raw bytes: nothing is parsed, nothing unpickled):

1. each side draws an ephemeral X25519 key from the OS (``os.urandom``) and sends its 32-byte
   public key;
2. each derives, with HKDF-SHA256 over the X25519 shared secret, salted with the pre-shared key
   and bound to the transcript (a context label, both ranks, both public keys, and the SHA-256
   fingerprint of the link's TLS server certificate as this side saw it), the pair's 128-bit
   seeds and a 256-bit MAC key;
3. each sends HMAC-SHA256(MAC key, "confirm" | its rank) and checks the peer's: a peer without
   the pre-shared key (or a man in the middle who replaced a public key) derives other keys, and
   both sides stop with one line before any stream is used. The same check pins the link's TLS
   key: a man in the middle who terminated TLS with a certificate of its own shows the two sides
   different fingerprints, so their transcripts and tags differ, even if it relays every
   message of the exchange unchanged.

A passive listener sees two public keys and two tags per pair: without one of the private keys
it cannot compute the shared secret, so it learns nothing about any seed (and without the
pre-shared key not even an active one does). Each party's "local" stream is keyed straight from
the OS and never leaves the process.

The pre-shared key (``PSK``) is at least 16 bytes, the same at every party: ``pmpc run`` draws a
fresh one per run and hands it to its party processes; ``pmpc party`` on separate hosts reads it
from ``--psk-file`` (make one with ``head -c 32 /dev/urandom > psk`` and copy it to every host
over a secure channel). Without one a party refuses to start.

:func:`agree_digest` compares the two computing parties' configuration digests (32 bytes) under
the pair's MAC key: a forged or altered digest is told apart from an honest mismatch.
"""
from __future__ import annotations

import hashlib
import hmac
import os
import secrets

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.kdf.hkdf import HKDFExpand

from pmpc.errors import UserError
from pmpc.mpc.prg import SEED_BYTES
from pmpc.mpc.roles import who

MIN_PSK = 16       # bytes
MAX_PSK = 4096
CONTEXT = b"pmpc seed agreement v1"
MAKE_PSK = "make one with `head -c 32 /dev/urandom > psk` and give the same file to every party"

_PSK: list = [None]        # this process's pre-shared key
_LINKS: dict = {}          # peer rank -> Link (after a pair's exchange)
STATS = {"messages": 0, "bytes": 0}  # start-up traffic of the exchanges (sent by this party)


class HandshakeError(UserError):
    """The exchange failed: no or a wrong pre-shared key, a man in the middle, differing configs."""


def unauthenticated(peer: int) -> HandshakeError:
    return HandshakeError(f"{who(peer)} is not authenticated (wrong pre-shared key or a man in the middle)")


# -- the pre-shared key ----------------------------------------------------------------------------
def new_psk() -> bytes:
    return secrets.token_bytes(32)


def read_psk(path: str) -> bytes:
    """The pre-shared key in ``path`` (raw bytes, 16 to 4096); one-line errors otherwise."""
    try:
        with open(path, "rb") as f:
            psk = f.read(MAX_PSK + 1)
    except OSError as e:
        raise UserError(f"cannot read the pre-shared key file {path}: {e.strerror or e}") from None
    if len(psk) < MIN_PSK or len(psk) > MAX_PSK:
        raise UserError(f"the pre-shared key file {path} holds {len(psk)} bytes; it needs {MIN_PSK} to {MAX_PSK}: "
                        f"{MAKE_PSK}")
    return psk


def use_psk(psk: bytes | None) -> None:
    """Set this process's pre-shared key (before the party joins)."""
    if psk is not None and not MIN_PSK <= len(psk) <= MAX_PSK:
        raise UserError(f"a pre-shared key is {MIN_PSK} to {MAX_PSK} bytes, got {len(psk)}")
    _PSK[0] = None if psk is None else bytes(psk)
    _LINKS.clear()


def _psk() -> bytes:
    if _PSK[0] is None:
        raise HandshakeError(f"no pre-shared key: pass --psk-file FILE ({MAKE_PSK})")
    return _PSK[0]


# -- one pair ----------------------------------------------------------------------------------------
class Link:
    """What one pair agreed: named 128-bit seeds and a MAC key, expanded from the pair's HKDF
    pseudo-random key (the X25519 secret itself is dropped after the extract step)."""

    def __init__(self, rank: int, peer: int, group, okm_of):
        self.rank, self.peer, self.group = rank, peer, group
        self._okm = okm_of
        self.mac_key = okm_of(b"mac", 32)
        self.sent = self.received = 0   # digests exchanged so far: a replayed message fails its tag

    def seed(self, name: str) -> bytes:
        return self._okm(b"seed " + name.encode(), SEED_BYTES)

    def tag(self, *parts: bytes) -> bytes:
        return hmac.new(self.mac_key, b"|".join(parts), hashlib.sha256).digest()


def _swap(data: bytes, peer: int, group) -> bytes:
    """Send ``data``, receive the peer's message of the same fixed size (on the direct link to
    ``peer``; ``group`` is kept for the callers' symmetry and not needed)."""
    from pmpc.mpc import transport

    STATS["messages"] += 1
    STATS["bytes"] += len(data)
    return transport.current().swap(peer, data)


def _binding(peer: int) -> bytes:
    """The link's TLS server certificate fingerprint as this side saw it (empty with PMPC_TLS=off)."""
    from pmpc.mpc import transport

    return transport.current().binding(peer)


def pair(rank: int, peer: int, group, label: str) -> Link:
    """Run the exchange with ``peer`` on this party's link to it (``group``: unused, kept for the
    callers' symmetry) and remember the result (:func:`link`)."""
    ln = exchange_keys(lambda data: _swap(data, peer, group), _binding(peer), rank, peer, label, _psk())
    ln.group = group
    _LINKS[peer] = ln
    return ln


def exchange_keys(swap, binding: bytes, rank: int, peer: int, label: str, psk: bytes) -> Link:
    """The exchange itself: ``swap(data) -> the peer's data`` carries the messages; ``binding`` (the
    link's TLS server certificate fingerprint as this side saw it) enters the transcript."""
    sk = X25519PrivateKey.from_private_bytes(os.urandom(32))  # ephemeral, straight from the OS
    pk = sk.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    peer_pk = swap(pk)
    try:
        shared = sk.exchange(X25519PublicKey.from_public_bytes(peer_pk))
    except ValueError:  # a low-order point (all-zero secret): only an active attacker sends one
        raise unauthenticated(peer) from None
    lo, hi = sorted((rank, peer))
    pks = (pk, peer_pk) if rank == lo else (peer_pk, pk)
    transcript = b"|".join([CONTEXT, label.encode(), bytes([lo, hi]), pks[0], pks[1], binding])

    # HKDF-SHA256 (RFC 5869): extract with the pre-shared key as salt, expand per named output
    prk = hmac.new(psk, shared, hashlib.sha256).digest()
    del shared, sk

    def okm(name: bytes, n: int) -> bytes:
        return HKDFExpand(hashes.SHA256(), n, info=transcript + b"|" + name).derive(prk)

    link = Link(rank, peer, None, okm)
    got = swap(link.tag(b"confirm", bytes([rank])))
    if not hmac.compare_digest(got, link.tag(b"confirm", bytes([peer]))):
        raise unauthenticated(peer)
    return link


def link(peer: int) -> Link:
    if peer not in _LINKS:
        raise HandshakeError(f"no key exchange with party {peer} in this session")
    return _LINKS[peer]


# -- the configuration check ---------------------------------------------------------------------------
def agree_digest(digest: bytes, what: str, peer: int | None = None) -> None:
    """Exchange a 32-byte configuration digest with the other computing party, each tagged with
    HMAC-SHA256 under the pair's MAC key (and a message counter, so an old message cannot be
    replayed); stop with one line if the tag is wrong ("not authenticated") or the digests differ."""
    from pmpc.mpc.crypten_compat import comm

    if len(digest) != 32:
        raise ValueError("a configuration digest is 32 bytes (SHA-256)")
    rank = comm.get().get_rank()
    ln = link(1 - rank if peer is None else peer)
    mine = digest + ln.tag(b"digest", bytes([rank]), ln.sent.to_bytes(8, "big"), digest)
    ln.sent += 1
    got = _swap(mine, ln.peer, ln.group)
    theirs, tag = got[:32], got[32:]
    ok = hmac.compare_digest(tag, ln.tag(b"digest", bytes([ln.peer]), ln.received.to_bytes(8, "big"), theirs))
    ln.received += 1
    if not ok:
        raise unauthenticated(ln.peer)
    if theirs != digest:
            raise HandshakeError(f"configurations differ: the parties disagree on {what} ({who(rank)} "
                             f"{digest.hex()[:16]}, {who(ln.peer)} {theirs.hex()[:16]})")


def local_seed() -> bytes:
    """A seed known to this process only, from the OS."""
    return os.urandom(SEED_BYTES)
