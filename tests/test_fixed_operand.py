"""Fixed-operand triples for private weights (pmpc.mpc.fixed_operand): each weight matrix is masked
and opened once per session, and a decoded token opens the activations only.

* Secure decoding with private weights equals the plaintext model within fixed-point tolerance
  over several decode steps, and KV-cache decode equals a recompute, in ``local`` and ``ttp`` modes.
* What each party opens, counted at its communicator: at setup exactly one opening of every weight
  matrix (W - B), none afterwards — the control (re-masking at every product) opens every matrix at
  every token — and the weights' share of a decoded token's bytes falls by more than 20x.
* The opened W - B is uniform; the dealer refuses a second mask under an id it holds (so no B is
  used against two values) and malformed or oversized requests; ``--preprocess`` plans and deals
  the new kind.
* The KV cache's rows open once; a shared prefix's mask (a batch of one) becomes every row's when
  the batch's rows join it, and the dealer allows that broadcast and nothing looser.
"""
from __future__ import annotations

import collections
import functools
import math

import numpy as np
import pytest
import torch

from pmpc import models
from pmpc.engine import fold_weights
from pmpc.mpc import dealer
from pmpc.mpc import fixed_operand as F
from pmpc.mpc import parties
from tests import fixed_operand_jobs
from tests.test_privacy import ALPHA, Z_MAX, uniformity

TOL = 0.05  # |logit| error of fixed-point `exact` on stories260K (test_engine's bound for generation)


@pytest.fixture(scope="module")
def sessions(stories_dir):
    out = {}
    for name, dealer, fixed in (("local", "local", True), ("ttp", "ttp", True), ("remask", "local", False)):
        out[name] = parties.run_local(functools.partial(fixed_operand_jobs.decode_session, fixed), timeout_s=120, dealer=dealer)[0]
    return out


@pytest.mark.parametrize("mode", ["local", "ttp"])
def test_private_decode_equals_plaintext_and_recompute(sessions, mode):
    r = sessions[mode]
    assert r["steps"].shape == r["plain"].shape and r["steps"].shape[1] == 4  # prefill + 3 decode steps
    assert np.abs(r["steps"] - r["plain"]).max() < TOL
    assert np.abs(r["steps"] - r["recompute"]).max() < TOL
    # the same greedy choices as the plaintext model at every step
    assert (r["steps"].argmax(-1) == r["plain"].argmax(-1)).all()


@pytest.mark.parametrize("mode", ["local", "ttp"])
def test_each_weight_is_opened_once_per_session(sessions, mode):
    r, control = sessions[mode], sessions["remask"]
    mats = sorted(r["weight_shapes"].values())
    mat_set = set(mats)
    # setup opens W - B once for every matrix, and nothing else
    assert sorted(r["phases"]["setup"]["opened"]) == mats
    for phase, v in r["phases"].items():
        if phase != "setup":
            assert not mat_set & set(v["opened"]), (phase, mat_set & set(v["opened"]))
    # the control (a fresh triple per product) re-opens every matrix at every decoded token
    for t in range(3):
        seen = collections.Counter(s for s in control["phases"][f"decode{t}"]["opened"] if s in mat_set)
        assert sorted(seen.elements()) == mats
    # bytes: the setup carries one opening of the weights (8 bytes a ring element, sent and received;
    # with ttp, plus party 0's short mask requests to the dealer); a decoded token's products with
    # the weights carry activations only
    n_weights = sum(math.prod(s) for s in mats)
    assert 2 * 8 * n_weights <= r["phases"]["setup"]["bytes"] <= 2 * 8 * n_weights + 200 * len(mats)
    for t in range(3):
        fixed, remask = r["phases"][f"decode{t}"], control["phases"][f"decode{t}"]
        assert remask["weight_bytes"] > 2 * 8 * n_weights
        assert fixed["weight_bytes"] * 20 < remask["weight_bytes"]
        if mode == "local":  # the control's tuple source (with ttp, the dealer's traffic adds to the total)
            assert fixed["bytes"] < remask["bytes"] - 2 * 8 * n_weights * 0.9


def test_the_opened_mask_is_uniform(sessions):
    d = sessions["ttp"]["opened_mask"]
    assert d.size > 20_000
    u = uniformity(d)
    assert u["chi2_p"] > ALPHA and u["max_bit_z"] < Z_MAX, u
    # the detector rejects a masked value whose mask is not uniform (a 32-bit mask leaves the top bits)
    w = (torch.randn(d.size) * 2 ** 16).long()
    weak = (w + torch.randint(0, 2 ** 32, w.shape)).numpy()
    assert uniformity(weak)["max_bit_z"] > Z_MAX


def test_the_dealer_refuses_to_reuse_a_mask():
    """A party 0 that asks for a second mask under an id the dealer holds (so that B would open
    against another value): the dealer stops the session, and the parties end with one line."""
    with pytest.raises(parties.PartyError, match=r"dealer.*dealt already: a mask serves one weight only"):
        parties.run_local(fixed_operand_jobs.reuse_a_mask, timeout_s=20, dealer="ttp", deadline_s=90)


class _Dealer:
    """The dealer's fixed-operand methods on a stand-in whose parties' draws are counters."""

    fixed_mask, fixed = F._dealer_mask, F._dealer_triple

    def __init__(self):
        self.draws = 0

    def _get_additive_PRSS(self, size, remove_rank=False):
        self.draws += 1
        return torch.full(tuple(size), self.draws, dtype=torch.long)


def test_dealer_checks_ids_shapes_and_limits(monkeypatch):
    d = _Dealer()
    d.fixed_mask("0/layers.0.o.w", [3, 4])
    with pytest.raises(ValueError, match="dealt already"):
        d.fixed_mask("0/layers.0.o.w", [3, 4])
    assert d.fixed("0/layers.0.o.w", [1, 2, 3], [3, 4]).shape == (1, 2, 4)
    # the same mask read transposed (a tied output layer): C = A @ B^T
    c = d.fixed("0/layers.0.o.w", [1, 2, 4], [4, 3])
    b = d.fixed_masks["0/layers.0.o.w"]
    assert c.shape == (1, 2, 3) and torch.equal(c, torch.full((1, 2, 4), d.draws - 1) @ b.t() - d.draws)
    with pytest.raises(ValueError, match="no mask"):
        d.fixed("0/layers.1.o.w", [1, 3], [3, 4])
    with pytest.raises(ValueError, match="is \\[3, 4\\]"):
        d.fixed("0/layers.0.o.w", [1, 3], [3, 5])
    monkeypatch.setattr(F, "MAX_MASK_ELEMENTS", 20)
    with pytest.raises(ValueError, match="limit"):
        d.fixed_mask("0/layers.1.o.w", [3, 4])
    bad = [
        {"op": "fixed_mask", "id": "0/x.w", "shape": [4]},                  # not a matrix
        {"op": "fixed_mask", "id": "0/x.w", "shape": [1 << 20, 1 << 20]},   # beyond the allocation bound
        {"op": "fixed_mask", "id": "0/x.w\n", "shape": [2, 2]},             # odd characters
        {"op": "fixed_mask", "id": "x" * 200, "shape": [2, 2]},             # too long
        {"op": "fixed_mask", "id": 7, "shape": [2, 2]},
        {"op": "tuple", "function": "fixed", "args": ["0/x.w", [1, 3], [4, 2]], "kwargs": {}},   # no product
        {"op": "tuple", "function": "fixed", "args": ["0/x.w", [1, 3], [3, 2, 1]], "kwargs": {}},
        {"op": "tuple", "function": "fixed", "args": ["0/x.w", [1, 3]], "kwargs": {}},
        {"op": "tuple", "function": "fixed", "args": ["0/x.w", [1, 3], [3, 2]], "kwargs": {"a": 1}},
        {"op": "batch", "requests": [["fixed", ["0/x.w", [1 << 15, 1 << 14], [1 << 14, 1 << 14]], {}]]},
    ]
    for m in bad:
        with pytest.raises((ValueError, TypeError)):
            dealer._check_message(m)
    dealer._check_message({"op": "fixed_mask", "id": "0/layers.0.qkv.w", "shape": [64, 192]})
    dealer._check_message({"op": "tuple", "function": "fixed", "args": ["0/x.w", [1, 1, 3], [3, 2]], "kwargs": {}})


@pytest.mark.parametrize("dealer", ["local", "ttp"])
def test_kv_cache_rows_open_once_and_products_equal_the_full_ones(dealer):
    """The KV cache as growing fixed operands: after a prefill of 5 rows, each appended row is
    opened once, with the first product that uses it (the scores' round opens the query, the new
    key row and the new value row; the mix's round the probabilities only) — never the cache —
    and every step's q K^T and p V equal the plaintext products over all rows so far (fixed-point
    rounding only). What the parties receive in those openings is uniform."""
    rng = np.random.default_rng(0)
    B, H, R, d, L, t0 = 1, 3, 2, 8, 9, 5
    q = rng.normal(size=(B, H, R, d))
    keys, values = rng.normal(size=(B, H, L, d)), rng.normal(size=(B, H, L, d))
    probs = rng.random(size=(B, H, R, L))
    res = parties.run_local(fixed_operand_jobs.KVJob(q, keys, values, probs, t0), timeout_s=60, dealer=dealer)
    r = res[0]
    for j, (s, o) in enumerate(r["steps"]):
        hi = t0 + j
        assert np.abs(s - q @ keys[:, :, :hi].swapaxes(-1, -2)).max() < 1e-3
        assert np.abs(o - probs[..., :hi] @ values[:, :, :hi]).max() < 1e-3
    rows = (B, H, 1, d)
    assert r["opened"][0] == [(B, H, R, d), (B, H, t0, d), (B, H, t0, d), (B, H, R, t0)]
    for j, op in enumerate(r["opened"][1:], start=1):
        assert op == [(B, H, R, d), rows, rows, (B, H, R, t0 + j)], op
    for party in (0, 1):
        u = uniformity(res[party]["received"])
        assert u["chi2_p"] > ALPHA and u["max_bit_z"] < Z_MAX, u


def test_the_dealer_grows_kv_masks_and_checks_them():
    d = _Dealer()
    F._dealer_kv_mask(d, "kv/layers.0.k", [1, 3, 5, 8], True)
    F._dealer_kv_mask(d, "kv/layers.0.k", [1, 3, 1, 8], False)
    assert d.fixed_masks["kv/layers.0.k"].shape == (1, 3, 6, 8)
    assert F._dealer_kv_triple(d, "kv/layers.0.k", [1, 3, 2, 8], [1, 3, 6, 8], True).shape == (1, 3, 2, 6)
    with pytest.raises(ValueError, match="is \\[1, 3, 6, 8\\]"):
        F._dealer_kv_triple(d, "kv/layers.0.k", [1, 3, 2, 8], [1, 3, 5, 8], True)
    with pytest.raises(ValueError, match="do not extend"):
        F._dealer_kv_mask(d, "kv/layers.0.k", [1, 2, 1, 8], False)
    with pytest.raises(ValueError, match="no mask"):
        F._dealer_kv_mask(d, "kv/layers.1.k", [1, 3, 1, 8], False)
    F._dealer_kv_mask(d, "kv/layers.0.k", [1, 3, 4, 8], True)             # a new query: fresh rows
    assert d.fixed_masks["kv/layers.0.k"].shape == (1, 3, 4, 8)
    d.fixed_mask("0/layers.0.o.w", [3, 4])
    with pytest.raises(ValueError, match="not a KV cache"):
        F._dealer_kv_mask(d, "0/layers.0.o.w", [1, 4], False)              # a weight's mask never grows
    with pytest.raises(ValueError, match="no mask"):
        F._dealer_kv_triple(d, "0/layers.0.o.w", [2, 3], [3, 4], False)
    with pytest.raises(ValueError, match="dealt already"):
        d.fixed_mask("kv/layers.0.k", [3, 4])
    for m in [{"op": "tuple", "function": "kv_mask", "args": ["kv/a", [1, 2, 3]], "kwargs": {}},
              {"op": "tuple", "function": "kv_mask", "args": ["kv/a", [3], True], "kwargs": {}},
              {"op": "tuple", "function": "kv_triple", "args": ["kv/a", [1, 2, 3], [1, 4, 3], 1], "kwargs": {}},
              {"op": "tuple", "function": "kv_triple", "args": ["kv/a", [1, 2, 3], [1, 4, 5], False], "kwargs": {}}]:
        with pytest.raises((ValueError, TypeError)):
            dealer._check_message(m)
    dealer._check_message({"op": "tuple", "function": "kv_triple", "args": ["kv/a", [1, 2, 3], [1, 4, 3], True],
                           "kwargs": {}})


def test_a_shared_prefix_mask_becomes_every_rows_and_nothing_looser(monkeypatch):
    """A shared prefix's cache is masked as a batch of one; the rows of the whole batch that join it
    make its mask rows every row's (the same value under the same mask). Only that broadcast: no
    other batch change, no other dim, no product whose query side broadcasts, and the session's
    limit counts the mask as it becomes."""
    d = _Dealer()
    wid = "kv/layers.0.k"
    F._dealer_kv_mask(d, wid, [1, 3, 4, 8], True)          # the prefix, once
    F._dealer_kv_mask(d, wid, [5, 3, 2, 8], False)         # the rows' own tokens
    F._dealer_kv_mask(d, wid, [5, 3, 1, 8], False)         # a decoded token
    m = d.fixed_masks[wid]
    assert m.shape == (5, 3, 7, 8) and m.is_contiguous()
    assert (m[:, :, :4] == 1).all() and (m[:, :, 4:6] == 2).all() and (m[:, :, 6:] == 3).all()
    assert F._dealer_kv_triple(d, wid, [5, 3, 2, 8], [5, 3, 7, 8], True).shape == (5, 3, 2, 7)
    assert F._dealer_kv_triple(d, wid, [5, 3, 2, 7], [5, 3, 7, 8], False).shape == (5, 3, 2, 8)
    for x in ([1, 3, 2, 8], [5, 1, 2, 8]):                  # a query side that would broadcast
        with pytest.raises(ValueError, match="a product of"):
            F._dealer_kv_triple(d, wid, x, [5, 3, 7, 8], True)
    for start, rows in (([5, 3, 4, 8], [1, 3, 1, 8]),       # a batch's rows do not shrink back to one
                        ([2, 3, 4, 8], [4, 3, 1, 8]),       # only a batch of one broadcasts
                        ([1, 3, 4, 8], [5, 2, 1, 8]),       # the heads stay
                        ([1, 3, 4, 8], [5, 3, 1, 4]),       # and the row width
                        ([1, 3, 4, 8], [5, 1, 3, 1, 8])):   # and the dims
        F._dealer_kv_mask(d, wid, start, True)
        with pytest.raises(ValueError, match="do not extend"):
            F._dealer_kv_mask(d, wid, rows, False)
    d = _Dealer()
    monkeypatch.setattr(F, "MAX_MASK_ELEMENTS", 5 * 3 * 6 * 8 - 1)
    F._dealer_kv_mask(d, wid, [1, 3, 4, 8], True)
    with pytest.raises(ValueError, match="limit"):           # 96 + 240 new, but 720 held once grown
        F._dealer_kv_mask(d, wid, [5, 3, 2, 8], False)
    with pytest.raises(ValueError, match="a product of"):
        dealer._check_message({"op": "tuple", "function": "kv_triple",
                               "args": ["kv/a", [1, 3, 2, 8], [5, 3, 7, 8], True], "kwargs": {}})


@pytest.mark.parametrize("dealer", ["ttp", "local"])
def test_preprocess_plans_and_deals_fixed_operand_triples(stories_dir, dealer):
    """`--preprocess` with private weights: the plan holds one fixed-operand triple per weight
    matrix per forward, the dealer of the mode (the dealer process; party 0 for a cost-only
    ``local`` run) deals them against the session's masks, and greedy generation equals the
    plaintext model's."""
    from pmpc.mpc import secure

    model, tok = models.load_hf(str(stories_dir))
    ids = tok("Once upon a time", return_tensors="pt")["input_ids"]
    n = 3
    with torch.no_grad():
        ref = model.generate(ids, max_new_tokens=n, do_sample=False, min_new_tokens=n)[0, ids.shape[1]:]
    cfg = secure.GenConfig(model=str(stories_dir), protocol="exact", weights="private", max_new_tokens=n,
                           preprocess=True)
    client, _ = secure.run_generation(cfg, secure.ClientInput(ids, torch.ones_like(ids)), timeout_s=120, dealer=dealer,
                                      cost_only=dealer == "local")
    assert client["tokens"][0] == ref.tolist()
    if dealer == "ttp":  # the dealer's own peak memory, asked before it leaves (a torch process: > 100 MB)
        assert 100 < client["dealer_peak_rss_mb"] < 1 << 20
    else:
        assert "dealer_peak_rss_mb" not in client
    off = client["phases"]["offline"]
    n_mats = sum(1 for v in fold_weights(models.spec_from_hf(model)).values() if v.dim() == 2)  # q|k|v, gate|up fused
    assert off["prefill"]["tuples"]["fixed"][0] == n_mats
    assert off["decode"]["tuples"]["fixed"][0] == n_mats * (n - 1)


@pytest.mark.parametrize("release", [True, False])
def test_setup_holds_one_share_and_one_opening_per_weight(stories_dir, release):
    """After setup each party holds, per weight element, its share of W and the opened W - B
    (16 bytes), the tied output layer as the embedding's own storage, and — with
    ``release_weights``, as ``pmpc run`` builds it — no float copy of any weight matrix: the
    server's plaintext model (as loaded or folded) does not outlive the sharing. The control
    (nothing released) shows the search finds the server's weights."""
    for r in parties.run_local(functools.partial(fixed_operand_jobs.held_after_setup, release), timeout_s=120,
                               dealer="ttp"):
        assert r["tied"]
        assert r["fixed_bytes"] == 16 * r["unique_elements"]
        # the norms' and biases' shares are the rest: a few percent on this small model
        assert r["fixed_bytes"] <= r["engine_bytes"] <= 1.05 * r["fixed_bytes"]
        if release:
            assert r["plain_weights"] == 0
            assert r["spec_bytes"] <= 4 * 64  # zero-stride placeholders (a float each)
    server = r
    if not release:
        assert server["plain_weights"] > 0


@pytest.mark.parametrize("rows", [1, 5])
def test_transposed_products_equal_the_ring_product(rows):
    """x @ W^T read from W's rows (a matrix-vector product for one row) equals the int64 product
    with the transposed view, wrap-around included."""
    g = torch.Generator().manual_seed(0)
    m = torch.randint(-2 ** 62, 2 ** 62, (37, 6), generator=g)
    x = torch.randint(-2 ** 62, 2 ** 62, (1, rows, 6), generator=g)
    assert torch.equal(F._mm(x, m, True), x.matmul(m.t().contiguous()))
    assert torch.equal(F._mm(x, m.t().contiguous(), False), x.matmul(m.t().contiguous()))
    f = F.FixedOperand("0/embed.tok", torch.zeros(37, 6), m)
    assert f.t().shape == (6, 37) and f.t().t().shape == (37, 6) and f.t().d is m
    with pytest.raises(ValueError, match="square"):
        F.FixedOperand("0/x.w", torch.zeros(4, 4), m[:4, :4]).t()
