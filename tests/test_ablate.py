"""The fidelity ablation (eval/perf/ablate.py): a swap really replaces the protocol's function by the
exact one, and nothing else; the misses it lists are the positions whose top-1 differs."""
from __future__ import annotations

import pytest
import torch

from eval.perf import ablate, bench
from pmpc import models
from pmpc.engine import Engine
from pmpc.ops import TorchOps
from tests import engine_jobs


@pytest.fixture(scope="module")
def tiny():
    spec = models.spec_from_hf(models.tiny_model("llama"), "llama")
    ids = engine_jobs._ids(spec, shape=(2, 8))
    with torch.no_grad():
        ref = Engine(spec, "plain", TorchOps(torch.float64)).prefill(ids, use_cache=False)
    return spec, ids, ref


def _logits(spec, ids, protocol):
    with torch.no_grad():
        return Engine(spec, protocol, TorchOps(torch.float64)).prefill(ids, use_cache=False)


@pytest.mark.parametrize("protocol", ["bumblebee", "bolt"])
def test_swapping_every_function_gives_the_plaintext_model(tiny, protocol):
    spec, ids, ref = tiny
    own = _logits(spec, ids, ablate.swapped(protocol, "none"))
    assert (own - ref).abs().max() > 1e-6  # the protocol's own functions do move the logits
    torch.testing.assert_close(own, _logits(spec, ids, protocol), atol=0, rtol=0)  # "none" is the protocol
    torch.testing.assert_close(_logits(spec, ids, ablate.swapped(protocol, "all")), ref, atol=1e-9, rtol=0)


def test_one_swap_replaces_only_its_functions(tiny):
    spec, ids, ref = tiny
    x = torch.linspace(-6, 6, 97, dtype=torch.float64)
    p, plain, ops = ablate.swapped("bumblebee", "silu"), ablate.protocols.get("plain"), TorchOps()
    torch.testing.assert_close(p.silu(x, ops), plain.silu(x, ops), atol=0, rtol=0)
    torch.testing.assert_close(p.exp(-x.abs(), ops), ablate.protocols.get("bumblebee").exp(-x.abs(), ops))
    # SiLU alone exact: closer to plaintext than the protocol, not equal to it (exp, softmax remain)
    own, swapped = _logits(spec, ids, "bumblebee"), _logits(spec, ids, p)
    assert 0 < (swapped - ref).abs().max() < (own - ref).abs().max()
    r = ablate.swapped("bumblebee", "reciprocal")
    times = torch.rand(3, 5, dtype=torch.float64)
    torch.testing.assert_close(r.reciprocal_times(times.sum(-1, keepdim=True), times, ops),
                               times / times.sum(-1, keepdim=True), atol=0, rtol=0)


def test_misses_lists_each_disagreement_with_its_margin():
    ref = torch.tensor([[[3.0, 1.0, 0.0], [0.0, 2.0, 1.5]]], dtype=torch.float64)
    got = torch.tensor([[[3.0, 1.0, 0.0], [0.0, 1.0, 1.5]]], dtype=torch.float64)
    assert ablate.misses(ref, got) == [{"window": 0, "position": 1, "ref_top1": 1, "got_top1": 2, "ref_margin": 0.5}]
    assert ablate.misses(ref, ref) == []
    # the bench reports the same list beside its top-1
    f = bench.fidelity(ref.numpy(), got.numpy(), is_lm=True)
    assert f["top1"] == 0.5 and f["misses"] == ablate.misses(ref, got)
