#!/usr/bin/env bash
# E1 plateau pilot: CTX and ARNN on MDIST, 80 px, compressed PAN schedule (decay from epoch 10
# every 3 epochs), 24 epochs, no early stop; run from a frozen copy of the code.
set -uo pipefail
export PYTHONPATH=/work/frozen
cd /work/runs/pilot
D=data/mdist_8850img_80px_seed0_mnist.npz
[ -f "$D" ] || python -m attentionrnn.cli e1 generate mdist --images 8850 --seed 0 --canvas 80 --out "$D" --mnist /work/shared/data/mnist --no-progress
COMMON="--dataset mdist --canvas 80 --data $D --epochs 24 --lr-decay-start 10 --lr-decay-every 3 --patience 24 --threads 1 --precision bf16 --no-progress"
python -m attentionrnn.cli e1 train $COMMON --attention arnn --seed 0 --out runs/mdist/arnn/seed0 > arnn.log 2>&1 &
python -m attentionrnn.cli e1 train $COMMON --attention ctx --seed 0 --out runs/mdist/ctx/seed0 > ctx.log 2>&1
wait
