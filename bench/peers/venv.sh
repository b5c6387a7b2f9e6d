#!/usr/bin/env bash
# Builds the peer venv for SecretFlow SPU (it pins numpy < 2 and its own jax, so it cannot share
# pmpc's environment). Idempotent: does nothing when the venv already imports spu at the pinned version.
# Usage: bench/peers/venv.sh [VENV]   (default $PMPC_PEERS_VENV or ~/.cache/pmpc/peers-venv)
set -euo pipefail
VENV="${1:-${PMPC_PEERS_VENV:-$HOME/.cache/pmpc/peers-venv}}"
SPU_VERSION="0.9.5"
PY="${PYTHON:-python3.11}"
if [ -x "$VENV/bin/python" ] && "$VENV/bin/python" -c "import spu, sys; sys.exit(spu.__version__ != '$SPU_VERSION')" 2>/dev/null; then
  echo "$VENV"; exit 0
fi
"$PY" -m venv "$VENV" >&2
"$VENV/bin/pip" install -q --upgrade pip >&2
"$VENV/bin/pip" install -q "spu==$SPU_VERSION" >&2
"$VENV/bin/python" -c "import spu, jax, numpy; print('spu', spu.__version__, 'jax', jax.__version__, 'numpy', numpy.__version__)" >&2
echo "$VENV"
