"""Resumable JSONL files: one JSON record a line, appended as work finishes.

A run killed mid-write leaves a torn last line; every reader here drops it, and :func:`repair`
rewrites the file without it so that appended records start on a line of their own. A bad line
anywhere else is corruption, not a crash, and is refused with its line number.
"""
from __future__ import annotations

import json
import pathlib

from pmpc.errors import UserError


def read(path) -> list[dict]:
    """The records of ``path`` ([] if it does not exist), a torn last line dropped."""
    path = pathlib.Path(path)
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
            raise UserError(f"{path}:{n}: not a JSON record (corrupt file)") from None
    return out


def repair(path) -> list[dict]:
    """:func:`read`, and rewrite ``path`` with exactly those records when it held more lines (a
    torn tail): the next append starts on a fresh line."""
    path = pathlib.Path(path)
    rows = read(path)
    if path.exists() and len(rows) != sum(1 for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()):
        path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return rows
