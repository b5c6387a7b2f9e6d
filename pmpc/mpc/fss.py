"""Function secret sharing with a dealer: comparison (DCF) and point (DPF) keys, table lookups.

A dealer who knows a secret mask r hands each party a short key; each party evaluates its key
LOCALLY on the public masked input x^ = x + r, and the two outputs are additive shares (in
Z/2^64, int64 wrap-around) of f(x). One online round per gate: the opening of x^.

* DCF — distributed comparison function (Boyle, Chandran, Gilboa, Gupta, Ishai, Kumar, Rathee,
  "Function Secret Sharing for Mixed-Mode and Fixed-Point Secure Computation", EUROCRYPT 2021,
  the construction of their Fig. 1): keys for f(x) = beta if x < alpha else 0 over n-bit x. A
  binary tree walked from the most significant bit: each party expands its 128-bit seed with a
  length-doubling PRG, the keys hold one correction word per level (seed, value, two control
  bits) that makes the parties' seeds equal off alpha's path, and the value corrections sum to
  beta on every path that leaves alpha's path to the LEFT (x < alpha).
* DPF — distributed point function (Boyle, Gilboa, Ishai, CCS 2016, Fig. 1): f(x) = beta if
  x == alpha else 0; the same tree without value corrections. Evaluated on the whole domain it
  gives shares of the one-hot vector e_alpha: a table lookup T[x] = sum_j e_r[j] T[x^ - j].
* One-hot lookup (Curl/CrypTen-style dealer tables): the dealer shares e_r directly, 2^k ring
  words per element; no PRG work, far more key bytes.

The PRG is fixed-key AES-128 in Matyas-Meyer-Oseas mode, G_j(s) = AES_K(s ^ j) ^ s ^ j for a
public key K and tweaks j = 0, 1, 2 (LLAMA, SIGMA and Orca use the same shape): every seed of one
tree level is encrypted in ONE AES-ECB call of the ``cryptography`` package over a numpy buffer,
so a level costs one OpenSSL call for all elements of a tensor. Block 0 gives the left child's
seed and control bit (its lowest bit), block 1 the right child's, block 2 the two 64-bit value
words. Seeds are the caller's: keys are only as secret as the seeds handed to :func:`dcf_gen`
(pmpc draws them from :mod:`pmpc.mpc.prg` streams keyed by the OS or a key exchange).

Everything here is plain numpy on uint64 (arithmetic modulo 2^64); nothing talks to a peer.
"""
from __future__ import annotations

import dataclasses
import os
import threading

import numba
import numpy as np
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

# the fixed public key of the MMO PRG (any fixed key does: security rests on AES as an ideal
# cipher under a known key, as in LLAMA/SIGMA)
_K = algorithms.AES(b"pmpc-fss-mmo-prg")
_TWEAK = np.array([0, 1, 2], dtype=np.uint64)
_ONE = np.uint64(1)
_M64 = np.uint64(0xFFFFFFFFFFFFFFFF)


def _u64(a) -> np.ndarray:
    return np.ascontiguousarray(np.asarray(a).astype(np.uint64, copy=False))


_LOCAL = threading.local()


def _ecb():
    """This thread's AES-ECB context under the fixed key: ECB keeps no state between calls, so
    one context serves every level (making one costs as much as encrypting a small level)."""
    enc = getattr(_LOCAL, "enc", None)
    if enc is None:
        enc = _LOCAL.enc = Cipher(_K, modes.ECB()).encryptor()
    return enc


def _aes(blocks: np.ndarray) -> np.ndarray:
    """AES_K on every 128-bit block of ``blocks`` (C-contiguous uint64, an even number of words),
    one call."""
    n = blocks.size
    out = np.empty(n + 2, dtype=np.uint64)  # + a block: `cryptography` wants the room
    _ecb().update_into(memoryview(blocks.reshape(-1)).cast("B"), memoryview(out).cast("B"))
    return out[:n].reshape(blocks.shape)


def _prg(seeds: np.ndarray) -> np.ndarray:
    """G on every seed ([N, 2] uint64) as raw blocks [N, 3, 2]: one AES-ECB call for all."""
    x = np.repeat(seeds[:, None, :], 3, axis=1)  # [N, 3, 2]
    x[:, :, 0] ^= _TWEAK
    y = _aes(x)
    y ^= x
    return y


def _expand(seeds: np.ndarray):
    """G on every seed ([N, 2] uint64): (sL, tL, sR, tR, vL, vR), seeds with their lowest bit
    cleared (it became the control bit)."""
    y = _prg(seeds)
    tL = y[:, 0, 0] & _ONE
    tR = y[:, 1, 0] & _ONE
    sL = y[:, 0].copy()
    sR = y[:, 1].copy()
    sL[:, 0] &= ~_ONE
    sR[:, 0] &= ~_ONE
    return sL, tL, sR, tR, y[:, 2, 0].copy(), y[:, 2, 1].copy()


def _neg_if(t: np.ndarray, v: np.ndarray) -> np.ndarray:
    """(-1)^t v modulo 2^64."""
    return np.where(t.astype(bool), np.uint64(0) - v, v)


def _conv(s: np.ndarray) -> np.ndarray:
    """A leaf seed as a group element: its high word (the low word lost a bit to the control bit)."""
    return s[:, 1].copy()


def _bit(v: np.ndarray, n: int, i: int) -> np.ndarray:
    """Bit i of n-bit values, counted from the most significant (i = 0)."""
    return (v >> np.uint64(n - 1 - i)) & _ONE


def _pick(c: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """a where c == 0 else b (c: 0/1 per element; a, b: [N] or [N, 2])."""
    cb = c.astype(bool)
    return np.where(cb[:, None] if a.ndim == 2 else cb, b, a)


@dataclasses.dataclass
class Key:
    """One party's keys for N gates over n-bit inputs. ``seed`` [N, 2] is the party's own; the
    correction words (``cw_s`` [N, n, 2], ``cw_v`` [N, n] (DCF only), ``cw_t`` [N, n, 2] control
    bits L/R, ``cw_out`` [N]) are the same in both parties' keys."""
    n: int
    seed: np.ndarray
    cw_s: np.ndarray
    cw_v: np.ndarray | None
    cw_t: np.ndarray
    cw_out: np.ndarray
    words: np.ndarray | None = None  # the same as :meth:`cw_words`, when the key came from them

    @property
    def size(self) -> int:
        return self.seed.shape[0]

    def cw_words(self) -> np.ndarray:
        """The correction words as [N, W] uint64 (what travels to a party besides its seed):
        seeds 2n, values n (DCF), the L and R control bits packed in one word each, the output."""
        if self.words is not None:
            return self.words
        tw = np.zeros((self.size, 2), dtype=np.uint64)
        for i in range(self.n):
            tw |= self.cw_t[:, i, :].astype(np.uint64) << np.uint64(i)
        parts = [self.cw_s.reshape(self.size, -1)]
        if self.cw_v is not None:
            parts.append(self.cw_v)
        return np.concatenate(parts + [tw, self.cw_out[:, None]], axis=1)

    @classmethod
    def from_words(cls, n: int, seed: np.ndarray, words: np.ndarray, dcf: bool = True) -> "Key":
        words = _u64(words)
        N = words.shape[0]
        cw_s = words[:, :2 * n].reshape(N, n, 2).copy()
        o = 2 * n
        cw_v = None
        if dcf:
            cw_v, o = words[:, o:o + n].copy(), o + n
        tw = words[:, o:o + 2]
        cw_t = np.stack([(tw >> np.uint64(i)) & _ONE for i in range(n)], axis=1).astype(np.uint8)
        return cls(n, _u64(seed).reshape(N, 2), cw_s, cw_v, cw_t, words[:, o + 2].copy(), words)

    def nbytes(self) -> int:
        """Bytes of one party's key: its seed plus the correction words."""
        return 16 * self.size + 8 * self.cw_words().size


def words_per_key(n: int, dcf: bool = True) -> int:
    """uint64 words of correction per gate (see :meth:`Key.cw_words`)."""
    return 2 * n + (n if dcf else 0) + 3


# -- DCF ---------------------------------------------------------------------------------------------
# The tree walk runs level by level: one AES-ECB call for every seed of a level (OpenSSL, vectorised
# over the tensor), and one compiled kernel (numba) for the rest of the level's per-element work,
# which also writes the next level's AES input. Written as whole-array numpy steps instead, a level
# was ~45 passes over the data and ~30 us of interpreter overhead, several times the AES work: the
# gates run hundreds of times per decoded token, mostly on small tensors. The kernels have fixed
# signatures: compiled (or loaded from numba's cache) when this module is imported, which the
# local parties' fork server does once for all of them (pmpc.mpc.parties).
@numba.njit("void(uint64[:, ::1], uint64[:, ::1], uint64[:, :, :, ::1])", cache=True, nogil=True)
def _gen_start(s0, s1, x):  # pragma: no cover  (compiled)
    """The first level's AES input of both parties' trees: x [2, N, 3, 2], block j = (s ^ j, s)."""
    for e in range(s0.shape[0]):
        for j in range(3):
            x[0, e, j, 0] = s0[e, 0] ^ np.uint64(j)
            x[0, e, j, 1] = s0[e, 1]
            x[1, e, j, 0] = s1[e, 0] ^ np.uint64(j)
            x[1, e, j, 1] = s1[e, 1]


@numba.njit("void(int64, int64, uint64[::1], uint64[::1], uint64[:, :, :, ::1], uint64[:, :, :, ::1], uint64[:, ::1], "
            "uint64[::1], uint64[:, ::1])", cache=True, nogil=True)
def _gen_level(n, i, alpha, beta, x, y, T, va, words):  # pragma: no cover  (compiled)
    """Level i of :func:`dcf_gen` for every element: from the AES outputs y of the inputs x
    (G = y ^ x: block 0 the left child, 1 the right, 2 the value words), the correction words
    of the level into ``words``, both parties' next seeds (as the next AES input, in x) and
    control bits T, and the running value correction va."""
    sh = np.uint64(n - 1 - i)
    zero = np.uint64(0)
    one = np.uint64(1)
    not1 = ~one
    tcol = 3 * n
    for e in range(alpha.shape[0]):
        a = (alpha[e] >> sh) & one
        keep = 1 if a else 0
        lose = 1 - keep
        g00 = y[0, e, lose, 0] ^ x[0, e, lose, 0]
        g01 = y[0, e, lose, 1] ^ x[0, e, lose, 1]
        g10 = y[1, e, lose, 0] ^ x[1, e, lose, 0]
        g11 = y[1, e, lose, 1] ^ x[1, e, lose, 1]
        scw0 = (g00 ^ g10) & not1
        scw1 = g01 ^ g11
        vl0 = y[0, e, 2, lose] ^ x[0, e, 2, lose]
        vl1 = y[1, e, 2, lose] ^ x[1, e, 2, lose]
        vk0 = y[0, e, 2, keep] ^ x[0, e, 2, keep]
        vk1 = y[1, e, 2, keep] ^ x[1, e, 2, keep]
        tl0 = (y[0, e, 0, 0] ^ x[0, e, 0, 0]) & one
        tl1 = (y[1, e, 0, 0] ^ x[1, e, 0, 0]) & one
        tr0 = (y[0, e, 1, 0] ^ x[0, e, 1, 0]) & one
        tr1 = (y[1, e, 1, 0] ^ x[1, e, 1, 0]) & one
        t1 = T[1, e]
        d = vl1 - vl0 - va[e]
        vcw = zero - d if t1 else d
        if a:
            vcw += zero - beta[e] if t1 else beta[e]
        va[e] = va[e] - vk1 + vk0 + (zero - vcw if t1 else vcw)
        tlc = tl0 ^ tl1 ^ a ^ one
        trc = tr0 ^ tr1 ^ a
        words[e, 2 * i] = scw0
        words[e, 2 * i + 1] = scw1
        words[e, 2 * n + i] = vcw
        words[e, tcol] |= tlc << np.uint64(i)
        words[e, tcol + 1] |= trc << np.uint64(i)
        c = trc if a else tlc
        for p in range(2):
            k0 = y[p, e, keep, 0] ^ x[p, e, keep, 0]  # the kept child's seed; its low bit, its control bit
            k1 = y[p, e, keep, 1] ^ x[p, e, keep, 1]
            tp = T[p, e]
            T[p, e] = (k0 & one) ^ (tp & c)
            k0 &= not1
            if tp:
                k0 ^= scw0
                k1 ^= scw1
            for j in range(3):
                x[p, e, j, 0] = k0 ^ np.uint64(j)
                x[p, e, j, 1] = k1


def dcf_gen_words(n: int, alpha, beta, s0: np.ndarray, s1: np.ndarray) -> np.ndarray:
    """The correction words [N, W] (:meth:`Key.cw_words`'s layout, common to both keys) for
    f(x) = beta [x < alpha] on n-bit unsigned x (1 <= n <= 64), one gate per element of ``alpha``
    (uint64, < 2^n) and ``beta`` (uint64 = Z/2^64), from the parties' root seeds ``s0``, ``s1``
    ([N, 2] uint64, uniform and secret: they ARE the keys' secrecy)."""
    if not 1 <= n <= 64:
        raise ValueError("a DCF input has 1..64 bits")
    alpha, beta = _u64(alpha).reshape(-1), _u64(beta).reshape(-1)
    N = alpha.shape[0]
    s0, s1 = _u64(s0).reshape(N, 2), _u64(s1).reshape(N, 2)
    # both parties' trees side by side: T their control bits, x the AES input of the level
    x = np.empty((2, N, 3, 2), dtype=np.uint64)
    _gen_start(s0, s1, x)
    T = np.zeros((2, N), dtype=np.uint64)
    T[1] = 1
    va = np.zeros(N, dtype=np.uint64)
    words = np.zeros((N, words_per_key(n)), dtype=np.uint64)
    for i in range(n):
        _gen_level(n, i, alpha, beta, x, _aes(x), T, va, words)
    # the leaf seeds' high words (x holds the next level's input: word 1 of any block is the seed's)
    d = x[1, :, 0, 1] - x[0, :, 0, 1] - va
    words[:, -1] = np.where(T[1].astype(bool), np.uint64(0) - d, d)
    # the seed corrections' lowest bit is always 0 (it held a control bit): OS-random filler
    # makes every correction word uniform on the wire; the evaluation ignores that bit
    words[:, 0:2 * n:2] |= np.frombuffer(os.urandom(8 * N * n), dtype=np.uint64).reshape(N, n) & _ONE
    return words


def dcf_gen(n: int, alpha, beta, s0: np.ndarray, s1: np.ndarray) -> tuple[Key, Key]:
    """Both parties' keys (:func:`dcf_gen_words` with each party's root seed)."""
    words = dcf_gen_words(n, alpha, beta, s0, s1)
    N = words.shape[0]
    return tuple(Key.from_words(n, _u64(sd).reshape(N, 2), words) for sd in (s0, s1))


@numba.njit("void(int64, uint64[:, ::1], uint64[::1], uint64[:, :, ::1])", cache=True, nogil=True)
def _eval_start(n, seed, x, xin):  # pragma: no cover  (compiled)
    """The first level's AES input: per element the child block of x's top bit, and block 2."""
    sh = np.uint64(n - 1)
    for e in range(x.shape[0]):
        xi = (x[e] >> sh) & np.uint64(1)
        xin[e, 0, 0] = seed[e, 0] ^ xi
        xin[e, 0, 1] = seed[e, 1]
        xin[e, 1, 0] = seed[e, 0] ^ np.uint64(2)
        xin[e, 1, 1] = seed[e, 1]


@numba.njit("void(int64, int64, uint64[::1], uint64[:, :, ::1], uint64[:, :, ::1], uint64[::1], uint64[::1], "
            "uint64[:, ::1])", cache=True, nogil=True)
def _eval_level(n, i, x, xin, y, t, v, words):  # pragma: no cover  (compiled)
    """Level i of :func:`dcf_eval`: the child x's bit leads to (block 0 of the AES input holds its
    tweak), its value word (block 2) corrected into v, the next seed as the next AES input."""
    sh = np.uint64(n - 1 - i)
    one = np.uint64(1)
    not1 = ~one
    last = i + 1 == n
    nsh = np.uint64(n - 2 - i) if not last else np.uint64(0)
    tcol = 3 * n
    for e in range(x.shape[0]):
        xi = (x[e] >> sh) & one
        c0 = y[e, 0, 0] ^ xin[e, 0, 0]
        c1 = y[e, 0, 1] ^ xin[e, 0, 1]
        vw = y[e, 1, xi] ^ xin[e, 1, xi]
        te = t[e]
        if te:
            v[e] += vw + words[e, 2 * n + i]
        else:
            v[e] += vw
        cwt = (words[e, tcol + xi] >> np.uint64(i)) & one
        tn = (c0 & one) ^ (te & cwt)
        c0 &= not1
        if te:
            c0 ^= words[e, 2 * i] & not1
            c1 ^= words[e, 2 * i + 1]
        t[e] = tn
        nxi = (x[e] >> nsh) & one if not last else np.uint64(0)
        xin[e, 0, 0] = c0 ^ nxi
        xin[e, 0, 1] = c1
        xin[e, 1, 0] = c0 ^ np.uint64(2)
        xin[e, 1, 1] = c1


def dcf_eval_words(b: int, n: int, seed: np.ndarray, words: np.ndarray, x) -> np.ndarray:
    """Party ``b``'s share (uint64, modulo 2^64) of beta [x < alpha] at the public n-bit ``x``,
    from its root seed [N, 2] and the correction words [N, W]."""
    x = _u64(x).reshape(-1)
    words = _u64(words)
    N = x.shape[0]
    xin = np.empty((N, 2, 2), dtype=np.uint64)
    _eval_start(n, _u64(seed).reshape(N, 2), x, xin)
    t = np.full(N, b, dtype=np.uint64)
    v = np.zeros(N, dtype=np.uint64)
    for i in range(n):
        _eval_level(n, i, x, xin, _aes(xin), t, v, words)
    v = v + xin[:, 0, 1] + t * words[:, -1]  # the leaf seed's high word (xin holds it)
    return np.uint64(0) - v if b else v


def dcf_eval(b: int, key: Key, x) -> np.ndarray:
    """Party ``b``'s share (uint64, modulo 2^64) of beta [x < alpha] at the public n-bit ``x``."""
    return dcf_eval_words(b, key.n, key.seed, key.cw_words(), x)


# -- DPF ---------------------------------------------------------------------------------------------
def dpf_gen(n: int, alpha, beta, s0: np.ndarray, s1: np.ndarray) -> tuple[Key, Key]:
    """Keys for f(x) = beta [x == alpha] on n-bit x (BGI16), from the root seeds as in :func:`dcf_gen`."""
    if not 1 <= n <= 64:
        raise ValueError("a DPF input has 1..64 bits")
    alpha, beta = _u64(alpha).reshape(-1), _u64(beta).reshape(-1)
    N = alpha.shape[0]
    s = [_u64(s0).reshape(N, 2).copy(), _u64(s1).reshape(N, 2).copy()]
    t = [np.zeros(N, dtype=np.uint64), np.ones(N, dtype=np.uint64)]
    cw_s = np.empty((N, n, 2), dtype=np.uint64)
    cw_t = np.empty((N, n, 2), dtype=np.uint8)
    for i in range(n):
        a = _bit(alpha, n, i)
        sL, tL, sR, tR, _, _ = zip(_expand(s[0]), _expand(s[1]))
        scw = _pick(a, sR[0], sL[0]) ^ _pick(a, sR[1], sL[1])
        tlc = tL[0] ^ tL[1] ^ a ^ _ONE
        trc = tR[0] ^ tR[1] ^ a
        tkc = _pick(a, tlc, trc)
        cw_s[:, i] = scw
        cw_t[:, i, 0], cw_t[:, i, 1] = tlc, trc
        for b in (0, 1):
            s[b] = _pick(a, sL[b], sR[b]) ^ (scw * t[b][:, None])
            t[b] = _pick(a, tL[b], tR[b]) ^ (t[b] & tkc)
    out = _neg_if(t[1], beta - _conv(s[0]) + _conv(s[1]))
    return tuple(Key(n, _u64(sd).reshape(N, 2), cw_s, None, cw_t, out) for sd in (s0, s1))


def dpf_eval_all(b: int, key: Key) -> np.ndarray:
    """Party ``b``'s shares of beta e_alpha over the WHOLE domain: [N, 2^n] uint64, column j the
    share of beta [j == alpha]. Level by level the frontier doubles; one AES call per level."""
    N, n = key.size, key.n
    s = key.seed.copy()                                   # [N * width, 2], row-major (element, node)
    t = np.full(N, b, dtype=np.uint64)
    width = 1
    for i in range(n):
        sL, tL, sR, tR, _, _ = _expand(s)
        cs = np.repeat(key.cw_s[:, i], width, axis=0) * t[:, None]
        ctl = np.repeat(key.cw_t[:, i, 0].astype(np.uint64), width) & t
        ctr = np.repeat(key.cw_t[:, i, 1].astype(np.uint64), width) & t
        sL, sR, tL, tR = sL ^ cs, sR ^ cs, tL ^ ctl, tR ^ ctr
        # children of node j are 2j (left) and 2j + 1 (right): interleave
        s = np.stack([sL.reshape(N, width, 2), sR.reshape(N, width, 2)], axis=2).reshape(-1, 2)
        t = np.stack([tL.reshape(N, width), tR.reshape(N, width)], axis=2).reshape(-1)
        width *= 2
    v = (_conv(s) + t * np.repeat(key.cw_out, width)).reshape(N, width)
    return np.uint64(0) - v if b else v


# -- table lookups --------------------------------------------------------------------------------
def rotate_lookup(onehot_share: np.ndarray, xhat, table) -> np.ndarray:
    """A party's share of T[x] from its share of e_r ([N, 2^k]) and the public x^ = x + r mod
    2^k: T[x] = sum_j e_r[j] T[(x^ - j) mod 2^k], a local inner product with the rotated table."""
    table = _u64(np.asarray(table, dtype=np.int64))
    size = table.shape[0]
    xhat = _u64(xhat).reshape(-1)
    idx = (xhat[:, None] - np.arange(size, dtype=np.uint64)[None, :]) & np.uint64(size - 1)
    return (onehot_share * table[idx.astype(np.int64)]).sum(axis=1, dtype=np.uint64)


def onehot_gen(k: int, r, mask_share: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Dealer one-hot: shares of e_r ([N, 2^k]), party 1's being ``mask_share`` (uniform words
    the dealer shares with it, e.g. drawn from a PRG stream both hold)."""
    r = _u64(r).reshape(-1)
    e = (np.arange(1 << k, dtype=np.uint64)[None, :] == r[:, None]).astype(np.uint64)
    s1 = _u64(mask_share).reshape(e.shape)
    return e - s1, s1
