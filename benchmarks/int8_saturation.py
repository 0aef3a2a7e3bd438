"""Int8 weights of 8 vs 7 bits: the ResNet-56's top-1 computed exactly (PyTorch) and by ONNX Runtime on this CPU.

    python benchmarks/int8_saturation.py [--calibration 512] [--out benchmarks/results/int8_saturation.json]

On x86 CPUs without VNNI (AVX2, AVX-512 before Cascade Lake), ONNX Runtime's uint8 x int8 kernels add the
products in pairs into a saturating int16: with full-range weights (-127..127) a pair can overflow, and
the int8 model's logits there differ from the ones computed exactly. With 7-bit weights (-63..63,
compress1img's default, ONNX Runtime's `reduce_range`) no pair can. For each weight width this scores, on
all 10,000 test images: the QAT path's int8 graph, calibrated on Animals patches and not trained
(`prepare_qat`, `calibrate`, `convert`: its PyTorch reference computes the int8 arithmetic exactly, which
is what a CPU with VNNI gives), the same graph in ONNX Runtime, and the PTQ path's graph
(`ptq_onnx_bytes`) in ONNX Runtime. The CPU's VNNI flags are printed with the table: run it on a CPU with
VNNI and on one without to see both cases.
"""
import argparse
import json
import time
from pathlib import Path

import torch
from PIL import Image

from compress1img.data import load_eval_data
from compress1img.evaluate import predict
from compress1img.export import onnx_model_bytes
from compress1img.models import load_model
from compress1img.patches import generate_patches
from compress1img.quantization import calibrate, convert, int8_onnx_bytes, onnx_runner, prepare_qat, ptq_onnx_bytes
from paths import ANIMALS, CIFAR_TEST, R56


def cpu_flags() -> list[str]:
    """The CPU's int8 dot-product flags (Linux /proc/cpuinfo): none of them means AVX2/AVX-512 without VNNI."""
    try:
        flags = next(line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags"))
    except (OSError, StopIteration):
        return ["unknown"]
    return sorted(f for f in flags.split(":")[1].split() if "vnni" in f or f.startswith("amx") or f == "avx2")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calibration", type=int, default=512, help="Animals patches that set the ranges")
    parser.add_argument("--out", default="benchmarks/results/int8_saturation.json")
    args = parser.parse_args()
    started = time.perf_counter()
    model = load_model(R56, "cifar_resnet56")
    data = load_eval_data(CIFAR_TEST)
    size = (3, 32, 32)
    mean, std = torch.tensor(model.mean).view(1, 3, 1, 1), torch.tensor(model.std).view(1, 3, 1, 1)
    patches = generate_patches(Image.open(ANIMALS).convert("RGB"), args.calibration, progress=False)
    calibration = (torch.from_numpy(patches).permute(0, 3, 1, 2).float() / 255 - mean) / std

    def classes(run) -> torch.Tensor:
        return predict(run, data.images, model.mean, model.std).argmax(1)

    def top1(predicted: torch.Tensor) -> float:
        return round(float((predicted == data.labels).float().mean() * 100), 2)

    fp32 = classes(model.module)
    rows = {"cpu_flags": cpu_flags(), "fp32_top1": top1(fp32)}
    float_onnx = onnx_model_bytes(model.module, size)
    for bits in (8, 7):
        prepared = prepare_qat(model.module, size, weight_bits=bits)
        calibrate(prepared, calibration)
        converted = convert(prepared)
        exact = classes(converted)
        runtime = classes(onnx_runner(int8_onnx_bytes(converted, size)))
        ptq = classes(onnx_runner(ptq_onnx_bytes(float_onnx, calibration, weight_bits=bits)))
        rows[f"{bits}-bit"] = {
            "qat_graph_exact_top1": top1(exact), "qat_graph_onnxruntime_top1": top1(runtime),
            "onnxruntime_vs_exact_agreement": round(float((exact == runtime).float().mean() * 100), 2),
            "ptq_onnxruntime_top1": top1(ptq)}
    rows["seconds"] = round(time.perf_counter() - started, 1)
    print(f"CPU flags: {' '.join(rows['cpu_flags']) or 'none of avx2/vnni/amx'}; fp32 top-1 {rows['fp32_top1']}%")
    print("| weights | QAT graph, exact (PyTorch) | QAT graph, ONNX Runtime | agreement ORT vs exact "
          "| PTQ, ONNX Runtime |")
    print("|---|---|---|---|---|")
    for bits in (8, 7):
        r = rows[f"{bits}-bit"]
        print(f"| {bits}-bit | {r['qat_graph_exact_top1']:.2f}% | {r['qat_graph_onnxruntime_top1']:.2f}% | "
              f"{r['onnxruntime_vs_exact_agreement']:.2f}% | {r['ptq_onnxruntime_top1']:.2f}% |")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
