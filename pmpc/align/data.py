"""Preference data for safety alignment.

Pairs, one per prompt:
  * harmful prompt  -> chosen = a refusal (from :data:`REFUSALS`, written for pmpc),
                       rejected = the base model's own compliant answer;
  * harmless prompt -> chosen = the base model's own helpful answer, rejected = a refusal,
    so that the aligned model does not learn to refuse everything.

The prompts are arguments: which ones a model is trained on, decontaminated against every
evaluation and validation prompt, is decided with the other roles in :func:`eval.splits.training_prompts`.

The base model's answers are generated greedily with the chat template, batched, and appended to a
JSONL file one line per prompt (``runs/align/gen-<model>.jsonl`` by default, git-ignored), so an
interrupted run resumes where it stopped. :func:`build_pairs` turns that file into pairs.

On-policy pairs (``policy_rows``: the answers of the model about to be trained further, e.g.
smollm2-safe): the policy's own answer takes whichever side it falls on, the base answer or the
template the other. A harmful prompt it refuses -> its own refusal / the base compliance; one it
complies with -> a template / its own compliance; a harmless prompt it refuses -> the base answer /
its own refusal (the over-refusals DPO must push down); one it answers -> its answer / a template.
DPO then ranks text the reference can actually produce instead of templates it never would.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import pathlib
import random
import re
import time

from pmpc import jsonl, paths
from pmpc.errors import UserError
from pmpc.models.chat import Codec

FORMATS = ("chat", "paper")

# Refusals written for pmpc. Each is a genuine refusal in a different register, and each contains a
# phrase that the GCG keyword rule recognises, so a model that learns them refuses visibly.
REFUSALS = (
    "I'm sorry, but I can't help with that. It could cause real harm to people, and I won't provide "
    "instructions or content for it.",
    "I cannot help with this request. What you're describing could hurt someone or break the law. "
    "If there's a safe, legitimate goal behind it, I'm happy to help with that instead.",
    "I'm sorry, I can't assist with that.",
    "I can't provide that. Helping with this could put people at risk, so I have to decline. "
    "Is there something else I can do for you?",
    "My apologies, but I won't be able to help with this. It asks for something harmful, and "
    "giving that information would be irresponsible.",
    "I apologize, but I cannot fulfil this request. It involves content that could be used to "
    "harm others.",
    "Sorry, but this is not something I can help with. I don't create content that could be used "
    "to hurt, deceive or endanger people.",
    "I'm sorry, but I have to refuse. This request could lead to serious harm, and I'm not able to "
    "support it in any form.",
    "I cannot do that. If you are going through something difficult, talking to someone you trust "
    "or a local support service can really help.",
    "As an AI assistant, I have to decline this one: it could be used to cause harm. I'd be glad "
    "to help with a related question that is safe and legal.",
    "I'm sorry, but I can't provide instructions for this. It could be dangerous and is likely "
    "against the law.",
    "I can't assist with this request. Producing it could harm people, and that is a line I don't "
    "cross.",
    "I'm really sorry, but I can't help here. This could hurt people, so I won't write it.",
    "I cannot support this. It would mean helping with something harmful or illegal. If you'd like, "
    "I can share information on staying safe or on the topic in general terms.",
    "Sorry, I can't help with that request.",
    "I am sorry, but I cannot help you with this. My purpose is to be helpful without putting "
    "anyone at risk.",
    "I'm sorry, but no. I won't give guidance that could be used to injure people, damage "
    "property, or deceive anyone.",
    "I cannot create that content. It could be harmful, and I'm not willing to produce it.",
    "I'm sorry, but I can't go along with this. Let me know if there's another way I can help.",
    "I do not provide help with requests like this one, because the result could seriously harm "
    "someone. I'm happy to help with something else.",
    "I'm sorry, this isn't something I can assist with. It could be unsafe or unlawful.",
    "I apologize, but I'm not going to help with that. If you're worried about a risk like this, "
    "the relevant authorities or a professional are the right people to contact.",
    "I'm not able to provide this. Requests that could lead to harm are outside what I'll do, "
    "but I'm glad to help with a different question.",
    "I cannot give you that information. It could be used to hurt people, so the answer is no.",
)



SCREEN_TOKENS = 16   # a refusal shows in its first words; the GCG rule reads them


def refused_prompts(path, prompts: list[str], is_refusal, tokens: int = SCREEN_TOKENS) -> list[str]:
    """The harmless ``prompts`` that the model whose answers are in ``path`` (``tokens`` greedy
    tokens each, made by :func:`generate_answers`) refuses: hard negatives for on-policy pairs.
    A model aligned on a few hundred harmless prompts answers those, so they stop teaching it where
    the line is; the ordinary prompts it still refuses (a topic word, a dark theme) are the contrast
    it lacks, found on training data (XSTest, which measures exactly that, stays held out)."""
    got = answers(path, tokens)
    missing = [p for p in prompts if ("harmless", p) not in got]
    if missing:
        raise UserError(f"{path}: {len(missing)} screened prompt(s) without an answer of {tokens} tokens "
                        "(run without --no-generate)")
    return [p for p in prompts if is_refusal(got[("harmless", p)]["response"])]


# -- prompt formatting -------------------------------------------------------------------------
def render(tok, prompt: str, fmt: str = "chat") -> str:
    """The prompt as the model sees it, rendered exactly as the evaluation harness renders it
    (``pmpc.models.chat.Codec``): ``chat`` = its ``default`` system, ``paper`` = ``paper``."""
    if fmt not in FORMATS:
        raise UserError(f"unknown prompt format {fmt!r}; choose from {', '.join(FORMATS)}")
    return Codec(tok).render(prompt, "default" if fmt == "chat" else "paper")


def end_of_turn(tok) -> int:
    """The token that ends an assistant turn: ``<|im_end|>`` for ChatML templates, else EOS."""
    v = tok.get_vocab()
    return v["<|im_end|>"] if "<|im_end|>" in v else tok.eos_token_id


def _stable_int(*parts) -> int:
    return int.from_bytes(hashlib.sha256("\x1f".join(map(str, parts)).encode()).digest()[:8], "big")


def pick_refusal(prompt: str, seed: int = 0) -> str:
    """A refusal template chosen deterministically from the prompt and seed."""
    return REFUSALS[_stable_int("refusal", seed, prompt) % len(REFUSALS)]


# -- generation cache --------------------------------------------------------------------------
def default_gen_path(model: str) -> pathlib.Path:
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", pathlib.Path(model).name or model)
    return paths.REPO / "runs" / "align" / f"gen-{safe}.jsonl"


def answers(path, max_new_tokens: int, fmt: str = "chat") -> dict[tuple[str, str], dict]:
    """The answers in a generations JSONL made with these settings, by (kind, prompt), in file order:
    what :func:`generate_answers` skips and what pairs are built from."""
    return {(r["kind"], r["prompt"]): r for r in jsonl.read(path)
            if r.get("max_new_tokens") == max_new_tokens and r.get("format") == fmt}


def generate_answers(model, tok, prompts: list[tuple[str, str, str]], out_path, *, max_new_tokens: int = 128,
                     batch_size: int = 16, fmt: str = "chat", model_name: str = "", progress: bool = True,
                     device: str | None = None) -> dict:
    """Greedy chat-template answers of ``model`` to ``prompts`` [(prompt, kind, source)], appended to
    ``out_path`` (JSONL), skipping prompts already there. Returns timing facts."""
    import torch
    from tqdm import tqdm

    if tok is None:
        raise UserError("generation needs a model with a tokenizer")
    out_path = pathlib.Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    jsonl.repair(out_path)
    done = answers(out_path, max_new_tokens, fmt)
    todo = [p for p in prompts if (p[1], p[0]) not in done]
    # longest first: tighter padding and the worst batch comes early
    todo.sort(key=lambda p: -len(p[0]))
    device = device or next(model.parameters()).device
    codec = Codec(tok, model)
    eos = set(codec.eos_ids) | {end_of_turn(tok)}
    n_tok, t0 = 0, time.perf_counter()
    with open(out_path, "a", encoding="utf-8") as f, torch.no_grad():
        bar = tqdm(total=len(todo), desc="generate", disable=not progress, unit="prompt")
        for i in range(0, len(todo), batch_size):
            batch = todo[i:i + batch_size]
            enc = codec.batch([render(tok, p, fmt) for p, _, _ in batch], device)
            out = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=sorted(eos),
                                 pad_token_id=codec.pad_id, temperature=None, top_p=None, top_k=None)
            new = out[:, enc["input_ids"].shape[1]:]
            for (p, kind, src), ids in zip(batch, new.tolist()):
                stop = next((k for k, t in enumerate(ids) if t in eos), None)
                finished = stop is not None
                ids = ids[:stop] if finished else ids
                n_tok += len(ids) + int(finished)
                text = tok.decode(ids, skip_special_tokens=True).strip()
                f.write(json.dumps({"prompt": p, "kind": kind, "source": src, "response": text,
                                    "finished": finished, "n_tokens": len(ids), "format": fmt,
                                    "max_new_tokens": max_new_tokens, "model": model_name}) + "\n")
            f.flush()
            bar.update(len(batch))
        bar.close()
    dt = time.perf_counter() - t0
    return {"generated": len(todo), "skipped": len(prompts) - len(todo), "seconds": round(dt, 2),
            "new_tokens": n_tok, "ms_per_token": round(1000 * dt / max(n_tok, 1), 2)}


# -- pairs -------------------------------------------------------------------------------------
@dataclasses.dataclass
class Pair:
    prompt: str
    kind: str            # "harmful" | "harmless"
    chosen: str
    rejected: str
    chosen_eos: bool     # the response ended (append the end-of-turn token)
    rejected_eos: bool
    fmt: str = "chat"


def build_pairs(gen_rows: list[dict], is_refusal, seed: int = 0, formats: tuple[str, ...] = ("chat",),
                policy_rows: dict[tuple[str, str], dict] | None = None) -> tuple[list[Pair], dict]:
    """Pairs from generated answers. ``is_refusal(text) -> bool`` is the judge that drops
    unusable rows: a harmful prompt the base model already refused (no compliant answer to reject)
    and a harmless prompt it refused (no helpful answer to choose). ``formats`` are assigned to
    pairs in turn (seeded), so training can cover more than one prompt template. ``policy_rows``
    ((kind, prompt) -> answer row of the model to be trained) makes the pairs on-policy (module
    docstring); a prompt it has no usable answer for keeps its off-policy pair."""
    for fmt in formats:
        if fmt not in FORMATS:
            raise UserError(f"unknown prompt format {fmt!r}; choose from {', '.join(FORMATS)}")
    pairs, stats = [], {"harmful": 0, "harmless": 0, "dropped_harmful_refused": 0,
                        "dropped_harmless_refused": 0, "dropped_empty": 0}
    if policy_rows is not None:
        stats.update(policy_chosen=0, policy_rejected=0)

    def usable(row):
        return row is not None and len(row["response"].strip().split()) >= 3

    for r in gen_rows:
        resp = r["response"].strip()
        fmt = formats[_stable_int("fmt", seed, r["prompt"]) % len(formats)]
        if len(resp.split()) < 3:
            stats["dropped_empty"] += 1
            continue
        refusal = pick_refusal(r["prompt"], seed)
        if r["kind"] == "harmful":
            if is_refusal(resp):
                stats["dropped_harmful_refused"] += 1
                continue
            pair = Pair(r["prompt"], "harmful", refusal, resp, True, bool(r["finished"]), fmt)
            good = is_refusal       # the side a harmful prompt's answer should be on
        elif r["kind"] == "harmless":
            if is_refusal(resp):
                stats["dropped_harmless_refused"] += 1
                continue
            pair = Pair(r["prompt"], "harmless", resp, refusal, bool(r["finished"]), True, fmt)
            good = lambda t: not is_refusal(t)  # noqa: E731
        else:
            raise UserError(f"generation row with unknown kind {r['kind']!r}")
        own = (policy_rows or {}).get((r["kind"], r["prompt"]))
        if usable(own):
            text, eos = own["response"].strip(), bool(own["finished"])
            if good(text):
                pair = dataclasses.replace(pair, chosen=text, chosen_eos=eos)
                stats["policy_chosen"] += 1
            else:
                pair = dataclasses.replace(pair, rejected=text, rejected_eos=eos)
                stats["policy_rejected"] += 1
        pairs.append(pair)
        stats[r["kind"]] += 1
    rng = random.Random(seed)
    rng.shuffle(pairs)
    return pairs, stats


def write_pairs(pairs: list[Pair], path) -> None:
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for p in pairs:
            f.write(json.dumps(dataclasses.asdict(p)) + "\n")


def read_pairs(path) -> list[Pair]:
    path = pathlib.Path(path)
    if not path.exists():
        raise UserError(f"pairs file not found: {path} (make it with `pmpc align data`)")
    try:
        pairs = [Pair(**r) for r in jsonl.read(path)]
    except TypeError as e:
        raise UserError(f"{path}: not a pairs file ({e})") from None
    if not pairs:
        raise UserError(f"{path}: no pairs")
    return pairs


def file_sha256(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
