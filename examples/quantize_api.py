"""Quantize the bundled CIFAR-10 ResNet-20 to int8 for ONNX Runtime, then prune + quantize in one run.

    python examples/quantize_api.py [--steps 200] [--out runs/example-int8]
"""
import argparse

from compress1img import (DistillConfig, PruneConfig, PTQConfig, QATConfig, RunConfig, bundled_teacher, compress,
                          quantize)

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--steps", type=int, default=200, help="healing and quantization-aware training steps")
parser.add_argument("--out", default="runs/example-int8", help="output folder")
args = parser.parse_args()

model = bundled_teacher()  # or load_model("weights.th", arch="cifar_resnet56"), or a pruned model.pt

# Post-training quantization: ONNX Runtime calibrates on patches of the image; seconds, no training.
ptq = quantize(model, "photos", PTQConfig(), run=RunConfig(out=f"{args.out}/ptq", overwrite=True))
# Quantization-aware training: the fake-quantized copy learns to match the original on patches.
qat = quantize(model, "photos", QATConfig(training=DistillConfig(steps=args.steps, lr=1e-5)),
               run=RunConfig(out=f"{args.out}/qat", overwrite=True))
for name, result in (("ptq", ptq), ("qat", qat)):
    report = result.report
    print(f"{name}: {report['holdout_agreement']:.1f}% agreement with fp32 on held-out patches, "
          f"{report['speedup_b32']:.2f}x faster at batch 32, {report['onnx_bytes'] / 1e3:.0f} kB "
          f"(fp32 {report['dense_onnx_bytes'] / 1e3:.0f} kB)")

# Both in one run: remove half the parameters, heal, then quantize (here by calibration; QATConfig works
# the same way); one report.
both = compress(model, "photos", prune=PruneConfig(sparsity=0.5), heal=DistillConfig(steps=args.steps),
                quantize=PTQConfig(), run=RunConfig(out=f"{args.out}/p50-int8", overwrite=True))
print(f"pruned + int8: {both.report['speedup_b32']:.2f}x faster than the original at batch 32")
