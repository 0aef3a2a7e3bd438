"""The torchao PT2E quantizer of `quantization.prepare_qat`: it marks what ONNX Runtime can run in int8.

Why our own quantizer: torchao's `X86InductorQuantizer` leaves residual adds in float
(it targets Inductor, which fuses them itself), so ONNX Runtime could fuse only some
convs and the int8 model ran *slower* than fp32. Annotating the adds too gives a graph
ONNX Runtime executes in int8 end to end. The same holds for EfficientNet-style models:
SiLU, squeeze-excitation gates and their spatial means left in float cost a
dequantize/quantize pair each, and their int8 graph ran slower than fp32 (docs/benchmarks.md,
"Int8 latency in ONNX Runtime").

This module imports torchao at its top, which takes seconds: `quantization` imports it
only when quantization-aware training starts, so other commands do not pay for it.
"""
from __future__ import annotations

import logging

import torch
from torch.fx import GraphModule, Node

# Importing torchao makes torch log a deprecation warning meant for torchao's developers.
logging.getLogger("torch.utils._pytree").setLevel(logging.ERROR)

from torchao.quantization.pt2e import (FusedMovingAvgObsFakeQuantize,  # noqa: E402 (after the silencing)
                                       MovingAverageMinMaxObserver, MovingAveragePerChannelMinMaxObserver)
from torchao.quantization.pt2e.quantizer import (QuantizationAnnotation, QuantizationSpec,  # noqa: E402
                                                 Quantizer, SharedQuantizationSpec)

aten = torch.ops.aten
# One spec object each: PT2E shares an observer between a producer's output and a
# consumer's input only when their specs compare equal.
ACTIVATION = QuantizationSpec(
    dtype=torch.uint8, quant_min=0, quant_max=255, qscheme=torch.per_tensor_affine, is_dynamic=False,
    observer_or_fake_quant_ctr=FusedMovingAvgObsFakeQuantize.with_args(
        observer=MovingAverageMinMaxObserver, eps=2**-12))


def weight_spec(bits: int) -> QuantizationSpec:
    """Symmetric per-channel int8 weights over -(2^(bits-1) - 1)..2^(bits-1) - 1: 7 or 8 bits (quantization.WEIGHT_BITS
    says why 7 is the default)."""
    if bits not in (7, 8):
        raise ValueError(f"weight_bits must be 7 or 8 (got {bits!r})")
    largest = 2 ** (bits - 1) - 1
    return QuantizationSpec(
        dtype=torch.int8, quant_min=-largest, quant_max=largest, qscheme=torch.per_channel_symmetric, ch_axis=0,
        is_dynamic=False, observer_or_fake_quant_ctr=FusedMovingAvgObsFakeQuantize.with_args(
            observer=MovingAveragePerChannelMinMaxObserver, eps=2**-12))


WEIGHTED = {aten.conv2d.default, aten.linear.default}
NORMS = {aten.batch_norm.default}
RELUS = {aten.relu.default, aten.relu_.default}
ADDS = {aten.add.Tensor, aten.add_.Tensor}
# Their output lies within their input's range: they share its scale and stay int8.
POOLS = {aten.max_pool2d.default, aten.avg_pool2d.default, aten.adaptive_avg_pool2d.default}
SILUS = {aten.silu.default, aten.silu_.default}
SIGMOIDS = {aten.sigmoid.default}
MULS = {aten.mul.Tensor}


def is_float_tensor(arg) -> bool:
    value = arg.meta.get("val") if isinstance(arg, Node) else None
    return isinstance(value, torch.Tensor) and value.is_floating_point()


def sole_user_in(node: Node, targets: set) -> Node | None:
    users = list(node.users)
    if len(users) == 1 and users[0].op == "call_function" and users[0].target in targets:
        return users[0]
    return None


def is_spatial_mean(node: Node) -> bool:
    """x.mean((2, 3), keepdim=True) of a 4-D x: squeeze-excitation's pooling, a global pool in ONNX."""
    dims = node.args[1] if len(node.args) > 1 else None
    value = node.args[0].meta.get("val") if isinstance(node.args[0], Node) else None
    return (node.target is aten.mean.dim and len(node.args) > 2 and node.args[2] is True
            and isinstance(value, torch.Tensor) and value.dim() == 4
            and isinstance(dims, (list, tuple)) and sorted(d % 4 for d in dims) == [2, 3])


def is_gate(node: Node) -> bool:
    """x * sigmoid(y): SiLU (y = x) and squeeze-excitation, which ONNX Runtime runs as QLinearMul."""
    return (node.target in MULS and len(node.args) == 2 and all(is_float_tensor(a) for a in node.args)
            and any(isinstance(a, Node) and a.target in SIGMOIDS for a in node.args))


class U8S8Quantizer(Quantizer):
    """Quantize what ONNX Runtime fuses into int8 kernels: conv(+BN)(+ReLU), linear, add(+ReLU), pooling,
    and the sigmoid gates of SiLU and squeeze-excitation.

    The chain's last node gets the output quantizer so BN and ReLU run inside the int8
    kernel. The logits are quantized too, as ONNX Runtime's own quantizer does: only
    then does it run the classifier as an int8 QGemm. SiLU is written as x * sigmoid(x)
    first, the way the ONNX graph computes it, so that both halves get int8 kernels
    (QLinearSigmoid, QLinearMul) instead of a float island between two convs.

    Nodes that run inside the modules named in `keep_float` (full names, as `named_modules` gives
    them) are left alone, so they stay float. `weight_bits` is 7 (right on every x86 CPU) or 8 (for CPUs with
    VNNI and ARM only): `prepare_qat` passes it.
    """

    def __init__(self, keep_float=(), *, weight_bits: int):
        super().__init__()
        self.keep_float = tuple(keep_float)
        self.weight = weight_spec(weight_bits)

    def is_kept_float(self, node: Node) -> bool:
        scopes = [path for path, _ in node.meta.get("nn_module_stack", {}).values()]
        return any(path == kept or path.startswith(kept + ".") for path in scopes for kept in self.keep_float)

    def transform_for_annotation(self, model: GraphModule) -> GraphModule:
        graph = model.graph
        for node in list(graph.nodes):
            if node.op != "call_function" or node.target not in SILUS:
                continue
            with graph.inserting_after(node):
                sigmoid = graph.call_function(aten.sigmoid.default, (node.args[0],))
            with graph.inserting_after(sigmoid):
                product = graph.call_function(aten.mul.Tensor, (node.args[0], sigmoid))
            for new in (sigmoid, product):
                new.meta = {key: node.meta[key] for key in ("val", "stack_trace", "nn_module_stack")
                            if key in node.meta}
            node.replace_all_uses_with(product)
            graph.erase_node(node)
        model.recompile()
        return model

    def annotate(self, model: GraphModule) -> GraphModule:
        for node in model.graph.nodes:
            if node.op != "call_function" or "quantization_annotation" in node.meta or self.is_kept_float(node):
                continue
            if (node.target in SIGMOIDS and is_float_tensor(node.args[0])) or is_gate(node):
                node.meta["quantization_annotation"] = QuantizationAnnotation(
                    input_qspec_map={a: ACTIVATION for a in node.args if is_float_tensor(a)},
                    output_qspec=ACTIVATION, _annotated=True)
                continue
            if (node.target in POOLS or is_spatial_mean(node)) and is_float_tensor(node.args[0]):
                node.meta["quantization_annotation"] = QuantizationAnnotation(
                    input_qspec_map={node.args[0]: ACTIVATION},
                    output_qspec=SharedQuantizationSpec((node.args[0], node)), _annotated=True)
                continue
            if node.target in WEIGHTED and len(node.args) >= 2:
                inputs = {node.args[0]: ACTIVATION, node.args[1]: self.weight}
                chain = [node]
                if node.target is aten.conv2d.default and (bn := sole_user_in(node, NORMS)) is not None:
                    chain.append(bn)
            elif node.target in ADDS and all(is_float_tensor(a) for a in node.args[:2]):
                inputs = {node.args[0]: ACTIVATION, node.args[1]: ACTIVATION}
                chain = [node]
            else:
                continue
            if (relu := sole_user_in(chain[-1], RELUS)) is not None:
                chain.append(relu)
            node.meta["quantization_annotation"] = QuantizationAnnotation(input_qspec_map=inputs,
                                                                          _annotated=True)
            for later in chain[1:]:
                later.meta["quantization_annotation"] = QuantizationAnnotation(_annotated=True)
            chain[-1].meta["quantization_annotation"].output_qspec = ACTIVATION
        return model

    def validate(self, model: GraphModule) -> None:
        pass

