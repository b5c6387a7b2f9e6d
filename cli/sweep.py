"""``pmpc sweep noise|layers``, ``pmpc analyze mds``, ``pmpc table2``, ``pmpc report``.

Each analysis writes ``<out>/<name>.json``, ``.md`` and ``.png`` and caches every measurement
under ``<out>`` (``gen/``, ``ppl/``): rerunning the same command resumes where it stopped.
"""
from __future__ import annotations

import click

from cli.eval import model_options, ppl_options, settings
from pmpc.errors import UserError


def _floats(text: str):
    if text == "auto":
        return "auto"
    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise UserError(f"--scales: {text!r} is not 'auto' or a comma-separated list of numbers") from None


def _session(kw, out):
    from eval.analysis.common import Session

    return Session(settings(kw), out)


def _load(spec, kw):
    from eval import prompts

    return prompts.load(spec, data=kw["data"], limit=kw["limit"])


@click.group("sweep")
def sweep_group():
    """Sweeps of noise scale and of the perturbed layers (paper Figures 3/4 and 6)."""


@sweep_group.command("noise")
@model_options
@ppl_options
@click.option("--prompts", "-p", "set_name", default="harmbench-test", show_default=True)
@click.option("--points", default="up,down", show_default=True, help="injection points, comma-separated")
@click.option("--dist", default="gauss", show_default=True, type=click.Choice(["gauss", "laplace"]))
@click.option("--scales", default="auto", show_default=True,
              help="'auto' (multiples of each point's robust activation std) or e.g. 0,0.02,0.05,0.1")
@click.option("--layers", default=None, help="restrict the noise to these layers, e.g. 0-3")
@click.option("--ppl-bound", default=2.0, show_default=True, type=float, help="MVA: PPL <= bound x clean PPL")
@click.option("--no-ppl", is_flag=True, help="skip perplexity (no MVA bound)")
@click.option("--out", "-o", default="runs/noise_sweep", show_default=True)
def noise_cmd(set_name, points, dist, scales, layers, ppl_bound, no_ppl, out, **kw):
    """ASR and PPL against the noise scale at W_up / W_down inputs; the MVA."""
    from eval.analysis import sweeps
    from pmpc import simulate

    pts = tuple(p.strip() for p in points.split(",") if p.strip())
    for p in pts:
        if p not in simulate.POINTS or p == "softmax":
            raise UserError(f"unknown point {p!r}; choose from {', '.join(simulate.POINTS[:-1])}")
    sess = _session(kw, out)
    r = sweeps.noise_sweep(sess, _load(set_name, kw), set_name, pts, dist, _floats(scales), ppl_bound,
                           simulate.parse_layers(layers) if layers else None, with_ppl=not no_ppl)
    for p, m in r["mva"].items():
        if m["scale"] == 0:
            click.echo(f"MVA at {p}: none — no noise level within the PPL bound raised the ASR above clean "
                       f"({100 * m['asr']['rate']:.1f}%)")
        else:
            click.echo(f"MVA at {p}: {m['approx']} (ASR {100 * m['asr']['rate']:.1f}%)")
    click.echo(f"wrote {r['outputs']['md']}")


@sweep_group.command("layers")
@model_options
@ppl_options
@click.option("--prompts", "-p", "set_name", default="harmbench-test", show_default=True)
@click.option("--approx", "-a", required=True, help="the approximation to move across layers, e.g. gauss:0.1@up")
@click.option("--layer-window", default=1, show_default=True, type=int, help="layers perturbed together")
@click.option("--frac", default=0.5, show_default=True, type=float,
              help="sensitive: ASR gain >= frac x the largest gain")
@click.option("--with-ppl", is_flag=True, help="also measure PPL per window")
@click.option("--out", "-o", default="runs/layer_sweep", show_default=True)
def layers_cmd(set_name, approx, layer_window, frac, with_ppl, out, **kw):
    """Noise in one layer (window) at a time: which layers matter for safety."""
    from eval.analysis import sweeps

    sess = _session(kw, out)
    r = sweeps.layer_sweep(sess, _load(set_name, kw), set_name, approx, layer_window, frac, with_ppl)
    click.echo(f"sensitive layers: {r['sensitive_layers'] or 'none'}; wrote {r['outputs']['md']}")


@click.group("analyze")
def analyze_group():
    """Activation-space analyses."""


@analyze_group.command("mds")
@model_options
@click.option("--harmful", default="builtin-harmful", show_default=True)
@click.option("--harmless", default="builtin-harmless", show_default=True)
@click.option("--approx", "-a", required=True)
@click.option("--layer", "layers", default="mid", show_default=True,
              help="layer indices, ranges or first/mid/last, e.g. 1,mid,last or 0-3")
@click.option("--out", "-o", default="runs/mds", show_default=True)
def mds_cmd(harmful, harmless, approx, layers, out, **kw):
    """MDS of last-token activations, harmful vs harmless, clean vs approximated; drift numbers."""
    from eval.analysis import mds

    sess = _session(kw, out)
    lay = mds.resolve_layers(layers, sess.n_layers)
    r = mds.mds_analysis(sess, _load(harmful, kw), _load(harmless, kw), approx, lay, (harmful, harmless))
    for l in lay:
        d = r["drift"][l]
        f2 = lambda v: "n/a" if v is None else f"{v:.2f}"  # noqa: E731
        click.echo(f"layer {l}: separability {f2(d['separability_clean'])} -> {f2(d['separability_approx'])}; "
                   f"harmful in benign cluster {100 * d['harmful_in_benign_clean']:.0f}% -> "
                   f"{100 * d['harmful_in_benign_approx']:.0f}%; relative shift {d['relative_shift']:+.3f}")
    click.echo(f"wrote {r['outputs']['md']}")


@click.command("table2")
@model_options
@ppl_options
@click.option("--harmful", default="harmbench-test", show_default=True)
@click.option("--benign", default="xstest-safe", show_default=True, help="over-refusal set ('' to skip)")
@click.option("--rows", default=None, help="comma-free list separated by ';' of specs (default: clean + every preset)")
@click.option("--extra", multiple=True, help="add a row (repeatable), e.g. --extra teal:0.25 --extra protocol:bolt")
@click.option("--rel", is_flag=True, help="also every Table 2 preset rescaled to this model's activation spread "
              "(table2:NAME,rel=1)")
@click.option("--no-ppl", is_flag=True)
@click.option("--out", "-o", default="runs/table2", show_default=True)
def table2_cmd(harmful, benign, rows, extra, rel, no_ppl, out, **kw):
    """Every approximation preset -> ASR, over-refusal, PPL, in one table."""
    from eval.analysis import table2

    sess = _session(kw, out)
    specs = [r.strip() for r in rows.split(";") if r.strip()] if rows else table2.default_rows(extra, rel)
    if rows:
        specs += list(extra)
    r = table2.table2(sess, _load(harmful, kw), harmful, _load(benign, kw) if benign else None, benign or None,
                      specs, with_ppl=not no_ppl)
    click.echo(open(r["outputs"]["md"]).read())


@click.command("report")
@click.argument("dirs", nargs=-1)
@click.option("--out", "-o", default="runs/report", show_default=True)
def report_cmd(dirs, out):
    """Gather analysis outputs under DIRS (default runs/) into report.md and report.html."""
    from eval.analysis import report

    r = report.build(list(dirs) or ["runs"], out)
    click.echo(f"wrote {r['markdown']} and {r['html']} ({r['analyses']} analyses, {r['evaluations']} evaluations)")


COMMANDS = [sweep_group, analyze_group, table2_cmd, report_cmd]
