"""Party-side jobs for the fixed-operand tests (module level: the forkserver pickles them by name)."""
from __future__ import annotations

import os

import torch

from pmpc import models
from pmpc.engine import Engine, fold_weights
from pmpc.mpc import cost
from pmpc.mpc.crypten_ops import CrypTenOps
from pmpc.ops import TorchOps

STORIES = os.environ.get("PMPC_STORIES", "")
PROMPT = [1, 403, 407, 261, 378, 429, 334, 287]  # stories260K token ids


class OpenLog:
    """Records the shape of every tensor this party opens (``all_reduce``: a reveal to both)."""

    def __init__(self):
        from pmpc.mpc.crypten_compat import comm

        self.c = comm.get()
        self.orig = self.c.all_reduce
        self.shapes: list = []
        self.c.all_reduce = self._all_reduce  # an instance attribute: shadows the method

    def _all_reduce(self, input, *a, **k):
        for t in input if isinstance(input, (list, tuple)) else [input]:
            self.shapes.append(tuple(t.shape))
        return self.orig(input, *a, **k)

    def take(self) -> list:
        out, self.shapes = self.shapes, []
        return out


def decode_session(fixed: bool, rank, world_size):
    """stories260K, ``exact``, private weights: setup, a prefill of 4 tokens, 3 decode steps
    against the KV cache, then a recompute of the 7 positions without the cache. Returns (client)
    the logits of each step, the recompute's, the plaintext model's, what was opened in each phase
    and the bytes each phase cost."""
    spec = models.load_shapes(STORIES) if rank == 0 else models.load(STORIES)[0]
    ids = torch.tensor([PROMPT])
    P = len(PROMPT) - 4
    log = OpenLog()
    ops = CrypTenOps(cost.Tracker(cost.crypten_stats))

    def spent(fn):
        b0 = cost.crypten_stats()[1]
        ops.tracker.reset()
        out = fn()
        return out, cost.crypten_stats()[1] - b0, dict(ops.tracker.snapshot())

    eng, setup_bytes, _ = spent(lambda: Engine(spec, "exact", ops, weights="private", fixed_operands=fixed))
    phases = {"setup": {"opened": log.take(), "bytes": setup_bytes}}
    steps = []
    lg, b, sc = spent(lambda: ops.reveal(eng.prefill(ids[:, :P])[:, -1], dst=0))
    steps.append(lg)
    phases["prefill"] = {"opened": log.take(), "bytes": b}
    for t in range(P, len(PROMPT) - 1):
        lg, b, sc = spent(lambda: ops.reveal(eng.decode(ids[:, t:t + 1])[:, -1], dst=0))
        steps.append(lg)
        weight_bytes = sum(sc.get(s, {}).get("bytes", 0) for s in ("linear", "embed", "lm_head"))  # products with W
        phases[f"decode{t - P}"] = {"opened": log.take(), "bytes": b, "weight_bytes": weight_bytes}
    full = ops.reveal(eng.prefill(ids[:, :-1], use_cache=False), dst=0)
    if rank != 0:
        return None
    plain = Engine(models.load(STORIES)[0], "plain", TorchOps()).prefill(ids[:, :-1], use_cache=False)
    mats = {k: tuple(v.shape) for k, v in fold_weights(spec).items()  # the matrices the engine multiplies by
            if (k == "embed.tok" or (k.endswith(".w") and v.dim() == 2))
            and not (spec.tied and k == "lm_head.w")}  # a tied output layer is the embedding, held once
    d = next(f.d for f in eng.W.values() if hasattr(f, "d")) if fixed else None
    return {"steps": torch.stack(steps, 1).double().numpy(), "recompute": full[:, P - 1:].double().numpy(),
            "plain": plain[:, P - 1:].double().numpy(), "phases": phases, "weight_shapes": mats,
            "opened_mask": None if d is None else d.reshape(-1).numpy()}


def reuse_a_mask(rank, world_size):
    """A party 0 that asks the dealer for a second mask under an id it already holds (to have B
    used against another value); party 1 follows along. The dealer must refuse."""
    from pmpc.mpc.crypten_compat import crypten
    from pmpc.mpc import fixed_operand  # noqa: F401  (the providers' fixed-operand methods)

    provider = crypten.mpc.get_default_provider()
    provider.fixed_operand_mask("0/layers.0.o.w", (4, 4))
    provider.fixed_operand_mask("0/layers.0.o.w", (4, 4))
    provider.fixed_operand_triple("0/layers.0.o.w", (1, 4), (4, 4))  # reaches the dealer: it must be gone
    return "dealt"


class KVJob:
    """The KV cache as growing fixed operands (``CrypTenOps.kv_append``, products through
    ``CrypTenOps.matmul``): a prefill of ``keys[:, :, :T0]`` then one row at a time; at every
    step the scores q K^T and the mix p V. Returns the revealed products, the shapes opened at
    each step (at this party's communicator) and what this party received in those openings."""

    def __init__(self, q, keys, values, probs, t0: int):
        self.q, self.keys, self.values, self.probs, self.t0 = q, keys, values, probs, t0

    def __call__(self, rank, world_size):
        from pmpc.mpc.crypten_compat import comm

        ops = CrypTenOps(cost.Tracker(cost.crypten_stats))
        sh = {n: ops.share(torch.from_numpy(getattr(self, n)), src=0) for n in ("q", "keys", "values", "probs")}
        log = OpenLog()
        c = comm.get()
        got = []
        orig = c._exchange

        def spy(ts):
            out = orig(ts)
            got.extend(t.reshape(-1).clone() for t in out)
            return out

        c._exchange = spy
        cache = [None, None]
        steps, opened = [], []
        L = self.keys.shape[2]
        bounds = [self.t0] + list(range(self.t0 + 1, L + 1))
        lo = 0
        for hi in bounds:
            k, v = ops.kv_append(cache, sh["keys"][:, :, lo:hi], sh["values"][:, :, lo:hi], "layers.0")
            log.take()
            s = ops.matmul(sh["q"], k.transpose(-1, -2))
            o = ops.matmul(sh["probs"][..., :hi], v)
            opened.append(log.take())
            steps.append((ops.reveal(s).numpy(), ops.reveal(o).numpy()))
            lo = hi
        c._exchange = orig
        return {"steps": steps, "opened": opened, "received": torch.cat(got).numpy() if got else None}


def _fingerprint(t: torch.Tensor) -> tuple:
    t = t.detach().double()
    return tuple(t.shape), round(float(t.sum()), 6), round(float((t * t).sum()), 6)


def held_after_setup(release: bool, rank, world_size):
    """stories260K, private weights: build the engine (``release_weights=release``), then list what
    this party still holds. Returns the number of live float tensors (found by the garbage
    collector) that carry one of the server's weight matrices, as loaded or as folded; the bytes of
    the engine's own tensors against one share and one opening per weight element; and whether the
    tied output layer reads the embedding's storage."""
    import gc

    from pmpc.mpc import fixed_operand as F

    spec = models.load_shapes(STORIES) if rank == 0 else models.load(STORIES)[0]
    real = models.load(STORIES)[0]  # what to look for (fingerprints only: the copy is dropped)
    prints = {_fingerprint(v) for W in (real.weights, fold_weights(real)) for v in W.values() if v.dim() == 2}
    unique = sum(v.numel() for k, v in fold_weights(real).items()
                 if (k == "embed.tok" or (k.endswith(".w") and v.dim() == 2)) and not (real.tied and k == "lm_head.w"))
    del real
    eng = Engine(spec, "exact", CrypTenOps(cost.Tracker(cost.crypten_stats)), weights="private",
                 release_weights=release)
    gc.collect()
    plain = sum(1 for o in gc.get_objects()
                if isinstance(o, torch.Tensor) and o.is_floating_point() and o.dim() == 2 and o.numel() > 64
                and 0 not in o.stride() and _fingerprint(o) in prints)
    storages = {}
    for f in eng.W.values():
        for t in ([f.w._tensor.share, f.d] if isinstance(f, F.FixedOperand) else [f._tensor.share]):
            storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
    fixed = [f for f in eng.W.values() if isinstance(f, F.FixedOperand)]
    return {"plain_weights": plain, "fixed_bytes": sum(2 * 8 * f.w._tensor.share.numel() for f in fixed
                                                       if not f.transposed),
            "unique_elements": unique, "engine_bytes": sum(storages.values()),
            "tied": spec.tied and eng.W["lm_head.w"].w is eng.W["embed.tok"].w and eng.W["lm_head.w"].transposed,
            "spec_bytes": sum(v.untyped_storage().nbytes() for v in spec.weights.values())}
