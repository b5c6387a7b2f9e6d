"""Headline figures of `pmpc run --json` files, one column per file (the client's counters):
python results/ttp-stream/summarize.py results/ttp-stream/runs/*.json"""
from __future__ import annotations

import json
import pathlib
import sys


def main(paths):
    runs = {pathlib.Path(p).stem: json.loads(pathlib.Path(p).read_text()) for p in paths}
    mb = lambda v: "—" if v is None else f"{v / 1e6:.1f}"  # noqa: E731
    rows = [("decode s / token", lambda r: f"{r['decode_per_token']['seconds']:.2f}"),
            ("decode rounds / token", lambda r: f"{r['decode_per_token']['rounds']:.0f}"),
            ("decode MB / token (between the computing parties)", lambda r: mb(r["decode_per_token"]["bytes"])),
            ("decode MB / token (dealt, beside the rounds)", lambda r: mb(r["decode_per_token"].get("dealer_bytes"))),
            ("prefill s", lambda r: f"{r['prefill']['seconds']:.1f}"),
            ("prefill rounds", lambda r: f"{r['prefill']['rounds']:.0f}"),
            ("prefill MB (dealt)", lambda r: mb(r["prefill"].get("dealer_bytes"))),
            ("peak RSS client / server MB", lambda r: f"{r['peak_rss_mb']['client']:.0f} / {r['peak_rss_mb']['server']:.0f}"),
            ("top-1 agreement", lambda r: f"{r['fidelity']['top1_agreement']:.3f}")]
    print("| | " + " | ".join(runs) + " |")
    print("|---" * (1 + len(runs)) + "|")
    for name, f in rows:
        print(f"| {name} | " + " | ".join(f(r) for r in runs.values()) + " |")


if __name__ == "__main__":
    main(sys.argv[1:])
