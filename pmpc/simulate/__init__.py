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
import json
import math
import pathlib
from typing import Callable, Iterable

import torch

from pmpc import paths
from pmpc.errors import UserError
from pmpc.ops import TorchOps
import protocols

POINTS = ("up", "down", "act", "attn", "o", "norm", "softmax")
NOISE = ("gauss", "laplace")
QUANT = ("quant", "smoothquant", "omniquant")
ELEMENTARY = NOISE + ("teal",) + QUANT + ("protocol",)
PRESET = ("table2", "measured")
KINDS = ELEMENTARY + PRESET + ("none",)
DEFAULT_POINTS = {"gauss": ("up",), "laplace": ("up",), "teal": ("up", "down"), "quant": ("up", "down"),
                  "smoothquant": ("up", "down"), "omniquant": ("up", "down"), "protocol": ("down",)}
OMNI_GAMMAS = tuple(round(1.0 - 0.05 * i, 2) for i in range(11))  # 1.0 ... 0.5

# The activation spread the Table 2 error models were fitted on (research/quada-paper.md s.3): the
# pre-W_up activations are about N(0, 0.35^2), and TEAL's W_down-input threshold column fits a
# Laplace(0, 0.024). As robust stds (1.4826 x median |x|, what :func:`calibrate` measures): 0.35 and
# 0.024 ln 2 x 1.4826 = 0.0247. ``table2:NAME,rel=1`` multiplies each eps by (this model's robust
# std at the point / this reference): the paper's errors transplanted at the same RELATIVE size,
# since an absolute N(0, .064^2) is mild for Llama-3.1 but drowns a model with smaller activations.
TABLE2_REF_SPREAD = {"up": 0.35, "down": 0.024 * math.log(2) * 1.4826}

# The paper's Table 2 (project page assess.png; see research/quada-paper.md section 3):
# error models at the W_up input (eps^up) and the W_down input (eps^down), and the paper's own
# reported numbers for reference (the model is unconfirmed, probably Llama-3.1-8B-Instruct).
# TEAL's error is the zeroed activations themselves (|X| <= t), so its rows are fixed-threshold
# sparsification; the other rows are additive N(0, s^2) / Laplace(0, b).
TABLE2 = {
    "iron":           dict(up=("gauss", .064), down=("laplace", .049), paper=dict(asr=58.07, hs=4.42, ppl=43.74, mmlu=55.4)),
    "bolt":           dict(up=("gauss", .042), down=("laplace", .036), paper=dict(asr=35.76, hs=3.57, ppl=15.81, mmlu=62.3)),
    "bumblebee":      dict(up=("gauss", .026), down=("laplace", .018), paper=dict(asr=20.56, hs=2.95, ppl=11.28, mmlu=65.0)),
    "nexus":          dict(up=("gauss", .031), down=("laplace", .014), paper=dict(asr=21.15, hs=3.04, ppl=12.93, mmlu=63.9)),
    "teal-10":        dict(up=("thr", .04), down=("thr", .003), paper=dict(asr=5.00, hs=2.17, ppl=8.05, mmlu=73.0)),
    "teal-25":        dict(up=("thr", .11), down=("thr", .007), paper=dict(asr=28.85, hs=3.29, ppl=8.09, mmlu=72.5)),
    "teal-50":        dict(up=("thr", .24), down=("thr", .017), paper=dict(asr=57.12, hs=4.38, ppl=8.57, mmlu=70.8)),
    "teal-90":        dict(up=("thr", .57), down=("thr", .055), paper=dict(asr=0.02, hs=1.00, ppl=206.47, mmlu=26.5)),
    "smoothquant-a8": dict(up=("gauss", .027), down=("laplace", .019), paper=dict(asr=41.92, hs=3.75, ppl=9.56, mmlu=68.4)),
    "smoothquant-a4": dict(up=("gauss", .035), down=("laplace", .024), paper=dict(asr=55.19, hs=4.20, ppl=10.35, mmlu=67.5)),
    "omniquant-a8":   dict(up=("gauss", .029), down=("laplace", .028), paper=dict(asr=33.46, hs=3.41, ppl=9.85, mmlu=68.1)),
    "omniquant-a4":   dict(up=("gauss", .036), down=("laplace", .037), paper=dict(asr=47.11, hs=4.05, ppl=10.79, mmlu=66.3)),
}


# -- the spec ------------------------------------------------------------------------------------
@dataclasses.dataclass
class Approx:
    """One approximation. ``scale``: noise std (gauss), Laplace b, TEAL target sparsity, or the
    activation bit width (quant kinds). ``name``: protocol / preset name. ``params``: extra knobs
    (``thr``, ``alpha``, ``fxp``). ``parts``: the components of a ``+`` composition (kind
    ``compose``). ``stats``: calibration results (see :func:`calibrate`), not part of the spec."""

    kind: str
    scale: float | None = None
    points: tuple[str, ...] = ()
    layers: tuple[int, ...] | None = None
    params: dict = dataclasses.field(default_factory=dict)
    name: str | None = None
    parts: tuple["Approx", ...] = ()
    stats: dict = dataclasses.field(default_factory=dict, compare=False, repr=False)

    def __str__(self) -> str:
        if self.kind == "compose":
            return "+".join(str(p) for p in self.parts)
        if self.kind == "none":
            return "none"
        args = []
        if self.kind in QUANT and self.scale is not None:
            args.append(f"a{int(self.scale)}")
        elif self.scale is not None:
            args.append(_num(self.scale))
        elif self.name is not None:
            args.append(self.name)
        args += [f"{k}={_num(v) if isinstance(v, float) else v}" for k, v in sorted(self.params.items())]
        s = self.kind + (":" + ",".join(args) if args else "")
        if self.kind in ELEMENTARY:
            s += "@" + ",".join(self.points)
        if self.layers is not None:
            s += "@" + _fmt_layers(self.layers)
        return s

    def components(self) -> list["Approx"]:
        """The elementary approximations this one installs (presets expanded)."""
        if self.kind == "none":
            return []
        if self.kind == "compose":
            return [c for p in self.parts for c in p.components()]
        if self.kind == "table2":
            factors = None
            if self.params.get("rel"):
                factors = self.stats.get("table2_rel")
                if factors is None:
                    raise UserError(f"{self}: a rescaled Table 2 preset needs the model's activation spread: "
                                    "pass calib= to approximate() or calibrate() first (the CLI does)")
            return _table2_parts(self.name, self.layers, factors)
        if self.kind == "measured":
            return _measured_parts(self.name, self.layers)
        return [self]

    def with_layers(self, layers) -> "Approx":
        layers = None if layers is None else tuple(sorted({int(i) for i in layers}))
        if self.kind == "compose":
            return dataclasses.replace(self, parts=tuple(p.with_layers(layers) for p in self.parts))
        return dataclasses.replace(self, layers=layers, stats={})

    @property
    def needs_calibration(self) -> bool:
        if self.kind == "compose":
            return any(p.needs_calibration for p in self.parts)
        if self.kind == "table2" and self.params.get("rel"):
            return "table2_rel" not in self.stats
        return any(c.kind in ("teal", "smoothquant", "omniquant") and "thr" not in c.params and not c.stats
                   for c in self.components())


def _num(x: float) -> str:
    return repr(float(x))  # shortest string that round-trips


def _fmt_layers(layers) -> str:
    out, run = [], []
    for i in sorted(layers):
        if run and i == run[-1] + 1:
            run.append(i)
            continue
        if run:
            out.append(str(run[0]) if len(run) == 1 else f"{run[0]}-{run[-1]}")
        run = [i]
    if run:
        out.append(str(run[0]) if len(run) == 1 else f"{run[0]}-{run[-1]}")
    return ",".join(out)


def parse_layers(text: str) -> tuple[int, ...]:
    """``"0-3,7"`` -> (0, 1, 2, 3, 7)."""
    out = set()
    for tok in text.split(","):
        tok = tok.strip()
        try:
            if "-" in tok:
                a, b = tok.split("-")
                a, b = int(a), int(b)
                if b < a:
                    raise ValueError
                out.update(range(a, b + 1))
            else:
                out.add(int(tok))
        except ValueError:
            raise UserError(f"bad layer range {text!r}: use e.g. 0-3, 0,2,5 or 0-3,7") from None
    if any(i < 0 for i in out):
        raise UserError(f"bad layer range {text!r}: layers are counted from 0")
    return tuple(sorted(out))


def parse(spec: "str | Approx | None") -> Approx:
    """Parse an approximation spec (see the module docstring). ``None``/``""``/``"none"`` -> kind none."""
    if isinstance(spec, Approx):
        return spec
    if spec is None or not str(spec).strip() or str(spec).strip() in ("none", "clean"):
        return Approx("none")
    spec = str(spec).strip()
    parts = [_parse_one(p.strip(), spec) for p in spec.split("+")]
    return parts[0] if len(parts) == 1 else Approx("compose", parts=tuple(parts))


def _parse_one(text: str, whole: str) -> Approx:
    def bad(why):
        return UserError(f"bad approximation {whole!r}: {why}")

    head, *ats = text.split("@")
    kind, _, argtext = head.partition(":")
    kind = kind.strip().lower()
    if kind not in KINDS or kind == "none":
        raise bad(f"unknown kind {kind!r}; choose from {', '.join(k for k in KINDS if k != 'none')}")
    if len(ats) > 2:
        raise bad("at most two '@' sections (points, then layers)")
    points, layers = None, None
    for sec in ats:
        sec = sec.strip()
        if sec and (sec[0].isdigit() or sec == "all"):
            if layers is not None:
                raise bad("two layer sections")
            layers = None if sec == "all" else parse_layers(sec)
        else:
            if points is not None:
                raise bad("two point sections")
            points = tuple(p.strip() for p in sec.split(",") if p.strip())
            unknown = [p for p in points if p not in POINTS]
            if unknown or not points:
                raise bad(f"unknown point {unknown[0] if unknown else sec!r}; choose from {', '.join(POINTS)}")
    pos, params = None, {}
    for a in [a.strip() for a in argtext.split(",") if a.strip()]:
        if "=" in a:
            k, v = a.split("=", 1)
            params[k.strip()] = _param(k.strip(), v.strip(), bad)
        elif pos is None:
            pos = a
        else:
            raise bad(f"two positional values ({pos!r}, {a!r})")
    a = Approx(kind, layers=layers, params=params)
    if kind in PRESET:
        if points is not None:
            raise bad(f"{kind} presets fix their points (give only layers, e.g. {kind}:{pos}@0-3)")
        if not pos:
            raise bad(f"{kind} needs a name, e.g. {kind}:bolt")
        a.name = pos.lower()
        if kind == "table2" and a.name not in TABLE2:
            raise bad(f"no Table 2 preset {pos!r}; choose from {', '.join(TABLE2)}")
        allowed = {"rel"} if kind == "table2" else set()
        if set(params) - allowed:
            raise bad(f"unknown parameter {sorted(set(params) - allowed)[0]!r}")
        return a
    a.points = points or DEFAULT_POINTS[kind]
    if kind == "protocol":
        if not pos:
            raise bad("protocol needs a name, e.g. protocol:bolt")
        a.name = pos.lower()
        if set(params) - {"fxp"}:
            raise bad(f"unknown parameter {sorted(set(params) - {'fxp'})[0]!r}")
        bad_pts = [p for p in a.points if p not in ("down", "act", "norm", "softmax")]
        if bad_pts:
            raise bad(f"protocol emulation replaces functions at down/act, norm, softmax; not {bad_pts[0]}")
        return a
    if "softmax" in a.points:
        raise bad("the softmax point is for protocol emulation only")
    if kind in QUANT:
        if not pos:
            raise bad(f"{kind} needs a bit width, e.g. {kind}:a8")
        bits = pos.lower().lstrip("aw")
        if not bits.isdigit() or not 2 <= int(bits) <= 16:
            raise bad(f"bit width {pos!r}: use a2..a16")
        a.scale = float(int(bits))
        extra = set(params) - {"alpha"}
        if extra or (kind == "quant" and params):
            raise bad(f"unknown parameter {sorted(set(params) - ({'alpha'} if kind != 'quant' else set()))[0]!r}")
        return a
    if kind == "teal":
        if pos is None and "thr" not in params:
            raise bad("teal needs a target sparsity (teal:0.25) or a threshold (teal:thr=0.1)")
        if pos is not None and "thr" in params:
            raise bad("give a sparsity or a threshold, not both")
        if set(params) - {"thr"}:
            raise bad(f"unknown parameter {sorted(set(params) - {'thr'})[0]!r}")
        if pos is not None:
            a.scale = _float(pos, bad)
            if not 0.0 <= a.scale < 1.0:
                raise bad("TEAL sparsity must be in [0, 1)")
        return a
    # gauss / laplace
    if pos is None:
        raise bad(f"{kind} needs a scale, e.g. {kind}:0.05")
    if params:
        raise bad(f"unknown parameter {sorted(params)[0]!r}")
    a.scale = _float(pos, bad)
    if a.scale < 0 or not math.isfinite(a.scale):
        raise bad("noise scale must be a finite number >= 0")
    return a


def _float(v, bad):
    try:
        return float(v)
    except ValueError:
        raise bad(f"{v!r} is not a number") from None


def _param(k, v, bad):
    if k in ("thr", "alpha"):
        return _float(v, bad)
    if k == "fxp":
        if not v.isdigit():
            raise bad("fxp takes a number of fractional bits")
        return int(v)
    if k == "rel":
        if v not in ("0", "1"):
            raise bad("rel takes 1 (rescale to this model's activation spread) or 0")
        return int(v)
    raise bad(f"unknown parameter {k!r}")


def _table2_parts(name, layers, factors=None) -> list[Approx]:
    """Table 2 row -> components; ``factors`` (point -> this model's activation spread / the spread
    the paper's fits were made on) rescales every scale and threshold (``rel=1``)."""
    row = TABLE2[name]
    out = []
    for point in ("up", "down"):
        dist, v = row[point]
        if factors is not None:
            v = round(v * factors[point], 8)
        if dist == "thr":
            out.append(Approx("teal", points=(point,), layers=layers, params={"thr": v}))
        else:
            out.append(Approx(dist, scale=v, points=(point,), layers=layers))
    return out


def measured_path() -> pathlib.Path:
    return paths.measured_presets()


def load_measured() -> dict:
    path = measured_path()
    if not path.exists():
        raise UserError(f"no measured error fits at {path}: they are written by the protocols side's "
                        "error measurement (or set PMPC_MEASURED); use table2:<name> for the paper's fits")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise UserError(f"{path}: line {e.lineno}: not valid JSON ({e.msg})") from None
    if not isinstance(data, dict):
        raise UserError(f"{path}: expected an object {{protocol: {{point: {{dist, scale}}}}}}")
    return data


def _measured_parts(name, layers) -> list[Approx]:
    data = load_measured()
    path = measured_path()
    if name not in data:
        raise UserError(f"{path}: no fits for {name!r}; it has {', '.join(sorted(data)) or 'none'}")
    out = []
    for point, fit in sorted(data[name].items()):
        if point not in POINTS or point == "softmax":
            continue  # other keys (metadata, per-function fits) are not injection points
        if not isinstance(fit, dict) or fit.get("dist") not in NOISE or not isinstance(fit.get("scale"), (int, float)):
            raise UserError(f"{path}: {name}.{point}: expected {{\"dist\": \"gauss\"|\"laplace\", \"scale\": number}}")
        out.append(Approx(fit["dist"], scale=float(fit["scale"]), points=(point,), layers=layers))
    if not out:
        raise UserError(f"{path}: {name}: no fits at any injection point ({', '.join(POINTS[:-1])})")
    return out


# -- where the hooks go ------------------------------------------------------------------------
def _unwrap(model):
    """PeftModel / LoraModel wrappers -> the HF model underneath."""
    for _ in range(4):
        if hasattr(model, "get_base_model"):
            model = model.get_base_model()
        else:
            break
    return model


@dataclasses.dataclass
class _Layer:
    idx: int
    attn_norm: torch.nn.Module
    mlp_norm: torch.nn.Module
    act: torch.nn.Module
    down: torch.nn.Module
    o: torch.nn.Module
    attn: torch.nn.Module
    consumers: dict  # point -> [linear modules reading that tensor] (for SmoothQuant factors)


@dataclasses.dataclass
class _Arch:
    family: str  # "llama" | "gpt2"
    layers: list
    final_norm: torch.nn.Module
    act_name: str  # silu | gelu | gelu_tanh
    config: object


def _act_name(cfg) -> str:
    a = getattr(cfg, "hidden_act", None) or getattr(cfg, "activation_function", None)
    m = {"silu": "silu", "swish": "silu", "gelu": "gelu", "gelu_new": "gelu_tanh",
         "gelu_pytorch_tanh": "gelu_tanh", "gelu_fast": "gelu_tanh"}
    if a not in m:
        raise UserError(f"activation {a!r} is not emulated (silu, gelu, gelu_tanh)")
    return m[a]


def find_arch(model) -> _Arch:
    m = _unwrap(model)
    base = getattr(m, "model", None)
    if base is not None and hasattr(base, "layers") and hasattr(base, "norm"):
        layers = []
        for i, L in enumerate(base.layers):
            mlp, at = L.mlp, L.self_attn
            act = getattr(mlp, "act_fn", None) or getattr(mlp, "activation_fn", None)
            if act is None or not hasattr(mlp, "down_proj"):
                raise UserError(f"layer {i}: unsupported MLP {type(mlp).__name__} (dense gated MLP expected)")
            up = [mlp.gate_up_proj] if hasattr(mlp, "gate_up_proj") else [mlp.gate_proj, mlp.up_proj]
            qkv = [at.qkv_proj] if hasattr(at, "qkv_proj") else [at.q_proj, at.k_proj, at.v_proj]
            layers.append(_Layer(i, L.input_layernorm, L.post_attention_layernorm, act, mlp.down_proj,
                                 at.o_proj, at, {"up": up, "down": [mlp.down_proj], "attn": qkv, "o": [at.o_proj]}))
        arch = _Arch("llama", layers, base.norm, _act_name(m.config), m.config)
    elif hasattr(m, "transformer") and hasattr(m.transformer, "h"):
        layers = [_Layer(i, b.ln_1, b.ln_2, b.mlp.act, b.mlp.c_proj, b.attn.c_proj, b.attn,
                         {"up": [b.mlp.c_fc], "down": [b.mlp.c_proj], "attn": [b.attn.c_attn], "o": [b.attn.c_proj]})
                  for i, b in enumerate(m.transformer.h)]
        arch = _Arch("gpt2", layers, m.transformer.ln_f, _act_name(m.config), m.config)
    else:
        raise UserError(f"cannot find decoder layers in {type(m).__name__}: the simulator supports "
                        "Llama-family decoders (model.model.layers) and GPT-2 (transformer.h)")
    acts = [id(L.act) for L in arch.layers]
    if len(set(acts)) != len(acts):
        raise UserError("the MLP activation module is shared between layers; per-layer hooks would be wrong")
    return arch


def _sites(arch: _Arch, point: str, layers) -> list[tuple[str, torch.nn.Module, str]]:
    """(site key, module, hook type) for one point. Hook types: 'out' (forward hook on the
    module's output), 'in' (forward pre-hook on its first input)."""
    sel = [L for L in arch.layers if layers is None or L.idx in layers]
    if layers is not None:
        bad = sorted(set(layers) - {L.idx for L in arch.layers})
        if bad:
            raise UserError(f"layer {bad[0]} out of range: the model has {len(arch.layers)} layers (0-{len(arch.layers) - 1})")
    if point == "up":
        return [(f"{L.idx}.up", L.mlp_norm, "out") for L in sel]
    if point == "attn":
        return [(f"{L.idx}.attn", L.attn_norm, "out") for L in sel]
    if point == "down":
        return [(f"{L.idx}.down", L.down, "in") for L in sel]
    if point == "o":
        return [(f"{L.idx}.o", L.o, "in") for L in sel]
    if point == "act":
        return [(f"{L.idx}.act", L.act, "out") for L in sel]
    if point == "norm":
        s = []
        for L in sel:
            s += [(f"{L.idx}.attn_norm", L.attn_norm, "out"), (f"{L.idx}.mlp_norm", L.mlp_norm, "out")]
        if layers is None:
            s.append(("final_norm", arch.final_norm, "out"))
        return s
    raise UserError(f"point {point!r} has no tensor sites")


def _consumers(arch: _Arch, site: str) -> list:
    idx, point = site.split(".")
    return arch.layers[int(idx)].consumers[point]


def _in_channel_wmax(mods) -> torch.Tensor:
    """max |W| per input channel over the linear layers that read the tensor."""
    cols = []
    for m in mods:
        w = m.weight.detach()
        # nn.Linear stores [out, in]; GPT-2's Conv1D stores [in, out]
        cols.append(w.abs().amax(dim=1) if type(m).__name__ == "Conv1D" else w.abs().amax(dim=0))
    return torch.stack(cols).amax(0).float()


# -- the transforms ------------------------------------------------------------------------------
def _fake_quant(x: torch.Tensor, bits: int, gamma: float | torch.Tensor = 1.0) -> torch.Tensor:
    """Per-token symmetric quantise-dequantise: step = gamma * max|x_token| / (2^(b-1) - 1)."""
    qmax = 2 ** (bits - 1) - 1
    xd = x.detach().float()  # bf16 cannot hold x/step exactly: quantise in float32
    step = (xd.abs().amax(-1, keepdim=True) * gamma / qmax).clamp_min(1e-12)
    q = torch.clamp(torch.round(xd / step), -qmax, qmax) * step
    return x + (q - xd).to(x.dtype)  # straight-through: gradient of the identity


def _laplace(shape, b, gen, dtype, device):
    # Laplace(0, b) = b (E1 - E2) with E ~ Exp(1) = -log(1 - U), U in [0, 1): always finite
    u = torch.rand((2, *shape), generator=gen, device=device, dtype=torch.float32)
    e = -torch.log1p(-u)
    return ((e[0] - e[1]) * b).to(dtype)


def _kth_abs(x: torch.Tensor, frac: float) -> torch.Tensor:
    """The ``frac`` quantile of |x| (exact order statistic; torch.quantile caps the size)."""
    a = x.detach().abs().flatten().float()
    k = int(round(frac * a.numel()))
    if k <= 0:
        return a.new_tensor(-1.0)  # nothing zeroed (|x| <= -1 never holds)
    return a.kthvalue(min(k, a.numel())).values


class _Component:
    """One elementary approximation bound to a model: its transform of a site's tensor."""

    def __init__(self, a: Approx, arch: _Arch, gen: torch.Generator):
        self.a, self.arch, self.gen = a, arch, gen
        self.stats = a.stats
        if a.kind == "protocol":
            self.proto = protocols.get(a.name)
            self.ops = TorchOps(dtype=torch.float64, fxp_bits=a.params.get("fxp"))

    def points(self):
        pts = list(self.a.points)
        if self.a.kind == "protocol":  # down and act both mean: replace the activation
            pts = ["act" if p in ("down", "act") else p for p in pts]
            pts = list(dict.fromkeys(pts))
        return pts

    # called with (site, module, input tensor, output tensor or None); returns the new tensor
    def __call__(self, site, module, x_in, x):
        a, k = self.a, self.a.kind
        if k == "gauss":
            noise = torch.randn(x.shape, generator=self.gen, device=x.device, dtype=torch.float32)
            return x + (noise * a.scale).to(x.dtype)
        if k == "laplace":
            return x + _laplace(x.shape, a.scale, self.gen, x.dtype, x.device)
        if k == "teal":
            if "thr" in a.params:
                t = a.params["thr"]
            elif site in self.stats:
                t = self.stats[site]
            else:
                t = _kth_abs(x, a.scale)
            return x * (x.detach().abs() > t).to(x.dtype)
        if k == "quant":
            return _fake_quant(x, int(a.scale))
        if k in ("smoothquant", "omniquant"):
            s = self._smooth(site, x)
            gamma = 1.0 if k == "smoothquant" else self._gamma(site, x / s)
            return _fake_quant(x / s, int(a.scale), gamma) * s
        if k == "protocol":
            return self._protocol(site, module, x_in, x)
        raise AssertionError(k)

    def _smooth(self, site, x):
        alpha = self.a.params.get("alpha", 0.5)
        key = site + ":smooth"
        if key not in self.stats:  # on the fly: channel maxima of this call
            xmax = x.detach().abs().flatten(0, -2).amax(0).float()
            return _smooth_factors(xmax, _in_channel_wmax(_consumers(self.arch, site)).to(x.device), alpha).to(x.dtype)
        return self.stats[key].to(x.device, x.dtype)

    def _gamma(self, site, xs):
        key = site + ":gamma"
        if key in self.stats:
            return self.stats[key]
        return OMNI_GAMMAS[int(torch.stack(_clip_mse(xs, int(self.a.scale))).argmin())]

    def _protocol(self, site, module, x_in, x):
        ops, p = self.ops, self.proto
        xi = x_in.to(torch.float64)
        if site.endswith(".act"):
            y = p.act(self.arch.act_name, xi, ops)
        elif self.arch.family == "gpt2":
            y = p.layer_norm(xi, module.weight.to(torch.float64), module.bias.to(torch.float64), module.eps, ops)
        else:
            eps = getattr(module, "variance_epsilon", None) or getattr(module, "eps", 1e-6)
            y = p.rms_norm(xi, module.weight.to(torch.float64), eps, ops)
        return y.to(x.dtype)


def _smooth_factors(xmax, wmax, alpha):
    s = xmax.clamp_min(1e-5) ** alpha / wmax.clamp_min(1e-5) ** (1 - alpha)
    return s.clamp_min(1e-5)


def _clip_mse(x, bits):
    return [((_fake_quant(x.detach(), bits, g) - x.detach()) ** 2).float().mean() for g in OMNI_GAMMAS]


# -- softmax emulation through the attention interface -------------------------------------------
_ATTN_NAME = "pmpc_protocol_softmax"


def _protocol_attention(module, query, key, value, attention_mask, scaling, dropout=0.0, **kwargs):
    """Eager attention whose softmax is ``protocol.softmax`` (for layers the context selected;
    other layers use the float softmax). The padding/causal mask becomes the protocol's 0/1 mask."""
    from transformers.models.llama.modeling_llama import repeat_kv

    groups = query.shape[1] // key.shape[1]
    k, v = repeat_kv(key, groups), repeat_kv(value, groups)
    scores = torch.matmul(query, k.transpose(2, 3)) * scaling
    q_len, kv_len = scores.shape[-2], scores.shape[-1]
    if attention_mask is None:
        keep = torch.ones(q_len, kv_len, dtype=torch.bool, device=scores.device)
        if q_len > 1:
            keep = torch.ones_like(keep).tril(kv_len - q_len)
        keep = keep.expand_as(scores)
    elif attention_mask.dtype == torch.bool:
        keep = attention_mask[..., -kv_len:].expand_as(scores)
    else:
        keep = (attention_mask[..., -kv_len:] > torch.finfo(attention_mask.dtype).min / 2).expand_as(scores)
    keep = keep | ~keep.any(-1, keepdim=True)  # padded query rows: attend to all, stay finite
    hook = getattr(module, "_pmpc_softmax", None)
    if hook is None:
        probs = torch.softmax(scores.float().masked_fill(~keep, float("-inf")), dim=-1).to(query.dtype)
    else:
        proto, ops = hook
        probs = proto.softmax(scores.to(torch.float64), ops, mask=keep.to(torch.float64)).to(query.dtype)
    out = torch.matmul(probs, v).transpose(1, 2).contiguous()
    return out, probs


def _register_attention():
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, eager_mask

    AttentionInterface.register(_ATTN_NAME, _protocol_attention)
    AttentionMaskInterface.register(_ATTN_NAME, eager_mask)


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
            for site, mod, how in _sites(arch, p, c.layers):
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
            pooled = torch.cat([t for site, _, _ in _sites(arch, p, x.layers) for t in samples[site]])
            factors[p] = 1.4826 * float(pooled.median()) / TABLE2_REF_SPREAD[p]
        x.stats["table2_rel"] = factors
    stats = {}
    for c in comps:
        for p in c.points:
            for site, _, _ in _sites(arch, p, c.layers):
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
                for site, mod, how in _sites(arch, point, c.layers):
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


def presets() -> list[str]:
    """Every named preset spec (Table 2 rows, then measured fits when the file exists)."""
    out = [f"table2:{k}" for k in TABLE2]
    if measured_path().exists():
        try:
            out += [f"measured:{k}" for k in load_measured()]
        except UserError:
            pass
    return out
