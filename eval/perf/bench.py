"""``pmpc bench``: models x protocols under real 2-party MPC, side by side on the SAME inputs.

For every (model, protocol) row: one local 2-party session runs a prefill of the same WikiText-2
windows; each party reports its wall time and its per-scope rounds/bytes (``ops.tracker``); the
client's revealed logits are compared with the plaintext engine on the same tokens (top-1
agreement and mean KL of the next-token distribution at every position; for encoders, the
relative error of the final hidden states). Cost is modelled on links (``pmpc.mpc.cost``):
    t = t_wall + rounds * RTT + bytes_sent * 8 / bandwidth,
with t_wall the slower party's loopback wall time. Speedups are ``exact``'s cost over the row's.

Results stream to ``OUT/bench.json`` (full configuration + one entry per row, rewritten
atomically after every row), ``OUT/bench.md`` and ``OUT/bench.png``. A rerun with the same
configuration skips the rows already there (resume); more models/protocols extend the file.

Models: any name :func:`pmpc.models.load_hf` accepts (tiny-random-<arch>, smollm2, an HF
directory, a .gguf), ``stories260K`` (``$PMPC_STORIES`` or ``../shared/models/stories260K``), and
full-size shapes with random weights built from transformers' own config defaults without any
download: ``bert-base-random`` (BertConfig(): 12 x 768, 110M) and ``gpt2-random`` (GPT2Config():
GPT-2 124M). MPC cost does not depend on weight values, so these give paper-scale costs; their
fidelity figures are against the same random model in plaintext.
"""
from __future__ import annotations

# crypten (through pmpc.mpc.crypten_compat / crypten_ops) is imported inside the functions that run
# in a party: the launcher, the CLI and a machine without crypten import this module without it.

import dataclasses
import hashlib
import json
import math
import os
import pathlib
import resource
import time

import numpy as np
import torch

from pmpc import markdown as md
from pmpc import models
from pmpc.engine import CLIENT, Engine, compare_logits
from pmpc.errors import UserError
from pmpc.paths import wikitext_path  # noqa: F401  (bench.wikitext_path: the windows' file)
from pmpc.mpc import cost, parties, primitives
from pmpc.mpc.parties import PartyError
from pmpc.ops import TorchOps
import protocols

DEFAULT_PROTOCOLS = tuple(n for n in protocols.names() if n != "plain")   # every MPC protocol, registry order
DEFAULT_MODELS = ("tiny-random-llama", "stories260K")
SCHEMA = "pmpc.bench/1"


# -- inputs ------------------------------------------------------------------------------------
def windows(tok, vocab: int, n_windows: int, tokens: int, path: pathlib.Path, offset: int = 0) -> torch.Tensor:
    """``n_windows`` consecutive non-overlapping windows of ``tokens`` ids from WikiText-2.
    Models without a tokenizer (random weights) get the text's UTF-8 bytes modulo the vocabulary."""
    need = offset + n_windows * tokens
    text = path.read_text(encoding="utf-8")
    chars = max(8 * need, 4096)
    while True:
        chunk = text[:chars]
        if tok is not None:
            ids = tok(chunk, add_special_tokens=False)["input_ids"]
        else:
            ids = [b % vocab for b in chunk.encode("utf-8")]
        if len(ids) >= need or chars >= len(text):
            break
        chars *= 2
    if len(ids) < need:
        raise UserError(f"{path} holds only {len(ids)} tokens; need {need}")
    ids = torch.tensor(ids[offset:need], dtype=torch.long).reshape(n_windows, tokens)
    if ids.max() >= vocab:
        raise UserError(f"tokenizer ids exceed the model's vocabulary ({vocab})")
    return ids


# -- configuration --------------------------------------------------------------------------------
def _truncation_mode() -> str:
    from pmpc.mpc.crypten_compat import truncation_mode

    return truncation_mode()


def _comparison_mode() -> str:
    from pmpc.mpc.gates import comparison_mode

    return comparison_mode()


def _dcf_max() -> int:
    from pmpc.mpc.gates import DCF_MAX_LEVELS

    return DCF_MAX_LEVELS


@dataclasses.dataclass
class BenchConfig:
    models: list
    protocols: list
    tokens: int = 16
    windows: int = 1
    offset: int = 0
    links: list = dataclasses.field(default_factory=lambda: ["lan", "wan"])
    weights: str = "public"
    dealer: str = "local"
    threads: int = 1
    seed: int = 0
    timeout_s: float = 600.0
    data: str = ""
    truncation: str = dataclasses.field(default_factory=_truncation_mode)  # $PMPC_TRUNCATION
    comparison: str = dataclasses.field(default_factory=_comparison_mode)  # $PMPC_COMPARISON

    # what must match for a resumed run to compare rows fairly
    KEY = ("tokens", "windows", "offset", "weights", "dealer", "seed", "threads", "truncation", "comparison")

    def validate(self) -> None:
        if not self.models:
            raise UserError("no models given")
        if not self.protocols:
            raise UserError("no protocols given")
        for p in self.protocols:
            protocols.get(p)
            if p == "plain":
                raise UserError("plain is the plaintext reference every row is compared with, not an MPC protocol")
        if self.tokens < 1 or self.windows < 1:
            raise UserError("--tokens and --windows must be >= 1")
        if self.weights not in ("public", "private"):
            raise UserError(f"--weights must be public or private, not {self.weights!r}")
        for l in self.links:
            try:
                cost.parse_link(l)
            except ValueError as e:
                raise UserError(str(e)) from None

    def key(self) -> dict:
        return {k: getattr(self, k) for k in self.KEY}


def links_of(cfg: BenchConfig) -> dict:
    out = {}
    for spec in cfg.links:
        l = cost.parse_link(spec)
        out[spec] = {"bandwidth_bps": l.bandwidth_bps, "rtt_s": l.rtt_s}
    return out


# -- the party job ----------------------------------------------------------------------------------
@dataclasses.dataclass
class BenchJob:
    """One secure prefill of ``shape`` token ids; the ids travel to the client only."""

    model: str
    protocol: str
    shape: tuple
    weights: str = "public"
    seed: int = 0

    def make_ops(self):
        """The secure backend the row runs on (a subclass may measure another engine's)."""
        from pmpc.mpc.crypten_ops import CrypTenOps

        return CrypTenOps(cost.Tracker(cost.crypten_stats))

    def __call__(self, rank, world_size, ids=None):
        t0 = time.perf_counter()
        spec, _ = models.load(self.model, seed=self.seed)
        ops = self.make_ops()
        eng = Engine(spec, self.protocol, ops, weights=self.weights)
        setup = {"seconds": time.perf_counter() - t0, **ops.tracker.total().as_dict()}
        ops.tracker.reset()
        primitives.PRIMITIVES.reset()
        if rank != CLIENT:
            ids = torch.zeros(self.shape, dtype=torch.long)  # the server never sees the tokens
        t1, dealt = time.perf_counter(), _dealer_bytes()
        out = eng.prefill(ids, use_cache=False)
        with ops.scope("reveal"):
            out = ops.reveal(out, dst=CLIENT)
        wall = time.perf_counter() - t1
        res = {"rank": rank, "wall_s": wall, "setup": setup, "scopes": ops.tracker.snapshot(),
               "dealer_bytes": _dealer_bytes() - dealt,
               "total": ops.tracker.total().as_dict(), "primitives": primitives.PRIMITIVES.snapshot(),
               "n_layers": spec.n_layers,
               "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
        if rank == CLIENT:
            res["output"] = out.double().numpy()
        return res


def _dealer_bytes() -> int:
    """This party's dealt traffic so far (the dealer's answers, FSS key words): it travels beside
    the rounds and is counted apart from the rounds and bytes of the computation."""
    from pmpc.mpc.crypten_compat import comm

    return int(comm.get().get_communication_stats().get("dealer_bytes", 0))


# -- fidelity -----------------------------------------------------------------------------------------
def margins(ref: torch.Tensor) -> torch.Tensor:
    """The plaintext model's own top-1 minus top-2 logit at every position: a disagreement where it
    is a near-tie says little about an approximation, one where it is wide says much."""
    top2 = ref.topk(2, dim=-1).values
    return top2[..., 0] - top2[..., 1]


def misses(ref: torch.Tensor, got: torch.Tensor) -> list[dict]:
    """Every (window, position) whose top-1 differs from the plaintext model's, with its margin."""
    bad = (ref.argmax(-1) != got.argmax(-1)).nonzero().tolist()
    m = margins(ref)
    return [{"window": w, "position": t, "ref_top1": int(ref[w, t].argmax()), "got_top1": int(got[w, t].argmax()),
             "ref_margin": float(m[w, t])} for w, t in bad]


def fidelity(ref: np.ndarray, got: np.ndarray, is_lm: bool) -> dict:
    ref_t, got_t = torch.as_tensor(ref, dtype=torch.float64), torch.as_tensor(got, dtype=torch.float64)
    rel = float((got_t - ref_t).norm() / ref_t.norm())
    out = {"rel_err": rel, "max_abs_err": float((got_t - ref_t).abs().max()), "positions": int(ref_t[..., 0].numel())}
    if is_lm:
        c = compare_logits(ref_t, got_t)
        out["top1"], out["mean_kl"] = c["top1"], c["mean_kl"]
        out["misses"] = misses(ref_t, got_t)
    else:
        out["top1"] = out["mean_kl"] = None
        cos = torch.nn.functional.cosine_similarity(ref_t, got_t, dim=-1)
        out["mean_cosine"] = float(cos.mean())
    return clean(out)


def clean(obj):
    """Non-finite floats -> None, so the JSON stays standard (a garbage forward is data too)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [clean(v) for v in obj]
    return obj


def _modelled(total: dict, wall: float, links: dict) -> dict:
    return {name: cost.Link(name, l["bandwidth_bps"], l["rtt_s"]).time(total["rounds"], total["bytes"], wall)
            for name, l in links.items()}


def make_row(model: str, protocol: str, parts: list, ref: np.ndarray, is_lm: bool, links: dict) -> dict:
    client, server = parts
    total = client["total"]
    wall = max(client["wall_s"], server["wall_s"])
    return {
        "model": model, "protocol": protocol,
        "rounds": total["rounds"], "bytes": total["bytes"], "dealer_bytes": client.get("dealer_bytes"),
        "wall_s": {"client": client["wall_s"], "server": server["wall_s"]},
        "modelled_s": _modelled(total, wall, links),
        "scopes": client["scopes"],
        "n_layers": client.get("n_layers"),
        "primitives": client.get("primitives", {}),
        "server_scopes_seconds": {k: v["seconds"] for k, v in server["scopes"].items()},
        "setup": {"client": client["setup"], "server": server["setup"]},
        "peak_rss_mb": {"client": client["peak_rss_mb"], "server": server["peak_rss_mb"]},
        "fidelity": fidelity(ref, client["output"], is_lm),
    }


def add_speedups(rows: list) -> None:
    """speedup_vs_exact = exact's cost / this row's cost, per model (None without an exact row)."""
    exact = {r["model"]: r for r in rows if r["protocol"] == "exact"}
    for r in rows:
        e = exact.get(r["model"])
        if e is None:
            r["speedup_vs_exact"] = None
            continue
        sp = {"bytes": e["bytes"] / max(r["bytes"], 1), "rounds": e["rounds"] / max(r["rounds"], 1)}
        for k, v in r["modelled_s"].items():
            if k in e["modelled_s"]:
                sp[k] = e["modelled_s"][k] / v
        r["speedup_vs_exact"] = sp


# -- output -----------------------------------------------------------------------------------------
class Results:
    """The streamed result file: load (resume), add rows, write JSON/Markdown/PNG atomically."""

    def __init__(self, out: pathlib.Path, cfg: BenchConfig):
        self.out, self.cfg = out, cfg
        self.json_path = out / "bench.json"
        self.data = {"schema": SCHEMA, "config": dataclasses.asdict(cfg), "links": links_of(cfg),
                     "inputs": {}, "plaintext": {}, "rows": []}
        if self.json_path.exists():
            try:
                old = json.loads(self.json_path.read_text())
            except json.JSONDecodeError as e:
                raise UserError(f"{self.json_path}: not valid JSON ({e.msg}); remove it or choose another --out") from None
            if old.get("schema") != SCHEMA:
                raise UserError(f"{self.json_path}: not a pmpc bench file (schema {old.get('schema')!r})")
            mismatch = [k for k in BenchConfig.KEY if old["config"].get(k) != getattr(cfg, k)]
            if mismatch:
                diffs = ", ".join(f"{k} {old['config'].get(k)} vs {getattr(cfg, k)}" for k in mismatch)
                raise UserError(f"{self.json_path} was made with another configuration ({diffs}); "
                                "use another --out or --fresh")
            self.data["inputs"], self.data["plaintext"] = old.get("inputs", {}), old.get("plaintext", {})
            self.data["rows"] = old.get("rows", [])
            merged = dict(old["config"])
            merged["models"] = list(dict.fromkeys(old["config"]["models"] + cfg.models))
            merged["protocols"] = list(dict.fromkeys(old["config"]["protocols"] + cfg.protocols))
            merged["links"] = list(dict.fromkeys(old["config"]["links"] + cfg.links))
            self.data["config"] = merged
            self.data["links"] = {**old.get("links", {}), **links_of(cfg)}
            for r in self.data["rows"]:  # new custom links: model them for old rows too
                wall = max(r["wall_s"].values())
                r["modelled_s"] = _modelled({"rounds": r["rounds"], "bytes": r["bytes"]}, wall, self.data["links"])

    def done(self, model: str, protocol: str) -> bool:
        return any(r["model"] == model and r["protocol"] == protocol for r in self.data["rows"])

    def check_inputs(self, model: str, ids: torch.Tensor) -> None:
        digest = hashlib.sha256(ids.numpy().tobytes()).hexdigest()[:16]
        old = self.data["inputs"].get(model)
        if old and old["digest"] != digest:
            raise UserError(f"{model}: the inputs differ from the ones in {self.json_path} "
                            "(tokenizer or data changed); use another --out or --fresh")
        self.data["inputs"][model] = {"digest": digest, "shape": list(ids.shape), "ids": ids.tolist()}

    def add(self, row: dict) -> None:
        self.data["rows"] = [r for r in self.data["rows"] if (r["model"], r["protocol"]) != (row["model"], row["protocol"])]
        self.data["rows"].append(row)
        self.write()

    def write(self) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        add_speedups(self.data["rows"])
        tmp = self.json_path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(clean(self.data), indent=1, default=float))
        tmp.replace(self.json_path)
        (self.out / "bench.md").write_text(markdown(self.data))
        plot(self.data, self.out / "bench.png")


def _fmt(v, spec=".3g"):
    return "—" if v is None else format(v, spec)


def markdown(data: dict) -> str:
    links = list(data["links"])
    cfg = data["config"]
    lines = [
        "# pmpc bench", "",
        f"{cfg['windows']} WikiText-2 window(s) x {cfg['tokens']} tokens per model, the same for every protocol; "
        f"prefill, weights {cfg['weights']}, dealer {cfg['dealer']}, {cfg['threads']} thread(s) per party, loopback, "
        f"{cfg.get('truncation', 'local')} truncation, {cfg.get('comparison', 'bitwise')} comparisons "
        f"(auto: one-round DCF gates for calls of at most {_dcf_max()} element x tree levels, adder circuits above).",
        "Links: " + ", ".join(f"{n} = {l['bandwidth_bps'] / 1e6:g} Mbit/s, RTT {l['rtt_s'] * 1e3:g} ms"
                              for n, l in data["links"].items())
        + "; modelled time = slower party's wall time + rounds x RTT + bytes sent x 8 / bandwidth. "
        "MB and rounds: between the computing parties; dealt MB: the client's dealt traffic (the dealer's "
        "answers, FSS key words), which travels beside the rounds.",
        "Speedup = exact's cost / the row's cost (same model, same inputs). Fidelity: against the plaintext "
        "engine on the same tokens (top-1 agreement and mean KL of next-token distributions at every position; "
        "encoders: relative error of the output).", "",
    ]
    head = (["model", "protocol", "MB", "dealt MB", "rounds", "wall s (client/server)", *(f"{l} s" for l in links), "x bytes",
             "x rounds", *(f"x {l}" for l in links), "top-1", "mean KL", "rel err"])
    body = []
    for r in data["rows"]:
        sp = r.get("speedup_vs_exact") or {}
        f = r["fidelity"]
        dealt = r.get("dealer_bytes")
        body.append([r["model"], r["protocol"], f"{r['bytes'] / 1e6:.1f}", "—" if dealt is None else f"{dealt / 1e6:.1f}",
                     r["rounds"],
                     f"{r['wall_s']['client']:.2f}/{r['wall_s']['server']:.2f}",
                     *(f"{r['modelled_s'].get(l, float('nan')):.2f}" for l in links),
                     _fmt(sp.get("bytes"), ".2f"), _fmt(sp.get("rounds"), ".2f"), *(_fmt(sp.get(l), ".2f") for l in links),
                     _fmt(f["top1"], ".3f"), _fmt(f["mean_kl"], ".2e"), _fmt(f["rel_err"], ".2e")])
    lines += md.table(head, body)
    # per-function breakdown, one table per model
    for model in dict.fromkeys(r["model"] for r in data["rows"]):
        rows = [r for r in data["rows"] if r["model"] == model]
        scopes = list(dict.fromkeys(s for r in rows for s in r["scopes"]))
        cell = lambda c: "—" if c is None else f"{c['bytes'] / 1e6:.2f} / {c['rounds']}"  # noqa: E731
        lines += ["", f"## {model}: MB / rounds by function (client)", ""]
        lines += md.table(["scope", *(r["protocol"] for r in rows)],
                          [[s, *(cell(r["scopes"].get(s)) for r in rows)] for s in scopes])
        lines += budget_tables(model, rows)
        pt = data["plaintext"].get(model)
        if pt:
            lines.append(f"\nplaintext engine (float64, 1 process): {pt['seconds']:.2f} s")
    return "\n".join(lines) + "\n"


def budget_tables(model: str, rows: list) -> list[str]:
    """The round budget of one layer by function (a scope's rounds over the number of layers;
    the norm row carries the final norm's share too) and the primitives each protocol ran."""
    rows = [r for r in rows if r.get("n_layers")]
    if not rows:
        return []
    scopes = list(dict.fromkeys(s for r in rows for s in r["scopes"] if s not in ("embed", "lm_head", "reveal")))
    per_layer = [[s, *(_fmt(r["scopes"][s]["rounds"] / r["n_layers"], ".1f") if s in r["scopes"] else "—" for r in rows)]
                 for s in scopes]
    per_layer.append(["**layer**", *(_fmt(sum(r["scopes"][s]["rounds"] for s in scopes if s in r["scopes"]) / r["n_layers"],
                                          ".1f") for r in rows)])
    out = ["", f"## {model}: rounds per layer by function (client, prefill)", ""]
    out += md.table(["function", *(r["protocol"] for r in rows)], per_layer)
    kinds = sorted({k for r in rows for k in r.get("primitives", {})})
    if kinds:
        def cell(k, v):
            return "—" if v is None else (f"{v / 1e6:.1f}" if k in ("tuple_bytes", "key_bytes") else f"{v:,}")

        out += ["", f"## {model}: primitives of the whole prefill (client; elements, tuple and key bytes in MB; "
                "dcf.<n>: comparisons that ran as n-bit DCF gates, lookups.<k>: k-bit tables)", ""]
        out += md.table(["primitive", *(r["protocol"] for r in rows)],
                        [[k, *(cell(k, r.get("primitives", {}).get(k)) for r in rows)] for k in kinds])
    return out


def plot(data: dict, path: pathlib.Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = data["rows"]
    if not rows:
        return
    models = list(dict.fromkeys(r["model"] for r in rows))
    protos = list(dict.fromkeys(r["protocol"] for r in rows))
    slow = "wan" if "wan" in data["links"] else list(data["links"])[-1]
    panels = [("MB (log)", lambda r: r["bytes"] / 1e6, True),
              ("rounds", lambda r: r["rounds"], False),
              (f"{slow} modelled s (log)", lambda r: r["modelled_s"][slow], True),
              ("top-1 agreement (encoders: cosine)",
               lambda r: r["fidelity"]["top1"] if r["fidelity"]["top1"] is not None else r["fidelity"].get("mean_cosine"),
               False)]
    fig, axes = plt.subplots(len(panels), 1, figsize=(max(6, 1.2 * len(models) * len(protos) / 2), 3 * len(panels)))
    width = 0.8 / len(protos)
    for ax, (title, fn, log) in zip(axes, panels):
        for j, p in enumerate(protos):
            xs, ys = [], []
            for i, m in enumerate(models):
                r = next((r for r in rows if r["model"] == m and r["protocol"] == p), None)
                v = fn(r) if r is not None else None
                if v is not None:
                    xs.append(i + (j - (len(protos) - 1) / 2) * width)
                    ys.append(v)
            ax.bar(xs, ys, width=width, label=p)
        ax.set_xticks(range(len(models)), models)
        ax.set_ylabel(title)
        if log:
            ax.set_yscale("log")
    axes[0].legend(ncol=min(len(protos), 4), fontsize="small")
    axes[0].set_title(f"pmpc bench: {data['config']['windows']} x {data['config']['tokens']} tokens, prefill")
    fig.tight_layout()
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(path)


# -- the driver -----------------------------------------------------------------------------------
def run(cfg: BenchConfig, out: str | os.PathLike, progress: bool = True, fresh: bool = False, redo=()) -> dict:
    """Run every (model, protocol) row not yet in ``out/bench.json`` (``redo``: protocols to run
    again for the given models, e.g. after a probabilistic-truncation failure); returns the result dict."""
    from tqdm import tqdm

    cfg.validate()
    out = pathlib.Path(out)
    if fresh and (out / "bench.json").exists():
        (out / "bench.json").unlink()
    res = Results(out, cfg)
    res.data["rows"] = [r for r in res.data["rows"] if not (r["protocol"] in redo and r["model"] in cfg.models)]
    text = wikitext_path(cfg.data or None)
    todo = [(m, p) for m in cfg.models for p in cfg.protocols if not res.done(m, p)]
    bar = tqdm(total=len(todo), disable=not progress, desc="bench", unit="row")
    failed = []
    for model in cfg.models:
        protos = [p for p in cfg.protocols if not res.done(model, p)]
        if not protos:
            continue
        bar.set_postfix_str(f"{model}: loading")
        spec, tok = models.load(model, seed=cfg.seed)
        ids = windows(tok, spec.vocab, cfg.windows, cfg.tokens, text, cfg.offset)
        if cfg.tokens > spec.max_positions:
            raise UserError(f"{model}: --tokens {cfg.tokens} exceeds its context ({spec.max_positions})")
        res.check_inputs(model, ids)
        t0 = time.perf_counter()
        with torch.no_grad():
            ref = Engine(spec, "plain", TorchOps(torch.float64)).prefill(ids, use_cache=False).numpy()
        res.data["plaintext"][model] = {"seconds": time.perf_counter() - t0, "n_params": spec.n_params(),
                                        "config": spec.config_dict()}
        is_lm = "lm_head.w" in spec.weights
        del spec
        for proto in protos:
            bar.set_postfix_str(f"{model} / {proto}")
            job = BenchJob(model, proto, tuple(ids.shape), cfg.weights, cfg.seed)
            try:
                parts = parties.run_local(job, timeout_s=cfg.timeout_s, dealer=cfg.dealer, threads=cfg.threads,
                                  inputs={0: ids})
            except PartyError as e:  # keep going: the other rows are still worth having
                failed.append(f"{model}/{proto}: {e}")
                bar.write(f"pmpc bench: {model}/{proto} failed: {e}")
                continue
            finally:
                bar.update(1)
            res.add(make_row(model, proto, parts, ref, is_lm, res.data["links"]))
    bar.close()
    res.write()
    if failed:
        raise UserError(f"{len(failed)} row(s) failed (rerun to retry them): " + "; ".join(failed))
    return res.data
