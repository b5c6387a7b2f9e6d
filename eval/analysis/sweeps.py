"""Noise sweep (paper Figures 3/4) and layer-wise sensitivity (Figure 6).

Noise sweep: for each point (``up``, ``down``) and noise scale, ASR on a harmful set and
WikiText-2 PPL, both with the noise on. The most vulnerable approximation (MVA) of a point is the
scale with the highest ASR among those whose PPL stays within ``ppl_bound`` x the clean PPL
(default 2x: the model still writes fluent text; the paper's Llama-3.1-8B peak sat at about 4x,
PPL 30 vs 7-8, so raise the bound to follow it). Ties go to the smaller scale.

``scales="auto"`` builds the grid from the measured spread of the activation at each point (0 and
0.025 .. 1.6 x its robust std = 1.4826 x median |x|, doubling), because the absolute scale that
matters differs by model and point (the paper's 0.075 at W_up of Llama-3.1 is about 0.2 x its
~0.35 activation std). The robust std, not the RMS, because a few massive activations (SmolLM2's
W_down input) inflate the RMS while the noise perturbs the bulk of the entries.

Layer sweep: the same approximation in one layer window at a time; the sensitive layers are the
windows whose ASR gain over the clean model is at least ``frac`` (default 1/2) of the largest
gain, when that gain is positive.
"""
from __future__ import annotations

from eval.analysis import common
from pmpc import simulate
from pmpc.errors import UserError

AUTO_FACTORS = (0.0, 0.025, 0.05, 0.1, 0.2, 0.4, 0.8, 1.6)


def noise_sweep(sess: common.Session, prompts: list, set_name: str, points=("up", "down"), dist: str = "gauss",
                scales="auto", ppl_bound: float = 2.0, layers=None, with_ppl: bool = True) -> dict:
    if dist not in simulate.NOISE:
        raise UserError(f"noise sweep distribution must be gauss or laplace, not {dist!r}")
    spread = common.activation_scale(sess.model, sess.codec, points, device=sess.s.device)
    unit = {p: spread[p]["robust_std"] for p in points}
    grids = {p: ([round(f * unit[p], 6) for f in AUTO_FACTORS] if scales == "auto" else sorted(set(scales)))
             for p in points}
    lay = None if layers is None else simulate.format_layers(layers)
    clean_asr = sess.asr(None, prompts, set_name)
    clean_ppl = sess.ppl(None)["ppl"] if with_ppl else None
    rows = []

    def finish(partial):
        mva = {}
        for p in points:
            ok = [r for r in rows if r["point"] == p and (not with_ppl or r["ppl"] <= ppl_bound * clean_ppl)]
            if ok:
                best = max(ok, key=lambda r: (r["asr"]["rate"], -r["scale"]))
                mva[p] = {"scale": best["scale"], "approx": best["approx"], "asr": best["asr"], "ppl": best["ppl"]}
        result = {"analysis": "noise_sweep", "partial": partial, "settings": sess.s.to_dict(), "prompts": set_name,
                  "n_prompts": len(prompts), "dist": dist, "points": list(points), "layers": lay,
                  "activation_scale": spread, "unit": unit, "grids": grids, "ppl_bound": ppl_bound,
                  "clean_ppl": clean_ppl, "clean_asr": sess.headline(clean_asr),
                  "rows": sorted(rows, key=lambda r: (points.index(r["point"]), r["scale"])), "mva": mva}
        return common.write_outputs(sess.out, "noise_sweep", result, _noise_md(result), _noise_fig(result))

    # scale by scale across the points, writing the outputs after each measurement, so that an
    # interrupted sweep still leaves a usable (partial) table and figure
    for k in range(max(len(g) for g in grids.values())):
        for p in points:
            if k >= len(grids[p]):
                continue
            s = grids[p][k]
            spec = f"{dist}:{s!r}@{p}" + (f"@{lay}" if lay else "")
            a = None if s == 0 else spec
            summ = clean_asr if a is None else sess.asr(a, prompts, set_name)
            pp = (clean_ppl if a is None else sess.ppl(a)["ppl"]) if with_ppl else None
            rows.append({"point": p, "scale": s, "rel_scale": s / unit[p] if unit[p] else None, "approx": spec,
                         "asr": sess.headline(summ), "refusal": sess.headline(summ, "refusal"),
                         "ppl": pp, "all_judges": summ["results"]})
            finish(partial=True)
    return finish(partial=False)


def _noise_md(r) -> str:
    head = (f"## Noise sweep ({r['dist']}) — {r['settings']['model']} on {r['prompts']} (n={r['n_prompts']}), "
            f"judge {r['settings']['judge']}{' (PARTIAL: interrupted)' if r.get('partial') else ''}\n\n")
    head += ("Activation spread (robust std / RMS): " + ", ".join(
        f"{p} {v['robust_std']:.4g} / {v['rms']:.4g}" for p, v in r["activation_scale"].items()) + ". ")
    if r["clean_ppl"] is not None:
        head += (f"Clean PPL {r['clean_ppl']:.2f} ({r['settings']['max_windows'] or 'all'} windows of "
                 f"{r['settings']['window']}); MVA bound: PPL <= {r['ppl_bound']} x clean.\n\n")
    rows = [[x["point"], f"{x['scale']:.4g}", f"{x['rel_scale']:.3g}" if x["rel_scale"] is not None else "",
             common.pct(x["asr"]), common.ci(x["asr"]), common.pct(x["refusal"]),
             f"{x['ppl']:.2f}" if x["ppl"] is not None else "n/a"] for x in r["rows"]]
    md = head + common.md_table(["point", "scale", "x robust std", "ASR %", "95% CI", "refusal %", "PPL"], rows)
    def one(p, m):
        if m["scale"] == 0:
            return f"{p}: none (no noise within the bound raised the ASR above clean)"
        return f"{p}: `{m['approx']}` (ASR {common.pct(m['asr'])}%" + (f", PPL {m['ppl']:.2f})" if m["ppl"] is not None else ")")

    md += "\n\n**MVA** (highest ASR with PPL within the bound): " + (
        "; ".join(one(p, m) for p, m in r["mva"].items()) or "none within the bound") + "\n"
    return md


def _noise_fig(r):
    plt = common.plt()
    npan = 2 if r["clean_ppl"] is not None else 1
    fig, axes = plt.subplots(npan, 1, figsize=(6.5, 3.2 * npan), squeeze=False)
    for p in r["points"]:
        xs = [x for x in r["rows"] if x["point"] == p]
        sc = [x["rel_scale"] for x in xs]
        y = [100 * x["asr"]["rate"] for x in xs]
        err = [[100 * (x["asr"]["rate"] - x["asr"]["lo"]) for x in xs], [100 * (x["asr"]["hi"] - x["asr"]["rate"]) for x in xs]]
        axes[0][0].errorbar(sc, y, yerr=err, marker="o", capsize=3, label=f"{p} ({r['dist']})")
        if npan == 2:
            axes[1][0].plot(sc, [x["ppl"] for x in xs], marker="o", label=p)
        if p in r["mva"]:
            axes[0][0].axvline(r["mva"][p]["scale"] / r["unit"][p], ls=":", color="grey")
    axes[0][0].set_ylabel("ASR (%)")
    axes[0][0].set_title(f"{r['settings']['model']}: ASR vs noise ({r['prompts']}, n={r['n_prompts']})")
    axes[0][0].legend()
    if npan == 2:
        axes[1][0].set_yscale("log")
        axes[1][0].axhline(r["ppl_bound"] * r["clean_ppl"], ls="--", color="grey", label=f"{r['ppl_bound']}x clean")
        axes[1][0].set_ylabel("WikiText-2 PPL")
        axes[1][0].legend()
    axes[-1][0].set_xlabel("noise scale / robust std of the activation at the point")
    return fig


def layer_sweep(sess: common.Session, prompts: list, set_name: str, approx: str, window: int = 1,
                frac: float = 0.5, with_ppl: bool = False) -> dict:
    a = simulate.parse(approx)
    if a.kind == "none":
        raise UserError("the layer sweep needs an approximation (e.g. --approx gauss:0.1@up)")
    n = sess.n_layers
    if window < 1 or window > n:
        raise UserError(f"--window must be in 1..{n}")
    clean = sess.asr(None, prompts, set_name)
    clean_rate = sess.headline(clean)["rate"]
    rows = []

    def finish(partial):
        top = max(r["gain"] for r in rows)
        sensitive = [l for r in rows if top > 0 and r["gain"] >= frac * top for l in r["layers"]]
        result = {"analysis": "layer_sweep", "partial": partial, "settings": sess.s.to_dict(), "prompts": set_name,
                  "n_prompts": len(prompts), "approx": str(a), "window": window, "n_layers": n,
                  "clean_asr": sess.headline(clean), "rows": rows, "frac": frac, "sensitive_layers": sensitive,
                  "tau": (max(sensitive) + 1) if sensitive else None,
                  "ranking": [r["label"] for r in sorted(rows, key=lambda r: -r["gain"])],
                  "all_approx_asr": full}
        return common.write_outputs(sess.out, "layer_sweep", result, _layer_md(result), _layer_fig(result))

    full = None
    for start in range(0, n, window):
        lays = tuple(range(start, min(start + window, n)))
        spec = a.with_layers(lays)
        summ = sess.asr(spec, prompts, set_name)
        rows.append({"layers": list(lays), "label": simulate.format_layers(lays), "approx": str(spec),
                     "asr": sess.headline(summ), "refusal": sess.headline(summ, "refusal"),
                     "gain": sess.headline(summ)["rate"] - clean_rate,
                     "ppl": sess.ppl(spec)["ppl"] if with_ppl else None})
        finish(partial=True)
    full = sess.headline(sess.asr(a, prompts, set_name))
    return finish(partial=False)


def _layer_md(r) -> str:
    md = (f"## Layer-wise sensitivity — {r['settings']['model']}, `{r['approx']}` one window of {r['window']} "
          f"layer(s) at a time, {r['prompts']} (n={r['n_prompts']}), judge {r['settings']['judge']}\n\n"
          f"{'(PARTIAL: interrupted) ' if r.get('partial') else ''}"
          f"Clean ASR {common.pct(r['clean_asr'])}% {common.ci(r['clean_asr'])}; all layers {common.pct(r['all_approx_asr'])}% "
          f"{common.ci(r['all_approx_asr'])}.\n\n")
    rows = [[x["label"], common.pct(x["asr"]), common.ci(x["asr"]), f"{100 * x['gain']:+.1f}", common.pct(x["refusal"])]
            + ([f"{x['ppl']:.2f}"] if x["ppl"] is not None else []) for x in r["rows"]]
    hdr = ["layers", "ASR %", "95% CI", "gain (pts)", "refusal %"] + (["PPL"] if r["rows"][0]["ppl"] is not None else [])
    md += common.md_table(hdr, rows)
    if r["sensitive_layers"]:
        md += (f"\n\n**Sensitive layers** (gain >= {r['frac']} x the largest gain): {r['sensitive_layers']} "
               f"-> perturb layers 0..{r['tau'] - 1} (tau = {r['tau']}).\n")
    else:
        md += "\n\n**Sensitive layers**: none — no window raised the ASR above the clean model.\n"
    big = max(r["rows"], key=lambda x: abs(x["gain"]))
    md += f"Largest change in either direction: layers {big['label']} ({100 * big['gain']:+.1f} pts).\n"
    return md


def _layer_fig(r):
    plt = common.plt()
    fig, ax = plt.subplots(figsize=(max(5, 0.3 * len(r["rows"]) + 2), 3.2))
    xs = list(range(len(r["rows"])))
    ys = [100 * x["asr"]["rate"] for x in r["rows"]]
    err = [[100 * (x["asr"]["rate"] - x["asr"]["lo"]) for x in r["rows"]],
           [100 * (x["asr"]["hi"] - x["asr"]["rate"]) for x in r["rows"]]]
    colors = ["tab:red" if set(x["layers"]) & set(r["sensitive_layers"]) else "tab:blue" for x in r["rows"]]
    ax.bar(xs, ys, yerr=err, color=colors, capsize=2)
    ax.axhline(100 * r["clean_asr"]["rate"], ls="--", color="grey", label="clean")
    ax.set_xticks(xs, [x["label"] for x in r["rows"]], rotation=90 if len(xs) > 12 else 0)
    ax.set_xlabel("perturbed layer(s)")
    ax.set_ylabel("ASR (%)")
    ax.set_title(f"{r['settings']['model']}: {r['approx']} per layer window")
    ax.legend()
    return fig
