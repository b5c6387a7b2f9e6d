#!/usr/bin/env bash
# One GPU run: assemble SmolLM2 from the two halves carried in two calls, then run the
# evaluation study (bench/gpu_eval.sh, base model) and the alignment study (bench/gpu_align.sh)
# side by side on the one GPU, under a hard stop, and pack the results into $OUT.
#   call 1: carry .gpu/part_a          ->  mkdir -p /tmp/w && cp .gpu/part_a /tmp/w/
#   call 2: carry .gpu/part_b .gpu/data .whl  ->  bash bench/gpu_run.sh
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:?OUT must name the results folder}
STOP=${STOP_S:-500}
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD PMPC_CACHE=/tmp/pmpc-cache PMPC_DATA=$PWD/.gpu/data PYTHONUNBUFFERED=1
cat /tmp/w/part_a .gpu/part_b > /tmp/w/smollm2.gguf || exit 1
export PMPC_SMOLLM2_GGUF=/tmp/w/smollm2.gguf
python3 -c "from pmpc import models; print('model dir', models.smollm2_dir())" || exit 1
MODEL_DIR=/tmp/pmpc-cache/smollm2-135m-instruct
mkdir -p /tmp/res
( timeout "$STOP" bash bench/gpu_align.sh "$MODEL_DIR" /tmp/res/align > /tmp/res/align.log 2>&1 ) &
( PY=python3 SAFE_MODEL= BUDGET_S=$((STOP - 60)) timeout "$STOP" bash bench/gpu_eval.sh /tmp/res/eval > /tmp/res/eval.log 2>&1 ) &
wait
nvidia-smi --query-gpu=name,memory.used,memory.total --format=csv > /tmp/res/gpu.txt 2>&1
# $OUT takes files of at most 16 MB: results without weights or checkpoints, and the exported
# adapters apart (the whole tree was 55 MB on the first run)
tar czf "$OUT/results.tgz" -C /tmp/res --exclude='*checkpoint*' --exclude='*.safetensors' . 
tar czf "$OUT/adapters.tgz" -C /tmp/res align/export 2>/dev/null
ls -la "$OUT"; tail -n 5 /tmp/res/align.log /tmp/res/eval.log
