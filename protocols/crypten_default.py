"""``crypten``: CrypTen 0.4.1's own approximations with its default configuration.

Re-expressed over the op set (same arithmetic as ``crypten/common/functions/approximations.py``
with ``configs/default.yaml``) so that the plaintext emulation is exact:
  * exp: (1 + x/2^8)^(2^8) — 8 squarings (3% relative error at x = -4; 0 below about -512);
  * reciprocal: Newton-Raphson, 10 iterations from y0 = 3 e^(1-2x) + 0.003 (good to ~500);
  * sigmoid ("reciprocal" method): 1 / (1 + e^-|x|) with 3 NR steps from 0.75, mirrored;
    tanh = 2 sigmoid(2x) - 1. CrypTen has no GELU; the tanh form on its tanh is used
    (its Taylor erf relies on ``pow``, which is wrong for odd powers >= 5 in 0.4.1);
  * inv_sqrt: 3 NR steps from 2.2 e^-(x/2+0.2) + 0.2 - x/1024 — accurate only on about [0.1, 150].
    Real sums of squares lie far outside, so pmpc normalises the input to [1, 4) first by its most
    significant bit (the general fix shared with ``exact``); CrypTen's own iteration does the rest.
"""
from __future__ import annotations

import math

from pmpc.ops import Ops
from protocols.base import FnSpec, Protocol
from protocols.exact import newton_rsqrt


def exp_limit(x, n: int, ops: Ops, scale: float = 1.0, add=(), const: float = 0.0):
    """``scale (1 + x/2^n)^(2^n) + sum d v + const``: n squarings. The first takes the 2^-2n of
    (2^n + x)^2 on its own truncation, the last the public scale and affine terms."""
    y = x + float(2 ** n)
    for i in range(n):
        first, last = i == 0, i == n - 1
        y = ops.mul_scaled(y, y, (2.0 ** (-2 * n) if first else 1.0) * (scale if last else 1.0),
                           add=add if last else (), const=const if last else 0.0, bound=16.0)
    return y


class CrypTenDefault(Protocol):
    name = "crypten"
    summary = "CrypTen 0.4.1 defaults: (1+x/256)^256 exp, 10-step NR reciprocal, NR inv_sqrt (normalised)"
    source = "facebookresearch/CrypTen crypten/common/functions/approximations.py, configs/default.yaml"
    specs = {
        "exp": FnSpec((-8.0, 0.0), max_abs_err=2e-2, multiplications=8, method="(1+x/256)^256"),
        "reciprocal": FnSpec((1.0, 300.0), max_rel_err=1e-3, multiplications=28,
                             method="NR x10 from 3e^(1-2x)+0.003"),
        "rsqrt": FnSpec((2.0 ** -12, 2.0 ** 30), max_rel_err=5e-3, comparisons=20, multiplications=20,
                        method="msb normalisation to [1,4), then CrypTen's inv_sqrt (3 NR)"),
        "silu": FnSpec((-20.0, 20.0), max_abs_err=2e-2, comparisons=1, multiplications=16,
                       method="x sigmoid(x), sigmoid by CrypTen's reciprocal method"),
        "gelu": FnSpec((-20.0, 20.0), max_abs_err=2e-2, comparisons=1, multiplications=20,
                       method="tanh form on CrypTen's tanh = 2 sigmoid(2x) - 1"),
    }

    def exp(self, x, ops: Ops):
        return exp_limit(x, 8, ops)

    def reciprocal(self, x, ops: Ops):
        y = exp_limit(1 - 2 * x, 8, ops, scale=3.0, const=0.003)
        for _ in range(10):
            y = ops.mul_scaled(x, ops.square(y), -1.0, add=[(2.0, y)])
        return y

    def rsqrt(self, x, ops: Ops, scale: float = 1.0):
        m, f = ops.normalize(x, base_log2=2, lo=-6, hi=14, scale=scale)
        # 2.2 e^-(m/2 + 0.2) + 0.2 - m/1024; the exponent's 1/2 folds into exp_limit's first 2^-2n
        y = _crypten_rsqrt_start(m, ops)
        return ops.mul(newton_rsqrt(m, y, 3, ops), f)

    def rsqrt_times(self, x, times, ops: Ops, scale: float = 1.0, out: float = 1.0):
        # times scale f from the normalisation's product round: |times scale f| <= 2 scale
        m, tf = ops.normalize(x, base_log2=2, lo=-6, hi=14, scale=scale, times=times, times_bound=4 * scale)
        return ops.mul_scaled(tf, newton_rsqrt(m, _crypten_rsqrt_start(m, ops), 3, ops), out)

    def sigmoid(self, x, ops: Ops):
        neg = ops.ltz_int(x)
        a = ops.mul(x, 1 - 2 * neg)
        d = exp_limit(-a, 8, ops, const=1.0)
        y = ops.combine([], [(-0.5625, d)], 1.5)  # the first NR step from the public 0.75: 2 y0 - d y0^2
        for _ in range(2):
            y = ops.mul_scaled(d, ops.square(y), -1.0, add=[(2.0, y)])
        return ops.select(neg, 1 - y, y)

    def silu(self, x, ops: Ops):
        return ops.mul(x, self.sigmoid(x, ops))

    def gelu(self, x, ops: Ops):
        u = (x + ops.mul(ops.square(x), x) * 0.044715) * (2 * math.sqrt(2 / math.pi))
        return ops.mul(x, self.sigmoid(u, ops))


def _crypten_rsqrt_start(m, ops: Ops):
    """CrypTen's start 2.2 e^-(m/2 + 0.2) + 0.2 - m/1024, as (1 + z/256)^256 with z = -(m/2 + 0.2):
    (256 + z) = (511.6 - m)/2, so the first squaring takes (511.6 - m)^2 2^-18 and no 1/2 of
    its own; the last takes the 2.2 and the affine rest."""
    u = 511.6 - m
    y = ops.mul_scaled(u, u, 2.0 ** -18, bound=16.0)
    for i in range(7):
        last = i == 6
        y = ops.mul_scaled(y, y, 2.2 if last else 1.0, add=[(-1 / 1024, m)] if last else (),
                           const=0.2 if last else 0.0, bound=16.0)
    return y
