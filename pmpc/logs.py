"""Progress messages: library code logs them (stdlib ``logging``, loggers named after their module
under ``pmpc`` and ``eval``) and never prints; an entry point (the ``pmpc`` command, a
``python -m`` study) shows them with :func:`show`. Results are the entry point's to print."""
from __future__ import annotations

import logging
import sys

ROOTS = ("pmpc", "eval")


def show(level: int = logging.INFO, stream=None) -> None:
    """Write the library's messages at ``level`` and above to ``stream`` (stdout), one per line."""
    h = logging.StreamHandler(stream or sys.stdout)
    h.setFormatter(logging.Formatter("%(message)s"))
    for name in ROOTS:
        lg = logging.getLogger(name)
        lg.handlers[:] = [h]
        lg.setLevel(level)
        lg.propagate = False
