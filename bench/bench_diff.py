"""Do two `pmpc bench` runs cost the same? Compares rounds, bytes, per-scope rounds/bytes and the
primitive counts of every (model, protocol) row of two bench.json files; fidelity is not compared
(it moves with the OS-seeded shares). Exit 0 when equal, 1 when any row differs.

    python bench/bench_diff.py BEFORE/bench.json AFTER/bench.json
"""
from __future__ import annotations

import json
import sys


def rows(path: str) -> dict:
    return {(r["model"], r["protocol"]): {"rounds": r["rounds"], "bytes": r["bytes"], "primitives": r.get("primitives"),
                                          "scopes": {s: (c["rounds"], c["bytes"]) for s, c in r["scopes"].items()}}
            for r in json.load(open(path))["rows"]}


def main(a: str, b: str) -> int:
    x, y = rows(a), rows(b)
    bad = [k for k in sorted(set(x) | set(y)) if x.get(k) != y.get(k)]
    for k in bad:
        print(f"differs: {k[0]} / {k[1]}: {x.get(k)} vs {y.get(k)}")
    print(f"{len(x)} vs {len(y)} rows; {len(bad)} differ")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:3]))
