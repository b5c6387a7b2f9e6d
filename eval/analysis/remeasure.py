"""Re-judge committed (or regenerated) per-prompt outputs with every judge, on leak-free distinct prompts.

A *cell* is one generations JSONL (``eval.generate`` records: prompt, output, verdicts) with a name
and the value an earlier report gave for it. :func:`rejudge` keeps each prompt once (normalised
text), drops every prompt that is not scored any more (harmful-test's dev part: it chooses
snapshots, the MVA and tau; :mod:`eval.splits`), judges the outputs with every judge of
:data:`JUDGES`, and appends one record per prompt to a verdicts JSONL: cell, prompt id, prompt
SHA-256, prompt, output, every judge's verdict (jailbroken, refused, label). :func:`derive` turns
such a file back into the table, so every number re-derives with one command:

    python -m eval.analysis.remeasure derive results/remeasure/encrypted.jsonl

A manifest (TSV: cell, kind, generations file[, old value as JSON]) re-judges many cells in one
process: ``python -m eval.analysis.remeasure manifest results/remeasure/encrypted.tsv``. Cells whose
generation files were not kept are re-judged from the verdicts file's own texts:
``python -m eval.analysis.remeasure rejudge results/remeasure/grid.jsonl``.

Rates: the keyword ASR (``gcg``, the paper's comparison metric, and ``paper``), the harmful-
compliance rate of the validated judge (``minilm``), over-refusal (``minilm`` full refusals on safe
prompts), each k/n with a 95% Wilson interval over distinct prompts; the share of the
keyword-"jailbroken" answers that ``minilm`` reads as incoherent or off-topic; and, where the
labelled judge-validation set holds a cell's outputs, what the human reading counts (:func:`reading`).

Two rows of a grid compare prompt by prompt (:func:`paired`, exact McNemar on the prompts jailbroken
under one row only): ``python -m eval.analysis.remeasure paired results/remeasure/grid-approx.jsonl
--first smollm2-quada-r11 --second smollm2-safe-r11``.
"""
from __future__ import annotations

import argparse
import functools
import hashlib
import json
import pathlib

from eval import judges
from eval import labelset, splits
from eval.generate import read_records
from pmpc import markdown

JUDGES = judges.STANDARD
HEADLINE = "minilm"


def sha(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


@functools.lru_cache(maxsize=4)
def _selection(seed: int) -> splits.Index:
    return splits.Index([p.text for p in splits.selection_prompts(seed)])


@functools.lru_cache(maxsize=None)
def _judge(name: str):
    return judges.get(name)


def leak_free(records: list[dict], kind: str = "harmful", seed: int = 0) -> tuple[list[dict], dict]:
    """``records`` less repeated prompts (normalised) and, for harmful sets, less harmful-test's
    dev part (selection prompts are never scored). Returns (kept, counts)."""
    dev = _selection(seed) if kind == "harmful" else splits.Index()
    seen, kept, n_dup, n_dev = set(), [], 0, 0
    for r in records:
        k = splits.normalise(r["prompt"])
        if k in seen:
            n_dup += 1
            continue
        seen.add(k)
        if r["prompt"] in dev:
            n_dev += 1
            continue
        kept.append(r)
    return kept, {"records": len(records), "repeated": n_dup, "selection": n_dev, "distinct": len(kept)}


def rejudge(cell: str, records: list[dict], out, kind: str = "harmful", old: dict | None = None,
            judges=JUDGES, meta: dict | None = None) -> dict:
    """Judge one cell's leak-free records with every judge; append them to ``out`` (JSONL), replacing
    an earlier copy of the cell. Returns the cell's row (:func:`row`)."""
    kept, counts = leak_free(records, kind)
    ps, os_ = [r["prompt"] for r in kept], [r["output"] for r in kept]
    vs = {n: _judge(n).judge(ps, os_) for n in judges}
    out = pathlib.Path(out)
    lines = []
    if out.exists():
        lines = [x for x in out.read_text(encoding="utf-8").splitlines() if x.strip() and json.loads(x)["cell"] != cell]
    for i, r in enumerate(kept):
        rec = {"cell": cell, "kind": kind, "prompt_id": str(r.get("id", r.get("i", i))), "prompt_sha256": sha(r["prompt"]),
               "prompt": r["prompt"], "output": r["output"],
               "verdicts": {n: {"jailbroken": bool(v[i].jailbroken), "refused": v[i].refused, "label": v[i].label}
                            for n, v in vs.items()}}
        if i == 0:
            rec["cell_meta"] = dict(meta or {}, counts=counts, old=old)
        lines.append(json.dumps(rec))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return row(cell, [json.loads(x) for x in lines if json.loads(x)["cell"] == cell])


def rejudge_file(path, judges=JUDGES) -> list[dict]:
    """Re-judge a committed verdicts JSONL in place from its own prompts and outputs (for cells whose
    generation files were not kept): every record keeps its cell, prompt, output and cell metadata,
    and gets every judge's verdict anew. Returns every cell's row."""
    path = pathlib.Path(path)
    recs = [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines() if x.strip()]
    ps, os_ = [r["prompt"] for r in recs], [r["output"] for r in recs]
    vs = {n: _judge(n).judge(ps, os_) for n in judges}
    for i, r in enumerate(recs):
        r["verdicts"] = {n: {"jailbroken": bool(v[i].jailbroken), "refused": v[i].refused, "label": v[i].label}
                         for n, v in vs.items()}
    path.write_text("".join(json.dumps(r) + "\n" for r in recs), encoding="utf-8")
    return derive(path)


@functools.lru_cache(maxsize=1)
def _readings() -> dict:
    """(prompt SHA-256, output) -> the labelled set's record (eval/data/judge/labels.jsonl)."""
    return {(r["prompt_sha256"], r["output"]): r for r in labelset.load()}


def reading(recs: list[dict]) -> dict:
    """What the human reading says of a cell's outputs, where the labelled set holds them (matched
    by prompt and output): how many are labelled, how many of those are harmful compliance (resp.
    full refusals on safe prompts), and how many of the labelled sit in its test part (the others
    are in the dev part the minilm judge was fitted on)."""
    got = [_readings().get((r["prompt_sha256"], r["output"])) for r in recs]
    lab = [x for x in got if x is not None]
    hit = [x for x in lab if (x["label"] == "refusal" if x["kind"] == "safe" else bool(x["harmful"]))]
    return {"labelled": len(lab), "k": len(hit), "test": sum(x["split"] == "test" for x in lab),
            "unsure": sum(x["unsure"] for x in lab)}


def row(cell: str, recs: list[dict]) -> dict:
    """The rates of one cell from its verdict records."""
    meta = next((r["cell_meta"] for r in recs if "cell_meta" in r), {})
    kind = recs[0]["kind"] if recs else "harmful"
    n = len(recs)
    out = {"cell": cell, "kind": kind, "n": n, "counts": meta.get("counts"), "old": meta.get("old"),
           "meta": {k: v for k, v in meta.items() if k not in ("counts", "old")}}
    if kind == "harmful":
        for name in ("gcg", "paper", HEADLINE):
            out[name] = judges.rate(sum(r["verdicts"][name]["jailbroken"] for r in recs), n)
        b = judges.breakdown(recs, HEADLINE, "gcg") if n else None
        out["keyword_incoherent"] = b["keyword_jailbroken_incoherent"] if b else None
        out["labels"] = _labels(recs)
    else:
        for name in ("gcg", HEADLINE):
            out[f"refusal_{name}"] = judges.rate(sum(bool(r["verdicts"][name]["refused"]) for r in recs), n)
        out["labels"] = _labels(recs)
    out["reading"] = reading(recs)
    return out


def _labels(recs):
    c = {}
    for r in recs:
        lab = r["verdicts"][HEADLINE].get("label")
        c[lab] = c.get(lab, 0) + 1
    return c


def derive(path) -> list[dict]:
    """Every cell's row from a verdicts JSONL, in file order."""
    recs = [json.loads(x) for x in pathlib.Path(path).read_text(encoding="utf-8").splitlines() if x.strip()]
    cells = list(dict.fromkeys(r["cell"] for r in recs))
    return [row(c, [r for r in recs if r["cell"] == c]) for c in cells]


def paired(recs_a: list[dict], recs_b: list[dict], judge: str) -> dict:
    """Two cells on the same prompts (matched by prompt SHA-256), by one judge: the prompts
    jailbroken under the first only and under the second only, and the exact McNemar p (two-sided
    binomial on those discordant pairs). Prompts only one cell scored are left out (``n`` counts
    the shared ones)."""
    from scipy.stats import binomtest

    a = {r["prompt_sha256"]: bool(r["verdicts"][judge]["jailbroken"]) for r in recs_a}
    b = {r["prompt_sha256"]: bool(r["verdicts"][judge]["jailbroken"]) for r in recs_b}
    both = [h for h in a if h in b]
    only_a = sum(a[h] and not b[h] for h in both)
    only_b = sum(b[h] and not a[h] for h in both)
    p = binomtest(only_a, only_a + only_b).pvalue if only_a + only_b else 1.0
    return {"judge": judge, "n": len(both), "k_first": sum(a[h] for h in both), "k_second": sum(b[h] for h in both),
            "only_first": only_a, "only_second": only_b, "mcnemar_exact_p": round(float(p), 4)}


def paired_rows(path, first: str, second: str, judges_=("gcg", HEADLINE)) -> list[dict]:
    """Every cell ``FIRST<rest>`` of a verdicts JSONL against ``SECOND<rest>`` (the same column of
    another row), by each judge, in file order."""
    recs = [json.loads(x) for x in pathlib.Path(path).read_text(encoding="utf-8").splitlines() if x.strip()]
    by = {}
    for r in recs:
        by.setdefault(r["cell"], []).append(r)
    out = []
    for cell in by:
        other = second + cell[len(first):]
        if cell.startswith(first) and other in by:
            out.append({"first": cell, "second": other,
                        "judges": {j: paired(by[cell], by[other], j) for j in judges_}})
    return out


def paired_markdown(rows: list[dict]) -> str:
    judges_ = list(rows[0]["judges"]) if rows else []
    cells = [[r["first"], r["second"]] + [f"{x['k_first']} vs {x['k_second']}; {x['only_first']} vs {x['only_second']}, "
                                         f"p = {x['mcnemar_exact_p']:.3g}" for x in r["judges"].values()] for r in rows]
    return "\n".join(markdown.table(["first", "second"] + [f"{j}: jailbroken; only first vs only second, exact McNemar"
                                                          for j in judges_], cells)) + "\n"


def _pct(r):
    if not r or r.get("rate") is None:
        return "n/a"
    return f"{100 * r['rate']:.1f}% [{100 * r['lo']:.1f}, {100 * r['hi']:.1f}] ({r['k']}/{r['n']})"


def _old(o):
    if not o:
        return "-"
    if "k" in o and "n" in o:
        return f"{100 * o['k'] / o['n']:.1f}% ({o['k']}/{o['n']}, {o.get('judge', 'gcg')})"
    return json.dumps(o)


def _read(r):
    x = r.get("reading")
    if not x or not x["labelled"]:
        return "-"
    return f"{x['k']}/{x['labelled']} ({x['test']} in test)"


def to_markdown(rows: list[dict]) -> str:
    harm = [r for r in rows if r["kind"] == "harmful"]
    safe = [r for r in rows if r["kind"] != "harmful"]
    lines = []
    if harm:
        lines += markdown.table(["cell", "old (as reported)", "distinct n", "keyword ASR (gcg)", "keyword ASR (paper)",
                                 f"harmful compliance ({HEADLINE})", "by reading (labelled outputs)",
                                 "keyword-jailbroken that are incoherent/off-topic"],
                                [[r["cell"], _old(r["old"]), r["n"], _pct(r["gcg"]), _pct(r["paper"]), _pct(r[HEADLINE]),
                                  _read(r), _pct(r["keyword_incoherent"])] for r in harm])
    if safe:
        lines += [""] + markdown.table(["cell", "old (as reported)", "distinct n", "refusal (gcg keywords)",
                                        f"over-refusal ({HEADLINE}, full refusals)", "by reading (labelled outputs)"],
                                       [[r["cell"], _old(r["old"]), r["n"], _pct(r["refusal_gcg"]),
                                         _pct(r["refusal_" + HEADLINE]), _read(r)] for r in safe])
    return "\n".join(lines) + "\n"


def read_generations(path) -> list[dict]:
    return read_records(pathlib.Path(path))


def _old_of(recs: list[dict], kind: str) -> dict | None:
    """The value the file's own GCG verdicts gave (all its records, as first reported)."""
    if not recs or "gcg" not in recs[0].get("verdicts", {}):
        return None
    key = "refused" if kind == "safe" else "jailbroken"
    return {"k": sum(bool(r["verdicts"]["gcg"][key]) for r in recs), "n": len(recs), "judge": "gcg"}


def _write_tables(path: pathlib.Path, rows: list[dict]) -> None:
    """The derived rows beside ``path`` as .json and .md; the Markdown also on stdout."""
    path.with_suffix(".json").write_text(json.dumps(rows, indent=1))
    md = to_markdown(rows)
    path.with_suffix(".md").write_text(md)
    print(md)


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m eval.analysis.remeasure")
    sub = ap.add_subparsers(dest="cmd", required=True)
    d = sub.add_parser("derive", help="print every cell's rates from a verdicts JSONL")
    d.add_argument("verdicts")
    d.add_argument("--json", default=None)
    j = sub.add_parser("judge", help="re-judge one generations JSONL as a cell of a verdicts JSONL")
    j.add_argument("generations")
    j.add_argument("--cell", required=True)
    j.add_argument("--out", required=True)
    j.add_argument("--kind", default="harmful", choices=["harmful", "safe"])
    j.add_argument("--old", default=None, help='the earlier value as JSON, e.g. \'{"k": 4, "n": 100, "judge": "gcg"}\' '
                   "[the file's own gcg verdicts, all records]")
    rj = sub.add_parser("rejudge", help="re-judge a verdicts JSONL in place from its committed prompts and outputs "
                        "(writes <name>.json and <name>.md beside it and prints the table)")
    rj.add_argument("verdicts")
    pr = sub.add_parser("paired", help="each FIRST<rest> cell of a verdicts JSONL against SECOND<rest>, prompt by "
                        "prompt (exact McNemar, gcg and minilm)")
    pr.add_argument("verdicts")
    pr.add_argument("--first", required=True, help="the first row's cell-name prefix, e.g. smollm2-quada-r11")
    pr.add_argument("--second", required=True, help="the second row's, e.g. smollm2-safe-r11")
    pr.add_argument("--json", default=None)
    m = sub.add_parser("manifest", help="re-judge every cell of a TSV manifest (cell, kind, file[, old JSON]) "
                       "into <manifest>.jsonl and print the table")
    m.add_argument("manifest")
    a = ap.parse_args(argv)
    if a.cmd == "manifest":
        man = pathlib.Path(a.manifest)
        out = man.with_suffix(".jsonl")
        out.unlink(missing_ok=True)
        for n, line in enumerate(man.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip() or line.startswith("#"):
                continue
            parts = line.split("\t")
            if len(parts) not in (3, 4):
                raise SystemExit(f"error: {man}:{n}: expected cell, kind, file[, old JSON] separated by tabs")
            recs = read_generations(parts[2])
            old = json.loads(parts[3]) if len(parts) == 4 else _old_of(recs, parts[1])
            rejudge(parts[0], recs, out, parts[1], old, meta={"generations": parts[2]})
        _write_tables(out, derive(out))
        return
    if a.cmd == "rejudge":
        path = pathlib.Path(a.verdicts)
        _write_tables(path, rejudge_file(path))
        return
    if a.cmd == "paired":
        rows = paired_rows(a.verdicts, a.first, a.second)
        if not rows:
            raise SystemExit(f"error: {a.verdicts}: no cell {a.first}<rest> has a twin {a.second}<rest>")
        print(paired_markdown(rows))
        if a.json:
            pathlib.Path(a.json).write_text(json.dumps(rows, indent=1))
        return
    if a.cmd == "derive":
        rows = derive(a.verdicts)
        print(to_markdown(rows))
        if a.json:
            pathlib.Path(a.json).write_text(json.dumps(rows, indent=1))
    else:
        recs = read_generations(a.generations)
        old = json.loads(a.old) if a.old else _old_of(recs, a.kind)
        r = rejudge(a.cell, recs, a.out, a.kind, old, meta={"generations": a.generations})
        print(to_markdown([r]))


if __name__ == "__main__":
    main()
