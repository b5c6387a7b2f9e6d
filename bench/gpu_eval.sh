#!/usr/bin/env bash
# Headline safety measurements of pmpc on one GPU: baseline ASR / over-refusal / PPL, the noise
# sweep and its MVA, the layer-wise sensitivity, the activation-space MDS, the Table 2 analog and
# the report page. Sized for about 5 minutes on one H200 with smollm2 (135M, fp32).
#
#   bench/gpu_eval.sh OUT_DIR
#
# Environment (all optional):
#   MODEL=smollm2        the model (any name `pmpc eval` takes)
#   SAFE_MODEL=smollm2-safe  measured too (baseline + noise sweep) when its adapter exists and
#                        the budget allows; SAFE_MODEL= (empty) skips it
#   DEVICE=cuda  DTYPE=float32  PY=python  PMPC_DATA=...  (data dir; default ../shared/data)
#   BUDGET_S=240         the optional aligned-model stages start only before this many seconds
#   PPL_WINDOW=1024  LIMIT=  (first N prompts per set: for a quick dry run, e.g. on CPU with
#                        MODEL=/path/stories260K DEVICE=cpu PPL_WINDOW=256 LIMIT=8 SAFE_MODEL=)
# Every stage runs under its own timeout and failures do not stop later stages; OUT_DIR/steps.tsv
# lists stage, exit status and seconds, OUT_DIR/log.txt has all output, OUT_DIR/report/ the page.
set -uo pipefail
OUT=${1:?usage: bench/gpu_eval.sh OUT_DIR}
cd "$(dirname "$0")/.."
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
MODEL=${MODEL:-smollm2}
SAFE_MODEL=${SAFE_MODEL-smollm2-safe}
DEV=${DEVICE:-cuda}
DTYPE=${DTYPE:-float32}
PY=${PY:-python}
BUDGET=${BUDGET_S:-240}
WINDOW=${PPL_WINDOW:-1024}
LIMIT=${LIMIT:-}
LOG="$OUT/log.txt"
START=$(date +%s)
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
# `timeout` runs programs, not shell functions: put a `pmpc` launcher on PATH (the package need
# not be installed on the GPU machine).
BIN=$(mktemp -d); printf '#!/bin/sh\nexec %s -m cli.main "$@"\n' "$PY" > "$BIN/pmpc"; chmod +x "$BIN/pmpc"
export PATH="$BIN:$PATH" PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
elapsed() { echo $(( $(date +%s) - START )); }

step() {  # step NAME TIMEOUT_S command...
  local name=$1 lim=$2; shift 2
  local t0; t0=$(date +%s)
  echo "== [$(elapsed) s] $name: $*" | tee -a "$LOG"
  timeout "$lim" "$@" >>"$LOG" 2>&1
  local rc=$?
  printf '%s\t%s\t%s\n' "$name" "$rc" "$(( $(date +%s) - t0 ))" >>"$OUT/steps.tsv"
  echo "== $name: rc=$rc, $(( $(date +%s) - t0 )) s" | tee -a "$LOG"
  return 0
}

# generation settings: the paper's 128 new tokens for the baselines, 48 inside the sweeps (the keyword
# judges need > 10 words). Stage timeouts add up to < 600 s; the sweeps and the table write their
# outputs after every measurement, so a stage cut by its timeout still leaves a partial table.
GEN=(--device "$DEV" --dtype "$DTYPE" --judge paper --no-progress --batch-size 256)
PPLO=(--window "$WINDOW" --max-windows 64 --ppl-batch 16)
LIM=()
if [ -n "$LIMIT" ]; then GEN+=(--limit "$LIMIT"); LIM=(--limit "$LIMIT"); fi

{
  echo "pmpc gpu_eval $(date -u +%FT%TZ) model=$MODEL device=$DEV dtype=$DTYPE budget=${BUDGET}s"
  git rev-parse --short HEAD 2>/dev/null
  nvidia-smi --query-gpu=name,memory.total --format=csv,noheader 2>/dev/null
  "$PY" -c "import torch, transformers; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), 'transformers', transformers.__version__)"
} | tee -a "$LOG"
"$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() or not '$DEV'.startswith('cuda') else 1)" \
  || { echo "no CUDA device" | tee -a "$LOG"; exit 1; }

# the protocol emulations available in this checkout (iron, bolt, ... when their modules exist)
PROTOS=$("$PY" -c "import protocols; print(' '.join(n for n in protocols.names() if n in ('iron','bolt','bumblebee','nexus','puma','mpcformer')))" 2>>"$LOG")
EXTRA=(--extra teal:0.25 --extra teal:0.5 --extra smoothquant:a8 --extra smoothquant:a4 --extra omniquant:a4)
for p in $PROTOS; do EXTRA+=(--extra "protocol:$p"); done
# one full emulation (activation, norms and attention softmax) where BOLT exists
case " $PROTOS " in *" bolt "*) EXTRA+=(--extra "protocol:bolt@down,norm,softmax");; esac
echo "protocol rows: ${PROTOS:-none}" | tee -a "$LOG"

# 1. baselines: ASR on HarmBench (standard, test) and JBB harmful, over-refusal on XSTest safe; PPL
step baseline 100 pmpc eval asr -m "$MODEL" "${GEN[@]}" --max-new-tokens 128 \
  -p harmbench-test -p jbb-harmful -p xstest-safe -o "$OUT/eval" --json "$OUT/eval/baseline.json"
step ppl 45 pmpc eval ppl -m "$MODEL" --device "$DEV" --dtype "$DTYPE" --window "$WINDOW" --ppl-batch 16 --no-progress \
  --json "$OUT/eval/ppl_clean.json"

# 2. noise sweep at W_up / W_down inputs (Gaussian, auto grid) and the MVA (PPL <= 2x clean)
step noise_sweep 100 pmpc sweep noise -m "$MODEL" "${GEN[@]}" --max-new-tokens 48 -p harmbench-test \
  --points up,down --dist gauss --scales auto "${PPLO[@]}" -o "$OUT/noise"
MVA=$("$PY" - "$OUT/noise/noise_sweep.json" <<'EOF' 2>>"$LOG"
import json, sys
try:
    r = json.load(open(sys.argv[1]))
    m = r["mva"].get("up")
    # an MVA at scale 0 (noise never raised ASR) is no perturbation: fall back to 0.2 x spread
    print(m["approx"] if m and m["scale"] > 0 else f"gauss:{0.2 * r['unit']['up']:.4g}@up")
except Exception:
    print("gauss:0.1@up")
EOF
)
echo "perturbation for the layer sweep / MDS: $MVA" | tee -a "$LOG"

# 3. layer-wise sensitivity: that perturbation in 3 layers at a time
step layer_sweep 70 pmpc sweep layers -m "$MODEL" "${GEN[@]}" --max-new-tokens 48 -p harmbench-test \
  --approx "$MVA" --layer-window 3 -o "$OUT/layers"

# 4. activation space: harmful-test vs harmless-test, first / middle / last layer
step mds 60 pmpc analyze mds -m "$MODEL" --device "$DEV" --dtype "$DTYPE" --no-progress --batch-size 64 \
  --harmful harmful-test --harmless harmless-test --limit "${LIMIT:-100}" --approx "$MVA" --layer 1,mid,last \
  -o "$OUT/mds"

# 5. Table 2 analog: clean, every Table 2 preset (absolute, then rescaled to this model's activation
#    spread), measured fits if present, real emulations
step table2 170 pmpc table2 -m "$MODEL" "${GEN[@]}" --max-new-tokens 48 --harmful harmbench-test \
  --benign xstest-safe "${PPLO[@]}" --rel "${EXTRA[@]}" -o "$OUT/table2"

# 6. optional: the aligned model, if its adapter is here and time is left
if [ -n "$SAFE_MODEL" ] && [ "$(elapsed)" -lt "$BUDGET" ] \
   && "$PY" -c "from pmpc.models import resolve; resolve('$SAFE_MODEL')" >>"$LOG" 2>&1; then
  step safe_baseline 60 pmpc eval asr -m "$SAFE_MODEL" "${GEN[@]}" --max-new-tokens 128 \
    -p harmbench-test -p jbb-harmful -p xstest-safe -o "$OUT/safe_eval" --json "$OUT/safe_eval/baseline.json"
  if [ "$(elapsed)" -lt "$BUDGET" ]; then
    step safe_noise_sweep 80 pmpc sweep noise -m "$SAFE_MODEL" "${GEN[@]}" --max-new-tokens 48 \
      -p harmbench-test --points up,down --scales auto "${PPLO[@]}" -o "$OUT/safe_noise"
  fi
else
  echo "skipping the aligned model (${SAFE_MODEL:-none}): no adapter or no time left" | tee -a "$LOG"
fi

step report 30 pmpc report "$OUT" -o "$OUT/report"
echo "done in $(elapsed) s; stages:" | tee -a "$LOG"
column -t "$OUT/steps.tsv" 2>/dev/null | tee -a "$LOG" || cat "$OUT/steps.tsv"
