"""Paired comparison of grid rows (`pmpc align grid` OUT): for each column and pair of rows, the
prompts jailbroken under one row only, and the exact McNemar p (binomial on the discordant pairs).
Every cell of a grid scores the same prompts, so rows compare prompt by prompt.

    python bench/paired_asr.py GRID_OUT PAIRED.json
"""
import itertools
import json
import pathlib
import sys

from scipy.stats import binomtest

from eval.analysis.common import tag_of


def verdicts(out: pathlib.Path, row: str, col: str) -> dict:
    """prompt index -> jailbroken (GCG rule) of one grid cell, from its cached generations."""
    path = out / "eval" / row / "gen" / "grid" / f"{tag_of(None if col == 'clean' else col)}.jsonl"
    return {r["i"]: r["verdicts"]["gcg"]["jailbroken"] for r in map(json.loads, path.open())}


def main(out: str, dest: str) -> None:
    out = pathlib.Path(out)
    res = json.loads((out / "results.json").read_text())
    cells = res["grid"]["cells"]
    rows = list(dict.fromkeys(k.split("|")[1] for k in cells if k.startswith("asr|")))
    paired = {}
    for col in res["grid_columns"]:
        for b, a in itertools.combinations(rows, 2):      # later row first: (quada, dpo), ...
            if f"asr|{a}|{col}" not in cells or f"asr|{b}|{col}" not in cells:
                continue
            x, y = verdicts(out, a, col), verdicts(out, b, col)
            only_a = sum(x[i] and not y[i] for i in x)
            only_b = sum(y[i] and not x[i] for i in x)
            p = binomtest(only_a, only_a + only_b).pvalue if only_a + only_b else 1.0
            paired[f"{col}|{a} vs {b}"] = {"jailbroken_only_first": only_a, "jailbroken_only_second": only_b,
                                           "mcnemar_exact_p": round(p, 4)}
            print(f"{col:20s} {a:6s} vs {b:6s}: only {a} {only_a:2d}, only {b} {only_b:2d}, p={p:.3f}")
    pathlib.Path(dest).write_text(json.dumps(paired, indent=1))


if __name__ == "__main__":
    main(*sys.argv[1:3])
