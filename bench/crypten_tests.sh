#!/usr/bin/env bash
# CrypTen's own unit tests (test_arithmetic, test_binary, test_mpc) against pmpc's runtime.
#
#   bench/crypten_tests.sh CRYPTEN [OUT_DIR]
#
# CRYPTEN: a CrypTen checkout (a work tree holding test/), or a bare git directory of the
# repository, whose tests are taken at $CRYPTEN_REV (default: 891fa47, the tree that PyPI's
# crypten 0.4.1 was built from: its crypten/ matches the installed package file for file, bar the
# version string). Nothing is fetched here. The tests are copied to a temporary directory (never
# into this repository) and run with bench/crypten_tests/sitecustomize.py first on PYTHONPATH,
# which makes every party and dealer process CrypTen's harness spawns join through pmpc's runtime
# (pmpc.mpc.parties.join_from_env). One line per test goes to OUT_DIR/results.txt (default: a
# temporary directory), then a summary per suite is printed.
#
# Environment: PYTHON (default: the venv of this checkout's main tree), SUITES (default: all
# below), MPC_BUDGET_S (wall budget for each test_mpc class, default 2400), NICE (default 15).
# The 3-party classes of test_mpc (Test3PC, TestRSS) are not run: pmpc runs 2 computing parties.
set -euo pipefail

here=$(cd "$(dirname "$0")/.." && pwd)
src=${1:?usage: bench/crypten_tests.sh CRYPTEN_CHECKOUT_OR_GIT_DIR [OUT_DIR]}
out=${2:-$(mktemp -d /tmp/crypten-tests-out.XXXXXX)}
rev=${CRYPTEN_REV:-891fa4709e4849ff50ace6933f20375b04b3f722}
py=${PYTHON:-$here/.venv/bin/python}
[ -x "$py" ] || py=/work/main/.venv/bin/python
suites=${SUITES:-"test.test_arithmetic test.test_binary test.test_mpc.TestTFP test.test_mpc.TestTTP"}
budget=${MPC_BUDGET_S:-2400}
nice=${NICE:-15}

tmp=$(mktemp -d /tmp/crypten-tests.XXXXXX)
trap 'rm -rf "$tmp"' EXIT
if [ -f "$src/test/multiprocess_test_case.py" ]; then
  cp -r "$src/test" "$tmp/test"
  where="$src (work tree)"
else
  # (a mirror without the large files of other folders makes git name them on stderr: not ours)
  git --git-dir="$src" archive "$rev" test 2>/dev/null | tar -x -C "$tmp"
  [ -f "$tmp/test/multiprocess_test_case.py" ] || { echo "no test/ at $rev in $src" >&2; exit 2; }
  where="$src at $rev"
fi
mkdir -p "$out"
results="$out/results.txt"
: > "$results"
head -c 32 /dev/urandom > "$tmp/psk"

cpus=$(nproc --all)  # before OMP_NUM_THREADS is set: nproc reads it
export PYTHONPATH="$here/bench/crypten_tests:$tmp:$here"
export PMPC_PSK_FILE="$tmp/psk" OMP_NUM_THREADS=1
export PYTHONWARNINGS="ignore:CrypTen is already initialized"   # the tests call crypten.init() twice
{
  echo "CrypTen tests: $where"
  echo "pmpc: $here ($(git -C "$here" rev-parse --short HEAD 2>/dev/null || echo '?'))"
  "$py" -c "import importlib.metadata as m, torch; print('crypten', m.version('crypten'), '| torch', torch.__version__)"
  echo "machine: $cpus CPUs, load $(cut -d' ' -f1-3 /proc/loadavg), $(date -u +%FT%TZ)"
} | tee "$out/conditions.txt"

for suite in $suites; do
  limit=0
  case $suite in test.test_mpc*) limit=$budget ;; esac
  t0=$(date +%s)
  # its own process group, so that a budget that runs out also ends the parties it spawned
  if [ "$limit" -gt 0 ]; then
    setsid nice -n "$nice" timeout "$limit" "$py" "$here/bench/crypten_tests/run.py" --out "$results" "$suite" \
      > "$out/${suite#test.}.log" 2>&1 &
  else
    setsid nice -n "$nice" "$py" "$here/bench/crypten_tests/run.py" --out "$results" "$suite" \
      > "$out/${suite#test.}.log" 2>&1 &
  fi
  pid=$!
  rc=0; wait $pid || rc=$?
  kill -- -$pid 2>/dev/null || true
  echo "$suite rc=$rc wall_s=$(( $(date +%s) - t0 ))$([ "$rc" = 124 ] && echo " (budget of ${limit} s ran out)")" >> "$out/walls.txt"
done

echo
echo "suite                     ran  ok  fail  error"
for suite in $suites; do
  awk -v s="$suite." '
    index($3, s) == 1 { n++; if ($1 == "ok") ok++; else if ($1 == "FAIL") f++; else if ($1 == "ERROR") e++ }
    END { printf "%-24s %4d %3d %5d %6d\n", substr(s, 1, length(s) - 1), n, ok, f, e }' "$results"
done
cat "$out/walls.txt"
echo
echo "not ok:"
grep -v '^ok ' "$results" || echo "(none)"
echo "results: $results"
