"""ONNX export: checked by the ONNX checker and against PyTorch in ONNX Runtime before it is written."""
from __future__ import annotations

import io
import json
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch import nn

from .errors import Compress1imgError, first_line
from .outputs import atomic_write
from .runtime import OnnxModule

# Float models match PyTorch to ~1e-5; the threshold leaves room for kernel differences only.
FLOAT_PARITY_TOLERANCE = 1e-3


class ExportError(Compress1imgError):
    """The exported ONNX model failed a check; nothing was written."""


@dataclass
class ExportResult:
    path: Path
    max_abs_diff: float
    top1_agreement: float
    size_bytes: int


def export_onnx(module: nn.Module, path: str | Path, *, input_size: Sequence[int], mean: Sequence[float],
                std: Sequence[float], classes: Sequence[str] | None = None, check_inputs: torch.Tensor | None = None,
                tolerance: float | None = FLOAT_PARITY_TOLERANCE, min_agreement: float | None = None,
                metadata: dict | None = None, onnx_bytes: bytes | None = None) -> ExportResult:
    """Export `module` (taking normalised NCHW float32) to one ONNX file with a dynamic batch axis.

    The preprocessing goes into the ONNX metadata as JSON strings (`mean`, `std`,
    `input_size`, `classes`) so a deployment knows how to feed the model. The file
    is written only if ONNX Runtime reproduces PyTorch within `tolerance` (max abs
    logit difference) and agrees on top-1 for at least `min_agreement` percent of
    `check_inputs` (normalised inputs; random ones by default). `onnx_bytes` gives a
    graph made elsewhere (an int8 one) to check against `module` and write.
    """
    import onnx

    path = Path(path)
    module.eval()  # exported graphs return None here
    module = module.cpu()
    if check_inputs is None:
        check_inputs = torch.randn(8, *input_size, generator=torch.Generator().manual_seed(0))
    example = check_inputs[:2].float()

    model = onnx.load_from_string(onnx_bytes or onnx_model_bytes(module, input_size, example))
    props = {"mean": json.dumps(list(map(float, mean))), "std": json.dumps(list(map(float, std))),
             "input_size": json.dumps(list(map(int, input_size))), "producer": "compress1img"}
    if classes is not None:
        props["classes"] = json.dumps(list(classes))
    for key, value in (metadata or {}).items():
        props[key] = value if isinstance(value, str) else json.dumps(value)
    kept = [entry for entry in model.metadata_props if entry.key not in props]  # an ONNX model's own, replaced
    del model.metadata_props[:]
    model.metadata_props.extend(kept)
    for key, value in props.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    return write_verified_onnx(model, path, module, check_inputs, tolerance, min_agreement)


def onnx_model_bytes(module: nn.Module, input_size: Sequence[int], example: torch.Tensor | None = None) -> bytes:
    """The float ONNX graph of `module` (dynamic batch axis), unchecked and without metadata; an ONNX model
    run as a module (runtime.OnnxModule) is its own graph."""
    if isinstance(module, OnnxModule):
        return module.onnx_bytes
    if example is None:
        example = torch.zeros(2, *input_size)
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporter's deprecation chatter is not for our users
        module.eval()
        torch.onnx.export(module, (example,), buffer, input_names=["input"], output_names=["logits"],
                          dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}}, opset_version=17,
                          dynamo=False)
    return buffer.getvalue()


def write_verified_onnx(model, path: Path, reference: nn.Module, check_inputs: torch.Tensor,
                        tolerance: float | None, min_agreement: float | None = None) -> ExportResult:
    """Check `model` (an onnx.ModelProto) against `reference`, then write it atomically."""
    import onnx

    from .runtime import ort_session

    try:
        onnx.checker.check_model(model, full_check=True)
    except Exception as e:
        raise ExportError(f"the exported ONNX model failed the ONNX checker: {first_line(e)}") from None
    data = model.SerializeToString()
    session = ort_session(data)
    got = session.run(None, {session.get_inputs()[0].name: check_inputs.numpy().astype(np.float32)})[0]
    with torch.no_grad():
        want = reference(check_inputs.float()).float().numpy()
    max_abs_diff = float(np.abs(got - want).max())
    top1_agreement = float((got.argmax(1) == want.argmax(1)).mean() * 100)
    if tolerance is not None and not max_abs_diff <= tolerance:
        raise ExportError(f"ONNX Runtime output differs from PyTorch by {max_abs_diff:.3g} "
                          f"(allowed {tolerance:g}); {path} was not written")
    if min_agreement is not None and not top1_agreement >= min_agreement:
        raise ExportError(f"ONNX Runtime agrees with PyTorch on top-1 for only {top1_agreement:.1f}% of the check "
                          f"inputs (required {min_agreement:g}%); {path} was not written")
    atomic_write(path, lambda f: f.write(data))
    return ExportResult(path=path, max_abs_diff=max_abs_diff, top1_agreement=top1_agreement, size_bytes=len(data))
