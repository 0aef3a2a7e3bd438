"""Remove half the parameters of the bundled CIFAR-10 ResNet-20 and heal it on one image.

    python examples/prune_api.py [--steps 300]
"""
import argparse

from compress1img import DistillConfig, PruneConfig, bundled_teacher, load_model, prune

parser = argparse.ArgumentParser()
parser.add_argument("--steps", type=int, default=300)
parser.add_argument("--out", default="runs/example-prune")
args = parser.parse_args()

model = bundled_teacher()  # or load_model("weights.th", arch="cifar_resnet56")
report = prune(model, "china", out=args.out, overwrite=True, config=PruneConfig(sparsity=0.5),
               heal=DistillConfig(steps=args.steps))
print(f"{100 * report['params_removed']:.1f}% of the parameters removed, "
      f"{report['speedup_b32']:.2f}x faster at batch 32 in ONNX Runtime, "
      f"{report['holdout_agreement']:.1f}% agreement with the original on held-out patches")

pruned = load_model(f"{args.out}/model.pt")  # reloads without pickled code
print(sum(p.numel() for p in pruned.module.parameters()), "parameters")
