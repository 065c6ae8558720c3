"""Package layout: every module imports on its own, imports point down, the registry is a leaf,
and the module import graph of ppim has no cycle."""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "ppim"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = sorted(module_name(p) for p in PACKAGE.rglob("*.py"))


def ppim_imports(path: Path) -> "set[str]":
    """The ppim modules ``path`` imports at module level or in a function (relative imports resolved)."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            candidates = [target] + [f"{target}.{alias.name}" for alias in node.names]
        elif isinstance(node, ast.Import):
            candidates = [alias.name for alias in node.names]
        else:
            continue
        found.update(c for c in candidates if c in MODULES and c != name)
    return found


GRAPH = {module_name(p): ppim_imports(p) for p in PACKAGE.rglob("*.py")}


def test_graph_is_read():  # the checks below would pass vacuously on an empty graph
    assert "ppim.weights.pretrained" in GRAPH and "ppim.registry" in GRAPH["ppim.builder"]


def test_registry_is_a_leaf():
    assert GRAPH["ppim.registry"] == set()
    # importing ppim.registry runs ppim/__init__ first, so execute the source file alone as a module
    code = ("import importlib.util, sys; spec = importlib.util.spec_from_file_location('registry', "
            f"{str(PACKAGE / 'registry.py')!r}); m = importlib.util.module_from_spec(spec); "
            "spec.loader.exec_module(m); assert not [n for n in sys.modules if n.startswith('ppim')]")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


def test_key_mapping_and_file_io_import_no_weights_io():
    for leaf in ("ppim.convert", "ppim.convert.mapping", "ppim.fileio", "ppim.weights.errors"):
        assert not {m for m in GRAPH[leaf] if m.startswith("ppim.weights")}, leaf


def test_no_import_cycles():
    state: "dict[str, int]" = {}

    def visit(node: str, stack: "list[str]") -> None:
        state[node] = 1
        for child in sorted(GRAPH[node]):
            if state.get(child) == 1:
                cycle = stack[stack.index(child):] + [child] if child in stack else [node, child]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if child not in state:
                visit(child, stack + [child])
        state[node] = 2

    for module in sorted(GRAPH):
        if module not in state:
            visit(module, [module])


@pytest.mark.parametrize("module", MODULES)
def test_each_module_imports_alone(module):
    subprocess.run([sys.executable, "-c", f"import {module}"], check=True, cwd=ROOT)
