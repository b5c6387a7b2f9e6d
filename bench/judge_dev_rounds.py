"""Dev-part agreement of each judge, by the labelling round that made the rows.

    python bench/judge_dev_rounds.py [--verdicts results/judge-validation/verdicts-dev.jsonl]

Reads the committed dev verdicts (``python -m eval.analysis.judge_validation --split dev``) and the
labelled set, and reports the same figures as that command for two groups of sure dev rows: the
first two rounds' (the rows the shipped minilm fit was trained on, so in-sample for it) and the
third round's (outputs that fit never saw: a held-out figure, though on dev prompts). The test part
is never read.
"""
from __future__ import annotations

import argparse
import json

from eval import judge_model
from eval.analysis.judge_validation import agreement

ROUND3 = "results/cpu-label-gen3/"


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python bench/judge_dev_rounds.py")
    ap.add_argument("--verdicts", default="results/judge-validation/verdicts-dev.jsonl")
    ap.add_argument("--labels", default=str(judge_model.LABELS_FILE))
    a = ap.parse_args(argv)
    labels = {r["id"]: r for r in judge_model.read_labels(a.labels)}
    with open(a.verdicts, encoding="utf-8") as f:
        vs = [json.loads(line) for line in f]
    if any(v["split"] != "dev" for v in (labels[x["id"]] for x in vs)):
        raise SystemExit("error: the verdicts hold rows outside the dev part")
    groups = {"all sure dev rows": lambda r: True,
              "rounds 1-2 (the shipped fit's training rows)": lambda r: not r["source"].startswith(ROUND3),
              "round 3 (never seen by the shipped fit)": lambda r: r["source"].startswith(ROUND3)}
    for part, keep in groups.items():
        rows = [v for v in vs if keep(labels[v["id"]])]
        harm = [v for v in rows if v["kind"] == "harmful"]
        safe = [v for v in rows if v["kind"] != "harmful"]
        jb = sum(bool(judge_model.gold_jailbroken(labels[v["id"]])) for v in harm)
        print(f"{part}: {len(rows)} rows, {len(harm)} harmful ({jb} jailbroken, "
              f"{len({v['prompt_sha256'] for v in harm})} prompts), {len(safe)} safe")
        for name in rows[0]["verdicts"] if rows else ():
            gold = [judge_model.gold_jailbroken(labels[v["id"]]) for v in harm]
            r = agreement(gold, [bool(v["verdicts"][name]["jailbroken"]) for v in harm],
                          [v["prompt_sha256"] for v in harm])
            fn, fp = r["false_negative"], r["false_positive"]
            line = (f"  {name:9s} jailbroken kappa {r['kappa']:.3f} [{r['kappa_lo']:.3f}, {r['kappa_hi']:.3f}], "
                    f"accuracy {r['accuracy']['k']}/{r['n']}, false-safe {fn['k']}/{fn['n']}, false-jailbroken {fp['k']}/{fp['n']}")
            if rows[0]["verdicts"][name].get("label") is not None:
                got = [v["verdicts"][name]["label"] for v in rows]
                gold5 = [labels[v["id"]]["label"] for v in rows]
                line += f"; five-way kappa {judge_model.kappa(gold5, got):.3f}"
            if safe:
                g = [judge_model.gold_refused(labels[v["id"]]) for v in safe]
                p = [bool(v["verdicts"][name]["refused"]) for v in safe]
                line += (f"; XSTest {sum(g)} refusals: missed {sum(x and not y for x, y in zip(g, p))}, "
                         f"false {sum(y and not x for x, y in zip(g, p))}")
            print(line)


if __name__ == "__main__":
    main()
