"""SmolLM2-135M's shapes with 2 layers and random weights (an HF directory), for byte and CPU
measurements that fit the shared machine without the heavy lock: every layer of SmolLM2 has the
same shapes, and a secure computation's traffic does not depend on the weights' values, so a
decoded token's bytes for 30 layers are 15 x the 2-layer model's per-layer scopes, 61/5 x its norm
scope (2 norms a layer and the final one), plus its lm_head and reveal (results/bytes/README.md).

    PYTHONPATH=. python results/bytes/small_model.py /tmp/smol2l
"""
import sys

import torch

from pmpc import models


def main(out: str) -> None:
    model, tok = models.load_hf("smollm2")
    cfg = model.config
    cfg.num_hidden_layers = 2
    torch.manual_seed(0)
    type(model)(cfg).save_pretrained(out)
    tok.save_pretrained(out)


if __name__ == "__main__":
    main(sys.argv[1])
