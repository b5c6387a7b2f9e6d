"""The op set's own protocols under real MPC: packed-lane comparisons and the one-round sum of
squares (inputs drawn fresh every run)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from pmpc.ops import TorchOps
from pmpc.mpc.parties import run_local
from tests import mpc_jobs as mj


def test_lane_choice_follows_bound_and_resolution():
    ops = TorchOps()
    assert ops.lane(None) is None
    assert ops.lane(2 ** 15) == (32, 0)           # 1 + 15 + 16 bits
    assert ops.lane(2 ** 16) is None              # 33 bits: the whole ring
    assert ops.lane(2 ** 7, ulp=2 ** -8) == (16, 8)
    assert ops.lane(2.0, ulp=2 ** -4) == (8, 12)


def test_lane_emulation_wraps_like_the_ring_slice():
    """Out of its bound a lane comparison is wrong — the emulation reproduces that, so a protocol
    that states too small a bound fails its float64 test instead of hiding the error."""
    ops = TorchOps()
    x = torch.tensor([-3.0, 3.0, 2.0 ** 15 + 1, -(2.0 ** 15) - 1], dtype=torch.float64)
    assert ops.ltz(x, bound=2 ** 15).tolist() == [1.0, 0.0, 1.0, 0.0]
    assert ops.ltz(x).tolist() == [1.0, 0.0, 0.0, 1.0]


@pytest.mark.slow
def test_lane_comparisons_and_sum_squares_under_mpc():
    g = torch.Generator().manual_seed(int(torch.randint(0, 2 ** 31, ()).item()))
    x = (torch.rand(2001, generator=g, dtype=torch.float64) * 2 - 1) * (2 ** 15 - 1)
    x[:8] = torch.tensor([0.0, -2 ** -16, 2 ** -16, 1.0, -1.0, 2 ** 15 - 1, -(2 ** 15) + 1, -0.5])
    x = torch.round(x * 2 ** 16) / 2 ** 16          # on the fixed-point grid: signs are exact
    xc = (torch.rand(2001, generator=g, dtype=torch.float64) * 2 - 1) * 127
    rows = torch.randn(6, 64, generator=g, dtype=torch.float64) * 0.02
    rows[1] *= 100.0
    rows[2, 5] = 22552.0                            # SmolLM2's largest residual value
    rows[3, :] = 0.0
    rows[3, 0] = -30000.0
    res = run_local(mj.CompareJob(x.numpy(), xc.numpy(), rows.numpy()), timeout_s=120, deadline_s=300)[0]
    out, cost = res["out"], res["cost"]
    neg = (x < 0).numpy()
    for name in ("ring", "lane32", "lane32_int"):
        assert (out[name].round() == neg).all(), name
    # coarse: only values within one 2^-8 unit above zero may read as negative
    wrong = out["lane16_coarse"].round() != (xc < 0).numpy()
    assert (wrong <= ((xc >= 0) & (xc < 2 ** -8)).numpy()).all()
    emu = TorchOps(fxp_bits=16).ltz(torch.round(xc * 2 ** 16) / 2 ** 16, bound=2 ** 7, ulp=2 ** -8).numpy()
    assert (out["lane16_coarse"].round() != emu).mean() < 0.01
    # lanes cost less than the whole ring, in bytes, for the same values
    assert cost["lane32"]["bytes"] < 0.6 * cost["ring"]["bytes"]
    assert cost["lane16_coarse"]["bytes"] < 0.6 * cost["lane32"]["bytes"]
    assert cost["lane32"]["rounds"] <= cost["ring"]["rounds"]
    # sum of squares: relative error of the fixed-point grid, massive values included
    ref = (rows ** 2).sum(-1).numpy()
    got = out["sum_squares"].reshape(-1)
    rel = np.abs(got - ref) / ref
    assert rel.max() < 2e-3, rel
    assert cost["sum_squares"]["rounds"] == 3     # one product, two exact truncations


def test_packed_b2a_opens_uniform_words():
    """b2a_bits packs 3 masked bits into one word and pads it with random bits of each party's
    own: the server must receive a word with random high bits (zero padding is what the
    privacy test of test_engine caught by chance), and the bits must come out right."""
    client, server = run_local(mj.b2a_opening_job, timeout_s=60, deadline_s=120)
    assert client["bits"].tolist() == [1, 0, 1]
    opened = server["opened"]
    assert opened.size >= 1
    # a uniform 64-bit word is below 2^40 in magnitude with probability 2^-23
    assert (np.abs(opened.astype(np.float64)) >= 2.0 ** 40).all(), opened


def test_fixed_point_decode_is_exact_for_negative_values_near_integers():
    """CrypTen decoded x = k 2^16 + d (k < 0, 0 < d < |k|) as k - 1 + d 2^-16: off by exactly -1.0,
    the ~1.0 max |logit diff| of every protocol's bench row. The decode pmpc installs is exact."""
    import pmpc.mpc.crypten_compat  # noqa: F401  (the shim: imports crypten, installs the decode)
    from crypten.encoder import FixedPointEncoder

    enc = FixedPointEncoder(16)
    units = torch.tensor([-2 * 65536 + 1, -7 * 65536 + 5, -65536, -1, 0, 1, 3 * 65536 + 2, -(2 ** 40) + 7])
    want = units.double() / 65536
    assert torch.allclose(enc.decode(units).double(), want, rtol=1e-7, atol=0), enc.decode(units)
    g = torch.Generator().manual_seed(0)
    x = torch.randint(-(2 ** 30), 2 ** 30, (100_000,), generator=g)
    assert (enc.decode(x).double() - x.double() / 65536).abs().max() < 1e-3   # float32 rounding only


def test_ring_random_is_reproducible_and_uniform():
    """ring_random draws every mask: the same generator state must give the same words (parties
    sharing a generator rely on it), it must advance the generator, and bulk and small draws must
    cover the whole ring (each bit set half the time) or, for k bits, exactly [0, 2^k)."""
    from pmpc.mpc.crypten_compat import ring_random
    from pmpc.mpc.prg import PRG

    def gen(i):
        return PRG(i.to_bytes(16, "big"))

    for n in (10, 100_000):
        g1, g2 = gen(3), gen(3)
        a, b = ring_random((n,), g1), ring_random((n,), g2)
        assert a.dtype == torch.long and a.shape == (n,) and torch.equal(a, b)
        assert not torch.equal(ring_random((n,), g1)[:10], a[:10])
    w = ring_random((4, 50_000), gen(4))
    ones = torch.stack([((w >> i) & 1).double().mean() for i in range(64)])
    assert (ones - 0.5).abs().max() < 0.01, ones          # 200k draws: sd 0.0011 per bit
    for n in (10, 100_000):
        k = ring_random((n,), gen(5), bits=3)
        assert k.min() >= 0 and k.max() <= 7 and (n < 1000 or len(k.unique()) == 8)


def test_two_party_zero_sharing_is_one_shared_draw():
    """With two parties a zero sharing is (r, -r) from the generator the two share: the shares
    must sum (XOR) to zero, and each share alone must look uniform."""
    client, server = run_local(mj.zero_sharing_job, timeout_s=60, deadline_s=120)
    for a0, a1 in zip(client["arith"], server["arith"]):
        assert not (a0 + a1).any()                         # int64 arithmetic wraps like the ring
    for b0, b1 in zip(client["bin"], server["bin"]):
        assert not (b0 ^ b1).any()
    big = client["arith"][0]
    assert abs((big < 0).mean() - 0.5) < 0.01 and len(np.unique(big)) == big.size


def test_division_by_a_negative_public_integer():
    """CrypTen divides secret values by public integers of either sign (its own tests broadcast
    divisors drawn from [-60, 60]); the exact truncation divides by |y| and negates the shares."""
    for out in run_local(mj.negative_divisor_job, timeout_s=60, deadline_s=180):
        assert max(out["errs"]) <= 3, out["errs"]   # units: the floors' rounding, as for positive divisors
        assert out["fixed"] < 1e-3
        assert "0 < |y| < 2^62" in out["zero"]


def test_integer_divisor_constants_equal_the_tensor_ones():
    """A truncation by a Python int takes its constants (q, r, floor(2^64 / d) mod 2^64) as ints;
    they are the int64 values the tensor expressions give for every divisor."""
    import torch

    from pmpc.mpc import crypten_compat as cc

    rng = np.random.default_rng(1)
    ds = [2, 3, 7, 1000, 1 << 16, (1 << 16) + 1, 1 << 32, (1 << 62) - 1, (1 << 61) + 12345]
    ds += [int(v) for v in rng.integers(2, 1 << 62, 200)]
    for d in ds:
        t = torch.tensor(d)
        q, r = cc._unsigned(t)
        assert cc._int_divisor(d) == (int(q), int(r), int(2 * q + (2 * r) // t)), d
        s = torch.from_numpy(rng.integers(-(1 << 63), (1 << 63) - 1, 64, dtype=np.int64))
        assert torch.equal(cc._udiv(s, d, *cc._int_divisor(d)[:2]), cc._udiv(s, t, q, r)), d


def test_share_level_beaver_equals_crypten_bit_for_bit():
    """pmpc's Beaver product on the share tensors gives the very shares CrypTen's gives from the
    same triple (broadcast products and batched matmuls included)."""
    for out in run_local(mj.lean_beaver_job, timeout_s=60, deadline_s=180):
        assert all(out["same"]) and all(out["right"]), out


def test_config_view_follows_every_write():
    """CrypTen's per-operation modules read the configuration through a cached view: a write to a
    node, a replaced configuration and ``temp_override`` (inside and after) are all seen, and a
    missing key still raises."""
    import pytest
    from omegaconf import OmegaConf

    from pmpc.mpc import crypten_compat as cc  # first: crypten needs its shims
    import crypten.mpc.primitives.beaver as beaver

    assert beaver.cfg is cc.CFG
    cfg = cc.crypten.cfg
    old, saved = cfg.communicator.verbose, cfg.config
    try:
        for v in (True, False, True):
            cfg.communicator.verbose = v
            assert cc.CFG.communicator.verbose is v
        with cfg.temp_override({"mpc.protocol": "elsewhere"}):
            assert cc.CFG.mpc.protocol == "elsewhere"
        assert cc.CFG.mpc.protocol == "beaver"
        cfg.set_config(OmegaConf.create({"mpc": {"protocol": "x", "active_security": True}}))
        assert cc.CFG.mpc.active_security is True and cc.CFG.mpc.protocol == "x"
        cfg.config = saved
        assert cc.CFG.mpc.active_security is False
        with pytest.raises(Exception, match="nonexistent"):
            cc.CFG.mpc.nonexistent
    finally:
        cfg.config = saved
        cfg.communicator.verbose = old


def test_dropout_draws_one_public_mask_from_the_shared_stream():
    """CrypTen's dropout asks torch for uniform floats from a generator both parties share; pmpc's
    generators are AES streams. Each kept value is 1 / (1 - p), each dropped one 0 (a mask that
    differed between the parties would reveal neither), at about the rate p."""
    for out in run_local(mj.dropout_job, timeout_s=60, deadline_s=180):
        flat, feat = out["flat"], out["feature"]
        kept = flat != 0
        assert np.allclose(flat[kept], 1 / 0.75, atol=1e-3) and 0.2 < 1 - kept.mean() < 0.3
        kept = feat != 0
        assert (kept == kept[..., :1]).all()          # a whole feature map kept or dropped
        assert np.allclose(feat[kept], 2.0, atol=1e-3) and 0.35 < 1 - kept.mean() < 0.65


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["exact", "local"])
def test_two_party_truncation_never_wraps(mode):
    """CrypTen truncates 2-party products locally (SecureML): wrong by 2^32 (2^48 units) when the
    shares wrap, probability |x| 2^16 / 2^64 per element, ~15 of these 16 M products (it garbled
    1 of 50 encrypted generations in results/cpu-secure-asr). pmpc's exact truncation (the default) never is;
    ``PMPC_TRUNCATION=local`` brings CrypTen's back, which this test must see fail."""
    bad, errs = run_local(mj.truncation_job, timeout_s=120, deadline_s=300, env={"PMPC_TRUNCATION": mode})[0]
    if mode == "exact":
        assert bad == 0, f"{bad} of 16 M products wrong by ~2^32"
        assert max(errs) <= 3, errs        # dividing by 7 and by ints < 1000: the floors' rounding
    else:
        assert bad > 0                     # Poisson(~15): P(0) = 3e-7


class _CircuitOps(TorchOps):
    """The emulation as if every comparison were an adder circuit (``PMPC_COMPARISON=bitwise``)."""

    def one_round_comparisons(self, elements, lane):
        return False


def test_the_emulation_plans_with_the_runtime_rule():
    from pmpc.mpc import gates
    from pmpc.ops import ONE_ROUND_LEVELS

    assert ONE_ROUND_LEVELS == gates.DCF_MAX_LEVELS


@pytest.mark.parametrize("ops", [TorchOps(fxp_bits=16), _CircuitOps(fxp_bits=16)])
def test_max_is_exact_under_either_plan(ops):
    g = torch.Generator().manual_seed(3)
    for n in (1, 2, 3, 7, 8, 9, 41, 100):
        x = torch.round(torch.randn(3, 9, n, generator=g, dtype=torch.float64) * 3 * 2 ** 16) / 2 ** 16
        x[..., 0] = x[..., -1]  # ties
        assert torch.equal(ops.max(x), x.max(-1, keepdim=True).values), n


@pytest.mark.slow
def test_max_under_mpc_takes_both_plans_and_is_exact():
    res = run_local(mj.max_job, timeout_s=120, deadline_s=300)[0]
    assert res["decode"]["plan"] == [2, 3, 7]       # one-round gates: the fewest comparisons in 9 rounds
    assert res["prefill"]["plan"] == [8, 5]         # adder circuits: the fixed fan-in
    # the plan the emulation takes, though party 0 makes this local dealer's keys in the query's time
    emulated = TorchOps(fxp_bits=16)
    for name, (rows, n) in (("decode", (9, 41)), ("prefill", (9 * 37, 37))):
        assert res[name]["plan"] == emulated.max_plan(rows, n), name
    for r in res.values():
        assert np.array_equal(r["max"], r["x"].max(-1, keepdims=True)), "max differs"


@pytest.mark.parametrize("rows,k,n", [(1, 576, 1536), (3, 64, 10_000), (40, 64, 10_000), (40, 32, 48)])
def test_public_matrix_product_by_blocks_equals_the_whole_product(rows, k, n):
    """A compact (int32) public matrix multiplies a share block by block through a reused int64
    buffer (few rows, or a matrix over the buffer's size): the ring product is the whole one's,
    wrap-around included, and two threads multiplying at once do not share the buffer."""
    import threading

    from pmpc.mpc.crypten_ops import PublicMatrix

    g = torch.Generator().manual_seed(rows * n)
    W = PublicMatrix(torch.randn(k, n, generator=g), 20)
    assert W.ints.dtype == torch.int32
    share = torch.randint(-2 ** 63, 2 ** 63 - 1, (rows, k), generator=g)
    want = share.matmul(W.ints.long())
    assert torch.equal(W.times(share), want)
    other = PublicMatrix(torch.randn(k, n, generator=g), 20)
    got = {}
    threads = [threading.Thread(target=lambda m=m, i=i: got.__setitem__(i, [m.times(share) for _ in range(3)]))
               for i, m in enumerate((W, other))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(torch.equal(x, want) for x in got[0])
    assert all(torch.equal(x, share.matmul(other.ints.long())) for x in got[1])
