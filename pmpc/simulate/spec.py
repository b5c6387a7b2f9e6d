"""The approximation spec: its grammar (see :mod:`pmpc.simulate`), :class:`Approx`, the presets
(the paper's Table 2, measured fits)."""
from __future__ import annotations

import dataclasses
import json
import math
import pathlib

from pmpc import paths
from pmpc.errors import UserError

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
            s += "@" + format_layers(self.layers)
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


def format_layers(layers) -> str:
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
    points, layers = _sections(ats, bad)
    pos, params = _arguments(argtext, bad)
    a = Approx(kind, layers=layers, params=params)
    if kind in PRESET:
        return _preset(a, points, pos, bad)
    a.points = points or DEFAULT_POINTS[kind]
    if kind == "protocol":
        return _protocol(a, pos, bad)
    if "softmax" in a.points:
        raise bad("the softmax point is for protocol emulation only")
    if kind in QUANT:
        return _quant(a, pos, bad)
    if kind == "teal":
        return _teal(a, pos, bad)
    return _noise(a, pos, bad)


def _sections(ats: list[str], bad) -> tuple[tuple | None, tuple | None]:
    """The '@' sections: (injection points or None, layers or None), in either order."""
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
    return points, layers


def _arguments(argtext: str, bad) -> tuple[str | None, dict]:
    """After the colon: (the one positional value or None, the key=value parameters)."""
    pos, params = None, {}
    for a in [a.strip() for a in argtext.split(",") if a.strip()]:
        if "=" in a:
            k, v = a.split("=", 1)
            params[k.strip()] = _param(k.strip(), v.strip(), bad)
        elif pos is None:
            pos = a
        else:
            raise bad(f"two positional values ({pos!r}, {a!r})")
    return pos, params


def _preset(a: Approx, points, pos, bad) -> Approx:
    kind, params = a.kind, a.params
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


def _protocol(a: Approx, pos, bad) -> Approx:
    if not pos:
        raise bad("protocol needs a name, e.g. protocol:bolt")
    a.name = pos.lower()
    if set(a.params) - {"fxp"}:
        raise bad(f"unknown parameter {sorted(set(a.params) - {'fxp'})[0]!r}")
    bad_pts = [p for p in a.points if p not in ("down", "act", "norm", "softmax")]
    if bad_pts:
        raise bad(f"protocol emulation replaces functions at down/act, norm, softmax; not {bad_pts[0]}")
    return a


def _quant(a: Approx, pos, bad) -> Approx:
    kind, params = a.kind, a.params
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


def _teal(a: Approx, pos, bad) -> Approx:
    params = a.params
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


def _noise(a: Approx, pos, bad) -> Approx:
    """gauss / laplace: a finite scale >= 0, no parameters."""
    kind = a.kind
    if pos is None:
        raise bad(f"{kind} needs a scale, e.g. {kind}:0.05")
    if a.params:
        raise bad(f"unknown parameter {sorted(a.params)[0]!r}")
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


def presets() -> list[str]:
    """Every named preset spec (Table 2 rows, then measured fits when the file exists)."""
    out = [f"table2:{k}" for k in TABLE2]
    if measured_path().exists():
        try:
            out += [f"measured:{k}" for k in load_measured()]
        except UserError:
            pass
    return out
