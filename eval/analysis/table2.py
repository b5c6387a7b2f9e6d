"""The Table 2 reproduction: every approximation preset -> ASR, over-refusal, PPL, in one table.

Rows: the clean model, each ``table2:<system>`` fitted-noise preset (the paper's eps^up / eps^down
error models; with ``rel`` also each rescaled to this model's activation spread, ``,rel=1``, see
:data:`pmpc.simulate.TABLE2_REF_SPREAD`), every ``measured:<protocol>`` fit when ``pmpc/presets/measured_errors.json``
exists, and any extra specs the user adds (e.g. the real emulations ``teal:0.25``,
``smoothquant:a8``, ``protocol:bolt``). Columns: ASR on the harmful set (headline judge, 95%
Wilson CI), over-refusal on the benign set (refusal rate by the same judge's keyword part), PPL on
WikiText-2 — and, for reference, the paper's own ASR/PPL for the row (its model, probably
Llama-3.1-8B-Instruct, not this one: compare trends, not values).
"""
from __future__ import annotations

from eval.analysis import common
from pmpc import simulate
from pmpc.errors import UserError


def default_rows(extra=(), rel: bool = False) -> list[str]:
    """clean, every Table 2 preset (absolute; then rescaled with ``rel``), measured fits, extras."""
    presets = simulate.presets()
    t2 = [p for p in presets if p.startswith("table2:")]
    rest = [p for p in presets if not p.startswith("table2:")]
    return ["none"] + t2 + ([f"{p},rel=1" for p in t2] if rel else []) + rest + list(extra)


def table2(sess: common.Session, harmful: list, harmful_name: str, benign: list | None, benign_name: str | None,
           rows: list[str], with_ppl: bool = True) -> dict:
    out = []

    def finish(partial):
        clean = next((r for r in out if r["approx"] == "none"), None)
        result = {"analysis": "table2", "partial": partial, "settings": sess.s.to_dict(), "harmful": harmful_name,
                  "n_harmful": len(harmful), "benign": benign_name, "n_benign": len(benign) if benign else 0,
                  "rows": out, "clean_ppl": clean["ppl"] if clean else None, "requested_rows": list(rows)}
        return common.write_outputs(sess.out, "table2", result, _md(result), _fig(result))

    for spec in rows:  # outputs rewritten after every row: an interrupted run leaves a partial table
        a = simulate.parse(spec)
        paper = simulate.TABLE2[a.name]["paper"] if a.kind == "table2" else None
        try:
            s_h = sess.asr(a, harmful, harmful_name)
            s_b = sess.asr(a, benign, benign_name) if benign else None
            out.append({"approx": str(a), "asr": sess.headline(s_h),
                        "refusal_on_harmful": sess.headline(s_h, "refusal"),
                        "over_refusal": sess.headline(s_b, "refusal") if s_b else None,
                        "ppl": sess.ppl(a)["ppl"] if with_ppl else None, "paper": paper,
                        "s_per_100_prompts": s_h.get("s_per_100_prompts")})
        except (UserError, NotImplementedError, RuntimeError, ValueError) as e:
            # one failing approximation (e.g. a protocol without the model's activation) is
            # reported in its row; the other rows are still measured
            out.append({"approx": str(a), "error": f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}",
                        "asr": None, "over_refusal": None, "ppl": None, "paper": paper})
        finish(partial=True)
    return finish(partial=False)


def _md(r) -> str:
    md = (f"## Table 2 analog — {r['settings']['model']}, ASR on {r['harmful']} (n={r['n_harmful']}), over-refusal on "
          f"{r['benign']} (n={r['n_benign']}), judge {r['settings']['judge']}, PPL WikiText-2 "
          f"({r['settings']['max_windows'] or 'all'} windows of {r['settings']['window']})"
          f"{' — PARTIAL: ' + str(len(r['rows'])) + ' of ' + str(len(r['requested_rows'])) + ' rows' if r.get('partial') else ''}\n\n")
    rows = []
    for x in r["rows"]:
        p = x["paper"] or {}
        if x.get("error"):
            rows.append([f"`{x['approx']}`", "error", x["error"].replace("|", "/"), "", "", p.get("asr", ""),
                         p.get("ppl", "")])
            continue
        rows.append([f"`{x['approx']}`", common.pct(x["asr"]), common.ci(x["asr"]), common.pct(x["over_refusal"]),
                     f"{x['ppl']:.2f}" if x["ppl"] is not None else "n/a",
                     p.get("asr", ""), p.get("ppl", "")])
    md += common.md_table(["approximation", "ASR %", "95% CI", "over-refusal %", "PPL", "paper ASR %", "paper PPL"], rows)
    return md + "\n"


def _fig(r):
    plt = common.plt()
    rows = [x for x in r["rows"] if not x.get("error")]
    if not rows:
        return None
    fig, (a1, a2) = plt.subplots(2, 1, figsize=(max(6, 0.55 * len(rows) + 2), 6), sharex=True)
    xs = list(range(len(rows)))
    a1.bar(xs, [100 * x["asr"]["rate"] for x in rows],
           yerr=[[100 * (x["asr"]["rate"] - x["asr"]["lo"]) for x in rows],
                 [100 * (x["asr"]["hi"] - x["asr"]["rate"]) for x in rows]], capsize=2, label="ASR (this model)")
    paper = [(i, x["paper"]["asr"]) for i, x in enumerate(rows) if x["paper"]]
    if paper:
        a1.scatter([i for i, _ in paper], [v for _, v in paper], color="black", marker="_", s=200, zorder=3,
                   label="paper ASR (its model)")
    a1.set_ylabel("ASR (%)")
    a1.legend(fontsize=8)
    if rows[0]["ppl"] is not None:
        a2.bar(xs, [x["ppl"] for x in rows], color="tab:orange")
        a2.set_yscale("log")
        a2.set_ylabel("PPL")
    a2.set_xticks(xs, [x["approx"].replace("table2:", "") for x in rows], rotation=60, ha="right", fontsize=8)
    a1.set_title(f"{r['settings']['model']}: Table 2 analog")
    return fig
