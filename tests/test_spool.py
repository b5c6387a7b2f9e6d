"""The offline phase's spool: tuples read back as dealt, the file unreachable by name, its bytes
encrypted, and no small array left holding a large buffer alive."""
import os

import numpy as np
import pytest
import torch

from pmpc.mpc import gates
from pmpc.mpc.spool import MIN_ELEMENTS, Spool


def _material(rng):
    big = torch.from_numpy(rng.integers(-2**62, 2**62, size=(4096, 3), dtype=np.int64))
    key = gates.SignKey(16, rng.integers(0, 2**16, size=600, dtype=np.uint64), None,
                        rng.integers(0, 2**63, size=(600, 2), dtype=np.uint64),
                        rng.integers(0, 2**63, size=(600, 3), dtype=np.uint64))
    return [(big, big[:7], "tag"), key, [torch.zeros(5, dtype=torch.bool), {"w": big[:, 1].clone()}]]


def test_read_back_equals_what_was_dealt():
    rng = np.random.default_rng(0)
    dealt = _material(rng)
    expect = _material(np.random.default_rng(0))
    sp = Spool()
    for m in dealt:
        sp.put(m)
    assert len(sp) == 3
    (a, a7, tag), key, (z, d) = sp.take(), sp.take(), sp.take()
    assert torch.equal(a, expect[0][0]) and torch.equal(a7, expect[0][1]) and tag == "tag"
    for f in ("r", "seed", "words"):
        assert np.array_equal(getattr(key, f), getattr(expect[1], f)), f
    assert key.m is None and key.lane == 16
    assert torch.equal(z, expect[2][0]) and torch.equal(d["w"], expect[2][1]["w"])
    assert len(sp) == 0
    with pytest.raises(IndexError):
        sp.take()


def test_file_has_no_name_and_its_bytes_hide_the_shares():
    rng = np.random.default_rng(1)
    sp = Spool()
    share = torch.from_numpy(rng.integers(-2**62, 2**62, size=(1 << 14,), dtype=np.int64))
    sp.put(share.clone())
    fd = sp._file.fileno()
    # another process looks for the file: it is linked nowhere (an unlinked temporary file)
    assert os.fstat(fd).st_nlink == 0
    # a reader of the disk gets ciphertext: not one 8-byte word of the share appears in it
    raw = np.frombuffer(os.pread(fd, os.fstat(fd).st_size, 0), dtype=np.int64)
    assert raw.size >= share.numel()
    assert not np.isin(share.numpy(), raw).any()
    assert torch.equal(sp.take(), share)


def test_two_spools_use_different_keys():
    x = torch.arange(1 << 12, dtype=torch.long)
    a, b = Spool(), Spool()
    a.put(x), b.put(x)
    ra = os.pread(a._file.fileno(), 64, 0)
    rb = os.pread(b._file.fileno(), 64, 0)
    assert ra != rb


def test_small_views_do_not_keep_a_large_buffer():
    base = torch.arange(1 << 20, dtype=torch.long)
    sp = Spool()
    sp.put((base[:MIN_ELEMENTS - 1],))
    (kept,) = sp._queue[0]
    assert kept.untyped_storage().nbytes() == 8 * (MIN_ELEMENTS - 1)
    (back,) = sp.take()
    assert torch.equal(back, base[:MIN_ELEMENTS - 1])
