"""ONNX Runtime latency of int8 vs fp32, measured in one run per model (interleaved, medians).

    python benchmarks/int8_latency.py [--threads 2] [--out benchmarks/results/int8_latency.json]

For each model: the fp32 ONNX graph, the int8 graph of our QAT path (torchao PT2E with
compress1img's U8S8 quantizer, calibrated, not trained: training changes weights, not
speed) and ONNX Runtime's static quantization (the `--method ptq` path). Weights are
the real ones for the CIFAR ResNets, random for the 224 px models (speed does not depend
on them). Also reports how many convs ONNX Runtime runs in int8 vs float.
"""
import argparse
import json
import sys
import time
from pathlib import Path

import torch

from compress1img.api import bundled_teacher
from compress1img.export import onnx_model_bytes
from compress1img.latency import compare_latency
from compress1img.models import create_model_from_name, load_model
from compress1img.quantization import (calibrate, convert, int8_coverage, int8_onnx_bytes, prepare_qat,
                                       ptq_onnx_bytes, runtime_ops)
from paths import R56


def models():
    yield "cifar_resnet20 (32 px)", bundled_teacher().module, (3, 32, 32)
    if R56.exists():
        yield "cifar_resnet56 (32 px)", load_model(R56, "cifar_resnet56").module, (3, 32, 32)
    for name in ("tv:resnet18", "tv:mobilenet_v3_large", "timm:efficientnet_b0"):
        torch.manual_seed(0)
        module, _ = create_model_from_name(name, num_classes=1000)
        yield f"{name} (224 px, random weights)", module.eval(), (3, 224, 224)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default="benchmarks/results/int8_latency.json")
    args = parser.parse_args()
    rows = []
    for name, module, size in models():
        calibration = torch.randn(64 if size[-1] > 64 else 256, *size, generator=torch.Generator().manual_seed(0))
        fp32 = onnx_model_bytes(module, size)
        graphs = {"fp32": fp32, "int8 ptq": ptq_onnx_bytes(fp32, calibration)}
        try:
            prepared = prepare_qat(module, size)
            calibrate(prepared, calibration, batch_size=16)
            graphs["int8 qat graph"] = int8_onnx_bytes(convert(prepared), size)
        except Exception as e:  # a model the QAT path cannot capture: say so, keep the row
            print(f"{name}: QAT path failed: {e}", file=sys.stderr)
        started = time.perf_counter()
        timing = compare_latency(graphs, size, threads=args.threads)
        row = {"model": name, "threads": args.threads, "latency_ms": timing,
               "seconds": time.perf_counter() - started}
        for graph in graphs:
            if graph != "fp32":
                row[graph] = {**int8_coverage(runtime_ops(graphs[graph])),
                              "speedup_b1": timing["fp32"]["b1_ms"] / timing[graph]["b1_ms"],
                              "speedup_b32": timing["fp32"]["b32_ms"] / timing[graph]["b32_ms"],
                              "bytes": len(graphs[graph]), "fp32_bytes": len(fp32)}
        print(json.dumps(row), flush=True)
        rows.append(row)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
