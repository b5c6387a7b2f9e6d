"""Shared plumbing of the analyses: one loaded model, cached ASR / PPL measurements, outputs.

Every measurement is cached under the analysis' output directory, so an interrupted sweep resumes
where it stopped: generations stream to ``gen/<tag>.jsonl`` (resumable per prompt) and perplexities
go to ``ppl/<tag>.json`` (reused when the configuration matches).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import pathlib
import re

import torch

from eval import asr
from eval import judges
from eval import ppl as PPL
from eval import prompts
from eval.generate import GenConfig, config_hash
from pmpc import markdown
from pmpc import simulate


def tag_of(approx) -> str:
    s = str(simulate.parse(approx))
    short = re.sub(r"[^A-Za-z0-9.]+", "_", s).strip("_")[:60] or "clean"
    return "clean" if s == "none" else f"{short}-{hashlib.sha1(s.encode()).hexdigest()[:6]}"


@dataclasses.dataclass
class Settings:
    model: str = "smollm2"
    device: str = "cpu"
    dtype: str = "float32"
    data: str | None = None
    judge: str = "minilm"
    judge_template: str | None = None
    batch_size: int = 8
    seed: int = 0
    gen: GenConfig = dataclasses.field(default_factory=GenConfig)
    window: int = 1024
    max_windows: int | None = 8
    ppl_batch: int = 1
    progress: bool = True

    def to_dict(self):
        d = dataclasses.asdict(self)
        d["gen"] = self.gen.to_dict()
        return d


class Session:
    """A model loaded once, with judges, and cached measurements under ``out``."""

    def __init__(self, s: Settings, out, model=None, codec=None):
        self.s = s
        self.out = pathlib.Path(out)
        self.out.mkdir(parents=True, exist_ok=True)
        if model is None:
            model, codec = asr.load_model(s.model, s.device, s.dtype)
        self.model, self.codec = model, codec
        # the keyword rule's verdicts are free: kept alongside for comparison with the paper
        self.judges = judges.with_keyword(judges.get(s.judge, data=s.data, device=s.device, template=s.judge_template), s.data)
        self._ids = None
        self._calib = None

    @property
    def n_layers(self) -> int:
        return len(simulate.find_arch(self.model).layers)

    def calib(self):
        if self._calib is None:
            self._calib = asr.default_calibration(self.codec, device=self.s.device)
        return self._calib

    def asr(self, approx, prompts: list, set_name: str) -> dict:
        """Summary of one set under one approximation (cached/resumed)."""
        tag = tag_of(approx)
        a = simulate.parse(approx)
        return asr.evaluate(self.model, self.codec, prompts, self.judges, self.out / "gen" / set_name, approx=a,
                            gen=self.s.gen, batch_size=self.s.batch_size, seed=self.s.seed,
                            calib=self.calib() if a.needs_calibration else None,
                            config={"model": self.s.model, "prompts": set_name}, progress=self.s.progress, tag=tag)

    def headline(self, summary: dict, what: str = "asr") -> dict:
        """The headline judge's rate; refusals fall back to the GCG keywords for a classifier
        judge (which tells no refusals)."""
        r = summary["results"][self.s.judge][what]
        if r is None and what == "refusal" and "gcg" in summary["results"]:
            r = summary["results"]["gcg"][what]
        return r or {}

    def ppl(self, approx) -> dict:
        tag = tag_of(approx)
        cfg = {"model": self.s.model, "approx": str(simulate.parse(approx)), "window": self.s.window,
               "max_windows": self.s.max_windows, "seed": self.s.seed, "dtype": self.s.dtype}
        path = self.out / "ppl" / f"{tag}.json"
        if path.exists():
            old = json.loads(path.read_text())
            if old.get("config_hash") == config_hash(cfg):
                return old
        if self._ids is None:
            self._ids = PPL.tokenize(self.codec, PPL.wikitext_text(PPL.wikitext_path(self.s.data)))
        a = simulate.parse(approx)
        res = PPL.perplexity(self.model, self._ids, window=self.s.window, max_windows=self.s.max_windows,
                             approx=a, seed=self.s.seed, batch_size=self.s.ppl_batch, progress=self.s.progress,
                             calib=self.calib() if a.needs_calibration else None)
        res["config_hash"] = config_hash(cfg)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(res, indent=1))
        return res


def activation_scale(model, codec, points, device="cpu", n: int = 16) -> dict:
    """Per point: RMS and a robust std (1.4826 x median |x|) of the activation, layers pooled, on
    built-in harmless prompts. The robust std is the unit of the noise grid: models such as
    SmolLM2 carry a few huge outliers at W_down's input that inflate the RMS tenfold while the
    bulk of the entries, which the noise perturbs, stays small."""
    arch = simulate.find_arch(model)
    acc = {p: [0.0, 0, []] for p in points}
    hs = []
    gen = torch.Generator().manual_seed(0)
    for p in points:
        for site, mod, how in simulate.hook_sites(arch, p, None):
            def f(x, p=p):
                x = x.detach().float()
                acc[p][0] += float((x ** 2).sum())
                acc[p][1] += x.numel()
                a = x.abs().flatten().cpu()
                acc[p][2].append(a[torch.randint(a.numel(), (min(a.numel(), 4096),), generator=gen)])
            if how == "out":
                hs.append(mod.register_forward_hook(lambda m, i, o, f=f: f(o)))
            else:
                hs.append(mod.register_forward_pre_hook(lambda m, i, f=f: f(i[0])))
    try:
        with torch.no_grad():
            for b in asr.default_calibration(codec, n=n, device=device):
                model(b)
    finally:
        for h in hs:
            h.remove()
    return {p: {"rms": (acc[p][0] / max(acc[p][1], 1)) ** 0.5,
                "robust_std": 1.4826 * float(torch.cat(acc[p][2]).median())} for p in points}


def write_outputs(out: pathlib.Path, name: str, result: dict, md: str, fig=None) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": str(out / f"{name}.json"), "md": str(out / f"{name}.md")}
    if fig is not None:
        fig.savefig(out / f"{name}.png", dpi=120, bbox_inches="tight")
        paths["png"] = str(out / f"{name}.png")
        import matplotlib.pyplot as plt

        plt.close(fig)
    result = dict(result, outputs=paths)
    (out / f"{name}.json").write_text(json.dumps(result, indent=1, default=str))
    (out / f"{name}.md").write_text(md + (f"\n![{name}]({name}.png)\n" if fig is not None else ""))
    return result


def pct(r: dict | None) -> str:
    return "n/a" if not r or r.get("rate") is None else f"{100 * r['rate']:.1f}"


def ci(r: dict | None) -> str:
    return "" if not r or r.get("rate") is None else f"[{100 * r['lo']:.0f}, {100 * r['hi']:.0f}]"


def md_table(header: list[str], rows: list[list]) -> str:
    return "\n".join(markdown.table(header, rows))


def plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as pyplot

    return pyplot
