#!/usr/bin/env bash
# From-scratch distillation of the real CIFAR-10 ResNet-56 into a ResNet-20 on one image,
# at three training budgets, plus the throughput check. Results in benchmarks/results/.
# Usage: bash benchmarks/distill_budgets.sh [SHARED_DATA_DIR]   (default: benchmarks/paths.sh's DATA)
# MATCH=logits trains on the KL of the logits, as the table in docs/benchmarks.md was (default: auto, which
# gives the ResNet-20 a copy of the teacher's classifier and trains it on the teacher's last feature map).
set -euo pipefail
if [ $# -gt 0 ]; then DATA=$1; fi
source "$(dirname "${BASH_SOURCE[0]}")/paths.sh"  # DATA, R56, CIFAR_TEST, ANIMALS
OUT=benchmarks/results
MATCH=${MATCH:-auto}
mkdir -p "$OUT"
python benchmarks/train_throughput.py --teacher "$R56" \
    --arch cifar_resnet56 --student cifar_resnet20 --image "$ANIMALS" > "$OUT/throughput.json"
for steps in 500 1500 4500; do
    compress1img distill --recipe distill-cifar-r56-r20 \
        --teacher "$R56" --image "$ANIMALS" \
        --eval-data "$CIFAR_TEST" --steps "$steps" --eval-every $((steps / 6)) --match "$MATCH" \
        --out "$OUT/distill-r56-r20-$steps" --overwrite 2> "$OUT/distill-r56-r20-$steps.log"
done
