"""``bumblebee``: BumbleBee's segment-wise GELU/SiLU and softmax (NDSS'25, Lu et al.).

Source (facts and coefficients only; ../shared/research/protocols.md section 4):
AntCPLab/OpenBumbleBee @b9c9c86a (fork of SecretFlow SPU, protocol CHEETAH)
``libspu/kernel/hal/intrinsic/nn/activation.cc`` (``f_seg3_gelu``, ``f_seg4_silu``,
``f_neg_exp_taylor``), ``examples/python/conf/2pc.json`` (``fxp_exp_iters`` 5,
``fxp_div_goldschmidt_iters`` default 2).

  * GELU (``f_seg3_gelu``): batched comparisons x < -3, x < 0, x < 3 (ONE call); |x| by the sign;
    x >= 3 -> x; -3 <= x < 3 -> 0.5x + P(|x|) with BOLT's degree-4 P; x < -3 -> 0.
  * SiLU (``f_seg4_silu``): batched comparisons x < -8, x < 0, x < 8; sigmoid(|x|) = S(|x|), a
    degree-4 polynomial on |x| < 8, sigmoid(x) = S or 1 - S; x >= 8 -> x, x < -8 -> 0. Computed
    as 0.5x + |x| (S(|x|) - 0.5), which is x sigmoid(x) for both signs and needs no sign select.
  * exp (``f_neg_exp_taylor``): (1 + x/32)^32 times [x >= -14]; softmax = x - max, exp, the sum,
    SPU's Goldschmidt reciprocal (x (1/sum), ``enable_optimize_denominator_with_broadcast``).
  * rsqrt: SPU's ``f_rsqrt`` polynomial after normalisation (no Newton step).
The SPU building blocks are shared with :mod:`protocols.puma`.

Differences from the original, stated: BumbleBee casts shares to a 32-bit ring with 12 fraction
bits for the activations and uses an approximate (low-bits-dropped) millionaire comparison;
CrypTen has one 64-bit ring (16 fraction bits) and an exact comparison, so the comparisons here
cost what CrypTen's cost. The polynomials are evaluated in |x| with their coefficients on one
truncation at 24 fraction bits (``Ops.combine``), so no coefficient falls near the 2^-16 grid
(S's x^4 term is 2.5e-4); values outside the segment are masked by their ring-integer flag, so
only in-range values need room in the ring.
"""
from __future__ import annotations

from pmpc.ops import ACT_BOUND, Ops
from protocols.base import FnSpec, Protocol
from protocols.puma import spu_neg_exp, spu_reciprocal, spu_rsqrt

GELU_P = (0.001620808531841547, -0.03798164612714154, 0.5410550166368381, -0.18352506127082727,
          0.020848611754127593)  # P(|x|), |x| < 3 (the same P as BOLT)
SILU_S = (0.49352908920523014, 0.3028510171823098, -0.06808619212463336, 0.006747908074344234,
          -0.0002472776978734074)  # sigmoid(|x|), |x| < 8


def even_segments(x, cut: float, inner_fn, ops: Ops):
    """x >= cut -> x; |x| < cut -> inner_fn(x, |x|, x^2); x < -cut -> 0.

    One batched comparison (-cut, 0, cut) as ring integers; |x| and x^2 in one product round;
    the two selections in one product round with no truncation (ring-integer flags). Elements
    outside |x| < cut get garbage from ``inner_fn`` and are masked by their flag (a product
    with 0 is exactly 0), so the polynomial only needs room for in-range values."""
    b_lo, b_neg, b_hi = ops.lt(x, [-cut, 0.0, cut], bound=2 * ACT_BOUND, integer=True)
    a, x2 = ops.mul_many([(x, 1 - 2 * b_neg), (x, x)])
    inner = inner_fn(x, a, x2)
    return ops.combine([(1.0, 1 - b_hi, x), (1.0, b_hi - b_lo, inner)])


class BumbleBee(Protocol):
    name = "bumblebee"
    summary = "BumbleBee: 3-segment GELU (+-3), 4-segment SiLU (|x|<8), (1+x/32)^32 exp cut at -14, SPU div/rsqrt"
    source = ("AntCPLab/OpenBumbleBee@b9c9c86a libspu/kernel/hal/intrinsic/nn/activation.cc "
              "(f_seg3_gelu, f_seg4_silu, f_neg_exp_taylor); secretflow/spu@02ac612d fxp_approx.cc, fxp_base.cc")
    specs = {
        "gelu": FnSpec((-8.0, 8.0), max_abs_err=0.0068, comparisons=3, multiplications=6,
                       method="x<-3: 0 | 0.5x + P4(|x|) | x>=3: x; comparisons -3,0,3 in one batch"),
        "silu": FnSpec((-12.0, 12.0), max_abs_err=0.0129, comparisons=3, multiplications=7,
                       method="x<-8: 0 | 0.5x + |x|(S4(|x|) - 1/2) | x>=8: x; comparisons -8,0,8 in one batch"),
        "exp": FnSpec((-16.0, 0.0), max_abs_err=0.0111, comparisons=1, multiplications=6,
                      method="(1+x/32)^32 times [x >= -14]"),
        "reciprocal": FnSpec((0.25, 2.0 ** 14), max_rel_err=7.1e-5, comparisons=16, multiplications=6,
                             method="msb normalisation to [0.5,1), w0 = 2.9142 - 2c, 2 Goldschmidt iterations"),
        "rsqrt": FnSpec((2.0 ** -12, 2.0 ** 30), max_rel_err=1.07e-4, comparisons=42, multiplications=5,
                        method="SPU f_rsqrt: msb normalisation to [0.25,0.5), deg-4 poly, no Newton step"),
        "softmax": FnSpec((-12.0, 12.0), max_abs_err=0.037, comparisons=4.88, multiplications=11.94,
                          method="x - max (tournament), (1+x/32)^32 cut at -14, Goldschmidt reciprocal; rows of 16"),
    }

    def gelu(self, x, ops: Ops):
        c = GELU_P  # 0.5 x + P(|x|), P in |x| directly: coefficients keep 24 bits in the combination
        return even_segments(x, 3.0, lambda x, a, x2: ops.combine(
            [(c[3], a, x2), (c[4], x2, x2)], [(0.5, x), (c[1], a), (c[2], x2)], c[0], bound=8.0), ops)

    def silu(self, x, ops: Ops):
        c = SILU_S  # 0.5 x + |x| (S(|x|) - 1/2) = 0.5 x + sum_k c'_k |x|^(k+1)

        def inner(x, a, x2):
            a3, a4 = ops.mul_many([(a, x2), (x2, x2)])
            return ops.combine([(c[4], a, a4)], [(0.5, x), (c[0] - 0.5, a), (c[1], x2), (c[2], a3), (c[3], a4)],
                               bound=16.0)

        return even_segments(x, 8.0, inner, ops)

    def exp(self, x, ops: Ops):
        return spu_neg_exp(x, ops)

    def reciprocal(self, x, ops: Ops):
        return spu_reciprocal(x, ops)

    def reciprocal_times(self, x, times, ops: Ops):
        return spu_reciprocal(x, ops, times=times)

    def rsqrt(self, x, ops: Ops, scale: float = 1.0):
        return spu_rsqrt(x, ops, scale=scale)

    def rsqrt_times(self, x, times, ops: Ops, scale: float = 1.0, out: float = 1.0):
        return spu_rsqrt(x, ops, scale=scale, times=times, out=out)
