#!/usr/bin/env bash
# Engine measurements: SmolLM2-135M under 2-party MPC with `exact` and `crypten`, public and private
# weights: a 32-token WikiText-2 prompt, N new greedy tokens; one JSON per run in OUT_DIR.
#   bench/engine_smollm2.sh OUT_DIR [N_NEW]
set -euo pipefail
OUT=${1:?usage: bench/engine_smollm2.sh OUT_DIR [N_NEW]}
N=${2:-8}
cd "$(dirname "$0")/.."
mkdir -p "$OUT"
DATA=${PMPC_DATA:-../shared/data}
IDS=$(python - "$DATA/wikitext-2-raw/wiki.test.raw" <<'PY'
import sys
from pmpc import models
_, tok = models.load_hf("smollm2")
text = open(sys.argv[1], encoding="utf-8").read()
start = text.index(" = Robert Boulter = ")  # the first article of the test split
ids = tok(text[start:start + 2000])["input_ids"][:32]
print(",".join(map(str, ids)))
PY
)
for proto in exact crypten; do
  for w in public private; do
    f="$OUT/smollm2_${proto}_${w}.json"
    [ -s "$f" ] && { echo "skip $f (done)"; continue; }
    echo "== $proto $w"
    pmpc run -m smollm2 -p "$proto" --weights "$w" --ids "$IDS" -n "$N" --timeout 600 --json "$f"
  done
done
