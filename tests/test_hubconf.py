"""paddle.hub over a local clone: hubconf.py lists every registered model, its help is the
constructor's docstring, and load builds the model with hand-placed pretrained weights."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import paddle
import pytest

import ppim
from tiny import tiny_kwargs

ROOT = Path(__file__).resolve().parents[1]
TINY = tiny_kwargs()


def place_weights(model, file_name):
    """Put a weights file in the cache by hand, as an offline user would."""
    weights = Path(os.environ["PPIM_HOME"]) / "weights"
    weights.mkdir(parents=True, exist_ok=True)
    paddle.save(model.state_dict(), str(weights / file_name))


def test_list_is_every_registered_model():
    assert sorted(paddle.hub.list(str(ROOT), source="local")) == ppim.list_models()


def test_help_is_the_constructor_docstring():
    text = paddle.hub.help(str(ROOT), "super_lvvit_s", source="local")
    assert text == ppim.super_lvvit_s.__doc__ and "LV-ViT-S" in text
    words = " ".join(text.split())  # the usage paragraph is wrapped
    assert "super_lvvit_s.pth in $PPIM_HOME/weights, published top-1 83.47%" in words and "num_classes" in words


def test_load_builds_the_model_with_hand_placed_weights():
    source = ppim.lvvit_s(**TINY)
    place_weights(source, ppim.get_model_cfg("lvvit_s")["weights"]["file_name"])
    model = paddle.hub.load(str(ROOT), "lvvit_s", source="local", pretrained=True, **TINY)
    assert isinstance(model, ppim.LVViT)
    for key, value in source.state_dict().items():
        np.testing.assert_array_equal(model.state_dict()[key].numpy(), value.numpy(), err_msg=key)


def test_unknown_entry_point_is_refused():
    with pytest.raises(RuntimeError, match="Cannot find callable lvvit_x"):
        paddle.hub.load(str(ROOT), "lvvit_x", source="local")


def test_load_from_a_copy_of_the_clone_in_a_fresh_interpreter(tmp_path):
    """What a user does: a clone somewhere, Python started elsewhere, ppim not installed."""
    clone = tmp_path / "clone"
    shutil.copytree(ROOT / "ppim", clone / "ppim", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "hubconf.py", clone)
    source = ppim.lvvit_s(**TINY)
    place_weights(source, "lvvit_s_224.pdparams")
    source.eval()
    expected = source(paddle.ones([1, 3, 64, 64])).numpy()
    script = (
        "import sys, numpy as np, paddle\n"
        f"model = paddle.hub.load({str(clone)!r}, 'lvvit_s', source='local', pretrained=True, **{TINY!r})\n"
        "model.eval()\n"
        "import ppim\n"
        f"assert ppim.__file__.startswith({str(clone)!r}), ppim.__file__\n"
        "np.save(sys.argv[1], model(paddle.ones([1, 3, 64, 64])).numpy())\n")
    out = tmp_path / "logits.npy"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    subprocess.run([sys.executable, "-c", script, str(out)], cwd=tmp_path, env=env, check=True)
    np.testing.assert_allclose(np.load(out), expected, rtol=1e-5, atol=1e-5)


def test_offline_doc_snippet_reports_hand_placed_files(capsys):
    """docs/offline.md's "check what is in place" block, run as a user would after copying one file."""
    text = (ROOT / "docs" / "offline.md").read_text(encoding="utf-8")
    snippet = text.split("Check what is in place:\n\n```python\n", 1)[1].split("```", 1)[0]
    place_weights(ppim.lvvit_s(**TINY), "lvvit_s_224.pdparams")
    exec(compile(snippet, "offline.md", "exec"), {})
    lines = {line.split()[0]: line.split()[1] for line in capsys.readouterr().out.splitlines()}
    assert lines["lvvit_s"] == "found" and lines["super_lvvit_s"] == "missing"
    assert sorted(lines) == ppim.list_models()
