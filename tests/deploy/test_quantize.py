"""int8: calibration images read from a folder, the int8 exports (OpenVINO through NNCF, Paddle
Inference through Paddle's PTQ) cached per calibration, accuracy kept on a learnt task, and the
errors for what cannot be quantized."""
import dataclasses
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

import ppim
from ppim import runtime
from ppim.deploy import create_runner
from ppim.deploy import Predictor
from ppim.deploy.exporting import cached_export, export, load_manifest
from ppim.deploy.quantize import Calibration, as_calibration, calibration_images
from ppim.deploy.registry import unsupported
from ppim.errors import CapabilityError, InputError
from ppim.evaluate import evaluate
from ppim.training.run import TrainConfig, build_trainer
from shapes import write_dataset
from tiny import ROOT, tiny_lvvit, tiny_super

needs_nncf = pytest.mark.skipif(unsupported("openvino", "int8") is not None,
                                reason=f"openvino int8: {unsupported('openvino', 'int8')}")
needs_paddle_int8 = pytest.mark.skipif(unsupported("inference", "int8") is not None,
                                       reason=f"inference int8: {unsupported('inference', 'int8')}")
INT8_ENGINES = [pytest.param("openvino", marks=needs_nncf), pytest.param("inference", marks=needs_paddle_int8)]


def write_images(folder, count, size=40, seed=0):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(count):
        Image.fromarray(rng.integers(0, 256, (size, size + 8, 3), dtype=np.uint8)).save(folder / f"{i:03d}.png")
    return folder


def by_hand(path, size, resize, mean, std):
    """The eval crop computed here with PIL: shorter side to ``resize`` (bicubic), centre crop, scale."""
    image = Image.open(path).convert("RGB")
    w, h = image.size
    scale = resize / min(w, h)
    image = image.resize((round(w * scale), round(h * scale)) if w != h else (resize, resize), Image.BICUBIC)
    w, h = image.size
    left, top = int(round((w - size) / 2.0)), int(round((h - size) / 2.0))
    pixels = np.asarray(image.crop((left, top, left + size, top + size)), dtype=np.float32) / 255.0
    return ((pixels - np.array(mean, np.float32)) / np.array(std, np.float32)).transpose(2, 0, 1)


def test_calibration_reads_an_even_spread_of_eval_crops(tmp_path):
    model = tiny_lvvit()
    folder = write_images(tmp_path / "cal" / "sub", 10)
    cal = calibration_images(model, tmp_path / "cal", limit=4)
    assert cal.images.shape == (4, 3, 64, 64) and cal.images.dtype == np.float32
    cfg = model.pretrained_cfg
    assert cfg["interpolation"] == "bicubic"
    for row, index in zip(cal.images, (0, 3, 6, 9)):  # evenly spaced over the sorted files
        expected = by_hand(folder / f"{index:03d}.png", 64, 64 * cfg["resize"] // cfg["crop"], cfg["mean"], cfg["std"])
        np.testing.assert_allclose(row, expected, atol=0.03)
    assert calibration_images(model, tmp_path / "cal", limit=4).digest == cal.digest
    assert calibration_images(model, tmp_path / "cal", limit=5).digest != cal.digest


def test_calibration_errors_name_the_folder_and_the_fix(tmp_path):
    model = tiny_lvvit()
    with pytest.raises(InputError, match="does not exist"):
        calibration_images(model, tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("no images")
    with pytest.raises(InputError, match="holds no images"):
        calibration_images(model, tmp_path / "empty")
    write_images(tmp_path / "bad", 2)
    (tmp_path / "bad" / "broken.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(InputError, match=r"broken\.jpg cannot be read .*remove it"):
        calibration_images(model, tmp_path / "bad")
    with pytest.raises(InputError, match="1 to 2000"):
        calibration_images(model, tmp_path / "bad", limit=0)
    with pytest.raises(InputError, match="NaN"):
        Calibration(np.full((1, 3, 8, 8), np.nan, np.float32), "test")
    with pytest.raises(InputError, match="int8 needs calibration images"):
        as_calibration(model, None, "int8")
    with pytest.raises(InputError, match="for precision int8 only"):
        as_calibration(model, tmp_path / "bad", "fp32")
    with pytest.raises(InputError, match="int8 needs calibration"):
        create_runner(model, engine=next((e for e in ("openvino", "inference") if unsupported(e, "int8") is None),
                                         "eager"), precision="int8")


def test_int8_needs_avx2_and_runs_only_where_a_quantizer_exists(monkeypatch):
    real = runtime.machine()
    monkeypatch.setattr(runtime, "machine", lambda: dataclasses.replace(
        real, cpu_flags=frozenset(real.cpu_flags) - {"avx2"}, extras=(("openvino", "x"), ("paddle2onnx", "x"),
                                                                      ("nncf", "x"))))
    assert "avx2" in unsupported("openvino", "int8")
    assert unsupported("openvino", "fp32") is None
    monkeypatch.setattr(runtime, "machine", lambda: dataclasses.replace(real, extras=(("openvino", "x"),
                                                                                      ("paddle2onnx", "x"))))
    assert "nncf not installed (pip install 'ppim[openvino]')" in unsupported("openvino", "int8")
    assert unsupported("eager", "int8") == "eager runs fp32 only on cpu"
    with pytest.raises(CapabilityError, match="openvino on cpu fp32"):
        create_runner(tiny_lvvit(), engine="eager", precision="int8")


@needs_nncf
def test_int8_export_is_cached_per_calibration(tmp_path):
    model = tiny_lvvit()
    first = write_images(tmp_path / "a", 3, seed=1)
    second = write_images(tmp_path / "b", 3, seed=2)
    path = cached_export(model, precision="int8", engine="openvino", calibration=first)
    manifest = load_manifest(path)
    assert manifest["int8"]["calibration"]["images"] == 3 and "cpu_int8" in manifest["requires"]
    assert {"model_int8.xml", "model_int8.bin"} <= set(manifest["files"])
    stamp = (path / "model_int8.xml").stat().st_mtime_ns
    assert cached_export(model, precision="int8", engine="openvino", calibration=first) == path
    assert (path / "model_int8.xml").stat().st_mtime_ns == stamp  # not quantized again
    other = cached_export(model, precision="int8", engine="openvino", calibration=second)
    assert other != path and load_manifest(other)["int8"]["calibration"]["sha256"] != manifest["int8"]["calibration"]["sha256"]
    fp32 = cached_export(model, engine="openvino")
    assert fp32 not in (path, other) and "int8" not in load_manifest(fp32)
    from ppim.deploy.engines import OpenVINOPredictor

    with pytest.raises(InputError, match="holds no int8 form"):
        OpenVINOPredictor(fp32, precision="int8")


@pytest.mark.slow
@pytest.mark.parametrize("engine", INT8_ENGINES)
def test_int8_keeps_the_accuracy_of_a_learnt_task(tmp_path, engine):
    """A tiny LV-ViT learns 4 classes of coloured shapes; int8, calibrated on the training images,
    classifies the held-out images as fp32 does."""
    data = write_dataset(tmp_path / "data", train_per_class=24, val_per_class=12, classes=4, size=48)
    kwargs = dict(depth=2, embed_dim=32, num_heads=2, stem_dim=8, patch_size=8)
    config = TrainConfig(data=str(data), model="lvvit_s", output=str(tmp_path / "run"), model_kwargs=kwargs,
                         img_size=32, batch_size=8, workers=0, epochs=8, warmup_epochs=1, cooldown_epochs=0,
                         lr=2e-3, min_lr=1e-4, recipe="none", progress=False)
    build_trainer(config).fit(8)
    model = ppim.create_model(checkpoint_path=str(tmp_path / "run" / "last.pdparams"))
    model.eval()
    fp32 = evaluate(model, data / "val", engine=engine, num_workers=0, progress=False, verbose=False)
    assert fp32["top1"] >= 60.0  # chance is 25%
    runner = create_runner(model, engine=engine, precision="int8", calibration=data / "train")
    int8 = evaluate(runner, data / "val", transforms=ppim.create_transforms(model), name="int8", num_workers=0,
                    progress=False, verbose=False)
    assert abs(int8["top1"] - fp32["top1"]) <= 100 / 48 * 2 + 1e-6  # at most two of 48 images change
    batch = np.random.default_rng(0).standard_normal((8, 3, 32, 32)).astype("float32")
    reference = create_runner(model, engine=engine)(batch)
    assert np.abs(runner(batch) - reference).max() < 0.25 * np.abs(reference).max()  # int8 is not fp32


@needs_paddle_int8
def test_paddle_int8_export_is_cached_per_calibration_and_agrees_with_fp32(tmp_path):
    model = tiny_lvvit()
    first = write_images(tmp_path / "a", 8, seed=1)
    path = cached_export(model, precision="int8", engine="inference", calibration=first)
    manifest = load_manifest(path)
    assert manifest["int8"]["engine"] == "inference" and manifest["int8"]["calibration"]["images"] == 8
    assert {"model_int8.pdmodel", "model_int8.pdiparams"} <= set(manifest["files"])
    stamp = (path / "model_int8.pdmodel").stat().st_mtime_ns
    assert cached_export(model, precision="int8", engine="inference", calibration=first) == path
    assert (path / "model_int8.pdmodel").stat().st_mtime_ns == stamp  # not quantized again
    other = cached_export(model, precision="int8", engine="inference",
                          calibration=write_images(tmp_path / "b", 8, seed=2))
    assert other != path
    images = as_calibration(model, first).images
    int8 = Predictor(path, precision="int8")(images)
    fp32 = Predictor(path)(images)
    cosine = np.sum(int8 * fp32, 1) / (np.linalg.norm(int8, axis=1) * np.linalg.norm(fp32, axis=1))
    assert cosine.min() > 0.99, cosine  # (random weights: near-flat logits, top-1 is the learnt task's test)
    assert not np.array_equal(int8, fp32)  # the int8 kernels ran
    plain = cached_export(model, engine="inference")
    with pytest.raises(InputError, match="holds no int8 form for inference"):
        Predictor(plain, precision="int8")


def test_paddle_int8_errors(tmp_path, monkeypatch):
    from ppim.deploy import paddle_int8

    real = runtime.machine()
    monkeypatch.setattr(runtime, "machine", lambda: dataclasses.replace(real, paddle_version="2.6.2"))
    assert "tested on Paddle 3.x only" in unsupported("inference", "int8")
    monkeypatch.undo()
    calibration = Calibration(np.zeros((1, 3, 64, 64), np.float32), "zeros")
    with pytest.raises(CapabilityError, match="engine='openvino'"):
        paddle_int8.quantize_paddle(tiny_super(), tmp_path, calibration)
    if unsupported("inference", "int8") is None:
        monkeypatch.setattr(paddle_int8, "QUANTIZE_TIMEOUT", 0.01)
        with pytest.raises(RuntimeError, match="took over 0.01 s"):
            export(tiny_lvvit(), tmp_path / "out", precision="int8", engine="inference", calibration=calibration)
        assert not (tmp_path / "out").exists()


@needs_nncf
def test_cli_int8_export_eval_and_errors(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    model = ["--model", "lvvit_s", "--model-kwargs", json.dumps(dict(img_size=32, embed_dim=32, depth=1, num_heads=2,
                                                                     stem_dim=8, patch_size=8)), "--num-classes", "4"]
    data = write_dataset(tmp_path / "data", train_per_class=2, val_per_class=2, classes=4, size=40)

    def run(tool, *args):
        return subprocess.run([sys.executable, str(ROOT / "tools" / tool), *args], capture_output=True, text=True,
                              env=env, cwd=tmp_path, timeout=300)

    proc = run("export.py", *model, "--output", "int8", "--engine", "openvino", "--precision", "int8",
               "--calibration", str(data / "train"))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "calibrated on 8 images" in proc.stdout and (tmp_path / "int8" / "model_int8.xml").is_file()
    proc = run("eval.py", str(data / "val"), *model, "--engine", "openvino", "--precision", "int8",
               "--calibration", str(data / "train"), "-j", "0", "--no-progress", "--results-file", "r.json")
    assert proc.returncode == 0, proc.stderr[-2000:]
    results = json.loads((tmp_path / "r.json").read_text())
    assert results["precision"] == "int8" and results["num_images"] == 8
    for args, message in [
        (("--engine", "openvino", "--precision", "int8"), "--precision int8 needs --calibration DIR"),
        (("--engine", "openvino", "--calibration", str(data / "train")), "--calibration is for --precision int8"),
        (("--engine", "openvino", "--precision", "int8", "--calibration", "missing"), "no such folder"),
        (("--engine", "onnxruntime", "--precision", "int8", "--calibration", str(data / "train")),
         "onnxruntime runs fp32 only"),
    ]:
        proc = run("eval.py", str(data / "val"), *model, *args, "-j", "0", "--no-progress")
        assert proc.returncode == 2 and message in proc.stderr, (args, proc.stderr[-2000:])
        assert proc.stderr.count("error:") == 1 and "Traceback" not in proc.stderr
