"""SuperViT on a latency budget: the choice over a measurement table, the per-machine latency cache,
and ppim-predict --latency-ms."""
import json

import paddle
import pytest

import ppim
from ppim.deploy import subnet_choice
from ppim.deploy.subnet_choice import choose, measure_subnets, pick_subnet, published_accuracy
from ppim.errors import InputError, ParameterError

PUBLISHED = ppim.get_model_cfg("super_lvvit_s")["weights"]["subnet_top1"]
# A measured table (ms, batch 1) shaped like a real one: cost grows with size and kept tokens.
MEASURED = {"128x0.5": 6.0, "128x0.7": 7.0, "128x1.0": 8.5, "160x0.5": 8.0, "160x0.7": 9.5, "160x1.0": 12.0,
            "192x0.5": 11.0, "192x0.7": 13.0, "192x1.0": 17.0, "224x0.5": 14.0, "224x0.7": 18.0, "224x1.0": 24.0}
TINY = dict(img_size=64, img_sizes=(32, 64), embed_dim=32, depth=10, num_heads=2, stem_dim=8, num_classes=10)


def test_the_most_accurate_within_the_budget():
    choice = choose(MEASURED, PUBLISHED, 13.0)
    # within 13 ms: 192x0.7 (82.59) beats 160x1.0 (82.24) and 192x0.5 (81.12)
    assert choice.subnet == (192, 0.7) and choice.key == "192x0.7" and choice.fits
    assert choice.latency_ms == 13.0 and choice.top1 == PUBLISHED["192x0.7"]
    assert choose(MEASURED, PUBLISHED, 1e6).key == "224x1.0"
    assert choose(MEASURED, PUBLISHED, 9.5).key == "160x0.7"  # 81.73 over 128x1.0's 80.71
    assert "192x0.7: 13.0 ms measured (batch 1), published top-1 82.59%" == choice.describe("batch 1")


def test_a_more_accurate_and_faster_subnet_wins_on_a_machine_where_grids_do_not_scale():
    measured = dict(MEASURED, **{"224x0.7": 12.0})  # e.g. a machine where the small grids gain little
    assert choose(measured, PUBLISHED, 13.0).key == "224x0.7"


def test_none_fits_gives_the_fastest_with_a_note():
    choice = choose(MEASURED, PUBLISHED, 2.0)
    assert choice.key == "128x0.5" and not choice.fits
    assert "note: no sub-network fits 2 ms here, this is the fastest of 12" in choice.describe()


def test_equal_accuracy_prefers_the_faster_and_unknown_accuracy_ranks_by_cost():
    assert choose({"160x0.7": 9.0, "192x0.5": 8.0}, {"160x0.7": 81.0, "192x0.5": 81.0}, 10).key == "192x0.5"
    assert choose({"32x0.5": 1.0, "64x1.0": 2.0, "64x0.5": 1.5}, {}, 1.8).key == "64x0.5"


@pytest.mark.parametrize("budget", [0, -3.0, float("nan")])
def test_bad_budget_is_refused(budget):
    with pytest.raises(ParameterError, match="latency_ms"):
        choose(MEASURED, PUBLISHED, budget)


def test_measured_once_per_machine_then_cached(monkeypatch):
    paddle.seed(0)
    model = ppim.create_model("super_lvvit_s", **TINY)
    first = measure_subnets(model, engine="eager", iters=1, warmup=0)
    assert set(first) == {f"{s}x{r}" for s in (32, 64) for r in (0.5, 0.7, 1.0)}
    assert all(ms > 0 for ms in first.values())
    files = list(subnet_choice.latency_cache_dir().glob("super_lvvit_s-*.json"))
    assert len(files) == 1 and json.loads(files[0].read_text())["latency_ms"] == first

    def no_measuring(*args, **kwargs):
        raise AssertionError("measured again")
    monkeypatch.setattr("ppim.deploy.throughput.benchmark", no_measuring)
    assert measure_subnets(model, engine="eager") == first
    choice = pick_subnet(model, latency_ms=1e6, engine="eager")
    assert choice.fits and choice.key == "64x1.0" and model.img_size == 64  # the model is left as it was
    with pytest.raises(AssertionError, match="measured again"):  # another batch size is another entry
        measure_subnets(model, engine="eager", batch=2)


def test_published_accuracy_and_non_super_models():
    assert published_accuracy(ppim.create_model("super_lvvit_s", **TINY))["224x0.7"] == 83.15
    with pytest.raises(InputError, match="no sub-networks"):
        measure_subnets(ppim.create_model("lvvit_s", img_size=32, patch_size=8, embed_dim=32, depth=1,
                                          num_heads=2, stem_dim=8))


def test_predict_latency_flag(capsys):
    from ppim.cli.predict import main

    tiny = {k: v for k, v in TINY.items() if k != "num_classes"}
    table = measure_subnets(ppim.create_model("super_lvvit_s", **tiny), engine="eager", iters=1, warmup=0)
    kwargs = ["--model-kwargs", json.dumps(tiny)]  # the tool finds this machine's measurements cached
    assert main(["--model", "super_lvvit_s", "--engine", "eager", "--latency-ms", "100000", *kwargs]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"sub-network 64x1.0: {table['64x1.0']:.1f} ms measured (batch 1, eager fp32)")
    assert main(["--model", "super_lvvit_s", "--engine", "eager", "--latency-ms", "0.000001", *kwargs]) == 0
    out = capsys.readouterr().out
    fastest = min(table, key=table.get)
    assert out.startswith(f"sub-network {fastest}: ") and "note: no sub-network fits 1e-06 ms here" in out
    assert "1. " in out  # and it classified the sample
    assert main(["--model", "lvvit_s", "--latency-ms", "10"]) == 2
    assert "error: --latency-ms picks a SuperViT sub-network; lvvit_s has none" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exited:  # refused at parse time, one error line
        main(["--model", "super_lvvit_s", "--latency-ms", "-1"])
    assert exited.value.code == 2 and "--latency-ms" in capsys.readouterr().err


def test_latency_tables_group_the_timed_subnet_rows_per_setting():
    def row(engine, batch, size, ratio, **extra):
        return {"engine": engine, "precision": "fp32", "batch_size": batch, "threads": 2,
                "subnet": {"img_size": size, "keep_ratio": ratio}, **extra}

    rows = [row("eager", 1, 224, 1.0, ms_per_batch=20.0), row("eager", 1, 128, 0.5, ms_per_batch=5.0),
            row("eager", 4, 224, 1.0, ms_per_batch=60.0), row("openvino", 1, 224, 1.0, skipped="not installed"),
            row("inference", 1, 224, 1.0, error="RuntimeError: boom"),
            {**row("eager", 1, 224, 1.0), "subnet": None, "ms_per_batch": 9.0}]  # a model without sub-networks
    setting = {"engine": "eager", "precision": "fp32", "threads": 2}
    assert subnet_choice.latency_tables(rows) == [
        {**setting, "batch": 1, "latency_ms": {"224x1.0": 20.0, "128x0.5": 5.0}},
        {**setting, "batch": 4, "latency_ms": {"224x1.0": 60.0}}]
