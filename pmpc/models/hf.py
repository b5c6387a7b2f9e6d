"""HF model -> :class:`ModelSpec`, one mapping per family: Llama-family decoders (Llama, Mistral,
Qwen2, Phi-3's fused projections, SmolLM), GPT-2 and BERT encoders."""
from __future__ import annotations

import torch

from pmpc.models.spec import ModelError, ModelSpec


def _t(w):
    return w.detach().float().t().contiguous()


def _v(w):
    # a copy: a checkpoint's parameters may be views of its memory-mapped file, which would stay
    # mapped (and resident, the whole file) for as long as the spec holds any one of them
    return None if w is None else w.detach().float().clone(memory_format=torch.contiguous_format)


def spec_from_hf(model, name: str = "model") -> ModelSpec:
    cfg = model.config
    mt = cfg.model_type
    if mt in ("llama", "mistral", "qwen2", "phi3", "smollm", "smollm3"):
        return _spec_llama(model, name)
    if mt == "gpt2":
        return _spec_gpt2(model, name)
    if mt == "bert":
        return _spec_bert(model, name)
    raise ModelError(f"unsupported architecture {mt!r}: pmpc runs Llama-family decoders "
                     "(llama, mistral, qwen2, phi3), gpt2 and bert")


def _spec_llama(model, name):
    cfg = model.config
    base = model.model
    H = cfg.hidden_size
    nh = cfg.num_attention_heads
    nkv = getattr(cfg, "num_key_value_heads", nh) or nh
    hd = getattr(cfg, "head_dim", None) or H // nh
    W = {"embed.tok": _v(base.embed_tokens.weight), "final_norm.w": _v(base.norm.weight),
         "lm_head.w": _t(model.lm_head.weight)}
    for i, layer in enumerate(base.layers):
        a, m, p = layer.self_attn, layer.mlp, f"layers.{i}."
        W[p + "attn_norm.w"] = _v(layer.input_layernorm.weight)
        W[p + "mlp_norm.w"] = _v(layer.post_attention_layernorm.weight)
        if hasattr(a, "qkv_proj"):  # Phi-3: fused q|k|v rows
            q, k, v = a.qkv_proj.weight.split([nh * hd, nkv * hd, nkv * hd], dim=0)
            W[p + "q.w"], W[p + "k.w"], W[p + "v.w"] = _t(q), _t(k), _t(v)
        else:
            for n in "qkv":
                proj = getattr(a, f"{n}_proj")
                W[p + f"{n}.w"] = _t(proj.weight)
                if proj.bias is not None:
                    W[p + f"{n}.b"] = _v(proj.bias)
        W[p + "o.w"] = _t(a.o_proj.weight)
        if hasattr(m, "gate_up_proj"):  # Phi-3: fused gate|up rows
            g, u = m.gate_up_proj.weight.chunk(2, dim=0)
            W[p + "gate.w"], W[p + "up.w"] = _t(g), _t(u)
        else:
            W[p + "gate.w"], W[p + "up.w"] = _t(m.gate_proj.weight), _t(m.up_proj.weight)
        W[p + "down.w"] = _t(m.down_proj.weight)
    rot = base.rotary_emb
    act = cfg.hidden_act
    if act not in ("silu", "gelu", "gelu_pytorch_tanh"):
        raise ModelError(f"unsupported activation {act!r}")
    return ModelSpec(
        name=name, arch="llama", vocab=cfg.vocab_size, hidden=H, n_layers=cfg.num_hidden_layers,
        n_heads=nh, n_kv_heads=nkv, head_dim=hd, intermediate=cfg.intermediate_size, norm="rms",
        norm_eps=cfg.rms_norm_eps, act={"gelu_pytorch_tanh": "gelu_tanh"}.get(act, act), gated=True,
        pos="rope", causal=True, post_norm=False, max_positions=cfg.max_position_embeddings,
        weights=W, inv_freq=rot.inv_freq.detach().float().clone(),
        rope_scaling=float(getattr(rot, "attention_scaling", 1.0)),
        eos_token_id=_eos(cfg), tied=_tied(model))


def _tied(model) -> bool:
    """The output layer is the input embedding itself (one parameter; a public fact of the config)."""
    return model.get_output_embeddings().weight is model.get_input_embeddings().weight


def _eos(cfg):
    e = getattr(cfg, "eos_token_id", None)
    return e[0] if isinstance(e, (list, tuple)) else e


def _spec_gpt2(model, name):
    cfg = model.config
    t = model.transformer
    H = cfg.n_embd
    W = {"embed.tok": _v(t.wte.weight), "embed.pos": _v(t.wpe.weight),
         "final_norm.w": _v(t.ln_f.weight), "final_norm.b": _v(t.ln_f.bias),
         "lm_head.w": _t(model.lm_head.weight)}
    for i, blk in enumerate(t.h):
        p = f"layers.{i}."
        W[p + "attn_norm.w"], W[p + "attn_norm.b"] = _v(blk.ln_1.weight), _v(blk.ln_1.bias)
        W[p + "mlp_norm.w"], W[p + "mlp_norm.b"] = _v(blk.ln_2.weight), _v(blk.ln_2.bias)
        qkv_w, qkv_b = blk.attn.c_attn.weight, blk.attn.c_attn.bias  # Conv1D: [in, 3H]
        for n, w, b in zip("qkv", qkv_w.split(H, dim=1), qkv_b.split(H)):
            W[p + f"{n}.w"], W[p + f"{n}.b"] = _v(w), _v(b)
        W[p + "o.w"], W[p + "o.b"] = _v(blk.attn.c_proj.weight), _v(blk.attn.c_proj.bias)
        W[p + "up.w"], W[p + "up.b"] = _v(blk.mlp.c_fc.weight), _v(blk.mlp.c_fc.bias)
        W[p + "down.w"], W[p + "down.b"] = _v(blk.mlp.c_proj.weight), _v(blk.mlp.c_proj.bias)
    act = {"gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "gelu": "gelu"}.get(cfg.activation_function)
    if act is None:
        raise ModelError(f"unsupported activation {cfg.activation_function!r}")
    return ModelSpec(
        name=name, arch="gpt2", vocab=cfg.vocab_size, hidden=H, n_layers=cfg.n_layer, n_heads=cfg.n_head,
        n_kv_heads=cfg.n_head, head_dim=H // cfg.n_head, intermediate=cfg.n_inner or 4 * H, norm="layer",
        norm_eps=cfg.layer_norm_epsilon, act=act, gated=False, pos="learned", causal=True, post_norm=False,
        max_positions=cfg.n_positions, weights=W, eos_token_id=_eos(cfg), tied=_tied(model))


def _spec_bert(model, name):
    cfg = model.config
    bert = getattr(model, "bert", model)
    e = bert.embeddings
    H = cfg.hidden_size
    W = {"embed.tok": _v(e.word_embeddings.weight), "embed.pos": _v(e.position_embeddings.weight),
         "embed.type": _v(e.token_type_embeddings.weight),
         "embed.norm.w": _v(e.LayerNorm.weight), "embed.norm.b": _v(e.LayerNorm.bias)}
    for i, layer in enumerate(bert.encoder.layer):
        p = f"layers.{i}."
        s = layer.attention.self
        for n, lin in (("q", s.query), ("k", s.key), ("v", s.value),
                       ("o", layer.attention.output.dense), ("up", layer.intermediate.dense),
                       ("down", layer.output.dense)):
            W[p + f"{n}.w"], W[p + f"{n}.b"] = _t(lin.weight), _v(lin.bias)
        ln1, ln2 = layer.attention.output.LayerNorm, layer.output.LayerNorm
        W[p + "attn_norm.w"], W[p + "attn_norm.b"] = _v(ln1.weight), _v(ln1.bias)
        W[p + "mlp_norm.w"], W[p + "mlp_norm.b"] = _v(ln2.weight), _v(ln2.bias)
    act = {"gelu": "gelu", "gelu_new": "gelu_tanh"}.get(cfg.hidden_act)
    if act is None:
        raise ModelError(f"unsupported activation {cfg.hidden_act!r}")
    return ModelSpec(
        name=name, arch="bert", vocab=cfg.vocab_size, hidden=H, n_layers=cfg.num_hidden_layers,
        n_heads=cfg.num_attention_heads, n_kv_heads=cfg.num_attention_heads,
        head_dim=H // cfg.num_attention_heads, intermediate=cfg.intermediate_size, norm="layer",
        norm_eps=cfg.layer_norm_eps, act=act, gated=False, pos="learned", causal=False, post_norm=True,
        max_positions=cfg.max_position_embeddings, weights=W)
