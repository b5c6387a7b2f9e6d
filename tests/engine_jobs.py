"""Party-side jobs for the engine tests (module level: the forkserver pickles them by name)."""
from __future__ import annotations

import os
import time

import numpy as np
import torch

from pmpc.mpc import cost
from pmpc import models
from pmpc.engine import Engine
from pmpc.mpc.crypten_ops import CrypTenOps
from pmpc.ops import TorchOps

ARCHS = ("llama", "qwen2", "phi3", "mistral", "gpt2", "bert")


def _ids(spec, seed=3, shape=(2, 6)):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, spec.vocab, shape, generator=g)


def shared_prefix_batch(spec, prefix=4, own=(3, 1, 5)):
    """Rows that begin with the same ``prefix`` tokens, then their own, left-padded."""
    g = torch.Generator().manual_seed(7)
    head = torch.randint(0, spec.vocab, (prefix,), generator=g)
    rows = [torch.cat([head, torch.randint(0, spec.vocab, (n,), generator=g)]) for n in own]
    T = max(len(r) for r in rows)
    ids = torch.zeros(len(rows), T, dtype=torch.long)
    attn = torch.zeros_like(ids)
    for i, r in enumerate(rows):
        ids[i, T - len(r):], attn[i, T - len(r):] = r, 1
    return ids, attn


def shared_prefix_decode(protocol, steps, rank, world_size):
    """Under 2PC (public weights): the batch of :func:`shared_prefix_batch` prefilled as the plain
    batch and with its shared prefix (4 tokens), then ``steps`` decode steps each. Returns (client)
    per session (keyed by its prefix) the revealed last-position logits of every step [steps + 1,
    B, V] and the shapes this party opened in each decode step."""
    from tests.fixed_operand_jobs import OpenLog

    spec = models.spec_from_hf(models.tiny_model("llama"), "llama")
    ids, attn = shared_prefix_batch(spec)
    ops = CrypTenOps(cost.Tracker(cost.crypten_stats))
    e = Engine(spec, protocol, ops)
    log = OpenLog()
    out = {}
    for prefix in (0, 4):
        logits = [ops.reveal(e.prefill(ids, attn, prefix=prefix, last_only=True)[:, -1], dst=0)]
        log.take()
        opened = []
        for t in range(steps):
            logits.append(ops.reveal(e.decode(ids[:, -1:] * 0 + 5 + t)[:, -1], dst=0))
            opened.append(log.take())
        out[prefix] = (torch.stack(logits).double().numpy() if rank == 0 else None, opened)
    return out if rank == 0 else None


def forward_all_archs(weights, rank, world_size):
    """Secure prefill of every tiny architecture with ``exact``; the client returns max errors."""
    out = {}
    for arch in ARCHS:
        spec = models.spec_from_hf(models.tiny_model(arch), arch)
        ids = _ids(spec)
        attn = torch.ones_like(ids)
        if arch == "llama":  # left padding on one row
            attn[1, :2] = 0
        ops = CrypTenOps(cost.Tracker(cost.crypten_stats))
        got = ops.reveal(Engine(spec, "exact", ops, weights=weights).prefill(ids, attn), dst=0)
        if rank == 0:
            ref = Engine(spec, "plain", TorchOps()).prefill(ids, attn)
            keep = attn.bool()  # padded positions carry no meaning
            out[arch] = float((got.double() - ref)[keep].abs().max())
    return out


def packed_prefill(weights, rank, world_size):
    """Secure prefill of a padded batch with a shared prefix and packed rows (``last_only``) and the
    plain padded prefill, both revealed to the client: their largest difference at each row's last
    position, and its largest plaintext logit."""
    spec = models.spec_from_hf(models.tiny_model("llama"), "llama")
    ids = _ids(spec, shape=(3, 7))
    ids[:, :3] = ids[0, :3]                       # every row starts with the same 3 tokens...
    attn = torch.ones_like(ids)
    attn[1, :2] = 0                               # ...after its own left padding
    ids[1, 2:5] = ids[0, :3]
    ops = CrypTenOps(cost.Tracker(cost.crypten_stats))
    e = Engine(spec, "exact", ops, weights=weights)
    got = ops.reveal(e.prefill(ids, attn, prefix=3, last_only=True)[:, -1], dst=0)
    ref = ops.reveal(e.prefill(ids, attn)[:, -1], dst=0)
    if rank == 0:
        return float((got - ref).abs().max()), float(ref.abs().max())


def fail_midway(mode, rank, world_size):
    """The server dies or stalls after the first secure ops; the client keeps computing."""
    ops = CrypTenOps()
    x = ops.share(torch.randn(4, 4), src=0)
    y = ops.mul(x, x)
    if rank == 1:
        if mode == "die":
            os._exit(9)
        time.sleep(3600)  # stall
    for _ in range(5):
        y = ops.mul(y, x)
    return float(ops.reveal(y).sum())


class Recorder:
    """Wraps the communicator of one party and keeps every tensor it receives."""

    def __init__(self):
        from pmpc.mpc.crypten_compat import comm

        self.got = []
        c = comm.get()
        for name in ("recv", "broadcast", "all_reduce", "reduce", "gather", "all_gather", "scatter"):
            fn = getattr(c, name, None)
            if fn is None:
                continue
            setattr(c, name, self._wrap(fn))

    def _wrap(self, fn):
        def wrapped(*a, **k):
            r = fn(*a, **k)
            for v in (r if isinstance(r, (list, tuple)) else [r]):
                if torch.is_tensor(v):
                    self.got.append(v.detach().clone().reshape(-1))
            return r

        return wrapped


def server_view(rank, world_size, inp):
    """Generate on stories260K; the server records all it receives and reports on it."""
    from pmpc.mpc.secure import GenConfig, generate_party

    rec = Recorder() if rank == 1 else None
    out = generate_party(GenConfig(model=os.environ["PMPC_STORIES"], protocol="exact", max_new_tokens=2),
                         rank, world_size, inp)
    if rank == 1:
        got = torch.cat([g.to(torch.int64) for g in rec.got if not g.is_floating_point()])
        return {"received": got.numpy()}
    return {"tokens": out["tokens"]}


def embed_plain(ids):
    spec, _ = models.load(os.environ["PMPC_STORIES"])
    h = spec.weights["embed.tok"][ids]
    return np.round(h.numpy() * 2 ** 16).astype(np.int64)


def scopes_and_total(protocol, rank, world_size):
    """A secure prefill and one decode step of the tiny Llama, every op inside the tracker's
    reach; returns, per phase, the rounds/bytes the scopes add up to and the communicator's own
    count over the same span."""
    spec = models.spec_from_hf(models.tiny_model("llama"), "llama")
    ids = _ids(spec)
    ops = CrypTenOps(cost.Tracker(cost.crypten_stats))
    eng = Engine(spec, protocol, ops, weights="public")
    out = {}
    for phase, fn, arg in (("prefill", eng.prefill, ids), ("decode", eng.decode, ids[:, :1])):
        ops.tracker.reset()
        r0, b0, _ = cost.crypten_stats()
        fn(arg)
        r1, b1, _ = cost.crypten_stats()
        tot = ops.tracker.total()
        out[phase] = {"scopes": (tot.rounds, tot.bytes), "comm": (r1 - r0, b1 - b0),
                      "names": sorted(ops.tracker.scopes)}
    return out


class FileWatch:
    """A :class:`pmpc.mpc.secure.Watch` stand-in that logs what the client process shows."""

    def __init__(self, path):
        self.path = str(path)

    def layer(self, phase, i, n):
        with open(self.path, "a") as f:
            f.write(f"layer{i}\n")

    def token(self, step, ids):
        with open(self.path, "a") as f:
            f.write(f"token{int(ids[0])}\n")


def decode_rounds(protocol, rank, world_size):
    """Rounds per layer of one decoded token of ``tiny-random-llama`` (public weights), by cost
    scope: a 6-token prefill, then one decode step measured."""
    spec, _ = models.load("tiny-random-llama")
    ops = CrypTenOps(cost.Tracker(cost.crypten_stats))
    eng = Engine(spec, protocol, ops, weights="public")
    eng.prefill(_ids(spec, shape=(1, 6)))
    ops.tracker.reset()
    eng.decode(_ids(spec, seed=4, shape=(1, 1)))
    return {"layers": spec.n_layers,
            "scopes": {name: (c["rounds"], c["calls"]) for name, c in ops.tracker.snapshot().items()}}
