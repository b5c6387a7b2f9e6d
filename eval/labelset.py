"""The labelled judge-validation set: real outputs of pmpc's own runs, each labelled by a person.

``eval/data/judge/labels.jsonl`` holds one record per output; ``eval/data/judge/LABELING.md``
holds the rules it was labelled by, the split rule and the label counts. This module only reads
and checks the file; ``bench/labelset.py`` derives it (candidate pool, sample, split) from the
committed generation files and the readings.

A record: ``id`` (stable: a hash of model, condition, prompt set, prompt id and output),
``source`` (committed file and 0-based line, or the generating command), ``model``,
``condition`` (``clean``, an approximation spec such as ``gauss:0.038@up`` / ``table2:bolt`` /
``protocol:bolt@down``, or ``secure:<protocol>`` for real 2PC), ``prompt_set``, ``prompt_id``,
``prompt_sha256``, ``prompt``, ``kind`` (``harmful`` | ``safe``), ``output``, ``label`` (one of
``LABELS``), ``harmful`` (bool for harmful prompts, None for safe ones), ``unsure`` (bool),
``split`` (``dev`` | ``test``; the test part is for measuring judges only, never for fitting).
"""
from __future__ import annotations

import hashlib
import json
import pathlib

from pmpc.errors import UserError

PATH = pathlib.Path(__file__).resolve().parent / "data" / "judge" / "labels.jsonl"

LABELS = ("refusal", "compliance", "refuse_then_comply", "partial_offtopic", "nonsense")
KINDS = ("harmful", "safe")
SPLITS = ("dev", "test")
FIELDS = {
    "id": str, "source": str, "model": str, "condition": str, "prompt_set": str, "prompt_id": str,
    "prompt_sha256": str, "prompt": str, "kind": str, "output": str, "label": str,
    "harmful": (bool, type(None)), "unsure": bool, "split": str,
}


def sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def record_id(model: str, condition: str, prompt_set: str, prompt_id: str, output: str) -> str:
    """Stable id: the same output of the same model, condition and prompt always gets the same id."""
    return sha256("\x1f".join((model, condition, prompt_set, prompt_id, output)))[:16]


def family(condition: str) -> str:
    """The condition's family, for strata: clean | noise | table2 | protocol | secure."""
    if condition == "clean":
        return "clean"
    head = condition.split(":", 1)[0]
    return {"gauss": "noise", "laplace": "noise"}.get(head, head)


def check(rec: dict, where: str = "record") -> dict:
    """Raise UserError naming ``where`` unless ``rec`` follows the schema above."""
    for k, t in FIELDS.items():
        if k not in rec:
            raise UserError(f"{where}: missing field {k!r}")
        if not isinstance(rec[k], t):
            raise UserError(f"{where}: field {k!r} has type {type(rec[k]).__name__}")
    if extra := set(rec) - set(FIELDS):
        raise UserError(f"{where}: unknown fields {sorted(extra)}")
    if rec["label"] not in LABELS:
        raise UserError(f"{where}: label {rec['label']!r} not in {LABELS}")
    if rec["kind"] not in KINDS:
        raise UserError(f"{where}: kind {rec['kind']!r} not in {KINDS}")
    if rec["split"] not in SPLITS:
        raise UserError(f"{where}: split {rec['split']!r} not in {SPLITS}")
    if (rec["kind"] == "safe") != (rec["harmful"] is None):
        raise UserError(f"{where}: 'harmful' must be a bool for harmful prompts and null for safe ones")
    if rec["prompt_sha256"] != sha256(rec["prompt"]):
        raise UserError(f"{where}: prompt_sha256 does not match the prompt")
    if rec["id"] != record_id(rec["model"], rec["condition"], rec["prompt_set"], rec["prompt_id"], rec["output"]):
        raise UserError(f"{where}: id does not match its content")
    return rec


def load(path: str | pathlib.Path | None = None, split: str | None = None) -> list[dict]:
    """Read and check the labelled set; ``split`` keeps only ``dev`` or ``test``."""
    path = pathlib.Path(path or PATH)
    if split is not None and split not in SPLITS:
        raise UserError(f"split {split!r} not in {SPLITS}")
    if not path.exists():
        raise UserError(f"labelled set not found: {path}")
    out, seen = [], set()
    for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            raise UserError(f"{path}:{i}: not JSON ({e.msg})") from None
        check(rec, f"{path}:{i}")
        if rec["id"] in seen:
            raise UserError(f"{path}:{i}: duplicate id {rec['id']}")
        seen.add(rec["id"])
        out.append(rec)
    return [r for r in out if split is None or r["split"] == split]
