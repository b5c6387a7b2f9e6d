"""``mpcformer``: MPCFormer's Quad GELU and 2Quad softmax (ICLR'23, Li et al.) — the cheap extreme.

Source (facts and coefficients only; ../shared/research/protocols.md section 8):
DachengLi1/MPCFormer @38cb42cb ``transformers/src/transformers/activations.py``
(``QuadActivation``), ``src/benchmark/{utils,models}.py`` (``activation_quad``, ``softmax_2quad``).

These are NOT approximations of GELU/softmax: MPCFormer replaces the functions and restores
accuracy by knowledge distillation into the student model. On an undistilled model they are
simply wrong (Quad GELU is 0.5 at x = 0); pmpc keeps them as the cheap end of the range.

  * GELU: Quad, 0.125 x^2 + 0.25 x + 0.5 (the training code's ``QuadActivation``). The
    benchmark module's ``activation_quad`` uses 0.125 x^2 + 0.5 x + 0.25 instead — same cost
    (one product), different function; pmpc uses the training variant, which the distilled
    models were trained with.
  * SiLU: MPCFormer has none (BERT/RoBERTa/T5-style models only). Derived in the same style:
    MPCFormer swaps the activation module for ``QuadActivation`` whatever it replaced, so SiLU
    gets the same quadratic.
  * softmax: 2Quad, (x + c)^2 with c = 5, times the 0/1 attention mask, divided by the row sum;
    no exp, no max. The sum is divided by the public factor k c^2 (k = number of unmasked entries)
    before CrypTen's reciprocal and the factor re-applied after: CrypTen's Newton step
    y <- 2y - x y^2 needs y^2 = 1/x^2 well above the 2^-16 grid, i.e. x below ~16, while a sum
    of (x+5)^2 over a row is in the hundreds. (A pmpc choice; MPCFormer divides directly.)
  * the rest (exp, reciprocal, rsqrt, norms) is CrypTen's default, as MPCFormer runs on CrypTen
    (its benchmark uses BatchNorm in place of LayerNorm — "crypten has not implemented
    LayerNorm" —; pmpc keeps the model's norm with CrypTen's normalised rsqrt).
"""
from __future__ import annotations

from pmpc.ops import Ops
from protocols.base import FnSpec
from protocols.crypten_default import CrypTenDefault

QUAD = (0.5, 0.25, 0.125)          # 0.125 x^2 + 0.25 x + 0.5 (training code)
TWO_QUAD_C = 5.0


class MPCFormer(CrypTenDefault):
    name = "mpcformer"
    summary = "MPCFormer: Quad GELU/SiLU (0.125x^2+0.25x+0.5), 2Quad softmax ((x+5)^2/sum); needs distillation"
    source = ("DachengLi1/MPCFormer@38cb42cb transformers/src/transformers/activations.py, "
              "src/benchmark/utils.py")
    specs = {
        # CrypTen's own blocks, with the bounds measured for this use (CrypTen's exp blows up
        # below about -512, so its reciprocal's start 3 e^(1-2x) limits x to about 256; on the 2^-16
        # grid its Newton step x y^2 loses y^2 = 1/x^2 for x above ~16)
        "exp": FnSpec((-8.0, 0.0), max_abs_err=1.4e-3, comparisons=0, multiplications=8,
                      method="CrypTen: (1+x/256)^256"),
        "reciprocal": FnSpec((0.05, 16.0), max_rel_err=5e-8, comparisons=0, multiplications=28,
                             method="CrypTen: NR x10 from 3e^(1-2x)+0.003"),
        "rsqrt": FnSpec((2.0 ** -12, 2.0 ** 30), max_rel_err=1.9e-3, comparisons=20, multiplications=19,
                        method="msb normalisation to [1,4), then CrypTen's inv_sqrt (3 NR)"),
        "gelu": FnSpec((-4.0, 4.0), max_abs_err=1.95, comparisons=0, multiplications=1,
                       method="Quad 0.125x^2 + 0.25x + 0.5 (not an approximation: needs distillation)"),
        "silu": FnSpec((-4.0, 4.0), max_abs_err=2.04, comparisons=0, multiplications=1,
                       method="the same Quad (MPCFormer swaps any activation for it)"),
        "softmax": FnSpec((-4.0, 4.0), max_abs_err=0.78, comparisons=0, multiplications=3.75,
                          method="2Quad: (x+5)^2 masked / row sum (CrypTen reciprocal); rows of 16"),
    }

    def gelu(self, x, ops: Ops):
        return ops.square(x) * QUAD[2] + x * QUAD[1] + QUAD[0]

    def silu(self, x, ops: Ops):
        return self.gelu(x, ops)

    def softmax(self, x, ops: Ops, mask=None):
        s = ops.square(x + TWO_QUAD_C)
        if mask is not None:
            s = s * mask
            k = mask.sum(-1, keepdim=True).to(mask.dtype)
        else:
            k = float(x.shape[-1])
        inv_k = 1.0 / (k * TWO_QUAD_C ** 2)  # public: brings the sum to ~1
        r = self.reciprocal(s.sum(-1, keepdim=True) * inv_k, ops) * inv_k
        return ops.mul(s, r)
