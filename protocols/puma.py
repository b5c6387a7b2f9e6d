"""``puma``: PUMA's piecewise GELU/SiLU and softmax on SecretFlow SPU's fixed-point built-ins.

Sources (facts and coefficients only; see ../shared/research/protocols.md sections 5 and 6):
  * AntCPLab/puma_benchmarks @df36d1ec ``bench_bert/bench_bert.py::hack_gelu``,
    ``bench_gpt2/bench_gpt2.py``, ``bench_llama7b/bench_llama7b.py::hack_silu``, ``hack_softmax``
    (same GELU in secretflow/spu history commit cce7f26e; SiLU in
    ``examples/python/ml/flax_llama7b/flax_llama7b.py``);
  * secretflow/spu @02ac612d ``src/libspu/kernel/hal/fxp_approx.cc`` (``exp_taylor``, ``f_rsqrt``),
    ``fxp_base.cc`` (Goldschmidt division), ``core/config.cc`` (defaults).

PUMA (3PC ABY3 in the paper, FM64 with 18 fraction bits) is run here as 2-party CrypTen with 16
fraction bits. The SPU building blocks live in this module because BumbleBee (a fork of SPU)
uses the same ones:
  * ``spu_neg_exp``: (1 + x/32)^32 (``exp_taylor`` with ``fxp_exp_iters`` 5, PUMA's config) times
    the mask [x >= -14] (one comparison) — PUMA's ``hack_softmax`` zeroes very negative exponents;
  * ``spu_reciprocal``: normalise x = c 2^k with c in [0.5, 1) (msb, one batched comparison giving
    exact powers of two), w0 = 2.9142 - 2c, two Goldschmidt iterations r <- r(1+e), e <- e^2
    (``fxp_div_goldschmidt_iters`` = 2): relative error 5.4e-5;
  * ``spu_rsqrt`` (``f_rsqrt``): highest-one-bit normalisation to u in [0.25, 0.5), degree-4
    polynomial, compensation 2^(-(k+2)/2) — no Newton step: relative error 8.2e-5.
    SPU assembles the compensation from the bit parity; here the one-hot msb bin gives it as a
    public linear combination (one batched comparison, exact in fixed point).

Fixed point: SPU keeps 18 fraction bits, we keep CrypTen's 16, so a public coefficient is rounded
to 2^-17. To keep that rounding out of the result every polynomial is evaluated in a scaled
variable t = x/R (coefficients c_k R^k, computed below from the published ones), so no
coefficient is tiny and no power is huge on the segment where it is used.
"""
from __future__ import annotations

import math

from pmpc.ops import ACT_BOUND, Ops
from protocols.base import FnSpec, Protocol, rescale


def poly_from_powers(pows: dict, coeffs, const=None):
    """sum_k coeffs[k] t^k from precomputed powers ``pows[k]`` (k >= 1); local."""
    out = const if const is not None else 0.0
    for k, c in enumerate(coeffs):
        if k == 0:
            out = out + c
        elif c != 0.0:
            out = out + pows[k] * c
    return out


def msb_bins(x, lo: int, hi: int, weights, ops: Ops, frac_bits=None) -> list:
    """One batched comparison against 2^k (k = lo+1..hi) gives the one-hot bin of x in
    [2^k, 2^(k+1)); returns, for each ``w`` in ``weights`` (a function of k), the public linear
    combination sum_k onehot_k w(k). Below bin lo counts as lo, above hi as hi.

    The comparison bits are exact ring integers (``ltz_int``) weighted by the INTEGERS
    round(w(k) 2^b) and read back as fixed point with b fraction bits (``from_int``; b from
    ``frac_bits``, default the standard 16): no truncation, so a weight of a few units comes out
    exact instead of off by a unit per term."""
    ks = list(range(lo + 1, hi + 1))
    below = ops.ltz_int(ops.stack([x - 2.0 ** k for k in ks]))  # x < 2^k
    frac_bits = frac_bits or [ops.fxp_bits] * len(weights)
    outs = []
    for w, fb in zip(weights, frac_bits):
        acc = below[0] * ops.fixed(w(lo), fb)
        for i, k in enumerate(ks):
            nxt = below[i + 1] if i + 1 < len(ks) else 1
            acc = acc + (nxt - below[i]) * ops.fixed(w(k), fb)
        outs.append(ops.from_int(acc, fb))
    return outs


# -- SPU building blocks ---------------------------------------------------------------------
def spu_neg_exp(x, ops: Ops, iters: int = 5, cut: float = -14.0):
    """(1 + x/2^n)^(2^n), zeroed below ``cut``. The comparison runs first (a ring-integer flag:
    the mask is one product with no truncation), the squarings after; the first squaring takes
    the 2^-2n of (2^n + x)^2 on its truncation."""
    keep = ops.ge(x, cut, bound=2 * ACT_BOUND, integer=True)
    u = x + float(2 ** iters)
    y = ops.mul_scaled(u, u, 2.0 ** (-2 * iters), bound=4.0)
    for _ in range(iters - 1):
        y = ops.square(y)
    return ops.mul(y, keep)


GOLDSCHMIDT_W0 = (2.9142, -2.0)  # w0 = 2.9142 - 2c for c in [0.5, 1)


def spu_reciprocal(x, ops: Ops, lo: int = -2, hi: int = 14, iters: int = 2, times=None, times_bound: float = 4.0):
    """``times``/x (``times`` default 1) for x > 0 in [2^lo, 2^(hi+1)): msb normalisation +
    Goldschmidt (SPU ``div``). With c = m/2: r = 2.9142 - m is local and e = 1 - m r / 2 is one
    product; ``times`` (scaled by f in the normalisation's round) rides along with r from the
    round of e on, so the result needs no product of its own."""
    if times is None:  # x = m 2^k, m in [1, 2); tf = times 2^-k / 2
        m, tf = ops.normalize(x, base_log2=1, lo=lo, hi=hi, scale=0.5)
    else:
        m, tf = ops.normalize(x, base_log2=1, lo=lo, hi=hi, scale=0.5, times=times, times_bound=times_bound)
    r = GOLDSCHMIDT_W0[0] + m * (GOLDSCHMIDT_W0[1] / 2)        # an integer factor: local
    mr, z = ops.mul_many([(m, r), (tf, r)], [-0.5, 1.0], bound=[4.0, times_bound])
    e = mr + 1.0
    for i in range(iters):
        if i + 1 < iters:  # z(1+e) and e^2 in one product round
            z, e = ops.mul_many([(z, 1 + e), (e, e)], bound=[times_bound, 4.0])
        else:
            z = ops.mul(z, 1 + e)
    return z  # times/x = tf/m = (tf/2)/c


SPU_RSQRT = (4.14285016, -15.47994394, 38.4714796, -49.86605845, 26.02942339)  # on [0.25, 0.5)


def spu_rsqrt(x, ops: Ops, lo: int = -12, hi: int = 30, scale: float = 1.0, times=None, out: float = 1.0):
    """SPU ``f_rsqrt``: x in [2^k, 2^(k+1)) -> u = x 2^-(k+2) in [0.25, 0.5),
    rsqrt(x) = p(u) 2^(-(k+2)/2). Both factors are public functions of the one-hot msb bin,
    assembled as integer combinations on a scale that holds every bin exactly (see
    :func:`msb_bins`): 2^-(k+2) on 2^(hi+2), so u costs ONE product; the compensation
    scale 2^(-(k+2)/2) (SPU's parity factor and power of two together) on the largest scale the
    result leaves room for. With ``times`` (a norm's row, |times_i| <= sqrt(x)), returns
    ``out * times * scale / sqrt(x)``: times meets the compensation in u's product round."""
    top = scale * 2.0 ** (-(lo + 2) / 2)                     # the largest compensation
    s2 = 61 - 2 * ops.fxp_bits - max(0, math.ceil(math.log2(4 * top)))  # room: result < 2 top
    if times is not None:  # |times comp| <= 2 scale sqrt(x) 2^(-(k+2)/2) <= 2 scale: on the standard scale
        s2 = 0
    down, comp = msb_bins(x, lo, hi, [lambda k: 2.0 ** -(k + 2), lambda k: scale * 2.0 ** (-(k + 2) / 2)], ops,
                          frac_bits=[hi + 2, ops.fxp_bits + s2])
    if times is None:
        u = ops.mul_scaled(x, down, 1.0, bound=1.0)
    else:
        u, comp = ops.mul_many([(x, down), (times, comp)], bound=[1.0, 4 * scale])
    u2 = ops.square(u)
    c = SPU_RSQRT
    p = ops.combine([(c[3], u2, u), (c[4], u2, u2)], [(c[1], u), (c[2], u2)], c[0], bound=8.0)
    if times is None:
        return ops.mul_scaled(p, comp, out, bound=4 * top)
    return ops.mul_scaled(comp, p, out, bound=4 * scale)


# -- PUMA -------------------------------------------------------------------------------------
GELU_F0 = (-0.5054031199708174, -0.42226581151983866, -0.11807612951181953, -0.011034134030615728)
GELU_F1 = (0.008526321541038084, 0.5, 0.3603292692789629, 0.0, -0.037688200365904236, 0.0,
           0.0018067462606141187)
SILU_Q = (-0.3067541139982155, -0.0819767021525476, -0.0055465625580307)
SILU_F1 = (0.0085064025895951, 0.5, 0.2281430841728270, 0.0, -0.011113046708173, 0.0,
           0.0002743776353465)
SCALE = 4.0  # t = x/4: |t| <= 1 on the degree-6 segments, <= 2 on the low ones


def piecewise3(x, thresholds, low, mid, ops: Ops, scale: float = SCALE):
    """0 below thresholds[0]; ``low`` on [t0, t1); ``mid`` on [t1, t2]; x above t2.
    Polynomials (coefficients in x) are evaluated in t = x/scale with powers t..t^6 (3 rounds);
    the three comparisons run as ONE batched call and the three selections as one product."""
    b0, b1, b2 = ops.lt(x, thresholds, bound=2 * ACT_BOUND)
    t = x * (1.0 / scale)
    t2 = ops.square(t)
    p34 = ops.mul(ops.stack([t, t2]), ops.stack([t2, t2]))
    t3, t4 = p34[0], p34[1]
    t6 = ops.mul(t2, t4)
    pows = {1: t, 2: t2, 3: t3, 4: t4, 6: t6}
    f_low = poly_from_powers(pows, rescale(low, scale))
    f_mid = poly_from_powers(pows, rescale(mid, scale))
    parts = ops.mul(ops.stack([b1 - b0, b2 - b1, 1 - b2]), ops.stack([f_low, f_mid, x]))
    return parts[0] + parts[1] + parts[2]


class Puma(Protocol):
    name = "puma"
    summary = "PUMA: piecewise GELU (-4,-1.95,3) / SiLU (-8,-4,4), (1+x/32)^32 exp masked at -14, SPU div/rsqrt"
    source = ("AntCPLab/puma_benchmarks@df36d1ec bench_*/bench_*.py (hack_gelu, hack_silu, hack_softmax); "
              "secretflow/spu@02ac612d src/libspu/kernel/hal/fxp_approx.cc, fxp_base.cc")
    # Bounds: measured max error in float64 (tests/test_protocols.py redraws inputs every run) x ~1.3.
    specs = {
        "gelu": FnSpec((-8.0, 8.0), max_abs_err=0.026, comparisons=3, multiplications=7,
                       method="0 | cubic on [-4,-1.95) | even deg-6 + x/2 on [-1.95,3] | x; 3 batched comparisons"),
        "silu": FnSpec((-12.0, 12.0), max_abs_err=0.094, comparisons=3, multiplications=7,
                       method="0 | quadratic on [-8,-4) | even deg-6 + x/2 on [-4,4] | x; 3 batched comparisons"),
        "exp": FnSpec((-16.0, 0.0), max_abs_err=0.0111, comparisons=1, multiplications=6,
                      method="(1+x/32)^32 (SPU exp_taylor, 5 iters) times [x >= -14]"),
        "reciprocal": FnSpec((0.25, 2.0 ** 14), max_rel_err=7.1e-5, comparisons=16, multiplications=6,
                             method="msb normalisation to [0.5,1), w0 = 2.9142 - 2c, 2 Goldschmidt iterations"),
        "rsqrt": FnSpec((2.0 ** -12, 2.0 ** 30), max_rel_err=1.07e-4, comparisons=42, multiplications=5,
                        method="SPU f_rsqrt: msb normalisation to [0.25,0.5), deg-4 poly, 2^(-(k+2)/2)"),
        "softmax": FnSpec((-12.0, 12.0), max_abs_err=0.037, comparisons=4.88, multiplications=11.94,
                          method="x - max (tournament), masked (1+x/32)^32, Goldschmidt reciprocal of the sum; rows of 16"),
    }

    def gelu(self, x, ops: Ops):
        return piecewise3(x, [-4.0, -1.95, 3.0], GELU_F0, GELU_F1, ops)

    def silu(self, x, ops: Ops):
        return piecewise3(x, [-8.0, -4.0, 4.0], SILU_Q, SILU_F1, ops)

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
