"""Int8 quantization that ONNX Runtime runs fast: uint8 activations, int8 per-channel weights (U8S8) that use
7 bits, so that the model computes the same logits on every x86 CPU (WEIGHT_BITS says why).

Two methods end in the same kind of graph, QuantizeLinear/DequantizeLinear (QDQ) pairs
around every conv, add, linear, pool and sigmoid gate, which ONNX Runtime fuses into
QLinearConv/QLinearAdd/QGemm/QLinearGlobalAveragePool/QLinearSigmoid/QLinearMul:

- "qat": torchao's PT2E flow. The model is captured with `torch.export`, our
  `U8S8Quantizer` inserts torchao fake-quantizers where ONNX Runtime will quantize,
  the distillation loop trains it, `convert_pt2e` folds BN and fixes the scales it
  learned, and the dynamo ONNX exporter writes them as QDQ pairs.
- "ptq": ONNX Runtime's own static quantization of the float ONNX model, calibrated
  on patches. No training: the fast baseline, and the fallback for models
  `torch.export` cannot capture (data-dependent Python control flow, for instance).

`U8S8Quantizer` lives in `u8s8_quantizer`, which says why torchao's own quantizers do not do.
"""
from __future__ import annotations

import collections
import contextlib
import io
import logging
import operator
import tempfile
import warnings
from dataclasses import dataclass
from typing import ClassVar
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch import nn
from torch.fx import GraphModule

from .config import require, require_choice, require_int
from .errors import Compress1imgError, InputError, first_line
from .models.loading import ignore_mode_switches
from .training import DistillConfig

# Importing torchao makes torch log a deprecation warning meant for torchao's developers.
logging.getLogger("torch.utils._pytree").setLevel(logging.ERROR)

# Quantization-aware training starts from a trained model: few, small steps (lr 1e-4 made the loss rise).
QAT_STEPS = 500
QAT_LR = 1e-5
# Weights use 7 of their 8 bits (-63..63) unless told otherwise: x86 CPUs without VNNI (AVX2, and AVX-512
# before Cascade Lake) add uint8 x int8 products in pairs into a saturating int16, which 255 x 127 x 2
# overflows, so a model with full-range weights computes other logits there than where it was checked
# (docs/benchmarks.md, "Int8 on CPUs without VNNI"). ONNX Runtime's name for the remedy is `reduce_range`.
WEIGHT_BITS = 7
# How PTQ sets the activation ranges from the calibration patches: ONNX Runtime's CalibrationMethod names.
CALIBRATIONS = {"minmax": "MinMax", "percentile": "Percentile", "entropy": "Entropy"}


class QuantizationError(Compress1imgError):
    """The model could not be captured, quantized or exported as int8."""


@dataclass(frozen=True)
class QATConfig:
    """Quantization-aware training: a fake-quantized copy, calibrated on patches, then distilled from the
    original (`training`: the loop's settings; float32 always, since bf16 would blur the int8 grid)."""

    method: ClassVar[str] = "qat"
    calibration_size: int = 512  # patches that set the activation ranges before training
    training: DistillConfig = DistillConfig(steps=QAT_STEPS, lr=QAT_LR)
    keep_float: tuple[str, ...] = ()  # layers left in float: module names (with what they contain) or class names

    def __post_init__(self):
        require_int(self, "calibration_size", 1, f"must be a positive number of patches (got {self.calibration_size})")
        require(self, "training", isinstance(self.training, DistillConfig),
                f"must be a DistillConfig (got {type(self.training).__name__})")
        _check_keep_float(self)


@dataclass(frozen=True)
class PTQConfig:
    """Post-training quantization: ONNX Runtime's static quantizer calibrated on patches, no training."""

    method: ClassVar[str] = "ptq"
    calibration_size: int = 512  # patches that set the activation ranges
    calibration: str = "minmax"  # how the ranges follow from them: see CALIBRATIONS
    keep_float: tuple[str, ...] = ()  # layers left in float: module names (with what they contain) or class names

    def __post_init__(self):
        require_int(self, "calibration_size", 1, f"must be a positive number of patches (got {self.calibration_size})")
        require_choice(self, "calibration", CALIBRATIONS)
        _check_keep_float(self)


def _check_keep_float(config) -> None:
    if isinstance(config.keep_float, str):
        object.__setattr__(config, "keep_float", (config.keep_float,))
    object.__setattr__(config, "keep_float", tuple(config.keep_float))
    require(config, "keep_float", all(isinstance(n, str) and n for n in config.keep_float),
            f"must name layers or layer types (got {config.keep_float!r})")


QuantizeConfig = QATConfig | PTQConfig
METHODS = {config.method: config for config in (QATConfig, PTQConfig)}


def kept_float(module: nn.Module, keep_float: Sequence[str]) -> list[str]:
    """The names of the modules that `keep_float` keeps in float: an entry is a module name (`layer1.0.conv1`;
    the module and all it contains) or a class name (`Linear`: every module of that class)."""
    return [name for name, m in module.named_modules() if name and any(
        name == entry or name.startswith(entry + ".") or type(m).__name__ == entry for entry in keep_float)]


def check_keep_float(module: nn.Module, keep_float: Sequence[str]) -> None:
    """An InputError, saying what the model's layers are called, for an entry of `keep_float` that matches nothing."""
    for entry in keep_float:
        if not kept_float(module, [entry]):
            leaves = [(name, type(m).__name__) for name, m in module.named_modules() if name and not any(m.children())]
            raise InputError(f"--keep-float {entry!r} names no layer or layer type of the model: its layers are "
                             f"named like {', '.join(n for n, _ in leaves[:3])}, ..., {leaves[-1][0]}; its layer "
                             f"types are {', '.join(sorted({kind for _, kind in leaves}))}")


def onnx_nodes_of(onnx_bytes: bytes, modules: Sequence[str]) -> list[str]:
    """The nodes of a float ONNX graph (`export.onnx_model_bytes`) that compute `modules` or what they contain.

    The exporter names a node after the scopes it ran in, `/layer1/layer1.0/conv1/Conv` for
    `layer1.0.conv1`: a scope is either the full name or the name within the scope before it.
    """
    import onnx

    wanted, nodes = tuple(modules), []
    for node in onnx.load_from_string(onnx_bytes).graph.node:
        name = ""
        for part in node.name.strip("/").split("/")[:-1]:
            name = part if not name or part.startswith(name + ".") else f"{name}.{part}"
        if any(name == m or name.startswith(m + ".") for m in wanted):
            nodes.append(node.name)
    return nodes


def _batch_dim():
    return torch.export.Dim("batch", min=1, max=65536)


def capture(module: nn.Module, input_size: Sequence[int]) -> GraphModule:
    """`module` as an ATen graph with a dynamic batch axis (torch.export), in training mode."""
    example = torch.randn(4, *input_size, generator=torch.Generator().manual_seed(0))
    was_training = module.training
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            program = torch.export.export(module.cpu().train(), (example,), dynamic_shapes=({0: _batch_dim()},))
    except Exception as e:
        raise QuantizationError(f"torch.export cannot capture this model for quantization-aware training "
                                f"({first_line(e, with_type=True)}); use --method ptq, which quantizes the "
                                f"exported ONNX model instead") from None
    finally:
        module.train(was_training)
    return program.module()


def prepare_qat(module: nn.Module, input_size: Sequence[int], keep_float: Sequence[str] = (), *,
                weight_bits: int = WEIGHT_BITS) -> GraphModule:
    """A copy of `module` with fake quantization where ONNX Runtime will run int8; train it, then `convert`.
    The modules named in `keep_float` (full names, see `kept_float`) and all they contain stay float;
    `weight_bits` is 7 (right on every x86 CPU) or 8 (only where VNNI or ARM runs the model: U8S8Quantizer).

    Batch-norm statistics stay frozen (the graph stays in eval mode even under
    `.train()`): re-estimating them on patches of one image instead of the training
    data ruined a trained model's agreement with itself (docs/benchmarks.md, "Int8: quantizing the
    ResNet-56"). Frozen, a BatchNorm after a conv is an affine map of its output, so it is folded into
    the conv first (`fold_batch_norms`): what trains is the folded weight, the one that is quantized.
    The fake-quantizers still observe and the weights still learn.
    """
    from torchao.quantization.pt2e import move_exported_model_to_eval
    from torchao.quantization.pt2e.quantize_pt2e import prepare_qat_pt2e

    from .u8s8_quantizer import U8S8Quantizer

    quantizer = U8S8Quantizer(keep_float, weight_bits=weight_bits)  # first: a bad weight_bits fails at once
    graph = capture(module, input_size)
    fold_batch_norms(graph)
    try:
        prepared = prepare_qat_pt2e(graph, quantizer)
    except Exception as e:
        raise QuantizationError(f"torchao could not insert fake quantization: {first_line(e, with_type=True)}; "
                                f"use --method ptq") from None
    move_exported_model_to_eval(prepared)
    ignore_mode_switches(prepared)
    return prepared


def fold_batch_norms(graph: GraphModule) -> int:
    """Fold each BatchNorm that alone reads a 2-D conv's output into that conv, with its running statistics
    (its eval-mode function, the one QAT keeps); returns how many were folded. Others stay as they are.

    Why before `prepare_qat_pt2e` rather than leaving it to torchao: its conv-BN passes match each fold
    against patterns it traces anew on every call, most of a short QAT run's time (docs/benchmarks.md,
    "BatchNorm folded before quantization-aware training"); with no BatchNorm left both passes are skipped,
    and the graph computes the same.
    """
    aten = torch.ops.aten

    def value(node):  # the tensor a get_attr node reads (None stays None)
        return None if node is None else operator.attrgetter(node.target)(graph).detach()

    folded = 0
    for bn in list(graph.graph.nodes):
        if bn.op != "call_function" or bn.target is not aten.batch_norm.default:
            continue
        conv, bn_weight, bn_bias, mean, var = bn.args[:5]
        if conv.op != "call_function" or conv.target is not aten.conv2d.default or len(conv.users) != 1:
            continue
        weight, bias = conv.args[1], conv.args[2] if len(conv.args) > 2 else None
        if not all(a is None or getattr(a, "op", None) == "get_attr"
                   for a in (weight, bias, bn_weight, bn_bias, mean, var)) or None in (weight, mean, var):
            continue
        new_weight, new_bias = torch.nn.utils.fusion.fuse_conv_bn_weights(
            value(weight), value(bias), value(mean), value(var), bn.args[7], value(bn_weight), value(bn_bias))
        trainable = operator.attrgetter(weight.target)(graph).requires_grad
        owner, _, name = weight.target.rpartition(".")
        conv_module = graph.get_submodule(owner)
        setattr(conv_module, name, nn.Parameter(new_weight.detach(), trainable))
        if bias is None:  # the conv gains a bias
            bias_name = "bias" if getattr(conv_module, "bias", None) is None else f"{name}_bias"
            conv_module.register_parameter(bias_name, nn.Parameter(new_bias.detach(), trainable))
            with graph.graph.inserting_before(conv):
                bias = graph.graph.get_attr(f"{owner}.{bias_name}" if owner else bias_name)
            conv.args = (conv.args[0], weight, bias, *conv.args[3:])
        else:
            bias_owner, _, bias_name = bias.target.rpartition(".")
            setattr(graph.get_submodule(bias_owner), bias_name, nn.Parameter(new_bias.detach(), trainable))
        bn.replace_all_uses_with(conv)
        graph.graph.erase_node(bn)
        # A training-mode capture also bumps the BatchNorm's counter of batches in place: gone with it.
        counter = mean.target.rpartition(".")[0] + ".num_batches_tracked"
        for node in list(graph.graph.nodes):
            if (node.op == "call_function" and node.target is aten.add_.Tensor and not node.users
                    and getattr(node.args[0], "target", None) == counter):
                graph.graph.erase_node(node)
        folded += 1
    if folded:
        graph.graph.eliminate_dead_code()
        graph.delete_all_unused_submodules()
        graph.recompile()
    return folded


def calibrate(prepared: GraphModule, inputs: torch.Tensor, batch_size: int = 64) -> None:
    """Set the fake-quantizers' ranges from `inputs` (normalised patches) before training.

    Their moving averages would otherwise start from the first training batch alone
    (6 steps of 32 patches left a ResNet-20 agreeing with itself on 75% of test
    images); here each range is the mean over chunks of `inputs`.
    """
    observers = [m for m in prepared.modules() if hasattr(m, "averaging_constant")]
    saved = [o.averaging_constant for o in observers]
    with torch.no_grad():
        for k, chunk in enumerate(inputs.split(batch_size)):
            for observer in observers:
                observer.averaging_constant = 1 / (k + 1)
            prepared(chunk)
    for observer, constant in zip(observers, saved):
        observer.averaging_constant = constant


def freeze_observers(prepared: GraphModule) -> None:
    """Stop the fake-quantizers from updating their ranges (before comparing with the converted model)."""
    from torchao.quantization.pt2e import disable_observer

    prepared.apply(disable_observer)


def convert(prepared: GraphModule) -> GraphModule:
    """The int8 reference model: BN folded into the convs, learned scales fixed as quantize/dequantize ops."""
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        converted = convert_pt2e(prepared.cpu())
    ignore_mode_switches(converted)
    return converted


def int8_onnx_bytes(converted: GraphModule, input_size: Sequence[int]) -> bytes:
    """The converted model as a QDQ ONNX graph (dynamo exporter; the legacy one cannot export these ops)."""
    example = torch.zeros(2, *input_size)
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings(), \
            contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        warnings.simplefilter("ignore")
        path = Path(tmp) / "int8.onnx"
        try:
            program = torch.onnx.export(converted, (example,), dynamo=True, external_data=False,
                                        input_names=["input"], output_names=["logits"],
                                        dynamic_shapes=({0: _batch_dim()},), opset_version=18)
            program.save(str(path), external_data=False)
        except Exception as e:
            raise QuantizationError(f"the int8 model could not be exported to ONNX: "
                                    f"{first_line(e, with_type=True)}") from None
        return spatial_means_as_pools(_without_debug_metadata(path.read_bytes()))


def _without_debug_metadata(onnx_bytes: bytes) -> bytes:
    """Drop the exporter's per-node stack traces and namespaces: a third of an int8 file otherwise."""
    import onnx

    model = onnx.load_from_string(onnx_bytes)
    for entry in (*model.graph.node, *model.graph.value_info, *model.graph.input, *model.graph.output,
                  *model.graph.initializer):
        del entry.metadata_props[:]
    for node in model.graph.node:
        node.doc_string = ""
    return model.SerializeToString()


def spatial_means_as_pools(onnx_bytes: bytes) -> bytes:
    """Rewrite ReduceMean over height and width (kept dims, 4-D input) as GlobalAveragePool: the same arithmetic.

    Squeeze-excitation blocks (EfficientNet and others in timm) average with ReduceMean, for which
    ONNX Runtime has no int8 kernel: each one costs a dequantize/quantize pair between int8
    neighbours. GlobalAveragePool runs as QLinearGlobalAveragePool.
    """
    import onnx
    from onnx import numpy_helper

    model = onnx.shape_inference.infer_shapes(onnx.load_from_string(onnx_bytes))
    graph = model.graph
    ranks = {v.name: len(v.type.tensor_type.shape.dim) for v in (*graph.value_info, *graph.input)
             if v.type.tensor_type.HasField("shape")}
    constants = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    constants.update({n.output[0]: numpy_helper.to_array(n.attribute[0].t) for n in graph.node
                      if n.op_type == "Constant" and n.attribute and n.attribute[0].name == "value"})
    rewritten, freed = 0, set()  # freed: the axes tensors of rewritten nodes
    for node in graph.node:
        if node.op_type != "ReduceMean" or ranks.get(node.input[0]) != 4:
            continue
        attributes = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        axes = attributes.get("axes", constants.get(node.input[1]) if len(node.input) > 1 else None)
        if axes is None or attributes.get("keepdims", 1) != 1 or sorted(int(a) % 4 for a in axes) != [2, 3]:
            continue
        node.op_type = "GlobalAveragePool"
        freed.update(node.input[1:])
        del node.input[1:]
        del node.attribute[:]
        rewritten += 1
    if not rewritten:
        return onnx_bytes
    freed -= {name for node in graph.node for name in node.input} | {i.name for i in graph.input}
    kept = [n for n in graph.node if not (n.op_type == "Constant" and n.output[0] in freed)]
    del graph.node[:]
    graph.node.extend(kept)
    kept_initializers = [i for i in graph.initializer if i.name not in freed]
    del graph.initializer[:]
    graph.initializer.extend(kept_initializers)
    return model.SerializeToString()


def ptq_onnx_bytes(float_onnx: bytes, calibration: torch.Tensor, *, keep_float: Sequence[str] = (),
                   method: str = "minmax", weight_bits: int = WEIGHT_BITS) -> bytes:
    """ONNX Runtime static quantization (QDQ, U8S8, per-channel, 7-bit weights) of a float ONNX model.

    `calibration` holds normalised inputs; activation ranges follow from them by `method` (CALIBRATIONS:
    their min/max, a percentile of their histogram, or the range that loses least entropy). Spatial
    means are rewritten as global pools first (`spatial_means_as_pools`) so that they stay int8 too.
    `keep_float` names nodes to leave in float (ONNX Runtime's `nodes_to_exclude`; `onnx_nodes_of`).
    `weight_bits` 7 is ONNX Runtime's `reduce_range`, as in `prepare_qat`; 8 is its own default.
    """
    if weight_bits not in (7, 8):
        raise ValueError(f"weight_bits must be 7 or 8 (got {weight_bits!r})")
    from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType,
                                          quantize_static)
    from onnxruntime.quantization.shape_inference import quant_pre_process

    float_onnx = spatial_means_as_pools(float_onnx)

    class Reader(CalibrationDataReader):
        def __init__(self, name: str):
            self.batches = iter([{name: b.numpy()} for b in calibration.float().split(64)])

        def get_next(self):
            return next(self.batches, None)

    import onnx

    with tempfile.TemporaryDirectory() as tmp, contextlib.redirect_stdout(io.StringIO()):
        source, prepared, output = (Path(tmp) / name for name in ("float.onnx", "prepared.onnx", "int8.onnx"))
        source.write_bytes(float_onnx)
        input_name = onnx.load_from_string(float_onnx).graph.input[0].name
        try:
            quant_pre_process(str(source), str(prepared))
            quantize_static(str(prepared), str(output), Reader(input_name), quant_format=QuantFormat.QDQ,
                            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, per_channel=True,
                            reduce_range=weight_bits == 7,
                            calibrate_method=getattr(CalibrationMethod, CALIBRATIONS[method]),
                            nodes_to_exclude=list(keep_float))
        except Exception as e:
            raise QuantizationError(f"ONNX Runtime static quantization failed: "
                                    f"{first_line(e, with_type=True)}") from None
        return output.read_bytes()


def opset(onnx_bytes: bytes) -> int:
    import onnx

    return next(o.version for o in onnx.load_from_string(onnx_bytes).opset_import if o.domain in ("", "ai.onnx"))


def runtime_ops(onnx_bytes: bytes) -> dict[str, int]:
    """Operator counts of the graph ONNX Runtime actually runs, after its fusions.

    A QDQ model runs fast only when its pairs are fused into int8 kernels
    (QLinearConv, QLinearAdd, ...); float Conv left here means fp32 speed.
    """
    import onnx
    import onnxruntime as ort

    from .runtime import ort_session

    with tempfile.TemporaryDirectory() as tmp:
        optimized = Path(tmp) / "optimized.onnx"
        # EXTENDED applies the QDQ fusions but not the hardware-specific NCHWc layout.
        ort_session(onnx_bytes, optimized_model_path=optimized,
                    optimization_level=ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED)
        graph = onnx.load(optimized).graph
    return dict(collections.Counter(node.op_type for node in graph.node))


def int8_coverage(ops: dict[str, int]) -> dict[str, int]:
    """How many convs and matmuls run in int8 and how many stayed float, from `runtime_ops`."""
    int8_conv = ops.get("QLinearConv", 0) + ops.get("ConvInteger", 0)
    return {"int8_convs": int8_conv, "float_convs": ops.get("Conv", 0) + ops.get("FusedConv", 0),
            "int8_adds": ops.get("QLinearAdd", 0), "float_adds": ops.get("Add", 0)}


def onnx_runner(onnx_bytes: bytes):
    """A callable running the ONNX model in ONNX Runtime on normalised NCHW tensors (for `predict`)."""
    from .runtime import ort_session

    session = ort_session(onnx_bytes)
    name = session.get_inputs()[0].name

    def run(x: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(session.run(None, {name: x.cpu().numpy().astype(np.float32)})[0])
    return run
