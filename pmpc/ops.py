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

# |activation| bound the protocols state for comparisons on element-wise inputs (GELU/SiLU
# arguments, attention scores, softmax inputs): two such values differ by < 2^15, which a 32-bit
# lane holds EXACTLY at 16 fraction bits (``Ops.lane``). Real LLMs stay orders of magnitude below;
# sums of squares, softmax denominators and residual streams do not, and keep the whole ring.
ACT_BOUND = 2.0 ** 14


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

    def ltz(self, x, bound: float | None = None, ulp: float | None = None):
        """1 where x < 0 else 0 (same kind as x). ``bound``/``ulp``: see :meth:`lane`."""
        lane = self.lane(bound, ulp)
        if lane is None:
            return self._ltz_ring(x)
        return self.lift(self._ltz_lane(x, *lane))

    def ltz_int(self, x, bound: float | None = None, ulp: float | None = None):
        """``ltz`` as an exact ring integer 0/1 (no fixed-point scale): products of such bits never
        truncate."""
        lane = self.lane(bound, ulp)
        return self._ltz_ring_int(x) if lane is None else self._ltz_lane(x, *lane)

    def lane(self, bound: float | None, ulp: float | None = None):
        """The ring slice a comparison needs, as (lane bits, dropped low bits), or None for the
        whole 64-bit ring.

        A caller that knows ``|x| < bound`` (real units) and needs the sign only to a resolution of
        ``ulp`` lets the comparison read bits [drop, drop + lane) of the encoding: the sign of x is
        the top bit of that slice when 2^(lane-1) > bound 2^(fxp - drop). Lanes of 8/16/32 bits are
        packed 64/lane to a ring word, so the adder circuit (the cost of a comparison) runs on
        fewer words and fewer levels: SIRNN's and BOLT's point that a comparison should cost the
        bits it needs, not the ring's. ``ulp`` None = exact (drop 0). With drop > 0 a value in
        [0, 2^(drop - fxp)) may read as negative (the low bits' carry is lost)."""
        if bound is None:
            return None
        drop = 0 if ulp is None else max(0, min(self.fxp_bits, self.fxp_bits + math.floor(math.log2(ulp))))
        need = 1 + math.ceil(math.log2(bound)) + self.fxp_bits - drop
        for lane in (8, 16, 32):
            if need <= lane:
                return lane, drop
        return None

    def lift(self, b):  # primitive: a ring-integer 0/1 as a fixed-point 0/1
        raise NotImplementedError

    def _ltz_ring(self, x):  # primitive: sign over the whole ring, fixed-point 0/1
        raise NotImplementedError

    def _ltz_ring_int(self, x):  # primitive: sign over the whole ring, ring-integer 0/1
        raise NotImplementedError

    def _ltz_lane(self, x, lane: int, drop: int):  # primitive: sign of a packed ring slice, ring integer
        raise NotImplementedError

    def bits(self, x, positions: Sequence[int]):  # primitive: bits of the fixed-point encoding
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
    def lt(self, x, thresholds: float | Sequence[float], bound: float | None = None, ulp: float | None = None):
        """``x < c`` as 0/1 values. Several thresholds are compared in ONE batched call and
        returned as a list, in the order given. ``bound`` bounds |x - c| (see :meth:`lane`)."""
        if isinstance(thresholds, (int, float)):
            return self.ltz(x - float(thresholds), bound, ulp)
        diffs = self.stack([x - float(c) for c in thresholds])
        flags = self.ltz(diffs, bound, ulp)
        return [flags[i] for i in range(len(thresholds))]

    def ge(self, x, thresholds, bound: float | None = None, ulp: float | None = None):
        r = self.lt(x, thresholds, bound, ulp)
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
            diffs = self.stack([g[..., i] - g[..., j] for i, j in pairs])
            lt = self.ltz_int(diffs, bound=2 * ACT_BOUND)  # x_i < x_j; |x| < ACT_BOUND: a 32-bit lane
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

    def sum_squares(self, x):
        """sum_j x_j^2 over the last dim at full precision, safe for LLM "massive activations"
        up to |x| < 2^23: one product round and two truncations, no comparison.

        Hidden states of real LLMs carry a few values of 1e3-1e4 (SmolLM2: 22552). Squared in
        16-bit fixed point the product needs 2^61 of the 64-bit ring before its truncation, whose
        exact 2-party form (:mod:`pmpc.crypten_compat`) needs |value| < 2^62: a plain x*x is at its
        limit already. So, in ring integers (r(v) = v 2^16), x is split as r(x) = 2^8 r(a) + r(l)
        with a = x 2^-8 (one truncation) and l the exact remainder (|r(l)| < 2^9), and
            r(x^2) = r(a)^2 + r(l) (r(x) + 2^8 r(a)) / 2^16.
        Both terms are products of ring integers, taken in ONE batched round with no truncation:
        r(a)^2 IS the result's top part (< 2^63 for |x| < 2^23); the small term (< 2^41) is
        summed over the row and truncated by 2^16 once. Error: a unit of 2^-16 on the sum, below
        a plain x*x's n/2."""
        h = self.fxp_bits // 2
        xi = self.as_int(x)
        ai = self.idiv(xi, 2 ** h)              # r(a) = r(x) / 2^8
        li = xi - ai * (2 ** h)                 # r(l): integer arithmetic, exact
        p = self.mul(self.stack([ai, li]), self.stack([ai, xi + ai * (2 ** h)]))
        top = p[0].sum(-1, keepdim=True)
        low = self.idiv(p[1].sum(-1, keepdim=True), 2 ** (2 * h))
        return self.from_int(top + low, self.fxp_bits)

    def idiv(self, v, d: int):  # primitive: ring integer v // d (a one-round exact truncation under MPC)
        raise NotImplementedError

    def as_int(self, x):  # primitive: the encoding of x read as a ring integer (scale 1)
        raise NotImplementedError


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

    def _ltz_ring(self, x):
        return (x < 0).to(x.dtype)

    _ltz_ring_int = _ltz_ring

    def _ltz_lane(self, x, lane, drop):
        # the ring slice MPC reads, wrap-around included: out-of-bound inputs fail alike
        enc = torch.floor(x.double() * 2.0 ** self.fxp_bits).to(torch.int64)
        v = (enc >> drop) & ((1 << lane) - 1)
        return (v >= (1 << (lane - 1))).to(x.dtype)

    def as_int(self, x):
        return x * 2.0 ** self.fxp_bits

    def idiv(self, v, d):
        return v / d

    def lift(self, b):
        return b

    def mul(self, x, y):
        return self._q(x * y)

    def from_int(self, v, frac_bits):
        return v * 2.0 ** -frac_bits if frac_bits else v

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

    def _ltz_ring(self, x):
        return self._lift(self._ltz_ring_int(x))

    def _ltz_ring_int(self, x):
        """CrypTen's comparison (A2B of the whole ring, the sign bit) with the bit opened packed."""
        return self.bits(x, [63], lift=False)[0]

    def _ltz_lane(self, x, lane, drop):
        from pmpc.crypten_compat import lane_ltz

        return lane_ltz(x, lane, drop)

    def as_int(self, x):
        from crypten.encoder import FixedPointEncoder

        v = x.clone()
        v._tensor.encoder = FixedPointEncoder(0)
        return v

    def idiv(self, v, d):
        out = v.clone()
        out._tensor.div_(int(d))  # 2PC: crypten_compat's exact truncation (error 1 unit)
        return out

    def lift(self, b):
        return self._lift(b)

    def from_int(self, v, frac_bits):
        from crypten.encoder import FixedPointEncoder

        v = v.clone()
        v._tensor.encoder = FixedPointEncoder(frac_bits)
        return v

    def bits(self, x, positions, lift: bool = True):
        """Bits ``positions`` of x's ring encoding as arithmetic 0/1 shares: one A2B conversion
        (adder circuit) and one batched single-bit B2A for all positions (bits packed 64 to a word).
        ``lift=False``: as ring integers (scale 1)."""
        from pmpc.crypten_compat import MPCTensor, Ptype, b2a_bits

        b = x._to_ptype(Ptype.binary)
        b.share = torch.stack([(b.share >> p) & 1 for p in positions])
        a = MPCTensor.from_shares(b2a_bits(b._tensor).share, precision=0)
        a.encoder._scale = 1
        return self._lift(a) if lift else a

    def cat(self, xs, dim=0):
        return self.crypten.cat(xs, dim=dim)

    def stack(self, xs, dim=0):
        return self.crypten.stack(xs, dim=dim)


@contextlib.contextmanager
def nullscope():
    yield


def is_power_of_two(x: float) -> bool:
    return x > 0 and math.log2(x).is_integer()
