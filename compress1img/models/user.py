"""The user's own model class: `FILE.py:CLASS` or `package.module:CLASS`, built with keyword arguments.

A checkpoint of such a model records the class spec (a file spec with its absolute path) and the
arguments; reloading it imports that code, so it needs the caller's consent (`--arch` naming the same
class, or `--trust-model`): a weights-only file must not be able to name code to run.
"""
from __future__ import annotations

import importlib
import importlib.util
import inspect
import json
import os
import sys
from pathlib import Path
from typing import Any

from torch import nn

from ..errors import InputError, first_line

# Prefixes of names that are not class specs, though they hold a colon.
_NAMED_SOURCES = ("timm:", "tv:", "bundled:", "hf:")


def is_class_spec(arch: str | None) -> bool:
    """Whether `arch` names a class of the user's (`FILE.py:CLASS`, `package.module:CLASS`)."""
    return bool(arch) and ":" in arch and not arch.startswith(_NAMED_SOURCES)


def canonical_spec(spec: str) -> str:
    """The spec as a checkpoint records it: a file spec with the file's absolute path (found from any folder)."""
    where, _, name = spec.rpartition(":")
    if where.endswith(".py"):
        return f"{Path(where).expanduser().resolve()}:{name}"
    return spec


def import_class(spec: str) -> type:
    """The class `spec` names; one-line InputErrors for a missing file, module or class."""
    where, _, name = spec.rpartition(":")
    if not where or not name:
        raise InputError(f"--arch {spec!r}: a class of your own is FILE.py:CLASS or package.module:CLASS")
    if where.endswith(".py"):
        module = _import_file(Path(where).expanduser())
    else:
        here = os.getcwd()
        sys.path.insert(0, here)  # as `python -m` would: a module in the working directory needs no PYTHONPATH
        try:
            module = importlib.import_module(where)
        except ImportError as e:
            raise InputError(f"--arch {spec}: cannot import {where} ({first_line(e)}) from the working directory "
                             f"({here}) or PYTHONPATH: add the folder holding it to PYTHONPATH, or give the file "
                             f"as --arch path/to/file.py:{name}") from None
        except Exception as e:
            raise InputError(f"--arch {spec}: importing {where} failed: {first_line(e, limit=200)}") from None
        finally:
            sys.path.remove(here)
    cls = module
    for part in name.split("."):  # Outer.Inner too
        cls = getattr(cls, part, None)
    if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
        found = "no such name" if cls is None else f"a {type(cls).__name__}, not an nn.Module class"
        raise InputError(f"--arch {spec}: {where} has {found} for {name}")
    return cls


def build(spec: str, args: dict[str, Any] | None, num_classes: int | None = None) -> tuple[nn.Module, dict]:
    """`CLASS(**args)` and the arguments it was built with: `num_classes` is passed too when the constructor
    takes it and `args` does not set it."""
    cls = import_class(spec)
    kwargs = dict(args or {})
    if num_classes is not None and "num_classes" not in kwargs and _takes(cls, "num_classes"):
        kwargs["num_classes"] = num_classes
    try:
        return cls(**kwargs), kwargs
    except Exception as e:
        shown = json.dumps(kwargs) if kwargs else "no arguments"
        raise InputError(f"--arch {spec}: {cls.__name__}({shown}) failed: {first_line(e, limit=200)}; "
                         "pass the constructor's arguments as --arch-args '{\"name\": value}'") from None


def parse_args(text: str | None, option: str = "--arch-args") -> dict[str, Any] | None:
    """`--arch-args`: a JSON object of keyword arguments for the class."""
    if text is None:
        return None
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        value = e
    if not isinstance(value, dict):
        raise InputError(f"{option} must be a JSON object like '{{\"num_classes\": 100}}', got {text!r}")
    return value


def spec_of(module: nn.Module) -> str:
    """The spec of `module`'s class: the file it was defined in where there is one, else module:class."""
    cls = type(module)
    source = getattr(sys.modules.get(cls.__module__), "__file__", None)
    if source and source.endswith(".py"):
        return f"{Path(source).resolve()}:{cls.__qualname__}"
    return f"{cls.__module__}:{cls.__qualname__}"


def rebuilt_spec(module: nn.Module) -> tuple[str, dict] | None:
    """The spec and arguments that rebuild `module` (a pickled module, an nn.Module handed to the API): its
    class, where that builds without arguments (but num_classes, from its last linear layer, where the
    constructor takes it) into a model of the same layout; None otherwise."""
    cls = type(module)
    if "<locals>" in cls.__qualname__ or cls.__module__ == "__main__":  # no name to import it by again
        return None
    linears = [m for m in module.modules() if isinstance(m, nn.Linear)]
    kwargs = {"num_classes": linears[-1].out_features} if linears and _takes(cls, "num_classes") else {}
    try:
        fresh = cls(**kwargs)
    except Exception:  # a constructor that needs arguments: they are not recorded anywhere
        return None
    own, built = module.state_dict(), fresh.state_dict()
    if own.keys() != built.keys() or any(own[k].shape != built[k].shape for k in own):
        return None
    return spec_of(module), kwargs


def _import_file(path: Path):
    if not path.is_file():
        raise InputError(f"--arch {path}: file not found")
    resolved = path.resolve()
    # One module per file, under the file's own name, so that pickles and tracebacks name it plainly.
    for module in list(sys.modules.values()):
        if getattr(module, "__file__", None) and Path(module.__file__).resolve() == resolved:
            return module
    name = resolved.stem if resolved.stem not in sys.modules else f"compress1img_user_{abs(hash(resolved))}"
    spec = importlib.util.spec_from_file_location(name, resolved)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    folder = str(resolved.parent)
    sys.path.insert(0, folder)  # its own imports of files beside it
    try:
        spec.loader.exec_module(module)
    except Exception as e:
        del sys.modules[name]
        raise InputError(f"--arch {path}: running the file failed: {type(e).__name__}: "
                         f"{first_line(e, limit=200)}") from None
    finally:
        sys.path.remove(folder)
    return module


def _takes(cls: type, name: str) -> bool:
    try:
        return name in inspect.signature(cls).parameters
    except (TypeError, ValueError):
        return False
