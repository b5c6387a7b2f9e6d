"""``pmpc bench peers``: the same Llama forward in pmpc, SecretFlow SPU and CrypTen as shipped, back
to back on this machine, and each protocol's cost in its own technology.

Rows (same weights: the model pmpc loads; same WikiText-2 tokens; prefill of one window):
  * pmpc ``<protocol>`` with the ``local`` and ``ttp`` dealers: :class:`eval.perf.bench.BenchJob`, the
    code path of ``pmpc bench``, with the primitives counted (:mod:`pmpc.mpc.primitives`);
  * ``crypten-shipped``: the ``crypten`` protocol with CrypTen's own comparison (A2B of the whole
    ring, ``MPCTensor._ltz``) and its own local truncation (SecureML's, wrong with probability
    ~|x|/2^64 per element) instead of pmpc's packed lane comparisons and exact truncation;
    pmpc's communicator/sampling shims stay (the same messages in fewer collectives);
  * SPU ``SEMI2K`` (Beaver triples from party 0: pmpc's ``local`` dealer) and ``CHEETAH``
    (dealer-free: silent OT + RLWE, BumbleBee's stack) from ``bench/peers/llama_xp.py`` in the
    peer venv (``bench/peers/venv.sh``), with SPU's default non-linearities; ``--cheetah-layers K``
    runs K layers plus the head and scales the layers to the model's depth (labelled so).
Per row: wall time (prefill, both parties on this machine), bytes and rounds from each system's
own counters (CrypTen: communication calls and bytes sent + received by one party; SPU: party 0's
send actions and bytes sent + received), peak RSS, top-1 agreement and max |logit error| against
pmpc's plaintext engine (float64), ratios to pmpc bolt (local dealer). Modelled LAN/WAN time as
in ``pmpc bench``: wall + rounds x RTT + bytes / 2 x 8 / bandwidth.

The native-technology table prices each pmpc row's primitive counts in OT-based 2PC
(:class:`pmpc.mpc.primitives.OTModel`: SIRNN's IKNP OT and Cheetah's silent OT), beside the measured
dealer-model figures and the seed paper's Table 1. Results stream to OUT/peers.json (rewritten
after every row; a rerun skips rows already there) and OUT/peers.md.
"""
from __future__ import annotations

# crypten (through pmpc.mpc.crypten_compat / crypten_ops) is imported inside the functions that run
# in a party: the launcher, the CLI and a machine without crypten import this module without it.

import dataclasses
import functools
import json
import os
import pathlib
import subprocess
import sys
import time

import numpy as np

from eval.perf import bench
from pmpc.engine import Engine
from pmpc import markdown as md
from pmpc import models, paths
from pmpc.errors import UserError
from pmpc.mpc import cost, parties, primitives
from pmpc.mpc.parties import PartyError
from pmpc.ops import TorchOps
import protocols as Pr

PEERS_DIR = paths.REPO / "bench" / "peers"
SCHEMA = "pmpc.peers/1"
REFERENCE = "pmpc bolt (local)"
# the seed paper's Table 1 (arXiv 2502.00840): speedup of each system's non-linear protocols over
# SIRNN, and what the systems claim themselves (abstracts; ../shared/research/protocols.md §10)
TABLE1 = {"iron": 9.6, "bolt": 24.6, "bumblebee": 22.3}
CLAIMS = {
    "iron": "3-14x less communication, 3-11x less runtime than prior art (NeurIPS'22 abstract)",
    "bolt": "4.8-9.5x faster than Iron, 10.91x less communication (ia.cr/2023/1893)",
    "bumblebee": ">10x faster than Iron, ~3x faster than BOLT with 1/10 its communication (NDSS'25)",
    "puma": "~2x faster than MPCFormer (arXiv 2307.12533); 3PC, no 2PC claim",
}


@dataclasses.dataclass
class PeersConfig:
    model: str = "smollm2"
    tokens: int = 16
    offset: int = 0
    protocols: list = dataclasses.field(default_factory=lambda: ["exact", "bolt", "bumblebee", "iron", "puma"])
    dealers: list = dataclasses.field(default_factory=lambda: ["local", "ttp"])
    ttp_protocols: list = dataclasses.field(default_factory=lambda: ["exact", "bolt", "bumblebee"])
    shipped: bool = True
    # SPU rows as PROTOCOL[:FIELD] (default field FM64). SEMI2K:FM128 because on FM64 (18 fraction
    # bits) the square of SmolLM2's massive activations (|x| ~ 24,000: 2^65 before truncation)
    # wraps the ring: SPU's defaults garble this model, its 128-bit field does not
    spu: list = dataclasses.field(default_factory=lambda: ["SEMI2K", "SEMI2K:FM128", "CHEETAH"])
    micro: bool = True
    cheetah_layers: int | None = None   # None: full run
    semi2k_layers: int | None = None
    micro_n: int = 4096
    threads: int = 1
    timeout_s: float = 1800.0
    data: str = ""
    venv: str = ""

    def validate(self) -> None:
        if self.tokens < 1:
            raise UserError("--tokens must be >= 1")
        for p in [*self.protocols, *self.ttp_protocols]:
            Pr.get(p)
            if p == "plain":
                raise UserError("plain is the plaintext reference every row is compared with, not an MPC protocol")
        for spec in self.spu:
            prot, _, field = spec.partition(":")
            if prot not in ("SEMI2K", "CHEETAH"):
                raise UserError(f"unknown SPU protocol {prot!r} (SEMI2K or CHEETAH: the 2-party ones)")
            if field not in ("", "FM32", "FM64", "FM128"):
                raise UserError(f"unknown SPU field {field!r} (FM32, FM64 or FM128)")
        for k in ("cheetah_layers", "semi2k_layers"):
            if getattr(self, k) is not None and getattr(self, k) < 1:
                raise UserError(f"--{k.replace('_', '-')} must be >= 1")


# -- CrypTen as shipped ---------------------------------------------------------------------------
@functools.cache
def _shipped_ops_class():
    from pmpc.mpc.crypten_ops import CrypTenOps

    class ShippedCrypTenOps(CrypTenOps):
        """CrypTen's own comparison: every sign test is an A2B of the whole 64-bit ring
        (``MPCTensor._ltz``), no lanes, no packing."""

        def lane(self, bound, ulp=None):
            return None

        def _ltz_ring_int(self, x):
            return x._ltz()

    return ShippedCrypTenOps


@dataclasses.dataclass
class PeerJob(bench.BenchJob):
    """A ``pmpc bench`` row whose party also counts primitives; ``shipped``: CrypTen as shipped."""

    shipped: bool = False

    def make_ops(self):
        if not self.shipped:
            self._ops = super().make_ops()
        else:
            from pmpc.mpc import crypten_compat

            crypten_compat._TRUNCATION[0] = "local"  # CrypTen's own SecureML truncation
            self._ops = _shipped_ops_class()(cost.Tracker(cost.crypten_stats))
        return self._ops

    def __call__(self, rank, world_size, ids=None):
        import pmpc.mpc.crypten_ops  # noqa: F401  (CrypTenOps and crypten loaded before counting starts: both are counted)

        if self.shipped:
            _shipped_ops_class()  # defined before counting starts, so its own methods are counted too
        scope = lambda: primitives.scope_of(getattr(self, "_ops", None))  # noqa: E731
        with primitives.counting(scope_of=scope) as counts:
            res = super().__call__(rank, world_size, ids)
        res["primitives"] = counts.as_dict()
        return res


# -- weights for the peer venv --------------------------------------------------------------------
def export(spec, path: pathlib.Path) -> pathlib.Path:
    """The spec's weights (float32, canonical names) + inv_freq + the config, as one .npz."""
    if path.exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    cfg = {k: getattr(spec, k) for k in ("hidden", "n_layers", "n_heads", "n_kv_heads", "head_dim", "norm_eps",
                                         "rope_scaling", "vocab")}
    arrays = {k: v.detach().float().numpy() for k, v in spec.weights.items()}
    arrays["inv_freq"] = spec.inv_freq.detach().float().numpy()
    arrays["__config__"] = np.frombuffer(json.dumps(cfg).encode(), dtype=np.uint8)
    tmp = path.with_name(path.stem + ".tmp.npz")
    np.savez(tmp, **arrays)
    tmp.replace(path)
    return path


def peer_python(venv: str = "") -> str:
    """The peer venv's python, built by ``bench/peers/venv.sh`` on first use (SPU pins numpy < 2
    and its own jax, so it cannot live in pmpc's environment)."""
    try:
        out = subprocess.run(["bash", str(PEERS_DIR / "venv.sh"), *([venv] if venv else [])], check=True,
                             capture_output=True, text=True).stdout.strip().splitlines()[-1]
    except subprocess.CalledProcessError as e:
        raise UserError(f"could not build the SPU venv: {e.stderr.strip().splitlines()[-1:]}") from None
    return str(pathlib.Path(out) / "bin" / "python")


def spu(py: str, args: list, timeout_s: float) -> dict:
    try:
        p = subprocess.run([py, str(PEERS_DIR / "spu_run.py"), *args], capture_output=True, text=True,
                           timeout=timeout_s)
    except subprocess.TimeoutExpired:
        raise UserError(f"SPU run {' '.join(args[:3])} exceeded {timeout_s:.0f} s") from None
    if p.returncode != 0:
        tail = (p.stderr or p.stdout).strip().splitlines()[-3:]
        raise UserError(f"SPU run failed ({p.returncode}): {' | '.join(tail)}")
    return json.loads(p.stdout.strip().splitlines()[-1])


# -- rows -----------------------------------------------------------------------------------------
def _links() -> dict:
    return {n: cost.LINKS[n] for n in ("lan", "wan")}


def _with_links(row: dict) -> dict:
    row["modelled_s"] = {n: l.time(row["rounds"], row["bytes"], row["wall_s"]) for n, l in _links().items()}
    return row


def pmpc_row(model: str, proto: str, dealer: str, ids, ref, cfg: PeersConfig, shipped: bool = False) -> dict:
    job = PeerJob(model, proto, tuple(ids.shape), "public", 0, shipped=shipped)
    parts = parties.run_local(job, timeout_s=cfg.timeout_s, dealer=dealer, threads=cfg.threads, inputs={0: ids})
    client, server = parts
    base = bench.make_row(model, proto, parts, ref, True, {})
    return _with_links({
        "system": "crypten-shipped" if shipped else "pmpc", "protocol": proto, "dealer": dealer,
        "weights": "public", "wall_s": max(client["wall_s"], server["wall_s"]),
        "bytes": base["bytes"], "rounds": base["rounds"],
        "peak_rss_mb": max(client["peak_rss_mb"], server["peak_rss_mb"]), "rss_note": "per party (max of two)",
        "fidelity": base["fidelity"], "scopes": base["scopes"], "primitives": client["primitives"],
        "counters": "CrypTen communicator: calls (rounds), bytes sent + received by one party",
    })


def spu_row(py: str, npz: pathlib.Path, ids, ref, protocol: str, layers: int | None, out: pathlib.Path,
            timeout_s: float, field: str = "FM64") -> dict:
    ids_f = out / "ids.json"
    ids_f.write_text(json.dumps([int(i) for i in ids[0]]))
    logits_f = out / f"spu-{protocol.lower()}-{'full' if layers is None else f'l{layers}'}-{field.lower()}.npy"
    args = ["forward", "--npz", str(npz), "--ids", str(ids_f), "--protocol", protocol, "--out", str(logits_f),
            "--field", field]
    if layers is not None:
        args += ["--layers", str(layers)]
    r = spu(py, args, timeout_s)
    name = protocol if field == "FM64" else f"{protocol} {field}"
    row = {"system": "spu", "protocol": name, "dealer": "party 0 (TrustedFirstParty)" if protocol == "SEMI2K"
           else "none (silent OT + RLWE)", "weights": "public", "peak_rss_mb": r["peak_rss_mb"],
           "rss_note": "both parties in one process", "field": r["field"],
           "counters": "SPU profiler: party 0 send actions (rounds), bytes sent + received"}
    if r["mode"] == "full":
        got = np.load(logits_f)[None]
        row.update(wall_s=r["wall_s"], bytes=r["bytes"], rounds=r["rounds"], compile_s=r["compile_s"],
                   fidelity=bench.fidelity(ref, got, True), mode="full", ops=r["ops"])
    else:
        scale = r["n_layers"] / r["layers_run"]
        L, H = r["layers"], r["head"]
        row.update(wall_s=L["wall_s"] * scale + H["wall_s"], bytes=int(L["bytes"] * scale + H["bytes"]),
                   rounds=int(L["rounds"] * scale + H["rounds"]), compile_s=L["compile_s"] + H["compile_s"],
                   mode=r["mode"], measured={"layers": L, "head": H},
                   fidelity={"top1": None, "max_abs_err": None, "mean_kl": None,
                             "hidden_max_abs_err_after_layers_run": r["hidden_max_abs_err"]})
    return _with_links(row)


# -- the native-technology table ------------------------------------------------------------------
def native(rows: list, micro: dict | None) -> dict:
    """Each pmpc protocol over ``exact``: measured in the dealer model, modelled in OT-based 2PC."""
    pm = {r["protocol"]: r for r in rows if r["system"] == "pmpc" and r["dealer"] == "local"
          and "calls_by_scope" in r.get("primitives", {})}
    if "exact" not in pm:
        return {}
    mac = micro["FM64"]["matmul"]["bytes_per_mac"] * 8 if micro and "matmul" in micro.get("FM64", {}) else None
    models = {"ot-iknp (SIRNN)": dataclasses.replace(primitives.OTModel.sirnn(), matmul_mac_bits=mac),
              "ot-silent (Cheetah)": primitives.OTModel.cheetah(mac)}
    if micro and "FM64" in micro:
        models["SPU CHEETAH unit costs"] = primitives.MeasuredOT.from_micro(micro)
    links = _links()

    def timed(v):
        return {**v, **{ln: l.time(v["rounds"], v["bytes"], 0.0) for ln, l in links.items()}}

    out = {}
    for p, r in sorted(pm.items(), key=lambda kv: _order(kv[1])):
        out[p] = {"dealer_measured": {"bytes": r["bytes"], "rounds": r["rounds"], **r["modelled_s"]},
                  "dealer_nonlinear": timed(_scoped(r["scopes"], NONLINEAR)),
                  "modelled": {n: timed(m.price_run(r["primitives"])) for n, m in models.items()},
                  "modelled_nonlinear": {n: timed(m.price_run(r["primitives"], NONLINEAR)) for n, m in models.items()},
                  "counts": r["primitives"]["total"]}
    e = out["exact"]

    def ratio(a, b):
        return {k: a[k] / max(b[k], 1e-12) for k in ("bytes", "rounds", "lan", "wan")}

    for p, v in out.items():
        v["speedup_vs_exact"] = {"dealer (measured)": ratio(e["dealer_measured"], v["dealer_measured"]),
                                 **{n: ratio(e["modelled"][n], v["modelled"][n]) for n in models}}
        v["speedup_vs_exact_nonlinear"] = {
            "dealer (measured)": ratio(e["dealer_nonlinear"], v["dealer_nonlinear"]),
            **{n: ratio(e["modelled_nonlinear"][n], v["modelled_nonlinear"][n]) for n in models}}
    return out


# the cost scopes of the non-linear functions (what the paper's Table 1 compares)
NONLINEAR = ("norm", "attention.softmax", "activation")


def _scoped(scopes: dict, names) -> dict:
    return {"bytes": sum(scopes[s]["bytes"] for s in names if s in scopes),
            "rounds": sum(scopes[s]["rounds"] for s in names if s in scopes)}


GAPS = {
    "iron": "SmolLM2 has SiLU, RMSNorm and softmax, and Iron's own protocols (GELU, LayerNorm) are built on "
            "SIRNN's blocks, which pmpc's `exact` already is: iron costs what exact costs in both technologies; "
            "the paper's 9.6x over SIRNN must come from what this forward does not exercise (BERT's GELU/LayerNorm "
            "against SIRNN's generic math, Iron's HE matmul packing; weights here are public).",
    "bolt": "the gain is the SiLU: exact's precise exp (bit decomposition, a product per bit) and Goldschmidt "
            "reciprocal become one polynomial and 3 lane comparisons, in either technology about the same "
            "share of the cost; BOLT's 24.6x is over SIRNN's LUT math at 37 bits plus its packed HE matmuls "
            "(word elimination), neither of which this public-weight run has.",
    "bumblebee": "as bolt, slightly more (fewer multiplications in its softmax exp); BumbleBee's own gains over "
                 "BOLT are RLWE matmuls with 80-90% less traffic (no secret-weight matmuls here) and approximate "
                 "32-bit comparisons, which pmpc's lanes give every protocol, `exact` included.",
    "puma": "PUMA is 3PC (ABY3); run in 2PC here its piecewise SiLU and Taylor exp cost what BumbleBee's do "
            "(the same counts); Table 1 has no PUMA row, and PUMA claims only ~2x over MPCFormer.",
}


# -- output ---------------------------------------------------------------------------------------
def _key(r: dict) -> str:
    return f"{r['system']}/{r['protocol']}/{r['dealer']}"


PROTOCOL_ORDER = ("exact", "iron", "bolt", "bumblebee", "puma", "crypten", "SEMI2K", "SEMI2K FM128", "CHEETAH")


def _order(r: dict):
    """pmpc local, pmpc ttp, CrypTen as shipped, SPU; protocols in PROTOCOL_ORDER."""
    sysk = {"pmpc": 0, "crypten-shipped": 2, "spu": 3}.get(r["system"], 4) + (r["dealer"] == "ttp")
    p = r["protocol"]
    rank = PROTOCOL_ORDER.index(p) if p in PROTOCOL_ORDER else len(PROTOCOL_ORDER)
    return sysk, rank, p


def _ref_row(rows):
    return next((r for r in rows if r["system"] == "pmpc" and r["protocol"] == "bolt" and r["dealer"] == "local"), None)


def markdown(data: dict) -> str:
    cfg, rows = data["config"], data["rows"]
    ref = _ref_row(rows)
    L = [f"# Peers side by side: {cfg['model']}, {cfg['tokens']} WikiText-2 tokens, prefill", "",
         f"Measured on this machine ({data.get('machine', '?')}) by `{data.get('command', '')}` (last run "
         f"{data.get('measured_at', '?')}, pmpc commit {data.get('commit', '?')}): the rows run back to back; a rerun "
         "resumes, so each row's time and load are in its last column. Weights public "
         "(an open-weight model) in every row; tokens secret; logits revealed to the client.",
         "Wall s: prefill on loopback, both parties on this machine (load stated above: wall times are "
         "load-dependent, bytes and rounds are not). Rounds: CrypTen communication calls / SPU party-0 send "
         "actions. MB: sent + received by one party. LAN/WAN: modelled as wall + rounds x RTT + MB x 8 / 2 / "
         "bandwidth (1 Gbit/s, 0.5 ms; 100 Mbit/s, 40 ms). x = the row's cost / pmpc bolt's (local).", ""]
    body = []
    for r in rows:
        f = r["fidelity"]
        x = (lambda k: _fmt(r[k] / ref[k], ".2f")) if ref else (lambda k: "—")
        xw = _fmt(r["modelled_s"]["wan"] / ref["modelled_s"]["wan"], ".2f") if ref else "—"
        top1 = _fmt(f.get("top1"), ".3f")
        err = _fmt(f.get("max_abs_err"), ".3g")
        if f.get("hidden_max_abs_err_after_layers_run") is not None:
            err = f"(hidden after layers run: {f['hidden_max_abs_err_after_layers_run']:.3g})"
        body.append([r["system"], r["protocol"], r["dealer"], r.get("mode", "full"), f"{r['wall_s']:.1f}",
                     f"{r['bytes'] / 1e6:.1f}", r["rounds"], f"{r['modelled_s']['lan']:.1f}", f"{r['modelled_s']['wan']:.1f}",
                     f"{r['peak_rss_mb']:.0f}", top1, err, x("wall_s"), x("bytes"), x("rounds"), xw,
                     f"{r.get('measured_at', '?')} ({r.get('load_avg_1m', '?')})"])
    L += md.table(["system", "protocol", "dealer", "mode", "wall s", "MB", "rounds", "LAN s (modelled)", "WAN s (modelled)",
                   "peak RSS MB", "top-1", "max abs logit err", "x wall", "x MB", "x rounds", "x WAN (modelled)",
                   "measured (1-min load)"], body)
    notes = [f"- {r['system']}: peak RSS {r['rss_note']}; {r['counters']}; field FM64 unless the protocol names "
             "another" for r in rows if r["system"] == "spu"][:1]
    notes += [f"- pmpc / crypten-shipped: peak RSS {r['rss_note']}; {r['counters']}" for r in rows
              if r["system"] != "spu"][:1]
    notes += [f"- {r['system']} {r['protocol']}: {r['mode']}" for r in rows if r.get("mode", "full") != "full"]
    jc = data.get("jax_check")
    if jc:
        notes.append(f"- the peer forward in plaintext: jax.numpy (float32, what SPU compiles) vs numpy (float64, "
                     f"checked against HF in the tests): max |logit difference| {jc['jax_float32_vs_numpy_float64_max_abs']:.2g}, "
                     f"top-1 agreement {jc['top1_agree']:.3f}")
    L += ["", *notes]
    nat = data.get("native") or {}
    if nat:
        models = list(next(iter(nat.values()))["modelled"])
        L += ["", "## Each protocol over `exact` in its own technology", "",
              "Dealer model: MEASURED (pmpc, local dealer, the rows above). OT-based 2PC: MODELLED — the same pmpc "
              "run's primitive counts priced per primitive as SIRNN (IKNP OT extension) and Cheetah (silent OT) "
              "implement them (`pmpc/mpc/primitives.py`), and at the unit costs MEASURED on SPU CHEETAH here (last "
              "table). Secret x secret matmuls (attention) are priced at Cheetah's RLWE cost per MAC as measured on "
              "SPU in every OT column; products with the public weights are local everywhere. Paper: Table 1 of "
              "arXiv 2502.00840, speedup over SIRNN. Cells: bytes ratio / WAN-time ratio (exact's / the row's).", ""]
        for title, key in (("Whole forward", "speedup_vs_exact"),
                           ("Non-linear functions only (scopes " + ", ".join(NONLINEAR) + ")", "speedup_vs_exact_nonlinear")):
            ratio = lambda sp, m: f"{_fmt(sp[m]['bytes'], '.2f')} / {_fmt(sp[m]['wan'], '.2f')}"  # noqa: E731
            L += [f"**{title}**", ""]
            L += md.table(["protocol", "dealer (measured)", *(f"{m} (modelled)" for m in models), "paper Table 1",
                           "the system's own claim"],
                          [[p, *(ratio(v[key], m) for m in ["dealer (measured)", *models]),
                            f"{TABLE1[p]}x" if p in TABLE1 else "—", CLAIMS.get(p, "—")] for p, v in nat.items()])
            L.append("")
        L += ["Why they differ (one line each):", ""]
        L += [f"- **{p}**: {GAPS[p]}" for p in nat if p in GAPS]
        totals = []
        for p, v in nat.items():
            d = v["dealer_measured"]
            totals.append([p, f"{d['bytes'] / 1e6:.0f} / {d['rounds']}",
                           *(f"{v['modelled'][m]['bytes'] / 1e6:.0f} / {v['modelled'][m]['rounds']}" for m in models),
                           ", ".join(f"{k} {n:,}" for k, n in sorted(v["counts"].items()) if not k.endswith(".mac"))])
        L += ["", "Totals per protocol, whole forward (MB / rounds; OT columns MODELLED):", ""]
        L += md.table(["protocol", "dealer (measured)", *models, "primitive counts (elements)"], totals)
    mic = data.get("micro") or {}
    if mic:
        L += ["", "## Per-primitive cost: OT model vs SPU CHEETAH microbenchmark (this machine)", "",
              "| primitive | field | SPU CHEETAH B/elem (measured) | rounds (measured) | model ot-silent B/elem | "
              "model rounds | model ot-iknp B/elem |", "|---" * 7 + "|"]
        for field, m in mic.items():
            bits = int(field[2:])
            sil, ik = primitives.OTModel.cheetah(), primitives.OTModel.sirnn()
            sil = dataclasses.replace(sil, ring=bits)
            ik = dataclasses.replace(ik, ring=bits)
            for prim, fn in (("comparison", lambda mm: mm.comparison(bits)), ("product", lambda mm: mm.product()),
                             ("truncation", lambda mm: mm.truncation())):
                if prim not in m:
                    continue
                L.append(f"| {prim} | {field} | {m[prim]['bytes_per_element']:.1f} | {m[prim]['rounds']} | "
                         f"{fn(sil)[0] / 8:.1f} | {fn(sil)[1]} | {fn(ik)[0] / 8:.1f} |")
            if "matmul" in m:
                L.append(f"| secret matmul (per MAC) | {field} | {m['matmul']['bytes_per_mac']:.3f} | "
                         f"{m['matmul']['rounds']} | (RLWE: priced from this) | | |")
    return "\n".join(L) + "\n"


def _fmt(v, spec):
    return "—" if v is None else format(v, spec)


class Results:
    def __init__(self, out: pathlib.Path, cfg: PeersConfig, command: str):
        self.out = out
        self.path = out / "peers.json"
        self.data = {"schema": SCHEMA, "config": dataclasses.asdict(cfg), "rows": [], "micro": {}, "native": {}}
        if self.path.exists():
            old = json.loads(self.path.read_text())
            if old.get("schema") != SCHEMA:
                raise UserError(f"{self.path}: not a peers file")
            for k in ("model", "tokens", "offset"):
                if old["config"].get(k) != getattr(cfg, k):
                    raise UserError(f"{self.path} was made with {k} {old['config'].get(k)}, not {getattr(cfg, k)}; "
                                    "use another --out or --fresh")
            self.data.update(rows=old["rows"], micro=old.get("micro", {}))
            if "jax_check" in old:
                self.data["jax_check"] = old["jax_check"]
        self.data.update(command=command, commit=_commit(), measured_at=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                         machine=_machine())

    def has(self, key: str) -> bool:
        return any(_key(r) == key for r in self.data["rows"])

    def add(self, row: dict) -> None:
        rows = [r for r in self.data["rows"] if _key(r) != _key(row)] + [row]
        self.data["rows"] = sorted(rows, key=_order)
        self.write()

    def write(self) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        self.data["native"] = native(self.data["rows"], self.data["micro"])
        tmp = self.path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(bench.clean(self.data), indent=1, default=float))
        tmp.replace(self.path)
        (self.out / "peers.md").write_text(markdown(self.data))


def _commit() -> str:
    try:
        return subprocess.run(["git", "-C", str(paths.REPO), "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def _machine() -> str:
    load = os.getloadavg()
    return f"{os.cpu_count()} CPUs, load average {load[0]:.1f} at start"


# -- the driver -----------------------------------------------------------------------------------
def run(cfg: PeersConfig, out, command: str = "", fresh: bool = False, progress=print) -> dict:
    import torch

    out = pathlib.Path(out)
    if fresh and (out / "peers.json").exists():
        (out / "peers.json").unlink()
    cfg.validate()
    res = Results(out, cfg, command)
    out.mkdir(parents=True, exist_ok=True)
    spec, tok = models.load(cfg.model)
    if spec.arch != "llama":
        raise UserError(f"{cfg.model}: the peer forward is the Llama architecture; this is {spec.arch}")
    ids = bench.windows(tok, spec.vocab, 1, cfg.tokens, bench.wikitext_path(cfg.data or None), cfg.offset)
    with torch.no_grad():
        ref = Engine(spec, "plain", TorchOps(torch.float64)).prefill(ids, use_cache=False).numpy()
    res.data["inputs"] = {"ids": ids.tolist()}
    failed = []

    def attempt(key, fn):
        if res.has(key):
            progress(f"peers: {key}: already measured")
            return
        progress(f"peers: {key} ...")
        t0 = time.perf_counter()
        try:
            row = fn()
            row["measured_at"] = time.strftime("%H:%M UTC", time.gmtime())
            row["load_avg_1m"] = round(os.getloadavg()[0], 1)
            res.add(row)
        except (PartyError, UserError) as e:
            failed.append(f"{key}: {e}")
            progress(f"peers: {key} failed: {e}")
            return
        progress(f"peers: {key} done in {time.perf_counter() - t0:.0f} s")

    for dealer in cfg.dealers:
        for p in (cfg.protocols if dealer == "local" else cfg.ttp_protocols):
            attempt(f"pmpc/{p}/{dealer}", lambda p=p, d=dealer: pmpc_row(cfg.model, p, d, ids, ref, cfg))
    if cfg.shipped:
        attempt("crypten-shipped/crypten/local",
                lambda: pmpc_row(cfg.model, "crypten", "local", ids, ref, cfg, shipped=True))
    if cfg.spu:
        py = peer_python(cfg.venv)
        npz = export(spec, _cache() / f"{pathlib.Path(cfg.model).name}.npz")
        if "jax_check" not in res.data:
            ids_f = out / "ids.json"
            ids_f.write_text(json.dumps([int(i) for i in ids[0]]))
            progress("peers: the peer forward under jax.numpy vs numpy (plaintext) ...")
            res.data["jax_check"] = spu(py, ["check", "--npz", str(npz), "--ids", str(ids_f)], cfg.timeout_s)
        for spec in cfg.spu:
            prot, _, field = spec.partition(":")
            field = field or "FM64"
            layers = cfg.cheetah_layers if prot == "CHEETAH" else cfg.semi2k_layers
            dealer = "party 0 (TrustedFirstParty)" if prot == "SEMI2K" else "none (silent OT + RLWE)"
            name = prot if field == "FM64" else f"{prot} {field}"
            attempt(f"spu/{name}/{dealer}", lambda prot=prot, layers=layers, field=field:
                    spu_row(py, npz, ids, ref, prot, layers, out, cfg.timeout_s, field=field))
        for field in ("FM64", "FM32") if cfg.micro else ():
            if field not in res.data["micro"]:
                progress(f"peers: SPU CHEETAH microbenchmark {field} ...")
                try:
                    res.data["micro"][field] = spu(py, ["micro", "--protocol", "CHEETAH", "--field", field,
                                                        "--n", str(cfg.micro_n)], cfg.timeout_s)
                except UserError as e:
                    failed.append(f"micro {field}: {e}")
                res.write()
    res.write()
    if failed:
        raise UserError(f"{len(failed)} row(s) failed (rerun to retry): " + "; ".join(failed))
    return res.data


def _cache() -> pathlib.Path:
    """Where the weight exports live (:func:`pmpc.paths.peers_cache`)."""
    return paths.peers_cache()
