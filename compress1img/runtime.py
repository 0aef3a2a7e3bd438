"""ONNX Runtime sessions, made one way: on the CPU, from a file or bytes; and running graphs made for one batch
size on any."""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn


def default_threads() -> int:
    """The intra-op threads ONNX Runtime gets when not told: as many as torch computes with (every core unless
    OMP_NUM_THREADS or torch.set_num_threads says fewer), so that the two together never ask for more cores than
    the process was given (ONNX Runtime's own default takes every core whatever the process was given, and
    its waiting threads spin)."""
    return max(1, torch.get_num_threads())


def ort_session(model: str | Path | bytes, *, threads: int | None = None,
                optimized_model_path: str | Path | None = None, optimization_level=None):
    """An `onnxruntime.InferenceSession` on the CPUExecutionProvider for a model file or serialized model.

    `threads` sets the intra-op threads (`default_threads()` if None) and one inter-op thread;
    `optimization_level` is an `onnxruntime.GraphOptimizationLevel` (ONNX
    Runtime's default, ORT_ENABLE_ALL, otherwise); `optimized_model_path` saves the graph
    as ONNX Runtime optimized it. Raises what ONNX Runtime raises for a bad model.
    """
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or default_threads()
    options.inter_op_num_threads = 1
    if optimization_level is not None:
        options.graph_optimization_level = optimization_level
    if optimized_model_path is not None:
        options.optimized_model_filepath = str(optimized_model_path)
    source = model if isinstance(model, bytes) else str(model)
    return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])


def in_batches_of(batch: int, run: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """`run(x)` for a graph exported for batches of exactly `batch` (a static batch axis): in chunks of that
    size, the last one padded with zeros and its padding's outputs dropped."""
    outputs = []
    for start in range(0, len(x), batch):
        chunk = x[start:start + batch]
        real = len(chunk)
        if real < batch:
            chunk = torch.cat([chunk, chunk.new_zeros(batch - real, *chunk.shape[1:])])
        outputs.append(run(chunk)[:real])
    return torch.cat(outputs)


class OnnxModule(nn.Module):
    """An ONNX model run by ONNX Runtime as a frozen module (no gradients): a teacher, a model to evaluate or
    to quantize by PTQ. Takes and returns float32 NCHW tensors on the caller's device; a graph with a static
    batch axis runs in chunks of its batch."""

    def __init__(self, onnx_bytes: bytes, session=None) -> None:
        super().__init__()
        self.onnx_bytes = onnx_bytes
        self.session = session or ort_session(onnx_bytes)
        first = self.session.get_inputs()[0]
        self.input_name = first.name
        self.input_shape = [d if isinstance(d, int) else None for d in first.shape]
        self.static_batch = self.input_shape[0] if self.input_shape else None

    def metadata(self) -> dict[str, str]:
        return dict(self.session.get_modelmeta().custom_metadata_map)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.static_batch is not None:
            return in_batches_of(self.static_batch, self._run, x)
        return self._run(x)

    def _run(self, x: torch.Tensor) -> torch.Tensor:
        array = np.ascontiguousarray(x.detach().float().cpu().numpy())
        return torch.from_numpy(self.session.run(None, {self.input_name: array})[0]).to(x.device)

    def __deepcopy__(self, memo) -> "OnnxModule":
        return OnnxModule(self.onnx_bytes, self.session)  # a session only runs: copies can share it
