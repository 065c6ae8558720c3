"""Running models outside training: export for Paddle Inference (with its graph rewrites), the
predictor, one runner interface over the engines, top-k classification and the benchmark.

    export(model, "out/lvvit_s")                     # ppim.deploy.export
    predictor = Predictor("out/lvvit_s", precision="bf16")
    run = create_runner(model, engine="inference")   # the same, export included
    classify(model, ["cat.jpg"])                     # top-5 (class id, name, probability)
    rows = benchmark("lvvit_s", batch_sizes=(16,))

Modules: common (names, checks), export, predictor (Paddle Inference), runner, classify, benchmark;
each imports only the ones listed before it.
"""
from .benchmark import CeilingProbe, benchmark, format_rows, measure_ceiling
from .classify import classify
from .common import ENGINES, PRECISIONS, cpu_supports_bf16
from .export import export, load_manifest
from .predictor import Predictor
from .runner import Runner, create_runner

__all__ = ["classify", "export", "load_manifest", "Predictor", "Runner", "create_runner", "benchmark",
           "format_rows", "CeilingProbe", "measure_ceiling", "cpu_supports_bf16", "ENGINES", "PRECISIONS"]
