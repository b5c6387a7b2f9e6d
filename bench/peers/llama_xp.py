"""A compact Llama-architecture prefill written once against an array module: numpy (float64, the
plaintext check that CI runs against HF) or jax.numpy (what SecretFlow SPU compiles and runs
under MPC in the peer venv). RMSNorm, RoPE, grouped-query attention with a causal mask, SiLU-gated
MLP, and the lm_head as given (SmolLM2 ties it to the embedding; the exported array is that tie).

Standalone on purpose: the peer venv has numpy < 2, jax and spu but neither torch nor pmpc, so
this file imports nothing beyond its array module. Weights use pmpc's canonical names
(:class:`pmpc.models.ModelSpec`: matrices stored [in, out]) and travel as one .npz.

Non-linearities are the array module's own (``exp``, ``sqrt``, ``max``, division; jax:
``jax.nn.silu``, ``jax.lax.rsqrt``): under SPU that means SPU's default approximations (Taylor
exp, Goldschmidt reciprocal, polynomial rsqrt after normalisation, its sigmoid), which is the point
of a peer row. The embedding lookup is done by the caller (a public one-hot product is what an
MPC system would do with secret ids; here the ids are the client's and the comparison is of the
transformer body, which is where every system spends its time).
"""
from __future__ import annotations

import math

CONFIG_KEYS = ("hidden", "n_layers", "n_heads", "n_kv_heads", "head_dim", "norm_eps", "rope_scaling")


def functions(xp):
    """(silu, rsqrt) of the array module: jax's own where it is jax (so SPU lowers its own logistic
    and rsqrt), the textbook formulas in float64 for numpy."""
    if xp.__name__.startswith("jax"):
        import jax

        return jax.nn.silu, jax.lax.rsqrt
    return (lambda v: v / (1.0 + xp.exp(-v))), (lambda v: 1.0 / xp.sqrt(v))


def masked_softmax(s, mask, xp):
    """softmax over the last axis of the entries where the public 0/1 ``mask`` holds.

    Written so that no fixed-point engine sees an out-of-range exponent: masked entries enter the
    max as -1e4 (the diagonal is always kept, so they never win) and the exp as 0, and are then
    zeroed by the public mask. (A -1e4 additive mask under exp, the float idiom, sends SPU's
    Taylor exp (1 + x/2^n)^(2^n) far outside its range: every row with a masked entry was garbage.)
    exp and the division are the array module's own (SPU: its default exp and reciprocal)."""
    m = xp.where(mask, s, -1e4).max(-1, keepdims=True)
    e = xp.exp(xp.where(mask, s - m, 0.0)) * mask
    return e / e.sum(-1, keepdims=True)


def rope_tables(inv_freq, tokens: int, scaling: float, xp):
    """cos, sin of shape [tokens, head_dim] (HF's layout: the frequencies repeated twice)."""
    pos = xp.arange(tokens, dtype=inv_freq.dtype)[:, None] * inv_freq[None, :]
    emb = xp.concatenate([pos, pos], axis=-1)
    return xp.cos(emb) * scaling, xp.sin(emb) * scaling


def _rotate_half(v, xp):
    h = v.shape[-1] // 2
    return xp.concatenate([-v[..., h:], v[..., :h]], axis=-1)


def layer_names(i: int) -> list[str]:
    p = f"layers.{i}."
    return [p + n for n in ("attn_norm.w", "q.w", "k.w", "v.w", "o.w", "mlp_norm.w", "gate.w", "up.w", "down.w")]


def layer(x, w: dict, i: int, cfg: dict, cos, sin, mask, xp):
    """One decoder layer on hidden states x [T, hidden]; ``w`` holds the layer's weights."""
    silu, rsqrt = functions(xp)
    p = f"layers.{i}."
    T = x.shape[0]
    nh, nkv, hd = cfg["n_heads"], cfg["n_kv_heads"], cfg["head_dim"]

    def norm(v, g):
        return rms_norm(v, g, cfg, rsqrt)

    def proj(v, n):
        out = v @ w[p + n + ".w"]
        b = w.get(p + n + ".b")
        return out if b is None else out + b

    h = norm(x, w[p + "attn_norm.w"])
    q = proj(h, "q").reshape(T, nh, hd).transpose(1, 0, 2)
    k = proj(h, "k").reshape(T, nkv, hd).transpose(1, 0, 2)
    v = proj(h, "v").reshape(T, nkv, hd).transpose(1, 0, 2)
    q = q * cos + _rotate_half(q, xp) * sin
    k = k * cos + _rotate_half(k, xp) * sin
    rep = nh // nkv  # grouped-query attention: each K/V head serves `rep` query heads
    k, v = xp.repeat(k, rep, axis=0), xp.repeat(v, rep, axis=0)
    s = (q @ k.transpose(0, 2, 1)) * (1.0 / math.sqrt(hd))
    o = (masked_softmax(s, mask, xp) @ v).transpose(1, 0, 2).reshape(T, nh * hd)
    x = x + proj(o, "o")
    h = norm(x, w[p + "mlp_norm.w"])
    return x + proj(silu(proj(h, "gate")) * proj(h, "up"), "down")


def rms_norm(v, g, cfg: dict, rsqrt):
    """v / sqrt(mean(v^2) + eps) * g."""
    return v * rsqrt((v * v).mean(-1, keepdims=True) + cfg["norm_eps"]) * g


def head(x, w: dict, cfg: dict, xp):
    _, rsqrt = functions(xp)
    return rms_norm(x, w["final_norm.w"], cfg, rsqrt) @ w["lm_head.w"]


def causal_mask(tokens: int, xp):
    return xp.tril(xp.ones((tokens, tokens)))


def forward(x, w: dict, cfg: dict, xp, layers=None, with_head: bool = True):
    """Prefill logits [T, vocab] from the embedded tokens x [T, hidden] (``layers``: the layer
    indices to run, default all; ``with_head``: apply the final norm and lm_head)."""
    T = x.shape[0]
    cos, sin = rope_tables(w["inv_freq"], T, cfg["rope_scaling"], xp)
    mask = causal_mask(T, xp)
    for i in (range(cfg["n_layers"]) if layers is None else layers):
        x = layer(x, w, i, cfg, cos, sin, mask, xp)
    return head(x, w, cfg, xp) if with_head else x


def load_npz(path):
    """(weights dict, config dict) from an export written by ``eval.peers.export``."""
    import json

    import numpy as np

    z = np.load(path)
    cfg = json.loads(bytes(z["__config__"]).decode())
    return {k: z[k] for k in z.files if k != "__config__"}, cfg
