#!/bin/bash
# Every re-measured number, from the committed per-prompt outputs (and the regenerated grid cells in
# runs/eval-trust/gen, see README), judged by every judge. Each manifest writes <name>.jsonl (per-prompt
# verdicts), <name>.json and <name>.md; `python -m eval.analysis.remeasure derive <name>.jsonl` re-derives
# a table from the committed verdicts alone.
set -e
cd "$(dirname "$0")/../.."
PY=${PY:-python}
$PY -m eval.analysis.judge_validation --split test --out results/judge-validation
$PY -m eval.analysis.judge_validation --split dev --out results/judge-validation
for m in encrypted label-gen grid targets; do
  $PY -m eval.analysis.remeasure manifest results/remeasure/$m.tsv
done
