"""``plain``: the true functions in floating point — the plaintext reference, not an MPC protocol.

The engine with ``plain`` on ``TorchOps`` is the model itself (tests check it against HF logits);
every fidelity figure compares a protocol with this.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from protocols.base import Protocol


class Plain(Protocol):
    name = "plain"
    summary = "floating-point reference (plaintext only)"

    @staticmethod
    def _check(x, ops):
        if ops.kind != "torch":
            raise TypeError("the plain protocol is the plaintext reference; it cannot run under MPC")

    def gelu(self, x, ops):
        self._check(x, ops)
        return F.gelu(x)

    def gelu_tanh(self, x, ops):
        self._check(x, ops)
        return F.gelu(x, approximate="tanh")

    def silu(self, x, ops):
        self._check(x, ops)
        return F.silu(x)

    def exp(self, x, ops):
        return torch.exp(x)

    def reciprocal(self, x, ops):
        return 1 / x

    def rsqrt(self, x, ops, scale=1.0):
        return torch.rsqrt(x) * scale

    def softmax(self, x, ops, mask=None):
        self._check(x, ops)
        if mask is not None:
            x = x.masked_fill(mask == 0, float("-inf"))
        return torch.softmax(x, dim=-1)

    def rms_norm(self, x, w, eps, ops, offset=0.0):
        y = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)
        return y * (w + offset) if w is not None else y

    def layer_norm(self, x, w, b, eps, ops):
        return F.layer_norm(x, x.shape[-1:], w, b, eps)
