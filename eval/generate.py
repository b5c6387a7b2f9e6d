"""Generation for safety evaluation: templates, batched decoding, a streaming resumable runner.

Templates (``system``):
  * ``default`` — the model's chat template with no system message: the template's own default
    applies (SmolLM2 inserts "You are a helpful AI assistant named SmolLM ...").
  * ``none``    — an empty system turn, so templates that insert a default cannot (a template
    without a system role gets the user turn alone).
  * ``paper``   — the seed paper's: system "Below is an instruction that describes a task. Write a
    response that appropriately completes the request.", user "Instruction: {prompt}"; a model
    without a chat template gets the paper's raw form "<system>\\nInstruction: {p}\\nResponse:".
  * any other string is used as the system message.
Models without a chat template (stories260K, tiny random models) get the prompt text itself.

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

from pmpc.errors import UserError

PAPER_SYSTEM = ("Below is an instruction that describes a task. Write a response that appropriately "
                "completes the request.")


class ByteTokenizer:
    """A stand-in tokenizer for models shipped without one (tiny random test models): characters
    map onto the vocabulary, id 0 pads, id 1 ends. Enough to exercise generation end to end."""

    chat_template = None

    def __init__(self, vocab: int):
        if vocab < 4:
            raise UserError("vocabulary too small for the byte stand-in tokenizer")
        self.vocab = vocab
        self.pad_token_id, self.eos_token_id = 0, 1

    def encode(self, text: str) -> list[int]:
        return [2 + (ord(c) - 32) % (self.vocab - 2) for c in text]

    def decode(self, ids) -> str:
        return "".join(chr(32 + (i - 2) % 95) for i in ids if i >= 2)


class Codec:
    """Text <-> ids and the prompt template, for an HF tokenizer or the byte stand-in."""

    def __init__(self, tok, model=None):
        if tok is None:
            tok = ByteTokenizer(model.config.vocab_size)
        self.tok = tok
        self.byte = isinstance(tok, ByteTokenizer)
        if self.byte:
            self.pad_id, self.eos_ids = tok.pad_token_id, [tok.eos_token_id]
        else:
            gc = getattr(model, "generation_config", None) if model is not None else None
            eos = getattr(gc, "eos_token_id", None) if gc is not None else None
            eos = eos if eos is not None else tok.eos_token_id
            self.eos_ids = [e for e in (eos if isinstance(eos, (list, tuple)) else [eos]) if e is not None]
            pad = tok.pad_token_id
            if pad is None and gc is not None:
                pad = getattr(gc, "pad_token_id", None)
            self.pad_id = pad if pad is not None else (self.eos_ids[0] if self.eos_ids else 0)

    @property
    def has_chat(self) -> bool:
        return not self.byte and bool(getattr(self.tok, "chat_template", None))

    def render(self, prompt: str, system: str = "default") -> str:
        if system == "paper":
            sys_msg, user = PAPER_SYSTEM, f"Instruction: {prompt}"
        elif system == "none":
            sys_msg, user = "", prompt
        elif system == "default":
            sys_msg, user = None, prompt
        else:
            sys_msg, user = system, prompt
        if not self.has_chat:
            if system == "paper":
                return f"{PAPER_SYSTEM}\nInstruction: {prompt}\nResponse:"
            return f"{sys_msg}\n{user}" if sys_msg else user
        msgs = [{"role": "user", "content": user}]
        if sys_msg is not None:
            try:
                return self.tok.apply_chat_template([{"role": "system", "content": sys_msg}] + msgs,
                                                    tokenize=False, add_generation_prompt=True)
            except Exception:  # templates without a system role (raise from jinja): fold it in
                if sys_msg:
                    msgs = [{"role": "user", "content": f"{sys_msg}\n\n{user}"}]
        return self.tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)

    def encode(self, text: str) -> list[int]:
        if self.byte:
            return self.tok.encode(text)
        # a chat template writes its own BOS into the text; a raw prompt gets the tokenizer's
        return self.tok(text, add_special_tokens=not self.has_chat)["input_ids"]

    def decode(self, ids) -> str:
        ids = list(ids)
        for i, t in enumerate(ids):
            if t in self.eos_ids:
                ids = ids[:i]
                break
        if self.byte:
            return self.tok.decode(ids)
        return self.tok.decode(ids, skip_special_tokens=True).strip()

    def batch(self, texts: Sequence[str], device) -> dict:
        """Left-padded input_ids / attention_mask for rendered texts."""
        ids = [self.encode(t) for t in texts]
        n = max(len(x) for x in ids)
        inp = torch.full((len(ids), n), self.pad_id, dtype=torch.long)
        att = torch.zeros((len(ids), n), dtype=torch.long)
        for r, x in enumerate(ids):
            if x:
                inp[r, n - len(x):] = torch.tensor(x)
                att[r, n - len(x):] = 1
        return {"input_ids": inp.to(device), "attention_mask": att.to(device)}


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


def make_generate_fn(model, codec: Codec, cfg: GenConfig, approx=None) -> Callable[[list[str], int], list[str]]:
    """``generate_fn(prompts, seed)`` for :func:`run`: each batch runs inside its own
    ``approximate(model, approx, seed=seed)`` so a batch's noise depends only on its seed."""
    from pmpc.simulate import approximate

    def fn(prompts, seed):
        with approximate(model, approx, seed=seed):
            return generate_texts(model, codec, prompts, cfg, seed)
    return fn


def config_hash(config: dict) -> str:
    return hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()[:12]


def read_records(path: pathlib.Path) -> list[dict]:
    """Records of a generations file. A torn last line (killed mid-write) is dropped."""
    if not path.exists():
        return []
    lines = path.read_text(encoding="utf-8").splitlines()
    out = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            if n == len(lines):
                break
            raise UserError(f"{path}:{n}: not a JSON record (corrupt generations file)") from None
    return out


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
    # rewrite the file without a torn tail, then append
    if old and len(old) != sum(1 for ln in out_path.read_text(encoding="utf-8").splitlines() if ln.strip()):
        out_path.write_text("".join(json.dumps(r) + "\n" for r in old), encoding="utf-8")
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
