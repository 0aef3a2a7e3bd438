#!/usr/bin/env bash
# From-scratch distillation of the real CIFAR-10 ResNet-56 into a ResNet-20 on one image,
# at three training budgets, plus the throughput check. Results in benchmarks/results/.
# Usage: bash benchmarks/distill_budgets.sh [SHARED_DATA_DIR]
set -euo pipefail
DATA=${1:-../shared/data}
OUT=benchmarks/results
mkdir -p "$OUT"
python benchmarks/train_throughput.py --teacher "$DATA/weights/cifar10_resnet56_akamaster.th" \
    --arch cifar_resnet56 --student cifar_resnet20 --image "$DATA/images/animals.jpg" > "$OUT/throughput.json"
for steps in 500 1500 4500; do
    compress1img distill --recipe recipes/distill-cifar-r56-r20.toml \
        --teacher "$DATA/weights/cifar10_resnet56_akamaster.th" --image "$DATA/images/animals.jpg" \
        --eval-data "$DATA/cifar10_test_jpeg75.npz" --steps "$steps" --eval-every $((steps / 6)) \
        --out "$OUT/distill-r56-r20-$steps" --overwrite 2> "$OUT/distill-r56-r20-$steps.log"
done
