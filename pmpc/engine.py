"""The secure forward: one transformer implementation over the op set, for every architecture.

Run with ``CrypTenOps`` it is 2-party secure inference; with ``TorchOps`` and the ``plain``
protocol it is the plaintext model (tests prove it equals HF's logits); with ``TorchOps`` and a
protocol it is that protocol's exact emulation.

Roles (rank 0 = client, holds the prompt; rank 1 = server, holds the weights):
  * ``weights="public"`` (open-weight model): both parties hold the weights in the clear, the
    client embeds its own tokens and secret-shares the hidden states; linear layers are local.
  * ``weights="private"``: the server secret-shares every weight at start-up (the client passes
    zeros of the same public shapes); the embedding is a secret one-hot product. Each weight
    matrix is masked and opened once at start-up, so a product with it opens the activations
    only (``fixed_operands``: :mod:`pmpc.mpc.fixed_operand`; False re-masks it at every product).
Only public facts leave a party in the clear: shapes, the number of tokens, the positions.
Logits are revealed to the client only (``reveal(dst=0)``); the server gets nothing back.
Generation always runs ``max_new_tokens`` steps: stopping at EOS would tell the server the
answer's length.
"""
from __future__ import annotations

import math

import torch

from pmpc.models import ModelSpec
from pmpc.ops import Ops
import protocols

CLIENT, SERVER = 0, 1


class Engine:
    def __init__(self, spec: ModelSpec, protocol, ops: Ops, weights: str = "public",
                 dtype=torch.float32, tap=None, fixed_operands: bool = True, release_weights: bool = False,
                 on_shared=None):
        if weights not in ("public", "private"):
            raise ValueError(f"weights must be public or private, not {weights!r}")
        self.spec, self.ops, self.mode = spec, ops, weights
        self.p = protocols.get(protocol)
        self.dtype = getattr(ops, "dtype", dtype)
        self.tap = tap  # tap(point, layer, value): measurement hook (reveals to the client!)
        # with a tap the norms' outputs are measured as the model defines them: nothing folded
        self.folded = tap is None and not spec.post_norm
        self.final_norm = "final_norm.w" in spec.weights
        with ops.scope("setup.weights"):
            if weights == "public":  # each matrix readied for products once, here, not at every token
                Wp = fold_weights(spec) if self.folded else spec.weights
                self.W = ops.public_operands({k: v.to(self.dtype) for k, v in Wp.items()},
                                             {k for k, v in Wp.items() if k.endswith(".w") and v.dim() == 2})
            else:
                self.W = self._share_private(spec, fixed_operands, release_weights, on_shared)
        # the residual stream's split for the next RMS norm taken with the linear layer that ends
        # each block (:meth:`pmpc.ops.Ops.matmul_residual`): where the norm is the shared one
        self.split_norms = (not spec.post_norm and spec.norm == "rms" and tap is None
                            and getattr(self.p.rms_norm, "__func__", None) is protocols.base.Protocol.rms_norm)
        self.cache = None
        self.on_layer = None  # on_layer(i, n_layers) after each block: progress for a watching user

    def _share_private(self, spec: ModelSpec, fixed_operands: bool, release: bool, on_shared=None) -> dict:
        """The server's weights secret-shared (the client passes zeros of the same public shapes),
        one part at a time: the embedding table, each layer, the output layer. A part is folded
        (the server folds its own weights before sharing them), shared, and its matrices masked
        and opened once (``fixed_operands``; False re-masks them at every product) before the next
        part is touched, so only one part's float copies ever sit beside the shares. With
        ``release`` each float weight in ``spec.weights`` gives way to a zero-stride placeholder of
        its shape once shared: the plaintext model does not outlive the sharing; ``on_shared()``
        runs after each part (e.g. to hand the memory it freed back to the system).
        A tied output layer is the embedding's shares and opening read transposed (held once);
        its final norm then keeps its weight, a secret factor, instead of folding it in."""
        ops, src = self.ops, spec.weights
        tied = spec.tied and "lm_head.w" in src and "embed.tok" in src

        def release_(names):
            if release:
                for k in names:
                    src[k] = torch.zeros((), dtype=src[k].dtype).expand(src[k].shape)

        head = ("final_norm.", "lm_head.")
        if tied:
            release_(["lm_head.w"])
        parts = [[k for k in src if k.startswith("embed.")]]
        parts += [[k for k in src if k.startswith(f"layers.{i}.")] for i in range(spec.n_layers)]
        parts.append([k for k in src if k.startswith(head) and not (tied and k == "lm_head.w")])
        parts.append([k for k in src if not k.startswith(("embed.", "layers.") + head)])
        W = {}
        for i, names in enumerate(parts):
            part = {k: src[k] for k in names}
            if self.folded and 1 <= i <= spec.n_layers:
                fold_layer(spec, part, i - 1)
            elif self.folded and i == spec.n_layers + 1 and not tied:
                fold_head(spec, part)
            shared = {k: ops.share(part.pop(k), src=SERVER) for k in list(part)}
            release_(names)
            if fixed_operands:  # each matrix's masked opening once, here, not at every token
                shared = ops.fix_operands(shared, [k for k, v in shared.items()
                                                   if k == "embed.tok" or (k.endswith(".w") and len(v.shape) == 2)])
            W.update(shared)
            if on_shared is not None:
                on_shared()
        if tied:
            W["lm_head.w"] = W["embed.tok"].t()
        return W

    # -- helpers -----------------------------------------------------------------------------
    def _lin(self, x, name, residual=None, truncate: bool = True):
        """x W + b, or with ``residual`` (the pre-norm stream, when a norm reads the sum next)
        (residual + x W + b, its split for the norm): the split rides on the layer's truncation.
        ``truncate=False``: the product on its raw scale (logits that are only revealed)."""
        b = self.W.get(name + ".b")
        if residual is not None:
            return self.ops.matmul_residual(x, self.W[name + ".w"], residual if b is None else residual + b)
        y = self.ops.matmul(x, self.W[name + ".w"], truncate=truncate)
        return y if b is None else y + b

    def _norm(self, x, name, split=None):
        w, b = self.W.get(name + ".w"), self.W.get(name + ".b")
        with self.ops.scope("norm"):
            if self.spec.norm == "rms":
                if split is not None:
                    return self.p.rms_norm(x, w, self.spec.norm_eps, self.ops, split=split)
                return self.p.rms_norm(x, w, self.spec.norm_eps, self.ops)
            return self.p.layer_norm(x, w, b, self.spec.norm_eps, self.ops)

    def _rope(self, x, cos, sin):
        """Rotary embedding: both public factors under ONE truncation (a round under MPC)."""
        h = x.shape[-1] // 2
        rot = self.ops.cat([-x[..., h:], x[..., :h]], dim=-1)
        with self.ops.scope("rope"):
            return self.ops.combine([], [(cos, x), (sin, rot)])

    def _rope_tables(self, positions):
        s = self.spec
        freqs = positions.to(torch.float64)[..., None] * s.inv_freq.to(torch.float64)
        emb = torch.cat([freqs, freqs], dim=-1)
        cos, sin = emb.cos() * s.rope_scaling, emb.sin() * s.rope_scaling
        return cos[:, None].to(self.dtype), sin[:, None].to(self.dtype)  # [B, 1, T, hd]

    # -- embedding (the client's input) -------------------------------------------------------
    def embed(self, ids: torch.Tensor, positions: torch.Tensor, type_ids=None):
        """ids, positions: [B, T]. At the server they are dummies (zeros): never read."""
        s, ops = self.spec, self.ops
        with ops.scope("embed"):
            if self.mode == "public":
                h = self.W["embed.tok"][ids]
                if s.pos == "learned":
                    h = h + self.W["embed.pos"][positions]
                if "embed.type" in self.W:
                    h = h + self.W["embed.type"][type_ids if type_ids is not None else torch.zeros_like(ids)]
                x = ops.share(h, src=CLIENT)
            else:
                onehot = torch.nn.functional.one_hot(ids, s.vocab).to(self.dtype)
                x = ops.matmul(ops.share(onehot, src=CLIENT), self.W["embed.tok"])
                if s.pos == "learned":
                    x = x + self.W["embed.pos"][positions]  # public rows of a secret table: local
                if "embed.type" in self.W:
                    x = x + self.W["embed.type"][torch.zeros_like(ids)]
            if "embed.norm.w" in self.W:
                x = self._norm(x, "embed.norm")
        return x

    # -- transformer blocks -------------------------------------------------------------------
    def _attention(self, x, i, rope, mask, cache_i, residual=None, pack=None):
        s, ops, p = self.spec, self.ops, self.p
        B, T = (x.shape[0], x.shape[1]) if pack is None else (pack.B, pack.T)
        nh, nkv, hd = s.n_heads, s.n_kv_heads, s.head_dim
        with ops.scope("linear"):
            if f"layers.{i}.qkv.w" in self.W:  # q|k|v in one product: one truncation
                qkv = self._lin(x, f"layers.{i}.qkv")
                if pack is not None:
                    qkv = pack.unpack(qkv)
                q, k, v = qkv[..., :nh * hd], qkv[..., nh * hd:(nh + nkv) * hd], qkv[..., (nh + nkv) * hd:]
            else:
                q, k, v = (self._lin(x, f"layers.{i}.{n}") for n in "qkv")
                if pack is not None:
                    q, k, v = pack.unpack(q), pack.unpack(k), pack.unpack(v)
            q = q.reshape(B, T, nh, hd).transpose(1, 2)
            k = k.reshape(B, T, nkv, hd).transpose(1, 2)
            v = v.reshape(B, T, nkv, hd).transpose(1, 2)
        if rope is not None:  # q and k rotated together: one truncation
            qk = self._rope(ops.cat([q, k], dim=1), *rope)
            q, k = qk[:, :nh], qk[:, nh:]
        if cache_i is not None:
            k, v = ops.kv_append(cache_i, k, v, f"layers.{i}")
        # grouped-query attention: the nh / nkv query heads that share a key/value head are
        # stacked as rows of one product with it, so each key and value is masked and opened once
        # per product, not once per query head (3x fewer bytes for SmolLM2's 9 / 3 heads)
        L = k.shape[2]
        q = q.reshape(B, nkv, (nh // nkv) * T, hd)
        with ops.scope("attention.matmul"):
            scores = ops.matmul(q if self.folded else q * (1.0 / math.sqrt(hd)), k.transpose(-1, -2))
        with ops.scope("attention.softmax"):
            if pack is None:
                probs = p.softmax(scores.reshape(B, nh, T, L), ops, mask=mask)
            else:  # the real queries' rows only: a pad query's row is dropped after the product anyway
                rows = lambda t, h: pack.pack(t.reshape(B, h, T, L).transpose(1, 2))  # noqa: E731
                probs = p.softmax(rows(scores, nh), ops, mask=rows(mask, 1))
                probs = pack.unpack(probs).transpose(1, 2)
        with ops.scope("attention.matmul"):
            out = ops.matmul(probs.reshape(B, nkv, (nh // nkv) * T, L), v)
        out = out.reshape(B, nh, T, hd).transpose(1, 2).reshape(B, T, nh * hd)
        if pack is not None:
            out = pack.pack(out)
        with ops.scope("linear"):
            return self._lin(out, f"layers.{i}.o", residual)

    def _mlp(self, x, i, residual=None):
        s, ops, p = self.spec, self.ops, self.p
        pre = f"layers.{i}."
        if self.tap:
            self.tap("up_in", i, x)
        with ops.scope("linear"):
            if pre + "gateup.w" in self.W:  # gate|up in one product: one truncation
                gu = self._lin(x, pre + "gateup")
                gate, up = gu[..., :s.intermediate], gu[..., s.intermediate:]
            else:
                up = self._lin(x, pre + "up")
                gate = self._lin(x, pre + "gate") if s.gated else None
        with ops.scope("activation"):
            if s.gated:
                h = p.act_times(s.act, gate, up, ops)
            else:
                h = p.act(s.act, up, ops)
        if self.tap:
            self.tap("down_in", i, h)
        with ops.scope("linear"):
            return self._lin(h, pre + "down", residual)

    def forward(self, x, positions, mask, use_cache: bool, last_only: bool = False, pack=None):
        """x: secret hidden states [B, T, H]; mask: public 0/1 [B, 1, T, S] or None.
        ``last_only``: the output of the last position only ([B, 1, V]): after the last layer's
        attention (which still fills the cache at every position) nothing mixes positions, so the
        last MLP, the final norm and the output layer run on one position per row instead of T.
        ``pack`` (:class:`Packed`, with ``last_only``): x holds the real tokens only, [1, N, H]."""
        s = self.spec
        rope = self._rope_tables(positions) if s.pos == "rope" else None
        if use_cache and self.cache is None:
            self.cache = [[None, None] for _ in range(s.n_layers)]
        split = None  # the embedding's stream: the first norm splits it itself
        for i in range(s.n_layers):
            cache_i = self.cache[i] if use_cache else None
            pre = f"layers.{i}."
            cut = last_only and i == s.n_layers - 1
            if s.post_norm:
                x = x + self._attention(x, i, rope, mask, cache_i, pack=pack)
                x = self._norm(_last(x, pack) if cut else x, pre + "attn_norm")
                x = self._norm(x + self._mlp(x, i), pre + "mlp_norm")
            elif self.split_norms:
                x, split = self._attention(self._norm(x, pre + "attn_norm", split), i, rope, mask, cache_i, x, pack)
                if cut:
                    x, split = _last(x, pack), _last(split, pack)
                x, split = self._mlp(self._norm(x, pre + "mlp_norm", split), i, x)
            else:
                x = x + self._attention(self._norm(x, pre + "attn_norm"), i, rope, mask, cache_i, pack=pack)
                x = _last(x, pack) if cut else x
                x = x + self._mlp(self._norm(x, pre + "mlp_norm"), i)
            if self.on_layer is not None:
                self.on_layer(i, s.n_layers)
        if last_only:
            x = x[:, -1:]
            split = None if split is None else split[:, -1:]
        if self.final_norm:
            x = self._norm(x, "final_norm", split)
        if "lm_head.w" in self.W:
            with self.ops.scope("lm_head"):  # logits are only revealed: no truncation
                x = self._lin(x, "lm_head", truncate=False)
        return x

    # -- prefill / decode ---------------------------------------------------------------------
    @staticmethod
    def prefill_mask(attn: torch.Tensor, causal: bool) -> torch.Tensor:
        """attn: [B, T] 0/1 (left padding). Padded query rows see themselves, so no row is empty."""
        B, T = attn.shape
        keep = attn[:, None, None, :].expand(B, 1, T, T).clone()
        if causal:
            keep = keep * torch.tril(torch.ones(T, T))
        keep = torch.maximum(keep, torch.eye(T).expand_as(keep))
        return keep

    def prefill(self, ids: torch.Tensor, attn: torch.Tensor | None = None, use_cache: bool = True,
                prefix: int = 0, last_only: bool = False):
        """Returns secret logits (or final hidden states for encoders) [B, T, V] ([B, 1, V] with
        ``last_only``: what generation reads).

        ``prefix`` > 0 (with ``last_only``): the first ``prefix`` real tokens of every row are the
        same (a chat template's system turn): they are computed ONCE, as a batch of one, and their
        keys and values are shared by every row; the rows' own tokens follow against that cache.
        Each row's values are those of the plain batch (nothing but its own earlier tokens reaches
        a position; pads are masked), at a fraction of the work."""
        self.cache = None
        attn = torch.ones_like(ids) if attn is None else attn
        if prefix:
            if not last_only:
                raise ValueError("a shared prefix is for generation: prefill(..., last_only=True)")
            return self._prefill_shared(ids, attn.long(), prefix, last_only)
        self._attn = attn.clone()
        positions = (attn.cumsum(-1) - 1).clamp(min=0)
        self._next_pos = positions[:, -1] + 1
        mask = self.prefill_mask(attn.to(self.dtype), self.spec.causal).to(self.dtype)
        if attn.all() and not self.spec.causal:
            mask = None
        return self._run(ids, positions, attn, mask, use_cache, last_only)

    def _run(self, ids, positions, attn, mask, use_cache: bool, last_only: bool):
        """Embed and run the layers; with ``last_only`` on a padded causal batch, the per-token
        work (embedding, norms, linear layers, MLP) runs on the real tokens only (:class:`Packed`):
        the pads of a batch of prompts of unequal lengths cost attention's rectangle alone."""
        pack = Packed(attn) if last_only and self.spec.causal and not attn.all() else None
        if pack is None:
            return self.forward(self.embed(ids, positions), positions, mask, use_cache, last_only)
        x = self.embed(pack.pack(ids), pack.pack(positions))
        return self.forward(x, positions, mask, use_cache, last_only, pack)

    def _prefill_shared(self, ids, attn, prefix: int, last_only: bool):
        B, T = ids.shape
        lengths = attn.sum(-1)
        if not self.spec.causal or int(lengths.min()) <= prefix:
            raise ValueError("a shared prefix needs a causal model and at least one own token per row")
        start = T - int(lengths[0])  # the prefix as row 0 holds it (every row holds the same tokens)
        head, hpos = ids[:1, start:start + prefix], torch.arange(prefix)[None]
        hmask = self.prefill_mask(torch.ones(1, prefix, dtype=self.dtype), True).to(self.dtype)
        # the prefix as a batch of one: its keys and values become every row's when the rows' own
        # tokens join them (:meth:`pmpc.ops.Ops.kv_append`; under MPC opened once, as one row's)
        self.forward(self.embed(head, hpos), hpos, hmask, use_cache=True, last_only=True)
        # each row's own tokens, left-padded to the longest, after the shared prefix
        Ts = int((lengths - prefix).max())
        own = mask_of(Ts, (lengths - prefix).tolist())
        rows = torch.arange(B)[:, None]
        cols = (T - Ts + torch.arange(Ts))[None, :]
        sids = torch.where(own.bool(), ids[rows, cols.expand(B, Ts)], torch.zeros_like(own))
        positions = (prefix + own.cumsum(-1) - 1).clamp(min=prefix)
        self._attn = torch.cat([torch.ones(B, prefix, dtype=torch.long), own], dim=1)
        self._next_pos = positions[:, -1] + 1
        keep = self.prefill_mask(own.to(self.dtype), True)
        mask = torch.cat([torch.ones(B, 1, Ts, prefix), keep], dim=-1).to(self.dtype)
        return self._run(sids, positions, own, mask, True, last_only)

    def decode(self, ids: torch.Tensor):
        """One new token per sequence [B, 1] against the secret KV cache. Returns [B, 1, V]."""
        positions = self._next_pos[:, None]
        self._next_pos = self._next_pos + 1
        self._attn = torch.cat([self._attn, torch.ones_like(ids)], dim=1)
        mask = None if self._attn.all() else self._attn[:, None, None, :].to(self.dtype)
        x = self.embed(ids, positions)
        return self.forward(x, positions, mask, use_cache=True)


class Packed:
    """A left-padded batch [B, T] as its N real tokens, in row order: ``pack`` takes a [B, T, ...]
    tensor (secret or public) to [1, N, ...], ``unpack`` back to [B, T, ...]. What ``unpack``
    puts at a pad is a copy of some real token's value, not zero: attention masks every pad key
    (its probability is exactly 0) and drops every pad query, so it is never read, and indexing
    is all it costs (local under MPC, no new op)."""

    def __init__(self, attn: torch.Tensor):
        self.B, self.T = attn.shape
        flat = attn.reshape(-1).bool()
        self.idx = flat.nonzero()[:, 0]                         # [N] real slots of the flat batch
        self.back = (flat.long().cumsum(0) - 1).clamp(min=0)     # each slot's packed row (pads: a neighbour's)
        self.last = attn.long().sum(-1).cumsum(0) - 1            # each row's last token, packed

    def pack(self, t):
        return t.reshape(self.B * self.T, *t.shape[2:])[self.idx][None]

    def unpack(self, t):
        return t[0][self.back].reshape(self.B, self.T, *t.shape[2:])


def _last(x, pack):
    """Each row's last position: [B, 1, ...]."""
    return x[:, -1:] if pack is None else x[0][pack.last][:, None]


def mask_of(tokens: int, lengths: list) -> torch.Tensor:
    """The left-padded 0/1 attention mask of prompts of these lengths in ``tokens`` columns."""
    return (torch.arange(tokens)[None, :] >= tokens - torch.tensor(lengths, dtype=torch.long)[:, None]).long()


def fold_weights(spec: ModelSpec) -> dict:
    """The weights with every public factor that sits next to a linear layer moved into it, and
    the linear layers that read the same input fused, so that none of them costs a truncation
    (a communication round under MPC) of its own. Exact in real arithmetic:
      * a pre-norm's weight w (and LayerNorm's bias b) feeds linear layers only:
        (y w + b) W + c = y (diag(w) W) + (b W + c);
      * the attention scale 1/sqrt(head_dim) goes into W_q (RoPE is linear: it commutes);
      * q|k|v and gate|up read the same normalised input: one matrix each.
    The norms then run without their weight. Post-norm models (BERT) keep theirs: their norm
    output feeds the residual stream, not a linear layer alone."""
    s = spec
    W = dict(s.weights)
    if s.post_norm:
        return W
    for i in range(s.n_layers):
        fold_layer(s, W, i)
    fold_head(s, W)
    return W


def _fold(W: dict, norm: str, linears: list[str]) -> None:
    w, b = W.pop(norm + ".w", None), W.pop(norm + ".b", None)
    for name in linears:
        M = W[name + ".w"]
        if b is not None:
            W[name + ".b"] = W.get(name + ".b", torch.zeros(M.shape[1], dtype=M.dtype)) + b @ M
        if w is not None:
            M = w[:, None] * M
        W[name + ".w"] = M


def _fuse(W: dict, names: list[str], into: str) -> None:
    ws = [W.pop(n + ".w") for n in names]
    bs = [W.pop(n + ".b", None) for n in names]
    W[into + ".w"] = torch.cat([w for w in ws], dim=1)
    if any(b is not None for b in bs):
        W[into + ".b"] = torch.cat([(b if b is not None else torch.zeros(w.shape[1], dtype=w.dtype))
                                    for b, w in zip(bs, ws)])


def fold_layer(s: ModelSpec, W: dict, i: int) -> None:
    """:func:`fold_weights` for layer ``i`` alone, in place on ``W``."""
    if s.post_norm:
        return
    p = f"layers.{i}."
    if p + "q.w" in W:
        _fold(W, p + "attn_norm", [p + "q", p + "k", p + "v"])
        r = 1.0 / math.sqrt(s.head_dim)
        W[p + "q.w"] = W[p + "q.w"] * r
        if p + "q.b" in W:
            W[p + "q.b"] = W[p + "q.b"] * r
        _fuse(W, [p + "q", p + "k", p + "v"], p + "qkv")
    if p + "up.w" in W:
        _fold(W, p + "mlp_norm", [p + "gate", p + "up"] if s.gated else [p + "up"])
        if s.gated:
            _fuse(W, [p + "gate", p + "up"], p + "gateup")


def fold_head(s: ModelSpec, W: dict) -> None:
    """:func:`fold_weights` for the final norm (into the output layer), in place on ``W``."""
    if not s.post_norm and "lm_head.w" in W and ("final_norm.w" in W or "final_norm.b" in W):
        _fold(W, "final_norm", ["lm_head"])


def compare_logits(ref, got) -> dict:
    """How far logits ``got`` are from ``ref`` (both [..., V], compared in float64): top-1 agreement
    (a position with a non-finite logit disagrees), mean KL(ref || got) of the next-token
    distributions, the largest absolute difference, and the number of positions."""
    ref = torch.as_tensor(ref, dtype=torch.float64)
    got = torch.as_tensor(got, dtype=torch.float64)
    finite = torch.isfinite(got).all(-1)
    lp, lq = torch.log_softmax(ref, -1), torch.log_softmax(got, -1)
    kl = (lp.exp() * (lp - lq)).sum(-1)
    return {"top1": float(((ref.argmax(-1) == got.argmax(-1)) & finite).double().mean()),
            "mean_kl": float(kl.mean()), "max_abs": float((got - ref).abs().max()),
            "positions": int(ref[..., 0].numel())}
