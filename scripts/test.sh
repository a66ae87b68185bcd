#!/usr/bin/env bash
# The test command of the README: installs if needed, then runs the default test suite
# (slow tests are excluded by pyproject's addopts; add "-m slow" to run them). Extra arguments go
# to pytest. Set ATTENTIONRNN_MNIST to a folder with the MNIST IDX files to run the integration
# tests on full MNIST.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
exec "${PYTHON:-python3}" -m pytest "$@"
