#!/usr/bin/env bash
# Installs attentionrnn (editable) with its test extras. PyTorch first: when it is missing we ask
# pip for exactly torch==2.13.0, which on the reference machines is a local CPU build; a bare
# "pip install torch" would pull the CUDA build (gigabytes). Elsewhere, install PyTorch your way
# first (CPU or CUDA) and this script keeps it.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if ! "$PYTHON" -c "import torch" 2>/dev/null; then
  echo "[install] PyTorch missing: installing torch==2.13.0 (CPU build)"
  "$PYTHON" -m pip install --quiet torch==2.13.0
fi
"$PYTHON" -m pip install --quiet --disable-pip-version-check -e ".[experiments,test]" 2>&1 \
  | grep -v "Running pip as the 'root' user" || true
# The "gpu" extra (Triton, pyproject's optional-dependencies): the Triton scan on CUDA devices,
# and on CPU its tests under Triton's interpreter. Installed on its own with --no-deps so that pip
# never touches PyTorch; a Triton already present (a CUDA build of PyTorch pins its own) is kept.
# Where no Triton wheel exists (macOS, Windows), the Triton tests skip with a reason.
if ! "$PYTHON" -c "import triton" 2>/dev/null; then
  if ! "$PYTHON" -m pip install --quiet --disable-pip-version-check --root-user-action=ignore \
    --no-deps "triton>=3.0"; then
    echo "[install] Triton could not be installed: the Triton scan's tests will be skipped"
  fi
fi
"$PYTHON" -c "import attentionrnn, torch; print(f'[install] attentionrnn {attentionrnn.__version__}, torch {torch.__version__}')"
"$PYTHON" -c "import triton; print(f'[install] triton {triton.__version__} (gpu extra)')" 2>/dev/null || true
