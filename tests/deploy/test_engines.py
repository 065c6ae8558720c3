"""OpenVINO and ONNX Runtime behind the runner (optional extras: parity when installed, a clear
error naming the extra when not) and engine='auto'."""
import sys

import numpy as np
import paddle
import pytest

import ppim
from ppim import runtime
from ppim.deploy import auto_order, create_runner, export, load_manifest, resolve_engine
from ppim.deploy.registry import unsupported
from ppim.deploy import engines as engines_module
from ppim.errors import CapabilityError, MissingExtraError

from deploy_utils import eager, images, rel_error, tiny
from tiny import TINY_SUPER


@pytest.mark.parametrize("engine", ["openvino", "onnxruntime"])
def test_extra_engine_matches_eager(engine, tmp_path):
    pytest.importorskip(engine)
    pytest.importorskip("paddle2onnx")
    model = tiny()
    runner = create_runner(model, engine=engine, workdir=tmp_path / "model")
    assert runner.engine == engine and (tmp_path / "model" / "model.onnx").is_file()
    assert "model.onnx" in load_manifest(tmp_path / "model")["files"]  # a re-export removes it
    for n in (3, 1):
        batch = images(n, 64, seed=n)
        logits = runner(batch)
        assert logits.shape == (n, 10) and logits.dtype == np.float32
        assert rel_error(logits, eager(model, batch)) < 1e-4
    with pytest.raises(ValueError, match="64x64"):
        runner(images(1, 32))


def test_openvino_hints_split_batches_and_agree(tmp_path):
    pytest.importorskip("openvino")
    pytest.importorskip("paddle2onnx")
    model = tiny()
    model_dir = export(model, tmp_path / "model", engine="openvino")
    batch = images(4, 64, seed=4)
    expected = eager(model, batch)
    for hint in ("AUTO", "LATENCY", "THROUGHPUT"):
        predictor = engines_module.OpenVINOPredictor(model_dir, hint=hint, threads=2)
        assert rel_error(predictor(batch), expected) < 1e-4
        assert rel_error(predictor(batch[:1]), expected[:1]) < 1e-4
        requests = predictor.compiled(batch.shape)
        # THROUGHPUT: the batch in equal parts over parallel requests (how many is OpenVINO's choice)
        assert len(requests) == 1 if hint == "LATENCY" else 4 % len(requests) == 0
        assert len(predictor.compiled((1, 3, 64, 64))) == 1


def test_openvino_super_subnetwork_and_bf16(tmp_path):
    pytest.importorskip("openvino")
    pytest.importorskip("paddle2onnx")
    paddle.seed(0)
    model = ppim.create_model("super_lvvit_s", **TINY_SUPER, stem_dim=8, num_classes=10)
    model.eval()
    model.set_subnet(160, 0.7)
    batch = images(2, 224, seed=1)
    expected = eager(model, batch)
    assert rel_error(create_runner(model, engine="openvino", workdir=tmp_path / "s")(batch), expected) < 1e-4
    if runtime.has("cpu_bf16"):  # bf16 keeps 8 mantissa bits: the top class may move, logits stay close
        got = create_runner(model, engine="openvino", precision="bf16", workdir=tmp_path / "s")(batch)
        assert rel_error(got, expected) < 0.1


def test_missing_extra_names_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import fails as if not installed
    monkeypatch.setitem(sys.modules, "openvino", None)
    with pytest.raises(ImportError, match=r"pip install 'ppim\[onnxruntime\]'"):
        create_runner(tiny(), engine="onnxruntime")
    with pytest.raises(ImportError, match=r"pip install 'ppim\[openvino\]'"):
        create_runner(tiny(), engine="openvino")
    with pytest.raises(CapabilityError, match="onnxruntime runs fp32 only"):
        engines_module.OnnxRuntimePredictor("unused", precision="bf16")


@pytest.mark.smoke
@pytest.mark.parametrize("profile", list(runtime.PROFILES))
def test_auto_picks_the_fastest_engine_that_runs_here(profile):
    """engine='auto' under each simulated machine and set of installed extras (no real CPU assumed;
    the real machine's choice is run by test_auto_runner_matches_eager)."""
    bf16 = runtime.PROFILES[profile][3].count("avx512_bf16") > 0
    with runtime.simulate(profile, extras=()):
        assert auto_order("cpu", "fp32") == ["openvino", "inference", "onnxruntime"]
        assert resolve_engine("auto", "cpu", "fp32") == "inference"  # no extra installed
        if bf16:
            assert resolve_engine("auto", "cpu", "bf16") == "inference"
        else:
            with pytest.raises(CapabilityError, match="avx512_bf16 or amx_bf16.*what runs here: eager on cpu fp32"):
                resolve_engine("auto", "cpu", "bf16")
        with pytest.raises(CapabilityError, match="fp16 needs a GPU"):
            resolve_engine("auto", "cpu", "fp16")
    with runtime.simulate(profile, extras=("onnxruntime", "paddle2onnx")):
        assert resolve_engine("auto", "cpu", "fp32") == "inference"  # measured slower than Paddle Inference
    with runtime.simulate(profile, extras=("openvino", "onnxruntime", "paddle2onnx")):
        assert resolve_engine("auto", "cpu", "fp32") == "openvino"
        if bf16:
            assert resolve_engine("auto", "cpu", "bf16") == "openvino"
        if profile == "gpu":
            assert resolve_engine("auto", "gpu", "fp16") == resolve_engine("auto", "gpu", "bf16") == "inference"
        else:
            with pytest.raises(CapabilityError, match="CPU-only build"):
                resolve_engine("auto", "gpu", "fp32")
    # int8: every profile has avx2; OpenVINO's needs nncf, Paddle Inference's Paddle 3.x
    paddle3 = runtime.machine().paddle_version.startswith("3.")
    with runtime.simulate(profile, extras=("openvino", "paddle2onnx", "nncf")):
        assert auto_order("cpu", "int8") == ["openvino", "inference"]
        assert resolve_engine("auto", "cpu", "int8") == "openvino"
        assert unsupported("inference", "int8") == (None if paddle3 else
                                                    f"int8 needs Paddle 3.x: Paddle {runtime.machine().paddle_version}: "
                                                    "ppim's Paddle Inference int8 is tested on Paddle 3.x only "
                                                    "(use engine openvino)")
        assert unsupported("inference", "int8", "gpu") is not None
    with runtime.simulate(profile, extras=("openvino", "paddle2onnx")):
        assert unsupported("openvino", "int8") == "nncf not installed (pip install 'ppim[openvino]')"
        assert unsupported("openvino", "fp32") is None
        if paddle3:
            assert resolve_engine("auto", "cpu", "int8") == "inference"
    with runtime.simulate(profile, extras=("openvino",)):  # without paddle2onnx: not usable
        assert resolve_engine("auto", "cpu", "fp32") == "inference"
        with pytest.raises(MissingExtraError, match=r"paddle2onnx not installed \(pip install 'ppim\[openvino\]'\)"):
            create_runner(tiny(), engine="openvino")
    assert resolve_engine("eager") == "eager"
    with pytest.raises(ValueError, match="engine"):
        resolve_engine("tensorflow")


def test_auto_runner_matches_eager(tmp_path):
    model = tiny()
    runner = create_runner(model, engine="auto", workdir=tmp_path / "m")
    assert runner.engine == resolve_engine("auto")
    batch = images(2, 64)
    assert rel_error(runner(batch), eager(model, batch)) < 1e-4
    export(model, tmp_path / "m")  # re-export over it: the ONNX file of the previous export goes
    assert not (tmp_path / "m" / "model.onnx").exists()


def test_classify_defaults_to_the_fast_engine_and_falls_back_to_eager(monkeypatch):
    from ppim.data import sample_images
    from ppim.deploy import classify

    model = ppim.create_model("lvvit_s", embed_dim=48, depth=2, num_heads=3, stem_dim=8)  # 224, 1000 classes
    model.eval()
    photos = [str(path) for path, _ in sample_images()][:3]
    expected = classify(model, photos, topk=3, engine="eager")
    fast = classify(model, photos, topk=3)
    for want, got in zip(expected, fast):
        assert [i for i, _, _ in got] == [i for i, _, _ in want]
        np.testing.assert_allclose([p for _, _, p in got], [p for _, _, p in want], atol=1e-5)

    def broken_save(*args, **kwargs):
        raise RuntimeError("cannot trace")

    monkeypatch.setattr(paddle.jit, "save", broken_save)
    model.head.bias.set_value(model.head.bias.numpy() + 0.5)  # new weights: not in the export cache
    expected = classify(model, photos, topk=3, engine="eager")
    with pytest.warns(RuntimeWarning, match="cannot trace"):
        fallback = classify(model, photos, topk=3)
    assert fallback == expected
    with pytest.raises(RuntimeError, match="cannot trace"):
        classify(model, photos, engine="inference")
