#!/usr/bin/env bash
# Separate hosts on emulated links: client, server and dealer each in a network namespace, joined
# by pmpc's TUN link emulator (this kernel may lack tc netem); the online time measured on each
# link is compared with the cost model (no-delay time + rounds x RTT + bytes / bandwidth).
# Needs root. Results: runs/netns/<name>.{json,md}.
#
#   bench/netns.sh            # tiny model (fast) and smollm2 + bolt, LAN and WAN presets, ttp dealer
#   QUICK=1 bench/netns.sh    # tiny model only
#   LINKS=lan,wan,100:10 DEALER=local TOKENS=2 bench/netns.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PMPC=${PMPC:-.venv/bin/pmpc}
OUT=${OUT:-runs/netns}
LINKS=${LINKS:-lan,wan}
DEALER=${DEALER:-ttp}
TOKENS=${TOKENS:-2}
TIMEOUT=${TIMEOUT:-600}
mkdir -p "$OUT"
if [ "$(id -u)" != 0 ]; then echo "bench/netns.sh: needs root (ip netns, TUN devices)" >&2; exit 2; fi

run() {  # name model protocol ids
  local name=$1 model=$2 proto=$3 ids=$4
  echo "== $name: $model / $proto, dealer $DEALER, links $LINKS, $TOKENS new tokens" >&2
  nice "$PMPC" deploy netlab -m "$model" -p "$proto" --ids "$ids" -n "$TOKENS" --dealer "$DEALER" \
      --links "$LINKS" --timeout "$TIMEOUT" --json "$OUT/$name.json" | tee "$OUT/$name.md"
}

run "tiny-exact-$DEALER" tiny-random-llama exact 1,2,3,4,5,6,7,8
if [ -z "${QUICK:-}" ]; then
  # "What is the capital of France?" in SmolLM2's chat template is ~30 tokens; 8 ids keep it short
  run "smollm2-bolt-$DEALER" smollm2 bolt 1,504,3060,314,253,3575,282,4649
fi
