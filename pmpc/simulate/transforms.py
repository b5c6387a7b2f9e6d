"""What a hook does to an activation: noise, sparsification, quantisation, a protocol's emulation,
and the softmax emulation through the attention interface."""
from __future__ import annotations


import torch

from pmpc.ops import TorchOps
from pmpc.simulate.sites import _Arch, _consumers, _in_channel_wmax
from pmpc.simulate.spec import OMNI_GAMMAS, Approx
import protocols

# -- the transforms ------------------------------------------------------------------------------
def _fake_quant(x: torch.Tensor, bits: int, gamma: float | torch.Tensor = 1.0) -> torch.Tensor:
    """Per-token symmetric quantise-dequantise: step = gamma * max|x_token| / (2^(b-1) - 1)."""
    qmax = 2 ** (bits - 1) - 1
    xd = x.detach().float()  # bf16 cannot hold x/step exactly: quantise in float32
    step = (xd.abs().amax(-1, keepdim=True) * gamma / qmax).clamp_min(1e-12)
    q = torch.clamp(torch.round(xd / step), -qmax, qmax) * step
    return x + (q - xd).to(x.dtype)  # straight-through: gradient of the identity


def _laplace(shape, b, gen, dtype, device):
    # Laplace(0, b) = b (E1 - E2) with E ~ Exp(1) = -log(1 - U), U in [0, 1): always finite
    u = torch.rand((2, *shape), generator=gen, device=device, dtype=torch.float32)
    e = -torch.log1p(-u)
    return ((e[0] - e[1]) * b).to(dtype)


def _kth_abs(x: torch.Tensor, frac: float) -> torch.Tensor:
    """The ``frac`` quantile of |x| (exact order statistic; torch.quantile caps the size)."""
    a = x.detach().abs().flatten().float()
    k = int(round(frac * a.numel()))
    if k <= 0:
        return a.new_tensor(-1.0)  # nothing zeroed (|x| <= -1 never holds)
    return a.kthvalue(min(k, a.numel())).values


class _Component:
    """One elementary approximation bound to a model: its transform of a site's tensor."""

    def __init__(self, a: Approx, arch: _Arch, gen: torch.Generator):
        self.a, self.arch, self.gen = a, arch, gen
        self.stats = a.stats
        if a.kind == "protocol":
            self.proto = protocols.get(a.name)
            self.ops = TorchOps(dtype=torch.float64, fxp_bits=a.params.get("fxp"))

    def points(self):
        pts = list(self.a.points)
        if self.a.kind == "protocol":  # down and act both mean: replace the activation
            pts = ["act" if p in ("down", "act") else p for p in pts]
            pts = list(dict.fromkeys(pts))
        return pts

    # called with (site, module, input tensor, output tensor or None); returns the new tensor
    def __call__(self, site, module, x_in, x):
        a, k = self.a, self.a.kind
        if k == "gauss":
            noise = torch.randn(x.shape, generator=self.gen, device=x.device, dtype=torch.float32)
            return x + (noise * a.scale).to(x.dtype)
        if k == "laplace":
            return x + _laplace(x.shape, a.scale, self.gen, x.dtype, x.device)
        if k == "teal":
            if "thr" in a.params:
                t = a.params["thr"]
            elif site in self.stats:
                t = self.stats[site]
            else:
                t = _kth_abs(x, a.scale)
            return x * (x.detach().abs() > t).to(x.dtype)
        if k == "quant":
            return _fake_quant(x, int(a.scale))
        if k in ("smoothquant", "omniquant"):
            s = self._smooth(site, x)
            gamma = 1.0 if k == "smoothquant" else self._gamma(site, x / s)
            return _fake_quant(x / s, int(a.scale), gamma) * s
        if k == "protocol":
            return self._protocol(site, module, x_in, x)
        raise AssertionError(k)

    def _smooth(self, site, x):
        alpha = self.a.params.get("alpha", 0.5)
        key = site + ":smooth"
        if key not in self.stats:  # on the fly: channel maxima of this call
            xmax = x.detach().abs().flatten(0, -2).amax(0).float()
            return _smooth_factors(xmax, _in_channel_wmax(_consumers(self.arch, site)).to(x.device), alpha).to(x.dtype)
        return self.stats[key].to(x.device, x.dtype)

    def _gamma(self, site, xs):
        key = site + ":gamma"
        if key in self.stats:
            return self.stats[key]
        return OMNI_GAMMAS[int(torch.stack(_clip_mse(xs, int(self.a.scale))).argmin())]

    def _protocol(self, site, module, x_in, x):
        ops, p = self.ops, self.proto
        xi = x_in.to(torch.float64)
        if site.endswith(".act"):
            y = p.act(self.arch.act_name, xi, ops)
        elif self.arch.family == "gpt2":
            y = p.layer_norm(xi, module.weight.to(torch.float64), module.bias.to(torch.float64), module.eps, ops)
        else:
            eps = getattr(module, "variance_epsilon", None) or getattr(module, "eps", 1e-6)
            y = p.rms_norm(xi, module.weight.to(torch.float64), eps, ops)
        return y.to(x.dtype)


def _smooth_factors(xmax, wmax, alpha):
    s = xmax.clamp_min(1e-5) ** alpha / wmax.clamp_min(1e-5) ** (1 - alpha)
    return s.clamp_min(1e-5)


def _clip_mse(x, bits):
    return [((_fake_quant(x.detach(), bits, g) - x.detach()) ** 2).float().mean() for g in OMNI_GAMMAS]


# -- softmax emulation through the attention interface -------------------------------------------
_ATTN_NAME = "pmpc_protocol_softmax"


def _protocol_attention(module, query, key, value, attention_mask, scaling, dropout=0.0, **kwargs):
    """Eager attention whose softmax is ``protocol.softmax`` (for layers the context selected;
    other layers use the float softmax). The padding/causal mask becomes the protocol's 0/1 mask."""
    from transformers.models.llama.modeling_llama import repeat_kv

    groups = query.shape[1] // key.shape[1]
    k, v = repeat_kv(key, groups), repeat_kv(value, groups)
    scores = torch.matmul(query, k.transpose(2, 3)) * scaling
    q_len, kv_len = scores.shape[-2], scores.shape[-1]
    if attention_mask is None:
        keep = torch.ones(q_len, kv_len, dtype=torch.bool, device=scores.device)
        if q_len > 1:
            keep = torch.ones_like(keep).tril(kv_len - q_len)
        keep = keep.expand_as(scores)
    elif attention_mask.dtype == torch.bool:
        keep = attention_mask[..., -kv_len:].expand_as(scores)
    else:
        keep = (attention_mask[..., -kv_len:] > torch.finfo(attention_mask.dtype).min / 2).expand_as(scores)
    keep = keep | ~keep.any(-1, keepdim=True)  # padded query rows: attend to all, stay finite
    hook = getattr(module, "_pmpc_softmax", None)
    if hook is None:
        probs = torch.softmax(scores.float().masked_fill(~keep, float("-inf")), dim=-1).to(query.dtype)
    else:
        proto, ops = hook
        probs = proto.softmax(scores.to(torch.float64), ops, mask=keep.to(torch.float64)).to(query.dtype)
    out = torch.matmul(probs, v).transpose(1, 2).contiguous()
    return out, probs


def _register_attention():
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, eager_mask

    AttentionInterface.register(_ATTN_NAME, _protocol_attention)
    AttentionMaskInterface.register(_ATTN_NAME, eager_mask)
