#!/usr/bin/env bash
# `make demo`'s command (bolt, smollm2, the default ttp dealer, 4 new tokens) with --json, on the
# code in <code dir>. Usage: results/fss/demo.sh <code dir> <label> [extra pmpc run args]
set -euo pipefail
code=$1; label=$2; shift 2
out=$(cd "$(dirname "$0")" && pwd)/runs
mkdir -p "$out"
cd "$code"
PYTHONPATH=$code OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python -m cli.main run --protocol bolt --parties 2 \
  --model smollm2 --prompt "What is the capital of France?" --max-new-tokens 4 --timeout 600 \
  --json "$out/$label-demo.json" "$@" > "$out/$label-demo.out" 2> "$out/$label-demo.err"
