"""Attack success rate and over-refusal of a model (optionally under an approximation).

:func:`evaluate` = load prompts -> generate (streamed, resumable) -> judge -> summary JSON. It
takes an optional ``generate_fn(prompts, seed) -> outputs`` so that another backend (secure
generation under MPC: ``pmpc eval asr --secure ...``) plugs in without touching this file.

Summary (``summary.json``): the configuration, for each judge the ASR (jailbroken fraction) and
the refusal rate with 95% Wilson intervals, generation time and seconds per 100 prompts. On a
benign set (``jbb-benign``, ``xstest-safe``, ``harmless-*``) the refusal rate IS the over-refusal
rate; the CLI prints whichever the set measures.
"""
from __future__ import annotations

import dataclasses
import json
import pathlib
import time
import types

import torch

from eval.judges import rate
from eval import prompts
from eval.generate import GenConfig, plain_generate_fn, read_records, run
from pmpc import models, simulate
from pmpc.errors import UserError
from pmpc.models import load_hf
from pmpc.models.chat import Codec

DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
          "float16": torch.float16, "fp16": torch.float16}


def resolve_device(device: str) -> str:
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"--device {device}: no CUDA device here")
    return device


def load_model(name: str, device: str = "cpu", dtype: str = "float32"):
    """(model, Codec) on ``device``; models without a tokenizer get the byte stand-in."""
    if dtype not in DTYPES:
        raise UserError(f"unknown dtype {dtype!r}; choose from {', '.join(DTYPES)}")
    model, tok = load_hf(name, dtype=DTYPES[dtype], device=resolve_device(device))
    if tok is not None and not hasattr(model, "generate"):
        raise UserError(f"{name} is not a generative model")
    return model, Codec(tok, model)


def load_codec(name: str) -> Codec:
    """The Codec of ``name`` from its tokenizer and config alone (the weight file is never read):
    what the client of an encrypted evaluation holds."""
    import transformers as tf

    path, _ = models.resolve(name, weights=False)
    cfg = models.load_config(name)
    gc = tf.GenerationConfig.from_model_config(cfg)
    if (pathlib.Path(path) / "generation_config.json").is_file():
        try:
            gc = tf.GenerationConfig.from_pretrained(path)
        except (OSError, ValueError):
            pass
    return Codec(models.load_tokenizer(name), types.SimpleNamespace(config=cfg, generation_config=gc))


def ensure_verdicts(records: list[dict], judges) -> None:
    """Judge records that lack a verdict of some judge (e.g. a resumed file judged otherwise)."""
    for j in judges:
        miss = [r for r in records if j.name not in r.get("verdicts", {})]
        if miss:
            for r, v in zip(miss, j.judge([r["prompt"] for r in miss], [r["output"] for r in miss])):
                r.setdefault("verdicts", {})[j.name] = dataclasses.asdict(v)


def read_judged(summary: dict) -> list[dict]:
    """The per-prompt records (prompt, output, every judge's verdict) behind a summary."""
    return read_records(pathlib.Path(summary["generations"]))


def summarize(records: list[dict], judges) -> dict:
    out = {}
    for j in judges:
        vs = [r["verdicts"][j.name] for r in records]
        jb = sum(bool(v["jailbroken"]) for v in vs)
        ref = [v["refused"] for v in vs if v["refused"] is not None]
        out[j.name] = {"asr": rate(jb, len(vs)),
                       "refusal": rate(sum(bool(x) for x in ref), len(ref)) if ref else None,
                       "judge": j.describe()}
    return out


def evaluate(model, codec: Codec | None, prompts: list, judges, out_dir, approx=None, gen: GenConfig | None = None,
             batch_size: int = 8, seed: int = 0, generate_fn=None, calib=None, config: dict | None = None,
             progress: bool = True, tag: str = "generations") -> dict:
    """Run the set and write ``<out_dir>/<tag>.jsonl`` and ``<out_dir>/<tag>.summary.json``.

    ``model`` may be None when ``generate_fn`` is given (a backend that owns its model).
    ``approx``: a spec or :class:`pmpc.simulate.Approx`; TEAL/SmoothQuant/OmniQuant statistics
    are calibrated once on ``calib`` (token ids) when given."""
    gen = gen or GenConfig()
    a = simulate.parse(approx)
    if generate_fn is None:
        if model is None:
            raise UserError("evaluate needs a model or a generate_fn")
        if calib is not None and a.needs_calibration:
            a = simulate.calibrate(model, a, calib)
        generate_fn = plain_generate_fn(model, codec, gen, a)
    out_dir = pathlib.Path(out_dir)
    cfg = dict(config or {}, approx=str(a), gen=gen.to_dict(), seed=seed,
               judges=[j.name for j in judges], n=len(prompts))
    path = out_dir / f"{tag}.jsonl"
    t0 = time.perf_counter()
    records, spent, new = run(prompts, generate_fn, path, judges, batch_size=batch_size, seed=seed,
                         # judges and n are not part of the identity: other judges are applied to
                         # stored outputs, and a larger --limit extends the same file
                         config={k: v for k, v in cfg.items() if k not in ("judges", "n")},
                         progress=progress, desc=tag)
    ensure_verdicts(records, judges)
    summary = {"config": cfg, "n": len(records), "results": summarize(records, judges),
               "generation_s_this_run": round(spent, 3), "new_prompts_this_run": new,
               "wall_s": round(time.perf_counter() - t0, 3), "generations": str(path)}
    if new:
        summary["s_per_100_prompts"] = round(100 * spent / new, 2)
    (out_dir / f"{tag}.summary.json").write_text(json.dumps(summary, indent=1))
    return summary


def default_calibration(codec: Codec, n: int = 32, device="cpu") -> list:
    """Calibration token batches for TEAL/SmoothQuant/OmniQuant: the built-in harmless prompts,
    rendered with the model's template (data that no evaluation set contains)."""
    ps = prompts.load("builtin-harmless")[:n]
    return [codec.batch([codec.render(p.text)], device)["input_ids"] for p in ps]
