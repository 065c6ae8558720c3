"""Package layout: every module imports, imports point down through the layers, the registry is a
leaf, no package attribute hides a submodule, and the module import graph of ppim has no cycle."""
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
    # ppim.errors holds only the base exception classes and imports nothing itself.
    assert GRAPH["ppim.registry"] <= {"ppim.errors"} and GRAPH["ppim.errors"] == set()
    assert GRAPH["ppim.fileio"] == set() and GRAPH["ppim.version"] == set()


#: The package's layers, bottom first: a module imports only from its own layer or below. A new
#: module or package goes into the layer its imports put it in.
LAYERS = [
    {"ppim._zlib", "ppim.errors", "ppim.fileio", "ppim.version", "ppim.registry", "ppim.auto_augment"},
    {"ppim.runtime", "ppim.mathtune", "ppim.subnet", "ppim.transforms", "ppim.weights", "ppim.layers"},
    {"ppim.data"},
    {"ppim.builder"},
    {"ppim.models"},
    {"ppim.flops"},
    {"ppim.deploy"},
    {"ppim.evaluate", "ppim.visualize"},
    {"ppim.training"},
    {"ppim.cli", "ppim.__main__"},
]
LAYER = {area: level for level, areas in enumerate(LAYERS) for area in areas}


def area(module: str) -> str:
    """ppim.deploy.runner -> ppim.deploy: the module or package directly under ppim."""
    return ".".join(module.split(".")[:2])


def test_every_area_has_a_layer():
    unplaced = sorted({area(m) for m in MODULES} - set(LAYER) - {"ppim"})
    assert not unplaced, f"put {unplaced} into LAYERS"


def test_imports_point_down():
    # ppim itself (the lazy package) may be named anywhere: it imports nothing on its own.
    upward = sorted(f"{m} -> {d}" for m, deps in GRAPH.items() for d in deps
                    if d != "ppim" and area(m) in LAYER and LAYER[area(d)] > LAYER[area(m)])
    assert not upward, "imports pointing up: " + "; ".join(upward)


def test_low_layers_stay_low():
    # The registry is a leaf; the sub-network value and the capability layer sit right above the
    # leaves; models know nothing of training, deploy or the command lines; nothing imports the CLI.
    assert LAYER["ppim.registry"] == 0 and LAYER["ppim.subnet"] == LAYER["ppim.runtime"] == 1
    for module, deps in GRAPH.items():
        if area(module) == "ppim.models":
            assert not {area(d) for d in deps} & {"ppim.training", "ppim.deploy", "ppim.cli", "ppim.evaluate"}, module
        if area(module) != "ppim.cli":
            assert not any(area(d) == "ppim.cli" for d in deps), module


def test_key_mapping_and_file_io_import_no_weights_io():
    for leaf in ("ppim.weights.torch_layout", "ppim.fileio", "ppim.weights.errors"):
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


def test_every_module_imports():
    # Whatever module a user names, ppim/__init__ runs first, so one interpreter importing each
    # module in turn covers every entry point; the graph check above rules out cycles.
    code = "import importlib, sys\nfor name in sys.argv[1:]:\n    importlib.import_module(name)"
    subprocess.run([sys.executable, "-c", code, *MODULES], check=True, cwd=ROOT)


def test_no_package_attribute_shadows_a_submodule():
    # `import ppim.deploy.exporting as m` must give the module: a package attribute named like one of
    # its submodules (a re-exported function called `export` beside export.py) would hide it.
    code = ("import importlib, sys\nbad = []\nfor name in sys.argv[1:]:\n"
            "    module = importlib.import_module(name)\n"
            "    parent, _, leaf = name.rpartition('.')\n"
            "    if parent and getattr(sys.modules[parent], leaf) is not module:\n"
            "        bad.append(name)\n"
            "print(' '.join(bad))")
    out = subprocess.run([sys.executable, "-c", code, *MODULES], check=True, cwd=ROOT, capture_output=True, text=True)
    assert out.stdout.split() == []


def test_runtime_is_a_leaf_and_the_only_reader_of_the_cpu():
    # ppim.runtime is what every layer asks about the machine: it may import only the leaves below
    # it, and no other module reads /proc/cpuinfo or guesses CPU features itself.
    assert GRAPH["ppim.runtime"] <= {"ppim.errors", "ppim.fileio"}
    readers = sorted(module_name(p) for p in PACKAGE.rglob("*.py") if "/proc/cpuinfo" in p.read_text(encoding="utf-8"))
    assert readers == ["ppim.runtime"]
    guessing = sorted(module_name(p) for p in PACKAGE.rglob("*.py") if module_name(p) != "ppim.runtime"
                      and any(flag in p.read_text(encoding="utf-8") for flag in ('"avx512', '"amx_', '"avx2"')))
    assert guessing == []
