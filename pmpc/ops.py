"""The small op set every protocol and the engine are written against — one definition, two backends.

A protocol's GELU or softmax is written ONCE in terms of these ops. It then runs
  * on :class:`CrypTenOps` — secret-shared ``CrypTensor`` values: the real 2-party protocol, with
    real rounds and bytes, and
  * on :class:`TorchOps` — plain ``torch.Tensor`` values: an exact emulation of the same arithmetic
    (float64 by default; ``fxp_bits`` rounds secret products to the fixed-point grid as MPC does).
Values of either kind support the arithmetic operators with public scalars/tensors, ``.sum``,
``.reshape``, ``.transpose``, ``.matmul`` and indexing natively; everything whose implementation
differs between backends (comparisons, sharing, reveal, bit access, concatenation) goes through
an ``Ops`` method. Composite helpers (``select``, ``poly``, ``max``, ``normalize``) are defined here
once, on top of those primitives, so both backends perform identical arithmetic.

Round discipline: a comparison costs about ten communication rounds under MPC, so every helper
that needs several thresholds or several products issues them as ONE batched call.
"""
from __future__ import annotations

import contextlib
import math
from typing import Sequence

import torch

from pmpc import cost


class Ops:
    """Backend-neutral operations. Subclasses implement the primitives marked ``primitive``."""

    kind = "abstract"
    fxp_bits = 16  # fractional bits of the fixed-point encoding (CrypTen's default)

    def __init__(self, tracker: cost.Tracker | None = None):
        self.tracker = tracker or cost.Tracker(None)

    # -- accounting ------------------------------------------------------------------------
    def scope(self, name: str):
        """Attribute the rounds/bytes/time spent inside to ``name`` (nested scopes allowed)."""
        return self.tracker.scope(name)

    # -- primitives --------------------------------------------------------------------------
    def share(self, t: torch.Tensor, src: int = 0):  # primitive
        raise NotImplementedError

    def reveal(self, x, dst: int | None = None) -> torch.Tensor:  # primitive
        raise NotImplementedError

    def ltz(self, x):  # primitive: 1 where x < 0 else 0 (same kind as x)
        raise NotImplementedError

    def bits(self, x, positions: Sequence[int]):  # primitive: bits of the fixed-point encoding
        raise NotImplementedError

    def ltz_int(self, x):  # primitive: 1 where x < 0, as an exact ring integer (no fixed-point scale)
        raise NotImplementedError

    def from_int(self, v, frac_bits: int):  # primitive: read an exact ring integer as v / 2^frac_bits
        raise NotImplementedError

    def cat(self, xs, dim=0):  # primitive
        raise NotImplementedError

    def stack(self, xs, dim=0):  # primitive
        raise NotImplementedError

    def is_secret(self, x) -> bool:  # primitive
        raise NotImplementedError

    def mul(self, x, y):
        """Elementwise product of two secret values (one Beaver round under MPC)."""
        return x * y

    def matmul(self, x, y):
        return x.matmul(y)

    # -- composites: one definition for both backends ----------------------------------------
    def lt(self, x, thresholds: float | Sequence[float]):
        """``x < c`` as 0/1 values. Several thresholds are compared in ONE batched call and
        returned as a list, in the order given."""
        if isinstance(thresholds, (int, float)):
            return self.ltz(x - float(thresholds))
        diffs = self.stack([x - float(c) for c in thresholds])
        flags = self.ltz(diffs)
        return [flags[i] for i in range(len(thresholds))]

    def ge(self, x, thresholds):
        r = self.lt(x, thresholds)
        return [1 - f for f in r] if isinstance(r, list) else 1 - r

    def select(self, b, x, y):
        """``b ? x : y`` for a 0/1 value ``b``: y + b (x - y), one product."""
        return y + self.mul(b, x - y)

    def abs(self, x):
        return self.mul(x, 1 - 2 * self.ltz(x))

    def relu(self, x):
        return self.mul(x, 1 - self.ltz(x))

    def square(self, x):
        return self.mul(x, x)

    def powers(self, x, n: int) -> list:
        """[x, x^2, ..., x^n] in ceil(log2 n) rounds: each level multiplies the known powers by
        the highest one in one batched product (never ``CrypTensor.pow``, wrong for odd p >= 5)."""
        terms = [x]
        while len(terms) < n:
            top = terms[-1]
            k = min(len(terms), n - len(terms))
            batch = self.mul(self.stack(terms[:k]), self.stack([top] * k))
            terms.extend(batch[i] for i in range(k))
        return terms[:n]

    def poly(self, x, coeffs: Sequence[float]):
        """sum_i coeffs[i] * x**i (coefficients low to high); powers by :meth:`powers`."""
        coeffs = [float(c) for c in coeffs]
        deg = len(coeffs) - 1
        out = x * 0.0 + coeffs[0]
        if deg == 0:
            return out
        for c, p in zip(coeffs[1:], self.powers(x, deg)):
            if c != 0.0:
                out = out + p * c
        return out

    def max(self, x, dim: int = -1, fan_in: int = 8):
        """Maximum along ``dim`` (keepdim), by a tournament of groups of ``fan_in``.

        A comparison costs ~8 rounds; a binary tree over n keys pays that log2(n) times (54 rounds
        for n = 40). Here each level compares ALL pairs inside groups of ``fan_in`` in ONE batched
        call, picks each group's winner by a product of its k-1 "beats" bits (ties go to the lower
        index, so exactly one wins) and selects it: 8 + log2(k-1) + 1 rounds a level,
        ceil(log_k n) levels (24 rounds for n = 40, k = 8), for ~(k-1)/2 comparisons per element."""
        if dim not in (-1, x.dim() - 1):
            return self.max(x.transpose(dim, -1), -1, fan_in).transpose(dim, -1)
        while x.shape[-1] > 1:
            n = x.shape[-1]
            k = min(fan_in, n)
            if n % k:  # pad with copies of the first key: duplicates cannot change the max
                x = self.cat([x, self.cat([x[..., :1]] * (k - n % k), dim=-1)], dim=-1)
            g = x.reshape(*x.shape[:-1], x.shape[-1] // k, k)
            pairs = [(i, j) for i in range(k) for j in range(i + 1, k)]
            # exact 0/1 integers: products of them never truncate, so the winner's weight is exactly 1
            lt = self.ltz_int(self.stack([g[..., i] - g[..., j] for i, j in pairs]))  # x_i < x_j
            beats = {i: [] for i in range(k)}
            for p, (i, j) in enumerate(pairs):
                beats[i].append(1 - lt[p])  # i >= j: i keeps the tie
                beats[j].append(lt[p])      # j > i strictly
            factors = [self.stack([beats[i][f] for i in range(k)], dim=-1) for f in range(k - 1)]
            while len(factors) > 1:
                h = len(factors) // 2
                prod = self.mul(self.stack(factors[:h]), self.stack(factors[h:2 * h]))
                factors = [prod[i] for i in range(h)] + factors[2 * h:]
            x = self.mul(factors[0], g).sum(-1)
        return x

    def normalize(self, x, base_log2: int = 2, lo: int = -8, hi: int = 15):
        """Range reduction by the most significant bit, for x > 0 (SIRNN's msnzb step).

        With g = ``base_log2`` and bins [2^(g k), 2^(g (k+1))) for k in [lo, hi], one batched
        comparison gives the one-hot bin of x, hence the secret power of two ``f = 2^-k`` (a public
        linear combination of the one-hot), and ``m = x * f^g`` in [1, 2^g). So
        ``1/x = f / m`` (g = 1) and ``rsqrt(x) = f * rsqrt(m)`` (g = 2). Powers of two are exact in
        fixed point: the reduction loses no precision. Inputs below bin lo (above bin hi) are
        treated as in bin lo (hi): that is the supported range, 2^(g lo) .. 2^(g (hi+1))."""
        ks = list(range(lo + 1, hi + 1))
        below = self.ltz_int(self.stack([x - float(2.0 ** (base_log2 * k)) for k in ks]))  # x < 2^(g k)
        # one-hot of the bin as exact integers: bin lo = below_{lo+1}; bin k = below_{k+1} - below_k;
        # bin hi = 1 - below_hi. f = sum onehot_k 2^-k is assembled with INTEGER weights 2^(fxp-k) and
        # read as fixed point: no truncation, so f is an exact power of two (a public-float multiply
        # would truncate each term and leave f off by a unit, 25% at f = 2^-14).
        fb = self.fxp_bits
        f_int = below[0] * int(2 ** (fb - lo))
        for i, k in enumerate(ks):
            nxt = below[i + 1] if i + 1 < len(ks) else 1
            f_int = f_int + (nxt - below[i]) * int(2 ** (fb - k))
        f = self.from_int(f_int, fb)
        m = x
        for _ in range(base_log2):
            m = self.mul(m, f)
        return m, f

    def sum(self, x, dim=-1, keepdim=True):
        return x.sum(dim, keepdim=keepdim)

    def sum_squares(self, x, big: float = 64.0, shift: int = 8):
        """sum_j x_j^2 over the last dim, safe for LLM "massive activations".

        Hidden states of real LLMs carry a few values of 1e3-1e4 (SmolLM2: 22552). Squared in
        16-bit fixed point they reach 2^61 in the 64-bit ring, where 2-party truncation (each party
        divides its share locally) fails with probability ~|value|/2^64: garbage. So elements with
        |x| >= ``big`` (one batched comparison with two thresholds) are scaled by 2^-shift before
        squaring and their squares scaled back by the public INTEGER 2^(2 shift) (exact, no
        truncation) after summing. Small elements keep full precision. Two products rounds."""
        neg, below = self.lt(x, [-big, big])
        b = neg + 1 - below                                   # 1 where |x| >= big
        d = 2.0 ** -shift
        p = self.mul(self.stack([b, b]), self.stack([x * (d - 1), x * d]))
        xs, u = x + p[0], p[1]                                # xs = b ? x d : x;  u = b x d
        q = self.mul(self.stack([xs, u]), self.stack([xs, xs]))
        small_and_big, big_only = q[0].sum(-1, keepdim=True), q[1].sum(-1, keepdim=True)
        return small_and_big + big_only * (2 ** (2 * shift) - 1)


class TorchOps(Ops):
    """Plain tensors: the exact emulation of a protocol's arithmetic (no communication)."""

    kind = "torch"

    def __init__(self, dtype=torch.float64, fxp_bits: int | None = None, tracker=None):
        super().__init__(tracker)
        self.dtype = dtype
        self.round_bits = fxp_bits  # None: no fixed-point rounding emulation

    def _q(self, t):
        if self.round_bits is None:
            return t
        s = 2.0 ** self.round_bits
        return torch.round(t * s) / s

    def share(self, t, src=0):
        return self._q(t.to(self.dtype))

    def reveal(self, x, dst=None):
        return x

    def is_secret(self, x):
        return torch.is_tensor(x) and x.is_floating_point()

    def ltz(self, x):
        return (x < 0).to(x.dtype)

    def mul(self, x, y):
        return self._q(x * y)

    def ltz_int(self, x):
        return (x < 0).to(x.dtype)

    def from_int(self, v, frac_bits):
        return v * 2.0 ** -frac_bits

    def bits(self, x, positions):
        enc = torch.floor(x * 2.0 ** self.fxp_bits).to(torch.int64)
        return torch.stack([((enc >> p) & 1).to(x.dtype) for p in positions])

    def cat(self, xs, dim=0):
        return torch.cat(xs, dim)

    def stack(self, xs, dim=0):
        return torch.stack(xs, dim)


class CrypTenOps(Ops):
    """Secret-shared values: every op below is the real 2-party protocol."""

    kind = "crypten"

    def __init__(self, tracker=None):
        super().__init__(tracker)
        from pmpc.crypten_compat import crypten

        self.crypten = crypten
        self.fxp_bits = crypten.cfg.encoder.precision_bits

    def share(self, t, src=0):
        return self.crypten.cryptensor(t.float(), src=src)

    def reveal(self, x, dst=None):
        return x.get_plain_text(dst=dst)

    def is_secret(self, x):
        return isinstance(x, self.crypten.CrypTensor)

    def _lift(self, a):
        """crypten returns comparison bits with encoder scale 1, which silently rounds a public
        float factor (``bit * 0.25``) to an integer. Rescale to the standard fixed point (local)."""
        from crypten.encoder import FixedPointEncoder

        a._tensor.share = a._tensor.share * (2 ** self.fxp_bits)
        a._tensor.encoder = FixedPointEncoder(self.fxp_bits)
        return a

    def ltz(self, x):
        return self._lift(x._ltz())

    def ltz_int(self, x):
        return x._ltz()  # crypten's own: 0/1 with encoder scale 1

    def from_int(self, v, frac_bits):
        from crypten.encoder import FixedPointEncoder

        v = v.clone()
        v._tensor.encoder = FixedPointEncoder(frac_bits)
        return v

    def bits(self, x, positions):
        """Bits ``positions`` of x's ring encoding as arithmetic 0/1 shares: one A2B conversion
        (adder circuit) and one batched single-bit B2A for all positions."""
        from pmpc.crypten_compat import Ptype

        b = x._to_ptype(Ptype.binary)
        b.share = torch.stack([(b.share >> p) & 1 for p in positions])
        a = b._to_ptype(Ptype.arithmetic, bits=1)
        a.encoder._scale = 1
        return self._lift(a)

    def cat(self, xs, dim=0):
        return self.crypten.cat(xs, dim=dim)

    def stack(self, xs, dim=0):
        return self.crypten.stack(xs, dim=dim)


@contextlib.contextmanager
def nullscope():
    yield


def is_power_of_two(x: float) -> bool:
    return x > 0 and math.log2(x).is_integer()
