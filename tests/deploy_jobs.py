"""Party-side jobs for the deployment, fault and privacy tests (module level: the forkserver
pickles them by name)."""
from __future__ import annotations

import numpy as np
import torch

from pmpc import models
from pmpc.mpc.crypten_ops import CrypTenOps
from pmpc.mpc.secure import GenConfig, generate_party


class Recorder:
    """Keeps what this party RECEIVES from its peer, message by message: in a 2-party all-reduce
    that is the peer's contribution (result minus, or XOR, our own), in a gather the peer's entry,
    in a broadcast/recv/scatter from the peer the tensor itself. (Opened sums are not messages:
    a masked 1-bit opening is legitimately 0/1, while every share on the wire is a uniform ring
    element.)"""

    def __init__(self):
        from pmpc.mpc.crypten_compat import comm

        self.got: list = []      # messages from the peer
        self.opened: list = []   # values opened to both parties (sums of shares): must look random
        c = self.c = comm.get()
        self.rank = c.get_rank()
        for name in ("recv", "broadcast", "all_reduce", "reduce", "gather", "all_gather", "scatter"):
            setattr(c, name, self._wrap(name, getattr(c, name)))

    def _keep(self, t, into=None):
        if torch.is_tensor(t) and not t.is_floating_point():
            (self.got if into is None else into).append(t.detach().clone().reshape(-1))

    def _wrap(self, name, fn):
        import torch.distributed as dist

        def wrapped(*a, **k):
            r = fn(*a, **k)
            if name in ("all_reduce", "reduce"):
                mine = a[0]
                if name == "reduce" and a[1] != self.rank:
                    return r
                pos = 1 if name == "all_reduce" else 2
                op = k.get("op", a[pos] if len(a) > pos else dist.ReduceOp.SUM)
                xor = op == dist.ReduceOp.BXOR
                pairs = zip(mine, r) if k.get("batched") else [(mine, r)]
                for m, res in pairs:
                    self._keep(res ^ m if xor else res - m)
                    if name == "all_reduce":  # an opening to both; reduce = an output to this party
                        self._keep(res, self.opened)
            elif name in ("gather", "all_gather"):
                if isinstance(r, list) and len(r) > 1:
                    for j, v in enumerate(r):
                        if j != self.rank:
                            self._keep(v)
            elif name == "broadcast":
                src = a[1]
                if src != self.rank:
                    for v in (r if isinstance(r, list) else [r]):
                        self._keep(v)
            elif name == "scatter":
                if a[1] != self.rank:
                    self._keep(r)
            else:  # recv
                self._keep(r)
            return r

        return wrapped


def _cat(xs) -> np.ndarray:
    return torch.cat([x.to(torch.int64) for x in xs]).numpy() if xs else np.zeros(0, np.int64)


def _received(rec: Recorder, start: int) -> np.ndarray:
    return _cat(rec.got[start:])


def privacy_session(cfg: GenConfig, n_queries: int, rank, world_size, inp):
    """Run ``n_queries`` generations in one session. Each party records every ring element it
    receives, per query; the client also keeps its own shares of the logits it reveals to itself.
    Last, a CONTROL: the client deliberately opens a known secret to both parties, and the server
    opens one of its weight tables to both — the detectors of the tests must see those."""
    rec = Recorder()
    logit_shares = []
    orig = CrypTenOps.reveal

    def reveal(self, x, dst=None):
        if dst == 0 and rank == 0:
            logit_shares.append(x.share.detach().clone().reshape(-1).numpy())
        return orig(self, x, dst)

    CrypTenOps.reveal = reveal
    per_query, outs, shares_per_query = [], [], []
    try:
        for q in range(n_queries):
            start, n_shares = len(rec.got), len(logit_shares)
            out = generate_party(cfg, rank, world_size, inp[q] if rank == 0 else None)
            per_query.append(_received(rec, start))
            shares_per_query.append(np.concatenate(logit_shares[n_shares:]) if rank == 0 else None)
            outs.append({k: out[k] for k in ("tokens", "logits") if k in out})
    finally:
        CrypTenOps.reveal = orig
    opened = _cat(rec.opened)
    ops = CrypTenOps()
    mark = len(rec.got), len(rec.opened)
    known = torch.arange(1, 257, dtype=torch.float32) * 1.37  # public to the test, secret in the run
    x = ops.share(known, src=0)
    my_share = x.share.clone().numpy()
    ops.reveal(x)                                               # control: opened to BOTH parties
    control_secret = {"messages": _cat(rec.got[mark[0]:]), "opened": _cat(rec.opened[mark[1]:]),
                      "client_share": my_share if rank == 0 else None}
    mark = len(rec.got), len(rec.opened)
    spec = models.load_shapes(cfg.model) if rank == 0 else models.load(cfg.model)[0]
    ops.reveal(ops.share(spec.weights["embed.tok"], src=1))     # control: the server opens a weight table
    control_weight = {"messages": _cat(rec.got[mark[0]:]), "opened": _cat(rec.opened[mark[1]:])}
    return {"received": per_query, "opened": opened, "outputs": outs,
            "logit_shares": shares_per_query if rank == 0 else None,
            "control_secret": control_secret, "control_weight": control_weight}


def server_raises(rank, world_size):
    """The server fails on its own (a bug, not a lost peer); the client is waiting on it."""
    ops = CrypTenOps()
    x = ops.share(torch.ones(4), src=0)
    if rank == 1:
        raise ValueError("boom in the server")
    return float(ops.reveal(ops.mul(x, x)).sum())
