"""compress1img: compress a pretrained image model with one image and no training data.

    from compress1img import PruneConfig, RunConfig, load_model, prune
    teacher = load_model("resnet56.th", arch="cifar_resnet56")
    result = prune(teacher, "city.jpg", PruneConfig(sparsity=0.5), run=RunConfig(out="runs/p50"))
    result.model.module, result.report["pruned_holdout_agreement"]
"""
from .api import (Result, bench_onnx, compress, demo, distill, evaluate_model, prune, quantize, score_images,
                  write_patch_file)
from .config import ConfigError, RunConfig
from .data import EvalData, load_eval_data
from .errors import Compress1imgError, InputError, TrainingError
from .export import export_onnx
from .images import load_image
from .latency import LatencyConfig
from .losses import distillation_loss
from .models import (
    LoadedModel,
    bundled_teacher,
    create_model_from_name,
    list_models,
    load_model,
    save_model,
)
from .patches import PatchArray, PatchConfig, PatchGenerator
from .pruning import PruneConfig
from .quantization import PTQConfig, QATConfig
from .training import DistillConfig, TrainingHook, run_distillation

__version__ = "0.1.0"
__all__ = [
    "Compress1imgError", "ConfigError", "DistillConfig", "EvalData", "InputError", "LatencyConfig", "LoadedModel",
    "PTQConfig", "PatchArray", "PatchConfig", "PatchGenerator", "PruneConfig", "QATConfig", "Result",
    "RunConfig", "TrainingError", "TrainingHook", "bench_onnx", "bundled_teacher", "compress",
    "create_model_from_name", "demo", "distill", "distillation_loss", "evaluate_model", "export_onnx", "list_models",
    "load_eval_data", "load_image", "load_model", "prune", "quantize", "run_distillation", "save_model",
    "score_images", "write_patch_file",
]
