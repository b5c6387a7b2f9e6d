"""Derive the labelled judge-validation set (eval/data/judge/labels.jsonl) from committed files.

    python bench/labelset.py pool      # candidate pool from every committed generation file -> pool.jsonl
    python bench/labelset.py todo [N] [--model M]  # the next N unread pool records (M's first)
    python bench/labelset.py build     # pool + readings.txt -> labels.jsonl (with the dev/test split)
    python bench/labelset.py report [--no-gcg]  # label counts per stratum and split; the GCG rule per label

The pool: every (prompt, output) pair found in results/*/**/generations*.jsonl and in the committed
re-measured grid (results/remeasure/grid.jsonl: its outputs were regenerated, not kept as generation
files), deduplicated by (prompt text, output text), then sampled per stratum (model x condition
family x prompt kind) with a fixed seed. The labels are not derived: they are readings, one line per record in
eval/data/judge/readings.txt (see LABELING.md for the rules and the line format).
"""
from __future__ import annotations

import collections
import json
import pathlib
import random
import re
import sys

from eval import labelset
from eval.prompts import kind_of

ROOT = pathlib.Path(__file__).resolve().parents[1]
DIR = ROOT / "eval" / "data" / "judge"
POOL, READINGS = DIR / "pool.jsonl", DIR / "readings.txt"
SEED, TARGET = 0, 2000
# committed verdict files whose per-prompt outputs are candidates too (cell = 'MODEL CONDITION[ (note)]')
VERDICT_FILES = ("results/remeasure/grid.jsonl",)
# sources added by later labelling rounds (round 2, round 3): a pair they share with an earlier
# round's source stays that source's record (so no record read in an earlier round changes its
# condition, id or split)
LATER_SOURCES = (("results/cpu-label-gen2/", "results/remeasure/"), ("results/cpu-label-gen3/",))
# a model folder may name the sampling it was generated with: <alias>-t<temperature>-s<seed>
SAMPLED = re.compile(r"t[0-9.]+-s[0-9]+")

# the family a duplicate is kept under, first wins: the rarer conditions first
KEEP_ORDER = ("secure", "protocol", "table2", "noise", "clean")
MODELS = ("smollm2", "smollm2-safe", "smollm2-safe-r11", "smollm2-quada", "smollm2-quada-r11")


def condition_of(path: pathlib.Path) -> str:
    """generations[-TAG].jsonl -> clean | secure:P | protocol:P@points | the approximation spec."""
    tag = path.stem.removeprefix("generations").lstrip("-")
    if not tag:
        return "clean"
    if m := re.fullmatch(r"secure-(\w+)", tag):
        return f"secure:{m[1]}"
    if m := re.fullmatch(r"protocol_([a-z0-9]+)_(.+)", tag):
        return f"protocol:{m[1]}@{m[2].replace('_', ',')}"
    if m := re.fullmatch(r"(gauss|laplace)_([0-9.]+)_(\w+?)(?:-[0-9a-f]{6})?", tag):
        return f"{m[1]}:{float(m[2]):g}@{m[3]}"
    if m := re.fullmatch(r"table2_(\w+?)(?:-[0-9a-f]{6})?", tag):
        return f"table2:{m[1]}"
    raise ValueError(f"{path}: cannot read the condition from {tag!r}")


def model_of(path: pathlib.Path) -> str:
    """The model is named by the first folder that starts with an alias (longest alias first)."""
    for part in reversed(path.relative_to(ROOT).parts[:-1]):
        for m in sorted(MODELS, key=len, reverse=True):
            tail = part[len(m) + 1:] if part.startswith(m + "-") else None
            if part == m or tail in ("bolt", "bumblebee") or tail is not None and SAMPLED.fullmatch(tail):
                return m
    if path.parent == ROOT / "results" / "cpu-secure-asr":    # its top level is smollm2-safe (README)
        return "smollm2-safe"
    raise ValueError(f"{path}: no model alias in its folders")


def prompt_set_of(path: pathlib.Path) -> str:
    """The generation file's folder where it is a set name (cpu-label-gen), else harmful-test
    (cpu-secure-asr scores harmful_prompts/test, as its README says)."""
    return path.parent.name if kind_of(path.parent.name) != "unknown" else "harmful-test"


def candidates() -> list[dict]:
    out = []
    for path in sorted((ROOT / "results").glob("**/generations*.jsonl")):
        model, cond = model_of(path), condition_of(path)
        for line, text in enumerate(path.read_text(encoding="utf-8").splitlines()):
            r = json.loads(text)
            pset = prompt_set_of(path)
            kind = {"harmful": "harmful", "benign": "safe"}[kind_of(pset)]
            out.append({
                "id": labelset.record_id(model, cond, pset, str(r["id"]), r["output"]),
                "source": f"{path.relative_to(ROOT)}:{line}", "model": model, "condition": cond,
                "prompt_set": pset, "prompt_id": str(r["id"]), "prompt_sha256": labelset.sha256(r["prompt"]),
                "prompt": r["prompt"], "kind": kind, "output": r["output"],
            })
    for name in VERDICT_FILES:
        path = ROOT / name
        for line, text in enumerate(path.read_text(encoding="utf-8").splitlines()):
            r = json.loads(text)
            model, cond = r["cell"].split(" (")[0].split()
            pset, pid = r["prompt_id"].split(":", 1)
            out.append({
                "id": labelset.record_id(model, cond, pset, pid, r["output"]), "source": f"{name}:{line}",
                "model": model, "condition": cond, "prompt_set": pset, "prompt_id": pid,
                "prompt_sha256": labelset.sha256(r["prompt"]), "prompt": r["prompt"],
                "kind": {"harmful": "harmful", "benign": "safe"}[kind_of(pset)], "output": r["output"],
            })
    return out


def source_round(source: str) -> int:
    """1 for a first-round source, else the later round whose folders hold it."""
    return next((k for k, dirs in enumerate(LATER_SOURCES, 2) if source.startswith(dirs)), 1)


def stratum(r: dict) -> tuple:
    return r["model"], labelset.family(r["condition"]), r["kind"]


def pool() -> list[dict]:
    """Dedup by (prompt, output), keeping the earliest round's source's record, then the rarest
    condition family; shuffle each stratum with
    its own seeded generator; then deal round-robin over the strata (rank 0 of every stratum,
    rank 1, ...). The labelled set is the first TARGET records of this order that were read."""
    cands = sorted(candidates(), key=lambda r: (source_round(r["source"]),
                                               KEEP_ORDER.index(labelset.family(r["condition"])),
                                               MODELS.index(r["model"]), r["source"]))
    seen, by = set(), collections.defaultdict(list)
    for r in cands:
        if (key := (r["prompt_sha256"], r["output"])) not in seen:
            seen.add(key)
            by[stratum(r)].append(r)
    for k in by:
        by[k].sort(key=lambda r: r["id"])
        random.Random(f"{SEED}|{'|'.join(k)}").shuffle(by[k])
    deal = [(rank, k) for k in sorted(by) for rank in range(len(by[k]))]
    return [by[k][rank] for rank, k in sorted(deal)]


ROUND = re.compile(r"#\s*round\s+(\d+)\b")


def read_readings() -> dict:
    """readings.txt: 'ID CODE[+][?] [# note]'; CODE R|C|RC|P|N; '+' harmful uplift; '?' unsure.
    A line '# round N' starts the N-th labelling round (before the first such line: round 1)."""
    codes = {"R": "refusal", "C": "compliance", "RC": "refuse_then_comply", "P": "partial_offtopic", "N": "nonsense"}
    out, rnd = {}, 1
    for i, line in enumerate(READINGS.read_text(encoding="utf-8").splitlines(), 1):
        if m := ROUND.match(line):
            rnd = int(m[1])
            continue
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        rid, code = line.split()
        m = re.fullmatch(r"(RC|R|C|P|N)(\+?)(\??)", code)
        if not m:
            raise ValueError(f"{READINGS}:{i}: bad code {code!r}")
        out[rid] = {"label": codes[m[1]], "harmful": bool(m[2]), "unsure": bool(m[3]), "round": rnd}
    return out


def split(recs: list[dict], rounds: dict | None = None) -> dict:
    """prompt sha -> dev | test, round by round (``rounds``: record id -> labelling round; all 1 if
    None). In each round the prompts first read in it are visited in a seeded order, each with its
    records of that round; a prompt goes to the part where those records' (label, condition family,
    kind) cells are scarcer (sum of the part's current counts in those cells; ties: the smaller
    part, then dev). A prompt keeps the part it got in its first round: a later round's outputs of
    it follow it and only add to the counts. So a new round leaves every earlier assignment as it
    was (the test part only grows) and balances the new prompts against the whole set."""
    rounds = rounds or {}
    rnd = lambda r: rounds.get(r["id"], 1)   # noqa: E731
    count = {s: collections.Counter() for s in labelset.SPLITS}
    size = collections.Counter()
    out = {}
    for k in sorted({rnd(r) for r in recs}):
        groups = collections.defaultdict(list)
        for r in recs:
            if rnd(r) == k:
                groups[r["prompt_sha256"]].append(r)
        order = sorted(groups)
        random.Random(SEED if k == 1 else f"{SEED}|round {k}").shuffle(order)
        for sha in order:
            cells = [(r["label"], labelset.family(r["condition"]), r["kind"]) for r in groups[sha]]
            part = out.get(sha) or min(labelset.SPLITS, key=lambda s: (sum(count[s][c] for c in cells), size[s], s))
            out[sha] = part
            count[part].update(cells)
            size[part] += len(cells)
    return out


def build() -> list[dict]:
    """The first TARGET pool records that have a reading. A reading is matched by its record's
    (prompt, output), so it survives a change of the condition a duplicate is kept under."""
    by_id = {r["id"]: (r["prompt_sha256"], r["output"]) for r in candidates()}
    readings = {by_id[rid]: rd for rid, rd in read_readings().items()}
    recs, rounds = [], {}
    for r in map(json.loads, POOL.read_text(encoding="utf-8").splitlines()):
        if (rd := readings.get((r["prompt_sha256"], r["output"]))) is None:
            continue
        recs.append({**r, "label": rd["label"], "harmful": rd["harmful"] if r["kind"] == "harmful" else None,
                     "unsure": rd["unsure"]})
        rounds[r["id"]] = rd["round"]
        if len(recs) == TARGET:
            break
    parts = split(recs, rounds)
    for r in recs:
        r["split"] = parts[r["prompt_sha256"]]
        labelset.check(r, r["id"])
    return recs


def report(recs: list[dict], gcg: bool = True) -> str:
    from eval.judges import GCGJudge
    L = labelset.LABELS
    short = {"refusal": "R", "compliance": "C", "refuse_then_comply": "RC", "partial_offtopic": "P", "nonsense": "N"}
    lines = ["| model | condition | kind | n | " + " | ".join(short[x] for x in L) + " | harmful | unsure |",
             "|---|---|---|---|" + "---|" * (len(L) + 2)]
    by = collections.defaultdict(list)
    for r in recs:
        by[(r["model"], r["condition"], r["kind"])].append(r)
    for k in sorted(by, key=lambda k: (MODELS.index(k[0]), KEEP_ORDER[::-1].index(labelset.family(k[1])), k[1], k[2])):
        c = collections.Counter(r["label"] for r in by[k])
        h = sum(bool(r["harmful"]) for r in by[k])
        lines.append(f"| {k[0]} | {k[1]} | {k[2]} | {len(by[k])} | " + " | ".join(str(c[x]) for x in L)
                     + f" | {h if k[2] == 'harmful' else '-'} | {sum(r['unsure'] for r in by[k])} |")
    tot = collections.Counter(r["label"] for r in recs)
    lines.append(f"| all | | | {len(recs)} | " + " | ".join(str(tot[x]) for x in L)
                 + f" | {sum(bool(r['harmful']) for r in recs)} | {sum(r['unsure'] for r in recs)} |")
    sp = collections.Counter((r["split"], r["label"]) for r in recs)
    lines += ["", "| split | n | prompts | " + " | ".join(short[x] for x in L) + " |", "|---|---|---|" + "---|" * len(L)]
    for s in labelset.SPLITS:
        n = sum(r["split"] == s for r in recs)
        np_ = len({r["prompt_sha256"] for r in recs if r["split"] == s})
        lines.append(f"| {s} | {n} | {np_} | " + " | ".join(str(sp[(s, x)]) for x in L) + " |")
    if not gcg:
        return "\n".join(lines)
    judge = GCGJudge()
    v = judge.judge([r["prompt"] for r in recs], [r["output"] for r in recs])
    lines += ["", "| label | kind | n | GCG jailbroken | GCG refused |", "|---|---|---|---|---|"]
    for lab in L:
        for kind in labelset.KINDS:
            idx = [i for i, r in enumerate(recs) if r["label"] == lab and r["kind"] == kind]
            if idx:
                jb = sum(v[i].jailbroken for i in idx)
                lines.append(f"| {lab} | {kind} | {len(idx)} | {jb} | {len(idx) - jb} |")
    return "\n".join(lines)


def main(argv: list[str]) -> None:
    cmd = argv[0] if argv else "report"
    if cmd == "pool":
        recs = pool()
        POOL.parent.mkdir(parents=True, exist_ok=True)
        POOL.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in recs), encoding="utf-8")
        print(f"{len(recs)} candidates -> {POOL.relative_to(ROOT)}")
        for k, n in sorted(collections.Counter(map(stratum, recs)).items()):
            print(" ", *k, n)
    elif cmd == "todo":             # the next N pool records (within the first TARGET) without a reading
        by_id = {r["id"]: (r["prompt_sha256"], r["output"]) for r in candidates()}
        read = {by_id[rid] for rid in read_readings() if rid in by_id}
        recs = [json.loads(t) for t in POOL.read_text(encoding="utf-8").splitlines()][:TARGET]
        todo = [(i, r) for i, r in enumerate(recs) if (r["prompt_sha256"], r["output"]) not in read]
        if "--model" in argv:           # one model's records first (pool order kept within each group)
            first = argv[argv.index("--model") + 1]
            todo.sort(key=lambda t: t[1]["model"] != first)
        print(f"{len(todo)} of the first {len(recs)} unread")
        for i, r in todo[:int(argv[1]) if len(argv) > 1 and argv[1].isdigit() else 40]:
            print(f"## {i} {r['id']} {r['kind']} {r['model']} {r['condition']}\nP: {r['prompt'][:300]}\nO: {r['output']!r}\n")
    elif cmd == "build":
        recs = build()
        labelset.PATH.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in recs), encoding="utf-8")
        print(f"{len(recs)} labelled -> {labelset.PATH.relative_to(ROOT)}")
    elif cmd == "report":           # --no-gcg while labelling: the GCG rule's verdicts come after
        print(report(labelset.load(), gcg="--no-gcg" not in argv))
    else:
        sys.exit(f"unknown command {cmd!r}: pool | todo [N] | build | report")


if __name__ == "__main__":
    main(sys.argv[1:])
