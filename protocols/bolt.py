"""``bolt``: BOLT's polynomial GELU, I-BERT exp and tanh polynomial (S&P'24, Pang et al.).

Source (facts and coefficients only; ../shared/research/protocols.md section 3):
Qi-Pang/EzPC branch ``bert`` @8aaaf32d — ``SCI/src/FloatingPoint/fp-math.cpp`` (``gelu_approx_2``,
``tanh_approx``, ``tanh_inner_preprocess``), ``SCI/tests/bert_bolt/{bert.h,nonlinear.cpp}``
(``softmax_fix`` -> ``exp4``, ``layer_norm_fix``; ``NL_ELL`` 37, ``NL_SCALE`` 12).

  * GELU: 0.5x + P(|x|) for |x| <= 2.7, ReLU(x) = (x + |x|)/2 outside; P is BOLT's degree-4
    polynomial. BOLT's two comparisons, MSB(x) for |x| and |x| < 2.7, are taken as x < -2.7,
    x < 0, x < 2.7 in ONE batched call on 32-bit lanes (``Ops.lane``; exact for |x| < 2^14):
    three lane comparisons cost less than two over the whole ring, and need no x^2 first.
  * exp (I-BERT): l = floor(-x/ln2), p = x + l ln2 in (-ln2, 0], e^p ~ 0.3585 (p + 1.353)^2 + 0.344,
    result = e^p 2^-l with the shift l clipped at 13. Obtaining l: ONE A2B conversion of
    z = -x/ln2 - 14 (``ops.bits``) gives its sign bit (z < 0 <=> l < 14, the clip), its four
    integer bits (= l + 2 for y in [-2, 14): two's complement of a value in [-16, 0)) and its top
    12 fraction bits (BOLT's scale 12) from which p is local. The shift by l (with its clip) is
    an exact power of two, read from a 5-bit public table indexed by those five bits (one
    dealer one-hot lookup, in the rounds of the square beside it): the same values a product of
    four 1-bit factors 1 + b_i (2^(-2^i) - 1) gives, in one round instead of four. Chosen over a
    thermometer of 13 comparisons, which would cost 13 A2B conversions per score instead of one.
  * tanh (``tanh_approx``): sign, |x| > 2.855 -> 1, else BOLT's degree-5 polynomial T(|x|).
  * SiLU: BOLT defines none (BERT uses GELU). Derived in BOLT's style: x sigmoid(x) with
    sigmoid(x) = (1 + tanh(x/2))/2 from BOLT's tanh polynomial, i.e.
    SiLU(x) = 0.5x + 0.5 |x| tanh(|x|/2): the same even-part trick as its GELU, two comparisons
    (MSB, |x| < 5.71) batched the same way.
  * reciprocal (softmax's ``div_batch``) and rsqrt (``layer_norm_fix`` -> SIRNN sqrt): SIRNN's
    building blocks, i.e. the exact baseline's (msb normalisation, a table start on the
    mantissa's top bits as SIRNN's, one Goldschmidt step for the reciprocal), reused from
    :mod:`protocols.exact`.

Fixed point: BOLT runs a 37-bit ring with 12 fraction bits; CrypTen has 64 bits with 16. BOLT's
Motzkin-preprocessed evaluation forms (constants up to 36 with cancellation) are tuned for its
ring; on the 2^-16 grid they would amplify the rounding of public constants, so the SAME
polynomials are evaluated in monomial form, in |x| for GELU and SiLU: their coefficients ride on
one truncation with 24 fraction bits (``Ops.combine``; values outside the segment are masked, so
only in-range values need room in the ring), and tanh in a scaled variable t = |x|/cut
(coefficients c_k cut^k), which needs the same number of product rounds.
"""
from __future__ import annotations

import math

from pmpc.ops import ACT_BOUND, Ops
from protocols.base import FnSpec, Protocol, rescale
from protocols.exact import Exact

GELU_P = (0.001620808531841547, -0.03798164612714154, 0.5410550166368381, -0.18352506127082727,
          0.020848611754127593)  # P(y), y = |x| <= 2.7
GELU_CUT = 2.7
TANH_T = (-0.0024920889620412097, 1.0542492677156243, -0.17616532856475706, -0.20093640347818847,
          0.09948747962825866, -0.013232131886235352)  # T(y), y = |x| <= 2.855
TANH_CUT = 2.855
LN2 = math.log(2.0)
EXP_Q = (0.3585, 1.353, 0.344)  # e^p ~ 0.3585 (p + 1.353)^2 + 0.344 on (-ln2, 0]
EXP_CLIP = 13
EXP_FRAC_BITS = 12  # BOLT's NL_SCALE: fraction bits of -x/ln2 that p is built from
# 2^-l with BOLT's clip, indexed by v = l + 2 (bits 0-3) and keep = [l < 14] (bit 4): kept,
# 2^-l = 4 2^-v; clipped, 2^-13. Exact powers of two (>= 2^-13) on the 2^-16 grid.
EXP_SHIFT = [2.0 ** -EXP_CLIP] * 16 + [4.0 * 2.0 ** -v for v in range(16)]
# SiLU's one combination of flag x power products: each product sits on 2^16 (a ring-integer flag
# times a value), so |result| < 2^14 leaves 24 fraction bits for the coefficients (the x^6
# term's 2.6e-5 keeps 10 significant bits; 2^-25 x 5.7^6 ~ 1e-3 at the segment's end)
SILU_COEF_BITS = 24
# |silu(gate) up| the gated MLP's fused product leaves room for: 2^(61 - 16 - 24)
SILU_TIMES_BOUND = 2.0 ** 21

_EXACT = Exact()


def sign_abs_inside(x, cut: float, ops: Ops):
    """MSB(x) and [|x| < cut] in ONE batched comparison (x against -cut, 0, cut on 32-bit lanes,
    as ring integers), then |x| and x^2 in one product round. Returns (neg, inside, |x|, x^2)."""
    below, neg, under = ops.lt(x, [-cut, 0.0, cut], bound=2 * ACT_BOUND, integer=True)
    a, x2 = ops.mul_many([(x, 1 - 2 * neg), (x, x)])
    return neg, under - below, a, x2


def weighted(ops: Ops, terms, k: int):
    """``sum_i c_i v_i`` for public c_i (rounded to 2^-k) and secret v_i, exactly, left on the
    scale 2^(f + k): local ring arithmetic, no truncation (its product's truncation removes the
    2^k)."""
    acc = None
    for c, v in terms:
        t = ops.as_int(v) * ops.fixed(c, k)
        acc = t if acc is None else acc + t
    return ops.from_int(acc, ops.scale_bits(terms[0][1]) + k)


def inside_or(x, a, inside, d, ops: Ops):
    """0.5 x + 0.5 |x| + inside * d: the ReLU outside, the polynomial (given as its difference d
    from the ReLU) inside — one product with the ring-integer flag, no truncation but the 0.5s'."""
    return ops.combine([(1.0, inside, d)], [(0.5, x), (0.5, a)])


class Bolt(Protocol):
    name = "bolt"
    summary = "BOLT: degree-4 GELU on |x|<=2.7, I-BERT exp (shift clipped at 13), tanh poly, SIRNN div/rsqrt"
    source = ("Qi-Pang/EzPC@8aaaf32d (branch bert) SCI/src/FloatingPoint/fp-math.cpp, "
              "SCI/tests/bert_bolt/nonlinear.cpp")
    specs = {
        "gelu": FnSpec((-8.0, 8.0), max_abs_err=0.0122, comparisons=3, multiplications=5,
                       method="0.5x + P4(|x|) on |x|<=2.7, ReLU outside; x vs -2.7,0,2.7 in one 32-bit-lane batch"),
        "silu": FnSpec((-12.0, 12.0), max_abs_err=0.0246, comparisons=3, multiplications=8,
                       method="0.5x + 0.5|x| tanh(|x|/2), BOLT tanh poly (|x|/2 <= 2.855, else 1)"),
        "tanh": FnSpec((-6.0, 6.0), max_abs_err=0.0086, comparisons=3, multiplications=7,
                       method="sign(x) T5(|x|) on |x|<=2.855, sign(x) outside"),
        "exp": FnSpec((-16.0, 0.0), max_abs_err=0.003, comparisons=1, multiplications=2,
                      method="I-BERT: 2^-l (0.3585(p+1.353)^2+0.344), l from one A2B, shift clipped at 13 (a 5-bit table)"),
        "reciprocal": FnSpec((2.0 ** -12, 2.0 ** 14), max_rel_err=1e-7, comparisons=25, multiplications=4,
                             method="SIRNN div (exact baseline): msb normalisation, 12-bit table start, 1 Goldschmidt step"),
        "rsqrt": FnSpec((2.0 ** -12, 2.0 ** 30), max_rel_err=1.3e-4, comparisons=41, multiplications=2,
                        method="SIRNN rsqrt (exact baseline): msb normalisation to [1,2), 12-bit table start"),
        "softmax": FnSpec((-12.0, 12.0), max_abs_err=0.0018, comparisons=4.81, multiplications=6.88,
                          method="x - max (tournament), I-BERT exp, SIRNN reciprocal of the sum; rows of 16"),
    }

    def gelu(self, x, ops: Ops):
        # Elements outside |x| < 2.7 get garbage from the polynomial and are masked by the
        # ring-integer flag (a product with 0 is exactly 0), so the polynomial's combination only
        # needs room for in-range values: its coefficients keep 24 bits, and P is evaluated in
        # |x| directly (no scaled variable, no truncation for one).
        neg, inside, a, x2 = sign_abs_inside(x, GELU_CUT, ops)
        c = GELU_P  # P(a) - relu + 0.5 x = P(a) - 0.5 a
        d = ops.combine([(c[3], a, x2), (c[4], x2, x2)], [(c[1] - 0.5, a), (c[2], x2)], c[0], bound=4.0)
        return inside_or(x, a, inside, d, ops)

    def tanh(self, x, ops: Ops):
        neg, inside, a, x2 = sign_abs_inside(x, TANH_CUT, ops)
        neg, inside = ops.lift(neg), ops.lift(inside)
        t, t2 = a * (1 / TANH_CUT), x2 * (1 / TANH_CUT ** 2)
        p34 = ops.mul(ops.stack([t, t2, neg]), ops.stack([t2, t2, inside]))
        t3, t4, neg_in = p34[0], p34[1], p34[2]
        t5 = ops.mul(t2, t3)
        c = rescale(TANH_T, TANH_CUT)
        T = c[0] + t * c[1] + t2 * c[2] + t3 * c[3] + t4 * c[4] + t5 * c[5]
        # sign(x) (1 + inside (T - 1)) = (1 - 2 neg) + (inside - 2 neg inside)(T - 1)
        return (1 - 2 * neg) + ops.mul(inside - 2 * neg_in, T - 1)

    def silu(self, x, ops: Ops):
        return self._silu_times(x, None, ops)

    def _silu_times(self, x, u, ops: Ops):
        # |x| tanh(|x|/2) = sum_k T_k 2^-k |x|^(k+1) (degree 6 in a = |x|) inside |x| < 5.71;
        # outside, garbage masked by the flag as in gelu. The even powers of a are those of x and
        # the odd ones sign(x) times those of x, so the powers of x need no comparison: they are
        # taken WHILE the comparison's rounds run (``ops.parallel``), and with the flags as ring
        # integers (inside sign(x) = under + below - 2 neg, 0.5 x + 0.5 |x| = (1 - neg) x) the
        # whole function is one product round with them and one truncation:
        #   silu = (1 - neg) x + inside E(x) + inside sign(x) O(x),
        # E / O the even / odd parts of 0.5 (sum_k c_k a^(k+1) - a) written in x. A factor u
        # (the gated MLP's up projection) multiplies every power in the same three product
        # rounds (x u, then x^2 u, x^3 u, then x^4 u, x^5 u, x^6 u), so silu(x) u costs no more.
        cut = 2 * TANH_CUT
        c = [t * 2.0 ** -k for k, t in enumerate(TANH_T)]  # on a^(k+1)

        def powers():  # [x, x^2 .. x^6] (times u) in three product rounds
            if u is None:
                x2 = ops.mul(x, x)
                x3, x4 = ops.mul_many([(x, x2), (x2, x2)])
                x5, x6 = ops.mul_many([(x, x4), (x2, x4)])
                return x, x2, x3, x4, x5, x6
            x2, xu = ops.mul_many([(x, x), (x, u)])
            x4, x2u, x3u = ops.mul_many([(x2, x2), (x2, u), (x2, xu)])
            x4u, x5u, x6u = ops.mul_many([(x4, u), (x4, xu), (x4, x2u)])
            return xu, x2u, x3u, x4u, x5u, x6u

        (below, neg, under), p = ops.parallel(
            lambda: ops.lt(x, [-cut, 0.0, cut], bound=2 * ACT_BOUND, integer=True), powers)
        inside, signed = under - below, under + below - 2 * neg
        # E and O as exact ring-integer sums (coefficients on 2^-24, no truncation), so each flag
        # multiplies ONE value: three products, one truncation by 2^24 for all
        even = weighted(ops, [(0.5 * c[1], p[1]), (0.5 * c[3], p[3]), (0.5 * c[5], p[5])], SILU_COEF_BITS)
        odd = weighted(ops, [(0.5 * (c[0] - 1.0), p[0]), (0.5 * c[2], p[2]), (0.5 * c[4], p[4])], SILU_COEF_BITS)
        return ops.combine([(1.0, 1 - neg, p[0]), (1.0, inside, even), (1.0, signed, odd)],
                           bound=ACT_BOUND if u is None else SILU_TIMES_BOUND, coef_frac=0)

    def exp_exact(self, x, ops: Ops):
        fb = ops.fxp_bits
        # z = -x/ln2 - 14: the factor rides on the bit extraction (no truncation)
        pos = list(range(fb - EXP_FRAC_BITS, fb + 4)) + [63]
        b = ops.bits(x, pos, lift=False, scale=-1.0 / LN2, offset=-(EXP_CLIP + 1))
        # the shift: v = l + 2 (z's four integer bits) and the clip flag (z's sign) index ONE
        # public table of the exact power of two the result is multiplied by
        idx = ops.int_dot(ops.stack([b[EXP_FRAC_BITS + i] for i in range(5)]), [1, 2, 4, 8, 16])
        # e^p ~ q0 (p + q1)^2 + q2 with p = -ln2 frac: sqrt(q0) (p + q1) from the bits, locally
        r = math.sqrt(EXP_Q[0])
        q_in = ops.int_combine([(-LN2 * r * 2.0 ** (j - EXP_FRAC_BITS), b[j]) for j in range(EXP_FRAC_BITS)],
                               r * EXP_Q[1])
        # the square exactly (a product of ring integers: no truncation, on the scale 2^(2f)),
        # in the table's round
        fb2 = ops.scale_bits(q_in) * 2
        shift, sq = ops.parallel(lambda: ops.lookup(ops.stack([idx]), 5, [EXP_SHIFT])[0],
                                 lambda: ops.from_int(ops.mul(ops.as_int(q_in), ops.as_int(q_in)), fb2))
        # e^p 2^-l = (sq + q2) shift: q2 added exactly on sq's scale, the product exact too
        ep = sq + EXP_Q[2]
        return ops.from_int(ops.mul(ops.as_int(ep), ops.as_int(shift)), ops.scale_bits(ep) + ops.scale_bits(shift))

    def exp(self, x, ops: Ops):
        return ops.rescale(self.exp_exact(x, ops))

    exact_sum_squares = _EXACT.exact_sum_squares  # its rsqrt is the exact baseline's

    def reciprocal(self, x, ops: Ops):
        return _EXACT.reciprocal(x, ops)

    def reciprocal_times(self, x, times, ops: Ops):
        return _EXACT.reciprocal_times(x, times, ops)

    def denominator_times(self, x, times, ops: Ops):
        return _EXACT.denominator_times(x, times, ops)

    def rsqrt(self, x, ops: Ops, scale: float = 1.0):
        return _EXACT.rsqrt(x, ops, scale=scale)

    def rsqrt_times(self, x, times, ops: Ops, scale: float = 1.0, out: float = 1.0):
        return _EXACT.rsqrt_times(x, times, ops, scale=scale, out=out)
