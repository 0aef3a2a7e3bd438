"""Shared fixtures."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

# pytest runs two processes side by side (pyproject.toml): one thread each, and one for the commands the tests
# start, so that threads never outnumber the two cores (OpenMP threads waiting on a busy core made training
# steps 10-50x slower).
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)

# The files whose tests take longest, longest first (per-file sums of a `pytest -n 0 --junitxml` run; they set an
# order only), are collected first. The two processes take whole files in collection order
# (pyproject.toml: --dist loadfile --no-loadscope-reorder), so these start at once and the short files fill in
# at the end, instead of one process running the last long file while the other waits.
LONGEST_FILES = ("test_examples.py", "test_cli.py", "test_prune.py", "test_quantize.py", "test_reliability.py",
                 "test_own_model.py", "test_distributed.py")


def pytest_collection_modifyitems(items):
    first = {name: rank for rank, name in enumerate(LONGEST_FILES)}
    items.sort(key=lambda item: first.get(item.path.name, len(first)))  # stable: each file keeps its own order


# The repository is checked out next to shared/, which holds the real test material (see shared/data/MANIFEST.md).
SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real test material not found at {SHARED_DATA} (expected the checkout next to shared/)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def test_slice(tmp_path_factory, shared_data) -> Path:
    """200 real CIFAR-10 test images, 20 per class."""
    with np.load(shared_data / "cifar10_test_jpeg75.npz") as data:
        path = tmp_path_factory.mktemp("data") / "slice.npz"
        np.savez(path, images=data["images"][::50], labels=data["labels"][::50], classes=data["classes"])
    return path


@pytest.fixture(scope="session")
def tiny_teacher(tmp_path_factory) -> Path:
    """A small randomly initialised CIFAR ResNet-20 saved in compress1img's own format."""
    from compress1img import save_model
    from compress1img.api import build_student, bundled_teacher

    torch.manual_seed(0)
    model = build_student("cifar_resnet20", bundled_teacher())
    path = tmp_path_factory.mktemp("teacher") / "teacher.pt"
    save_model(model, path)
    return path


@pytest.fixture
def cli(capsys):
    """`compress1img ARGS` in this process (to monkeypatch it, and without a new interpreter's start-up):
    (exit code, stderr lines). Restores what main() changes in logging, and runs torch on one thread like
    the subprocesses do."""
    import logging

    from compress1img.cli import main

    logger = logging.getLogger("compress1img")
    saved = logger.handlers[:], logger.propagate, logger.level
    threads = torch.get_num_threads()
    torch.set_num_threads(1)

    def call(*args) -> tuple[int, list[str]]:
        try:
            main([str(a) for a in args])
            code = 0  # a command that succeeds returns
        except SystemExit as e:
            code = e.code or 0
        return code, capsys.readouterr().err.strip().splitlines()

    yield call
    logger.handlers[:], logger.propagate, logger.level = saved
    torch.set_num_threads(threads)
