"""Generation for safety evaluation: templates, batched decoding, a streaming resumable runner.

Prompts are rendered and encoded by :class:`pmpc.models.chat.Codec` (templates: see there).

Decoding is greedy unless ``do_sample``; prompts are batched with LEFT padding (so every row's
next token sits in the last column); ``max_new_tokens`` bounds the output.

:func:`run` streams one JSONL record per prompt as batches finish and, on restart, skips the
prompts already in the file (it refuses a file written with a different configuration). The
``generate_fn(prompts, seed) -> outputs`` it calls is the hook for other backends (e.g. secure
generation under MPC): anything with that signature plugs in.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import pathlib
import time
from typing import Callable, Sequence

import torch

from pmpc import jsonl
from pmpc.errors import UserError
from pmpc.models.chat import Codec
from pmpc.simulate import approximate


@dataclasses.dataclass
class GenConfig:
    system: str = "default"
    max_new_tokens: int = 64
    do_sample: bool = False
    temperature: float = 1.0
    top_p: float = 1.0

    def to_dict(self):
        return dataclasses.asdict(self)


def model_device(model):
    return next(model.parameters()).device


def generate_texts(model, codec: Codec, prompts: Sequence[str], cfg: GenConfig, seed: int = 0) -> list[str]:
    """One batch: render, left-pad, ``model.generate``, decode the new tokens."""
    rendered = [codec.render(p, cfg.system) for p in prompts]
    enc = codec.batch(rendered, model_device(model))
    kw = dict(max_new_tokens=cfg.max_new_tokens, pad_token_id=codec.pad_id,
              eos_token_id=codec.eos_ids or None, do_sample=cfg.do_sample)
    if cfg.do_sample:
        kw.update(temperature=cfg.temperature, top_p=cfg.top_p)
        torch.manual_seed(seed)
    else:
        kw.update(temperature=None, top_p=None, top_k=None)  # silence sampling defaults of the model
    with torch.no_grad():
        out = model.generate(**enc, **kw)
    new = out[:, enc["input_ids"].shape[1]:].tolist()
    return [codec.decode(x) for x in new]


def plain_generate_fn(model, codec: Codec, cfg: GenConfig, approx=None) -> Callable[[list[str], int], list[str]]:
    """``generate_fn(prompts, seed)`` for :func:`run`: each batch runs inside its own
    ``approximate(model, approx, seed=seed)`` so a batch's noise depends only on its seed."""
    def fn(prompts, seed):
        with approximate(model, approx, seed=seed):
            return generate_texts(model, codec, prompts, cfg, seed)
    return fn


def config_hash(config: dict) -> str:
    return hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()[:12]


def read_records(path: pathlib.Path) -> list[dict]:
    """Records of a generations file (a torn last line, killed mid-write, is dropped)."""
    return jsonl.read(path)


def run(prompts, generate_fn, out_path, judges=(), batch_size: int = 8, seed: int = 0, config: dict | None = None,
        progress: bool = True, desc: str = "generate") -> tuple[list[dict], float, int]:
    """Generate for every prompt not yet in ``out_path``, judge, and append records as batches
    finish. Returns (all records in prompt order, seconds spent generating in this call, number
    of prompts generated in this call).

    ``prompts``: list of :class:`eval.prompts.Prompt`. Batch b (prompts i..i+B) gets seed
    ``seed + i`` where i counts over the whole set, so a resumed run that picks up whole batches
    reproduces an uninterrupted one."""
    from tqdm.auto import tqdm

    out_path = pathlib.Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    h = config_hash(config or {})
    old = read_records(out_path)
    if old and any(r.get("config") != h for r in old):
        raise UserError(f"{out_path} holds generations of a different configuration; "
                        "choose another output directory or delete the file")
    jsonl.repair(out_path)   # without a torn tail, then append
    done = {(r["i"], r["prompt"]) for r in old}
    todo = [(i, p) for i, p in enumerate(prompts) if (i, p.text) not in done]
    spent = 0.0
    bar = tqdm(total=len(prompts), initial=len(prompts) - len(todo), desc=desc, unit="prompt",
               disable=not progress, dynamic_ncols=True)
    new = []
    with open(out_path, "a", encoding="utf-8") as f:
        for b in range(0, len(todo), batch_size):
            chunk = todo[b:b + batch_size]
            texts = [p.text for _, p in chunk]
            t0 = time.perf_counter()
            outs = generate_fn(texts, seed + chunk[0][0])
            spent += time.perf_counter() - t0
            if len(outs) != len(texts):
                raise RuntimeError(f"generate_fn returned {len(outs)} outputs for {len(texts)} prompts")
            verdicts = {j.name: j.judge(texts, outs) for j in judges}
            for k, ((i, p), o) in enumerate(zip(chunk, outs)):
                rec = {"i": i, "id": p.id, "prompt": p.text, "category": p.category, "label": p.label,
                       "output": o, "config": h,
                       "verdicts": {n: dataclasses.asdict(v[k]) for n, v in verdicts.items()}}
                f.write(json.dumps(rec) + "\n")
                new.append(rec)
            f.flush()
            bar.update(len(chunk))
    bar.close()
    recs = {(r["i"], r["prompt"]): r for r in old + new}
    ordered = [recs[(i, p.text)] for i, p in enumerate(prompts) if (i, p.text) in recs]
    return ordered, spent, len(new)
