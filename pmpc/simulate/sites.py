"""Where the hooks go: each architecture's layers, and the module (and input or output) that
carries a named injection point."""
from __future__ import annotations

import dataclasses

import torch

from pmpc.errors import UserError

# -- where the hooks go ------------------------------------------------------------------------
def _unwrap(model):
    """PeftModel / LoraModel wrappers -> the HF model underneath."""
    for _ in range(4):
        if hasattr(model, "get_base_model"):
            model = model.get_base_model()
        else:
            break
    return model


@dataclasses.dataclass
class _Layer:
    idx: int
    attn_norm: torch.nn.Module
    mlp_norm: torch.nn.Module
    act: torch.nn.Module
    down: torch.nn.Module
    o: torch.nn.Module
    attn: torch.nn.Module
    consumers: dict  # point -> [linear modules reading that tensor] (for SmoothQuant factors)


@dataclasses.dataclass
class _Arch:
    family: str  # "llama" | "gpt2"
    layers: list
    final_norm: torch.nn.Module
    act_name: str  # silu | gelu | gelu_tanh
    config: object


def _act_name(cfg) -> str:
    a = getattr(cfg, "hidden_act", None) or getattr(cfg, "activation_function", None)
    m = {"silu": "silu", "swish": "silu", "gelu": "gelu", "gelu_new": "gelu_tanh",
         "gelu_pytorch_tanh": "gelu_tanh", "gelu_fast": "gelu_tanh"}
    if a not in m:
        raise UserError(f"activation {a!r} is not emulated (silu, gelu, gelu_tanh)")
    return m[a]


def find_arch(model) -> _Arch:
    m = _unwrap(model)
    base = getattr(m, "model", None)
    if base is not None and hasattr(base, "layers") and hasattr(base, "norm"):
        layers = []
        for i, L in enumerate(base.layers):
            mlp, at = L.mlp, L.self_attn
            act = getattr(mlp, "act_fn", None) or getattr(mlp, "activation_fn", None)
            if act is None or not hasattr(mlp, "down_proj"):
                raise UserError(f"layer {i}: unsupported MLP {type(mlp).__name__} (dense gated MLP expected)")
            up = [mlp.gate_up_proj] if hasattr(mlp, "gate_up_proj") else [mlp.gate_proj, mlp.up_proj]
            qkv = [at.qkv_proj] if hasattr(at, "qkv_proj") else [at.q_proj, at.k_proj, at.v_proj]
            layers.append(_Layer(i, L.input_layernorm, L.post_attention_layernorm, act, mlp.down_proj,
                                 at.o_proj, at, {"up": up, "down": [mlp.down_proj], "attn": qkv, "o": [at.o_proj]}))
        arch = _Arch("llama", layers, base.norm, _act_name(m.config), m.config)
    elif hasattr(m, "transformer") and hasattr(m.transformer, "h"):
        layers = [_Layer(i, b.ln_1, b.ln_2, b.mlp.act, b.mlp.c_proj, b.attn.c_proj, b.attn,
                         {"up": [b.mlp.c_fc], "down": [b.mlp.c_proj], "attn": [b.attn.c_attn], "o": [b.attn.c_proj]})
                  for i, b in enumerate(m.transformer.h)]
        arch = _Arch("gpt2", layers, m.transformer.ln_f, _act_name(m.config), m.config)
    else:
        raise UserError(f"cannot find decoder layers in {type(m).__name__}: the simulator supports "
                        "Llama-family decoders (model.model.layers) and GPT-2 (transformer.h)")
    acts = [id(L.act) for L in arch.layers]
    if len(set(acts)) != len(acts):
        raise UserError("the MLP activation module is shared between layers; per-layer hooks would be wrong")
    return arch


def hook_sites(arch: _Arch, point: str, layers) -> list[tuple[str, torch.nn.Module, str]]:
    """(site key, module, hook type) for one point. Hook types: 'out' (forward hook on the
    module's output), 'in' (forward pre-hook on its first input)."""
    sel = [L for L in arch.layers if layers is None or L.idx in layers]
    if layers is not None:
        bad = sorted(set(layers) - {L.idx for L in arch.layers})
        if bad:
            raise UserError(f"layer {bad[0]} out of range: the model has {len(arch.layers)} layers (0-{len(arch.layers) - 1})")
    if point == "up":
        return [(f"{L.idx}.up", L.mlp_norm, "out") for L in sel]
    if point == "attn":
        return [(f"{L.idx}.attn", L.attn_norm, "out") for L in sel]
    if point == "down":
        return [(f"{L.idx}.down", L.down, "in") for L in sel]
    if point == "o":
        return [(f"{L.idx}.o", L.o, "in") for L in sel]
    if point == "act":
        return [(f"{L.idx}.act", L.act, "out") for L in sel]
    if point == "norm":
        s = []
        for L in sel:
            s += [(f"{L.idx}.attn_norm", L.attn_norm, "out"), (f"{L.idx}.mlp_norm", L.mlp_norm, "out")]
        if layers is None:
            s.append(("final_norm", arch.final_norm, "out"))
        return s
    raise UserError(f"point {point!r} has no tensor sites")


def _consumers(arch: _Arch, site: str) -> list:
    idx, point = site.split(".")
    return arch.layers[int(idx)].consumers[point]


def _in_channel_wmax(mods) -> torch.Tensor:
    """max |W| per input channel over the linear layers that read the tensor."""
    cols = []
    for m in mods:
        w = m.weight.detach()
        # nn.Linear stores [out, in]; GPT-2's Conv1D stores [in, out]
        cols.append(w.abs().amax(dim=1) if type(m).__name__ == "Conv1D" else w.abs().amax(dim=0))
    return torch.stack(cols).amax(0).float()
