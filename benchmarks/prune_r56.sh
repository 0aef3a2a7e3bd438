#!/usr/bin/env bash
# Pruning the real CIFAR-10 ResNet-56 (akamaster) on one image, healed by self-distillation.
# Usage: bash benchmarks/prune_r56.sh [ROW ...]
#   rows: p50 p50-all p30 p70 u50 u75 noise50 noheal50 (default: all of them), p50-lr3 (lr 3e-3), p50-long (2x STEPS),
#         p50-drop6 (6 whole blocks dropped, channels for the rest of the 50%), p50-drop6-long (the same, 2x STEPS),
#         repair50 (no healing, least-squares repair only), p50-6k and p50-drop6-6k (4x STEPS, bf16 steps),
#         p50-12k and p50-drop6-12k (8x STEPS), p50-drop12 (12 whole blocks dropped: the layout int8 makes >= 3.5x),
#         p50-drop12-6k (the same, 4x STEPS)
# MATCH=logits heals on the KL of the logits, as every row docs/benchmarks.md quotes was (default: auto).
# IMAGE=SOURCE heals on another input than Animals (e.g. photos, the bundled set); EMA=DECAY passes --ema DECAY;
# TAG=-SUFFIX is added to the row's folder name, so that such a run keeps the plain row's results.
# Results in benchmarks/results/prune-ROW[TAG]/ (report.json, report.md); docs/benchmarks.md quotes them.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/paths.sh"  # DATA, R56, CIFAR_TEST, ANIMALS
STEPS=${STEPS:-1500}
MATCH=${MATCH:-auto}
OUT=benchmarks/results
mkdir -p "$OUT"
TAG=${TAG:-}
common=("$R56" --arch cifar_resnet56 --eval-data "$CIFAR_TEST"
        --steps "$STEPS" --match "$MATCH" --eval-every 250 --overwrite)
[ -z "${EMA:-}" ] || common+=(--ema "$EMA")
animals=${IMAGE:-$ANIMALS}
run() {  # name, options...
    local name=$1$TAG; shift
    compress1img prune "${common[@]}" --out "$OUT/prune-$name" "$@" 2> "$OUT/prune-$name.log"
}
rows=("$@"); [ ${#rows[@]} -gt 0 ] || rows=(p50 p50-all p30 p70 u50 u75 noise50 noheal50)
for row in "${rows[@]}"; do
    case $row in
        p50) run p50 --sparsity 0.5 --image "$animals" ;;
        p50-all) run p50-all --sparsity 0.5 --channels all --image "$animals" ;;
        p50-lr3) run p50-lr3 --sparsity 0.5 --lr 0.003 --image "$animals" ;;
        p50-drop6) run p50-drop6 --sparsity 0.5 --drop-blocks 6 --image "$animals" ;;
        p50-drop12) run p50-drop12 --sparsity 0.5 --drop-blocks 12 --image "$animals" ;;
        p50-drop12-6k) run p50-drop12-6k --sparsity 0.5 --drop-blocks 12 --steps $((STEPS * 4)) --eval-every 1000 \
                           --image "$animals" ;;
        p50-drop6-long) run p50-drop6-long --sparsity 0.5 --drop-blocks 6 --steps $((STEPS * 2)) --image "$animals" ;;
        p50-long) run p50-long --sparsity 0.5 --steps $((STEPS * 2)) --image "$animals" ;;
        p50-6k) run p50-6k --sparsity 0.5 --steps $((STEPS * 4)) --eval-every 1000 --image "$animals" ;;
        p50-drop6-6k) run p50-drop6-6k --sparsity 0.5 --drop-blocks 6 --steps $((STEPS * 4)) --eval-every 1000 \
                          --image "$animals" ;;
        p50-12k) run p50-12k --sparsity 0.5 --steps $((STEPS * 8)) --eval-every 1000 --image "$animals" ;;
        p50-drop6-12k) run p50-drop6-12k --sparsity 0.5 --drop-blocks 6 --steps $((STEPS * 8)) --eval-every 1000 \
                           --image "$animals" ;;
        noheal50) run noheal50 --sparsity 0.5 --no-heal --reconstruct-patches 0 --image "$animals" ;;
        repair50) run repair50 --sparsity 0.5 --no-heal --image "$animals" ;;  # the same cut, repaired on patches
        p30) run p30 --sparsity 0.3 --image "$animals" ;;
        p70) run p70 --sparsity 0.7 --image "$animals" ;;
        u50) run u50 --sparsity 0.5 --mode unstructured --image "$animals" ;;
        u75) run u75 --sparsity 0.75 --mode unstructured --image "$animals" ;;
        noise50) run noise50 --sparsity 0.5 --channels all --image noise ;;  # the p50-all cut, healed on noise
        *) echo "unknown row $row" >&2; exit 2 ;;
    esac
done
