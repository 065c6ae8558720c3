"""Running models outside training: export for Paddle Inference (with its graph rewrites) and its
cache, the predictors (Paddle Inference; OpenVINO and ONNX Runtime as optional extras), one runner
interface over the engines, top-k classification and the benchmark.

    export(model, "out/lvvit_s")                     # ppim.deploy.export
    predictor = Predictor("out/lvvit_s", precision="bf16")
    run = create_runner(model, engine="auto")        # export (cached) + the fastest installed engine
    classify(model, ["cat.jpg"])                     # top-5 (class id, name, probability)
    rows = benchmark("lvvit_s", batch_sizes=(16,))

Modules: registry (one record per engine: devices, precisions, extras, capability needs; auto;
"cannot run here" errors), common (file layout, input sizes), exporting (export + cache, integrity),
paddle_int8 (Paddle Inference's int8 form of an export), predictor (Paddle Inference), engines
(OpenVINO, ONNX Runtime), runner, classification (classify), throughput (benchmark, the GEMM
ceiling), subnet_choice (SuperViT sub-network for a latency budget); each imports only the ones
before it. What this machine
runs is ppim.runtime's answer.
"""
from .throughput import CeilingProbe, DenseChain, benchmark, ceiling_engines, dense_shapes, format_rows, measure_ceiling
from .classification import classify
from .engines import OnnxRuntimePredictor, OpenVINOPredictor
from .exporting import (DamagedExportError, attention_layout, cache_dir, cached_export, export, export_key,
                        fused_attention_available, load_manifest, verify_export)
from .predictor import Predictor
from .registry import (ENGINE_CHOICES, ENGINE_SPECS, ENGINES, PRECISIONS, EngineSpec, auto_order, check_supported,
                       engine_available, resolve_engine, runs_here, unsupported)
from .runner import Runner, create_runner
from .subnet_choice import SubnetChoice, measure_subnets, pick_subnet

__all__ = ["classify", "export", "load_manifest", "cached_export", "export_key", "cache_dir", "attention_layout",
           "fused_attention_available", "verify_export", "DamagedExportError", "Predictor",
           "OpenVINOPredictor", "OnnxRuntimePredictor", "Runner", "create_runner",
           "benchmark", "format_rows", "CeilingProbe", "DenseChain", "dense_shapes", "measure_ceiling",
           "ceiling_engines", "EngineSpec", "ENGINE_SPECS", "ENGINES", "ENGINE_CHOICES", "PRECISIONS",
           "engine_available", "unsupported", "check_supported", "runs_here", "resolve_engine", "auto_order",
           "SubnetChoice", "measure_subnets", "pick_subnet"]
