"""``pmpc bench errors``: the error each protocol really injects, measured under MPC and fitted.

The seed paper (arXiv 2502.00840, Table 2) MODELS each system's error as noise: N(0, s^2) at the
input of W_up and Laplace(0, b) at the input of W_down. Here the error is MEASURED: real 2-party
forwards of a model (default smollm2) over WikiText-2 windows, with the engine's tap hook at
  * ``up``:   the input of W_up/W_gate (the post-attention norm's output), and
  * ``down``: the input of W_down (act(gate) * up),
per layer. MEASUREMENT MODE: inside the parties every tapped value is revealed to the client
(``ops.reveal(value, dst=0)``) — intermediate activations leave the secret-shared domain. Never
use it for private inference; it exists to measure.

error = revealed MPC value - plaintext engine value (``plain`` protocol, float64, the same
tokens), so it includes everything upstream (earlier layers' approximations, fixed point).
Gaussian and Laplace are fitted by maximum likelihood (``scipy.stats.norm.fit``,
``laplace.fit``) to the pooled errors of all layers; the better fit is the one with the higher
log-likelihood (Kolmogorov-Smirnov statistics are reported beside it).

Outputs (streamed per protocol, resumable): ``OUT/errors.json`` (configuration, fits, per-layer
standard deviations, the paper's values), ``OUT/errors.md``, ``OUT/errors_<protocol>.png``
(histograms with both fits), ``OUT/errors_<protocol>.npz`` (the raw errors), and the noise
presets for the simulator (``measured:<protocol>``), by default at
``pmpc/presets/measured_errors.json``. Preset schema, one entry per protocol (merged into an
existing file):
    {"<protocol>": {"up":   {"dist": "gauss"|"laplace", "scale": s, "loc": m,
                             "gauss": {"loc", "scale", "loglik", "ks"},
                             "laplace": {"loc", "scale", "loglik", "ks"},
                             "n": count, "per_layer_std": [...]},
                    "down": {...},
                    "meta": {"model", "tokens", "windows", "offset", "source", "created"}}}
``scale`` is sigma for "gauss" and b for "laplace" (the simulator's convention); ``loc`` is the
fitted mean (the simulator injects zero-mean noise).
"""
from __future__ import annotations

# crypten (through pmpc.mpc.crypten_compat / crypten_ops) is imported inside the functions that run
# in a party: the launcher, the CLI and a machine without crypten import this module without it.

import dataclasses
import json
import pathlib
import time

import numpy as np
import torch

from eval.perf import bench
from pmpc.engine import CLIENT, Engine
from pmpc import markdown as md
from pmpc import models, paths, simulate
from pmpc.errors import UserError
from pmpc.mpc import cost, parties
from pmpc.mpc.parties import PartyError
from pmpc.ops import TorchOps
import protocols

POINTS = {"up": "up_in", "down": "down_in"}
SCHEMA = "pmpc.errors/1"


@dataclasses.dataclass
class ErrorsConfig:
    model: str = "smollm2"
    protocols: list = dataclasses.field(default_factory=lambda: ["iron", "bolt", "bumblebee", "puma", "nexus"])
    tokens: int = 16
    windows: int = 1
    offset: int = 0
    threads: int = 1
    timeout_s: float = 600.0
    data: str = ""
    seed: int = 0

    KEY = ("model", "tokens", "windows", "offset", "seed")

    def validate(self):
        if not self.protocols:
            raise UserError("no protocols given")
        for p in self.protocols:
            protocols.get(p)
            if p == "plain":
                raise UserError("plain is the reference the errors are measured against")
        if self.tokens < 1 or self.windows < 1:
            raise UserError("--tokens and --windows must be >= 1")


@dataclasses.dataclass
class TapJob:
    """A secure prefill that reveals every tapped activation to the client (measurement mode)."""

    model: str
    protocol: str
    shape: tuple
    seed: int = 0

    def __call__(self, rank, world_size, ids=None):
        from pmpc.mpc.crypten_ops import CrypTenOps

        spec, _ = models.load(self.model, seed=self.seed)
        ops = CrypTenOps(cost.Tracker(cost.crypten_stats))
        taps = {}

        def tap(point, layer, value):
            v = ops.reveal(value, dst=CLIENT)  # collective; the client alone gets the values
            if rank == CLIENT:
                taps[(point, layer)] = v.float().numpy()

        eng = Engine(spec, self.protocol, ops, tap=tap)
        if rank != CLIENT:
            ids = torch.zeros(self.shape, dtype=torch.long)
        t0 = time.perf_counter()
        out = ops.reveal(eng.prefill(ids, use_cache=False), dst=CLIENT)
        wall = time.perf_counter() - t0
        if rank != CLIENT:
            return {"wall_s": wall}
        return {"wall_s": wall, "taps": taps, "output": out.double().numpy()}


def plaintext_taps(spec, ids):
    taps = {}

    def tap(point, layer, value):
        taps[(point, layer)] = value.detach().double().numpy()

    with torch.no_grad():
        out = Engine(spec, "plain", TorchOps(torch.float64), tap=tap).prefill(ids, use_cache=False)
    return taps, out.numpy()


def fit(e: np.ndarray) -> dict:
    """Maximum-likelihood Gaussian and Laplace fits of the finite errors; the better by log-likelihood."""
    from scipy import stats

    finite = np.isfinite(e)
    x = e[finite].astype(np.float64)
    if x.size < 2:
        raise UserError("fewer than two finite errors to fit")
    out = {"n": int(x.size), "nonfinite": int((~finite).sum()), "mean": float(x.mean()), "std": float(x.std())}
    # log-likelihoods in closed form: scipy's laplace.logpdf underflows to -inf for far outliers
    loglik = {"gauss": lambda loc, s: float(-0.5 * x.size * np.log(2 * np.pi * s * s) - ((x - loc) ** 2).sum() / (2 * s * s)),
              "laplace": lambda loc, b: float(-x.size * np.log(2 * b) - np.abs(x - loc).sum() / b)}
    for name, dist in (("gauss", stats.norm), ("laplace", stats.laplace)):
        loc, scale = dist.fit(x)
        scale = max(float(scale), 1e-300)
        out[name] = {"loc": float(loc), "scale": scale, "loglik": loglik[name](float(loc), scale),
                     "ks": float(stats.kstest(x, dist.cdf, args=(loc, scale)).statistic)}
    best = "gauss" if out["gauss"]["loglik"] >= out["laplace"]["loglik"] else "laplace"
    out["dist"], out["scale"], out["loc"] = best, out[best]["scale"], out[best]["loc"]
    return out


FAIL_FACTOR = 10.0  # an error beyond 10x the largest plaintext activation is a failure, not an approximation


def summarize(protocol: str, diffs: dict, ref_absmax: dict) -> tuple[dict, dict]:
    """Fits from per-layer errors ``diffs[short]`` ([L, B, T, W]).

    CrypTen's 2-party truncation is probabilistic: each product's local truncation fails with
    probability ~|value| / 2^32 (16 fraction bits) and then adds ~2^32 / 2^k to one element — a
    catastrophic event, not an approximation error, and it spreads through that token's later
    layers. Tokens with any error beyond ``FAIL_FACTOR`` x the largest plaintext activation of
    the layer (or a non-finite one) are counted as failed and left out of the fits; a protocol
    whose every token failed has no fit ("diverged")."""
    any_d = next(iter(diffs.values()))
    bad = np.zeros(any_d.shape[1:3], dtype=bool)
    for short, d in diffs.items():
        thr = FAIL_FACTOR * np.asarray(ref_absmax[short])[:, None, None, None]
        bad |= (~np.isfinite(d) | (np.abs(d) > thr)).any(axis=(0, 3))
    keep = ~bad
    row, errs = {"failed_tokens": [list(map(int, i)) for i in np.argwhere(bad)], "tokens": int(bad.size)}, {}
    for short, d in diffs.items():
        kept = d[:, keep]                                      # [L, n_keep, W]
        errs[short] = kept.ravel()
        row[short] = ({**fit(errs[short]), "per_layer_std": [float(v) for v in kept.std(axis=(1, 2))]}
                      if keep.any() else None)
        row[short + "_ref_absmax"] = [float(v) for v in ref_absmax[short]]
    paper = simulate.TABLE2.get(protocol)   # the paper's Table 2 fit of this system, if it has one
    row["paper"] = {k: {"dist": paper[k][0], "scale": paper[k][1]} for k in ("up", "down")} if paper else None
    return row, errs


def measure(cfg: ErrorsConfig, protocol: str, spec_plain, ids, ref_taps, ref_out) -> tuple[dict, dict, dict]:
    job = TapJob(cfg.model, protocol, tuple(ids.shape), cfg.seed)
    client, server = parties.run_local(job, timeout_s=cfg.timeout_s, threads=cfg.threads, inputs={0: ids})
    diffs, ref_absmax = {}, {}
    for short, point in POINTS.items():
        layers = sorted(l for (p, l) in ref_taps if p == point)
        if not layers:
            raise UserError(f"{cfg.model}: the engine tapped no {point!r} values")
        diffs[short] = np.stack([client["taps"][(point, l)].astype(np.float64) - ref_taps[(point, l)] for l in layers])
        ref_absmax[short] = [float(np.abs(ref_taps[(point, l)]).max()) for l in layers]
    row, errs = summarize(protocol, diffs, ref_absmax)
    row = {"protocol": protocol, "wall_s": {"client": client["wall_s"], "server": server["wall_s"]},
           "fidelity": bench.fidelity(ref_out, client["output"], "lm_head.w" in spec_plain.weights), **row}
    return row, errs, diffs


def histogram(protocol: str, row: dict, errs: dict, path: pathlib.Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from scipy import stats

    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    for ax, short in zip(axes, POINTS):
        e = errs[short][np.isfinite(errs[short])]
        f = row[short]
        if f is None or e.size < 2:
            ax.set_title(f"{protocol}: W_{short} input: every token failed (diverged)", fontsize=9)
            continue
        lo, hi = np.percentile(e, [0.1, 99.9])
        span = max(hi - lo, 1e-12)
        lo, hi = lo - 0.1 * span, hi + 0.1 * span
        inside = (e >= lo) & (e <= hi)
        # density of all errors (those beyond the 0.1-99.9% window are counted, not drawn)
        ax.hist(e[inside], bins=200, range=(lo, hi), weights=np.full(int(inside.sum()), 1.0 / (e.size * (hi - lo) / 200)),
                color="0.75", label=f"measured ({100 * (1 - inside.mean()):.2f}% beyond the axis)")
        xs = np.linspace(lo, hi, 600)
        g, l = f["gauss"], f["laplace"]
        ax.plot(xs, stats.norm.pdf(xs, g["loc"], g["scale"]), label=f"Gauss sigma={g['scale']:.3g}")
        ax.plot(xs, stats.laplace.pdf(xs, l["loc"], l["scale"]), label=f"Laplace b={l['scale']:.3g}")
        paper = (row.get("paper") or {}).get(short)
        if paper:
            pdf = stats.norm.pdf(xs, 0, paper["scale"]) if paper["dist"] == "gauss" else stats.laplace.pdf(xs, 0, paper["scale"])
            ax.plot(xs, pdf, "k--", lw=0.8, label=f"paper {paper['dist']} {paper['scale']}")
        ax.set_yscale("log")
        ax.set_ylim(bottom=max(1e-4 / span, 1e-12))
        ax.set_title(f"{protocol}: error at W_{short} input (n={f['n']}, better: {f['dist']})", fontsize=9)
        ax.legend(fontsize=7)
    fig.tight_layout()
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(path)


def markdown(data: dict) -> str:
    cfg = data["config"]
    lines = ["# pmpc bench errors", "",
             f"{cfg['model']}, {cfg['windows']} WikiText-2 window(s) x {cfg['tokens']} tokens, real 2-party MPC "
             "with the tapped activations revealed (measurement mode). error = MPC - plaintext at the inputs of "
             "W_up and W_down, pooled over layers; ML fits; better = higher log-likelihood.", ""]
    body = []
    for p, row in data["rows"].items():
        for short in POINTS:
            f = row[short]
            if f is None:
                body.append([p, short, 0, "—", "—", "—", "diverged", "—", "—", "—", _top1(row)])
                continue
            paper = (row.get("paper") or {}).get(short)
            pcell = f"{'N(0, %.3f^2)' % paper['scale'] if paper['dist'] == 'gauss' else 'Lap(0, %.3f)' % paper['scale']}" if paper else "—"
            body.append([p, short, f["n"], f"{f['mean']:.3g}", f"{f['gauss']['scale']:.4g}", f"{f['laplace']['scale']:.4g}",
                         f["dist"], f"{f['gauss']['ks']:.3f}", f"{f['laplace']['ks']:.3f}", pcell, _top1(row)])
    lines += md.table(["protocol", "point", "n", "mean", "Gauss sigma", "Laplace b", "better", "KS Gauss", "KS Laplace",
                       "paper Table 2", "top-1"], body)
    lines += ["", f"Failed tokens (an error above {FAIL_FACTOR:g}x the layer's largest plaintext activation: "
              "a probabilistic-truncation failure or a diverged protocol; left out of the fits):", ""]
    for p, row in data["rows"].items():
        lines.append(f"- {p}: {len(row['failed_tokens'])} of {row['tokens']}"
                     + (f" (batch, position: {row['failed_tokens'][:8]})" if row["failed_tokens"] else ""))
    lines += ["", "Per-layer standard deviation of the error (layer 0 first):", ""]
    for p, row in data["rows"].items():
        for short in POINTS:
            if row[short] is not None:
                lines.append(f"- {p} {short}: " + ", ".join(f"{v:.3g}" for v in row[short]["per_layer_std"]))
    return "\n".join(lines) + "\n"


def _top1(row) -> str:
    t = row["fidelity"]["top1"]
    return "—" if t is None else f"{t:.3f}"


def write_presets(path: pathlib.Path, cfg: ErrorsConfig, rows: dict) -> None:
    """Merge the fits into the simulator's preset file (other protocols' entries are kept)."""
    data = {}
    if path.exists():
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise UserError(f"{path}: not valid JSON ({e.msg}); fix or remove it") from None
    meta = {"model": cfg.model, "tokens": cfg.tokens, "windows": cfg.windows, "offset": cfg.offset,
            "source": "pmpc bench errors (real 2-party MPC, CrypTen, 16-bit fixed point)",
            "created": time.strftime("%Y-%m-%dT%H:%M:%S")}
    for p, row in rows.items():
        if any(row[short] is None for short in POINTS):
            data.pop(p, None)  # diverged: no noise model describes it (and a stale one must go)
            continue
        entry = {}
        for short in POINTS:
            f = row[short]
            entry[short] = {"dist": f["dist"], "scale": f["scale"], "loc": f["loc"], "n": f["n"],
                            "gauss": f["gauss"], "laplace": f["laplace"], "per_layer_std": f["per_layer_std"]}
        entry["meta"] = meta
        data[p] = entry
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(data, indent=1))
    tmp.replace(path)


def _save(jpath: pathlib.Path, data: dict) -> None:
    tmp = jpath.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(bench.clean(data), indent=1))
    tmp.replace(jpath)
    (jpath.parent / "errors.md").write_text(markdown(data))


def run(cfg: ErrorsConfig, out, presets_path=None, progress: bool = True, fresh: bool = False,
        redo=(), refit: bool = False) -> dict:
    """Measure every protocol not yet in ``out/errors.json`` (``redo``: measure these again);
    ``refit``: recompute the fits, plots and presets of the stored rows from their saved errors."""
    from tqdm import tqdm

    cfg.validate()
    out = pathlib.Path(out)
    out.mkdir(parents=True, exist_ok=True)
    presets_path = pathlib.Path(presets_path) if presets_path else paths.MEASURED
    jpath = out / "errors.json"
    data = {"schema": SCHEMA, "config": dataclasses.asdict(cfg), "rows": {}, "presets_path": str(presets_path)}
    if jpath.exists() and not fresh:
        old = json.loads(jpath.read_text())
        mismatch = [k for k in ErrorsConfig.KEY if old["config"].get(k) != getattr(cfg, k)]
        if mismatch:
            raise UserError(f"{jpath} was made with another configuration ({', '.join(mismatch)}); "
                            "use another --out or --fresh")
        data["rows"] = {k: v for k, v in old.get("rows", {}).items() if k not in redo}
    todo = [p for p in cfg.protocols if p not in data["rows"]]
    spec, tok = models.load(cfg.model, seed=cfg.seed)
    if "layers.0.up.w" not in spec.weights:
        raise UserError(f"{cfg.model}: no MLP to tap")
    ids = bench.windows(tok, spec.vocab, cfg.windows, cfg.tokens, bench.wikitext_path(cfg.data or None), cfg.offset)
    data["inputs"] = {"shape": list(ids.shape), "ids": ids.tolist()}
    ref_taps, ref_out = plaintext_taps(spec, ids)

    if refit:
        ref_absmax = {short: [float(np.abs(ref_taps[(point, l)]).max())
                              for l in sorted(l for (p, l) in ref_taps if p == point)]
                      for short, point in POINTS.items()}
        for p, row in data["rows"].items():
            npz = np.load(out / f"errors_{p}.npz")
            diffs = {k: npz[k].astype(np.float64) for k in POINTS}
            if diffs["up"].ndim != 4:
                raise UserError(f"{out}/errors_{p}.npz predates per-layer storage; measure it again with --redo {p}")
            fitted, errs = summarize(p, diffs, ref_absmax)
            row.update(fitted)
            histogram(p, row, errs, out / f"errors_{p}.png")
            write_presets(presets_path, cfg, {p: row})
        _save(jpath, data)

    failed = []
    for p in tqdm(todo, disable=not progress, desc="errors", unit="protocol"):
        try:
            row, errs, diffs = measure(cfg, p, spec, ids, ref_taps, ref_out)
        except PartyError as e:  # keep going; rerun to retry
            failed.append(f"{p}: {e}")
            continue
        # every layer's error, [L, B, T, W]: --refit recomputes the fits from these
        np.savez_compressed(out / f"errors_{p}.npz", **{k: v.astype(np.float32) for k, v in diffs.items()})
        histogram(p, row, errs, out / f"errors_{p}.png")
        data["rows"][p] = row
        _save(jpath, data)
        write_presets(presets_path, cfg, {p: row})
    (out / "errors.md").write_text(markdown(data))
    if failed:
        raise UserError(f"{len(failed)} protocol(s) failed (rerun to retry them): " + "; ".join(failed))
    return data
