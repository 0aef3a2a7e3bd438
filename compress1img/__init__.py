"""compress1img: compress a pretrained image model with one image and no training data.

    from compress1img import load_model, distill, evaluate_model
    teacher = load_model("resnet56.th", arch="cifar_resnet56")
    report = distill(teacher, "cifar_resnet20", image="city.jpg", out="runs/r20")
"""
from .api import bundled_teacher, demo, distill, evaluate_model, score_images, write_patch_file
from .compression import compress, prune, quantize
from .data import EvalData, load_eval_data
from .errors import Compress1imgError, InputError, TrainingError
from .evaluate import OnnxModel
from .export import export_onnx
from .images import load_image
from .models import (
    LoadedModel,
    create_model_from_name,
    list_models,
    load_model,
    save_model,
)
from .patches import PatchArray, PatchConfig, PatchGenerator
from .pruning import PruneConfig
from .quantization import QuantizeConfig
from .training import DistillConfig, distillation_loss, run_distillation

__version__ = "0.1.0"
__all__ = [
    "Compress1imgError", "DistillConfig", "EvalData", "InputError", "LoadedModel", "OnnxModel", "PatchArray",
    "PatchConfig", "PatchGenerator", "PruneConfig", "QuantizeConfig", "TrainingError", "bundled_teacher", "compress",
    "create_model_from_name", "demo", "distill", "distillation_loss", "evaluate_model", "export_onnx", "list_models",
    "load_eval_data", "load_image", "load_model", "prune", "quantize", "run_distillation", "save_model", "score_images",
    "write_patch_file",
]
