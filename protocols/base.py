"""The ``Protocol`` interface: how one private-inference system computes each non-linearity.

Every method takes the values and an :class:`pmpc.ops.Ops` backend, so one definition runs both
under MPC (``CrypTenOps``) and as its plaintext emulation (``TorchOps``).

Defaults below compose the building blocks (``exp``, ``reciprocal``, ``rsqrt``) into softmax and
the norms in the scale-robust way every protocol shares:
  * softmax subtracts the row max (unless the protocol opts out), applies a 0/1 public mask AFTER
    exp (an additive -1e4 mask overflows fixed-point exp), and multiplies by the reciprocal of the
    row sum;
  * public factors ride on the truncation of the product next to them (``ops.mul_scaled``,
    ``ops.combine``): under MPC a truncation costs a round, a public factor alone should not;
  * norms feed ``rsqrt`` the SUM of squares (plus n*eps) and rescale by sqrt(n) afterwards: the sum
    is n times larger than the mean, so tiny real activations (mean square ~1e-4) keep their
    precision on the 16-bit fixed-point grid; ``ops.sum_squares`` also keeps LLMs' massive
    activations (values ~2e4) from overflowing the ring when squared.
"""
from __future__ import annotations

import dataclasses
import math

from pmpc.ops import Ops


# Norms compute 2^NORM_SHIFT / rms and shift the product back: keeps ~8 more bits of the
# normalised output for rows with a large rms (LLMs' massive-activation rows reach rms ~1e3).
NORM_SHIFT = 8


def rescale(coeffs, r: float) -> list[float]:
    """Coefficients of p(r t) in t, from those of p(x) (low to high): a polynomial fitted on [-1, 1]
    evaluated on [-r, r] without a division in MPC."""
    return [float(c) * r ** k for k, c in enumerate(coeffs)]


def _owner(cls, name: str):
    """The class in ``cls``'s MRO that defines ``name``."""
    return next(c for c in cls.__mro__ if name in c.__dict__)


@dataclasses.dataclass(frozen=True)
class FnSpec:
    """What a protocol function promises, for ``pmpc protocols`` and the tests."""

    domain: tuple[float, float]       # where the stated bound holds
    max_abs_err: float | None = None  # against float64 on the domain (None: use max_rel_err)
    max_rel_err: float | None = None
    comparisons: int = 0              # secure comparisons per element
    multiplications: int = 0          # secret products per element (excluding comparisons)
    method: str = ""


class Protocol:
    name = "abstract"
    summary = ""
    source = ""
    subtract_max = True  # softmax: x - max(x) before exp
    # norms: the rsqrt takes the sum of squares exactly on its product scale (``ops.sum_squares``
    # with ``exact``): one truncation round less, where the rsqrt reads only its bits
    exact_sum_squares = False
    specs: dict[str, FnSpec] = {}

    # -- element-wise functions: each protocol overrides what its system defines ------------
    def gelu(self, x, ops: Ops):
        raise NotImplementedError(f"{self.name} defines no GELU")

    def gelu_tanh(self, x, ops: Ops):
        """GPT-2's tanh-form GELU; protocols approximate both GELUs with one function."""
        return self.gelu(x, ops)

    def silu(self, x, ops: Ops):
        raise NotImplementedError(f"{self.name} defines no SiLU")

    def exp(self, x, ops: Ops):
        """exp(x) for x <= 0 (after max subtraction)."""
        raise NotImplementedError

    def exp_exact(self, x, ops: Ops):
        """exp(x) as :meth:`exp` computes it, possibly left on a product's scale (not truncated:
        ``ops.rescale`` brings it to the standard one), for a caller that can overlap the
        truncation with its next step (the softmax's reciprocal). Default: :meth:`exp`."""
        return self.exp(x, ops)

    def reciprocal(self, x, ops: Ops):
        """1/x for x >= 1 (a softmax denominator after max subtraction)."""
        raise NotImplementedError

    def rsqrt(self, x, ops: Ops, scale: float = 1.0):
        """``scale / sqrt(x)`` for x > 0, over the whole range of sums of squares.

        The public ``scale`` must be multiplied into the LAST secret factor (e.g. the power of two
        from range normalisation), not applied afterwards: for a row with rms 1e3 the result is
        ~1e-3, which 16 fractional bits hold to only ~1.5%; the norms ask for 2^8 sqrt(n) / rms
        and divide the normalised output by 2^8 instead."""
        raise NotImplementedError

    def reciprocal_times(self, x, times, ops: Ops):
        """``times / x``: a protocol whose reciprocal ends in a product may take ``times`` in early
        and save the final product's round (see :meth:`protocols.exact.Exact.reciprocal_times`)."""
        return ops.mul(times, self.reciprocal(x, ops))

    def denominator_times(self, x, times, ops: Ops):
        """``times / x`` for the softmax's row sum x after max subtraction, so x >= 1 (the max's
        own term is e^0): a protocol may use that range. Default: :meth:`reciprocal_times`."""
        return self.reciprocal_times(x, times, ops)

    def rsqrt_times(self, x, times, ops: Ops, scale: float = 1.0, out: float = 1.0):
        """``out * times * scale / sqrt(x)``, the norms' use of :meth:`rsqrt` (same idea)."""
        return ops.mul_scaled(times, self.rsqrt(x, ops, scale=scale), out)

    def act(self, name: str, x, ops: Ops):
        fn = {"silu": self.silu, "gelu": self.gelu, "gelu_tanh": self.gelu_tanh}.get(name)
        if fn is None:
            raise ValueError(f"unknown activation {name!r}")
        return fn(x, ops)

    def act_times(self, name: str, x, times, ops: Ops):
        """``act(x) * times`` (a gated MLP: act(gate) * up). A protocol whose activation ends in
        one combination of products may take ``times`` into it and save the product's rounds: it
        defines ``_<act>_times(x, times, ops)``, taken while the activation in force is that
        class's own (a subclass's, or an instance's swapped in, gets the plain product)."""
        if self._fuses(f"_{name}_times", name):
            return getattr(self, f"_{name}_times")(x, times, ops)
        return ops.mul(self.act(name, x, ops), times)

    def _fuses(self, fused: str, plain: str) -> bool:
        """Whether the method ``fused`` (``plain`` with work of its caller's folded in) may stand in
        for ``plain``: only while the ``plain`` in force is the one the class that defines
        ``fused`` defines beside it (a subclass's own, or one swapped into the instance, such as
        the ablation's exact functions, is never bypassed)."""
        if not hasattr(type(self), fused):
            return False
        in_force = getattr(getattr(self, plain), "__func__", None)
        return in_force is vars(_owner(type(self), fused)).get(plain)

    # -- composites --------------------------------------------------------------------------
    def softmax(self, x, ops: Ops, mask=None):
        """Softmax over the last dim. ``mask``: public 0/1 tensor broadcastable to x (1 = keep)."""
        if mask is not None:
            x = x * mask - 64.0 * (1 - mask)  # bounded: keeps masked entries out of the max
        if self.subtract_max:
            x = x - ops.max(x, dim=-1)
        # the reciprocal truncates an exact exp beside its first comparison
        e = self.exp_exact(x, ops) if self._fuses("exp_exact", "exp") else self.exp(x, ops)
        if mask is not None:
            e = ops.rescale(e) * mask
        if self.subtract_max and self._fuses("denominator_times", "reciprocal_times"):
            return self.denominator_times(e.sum(-1, keepdim=True), e, ops)
        return self.reciprocal_times(e.sum(-1, keepdim=True), e, ops)

    def rms_norm(self, x, w, eps: float, ops: Ops, offset: float = 0.0, split=None):
        """``split``: x's split for :meth:`pmpc.ops.Ops.sum_squares`, taken with the step that
        made x (:meth:`pmpc.ops.Ops.matmul_residual`)."""
        n = x.shape[-1]
        s = ops.sum_squares(x, exact=self.exact_sum_squares, split=split) + n * eps
        y = self.rsqrt_times(s, x, ops, scale=math.sqrt(n) * 2.0 ** NORM_SHIFT, out=2.0 ** -NORM_SHIFT)
        return y * (w + offset) if w is not None else y

    def layer_norm(self, x, w, b, eps: float, ops: Ops):
        n = x.shape[-1]
        c = x - x.mean(-1, keepdim=True)
        s = ops.sum_squares(c, exact=self.exact_sum_squares) + n * eps
        y = self.rsqrt_times(s, c, ops, scale=math.sqrt(n) * 2.0 ** NORM_SHIFT, out=2.0 ** -NORM_SHIFT)
        if w is not None:
            y = y * w
        if b is not None:
            y = y + b
        return y

    def __repr__(self):
        return f"<Protocol {self.name}>"
