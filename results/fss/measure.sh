#!/usr/bin/env bash
# Before/after of the FSS comparison on SmolLM2: `pmpc run --json` for exact and bolt, public
# weights, local dealer, the demo's prompt, 3 new tokens (2 decode steps), one party thread each.
# Usage: results/fss/measure.sh <code dir (PYTHONPATH)> <label> [extra pmpc run args]
set -euo pipefail
code=$1; label=$2; shift 2
out=$(cd "$(dirname "$0")" && pwd)/runs
mkdir -p "$out"
cd "$code"  # python -m puts the working directory first on sys.path: run inside the code measured
for p in exact bolt; do
  PYTHONPATH=$code OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python -m cli.main run --protocol $p \
    --parties 2 --model smollm2 --prompt "What is the capital of France?" --max-new-tokens 3 \
    --dealer local --timeout 600 --json "$out/$label-$p.json" "$@" > "$out/$label-$p.out" 2> "$out/$label-$p.err" \
    || echo "$label $p failed"
done
