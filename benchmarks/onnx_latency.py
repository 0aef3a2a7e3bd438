"""ONNX Runtime latency of several ONNX files in one run (interleaved rounds, medians), against a dense model.

    python benchmarks/onnx_latency.py --dense WEIGHTS --arch ARCH NAME=FILE.onnx [NAME=FILE.onnx ...]

Use it to compare outputs of different commands (e.g. `prune` then `quantize`) with the
dense fp32 original exported fresh, in the same run.
"""
import argparse
import json

from compress1img.export import onnx_model_bytes
from compress1img.latency import compare_latency
from compress1img.models import load_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dense", required=True, help="the original model (weights file)")
    parser.add_argument("--arch", default=None)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("files", nargs="+", help="NAME=PATH.onnx")
    args = parser.parse_args()
    dense = load_model(args.dense, args.arch)
    models = {"dense fp32": onnx_model_bytes(dense.module, dense.input_size)}
    models.update(dict(item.split("=", 1) for item in args.files))
    timing = compare_latency(models, dense.input_size, threads=args.threads)
    for name, row in timing.items():
        row["speedup_b1"] = timing["dense fp32"]["b1_ms"] / row["b1_ms"]
        row["speedup_b32"] = timing["dense fp32"]["b32_ms"] / row["b32_ms"]
    print(json.dumps(timing, indent=1))


if __name__ == "__main__":
    main()
