"""Choose QuadA's MVA and tau with the evaluation harness's own sweeps (eval.analysis.sweeps).

1. MVA: ``noise_sweep`` of Gaussian noise at one point (``up``: the W_up/W_gate input, the paper's
   eps^up) in ALL layers on a harmful selection set; the MVA is the scale with the highest ASR among
   those whose WikiText-2 PPL stays within ``ppl_bound`` x clean (noise that wrecks the text is not
   a usable approximation, and the GCG keyword rule would count gibberish as "jailbroken"); scale 0
   (clean) is not a candidate.
2. tau: ``layer_sweep`` of the MVA in windows of ``window`` layers; the sensitive layers are the
   windows whose ASR gain is >= ``frac`` x the largest gain, and tau = last sensitive layer + 1 (the
   first tau layers get the training noise). If no window raises the ASR, tau falls back to the
   first window (and the result says so).

The selection set must be neither a training set nor an evaluation set (eval/splits.py owns the
roles): ``harmful-val`` (harmful_prompts/val.json less its 4 near-duplicates of HarmBench test
prompts: 35) by default; ``with_dev`` pools it with harmful-test's dev part (100 prompts that no
scored set holds, never trained on). 39 prompts alone
cannot rank layer windows: one prompt is 2.6 points, and the committed smollm2-quada's tau = 15
rested on windows that differed by one or two prompts (results/h200-quada/A1/select.json).
"""
from __future__ import annotations

import json
import pathlib

from eval import splits
from eval.analysis import common
from eval.analysis import sweeps
from eval.generate import GenConfig
from eval.prompts import load
from pmpc.align.adapters import read_adapter
from pmpc.errors import UserError
from pmpc.models import load_hf
from pmpc.models.chat import Codec


def load_model(model: str, adapter: str | None = None, device: str = "cpu"):
    """(model, tokenizer): ``model`` with ``adapter`` (a PEFT LoRA dir, checked first) merged, on ``device``."""
    if adapter:
        read_adapter(adapter)
    return load_hf(model, device=device, adapter=adapter)


def run(model: str = "smollm2-safe", adapter: str | None = None, prompts: str = "harmful-val", point: str = "up",
        scales="auto", ppl_bound: float = 2.0, window: int = 3, frac: float = 0.5, max_new_tokens: int = 48,
        batch_size: int = 32, limit: int | None = None, device: str = "cpu", out="runs/align/select",
        max_windows: int = 8, window_tokens: int = 1024, judge: str = "minilm", seed: int = 0, loaded=None,
        progress: bool = True, with_dev: bool = False) -> dict:
    """Run both sweeps; returns {mva, mva_spec, tau, ...} and writes ``<out>/select.json``."""
    if loaded is None:
        m, tok = load_model(model, adapter, device)
    else:
        m, tok = loaded
    s = common.Settings(model=model + (f"+{adapter}" if adapter else ""), device=device, judge=judge, batch_size=batch_size,
                        seed=seed, gen=GenConfig(system="default", max_new_tokens=max_new_tokens), max_windows=max_windows,
                        window=window_tokens, progress=progress)
    out = pathlib.Path(out)
    sess = common.Session(s, out, model=m, codec=Codec(tok, m))

    # a selection set loses its near-duplicates of scored prompts (eval.splits)
    ps = splits.selection_set(prompts, seed)[:limit] if prompts in splits.SELECTION else load(prompts, limit=limit)
    if with_dev:
        dev = splits.harmful_test_split(seed)[1]
        ps += dev[:limit] if limit else dev
        prompts += "+harmful-dev"
    noise = sweeps.noise_sweep(sess, ps, prompts, points=(point,), dist="gauss", scales=scales, ppl_bound=ppl_bound)
    # the harness' MVA rule (highest ASR within the PPL bound, ties to the smaller scale), over
    # the NONZERO scales: where noise never raises the ASR, the rule would otherwise return 0
    ok = [r for r in noise["rows"] if r["point"] == point and r["scale"] > 0
          and (noise["clean_ppl"] is None or r["ppl"] <= ppl_bound * noise["clean_ppl"])]
    if not ok:
        raise UserError(f"no nonzero noise scale at {point} kept PPL within {ppl_bound}x clean: no MVA")
    best = max(ok, key=lambda r: (r["asr"]["rate"], -r["scale"]))
    mva = {"scale": best["scale"], "approx": best["approx"], "asr": best["asr"], "ppl": best["ppl"]}
    lay = sweeps.layer_sweep(sess, ps, prompts, mva["approx"], window=window, frac=frac)
    tau, fallback = lay["tau"], False
    if tau is None:
        tau, fallback = window, True
    res = {"mva": mva["scale"], "mva_spec": mva["approx"], "point": point, "tau": tau, "tau_fallback": fallback,
           "sensitive_layers": lay["sensitive_layers"], "ranking": lay["ranking"],
           "asr_clean": noise["clean_asr"], "asr_mva_all": mva["asr"], "ppl_clean": noise["clean_ppl"],
           "ppl_mva": mva["ppl"], "ppl_bound": ppl_bound, "frac": frac, "window": window, "prompts": prompts,
           "n_prompts": len(ps), "judge": judge,
           "noise_rows": [{k: r[k] for k in ("scale", "rel_scale", "asr", "ppl")} for r in noise["rows"]],
           "layer_rows": [{k: r[k] for k in ("label", "asr", "gain")} for r in lay["rows"]],
           "outputs": {"noise": noise["outputs"], "layers": lay["outputs"]}}
    out.mkdir(parents=True, exist_ok=True)
    (out / "select.json").write_text(json.dumps(res, indent=1, default=str))
    return res
