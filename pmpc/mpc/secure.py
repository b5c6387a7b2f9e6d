"""Secure generation: the party-side job behind ``pmpc run``, ``pmpc party`` and encrypted ASR.

What each party holds:
  * client (rank 0): the token ids of its prompts (``ClientInput``); it alone sees logits and
    chooses the next token (greedy or sampled with its own RNG);
  * server (rank 1): the weights. It learns the public facts only — batch size, prompt lengths
    (padding mask), number of steps — which the client announces at start-up, and which the
    server checks against its limits (the model's context, ``max_prompt_tokens``, ``max_batch``)
    before it allocates anything for them.
At start-up the parties compare a digest of their configuration (architecture, shapes, protocol,
weight mode, steps; in public-weight mode also the weights' content — never a path): a mismatch
stops both with a clear error instead of computing garbage; the check is authenticated by the
key exchange of :mod:`pmpc.mpc.handshake`. Every control message is a
fixed-format JSON frame (:mod:`pmpc.mpc.wire`), never a pickle.
"""
from __future__ import annotations

# crypten (through pmpc.mpc.crypten_compat / crypten_ops) is imported inside the functions that run
# in a party: the launcher, the CLI and a machine without crypten import this module without it.

import contextlib
import dataclasses
import functools
import hashlib
import json
import os
import pathlib
import resource
import sys
import threading
import time

import torch

from pmpc import jsonl, models
from pmpc.engine import CLIENT, Engine, compare_logits, mask_of
from pmpc.errors import UserError
from pmpc.mpc import cost, wire
from pmpc.mpc import dealer
from pmpc.mpc import handshake, parties, spool
from pmpc.mpc.gates import comparison_mode, max_levels
from pmpc.mpc.cost import LINKS, table
from pmpc.mpc.dealer import TRUST as DEALER_TRUST  # noqa: F401  (re-exported: one definition)
from pmpc.ops import TorchOps


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
    preprocess: bool = False         # deal the query's tuples before it runs (offline/online split;
                                     # each party keeps them on disk, encrypted: pmpc.mpc.spool)
    max_prompt_tokens: int = 2048    # the server's limits on what a client may announce (the work
    max_batch: int = 64              # and memory of a query grow with batch x tokens^2)

    def digest_bytes(self, spec: models.ModelSpec) -> bytes:
        """SHA-256 of what both parties must agree on. Not paths (the hosts need not share a
        layout), not the client's sampling nor either party's local limits. In private-weight mode
        the client has only the shapes; in public mode both hold the weights, so their content is
        compared."""
        from pmpc.mpc.crypten_compat import truncation_mode

        pub = {k: v for k, v in dataclasses.asdict(self).items()
               if k in ("protocol", "weights", "max_new_tokens", "preprocess")}
        pub["model"] = {k: v for k, v in spec.config_dict().items() if k not in ("name", "n_params")}
        pub["shapes"] = sorted((k, list(v)) for k, v in spec.shapes().items())
        if self.weights == "public":
            pub["weights_sha256"] = spec.content_digest()
        pub["truncation"] = truncation_mode()  # exact vs local: different rounds
        pub["comparison"] = comparison_mode()  # dcf vs bitwise: different messages
        pub["dcf_max_levels"] = max_levels()  # auto's bound: the same choice at both parties
        return hashlib.sha256(json.dumps(pub, sort_keys=True, default=str).encode()).digest()

    def digest(self, spec: models.ModelSpec) -> str:
        """The digest's first 16 hex digits (a short name, e.g. for caches)."""
        return self.digest_bytes(spec).hex()[:16]


@dataclasses.dataclass
class ClientInput:
    ids: torch.Tensor                # [B, T], left-padded
    attn: torch.Tensor               # [B, T] 0/1
    watch: object | None = None      # client-side progress: .layer(phase, i, n), .token(step, ids [B])
    prefix: int = 0                  # every row's first `prefix` tokens are the same (a chat template's
                                     # system turn): computed once for all rows. The server learns
                                     # this number, as it learns the lengths


class _Relay:
    """Stands in for a watcher inside the client process: each event goes to the launcher through
    a queue as it happens (the party process's own stdout need not be the user's terminal)."""

    def __init__(self, q):
        self.q = q

    def layer(self, phase: str, i: int, n: int) -> None:
        self.q.put(("layer", phase, i, n))

    def token(self, step: int, ids) -> None:
        self.q.put(("token", step, [int(t) for t in ids]))


@contextlib.contextmanager
def _relayed(watch):
    """``with _relayed(watch) as relay``: ``relay`` goes to the client process; a thread of this
    process hands each event it sends to ``watch``, in order, as it arrives."""
    q = parties.event_queue()

    def pump():
        while (ev := q.get()) is not None:
            getattr(watch, ev[0])(*ev[1:])

    t = threading.Thread(target=pump, name="pmpc-watch", daemon=True)
    t.start()
    try:
        yield _Relay(q)
    finally:  # every party process has exited: its events are in the queue, ahead of this sentinel
        q.put(None)
        t.join(timeout=10)


class Watch:
    """What a user watching a generation sees: prefill progress by layer on stderr, then each token
    as soon as the client has chosen it, decoded on stdout. It runs where the user is: in the
    launcher of ``pmpc run`` (the client process relays each event to it, :func:`run_generation`),
    in the client's own process under ``pmpc party``. The server never sees it."""

    def __init__(self, tokenizer=None):
        self.tok, self.ids, self.shown = tokenizer, [], ""

    def layer(self, phase: str, i: int, n: int) -> None:
        end = "\n" if i + 1 == n else ""
        sys.stderr.write(f"\r[pmpc] {phase}: layer {i + 1}/{n}{end}")
        sys.stderr.flush()

    def token(self, step: int, ids) -> None:
        self.ids.append(int(ids[0]))  # the first sequence of the batch
        if self.tok is None:
            sys.stdout.write(("" if step == 0 else ",") + str(self.ids[-1]))
        else:  # decode the whole answer and print what is new: multi-byte pieces come out whole
            text = self.tok.decode(self.ids, skip_special_tokens=True)
            if not text.startswith(self.shown) or text.endswith("\ufffd"):
                return
            sys.stdout.write(text[len(self.shown):])
            self.shown = text
        sys.stdout.flush()


def check_input(cfg: GenConfig, spec: models.ModelSpec, inp: ClientInput) -> None:
    """The client's prompt must be non-empty, in the vocabulary, left-padded with a 0/1 mask, and
    fit the context with the new tokens and the configured limits; a :class:`UserError` (one
    line) otherwise — before any party process starts."""
    ids, attn = inp.ids, inp.attn
    if ids.dim() != 2 or ids.shape != attn.shape:
        raise UserError(f"prompt ids must be [batch, tokens] with a matching mask, got {tuple(ids.shape)}")
    if ids.shape[1] == 0 or (attn.sum(-1) == 0).any():
        raise UserError("empty prompt")
    if int(ids.min()) < 0 or int(ids.max()) >= spec.vocab:
        raise UserError(f"token id out of range [0, {spec.vocab})")
    if not torch.equal(attn.long(), mask_of(ids.shape[1], attn.long().sum(-1).tolist())):
        raise UserError("the attention mask must be 0/1 and left-padded (zeros, then ones)")
    if inp.prefix:
        lengths = attn.long().sum(-1)
        if not 0 < inp.prefix < int(lengths.min()):
            raise UserError(f"a shared prefix of {inp.prefix} tokens must leave every prompt a token of its own")
        heads = [ids[i, ids.shape[1] - n:][:inp.prefix] for i, n in enumerate(lengths.tolist())]
        if any(not torch.equal(h, heads[0]) for h in heads):
            raise UserError(f"the prompts do not share their first {inp.prefix} tokens")
    _check_shape(cfg, spec, ids.shape[0], ids.shape[1])


def _check_shape(cfg: GenConfig, spec: models.ModelSpec, batch: int, tokens: int) -> None:
    """The public shape of a query within the model's context and the configured limits."""
    if batch > cfg.max_batch:
        raise UserError(f"batch of {batch} prompts exceeds the limit of {cfg.max_batch}")
    if tokens > cfg.max_prompt_tokens:
        raise UserError(f"prompt of {tokens} tokens exceeds the limit of {cfg.max_prompt_tokens} (--max-prompt-tokens)")
    if spec.max_positions and tokens + cfg.max_new_tokens > spec.max_positions:
        raise UserError(f"prompt of {tokens} tokens + {cfg.max_new_tokens} new tokens exceeds the model's "
                        f"context of {spec.max_positions}")


def _load_spec(cfg: GenConfig, rank: int) -> models.ModelSpec:
    """The server loads the weights; in private mode the client builds zeros of the public shapes
    and never reads the weight file."""
    if cfg.weights == "private" and rank == CLIENT:
        return models.load_shapes(cfg.model, allow_pickle=cfg.allow_pickle)
    return models.load(cfg.model, allow_pickle=cfg.allow_pickle)[0]


def _digest_check(v):
    wire.is_str(v, 64, "digest")


def _agree(value: str, what: str, kind: str = "configuration"):
    """Swap a public digest between the computing parties; raise if they differ."""
    from pmpc.mpc.crypten_compat import comm

    c = comm.get()
    got = wire.exchange(kind, value, c.get_rank(), c.main_group, check=_digest_check)
    if got[0] != got[1]:
        raise UserError(f"parties disagree on {what}: client {got[0]!r} vs server {got[1]!r}")
    return got[0]


def _announce(cfg: GenConfig, spec: models.ModelSpec, inp: ClientInput | None, rank: int) -> tuple:
    """The client tells the server the public shape of its query (tokens per row, each row's
    length: the left-padded mask follows; the length of the prefix all rows share); the server
    refuses what exceeds its limits before it allocates anything. Returns (attention mask, prefix)."""
    from pmpc.mpc.crypten_compat import comm

    def check(msg):
        wire.is_dict(msg, {"tokens", "lengths"}, "announcement", optional={"prefix"})
        tokens = wire.is_int(msg["tokens"], 1, None, "tokens")
        wire.is_list(msg["lengths"], cfg.max_batch, "lengths (one per prompt)")
        if not msg["lengths"]:
            raise ValueError("no prompts")
        for n in msg["lengths"]:
            wire.is_int(n, 1, tokens, "prompt length")
        wire.is_int(msg.get("prefix", 0), 0, min(msg["lengths"]) - 1, "shared prefix")
        try:
            _check_shape(cfg, spec, len(msg["lengths"]), tokens)
        except UserError as e:
            raise ValueError(str(e)) from None

    mine = None
    if rank == CLIENT:
        mine = {"tokens": int(inp.attn.shape[1]), "lengths": [int(n) for n in inp.attn.long().sum(-1)],
                "prefix": int(inp.prefix)}
    c = comm.get()
    msg = wire.broadcast("announcement", mine, CLIENT, rank, c.main_group, check=check)
    return mask_of(msg["tokens"], msg["lengths"]), msg.get("prefix", 0)


def _choose(logits: torch.Tensor, cfg: GenConfig, gen: torch.Generator) -> torch.Tensor:
    if cfg.temperature <= 0:
        return logits.argmax(-1)
    probs = torch.softmax(logits.double() / cfg.temperature, -1)
    if cfg.top_p < 1.0:
        srt, idx = probs.sort(-1, descending=True)
        keep = (srt.cumsum(-1) - srt) < cfg.top_p
        probs = torch.zeros_like(probs).scatter(-1, idx, srt * keep)
    return torch.multinomial(probs / probs.sum(-1, keepdim=True), 1, generator=gen)[:, 0]


def _bool_check(v):
    if type(v) is not bool:
        raise TypeError(f"expected true or false, got {type(v).__name__}")


def _gather(value: bool) -> list:
    from pmpc.mpc.crypten_compat import comm

    c = comm.get()
    return wire.exchange("plan", value, c.get_rank(), c.main_group, check=_bool_check)


class _DealerKeepAliveTracker(cost.Tracker):
    """The cost tracker, plus a periodic hook (party 0 keeps the dealer waiting while planning)."""

    def __init__(self, stats, every_s: float | None = None, hook=None):
        super().__init__(stats)
        self.every_s, self.hook, self._last = every_s, hook, time.monotonic()

    def scope(self, name):
        if self.hook is not None and time.monotonic() - self._last > self.every_s:
            self._last = time.monotonic()
            self.hook()
        return super().scope(name)


def _dealt() -> dict:
    """This party's dealt traffic so far (the dealer's requests and answers; FSS key words party 0
    deals in ``local`` mode), counted apart from the rounds and bytes of the computation."""
    s = _comm().get_communication_stats()
    return {"dealer_bytes": s.get("dealer_bytes", 0), "dealer_messages": s.get("dealer_messages", 0)}


def _counters() -> dict:
    r, b, t = cost.crypten_stats()
    return {"rounds": r, "bytes": b, "comm_seconds": t, "seconds": time.perf_counter(), **_dealt()}


def _dealt_since(d0: dict) -> dict:
    d1 = _dealt()
    return {k: d1[k] - d0[k] for k in d0}


def _since(c0: dict) -> dict:
    c1 = _counters()
    return {k: c1[k] - c0[k] for k in c0}


_PLANS: dict = {}  # public facts -> Plan (the plan depends on nothing secret)


def _query(engine, ops, ids, attn, cfg, rank, gen, phases=None, marks=None, plan_of=None, watch=None, prefix=0):
    """Prefill (the shared ``prefix`` once, the output layer at the last position only: what the
    client reads), then ``max_new_tokens - 1`` decode steps. With ``phases``: the online run (records
    cost per phase, chooses tokens); without: a dry run (tokens are zeros, logits dropped), and
    ``marks``/``plan_of`` record where in the tuple stream each phase starts. ``watch``
    (:class:`Watch`, client only) sees the prefill's layers and each token as it is chosen."""
    steps, tokens = [], []

    def step(fn, *a):
        out = fn(*a)
        with ops.scope("reveal"):
            lg = ops.reveal(out[:, -1], dst=CLIENT)  # logits to the client only
        if rank != CLIENT or phases is None:
            return torch.zeros(attn.shape[0], 1, dtype=torch.long)
        lg = lg.float()
        steps.append(lg)
        nxt = _choose(lg, cfg, gen)
        tokens.append(nxt)
        if watch is not None:
            watch.token(len(tokens) - 1, nxt)
        return nxt[:, None]

    n_dec = max(cfg.max_new_tokens - 1, 0)
    ops.tracker.reset()
    if marks is not None:
        marks["prefill"] = len(plan_of())
    t0, d0 = time.perf_counter(), (_dealt() if phases is not None else None)
    if watch is not None:
        engine.on_layer = lambda i, n: watch.layer("prefill", i, n)
    try:
        nxt = step(functools.partial(engine.prefill, prefix=prefix, last_only=True), ids, attn)
    finally:
        engine.on_layer = None
    if phases is not None:
        phases["prefill"] = {"seconds": time.perf_counter() - t0, **ops.tracker.total().as_dict(),
                             **_dealt_since(d0), "scopes": ops.tracker.snapshot()}
    ops.tracker.reset()
    if marks is not None:
        marks["decode"] = len(plan_of())
    t0, d0 = time.perf_counter(), (_dealt() if phases is not None else None)
    for _ in range(n_dec):
        nxt = step(engine.decode, nxt)
    if phases is not None:
        phases["decode"] = {"seconds": time.perf_counter() - t0, "tokens": n_dec,
                            **ops.tracker.total().as_dict(), **_dealt_since(d0), "scopes": ops.tracker.snapshot()}
    return steps, tokens


def generate_party(cfg: GenConfig, rank: int, world_size: int, inp: ClientInput | None = None):
    """Runs inside one party process (after ``crypten.init``).

    With ``cfg.preprocess`` the query runs in three phases (see :mod:`pmpc.mpc.dealer`): plan (a solo
    dry run on dummy inputs over the same public shapes, recording the tuple requests), offline (the
    dealer of the session's mode deals exactly those tuples), online (the query itself, served
    from the dealt tuples: its cost is the online phase alone). Without it, tuples are drawn on
    demand during the query (CrypTen's behaviour; with ``ttp`` the dealer traffic is then part
    of the query's rounds). ``PMPC_FAULT`` drills strike at the points :func:`parties.fault_point` names."""
    from pmpc.mpc.crypten_compat import crypten
    from pmpc.mpc.crypten_ops import CrypTenOps

    fault = functools.partial(parties.fault_point, rank)
    mode = "ttp" if crypten.mpc.ttp_required() else "local"
    to_dealer = mode == "ttp" and rank == CLIENT
    t_start = time.perf_counter()
    timeout_s = crypten_timeout()
    with dealer.keepalive_while(timeout_s / 4) if to_dealer else contextlib.nullcontext():
        spec = _load_spec(cfg, rank)  # loading a large model can take a while: the dealer waits
    if rank == CLIENT:
        check_input(cfg, spec, inp)
    # under the MAC key of the start-up key exchange: a forged digest is not an honest mismatch
    handshake.agree_digest(cfg.digest_bytes(spec), "the configuration (model, protocol, weights, shapes, steps)")
    attn, prefix = _announce(cfg, spec, inp, rank)
    ids = inp.ids if rank == CLIENT else torch.zeros_like(attn)  # the server never sees ids
    real = _comm()
    tracker = _DealerKeepAliveTracker(cost.crypten_stats, timeout_s / 4,
                                      (lambda: dealer.keepalive(real)) if to_dealer and cfg.preprocess else None)
    ops = CrypTenOps(tracker)
    parties.return_freed_memory()  # what loading the model freed
    gen = torch.Generator().manual_seed(cfg.seed)
    phases: dict = {}
    plan = None
    if cfg.preprocess and cfg.weights == "private":
        # planned on a zero model of the same shapes before the real weights are shared: the dry
        # run's transients and the weights' shares are then never held at once
        plan = _plan(cfg, spec, None, ops, attn, rank, gen, phases, fault, prefix)
    engine = Engine(spec, cfg.protocol, ops, weights=cfg.weights, release_weights=True,
                    on_shared=parties.return_freed_memory)  # each part's float copies
    t_setup = time.perf_counter() - t_start - phases.get("plan", {}).get("seconds", 0.0)  # the plan is reported apart
    fault("startup")

    provider = None
    if cfg.preprocess:
        plan = plan or _plan(cfg, spec, engine, ops, attn, rank, gen, phases, fault, prefix)
        tracker.hook = None
        provider = _offline(plan, mode, world_size, to_dealer, phases, fault)
    steps, tokens = _online(cfg, engine, ops, ids, attn, rank, gen, phases, provider,
                            getattr(inp, "watch", None) if rank == CLIENT else None, fault, prefix)
    out = {"rank": rank, "dealer": mode, "preprocess": cfg.preprocess, "setup_seconds": t_setup,
           "phases": phases, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    if to_dealer:
        with parties.talking_to(world_size):
            out["dealer_peak_rss_mb"] = phases.pop("dealer_peak_rss_mb", None) or dealer.peak_rss_mb()
    if rank == CLIENT:
        out["tokens"] = torch.stack(tokens, 1).tolist()
        out["logits"] = torch.stack(steps, 1).numpy()  # [B, steps, V]
    return out


def _comm():
    from pmpc.mpc.crypten_compat import comm

    return comm.get()


def _plan(cfg: GenConfig, spec, engine, ops, attn, rank: int, gen, phases: dict, fault, prefix: int = 0):
    """The plan phase: the tuple requests of the query, from a solo dry run on dummy inputs over
    the same public shapes (cached per configuration and mask when both parties have it)."""
    from pmpc.mpc.crypten_compat import solo_dry_run, use_provider

    key = (cfg.digest(spec), tuple(map(tuple, attn.tolist())), prefix)
    if all(_gather(key in _PLANS)):
        plan = _PLANS[key]
        phases["plan"] = {"cached": True, "seconds": 0.0, "rounds": 0, "bytes": 0, "comm_seconds": 0.0,
                          "dealer_bytes": 0, "dealer_messages": 0}
    else:
        c0 = _counters()
        fault("plan")
        rec, marks = dealer.ShapeOnly(), {}
        with solo_dry_run(), use_provider(rec):  # alone: no peer, no traffic
            dry = engine
            if cfg.weights == "private":  # the dry run never touches the real weights
                dry = Engine(models.load_shapes(cfg.model, allow_pickle=cfg.allow_pickle), cfg.protocol, ops,
                             weights="private", release_weights=True)
            _query(dry, ops, torch.zeros_like(attn), attn, cfg, rank, gen, marks=marks,
                   plan_of=lambda: rec.requests, prefix=prefix)
        plan = dealer.Plan(rec.requests, marks)
        _PLANS[key] = plan
        phases["plan"] = {"cached": False, **_since(c0)}
        del dry
        parties.return_freed_memory()
    _agree(plan.digest(), "the tuple plan of the query", kind="plan")
    return plan


def _offline(plan, mode: str, world_size: int, to_dealer: bool, phases: dict, fault):
    """The offline phase: the dealer of ``mode`` deals exactly the planned tuples (prefill's, then
    decode's); both parties then start the online phase together. Returns the replaying provider."""
    offline, tuples = {}, spool.Spool()
    for phase in ("prefill", "decode"):
        lo, hi = plan.span(phase)
        c0, b0 = _counters(), tuples.bytes_written
        if phase == "prefill":
            fault("offline")
        with parties.talking_to(world_size) if to_dealer else contextlib.nullcontext():
            dealer.deal(plan, lo, hi, mode, into=tuples)
        offline[phase] = {**_since(c0), "tuples": plan.counts(lo, hi), "spooled_bytes": tuples.bytes_written - b0}
    c0 = _counters()
    if to_dealer:
        with parties.talking_to(world_size):
            phases["dealer_peak_rss_mb"] = dealer.peak_rss_mb()  # it leaves now: its peak is reached
            dealer.release()
    _comm().barrier()  # the online phase starts together at both parties
    offline["release"] = _since(c0)
    phases["offline"] = offline
    return dealer.Replay(plan, tuples)


def _online(cfg: GenConfig, engine, ops, ids, attn, rank: int, gen, phases: dict, provider, watch, fault,
            prefix: int = 0):
    """The online phase: the query itself (from the dealt tuples when ``provider`` is given). Under a
    ``PMPC_FAULT`` drill the engine's first-layer tap strikes at the phase (prefill/decode) it is in."""
    from pmpc.mpc.crypten_compat import use_provider

    phase = [None]
    if os.environ.get("PMPC_FAULT"):
        engine.tap = lambda point, layer, value: fault(phase[0]) if layer == 0 and phase[0] else None

    def traced(fn, name):
        def wrapped(*a, **k):
            phase[0] = name
            try:
                return fn(*a, **k)
            finally:
                phase[0] = None
        return wrapped

    engine.prefill, engine.decode = traced(engine.prefill, "prefill"), traced(engine.decode, "decode")
    with use_provider(provider) if provider is not None else contextlib.nullcontext():
        steps, tokens = _query(engine, ops, ids, attn, cfg, rank, gen, phases=phases, watch=watch, prefix=prefix)
    if provider is not None and provider.left():
        raise dealer.PlanMismatch(f"{provider.left()} dealt tuples were not used by the online phase")
    return steps, tokens


def crypten_timeout() -> float:
    from pmpc.mpc import transport

    return transport.current().timeout_s


def check_dealer(cfg: GenConfig, dealer: str, cost_only: bool = False) -> None:
    """Private weights need the ``ttp`` dealer: with ``local`` the client deals every triple and
    so learns each weight W from the opened W - B. Allowed only for a cost-only run."""
    if dealer == "local" and cfg.weights == "private" and not cost_only:
        raise UserError("private weights with the local dealer protect nothing (the client deals every triple "
                        "and so learns the weights): use the ttp dealer, or ask for a cost-only run")


def run_generation(cfg: GenConfig, client: ClientInput, timeout_s: float = 120.0,
                   dealer: str = "ttp", env: dict | None = None, deadline_s: float | None = None,
                   cost_only: bool = False) -> list[dict]:
    """Run the two parties (and, with ``dealer="ttp"``, the dealer) locally; the prompt goes to
    the client process only. ``env``: set in every party process (e.g. ``PMPC_FAULT``).
    ``dealer="local"`` is for online-phase measurements (insecure against the client)."""
    check_dealer(cfg, dealer, cost_only)
    check_input(cfg, models.load_shapes(cfg.model, allow_pickle=cfg.allow_pickle), client)
    job = functools.partial(generate_party, cfg)
    with _relayed(client.watch) if client.watch is not None else contextlib.nullcontext() as relay:
        if relay is not None:  # the watcher stays here; the client process relays to it
            client = dataclasses.replace(client, watch=relay)
        return parties.run_local(job, timeout_s=timeout_s, dealer=dealer, threads=cfg.threads,
                                 inputs={CLIENT: client}, env=env, deadline_s=deadline_s)


def fidelity(spec: models.ModelSpec, ids: torch.Tensor, attn: torch.Tensor, tokens, logits) -> dict:
    """Compare the client's secure logits with the plaintext model on the same token sequence
    (teacher-forced with the tokens the secure run chose)."""
    tokens = torch.tensor(tokens)
    secure_lg = torch.as_tensor(logits).float()                 # [B, S, V]
    S = secure_lg.shape[1]
    full = torch.cat([ids, tokens[:, : S - 1]], dim=1)
    full_attn = torch.cat([attn, torch.ones_like(tokens[:, : S - 1])], dim=1)
    with torch.no_grad():
        plain = Engine(spec, "plain", TorchOps(torch.float32)).prefill(full, full_attn, use_cache=False)
    plain = plain[:, ids.shape[1] - 1:].float()                 # positions that predicted each new token
    c = compare_logits(plain, secure_lg)
    return {"top1_agreement": c["top1"], "positions": c["positions"], "max_abs_logit_diff": c["max_abs"],
            "mean_kl": c["mean_kl"]}


_KEYS = ("seconds", "rounds", "bytes", "comm_seconds", "dealer_bytes", "dealer_messages")


def _offline_summary(client: dict, n_dec: int) -> dict | None:
    off = client["phases"].get("offline")
    if off is None:
        return None
    pre, dec = off["prefill"], off["decode"]
    return {"prefill": {**{k: pre[k] for k in _KEYS}, "tuples": pre["tuples"], "spooled_bytes": pre["spooled_bytes"]},
            "decode_per_token": {**{k: dec[k] / n_dec for k in _KEYS}, "spooled_bytes": dec["spooled_bytes"] / n_dec},
            "decode_tuples": dec["tuples"],
            "release": {k: off["release"][k] for k in _KEYS}}


def summary(cfg: GenConfig, spec, dealer: str, client: dict, server: dict, fid: dict, wall: float) -> dict:
    """Everything about one secure generation. ``prefill``/``decode_per_token`` are the ONLINE
    phase (with ``preprocess``: served from tuples dealt beforehand); ``offline`` is the dealing of
    those tuples (client side: for ``ttp`` the dealer's traffic); ``plan`` the dry run that sized it."""
    pre, dec = client["phases"]["prefill"], client["phases"]["decode"]
    n_dec = max(dec["tokens"], 1)
    plan = client["phases"].get("plan")
    return {
        "config": {**dataclasses.asdict(cfg), "dealer": dealer,
                   "dealer_trust": DEALER_TRUST[dealer]},
        "model": spec.config_dict(),
        "fidelity": fid,
        "wall_seconds": wall,
        "prefill": {k: pre[k] for k in _KEYS},
        "decode_per_token": {k: dec[k] / n_dec for k in _KEYS},
        "decode_tokens": dec["tokens"],
        "offline": _offline_summary(client, n_dec),
        "plan": None if plan is None else {k: plan[k] for k in ("cached",) + _KEYS},
        "setup_seconds": {"client": client["setup_seconds"], "server": server["setup_seconds"]},
        "peak_rss_mb": {"client": client["peak_rss_mb"], "server": server["peak_rss_mb"],
                        "dealer": client.get("dealer_peak_rss_mb")},  # the ttp dealer's process
        "scopes": {"client": {"prefill": pre["scopes"], "decode": dec["scopes"]},
                   "server": {"prefill": server["phases"]["prefill"]["scopes"],
                              "decode": server["phases"]["decode"]["scopes"]}},
    }


def format_summary(r: dict) -> str:
    f = r["fidelity"]
    pre, dec = r["prefill"], r["decode_per_token"]
    lines = [
        f"fidelity: top-1 agreement {f['top1_agreement']:.3f} over {f['positions']} positions, "
        f"max |logit diff| {f['max_abs_logit_diff']:.4f}, mean KL {f['mean_kl']:.2e}",
        f"online prefill: {pre['seconds']:.2f} s, {pre['rounds']} rounds, {pre['bytes'] / 1e6:.1f} MB "
        f"(comm {pre['comm_seconds']:.2f} s), dealt beside it {pre['dealer_bytes'] / 1e6:.1f} MB",
        f"online decode:  {dec['seconds']:.2f} s/token, {dec['rounds']:.0f} rounds/token, "
        f"{dec['bytes'] / 1e6:.1f} MB/token (comm {dec['comm_seconds']:.2f} s/token), "
        f"dealt beside it {dec['dealer_bytes'] / 1e6:.1f} MB/token",
        "modelled per token: " + ", ".join(
            f"{n} {l.time(dec['rounds'], dec['bytes'], dec['seconds']):.2f} s" for n, l in LINKS.items()),
        f"peak RSS: client {r['peak_rss_mb']['client']:.0f} MB, server {r['peak_rss_mb']['server']:.0f} MB"
        + (f", dealer {r['peak_rss_mb']['dealer']:.0f} MB" if r["peak_rss_mb"].get("dealer") else ""),
        f"dealer: {r['config']['dealer']} — {r['config']['dealer_trust']}",
    ]
    off = r.get("offline")
    if off:
        op, od = off["prefill"], off["decode_per_token"]
        lines.insert(3, f"offline ({r['config']['dealer']} dealer): prefill {op['seconds']:.2f} s, {op['rounds']} rounds, "
                        f"{op['bytes'] / 1e6:.2f} MB, dealt {op['dealer_bytes'] / 1e6:.2f} MB; decode "
                        f"{od['seconds']:.2f} s/token, dealt {od['dealer_bytes'] / 1e6:.2f} MB/token; this party's "
                        f"tuples kept on disk (encrypted): {op['spooled_bytes'] / 1e6:.0f} MB prefill, "
                        f"{od['spooled_bytes'] / 1e6:.1f} MB/token decode")
    elif r.get("offline", 1) is None:
        lines.insert(3, "offline: none (tuples dealt during the query, beside its rounds: the 'dealt' figures)")
    if r.get("plan"):
        p = r["plan"]
        lines.append("plan: cached" if p["cached"] else
                     f"plan (dry run over the public shapes, once per shape): {p['seconds']:.2f} s, "
                     f"{p['rounds']} rounds")
    lines += [
        "",
        table(r["scopes"]["client"]["prefill"], title="client cost by function, prefill"),
    ]
    return "\n".join(lines)


# -- many prompts: streaming, resumable -----------------------------------------------------------
def _cost_record(client: dict) -> dict:
    ph = client["phases"]
    out = {"online": {p: {k: ph[p][k] for k in _KEYS} for p in ("prefill", "decode")}}
    if "offline" in ph:
        out["offline"] = {p: {k: ph["offline"][p][k] for k in _KEYS} for p in ("prefill", "decode")}
    return out


def with_retries(session, retries: int):
    """``session()``, run again up to ``retries`` times when a party fails (:class:`PartyError`);
    the last failure propagates."""
    for attempt in range(retries + 1):
        try:
            return session()
        except parties.PartyError:
            if attempt == retries:
                raise


def run_prompts(cfg: GenConfig, prompts, out_path, dealer: str = "ttp", timeout_s: float = 120.0,
                retries: int = 0, env: dict | None = None, on_record=None) -> list[dict]:
    """Generate securely for each prompt (a list of token ids), one secure session per prompt,
    appending one JSON line per finished prompt to ``out_path`` as soon as it is done.

    Resumable: prompts already in the file (same index, ids and configuration) are skipped, a
    torn last line (a run killed mid-write) is dropped. A failed session is retried ``retries``
    times; then its :class:`pmpc.mpc.parties.PartyError` propagates and the finished prompts stay in
    the file — run again to resume. Returns the records of all prompts, in order. (For
    ``eval``'s own resumable runner, :func:`secure_generate_fn` gives the ``generate_fn`` hook.)"""
    out_path = pathlib.Path(out_path)
    limits = ("max_prompt_tokens", "max_batch")  # the server's limits do not change a result
    conf = hashlib.sha256(json.dumps({**{k: v for k, v in dataclasses.asdict(cfg).items() if k not in limits},
                                      "dealer": dealer}, sort_keys=True).encode()).hexdigest()[:12]
    out_path.parent.mkdir(parents=True, exist_ok=True)
    done: dict = {}
    for r in jsonl.read(out_path):
        if r.get("config") != conf:
            raise UserError(f"{out_path} holds results of another configuration; use another file")
        done[(r["i"], tuple(r["ids"]))] = r
    jsonl.repair(out_path)   # without a torn tail, then append
    records = []
    with open(out_path, "a", encoding="utf-8") as f:
        for i, ids in enumerate(prompts):
            ids = [int(t) for t in ids]
            if not ids:
                raise UserError(f"prompt {i} is empty")
            if (i, tuple(ids)) in done:
                records.append(done[(i, tuple(ids))])
                continue
            t = torch.tensor([ids])
            started = []

            def attempt():
                started.append(time.perf_counter())
                return run_generation(cfg, ClientInput(t, torch.ones_like(t)), timeout_s=timeout_s,
                                      dealer=dealer, env=env)[0]

            client = with_retries(attempt, retries)
            t0 = started[-1]   # the wall time of the attempt that succeeded
            rec = {"i": i, "ids": ids, "tokens": client["tokens"][0], "config": conf, "dealer": dealer,
                   "wall_seconds": time.perf_counter() - t0, **_cost_record(client)}
            f.write(json.dumps(rec) + "\n")
            f.flush()
            records.append(rec)
            if on_record:
                on_record(rec)
    return records


def template_prefix(codec, system: str) -> list:
    """The tokens every prompt rendered with ``codec``'s template and this system message starts
    with, whatever the user wrote (the system turn and the user's header): what two different
    messages share, so nothing of a user's own text is in it."""
    a, b = ([int(t) for t in codec.batch([codec.render(m, system)], "cpu")["input_ids"][0]] for m in ("a", "b"))
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return a[:n]


def shared_prefix(ids: torch.Tensor, attn: torch.Tensor, head: list) -> int:
    """How many of ``head``'s tokens begin every row of a left-padded batch (each row keeping at
    least one token of its own): the prefix the session computes once for all rows. The server
    learns the number only; it is the same for every batch of one template."""
    lengths = attn.long().sum(-1).tolist()
    n = min(len(head), min(lengths) - 1)
    for i, L in enumerate(lengths):
        row = ids[i, ids.shape[1] - L:].tolist()
        while n and row[:n] != head[:n]:
            n -= 1
    return n


def secure_generate_fn(cfg: GenConfig, codec, system: str = "default", dealer: str = "ttp",
                       timeout_s: float = 120.0, retries: int = 0, cost_path=None):
    """``generate_fn(prompts, seed) -> outputs`` for ``eval``'s streaming runner (``pmpc eval asr
    --secure``): each BATCH of prompts is rendered with ``codec`` (an :class:`pmpc.models.chat.Codec`),
    left-padded and generated in ONE secure session (prefill + KV-cache decode, the client's
    sampler seeded with the batch's seed; the template's part that every prompt starts with is
    computed once for the batch: :func:`template_prefix`); the new tokens are decoded up to the first EOS. The
    session's cost (client side: prefill and decode rounds, bytes, seconds) is appended to
    ``cost_path`` (JSONL) as each batch finishes, so an interrupted run keeps what it spent."""
    head = template_prefix(codec, system)

    def fn(prompts, seed):
        enc = codec.batch([codec.render(p, system) for p in prompts], "cpu")  # left-padded
        inp, att = enc["input_ids"], enc["attention_mask"]  # an empty row: check_input's one-line error
        c = dataclasses.replace(cfg, seed=seed)
        pre = shared_prefix(inp, att, head)
        t0 = time.perf_counter()
        client = with_retries(lambda: run_generation(c, ClientInput(inp, att, prefix=pre), timeout_s=timeout_s,
                                                     dealer=dealer)[0], retries)
        if cost_path is not None:
            rec = {"seed": seed, "batch": inp.shape[0], "prompt_tokens": inp.shape[1], "shared_prefix": pre,
                   "new_tokens": cfg.max_new_tokens,
                   "wall_seconds": round(time.perf_counter() - t0, 3),
                   **{ph: dict(client["phases"][ph]) for ph in ("prefill", "decode")}}
            with open(pathlib.Path(cost_path), "a", encoding="utf-8") as f:
                f.write(json.dumps(rec) + "\n")
        return [codec.decode(t) for t in client["tokens"]]

    return fn
