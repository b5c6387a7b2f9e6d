"""Safety alignment: preference data, DPO and QuadA losses, LoRA training, adapter export.

Nothing here imports crypten: alignment runs on a GPU machine that has no CrypTen.

* :mod:`pmpc.align.data` — preference pairs (harmful -> refusal over the base model's compliance;
  harmless -> the base model's answer over a refusal), generated once, cached as JSONL, resumable.
* :mod:`pmpc.align.losses` — summed response log-probs, DPO, the QuadA objective.
* :mod:`pmpc.align.train` — LoRA (peft) training loop with checkpoints and resume.
* :mod:`pmpc.align.adapters` — combine stacked LoRA adapters into one PEFT adapter, model cards.
* :mod:`pmpc.align.contrast` — pmpc's contrast prompts (harmless, worded like harmful) and their twins.
* :mod:`pmpc.align.overlap` — same-text and near-duplicate checks between prompt sets.

The prompts are arguments: which ones train a model is :func:`eval.splits.training_prompts`; the
study that runs it all is :mod:`eval.studies.pipeline`.
"""
