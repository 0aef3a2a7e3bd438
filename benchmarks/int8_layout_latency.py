"""Which ops of EfficientNet-B0 should stay float in its int8 graph? ONNX Runtime latency, one run.

    python benchmarks/int8_layout_latency.py [--model timm:efficientnet_b0] [--threads 2] [--profile]

Graphs, all timed together against the fp32 model (random weights, 224 px):
  - all int8: what `--method ptq` writes (every conv, SiLU/gate sigmoid and multiply, pool in int8);
  - SiLU float: each x * sigmoid(x) written as ONNX Runtime's fused float kernel (QuickGelu with
    alpha 1, which its fp32 graph uses) and left float between a dequantize and a quantize;
  - depthwise float: the depthwise convs (group > 1) left float.
--profile: also the share of kernel time per operator type in each graph at batch 1 (ONNX Runtime's
profiler; its per-node overhead inflates the totals, so read only the shares).
"""
import argparse
import collections
import json
import os

import numpy as np
import onnx
import onnxruntime as ort
import torch
from onnx import helper

from compress1img.export import onnx_model_bytes
from compress1img.latency import compare_latency
from compress1img.models import create_model_from_name
from compress1img.quantization import int8_coverage, ptq_onnx_bytes, runtime_ops, spatial_means_as_pools


def silu_as_quickgelu(onnx_bytes: bytes) -> bytes:
    """x * sigmoid(x) -> com.microsoft QuickGelu(x, alpha=1): the same function, one fused float kernel."""
    model = onnx.load_from_string(onnx_bytes)
    graph = model.graph
    producer = {output: node for node in graph.node for output in node.output}
    readers: dict[str, int] = {}
    for node in graph.node:
        for name in node.input:
            readers[name] = readers.get(name, 0) + 1
    replaced, dropped = {}, set()
    for node in graph.node:
        if node.op_type != "Mul":
            continue
        for x, gate in (tuple(node.input), tuple(node.input)[::-1]):
            sigmoid = producer.get(gate)
            if sigmoid is not None and sigmoid.op_type == "Sigmoid" and sigmoid.input[0] == x and readers[gate] == 1:
                replaced[id(node)] = helper.make_node("QuickGelu", [x], [node.output[0]], name=node.name,
                                                      domain="com.microsoft", alpha=1.0)
                dropped.add(id(sigmoid))
                break
    nodes = [replaced.get(id(node), node) for node in graph.node if id(node) not in dropped]
    del graph.node[:]
    graph.node.extend(nodes)
    if not any(o.domain == "com.microsoft" for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    return model.SerializeToString()


def depthwise_convs(onnx_bytes: bytes) -> list[str]:
    return [node.name for node in onnx.load_from_string(onnx_bytes).graph.node if node.op_type == "Conv"
            and any(a.name == "group" and a.i > 1 for a in node.attribute)]


def kernel_time_shares(onnx_bytes: bytes, size: tuple, threads: int, runs: int = 20) -> dict[str, float]:
    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    options.enable_profiling = True
    session = ort.InferenceSession(onnx_bytes, options, providers=["CPUExecutionProvider"])
    feed = {session.get_inputs()[0].name: np.random.rand(1, *size).astype(np.float32)}
    for _ in range(runs):
        session.run(None, feed)
    trace = session.end_profiling()
    with open(trace) as f:
        events = json.load(f)
    os.remove(trace)
    per_op = collections.Counter()
    for event in events:
        if event.get("cat") == "Node" and event["name"].endswith("_kernel_time"):
            per_op[event["args"]["op_name"]] += event["dur"]
    total = sum(per_op.values())
    return {op: round(100 * t / total, 1) for op, t in per_op.most_common(6)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="timm:efficientnet_b0")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args()
    torch.manual_seed(0)
    module, _ = create_model_from_name(args.model, num_classes=1000)
    size = (3, 224, 224)
    fp32 = onnx_model_bytes(module.eval(), size)
    calibration = torch.randn(64, *size, generator=torch.Generator().manual_seed(0))
    graphs = {"fp32": fp32, "all int8": ptq_onnx_bytes(fp32, calibration),
              "SiLU float": ptq_onnx_bytes(silu_as_quickgelu(spatial_means_as_pools(fp32)), calibration),
              "depthwise float": ptq_onnx_bytes(fp32, calibration, keep_float=depthwise_convs(fp32))}
    timing = compare_latency(graphs, size, threads=args.threads)
    for name, graph in graphs.items():
        ops = runtime_ops(graph)
        print(json.dumps({"graph": name, "b1_ms": timing[name]["b1_ms"], "b32_ms": timing[name]["b32_ms"],
                          "speedup_b1": timing["fp32"]["b1_ms"] / timing[name]["b1_ms"],
                          "speedup_b32": timing["fp32"]["b32_ms"] / timing[name]["b32_ms"],
                          **int8_coverage(ops), "float_silu": ops.get("QuickGelu", 0),
                          "int8_sigmoids": ops.get("QLinearSigmoid", 0),
                          **({"kernel_time_percent_b1": kernel_time_shares(graph, size, args.threads)}
                             if args.profile else {})}))


if __name__ == "__main__":
    main()
