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
    12 fraction bits (BOLT's scale 12) from which p is local. 2^-l is a product of four 1-bit
    "lookups" 1 + b_i (2^(-2^i) - 1) — the same bit-decomposition idea as the exact baseline,
    with 4 instead of 15 integer bits and no degree-6 fit. Chosen over a thermometer of 13
    comparisons, which would cost 13 A2B conversions per score instead of one.
  * tanh (``tanh_approx``): sign, |x| > 2.855 -> 1, else BOLT's degree-5 polynomial T(|x|).
  * SiLU: BOLT defines none (BERT uses GELU). Derived in BOLT's style: x sigmoid(x) with
    sigmoid(x) = (1 + tanh(x/2))/2 from BOLT's tanh polynomial, i.e.
    SiLU(x) = 0.5x + 0.5 |x| tanh(|x|/2): the same even-part trick as its GELU, two comparisons
    (MSB, |x| < 5.71) batched the same way.
  * reciprocal (softmax's ``div_batch``) and rsqrt (``layer_norm_fix`` -> SIRNN sqrt): SIRNN's
    building blocks, i.e. the exact baseline's (msb normalisation + Newton), reused from
    :mod:`protocols.exact`.

Fixed point: BOLT runs a 37-bit ring with 12 fraction bits; CrypTen has 64 bits with 16. BOLT's
Motzkin-preprocessed evaluation forms (constants up to 36 with cancellation) are tuned for its
ring; on the 2^-16 grid they would amplify the rounding of public constants, so the SAME
polynomials are evaluated in monomial form in a scaled variable t = |x|/cut (coefficients
c_k cut^k), which needs the same number of product rounds.
"""
from __future__ import annotations

import math

from pmpc.ops import ACT_BOUND, Ops
from protocols.base import FnSpec, Protocol
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

_EXACT = Exact()


def _scaled(coeffs, r):
    return [float(c) * r ** k for k, c in enumerate(coeffs)]


def sign_abs_inside(x, cut: float, ops: Ops):
    """MSB(x) and [|x| < cut] in ONE batched comparison (x against -cut, 0, cut on 32-bit lanes),
    then |x| and x^2 in one product. Returns (neg, inside, |x|, x^2)."""
    below, neg, under = ops.lt(x, [-cut, 0.0, cut], bound=2 * ACT_BOUND)
    ax_x2 = ops.mul(ops.stack([x, x]), ops.stack([1 - 2 * neg, x]))
    return neg, under - below, ax_x2[0], ax_x2[1]


class Bolt(Protocol):
    name = "bolt"
    summary = "BOLT: degree-4 GELU on |x|<=2.7, I-BERT exp (shift clipped at 13), tanh poly, SIRNN div/rsqrt"
    source = ("Qi-Pang/EzPC@8aaaf32d (branch bert) SCI/src/FloatingPoint/fp-math.cpp, "
              "SCI/tests/bert_bolt/nonlinear.cpp")
    specs = {
        "gelu": FnSpec((-8.0, 8.0), max_abs_err=0.0122, comparisons=3, multiplications=5,
                       method="0.5x + P4(|x|) on |x|<=2.7, ReLU outside; x vs -2.7,0,2.7 in one 32-bit-lane batch"),
        "silu": FnSpec((-12.0, 12.0), max_abs_err=0.0246, comparisons=3, multiplications=7,
                       method="0.5x + 0.5|x| tanh(|x|/2), BOLT tanh poly (|x|/2 <= 2.855, else 1)"),
        "tanh": FnSpec((-6.0, 6.0), max_abs_err=0.0086, comparisons=3, multiplications=7,
                       method="sign(x) T5(|x|) on |x|<=2.855, sign(x) outside"),
        "exp": FnSpec((-16.0, 0.0), max_abs_err=0.003, comparisons=1, multiplications=6,
                      method="I-BERT: 2^-l (0.3585(p+1.353)^2+0.344), l from one A2B, shift clipped at 13"),
        "reciprocal": FnSpec((2.0 ** -12, 2.0 ** 14), max_rel_err=1e-9, comparisons=25, multiplications=8,
                             method="SIRNN div (exact baseline): msb normalisation, linear start, 3 Newton steps"),
        "rsqrt": FnSpec((2.0 ** -12, 2.0 ** 30), max_rel_err=5e-7, comparisons=20, multiplications=12,
                        method="SIRNN rsqrt (exact baseline): msb normalisation to [1,4), 3 Newton steps"),
        "softmax": FnSpec((-12.0, 12.0), max_abs_err=0.0018, comparisons=6.12, multiplications=14.62,
                          method="x - max (tree), I-BERT exp, SIRNN reciprocal of the sum; rows of 16"),
    }

    def gelu(self, x, ops: Ops):
        neg, inside, a, x2 = sign_abs_inside(x, GELU_CUT, ops)
        t, t2 = a * (1 / GELU_CUT), x2 * (1 / GELU_CUT ** 2)
        p34 = ops.mul(ops.stack([t, t2]), ops.stack([t2, t2]))
        c = _scaled(GELU_P, GELU_CUT)
        inner = 0.5 * x + c[0] + t * c[1] + t2 * c[2] + p34[0] * c[3] + p34[1] * c[4]
        relu = 0.5 * (x + a)
        return relu + ops.mul(inside, inner - relu)

    def _abs_tanh_pows(self, t, t2, ops: Ops):
        """Powers t^3..t^6 in two rounds (t, t^2 given)."""
        p34 = ops.mul(ops.stack([t, t2]), ops.stack([t2, t2]))
        t3, t4 = p34[0], p34[1]
        p56 = ops.mul(ops.stack([t2, t3]), ops.stack([t3, t3]))
        return {1: t, 2: t2, 3: t3, 4: t4, 5: p56[0], 6: p56[1]}

    def tanh(self, x, ops: Ops):
        neg, inside, a, x2 = sign_abs_inside(x, TANH_CUT, ops)
        t, t2 = a * (1 / TANH_CUT), x2 * (1 / TANH_CUT ** 2)
        p34 = ops.mul(ops.stack([t, t2, neg]), ops.stack([t2, t2, inside]))
        t3, t4, neg_in = p34[0], p34[1], p34[2]
        t5 = ops.mul(t2, t3)
        c = _scaled(TANH_T, TANH_CUT)
        T = c[0] + t * c[1] + t2 * c[2] + t3 * c[3] + t4 * c[4] + t5 * c[5]
        # sign(x) (1 + inside (T - 1)) = (1 - 2 neg) + (inside - 2 neg inside)(T - 1)
        return (1 - 2 * neg) + ops.mul(inside - 2 * neg_in, T - 1)

    def silu(self, x, ops: Ops):
        cut = 2 * TANH_CUT  # tanh(|x|/2) uses the polynomial while |x|/2 <= 2.855
        neg, inside, a, x2 = sign_abs_inside(x, cut, ops)
        t, t2 = a * (1 / cut), x2 * (1 / cut ** 2)  # t = (|x|/2) / 2.855
        pw = self._abs_tanh_pows(t, t2, ops)
        # |x| T(|x|/2) = cut t sum_k tau_k t^k, tau_k = T_k 2.855^k: powers t^1..t^6
        tau = _scaled(TANH_T, TANH_CUT)
        a_tanh = pw[1] * (cut * tau[0])
        for k in range(1, len(tau)):
            a_tanh = a_tanh + pw[k + 1] * (cut * tau[k])
        return 0.5 * x + 0.5 * (a + ops.mul(inside, a_tanh - a))

    def exp(self, x, ops: Ops):
        fb = ops.fxp_bits
        z = x * (-1.0 / LN2) - (EXP_CLIP + 1)
        pos = list(range(fb - EXP_FRAC_BITS, fb + 4)) + [63]
        b = ops.bits(z, pos)
        frac = b[0] * 2.0 ** -EXP_FRAC_BITS
        for j in range(1, EXP_FRAC_BITS):
            frac = frac + b[j] * 2.0 ** (j - EXP_FRAC_BITS)
        ib = [b[EXP_FRAC_BITS + i] for i in range(4)]      # integer bits of z: l + 2 when not clipped
        keep = b[EXP_FRAC_BITS + 4]                        # sign of z: 1 <=> l < 14 (no clip)
        f = [1 + ib[i] * (2.0 ** -(2 ** i) - 1) for i in range(4)]
        q_in = frac * (-LN2) + EXP_Q[1]
        lvl1 = ops.mul(ops.stack([q_in, f[0], f[2]]), ops.stack([q_in, f[1], f[3]]))
        ep = lvl1[0] * EXP_Q[0] + EXP_Q[2]                # e^p
        lvl2 = ops.mul(ops.stack([lvl1[1], keep]), ops.stack([lvl1[2], ep]))
        shift, kept = lvl2[0], lvl2[1]                    # 2^-(l+2), keep e^p
        # kept: e^p 2^-l = 4 e^p 2^-(l+2); clipped: e^p 2^-13
        return ops.mul(kept, shift) * 4 + (ep - kept) * 2.0 ** -EXP_CLIP

    def reciprocal(self, x, ops: Ops):
        return _EXACT.reciprocal(x, ops)

    def rsqrt(self, x, ops: Ops, scale: float = 1.0):
        return _EXACT.rsqrt(x, ops, scale=scale)
