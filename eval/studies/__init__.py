"""Studies that combine alignment and measurement.

* :mod:`eval.studies.select` — find a model's most vulnerable approximation (MVA) and its
  sensitive layers (tau) with the evaluation harness.
* :mod:`eval.studies.pipeline` — the alignment pipeline: pairs, training, snapshot choice on
  validation data, the evaluation grid.
"""
