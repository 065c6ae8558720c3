"""Running models outside training: export for Paddle Inference (with its graph rewrites) and its
cache, the predictors (Paddle Inference; OpenVINO and ONNX Runtime as optional extras), one runner
interface over the engines, top-k classification and the benchmark.

    export(model, "out/lvvit_s")                     # ppim.deploy.export
    predictor = Predictor("out/lvvit_s", precision="bf16")
    run = create_runner(model, engine="auto")        # export (cached) + the fastest installed engine
    classify(model, ["cat.jpg"])                     # top-5 (class id, name, probability)
    rows = benchmark("lvvit_s", batch_sizes=(16,))

Modules: common (names, checks), exporting (export + cache), predictor (Paddle Inference), engines
(OpenVINO, ONNX Runtime), runner, classification (classify), throughput (benchmark, the GEMM
ceiling); each imports only the ones before it.
"""
from .throughput import CeilingProbe, DenseChain, benchmark, ceiling_engines, dense_shapes, format_rows, measure_ceiling
from .classification import classify
from .common import ENGINE_CHOICES, ENGINES, PRECISIONS, cpu_supports_bf16
from .engines import OnnxRuntimePredictor, OpenVINOPredictor, engine_available
from .exporting import attention_layout, cache_dir, cached_export, export, export_key, fused_attention_available, load_manifest
from .predictor import Predictor
from .runner import AUTO_ORDER, Runner, create_runner, resolve_engine

__all__ = ["classify", "export", "load_manifest", "cached_export", "export_key", "cache_dir", "attention_layout",
           "fused_attention_available", "Predictor",
           "OpenVINOPredictor", "OnnxRuntimePredictor", "engine_available", "Runner", "create_runner",
           "resolve_engine", "AUTO_ORDER", "benchmark", "format_rows", "CeilingProbe", "DenseChain", "dense_shapes", "measure_ceiling", "ceiling_engines", "cpu_supports_bf16",
           "ENGINES", "ENGINE_CHOICES", "PRECISIONS"]
