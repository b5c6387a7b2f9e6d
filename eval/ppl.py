"""WikiText-2 perplexity, the seed paper's way (AutoAWQ ``eval_utils`` as used by QuadA):

* text: the raw test split as HF ``wikitext-2-raw-v1`` rows (the lines of ``wiki.test.raw``,
  blank lines as empty strings) joined with "\\n\\n", tokenised once;
* ``n = numel // window`` non-overlapping windows (1024 tokens by default), each scored alone;
* PPL = exp(mean token NLL over the n windows), with the approximation switched on when given
  (the paper measures PPL with the noise on).
``max_windows`` scores only the first windows (quick runs; the result says how many).
"""
from __future__ import annotations

import math
import pathlib
import time

import torch
import torch.nn.functional as F

from pmpc import simulate
from pmpc.errors import UserError
from pmpc.paths import wikitext_path

def wikitext_text(path: pathlib.Path) -> str:
    raw = path.read_text(encoding="utf-8")
    rows = ["" if not line.strip() else line for line in raw.splitlines(keepends=True)]
    return "\n\n".join(rows)


def tokenize(codec, text: str) -> torch.Tensor:
    if codec.byte:
        return torch.tensor(codec.tok.encode(text), dtype=torch.long)
    return torch.tensor(codec.tok(text, add_special_tokens=True)["input_ids"], dtype=torch.long)


def perplexity(model, ids: torch.Tensor, window: int = 1024, max_windows: int | None = None, approx=None,
               seed: int = 0, batch_size: int = 1, progress: bool = False, calib=None) -> dict:
    """Perplexity of token ids over non-overlapping windows, optionally under ``approx``."""
    from tqdm.auto import tqdm

    maxpos = getattr(model.config, "max_position_embeddings", None) or getattr(model.config, "n_positions", None)
    if maxpos and window > maxpos:
        raise UserError(f"window {window} exceeds the model's {maxpos} positions; pass --window {maxpos} or less")
    n = ids.numel() // window
    if max_windows:
        n = min(n, max_windows)
    if n == 0:
        raise UserError(f"text has {ids.numel()} tokens, fewer than one window of {window}")
    dev = next(model.parameters()).device
    a = simulate.parse(approx)
    if calib is not None and a.needs_calibration:
        a = simulate.calibrate(model, a, calib)
    total, count = 0.0, 0
    t0 = time.perf_counter()
    bar = tqdm(total=n, desc="ppl", unit="window", disable=not progress, dynamic_ncols=True)
    for b in range(0, n, batch_size):
        k = min(batch_size, n - b)
        x = ids[b * window:(b + k) * window].view(k, window).to(dev)
        # each batch gets its own seed so results do not depend on how far a run got
        with torch.no_grad(), simulate.approximate(model, a, seed=seed + b):
            logits = model(x).logits
        nll = F.cross_entropy(logits[:, :-1].float().reshape(-1, logits.shape[-1]), x[:, 1:].reshape(-1),
                              reduction="sum")
        total += float(nll)
        count += k * (window - 1)
        bar.update(k)
    bar.close()
    mean = total / count
    return {"ppl": math.exp(mean) if mean < 700 else float("inf"), "nll": mean, "windows": n,
            "window": window, "tokens_scored": count, "tokens_total": int(ids.numel()),
            "approx": str(a), "seconds": round(time.perf_counter() - t0, 3)}


def wikitext_ppl(model, codec, data: str | None = None, text_file: str | None = None, **kw) -> dict:
    path = pathlib.Path(text_file) if text_file else wikitext_path(data)
    if not path.exists():
        raise UserError(f"text file not found: {path}")
    text = wikitext_text(path) if not text_file else path.read_text(encoding="utf-8")
    res = perplexity(model, tokenize(codec, text), **kw)
    res["text"] = str(path)
    return res
