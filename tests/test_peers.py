"""pmpc bench peers: the peer forward is the model's function, primitives are counted alike on both
backends, and the OT pricing matches a hand count."""
from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch

from pmpc import models
from pmpc.mpc import primitives
from eval.perf import peers

_spec = importlib.util.spec_from_file_location("llama_xp", peers.PEERS_DIR / "llama_xp.py")
llama_xp = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(llama_xp)


def _peer_logits(hf, tmp_path, ids):
    spec = models.spec_from_hf(hf)
    w, cfg = llama_xp.load_npz(peers.export(spec, tmp_path / "w.npz"))
    w = {k: v.astype(np.float64) for k, v in w.items()}
    x = w["embed.tok"][ids]
    return llama_xp.forward(x, w, cfg, np)


@pytest.mark.parametrize("which", ["stories260K", "tiny-random-llama"])
def test_peer_forward_equals_hf_logits(which, stories_dir, tmp_path):
    """The numpy path of the peer forward (the same code SPU runs through jax.numpy) gives the HF
    model's logits: a peer row measures the same function as pmpc's rows."""
    if which == "stories260K":
        hf, _ = models.load_hf(str(stories_dir))
    else:
        hf = models.tiny_model("llama")
    cfg = hf.config
    assert cfg.num_key_value_heads < cfg.num_attention_heads or which == "stories260K"
    ids = np.random.default_rng(1).integers(0, cfg.vocab_size, 12)
    with torch.no_grad():
        want = hf(torch.as_tensor(ids)[None]).logits[0].double().numpy()
    got = _peer_logits(hf, tmp_path, ids)
    assert got.shape == want.shape
    assert np.abs(got - want).max() <= 1e-4 * max(1.0, np.abs(want).max())
    assert (got.argmax(-1) == want.argmax(-1)).all()


def test_peer_forward_notices_a_wrong_weight(stories_dir, tmp_path):
    """The comparison above can fail: a swapped projection changes the logits."""
    hf, _ = models.load_hf(str(stories_dir))
    spec = models.spec_from_hf(hf)
    w, cfg = llama_xp.load_npz(peers.export(spec, tmp_path / "w.npz"))
    w = {k: v.astype(np.float64) for k, v in w.items()}
    ids = np.arange(8)
    good = llama_xp.forward(w["embed.tok"][ids], w, cfg, np)
    w["layers.0.gate.w"], w["layers.0.up.w"] = w["layers.0.up.w"], w["layers.0.gate.w"]
    bad = llama_xp.forward(w["embed.tok"][ids], w, cfg, np)
    assert np.abs(good - bad).max() > 1e-3


def test_counting_a_toy_sequence():
    """Comparisons by lane width, products with their truncation, nested primitives once."""
    from pmpc.ops import TorchOps

    ops = TorchOps()
    x = torch.linspace(-3, 3, 10, dtype=torch.float64)
    with primitives.counting() as c:
        with ops.scope("f"):
            flags = ops.lt(x, [-1.0, 0.0, 1.0], bound=8.0)   # one batched call: 3 x 10 elements
            y = ops.mul(x, x)                                  # 10 products (+ 10 truncations)
            z = ops.ltz(y)                                     # whole ring: 10 comparisons at 64 bits
            w = y * 0.5                                        # a public-constant product: invisible here
    del flags, z, w
    lane = ops.lane(8.0)[0]
    assert c.as_dict()["by_scope"] == {"f": {f"comparison/{lane}": 30, "product": 10, "truncation": 10,
                                             "comparison/64": 10}}
    assert c.calls[f"comparison/{lane}"] == 1 and c.calls["comparison/64"] == 1
    # and the wrappers are gone afterwards
    with primitives.counting() as c2:
        pass
    ops.mul(x, x)
    assert c2.total() == {}


def test_ot_pricing_of_a_toy_count():
    """Hand count, SIRNN (IKNP: 128 bits per OT, 256 per 1-of-16 OT, 64-bit ring):
    comparison of 32 bits: 8 leaf OTs x (256 + 32) = 2304; AND tree of 2*8 - 2 - 3 = 11 triples
    x (2 x 129 + 4) = 2882; B2A 128 + 64 = 192; 5378 bits, 1 + 3 + 1 = 5 rounds.
    product: 2 x (64 x 128 + 64 x 65 / 2) = 20544 bits, 2 rounds.
    faithful truncation: 192 + comparison(16) [4 x 288 + 4 x 262 + 192 = 2392] = 2584 bits,
    1 + 4 = 5 rounds."""
    m = primitives.OTModel.sirnn()
    assert m.comparison(32) == (5378, 5)
    assert m.product() == (20544, 2)
    assert m.truncation() == (2584, 5)
    counts = {"total": {"comparison/32": 10, "product": 5, "truncation": 5, "matmul.sp": 100, "matmul.sp.mac": 6400},
              "calls": {"comparison/32": 1, "product": 1, "truncation": 1, "matmul.sp": 1, "matmul.sp.mac": 1}}
    got = m.price_run(counts)
    assert got["bytes"] == (10 * 5378 + 5 * 20544 + 5 * 2584) / 8 == 21177.5
    assert got["rounds"] == 5 + 2 + 5
    # silent OT (Cheetah): ~1 bit per OT, 4 per 1-of-16, truncation with known MSB (no comparison)
    s = primitives.OTModel.cheetah()
    assert s.comparison(32) == (8 * (4 + 32) + 11 * (2 * 2 + 4) + (1 + 64), 5)
    assert s.truncation() == (65, 1)
    # MPC truncations, when counted, replace the Ops-level count
    mpc = {"total": {"truncation": 5, "mpc_truncation": 7}, "calls": {"truncation": 1, "mpc_truncation": 3}}
    assert m.price_run(mpc) == {"bytes": 7 * 2584 / 8, "rounds": 3 * 5}


@pytest.mark.slow  # two 2-party sessions of a tiny model: ~10-20 s on a loaded 2-core machine
def test_mpc_run_counts_what_the_emulation_counts(data_dir):
    """A real 2-party row (the code path of ``pmpc bench``) reports its primitives; its comparisons
    and bit extractions are exactly the plaintext emulation's (products with public weights are
    told apart only under MPC, where weights are not CrypTensors); CrypTen's truncations are
    counted too, at least one per product; CrypTen as shipped compares on the whole ring only."""
    from eval.perf import bench
    from pmpc.engine import Engine
    from pmpc.ops import TorchOps
    from pmpc.mpc.parties import run_local

    spec, tok = models.load("tiny-random-llama")
    ids = bench.windows(tok, spec.vocab, 1, 4, bench.wikitext_path(str(data_dir)))
    client, _ = run_local(peers.PeerJob("tiny-random-llama", "bolt", tuple(ids.shape)), timeout_s=120, inputs={0: ids})
    mpc = client["primitives"]["total"]
    with primitives.counting() as c:
        Engine(spec, "bolt", TorchOps()).prefill(ids, use_cache=False)
    emu = c.total()

    def cmp(d):
        return {k: v for k, v in d.items() if k.startswith(("comparison/", "bit_decomposition/"))}

    assert cmp(mpc) and cmp(mpc) == cmp(emu)
    assert mpc["matmul.sp"] > 0 and mpc["mpc_truncation"] >= mpc["product"] > 0
    assert "attention.softmax" in client["primitives"]["by_scope"]
    shipped, _ = run_local(peers.PeerJob("tiny-random-llama", "crypten", tuple(ids.shape), shipped=True),
                           timeout_s=120, inputs={0: ids})
    widths = {k for k in shipped["primitives"]["total"] if k.startswith("comparison/")}
    assert widths == {"comparison/64"}


def test_peers_rejects_bad_input(tmp_path):
    from click.testing import CliRunner

    from cli.main import cli

    for args, msg in [(["-t", "0"], "tokens"), (["--spu", "ABY3"], "unknown SPU protocol"),
                      (["--spu", "SEMI2K:FM7"], "unknown SPU field"),
                      (["-p", "nope"], "unknown protocol"), (["--cheetah-layers", "0"], "cheetah-layers")]:
        res = CliRunner().invoke(cli, ["bench", "peers", "-m", "tiny-random-llama", *args, "-o", str(tmp_path)])
        assert res.exit_code != 0 and msg in res.output, res.output
    res = CliRunner().invoke(cli, ["bench", "peers", "-m", "tiny-random-gpt2", "--spu", "", "-p", "bolt",
                                   "--ttp-protocols", "", "--no-shipped", "-o", str(tmp_path / "g")])
    assert res.exit_code != 0 and "Llama architecture" in res.output
