"""``pmpc report``: gather analysis outputs into one Markdown page and one self-contained HTML page.

It collects, under the given directories, every analysis result (``<name>.json`` with an
``analysis`` field, plus its ``.md`` and ``.png``) and every single evaluation summary
(``*.summary.json`` from ``pmpc eval asr``, ``*.json`` from ``pmpc eval ppl``). Figures are
copied next to the Markdown page; the HTML page embeds them (base64), so it can be mailed alone.
"""
from __future__ import annotations

import base64
import html
import json
import pathlib
import re
import shutil

from eval.analysis.common import md_table, pct, ci
from eval.prompts import kind_of
from pmpc.errors import UserError

ORDER = {"noise_sweep": 0, "layer_sweep": 1, "mds": 2, "table2": 3}


def collect(dirs) -> tuple[list, list, list]:
    analyses, evals, ppls = [], [], []
    for d in dirs:
        d = pathlib.Path(d)
        if not d.exists():
            raise UserError(f"report: {d} does not exist")
        for p in sorted(d.rglob("*.json")):
            if "gen" in p.parts[len(d.parts):-1] or "ppl" in p.parts[len(d.parts):-1]:
                continue  # per-measurement caches of an analysis
            try:
                data = json.loads(p.read_text())
            except (json.JSONDecodeError, UnicodeDecodeError):
                continue
            if not isinstance(data, dict):
                continue
            if "analysis" in data:
                analyses.append((p, data))
            elif p.name.endswith(".summary.json") and "results" in data:
                evals.append((p, data))
            elif "ppl" in data and "windows" in data:
                ppls.append((p, data))
    analyses.sort(key=lambda t: (ORDER.get(t[1]["analysis"], 9), str(t[0])))
    return analyses, evals, ppls


def build(dirs, out) -> dict:
    out = pathlib.Path(out)
    out.mkdir(parents=True, exist_ok=True)
    analyses, evals, ppls = collect(dirs)
    if not (analyses or evals or ppls):
        raise UserError(f"report: no results found under {', '.join(map(str, dirs))}")
    parts = ["# pmpc safety report\n"]
    if evals:
        rows = []
        for p, s in evals:
            c = s["config"]
            benign = kind_of(str(c.get("prompts", ""))) == "benign"
            for jn, r in s["results"].items():
                # on a benign set the refusal rate is the over-refusal, and "ASR" means nothing
                asr = ("—", "") if benign else (pct(r["asr"]), ci(r["asr"]))
                ref = r.get("refusal")
                rows.append([c.get("model", ""), c.get("prompts", ""), f"`{c.get('approx')}`", jn, s["n"], *asr,
                             f"{pct(ref)} {ci(ref)}" if benign else pct(ref), s.get("s_per_100_prompts", "")])
        parts.append("## Evaluations\n\n" + md_table(
            ["model", "prompts", "approximation", "judge", "n", "ASR %", "95% CI",
             "refusal % (over-refusal on benign sets)", "s / 100 prompts"], rows))
    if ppls:
        rows = [[d.get("model", ""), f"`{d['approx']}`", f"{d['ppl']:.3f}", d["windows"], d["window"], p.name]
                for p, d in ppls]
        parts.append("## Perplexity\n\n" + md_table(["model", "approximation", "PPL", "windows", "window", "file"], rows))
    figures = []
    for p, data in analyses:
        md_path = p.with_suffix(".md")
        text = md_path.read_text() if md_path.exists() else f"## {data['analysis']}\n"
        png = p.with_suffix(".png")
        if png.exists():
            dest = f"{p.parent.name}-{png.name}" if p.parent != out else png.name
            if png.resolve() != (out / dest).resolve():
                shutil.copyfile(png, out / dest)
            text = text.replace(f"]({png.name})", f"]({dest})")
            figures.append(dest)
        parts.append(text.strip() + f"\n\n<sub>source: {p}</sub>")
    md = "\n\n".join(parts) + "\n"
    (out / "report.md").write_text(md)
    (out / "report.html").write_text(to_html(md, out))
    return {"markdown": str(out / "report.md"), "html": str(out / "report.html"), "analyses": len(analyses),
            "evaluations": len(evals), "figures": figures}


def _inline(s: str) -> str:
    s = html.escape(s)
    s = re.sub(r"`([^`]+)`", r"<code>\1</code>", s)
    s = re.sub(r"\*\*([^*]+)\*\*", r"<b>\1</b>", s)
    return s


def to_html(md: str, base: pathlib.Path) -> str:
    """A small Markdown-to-HTML for what pmpc writes: headings, tables, images, paragraphs."""
    out, lines, i = [], md.splitlines(), 0
    while i < len(lines):
        ln = lines[i]
        if ln.startswith("|"):
            rows = []
            while i < len(lines) and lines[i].startswith("|"):
                if not re.match(r"^\|(\s*-+\s*\|)+$", lines[i]):
                    rows.append([c.strip() for c in lines[i].strip().strip("|").split("|")])
                i += 1
            t = "<table><tr>" + "".join(f"<th>{_inline(c)}</th>" for c in rows[0]) + "</tr>"
            t += "".join("<tr>" + "".join(f"<td>{_inline(c)}</td>" for c in r) + "</tr>" for r in rows[1:])
            out.append(t + "</table>")
            continue
        m = re.match(r"^(#+)\s+(.*)", ln)
        img = re.match(r"^!\[([^\]]*)\]\(([^)]+)\)", ln)
        if m:
            n = len(m.group(1))
            out.append(f"<h{n}>{_inline(m.group(2))}</h{n}>")
        elif img:
            f = base / img.group(2)
            src = ("data:image/png;base64," + base64.b64encode(f.read_bytes()).decode()) if f.exists() else img.group(2)
            out.append(f'<p><img alt="{html.escape(img.group(1))}" src="{src}" style="max-width:100%"></p>')
        elif ln.startswith("<sub>"):
            out.append(ln)
        elif ln.strip():
            out.append(f"<p>{_inline(ln)}</p>")
        i += 1
    style = ("body{font-family:sans-serif;max-width:1100px;margin:2em auto}table{border-collapse:collapse;margin:1em 0}"
             "td,th{border:1px solid #ccc;padding:3px 7px;font-size:13px}code{background:#f4f4f4}")
    return f"<!doctype html><html><head><meta charset='utf-8'><title>pmpc report</title><style>{style}</style></head>" \
           f"<body>{''.join(out)}</body></html>\n"
