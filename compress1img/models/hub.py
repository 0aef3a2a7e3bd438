"""Models from the Hugging Face Hub, read from disk only: transformers image classifiers ("hf:FOLDER" or
"hf:ORG/NAME" in the local Hugging Face cache) and timm's hub models ("timm:hf-hub:ORG/NAME").

Nothing here downloads: a hub name is looked up in the local cache (HF_HOME / HF_HUB_CACHE), as with
HF_HUB_OFFLINE=1. Both kinds bring their preprocessing (input size, mean, std, interpolation, crop
fraction) and a record of their architecture that is saved in our checkpoints, so a `model.pt` made
from them reloads without the folder, the cache or any pickled code.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import InputError, first_line
from .registry import IMAGENET_MEAN, IMAGENET_STD

log = logging.getLogger("compress1img")

HF_PREFIX = "hf:"
TIMM_HUB_PREFIX = "timm:hf-hub:"
# The module attribute holding what rebuilds the architecture; save_model writes it into checkpoints.
REBUILD_ATTR = "hub_rebuild"
DEFAULT_SIZE = 224
# preprocessor_config.json names PIL's resampling filters by number.
_PIL_RESAMPLE = {0: "nearest", 1: "lanczos", 2: "bilinear", 3: "bicubic", 4: "box", 5: "hamming"}
# ConvNextImageProcessor (also used by HF ResNets): below this size it resizes to size / crop_pct and crops.
_CONVNEXT_CROP_BELOW = 384


def is_hub_name(name: str) -> bool:
    return name.startswith((HF_PREFIX, TIMM_HUB_PREFIX))


def create_from_hub(name: str, num_classes: int | None, pretrained: bool) -> tuple[nn.Module, dict]:
    """`create_model_from_name` for "hf:..." and "timm:hf-hub:..." names: the module and its cfg dict
    (arch, input_size, mean, std, num_classes, interpolation, crop_pct and, where the model names them,
    classes)."""
    if name.startswith(HF_PREFIX):
        return _create_transformers(name, num_classes, pretrained)
    return _create_timm_hub(name, num_classes, pretrained)


def rebuild_record(module: nn.Module) -> dict | None:
    """What `rebuild` needs to make `module`'s architecture again (plain data), or None for other models."""
    return getattr(module, REBUILD_ATTR, None)


def rebuild(record: dict, num_classes: int) -> nn.Module:
    """A randomly initialised model of the architecture `rebuild_record` described."""
    library, config = record.get("library"), record.get("config")
    if library == "transformers" and isinstance(config, dict):
        transformers = _import_transformers("rebuild this Hugging Face model")
        config_class = transformers.CONFIG_MAPPING[config["model_type"]]
        hf_config = config_class.from_dict(config)
        hf_config.num_labels = num_classes
        module = HFClassifier(transformers.AutoModelForImageClassification.from_config(hf_config))
    elif library == "timm" and isinstance(config, dict):
        import timm

        model_args = {**config.get("model_args", {}), "num_classes": num_classes}
        module = timm.create_model(config["architecture"], pretrained=False, **model_args)
        setattr(module, REBUILD_ATTR, record)
    else:
        raise InputError(f"unknown hub model record {library!r}: made by a newer compress1img?")
    return module


class HFClassifier(nn.Module):
    """A transformers image classifier as a plain module: normalised NCHW images in, a logits tensor out
    (what training, pruning, tracing and export expect of every model)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        setattr(self, REBUILD_ATTR, {"library": "transformers", "config": _plain(model.config.to_dict())})

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(pixel_values=x).logits


# --- transformers ----------------------------------------------------------------------------------------------

def _create_transformers(name: str, num_classes: int | None, pretrained: bool) -> tuple[nn.Module, dict]:
    transformers = _import_transformers(f"load {name}")
    folder = _hf_folder(name[len(HF_PREFIX):], name)
    try:
        config = transformers.AutoConfig.from_pretrained(folder, local_files_only=True)
        relabel = num_classes is not None and num_classes != config.num_labels
        if pretrained:
            extra = {"num_labels": num_classes, "ignore_mismatched_sizes": True} if relabel else {}
            model = transformers.AutoModelForImageClassification.from_pretrained(folder, local_files_only=True,
                                                                                 **extra)
        else:
            if relabel:
                config.num_labels = num_classes
            model = transformers.AutoModelForImageClassification.from_config(config)
    except (OSError, ValueError, KeyError) as e:  # a missing or foreign config, not an image classifier, ...
        raise InputError(f"cannot load {name} as a Hugging Face image classifier: {first_line(e, limit=200)}") \
            from None
    module = HFClassifier(model.float().eval())  # in float32 whatever the weights were saved in
    cfg = {"arch": name, "num_classes": model.config.num_labels, **_hf_preprocessing(folder, model.config, name)}
    labels = [model.config.id2label.get(i, f"LABEL_{i}") for i in range(model.config.num_labels)]
    if pretrained and labels != [f"LABEL_{i}" for i in range(len(labels))]:  # transformers' placeholder names
        cfg["classes"] = labels
    return module, cfg


def _hf_preprocessing(folder: Path, config: Any, name: str) -> dict:
    """Input size, mean, std, interpolation and crop fraction from the folder's preprocessor_config.json,
    the way transformers' image processors read it."""
    path = folder / "preprocessor_config.json"
    if not path.is_file():
        side = int(getattr(config, "image_size", None) or DEFAULT_SIZE)
        log.warning("%s has no preprocessor_config.json: assuming %dx%d input and the ImageNet mean/std "
                       "(--input-size, --mean, --std to say otherwise)", name, side, side)
        return {"input_size": (3, side, side), "mean": IMAGENET_MEAN, "std": IMAGENET_STD}
    try:
        pre = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise InputError(f"cannot read {path}: {first_line(e, limit=200)}") from None
    resize = _hw(pre.get("size"))
    crop = _hw(pre.get("crop_size"))
    if pre.get("do_center_crop") and crop is not None:  # resize the shorter side, then crop
        size, crop_pct = crop, crop[0] / resize[0] if resize is not None else None
    elif "crop_pct" in pre and resize is not None:  # ConvNextImageProcessor: crop_pct below 384 px
        size = resize
        crop_pct = float(pre["crop_pct"]) if resize[0] < _CONVNEXT_CROP_BELOW else 1.0
    else:  # resized whole to `size`
        size, crop_pct = resize or (DEFAULT_SIZE, DEFAULT_SIZE), 1.0
    if pre.get("do_normalize", True):
        mean, std = pre.get("image_mean", IMAGENET_MEAN), pre.get("image_std", IMAGENET_STD)
    else:  # the model takes [0, 1] pixels as they are
        mean, std = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)
    cfg = {"input_size": (3, *size), "mean": tuple(map(float, mean)), "std": tuple(map(float, std)),
           "interpolation": _PIL_RESAMPLE.get(pre.get("resample"))}
    if crop_pct is not None:
        cfg["crop_pct"] = crop_pct
    return cfg


def _hw(size: Any) -> tuple[int, int] | None:
    """(height, width) of a preprocessor size entry: an int, {"height", "width"} or {"shortest_edge"}."""
    if isinstance(size, int):
        return size, size
    if isinstance(size, dict):
        if "height" in size and "width" in size:
            return int(size["height"]), int(size["width"])
        if "shortest_edge" in size:
            return int(size["shortest_edge"]), int(size["shortest_edge"])
    return None


def _hf_folder(name: str, what: str) -> Path:
    folder = Path(name).expanduser()
    if folder.is_dir():
        return folder
    if folder.exists() or name.count("/") != 1 or name.startswith((".", "/")):
        raise InputError(f"{what}: {name} is neither a model folder (saved with save_pretrained) "
                         "nor ORG/NAME of a model in the local Hugging Face cache")
    return cached_snapshot(name, what)


def _import_transformers(why: str):
    try:
        import transformers
    except ImportError:
        raise InputError(f"to {why}, install transformers: pip install 'compress1img[hf]'") from None
    return transformers


# --- timm hub names --------------------------------------------------------------------------------------------

def _create_timm_hub(name: str, num_classes: int | None, pretrained: bool) -> tuple[nn.Module, dict]:
    import timm

    folder = cached_snapshot(name[len(TIMM_HUB_PREFIX):], name)
    try:
        config = json.loads((folder / "config.json").read_text())
        kwargs = {} if num_classes is None else {"num_classes": num_classes}
        # timm's "local-dir:" reads the same config.json and weights as "hf-hub:", without asking the Hub.
        module = timm.create_model(f"local-dir:{folder}", pretrained=pretrained, **kwargs)
    except (OSError, ValueError, KeyError, RuntimeError) as e:
        raise InputError(f"cannot load {name} from {folder}: {first_line(e, limit=200)}") from None
    setattr(module, REBUILD_ATTR, {"library": "timm", "config": _plain(config)})
    pre = module.pretrained_cfg
    cfg = {"arch": name, "input_size": tuple(pre["input_size"]), "mean": tuple(pre["mean"]),
           "std": tuple(pre["std"]), "num_classes": module.num_classes,
           "interpolation": pre.get("interpolation"), "crop_pct": pre.get("crop_pct")}
    labels = pre.get("label_names")
    if pretrained and labels and len(labels) == module.num_classes:
        cfg["classes"] = list(labels)
    return module, cfg


def cached_snapshot(repo: str, what: str) -> Path:
    """The local snapshot folder of hub repository `repo` ("ORG/NAME" or "ORG/NAME@REVISION"), never
    downloading."""
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    repo_id, _, revision = repo.partition("@")
    try:
        return Path(snapshot_download(repo_id, revision=revision or None, local_files_only=True))
    except LocalEntryNotFoundError:
        raise InputError(f"{what} is not in the local Hugging Face cache {constants.HF_HUB_CACHE}: download it "
                         f"where there is network (hf download {repo_id}) or point HF_HOME / HF_HUB_CACHE at a "
                         "cache that has it") from None
    except Exception as e:  # a malformed id (HFValidationError), an incomplete snapshot, ...
        raise InputError(f"{what}: {first_line(e, limit=200)}") from None


# --- helpers ---------------------------------------------------------------------------------------------------

def _plain(config: dict) -> dict:
    """The config as JSON-able plain data: checkpoints are read with torch.load(weights_only=True)."""
    return json.loads(json.dumps(config, default=str))

