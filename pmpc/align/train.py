"""LoRA training with DPO or QuadA: data encoding, batching, checkpoints, resume.

A run directory ``OUT`` holds::

    config.json              the run's configuration (+ data hash, versions)
    ref_logps.safetensors    clean reference log-probs of every pair (computed once, reused)
    checkpoint/              latest checkpoint: adapter (PEFT) + state.safetensors (optimizer, RNG)
                             + state.json (step, history); written atomically every --ckpt-every steps
    log.jsonl                one line per optimizer step (loss, reward accuracy, cos, lr, seconds)
    delta/                   the trained LoRA (relative to the starting model)
    adapter/                 the adapter for the RAW base: = delta, or init adapter + delta combined
    train.json               summary: steps, time, peak memory, final metrics

The starting model is ``model`` with ``init_adapter`` merged in (e.g. smollm2 + the smollm2-safe
LoRA for "+DPO" and QuadA); the reference is that starting model, clean (adapters disabled).
"""
from __future__ import annotations

import dataclasses
import json
import logging
import math
import pathlib
import platform
import random
import resource
import shutil
import time

import torch

from pmpc import jsonl, simulate
from pmpc.align import adapters as adp
from pmpc.align import data
from pmpc.align.losses import Batch, QuadAConfig, balance_lambda, quada_objective, reference_logps
from pmpc.errors import UserError
from pmpc.models import load_hf

METHODS = ("dpo", "quada")
logger = logging.getLogger(__name__)


def auto_ratio(lam) -> float | None:
    """R for ``lam`` = "auto" (R = 1) or "auto:R": lambda is set at the start so that the clustering
    term's gradient norm is R x the DPO term's (losses.balance_lambda); None for a number. R = 1
    (the committed smollm2-quada) let the clustering term damage the early layers (clean ASR 6% ->
    19% with no training noise, results/h200-quada/A1); a smaller R keeps it a regularizer."""
    if not isinstance(lam, str) or not lam.startswith("auto"):
        return None
    if lam == "auto":
        return 1.0
    try:
        r = float(lam.split(":", 1)[1]) if lam.startswith("auto:") else -1.0
    except ValueError:
        r = -1.0
    if not r > 0:
        raise UserError(f"lambda {lam!r}: write auto or auto:R with a ratio R > 0")
    return r


@dataclasses.dataclass
class TrainConfig:
    pairs: str                       # pairs JSONL (pmpc align data)
    out: str                         # run directory
    model: str = "smollm2"           # model name / HF dir (pmpc.models.load_hf)
    init_adapter: str | None = None  # LoRA merged into the model first; the reference is the result
    method: str = "dpo"
    beta: float = 0.1
    approx: str | None = None        # QuadA training noise (simulate spec), e.g. gauss:0.1@up
    tau: int = 0                     # noise in layers [0, tau)
    lam: float | str = 0.0           # clustering weight, or "auto" / "auto:R" (see auto_ratio)
    pool: str = "mean"
    sft: float = 0.0                 # + sft x per-token NLL of the chosen responses (0: pure DPO)
    kl_base: float = 0.0             # + kl_base x per-token KL(raw base || policy) on harmless chosen sequences
    lr: float = 2e-4
    epochs: float = 2.0
    max_steps: int | None = None     # overrides epochs
    batch_size: int = 16             # pairs per optimizer step
    micro_batch: int | None = None   # pairs per forward (gradient accumulation); None = batch_size
    warmup: float = 0.05
    weight_decay: float = 0.0
    lora_r: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.0
    max_prompt_tokens: int = 256
    max_response_tokens: int = 128
    limit_pairs: int | None = None
    seed: int = 0
    device: str = "cpu"
    ckpt_every: int = 25
    keep_epochs: float = 0.0         # also save the adapter every this many epochs (epochs/ep<e>/; 0: never)
    progress: bool = True

    def validate(self):
        if self.method not in METHODS:
            raise UserError(f"unknown method {self.method!r}; choose from {', '.join(METHODS)}")
        if self.method == "dpo" and (self.approx or self.lam):
            raise UserError("plain DPO trains clean: no --noise and no --lam (use `pmpc align quada`)")
        for k in ("lr", "epochs", "batch_size", "lora_r", "lora_alpha", "max_prompt_tokens", "max_response_tokens"):
            if getattr(self, k) <= 0:
                raise UserError(f"{k.replace('_', '-')} must be > 0")
        if self.max_steps is not None and self.max_steps <= 0:
            raise UserError("max-steps must be > 0")
        mb = self.micro_batch or self.batch_size
        if mb <= 0 or self.batch_size % mb:
            raise UserError("micro-batch must divide batch-size")
        if not 0 <= self.warmup < 1:
            raise UserError("warmup is a fraction of the steps in [0, 1)")
        if self.ckpt_every <= 0:
            raise UserError("ckpt-every must be > 0")
        if isinstance(self.lam, str):
            if auto_ratio(self.lam) is None:
                try:
                    self.lam = float(self.lam)
                except ValueError:
                    raise UserError(f"lambda must be a number, 'auto' or 'auto:R' (R > 0), not {self.lam!r}") from None
            elif self.method != "quada":
                raise UserError("lambda auto is for quada")
        QuadAConfig(self.beta, self.approx, self.tau, 0.0 if isinstance(self.lam, str) else self.lam, self.pool, self.sft,
                    self.kl_base).validate()
        if self.approx:
            if simulate.parse(self.approx).kind == "none":
                self.approx = None

    # fields that must match for --resume to continue a run
    def identity(self) -> dict:
        d = dataclasses.asdict(self)
        for k in ("device", "ckpt_every", "progress", "out", "keep_epochs"):
            d.pop(k)
        return d


# -- encoding ----------------------------------------------------------------------------------
@dataclasses.dataclass
class Encoded:
    prompt: list[int]
    content: list[int]      # 0/1 per prompt token: the user's instruction
    chosen: list[int]
    rejected: list[int]
    harmful: bool


end_of_turn_id = data.end_of_turn


def encode_pairs(tok, pairs: list[data.Pair], max_prompt: int, max_response: int) -> tuple[list[Encoded], int]:
    """Token ids of each pair; prompts longer than ``max_prompt`` are skipped (count returned)."""
    eot = end_of_turn_id(tok)
    out, skipped = [], 0
    for p in pairs:
        text = data.render(tok, p.prompt, p.fmt)
        # special tokens as the evaluation harness encodes prompts (pmpc.models.chat.Codec.encode)
        enc = tok(text, add_special_tokens=not getattr(tok, "chat_template", None), return_offsets_mapping=True)
        ids, offs = enc["input_ids"], enc["offset_mapping"]
        if len(ids) > max_prompt:
            skipped += 1
            continue
        cs = text.rfind(p.prompt)
        ce = cs + len(p.prompt)
        content = [int(a < ce and b > cs) for a, b in offs]
        if cs < 0 or not any(content):
            raise UserError(f"cannot locate the instruction in the rendered prompt: {p.prompt[:60]!r}")

        def resp(text, eos):
            r = tok(text, add_special_tokens=False)["input_ids"]
            return r[:max_response] if len(r) >= max_response else r + ([eot] if eos else [])

        out.append(Encoded(ids, content, resp(p.chosen, p.chosen_eos), resp(p.rejected, p.rejected_eos),
                           p.kind == "harmful"))
    return out, skipped


def collate(examples: list[Encoded], index: list[int], pad_id: int) -> Batch:
    seqs = [(e.prompt, e.content, e.chosen) for e in examples] + [(e.prompt, e.content, e.rejected) for e in examples]
    T = max(len(p) + len(r) for p, _, r in seqs)
    n = len(seqs)
    ids = torch.full((n, T), pad_id, dtype=torch.long)
    att = torch.zeros((n, T), dtype=torch.long)
    lm = torch.zeros((n, T), dtype=torch.long)
    cm = torch.zeros((n, T), dtype=torch.long)
    for i, (p, c, r) in enumerate(seqs):
        L = len(p) + len(r)
        ids[i, :L] = torch.tensor(p + r)
        att[i, :L] = 1
        lm[i, len(p):L] = 1
        cm[i, :len(p)] = torch.tensor(c)
    return Batch(ids, att, lm, cm, torch.tensor([e.harmful for e in examples]), torch.tensor(index))


def epoch_order(examples: list[Encoded], seed: int, epoch: int) -> list[int]:
    """A seeded order in which harmful and harmless pairs are interleaved evenly, so every batch
    holds both kinds in about the data set's proportion (the clustering term needs >= 2 harmful)."""
    rng = random.Random(seed * 1_000_003 + epoch)
    harm = [i for i, e in enumerate(examples) if e.harmful]
    safe = [i for i, e in enumerate(examples) if not e.harmful]
    rng.shuffle(harm)
    rng.shuffle(safe)
    keyed = [((k + rng.random()) / len(harm), i) for k, i in enumerate(harm)]
    keyed += [((k + rng.random()) / len(safe), i) for k, i in enumerate(safe)]
    return [i for _, i in sorted(keyed)]


def lr_at(step: int, total: int, base: float, warmup: float) -> float:
    """Linear warm-up, then cosine decay to 10% of ``base``."""
    w = max(1, int(round(warmup * total))) if warmup > 0 else 0
    if step < w:
        return base * (step + 1) / w
    t = (step - w) / max(1, total - w)
    return base * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * t)))


# -- model -------------------------------------------------------------------------------------
def load_policy(cfg: TrainConfig):
    """(peft model with a fresh trainable LoRA, tokenizer). The starting model is ``cfg.model``
    with ``cfg.init_adapter`` merged in."""
    from peft import LoraConfig, PeftModel, get_peft_model

    base, tok = load_hf(cfg.model, device="cpu")
    if tok is None:
        raise UserError(f"{cfg.model}: alignment needs a model with a tokenizer")
    if cfg.init_adapter:
        adp.read_adapter(cfg.init_adapter)  # validates, one-line error
        base = PeftModel.from_pretrained(base, cfg.init_adapter).merge_and_unload()
    torch.manual_seed(cfg.seed)
    lcfg = LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                      target_modules="all-linear", bias="none", task_type="CAUSAL_LM")
    model = get_peft_model(base, lcfg)
    return model.to(cfg.device), tok


def load_anchor(cfg: TrainConfig):
    """The KL term's anchor: the raw ``cfg.model`` (no adapter: with ``init_adapter`` the reference
    is the aligned start, and the anchor is what it started from), frozen, in eval mode."""
    anchor, _ = load_hf(cfg.model, device=cfg.device)
    for p in anchor.parameters():
        p.requires_grad_(False)
    return anchor


# -- checkpoints -------------------------------------------------------------------------------
def _atomic_dir(final: pathlib.Path, write) -> None:
    tmp = final.with_name(final.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    write(tmp)
    old = final.with_name(final.name + ".old")
    if final.exists():
        if old.exists():
            shutil.rmtree(old)
        final.rename(old)
    tmp.rename(final)
    if old.exists():
        shutil.rmtree(old)


def save_checkpoint(path: pathlib.Path, model, opt, step: int, history: list, elapsed: float) -> None:
    from safetensors.torch import save_file

    def write(d):
        model.save_pretrained(d)
        tensors, meta = {}, {}
        sd = opt.state_dict()
        for pid, st in sd["state"].items():
            for k, v in st.items():
                tensors[f"opt.{pid}.{k}"] = v.detach().cpu().contiguous() if torch.is_tensor(v) else torch.tensor(v)
        tensors["rng.torch"] = torch.get_rng_state()
        save_file(tensors, str(d / "state.safetensors"))
        meta = {"step": step, "param_groups": sd["param_groups"], "history": history, "elapsed_s": elapsed,
                "python_rng": repr(random.getstate())}
        (d / "state.json").write_text(json.dumps(meta))
    _atomic_dir(path, write)


def load_checkpoint(path: pathlib.Path, model, opt) -> tuple[int, list, float]:
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    sd = load_file(str(path / adp.WEIGHTS))
    dev = next(model.parameters()).device
    res = set_peft_model_state_dict(model, {k: v.to(dev) for k, v in sd.items()})
    if getattr(res, "unexpected_keys", None):
        raise UserError(f"{path}: checkpoint does not fit this model ({res.unexpected_keys[0]})")
    meta = json.loads((path / "state.json").read_text())
    st = load_file(str(path / "state.safetensors"))
    state: dict = {}
    for k, v in st.items():
        if k.startswith("opt."):
            _, pid, name = k.split(".", 2)
            state.setdefault(int(pid), {})[name] = v if name != "step" else v.float()
    opt.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
    for st_ in opt.state.values():
        for k, v in st_.items():
            if torch.is_tensor(v) and k != "step":
                st_[k] = v.to(dev)
    torch.set_rng_state(st["rng.torch"])
    return meta["step"], meta["history"], meta.get("elapsed_s", 0.0)


def snapshot_steps(keep_epochs: float, steps_per_epoch: int, total: int) -> dict[int, str]:
    """Step -> label of the adapters kept for selection: every ``keep_epochs`` epochs (0.5 -> ep0.5,
    ep1, ep1.5, ...), at the step nearest that point; {} for 0."""
    if keep_epochs <= 0:
        return {}
    out, j = {}, 1
    while (s := round(j * keep_epochs * steps_per_epoch)) <= total:
        if s > 0:
            out[s] = f"ep{round(j * keep_epochs, 3):g}"
        j += 1
    return out


def save_epoch_adapter(out: pathlib.Path, model, label: str, init_adapter: str | None) -> pathlib.Path:
    """``out/epochs/<label>/{delta,adapter}``: the adapter at a snapshot point (for selection)."""
    d = out / "epochs" / label
    _atomic_dir(d / "delta", lambda t: model.save_pretrained(t))
    if init_adapter:
        adp.combine(init_adapter, d / "delta", d / "adapter")
    else:
        _atomic_dir(d / "adapter", lambda t: [shutil.copy(f, t) for f in (d / "delta").iterdir()])
    return d / "adapter"


# -- reference log-probs -----------------------------------------------------------------------
def compute_reference(model, examples, pad_id, device, bs: int, cache: pathlib.Path, key: str, progress=True):
    from safetensors.torch import load_file, save_file
    from tqdm import tqdm

    if cache.exists():
        try:
            from safetensors import safe_open

            with safe_open(str(cache), "pt") as f:
                if (f.metadata() or {}).get("key") == key:
                    return load_file(str(cache))["ref"]
        except Exception:  # a damaged cache is recomputed
            pass
    out = torch.zeros(len(examples), 2)
    for i in tqdm(range(0, len(examples), bs), desc="reference", disable=not progress, unit="batch"):
        idx = list(range(i, min(i + bs, len(examples))))
        b = collate([examples[j] for j in idx], idx, pad_id).to(device)
        lp = reference_logps(model, b).float().cpu()
        n = len(idx)
        out[idx, 0], out[idx, 1] = lp[:n], lp[n:]
    save_file({"ref": out}, str(cache), metadata={"key": key})
    return out


def _peak_memory(device: str) -> dict:
    d = {"peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}
    if device.startswith("cuda") and torch.cuda.is_available():
        d["peak_cuda_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    return d


# -- the loop ----------------------------------------------------------------------------------
def _open_run(cfg: TrainConfig, resume: bool) -> pathlib.Path:
    """Check the configuration against the device and the run directory (a resumed run must be
    the same run), create the directory and seed everything. Returns the directory."""
    cfg.validate()
    if cfg.device.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"device {cfg.device} requested but CUDA is not available")
    out = pathlib.Path(cfg.out)
    if (out / "checkpoint").exists() and not resume:
        raise UserError(f"{out} already holds a checkpoint: pass --resume to continue it, or choose another --out")
    if resume and (out / "config.json").exists():
        prev = json.loads((out / "config.json").read_text())["config"]
        mine = cfg.identity()
        defaults = TrainConfig(pairs="", out="").identity()
        # a field added later is absent from an older run's config: it ran at the default
        diff = [k for k in mine if prev.get(k, defaults[k]) != mine[k]]
        if diff:
            raise UserError(f"--resume with a different configuration ({', '.join(diff)}); use another --out")
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)
    random.seed(cfg.seed)
    if cfg.device.startswith("cuda"):
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.cuda.reset_peak_memory_stats()
    return out


def _auto_lambda(cfg: TrainConfig, out: pathlib.Path, resume: bool, step: int, model, examples, ref, pad_id, mb: int,
                 log) -> dict:
    """``lam="auto[:R]"``: the clustering weight balanced against DPO's gradient on the first
    micro-batch (:func:`balance_lambda`), once per run (``lambda.json``; a resumed run reads it)."""
    lam_path = out / "lambda.json"
    if lam_path.exists() and resume:
        lam_info = json.loads(lam_path.read_text())
    else:
        if step:
            raise UserError(f"{out}: resuming an auto-lambda run without its lambda.json")
        idx = epoch_order(examples, cfg.seed, 0)[:mb]
        b = collate([examples[i] for i in idx], idx, pad_id).to(cfg.device)
        r = ref[idx].to(cfg.device)
        model.train()
        lam_info = balance_lambda(model, b, QuadAConfig(cfg.beta, cfg.approx, cfg.tau, 1.0, cfg.pool, cfg.sft),
                                  torch.cat([r[:, 0], r[:, 1]]), seed=cfg.seed, ratio=auto_ratio(cfg.lam))
        lam_path.write_text(json.dumps(lam_info, indent=2))
    log(f"lambda auto: {lam_info['lam']:.4g} (|g_dpo| {lam_info['grad_norm_dpo']:.3g}, "
        f"|g_cos| {lam_info['grad_norm_cos']:.3g})")
    return lam_info


def _optimizer_step(model, opt, params, examples, ref, idx: list[int], pad_id: int, qcfg: QuadAConfig,
                    cfg: TrainConfig, step: int, anchor, mb: int) -> tuple[float, dict]:
    """One optimizer step over the pairs ``idx``, in micro-batches of ``mb`` (gradients accumulated,
    each weighted by its share of the batch). Returns (gradient norm before clipping, the batch's
    loss statistics)."""
    opt.zero_grad(set_to_none=True)
    agg: dict = {}
    for j in range(0, len(idx), mb):
        sub = idx[j:j + mb]
        b = collate([examples[i] for i in sub], sub, pad_id).to(cfg.device)
        r = ref[sub].to(cfg.device)
        r = torch.cat([r[:, 0], r[:, 1]])
        loss, st = quada_objective(model, b, qcfg, ref_logps=r, seed=cfg.seed * 1_000_003 + step * 64 + j,
                                   anchor=anchor)
        (loss * len(sub) / len(idx)).backward()
        for kk, v in st.items():
            agg[kk] = agg.get(kk, 0.0) + v * len(sub) / len(idx)
    gn = torch.nn.utils.clip_grad_norm_(params, 1.0).item()
    opt.step()
    return gn, agg


def _save_final(cfg: TrainConfig, out: pathlib.Path, model) -> None:
    """``delta``: what this run trained; ``adapter``: the one adapter to apply to the raw base
    (the delta combined with ``init_adapter`` when the run started from one)."""
    _atomic_dir(out / "delta", lambda d: model.save_pretrained(d))
    if cfg.init_adapter:
        adp.combine(cfg.init_adapter, out / "delta", out / "adapter")
    else:
        _atomic_dir(out / "adapter", lambda d: [shutil.copy(f, d) for f in (out / "delta").iterdir()])


def train(cfg: TrainConfig, resume: bool = False, log=None) -> dict:
    """Train, checkpointing every ``cfg.ckpt_every`` steps; ``resume`` continues from the run
    directory's checkpoint. Returns the summary written to ``train.json``."""
    log = log or logger.info
    from tqdm import tqdm

    out = _open_run(cfg, resume)
    ckpt = out / "checkpoint"
    pairs = data.read_pairs(cfg.pairs)
    data_sha = data.file_sha256(cfg.pairs)
    if cfg.limit_pairs:
        pairs = pairs[:cfg.limit_pairs]
    t_load = time.perf_counter()
    model, tok = load_policy(cfg)
    n_layers = model.get_base_model().config.num_hidden_layers
    QuadAConfig(cfg.beta, cfg.approx, cfg.tau, 0.0 if isinstance(cfg.lam, str) else cfg.lam, cfg.pool).validate(n_layers)
    examples, skipped = encode_pairs(tok, pairs, cfg.max_prompt_tokens, cfg.max_response_tokens)
    n_harm = sum(e.harmful for e in examples)
    if cfg.lam != 0 and n_harm < 2:
        raise UserError("the clustering term needs at least two harmful pairs")
    if len(examples) < cfg.batch_size:
        raise UserError(f"{len(examples)} pairs is fewer than one batch of {cfg.batch_size}")
    pad_id = end_of_turn_id(tok)
    (out / "config.json").write_text(json.dumps({
        "config": cfg.identity(), "data_sha256": data_sha, "pairs": len(examples), "harmful_pairs": n_harm,
        "skipped_long_prompts": skipped, "torch": torch.__version__, "python": platform.python_version(),
        "transformers": __import__("transformers").__version__, "peft": __import__("peft").__version__,
    }, indent=2))
    load_s = time.perf_counter() - t_load

    steps_per_epoch = len(examples) // cfg.batch_size
    total = cfg.max_steps or max(1, int(round(cfg.epochs * steps_per_epoch)))
    snapshots = snapshot_steps(cfg.keep_epochs, steps_per_epoch, total)
    mb = cfg.micro_batch or cfg.batch_size
    t_ref = time.perf_counter()
    key = f"{data_sha}|{cfg.model}|{cfg.init_adapter}|{cfg.limit_pairs}|{cfg.max_prompt_tokens}|{cfg.max_response_tokens}"
    ref = compute_reference(model, examples, pad_id, cfg.device, 2 * mb, out / "ref_logps.safetensors", key,
                            cfg.progress)
    ref_s = time.perf_counter() - t_ref

    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay, betas=(0.9, 0.95))
    step, history, elapsed = 0, [], 0.0
    if resume and ckpt.exists():
        step, history, elapsed = load_checkpoint(ckpt, model, opt)
        log(f"resuming {out} at step {step}/{total}")
    lam_info = (_auto_lambda(cfg, out, resume, step, model, examples, ref, pad_id, mb, log)
                if isinstance(cfg.lam, str) else None)
    lam = lam_info["lam"] if lam_info else cfg.lam
    qcfg = QuadAConfig(cfg.beta, cfg.approx, cfg.tau, lam, cfg.pool, cfg.sft, cfg.kl_base)
    anchor = load_anchor(cfg) if cfg.kl_base > 0 else None
    model.train()
    bar = tqdm(total=total, initial=step, desc=cfg.method, disable=not cfg.progress, unit="step")
    order_cache: dict = {}
    if step:  # resumed: keep the log up to the checkpoint's step (later lines are redone)
        kept = [r for r in jsonl.read(out / "log.jsonl") if r.get("step", 0) <= step]
        (out / "log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in kept))
    with open(out / "log.jsonl", "a" if step else "w") as logf:   # a fresh start drops an old log
        while step < total:
            t0, c0 = time.perf_counter(), time.process_time()
            epoch, k = divmod(step, steps_per_epoch)
            if epoch not in order_cache:
                order_cache = {epoch: epoch_order(examples, cfg.seed, epoch)}
            idx = order_cache[epoch][k * cfg.batch_size:(k + 1) * cfg.batch_size]
            lr = lr_at(step, total, cfg.lr, cfg.warmup)
            for g in opt.param_groups:
                g["lr"] = lr
            gn, agg = _optimizer_step(model, opt, params, examples, ref, idx, pad_id, qcfg, cfg, step, anchor, mb)
            step += 1
            dt = time.perf_counter() - t0
            elapsed += dt
            rec = {"step": step, "lr": lr, "grad_norm": round(gn, 4), "seconds": round(dt, 3),
                   "cpu_seconds": round(time.process_time() - c0, 3),
                   **{kk: round(v, 5) for kk, v in agg.items()}}
            history.append(rec)
            logf.write(json.dumps(rec) + "\n")
            logf.flush()
            bar.set_postfix(loss=f"{agg['loss']:.3f}", acc=f"{agg['reward_acc']:.2f}",
                            **({"cos": f"{agg['cos']:.3f}"} if "cos" in agg else {}))
            bar.update(1)
            if step % cfg.ckpt_every == 0 or step == total:
                save_checkpoint(ckpt, model, opt, step, history, elapsed)
            if step in snapshots:
                save_epoch_adapter(out, model, snapshots[step], cfg.init_adapter)
    bar.close()

    _save_final(cfg, out, model)
    last = history[-min(len(history), max(1, steps_per_epoch // 2)):]
    summary = {
        "method": cfg.method, "steps": step, "epochs": round(step / steps_per_epoch, 3),
        "pairs": len(examples), "harmful_pairs": n_harm, "data_sha256": data_sha,
        "train_seconds": round(elapsed, 2), "seconds_per_step": round(elapsed / max(1, len(history)), 3),
        "cpu_seconds_per_step": round(sum(h.get("cpu_seconds", 0) for h in history) / max(1, len(history)), 3),
        "tokens_per_step": round(sum(len(e.prompt) * 2 + len(e.chosen) + len(e.rejected) for e in examples)
                                 / len(examples) * cfg.batch_size),
        "reference_seconds": round(ref_s, 2), "load_seconds": round(load_s, 2), "device": cfg.device,
        "device_name": torch.cuda.get_device_name() if cfg.device.startswith("cuda") else platform.processor() or "cpu",
        "threads": torch.get_num_threads(), **_peak_memory(cfg.device),
        "trainable_params": sum(p.numel() for p in params), "lam": lam, "lam_auto": lam_info,
        "final": {kk: round(sum(h[kk] for h in last if kk in h) / max(1, sum(kk in h for h in last)), 4)
                  for kk in ("loss", "dpo_loss", "sft_nll", "kl_base", "reward_acc", "margin", "cos") if any(kk in h for h in last)},
        "config": cfg.identity(),
    }
    (out / "train.json").write_text(json.dumps(summary, indent=2))
    return summary

