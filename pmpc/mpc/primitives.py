"""What a forward pass is made of — comparisons by bit width, products, truncations, table lookups,
per function scope — and what that costs in another technology.

Two tallies, at two levels: :class:`Counts` (:func:`counting`) counts the Ops layer's primitive
calls per scope on either backend; :data:`PRIMITIVES` counts what CrypTen itself runs under MPC
(Beaver products, truncations, comparisons by lane width, AND words, the tuples' bytes), filled by
:mod:`pmpc.mpc.crypten_compat`'s instrumentation and reported per ``pmpc bench`` row.

Counting. :func:`counting` wraps the primitive methods of the ``Ops`` classes (both backends: the
plaintext emulation runs the same calls as the MPC run) and charges each call to the innermost
cost scope of the op's tracker ("(unscoped)" outside every scope: RoPE today). Only the outermost primitive of a nested call is
counted (``ltz`` -> ``_ltz_ring`` -> ``bits`` is one comparison). Comparisons and bit extractions
are counted identically on both backends; products and matmuls are split into secret x secret and
secret x public by the operands' kind, which only the MPC backend knows (in the emulation every
float tensor, weights included, reads as secret). Under MPC it also counts every
truncation CrypTen performs (``ArithmeticSharedTensor.div_`` by the fixed-point scale or a public
integer), which includes the truncations after products with public constants that the Ops layer
cannot see; the emulation reports ``truncation`` only for what the Ops layer does (products,
``idiv``, matmul outputs).

Pricing. :class:`OTModel` prices counts as OT-based 2PC without a dealer prices them, primitive by
primitive, from the structure of the protocols in Microsoft's SCI library (CrypTFlow2 / SIRNN,
mpc-msri/EzPC ``SCI/src``) and Cheetah's silent-OT variant (``OTModel.cheetah()``); its constants
are checked against SPU CHEETAH microbenchmarks (``bench/peers/spu_run.py micro``). Every figure
this produces is MODELLED, and says so where it is printed.
"""
from __future__ import annotations

import contextlib
import dataclasses
import math
import sys
import threading
from collections import defaultdict

from pmpc import ops as ops_mod

# Ops methods that are primitives, and what each is: (kind, how the width is read)
_PRIMS = {
    "_ltz_ring": "comparison", "_ltz_ring_int": "comparison", "_ltz_lane": "comparison",
    "bits": "bit_decomposition", "mul": "product", "matmul": "matmul", "idiv": "truncation",
    "lookup": "lookup", "slice_lookup": "slice_lookup",
}
RING_BITS = 64


@dataclasses.dataclass
class Counts:
    """{scope: {primitive key: elements}}. Keys: ``comparison/<bits>``, ``bit_decomposition/<k>``
    (k bits extracted), ``product`` (secret x secret elements, each followed by a truncation),
    ``matmul.ss`` / ``matmul.sp`` (secret x secret / secret x public: output elements and
    ``.mac`` multiply-accumulates), ``truncation`` (elements), ``lookup/<k>`` (k-bit tables),
    ``slice_lookup/<k>`` (a k-bit table indexed by a bit slice of a fixed-point value)."""

    by_scope: dict = dataclasses.field(default_factory=lambda: defaultdict(lambda: defaultdict(int)))
    calls_by_scope: dict = dataclasses.field(default_factory=lambda: defaultdict(lambda: defaultdict(int)))

    def add(self, scope: str, key: str, n: int) -> None:
        self.by_scope[scope][key] += int(n)
        self.calls_by_scope[scope][key] += 1

    @staticmethod
    def _over_scopes(per_scope: dict) -> dict:
        out = defaultdict(int)
        for s in per_scope.values():
            for k, v in s.items():
                out[k] += v
        return dict(out)

    @property
    def calls(self) -> dict:
        return self._over_scopes(self.calls_by_scope)

    def total(self) -> dict:
        return self._over_scopes(self.by_scope)

    def as_dict(self) -> dict:
        return {"by_scope": {s: dict(v) for s, v in self.by_scope.items()}, "total": self.total(),
                "calls": self.calls, "calls_by_scope": {s: dict(v) for s, v in self.calls_by_scope.items()}}


# -- the CrypTen-level tally (MPC runs only; what ``pmpc bench`` reports per row) -----------------
class Primitives:
    """Counts of the 2-party primitives a party runs (elements, not calls), by kind:
    ``products`` (Beaver multiplications, matmul outputs included), ``truncations``,
    ``comparisons.<bits>`` (a sign read on a ring slice of that many bits; 64 = the whole ring,
    CrypTen's A2B), ``b2a_bits``, ``and_words`` (64-bit Beaver ANDs of the adder circuits),
    ``tuple_bytes`` (the correlated randomness the triples' provider hands this party: 8 bytes
    a ring word), ``dcf.<n>`` (comparisons that ran as one-round DCF gates on n-bit inputs, of
    the ``comparisons.<n+1>``; the rest ran as adder circuits), ``lookups.<k>`` (table lookups
    with k-bit indices; ``slice_lookups.<k>`` of them indexed by a bit slice, each with its carry
    comparison) and ``key_bytes`` (this party's FSS key and one-hot material: offline cost). Filled by :mod:`pmpc.mpc.crypten_compat`'s instrumentation; one instance per
    process (a party), reset and read around the span of interest."""

    def __init__(self):
        self.counts: dict[str, int] = {}

    def add(self, kind: str, n: int) -> None:
        self.counts[kind] = self.counts.get(kind, 0) + int(n)

    def reset(self) -> None:
        self.counts.clear()

    def snapshot(self) -> dict:
        return dict(sorted(self.counts.items()))


PRIMITIVES = Primitives()


# -- the Ops-level count (either backend, per scope; :func:`counting`) --------------------------------
_local = threading.local()


def scope_of(ops) -> str:
    st = getattr(getattr(ops, "tracker", None), "_stack", None)
    return st[-1][0] if st else "(unscoped)"


def _numel(x) -> int:
    s = getattr(x, "shape", None)
    return int(math.prod(s)) if s is not None else 1


def _record(ops, name: str, args, out, counts: Counts) -> None:
    scope = scope_of(ops)
    kind = _PRIMS[name]
    if kind == "comparison":
        width = args[1] if name == "_ltz_lane" else RING_BITS
        counts.add(scope, f"comparison/{width}", _numel(args[0]))
    elif kind == "bit_decomposition":
        counts.add(scope, f"bit_decomposition/{len(args[1])}", _numel(args[0]))
    elif kind == "product":
        x, y = args[0], args[1]
        if ops.is_secret(x) and ops.is_secret(y):
            counts.add(scope, "product", _numel(out))
            counts.add(scope, "truncation", _numel(out))
        else:  # public x secret: local product, one truncation
            counts.add(scope, "truncation", _numel(out))
    elif kind == "matmul":
        x, y = args[0], args[1]
        k = x.shape[-1]
        tag = "matmul.ss" if (ops.is_secret(x) and ops.is_secret(y)) else "matmul.sp"
        counts.add(scope, tag, _numel(out))
        counts.add(scope, tag + ".mac", _numel(out) * k)
        counts.add(scope, "truncation", _numel(out))
    elif kind == "truncation":
        counts.add(scope, "truncation", _numel(args[0]))
    elif kind == "slice_lookup":  # a carry sign on the low bits and a k-bit lookup
        counts.add(scope, f"slice_lookup/{args[2]}", _numel(args[0]))
    elif kind == "lookup":
        counts.add(scope, f"lookup/{args[1] if len(args) > 1 and isinstance(args[1], int) else '?'}",
                   _numel(args[0]))


def _wrap(cls, name: str, counts: Counts):
    orig = cls.__dict__[name]

    def wrapped(self, *args, **kwargs):
        depth = getattr(_local, "depth", 0)
        _local.depth = depth + 1
        try:
            out = orig(self, *args, **kwargs)
        finally:
            _local.depth = depth
        if depth == 0:
            _record(self, name, args, out, counts)
        return out

    wrapped.__wrapped__ = orig
    return wrapped


def _family(cls) -> list:
    """``cls`` and every subclass, at any depth (a backend may subclass another one)."""
    out = [cls]
    for sub in cls.__subclasses__():
        out += [c for c in _family(sub) if c not in out]
    return out


@contextlib.contextmanager
def counting(mpc_truncations: bool = True, scope_of=None):
    """Count primitives of every Ops instance while the block runs; yields a :class:`Counts`.
    ``mpc_truncations``: also count CrypTen's truncations (``mpc_truncation`` key), if crypten
    is already imported in this process (never imports it), charged to ``scope_of()`` (a
    callable naming the current scope; default "(mpc)")."""
    counts = Counts()
    patched = []
    for cls in _family(ops_mod.Ops):
        for name in _PRIMS:
            if name in cls.__dict__:  # each class once (_family lists no class twice)
                patched.append((cls, name, cls.__dict__[name]))
                setattr(cls, name, _wrap(cls, name, counts))
    ast = None
    if mpc_truncations and "crypten" in sys.modules:
        from crypten.mpc.primitives.arithmetic import ArithmeticSharedTensor as ast

        div = ast.__dict__["div_"]

        def div_(self, y, _div=div):
            if not (isinstance(y, (int, float)) and y == 1):
                counts.add(scope_of() if scope_of else "(mpc)", "mpc_truncation", self.share.numel())
            return _div(self, y)

        ast.div_ = div_
    try:
        yield counts
    finally:
        for cls, name, orig in reversed(patched):
            setattr(cls, name, orig)
        if ast is not None:
            ast.div_ = div


# -- pricing in OT-based 2PC (modelled) --------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class OTModel:
    """Per-element communication (bits, both directions) and rounds of each primitive in OT-based
    2PC, from the protocols' structure in SCI (mpc-msri/EzPC ``SCI/src``: ``Millionaire/
    millionaire.h``, ``BuildingBlocks/truncation.cpp``, ``LinearOT``, ``Math/math-functions.cpp``).

    * comparison of l bits (CrypTFlow2's millionaires', radix ``beta`` = 4 as SCI's MILL_PARAM):
      q = ceil(l / beta) leaf 1-out-of-2^beta OTs of 2-bit messages (lt, eq), then an AND tree of
      log2 q levels over 2q - 2 - log2 q bit triples (each triple made with 2 OTs of 1 bit, each
      AND opening 4 bits); rounds 1 + ceil(log2 q); plus a B2A of the result bit (one COT of l bits).
    * product of two l-bit secrets (SIRNN's OT multiplication): in each direction l COTs with
      messages of l - i bits (i = 0..l-1), so l(l + 1) message bits and 2l OTs; one round each
      way; the fixed-point truncation that follows is priced separately.
    * truncation of an l-bit value (Cheetah's truncation with a known MSB, 1-bit error): one COT
      of l bits for the wrap; 1 round. SIRNN's faithful truncation adds a comparison of the low s
      bits (``faithful_truncation``).
    * bit decomposition of k bits of an l-bit value: one l-bit comparison's carry tree (all
      carries from the same prefix computation) plus a B2A per extracted bit.
    * table lookup with a k-bit index and l-bit entries (SIRNN's LUTs): one 1-out-of-2^k OT;
      1 round.
    * secret x secret matmul [m, k] x [k, n]: m k n products (OT-based; Cheetah uses RLWE, far
      cheaper: priced from its measured per-MAC cost when ``matmul_mac_bits`` is given).
    An OT costs ``ot_bits`` of overhead (IKNP OT extension: lambda = 128 bits per OT, 2 lambda
    for the 1-out-of-N variant; silent OT as in Cheetah/Ferret: ~1 bit, the choice correction)
    plus its messages. Products with public weights are local in both technologies.
    """

    name: str = "ot-iknp"
    ot_bits: float = 128.0          # per 1-out-of-2 OT, beyond its messages
    kkot_bits: float = 256.0        # per 1-out-of-N OT, beyond its messages
    beta: int = 4
    ring: int = 64                  # bits of a value outside comparisons (fixed-point ring)
    faithful_truncation: bool = True
    matmul_mac_bits: float | None = None

    @classmethod
    def sirnn(cls) -> "OTModel":
        return cls()

    @classmethod
    def cheetah(cls, matmul_mac_bits: float | None = None) -> "OTModel":
        return cls(name="ot-silent", ot_bits=1.0, kkot_bits=float(4), faithful_truncation=False,
                   matmul_mac_bits=matmul_mac_bits)

    # each returns (bits, rounds) for ONE element
    def comparison(self, l: int) -> tuple[float, int]:
        q = math.ceil(l / self.beta)
        lg = math.ceil(math.log2(q)) if q > 1 else 0
        leaf = q * (self.kkot_bits + 2 * 2 ** self.beta)
        triples = max(0, 2 * q - 2 - lg)
        tree = triples * (2 * (self.ot_bits + 1) + 4)
        b2a = self.ot_bits + self.ring
        return leaf + tree + b2a, 1 + lg + 1

    def product(self) -> tuple[float, int]:
        l = self.ring
        return 2 * (l * self.ot_bits + l * (l + 1) / 2), 2

    def truncation(self) -> tuple[float, int]:
        bits, rounds = self.ot_bits + self.ring, 1
        if self.faithful_truncation:
            c = self.comparison(16)
            bits, rounds = bits + c[0], rounds + c[1]
        return bits, rounds

    def bit_decomposition(self, k: int) -> tuple[float, int]:
        c = self.comparison(self.ring)
        return c[0] + k * (self.ot_bits + self.ring), c[1] + 1

    def lookup(self, k: int) -> tuple[float, int]:
        return self.kkot_bits + 2 ** k * self.ring, 1

    def matmul_ss(self, macs: int) -> tuple[float, int]:
        if self.matmul_mac_bits is not None:
            return macs * self.matmul_mac_bits, 2
        b, r = self.product()
        return macs * b, r

    def _unit(self, key: str) -> tuple[float, int]:
        kind, _, arg = key.partition("/")
        if kind == "comparison":
            return self.comparison(int(arg))
        if kind == "bit_decomposition":
            return self.bit_decomposition(int(arg))
        if kind == "product":
            return self.product()
        if kind == "truncation":
            return self.truncation()
        if kind in ("lookup", "slice_lookup"):  # SIRNN reads the slice off its msnzb digits
            return self.lookup(int(arg))
        if kind == "matmul.ss.mac":
            return self.matmul_ss(1)
        return 0.0, 0  # local: matmul.sp, output counts, mpc_truncation (a cross-check)

    def price_run(self, counts: dict, scopes=None) -> dict:
        """A run's ``Counts.as_dict()`` (``total`` elements and ``calls`` per primitive key; or only
        the cost scopes named in ``scopes``, from ``by_scope`` / ``calls_by_scope``) ->
        modelled {"bytes", "rounds"}: bytes = sum of elements x per-element cost; rounds = sum of
        calls x per-call rounds (the protocols issue their calls in sequence). CrypTen's own
        truncation count, when the run was under MPC, replaces the Ops-level one (it also sees
        the truncations after products with public constants)."""
        if scopes is not None:
            tot, calls = defaultdict(int), defaultdict(int)
            for sc in scopes:
                for k, v in counts["by_scope"].get(sc, {}).items():
                    tot[k] += v
                for k, v in counts["calls_by_scope"].get(sc, {}).items():
                    calls[k] += v
            tot, calls = dict(tot), dict(calls)
        else:
            tot, calls = dict(counts["total"]), dict(counts["calls"])
        if "mpc_truncation" in tot:
            tot["truncation"], calls["truncation"] = tot.pop("mpc_truncation"), calls.pop("mpc_truncation")
        bits = sum(n * self._unit(k)[0] for k, n in tot.items())
        rounds = sum(c * self._unit(k)[1] for k, c in calls.items())
        return {"bytes": bits / 8, "rounds": rounds}


@dataclasses.dataclass(frozen=True)
class MeasuredOT(OTModel):
    """Unit costs MEASURED on SPU CHEETAH on this machine (``spu_run.py micro``: marginal bytes
    per element and send actions per call of a comparison, a product, a truncation and a secret
    matmul, on the 64- and 32-bit fields), used as the prices of the same counts. Comparisons
    narrower than 32 bits scale the 32-bit cost by width (the millionaires' protocol is linear in
    the bits), at the 32-bit round count; a B2A of an extracted bit is priced like a truncation
    (one COT each); table lookups keep the silent-OT formula (SPU has no LUT protocol to time)."""

    name: str = "spu-cheetah-units"
    cmp: tuple = ()          # ((bits, bytes, rounds), ...) ascending
    mul: tuple = (0.0, 0)    # (bytes, rounds) on the 64-bit field
    trunc: tuple = (0.0, 0)
    mac: tuple = (0.0, 0)    # per multiply-accumulate of a secret x secret matmul

    @classmethod
    def from_micro(cls, micro: dict) -> "MeasuredOT":
        """``micro``: {"FM64": spu_run micro output, "FM32": ...}."""
        m64 = micro["FM64"]
        cmp = tuple(sorted((int(f[2:]), m["comparison"]["bytes_per_element"], m["comparison"]["rounds"])
                           for f, m in micro.items() if "comparison" in m))
        return cls(ot_bits=1.0, kkot_bits=4.0, faithful_truncation=False, cmp=cmp,
                   mul=(m64["product"]["bytes_per_element"], m64["product"]["rounds"]),
                   trunc=(m64["truncation"]["bytes_per_element"], m64["truncation"]["rounds"]),
                   mac=(m64["matmul"]["bytes_per_mac"], m64["matmul"]["rounds"]) if "matmul" in m64 else (0.0, 0))

    def comparison(self, l: int) -> tuple[float, int]:
        below = [c for c in self.cmp if c[0] <= l]
        above = [c for c in self.cmp if c[0] >= l]
        if not below:  # narrower than every measured width: scale the narrowest by width
            b, by, r = above[0]
            return by * 8 * l / b, r
        lo, hi = below[-1], (above[0] if above else below[-1])
        if hi[0] == lo[0]:
            return lo[1] * 8 * (l / lo[0] if not above else 1.0), lo[2]
        t = (l - lo[0]) / (hi[0] - lo[0])
        return 8 * (lo[1] + t * (hi[1] - lo[1])), round(lo[2] + t * (hi[2] - lo[2]))

    def product(self) -> tuple[float, int]:
        return self.mul[0] * 8, self.mul[1]

    def truncation(self) -> tuple[float, int]:
        return self.trunc[0] * 8, self.trunc[1]

    def bit_decomposition(self, k: int) -> tuple[float, int]:
        c = self.comparison(self.ring)
        return c[0] + k * self.trunc[0] * 8, c[1] + self.trunc[1]

    def matmul_ss(self, macs: int) -> tuple[float, int]:
        return macs * self.mac[0] * 8, self.mac[1]
