"""Remove half the parameters of the bundled CIFAR-10 ResNet-20 and heal it on one image.

    python examples/prune_api.py [--steps 300] [--out runs/example-prune]
"""
import argparse

from compress1img import DistillConfig, PruneConfig, RunConfig, bundled_teacher, load_model, prune

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--steps", type=int, default=300, help="healing steps")
parser.add_argument("--out", default="runs/example-prune", help="output folder")
args = parser.parse_args()

model = bundled_teacher()  # or load_model("weights.th", arch="cifar_resnet56"), or your own nn.Module
result = prune(model, "photos", PruneConfig(sparsity=0.5), heal=DistillConfig(steps=args.steps),
               run=RunConfig(out=args.out, overwrite=True))
report = result.report
print(f"{100 * report['params_removed']:.1f}% of the parameters removed, "
      f"{report['speedup_b32']:.2f}x faster at batch 32 in ONNX Runtime, "
      f"{report['holdout_agreement']:.1f}% agreement with the original on held-out patches")

pruned = result.model.module  # the pruned nn.Module, ready to use
reloaded = load_model(f"{args.out}/model.pt")  # and the saved copy reloads without pickled code
assert sum(p.numel() for p in reloaded.module.parameters()) == sum(p.numel() for p in pruned.parameters())
print(sum(p.numel() for p in pruned.parameters()), "parameters")
