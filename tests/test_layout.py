"""The package's layout: every module imports only modules below it, so the layers can be read bottom up."""
from __future__ import annotations

import ast
from pathlib import Path

import compress1img

PACKAGE = Path(compress1img.__file__).parent


def package_imports() -> dict[str, set[str]]:
    """Module -> the package's modules it imports, at the top or inside a function alike (a cycle dodged by
    importing inside a function is still a cycle)."""
    modules = {".".join(p.relative_to(PACKAGE.parent).with_suffix("").parts).removesuffix(".__init__"): p
               for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        parent = name if path.name == "__init__.py" else name.rpartition(".")[0]
        graph[name] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.ImportFrom) or not node.level:
                continue
            levels = parent.split(".")
            base = ".".join(levels[:len(levels) - node.level + 1] + [node.module or ""]).strip(".")
            submodules = {f"{base}.{alias.name}" for alias in node.names} & modules.keys()
            graph[name] |= (submodules or ({base} & modules.keys())) - {name}
    return graph


def test_no_module_of_the_package_imports_one_that_imports_it_back():
    graph = package_imports()
    assert "compress1img.api" in graph and "compress1img.stages" in graph["compress1img.api"]

    def reachable(start: str) -> set[str]:
        seen, todo = set(), [start]
        while todo:
            for nxt in graph[todo.pop()] - seen:
                seen.add(nxt)
                todo.append(nxt)
        return seen

    cycles = sorted(name for name in graph if name in reachable(name))
    assert cycles == [], f"modules on an import cycle: {cycles}"
