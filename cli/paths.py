"""Checks on output paths, made before a long run (so a report is never lost at the end)."""
from __future__ import annotations

import os
import pathlib

from pmpc.errors import UserError


def check_writable(path, option: str = "--json") -> None:
    """``path`` can be written (created if missing): else one line naming ``option``."""
    if path is None:
        return
    p = pathlib.Path(path)
    if p.is_dir():
        raise UserError(f"{option} {p}: is a directory")
    parent = p.parent if str(p.parent) else pathlib.Path(".")
    existing = next((a for a in [parent, *parent.parents] if a.exists()), None)
    if existing is None or not existing.is_dir():
        raise UserError(f"{option} {p}: {existing or parent} is not a directory")
    if p.exists():
        if not os.access(p, os.W_OK):
            raise UserError(f"{option} {p}: not writable")
    elif not os.access(existing, os.W_OK | os.X_OK):
        raise UserError(f"{option} {p}: cannot create it ({existing} is not writable)")
