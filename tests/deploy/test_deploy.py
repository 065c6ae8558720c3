"""Export for Paddle Inference, the predictor, runners over both engines, the benchmark and the tools
(small models; no timing is asserted)."""
import json

import numpy as np
import paddle
import pytest

from ppim import deploy, runtime
from ppim.errors import CapabilityError
from ppim.deploy import Predictor, create_runner, export, load_manifest
from ppim.flops import count_macs

from deploy_utils import eager, images, rel_error, tiny, tiny_super


@pytest.mark.smoke
def test_export_round_trip_and_predictor_matches_eager(tmp_path):
    model = tiny()
    model.train()  # export switches to eval and restores the mode
    out = export(model, tmp_path / "lvvit")
    assert model.training
    model.eval()
    files = {p.name for p in out.iterdir()}
    assert {"model.pdiparams", "ppim.json"} <= files and files & {"model.json", "model.pdmodel"}
    manifest = load_manifest(out)
    assert manifest["model"] == "lvvit_s" and manifest["input_name"] == "x"
    assert manifest["input_shape"] == [-1, 3, 64, 64] and manifest["subnet"] is None
    assert manifest["cfg"]["crop"] == 64 and manifest["num_classes"] == 10
    assert manifest["optimized"] and manifest["deploy_attention"] == deploy.attention_layout("fp32", "cpu")
    assert manifest["paddle_version"] == paddle.__version__
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary left

    predictor = Predictor(out)
    for n in (3, 1, 3):  # any batch; handles reused
        batch = images(n, 64, seed=n)
        logits = predictor(batch)
        assert logits.shape == (n, 10) and logits.dtype == np.float32
        assert rel_error(logits, eager(model, batch)) < 1e-4
    assert predictor.transforms.crop == 64
    with pytest.raises(ValueError, match="64x64"):
        predictor(images(1, 32))


def test_attention_layouts_match_eager(tmp_path):
    """Every export layout of attention (the fused CPU kernel, the matmul chain for bf16/ONNX, the
    model's own) gives the eager numbers, lvvit_t-like heads of 20 (a scale that is no power of two)."""
    model = tiny(embed_dim=60, num_heads=3)
    batch = images(3, 64)
    expected = eager(model, batch)
    layouts = {}
    for name, kwargs in {"fp32": {}, "bf16": {"precision": "bf16"}, "onnx": {"engine": "openvino"},
                         "own": {"optimize": False}}.items():
        out = export(model, tmp_path / name, **kwargs)
        layouts[name] = load_manifest(out)["deploy_attention"]
        assert rel_error(Predictor(out)(batch), expected) < 1e-4, name
    assert layouts == {"fp32": "fused" if deploy.fused_attention_available() else "matmul", "bf16": "matmul",
                       "onnx": "matmul", "own": None}


def test_export_fixed_batch_and_unoptimized_graph(tmp_path):
    model = tiny()
    out = export(model, tmp_path / "b2", batch_size=2, optimize=False)
    manifest = load_manifest(out)
    assert manifest["input_shape"] == [2, 3, 64, 64] and manifest["optimized"] is False
    batch = images(2, 64)
    assert rel_error(Predictor(out)(batch), eager(model, batch)) < 1e-4
    with pytest.raises(ValueError, match="2x3x64x64"):
        Predictor(out)(images(3, 64))
    with pytest.raises(ValueError, match="img_size=96"):
        export(model, tmp_path / "other", img_size=96)


@pytest.mark.smoke
def test_export_is_atomic(tmp_path, monkeypatch):
    model = tiny()
    out = export(model, tmp_path / "model")
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    real_save = paddle.jit.save

    def broken_save(layer, path, **kwargs):
        real_save(layer, path, **kwargs)  # files are written, then the export fails
        raise RuntimeError("disk full")

    monkeypatch.setattr(paddle.jit, "save", broken_save)
    with pytest.raises(RuntimeError, match="disk full"):
        export(model, tmp_path / "new")
    assert not (tmp_path / "new").exists()
    with pytest.raises(RuntimeError, match="disk full"):
        export(model, out)  # a failed re-export leaves the previous one untouched
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]  # no temporary left
    monkeypatch.undo()

    export(tiny(num_classes=4), out)  # a previous export is replaced
    assert load_manifest(out)["num_classes"] == 4
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError):
        export(model, foreign)
    assert (foreign / "notes.txt").read_text() == "keep me"


@pytest.mark.smoke
def test_create_runner_engines_agree(tmp_path):
    model = tiny()
    batch = images(4, 64)
    run_eager = create_runner(model, engine="eager")
    run_infer = create_runner(model, engine="inference", workdir=tmp_path / "work")
    assert (tmp_path / "work" / "ppim.json").is_file()
    assert run_eager.engine == "eager" and run_infer.engine == "inference" and run_infer.img_size == 64
    assert run_eager.threads >= 1 and run_infer.predictor.threads >= 1
    expected = run_eager(batch)
    assert rel_error(expected, eager(model, batch)) == 0
    assert rel_error(run_infer(batch), expected) < 1e-4
    temporary = create_runner(model, engine="inference", threads=1, cache=False)  # a temporary export
    assert temporary.predictor.threads == 1
    assert rel_error(temporary(batch), expected) < 1e-4
    with pytest.raises(ValueError, match="engine"):
        create_runner(model, engine="onnx")


@pytest.mark.smoke
def test_super_subnetwork_exports_and_matches_eager(tmp_path):
    model = tiny_super()
    model.set_subnet(160, 0.7)
    batch = images(3, 224, seed=1)
    expected = eager(model, batch)
    out = export(model, tmp_path / "s160")
    manifest = load_manifest(out)
    assert manifest["subnet"] == {"img_size": 160, "keep_ratio": 0.7}
    assert manifest["input_shape"] == [-1, 3, 224, 224] and manifest["cfg"]["crop"] == 224
    assert rel_error(Predictor(out)(batch), expected) < 1e-4
    # the model is unchanged: same sub-network, same eager output, still exportable on its own
    assert (model.img_size, model.keep_ratio) == (160, 0.7)
    assert rel_error(eager(model, batch), expected) == 0
    model.set_subnet(224, 0.5)
    runner = create_runner(model, engine="inference", workdir=tmp_path / "s224")
    model.set_subnet(128, 1.0)  # runners keep the sub-network they were made with
    assert runner.subnet == (224, 0.5)
    assert rel_error(runner(batch), eager(model, batch, img_size=224, keep_ratio=0.5)) < 1e-4


@pytest.mark.skipif(not runtime.has("cpu_bf16"), reason="CPU without avx512_bf16/amx_bf16")
def test_bf16_predictor_close_to_fp32(tmp_path):
    model = tiny()
    batch = images(4, 64)
    runner = create_runner(model, engine="inference", precision="bf16", workdir=tmp_path / "bf16")
    assert runner.predictor.precision == "bf16"
    expected = eager(model, batch)
    assert np.abs(runner(batch) - expected).max() < 0.05 * np.abs(expected).max()


def test_clear_errors_for_unsupported_setups(tmp_path, monkeypatch):
    model = tiny()
    out = export(model, tmp_path / "m")
    with pytest.raises(CapabilityError, match="fp16 needs a GPU"):
        Predictor(out, precision="fp16")
    with pytest.raises(ValueError, match="tensorrt"):
        Predictor(out, tensorrt=True)
    with pytest.raises(CapabilityError, match="eager runs fp32 only on cpu; what runs here: .*inference on cpu fp32"):
        create_runner(model, engine="eager", precision="bf16")
    with pytest.raises(FileNotFoundError, match="no exported program"):
        Predictor(tmp_path)
    if not runtime.has("gpu"):
        with pytest.raises(CapabilityError, match="paddlepaddle-gpu"):
            Predictor(out, device="gpu")
        with pytest.raises(CapabilityError, match="paddlepaddle-gpu"):
            Predictor(out, device="gpu", precision="fp16", tensorrt=True)
        with pytest.raises(CapabilityError, match="paddlepaddle-gpu"):
            create_runner(model, engine="eager", device="gpu")
    matmul = export(model, tmp_path / "matmul", precision="bf16")  # a layout every CPU runs
    with runtime.simulate("avx512"):  # a CPU without bfloat16: refused before anything runs
        with pytest.raises(CapabilityError, match="avx512_bf16 or amx_bf16.*what runs here: .*inference on cpu fp32"):
            Predictor(matmul, precision="bf16")


def test_benchmark_rows(tmp_path):
    rows = deploy.benchmark(tiny(), engines=("eager", "inference"), precisions=("fp32", "fp16"),
                            batch_sizes=(1, 2), iters=1, warmup=1)
    ok = [row for row in rows if "skipped" not in row]
    assert {(r["engine"], r["batch_size"]) for r in ok} == {(e, b) for e in ("eager", "inference") for b in (1, 2)}
    for row in ok:
        for key in ("model", "precision", "threads", "img_size", "images_per_sec", "ms_per_batch", "gmacs",
                    "gflops_per_sec", "ceiling_gflops_per_sec", "ceiling_share", "ceiling_images_per_sec"):
            assert row[key] is not None, key
        assert row["images_per_sec"] > 0 and row["img_size"] == 64
        assert row["gmacs"] == pytest.approx(count_macs(tiny()) / 1e9, rel=1e-3)
    assert all(row["ceiling_engine"] in deploy.ceiling_engines() for row in ok)
    skipped = [row for row in rows if "skipped" in row]  # fp16 on CPU: said, not run, no error row
    assert skipped and all(row["precision"] == "fp16" and "GPU" in row["skipped"] for row in skipped)
    table = deploy.format_rows(rows)
    assert "img/s" in table and "skipped eager/fp16" in table and "fp16  " not in table

    model = tiny_super()
    model.set_subnet(192, 0.7)
    rows = deploy.benchmark(model, engines=("inference",), batch_sizes=(1,), iters=1, warmup=1,
                               subnets=[(160, 0.7)], ceiling=False)
    assert [(r["subnet"]["img_size"], r["subnet"]["keep_ratio"]) for r in rows] == [(224, 1.0), (160, 0.7)]
    assert rows[0]["speedup"] == 1.0 and rows[0]["flops_ratio"] == 1.0
    assert rows[1]["flops_ratio"] == pytest.approx(
        count_macs(model, img_size=224, keep_ratio=1.0) / count_macs(model, img_size=160, keep_ratio=0.7), rel=1e-3)
    assert (model.img_size, model.keep_ratio) == (192, 0.7)  # restored


def test_benchmark_times_every_point_in_turn_round_after_round(monkeypatch):
    """rounds=3: all runners are made first, then each round times every point in turn (warm-up in
    the first round only), and a row's time is the median of its round medians."""
    from ppim.deploy import throughput

    calls = []

    class Clock:  # each runner call takes as long as its name says, per round
        now = 0.0

        def __call__(self):
            return self.now

    clock = Clock()

    def fake_runner(model, engine, precision, device, threads, cache=None, calibration=None):
        label = f"{model.img_size}x{model.keep_ratio:g}"

        def run(batch):
            calls.append(label)
            clock.now += {"224x1": 0.4, "160x0.7": 0.1}[label] * (3 if len(calls) in (4, 7) else 1)
        return run

    monkeypatch.setattr(throughput, "create_runner", fake_runner)
    monkeypatch.setattr(throughput.time, "perf_counter", clock)
    rows = throughput.benchmark(tiny_super(), engines=("eager",), batch_sizes=(1,), iters=1, warmup=1,
                                subnets=[(160, 0.7)], ceiling=False, rounds=3)
    assert calls == ["224x1", "224x1", "160x0.7", "160x0.7", "224x1", "160x0.7", "224x1", "160x0.7"]
    by_subnet = {r["subnet"]["img_size"]: r for r in rows}
    assert by_subnet[224]["round_medians_ms"] == pytest.approx([400, 400, 1200])  # call 7 was slowed
    assert by_subnet[224]["ms_per_batch"] == pytest.approx(400)
    assert by_subnet[160]["round_medians_ms"] == pytest.approx([300, 100, 100])  # call 4 was slowed
    assert by_subnet[160]["ms_per_batch"] == pytest.approx(100)


def test_tools_export_and_benchmark(tmp_path, capsys):
    from ppim.cli import benchmark as benchmark_tool, export as export_tool

    out = tmp_path / "lvvit_t"
    assert export_tool.main(["--model", "lvvit_t", "--output", str(out), "--verify"]) == 0
    assert load_manifest(out)["model"] == "lvvit_t"
    assert "verify" in capsys.readouterr().out
    report = tmp_path / "bench.json"
    assert benchmark_tool.main(["--model", "lvvit_t", "--engine", "inference", "-b", "1", "--iters", "1",
                                "--warmup", "1", "--json", str(report)]) == 0
    data = json.loads(report.read_text())
    assert data["environment"]["paddle_version"] == paddle.__version__
    assert data["rows"][0]["engine"] == "inference" and data["rows"][0]["images_per_sec"] > 0


def test_benchmark_and_its_ceiling_follow_the_machine(machine):
    bf16 = machine.has_flag("avx512_bf16", "amx_bf16")
    extras = [e for e in ("openvino", "onnxruntime") if deploy.engine_available(e)]
    assert deploy.ceiling_engines("fp32") == ["inference", *extras]
    assert deploy.ceiling_engines("bf16") == (["inference", *[e for e in extras if e == "openvino"]] if bf16 else [])
    assert deploy.ceiling_engines("fp16", "gpu") == (["inference"] if machine.gpus else [])
    precisions = ("fp16",) if bf16 else ("bf16", "fp16")  # nothing here runs: no real run under a profile
    rows = deploy.benchmark(tiny(), engines=("eager", "inference"), precisions=precisions, batch_sizes=(1,),
                            iters=1, warmup=0, ceiling=False, log=lambda message: None)
    assert len(rows) == 2 * len(precisions) and all("skipped" in row for row in rows)
    reasons = {(row["engine"], row["precision"]): row["skipped"] for row in rows}
    assert reasons[("inference", "fp16")] == "fp16 needs a GPU (CPUs run bf16)"
    if not bf16:
        assert "avx512_bf16 or amx_bf16" in reasons[("inference", "bf16")]


def test_eager_runner_sets_threads_for_its_calls_only():
    runtime.set_cpu_threads(1)
    model = tiny()
    runner = create_runner(model, engine="eager", threads=2)
    assert runner.threads == 2 and runtime.current_cpu_threads() == 1
    batch = images(1, 64)
    assert rel_error(runner(batch), eager(model, batch)) == 0
    assert runtime.current_cpu_threads() == 1  # set back after the call


def test_eager_runner_leaves_the_model_in_the_mode_it_found():
    model = tiny()
    model.train()
    model.blocks[0].norm1.eval()  # a frozen norm stays frozen too
    run = create_runner(model, engine="eager")
    model_eval = tiny()
    np.testing.assert_allclose(run(images(2, 64)), eager(model_eval, images(2, 64)), rtol=1e-5, atol=1e-5)
    assert model.training and not model.blocks[0].norm1.training and model.blocks[1].norm1.training


def test_ceiling_probe_leaves_paddle_s_generator_alone():
    paddle.seed(123)
    expected = paddle.rand([4]).numpy()
    paddle.seed(123)
    deploy.CeilingProbe("eager", dim=16, hidden=32, rows=8)
    np.testing.assert_array_equal(paddle.rand([4]).numpy(), expected)
