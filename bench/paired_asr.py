"""Paired comparison of grid rows (`pmpc align grid` OUT): for each column and pair of rows, the
prompts jailbroken under one row only, and the exact McNemar p (binomial on the discordant pairs).
Every cell of a grid scores the same prompts, so rows compare prompt by prompt.

    python bench/paired_asr.py GRID_OUT PAIRED.json
"""
import glob
import json
import sys

from scipy.stats import binomtest
d = sys.argv[1]
def v(row, col):
    f = [x for x in glob.glob(f"{d}/eval/{row}/gen/grid/*.jsonl") if x.split("/")[-1].split("-")[0].replace(".jsonl","") == col]
    assert len(f) == 1, (row, col, f)
    return {r["i"]: r["verdicts"]["gcg"]["jailbroken"] for r in map(json.loads, open(f[0]))}
out = {}
for col in ("clean", "gauss_0.038_up", "table2_bolt", "table2_bumblebee", "table2_nexus"):
    for a, b in (("quada", "dpo"), ("quada", "safe"), ("dpo", "safe")):
        x, y = v(a, col), v(b, col)
        only_a = sum(x[i] and not y[i] for i in x); only_b = sum(y[i] and not x[i] for i in x)
        p = binomtest(only_a, only_a + only_b).pvalue if only_a + only_b else 1.0
        out[f"{col}|{a} vs {b}"] = {"jailbroken_only_first": only_a, "jailbroken_only_second": only_b, "mcnemar_exact_p": round(p, 4)}
        print(f"{col:18s} {a:5s} vs {b:4s}: only {a} {only_a:2d}, only {b} {only_b:2d}, p={p:.3f}")
json.dump(out, open(sys.argv[2], "w"), indent=1)
