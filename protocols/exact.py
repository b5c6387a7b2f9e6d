"""``exact``: a SIRNN-like precise baseline — every speedup in pmpc is measured against it.

SIRNN (S&P'21) computes exp by digit decomposition with a lookup table per digit, reciprocal and
rsqrt by normalising with the most significant non-zero bit, an initial guess from a lookup
table on the mantissa's top bits, then Goldschmidt/Newton steps.
Its goal is an error at fixed-point resolution over the WHOLE input range, at the price of
bit-level protocols. This module keeps that structure on CrypTen's building blocks:

* exp(x), x <= 0: one A2B conversion gives the bits of y = -x (31: 16 fraction, 15 integer);
  they form eight 4-bit digits (local sums), and SIRNN's digit lookup tables give
  e^(-digit 2^(position - 16)) for each, all eight in ONE lookup round; the factors multiply in
  a three-level tree. Error: a few 2^-16, for every y < 2^15.
* reciprocal, rsqrt: normalise by the most significant bit (one batched comparison, exact powers of
  two) to m in [1, 2), then SIRNN's table start: the table entry for the integer bit and the top
  k - 1 fraction bits of m (:meth:`pmpc.ops.Ops.slice_lookup`: the exact bit slice and the table
  in two rounds), the constant of least relative error on its interval. rsqrt: a 12-bit table
  and no Newton step, max relative error 1.22e-4 (2^-13; measured 1.22e-4 in float64). The
  reciprocal: one Goldschmidt step (Newton's iterate, one product round): from a 12-bit table
  (the softmax rows) 6e-8 (2^-24), from the element-wise callers' 8-bit table 1.5e-5 (2^-16).
  Fixed-point rounding (2^-16 on m and on every product) comes on top of both.
* sigmoid(x) = 1/(1+e^-|x|) (mirrored for x < 0) — SIRNN's sigmoid; SiLU = x sigmoid(x);
  GELU = x Phi(x) with Phi from erfc (A&S 7.1.26: 1.5e-7) on the precise exp and reciprocal;
  tanh-GELU = x sigmoid(2u) since (1 + tanh u)/2 = sigmoid(2u).
"""
from __future__ import annotations

import math

from pmpc.ops import ACT_BOUND, Ops
from protocols.base import FnSpec, Protocol


def start_table(p: float, k: int) -> list[float]:
    """SIRNN's initial guess for m^-p, m = normalised mantissa, as a 2^k-entry table indexed by
    floor(m 2^(k-1)) mod 2^k (:meth:`Ops.slice_lookup` on bits [f - k + 1, f + 1)): the integer
    bit and k - 1 fraction bits. Index i >= 2^(k-1) is m in [i, i + 1) 2^-(k-1), in [1, 2);
    i < 2^(k-1) is m in [2, 3) (i + 2^k): the normalisation's truncation may round m up to
    exactly 2, which a slice of fraction bits alone would read as 1. Each entry is the constant
    c with the least max relative error on its interval [a, b]: 1 - c a^p = c b^p - 1, so
    c = 2 / (a^p + b^p), relative error (b^p - a^p) / (a^p + b^p) ~ p 2^-k at m = 1."""
    h = 2 ** (k - 1)
    out = []
    for i in range(2 ** k):
        j = i if i >= h else i + 2 ** k
        a, b = j / h, (j + 1) / h
        out.append(2.0 / (a ** p + b ** p))
    return out


# Table starts (SIRNN): the rows' reciprocal (softmax: one a row) and rsqrt (norms: one a row)
# read 12 bits, 4096 dealt words an element; element-wise reciprocals (sigmoid, SiLU, GELU: one
# a value) read 8 bits, 256 words.
RSQRT_BITS, RECIP_BITS, RECIP_ELEM_BITS = 12, 12, 8
RSQRT_TABLE = start_table(0.5, RSQRT_BITS)
RECIP_TABLES = {k: start_table(1.0, k) for k in (RECIP_BITS, RECIP_ELEM_BITS)}
# Abramowitz & Stegun 7.1.26: erfc(z) = t (a1 + t (a2 + ...)) e^{-z^2}, t = 1/(1 + p z), |err| < 1.5e-7
AS_P = 0.3275911
AS_A = [0.0, 0.254829592, -0.284496736, 1.421413741, -1.453152027, 1.061405429]

INT_BITS = 15  # y = -x < 2^15
# SIRNN's digit tables: 4-bit digits of y's encoding (bit ranges), one 16-entry table each. Wider
# digits would mean fewer factors but 2^k dealt words per element and table: 8-bit digits cost
# 1024 words per exp (4 x 256; 460 MB a party for one SmolLM2 prefill layer's SiLU), 4-bit 128
# for one more product level.
EXP_TABLE_BITS = 4
EXP_DIGITS = tuple((lo, min(lo + EXP_TABLE_BITS, 31)) for lo in range(0, 31, EXP_TABLE_BITS))


def product(xs: list, ops: Ops):
    """Multiply a list of values in a balanced tree, one batched product per level."""
    while len(xs) > 1:
        half = len(xs) // 2
        prod = ops.mul(ops.stack(xs[:half]), ops.stack(xs[half:2 * half]))
        xs = [prod[i] for i in range(half)] + xs[2 * half:]
    return xs[0]


def table_start(m, table, bits: int, ops: Ops):
    """The table's initial guess at a normalised m in [1, 2] (:func:`start_table`): one
    :meth:`Ops.slice_lookup` on the integer bit and bits - 1 fraction bits, two rounds."""
    return ops.slice_lookup(m, ops.fxp_bits - bits + 1, bits, table)


def goldschmidt_reciprocal(m, y, iters: int, ops: Ops, times=None):
    """``times / m`` from a start y ~ 1/m (``times`` default 1), as Newton's y <- y (2 - m y)
    computes it but in one product round a step instead of two: with e = 1 - m y,
    y_k (1 + e_k) and e_k^2 are independent, and y_k = (1 - e^(2^k)) / m exactly as after k
    Newton steps. ``times`` rides along from the second round on: z = times y."""
    e, z = (lambda p: (1 - p[0], p[1]))(ops.mul_many([(m, y), (times, y)])) if times is not None \
        else (ops.combine([(-1.0, m, y)], const=1.0, bound=4.0), y)
    for i in range(iters):
        if i + 1 < iters:
            z, e = ops.mul_many([(z, 1 + e), (e, e)])
        else:
            z = ops.mul(z, 1 + e)
    return z


def newton_rsqrt(m, y, iters: int, ops: Ops):
    """y <- 1.5 y - 0.5 (y^2)(m y): y^2 and m y in one batched product, then their product with
    the step's public 1.5 and -0.5 under its one truncation — two product rounds a step."""
    for _ in range(iters):
        p = ops.mul(ops.stack([y, m]), ops.stack([y, y]))
        y = ops.mul_scaled(p[0], p[1], -0.5, add=[(1.5, y)])
    return y


class Exact(Protocol):
    name = "exact"
    summary = "SIRNN-like precise baseline: bit-decomposed exp, msb normalisation + table starts for reciprocal/rsqrt"
    source = "SIRNN (Rathee et al., S&P'21) structure; mpc-msri/EzPC SCI/src/Math/math-functions.cpp"
    specs = {
        "exp": FnSpec((-2.0 ** 14, 0.0), max_abs_err=2e-4, comparisons=1, multiplications=7,
                      method="A2B bits of -x; eight 4-bit digit lookup tables (one round); product tree"),
        "reciprocal": FnSpec((2.0 ** -12, 2.0 ** 14), max_rel_err=1e-7, comparisons=25, multiplications=4,
                             method="msb normalisation to [1,2), 12-bit table start, 1 Goldschmidt step"),
        "rsqrt": FnSpec((2.0 ** -12, 2.0 ** 30), max_rel_err=1.3e-4, comparisons=41, multiplications=2,
                        method="msb normalisation to [1,2), 12-bit table start, no Newton step"),
        "silu": FnSpec((-60.0, 60.0), max_abs_err=5e-3, comparisons=3, multiplications=14,
                       method="x / (1 + e^-|x|), mirrored"),
        "gelu": FnSpec((-60.0, 60.0), max_abs_err=5e-3, comparisons=8, multiplications=20,
                       method="x Phi(x), Phi from erfc (A&S 7.1.26) on precise exp/reciprocal"),
        "gelu_tanh": FnSpec((-30.0, 30.0), max_abs_err=5e-3, comparisons=3, multiplications=16,
                            method="x sigmoid(2u), u = sqrt(2/pi)(x + 0.044715 x^3)"),
    }

    # -- building blocks -----------------------------------------------------------------
    def exp(self, x, ops: Ops):
        return ops.rescale(self.exp_exact(x, ops))

    def exp_exact(self, x, ops: Ops):
        fb = ops.fxp_bits
        # x - max(x) can come out a unit above 0 (truncation in the select); a negative y would
        # decompose as two's complement. A bias of 4 units keeps y >= 0; e^bias is folded back.
        bias = 4 * 2.0 ** -fb
        y = bias - x
        b = ops.bits(y, list(range(fb + INT_BITS)), lift=False)  # ring-integer bits: weights are free
        digits = ops.stack([sum(b[lo + j] * (2 ** j) for j in range(hi - lo)) for lo, hi in EXP_DIGITS])
        tables = [[math.exp(-d * 2.0 ** (lo - fb)) * (math.exp(bias) if lo == 0 else 1.0)
                   for d in range(2 ** EXP_TABLE_BITS)] for lo, _ in EXP_DIGITS]
        f = ops.lookup(digits, EXP_TABLE_BITS, tables)  # e^(-digit weight), one round for all
        # the tree's last product exact (ring integers, on the scale 2^(2f)): its truncation is
        # the caller's (:meth:`exp`, or the softmax's reciprocal beside its comparison)
        xs = [f[i] for i in range(len(EXP_DIGITS))]
        while len(xs) > 2:
            half = len(xs) // 2
            prod = ops.mul(ops.stack(xs[:half]), ops.stack(xs[half:2 * half]))
            xs = [prod[i] for i in range(half)] + xs[2 * half:]
        a, b = xs
        return ops.from_int(ops.mul(ops.as_int(a), ops.as_int(b)), ops.scale_bits(a) + ops.scale_bits(b))

    # Iterations after the table start: the reciprocal's Goldschmidt steps (relative error e0
    # -> e0^2 a step: 2^-8 -> 1.5e-5 from 8 bits, 2^-12 -> 6e-8 from 12) and rsqrt's Newton steps
    # (e0 -> 1.5 e0^2: none leaves the 12-bit table's 1.2e-4).
    recip_steps = 1
    rsqrt_steps = 0

    @property
    def exact_sum_squares(self) -> bool:  # the table reads the exact sum's bits (no Newton step)
        return not self.rsqrt_steps

    # the reciprocal's domain ends at 2^14: its bin comparisons read a 32-bit lane
    def reciprocal(self, x, ops: Ops, lo: int = -12, hi: int = 13, bits: int = RECIP_BITS):
        return self.reciprocal_times(x, None, ops, lo=lo, hi=hi, bits=bits)

    def reciprocal_times(self, x, times, ops: Ops, lo: int = -12, hi: int = 13, times_bound: float = 4.0,
                         bits: int = RECIP_BITS):
        # x (and times) may come on a product's scale (``exp_exact``): the bins' comparison
        # reads the sign there (the whole ring) while they are truncated beside it
        wide = ops.scale_bits(x) > ops.fxp_bits
        below, x, times = ops.parallel(
            lambda: ops.normalize_bins(x, base_log2=1, lo=lo, hi=hi, bound=None if wide else 2.0 ** 15),
            lambda: ops.rescale(x), lambda: None if times is None else ops.rescale(times))
        # m exactly (one product round, no truncation); the table reads its bits while m's
        # truncation and times f (when ``times`` is given) run beside it
        mi, f, e = ops.normalize(x, base_log2=1, lo=lo, hi=hi, exact=True, below=below)
        fb = ops.fxp_bits
        y, m, tf = ops.parallel(lambda: table_start(ops.from_int(mi, e), RECIP_TABLES[bits], bits, ops),
                                lambda: ops.from_int(ops.idiv(mi, 2 ** (e - fb)), fb) if self.recip_steps else None,
                                lambda: f if times is None else ops.mul_scaled(times, f, 1.0, bound=times_bound))
        if not self.recip_steps:
            return ops.mul(tf, y)
        return goldschmidt_reciprocal(m, y, self.recip_steps, ops, times=tf)

    def denominator_times(self, x, times, ops: Ops):
        # a softmax row sum is >= 1 (up to the exp's error): bins from 2^-1 up, 15 instead of 25
        return self.reciprocal_times(x, times, ops, lo=-2)

    # rsqrt: normalised to m in [1, 2) (x = m 2^k, rsqrt(x) = 2^(-k/2) rsqrt(m), the half power a
    # public function of the bin like any other), then the table start
    def rsqrt(self, x, ops: Ops, scale: float = 1.0):
        m, f = self._rsqrt_norm(x, ops, scale)
        return ops.mul(f, self._rsqrt_m(m, ops))

    def rsqrt_times(self, x, times, ops: Ops, scale: float = 1.0, out: float = 1.0):
        # |times scale f| <= 2 scale for a norm's row (|x_i| <= sqrt(sum x^2), f <= 2 / sqrt(sum))
        if self.rsqrt_steps:
            m, tf = ops.normalize(x, base_log2=1, lo=-12, hi=29, scale=scale, times=times,
                                  times_bound=4 * scale, power=0.5)
            return ops.mul_scaled(tf, self._rsqrt_m(m, ops), out)
        # no Newton step: m only feeds the table, which reads the bits of the exact m (one
        # product round), while times f is multiplied beside it
        m, f = self._rsqrt_norm(x, ops, scale)
        y, tf = ops.parallel(lambda: self._rsqrt_m(m, ops),
                             lambda: ops.mul_scaled(times, f, 1.0, bound=4 * scale))
        return ops.mul_scaled(tf, y, out)

    def _rsqrt_norm(self, x, ops: Ops, scale: float):
        """(m, scale f) of the normalisation: m exact (not truncated) when no Newton step needs it."""
        if self.rsqrt_steps:
            return ops.normalize(x, base_log2=1, lo=-12, hi=29, scale=scale, power=0.5)
        mi, f, e = ops.normalize(x, base_log2=1, lo=-12, hi=29, scale=scale, power=0.5, exact=True)
        return ops.from_int(mi, e), f

    def _rsqrt_m(self, m, ops: Ops):
        return newton_rsqrt(m, table_start(m, RSQRT_TABLE, RSQRT_BITS, ops), self.rsqrt_steps, ops)

    # -- activations ---------------------------------------------------------------------
    def sigmoid(self, x, ops: Ops, bound: float | None = ACT_BOUND):
        neg = ops.ltz_int(x, bound)                         # ring-integer sign: products need no truncation
        a = ops.mul(x, 1 - 2 * neg)                         # |x|
        p = self.reciprocal(1 + self.exp(-a, ops), ops, lo=0, hi=1, bits=RECIP_ELEM_BITS)  # denominator in [1, 2]
        return ops.select(neg, 1 - p, p)

    def silu(self, x, ops: Ops):
        return self._silu_times(x, None, ops)

    def _silu_times(self, x, u, ops: Ops):
        # x sigmoid(|x|) = x / (1 + e^-|x|) with x taken into the reciprocal; x sigmoid(x) is that
        # for x >= 0 and x - that below (sigmoid(-y) = 1 - sigmoid(y)): one ring-integer select.
        # A factor u (the gated MLP's up) goes into the reciprocal with x: x u, taken in the
        # rounds of the sign's comparison, replaces x, and silu(x) u costs no product of its own.
        if u is None:
            neg, xu = ops.ltz_int(x, ACT_BOUND), x
        else:
            neg, xu = ops.parallel(lambda: ops.ltz_int(x, ACT_BOUND), lambda: ops.mul(x, u))
        a = ops.mul(x, 1 - 2 * neg)
        xp = self.reciprocal_times(1 + self.exp(-a, ops), xu, ops, lo=0, hi=1,
                                   times_bound=ACT_BOUND if u is None else 2.0 ** 21, bits=RECIP_ELEM_BITS)
        return ops.select(neg, xu - xp, xp)

    def gelu_tanh(self, x, ops: Ops):
        u = (x + ops.mul(ops.square(x), x) * 0.044715) * (2 * math.sqrt(2 / math.pi))
        return ops.mul(x, self.sigmoid(u, ops, bound=None))  # u ~ x^3: the whole ring

    def gelu(self, x, ops: Ops):
        neg = ops.ltz_int(x, ACT_BOUND)
        z = ops.mul_scaled(x, 1 - 2 * neg, 1 / math.sqrt(2))  # |x| / sqrt 2
        t = self.reciprocal(ops.combine([], [(AS_P, z)], 1.0), ops, lo=0, hi=6, bits=RECIP_ELEM_BITS)
        q = ops.mul(ops.poly(t, AS_A, bound=2.0), self.exp(-ops.square(z), ops))  # erfc(z)
        phi = ops.select(neg, 0.5 * q, 1 - 0.5 * q)
        return ops.mul(x, phi)
