"""PyTorch checkpoints -> ppim: numerical parity with an independent PyTorch LV-ViT, checkpoint
containers, strict reports, conversion caching, release URLs and Google Drive's confirmation page
served by a real local HTTP server, and hostile files."""
import argparse
import hashlib
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import paddle
import pytest

torch = pytest.importorskip("torch")

import ppim  # noqa: E402
from ppim import registry, weights  # noqa: E402
from ppim.weights import CheckpointError, UnsafeCheckpointError, convert_file  # noqa: E402
from http_server import LocalServer  # noqa: E402
from torch_reference import TorchLVViT, randomized  # noqa: E402
from tiny import tiny_kwargs

ROOT = Path(__file__).resolve().parents[2]
TINY = tiny_kwargs(num_classes=10)


def tiny(**kwargs):
    return ppim.create_model("lvvit_s", **{**TINY, **kwargs})


@pytest.fixture(scope="module")
def reference():
    """(torch model, its state dict, a fixed input, its logits)."""
    model = randomized(TorchLVViT())
    x = torch.from_numpy(np.random.default_rng(1).standard_normal((3, 3, 64, 64)).astype("float32"))
    with torch.no_grad():
        logits = model(x).numpy()
    return model, model.state_dict(), x.numpy(), logits


def logits_of(model, x):
    model.eval()
    with paddle.no_grad():
        return model(paddle.to_tensor(x)).numpy()


def assert_parity(model, reference):
    _, _, x, expected = reference
    np.testing.assert_allclose(logits_of(model, x), expected, rtol=1e-5, atol=1e-5 * np.abs(expected).max())


@pytest.mark.smoke
@pytest.mark.parametrize("container", ["bare", "deit", "timm_module"])
def test_logits_match_the_torch_reference(tmp_path, reference, container):
    _, state, _, _ = reference
    if container == "deit":
        checkpoint = {"model": state, "optimizer": {}, "epoch": 299, "args": argparse.Namespace(lr=5e-4)}
    elif container == "timm_module":
        checkpoint = {"state_dict": {f"module.{k}": v for k, v in state.items()}, "arch": "lvvit_s",
                      "metric": np.float64(83.3), "version": 2}
    else:
        checkpoint = state
    source = tmp_path / "ckpt.pth.tar"
    torch.save(checkpoint, source)
    model = tiny(pretrained=str(source))
    assert_parity(model, reference)


def test_ema_weights_are_chosen_with_ema(tmp_path, reference):
    _, state, _, _ = reference
    junk = {k: torch.zeros_like(v) for k, v in state.items()}
    source = tmp_path / "train.pth"
    torch.save({"model": junk, "model_ema": state}, source)
    out = tmp_path / "ema.pdparams"
    convert_file(source, out, tiny(), ema=True)
    assert_parity(tiny(pretrained=str(out)), reference)
    torch.save({"model": state}, tmp_path / "no_ema.pth")
    with pytest.raises(CheckpointError, match="no EMA weights.*'model'"):
        convert_file(tmp_path / "no_ema.pth", tmp_path / "x.pdparams", tiny(), ema=True)


def test_cli_converts_fp16_and_reports(tmp_path, reference):
    _, state, _, _ = reference
    source = tmp_path / "half.pth"
    torch.save({k: (v.half() if v.is_floating_point() else v) for k, v in state.items()}, source)
    out = tmp_path / "half.pdparams"
    code = (
        "import sys, ppim.registry as r; r.load_families(); "
        "import runpy; r._CFGS['lvvit_s']['weights']['url'] = None; "
        f"sys.argv = ['convert.py', {str(source)!r}, {str(out)!r}, '--model', 'lvvit_s']; "
        "runpy.run_path('tools/convert.py', run_name='__main__')"
    )
    # The CLI builds the full-size lvvit_s, which the tiny checkpoint cannot fit: a strict refusal.
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 2 and "shape mismatches" in result.stderr and not out.exists()
    report = convert_file(source, out, tiny())
    assert len(report.state.matched) == len(tiny().state_dict()) and "wrote" in str(report)
    model = tiny(pretrained=str(out))
    _, _, x, expected = reference
    np.testing.assert_allclose(logits_of(model, x), expected, atol=0.05 * np.abs(expected).max())


def test_num_classes_drops_heads_and_strict_names_keys(tmp_path, reference):
    _, state, _, _ = reference
    source = tmp_path / "w.pth"
    torch.save(state, source)
    report = convert_file(source, tmp_path / "five.pdparams", tiny(num_classes=5))
    assert sorted(report.state.dropped) == ["aux_head.bias", "aux_head.weight", "head.bias", "head.weight"]
    broken = dict(state)
    del broken["blocks.1.mlp.fc2.bias"]
    broken["extra.weight"] = torch.ones(2)
    torch.save(broken, source)
    with pytest.raises(CheckpointError) as err:
        convert_file(source, tmp_path / "bad.pdparams", tiny())
    assert "blocks.1.mlp.fc2.bias" in str(err.value) and "extra.weight" in str(err.value)
    assert not (tmp_path / "bad.pdparams").exists()


def test_local_checkpoint_is_converted_once_and_cached(tmp_path, reference):
    _, state, _, _ = reference
    source = tmp_path / "mine.pth"
    torch.save(state, source)
    tiny(pretrained=str(source))
    digest = hashlib.sha256(source.read_bytes()).hexdigest()
    cached = list((weights.weights_dir() / "converted").glob(f"lvvit_s-{digest[:32]}-auto.pdparams"))
    assert len(cached) == 1  # keyed by the source's content
    stamp = cached[0].stat().st_mtime_ns
    assert_parity(tiny(pretrained=str(source)), reference)
    assert cached[0].stat().st_mtime_ns == stamp  # read from the cache, not converted again


def test_release_url_is_downloaded_converted_and_cached(tmp_path, reference, monkeypatch):
    _, state, _, _ = reference
    torch.save({"state_dict": state}, tmp_path / "lvvit_t.pth")
    with LocalServer() as server:
        server.add("/releases/download/v0.2.0/lvvit_t.pth", (tmp_path / "lvvit_t.pth").read_bytes())
        monkeypatch.setitem(registry._CFGS["lvvit_t"]["weights"], "url",
                            server.url("/releases/download/v0.2.0/lvvit_t.pth"))
        model = ppim.lvvit_t(pretrained=True, skip_lam=2.0, **TINY)
        assert server.count() == 1
        assert_parity(model, reference)
        assert len(list((weights.weights_dir() / "converted").glob("lvvit_t-*-auto.pdparams"))) == 1
        assert_parity(ppim.lvvit_t(pretrained=True, skip_lam=2.0, **TINY), reference)
        assert server.count() == 1  # the cached file and its conversion serve from now on


def test_google_drive_confirmation_page(tmp_path, reference, monkeypatch):
    _, state, _, _ = reference
    torch.save({"model": state}, tmp_path / "w.pth")
    with LocalServer() as server:
        page = (
            '<html><body><form id="download-form" action="{action}" method="get">'
            '<input type="hidden" name="id" value="FILEID">'
            '<input type="hidden" name="export" value="download">'
            '<input type="hidden" name="confirm" value="t">'
            '<input type="hidden" name="uuid" value="1234"></form></body></html>'
        ).format(action=server.url("/download"))
        server.add("/uc", page.encode(), content_type="text/html; charset=utf-8")
        server.add("/download", (tmp_path / "w.pth").read_bytes(),
                   require_query={"id": "FILEID", "confirm": "t", "uuid": "1234"})
        url = server.url("/uc?export=download&id=FILEID")
        monkeypatch.setitem(registry._CFGS["lvvit_s"]["weights"], "url", url)
        monkeypatch.setitem(registry._CFGS["lvvit_s"]["weights"], "file_name", "drive_weights.pth")
        model = tiny(pretrained=True)
        assert server.requests == ["/uc", "/download"]
    assert_parity(model, reference)


def test_drive_page_without_a_token_is_a_clear_error(monkeypatch):
    with LocalServer() as server:
        server.add("/uc", b"<html>Quota exceeded</html>", content_type="text/html")
        monkeypatch.setitem(registry._CFGS["lvvit_s"]["weights"], "url", server.url("/uc?id=X"))
        monkeypatch.setitem(registry._CFGS["lvvit_s"]["weights"], "file_name", "w.pth")
        with pytest.raises(weights.WeightsDownloadError, match="web page instead of the file"):
            tiny(pretrained=True)
    assert not [p for p in weights.weights_dir().iterdir() if not p.name.endswith(".lock")]


def test_hostile_checkpoint_is_refused_and_runs_nothing(tmp_path):
    marker = tmp_path / "pwned"

    class Hostile:
        def __reduce__(self):
            return os.system, (f"touch {marker}",)

    source = tmp_path / "evil.pth"
    torch.save({"model": {"pos_embed": Hostile()}}, source)
    with pytest.raises(UnsafeCheckpointError, match="system"):
        tiny(pretrained=str(source))
    assert not marker.exists()


def test_converted_file_describes_its_model(tmp_path, reference):
    """tools/convert.py's output records the model (name, kwargs, classes, transforms) beside the
    weights: create_model(checkpoint_path=) builds it with no other argument, with the reference's logits."""
    import json

    from ppim.builder import checkpoint_description
    from ppim.cli.convert import main

    _, state, _, _ = reference
    source = tmp_path / "tiny.pth"
    torch.save({"model": state}, source)
    out = tmp_path / "tiny.pdparams"
    kwargs = {k: v for k, v in TINY.items() if k != "num_classes"}
    assert main([str(source), str(out), "--model", "lvvit_s", "--num-classes", "10",
                 "--model-kwargs", json.dumps(kwargs)]) == 0
    description = checkpoint_description(out)
    assert description["name"] == "lvvit_s" and description["num_classes"] == 10
    assert description["kwargs"]["depth"] == 2 and description["args"]["source"] == str(source.resolve())
    assert_parity(ppim.create_model(checkpoint_path=str(out)), reference)
