"""Offline material kept on disk between the offline and the online phase.

``--preprocess`` deals every tuple of a query before it runs (:mod:`pmpc.mpc.dealer`). Held in
memory, a SmolLM2 query's material (its prefill's keys and triples alone are over a GB a party)
would lift a party's peak RSS by that much. The offline phase of the FSS systems that motivate the
split (LLAMA, Orca, SIGMA) writes its keys to storage and streams them back in order; pmpc does
the same: :meth:`Spool.put` moves each tuple's large arrays (torch tensors, numpy arrays) into one
file and keeps only the small skeleton that says where they went; :meth:`Spool.take` reads them
back, in the order the plan dealt them (so the reads are sequential and the file's pages stay the
kernel's page cache, not the party's memory).

What is on disk is a party's own shares of its tuples: secret from the other party and from
anybody who reads the disk later. The file is created unlinked (``tempfile.TemporaryFile``: no
name another process could open; it vanishes with the process, however it ends) and its contents
are encrypted with AES-128-CTR under a key drawn from the OS for this spool alone and held in this
process's memory only, so blocks the file leaves on the disk are noise once the key is gone.
A blob is written at a 16-byte boundary, so its counter block is its offset / 16 (no counter
block is ever used twice).
"""
from __future__ import annotations

import collections
import dataclasses
import os
import secrets
import tempfile

import numpy as np
import torch
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

MIN_ELEMENTS = 256  # arrays this small stay in the skeleton: a blob of its own would cost more than it saves


@dataclasses.dataclass(frozen=True)
class _Blob:
    """Where an array went: byte offset and length in the file, and how to rebuild it."""
    offset: int
    nbytes: int
    shape: tuple
    dtype: object   # a torch.dtype or a numpy dtype
    numpy: bool


class Spool:
    """A queue of tuples whose large arrays live in an encrypted, unlinked temporary file.

    ``put`` appends a tuple, ``take`` pops the oldest; ``len`` counts what is left. ``directory``:
    where the file goes (default: the system's temporary directory; ``PMPC_SPOOL_DIR`` overrides)."""

    def __init__(self, directory: str | None = None):
        self._file = tempfile.TemporaryFile(dir=directory or os.environ.get("PMPC_SPOOL_DIR") or None)
        self._aes = algorithms.AES(secrets.token_bytes(16))
        self._end = 0
        self._queue: collections.deque = collections.deque()
        self.bytes_written = 0

    # -- the cipher: CTR from the blob's own offset ---------------------------------------------
    def _ctr(self, offset: int):
        return Cipher(self._aes, modes.CTR((offset // 16).to_bytes(16, "big"))).encryptor()

    # -- writing ----------------------------------------------------------------------------------
    def _write(self, a) -> _Blob:
        is_np = isinstance(a, np.ndarray)
        flat = np.ascontiguousarray(a) if is_np else a.detach().contiguous().numpy()
        raw = memoryview(flat).cast("B")
        blob = _Blob(self._end, raw.nbytes, tuple(a.shape), a.dtype, is_np)
        enc = self._ctr(blob.offset).update(raw)
        if os.pwrite(self._file.fileno(), enc, blob.offset) != len(enc):
            raise OSError("the spool file took a short write (disk full?)")
        self._end += len(enc) + (-len(enc)) % 16  # the next blob's counter block starts afresh
        self.bytes_written += raw.nbytes
        return blob

    def _map(self, obj, leaf, seen: set):
        """``obj`` with ``leaf(a)`` in place of each array or blob ``a`` it holds (objects are
        changed in place; tuples, lists and dicts are rebuilt)."""
        if isinstance(obj, (torch.Tensor, np.ndarray, _Blob)):
            return leaf(obj)
        if isinstance(obj, (tuple, list)):
            return type(obj)(self._map(o, leaf, seen) for o in obj)
        if isinstance(obj, dict):
            return {k: self._map(v, leaf, seen) for k, v in obj.items()}
        if hasattr(obj, "__dict__") and id(obj) not in seen:  # a dataclass or a CrypTen shared tensor
            seen.add(id(obj))
            for k, v in vars(obj).items():
                object.__setattr__(obj, k, self._map(v, leaf, seen))  # past CrypTen's own __setattr__
        return obj

    def _stow(self, a):
        # a small array stays, as a copy: it may be a view into a large buffer (a dealer reply's),
        # which it would otherwise keep alive in memory
        is_torch = isinstance(a, torch.Tensor)
        if (a.numel() if is_torch else a.size) >= MIN_ELEMENTS:
            return self._write(a)
        return a.clone() if is_torch else a.copy()

    def put(self, material) -> None:
        self._queue.append(self._map(material, self._stow, set()))

    # -- reading ----------------------------------------------------------------------------------
    def _read(self, blob: _Blob):
        enc = bytearray(blob.nbytes)
        got = os.preadv(self._file.fileno(), [enc], blob.offset)
        if got != blob.nbytes:
            raise OSError(f"the spool file ended early ({got} of {blob.nbytes} bytes at {blob.offset})")
        buf = bytearray(blob.nbytes + 15)  # the cipher's output may run a block ahead of its input
        self._ctr(blob.offset).update_into(enc, buf)
        del enc
        n = int(np.prod(blob.shape, dtype=np.int64))
        if blob.numpy:
            return np.frombuffer(buf, dtype=blob.dtype, count=n).reshape(blob.shape)
        return torch.frombuffer(buf, dtype=blob.dtype, count=n).reshape(blob.shape)

    def _unstow(self, a):
        return self._read(a) if isinstance(a, _Blob) else a

    def take(self):
        if not self._queue:
            raise IndexError("the spool is empty")
        return self._map(self._queue.popleft(), self._unstow, set())

    def __len__(self) -> int:
        return len(self._queue)
