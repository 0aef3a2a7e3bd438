"""What a run leaves in `--out`: the directory itself, and atomic writes (the reports' content: report.py).

Every file is written under a temporary name and renamed once complete, so a crash
leaves either the previous file or none.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from .errors import InputError

# Files a run may leave in --out; --overwrite removes exactly these and nothing of the user's.
RUN_FILES = ("report.json", "report.md", "healing.png", "patches.png", "model.onnx", "model.pt", "model.pt2",
             "pruned.pt", "checkpoint.pt", "preview.png")
# Where compress keeps its checkpoints; an earlier run's must not be resumed into a new one.
WORK_DIR = ".work"


def prepare_out_dir(out: str | Path, *, overwrite: bool = False, resume: bool = False) -> Path:
    """Check that `out` may be written, and create it. Call after validating inputs."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise InputError(f"--out {out} exists and is not a directory")
    if out.is_dir() and any(out.iterdir()) and not (overwrite or resume):
        raise InputError(f"--out {out} already exists and is not empty: pass --overwrite to replace "
                         f"its results or --resume to continue an interrupted run")
    if overwrite and not resume and out.is_dir():
        for name in RUN_FILES:
            (out / name).unlink(missing_ok=True)
        shutil.rmtree(out / WORK_DIR, ignore_errors=True)
    check_writable(out, f"to --out {out}")
    return out


def check_writable(directory: Path, what: str) -> None:
    """Create `directory` if needed and prove a file can be written in it, before any work; `what` names it."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
        tempfile.TemporaryFile(dir=directory).close()
    except OSError as e:
        raise InputError(f"cannot write {what}: {e.strerror}") from None


def remove_if_empty(out: Path) -> None:
    """Undo `prepare_out_dir` when a run failed before writing anything worth keeping."""
    try:
        out.rmdir()
    except OSError:
        pass


def atomic_write(path: str | Path, write: Callable[[BinaryIO], None]) -> None:
    """Call `write` on a temporary file beside `path`, then rename it over `path`.

    A reader never sees half a file, and a failure (an exception, Ctrl-C) leaves the
    previous file or none, and no temporary file. The parent directory is created.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            os.chmod(temp, 0o666 & ~_umask())  # mkstemp's 0600 would make every file we write private
            write(f)
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise


def _umask() -> int:
    mask = os.umask(0o022)  # the only way to read it is to set it
    os.umask(mask)
    return mask


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write `text` as UTF-8 with `atomic_write`."""
    atomic_write(path, lambda f: f.write(text.encode("utf-8")))
