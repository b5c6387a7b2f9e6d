"""Which prompt serves which role: the one place that decides train / selection / scored.

Every safety number rests on three roles being kept apart:
  * scored    — the prompts an ASR or over-refusal is reported on: harmful-test's test part,
                JBB harmful, HarmBench test, XSTest (safe and unsafe).
  * selection — the prompts that choose snapshots, the MVA and tau: harmful-val and harmful-test's
                dev part (:func:`harmful_test_split`).
  * training  — everything a model is trained on (pmpc.align.data.training_prompts).

Rules (tested in tests/test_eval_splits.py):
  1. Every set is deduplicated after :func:`normalise` (case, whitespace, punctuation): harmful-test
     repeats 7 texts, HarmBench test 3; a pool counts each text once.
  2. The selection prompts share no normalised text with any scored set, and are not near-duplicates
     of one either (:func:`near`). The shipped files overlap: JBB harmful is a subset of
     harmful_prompts/test and 159 HarmBench-test rows are in it, so harmful-test's dev part is drawn
     only from its prompts that no other scored set holds.
  3. Training prompts are decontaminated against every scored and selection prompt at the
     near-duplicate level: dropped when the content-word Jaccard similarity (words after lower-casing,
     less stop words: :func:`content_words`) with any of them is >= :data:`NEAR_JACCARD` (0.6; it
     catches the same debit-card cloning request worded twice), or when the normalised texts match.

A scored pool that mixes sets (the grid's held-out prompts, the pooled ASR) is :func:`scored_harmful`,
each text once.
"""
from __future__ import annotations

import random
import re

NEAR_JACCARD = 0.6
DEV_N = 100          # harmful-test prompts held back for selection

# the sets scored wholesale (named sets of eval.prompts, with their load options); harmful-test's
# test part (harmful_test_split) is scored too
SCORED_WHOLE = (("jbb-harmful", {}), ("harmbench-test", {"category": "all"}), ("xstest", {}))
SCORED_HARMFUL = ("harmful-test", "jbb-harmful", "harmbench-test")   # the harmful sets an ASR is reported on
SELECTION = ("harmful-val",)                                          # + harmful-test's dev part

_punct = re.compile(r"[^\w\s]")
_ws = re.compile(r"\s+")
_word = re.compile(r"[a-z0-9']+")
_STOP = frozenset("a an the of to in on for and or with my i me do does how what is are can be it this that "
                  "which why who where when should would from at as by your you someone what's best way good ways mean means "
                  "term happen happened did during".split())


def normalise(s: str) -> str:
    """Lower case, punctuation to spaces, one space: 'Write a poem!' == 'write a  poem'."""
    return _ws.sub(" ", _punct.sub(" ", s.lower())).strip()


def content_words(s: str) -> frozenset[str]:
    """The words of ``s`` that carry its content (lower case, stop words removed)."""
    return frozenset(w for w in _word.findall(s.lower()) if w not in _STOP)


def jaccard(a: frozenset, b: frozenset) -> float:
    return len(a & b) / len(a | b) if a or b else 0.0


class Index:
    """Normalised texts and content-word sets of some prompts, for exact and near-duplicate checks."""

    def __init__(self, texts=(), threshold: float = NEAR_JACCARD):
        self.threshold = threshold
        self.exact: set[str] = set()
        self.words: list[frozenset] = []
        self._by_word: dict[str, list[int]] = {}
        for t in texts:
            self.add(t)

    def add(self, text: str) -> None:
        self.exact.add(normalise(text))
        w = content_words(text)
        if w:
            for x in w:
                self._by_word.setdefault(x, []).append(len(self.words))
            self.words.append(w)

    def near(self, text: str) -> bool:
        """Same normalised text as an indexed prompt, or content-word Jaccard >= the threshold."""
        if normalise(text) in self.exact:
            return True
        w = content_words(text)
        cand = {i for x in w for i in self._by_word.get(x, ())}   # Jaccard > 0 needs a shared word
        return any(jaccard(w, self.words[i]) >= self.threshold for i in cand)

    def __contains__(self, text: str) -> bool:
        return self.near(text)


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
    from eval.prompts import load as _load

    return dedup(_load(name, data=data, **kw))


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
