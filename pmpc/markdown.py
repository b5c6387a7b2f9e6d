"""Markdown tables: the one format every report here writes (a header row, a ``|---|`` rule, rows)."""
from __future__ import annotations


def table(header, rows) -> list[str]:
    """The lines of a table; cells are written with ``str``."""
    return (["| " + " | ".join(str(h) for h in header) + " |", "|---" * len(header) + "|"]
            + ["| " + " | ".join(str(c) for c in r) + " |" for r in rows])
