#!/usr/bin/env bash
# E1 design screening (docs/e1.md, "Design screening"): each candidate of the layer trained on
# MDIST at 80 px for 10 epochs at PAN's lr 0.003 (batch 200, bf16), seeds 0 and 1, the same data
# as the plateau pilot; the choice is made on the validation split only:
#   attentionrnn e1 masks docs/results/screening --reference arnn
# Runs that have finished (metrics.json) are skipped; at most JOBS train at once.
# Usage: bash docs/results/screening/run.sh [DATA.npz]   (default: generates the pilot's data)
set -uo pipefail
cd "$(dirname "$0")/../../.."
OUT=docs/results/screening/runs/mdist
DATA=${1:-}
JOBS=${JOBS:-2}
LOGS=${LOGS:-$(mktemp -d)}
mkdir -p "$OUT"
if [ -z "$DATA" ]; then
  DATA=${ATTENTIONRNN_DATA_DIR:-data}/mdist_8850img_80px_seed0.npz
  [ -f "$DATA" ] || attentionrnn e1 generate mdist --images 8850 --seed 0 --canvas 80 --out "$DATA"
fi
COMMON=(--dataset mdist --canvas 80 --data "$DATA" --epochs 10 --lr-decay-start 10
        --lr-decay-every 3 --patience 10 --threads 1 --precision bf16 --no-progress)
CANDIDATES=(
  "arnn 0 arnn" "arnn-mul 0 arnn --query-fusion mul"
  "arnn 1 arnn" "arnn-mul 1 arnn --query-fusion mul"
  "ctx 0 ctx" "ctx-l4sigmoid 0 ctx --layer4-gate sigmoid"
  "arnn-nofb 0 arnn --no-feedback" "arnn-h32 0 arnn --attention-hidden 32"
  "ctx 1 ctx" "ctx-l4sigmoid 1 ctx --layer4-gate sigmoid"
  "arnn-nofb 1 arnn --no-feedback" "arnn-h32 1 arnn --attention-hidden 32"
)
for candidate in "${CANDIDATES[@]}"; do
  set -- $candidate; row=$1; seed=$2; method=$3; shift 3
  [ -f "$OUT/$row/seed$seed/metrics.json" ] && continue
  while [ "$(jobs -rp | wc -l)" -ge "$JOBS" ]; do sleep 10; done
  echo "$(date +%T) $row seed $seed (log: $LOGS/$row-seed$seed.log)"
  attentionrnn e1 train "${COMMON[@]}" --attention "$method" --seed "$seed" "$@" \
    --out "$OUT/$row/seed$seed" > "$LOGS/$row-seed$seed.log" 2>&1 &
done
wait
attentionrnn e1 masks docs/results/screening --reference arnn
