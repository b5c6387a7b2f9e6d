"""``pmpc protocols``: what each non-linear protocol computes, where, how well, at what cost."""
from __future__ import annotations

import json

import click

from pmpc.errors import UserError


def _rows(names):
    import protocols

    out = []
    for name in names:
        p = protocols.get(name)
        fns = {fn: {"method": s.method, "domain": list(s.domain),
                    "max_abs_err": s.max_abs_err, "max_rel_err": s.max_rel_err,
                    "comparisons": s.comparisons, "multiplications": s.multiplications}
               for fn, s in p.specs.items()}
        out.append({"name": name, "summary": p.summary, "source": p.source,
                    "subtract_max": p.subtract_max, "functions": fns})
    return out


def _g(v) -> str:
    return f"{v:.3g}" if isinstance(v, float) else str(v)


def _markdown(rows) -> str:
    lines = []
    for r in rows:
        lines += [f"## {r['name']} — {r['summary']}", "", f"source: {r['source']}", ""]
        if not r["functions"]:
            lines += ["(no stated functions: plaintext reference)", ""]
            continue
        lines += ["| function | domain | bound | cmp/elem | mul/elem | method |", "|---|---|---|---|---|---|"]
        for fn, f in r["functions"].items():
            bound = (f"abs {_g(f['max_abs_err'])}" if f["max_abs_err"] is not None
                     else f"rel {_g(f['max_rel_err'])}")
            lo, hi = f["domain"]
            lines.append(f"| {fn} | [{_g(float(lo))}, {_g(float(hi))}] | {bound} | {_g(f['comparisons'])} | "
                         f"{_g(f['multiplications'])} | {f['method'].replace('|', chr(92) + '|')} |")
        lines.append("")
    lines.append("Bounds: max error against float64 on the domain (measured, then stated with margin; "
                 "tests/test_protocols.py redraws inputs every run). Costs: secure comparisons (or A2B "
                 "conversions) and secret products per element; softmax per score element of a 16-entry row.")
    return "\n".join(lines)


@click.command("protocols")
@click.argument("names", nargs=-1)
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
def protocols_cmd(names, as_json):
    """List the non-linear protocols: per function, method, domain, error bound, comparisons and
    multiplications per element. NAMES restricts the list (default: all)."""
    import protocols

    known = protocols.names()
    for n in names:
        if n not in known:
            raise UserError(f"unknown protocol {n!r}; choose from: {', '.join(known)}")
    rows = _rows(names or known)
    click.echo(json.dumps(rows, indent=2) if as_json else _markdown(rows))


COMMANDS = [protocols_cmd]
