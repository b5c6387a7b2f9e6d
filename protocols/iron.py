"""``iron``: Iron's non-linear layers (NeurIPS'22, Hao et al.) on SIRNN's precise building blocks.

Iron's code was not released. Its structure is taken from the BOLT authors' re-implementation
(../shared/research/protocols.md section 2): Qi-Pang/EzPC branch ``bert`` @8aaaf32d,
``SCI/src/FloatingPoint/fp-math.cpp`` (``FPMath::gelu_iron``, ``softmax_fix_iron_1``,
``layer_norm_iron``), ``SCI/tests/bert_iron/``. Every building block there is SIRNN's
(``FixOp::tanh``, ``lookup_table_exp``, ``div``, ``sqrt(..., inverse)``); here they are the ones of
:mod:`protocols.exact` (the SIRNN-like baseline), reused, not re-implemented:

  * GELU: the tanh form 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))) with a precise tanh,
    tanh(u) = 2 sigmoid(2u) - 1 on the exact sigmoid (MSB, precise exp of -|.|, precise
    reciprocal — SIRNN's tanh pattern). For erf-GELU models its error is the tanh form's own
    (<= 4e-4); for GPT-2's tanh-GELU it is at fixed-point level.
  * SiLU (Iron defines none): the same style, x (1 + tanh(x/2))/2 on the same precise tanh.
  * softmax: row max by a comparison tree, x - max, precise exp, sum, division (the exact
    reciprocal of the row sum times each entry).
  * LayerNorm / RMSNorm: precise rsqrt (msb normalisation, table start + one Newton step).

Consequence worth knowing when reading benchmarks: with precise building blocks Iron's
non-linear layers cost about what the exact baseline's cost. The paper's gains over prior 2PC
systems come mostly from its HE-based matrix multiplication packing, which pmpc's engine (public
weights: linear layers are local) does not exercise.
"""
from __future__ import annotations

import math

from pmpc.ops import ACT_BOUND, Ops
from protocols.base import FnSpec
from protocols.exact import Exact

SQRT_2_PI = math.sqrt(2 / math.pi)


class Iron(Exact):
    name = "iron"
    summary = "Iron: tanh-form GELU with precise tanh, max + precise exp + division, precise rsqrt (SIRNN blocks)"
    source = ("Qi-Pang/EzPC@8aaaf32d (branch bert) SCI/src/FloatingPoint/fp-math.cpp gelu_iron, "
              "softmax_fix_iron_1, layer_norm_iron; building blocks: protocols.exact")
    specs = {
        # exp/reciprocal/rsqrt are the exact baseline's, with the counts of this implementation
        "exp": FnSpec((-2.0 ** 14, 0.0), max_abs_err=1.7e-5, comparisons=1, multiplications=7,
                      method="SIRNN-style: A2B bits of -x, 4-bit digit lookup tables, product tree"),
        "reciprocal": FnSpec((2.0 ** -12, 2.0 ** 14), max_rel_err=1e-9, comparisons=25, multiplications=6,
                             method="SIRNN div: msb normalisation, 12-bit table start, 2 Goldschmidt steps"),
        "rsqrt": FnSpec((2.0 ** -12, 2.0 ** 30), max_rel_err=2e-6, comparisons=41, multiplications=5,
                        method="SIRNN rsqrt: msb normalisation to [1,2), 12-bit table start, 1 Newton step"),
        "tanh": FnSpec((-12.0, 12.0), max_abs_err=1.2e-5, comparisons=3, multiplications=15,
                       method="2 sigmoid(2u) - 1, sigmoid = 1/(1+e^-|u|) on precise exp/reciprocal"),
        "gelu": FnSpec((-12.0, 12.0), max_abs_err=6.2e-4, comparisons=3, multiplications=18,
                       method="0.5x(1 + tanh(sqrt(2/pi)(x + 0.044715x^3))), precise tanh"),
        "gelu_tanh": FnSpec((-12.0, 12.0), max_abs_err=3e-6, comparisons=3, multiplications=18,
                            method="the same tanh form (exact for GPT-2's GELU)"),
        "silu": FnSpec((-40.0, 40.0), max_abs_err=5e-6, comparisons=3, multiplications=16,
                       method="x (1 + tanh(x/2))/2, precise tanh"),
        "softmax": FnSpec((-12.0, 12.0), max_abs_err=6e-6, comparisons=4.81, multiplications=12.94,
                          method="x - max (tournament), precise exp, division by the row sum; rows of 16"),
    }

    # SIRNN's precision: two Goldschmidt steps after the table (2^-8 -> 2^-32 element-wise) and one
    # Newton step after rsqrt's (1.2e-4 -> 2e-8)
    recip_steps = 2
    rsqrt_steps = 1

    def tanh(self, u, ops: Ops, bound: float | None = ACT_BOUND / 2):
        return 2 * self.sigmoid(2 * u, ops, bound=None if bound is None else 2 * bound) - 1

    def gelu(self, x, ops: Ops):
        x2 = ops.square(x)
        u = (x + ops.mul(x2, x) * 0.044715) * SQRT_2_PI
        return ops.mul(x * 0.5, 1 + self.tanh(u, ops, bound=None))  # u ~ x^3: the whole ring

    def gelu_tanh(self, x, ops: Ops):
        return self.gelu(x, ops)

    def silu(self, x, ops: Ops):
        return ops.mul(x * 0.5, 1 + self.tanh(x * 0.5, ops))
