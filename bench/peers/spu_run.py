"""Runs in the peer venv (``bench/peers/venv.sh``): the Llama forward of ``llama_xp`` under SecretFlow
SPU, two parties as two threads of this process over SPU's in-memory link, with SPU's profiler on.
Prints one JSON object on stdout.

    spu_run.py forward --npz W.npz --ids IDS.json --protocol SEMI2K|CHEETAH [--layers K] --out LOGITS.npy
    spu_run.py micro --protocol CHEETAH --field FM64 [--n 4096]
    spu_run.py check --npz W.npz --ids IDS.json    (jax.numpy path vs numpy path, plaintext)

Counters are SPU's own, from party 0's profile ("Link details: total send bytes, recv bytes, send
actions"): bytes = sent + received by party 0 (= all traffic of the 2-party link), rounds = party
0's send actions. Peak memory is this process's (both parties together).

Trust and data: the model's weights are PUBLIC inputs (an open-weight model, as in pmpc's public
-weight rows: products with them are local), the embedded tokens are the client's SECRET input,
the logits are revealed. SEMI2K takes Beaver triples from party 0 (SPU's default
``TrustedFirstParty``: pmpc's ``local`` dealer), CHEETAH needs no dealer (silent OT + RLWE).

``--layers K`` (scaled mode, for runs that cannot fit): runs layers 0..K-1 and, separately, the
final norm + lm_head, and reports both so the caller can scale the layers to the model's depth.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import resource
import sys
import tempfile
import threading
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import llama_xp  # noqa: E402

LINK = re.compile(r"Link details: total send bytes (\d+), recv bytes (\d+), send actions (\d+)")
OP = re.compile(r"- (\S+), executed (\d+) times, duration ([\d.e+-]+)s, send bytes (\d+) recv bytes (\d+), "
                r"send actions (\d+)")


class Captured:
    """Redirects fds 1 and 2 (SPU logs from C++) to a file while the block runs; ``text`` after."""

    def __enter__(self):
        sys.stdout.flush(), sys.stderr.flush()
        self.f = tempfile.TemporaryFile(mode="w+")
        self.saved = os.dup(1), os.dup(2)
        os.dup2(self.f.fileno(), 1), os.dup2(self.f.fileno(), 2)
        return self

    def __exit__(self, *exc):
        sys.stdout.flush(), sys.stderr.flush()
        os.dup2(self.saved[0], 1), os.dup2(self.saved[1], 2)
        os.close(self.saved[0]), os.close(self.saved[1])
        self.f.seek(0)
        self.text = self.f.read()
        self.f.close()


def config(protocol: str, field: str):
    import spu.libspu as libspu

    cfg = libspu.RuntimeConfig(protocol=getattr(libspu.ProtocolKind, protocol),
                               field=getattr(libspu.FieldType, field))
    cfg.enable_pphlo_profile = True  # per-op and per-link counters in party 0's log
    return cfg


def run(fn, secret: list, public: list, cfg) -> tuple[list, dict]:
    """Compile ``fn(*secret, *public)`` and run it on 2 simulated parties; (outputs, stats)."""
    import spu.api as spu_api
    import spu.libspu as libspu
    import spu.utils.frontend as spu_fe

    vis = [libspu.Visibility.VIS_SECRET] * len(secret) + [libspu.Visibility.VIS_PUBLIC] * len(public)
    args = list(secret) + list(public)
    names = [f"in{i}" for i in range(len(args))]
    t0 = time.perf_counter()
    exe, _ = spu_fe.compile(spu_fe.Kind.JAX, fn, args, {}, names, vis, lambda out: [f"out{i}" for i in range(len(out))])
    compile_s = time.perf_counter() - t0
    io = spu_api.Io(2, cfg)
    shares = [io.make_shares(np.asarray(a), v) for a, v in zip(args, vis)]
    desc = libspu.link.Desc()
    for r in range(2):
        desc.add_party(f"id_{r}", f"thread_{r}")
    results, errors = [None, None], []

    def party(rank):
        try:
            lctx = libspu.link.create_mem(desc, rank)
            rc = libspu.RuntimeConfig(cfg)
            if rank:
                rc.enable_pphlo_profile = False
            rt = spu_api.Runtime(lctx, rc)
            for name, sh in zip(exe.input_names, shares):
                rt.set_var(name, sh[rank])
            rt.run(exe)
            results[rank] = [rt.get_var(n) for n in exe.output_names]
        except BaseException as e:  # noqa: BLE001  (re-raised in the caller)
            errors.append(e)

    with Captured() as cap:
        t1 = time.perf_counter()
        threads = [threading.Thread(target=party, args=(r,)) for r in range(2)]
        [t.start() for t in threads]
        [t.join() for t in threads]
        wall = time.perf_counter() - t1
    if errors:
        raise errors[0]
    outs = [io.reconstruct(list(o)) for o in zip(*results)]
    m = LINK.search(cap.text)
    if m is None:
        raise RuntimeError("SPU printed no link statistics (profiling off?)")
    ops = {}
    for g in OP.finditer(cap.text):
        name = g.group(1)
        if name.startswith("pphlo."):
            ops[name] = {"calls": int(g.group(2)), "seconds": float(g.group(3)),
                         "bytes": int(g.group(4)) + int(g.group(5)), "rounds": int(g.group(6))}
    stats = {"wall_s": wall, "compile_s": compile_s, "bytes": int(m.group(1)) + int(m.group(2)),
             "rounds": int(m.group(3)), "ops": ops}
    return outs, stats


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def cmd_forward(a) -> dict:
    import jax.numpy as jnp

    w, cfg_m = llama_xp.load_npz(a.npz)
    ids = np.asarray(json.loads(open(a.ids).read()), dtype=np.int64)
    x = w["embed.tok"][ids].astype(np.float32)
    cfg = config(a.protocol, a.field)
    out = {"protocol": a.protocol, "field": a.field, "tokens": int(len(ids)), "weights": "public",
           "n_layers": cfg_m["n_layers"]}
    if a.layers is None:
        names = [n for i in range(cfg_m["n_layers"]) for n in llama_xp.layer_names(i)] + ["final_norm.w", "lm_head.w"]
        pub = [w[n].astype(np.float32) for n in names] + [w["inv_freq"].astype(np.float32)]

        def fn(xs, *ws):
            return llama_xp.forward(xs, dict(zip(names + ["inv_freq"], ws)), cfg_m, jnp)

        (logits,), st = run(fn, [x], pub, cfg)
        np.save(a.out, np.asarray(logits, dtype=np.float64))
        out.update(mode="full", **st)
    else:
        k = a.layers
        names = [n for i in range(k) for n in llama_xp.layer_names(i)]

        def body(xs, *ws):
            return llama_xp.forward(xs, dict(zip(names + ["inv_freq"], ws)), cfg_m, jnp,
                                    layers=range(k), with_head=False)

        pub = [w[n].astype(np.float32) for n in names] + [w["inv_freq"].astype(np.float32)]
        (hid,), st_layers = run(body, [x], pub, cfg)
        np.save(a.out, np.asarray(hid, dtype=np.float64))
        ref = llama_xp.forward(x.astype(np.float64), w, cfg_m, np, layers=range(k), with_head=False)

        def hd(xs, g, lm):
            return llama_xp.head(xs, {"final_norm.w": g, "lm_head.w": lm}, cfg_m, jnp)

        _, st_head = run(hd, [ref.astype(np.float32)], [w["final_norm.w"].astype(np.float32),
                                                           w["lm_head.w"].astype(np.float32)], cfg)
        out.update(mode=f"scaled: layers 0..{k - 1} run, x {cfg_m['n_layers'] / k:g}; head run once",
                   layers_run=k, layers=st_layers, head=st_head,
                   hidden_max_abs_err=float(np.abs(np.asarray(hid, np.float64) - ref).max()))
    out["peak_rss_mb"] = peak_rss_mb()
    return out


def cmd_check(a) -> dict:
    """The jax.numpy path (what SPU compiles) against the numpy float64 path (what the tests check
    against HF) on the same weights and tokens, in plaintext."""
    import jax.numpy as jnp

    w, cfg_m = llama_xp.load_npz(a.npz)
    ids = np.asarray(json.loads(open(a.ids).read()), dtype=np.int64)
    x = w["embed.tok"][ids]
    ref = llama_xp.forward(x.astype(np.float64), {k: v.astype(np.float64) for k, v in w.items()}, cfg_m, np)
    got = np.asarray(llama_xp.forward(jnp.asarray(x), {k: jnp.asarray(v) for k, v in w.items()}, cfg_m, jnp))
    return {"jax_float32_vs_numpy_float64_max_abs": float(np.abs(got - ref).max()),
            "top1_agree": float((got.argmax(-1) == ref.argmax(-1)).mean()), "logit_abs_max": float(np.abs(ref).max())}


def cmd_micro(a) -> dict:
    """Marginal cost of one comparison, product and truncation per element, from runs with 1 and 2
    sequential applications on n elements (the difference removes set-up such as CHEETAH's OT
    base correlations): bytes per element and rounds per application."""
    import jax.numpy as jnp

    cfg = config(a.protocol, a.field)
    rng = np.random.default_rng(0)
    x = rng.standard_normal(a.n).astype(np.float32)
    y = rng.standard_normal(a.n).astype(np.float32)
    prims = {
        # x < y on secrets: SPU's MSB/comparison protocol on the whole field
        "comparison": lambda u, v: (u < v).astype(jnp.float32) + u,
        # secret x secret product in fixed point: includes the truncation that follows it
        "product": lambda u, v: u * v,
        # truncation alone: a product with a public non-integer constant (local mul + trunc)
        "truncation": lambda u, v: u * 0.7 + v,
    }
    res = {"protocol": a.protocol, "field": a.field, "n": a.n}
    for name, f in prims.items():
        costs = []
        for reps in (1, 2):
            def fn(u, v, f=f, reps=reps):
                for _ in range(reps):
                    u = f(u, v)
                return u

            _, st = run(fn, [x, y], [], cfg)
            costs.append(st)
        res[name] = {"bytes_per_element": (costs[1]["bytes"] - costs[0]["bytes"]) / a.n,
                     "rounds": costs[1]["rounds"] - costs[0]["rounds"],
                     "seconds_per_element": (costs[1]["wall_s"] - costs[0]["wall_s"]) / a.n,
                     "one_application": {k: costs[0][k] for k in ("bytes", "rounds", "wall_s")}}
    # secret x secret matmul at the attention shape of SmolLM2 at 16 tokens (9 heads, [16, 64] x [64, 16])
    h, t, d = a.heads, a.tokens, a.head_dim
    qa = rng.standard_normal((h, t, d)).astype(np.float32)
    kb = rng.standard_normal((h, d, t)).astype(np.float32)
    costs = []
    for reps in (1, 2):
        def mm(q, k, reps=reps):
            return sum(((q + i) @ k) for i in range(reps))

        costs.append(run(mm, [qa, kb], [], cfg)[1])
    macs = h * t * d * t
    res["matmul"] = {"shape": [h, t, d, t], "bytes_per_mac": (costs[1]["bytes"] - costs[0]["bytes"]) / macs,
                     "rounds": costs[1]["rounds"] - costs[0]["rounds"]}
    return res


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    f = sub.add_parser("forward")
    f.add_argument("--npz", required=True)
    f.add_argument("--ids", required=True)
    f.add_argument("--protocol", choices=["SEMI2K", "CHEETAH"], required=True)
    f.add_argument("--field", default="FM64")
    f.add_argument("--layers", type=int, default=None)
    f.add_argument("--out", required=True)
    c = sub.add_parser("check")
    c.add_argument("--npz", required=True)
    c.add_argument("--ids", required=True)
    m = sub.add_parser("micro")
    m.add_argument("--protocol", choices=["SEMI2K", "CHEETAH"], default="CHEETAH")
    m.add_argument("--field", default="FM64")
    m.add_argument("--n", type=int, default=4096)
    m.add_argument("--heads", type=int, default=9)
    m.add_argument("--tokens", type=int, default=16)
    m.add_argument("--head-dim", type=int, default=64)
    a = p.parse_args(argv)
    res = {"forward": cmd_forward, "check": cmd_check, "micro": cmd_micro}[a.cmd](a)
    print(json.dumps(res))


if __name__ == "__main__":
    main()
