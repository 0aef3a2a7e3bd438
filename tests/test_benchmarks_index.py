"""benchmarks/ stays indexed, finds its data in one place and uses only compress1img's public names.

Static checks only (no script is run): they read the files and parse them with `ast`.
"""
from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
INDEX = BENCHMARKS / "README.md"
# The only files that may name the data folder: everything else takes its paths from them.
PATH_FILES = {"paths.py", "paths.sh"}
# Modules the scripts import (no command line of their own).
HELPERS = {"paths.py", "overrides.py"}


def scripts(*suffixes: str) -> list[str]:
    """Scripts of benchmarks/ and benchmarks/pilots/, relative to benchmarks/ (results/ left out)."""
    found = [p for p in BENCHMARKS.rglob("*") if p.suffix in suffixes and p.is_file()
             and "results" not in p.relative_to(BENCHMARKS).parts and "__pycache__" not in p.parts]
    return sorted(p.relative_to(BENCHMARKS).as_posix() for p in found)


def python_scripts() -> list[str]:
    return [s for s in scripts(".py") if s not in HELPERS]


def indexed_scripts() -> set[str]:
    """The first cell of every table row of benchmarks/README.md that names a file: `name.py` / `name.sh`."""
    rows = re.findall(r"^\| `([^`]+\.(?:py|sh))` \|", INDEX.read_text(), flags=re.MULTILINE)
    return set(rows)


def private_imports(path: Path) -> set[str]:
    """module.name for each name starting with "_" imported from compress1img (or a private module of it)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").split(".")[0] == "compress1img":
            if any(part.startswith("_") for part in node.module.split(".")):
                found.add(node.module)
            found |= {f"{node.module}.{alias.name}" for alias in node.names if alias.name.startswith("_")}
        elif isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.split(".")[0] == "compress1img"
                      and any(part.startswith("_") for part in alias.name.split("."))}
    return found


def test_there_are_scripts_to_check():
    assert "summarize.py" in scripts(".py") and "prune_r56.sh" in scripts(".sh")
    assert any(s.startswith("pilots/") for s in scripts(".py"))


def test_every_benchmark_script_has_a_row_in_the_index():
    missing = set(scripts(".py", ".sh")) - indexed_scripts()
    assert not missing, f"benchmarks/README.md has no row for: {sorted(missing)}"


def test_every_row_of_the_index_names_a_script_that_exists():
    stale = indexed_scripts() - set(scripts(".py", ".sh"))
    assert not stale, f"benchmarks/README.md indexes scripts that are not there: {sorted(stale)}"


@pytest.mark.parametrize("script", [s for s in scripts(".py", ".sh") if Path(s).name not in PATH_FILES])
def test_no_script_names_the_data_folder_but_paths_py_and_paths_sh(script):
    text = (BENCHMARKS / script).read_text()
    assert "shared/data" not in text, f"{script} names the data folder: take it from paths.py / paths.sh"


@pytest.mark.parametrize("script", scripts(".sh"))
def test_every_shell_script_but_paths_sh_sources_paths_sh(script):
    if script == "paths.sh":
        return
    assert re.search(r"^source .*paths\.sh", (BENCHMARKS / script).read_text(), flags=re.MULTILINE), script


@pytest.mark.parametrize("script", scripts(".py"))
def test_every_python_script_parses(script):
    ast.parse((BENCHMARKS / script).read_text(), filename=script)


@pytest.mark.parametrize("script", python_scripts())
def test_no_script_imports_a_private_name_from_compress1img(script):
    found = private_imports(BENCHMARKS / script)
    assert not found, f"{script} imports private names of compress1img: {sorted(found)}"


@pytest.mark.parametrize("script", python_scripts())
def test_no_script_replaces_a_part_of_compress1img_at_run_time(script):
    """Experiments go in through the extension points (loss_fn, augment, hooks, patch_config), not by patching."""
    tree = ast.parse((BENCHMARKS / script).read_text(), filename=script)
    imported_modules = {alias.asname or alias.name for node in ast.walk(tree) if isinstance(node, ast.Import)
                        for alias in node.names if alias.name.startswith("compress1img")}
    patched = [ast.unparse(target) for node in ast.walk(tree) if isinstance(node, ast.Assign)
               for target in node.targets for part in (target.elts if isinstance(target, ast.Tuple) else [target])
               if isinstance(part, ast.Attribute) and ast.unparse(part.value).split(".")[0] in
               {m.split(".")[0] for m in imported_modules} | {"compress1img"}]
    assert not patched, f"{script} assigns to compress1img's attributes: {patched}"


@pytest.mark.parametrize("script", python_scripts())
def test_every_python_script_parses_its_arguments_with_argparse_described_by_its_docstring(script):
    tree = ast.parse((BENCHMARKS / script).read_text(), filename=script)
    parsers = [node for node in ast.walk(tree) if isinstance(node, ast.Call)
               and isinstance(node.func, ast.Attribute) and node.func.attr == "ArgumentParser"]
    has_main_guard = any(isinstance(node, ast.If) and "__main__" in ast.unparse(node.test) for node in tree.body)
    described = bool(parsers) and all(any(k.arg == "description" and "__doc__" in ast.unparse(k.value)
                                          for k in p.keywords) for p in parsers)
    assert described, f"{script}: argparse.ArgumentParser(description=<from __doc__>) expected"
    assert has_main_guard, f"{script} runs at import: put the work in main() under `if __name__ == \"__main__\"`"
