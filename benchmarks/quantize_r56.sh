#!/usr/bin/env bash
# Int8 quantization of the real CIFAR-10 ResNet-56 (akamaster) on one image.
# Usage: bash benchmarks/quantize_r56.sh [ROW ...]
#   rows: ptq qat100 qat250 qat500 qat1000 chain-ptq chain-qat (default: ptq qat100 qat250 qat500)
#   chain-*: quantize the pruned model of `prune_r56.sh p50` (run that first); it is its own teacher here.
#   chain-6k-qat, chain-drop6-6k-qat, chain-12k-qat, chain-drop12-qat, chain-drop12-6k-qat: the same for
#   `prune_r56.sh p50-6k` / `p50-drop6-6k` / `p50-12k` / `p50-drop12` / `p50-drop12-6k`
# IMAGE=SOURCE quantizes on another input than Animals (e.g. photos); EMA=DECAY passes --ema DECAY; TAG=-SUFFIX is
# added to the row's folder name and, for chain-* rows, to the pruned model's (prune_r56.sh's TAG).
# Results in benchmarks/results/quantize-ROW[TAG]/ (report.json, report.md); docs/benchmarks.md quotes them.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/paths.sh"  # DATA, R56, CIFAR_TEST, ANIMALS
OUT=benchmarks/results
mkdir -p "$OUT"
r56=("$R56" --arch cifar_resnet56)
TAG=${TAG:-}
common=(--eval-data "$CIFAR_TEST" --image "${IMAGE:-$ANIMALS}" --eval-every 100 --overwrite)
[ -z "${EMA:-}" ] || common+=(--ema "$EMA")
run() {  # name, options...
    local name=$1$TAG; shift
    compress1img quantize "$@" "${common[@]}" --out "$OUT/quantize-$name" 2> "$OUT/quantize-$name.log"
}
rows=("$@"); [ ${#rows[@]} -gt 0 ] || rows=(ptq qat100 qat250 qat500)
for row in "${rows[@]}"; do
    case $row in
        ptq) run ptq "${r56[@]}" --method ptq ;;
        qat*) run "$row" "${r56[@]}" --method qat --steps "${row#qat}" ;;
        chain-ptq) run chain-ptq "$OUT/prune-p50$TAG/model.pt" --method ptq ;;
        chain-qat) run chain-qat "$OUT/prune-p50$TAG/model.pt" --method qat --steps 250 ;;
        chain-6k-qat) run chain-6k-qat "$OUT/prune-p50-6k$TAG/model.pt" --method qat --steps 250 ;;
        chain-12k-qat) run chain-12k-qat "$OUT/prune-p50-12k$TAG/model.pt" --method qat --steps 250 ;;
        chain-drop12-qat) run chain-drop12-qat "$OUT/prune-p50-drop12$TAG/model.pt" --method qat --steps 250 ;;
        chain-drop12-6k-qat) run chain-drop12-6k-qat "$OUT/prune-p50-drop12-6k$TAG/model.pt" --method qat --steps 250 ;;
        chain-drop6-6k-qat) run chain-drop6-6k-qat "$OUT/prune-p50-drop6-6k$TAG/model.pt" --method qat --steps 250 ;;
        *) echo "unknown row $row" >&2; exit 2 ;;
    esac
done
