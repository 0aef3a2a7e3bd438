"""The scripts in examples/ run as a user runs them, with tiny budgets, so that they cannot rot."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).parent.parent / "examples"
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
# Each example with arguments that keep it to seconds.
TINY = {
    "prune_api.py": ["--steps", "2"],
    "distill_api.py": ["--steps", "2"],
    "quantize_api.py": ["--steps", "2"],
    "choose_image_api.py": ["coffee", "noise", "--steps", "2", "--patches", "32"],
}


def test_every_example_has_a_tiny_run_here():
    assert sorted(TINY) == sorted(p.name for p in EXAMPLES.glob("*.py"))


@pytest.mark.parametrize("name", sorted(TINY))
def test_the_example_runs_to_the_end(name, tmp_path):
    args = [*TINY[name]]
    if "--out" not in args and name != "choose_image_api.py":
        args += ["--out", str(tmp_path / "out")]
    if name == "choose_image_api.py":
        args += ["--preview", str(tmp_path / "look.png")]
    result = subprocess.run([sys.executable, str(EXAMPLES / name), *args], capture_output=True, text=True,
                            timeout=600, env=ENV, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip(), "an example says what it did"
