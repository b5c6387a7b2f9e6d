#!/usr/bin/env bash
# The alignment study on one GPU: preference data, smollm2-safe (DPO), MVA/tau selection, +DPO,
# QuadA, the Table-5 ablation (training noise none / MVA / 1.1 x MVA), evaluation, fp16 adapters.
#
#   bench/gpu_align.sh MODEL_DIR OUT_DIR [pipeline options...]
#
# MODEL_DIR  local HF directory of SmolLM2-135M-Instruct (config.json, model.safetensors, tokenizer,
#            chat template), e.g. pmpc's own cache ~/.cache/pmpc/smollm2-135m-instruct
# OUT_DIR    results: results.json / results.md, export/smollm2-{safe,quada} (fp16 adapter + model
#            card, ready for pmpc/adapters/), adapters/<row> (fp16), runs/<row>/{train.json,log.jsonl},
#            select/ (noise and layer sweeps), eval/ (every generation, judged), log.txt
# Options    passed to `python -m eval.studies.pipeline` (see --help), e.g. --pairs FILE or --gen FILE to
#            reuse preference data / base-model answers made elsewhere (default: regenerate here,
#            ~481 prompts x 128 tokens), --budget-s S (evaluation grid stops starting cells after S s),
#            --safe-adapter pmpc/adapters/smollm2-safe-r1 (start +DPO/QuadA from the committed smollm2-safe
#            instead of training it; its card stays), --safe-sft W (NLL weight of the safe stage, 1.0).
#
# Needs: python >= 3.11 with torch (CUDA), transformers >= 5, peft, safetensors, scipy, matplotlib,
# tqdm, click; NOT crypten. The prompt data: $PMPC_DATA, else ../shared/data beside the repository,
# else .gpu/data inside it (git-ignored: copy ../shared/data there and carry it to a device).
# Sized for ~6 minutes on one H200; a hard stop at $PMPC_ALIGN_TIMEOUT s (570) leaves every finished stage in OUT_DIR
# (rerunning with the same OUT_DIR resumes: finished stages are skipped).
set -euo pipefail

if [ $# -lt 2 ]; then
  echo "usage: $0 MODEL_DIR OUT_DIR [pipeline options...]" >&2
  exit 2
fi
MODEL_DIR=$1
OUT_DIR=$2
shift 2
REPO=$(cd "$(dirname "$0")/.." && pwd)
PY=${PYTHON:-python3}
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
if [ -z "${PMPC_DATA:-}" ]; then   # the shared data beside the repository, else a carried copy in .gpu/data
  if [ -d "$REPO/../shared/data" ]; then PMPC_DATA=$REPO/../shared/data; else PMPC_DATA=$REPO/.gpu/data; fi
fi
export PMPC_DATA
export PMPC_ALIGN_DEVICE=${PMPC_ALIGN_DEVICE:-cuda}   # cpu: a smoke run of this script (with --quick)
mkdir -p "$OUT_DIR"

# -- preflight: fail in seconds, not after minutes of GPU time ----------------------------------
fail() { echo "gpu_align: $*" >&2; exit 2; }
[ -f "$MODEL_DIR/config.json" ] || fail "$MODEL_DIR/config.json not found (need a local HF directory)"
ls "$MODEL_DIR"/*.safetensors >/dev/null 2>&1 || fail "$MODEL_DIR has no *.safetensors"
for f in harmful_prompts/train.json harmful_prompts/val.json harmful_prompts/test.json harmless_prompts/train.json \
         harmbench_behaviors_text_val.csv harmbench_behaviors_text_test.csv jbb_harmful_behaviors.csv \
         jbb_benign_behaviors.csv xstest_prompts.csv gcg_test_prefixes.txt wikitext-2-raw/wiki.test.raw; do
  [ -f "$PMPC_DATA/$f" ] || fail "data file $PMPC_DATA/$f not found (set PMPC_DATA to the shared data directory)"
done
"$PY" - <<'EOF' || fail "python environment incomplete (see above)"
import importlib, sys
missing = [m for m in ("torch", "transformers", "peft", "safetensors", "scipy", "matplotlib", "tqdm", "click")
           if importlib.util.find_spec(m) is None]
if missing:
    sys.exit("missing python packages: " + ", ".join(missing))
import os, torch
if os.environ["PMPC_ALIGN_DEVICE"].startswith("cuda") and not torch.cuda.is_available():
    sys.exit("no CUDA device visible to torch")
import eval.studies.pipeline  # noqa: F401  (imports the whole alignment + eval stack)
assert "crypten" not in sys.modules, "pmpc.align must not import crypten"
print(f"gpu_align: python {sys.version.split()[0]}, torch {torch.__version__}, "
      f"{torch.cuda.get_device_name() if torch.cuda.is_available() else 'cpu'}", flush=True)
EOF

start=$(date +%s)
set +e
timeout --signal=TERM --kill-after=15 "${PMPC_ALIGN_TIMEOUT:-570}" \
  "$PY" -u -m eval.studies.pipeline "$MODEL_DIR" "$OUT_DIR" --device "$PMPC_ALIGN_DEVICE" --budget-s 330 "$@" 2>&1 | tee "$OUT_DIR/log.txt"
rc=${PIPESTATUS[0]}
set -e
echo "gpu_align: exit $rc after $(( $(date +%s) - start )) s; results in $OUT_DIR (results.json, results.md, export/)"
exit "$rc"
