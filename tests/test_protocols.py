"""Protocols: every stated function against float64 on its domain, its stated costs, MPC against
the emulation, and the bytes of a whole forward.

Inputs are drawn fresh on every run (the seed is printed with a failure), so a bound that only
holds for lucky inputs will eventually fail.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from tests import mpc_jobs as mj
import protocols
from pmpc.ops import TorchOps
from pmpc.mpc.parties import run_local

MINE = ("iron", "bolt", "bumblebee", "puma", "nexus", "mpcformer")
ALL = tuple(n for n in protocols.names() if n != "plain")
# Specs of modules owned elsewhere that do not hold as stated (reported to their owner).
# Strict xfail: the day they are fixed these tests fail and the entry must go.
KNOWN_BAD = {
    ("crypten", "gelu"): "CrypTen's (1+x/256)^256 inside sigmoid overflows for |u| >~ 500 (x >~ 9) on the stated domain",
    ("crypten", "reciprocal"): "3 e^(1-2x) start overflows for x > ~256; stated domain reaches 300",
}
N_POINTS = 4000


@pytest.fixture
def gen():
    seed = int(torch.randint(0, 2 ** 31 - 1, (1,)))
    print(f"input seed {seed}")
    return torch.Generator().manual_seed(seed)


def _cases(names):
    out = []
    for pname, fn, spec in mj.spec_items(names):
        marks = [pytest.mark.xfail(strict=True, reason=KNOWN_BAD[(pname, fn)])] if (pname, fn) in KNOWN_BAD else []
        out.append(pytest.param(pname, fn, id=f"{pname}-{fn}", marks=marks))
    return out


@pytest.mark.parametrize("pname,fn", _cases(ALL))
def test_float64_error_within_stated_bound(pname, fn, gen):
    p = protocols.get(pname)
    spec = p.specs[fn]
    x = mj.sample(fn, spec.domain, N_POINTS, gen)
    y = mj.evaluate(p, fn, x, TorchOps())
    err = mj.error(spec, y, mj.REFS[fn](x))
    assert err <= mj.bound(spec), f"{pname}.{fn}: max error {err:.3g} > stated {mj.bound(spec):.3g} on {spec.domain}"


@pytest.mark.parametrize("pname,fn", _cases(MINE))
def test_stated_costs_match_the_arithmetic(pname, fn, gen):
    """Comparisons (ltz / A2B) and secret products per element, counted on the emulation."""
    p = protocols.get(pname)
    spec = p.specs[fn]
    x = mj.sample(fn, spec.domain, 64 * mj.SOFTMAX_ROW, gen)
    ops = mj.CountingOps()
    mj.evaluate(p, fn, x, ops)
    tol = 0.05 if fn == "softmax" else 0.0  # softmax: per score element of a 16-row, rounded
    assert abs(ops.comparisons / x.numel() - spec.comparisons) <= tol
    assert abs(ops.multiplications / x.numel() - spec.multiplications) <= tol


def test_nexus_rsqrt_domain_stops_before_its_start_crosses_zero():
    """Regression guard for a failure mode found while writing the protocols: NEXUS's rsqrt
    start crosses zero at x = 1000, so its domain must stop below."""
    p = protocols.get("nexus")
    lo, hi = p.specs["rsqrt"].domain
    x = torch.tensor([lo, hi, 1000.0], dtype=torch.float64)
    rel = (p.rsqrt(x, TorchOps()) * x.sqrt() - 1).abs()
    assert rel[0] <= p.specs["rsqrt"].max_rel_err and rel[1] <= p.specs["rsqrt"].max_rel_err
    assert rel[2] > 0.5  # outside the domain it really fails


def _quantize(x: torch.Tensor) -> torch.Tensor:
    """The 16-bit fixed-point grid CrypTen encodes inputs on: both backends see the same input."""
    return torch.round(x * 2 ** 16) / 2 ** 16


# MPC vs emulation: |mpc - emu| <= ATOL + RTOL |emu|. The emulation rounds secret products to
# 2^-16 (as MPC truncates) but keeps public constants exact, so the residual is truncation noise
# (+-1 ulp per product, stochastic in CrypTen) and the rounding of constants to the grid,
# amplified by the function's own slope (squarings in the exps).
ATOL, RTOL = 2e-3, 5e-3


@pytest.mark.slow
@pytest.mark.parametrize("dealer", ["local", "ttp"])  # ttp: the dealer's answers read after each opening
def test_mpc_equals_emulation_for_every_function(gen, dealer):
    cases = {}
    for pname, fn, spec in mj.spec_items(ALL):
        if (pname, fn) in KNOWN_BAD:
            continue  # their float64 test is a strict xfail above: not silent
        n = 16 * mj.SOFTMAX_ROW if fn == "softmax" else 256
        cases[(pname, fn)] = _quantize(mj.sample(fn, spec.domain, n, gen)).numpy()
    res = run_local(mj.FunctionsJob(cases), timeout_s=120, deadline_s=300, dealer=dealer)[0]
    bad = []
    for (pname, fn), arr in cases.items():
        emu = mj.evaluate(protocols.get(pname), fn, torch.from_numpy(arr), TorchOps(fxp_bits=16)).numpy()
        got = res["out"][(pname, fn)]
        assert got.shape == emu.shape
        excess = np.abs(got - emu) - (ATOL + RTOL * np.abs(emu))
        # A computed value that lands within a unit of a segment threshold can take the other
        # branch under MPC's stochastic truncation (seen once in ~10 runs, not reproducible with
        # the same inputs): allow at most 1% of a function's elements; a systematic difference
        # still fails.
        # ... and even those must stay within a few times the function's own error bound (a branch
        # flip moves the value by at most the jump between segments, not by garbage)
        spec = protocols.get(pname).specs[fn]
        own = (spec.max_abs_err if spec.max_abs_err is not None else spec.max_rel_err * np.abs(emu))
        wild = excess > 4 * own
        if (excess > 0).mean() > 0.01 or wild.any():
            i = int(np.argmax(excess))
            bad.append(f"{pname}.{fn}: {(excess > 0).sum()} of {excess.size} differ; worst x={arr.reshape(-1)[i]:.6g} "
                       f"mpc={got.reshape(-1)[i]:.6g} emu={emu.reshape(-1)[i]:.6g}")
    assert not bad, "MPC differs from its emulation:\n" + "\n".join(bad)


@pytest.mark.slow
def test_bolt_and_bumblebee_spend_fewer_bytes_than_exact():
    """The same tiny-model forward, same tokens, one MPC session: a property of the protocols.
    Rounds too for bolt; bumblebee's own rsqrt (11-12 rounds a norm) now takes more rounds than
    exact's table start on the exact sum of squares (7-8), so only its bytes are held below."""
    from pmpc.engine import Engine
    from pmpc.models import load_hf, spec_from_hf

    ids = torch.randint(0, 96, (1, 8))
    res = run_local(mj.ForwardBytesJob("tiny-random-llama", ["exact", "bolt", "bumblebee"], ids.numpy()),
                    timeout_s=120, deadline_s=300)[0]
    for name in ("bolt", "bumblebee"):
        assert res[name]["bytes"] < res["exact"]["bytes"], (name, res[name]["bytes"], res["exact"]["bytes"])
    assert res["bolt"]["rounds"] < res["exact"]["rounds"], (res["bolt"]["rounds"], res["exact"]["rounds"])
    # and the forwards are real: each protocol's logits track the plaintext model's
    hf, _ = load_hf("tiny-random-llama")
    ref = Engine(spec_from_hf(hf), "plain", TorchOps()).prefill(ids).numpy()
    for name, r in res.items():
        assert np.abs(r["logits"] - ref).max() < 0.05 * np.abs(ref).max() + 0.02, name


def test_parallel_branches_share_rounds_and_change_no_value():
    """``ops.parallel`` under MPC: the branches cost the rounds of the longest (a 32-bit lane
    comparison's seven), not the sum, and give what they give one after the other."""
    for dealer in ("local", "ttp"):
        r = run_local(mj.parallel_job, timeout_s=120, deadline_s=300, dealer=dealer)[0]
        assert r["par_rounds"] == max(7, 4) and r["seq_rounds"] == 7 + 2 + 4, r
        x = r["x"]
        assert np.array_equal(r["par"][0], (x < 0).astype(np.float64)) and np.array_equal(r["seq"][0], r["par"][0])
        for got, ref in ((r["par"][1], x ** 2), (r["par"][2], x ** 3)):
            assert np.abs(got - ref).max() < 1e-2


@pytest.mark.parametrize("pname", ["bolt", "exact"])
def test_act_times_is_the_activation_times_the_factor(pname, gen):
    """The gated MLP's ``act_times(silu, x, u)``: the emulation equals silu(x) u within the
    function's bound (times |u|), and MPC equals the emulation."""
    p = protocols.get(pname)
    x = _quantize(mj.sample("silu", (-12.0, 12.0), 512, gen))
    u = _quantize(4 * torch.randn(512, generator=gen, dtype=torch.float64))
    emu = p.act_times("silu", x, u, TorchOps(fxp_bits=16))
    ref = torch.nn.functional.silu(x) * u
    assert float(((emu - ref).abs() / (1 + u.abs())).max()) <= 2 * p.specs["silu"].max_abs_err
    got = run_local(mj.ActTimesJob(pname, "silu", x.numpy(), u.numpy()), timeout_s=120, deadline_s=300)[0]
    excess = np.abs(got - emu.numpy()) - (ATOL + RTOL * np.abs(emu.numpy())) * (1 + np.abs(u.numpy()))
    assert (excess > 0).mean() <= 0.01, float(excess.max())


@pytest.mark.parametrize("pname", [n for n in protocols.names() if "silu" in protocols.get(n).specs])
def test_act_times_runs_each_protocols_own_activation(pname):
    """``act_times(silu, x, u)`` is silu(x) u as the protocol (or its subclass) defines silu, to
    the fixed-point grid: a subclass with its own SiLU never gets its parent's fusion."""
    p = protocols.get(pname)
    ops = TorchOps(fxp_bits=16)
    x = torch.linspace(-8.0, 8.0, 401, dtype=torch.float64)
    u = torch.linspace(-3.0, 3.0, 401, dtype=torch.float64).flip(0)
    ref = ops.mul(p.silu(x, ops), u)
    assert float((p.act_times("silu", x, u, ops) - ref).abs().max()) < 1e-3
