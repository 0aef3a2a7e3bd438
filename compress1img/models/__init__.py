"""Model architectures (a small registry) and loading/saving of the models compress1img works on."""
from . import cifar_resnet, wrn  # noqa: F401  (importing them registers their architectures)
from .bundled import BUNDLED_TEACHER
from .loading import LoadedModel, bundled_model, bundled_teacher, create_model_from_name, load_model, save_model, \
    save_program
from .registry import ModelEntry, create_model, get_entry, list_models, register_model

__all__ = ["BUNDLED_TEACHER", "LoadedModel", "bundled_model", "bundled_teacher", "ModelEntry", "create_model",
           "create_model_from_name", "get_entry", "list_models", "load_model", "register_model", "save_model",
           "save_program"]
