"""Function secret sharing: DCF/DPF keys (pmpc.mpc.fss), the one-round sign gate
(pmpc.mpc.gates) from each dealer mode, live and preprocessed, and what its opening reveals."""
from __future__ import annotations

import secrets

import numpy as np
import pytest
from scipy import stats

from pmpc.mpc import fss, gates
from pmpc.mpc.parties import run_local
from tests import fss_jobs

N = 100_000
ALPHA = 1e-6  # false-alarm rate of each statistical test on truly uniform data


def seeds(n: int) -> np.ndarray:
    return np.frombuffer(secrets.token_bytes(16 * n), dtype=np.uint64).reshape(n, 2).copy()


def rand_bits(rng, n: int, bits: int) -> np.ndarray:
    v = rng.integers(0, 2 ** 63, n, dtype=np.uint64) * np.uint64(2) + rng.integers(0, 2, n, dtype=np.uint64)
    return v & np.uint64((1 << bits) - 1) if bits < 64 else v


def edges(bits: int, alpha: np.ndarray) -> np.ndarray:
    """Inputs at and around alpha (+-1 ulp), 0, the extremes and the signed wrap boundary."""
    top = (1 << bits) - 1
    m = np.uint64(top)
    fixed = np.array([0, 1, top, top - 1, 1 << (bits - 1), (1 << (bits - 1)) - 1, (1 << (bits - 1)) + 1],
                     dtype=np.uint64) & m
    return np.concatenate([alpha, (alpha + np.uint64(1)) & m, (alpha - np.uint64(1)) & m,
                           np.resize(fixed, alpha.shape)])


@pytest.mark.parametrize("bits", [1, 7, 15, 31, 63, 64])
def test_dcf_shares_add_up_to_the_comparison(bits):
    rng = np.random.default_rng(secrets.randbits(64))
    alpha = rand_bits(rng, N, bits)
    fixed = np.array([0, 1, (1 << bits) - 1, 1 << (bits - 1), (1 << (bits - 1)) - 1], dtype=np.uint64)
    alpha[:5] = fixed & np.uint64((1 << bits) - 1 if bits < 64 else 2 ** 64 - 1)
    beta = rand_bits(rng, N, 64)
    k0, k1 = fss.dcf_gen(bits, alpha, beta, seeds(N), seeds(N))
    x = rand_bits(rng, N, bits)
    for probe in (x, *np.split(edges(bits, alpha)[: 4 * N], 4)):
        got = fss.dcf_eval(0, k0, probe) + fss.dcf_eval(1, k1, probe)
        assert (got == np.where(probe < alpha, beta, np.uint64(0))).all()
    # a key survives its wire form (seed + correction words)
    again = fss.Key.from_words(bits, k1.seed, k1.cw_words())
    assert (fss.dcf_eval(1, again, x) == fss.dcf_eval(1, k1, x)).all()
    # one party's output alone is no comparison: it looks uniform (its top byte)
    top = (fss.dcf_eval(0, k0, x) >> np.uint64(56)).astype(np.int64)
    assert stats.chisquare(np.bincount(top, minlength=256)).pvalue > ALPHA


@pytest.mark.parametrize("lane", [8, 16, 32, 64])
def test_sign_gate_math_on_every_lane(lane):
    """The dealer's keys and both evaluations, without a network: the shares of MSB(y) add up
    on random y, the edges (0, +-1, +-(2^(L-1) - 1), the wrap boundary) and random masks."""
    rng = np.random.default_rng(secrets.randbits(64))
    m = np.uint64((1 << lane) - 1) if lane < 64 else np.uint64(2 ** 64 - 1)
    half = 1 << (lane - 1)
    y = np.concatenate([rand_bits(rng, N, lane),
                        np.array([0, 1, (1 << lane) - 1, half - 1, half + 1, half, half - 2], dtype=np.uint64) & m])
    n = y.size
    seed0, r0 = seeds(n), rand_bits(rng, n, lane)
    seed1, r1, m1 = seeds(n), rand_bits(rng, n, lane), rand_bits(rng, n, 64)
    words, m0 = gates.deal(lane, seed0, r0, seed1, r1, m1)
    yhat = (y + r0 + r1) & m
    k0 = gates.SignKey(lane, r0, m0, seed0, words)
    k1 = gates.SignKey(lane, r1, m1, seed1, words)
    got = gates.evaluate(0, k0, yhat) + gates.evaluate(1, k1, yhat)
    assert (got == (y >> np.uint64(lane - 1))).all()


@pytest.mark.parametrize("k", [1, 6, 8])
def test_table_lookup_by_dpf_and_by_one_hot(k):
    rng = np.random.default_rng(secrets.randbits(64))
    n = 20_000 if k < 8 else 4_000
    r = rand_bits(rng, n, k)
    table = rng.integers(-2 ** 62, 2 ** 62, 1 << k)
    x = np.concatenate([rand_bits(rng, n - 4, k), np.array([0, 1, (1 << k) - 1, 1 << (k - 1)], dtype=np.uint64)
                        & np.uint64((1 << k) - 1)])
    xhat = (x + r) & np.uint64((1 << k) - 1)
    want = table[x.astype(np.int64)]
    d0, d1 = fss.dpf_gen(k, r, np.ones(n, dtype=np.uint64), seeds(n), seeds(n))
    e0, e1 = fss.dpf_eval_all(0, d0), fss.dpf_eval_all(1, d1)
    assert ((e0 + e1) == (np.arange(1 << k)[None, :] == r[:, None])).all()
    got = fss.rotate_lookup(e0, xhat, table) + fss.rotate_lookup(e1, xhat, table)
    assert (got.view(np.int64) == want).all()
    o0, o1 = fss.onehot_gen(k, r, rand_bits(rng, n * (1 << k), 64))
    got = fss.rotate_lookup(o0, xhat, table) + fss.rotate_lookup(o1, xhat, table)
    assert (got.view(np.int64) == want).all()


# -- the gate in real 2-party runs --------------------------------------------------------------
CASES = [(64, 0), (32, 0), (16, 8), (8, 12)]


def _values(rng, n: int) -> np.ndarray:
    v = rand_bits(rng, n, 64).view(np.int64)
    small = (rng.integers(-2 ** 31, 2 ** 31, n // 2)).astype(np.int64)
    v[: n // 2] = small
    v[:10] = [0, 1, -1, 2 ** 31 - 1, -(2 ** 31) + 1, 2 ** 31, -(2 ** 31), 2 ** 63 - 1, -(2 ** 63), 2 ** 15]
    return v


def _expected(shares, lane, drop) -> np.ndarray:
    """What the gate computes: the sign of the L-bit lane sum of the two shares' slices."""
    m = np.uint64((1 << lane) - 1) if lane < 64 else np.uint64(2 ** 64 - 1)
    s0, s1 = (s.view(np.uint64) >> np.uint64(drop) for s in shares)
    return (((s0 + s1) & m) >> np.uint64(lane - 1)).astype(np.int64)


def _check(res):
    shares = [res[0]["share"], res[1]["share"]]
    for (lane, drop), out in zip(CASES, res[0]["out"]):
        assert (out == _expected(shares, lane, drop)).all(), (lane, drop)


@pytest.mark.slow
@pytest.mark.parametrize("dealer,preprocess", [("local", False), ("local", True), ("ttp", False), ("ttp", True)])
def test_sign_gate_and_table_lookup_in_each_dealer_mode(dealer, preprocess):
    rng = np.random.default_rng(secrets.randbits(64))
    n = N if (dealer, preprocess) == ("local", False) else 20_000
    k = 8
    idx = rng.integers(0, 1 << k, (3, 5000))
    idx[:, :4] = [0, 1, (1 << k) - 1, 1 << (k - 1)]
    tables = rng.integers(-2 ** 62, 2 ** 62, (3, 1 << k))
    res = run_local(fss_jobs.SignJob(_values(rng, n), CASES, preprocess, dealer, lookup=(k, idx, tables)),
                    dealer=dealer, timeout_s=120, deadline_s=400)
    _check(res)
    assert (res[0]["lookup"] == np.take_along_axis(tables, idx, 1)).all()
    # ONE online round per comparison at both parties, in every mode: a live key's dealt part (the
    # dealer's answer, or party 0's words in local mode) is read beside the opening, not before it
    assert res[0]["rounds"] == res[1]["rounds"] == [1] * len(CASES)


LANE_CASES = [(32, 0), (32, 7), (16, 0), (16, 8), (8, 0), (8, 12)]


@pytest.mark.slow
@pytest.mark.parametrize("dealer,preprocess", [("local", False), ("ttp", False), ("ttp", True)])
def test_packed_adder_circuit_equals_the_lane_sign_in_each_dealer_mode(dealer, preprocess):
    """The adder circuit on bit planes (``crypten_compat.lane_ltz``, the ``auto`` rule's path for
    large calls): on 10^5 random values (live local; 2 x 10^4 through the dealer) and the edges,
    every lane and drop gives the sign of the lane sum of the two shares' slices, in 7 / 6 / 5
    rounds for 32 / 16 / 8 bits."""
    rng = np.random.default_rng(secrets.randbits(64))
    n = N if dealer == "local" else 20_000
    values = _values(rng, n)
    for lane in (8, 16, 32):  # the lane's own edges: 0, +-1, +-(2^(L-1) - 1), the wrap boundary
        e = np.array([0, 1, -1, 2 ** (lane - 1) - 1, -(2 ** (lane - 1)) + 1, 2 ** (lane - 1), -(2 ** (lane - 1))])
        values[10 + 7 * (lane // 8):17 + 7 * (lane // 8)] = e
    res = run_local(fss_jobs.SignJob(values, LANE_CASES, preprocess, dealer, bitwise=True),
                    dealer=dealer, timeout_s=120, deadline_s=400)
    shares = [res[0]["share"], res[1]["share"]]
    for (lane, drop), out in zip(LANE_CASES, res[0]["out"]):
        assert (out == _expected(shares, lane, drop)).all(), (lane, drop)
    assert res[0]["rounds"] == res[1]["rounds"] == [{32: 7, 16: 6, 8: 5}[lane] for lane, _ in LANE_CASES]


@pytest.mark.slow
@pytest.mark.parametrize("dealer", ["local", "ttp"])
def test_cross_bit_product_is_exact_and_opens_uniform_bits(dealer):
    """The exact truncation's wrap bit a b (a party 0's bit, b party 1's): the shares add up to
    a b on every input pair, in ONE round; what each party receives (the other's bit under a
    one-time pad) is uniform whether the input is all zeros, all ones or random, and is not
    the input itself (the control)."""
    rng = np.random.default_rng(secrets.randbits(64))
    n = N // 4
    a = np.concatenate([np.zeros(n), np.ones(n), rng.integers(0, 2, 2 * n)]).astype(np.int64)
    b = np.concatenate([np.ones(n), np.zeros(n), rng.integers(0, 2, 2 * n)]).astype(np.int64)
    a[:4], b[:4] = [0, 0, 1, 1], [0, 1, 0, 1]
    res = run_local(fss_jobs.CrossAndJob(a, b), dealer=dealer, timeout_s=60, deadline_s=200)
    for party, mine in ((0, a), (1, b)):
        assert (res[party]["out"] == a * b).all()
        assert res[party]["rounds"] == 1
        seen = res[party]["seen"]
        assert not (seen == (b if party == 0 else a)).all()
        for part in (slice(0, n), slice(n, 2 * n), slice(2 * n, None)):
            s = seen[part]
            # a fair coin's mean over m flips is within 5 sigma of 1/2 but with probability ~6e-7
            assert abs(s.mean() - 0.5) < 5 * 0.5 / np.sqrt(s.size), (party, part)
            assert stats.chisquare(np.bincount(s[:-1] * 2 + s[1:], minlength=4)).pvalue > ALPHA


@pytest.mark.slow
@pytest.mark.parametrize("dealer", ["local", "ttp"])
def test_cross_word_and_is_exact_and_opens_uniform_words(dealer):
    """An adder circuit's first AND (party 0's words & party 1's): XOR shares of a & b in ONE
    round; what each party receives (the other's word under a one-time pad) has uniform bits
    and bytes, for all-zero, all-one and random inputs alike."""
    rng = np.random.default_rng(secrets.randbits(64))
    n = N // 4
    a = np.concatenate([np.zeros(n, dtype=np.int64), -np.ones(n, dtype=np.int64), rand_bits(rng, n, 64).view(np.int64)])
    b = np.concatenate([-np.ones(n, dtype=np.int64), np.zeros(n, dtype=np.int64), rand_bits(rng, n, 64).view(np.int64)])
    res = run_local(fss_jobs.CrossAndJob(a, b, words=True), dealer=dealer, timeout_s=60, deadline_s=200)
    for party in (0, 1):
        assert (res[party]["out"] == (a & b)).all() and res[party]["rounds"] == 1
        seen = res[party]["seen"]
        for part in (slice(0, n), slice(n, 2 * n), slice(2 * n, None)):
            by = seen[part].view(np.uint8)
            assert stats.chisquare(np.bincount(by, minlength=256)).pvalue > ALPHA, (party, part)
            bits = np.unpackbits(by)
            assert abs(bits.mean() - 0.5) < 5 * 0.5 / np.sqrt(bits.size), (party, part)


@pytest.mark.slow
@pytest.mark.parametrize("dealer", ["local", "ttp"])
def test_ring_bits_read_the_exact_bits_of_the_share_sum(dealer):
    """The A2B behind ``Ops.bits`` (a Kogge-Stone prefix on bit planes, pruned to the carries
    asked for): bits at scattered positions of the 64-bit sum of the two shares, 0 and 63 (the
    sign) included, on 10^5 random values (2 x 10^4 through the dealer) and the edges; at most
    7 rounds (the first AND and six levels), fewer for low positions."""
    rng = np.random.default_rng(secrets.randbits(64))
    values = _values(rng, N if dealer == "local" else 20_000)
    sets = [list(range(20, 37)) + [63], [0, 1, 2, 31, 32, 62, 63], [5], [0]]
    res = run_local(fss_jobs.RingBitsJob(values, sets), dealer=dealer, timeout_s=120, deadline_s=400)
    total = res[0]["share"].view(np.uint64) + res[1]["share"].view(np.uint64)
    for pos, out in zip(sets, res[0]["out"]):
        want = np.stack([(total >> np.uint64(p)) & np.uint64(1) for p in pos]).astype(np.int64)
        assert (out == want).all(), pos
    assert res[0]["rounds"][:2] == [7, 7] and res[0]["rounds"][2] == 4 and res[0]["rounds"][3] == 0


@pytest.mark.slow
def test_opened_value_is_uniform_independent_of_x_and_keys_ignore_global_rng():
    """What a party sees opened, y^ = y + r mod 2^L, is uniform whatever y is (all zeros vs
    random): chi-square on its top byte and a two-sample KS between the two inputs. Two runs
    with torch's, numpy's and random's global state reseeded identically deal different keys."""
    rng = np.random.default_rng(secrets.randbits(64))
    n = 100_000
    cases = [(32, 0), (64, 0)]
    runs = []
    for values in (np.zeros(n, dtype=np.int64), _values(rng, n)):
        runs.append(run_local(fss_jobs.SignJob(values, cases), timeout_s=120, deadline_s=300))
    for i, (lane, _) in enumerate(cases):
        opened = [r[1]["seen"][i] for r in runs]
        for o in opened:
            top = (o >> np.uint64(lane - 8)).astype(np.int64)
            assert stats.chisquare(np.bincount(top, minlength=256)).pvalue > ALPHA
        u = [o.astype(np.float64) / 2.0 ** lane for o in opened]
        assert stats.ks_2samp(u[0], u[1]).pvalue > ALPHA
        assert (opened[0] == opened[1]).mean() < 1e-3
    # a control: the detector rejects what is NOT masked (the zeros themselves, or y^ - r)
    assert stats.chisquare(np.bincount(np.zeros(n, dtype=np.int64), minlength=256)).pvalue < ALPHA
    for party in (0, 1):
        (sa, ra), (sb, rb) = runs[0][party]["keys"][0], runs[1][party]["keys"][0]
        assert not (sa == sb).any() and not (ra == rb).all()


@pytest.mark.slow
def test_comparison_rule_dcf_for_small_tensors_bitwise_for_large_and_both_selectable():
    """Both comparison paths compute the same signs; the DCF one in one round per call, the
    bitwise one in several; the default picks by elements x tree levels
    (``gates.DCF_MAX_LEVELS``); the primitive counts say which ran."""
    rng = np.random.default_rng(secrets.randbits(64))
    big = np.round((rng.random(gates.DCF_MAX_LEVELS // 31 + 1) * 2 - 1) * (2 ** 15 - 1) * 2 ** 16) / 2 ** 16
    big[:4] = [0.0, -2 ** -16, 2 ** -16, -(2 ** 15) + 1]
    small = big[:gates.DCF_MAX_LEVELS // 63]  # within the bound on a 32-bit lane and over the ring
    runs = {m: run_local(fss_jobs.OpsCompareJob(x), timeout_s=120, deadline_s=300, env=env)[0]
            for m, x, env in [("auto", small, None), ("bitwise", small, {"PMPC_COMPARISON": "bitwise"}),
                              ("auto-large", big, None), ("dcf-large", big, {"PMPC_COMPARISON": "dcf"})]}
    for m, r in runs.items():
        x = big if m.endswith("large") else small
        for name in ("ring", "lane32"):
            assert (r["out"][name] == (x < 0)).all(), (m, name)
    for m in ("auto", "dcf-large"):
        n = big.size if m == "dcf-large" else small.size
        assert runs[m]["cost"]["ring"]["rounds"] == 1 and runs[m]["cost"]["lane32"]["rounds"] == 1
        assert runs[m]["primitives"].get("dcf.31") == n and runs[m]["primitives"].get("dcf.63") == n
        assert runs[m]["primitives"]["key_bytes"] > 0
    for m in ("bitwise", "auto-large"):
        assert runs[m]["cost"]["lane32"]["rounds"] >= 5 and runs[m]["cost"]["ring"]["rounds"] >= 5
        assert not any(k.startswith("dcf.") or k == "key_bytes" for k in runs[m]["primitives"])


@pytest.mark.parametrize("lane", [2, 8, 16, 31, 32, 64])
def test_packed_opening_recovers_every_lane_sum(lane):
    """Openings of lanes <= 32 bits travel 64 // lane to a word; a field's carry into the next is
    undone by each party from its own addend alone."""
    rng = np.random.default_rng(secrets.randbits(64))
    m = gates._mask(lane)
    a, b = rand_bits(rng, 30_001, lane), rand_bits(rng, 30_001, lane)
    a[:4], b[:4] = m, np.array([m, 1, 0, m], dtype=np.uint64)
    total = gates.pack(a, lane) + gates.pack(b, lane)  # what the all-reduce returns
    assert total.size == -(-a.size // (64 // lane))
    for own in (a, b):
        assert (gates.unpack(total, own, lane) == ((a + b) & m)).all()


def test_the_dealer_checks_fss_requests_before_allocating():
    """A sign or one-hot request names a shape and a bit width; the dealer refuses widths out of
    range and answers beyond its allocation bound before drawing anything."""
    import pmpc.mpc.crypten_compat  # noqa: F401  (crypten behind its shims)
    from pmpc.mpc import dealer

    ok = {"op": "tuple", "function": "sign", "args": [[4, 5], 32], "kwargs": {}}
    dealer._check_message(ok)
    assert dealer.answer_shape("sign", [[4, 5], 32], {}) == [20, gates.answer_width(32)]
    assert dealer.answer_shape("onehot", [[3, 7], 8], {}) == [21, 256]
    for bad in ({"function": "sign", "args": [[4], 65]}, {"function": "sign", "args": [[4], 1]},
                {"function": "sign", "args": [[4]]}, {"function": "onehot", "args": [[4], 13]},
                {"function": "onehot", "args": [[1 << 20], 12]}, {"function": "sign", "args": [[1 << 24], 64]}):
        with pytest.raises((ValueError, TypeError)):
            dealer._check_message({"op": "tuple", "kwargs": {}, **bad})


@pytest.mark.parametrize("lane", [8, 32, 64])
def test_the_correction_words_party_1_receives_are_uniform_words(lane):
    """Party 1 receives the keys' correction words from party 0: every word, every bit of it,
    is uniform (the control-bit words' unused bits and the seed corrections' lowest bit carry
    OS-random filler), so what travels cannot be told from noise by a per-bit test."""
    rng = np.random.default_rng(secrets.randbits(64))
    n = 20_000
    words, _ = gates.deal(lane, seeds(n), rand_bits(rng, n, lane), seeds(n), rand_bits(rng, n, lane),
                          rand_bits(rng, n, 64))
    z_max = stats.norm.isf(ALPHA / (2 * 64 * words.shape[1]))
    bits = np.stack([(words >> np.uint64(b)) & np.uint64(1) for b in range(64)]).sum(axis=1)  # [64, W]
    z = np.abs(bits - n / 2) / np.sqrt(n / 4)
    assert z.max() < z_max, np.unravel_index(z.argmax(), z.shape)


def _slice_inputs(rng, n: int, k: int) -> np.ndarray:
    """Fixed-point m in [1, 2] as the normalisation makes them: uniform on the 2^-16 grid, and the
    edges: 1, 2 - ulp, 2 (a truncation that rounded up), every slice boundary and +-1 ulp."""
    ulp = 2.0 ** -16
    m = 1 + rng.integers(0, 2 ** 16, n) * ulp
    b = np.arange(2 ** (k - 1))
    if b.size > 256:  # every boundary for small tables, a sample with both ends for large ones
        b = np.concatenate([b[:2], rng.choice(b[2:-2], 252, replace=False), b[-2:]])
    b = 1 + b / 2 ** (k - 1)
    m[: 3 + 3 * b.size] = np.concatenate([[1.0, 2 - ulp, 2.0], b, b + ulp, b - ulp])
    return m


def _slice_expected(m: np.ndarray, lo: int, k: int, table) -> np.ndarray:
    t = np.round(np.asarray(table) * 2 ** 16).astype(np.int64)
    return t[(np.round(m * 2 ** 16).astype(np.int64) >> lo) & ((1 << k) - 1)]


@pytest.mark.slow
@pytest.mark.parametrize("dealer,preprocess,mode,k,n", [
    ("local", False, "dcf", 6, N), ("local", True, "dcf", 6, N), ("ttp", False, "dcf", 6, N),
    ("ttp", True, "dcf", 6, N), ("local", False, "dcf", 12, 4_000), ("ttp", True, "dcf", 12, 4_000),
    ("local", False, "bitwise", 8, 20_000)])
def test_slice_lookup_reads_the_exact_bit_slice_in_each_dealer_mode(dealer, preprocess, mode, k, n):
    """``Ops.slice_lookup`` under MPC: table[bits [lo, lo + k) of m's encoding], the same integers
    the emulation (TorchOps) gives, on >= 10^5 random m and the edges, in two online rounds
    (carry sign + lookup) with the DCF comparison; with the adder circuit the same values. The
    k - 1 fraction bits and the integer bit, as the start tables read them."""
    import torch

    from pmpc.ops import TorchOps

    rng = np.random.default_rng(secrets.randbits(64))
    lo = 16 - k + 1  # 2^k dealt words an element: 10^5 on small tables, the start tables' 12 bits on fewer
    m = _slice_inputs(rng, n, k)
    table = rng.uniform(-100, 100, 1 << k)
    res = run_local(fss_jobs.SliceLookupJob(m, lo, k, table, preprocess, dealer), dealer=dealer,
                    timeout_s=120, deadline_s=400, env={"PMPC_COMPARISON": mode})
    res, rounds = res[0], [r["rounds"] for r in res]
    want = _slice_expected(m, lo, k, table)
    assert (res["out"] == want).all(), f"{(res['out'] != want).sum()} of {n} wrong"
    emu = TorchOps(fxp_bits=16).slice_lookup(torch.from_numpy(m), lo, k, table).numpy()
    assert (np.round(emu * 2 ** 16).astype(np.int64) == want).all()
    assert res["primitives"][f"slice_lookups.{k}"] == n and res["primitives"][f"lookups.{k}"] == n
    if mode == "dcf":  # a live ttp key costs party 0 its dealer exchanges on top
        assert rounds[1] == 2 and res["primitives"][f"dcf.{lo}"] == n
        assert rounds[0] == 2 or (dealer == "ttp" and not preprocess)
    else:
        assert min(rounds) > 2 and not any(key.startswith("dcf.") for key in res["primitives"])


def test_slice_lookup_emulation_wraps_at_the_integer_bit():
    """The emulation's index is floor(m 2^(f - lo)) mod 2^k: with the integer bit in the slice, m = 2
    reads index 0 (the start tables give it its own entry), 2 - ulp the last one."""
    import torch

    from pmpc.ops import TorchOps

    table = list(range(16))
    got = TorchOps(fxp_bits=16).slice_lookup(torch.tensor([1.0, 1.5, 2.0 - 2 ** -16, 2.0], dtype=torch.float64),
                                             13, 4, table)
    assert got.tolist() == [8.0, 12.0, 15.0, 0.0]


def test_the_rule_bound_moves_with_its_variable(monkeypatch):
    """``PMPC_DCF_MAX_LEVELS`` moves ``auto``'s bound (elements x (lane - 1)); garbage is refused."""
    monkeypatch.delenv("PMPC_DCF_MAX_LEVELS", raising=False)
    monkeypatch.setenv("PMPC_COMPARISON", "auto")
    n = gates.DCF_MAX_LEVELS // 31
    assert gates.use_dcf(n, 32) and not gates.use_dcf(n + 1, 32)
    monkeypatch.setenv("PMPC_DCF_MAX_LEVELS", str(4 * gates.DCF_MAX_LEVELS))
    m = 4 * gates.DCF_MAX_LEVELS // 31
    assert m > n + 1 and gates.use_dcf(m, 32) and not gates.use_dcf(m + 1, 32)
    monkeypatch.setenv("PMPC_DCF_MAX_LEVELS", "lots")
    with pytest.raises(ValueError, match="PMPC_DCF_MAX_LEVELS"):
        gates.use_dcf(1, 32)
