#!/bin/bash
# Every re-measured number, from the committed per-prompt outputs, judged by every judge. The grid cells
# (grid, grid-approx) and the targets cells were regenerated once (README); their generation files were not kept, so they are
# re-judged from the verdict files' own texts (remeasure rejudge). Each manifest writes <name>.jsonl (per-prompt
# verdicts), <name>.json and <name>.md; `python -m eval.analysis.remeasure derive <name>.jsonl` re-derives
# a table from the committed verdicts alone.
set -e
cd "$(dirname "$0")/../.."
PY=${PY:-python}
$PY -m eval.analysis.judge_validation --split test --out results/judge-validation
$PY -m eval.analysis.judge_validation --split test --include-unsure --out results/judge-validation
$PY -m eval.analysis.judge_validation --split dev --out results/judge-validation
for m in encrypted label-gen; do
  $PY -m eval.analysis.remeasure manifest results/remeasure/$m.tsv
done
for m in grid grid-approx targets; do
  $PY -m eval.analysis.remeasure rejudge results/remeasure/$m.jsonl
done
# QuadA against the aligned model it was trained from, column by column, prompt by prompt (exact McNemar)
for m in grid grid-approx; do
  $PY -m eval.analysis.remeasure paired results/remeasure/$m.jsonl --first smollm2-quada-r11 --second smollm2-safe-r11 \
    --json results/remeasure/$m-paired.json
done
