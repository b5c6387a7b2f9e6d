"""``nexus``: NEXUS's non-interactive (FHE) non-linear functions, emulated under MPC.

NEXUS (NDSS'25, Zhang et al.) is an FHE system (CKKS, SEAL): every non-linearity is a polynomial,
with no comparison at all. pmpc runs THE SAME ARITHMETIC as secret-shared MPC (each CKKS
multiplication becomes a Beaver product, sign functions become polynomial compositions), so its
rounds and bytes are MPC costs of NEXUS's approximations, not NEXUS's own FHE costs (NEXUS has
one round and its cost is ciphertext size and bootstrapping). Its error is what these
polynomials do, on CrypTen's 16-bit fixed point instead of CKKS's 2^40 scale.

Source (facts and coefficients only; ../shared/research/protocols.md section 7):
zju-abclab/NEXUS @e15058c7 ``src/gelu.cpp``, ``src/softmax.cpp``, ``src/layer_norm.cpp``,
``src/ckks_evaluator.cpp`` (``sgn_eval``, ``exp``, ``inverse``, ``invert_sqrt``).

  * sign: f4(f4(g4(g4(z)))) of odd degree-9 minimax polynomials (``sgn_eval(x, 2, 2)``), valid for
    z in [-1, 1] (outside, the polynomials diverge); evaluated as z Q(z^2).
  * GELU (``gelu.cpp``): b0 = sgn((x+3.5)/8.5)/2, b1 = sgn((x-3.5)/8.5)/2, GELU = A(x)(b0 - b1) +
    x (b1 + 1/2), A the degree-12 polynomial of the code. Domain [-5, 5] (the sign arguments
    must stay in [-1, 1]); outside it the result is garbage, in CKKS as here.
  * SiLU: NEXUS defines none. Derived in its style: the same two sign polynomials at +-6 with
    divisor 72 (so the domain is [-66, 66], wide enough for real LLM gate activations), a
    degree-12 polynomial A_s fitted (least squares, float64) to SiLU on [-6, 6], and the input
    of A_s clamped with the same signs, clamp = x a1 + 6 a2 - 6 a0 — without the clamp a degree-12
    polynomial times an indicator that is only ~1e-5 from zero is garbage far from the fit.
  * exp (``CKKSEvaluator::exp``): (1 + x/128)^128, 7 squarings.
  * softmax (``softmax.cpp``): exp(x) WITHOUT subtracting the row max (as in the code;
    ``subtract_max = False``), sum, times 0.01, product-form inverse
    prod_{i=0..4} (1 + y^(2^i)) with y = 1 - 0.01 sum, times 0.01. Consequences: the inverse
    converges only while 0.01 sum is in (0, 2) and is accurate (1e-3) only for sums in about
    [20, 180] — the 0.01 is tuned for 128-token rows with small scores. Short rows (the first
    rows of a causal mask: one entry, sum ~ 1) get ~70% error; a row with a large score
    (> ~5: sum > 200) diverges, and a score > ~21 overflows the 64-bit fixed-point ring.
  * rsqrt (``layer_norm.cpp``, ``invert_sqrt(x, 4, 2)``): linear start -1.29054537e-4 x +
    0.129054537, 4 Newton steps y <- 1.5y - 0.5 x y^3, 2 Goldschmidt steps; accurate (1e-3) for
    x in about [3.4, 900] (the start crosses zero at x = 1000). NEXUS feeds it the MEAN of squares (sum times 1/768), so the norms
    here do the same (the base class feeds the sum). Real LLM hidden states (mean squares from
    1e-2 to 1e6) fall far outside: a published limitation, measured as such by ``pmpc bench``.
    (The code also skips the mean subtraction of LayerNorm; it is a free local step, kept here.)
"""
from __future__ import annotations

import numpy as np

from pmpc.ops import Ops
from protocols.base import FnSpec, Protocol

G4 = tuple(c / 2 ** 10 for c in (5850, -34974, 97015, -113492, 46623))  # odd: z (c0 + c1 z^2 + ...)
F4 = tuple(c / 2 ** 7 for c in (315, -420, 378, -180, 35))
GELU_A = (2.25775755e-4, 0.5, 0.396880960, 0.0, -0.0637042698, 0.0, 8.38841647e-3, 0.0,
          -7.17830961e-4, 0.0, 3.49617829e-5, 0.0, -7.26059653e-7)
GELU_C, GELU_D = 3.5, 8.5
SILU_C, SILU_D = 6.0, 72.0
EXP_N = 7
INV_SCALE = 0.01
INV_TERMS = 5
RSQRT_INIT = (0.129054537, -1.29054537e-4)
RSQRT_NEWTON, RSQRT_GOLDSCHMIDT = 4, 2


def _even_coeffs(coeffs, r):
    """Even part of a polynomial in x as a polynomial in u = (x/r)^2."""
    return [float(coeffs[2 * k]) * r ** (2 * k) for k in range((len(coeffs) + 1) // 2)]


def _fit_silu_even(c: float, deg_u: int = 6) -> list[float]:
    """SiLU(x) - x/2 (an even function) as a polynomial in u = (x/c)^2, least squares on
    Chebyshev nodes of [-c, c] (float64)."""
    k = np.arange(400)
    x = c * np.cos((2 * k + 1) * np.pi / 800)
    y = x / (1 + np.exp(-x)) - 0.5 * x
    return [float(v) for v in np.polynomial.polynomial.polyfit((x / c) ** 2, y, deg_u)]


SILU_A_EVEN = _fit_silu_even(SILU_C)


def _poly_u(pows, coeffs):
    out = coeffs[0]
    for k in range(1, len(coeffs)):
        out = out + pows[k - 1] * coeffs[k]
    return out


def _odd_stage(z, u, coeffs, ops: Ops):
    """z Q(u), u = z^2 given: powers u^2 (1 round), u^3 and u^4 (1 round), then the product."""
    pw = ops.powers(u, len(coeffs) - 1)
    return ops.mul(z, _poly_u(pw, coeffs))


def sign(z, ops: Ops):
    """f4(f4(g4(g4(z)))) ~ sign(z) in [-1, 1] for z in [-1, 1] (4 stages of 4 product rounds)."""
    for coeffs in (G4, G4, F4, F4):
        z = _odd_stage(z, ops.square(z), coeffs, ops)
    return z


def masked_poly(x, c: float, d: float, even, ops: Ops, clamp: bool):
    """A(x) on [-c, c], 0 below, x above, with indicators from the two sign polynomials of
    (x + c)/d and (x - c)/d (NEXUS's GELU structure). ``even``: A's even part in u = (x/c)^2;
    A = even + x/2. ``clamp``: evaluate A at clamp(x, -c, c) built from the same signs."""
    s = sign(ops.stack([(x + c) * (1 / d), (x - c) * (1 / d)]), ops)
    b0, b1 = s[0] * 0.5, s[1] * 0.5
    a1, a2 = b0 - b1, b1 + 0.5                     # [-c <= x <= c], [x > c]
    xa = x
    if clamp:
        xa = ops.mul(x, a1) + c * a2 - c * (0.5 - b0)
    u = ops.square(xa * (1 / c))
    pw = ops.powers(u, len(even) - 1)
    inner = _poly_u(pw, even) + xa * 0.5
    parts = ops.mul(ops.stack([inner, x]), ops.stack([a1, a2]))
    return parts[0] + parts[1]


class Nexus(Protocol):
    name = "nexus"
    summary = "NEXUS (FHE, emulated under MPC): sign-polynomial GELU (deg 12), (1+x/128)^128, no-max softmax"
    source = "zju-abclab/NEXUS@e15058c7 src/{gelu,softmax,layer_norm,ckks_evaluator}.cpp"
    subtract_max = False
    specs = {
        "gelu": FnSpec((-5.0, 5.0), max_abs_err=9e-4, comparisons=0, multiplications=48,
                       method="A12(x)(b0-b1) + x(b1+1/2), b = sgn((x+-3.5)/8.5)/2 by g4.g4.f4.f4 polys"),
        "silu": FnSpec((-66.0, 66.0), max_abs_err=0.058, comparisons=0, multiplications=49,
                       method="derived: sign polys at +-6 (divisor 72), fitted deg-12 A on clamp(x)"),
        "exp": FnSpec((-4.0, 4.0), max_rel_err=0.08, comparisons=0, multiplications=7,
                      method="(1+x/128)^128, 7 squarings"),
        "reciprocal": FnSpec((20.0, 180.0), max_rel_err=1.03e-3, comparisons=0, multiplications=8,
                             method="0.01 prod_{i<5}(1 + y^(2^i)), y = 1 - 0.01x"),
        "rsqrt": FnSpec((3.5, 900.0), max_rel_err=9.4e-4, comparisons=0, multiplications=18,
                        method="linear start, 4 Newton + 2 Goldschmidt steps"),
        "softmax": FnSpec((0.25, 2.4), max_abs_err=0.0043, comparisons=0, multiplications=8.5,
                          method="no max subtraction; (1+x/128)^128; product-form inverse; rows of 16"),
    }

    def gelu(self, x, ops: Ops):
        return masked_poly(x, GELU_C, GELU_D, _even_coeffs(GELU_A, GELU_C), ops, clamp=False)

    def silu(self, x, ops: Ops):
        return masked_poly(x, SILU_C, SILU_D, SILU_A_EVEN, ops, clamp=True)

    def exp(self, x, ops: Ops):
        y = 1 + x * (1.0 / 2 ** EXP_N)
        for _ in range(EXP_N):
            y = ops.square(y)
        return y

    def reciprocal(self, x, ops: Ops):
        y = 1 - x * INV_SCALE
        acc, p = 1 + y, ops.square(y)
        for _ in range(INV_TERMS - 2):  # next power y^(2^i) and the running product: one round
            both = ops.mul(ops.stack([p, acc]), ops.stack([p, 1 + p]))
            p, acc = both[0], both[1]
        return ops.mul(acc, 1 + p) * INV_SCALE

    def rsqrt(self, x, ops: Ops, scale: float = 1.0):
        # -1.29e-4 x computed as (x 2^-10) (-0.132...): keeps the slope's digits on the 2^-16 grid
        y = x * 2.0 ** -10 * (RSQRT_INIT[1] * 2 ** 10) + RSQRT_INIT[0]
        for _ in range(RSQRT_NEWTON):
            yy = ops.mul(ops.stack([y, y]), ops.stack([y, x]))   # y^2, x y
            y = y * 1.5 - ops.mul(yy[0], yy[1]) * 0.5
        g, h = ops.mul(x, y), y * 0.5
        for i in range(RSQRT_GOLDSCHMIDT):
            r = 0.5 - ops.mul(g, h)
            if i + 1 < RSQRT_GOLDSCHMIDT:
                gh = ops.mul(ops.stack([g, h]), ops.stack([1 + r, 1 + r]))
                g, h = gh[0], gh[1]
            else:  # the public scale rides on the last product
                h = ops.mul(h * (2 * scale), 1 + r)
        return h

    # NEXUS feeds rsqrt the mean of squares (times 1/768 in the code), not the sum
    def rms_norm(self, x, w, eps: float, ops: Ops, offset: float = 0.0):
        n = x.shape[-1]
        r = self.rsqrt(ops.sum_squares(x) * (1.0 / n) + eps, ops)
        y = ops.mul(x, r)
        return y * (w + offset) if w is not None else y

    def layer_norm(self, x, w, b, eps: float, ops: Ops):
        n = x.shape[-1]
        c = x - x.mean(-1, keepdim=True)
        r = self.rsqrt(ops.sum_squares(c) * (1.0 / n) + eps, ops)
        y = ops.mul(c, r)
        if w is not None:
            y = y * w
        if b is not None:
            y = y + b
        return y

