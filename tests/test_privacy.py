"""Privacy checks on real 2-party runs, from what each party actually receives.

* The server's view is statistically independent of the client's prompt: every ring element it
  receives passes uniformity tests (top byte chi-square, per-bit frequencies) and the elements
  received for prompt A and prompt B come from the same distribution (two-sample KS).
* Logits are revealed to the client only: neither the client's shares of the logits nor their
  fixed-point encodings ever reach the server.
* With private weights, the server's weights never reach the client in the clear.
Each detector is shown to work on a CONTROL in the same session (a value deliberately opened to
both parties), and each statistic is shown to reject plaintext data — so these tests can fail.
(The test that no encoded embedding of the prompt reaches the server is in test_engine.py.)
"""
from __future__ import annotations

import functools

import numpy as np
import pytest
import torch
from scipy import stats

from pmpc import models
from pmpc.mpc import parties
from pmpc.mpc.secure import ClientInput, GenConfig
from tests import deploy_jobs

ALPHA = 1e-6          # per-test false-alarm rate for truly uniform data
MODEL = "tiny-random-llama"


def encode(x) -> np.ndarray:
    """CrypTen's fixed-point encoding, exactly: float32 times 2^16, truncated to the 64-bit ring."""
    return (torch.as_tensor(np.asarray(x), dtype=torch.float32) * 2 ** 16).long().numpy()


def uniformity(v: np.ndarray) -> dict:
    u = v.view(np.uint64)
    top = (u >> np.uint64(56)).astype(np.int64)
    chi_p = stats.chisquare(np.bincount(top, minlength=256)).pvalue
    bits = np.array([((u >> np.uint64(b)) & np.uint64(1)).sum() for b in range(64)], dtype=np.float64)
    n = len(u)
    z = np.abs(bits - n / 2) / np.sqrt(n / 4)
    return {"chi2_p": chi_p, "max_bit_z": float(z.max()), "n": n}


def as_unit(v: np.ndarray) -> np.ndarray:
    return (v.view(np.uint64) >> np.uint64(11)).astype(np.float64) / 2.0 ** 53


# |z| bound for 64 bit tests at a family-wise rate ~ALPHA (Bonferroni): Phi^-1(1 - ALPHA / 128)
Z_MAX = stats.norm.isf(ALPHA / 128)


@pytest.fixture(scope="module")
def public_run():
    a, b = torch.full((1, 6), 5), torch.full((1, 6), 9)
    prompts = [a, b, a, b]
    cfg = GenConfig(model=MODEL, protocol="exact", max_new_tokens=2)
    client, server = parties.run_local(
        functools.partial(deploy_jobs.privacy_session, cfg, len(prompts)), timeout_s=60,
        inputs={0: [ClientInput(p, torch.ones_like(p)) for p in prompts]})
    return prompts, client, server


def test_server_view_is_uniform_and_independent_of_the_prompt(public_run):
    prompts, client, server = public_run
    views = server["received"]
    assert all(len(v) > 20_000 for v in views), [len(v) for v in views]
    assert len({len(v) for v in views}) == 1  # same public shapes -> the same traffic
    for q, v in enumerate(views):
        u = uniformity(v)
        assert u["chi2_p"] > ALPHA, (q, u)
        assert u["max_bit_z"] < Z_MAX, (q, u)
        assert stats.kstest(as_unit(v), "uniform").pvalue > ALPHA, q
    view_a = np.concatenate(views[0::2])
    view_b = np.concatenate(views[1::2])
    assert stats.ks_2samp(as_unit(view_a), as_unit(view_b)).pvalue > ALPHA

    # the statistics have power: what the server would see WITHOUT masking fails all of them
    spec, _ = models.load(MODEL)
    plain_a = encode(spec.weights["embed.tok"][prompts[0]].numpy()).reshape(-1)
    plain_b = encode(spec.weights["embed.tok"][prompts[1]].numpy()).reshape(-1)
    tiled_a, tiled_b = np.resize(plain_a, 20_000), np.resize(plain_b, 20_000)
    assert uniformity(tiled_a)["chi2_p"] < ALPHA
    assert uniformity(tiled_a)["max_bit_z"] > Z_MAX
    assert stats.ks_2samp(as_unit(tiled_a), as_unit(tiled_b)).pvalue < ALPHA


def test_logits_reach_the_client_only(public_run):
    prompts, client, server = public_run
    seen = np.concatenate(server["received"])
    learnt = server["opened"]
    for q, out in enumerate(client["outputs"]):
        assert len(out["tokens"][0]) == 2 and out["logits"].shape[1] == 2
        assert server["outputs"][q] == {}  # the server's result holds no tokens, no logits
        mine = client["logit_shares"][q]
        assert mine.size >= 2 * 96
        assert not np.isin(mine, seen).any(), "the client's share of the logits reached the server"
        clear = encode(out["logits"]).reshape(-1)
        clear = clear[np.abs(clear) > 64]  # ignore near-zero values that random data hits by chance
        assert clear.size > 0
        assert not np.isin(clear, seen).any(), "logits reached the server in the clear"
        assert not np.isin(clear, learnt).any(), "the server opened the logits"
    # control: a secret the client opens to BOTH parties is caught by the same detectors
    control = server["control_secret"]
    assert np.isin(client["control_secret"]["client_share"], control["messages"]).all()
    assert np.isin(encode(torch.arange(1, 257, dtype=torch.float32) * 1.37), control["opened"]).all()


def test_private_weights_never_reach_the_client():
    p = torch.tensor([[3, 1, 4, 1, 5]])
    cfg = GenConfig(model=MODEL, protocol="exact", max_new_tokens=1, weights="private")
    client, server = parties.run_local(functools.partial(deploy_jobs.privacy_session, cfg, 1), timeout_s=60,
                                       inputs={0: [ClientInput(p, torch.ones_like(p))]})
    view, learnt = client["received"][0], client["opened"]
    assert view.size > 20_000 and learnt.size > 20_000
    u = uniformity(view)
    assert u["chi2_p"] > ALPHA and u["max_bit_z"] < Z_MAX, u
    spec, _ = models.load(MODEL)
    for name, w in spec.weights.items():
        enc = encode(w.numpy()).reshape(-1)
        enc = enc[np.abs(enc) > 64]  # ignore near-zero values that random data hits by chance
        assert not np.isin(enc, view).any(), f"weight {name} reached the client in the clear"
        assert not np.isin(enc, learnt).any(), f"the client opened weight {name}"
    # control: the server opens its embedding table to both parties -> the detector sees it
    table = encode(spec.weights["embed.tok"].numpy()).reshape(-1)
    assert np.isin(table, client["control_weight"]["opened"]).all()
    assert len(client["outputs"][0]["tokens"][0]) == 1


def test_the_private_weight_client_never_needs_the_weight_file(tmp_path, stories_dir):
    """`pmpc party --weights private`: the client's host holds the config and the tokenizer only,
    at another path than the server's; the session runs (ttp dealer) and generates what the model
    generates in the clear. The client's process cannot have read the weights: there are none."""
    import pathlib
    import shutil
    import subprocess
    import sys

    from tests.test_badinput import error_lines

    client_dir = tmp_path / "client-host-model"
    client_dir.mkdir()
    for f in pathlib.Path(stories_dir).iterdir():
        if f.is_file() and f.suffix not in (".safetensors", ".bin", ".pt", ".pth", ".gguf"):
            shutil.copy(f, client_dir / f.name)
    assert not list(client_dir.glob("*.safetensors"))
    rdv = ["--rendezvous", f"tcp://127.0.0.1:{parties.free_port()}", "--timeout", "30"]
    common = ["-p", "exact", "-n", "2", "--weights", "private", "--dealer", "ttp", *rdv]
    repo = pathlib.Path(__file__).resolve().parents[1]
    cmds = [["-m", str(client_dir), "--rank", "0", "--ids", "1,2,3"], ["-m", str(stories_dir), "--rank", "1"],
            ["-m", str(stories_dir), "--rank", "2"]]
    procs = [subprocess.Popen([sys.executable, "-m", "cli.main", "party", *c, *common], cwd=repo, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE) for c in cmds]
    outs = [p.communicate(timeout=300) for p in procs]
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, (p.args, error_lines(err))
    model, _ = models.load_hf(str(stories_dir))
    with torch.no_grad():
        ref = model.generate(torch.tensor([[1, 2, 3]]), max_new_tokens=2, do_sample=False, min_new_tokens=2)[0, 3:]
    text = outs[0][0].strip()
    assert text == models.load_tokenizer(str(client_dir)).decode(ref.tolist(), skip_special_tokens=True).strip()


def test_client_side_loaders_read_no_weights(tmp_path, stories_dir):
    """The shapes, tokenizer and codec the client uses come from a directory without weights."""
    import shutil

    from eval import asr

    d = tmp_path / "m"
    shutil.copytree(stories_dir, d, ignore=shutil.ignore_patterns("*.safetensors"))
    full, _ = models.load(str(stories_dir))
    shapes = models.load_shapes(str(d))
    assert shapes.shapes() == full.shapes()
    assert all(float(w.abs().sum()) == 0 for w in shapes.weights.values())
    codec = asr.load_codec(str(d))
    assert codec.tok is not None and codec.eos_ids
    with pytest.raises(models.ModelError, match="no weights"):
        models.load(str(d))
