"""Where a protocol's fidelity goes: its plaintext emulation with one function at a time swapped
for the exact one.

The engine runs the protocol on ``TorchOps`` (float64; with ``--fxp 16`` secret products are
rounded to the 2^-16 grid as MPC truncates them) on the same WikiText-2 windows as ``pmpc bench``
(:func:`eval.perf.bench.windows`), and each variant is compared with the plaintext model
(``plain``): top-1 agreement, mean KL, largest logit error. A position the emulation misses is
listed with the plaintext model's own margin there (its top-1 minus top-2 logit): a miss on a
near-tie says little about the approximation, a miss on a wide margin says much.

No MPC runs here: if the emulation misses the same positions as the secure run, the misses belong
to the protocol's approximation, not to the runtime (MPC equals the emulation, tests/test_protocols.py).

    python -m eval.perf.ablate -p bumblebee -w 4 [--fxp 16] [-o OUT.json]
    python -m eval.perf.ablate -p bumblebee --fxp 16 --prompt "What is the capital of France?" --new 4

With ``--prompt`` (chat template applied, as ``pmpc run`` does) each variant generates greedily and
is compared, as ``pmpc run`` reports fidelity, with the plaintext model teacher-forced on the
variant's own tokens.
"""
from __future__ import annotations

import argparse
import json
import time

import torch

from eval.perf.bench import margins, misses, windows
from pmpc import models
from pmpc.engine import Engine, compare_logits
from pmpc.ops import TorchOps
from pmpc.paths import wikitext_path
import protocols

# name -> the methods taken from the plaintext reference (``plain``) for that variant
SWAPS = {
    "none": (),
    "silu": ("silu",),
    "gelu": ("gelu", "gelu_tanh"),
    "exp": ("exp",),
    "reciprocal": ("reciprocal", "reciprocal_times"),
    "softmax": ("softmax",),
    "norm": ("rms_norm", "layer_norm"),
    "all": ("silu", "gelu", "gelu_tanh", "softmax", "rms_norm", "layer_norm"),
}


def exact_times(x, times, ops):
    return times / x


def swapped(name: str, swap: str) -> protocols.Protocol:
    """The protocol ``name`` with the functions of ``SWAPS[swap]`` replaced by the exact ones."""
    base, plain = protocols.get(name), protocols.get("plain")
    attrs = {m: getattr(plain, m) for m in SWAPS[swap]}
    if "reciprocal_times" in attrs:  # plain has none: times / x exactly
        attrs["reciprocal_times"] = exact_times
    obj = type(f"{type(base).__name__}Swap", (type(base),), {})()
    for m, f in attrs.items():
        # bound methods / plain functions on the instance: a protocol's fused forms of a swapped
        # function (its activation times ``up``, its exp left on a product's scale, its softmax
        # denominator) then stand aside for it (``Protocol._fuses``)
        setattr(obj, m, f)
    obj.name = f"{name}[{swap}=exact]" if swap != "none" else name
    return obj


def run(protocol: str, n_windows: int, tokens: int = 16, fxp: int | None = None, swaps=tuple(SWAPS),
        model: str = "smollm2", offset: int = 0) -> dict:
    spec, tok = models.load(model)
    ids = windows(tok, spec.vocab, n_windows, tokens, wikitext_path(), offset)
    with torch.no_grad():
        ref = Engine(spec, "plain", TorchOps(torch.float64)).prefill(ids, use_cache=False).double()
        out = {"model": model, "protocol": protocol, "windows": n_windows, "tokens": tokens, "fxp": fxp,
               "ref_margin_quantiles": {q: float(margins(ref).flatten().quantile(q)) for q in (0.01, 0.05, 0.5)},
               "variants": {}}
        for swap in swaps:
            t0 = time.perf_counter()
            got = Engine(spec, swapped(protocol, swap), TorchOps(torch.float64, fxp_bits=fxp)).prefill(
                ids, use_cache=False).double()
            c = compare_logits(ref, got)
            out["variants"][swap] = {**c, "misses": misses(ref, got), "seconds": time.perf_counter() - t0}
            print(f"{protocol} [{swap}=exact]: top-1 {c['top1']:.4f}, mean KL {c['mean_kl']:.2e}, "
                  f"max |dlogit| {c['max_abs']:.3f}, misses {out['variants'][swap]['misses']}", flush=True)
    return out


def run_prompt(protocol: str, prompt: str, new: int = 4, fxp: int | None = None, swaps=tuple(SWAPS),
               model: str = "smollm2") -> dict:
    spec, tok = models.load(model)
    text = tok.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True)
    ids = tok(text, return_tensors="pt", add_special_tokens=False)["input_ids"]
    n = ids.shape[1]
    out = {"model": model, "protocol": protocol, "prompt": prompt, "prompt_tokens": n, "fxp": fxp, "variants": {}}
    with torch.no_grad():
        for swap in ("plain", *swaps):
            p = "plain" if swap == "plain" else swapped(protocol, swap)
            ops = TorchOps(torch.float64, fxp_bits=None if swap == "plain" else fxp)
            full = ids
            for _ in range(new):
                nxt = Engine(spec, p, ops).prefill(full, use_cache=False)[:, -1:].argmax(-1)
                full = torch.cat([full, nxt], 1)
            ref = Engine(spec, "plain", TorchOps(torch.float64)).prefill(full[:, :-1], use_cache=False)[:, n - 1:]
            got = Engine(spec, p, ops).prefill(full[:, :-1], use_cache=False)[:, n - 1:].double()
            c = compare_logits(ref, got)
            gen = full[0, n:].tolist()
            out["variants"][swap] = {**c, "tokens": gen, "text": tok.decode(gen), "misses": misses(ref, got),
                                     "ref_margins": margins(ref)[0].tolist()}
            print(f"{protocol} [{swap}]: {tok.decode(gen)!r} top-1 {c['top1']:.3f}, max |dlogit| {c['max_abs']:.3f}, "
                  f"plaintext margins {[round(m, 3) for m in margins(ref)[0].tolist()]}", flush=True)
    return out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-p", "--protocol", default="bumblebee")
    ap.add_argument("-m", "--model", default="smollm2")
    ap.add_argument("-w", "--windows", type=int, default=4)
    ap.add_argument("-t", "--tokens", type=int, default=16)
    ap.add_argument("--offset", type=int, default=0)
    ap.add_argument("--fxp", type=int, default=None, help="round secret products to 2^-FXP (MPC: 16)")
    ap.add_argument("-s", "--swaps", default=",".join(SWAPS), help=f"comma-separated of {', '.join(SWAPS)}")
    ap.add_argument("--prompt", default=None, help="generate from this prompt instead of the WikiText-2 windows")
    ap.add_argument("--new", type=int, default=4, help="tokens to generate with --prompt")
    ap.add_argument("-o", "--out", default=None)
    a = ap.parse_args(argv)
    if a.prompt is not None:
        res = run_prompt(a.protocol, a.prompt, a.new, a.fxp, a.swaps.split(","), a.model)
    else:
        res = run(a.protocol, a.windows, a.tokens, a.fxp, a.swaps.split(","), a.model, a.offset)
    if a.out:
        with open(a.out, "w") as f:
            json.dump(res, f, indent=1)


if __name__ == "__main__":
    main()
