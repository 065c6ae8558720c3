"""docs/quickstart.ipynb runs top to bottom in a real Jupyter kernel, offline.

The test plays the user who has put weights on an offline machine: PPIM_HOME is a temporary directory
with a (randomly initialised, full-size) lvvit_s_224.pdparams and an official-layout PyTorch
super_deit_s.pth in its weights cache, and the notebook's working directory holds the PyTorch
lvvit_t.pth it converts. Nothing is downloaded."""
import json
import os
import re
import time
from pathlib import Path

import numpy as np
import paddle
import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")
torch = pytest.importorskip("torch")

import ppim  # noqa: E402
from model_utils import torch_state

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "docs" / "quickstart.ipynb"


def cell_text(cell):
    return "".join(out.get("text", "") for out in cell.outputs if out.output_type == "stream")


def test_notebook_is_stored_clean_and_bilingual():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    code = [cell for cell in nb.cells if cell.cell_type == "code"]
    assert code and all(not cell.outputs and cell.execution_count is None for cell in code)
    markdown = "\n".join(cell.source for cell in nb.cells if cell.cell_type == "markdown")
    assert re.search(r"[\u4e00-\u9fff]", markdown) and "Install" in markdown and "安装" in markdown
    assert "http" not in "".join(cell.source for cell in code)  # nothing to download in the code cells


def test_quickstart_notebook_runs_offline(tmp_path, monkeypatch):
    home = Path(os.environ["PPIM_HOME"])  # tests/conftest.py: a fresh cache per test
    weights = home / "weights"
    weights.mkdir(parents=True)
    paddle.seed(0)
    paddle.save(ppim.lvvit_s().state_dict(), str(weights / "lvvit_s_224.pdparams"))
    torch.save({"model": torch_state(ppim.super_deit_s()), "epoch": 299}, weights / "super_deit_s.pth")
    work = tmp_path / "work"
    work.mkdir()
    torch.save(torch_state(ppim.lvvit_t()), work / "lvvit_t.pth")

    # The kernel inherits this environment: the cache above, and ppim importable from the checkout.
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    for proxy in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"):
        monkeypatch.setenv(proxy, "http://127.0.0.1:9")  # any download attempt fails at once
    nb = nbformat.read(NOTEBOOK, as_version=4)
    start = time.perf_counter()
    nbclient.NotebookClient(nb, timeout=600, kernel_name="python3",
                            resources={"metadata": {"path": str(work)}}).execute()
    seconds = time.perf_counter() - start
    print(f"quickstart.ipynb ran in {seconds:.1f} s")
    assert seconds < 180

    text = "\n".join(cell_text(cell) for cell in nb.cells if cell.cell_type == "code")
    assert "26.2M parameters, 6.55 GFLOPs" in text
    assert "true class: 281 tabby, tabby cat" in text
    assert "4 images, top-1" in text
    assert "128x0.5 128x0.7 128x1.0 160x0.5" in text and "224x1.0   4.60 GFLOPs (100%)" in text
    assert "top-1 (%)" in text and "73.75" in text  # evaluate's sub-network table, with the published figures
    assert "157 matched" in text and "0 missing" in text
    diff = float(re.search(r"max \|Paddle Inference - eager\|: (\S+)", text).group(1))
    assert diff < 1e-3
    # what the notebook wrote stayed in its working directory and the cache
    assert (work / "lvvit_t.pdparams").is_file()
    assert json.loads((work / "inference" / "lvvit_s" / "ppim.json").read_text())["model"] == "lvvit_s"
    # the PyTorch file was converted once and cached, keyed by its content
    assert len(list((weights / "converted").glob("super_deit_s-*.pdparams"))) == 1
    assert not any(path.name.endswith(".part") for path in weights.rglob("*"))
    np.testing.assert_array_equal(ppim.lvvit_t(pretrained=str(work / "lvvit_t.pdparams")).head.weight.numpy(),
                                  ppim.lvvit_t(pretrained=str(work / "lvvit_t.pth")).head.weight.numpy())


def test_every_cell_needs_only_the_setup_cell():
    """Offline, a section whose weights file is missing fails alone: no code cell uses a variable that
    a cell other than the setup cell (the first code cell, which loads no weights) defines."""
    import ast
    import builtins

    nb = nbformat.read(NOTEBOOK, as_version=4)
    code = [cell.source for cell in nb.cells if cell.cell_type == "code"]

    def names(source):
        tree = ast.parse("\n".join(line for line in source.splitlines() if not line.lstrip().startswith(("!", "%"))))
        stored, loaded = set(), set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Name):
                (stored if isinstance(node.ctx, ast.Store) else loaded).add(node.id)
            elif isinstance(node, (ast.Import, ast.ImportFrom)):
                stored.update((alias.asname or alias.name).split(".")[0] for alias in node.names)
            elif isinstance(node, (ast.FunctionDef, ast.ClassDef)):
                stored.add(node.name)
            elif isinstance(node, ast.arg):
                stored.add(node.arg)
        return stored, loaded

    setup, _ = names(code[0])
    assert {"names", "photos", "np", "paddle", "ppim"} <= setup
    assert "pretrained" not in code[0]
    for source in code[1:]:
        stored, loaded = names(source)
        missing = loaded - stored - setup - set(dir(builtins)) - {"display"}
        assert not missing, f"cell uses {sorted(missing)} from another cell:\n{source}"
