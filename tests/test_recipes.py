"""Recipes ship inside the package and are found by name, also from an installed copy."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

from compress1img.cli.options import packaged_recipes

ROOT = Path(__file__).resolve().parents[1]


def test_an_installed_package_finds_its_recipes_by_name(tmp_path):
    source = tmp_path / "source"  # a copy, so that building leaves nothing in the checkout
    shutil.copytree(ROOT / "compress1img", source / "compress1img", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(ROOT / name, source / name)
    pip = [sys.executable, "-m", "pip", "-q", "--disable-pip-version-check"]
    subprocess.run([*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", tmp_path / "wheel", source],
                   check=True, cwd=tmp_path)
    wheel = next((tmp_path / "wheel").glob("compress1img-*.whl"))
    subprocess.run([*pip, "install", "--no-deps", "--no-index", "--target", tmp_path / "site", wheel], check=True)
    env = {**os.environ, "PYTHONPATH": str(tmp_path / "site"), "OMP_NUM_THREADS": "1"}
    run = subprocess.run([sys.executable, "-m", "compress1img", "prune", "r56.th", "--recipe", "prune-cifar-r56-p50",
                          "--print-config"], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    printed = tomllib.loads(run.stdout)
    assert printed["sparsity"] == 0.5 and printed["arch"] == "cifar_resnet56" and printed["steps"] == 1500
    listing = subprocess.run([sys.executable, "-c", "import compress1img; print(compress1img.__file__)"],
                             cwd=tmp_path, env=env, capture_output=True, text=True).stdout
    assert listing.startswith(str(tmp_path / "site"))  # the installed copy answered, not the checkout


def test_an_unknown_recipe_name_is_one_line_naming_the_packaged_ones(cli):
    code, err = cli("prune", "model.th", "--recipe", "prune-cifar-r56-p99")
    assert code == 2 and len(err) == 1
    assert err[0].startswith("error: no packaged recipe 'prune-cifar-r56-p99': the packaged ones are ")
    assert all(name in err[0] for name in packaged_recipes())


def test_the_recipes_command_lists_every_packaged_recipe(capsys):
    from compress1img.cli import main

    main(["recipes"])
    listed = [line.split()[0] for line in capsys.readouterr().out.splitlines()]
    assert listed == list(packaged_recipes()) and "prune-cifar-r56-p50" in listed
