"""Secure generation: the party-side job behind ``pmpc run``, ``pmpc party`` and encrypted ASR.

What each party holds:
  * client (rank 0): the token ids of its prompts (``ClientInput``); it alone sees logits and
    chooses the next token (greedy or sampled with its own RNG);
  * server (rank 1): the weights. It learns the public facts only — batch size, prompt lengths
    (padding mask), number of steps — which the client announces at start-up.
At start-up the parties compare a digest of their configuration (model, protocol, weight mode,
shapes, steps): a mismatch stops both with a clear error instead of computing garbage.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import resource
import time

import torch

from pmpc import cost, models
from pmpc.engine import CLIENT, Engine
from pmpc.errors import UserError


@dataclasses.dataclass(frozen=True)
class GenConfig:
    model: str
    protocol: str
    weights: str = "public"          # public | private
    max_new_tokens: int = 8
    temperature: float = 0.0         # 0 = greedy
    top_p: float = 1.0
    seed: int = 0
    allow_pickle: bool = False
    threads: int | None = 1

    def digest(self, spec: models.ModelSpec) -> str:
        pub = dataclasses.asdict(self)
        pub.pop("temperature"), pub.pop("top_p"), pub.pop("seed"), pub.pop("threads")  # client-only
        pub["shapes"] = sorted((k, list(v)) for k, v in spec.shapes().items())
        return hashlib.sha256(json.dumps(pub, sort_keys=True).encode()).hexdigest()[:16]


@dataclasses.dataclass
class ClientInput:
    ids: torch.Tensor                # [B, T], left-padded
    attn: torch.Tensor               # [B, T] 0/1


def _load_spec(cfg: GenConfig, rank: int) -> models.ModelSpec:
    """The server loads the weights; in private mode the client builds zeros of the public shapes
    and never reads the weight file."""
    if cfg.weights == "private" and rank == CLIENT:
        return models.load_shapes(cfg.model, allow_pickle=cfg.allow_pickle)
    return models.load(cfg.model, allow_pickle=cfg.allow_pickle)[0]


def _agree(value, what: str):
    """All-gather a public value among the computing parties; raise if they differ."""
    import torch.distributed as dist

    from pmpc.crypten_compat import comm

    got = [None, None]
    dist.all_gather_object(got, value, group=comm.get().main_group)
    if got[0] != got[1]:
        raise UserError(f"parties disagree on {what}: client {got[0]!r} vs server {got[1]!r}")
    return got[0]


def _announce(public, rank: int):
    """The client tells the server the public shape facts (batch, lengths)."""
    from pmpc.crypten_compat import comm

    return comm.get().broadcast_obj(public if rank == CLIENT else None, CLIENT)


def _choose(logits: torch.Tensor, cfg: GenConfig, gen: torch.Generator) -> torch.Tensor:
    if cfg.temperature <= 0:
        return logits.argmax(-1)
    probs = torch.softmax(logits.double() / cfg.temperature, -1)
    if cfg.top_p < 1.0:
        srt, idx = probs.sort(-1, descending=True)
        keep = (srt.cumsum(-1) - srt) < cfg.top_p
        probs = torch.zeros_like(probs).scatter(-1, idx, srt * keep)
    return torch.multinomial(probs / probs.sum(-1, keepdim=True), 1, generator=gen)[:, 0]


def generate_party(cfg: GenConfig, rank: int, world_size: int, inp: ClientInput | None = None):
    """Runs inside one party process (after ``crypten.init``)."""
    from pmpc.ops import CrypTenOps

    t_start = time.perf_counter()
    spec = _load_spec(cfg, rank)
    _agree(cfg.digest(spec), "the configuration (model, protocol, weights, shapes, steps)")
    public = _announce(None if inp is None else {"attn": inp.attn.tolist()}, rank)
    attn = torch.tensor(public["attn"], dtype=torch.long)
    ids = inp.ids if rank == CLIENT else torch.zeros_like(attn)  # the server never sees ids
    ops = CrypTenOps(cost.Tracker(cost.crypten_stats))
    engine = Engine(spec, cfg.protocol, ops, weights=cfg.weights)
    t_setup = time.perf_counter() - t_start
    gen = torch.Generator().manual_seed(cfg.seed)
    steps, tokens, phases = [], [], {}

    def step(fn, *a):
        out = fn(*a)
        with ops.scope("reveal"):
            lg = ops.reveal(out[:, -1], dst=CLIENT)  # logits to the client only
        if rank != CLIENT:
            return torch.zeros(attn.shape[0], 1, dtype=torch.long)
        lg = lg.float()
        steps.append(lg)
        nxt = _choose(lg, cfg, gen)
        tokens.append(nxt)
        return nxt[:, None]

    ops.tracker.reset()
    t0 = time.perf_counter()
    nxt = step(engine.prefill, ids, attn)
    phases["prefill"] = {"seconds": time.perf_counter() - t0, **ops.tracker.total().as_dict(),
                         "scopes": ops.tracker.snapshot()}
    ops.tracker.reset()
    t0 = time.perf_counter()
    for _ in range(cfg.max_new_tokens - 1):
        nxt = step(engine.decode, nxt)
    n_dec = max(cfg.max_new_tokens - 1, 0)
    phases["decode"] = {"seconds": time.perf_counter() - t0, "tokens": n_dec, **ops.tracker.total().as_dict(),
                        "scopes": ops.tracker.snapshot()}
    out = {"rank": rank, "setup_seconds": t_setup, "phases": phases,
           "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    if rank == CLIENT:
        out["tokens"] = torch.stack(tokens, 1).tolist()
        out["logits"] = torch.stack(steps, 1).numpy()  # [B, steps, V]
    return out


def run_generation(cfg: GenConfig, client: ClientInput, timeout_s: float = 120.0,
                   dealer: str = "local") -> list[dict]:
    """Run the two parties locally; the prompt goes to the client process only."""
    import functools

    from pmpc import parties

    job = functools.partial(generate_party, cfg)
    return parties.run_local(job, timeout_s=timeout_s, dealer=dealer, threads=cfg.threads,
                             inputs={CLIENT: client})


def fidelity(spec: models.ModelSpec, ids: torch.Tensor, attn: torch.Tensor, tokens, logits) -> dict:
    """Compare the client's secure logits with the plaintext model on the same token sequence
    (teacher-forced with the tokens the secure run chose)."""
    from pmpc.ops import TorchOps

    tokens = torch.tensor(tokens)
    secure_lg = torch.as_tensor(logits).float()                 # [B, S, V]
    S = secure_lg.shape[1]
    full = torch.cat([ids, tokens[:, : S - 1]], dim=1)
    full_attn = torch.cat([attn, torch.ones_like(tokens[:, : S - 1])], dim=1)
    with torch.no_grad():
        plain = Engine(spec, "plain", TorchOps(torch.float32)).prefill(full, full_attn, use_cache=False)
    plain = plain[:, ids.shape[1] - 1:].float()                 # positions that predicted each new token
    agree = (plain.argmax(-1) == secure_lg.argmax(-1)).float()
    lp, lq = torch.log_softmax(plain.double(), -1), torch.log_softmax(secure_lg.double(), -1)
    kl = (lp.exp() * (lp - lq)).sum(-1)
    return {"top1_agreement": agree.mean().item(), "positions": int(agree.numel()),
            "max_abs_logit_diff": (plain - secure_lg).abs().max().item(),
            "mean_kl": kl.mean().item()}


def summary(cfg: GenConfig, spec, dealer: str, client: dict, server: dict, fid: dict, wall: float) -> dict:
    pre, dec = client["phases"]["prefill"], client["phases"]["decode"]
    n_dec = max(dec["tokens"], 1)
    return {
        "config": {**dataclasses.asdict(cfg), "dealer": dealer,
                   "dealer_trust": DEALER_TRUST[dealer]},
        "model": spec.config_dict(),
        "fidelity": fid,
        "wall_seconds": wall,
        "prefill": {k: pre[k] for k in ("seconds", "rounds", "bytes", "comm_seconds")},
        "decode_per_token": {k: dec[k] / n_dec for k in ("seconds", "rounds", "bytes", "comm_seconds")},
        "decode_tokens": dec["tokens"],
        "setup_seconds": {"client": client["setup_seconds"], "server": server["setup_seconds"]},
        "peak_rss_mb": {"client": client["peak_rss_mb"], "server": server["peak_rss_mb"]},
        "scopes": {"client": {"prefill": pre["scopes"], "decode": dec["scopes"]},
                   "server": {"prefill": server["phases"]["prefill"]["scopes"],
                              "decode": server["phases"]["decode"]["scopes"]}},
    }


DEALER_TRUST = {
    "local": "party 0 (the client) generates every Beaver triple in plaintext: secure against a "
             "semi-honest server only; NOT secure against the client. Online-phase cost only.",
    "ttp": "a third, non-colluding dealer process generates the triples: secure against one "
           "semi-honest computing party if the dealer colludes with neither.",
}


def format_summary(r: dict) -> str:
    from pmpc.cost import LINKS, table

    f = r["fidelity"]
    pre, dec = r["prefill"], r["decode_per_token"]
    lines = [
        f"fidelity: top-1 agreement {f['top1_agreement']:.3f} over {f['positions']} positions, "
        f"max |logit diff| {f['max_abs_logit_diff']:.4f}, mean KL {f['mean_kl']:.2e}",
        f"prefill: {pre['seconds']:.2f} s, {pre['rounds']} rounds, {pre['bytes'] / 1e6:.1f} MB "
        f"(comm {pre['comm_seconds']:.2f} s)",
        f"decode:  {dec['seconds']:.2f} s/token, {dec['rounds']:.0f} rounds/token, "
        f"{dec['bytes'] / 1e6:.1f} MB/token (comm {dec['comm_seconds']:.2f} s/token)",
        "modelled per token: " + ", ".join(
            f"{n} {l.time(dec['rounds'], dec['bytes'], dec['seconds']):.2f} s" for n, l in LINKS.items()),
        f"peak RSS: client {r['peak_rss_mb']['client']:.0f} MB, server {r['peak_rss_mb']['server']:.0f} MB",
        f"dealer: {r['config']['dealer']} — {r['config']['dealer_trust']}",
        "",
        table(r["scopes"]["client"]["prefill"], title="client cost by function, prefill"),
    ]
    return "\n".join(lines)
