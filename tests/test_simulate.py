"""pmpc.simulate: the spec grammar, and hooks that act exactly where they say."""
from __future__ import annotations

import json
import pathlib

import pytest
import torch

from pmpc import simulate
from pmpc.simulate import transforms
from pmpc.errors import UserError
from pmpc.models import load_hf

STORIES = pathlib.Path(__file__).resolve().parents[2] / "shared" / "models" / "stories260K"


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def llama():
    m, _ = load_hf("tiny-random-llama")
    return m


@pytest.fixture(scope="module")
def gpt2():
    m, _ = load_hf("tiny-random-gpt2")
    return m


@pytest.fixture(scope="module")
def ids():
    return torch.randint(0, 96, (2, 12), generator=torch.Generator().manual_seed(3))


# -- grammar -------------------------------------------------------------------------------------
@pytest.mark.parametrize("spec", [
    "gauss:0.075@up", "laplace:0.036@down", "gauss:0.05@up,down@0-3", "teal:0.25@up,down", "teal:thr=0.11@up",
    "quant:a8@up,down", "smoothquant:a4@up,down", "omniquant:a8,alpha=0.6@attn,o", "protocol:bolt@down",
    "protocol:exact@down,norm,softmax@1", "table2:bolt", "table2:teal-25@0-3", "measured:iron",
    "gauss:0.042@up+laplace:0.036@down", "gauss:0.1@norm@0,2,5-7", "table2:iron,rel=1@0-3", "none"])
def test_parse_roundtrip(spec):
    a = simulate.parse(spec)
    assert str(a) == spec
    assert simulate.parse(str(a)) == a


def test_parse_defaults_and_fields():
    a = simulate.parse("teal:0.25")
    assert (a.kind, a.scale, a.points, a.layers) == ("teal", 0.25, ("up", "down"), None)
    assert simulate.parse("smoothquant:a4").scale == 4
    b = simulate.parse("gauss:0.05@up,down@0-3")
    assert b.layers == (0, 1, 2, 3) and b.points == ("up", "down")
    assert simulate.parse("protocol:bolt").name == "bolt"
    assert [str(c) for c in simulate.parse("table2:iron").components()] == ["gauss:0.064@up", "laplace:0.049@down"]
    assert [str(c) for c in simulate.parse("table2:teal-50@0-1").components()] == ["teal:thr=0.24@up@0-1",
                                                                           "teal:thr=0.017@down@0-1"]


@pytest.mark.parametrize("spec, msg", [
    ("gaus:0.1", "unknown kind"), ("gauss", "needs a scale"), ("gauss:abc", "not a number"),
    ("gauss:0.1@upp", "unknown point"), ("gauss:0.1@up@3-1", "bad layer range"), ("teal:1.5", "[0, 1)"),
    ("quant:a99", "bit width"), ("table2:nosuch", "no Table 2 preset"), ("table2:bolt@up", "fix their points"),
    ("gauss:0.1@softmax", "protocol emulation only"), ("protocol:bolt@up", "replaces functions"),
    ("gauss:-1", ">= 0"), ("teal:0.2,thr=0.1", "not both"), ("gauss:0.1,foo=2", "unknown parameter"),
    ("table2:bolt,thr=1", "unknown parameter"), ("table2:bolt,rel=2", "rel takes 1"),
    ("protocol:bolt,alpha=1", "unknown parameter"),
])
def test_parse_errors(spec, msg):
    with pytest.raises(UserError) as e:
        simulate.parse(spec)
    assert msg in str(e.value) and "\n" not in str(e.value)


def test_table2_rescaled_to_the_model(stories):
    m, batch = stories
    a = simulate.parse("table2:bolt,rel=1@1-3")
    assert a.needs_calibration and str(a) == "table2:bolt,rel=1@1-3"
    with pytest.raises(UserError, match="needs the model's activation spread"):
        a.components()
    got = {}
    hs = [L.post_attention_layernorm.register_forward_hook(lambda mod, i, o, k=k: got.__setitem__(("up", k), o))
          for k, L in enumerate(m.model.layers)]
    hs += [L.mlp.down_proj.register_forward_pre_hook(lambda mod, i, k=k: got.__setitem__(("down", k), i[0]))
           for k, L in enumerate(m.model.layers)]
    c = simulate.calibrate(m, a, batch)
    for h in hs:
        h.remove()
    assert not c.needs_calibration
    for comp, point, base in zip(c.components(), ("up", "down"), (0.042, 0.036)):
        pooled = torch.cat([got[(point, k)].detach().abs().flatten() for k in (1, 2, 3)])
        spread = 1.4826 * float(pooled.median())
        assert comp.points == (point,) and comp.layers == (1, 2, 3)
        assert comp.scale == pytest.approx(base * spread / simulate.TABLE2_REF_SPREAD[point], rel=1e-5)
    with torch.no_grad(), simulate.approximate(m, "table2:teal-50,rel=1", calib=batch):
        m(batch)


def test_measured_presets(tmp_path, monkeypatch):
    monkeypatch.setenv("PMPC_MEASURED", str(tmp_path / "missing.json"))
    with pytest.raises(UserError, match="no measured error fits"):
        simulate.parse("measured:bolt").components()
    f = tmp_path / "m.json"
    f.write_text(json.dumps({"bolt": {"up": {"dist": "gauss", "scale": 0.01}, "down": {"dist": "laplace", "scale": 0.02}}}))
    monkeypatch.setenv("PMPC_MEASURED", str(f))
    assert [str(c) for c in simulate.parse("measured:bolt@1").components()] == ["laplace:0.02@down@1", "gauss:0.01@up@1"]
    assert "measured:bolt" in simulate.presets()
    with pytest.raises(UserError, match="no fits for 'iron'"):
        simulate.parse("measured:iron").components()
    f.write_text(json.dumps({"bolt": {"up": {"dist": "cauchy", "scale": 1}}}))
    with pytest.raises(UserError, match="bolt.up"):
        simulate.parse("measured:bolt").components()


# -- hooks act where intended ---------------------------------------------------------------------
def _noise(gen, shape, kind, s):
    if kind == "gauss":
        return torch.randn(shape, generator=gen) * s
    return transforms._laplace(shape, s, gen, torch.float32, "cpu")


def manual_llama(model, ids, point, kind="gauss", s=0.0, seed=0, layers=None):
    """A forward written out by hand from the model's modules, adding the noise at ``point``
    from a generator seeded like approximate()'s, drawn in forward order."""
    gen = torch.Generator().manual_seed(seed)
    base = model.model
    sel = lambda i: layers is None or i in layers  # noqa: E731
    add = lambda x, here: x + _noise(gen, x.shape, kind, s) if here else x  # noqa: E731
    x = base.embed_tokens(ids)
    pos = torch.arange(ids.shape[1])[None]
    pe = base.rotary_emb(x, pos)
    for i, L in enumerate(base.layers):
        h = L.input_layernorm(x)
        h = add(h, sel(i) and point in ("attn", "norm"))
        a = L.self_attn(hidden_states=h, position_embeddings=pe, attention_mask=None)[0]
        x = x + a
        h = L.post_attention_layernorm(x)
        h = add(h, sel(i) and point in ("up", "norm"))
        m = L.mlp
        g = add(m.act_fn(m.gate_proj(h)), sel(i) and point == "act")
        d = add(g * m.up_proj(h), sel(i) and point == "down")
        x = x + m.down_proj(d)
    x = add(base.norm(x), point == "norm" and layers is None)
    return model.lm_head(x)


@pytest.mark.parametrize("point", ["up", "down", "act", "attn", "norm"])
@pytest.mark.parametrize("kind", ["gauss", "laplace"])
def test_hook_matches_manual_forward(llama, ids, point, kind):
    with torch.no_grad():
        ref = manual_llama(llama, ids, point, kind, 0.3, seed=5)
        with simulate.approximate(llama, f"{kind}:0.3@{point}", seed=5):
            got = llama(ids).logits
        clean = llama(ids).logits
    assert torch.allclose(got, ref, atol=1e-5), (got - ref).abs().max()
    assert (got - clean).abs().max() > 1e-3  # the noise did something


def test_layer_selection_matches_manual(llama, ids):
    with torch.no_grad():
        ref = manual_llama(llama, ids, "down", "gauss", 0.5, seed=1, layers={1})
        with simulate.approximate(llama, "gauss:0.5@down@0", layers=[1], seed=1):  # layers= overrides the spec
            got = llama(ids, output_hidden_states=True)
        clean = llama(ids, output_hidden_states=True)
    assert torch.allclose(got.logits, ref, atol=1e-5)
    assert torch.equal(got.hidden_states[1], clean.hidden_states[1])  # layer 0 untouched
    assert not torch.equal(got.hidden_states[2], clean.hidden_states[2])


def test_o_point_is_o_proj_input(llama, ids):
    seen = {}
    o = llama.model.layers[0].self_attn.o_proj
    h1 = o.register_forward_pre_hook(lambda m, i: seen.setdefault("before", i[0].clone()))
    with torch.no_grad(), simulate.approximate(llama, "gauss:0.2@o@0", seed=2):
        h2 = o.register_forward_pre_hook(lambda m, i: seen.setdefault("after", i[0].clone()))
        llama(ids)
    h1.remove()
    h2.remove()
    exp = seen["before"] + torch.randn(seen["before"].shape, generator=torch.Generator().manual_seed(2)) * 0.2
    assert torch.allclose(seen["after"], exp, atol=1e-6)


def test_zero_noise_bit_identical(llama, gpt2, ids):
    with torch.no_grad():
        for m in (llama, gpt2):
            clean = m(ids).logits
            with simulate.approximate(m, "gauss:0.0@up,down,act,attn,o,norm+laplace:0.0@up,down"):
                got = m(ids).logits
            assert torch.equal(clean, got)


def _n_hooks(m):
    return sum(len(x._forward_hooks) + len(x._forward_pre_hooks) for x in m.modules())


def test_hooks_removed_and_none_is_noop(llama, ids):
    before = _n_hooks(llama)  # transformers keeps hooks of its own
    with torch.no_grad():
        clean = llama(ids).logits
        with simulate.approximate(llama, "gauss:1.0@up,down,norm"):
            assert _n_hooks(llama) == before + 2 * 2 + 2 * 2 + 1
        with simulate.approximate(llama, None):
            assert torch.equal(llama(ids).logits, clean)
        assert torch.equal(llama(ids).logits, clean)
    assert _n_hooks(llama) == before


def test_deterministic_under_seed(llama, ids):
    outs = []
    with torch.no_grad():
        for seed in (7, 7, 8):
            with simulate.approximate(llama, "table2:iron", seed=seed):
                outs.append(llama(ids).logits)
    assert torch.equal(outs[0], outs[1]) and not torch.equal(outs[0], outs[2])


def test_noise_is_differentiable_through(llama, ids):
    llama.zero_grad()
    with simulate.approximate(llama, "gauss:0.1@up,down+quant:a4@attn", seed=0):
        loss = llama(ids).logits.logsumexp(-1).mean()
    loss.backward()
    g = llama.model.layers[0].mlp.up_proj.weight.grad
    assert g is not None and torch.isfinite(g).all() and g.abs().sum() > 0
    llama.zero_grad()


def test_gpt2_points(gpt2, ids):
    t = gpt2.transformer
    seen = {}
    hooks = [t.h[1].mlp.register_forward_pre_hook(lambda m, i: seen.__setitem__("up", i[0].clone())),
             t.h[1].ln_2.register_forward_hook(lambda m, i, o: seen.__setitem__("ln2", o.clone()))]
    with torch.no_grad(), simulate.approximate(gpt2, "gauss:0.5@up@1", seed=4):
        gpt2(ids)
    for h in hooks:
        h.remove()
    # the ln_2 hook registered first sees the clean output; the MLP reads it plus the noise
    noise = torch.randn(seen["up"].shape, generator=torch.Generator().manual_seed(4)) * 0.5
    assert torch.allclose(seen["up"], seen["ln2"] + noise, atol=1e-6)


def test_peft_wrapped_model(llama, ids):
    from peft import LoraConfig, get_peft_model

    m, _ = load_hf("tiny-random-llama")
    pm = get_peft_model(m, LoraConfig(r=2, target_modules=["q_proj", "down_proj"]))
    with torch.no_grad():
        clean = pm(input_ids=ids).logits
        with simulate.approximate(pm, "gauss:0.2@down", seed=0):
            noisy = pm(input_ids=ids).logits
    assert (noisy - clean).abs().max() > 1e-3


def test_layer_out_of_range(llama, ids):
    with pytest.raises(UserError, match="out of range"):
        with simulate.approximate(llama, "gauss:0.1@up@5"):
            pass


# -- sparsification and quantisation ------------------------------------------------------------------
def _capture(mod, how, store, key):
    if how == "in":
        return mod.register_forward_pre_hook(lambda m, i: store.__setitem__(key, i[0].detach().clone()))
    return mod.register_forward_hook(lambda m, i, o: store.__setitem__(key, o.detach().clone()))


@pytest.fixture(scope="module")
def stories():
    if not STORIES.exists():
        pytest.skip(f"{STORIES} not present")
    m, tok = load_hf(str(STORIES))
    texts = ["Once upon a time there was a little girl who loved the sea.",
             "Tom had a red ball. He played with it in the park every day and was happy."]
    batch = torch.tensor([tok(t)["input_ids"][:14] for t in texts])
    return m, batch


@pytest.mark.parametrize("sparsity", [0.1, 0.25, 0.5, 0.9])
def test_teal_reaches_target_sparsity(stories, sparsity):
    m, batch = stories
    L = m.model.layers[2]
    # on the fly: every site of every layer, the per-call quantile
    got = {}
    with torch.no_grad(), simulate.approximate(m, f"teal:{sparsity}"):
        hs = [_capture(L.mlp.down_proj, "in", got, "down"), _capture(L.post_attention_layernorm, "out", got, "up")]
        m(batch)
    for h in hs:
        h.remove()
    for k in ("up", "down"):
        assert abs(float((got[k] == 0).float().mean()) - sparsity) <= 0.01, k
    # calibrated (TEAL's way: thresholds from the dense model), one site at a time so the site's
    # input is the calibration distribution itself
    for point, mod, how in (("up", L.post_attention_layernorm, "out"), ("down", L.mlp.down_proj, "in")):
        a = simulate.calibrate(m, f"teal:{sparsity}@{point}@2", batch)
        assert set(a.stats) == {f"2.{point}"}
        got = {}
        with torch.no_grad(), simulate.approximate(m, a):
            h = _capture(mod, how, got, "x")
            m(batch)
        h.remove()
        assert abs(float((got["x"] == 0).float().mean()) - sparsity) <= 0.01, point


def test_teal_fixed_threshold_zeroes_exactly_small_entries(stories):
    m, batch = stories
    L = m.model.layers[0]
    got = {}
    with torch.no_grad():
        h0 = _capture(L.post_attention_layernorm, "out", got, "clean")
        with simulate.approximate(m, "teal:thr=0.3@up@0"):
            h1 = _capture(L.post_attention_layernorm, "out", got, "teal")
            m(batch)
    h0.remove()
    h1.remove()
    c, t = got["clean"], got["teal"]
    assert torch.equal(t, torch.where(c.abs() > 0.3, c, torch.zeros_like(c)))


@pytest.mark.parametrize("bits", [8, 4])
def test_fake_quant_error_within_half_step(stories, bits):
    m, batch = stories
    L = m.model.layers[1]
    got = {}
    with torch.no_grad():
        h0 = _capture(L.mlp.down_proj, "in", got, "x")  # registered first: sees the clean input
        with simulate.approximate(m, f"quant:a{bits}@down"):
            h1 = _capture(L.mlp.down_proj, "in", got, "q")
            m(batch)
    h0.remove()
    h1.remove()
    x, q = got["x"], got["q"]
    step = x.abs().amax(-1, keepdim=True) / (2 ** (bits - 1) - 1)
    err = (q - x).abs()
    assert (err <= step / 2 + 1e-6).all()
    assert err.max() > step.min() / 20  # it does quantise
    levels = (q / step).round()
    assert torch.allclose(q / step, levels, atol=1e-3)  # values on the grid


def test_smoothquant_error_within_half_smoothed_step(stories):
    m, batch = stories
    L = m.model.layers[1]
    a = simulate.calibrate(m, "smoothquant:a4@up@1", batch)
    s = a.stats["1.up:smooth"]
    got = {}
    with torch.no_grad():
        h0 = _capture(L.post_attention_layernorm, "out", got, "x")
        with simulate.approximate(m, a):
            h1 = _capture(L.post_attention_layernorm, "out", got, "q")
            m(batch)
    h0.remove()
    h1.remove()
    x, q = got["x"], got["q"]
    # smoothing factors follow SmoothQuant: max|X_j|^a / max|W_j|^(1-a) over gate and up weights
    wmax = torch.cat([L.mlp.gate_proj.weight, L.mlp.up_proj.weight]).abs().amax(0)
    assert torch.allclose(s, x.abs().flatten(0, 1).amax(0).clamp_min(1e-5) ** 0.5 / wmax ** 0.5, rtol=1e-4)
    step = (x / s).abs().amax(-1, keepdim=True) / 7
    assert ((q - x).abs() <= s * step / 2 + 1e-6).all()


def test_omniquant_clipping_search(stories):
    m, batch = stories
    a = simulate.calibrate(m, "omniquant:a4@down", batch)
    gammas = [v for k, v in a.stats.items() if k.endswith(":gamma")]
    assert len(gammas) == len(m.model.layers) and all(g in simulate.OMNI_GAMMAS for g in gammas)
    assert min(gammas) < 1.0  # at 4 bits clipping pays off somewhere
    with torch.no_grad():
        clean = m(batch).logits
        with simulate.approximate(m, a):
            got = m(batch).logits
    assert 0 < (got - clean).abs().max() < 5


# -- protocol emulation ----------------------------------------------------------------------------
def test_protocol_act_replacement_matches_manual(llama, ids):
    import protocols
    from pmpc.ops import TorchOps

    p = protocols.get("crypten")
    orig = [L.mlp.act_fn for L in llama.model.layers]

    class Act(torch.nn.Module):
        def forward(self, x):
            return p.silu(x.double(), TorchOps()).float()

    try:
        for L in llama.model.layers:
            L.mlp.act_fn = Act()
        with torch.no_grad():
            ref = llama(ids).logits
    finally:
        for L, a in zip(llama.model.layers, orig):
            L.mlp.act_fn = a
    with torch.no_grad():
        clean = llama(ids).logits
        with simulate.approximate(llama, "protocol:crypten@down"):
            got = llama(ids).logits
    assert torch.allclose(got, ref, atol=1e-6)
    assert not torch.equal(got, clean)


def test_protocol_plain_is_identity_incl_softmax_with_padding(stories):
    m, batch = stories
    ids = batch.clone()
    ids[0, :4] = 0
    mask = torch.ones_like(ids)
    mask[0, :4] = 0  # left padding in row 0
    with torch.no_grad():
        clean = m(input_ids=ids, attention_mask=mask).logits
        with simulate.approximate(m, "protocol:plain@down,norm,softmax"):
            got = m(input_ids=ids, attention_mask=mask).logits
        assert m.config._attn_implementation != simulate._ATTN_NAME  # restored
    assert torch.allclose(got[0, 4:], clean[0, 4:], atol=1e-4)
    assert torch.allclose(got[1], clean[1], atol=1e-4)


def test_protocol_exact_softmax_changes_little(stories):
    m, batch = stories
    with torch.no_grad():
        clean = m(batch).logits
        with simulate.approximate(m, "protocol:exact@softmax,norm"):
            got = m(batch).logits
    d = (got - clean).abs().max()
    assert 0 < d < 0.05


def test_protocol_unknown():
    m, _ = load_hf("tiny-random-llama")
    with pytest.raises(UserError, match="unknown protocol"):
        with simulate.approximate(m, "protocol:nosuch"):
            pass


def test_runs_where_crypten_is_absent():
    """eval/* and pmpc.simulate must work on a GPU machine without crypten: block the import and
    run an approximation, a protocol emulation and the CLI's module imports."""
    import subprocess
    import sys

    code = """
import sys
sys.modules['crypten'] = None  # any 'import crypten' now raises ImportError
import torch
import eval, eval.prompts, eval.generate, eval.judges, eval.ppl, eval.asr
import eval.analysis.common, eval.analysis.sweeps, eval.analysis.mds, eval.analysis.table2, eval.analysis.report
import cli.eval, cli.sweep
from pmpc import simulate
from pmpc.models import load_hf
m, _ = load_hf('tiny-random-llama')
with torch.no_grad(), simulate.approximate(m, 'protocol:exact@down,norm,softmax+gauss:0.1@up', seed=0):
    m(torch.arange(8)[None])
assert 'pmpc.mpc.crypten_compat' not in sys.modules and 'pmpc.mpc.parties' not in sys.modules
print('ok')
"""
    import os

    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       cwd=pathlib.Path(__file__).resolve().parents[1], timeout=300,
                       env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert r.returncode == 0 and r.stdout.strip().endswith("ok"), r.stderr[-2000:]
