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
"$PYTHON" -c "import attentionrnn, torch; print(f'[install] attentionrnn {attentionrnn.__version__}, torch {torch.__version__}')"
