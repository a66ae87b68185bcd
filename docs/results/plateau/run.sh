#!/usr/bin/env bash
# The E1 plateau budget, run by run in the order it was trained here: every run is one
#   attentionrnn e1 reproduce --budget plateau --out OUT --datasets D --methods M --seeds S
# (the inverse task: --budget plateau-digit --task digit --out OUT/digit)
# call (an interrupted run resumes from its checkpoint.pt; finished runs are skipped), the most
# informative first (CTX and ARNN on MDIST, MBG, then the other rows), at most
# JOBS at once with one thread each. Running the budget in one call gives the same runs:
#   attentionrnn e1 reproduce --budget plateau --out docs/results/plateau
#   attentionrnn e1 reproduce --budget plateau-digit --task digit --out docs/results/plateau/digit
# Usage: bash docs/results/plateau/run.sh MNIST_DIR   (env: OUT, JOBS, PYTHON)
set -uo pipefail
MNIST=${1:?usage: run.sh MNIST_DIR (folder of the MNIST IDX files)}
OUT=${OUT:-$(cd "$(dirname "$0")" && pwd)}
JOBS=${JOBS:-2}
PYTHON=${PYTHON:-python}
LOGS=${LOGS:-$OUT/logs}
mkdir -p "$LOGS"
# run from the log folder: `python -m` puts the working directory first on sys.path, so started
# from a checkout it would import that checkout's package instead of the one installed or on
# PYTHONPATH
cd "$LOGS"
RUNS=()
for s in 0 1 2 3 4; do RUNS+=("color mdist ctx $s" "color mdist arnn $s"); done
for s in 0 1 2 3 4; do RUNS+=("color mbg ctx $s" "color mbg arnn $s"); done
for d in mdist mbg; do for m in local arnn_ind brnn arnn_quad; do for s in 0 1; do
  RUNS+=("color $d $m $s"); done; done; done
# the inverse task on MDIST, CTX and ARNN with 3 seeds: budget plateau-digit, into OUT/digit
for s in 0 1 2; do RUNS+=("digit mdist ctx $s" "digit mdist arnn $s"); done
for run in "${RUNS[@]}"; do
  set -- $run; task=$1; d=$2; m=$3; s=$4
  out=$OUT; budget=plateau
  [ "$task" = digit ] && out=$OUT/digit budget=plateau-digit  # the inverse task: its own folder
  run_dir=$out/runs/$d/$m/seed$s
  [ -f "$run_dir/metrics.json" ] && continue
  # training now in another process (its lock is held): leave it to that process
  [ -f "$run_dir/.lock" ] && ! flock -n "$run_dir/.lock" true && continue
  while [ "$(pgrep -fc 'attentionrnn.cli e1 (reproduce|train)')" -ge "$JOBS" ]; do sleep 20; done
  if [ "$task" = digit ]; then  # the same data file as the colour task
    mkdir -p "$out/data"; ln -sf "$OUT"/data/"$d"_*.npz "$out/data/" 2>/dev/null
  fi
  echo "$(date +%T) start $task $d $m seed $s"
  "$PYTHON" -m attentionrnn.cli e1 reproduce --budget "$budget" --out "$out" --task "$task" \
    --datasets "$d" --methods "$m" --seeds "$s" --precision bf16 --jobs 1 --threads 1 \
    --no-progress --mnist "$MNIST" > "$LOGS/$task-$d-$m-$s.log" 2>&1 &
  sleep 60
done
wait
echo "$(date +%T) all done"
