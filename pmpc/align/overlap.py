"""Prompt identity for decontamination: the same text, or a near-duplicate of it.

Two prompts are the same after :func:`normalise` (case, whitespace, punctuation), and near-duplicates
when the Jaccard similarity of their content words (lower case, stop words removed:
:func:`content_words`) is >= :data:`NEAR_JACCARD` (0.6: it catches the same debit-card cloning request
worded twice). :class:`Index` answers both questions for a set of prompts. Training data is checked
against every evaluation prompt with it (:mod:`eval.splits` says which prompt serves which role).
"""
from __future__ import annotations

import re

NEAR_JACCARD = 0.6

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
