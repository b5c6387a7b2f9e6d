"""Rounds per layer by function (client, decode) and the headline figures of `pmpc run --json`
files made by measure.sh: python results/fss/summarize.py results/fss/runs/*.json"""
from __future__ import annotations

import json
import pathlib
import sys


def main(paths):
    runs = {pathlib.Path(p).stem: json.loads(pathlib.Path(p).read_text()) for p in paths}
    scopes = list(dict.fromkeys(s for r in runs.values() for s in r["scopes"]["client"]["decode"]))
    names = list(runs)
    print("| decode rounds per layer per token | " + " | ".join(names) + " |")
    print("|---" * (1 + len(names)) + "|")
    for s in scopes:
        cells = []
        for r in runs.values():
            c = r["scopes"]["client"]["decode"].get(s)
            cells.append("—" if c is None else f"{c['rounds'] / r['decode_tokens'] / r['model']['n_layers']:.1f}")
        print(f"| {s} | " + " | ".join(cells) + " |")
    rows = [("decode rounds / token", lambda r: f"{r['decode_per_token']['rounds']:.0f}"),
            ("decode s / token", lambda r: f"{r['decode_per_token']['seconds']:.2f}"),
            ("decode MB / token (online)", lambda r: f"{r['decode_per_token']['bytes'] / 1e6:.1f}"),
            ("prefill s", lambda r: f"{r['prefill']['seconds']:.1f}"),
            ("prefill rounds", lambda r: f"{r['prefill']['rounds']:.0f}"),
            ("top-1 agreement", lambda r: f"{r['fidelity']['top1_agreement']:.3f}"),
            ("max abs logit diff", lambda r: f"{r['fidelity']['max_abs_logit_diff']:.4f}")]
    for name, f in rows:
        print(f"| **{name}** | " + " | ".join(f(r) for r in runs.values()) + " |")


if __name__ == "__main__":
    main(sys.argv[1:])
