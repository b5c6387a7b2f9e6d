"""A cryptographic pseudo-random generator: AES-128 in counter mode, as a stateful stream.

Every mask, zero sharing, Beaver tuple and share a pmpc party draws comes from a :class:`PRG`
(:func:`pmpc.mpc.crypten_compat.ring_random` is the one place that draws). A PRG is keyed with a
128-bit seed — from the OS (:meth:`PRG.from_os`) or from a key exchange
(:mod:`pmpc.mpc.handshake`) — and never from torch's or numpy's global random state.

The stream is the AES-128-CTR keystream of the key: block ``i`` is AES_k(i) (a 128-bit
big-endian counter from 0), read as two little-endian 64-bit words; word ``w`` of the stream is
half of block ``w // 2``. A bulk draw encrypts its zero blocks with a few calls of the cipher
(vectorised: OpenSSL's AES-NI code fills the tensor in place); small draws are sliced from a
cached piece of the keystream (a cipher set-up costs ~7 us). Either way the words depend only on
their position in the stream, so two parties that share a key and draw the same number of words
see the same words. The state is that position alone (the key never changes), so
:meth:`get_state` / :meth:`set_state` rewind a stream cheaply. Two seeds that differ in any bit give independent streams (AES is a
pseudo-random permutation of the whole 128-bit key). A counter of 2^128 blocks never wraps in
practice (2^64 blocks would already be 2^68 words).

The dealer's FSS keys will be expanded by the same generator (one seed per key, words or bits
on demand).
"""
from __future__ import annotations

import hashlib
import math
import secrets

import numpy as np
import torch
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

SEED_BYTES = 16  # AES-128
_ZEROS = memoryview(bytes(1 << 20))  # plaintext of the keystream, encrypted in 1 MiB pieces
_CACHE_WORDS = 4096                  # small draws are served from one keystream piece this long


class PRG:
    """AES-128-CTR stream: ``ring(size)`` uniform 64-bit ring words, ``ring(size, k)`` uniform
    k-bit words, as torch.int64 tensors on ``device`` (drawn on the CPU, then moved)."""

    __slots__ = ("_aes", "_pos", "_cache", "_cache_at", "_enc", "_enc_at", "device")

    def __init__(self, seed: bytes, device="cpu"):
        if not isinstance(seed, (bytes, bytearray)) or len(seed) != SEED_BYTES:
            raise ValueError(f"a PRG seed is {SEED_BYTES} bytes (128 bits)")
        self._aes = algorithms.AES(bytes(seed))
        self._pos = 0                  # next word of the stream
        self._cache = np.empty(0, dtype=np.uint64)
        self._cache_at = 0             # stream position of the cache's first word
        self._enc, self._enc_at = None, -1   # a running CTR encryptor and the word it is at
        self.device = torch.device(device)

    @classmethod
    def from_os(cls, device="cpu") -> "PRG":
        """A fresh stream keyed from the operating system's CSPRNG, known to this process only."""
        return cls(secrets.token_bytes(SEED_BYTES), device)

    @classmethod
    def for_device(cls, seed: bytes, device) -> "PRG":
        """The stream of ``seed`` for ``device``: the CPU's is keyed by the seed itself, any other
        device's by SHA-256(label | device | seed), so devices never share a stream."""
        device = torch.device(device)
        if device.type != "cpu":
            seed = hashlib.sha256(b"pmpc prg device|" + str(device).encode() + b"|" + seed).digest()[:SEED_BYTES]
        return cls(seed, device)

    # -- state: the position in the stream (the key never changes) -----------------------------
    def get_state(self) -> int:
        return self._pos

    def set_state(self, state: int) -> None:
        self._pos = int(state)

    # -- draws ------------------------------------------------------------------------------------
    def _keystream(self, first: int, n: int) -> np.ndarray:
        """Words first .. first + n - 1 of the stream (word w is half of block w // 2). Draws
        mostly follow one another: the CTR encryptor of the last draw goes on from where it
        stopped (a fresh cipher context costs more than encrypting a few thousand words)."""
        buf = np.empty(n + 2, dtype=np.uint64)  # + a block: older `cryptography` wants the room
        out = memoryview(buf).cast("B")
        if first != self._enc_at:
            b0 = first // 2
            self._enc = Cipher(self._aes, modes.CTR(b0.to_bytes(16, "big"))).encryptor()
            if first % 2:  # start mid-block: skip the block's first word
                self._enc.update_into(_ZEROS[:8], out[:8 + 16])
        step = len(_ZEROS)
        for i in range(0, 8 * n, step):
            self._enc.update_into(_ZEROS[:min(step, 8 * n - i)], out[i:i + step + 16])
        self._enc_at = first + n
        return buf[:n]

    def words(self, n: int) -> np.ndarray:
        """The next ``n`` words of the stream, as a writable uint64 array. The stream does not
        depend on how it is cut into draws."""
        pos = self._pos
        self._pos += n
        if n > _CACHE_WORDS // 4:
            return self._keystream(pos, n)
        at = pos - self._cache_at
        if at < 0 or at + n > len(self._cache):
            self._cache, self._cache_at, at = self._keystream(pos, _CACHE_WORDS), pos, 0
        return self._cache[at:at + n].copy()

    def ring(self, size, bits: int = 64) -> torch.Tensor:
        """Uniform ``bits``-bit words (the top bits of each 64-bit word), shaped ``size``;
        ``bits = 64`` covers the whole ring Z/2^64 (as signed int64)."""
        size = (size,) if isinstance(size, int) else tuple(size)
        if not 1 <= bits <= 64:
            raise ValueError(f"bits must be in 1..64, got {bits}")
        w = self.words(math.prod(size))
        if bits < 64:
            w >>= np.uint64(64 - bits)
        out = torch.from_numpy(w.view(np.int64))
        if len(size) != 1:
            out = out.reshape(size)
        return out if self.device.type == "cpu" else out.to(self.device)

    def __repr__(self) -> str:  # never the key
        return f"PRG(aes128-ctr, word {self._pos}, {self.device})"
