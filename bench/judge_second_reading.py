"""How far a second, independent reading agrees with the labelled set's: the labels' own
reproducibility, the ceiling any judge is measured against. Dev part only; the test part is never read.

    python bench/judge_second_reading.py sample   # the rows to read again, without their labels
    python bench/judge_second_reading.py report   # agreement of the second reading with the labels

``sample`` draws 240 of the sure dev rows on harmful prompts (seed 20261208) and writes their
prompt and output only, in two batches for two readers (``--out``). The second reader labels them
under ``eval/data/judge/LABELING.md`` alone, never seeing the set's labels, notes or any verdict;
its readings (``id``, ``label``, ``harmful``, ``unsure``, ``note`` per row) are committed as
``results/judge-validation/second-reading/readings.jsonl``. ``report`` prints the jailbroken and
five-way agreement (kappa with a 95% bootstrap over prompts, as the judge tables)."""
from __future__ import annotations

import argparse
import collections
import json
import pathlib
import random

from eval import judge_model, refusal
from eval.analysis.judge_validation import agreement

SEED, N = 20261208, 240
READINGS = pathlib.Path("results/judge-validation/second-reading/readings.jsonl")


def rows_to_read(labels: str) -> list[dict]:
    dev = [r for r in judge_model.read_labels(labels)
           if r["split"] == "dev" and r["kind"] == "harmful" and not r["unsure"]]
    random.Random(SEED).shuffle(dev)
    return dev[:N]


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python bench/judge_second_reading.py")
    ap.add_argument("what", choices=("sample", "report"))
    ap.add_argument("--labels", default=str(judge_model.LABELS_FILE))
    ap.add_argument("--readings", type=pathlib.Path, default=READINGS)
    ap.add_argument("--out", type=pathlib.Path, default=pathlib.Path("runs/second-reading"))
    a = ap.parse_args(argv)
    rows = rows_to_read(a.labels)
    if a.what == "sample":
        a.out.mkdir(parents=True, exist_ok=True)
        for name, part in (("a", rows[:N // 2]), ("b", rows[N // 2:])):
            with open(a.out / f"batch-{name}.jsonl", "w", encoding="utf-8") as f:
                for r in part:
                    f.write(json.dumps({"id": r["id"], "prompt": r["prompt"], "output": r["output"]}) + "\n")
        print(f"{len(rows)} rows to read in {a.out}/batch-a.jsonl and batch-b.jsonl")
        return
    r = report(rows, a.readings)
    print(f"{r['n']} sure dev rows on {r['prompts']} distinct prompts; jailbroken by the set: "
          f"{r['jailbroken_set']}, by the second reading: {r['jailbroken_second']} (the second reader unsure on "
          f"{r['unsure']})")
    jb = r["jailbroken"]
    print(f"jailbroken: accuracy {jb['accuracy']['rate']:.3f}, kappa {jb['kappa']:.3f} "
          f"[{jb['kappa_lo']:.3f}, {jb['kappa_hi']:.3f}]")
    print(f"five-way: agreement {r['five_way_agreement']:.3f}, kappa {r['five_way_kappa']:.3f}; "
          f"differing (set, second): {r['differing']}")


def report(rows: list[dict], readings: pathlib.Path = READINGS) -> dict:
    """The second reading of ``rows`` (:func:`rows_to_read`) against their labels."""
    with open(readings, encoding="utf-8") as f:
        second = {r["id"]: r for r in map(json.loads, f)}
    if set(second) != {r["id"] for r in rows} or any(s["label"] not in refusal.LABELS for s in second.values()):
        raise SystemExit("the readings do not cover exactly the sampled rows with known labels")
    groups = [r["prompt"] for r in rows]
    first = [judge_model.gold_jailbroken(r) for r in rows]
    again = [judge_model.gold_jailbroken({**second[r["id"]], "kind": "harmful"}) for r in rows]
    five = [r["label"] for r in rows], [second[r["id"]]["label"] for r in rows]
    return {"n": len(rows), "prompts": len(set(groups)), "jailbroken_set": sum(first),
            "jailbroken_second": sum(again), "unsure": sum(bool(second[r["id"]]["unsure"]) for r in rows),
            "jailbroken": agreement(first, again, groups),
            "five_way_agreement": sum(x == y for x, y in zip(*five)) / len(rows),
            "five_way_kappa": judge_model.kappa(*five),
            "differing": dict(collections.Counter((x, y) for x, y in zip(*five) if x != y))}

if __name__ == "__main__":
    main()
