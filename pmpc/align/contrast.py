"""Contrast prompts written for pmpc: harmless requests worded like harmful ones.

A model safety-tuned on a few hundred harmful prompts learns to refuse on topic words ("kill",
"poison", "steal", "bomb") instead of on intent. The harmless-train set rarely uses those words, so
it cannot teach the difference; these prompts do. Each is a benign request that shares a trigger
word or theme with a harmful one, in one of eight kinds:

  homonym     the word in its ordinary technical or everyday sense ("kill a stuck process")
  figurative  an idiom ("nail the interview")
  game        a violent word inside a game, sport or kitchen ("capture the queen", "fillet a trout")
  fiction     a dark theme as literature, the harm not spelled out (a detective's deduction)
  definition  what a crime or attack is, and how it is detected or prevented
  history     why an atrocity or disaster happened, what it led to
  safety      protecting oneself or others from a harm
  public      public facts about public institutions and historical figures

They are built from templates and word lists written for pmpc (not taken from any dataset; kept as
data, one list per round, in contrast_templates.json beside this module), crossed, deduplicated and
ordered by a seeded shuffle. Training must not see the held-out over-refusal set
(XSTest) or the validation one (JBB benign): :func:`decontaminate` removes near-duplicates of any
evaluation prompt and paraphrases of a benign one, by content words; the count removed is reported
with the pairs. They share XSTest's categories by design (that is what contrast means), not its
prompts, so XSTest measures transfer from these to prompts written by others."""
from __future__ import annotations

import itertools
import json
import pathlib
import random
import re

from pmpc.align.overlap import content_words
from pmpc.errors import UserError

JACCARD = 0.5   # content-word Jaccard at or above which a contrast prompt is a near-duplicate of an evaluation prompt
CONTAIN = 0.5   # share of a benign evaluation prompt's content words at or above which it is a paraphrase
TWIN_JACCARD = 0.35   # stricter for the harmful twins: one near a harmful evaluation prompt shares its intent, not a word

TEMPLATES = pathlib.Path(__file__).with_name("contrast_templates.json")


def _load_rounds(path=TEMPLATES) -> dict:
    """harmful -> the rounds' template lists, oldest first, each template (kind, template,
    {slot: fillers}): the benign rounds under ``False``, their harmful twins under ``True``."""
    data = json.loads(pathlib.Path(path).read_text(encoding="utf-8"))
    return {harmful: tuple([(t["kind"], t["template"], t["fill"]) for t in r["templates"]] for r in data[side])
            for harmful, side in ((False, "benign"), (True, "harmful"))}


ROUNDS = _load_rounds()   # loaded once, at import
KINDS = tuple(dict.fromkeys(k for t in ROUNDS[False] for k, _, _ in t))


def _expand(templates, seen: set) -> list[tuple[str, str]]:
    out = []
    for kind, tmpl, slots in templates:
        names = list(slots)
        for combo in itertools.product(*(slots[n] for n in names)):
            p = tmpl.format(**dict(zip(names, combo)))
            if p not in seen:
                seen.add(p)
                out.append((p, kind))
    return out


def rounds(harmful: bool = False) -> list[list[tuple[str, str]]]:
    """Every (prompt, kind) the templates make (the harmful twins' with ``harmful``), a list per
    round, in template order, without duplicates (a prompt belongs to the first round that makes it)."""
    seen: set[str] = set()
    return [_expand(t, seen) for t in ROUNDS[harmful]]


def all_prompts(harmful: bool = False) -> list[tuple[str, str]]:
    """Every (prompt, kind) of every round, in order."""
    return [x for r in rounds(harmful) for x in r]


def decontaminate(prompts: list[tuple[str, str]], evaluation: list[str], benign: list[str] = (),
                  jaccard: float = JACCARD, contain: float = CONTAIN) -> tuple[list[tuple[str, str]], int]:
    """``prompts`` less (a) near-duplicates of any ``evaluation`` prompt (content-word Jaccard >=
    ``jaccard``) and (b) paraphrases of a ``benign`` evaluation prompt, the over-refusal measures:
    those holding at least ``contain`` of its content words ("What is money laundering?" removes
    "What is money laundering, and how do banks detect it?"). Rule (b) is not applied to harmful
    evaluation prompts: "kill a stuck process" is the contrast to "How do I kill someone?", not a
    copy of it. Returns (kept, removed)."""
    near = [w for w in map(content_words, evaluation) if w]
    para = [w for w in map(content_words, benign) if w]
    kept = []
    for p, k in prompts:
        w = content_words(p)
        if any(len(w & e) / len(w | e) >= jaccard for e in near) or any(len(w & e) / len(e) >= contain for e in para):
            continue
        kept.append((p, k))
    return kept, len(prompts) - len(kept)


def prompts(n: int, evaluation: list[str], benign: list[str] = (), seed: int = 0,
            harmful: bool = False) -> tuple[list[tuple[str, str]], int]:
    """``n`` contrast prompts (the harmful twins with ``harmful``), decontaminated
    (:func:`decontaminate`) against ``evaluation`` (every held-out and validation prompt) and
    ``benign`` (their harmless ones: XSTest safe, JBB benign), in a seeded order: each round
    shuffled apart, the rounds oldest first. Returns ([(prompt, kind)], removed)."""
    rs = rounds(harmful)
    ok, removed = decontaminate([x for r in rs for x in r], evaluation, benign, TWIN_JACCARD if harmful else JACCARD)
    ok, kept = set(ok), []
    for k, r in enumerate(rs):
        got = [x for x in r if x in ok]
        random.Random(seed + (13 if harmful else 11) + 1000 * k).shuffle(got)   # k = 0: the first round's order
        kept += got
    if n > len(kept):
        raise UserError(f"{'twins' if harmful else 'contrast'}: {n} asked, {len(kept)} available")
    return kept[:n], removed
