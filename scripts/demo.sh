#!/usr/bin/env bash
# The main job of the README: installs if needed, then runs the end-to-end demo (offline default
# data: generates a small MREF set, trains CTX and AttentionRNN briefly, prints the comparison and
# writes the mask figure). Extra arguments go to "attentionrnn demo".
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
exec "${PYTHON:-python3}" -m attentionrnn e1 demo "$@"
