#!/usr/bin/env bash
# The GPU check of issue 36, in one command, from the repository root of a fresh clone on a machine
# with a CUDA GPU and a CUDA build of PyTorch:
#
#     bash benchmarks/gpu_check.sh
#
# 1. checks that PyTorch sees a CUDA GPU (exits 1 with one line saying so where it does not);
# 2. installs the package with its test and gpu extras (scripts/install.sh keeps your PyTorch);
# 3. runs the GPU tests: the compiled Triton kernels against the per-pixel reference and against
#    the PyTorch BPTT scan (tests/test_triton_cuda.py), the layer on CUDA, and the interpreter tests
#    of the same kernels on the CPU (tests/test_triton_scan.py);
# 4. runs benchmarks/bench_layers.py on CUDA: the Triton scan, the PyTorch BPTT scan and the local
#    3x3 baseline, in float32 and under bf16 autocast;
# 5. writes benchmarks/results/gpu_check_<UTC date and time>.json and .md: git commit, GPU, driver,
#    PyTorch, CUDA and Triton versions, each test run's exit status and summary, the timings.
#
# It exits non-zero if a test or the benchmark failed (after writing the result files). Settings, by environment:
#   PYTHON (python3), GPU_CHECK_SIZES ("14 28 56 100"), GPU_CHECK_BATCH (32),
#   GPU_CHECK_REPEATS (5), GPU_CHECK_SKIP_INSTALL=1 to use the installed package as it is.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
SIZES=${GPU_CHECK_SIZES:-14 28 56 100}
BATCH=${GPU_CHECK_BATCH:-32}
REPEATS=${GPU_CHECK_REPEATS:-5}

# --- 1. a CUDA GPU, first ---------------------------------------------------------------------
if ! "$PYTHON" -c "import torch" 2>/dev/null; then
  echo "gpu_check: PyTorch is not installed for $PYTHON: install a CUDA build of PyTorch first" >&2
  exit 1
fi
if ! "$PYTHON" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  "$PYTHON" -c "import torch; print(f'gpu_check: no CUDA GPU: torch {torch.__version__} (CUDA build: {torch.version.cuda}) sees no CUDA device; nothing was run')" >&2
  exit 1
fi

# --- 2. install ---------------------------------------------------------------------------------
if [ "${GPU_CHECK_SKIP_INSTALL:-0}" != 1 ]; then
  PYTHON="$PYTHON" bash scripts/install.sh
fi
if ! "$PYTHON" -c "import triton" 2>/dev/null; then
  echo "gpu_check: Triton does not import: pip install 'attentionrnn[gpu]' (or triton)" >&2
  exit 1
fi

stamp=$(date -u +%Y-%m-%d_%H%M%S)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p benchmarks/results

# --- 3. tests (each run in its own process: Triton's mode is fixed when it is imported) ----------
run_tests() {  # name, then the command: its output goes to the screen and NAME.log, its status to NAME.rc
  local name=$1
  shift
  echo "== $name: $*"
  set +e
  "$@" 2>&1 | tee "$work/$name.log"
  local rc=${PIPESTATUS[0]}
  set -e
  echo "$rc" >"$work/$name.rc"
}
run_tests cuda env -u TRITON_INTERPRET "$PYTHON" -m pytest -q -p no:cacheprovider \
  tests/test_triton_cuda.py tests/test_layer.py::test_runs_on_cuda
run_tests interpreter env TRITON_INTERPRET=1 "$PYTHON" -m pytest -q -p no:cacheprovider \
  tests/test_triton_scan.py

# --- 4. benchmark -------------------------------------------------------------------------------
echo "== bench_layers on cuda: sizes $SIZES, batch $BATCH, $REPEATS repeats, fp32 and bf16"
# shellcheck disable=SC2086  # SIZES is a list of numbers
run_tests bench env -u TRITON_INTERPRET "$PYTHON" benchmarks/bench_layers.py --device cuda \
  --precisions fp32 bf16 --sizes $SIZES --batch "$BATCH" --repeats "$REPEATS" --out "$work/bench"

# --- 5. result files ----------------------------------------------------------------------------
out="benchmarks/results/gpu_check_$stamp"
if "$PYTHON" - "$work" "$out" <<'EOF'
import json
import subprocess
import sys
from pathlib import Path

import torch
import triton

work, out = Path(sys.argv[1]), sys.argv[2]


def command(*args: str) -> str:
    try:
        return subprocess.run(args, capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


commit = command("git", "rev-parse", "HEAD")
dirty = command("git", "status", "--porcelain", "--untracked-files=no")
props = torch.cuda.get_device_properties(0)
meta = {
    "commit": commit + (" (with uncommitted changes)" if dirty not in ("", "unknown") else ""),
    "gpu": torch.cuda.get_device_name(0),
    "capability": ".".join(map(str, torch.cuda.get_device_capability(0))),
    "gpu_memory_gib": round(props.total_memory / 2**30, 1),
    "driver": command("nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"),
    "torch": torch.__version__,
    "cuda": torch.version.cuda,
    "triton": triton.__version__,
}
tests = {}
for name in ("cuda", "interpreter", "bench"):
    lines = (work / f"{name}.log").read_text().strip().splitlines()
    tests[name] = {
        "returncode": int((work / f"{name}.rc").read_text()),
        "summary": lines[-1] if lines else "",
    }
results = work / "bench" / "bench_layers.json"
bench = json.loads(results.read_text()) if results.exists() else None
if bench is None:
    table = "bench_layers.py failed:\n\n```\n" + (work / "bench.log").read_text()[-3000:] + "\n```"
else:
    table = (work / "bench" / "bench_layers.md").read_text().split("\n\nTargets:")[0]
# Every GPU test must have run: a skip on a machine with a GPU is a failure of the check.
tests["cuda"]["all_ran"] = "skipped" not in tests["cuda"]["summary"]
passed = all(t["returncode"] == 0 for t in tests.values()) and tests["cuda"]["all_ran"]
md = [
    f"# GPU check: {meta['gpu']}",
    "",
    f"- commit {meta['commit']}",
    f"- GPU {meta['gpu']} (compute capability {meta['capability']}, "
    f"{meta['gpu_memory_gib']} GiB), driver {meta['driver']}",
    f"- torch {meta['torch']} (CUDA {meta['cuda']}), triton {meta['triton']}",
    "",
    "## Runs" + ("" if passed else " (FAILED: a run failed or a GPU test was skipped)"),
    "",
    *(f"- {name}: exit {t['returncode']}, {t['summary']}" for name, t in tests.items()),
    "",
    "## Layer timings (benchmarks/bench_layers.py --device cuda, one run)",
    "",
    table.strip(),
    "",
]
Path(out + ".md").write_text("\n".join(md))
result = {"meta": meta, "passed": passed, "runs": tests, "bench": bench}
Path(out + ".json").write_text(json.dumps(result, indent=2))
print(f"wrote {out}.json and {out}.md")
sys.exit(0 if passed else 1)
EOF
then
  echo "gpu_check: all GPU tests ran and passed; timings in $out.md"
else
  echo "gpu_check: FAILED: a run failed or a GPU test was skipped (see $out.md)" >&2
  exit 1
fi
