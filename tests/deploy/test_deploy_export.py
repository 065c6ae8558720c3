"""Export safety (never destroy, never half-written, the user's umask) and the export cache."""
import json
import os
import shutil
import stat
from pathlib import Path

import numpy as np
import paddle
import pytest

import ppim
from ppim import runtime
from ppim.deploy import (Predictor, attention_layout, cached_export, create_runner, export, export_key, load_manifest,
                         verify_export)
from ppim.errors import CapabilityError, InputError

from deploy_utils import eager, images, real_machine, tiny
from tiny import TINY_SUPER


@pytest.mark.smoke
def test_reexport_keeps_user_files_and_removes_only_its_own(tmp_path):
    out = export(tiny(), tmp_path / "model")
    manifest = load_manifest(out)
    assert set(manifest["files"]) == {p.name for p in out.iterdir()}
    (out / "notes.txt").write_text("mine")
    (out / "labels").mkdir()
    # A previous export by an older Paddle wrote a legacy program this one does not write.
    stale = "model.pdmodel" if manifest["program_file"] == "model.json" else "model.json"
    (out / stale).write_bytes(b"old program")
    manifest["files"] = manifest["files"] + [stale]
    (out / "ppim.json").write_text(json.dumps(manifest))

    model = tiny(num_classes=4)
    export(model, out)
    assert (out / "notes.txt").read_text() == "mine" and (out / "labels").is_dir()
    assert not (out / stale).exists()
    assert load_manifest(out)["num_classes"] == 4
    batch = images(2, 64)
    np.testing.assert_allclose(Predictor(out)(batch), eager(model, batch), rtol=1e-4, atol=1e-4)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]  # no temporary left beside it


def test_export_refuses_its_input_and_foreign_folders(tmp_path):
    model = tiny()
    checkpoint = tmp_path / "weights.pdparams"
    paddle.save(model.state_dict(), str(checkpoint))
    before = checkpoint.read_bytes()
    with pytest.raises(ValueError, match="own input"):
        export(model, checkpoint, sources=[checkpoint])
    with pytest.raises(FileExistsError, match="not a ppim export"):
        export(model, checkpoint)
    assert checkpoint.read_bytes() == before
    folder = tmp_path / "data"
    folder.mkdir()
    with pytest.raises(ValueError, match="own input"):
        export(model, folder, sources=[folder])
    (folder / "a.jpg").write_bytes(b"x")
    with pytest.raises(FileExistsError):
        export(model, folder)
    assert [p.name for p in folder.iterdir()] == ["a.jpg"]


def test_export_files_get_the_users_umask(tmp_path):
    old = os.umask(0o027)
    try:
        out = export(tiny(), tmp_path / "model")
    finally:
        os.umask(old)
    assert stat.S_IMODE(out.stat().st_mode) == 0o750
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in out.iterdir()}
    assert set(modes.values()) == {0o640}, modes


def test_export_cache_reuses_and_keys_by_weights_and_subnet(tmp_path, monkeypatch):
    root = Path(os.environ["PPIM_HOME"]) / "exports"  # conftest gives each test its own PPIM_HOME
    model = tiny()
    first = create_runner(model, engine="inference")
    assert first.model_dir.parent == root and load_manifest(first.model_dir)["cache_key"] == export_key(model)
    stamp = (first.model_dir / "ppim.json").stat().st_mtime_ns


    def no_export(*args, **kwargs):
        raise AssertionError("exported again")

    with monkeypatch.context() as patch:
        patch.setattr(ppim.deploy.exporting, "export", no_export)
        second = create_runner(model, engine="inference")
    assert second.model_dir == first.model_dir
    assert (first.model_dir / "ppim.json").stat().st_mtime_ns == stamp

    changed = tiny()
    weight = changed.head.weight
    weight.set_value(weight.numpy() + 1.0)
    assert export_key(changed) != export_key(model)
    path = cached_export(changed)
    assert path != first.model_dir and sorted(p.name for p in root.iterdir()) == sorted(
        [first.model_dir.name, path.name])
    batch = images(2, 64)
    np.testing.assert_allclose(Predictor(path)(batch), eager(changed, batch), rtol=1e-4, atol=1e-4)

    sup = ppim.create_model("super_lvvit_s", **TINY_SUPER, stem_dim=8, num_classes=10)
    sup.set_subnet(224, 1.0)
    full = export_key(sup)
    sup.set_subnet(160, 0.7)
    assert export_key(sup) != full


export_module = ppim.deploy.exporting


def test_export_layout_and_cache_entry_follow_the_machine(machine):
    model = tiny()
    fused = machine.has_flag("avx512f") and runtime.has("fused_attention")
    layout = attention_layout("fp32", "cpu")
    assert layout == ("fused" if fused else "matmul")
    assert attention_layout("bf16") == attention_layout("fp32", engine="openvino") == "matmul"
    path = cached_export(model)
    manifest = load_manifest(path)
    assert path.name.startswith(f"lvvit_s-{layout}-") and manifest["deploy_attention"] == layout
    assert manifest["requires"] == (["fused_attention"] if fused else [])
    assert verify_export(path) is None
    with real_machine():  # the real part: run it where this CPU can
        if fused and not runtime.has("fused_attention"):
            with pytest.raises(CapabilityError, match="export the model again on this machine"):
                Predictor(path)
            pytest.skip(f"this CPU cannot run the fused export ({runtime.missing('fused_attention')})")
        batch = images(2, 64)
        np.testing.assert_allclose(Predictor(path)(batch), eager(model, batch), rtol=1e-4, atol=1e-4)


def test_cache_keys_differ_exactly_where_the_export_differs():
    model = tiny()
    keys = {}
    for profile in runtime.PROFILES:
        with runtime.simulate(profile):
            keys[profile] = export_key(model)
            assert export_key(model, precision="bf16") == export_key(model, engine="openvino")  # both matmul
    assert keys["avx2"] == keys["gpu"]  # the same CPU layout
    if runtime.machine().pir:
        assert keys["avx512"] == keys["avx512-bf16-amx"] != keys["avx2"]  # fused vs matmul


def test_a_shared_home_never_runs_the_fused_export_where_the_kernel_is_missing(capfd):
    if not runtime.machine().pir:
        pytest.skip("no fused attention on this Paddle (no PIR)")
    model = tiny()
    with runtime.simulate("avx512"):  # the export made on a machine with avx512f ...
        fused = cached_export(model)
    assert load_manifest(fused)["requires"] == ["fused_attention"]
    with runtime.simulate("avx2"):  # ... is never used on one without it
        with pytest.raises(CapabilityError, match="avx512f.*export the model again on this machine"):
            Predictor(fused)
        runner = create_runner(model, engine="inference")
        assert runner.model_dir != fused and load_manifest(runner.model_dir)["deploy_attention"] == "matmul"
        batch = images(2, 64)  # the matmul layout runs on every CPU: run it for real
        np.testing.assert_allclose(runner(batch), eager(model, batch), rtol=1e-4, atol=1e-4)
        # the fused export copied over the avx2 entry (a sync tool, a user): rebuilt, never run
        plain = runner.model_dir
        del runner
        shutil.rmtree(plain)
        shutil.copytree(fused, plain)
        capfd.readouterr()
        assert create_runner(model, engine="inference").model_dir == plain
        assert load_manifest(plain)["deploy_attention"] == "matmul"
        err = capfd.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "is damaged (its manifest is for another export" in err[0]


def _rewrite_manifest(path, **changes):
    manifest = {**load_manifest(path), **changes}
    manifest["manifest_sha256"] = export_module._manifest_digest(manifest)  # a consistent forgery
    (path / "ppim.json").write_text(json.dumps(manifest))


def _damage(kind, path, tmp_path):
    outside = tmp_path / "outside.pdiparams"
    params = path / "model.pdiparams"
    if kind == "input_shape_edited":
        manifest = load_manifest(path)
        manifest["input_shape"] = [-1, 3, 32, 32]
        (path / "ppim.json").write_text(json.dumps(manifest))
        return "ppim.json was changed after the export"
    if kind == "params_missing":
        params.unlink()
        return "model.pdiparams is missing"
    if kind == "params_truncated":
        params.write_bytes(params.read_bytes()[:100])
        return "has 100 bytes"
    if kind == "params_outside":
        shutil.copy(params, outside)
        digests = {**load_manifest(path)["digests"], "../outside.pdiparams": export_module._digest(outside)}
        _rewrite_manifest(path, params_file="../outside.pdiparams", digests=digests)
        return "names '../outside.pdiparams' as a file of the export"
    if kind == "params_link_outside":
        shutil.copy(params, outside)  # the same bytes: only the link gives it away
        params.unlink()
        params.symlink_to(outside)
        return "leads outside"
    if kind == "manifest_not_json":
        (path / "ppim.json").write_text("{not json")
        return "is not valid JSON"
    raise AssertionError(kind)


@pytest.mark.smoke
@pytest.mark.parametrize("kind", ["input_shape_edited", "params_missing", "params_truncated", "params_outside",
                                  "params_link_outside", "manifest_not_json"])
def test_a_damaged_cache_entry_is_rebuilt_never_run(kind, tmp_path, capfd):
    model = tiny()
    path = cached_export(model, precision="bf16")  # the matmul layout: runs on every CPU
    problem = _damage(kind, path, tmp_path)
    before = (tmp_path / "outside.pdiparams").read_bytes() if (tmp_path / "outside.pdiparams").exists() else None
    assert problem in (verify_export(path) or "")
    with pytest.raises(InputError):  # a predictor refuses it too (one error line in a tool)
        Predictor(path)
    capfd.readouterr()
    assert cached_export(model, precision="bf16") == path
    err = capfd.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"note: the cached export {path} is damaged (") and problem in err[0]
    assert verify_export(path) is None and not (path / "model.pdiparams").is_symlink()
    if before is not None:  # the file outside the entry was neither removed nor changed
        assert (tmp_path / "outside.pdiparams").read_bytes() == before
    batch = images(2, 64)
    np.testing.assert_allclose(Predictor(path)(batch), eager(model, batch), rtol=1e-4, atol=1e-4)
    assert not [p for p in path.parent.iterdir() if p.name.startswith(".")]  # the damaged copy is gone


def test_onnx_file_copied_from_another_model_is_rebuilt(capfd):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("paddle2onnx")
    model, other = tiny(), tiny(num_classes=4)
    create_runner(other, engine="onnxruntime")
    runner = create_runner(model, engine="onnxruntime")
    path = runner.model_dir
    del runner
    shutil.copy(cached_export(other, engine="onnxruntime") / "model.onnx", path / "model.onnx")
    capfd.readouterr()
    runner = create_runner(model, engine="onnxruntime")
    err = capfd.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "model.onnx" in err[0] and "is damaged" in err[0]
    batch = images(2, 64)
    np.testing.assert_allclose(runner(batch), eager(model, batch), rtol=1e-4, atol=1e-4)


def test_unchanged_files_are_not_hashed_again(monkeypatch):
    model = tiny()
    path = cached_export(model)
    cached_export(model)  # verified once: the stamps are written

    def no_hash(path):
        raise AssertionError(f"{path} hashed again")

    monkeypatch.setattr(export_module, "_sha256", no_hash)
    assert cached_export(model) == path
    params = path / "model.pdiparams"
    params.write_bytes(params.read_bytes())  # same bytes, new mtime: hashed again
    with pytest.raises(AssertionError, match="hashed again"):
        cached_export(model)


def test_exports_from_before_digests_are_still_used(tmp_path):
    model = tiny()
    out = export(model, tmp_path / "old")
    manifest = {k: v for k, v in load_manifest(out).items() if k not in ("digests", "manifest_sha256", "requires")}
    (out / "ppim.json").write_text(json.dumps(manifest))  # as an older ppim wrote it
    assert verify_export(out) is None
    export_module.add_file(out, "extra.bin", b"added later")  # e.g. the ONNX conversion
    assert verify_export(out) is None and "extra.bin" in load_manifest(out)["files"]
    batch = images(2, 64)
    with real_machine():
        if load_manifest(out)["deploy_attention"] != "fused" or runtime.has("fused_attention"):
            np.testing.assert_allclose(Predictor(out)(batch), eager(model, batch), rtol=1e-4, atol=1e-4)
