"""Getting the model to compress: by name (registry, timm, torchvision), from a weights file, from our own
checkpoints, TorchScript, torch.export programs and, only when trusted, pickled modules."""
from __future__ import annotations

import json
import logging
import os
import pickle
import re
import sys
import types
import warnings
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn

from ..errors import InputError, first_line
from ..outputs import atomic_write
from . import hub
from .bundled import BUNDLED_MODELS, BUNDLED_PREFIX, BUNDLED_TEACHER_ARCH, bundled_entry
from ..runtime import OnnxModule, in_batches_of
from .registry import (
    _REGISTRY,
    IMAGENET_MEAN,
    IMAGENET_STD,
    create_model,
    get_entry,
    list_models,
)
from .transforms import apply_transforms, resize_to_state_dict
from . import user

log = logging.getLogger("compress1img")

FORMAT = "compress1img"
FORMAT_VERSION = 3  # 2: + transforms, pruned layer shapes; 3: + the user's own classes (arch_args)
# Suffixes that make a missing MODEL argument a missing file rather than an unknown model name.
# Preprocessing saved beside a torch.export program by `save_program`.
PROGRAM_METADATA = "compress1img.json"
_RECORDED_PROGRAM = "(torch.export program, compress1img)"
_MODEL_SUFFIXES = {".th", ".pt", ".pth", ".pt2", ".ckpt", ".bin", ".tar", ".pkl", ".ts", ".jit", ".onnx"}


@dataclass
class LoadedModel:
    module: nn.Module          # in eval mode; takes NORMALISED float32 NCHW input
    arch: str | None           # how to rebuild it: registry name, "timm:NAME", "tv:NAME"; None for programs
    input_size: tuple[int, int, int]   # (3, H, W)
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    num_classes: int
    classes: list[str] | None = None
    source: str = ""           # human description for reports
    transforms: list[str] = field(default_factory=list)  # structural changes to replay on reload (pruning)
    # How evaluation on an image folder resizes and crops (data.py): None for the defaults there.
    interpolation: str | None = None
    crop_pct: float | None = None
    arch_args: dict | None = None  # a class of the user's own (arch "FILE.py:CLASS"): its constructor arguments
    assumed_normalisation: bool = field(default=False, repr=False)  # mean/std are ImageNet's by assumption
    program: str | None = None  # "TorchScript", "torch.export", "ONNX": a graph that runs but has no layers to change


def load_model(model: str | Path, arch: str | None = None, *, trust_model: bool = False,
               num_classes: int | None = None, input_size: int | Sequence[int] | None = None,
               mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
               pretrained: bool = True, arch_args: dict | None = None) -> LoadedModel:
    """Load MODEL (a file or a name) for inference on the CPU; arguments override what the file records.

    `arch` may be a class of the caller's own, "FILE.py:CLASS" or "package.module:CLASS", built with
    `arch_args` (keyword arguments); its input size, mean and std come from the arguments here or from
    the attributes it declares (`input_size`, `mean`, `std`), its number of classes from its output.
    """
    size = _parse_input_size(input_size)
    if arch_args is not None and not user.is_class_spec(arch):
        raise InputError("--arch-args is for a class of your own (--arch FILE.py:CLASS or package.module:CLASS)")
    if arch is None and isinstance(model, str) and model.startswith(BUNDLED_PREFIX):
        path, bundled_arch, classes, description = bundled_entry(model[len(BUNDLED_PREFIX):])
        loaded = _load_file(path, bundled_arch, trust_model=False, num_classes=None, input_size=None)
        loaded.classes, loaded.source = list(classes), description
    elif arch is not None or _is_file_argument(model):  # --arch only makes sense with a weights file
        loaded = _load_file(Path(model), arch, trust_model, num_classes, size, arch_args)
    else:
        module, cfg = create_model_from_name(str(model), num_classes, pretrained=pretrained)
        how = "pretrained" if pretrained else "random init"
        loaded = LoadedModel(module, cfg["arch"], cfg["input_size"], cfg["mean"], cfg["std"], cfg["num_classes"],
                             cfg.get("classes"), source=f"{cfg['arch']} ({how})",
                             interpolation=cfg.get("interpolation"), crop_pct=cfg.get("crop_pct"))
    if size is not None:
        if size != loaded.input_size:  # the model's crop fraction was chosen for its own size
            loaded.crop_pct = None
        loaded.input_size = size
    if mean is not None:
        loaded.mean = _triple(mean, "mean")
    if std is not None:
        loaded.std = _triple(std, "std")
        if min(loaded.std) <= 0:
            raise InputError(f"std must be positive, got {loaded.std}")
    if mean is not None and std is not None:
        loaded.assumed_normalisation = False
    if loaded.assumed_normalisation:
        log.warning("%s records no normalisation: assuming the ImageNet mean/std where --mean/--std are not given",
                    model)
    try:
        loaded.module.eval()
    except NotImplementedError:
        pass  # torch.export programs keep the mode they were exported in and refuse eval()
    outputs = _probe(loaded.module, loaded.input_size, str(model))
    if loaded.num_classes == 0:  # programs and pickled modules: only running them tells
        loaded.num_classes = outputs
    elif outputs != loaded.num_classes:
        raise InputError(f"model {model} outputs {outputs} classes, expected {loaded.num_classes}")
    return loaded


def bundled_model(name: str) -> LoadedModel:
    """A pretrained model shipped with the package, by its name in BUNDLED_MODELS (`bundled:NAME` on the CLI)."""
    return load_model(BUNDLED_PREFIX + name)


def bundled_teacher() -> LoadedModel:
    """The ResNet-20 CIFAR-10 teacher shipped with the package (BSD-2, akamaster)."""
    return bundled_model(BUNDLED_TEACHER_ARCH)


def create_model_from_name(name: str, num_classes: int | None = None, *, pretrained: bool = False,
                           arch_args: dict | None = None) -> tuple[nn.Module, dict]:
    """Build a registry model, "timm:NAME" or "tv:NAME" (bare timm names too, after the registry), a
    Hugging Face model from disk: "hf:FOLDER", "hf:ORG/NAME", "timm:hf-hub:ORG/NAME" (models/hub.py), or a
    class of the caller's own ("FILE.py:CLASS", "package.module:CLASS", with `arch_args`).

    The dict has arch (the name to rebuild it with), input_size, mean, std, num_classes, for timm,
    torchvision and hub models interpolation and crop_pct, and for pretrained torchvision models, classes;
    for a class of one's own, arch_args and what the class declares (input_size, mean, std: None where it
    declares nothing; num_classes None: its output tells).
    """
    if hub.is_hub_name(name):
        return hub.create_from_hub(name, num_classes, pretrained)
    if user.is_class_spec(name):
        if pretrained:
            raise InputError(f"{name} is a class of your own: pass its weights file and --arch {name}")
        module, kwargs = user.build(name, arch_args, num_classes)
        return module, {"arch": user.canonical_spec(name), "arch_args": kwargs, "num_classes": None,
                        **declared_preprocessing(module)}
    if name.startswith("timm:"):
        return _create_timm(name[len("timm:"):], num_classes, pretrained)
    if name.startswith("tv:"):
        return _create_torchvision(name[len("tv:"):], num_classes, pretrained)
    if name in _REGISTRY:
        if pretrained:
            bundled = f", or use the bundled pretrained one: bundled:{name}" if name in BUNDLED_MODELS else ""
            raise InputError(f"compress1img has no pretrained weights for {name}: "
                             f"pass a weights file and --arch {name}{bundled}")
        entry = get_entry(name)
        module = create_model(name, num_classes)
        return module, {"arch": name, "input_size": entry.input_size, "mean": entry.mean, "std": entry.std,
                        "num_classes": entry.num_classes if num_classes is None else num_classes}
    import timm  # only now: importing timm takes a second or two

    if timm.is_model(name):
        return _create_timm(name, num_classes, pretrained)
    raise InputError(f"unknown model {name!r}: use one of {', '.join(list_models())}, timm:NAME or tv:NAME")


def save_model(loaded: LoadedModel, path: str | Path, extra: dict | None = None) -> None:
    """Write `loaded` as a compress1img checkpoint: plain data only, so `load_model` reads it with
    weights_only=True and needs no --arch. `extra` adds top-level entries (plain data and tensors only)."""
    path = Path(path)
    if loaded.arch is None:
        raise InputError(f"cannot save {loaded.source or 'this model'} as a compress1img checkpoint: "
                         "its architecture is unknown (TorchScript, torch.export or pickled module): "
                         "save_program writes it as a torch.export program")
    own = user.is_class_spec(loaded.arch)
    checkpoint: dict[str, Any] = {
        "format": FORMAT, "version": FORMAT_VERSION if own else 2, "arch": loaded.arch,
        **({"arch_args": dict(loaded.arch_args or {})} if own else {}), "num_classes": loaded.num_classes,
        "input_size": list(loaded.input_size), "mean": list(loaded.mean), "std": list(loaded.std),
        "classes": None if loaded.classes is None else list(loaded.classes),
        "transforms": list(loaded.transforms),
        "interpolation": loaded.interpolation, "crop_pct": loaded.crop_pct,
        "state_dict": {k: v.detach().cpu() for k, v in loaded.module.state_dict().items()},
    }
    if hub.rebuild_record(loaded.module) is not None:  # Hugging Face models: their architecture's config
        checkpoint["hub"] = hub.rebuild_record(loaded.module)
    clash = sorted(set(extra or {}) & set(checkpoint))
    if clash:
        raise ValueError(f"extra keys {clash} would overwrite the checkpoint's own")
    checkpoint.update(extra or {})
    atomic_write(path, lambda f: torch.save(checkpoint, f))  # an interrupted save never leaves a truncated model


def save_program(loaded: LoadedModel, path: str | Path) -> None:
    """Write `loaded.module` (any module `torch.export` can capture, e.g. an int8 PT2E model) as a
    torch.export program with our preprocessing beside it: it reloads with `load_model` and no pickled code."""
    path = Path(path)
    example = torch.zeros(2, *loaded.input_size)
    program = torch.export.export(loaded.module, (example,),
                                  dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=65536)},))
    metadata = {"format": FORMAT, "input_size": list(loaded.input_size), "mean": list(loaded.mean),
                "std": list(loaded.std), "num_classes": loaded.num_classes,
                "classes": None if loaded.classes is None else list(loaded.classes), "source": loaded.source,
                "interpolation": loaded.interpolation, "crop_pct": loaded.crop_pct}
    atomic_write(path, lambda f: torch.export.save(program, f, extra_files={PROGRAM_METADATA: json.dumps(metadata)}))


def ignore_mode_switches(graph: nn.Module) -> None:
    """Make `.train()`/`.eval()` no-ops on an exported graph: it keeps the mode it was exported
    in and refuses them, while training and evaluation call them on every model."""
    graph.train = types.MethodType(lambda self, mode=True: self, graph)
    graph.eval = types.MethodType(lambda self: self, graph)


def _from_program_metadata(module: nn.Module, path: Path, metadata: dict) -> LoadedModel:
    return LoadedModel(module, None, tuple(metadata["input_size"]), tuple(metadata["mean"]), tuple(metadata["std"]),
                       int(metadata["num_classes"]), metadata.get("classes"),
                       source=f"{path.name} {_RECORDED_PROGRAM}", interpolation=metadata.get("interpolation"),
                       crop_pct=metadata.get("crop_pct"))


# --- names ---------------------------------------------------------------------------------------------------

def _create_timm(name: str, num_classes: int | None, pretrained: bool) -> tuple[nn.Module, dict]:
    import timm

    if not timm.is_model(name):
        raise InputError(f"unknown timm model {name!r} (timm.list_models() lists them)")
    kwargs = {} if num_classes is None else {"num_classes": num_classes}
    try:
        # Offline, set HF_HUB_OFFLINE=1 to go straight to the local cache instead of retrying.
        module = timm.create_model(name, pretrained=pretrained, **kwargs)
    except OSError:
        raise InputError(f"could not get pretrained weights for timm:{name} (no network?): "
                         f"pass a weights file and --arch timm:{name}") from None
    except RuntimeError as e:
        if not pretrained:
            raise
        raise InputError(f"could not get pretrained weights for timm:{name}: {first_line(e, limit=200)}") from None
    cfg = module.pretrained_cfg
    return module, {"arch": f"timm:{name}", "input_size": tuple(cfg["input_size"]), "mean": tuple(cfg["mean"]),
                    "std": tuple(cfg["std"]), "num_classes": module.num_classes,
                    "interpolation": cfg.get("interpolation"), "crop_pct": cfg.get("crop_pct")}


def _create_torchvision(name: str, num_classes: int | None, pretrained: bool) -> tuple[nn.Module, dict]:
    import torchvision
    from torchvision import models

    if name not in models.list_models(module=torchvision.models):
        raise InputError(f"unknown torchvision classification model {name!r} "
                         "(torchvision.models.list_models() lists them)")
    kwargs = {"weights": "DEFAULT" if pretrained else None}
    if num_classes is not None:
        kwargs["num_classes"] = num_classes
    try:
        module = models.get_model(name, **kwargs)
    except OSError:  # URLError is one
        raise InputError(f"could not get pretrained weights for tv:{name} (no network?): "
                         f"pass a weights file and --arch tv:{name}") from None
    except ValueError as e:  # e.g. pretrained weights with another num_classes
        raise InputError(f"tv:{name}: {first_line(e, limit=200)}") from None
    # The weights' metadata is local and gives the right size (299 for inception_v3, not 224).
    weights = models.get_model_weights(name).DEFAULT
    preprocess = weights.transforms()
    categories = weights.meta.get("categories")
    cfg = {"arch": f"tv:{name}", "input_size": (3, preprocess.crop_size[0], preprocess.crop_size[0]),
           "mean": tuple(preprocess.mean), "std": tuple(preprocess.std),
           "num_classes": len(categories) if num_classes is None else num_classes,
           "interpolation": preprocess.interpolation.value,
           "crop_pct": preprocess.crop_size[0] / preprocess.resize_size[0]}
    if pretrained and categories:
        cfg["classes"] = list(categories)
    return module, cfg


# --- files ---------------------------------------------------------------------------------------------------

def _is_file_argument(model: str | Path) -> bool:
    if isinstance(model, Path) or os.path.exists(model):
        return True
    text = str(model)
    if text.startswith(("timm:", "tv:", hub.HF_PREFIX)):
        return False
    return "/" in text or os.sep in text or Path(text).suffix.lower() in _MODEL_SUFFIXES


def _load_file(path: Path, arch: str | None, trust_model: bool, num_classes: int | None,
               input_size: tuple[int, int, int] | None, arch_args: dict | None = None) -> LoadedModel:
    if path.is_dir():
        raise InputError(f"{path} is a directory, not a model file")
    if not path.exists():
        raise InputError(f"model file {path} not found")
    if path.stat().st_size == 0:
        raise InputError(f"model file {path} is empty (0 bytes)")
    if path.suffix.lower() == ".onnx":
        return _load_onnx(path, arch, input_size)
    kind = _archive_kind(path)
    if kind == "torchscript":
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)  # torch's deprecation notice is not for our users
                module = torch.jit.load(str(path), map_location="cpu")
        except Exception as e:
            raise InputError(f"cannot load TorchScript file {path}: {first_line(e, limit=200)}") from None
        loaded = _program(module, path, "TorchScript model", arch, num_classes, input_size)
        loaded.program = "TorchScript"
        return loaded
    if kind == "export":
        # An int8 program (quantize's model.pt2) calls torch's quantized_decomposed ops, which exist only once
        # this module is imported: a fresh process could not deserialize it otherwise.
        from torch.ao.quantization.fx._decomposed import quantized_decomposed_lib  # noqa: F401
        extra = {PROGRAM_METADATA: ""}
        try:
            program = torch.export.load(str(path), extra_files=extra)
            module = program.module()
        except Exception as e:
            raise InputError(f"cannot load torch.export file {path}: {first_line(e, limit=200)}") from None
        ignore_mode_switches(module)
        batch = _static_batch(program)
        if batch is not None:
            module = FixedBatch(module, batch)
        if extra[PROGRAM_METADATA]:
            loaded = _from_program_metadata(module, path, json.loads(extra[PROGRAM_METADATA]))
        else:
            loaded = _program(module, path, "torch.export program", arch, num_classes,
                              input_size or _example_input_size(program))
        loaded.program = "torch.export"
        return loaded

    obj = _torch_load(path, trust_model)
    if isinstance(obj, dict) and obj.get("format") == FORMAT:
        return _from_checkpoint(obj, path, arch, trust_model)
    state = _find_state_dict(obj)
    if isinstance(state, nn.Module):
        return _pickled_module(state, path, arch, num_classes, input_size)
    if state is None:
        what = f"a {type(obj).__name__}"
        if isinstance(obj, dict):
            what = f"a dict with keys {', '.join(map(str, list(obj)[:6]))}"
        raise InputError(f"{path} holds {what}: neither a model nor a state dict")
    if arch is None:
        raise InputError(f"{path} holds only weights (a state dict): pass --arch to say which model they belong "
                         "to, e.g. --arch cifar_resnet20, --arch timm:resnet18 or --arch tv:resnet18")
    module, cfg = create_model_from_name(arch, num_classes, arch_args=arch_args)
    if num_classes is None:
        found = _classifier_outputs(module, state)
        # (A class of one's own is rebuilt for the file's classes if its constructor takes num_classes.)
        if found is not None and found != _classifier_outputs(module, module.state_dict()):
            module, cfg = create_model_from_name(arch, found, arch_args=arch_args)
    _load_strict(module, state, path, cfg["arch"])
    if user.is_class_spec(arch):
        return _own_class(module, cfg, input_size, f"{path.name} (state dict, class {arch})")
    return LoadedModel(module, cfg["arch"], cfg["input_size"], cfg["mean"], cfg["std"], cfg["num_classes"],
                       source=f"{path.name} (state dict, arch {cfg['arch']})",
                       interpolation=cfg.get("interpolation"), crop_pct=cfg.get("crop_pct"))


def _own_class(module: nn.Module, cfg: dict, input_size: tuple[int, int, int] | None, source: str) -> LoadedModel:
    """A LoadedModel of a class of the user's own; its number of classes comes from the probe in load_model."""
    size = input_size or cfg["input_size"]
    if size is None:
        raise InputError(f"{cfg['arch']} does not declare its input size: pass --input-size (e.g. 32 for CIFAR, "
                         f"224 for ImageNet) or set self.input_size = (3, H, W) in the class")
    return LoadedModel(module, cfg["arch"], _parse_input_size(size), tuple(cfg["mean"] or IMAGENET_MEAN),
                       tuple(cfg["std"] or IMAGENET_STD), 0, source=source, arch_args=cfg["arch_args"],
                       assumed_normalisation=cfg["mean"] is None or cfg["std"] is None)


def declared_preprocessing(module: nn.Module) -> dict:
    """What a module declares of its input: `input_size`, `mean`, `std`, `interpolation` and `crop_pct`
    attributes (or timm's pretrained_cfg); None where it declares nothing."""
    declared = dict(getattr(module, "pretrained_cfg", None) or {})
    for name in ("input_size", "mean", "std", "interpolation", "crop_pct"):
        if getattr(module, name, None) is not None:
            declared[name] = getattr(module, name)
    found = {name: tuple(declared[name]) if declared.get(name) is not None else None
             for name in ("input_size", "mean", "std")}
    crop_pct = declared.get("crop_pct")
    return {**found, "interpolation": declared.get("interpolation"),
            "crop_pct": float(crop_pct) if crop_pct is not None else None}


def _archive_kind(path: Path) -> str | None:
    if not zipfile.is_zipfile(path):
        return None
    with zipfile.ZipFile(path) as archive:
        records = {name.split("/", 1)[-1] for name in archive.namelist()}
    if "constants.pkl" in records:  # TorchScript archives also hold a data.pkl: check them first
        return "torchscript"
    if "data.pkl" in records:  # torch.save
        return None
    if "archive_format" in records or path.suffix.lower() == ".pt2":
        return "export"
    return None


def _torch_load(path: Path, trust_model: bool) -> Any:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        blocked = re.search(r"Unsupported global: GLOBAL (\S+)", str(e))
        if blocked is None:
            raise InputError(f"{path} is not a PyTorch model file (cannot unpickle it)") from None
        if not trust_model:
            raise InputError(f"{path} contains pickled Python objects ({blocked.group(1)}) and unpickling can run "
                             "arbitrary code: pass --trust-model to load it if you trust where it came from") from None
    except (KeyError, EOFError, ValueError, IndexError):  # what garbage makes the unpickler raise
        raise InputError(f"{path} is not a PyTorch model file (cannot unpickle it)") from None
    except Exception as e:
        raise InputError(f"{path} is not a PyTorch model file ({first_line(e, limit=200)})") from None
    # The pickle names its classes' modules: look for them beside the file and in the working directory too.
    folders = [str(path.resolve().parent), os.getcwd()]
    sys.path[:0] = folders
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except ModuleNotFoundError as e:
        raise InputError(f"cannot load {path} even with --trust-model: its classes are in module {e.name!r}, "
                         f"found neither beside it ({folders[0]}) nor in the working directory ({folders[1]}) "
                         f"nor on PYTHONPATH: add the folder holding {e.name.replace('.', '/')}.py (or the "
                         f"package) to PYTHONPATH") from None
    except Exception as e:
        raise InputError(f"cannot load {path} even with --trust-model: {first_line(e, limit=200)}") from None
    finally:
        for folder in folders:
            sys.path.remove(folder)


def _find_state_dict(obj: Any) -> dict[str, torch.Tensor] | nn.Module | None:
    if isinstance(obj, dict) and not _is_state_dict(obj):
        for key in ("state_dict", "model_state_dict", "model"):
            if key in obj:
                obj = obj[key]
                break
    if isinstance(obj, nn.Module):
        return obj
    if not _is_state_dict(obj):
        return None
    state = dict(obj)
    for prefix in ("module.", "_orig_mod."):  # saved from DataParallel / torch.compile
        if all(k.startswith(prefix) for k in state):
            state = {k[len(prefix):]: v for k, v in state.items()}
    return state


def _is_state_dict(obj: Any) -> bool:
    return isinstance(obj, dict) and bool(obj) and all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items())


def _classifier_outputs(module: nn.Module, state: dict[str, torch.Tensor]) -> int | None:
    """Classes of the file's classifier: the model's last nn.Linear, in every architecture we build."""
    linears = [name for name, m in module.named_modules() if isinstance(m, nn.Linear)]
    weight = state.get(f"{linears[-1]}.weight") if linears else None
    return int(weight.shape[0]) if weight is not None and weight.ndim == 2 else None


def _load_strict(module: nn.Module, state: dict[str, torch.Tensor], path: Path, arch: str) -> None:
    own = module.state_dict()
    state = dict(state)
    for key, value in own.items():
        if key.endswith("num_batches_tracked") and key not in state:
            state[key] = value  # files saved before PyTorch 0.4.1 have none; only training mode uses them
    problems = []
    for key, value in own.items():
        if key not in state:
            problems.append(f"{key} is missing from the file")
        elif state[key].shape != value.shape:
            problems.append(f"{key} has shape {_shape(state[key])} in the file, {_shape(value)} in the model")
    problems += [f"{key} is in the file but not in the model" for key in state if key not in own]
    if problems:
        more = f" (and {len(problems) - 1} more mismatched keys)" if len(problems) > 1 else ""
        raise InputError(f"weights file {path} does not fit {arch}: {problems[0]}{more}")
    module.load_state_dict(state, strict=True)


def _from_checkpoint(checkpoint: dict, path: Path, arch: str | None, trust_model: bool = False) -> LoadedModel:
    version = checkpoint.get("version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise InputError(f"{path} is compress1img format version {version}; this compress1img reads up to "
                         f"{FORMAT_VERSION}: upgrade compress1img")
    missing = [k for k in ("arch", "num_classes", "input_size", "mean", "std", "state_dict") if k not in checkpoint]
    if missing:
        raise InputError(f"{path} is a damaged compress1img checkpoint: no {', '.join(missing)}")
    own = user.is_class_spec(checkpoint["arch"])
    named = user.canonical_spec(arch) if user.is_class_spec(arch) else arch
    same = named is not None and named == checkpoint["arch"]
    if named is not None and not same:
        instead = f"pass --arch {checkpoint['arch']}" if own else "leave --arch out"
        raise InputError(f"{path} holds a {checkpoint['arch']} but --arch says {arch}: {instead}")
    if own and not (same or trust_model):
        raise InputError(f"{path} is built by code of your own ({checkpoint['arch']}), which loading it runs: pass "
                         f"--arch {checkpoint['arch']} (or --trust-model) to allow it, or load the code-free "
                         f"model.pt2 beside it")
    if "hub" in checkpoint:  # a Hugging Face model: rebuilt from its recorded config, not from the hub
        module, cfg = hub.rebuild(checkpoint["hub"], checkpoint["num_classes"]), {"arch": checkpoint["arch"]}
    else:
        module, cfg = create_model_from_name(checkpoint["arch"], checkpoint["num_classes"],
                                             arch_args=checkpoint.get("arch_args") if own else None)
    # A pruned model: replay its structural transforms and take the saved (smaller) layer shapes.
    transforms = list(checkpoint.get("transforms", []))
    apply_transforms(module, transforms)
    resize_to_state_dict(module, checkpoint["state_dict"])
    _load_strict(module, checkpoint["state_dict"], path, checkpoint["arch"])
    classes = checkpoint.get("classes")
    return LoadedModel(module, cfg["arch"], _parse_input_size(checkpoint["input_size"]),
                       _triple(checkpoint["mean"], "mean"), _triple(checkpoint["std"], "std"),
                       checkpoint["num_classes"], None if classes is None else list(classes),
                       source=f"{path.name} (compress1img, arch {cfg['arch']})", transforms=transforms,
                       interpolation=checkpoint.get("interpolation"), crop_pct=checkpoint.get("crop_pct"),
                       arch_args=cfg.get("arch_args"))


def _program(module: nn.Module, path: Path, kind: str, arch: str | None, num_classes: int | None,
             input_size: tuple[int, int, int] | None) -> LoadedModel:
    """A model that carries its own code: TorchScript, torch.export or a pickled module."""
    if arch is not None:
        log.warning("--arch %s is ignored: %s holds a whole model (%s)", arch, path, kind)
    if input_size is None:
        raise InputError(f"{path} is a {kind} that does not record its input size: pass --input-size "
                         "(e.g. --input-size 32 for CIFAR, 224 for ImageNet)")
    return LoadedModel(module, None, input_size, IMAGENET_MEAN, IMAGENET_STD, num_classes or 0,
                       source=f"{path.name} ({kind})", assumed_normalisation=True)


def _load_onnx(path: Path, arch: str | None, input_size: tuple[int, int, int] | None) -> LoadedModel:
    """An ONNX model run by ONNX Runtime; its preprocessing from its metadata (what our exports write), its graph's
    input shape, or the arguments."""
    try:
        module = OnnxModule(path.read_bytes())
    except Exception as e:  # onnxruntime raises its own exception types for bad files
        raise InputError(f"cannot load ONNX model {path}: {first_line(e, limit=200)}") from None
    if arch is not None:
        log.warning("--arch %s is ignored: %s is an ONNX model", arch, path)
    meta = module.metadata()
    try:
        recorded = {key: json.loads(meta[key]) for key in ("input_size", "mean", "std", "classes") if key in meta}
    except json.JSONDecodeError:
        raise InputError(f"{path} has damaged metadata (input_size, mean, std, classes must be JSON)") from None
    shape = module.input_shape[1:]
    graph_size = tuple(shape) if len(shape) == 3 and None not in shape else None
    if input_size is not None and graph_size is not None and input_size != graph_size:
        raise InputError(f"{path} takes {'x'.join(map(str, graph_size))} input (its graph's input shape), not "
                         f"--input-size {input_size[-1]}")
    size = input_size or _parse_input_size(recorded.get("input_size")) or graph_size
    if size is None:
        raise InputError(f"{path} does not record its input size (no input_size metadata, dynamic shape): pass "
                         f"--input-size")
    assumed = "mean" not in recorded or "std" not in recorded
    return LoadedModel(module, None, _parse_input_size(size), _triple(recorded.get("mean", IMAGENET_MEAN), "mean"),
                       _triple(recorded.get("std", IMAGENET_STD), "std"), 0, recorded.get("classes"),
                       source=f"{path.name} (ONNX)", assumed_normalisation=assumed, program="ONNX")


def _pickled_module(module: nn.Module, path: Path, arch: str | None, num_classes: int | None,
                    input_size: tuple[int, int, int] | None) -> LoadedModel:
    """A pickled module: its input from the attributes it declares; its class recorded (for model.pt) where it
    rebuilds it (a constructor without arguments), else only a torch.export program can hold what it becomes."""
    declared = declared_preprocessing(module)
    loaded = _program(module, path, "pickled module", arch, num_classes,
                      input_size or _parse_input_size(declared["input_size"]))
    if declared["mean"] is not None and declared["std"] is not None:
        loaded.mean, loaded.std, loaded.assumed_normalisation = declared["mean"], declared["std"], False
    loaded.interpolation, loaded.crop_pct = declared["interpolation"], declared["crop_pct"]
    loaded.arch, loaded.arch_args = user.rebuilt_spec(module) or (None, None)
    return loaded


class FixedBatch(nn.Module):
    """A program exported for one batch size, run on any (in chunks of that size, the last one padded)."""

    def __init__(self, program: nn.Module, batch: int) -> None:
        super().__init__()
        self.program, self.static_batch = program, batch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return in_batches_of(self.static_batch, self.program, x)


def _static_batch(program: Any) -> int | None:
    """The batch size a torch.export program was exported for, if its batch axis is static."""
    inputs = set(program.graph_signature.user_inputs)
    for node in program.graph_module.graph.nodes:
        value = node.meta.get("val")
        if node.op == "placeholder" and node.name in inputs and isinstance(value, torch.Tensor) and value.ndim == 4:
            return value.shape[0] if isinstance(value.shape[0], int) else None
    return None


def _example_input_size(program: Any) -> tuple[int, int, int] | None:
    args = (program.example_inputs or ((), {}))[0]
    if args and isinstance(args[0], torch.Tensor) and args[0].ndim == 4:
        return _parse_input_size(tuple(args[0].shape[1:]))
    return None


# --- checks --------------------------------------------------------------------------------------------------

def _probe(module: nn.Module, input_size: tuple[int, int, int], name: str) -> int:
    """Run a batch of two zero images to catch a wrong input size now, not mid-training; returns the classes."""
    size = "x".join(map(str, input_size))
    try:
        with torch.no_grad():
            out = module(torch.zeros(2, *input_size))
    except Exception as e:
        raise InputError(f"model {name} does not accept {size} input: {first_line(e, limit=200)}") from None
    if not isinstance(out, torch.Tensor) or out.ndim != 2 or out.shape[0] != 2:
        got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise InputError(f"model {name} returns {got} for a batch of 2 {size} images, not (2, classes) logits")
    return int(out.shape[1])


def _parse_input_size(value: int | Sequence[int] | None) -> tuple[int, int, int] | None:
    if value is None:
        return None
    size = (value, value) if isinstance(value, int) else tuple(int(v) for v in value)
    if len(size) == 2:
        size = (3, *size)
    if len(size) != 3 or size[0] != 3 or min(size) < 1:
        raise InputError(f"input size must be S, (H, W) or (3, H, W) with RGB input, got {value}")
    return size


def _triple(value: Sequence[float], what: str) -> tuple[float, float, float]:
    values = tuple(float(v) for v in value)
    if len(values) != 3:
        raise InputError(f"{what} needs 3 values (R, G, B), got {len(values)}")
    return values


def _shape(t: torch.Tensor) -> str:
    return "[" + ",".join(map(str, t.shape)) + "]"
