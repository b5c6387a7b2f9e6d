"""Activation space (paper Figure 5 / Observation III): do harmful prompts' activations drift into
the benign cluster under an approximation?

For each prompt (rendered with the chat template) the hidden state of the LAST token at the output
of decoder layer ``layer`` is taken, without and with the approximation (noise seeded per batch).
The four groups (harmful/harmless x clean/approximated) are embedded together by metric MDS
(sklearn, Euclidean, 2-D), so the clean and approximated points share one map.

Drift numbers. An approximation moves EVERY activation (a common-mode shift, plus scatter), so a
frame fitted on clean activations alone would call almost any perturbation "drift". Two families
are therefore reported:
  * within each condition (is the harmful cluster still apart from the benign one?):
    ``separability_clean`` / ``_approx`` — 5-fold cross-validated accuracy of a standardised
    logistic-regression probe harmful-vs-harmless trained and tested in that condition; and
    ``harmful_in_benign_clean`` / ``_approx`` — fraction of harmful points nearer the benign class
    centroid than the harmful one, centroids of the same condition;
  * ``relative_shift``: mean displacement of the harmful points minus that of the benign points,
    projected on the unit vector from the clean harmful to the clean benign centroid, divided by
    that centroid distance (0 = both classes moved alike; 1 = harmful moved the whole way over);
  * in the clean frame (includes the common-mode shift; kept for comparison):
    ``probe_transfer_acc`` (the clean probe on approximated points), ``harmful_to_benign_probe``,
    ``harmful_nearer_benign_clean_frame`` and ``flipped`` (nearer the clean harmful centroid when
    clean, the clean benign centroid when approximated), ``shift_toward_benign`` (absolute).
"""
from __future__ import annotations

import inspect
import warnings

import numpy as np
import torch

from eval.analysis import common
from pmpc import simulate
from pmpc.errors import UserError


def resolve_layers(text: str, n_layers: int) -> list[int]:
    """``"1,mid,last"`` / ``"0-3"`` -> sorted layer indices; first/mid/last name 0, n//2, n-1."""
    named = {"first": 0, "mid": n_layers // 2, "last": n_layers - 1}
    toks = [t.strip() for t in text.split(",") if t.strip()]
    out = {named[t] for t in toks if t in named}
    rest = [t for t in toks if t not in named]
    if rest:
        out |= set(simulate.parse_layers(",".join(rest)))
    if not out:
        raise UserError(f"no layers in {text!r}")
    return sorted(out)


def last_token_states(model, codec, texts, layers, approx=None, batch_size=8, seed=0, system="default", calib=None):
    """{layer: array [n, hidden]} of last-token hidden states at the output of each layer."""
    a = simulate.parse(approx)
    if calib is not None and a.needs_calibration:
        a = simulate.calibrate(model, a, calib)
    dev = next(model.parameters()).device
    out = {l: [] for l in layers}
    for b in range(0, len(texts), batch_size):
        enc = codec.batch([codec.render(t, system) for t in texts[b:b + batch_size]], dev)
        with torch.no_grad(), simulate.approximate(model, a, seed=seed + b):
            hs = model(**enc, output_hidden_states=True).hidden_states
        for l in layers:
            out[l].append(hs[l + 1][:, -1].float().cpu())  # hs[0] = embeddings; left padding: last col
    return {l: torch.cat(v).numpy() for l, v in out.items()}


def _probe():
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    return make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, C=1.0))


def _cv_acc(h, b) -> float | None:
    from sklearn.model_selection import cross_val_score

    folds = int(min(5, len(h), len(b)))
    if folds < 2:
        return None
    X, y = np.concatenate([h, b]), np.r_[np.ones(len(h)), np.zeros(len(b))]
    return float(cross_val_score(_probe(), X, y, cv=folds).mean())


def _nearer(P, toward, away):
    return np.linalg.norm(P - toward, axis=1) < np.linalg.norm(P - away, axis=1)


def drift(h_c, b_c, h_a, b_a, seed=0) -> dict:
    ch, cb = h_c.mean(0), b_c.mean(0)
    u = cb - ch
    dist = float(np.linalg.norm(u))
    e = u / dist if dist > 0 else u
    X, y = np.concatenate([h_c, b_c]), np.r_[np.ones(len(h_c)), np.zeros(len(b_c))]
    probe = _probe().fit(X, y)
    nb_c, nb_a = _nearer(h_c, cb, ch), _nearer(h_a, cb, ch)
    return {
        "separability_clean": _cv_acc(h_c, b_c), "separability_approx": _cv_acc(h_a, b_a),
        "harmful_in_benign_clean": float(nb_c.mean()),
        "harmful_in_benign_approx": float(_nearer(h_a, b_a.mean(0), h_a.mean(0)).mean()),
        "relative_shift": float((((h_a - h_c).mean(0) - (b_a - b_c).mean(0)) @ e) / dist) if dist > 0 else 0.0,
        "probe_transfer_acc": float((probe.predict(np.concatenate([h_a, b_a])) == y).mean()),
        "harmful_to_benign_probe": float((probe.predict(h_a) == 0).mean()),
        "harmful_nearer_benign_clean_frame": float(nb_a.mean()), "flipped": float((~nb_c & nb_a).mean()),
        "shift_toward_benign": float(((h_a - h_c).mean(0) @ e) / dist) if dist > 0 else 0.0,
        "centroid_distance": dist,
        "mean_displacement": float(np.linalg.norm(np.concatenate([h_a - h_c, b_a - b_c]), axis=1).mean()),
    }


def mds_analysis(sess: common.Session, harmful: list, harmless: list, approx: str, layers: list[int],
                 names=("harmful", "harmless")) -> dict:
    n_layers = sess.n_layers
    bad = [l for l in layers if not 0 <= l < n_layers]
    if bad:
        raise UserError(f"layer {bad[0]} out of range: the model has {n_layers} layers (0-{n_layers - 1})")
    if simulate.parse(approx).kind == "none":
        raise UserError("the MDS analysis compares clean with approximated activations: give --approx")
    kw = dict(batch_size=sess.s.batch_size, seed=sess.s.seed, system=sess.s.gen.system)
    cal = sess.calib() if simulate.parse(approx).needs_calibration else None
    th, tb = [p.text for p in harmful], [p.text for p in harmless]
    clean_h = last_token_states(sess.model, sess.codec, th, layers, **kw)
    clean_b = last_token_states(sess.model, sess.codec, tb, layers, **kw)
    appr_h = last_token_states(sess.model, sess.codec, th, layers, approx, calib=cal, **kw)
    appr_b = last_token_states(sess.model, sess.codec, tb, layers, approx, calib=cal, **kw)
    per_layer, emb = {}, {}
    for l in layers:
        per_layer[l] = drift(clean_h[l], clean_b[l], appr_h[l], appr_b[l], sess.s.seed)
        X = np.concatenate([clean_h[l], clean_b[l], appr_h[l], appr_b[l]]).astype(np.float64)
        mds = _mds(sess.s.seed)
        with warnings.catch_warnings():  # sklearn warns when n_points == n_features (looks square)
            warnings.filterwarnings("ignore", message="The provided input is a square matrix")
            emb[l] = mds.fit_transform(X)
        per_layer[l]["mds_stress"] = float(mds.stress_)
    result = {"analysis": "mds", "settings": sess.s.to_dict(), "approx": str(simulate.parse(approx)),
              "sets": list(names), "n": [len(th), len(tb)], "layers": layers, "drift": per_layer,
              "embedding": {l: emb[l].round(4).tolist() for l in layers}}
    return common.write_outputs(sess.out, "mds", result, _md(result), _fig(result, emb, len(th), len(tb)))


def _mds(seed):
    """Metric MDS, Euclidean, across sklearn versions (1.8 renamed ``dissimilarity`` to ``metric``)."""
    from sklearn.manifold import MDS

    params = inspect.signature(MDS).parameters
    kw = dict(n_components=2, random_state=seed, n_init=1, max_iter=300)
    if "init" in params:
        kw["init"] = "random"
    if "metric_mds" in params:
        kw.update(metric_mds=True, metric="euclidean")
    else:
        kw.update(metric=True, dissimilarity="euclidean")
    return MDS(**kw)


def _md(r) -> str:
    md = (f"## Activation space — {r['settings']['model']}, last-token states, {r['sets'][0]} (n={r['n'][0]}) vs "
          f"{r['sets'][1]} (n={r['n'][1]}), clean vs `{r['approx']}`\n\n")
    rows = []
    for l in r["layers"]:
        d = r["drift"][l]
        f2 = lambda v: "n/a" if v is None else f"{v:.2f}"  # noqa: E731
        rows.append([l, f"{f2(d['separability_clean'])} -> {f2(d['separability_approx'])}",
                     f"{100 * d['harmful_in_benign_clean']:.0f} -> {100 * d['harmful_in_benign_approx']:.0f}",
                     f"{d['relative_shift']:+.3f}", f"{d['probe_transfer_acc']:.2f}", f"{100 * d['flipped']:.0f}",
                     f"{d['mean_displacement'] / max(d['centroid_distance'], 1e-12):.2f}"])
    md += common.md_table(["layer", "separability (probe CV acc) clean -> approx", "harmful in benign cluster % clean -> approx",
                           "relative shift toward benign", "clean probe on approx (acc)", "flipped in clean frame %",
                           "displacement / centroid distance"], rows)
    md += ("\n\nWithin-condition numbers (first three columns) discount the common shift an approximation gives "
           "every activation; the clean-frame numbers include it.\n")
    return md


def _fig(r, emb, nh, nb):
    plt = common.plt()
    L = r["layers"]
    fig, axes = plt.subplots(1, len(L), figsize=(4.2 * len(L), 4), squeeze=False)
    for ax, l in zip(axes[0], L):
        e = emb[l]
        g = np.split(e, np.cumsum([nh, nb, nh]))
        ax.scatter(*g[0].T, c="tab:red", s=14, label=f"{r['sets'][0]} clean")
        ax.scatter(*g[1].T, c="tab:blue", s=14, label=f"{r['sets'][1]} clean")
        ax.scatter(*g[2].T, facecolors="none", edgecolors="tab:red", s=22, marker="^", label=f"{r['sets'][0]} approx")
        ax.scatter(*g[3].T, facecolors="none", edgecolors="tab:blue", s=22, marker="^", label=f"{r['sets'][1]} approx")
        d = r["drift"][l]
        sc, sa = d["separability_clean"], d["separability_approx"]
        sep = f"{sc:.2f} -> {sa:.2f}" if sc is not None and sa is not None else "n/a"
        ax.set_title(f"layer {l}: separability {sep}, rel. shift {d['relative_shift']:+.2f}", fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    axes[0][0].legend(fontsize=7)
    fig.suptitle(f"{r['settings']['model']}: MDS of last-token activations, clean vs {r['approx']}", fontsize=10)
    return fig
