"""MB per decoded token for SmolLM2's 30 layers from a 2-layer run's per-scope bytes (the lines
``<scope> <s>/tok <r> r/layer <MB> MB/tok`` that prof.py prints): per-layer scopes x 15, the norm
scope x 61/5, lm_head and reveal as they are. Checked on main: it gives the measured 86.9 MB."""
import re
import sys

LAYER = ("activation", "attention.softmax", "attention.matmul", "linear", "rope")

for path in sys.argv[1:]:
    mb = {}
    for line in open(path):
        m = re.match(r"\s+(\S+)\s+[\d.]+ s/tok [\d.]+ r/layer ([\d.]+) MB/tok", line)
        if m:
            mb[m.group(1)] = float(m.group(2))
    est = {k: mb[k] * 15 for k in LAYER}
    est["norm"] = mb["norm"] * 61 / 5
    est["lm_head"], est["reveal"] = mb["lm_head"], mb["reveal"]
    print(path, " ".join(f"{k}={v:.2f}" for k, v in est.items()), f"total={sum(est.values()):.1f}")
