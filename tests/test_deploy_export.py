"""Export safety (never destroy, never half-written, the user's umask) and the export cache."""
import json
import os
import stat

import numpy as np
import paddle
import pytest

import ppim
from ppim.deploy import Predictor, cached_export, create_runner, export, export_key, load_manifest

from deploy_utils import eager, images, tiny
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
    root = tmp_path / "ppim_home" / "exports"  # conftest points PPIM_HOME at tmp_path / ppim_home
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
