"""Where structured pruning's speed goes in ONNX Runtime: ResNet-56 layouts at ~50% of parameters.

Random weights (latency does not depend on them); all models timed in one interleaved run.
Usage: python benchmarks/prune_layout_latency.py  ->  benchmarks/results/prune_layout_latency.json
"""
import argparse
import copy
import json
from pathlib import Path

import torch

from compress1img.export import onnx_model_bytes
from compress1img.latency import compare_latency
from compress1img.models import create_model_from_name
from compress1img.pruning import PruneConfig, count, make_prunable, prune_to_budget


def main() -> None:
    argparse.ArgumentParser(description=__doc__.splitlines()[0]).parse_args()
    torch.manual_seed(0)
    dense, _ = create_model_from_name("cifar_resnet56", num_classes=10)
    dense.eval()
    example = torch.zeros(1, 3, 32, 32)
    macs, params = count(dense, example)
    first_stage = tuple(f"layer1.{i}.conv1" for i in range(9))
    layouts = {
        "internal channels, multiples of 8 (the default)": PruneConfig(sparsity=0.5),
        "same, first stage kept": PruneConfig(sparsity=0.5, ignore=first_stage),
        "multiples of 16, global": PruneConfig(sparsity=0.5, round_to=16, allocation="global"),
        "all channels (residual streams too), global": PruneConfig(sparsity=0.5, channels="all",
                                                                   allocation="global"),
    }
    models, rows = {"dense": onnx_model_bytes(dense, (3, 32, 32))}, {}
    for name, config in layouts.items():
        pruned = copy.deepcopy(dense)
        make_prunable(pruned)
        prune_to_budget(pruned, example, config, int(params * 0.5), 10, reference=params)
        pruned_macs, pruned_params = count(pruned, example)
        rows[name] = {"params_removed": 1 - pruned_params / params, "macs_removed": 1 - pruned_macs / macs,
                      "first_block_widths": [getattr(pruned, f"layer{s}")[0].conv1.out_channels for s in (1, 2, 3)]}
        models[name] = onnx_model_bytes(pruned, (3, 32, 32))
    latency = compare_latency(models, (3, 32, 32), rounds=9)
    for name in rows:
        rows[name].update({f"speedup_{b}": latency["dense"][f"{b}_ms"] / latency[name][f"{b}_ms"]
                           for b in ("b1", "b32")})
    out = Path("benchmarks/results/prune_layout_latency.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"latency_ms": latency, "layouts": rows}, indent=1))
    for name, row in rows.items():
        print(f"{name}: params -{100 * row['params_removed']:.1f}%, MACs -{100 * row['macs_removed']:.1f}%, "
              f"widths {row['first_block_widths']}, speed-up b1 {row['speedup_b1']:.2f}x, "
              f"b32 {row['speedup_b32']:.2f}x")


if __name__ == "__main__":
    main()
