"""Top-1 agreement and mean KL of each protocol's fixed-point emulation (TorchOps, 16 fraction
bits: the arithmetic the MPC engine runs, which tests/test_protocols.py holds it to) against the
plaintext engine, over WikiText-2 windows. A fidelity check that needs no MPC run:

    python bench/emulated_top1.py smollm2 8 32 exact,iron,bolt,bumblebee,puma,crypten
"""
from __future__ import annotations

import json
import sys

import torch

from eval.perf import bench
from pmpc import models
from pmpc.engine import Engine
from pmpc.ops import TorchOps


def main(model: str, n_windows: int, tokens: int, protos: list[str]) -> dict:
    spec, tok = models.load(model)
    ids = bench.windows(tok, spec.vocab, n_windows, tokens, bench.wikitext_path())
    with torch.no_grad():
        ref = Engine(spec, "plain", TorchOps(torch.float64)).prefill(ids, use_cache=False)
        out = {}
        for p in protos:
            got = Engine(spec, p, TorchOps(torch.float64, fxp_bits=16)).prefill(ids, use_cache=False)
            out[p] = bench.fidelity(ref.numpy(), got.numpy(), True)
    return out


if __name__ == "__main__":
    m, w, t, ps = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4].split(",")
    print(json.dumps(main(m, w, t, ps), indent=1))
