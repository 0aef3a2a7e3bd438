"""Prune + int8 speed in ONNX Runtime: ResNet-56 layouts at ~50% of parameters, each in fp32 and int8.

Random weights (latency does not depend on them); every graph timed in one interleaved run against
the dense fp32 model. The int8 graphs are ONNX Runtime static quantization (U8S8, QDQ, per-channel:
the `--method ptq` path; QAT graphs have the same layout and speed).
Usage: python benchmarks/chain_layout_latency.py  ->  benchmarks/results/chain_layout_latency.json
"""
import argparse
import copy
import json
from pathlib import Path

import torch

from compress1img.export import onnx_model_bytes
from compress1img.latency import compare_latency
from compress1img.models import create_model_from_name
from compress1img.pruning import PruneConfig, count, drop_block, make_prunable, prune_to_budget
from compress1img.quantization import ptq_onnx_bytes

# The blocks `--drop-blocks 6` chose on the real ResNet-56 (benchmarks/results/prune-p50-drop6).
DROPPED_6 = ("layer2.4", "layer1.5", "layer2.5", "layer2.7", "layer2.8", "layer1.8")
# Twelve: the last six blocks of stages 1 and 2 (16% of the parameters, 44% of the MACs).
DROPPED_12 = tuple(f"layer{s}.{i}" for s in (1, 2) for i in range(3, 9))
layouts = {
    "channels, multiples of 8 (default)": ((), PruneConfig(sparsity=0.5)),
    "channels, multiples of 16": ((), PruneConfig(sparsity=0.5, round_to=16)),
    "6 blocks dropped + channels (--drop-blocks 6)": (DROPPED_6, PruneConfig(sparsity=0.5)),
    "12 blocks dropped + channels": (DROPPED_12, PruneConfig(sparsity=0.5)),
    "12 blocks dropped + channels, multiples of 16": (DROPPED_12, PruneConfig(sparsity=0.5, round_to=16)),
}


def main() -> None:
    argparse.ArgumentParser(description=__doc__.splitlines()[0]).parse_args()
    torch.manual_seed(0)
    dense, _ = create_model_from_name("cifar_resnet56", num_classes=10)
    dense.eval()
    example = torch.zeros(1, 3, 32, 32)
    macs, params = count(dense, example)
    calibration = torch.randn(256, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    fp32 = onnx_model_bytes(dense, (3, 32, 32))
    models, rows = {"dense": fp32, "dense int8": ptq_onnx_bytes(fp32, calibration)}, {}
    for name, (dropped, config) in layouts.items():
        pruned = copy.deepcopy(dense)
        make_prunable(pruned)
        for block in dropped:
            drop_block(pruned, block)
        prune_to_budget(pruned, example, config, int(params * 0.5), 10, reference=params)
        pruned_macs, pruned_params = count(pruned, example)
        rows[name] = {"blocks_dropped": len(dropped), "params_removed": 1 - pruned_params / params,
                      "macs_removed": 1 - pruned_macs / macs,
                      "inner_widths": sorted({m.out_channels for n, m in pruned.named_modules()
                                              if n.endswith("conv1")})}
        models[name] = onnx_model_bytes(pruned, (3, 32, 32))
        models[f"{name} int8"] = ptq_onnx_bytes(models[name], calibration)
    latency = compare_latency(models, (3, 32, 32), rounds=9, threads=2)

    def speedup(graph: str, batch: str) -> float:
        return latency["dense"][f"{batch}_ms"] / latency[graph][f"{batch}_ms"]

    rows = {"dense": {"blocks_dropped": 0, "params_removed": 0.0, "macs_removed": 0.0, "inner_widths": [16, 32, 64]},
            **rows}
    for name, row in rows.items():
        fp32_name, int8_name = ("dense", "dense int8") if name == "dense" else (name, f"{name} int8")
        row.update({f"{kind}_speedup_{b}": speedup(graph, b)
                    for kind, graph in (("fp32", fp32_name), ("int8", int8_name)) for b in ("b1", "b32")})
    out = Path("benchmarks/results/chain_layout_latency.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"latency_ms": latency, "layouts": rows}, indent=1))
    print("| layout, ~50% of parameters | MACs removed | inner widths | fp32 speed-up b1 / b32 "
          "| int8 speed-up b1 / b32 |")
    print("|---|---|---|---|---|")
    for name, row in rows.items():
        print(f"| {name} | {100 * row['macs_removed']:.1f}% | {row['inner_widths']} | "
              f"{row['fp32_speedup_b1']:.2f}x / {row['fp32_speedup_b32']:.2f}x | "
              f"{row['int8_speedup_b1']:.2f}x / {row['int8_speedup_b32']:.2f}x |")


if __name__ == "__main__":
    main()
