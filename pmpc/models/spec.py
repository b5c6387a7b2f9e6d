"""The architecture-neutral description of a model the engine runs: :class:`ModelSpec`.

Weights are stored as ``[in, out]`` matrices so that every linear layer is ``x @ W``.
"""
from __future__ import annotations

import dataclasses
import hashlib

import torch

from pmpc.errors import UserError


class ModelError(UserError):
    """A model that cannot be found or loaded (one-line message)."""


@dataclasses.dataclass
class ModelSpec:
    name: str
    arch: str                     # "llama" (all Llama-family decoders) | "gpt2" | "bert"
    vocab: int
    hidden: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    intermediate: int
    norm: str                     # "rms" | "layer"
    norm_eps: float
    act: str                      # "silu" | "gelu" | "gelu_tanh"
    gated: bool                   # act(x W_gate) * (x W_up)
    pos: str                      # "rope" | "learned"
    causal: bool
    post_norm: bool               # BERT: LN after the residual add
    max_positions: int
    weights: dict                 # canonical name -> float32 tensor ([in, out] for matrices)
    inv_freq: torch.Tensor | None = None
    rope_scaling: float = 1.0
    eos_token_id: int | None = None
    tied: bool = False            # lm_head.w is embed.tok transposed (tied input and output embeddings)

    def w(self, name: str):
        return self.weights.get(name)

    def n_params(self) -> int:
        return sum(t.numel() for t in self.weights.values())

    def shapes(self) -> dict:
        """Name -> shape: all a party without the weights needs (private-weight mode)."""
        return {k: tuple(v.shape) for k, v in self.weights.items()}

    def content_digest(self) -> str:
        """SHA-256 of the weights' names, shapes and values (computed once per spec)."""
        if getattr(self, "_content_digest", None) is None:
            h = hashlib.sha256()
            for k in sorted(self.weights):
                t = self.weights[k].detach().float().contiguous()
                h.update(f"{k}:{tuple(t.shape)};".encode())
                h.update(t.numpy().tobytes())
            self._content_digest = h.hexdigest()
        return self._content_digest

    def config_dict(self) -> dict:
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
             if f.name not in ("weights", "inv_freq")}
        d["n_params"] = self.n_params()
        return d
