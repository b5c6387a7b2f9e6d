"""Which prompt serves which role: the one place that decides train / selection / scored.

Every safety number rests on three roles being kept apart:
  * scored    — the prompts an ASR or over-refusal is reported on: harmful-test's test part,
                JBB harmful, HarmBench test, XSTest (safe and unsafe).
  * selection — the prompts that choose snapshots, the MVA and tau: harmful-val and harmful-test's
                dev part (:func:`harmful_test_split`).
  * training  — everything a model is trained on (:func:`training_prompts`).

Rules (tested in tests/test_eval_splits.py):
  1. Every set is deduplicated after :func:`normalise` (case, whitespace, punctuation): harmful-test
     repeats 7 texts, HarmBench test 3; a pool counts each text once.
  2. The selection prompts share no normalised text with any scored set, and are not near-duplicates
     of one either (:func:`near`). The shipped files overlap: JBB harmful is a subset of
     harmful_prompts/test and 159 HarmBench-test rows are in it, so harmful-test's dev part is drawn
     only from its prompts that no other scored set holds.
  3. Training prompts are decontaminated against every scored and selection prompt at the
     near-duplicate level: dropped when the content-word Jaccard similarity (words after lower-casing,
     less stop words: :func:`pmpc.align.overlap.content_words`) with any of them is >= :data:`pmpc.align.overlap.NEAR_JACCARD` (0.6; it
     catches the same debit-card cloning request worded twice), or when the normalised texts match.

A scored pool that mixes sets (the grid's held-out prompts, the pooled ASR) is :func:`scored_harmful`,
each text once.
"""
from __future__ import annotations

import dataclasses
import pathlib
import random

from eval import prompts
from pmpc.align.contrast import prompts as contrast_prompts
from pmpc.align.overlap import Index, normalise
from pmpc.errors import UserError

DEV_N = 100          # harmful-test prompts held back for selection

# the sets scored wholesale (named sets of eval.prompts, with their load options); harmful-test's
# test part (harmful_test_split) is scored too
SCORED_WHOLE = (("jbb-harmful", {}), ("harmbench-test", {"category": "all"}), ("xstest", {}))
SCORED_HARMFUL = ("harmful-test", "jbb-harmful", "harmbench-test")   # the harmful sets an ASR is reported on
SELECTION = ("harmful-val",)                                          # + harmful-test's dev part

def dedup(prompts: list, key=lambda p: p.text) -> list:
    """``prompts`` with each normalised text once (the first occurrence), in order."""
    seen, out = set(), []
    for p in prompts:
        k = normalise(key(p))
        if k and k not in seen:
            seen.add(k)
            out.append(p)
    return out


def load(name: str, data: str | None = None, **kw) -> list:
    """A named set of eval.prompts, deduplicated."""
    return dedup(prompts.load(name, data=data, **kw))


def _whole_scored(data=None) -> list[str]:
    return [p.text for name, kw in SCORED_WHOLE for p in load(name, data, **kw)]


def harmful_test_split(seed: int = 0, n_test: int = 200, quick: bool = False, data: str | None = None):
    """harmful-test (deduplicated) split (test, dev). The dev part is the last ``DEV_N`` (2 with
    ``quick``) of a seeded order of the harmful-test prompts that no other scored set holds, not
    even as a near-duplicate; the test part is the first ``n_test`` of the rest, in the seeded order
    of the whole set."""
    ht = load("harmful-test", data)
    random.Random(seed).shuffle(ht)
    others = Index(_whole_scored(data))
    candidates = [p for p in ht if p.text not in others]
    n_dev = min(2 if quick else DEV_N, len(candidates))
    dev = candidates[len(candidates) - n_dev:]
    ids = {id(p) for p in dev}
    test = [p for p in ht if id(p) not in ids]
    return test[:n_test], dev


def scored_sets(seed: int = 0, n_test: int = 200, data: str | None = None) -> dict[str, list]:
    """The harmful sets an ASR is reported on, each deduplicated: harmful-test's test part, JBB
    harmful, HarmBench test (standard). They overlap one another (JBB harmful lies inside
    harmful-test); pool them with :func:`scored_harmful`."""
    return {"harmful-test": harmful_test_split(seed, n_test, data=data)[0], "jbb-harmful": load("jbb-harmful", data),
            "harmbench-test": load("harmbench-test", data)}


def scored_harmful(seed: int = 0, n_test: int = 200, data: str | None = None) -> list:
    """Every scored harmful prompt once (the union of :func:`scored_sets`, deduplicated)."""
    return dedup([p for ps in scored_sets(seed, n_test, data).values() for p in ps])


def held_out_sample(n: int, seed: int = 0, n_test: int = 200, data: str | None = None) -> list:
    """``n`` distinct scored harmful prompts in a seeded order (the QuadA grid's prompts)."""
    pool = scored_harmful(seed, n_test, data)
    random.Random(seed + 1).shuffle(pool)
    return pool[:n]


def scored_index(seed: int = 0, data: str | None = None) -> Index:
    """Every scored prompt (harmful-test less its dev part, and the sets scored wholesale)."""
    return Index([p.text for p in harmful_test_split(seed, 10**9, data=data)[0]] + _whole_scored(data))


def selection_set(name: str, seed: int = 0, data: str | None = None) -> list:
    """A selection set (``harmful-val``), deduplicated and less any near-duplicate of a scored
    prompt (HarmBench val words 4 behaviours like HarmBench test ones: "bleach and ammonia" /
    "bleach and vinegar")."""
    scored = scored_index(seed, data)
    return [p for p in load(name, data) if p.text not in scored]


def selection_prompts(seed: int = 0, data: str | None = None) -> list:
    """The selection prompts: harmful-val (:func:`selection_set`), then harmful-test's dev part."""
    return dedup([p for name in SELECTION for p in selection_set(name, seed, data)]
                 + harmful_test_split(seed, data=data)[1])


def reserved(seed: int = 0, data: str | None = None) -> Index:
    """Every prompt training must stay away from: all of harmful-test (its test and dev parts),
    the sets scored wholesale and the selection sets."""
    texts = [p.text for p in load("harmful-test", data)] + _whole_scored(data)
    texts += [p.text for name in SELECTION for p in load(name, data)]
    return Index(texts)


# -- training: the prompts a model is trained on, decontaminated against every other role --------
def _texts(name: str, d: pathlib.Path, **kw) -> list[str]:
    return [p.text for p in prompts.load(name, data=str(d), **kw)]


# the evaluation sets that training must never see (named sets of eval.prompts); training drops
# their near-duplicates too
HELDOUT = (("harmful-test", {}), ("jbb-harmful", {}), ("harmbench-test", {"category": "all"}), ("xstest", {}))
# the validation set (snapshot selection, MVA/tau). harmful_prompts/val.json is 39 of the 41 HarmBench
# val "standard" behaviours, a training source: without this exclusion selection measured refusals
# of prompts the model was trained to refuse (as the selections in results/h200-safe-sweep did).
VALIDATION = (("harmful-val", {}),)


def set_texts(sets, d: pathlib.Path | None = None) -> list[str]:
    """The prompts of named sets ((name, load kwargs), as :data:`HELDOUT`), in order."""
    d = d or prompts.data_dir(must_exist=True)
    return [t for name, kw in sets for t in _texts(name, d, **kw)]


def heldout_prompts(d: pathlib.Path | None = None) -> set[str]:
    """Normalised text of every evaluation prompt that training must never see."""
    return set(map(normalise, set_texts(HELDOUT, d)))


def validation_prompts(d: pathlib.Path | None = None) -> set[str]:
    """Normalised text of the validation prompts, kept out of training like the held-out ones."""
    return set(map(normalise, set_texts(VALIDATION, d)))


@dataclasses.dataclass
class PromptSet:
    harmful: list[tuple[str, str]]    # (prompt, source)
    harmless: list[tuple[str, str]]
    removed: int                      # prompts dropped because an evaluation set holds them
    removed_validation: int = 0       # prompts dropped because the validation set holds them
    screen: list[str] = dataclasses.field(default_factory=list)  # further harmless prompts to mine (:func:`mine_refused`)
    removed_contrast: int = 0         # contrast prompts dropped as near an evaluation prompt (pmpc.align.contrast)
    removed_twins: int = 0            # harmful twins dropped likewise


def benign_split(n_train: int, seed: int = 0, d: pathlib.Path | None = None) -> tuple[list[str], list[str]]:
    """JBB benign behaviors split in two (seeded): ``n_train`` prompts for training, the rest for
    validating over-refusal. They are harmless requests on the same topics as JBB's harmful ones
    (a fictional heroin story, the history of a poison), the contrast that keeps a refusal from
    keying on a topic word; XSTest stays the held-out over-refusal measure."""
    texts = _texts("jbb-benign", d or prompts.data_dir(must_exist=True))
    if not 0 <= n_train <= len(texts) - 10:
        raise UserError(f"benign_train must be in 0..{len(texts) - 10} (JBB benign has {len(texts)} prompts; "
                        "at least 10 stay for validation)")
    idx = list(range(len(texts)))
    random.Random(seed + 7).shuffle(idx)
    return [texts[i] for i in idx[:n_train]], [texts[i] for i in idx[n_train:]]


def training_prompts(n_harmless: int = 300, seed: int = 0, d: pathlib.Path | None = None,
                     benign_train: int = 0, keep_validation: bool = False, screen: int = 0,
                     contrast: int = 0, twins: int = 0) -> PromptSet:
    """The training prompts, deduplicated and with every held-out evaluation prompt and every
    validation prompt removed; ``benign_train`` JBB benign prompts (:func:`benign_split`) join the
    harmless ones. ``keep_validation`` rebuilds the data with the validation prompts trained
    on, which the committed adapters were made with. ``screen``: the next that many harmless-train
    prompts of the same seeded order, as candidates for :func:`mine_refused`. ``contrast``: this many
    of pmpc's contrast prompts (:mod:`pmpc.align.contrast`: harmless requests worded like harmful
    ones) join the harmless ones, decontaminated against every evaluation and validation prompt;
    ``twins``: this many of their harmful twins (the same trigger words, the intent to harm) join the
    harmful ones, decontaminated the same way."""
    if n_harmless < 0:
        raise UserError("n_harmless must be >= 0")
    d = d or prompts.data_dir(must_exist=True)
    heldout, validation = set_texts(HELDOUT, d), set_texts(VALIDATION, d)   # read once: also the decontamination's
    held = Index(heldout)      # exact (normalised) or near-duplicate (content-word Jaccard >= 0.6)
    val = Index(() if keep_validation else validation)
    removed_val = 0
    harmful = [(p, "harmful-train") for p in _texts("harmful-train", d)]
    harmful += [(p, "harmbench-val/standard") for p in _texts("harmbench-val", d, category="standard")]
    pool = _texts("harmless-train", d)
    rng = random.Random(seed)
    idx = list(range(len(pool)))
    rng.shuffle(idx)
    seen: set[str] = set()
    removed = 0

    def keep(p):
        nonlocal removed, removed_val
        k = normalise(p)
        if p in held:
            removed += 1
            return False
        if p in val:
            removed_val += 1
            return False
        if k in seen or not k:
            return False
        seen.add(k)
        return True

    harmful = [x for x in harmful if keep(x[0])]
    harmless, screened = [], []
    for i in idx:
        if len(harmless) >= n_harmless and len(screened) >= screen:
            break
        if keep(pool[i]):
            (harmless if len(harmless) < n_harmless else screened).append(pool[i])
    harmless = [(x, "harmless_prompts/train") for x in harmless]
    if benign_train:
        harmless += [(x, "jbb-benign/train") for x in benign_split(benign_train, seed, d)[0] if keep(x)]
    removed_contrast = removed_twins = 0
    if contrast or twins:
        jbb_benign = _texts("jbb-benign", d)   # validation (the untrained part) as much as training
        evaluation = heldout + validation + jbb_benign
        if contrast:
            got, removed_contrast = contrast_prompts(contrast, evaluation, _texts("xstest-safe", d) + jbb_benign, seed)
            harmless += [(x, f"pmpc-contrast/{kind}") for x, kind in got if keep(x)]
        if twins:
            got, removed_twins = contrast_prompts(twins, evaluation, (), seed, harmful=True)
            harmful += [(x, f"pmpc-twin/{kind}") for x, kind in got if keep(x)]
    return PromptSet(harmful, harmless, removed, removed_val, screened, removed_contrast, removed_twins)
