"""The approximation simulator: inject an activation approximation into a plaintext HF model.

Everything is done with forward hooks / pre-hooks that :func:`approximate` installs and removes on
exit; no modeling file is edited. This module must import without crypten (it runs on GPU machines
where crypten is absent): it only touches ``protocols`` (plain ``TorchOps``) lazily.

Where (``points``), per decoder layer, for Llama-family decoders (Llama, Mistral, Qwen2, Phi-3,
SmolLM) and GPT-2:

=========  ==========================================================================  ==============
point      tensor                                                                      hook
=========  ==========================================================================  ==============
``up``     input of W_up/W_gate = output of the post-attention norm (paper eps^up)     norm fwd hook
``down``   input of W_down = act(gate) * up (paper eps^down)                           W_down pre-hook
``act``    output of act(gate) before the product with up (the released QuadA code's   act fwd hook
           ``FFN`` source: the error at W_down's input becomes noise * up(x))
``attn``   attention input = output of the input norm                                  norm fwd hook
``o``      input of W_o (attention output)                                             W_o pre-hook
``norm``   every norm output, incl. the final norm when no layer subset is chosen      norm fwd hooks
           (the released code's ``LN`` source)
``softmax`` attention softmax (protocol emulation only)                                attention fn
=========  ==========================================================================  ==============

What (``kind``):

* ``gauss:S`` / ``laplace:B`` — additive N(0, S^2) / Laplace(0, B) noise (Table 2 writes the
  Laplace parameter as the scale b). Additive, so gradients flow; drawn from one
  ``torch.Generator`` on the model's device seeded at entry, in forward execution order.
* ``teal:P`` — TEAL-style magnitude sparsification: entries with ``|x| <= t`` are zeroed, ``t`` set
  so a fraction P of the tensor is zero. ``t`` is per site (layer x point): from a calibration pass
  when ``calib`` is given (the ``P`` quantile of ``|x|`` over the calibration tokens, as TEAL
  calibrates offline), else on the fly per call (the exact quantile of the current tensor).
  ``teal:thr=T`` uses a fixed absolute threshold (how Table 2 states TEAL's error).
* ``quant:aB`` — per-token symmetric fake quantisation of the activation to B bits (scale =
  max|x| of the token / (2^(B-1)-1)); error at most half a step. Straight-through gradient.
* ``smoothquant:aB[,alpha=0.5]`` — SmoothQuant W16AB: per-channel smoothing factors
  ``s_j = max|X_j|^alpha / max|W_j|^(1-alpha)`` (``W`` = the consuming linear layers), the smoothed
  activation ``X/s`` is per-token quantised and multiplied back by ``s`` (exactly what
  ``Q(X/s) @ (s W)`` feeds the unchanged W16 weights). ``max|X_j|`` from calibration, else per call.
* ``omniquant:aB[,alpha=0.5]`` — OmniQuant-style W16AB: SmoothQuant smoothing (OmniQuant's LET
  starts from it) plus a clipped quantisation range ``gamma * max|x|``; gamma is chosen per site
  by a fixed grid search (1.0, 0.95, ..., 0.5) minimising the quantisation MSE on the calibration
  tokens (per call without calibration). A stand-in for OmniQuant's gradient-trained LWC/LET,
  not a reimplementation of it.
* ``protocol:NAME`` — run the protocol's own functions (``protocols.get(NAME)`` on plain
  ``TorchOps`` in float64, then cast back): at ``down``/``act`` the MLP activation module's output
  is replaced by ``protocol.act(name, input)`` (SiLU/GELU per the model config); at ``norm`` each
  norm's output is replaced by ``protocol.rms_norm`` / ``protocol.layer_norm`` of its input with
  the module's weight and eps; at ``softmax`` (Llama-family only) the attention runs through a
  registered attention function that applies ``protocol.softmax`` with the padding/causal mask.
* ``table2:NAME`` — the paper's Table 2 fitted error model of a system: eps^up at ``up`` and
  eps^down at ``down`` (TEAL rows as fixed-threshold sparsification, see :data:`TABLE2`).
* ``measured:NAME`` — the same from ``pmpc/presets/measured_errors.json`` (measured by the
  protocols side from real MPC runs; schema ``{"<p>": {"up": {"dist": "gauss"|"laplace",
  "scale": s}, "down": {...}}}``). ``PMPC_MEASURED`` overrides the path.

Spec grammar: ``COMPONENT ('+' COMPONENT)*``, ``COMPONENT = KIND[:ARGS][@POINTS][@LAYERS]``, ARGS
a positional value then ``key=value`` pairs (comma-separated), POINTS comma-separated, LAYERS
``0-3``, ``0,2,5`` or ``0-3,7``. ``str(parse(s))`` is canonical and ``parse(str(a)) == a``.
Examples: ``gauss:0.075@up``, ``laplace:0.036@down``, ``gauss:0.05@up,down@0-3``, ``teal:0.25``,
``quant:a8``, ``smoothquant:a4``, ``protocol:bolt@down,norm``, ``table2:bolt``,
``gauss:0.042@up+laplace:0.036@down``.
"""
from __future__ import annotations

import contextlib
import dataclasses
from typing import Callable, Iterable

import torch

from pmpc.errors import UserError
from pmpc.simulate.sites import _Arch, _consumers, _in_channel_wmax, hook_sites, _unwrap, find_arch
from pmpc.simulate.spec import (ELEMENTARY, KINDS, NOISE, OMNI_GAMMAS, POINTS, PRESET, QUANT, TABLE2,  # noqa: F401
                                TABLE2_REF_SPREAD, Approx, format_layers, load_measured, measured_path, parse,
                                parse_layers, presets)
from pmpc.simulate.transforms import (_ATTN_NAME, _clip_mse, _Component, _kth_abs, _register_attention,
                                      _smooth_factors)

# -- calibration -----------------------------------------------------------------------------------
def calibrate(model, approx: "Approx | str", calib, layers=None) -> Approx:
    """Run ``calib`` through the model (no approximation) and fill per-site statistics that TEAL,
    SmoothQuant and OmniQuant use instead of per-call estimates. ``calib``: a LongTensor of token
    ids [B, T], a list of such tensors, or a list of dicts of model inputs. Returns a copy of
    ``approx`` carrying the statistics (the spec string is unchanged)."""
    a = parse(approx)
    if layers is not None:
        a = a.with_layers(layers)
    tops = list(a.parts) if a.kind == "compose" else [a]
    rel = [x for x in tops if x.kind == "table2" and x.params.get("rel")]
    comps = [c for x in tops if x not in rel for c in x.components()
             if c.kind in ("teal", "smoothquant", "omniquant") and "thr" not in c.params]
    if not comps and not rel:
        return a
    arch = find_arch(model)
    samples: dict = {}   # teal: site -> list of |x| samples
    xmax: dict = {}      # site -> running channel max
    seen: dict = {}      # site -> list of tensors (omniquant gamma search on smoothed values)
    gen = torch.Generator(device="cpu").manual_seed(0)
    handles = []

    def observe(site):
        def f(x):
            x = x.detach()
            flat = x.abs().flatten().float().cpu()
            if flat.numel() > 8192:
                flat = flat[torch.randint(flat.numel(), (8192,), generator=gen)]
            samples.setdefault(site, []).append(flat)
            m = x.abs().flatten(0, -2).amax(0).float()
            xmax[site] = m if site not in xmax else torch.maximum(xmax[site], m)
            if sum(t.shape[0] for t in seen.get(site, [])) < 4096:
                seen.setdefault(site, []).append(x.flatten(0, -2).float().cpu())
        return f

    wanted = {}
    for c in comps + [Approx("gauss", 0.0, ("up", "down"), x.layers) for x in rel]:
        for p in c.points:
            for site, mod, how in hook_sites(arch, p, c.layers):
                wanted[site] = (mod, how)
    for site, (mod, how) in wanted.items():
        f = observe(site)
        if how == "out":
            handles.append(mod.register_forward_hook(lambda m, i, o, f=f: f(o)))
        else:
            handles.append(mod.register_forward_pre_hook(lambda m, i, f=f: f(i[0])))
    try:
        with torch.no_grad():
            for batch in _calib_batches(calib, model):
                model(**batch) if isinstance(batch, dict) else model(batch)
    finally:
        for h in handles:
            h.remove()
    if not samples:
        raise UserError("calibration data produced no activations")
    for x in rel:  # pooled robust std per point over the preset's layers, relative to the paper's
        factors = {}
        for p in ("up", "down"):
            pooled = torch.cat([t for site, _, _ in hook_sites(arch, p, x.layers) for t in samples[site]])
            factors[p] = 1.4826 * float(pooled.median()) / TABLE2_REF_SPREAD[p]
        x.stats["table2_rel"] = factors
    stats = {}
    for c in comps:
        for p in c.points:
            for site, _, _ in hook_sites(arch, p, c.layers):
                if c.kind == "teal":
                    stats[site] = float(_kth_abs(torch.cat(samples[site]), c.scale))
                else:
                    s = _smooth_factors(xmax[site], _in_channel_wmax(_consumers(arch, site)).to(xmax[site].device),
                                        c.params.get("alpha", 0.5))
                    stats[site + ":smooth"] = s
                    if c.kind == "omniquant":
                        xs = torch.cat(seen[site])[:4096] / s.cpu()
                        stats[site + ":gamma"] = OMNI_GAMMAS[int(torch.stack(_clip_mse(xs, int(c.scale))).argmin())]
                c.stats.update(stats)
    a.stats.update(stats)
    return a


def _calib_batches(calib, model):
    dev = next(_unwrap(model).parameters()).device
    if torch.is_tensor(calib):
        calib = [calib]
    for b in calib:
        if torch.is_tensor(b):
            yield (b if b.dim() == 2 else b[None]).to(dev)
        elif isinstance(b, dict):
            yield {k: v.to(dev) if torch.is_tensor(v) else v for k, v in b.items()}
        else:
            raise UserError(f"calibration batches must be token-id tensors or input dicts, not {type(b).__name__}")


# -- the context manager -------------------------------------------------------------------------
@contextlib.contextmanager
def approximate(model, approx: "Approx | str | None", layers: Iterable[int] | None = None, seed: int = 0,
                calib=None):
    """Install ``approx`` on ``model`` (an HF Llama-family decoder or GPT-2, optionally
    peft-wrapped) for the duration of the block. ``layers`` overrides the spec's layer set;
    ``calib`` (token ids) calibrates TEAL/SmoothQuant/OmniQuant statistics first (else the
    statistics already on ``approx`` from :func:`calibrate`, else per-call estimates). Noise is
    drawn from a ``torch.Generator`` on the model's device seeded with ``seed``: the same seed,
    inputs and call order give the same result. ``None`` / ``"none"``: no-op."""
    a = parse(approx)
    if layers is not None:
        a = a.with_layers(layers)
    if calib is not None and a.needs_calibration:
        a = calibrate(model, a, calib)
    comps = a.components()
    if not comps:
        yield model
        return
    arch = find_arch(model)
    dev = next(_unwrap(model).parameters()).device
    gen = torch.Generator(device=dev).manual_seed(int(seed))
    handles, restore = [], []
    try:
        for c in comps:
            if a.stats and not c.stats:
                c = dataclasses.replace(c, stats=a.stats)
            comp = _Component(c, arch, gen)
            for point in comp.points():
                if point == "softmax":
                    restore.append(_install_softmax(model, arch, comp, c.layers))
                    continue
                for site, mod, how in hook_sites(arch, point, c.layers):
                    handles.append(_hook(mod, how, site, comp))
        yield model
    finally:
        for h in handles:
            h.remove()
        for r in restore:
            r()


def _hook(mod, how, site, comp: _Component):
    if how == "out":
        def fwd(m, inputs, output):
            x_in = inputs[0] if inputs else None
            if isinstance(output, tuple):  # defensive: norms/activations return tensors
                return (comp(site, m, x_in, output[0]),) + tuple(output[1:])
            return comp(site, m, x_in, output)
        return mod.register_forward_hook(fwd)

    def pre(m, inputs):
        return (comp(site, m, inputs[0], inputs[0]),) + tuple(inputs[1:])
    return mod.register_forward_pre_hook(pre)


def _install_softmax(model, arch: _Arch, comp: _Component, layers) -> Callable[[], None]:
    if arch.family != "llama":
        raise UserError("softmax emulation is implemented for Llama-family decoders only")
    _register_attention()
    cfg = arch.config
    old = cfg._attn_implementation
    sel = [L for L in arch.layers if layers is None or L.idx in layers]
    for L in sel:
        L.attn._pmpc_softmax = (comp.proto, comp.ops)
    cfg._attn_implementation = _ATTN_NAME

    def undo():
        cfg._attn_implementation = old
        for L in sel:
            if hasattr(L.attn, "_pmpc_softmax"):
                del L.attn._pmpc_softmax
    return undo
