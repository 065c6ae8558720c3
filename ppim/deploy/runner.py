"""One runner interface over the engines: ``create_runner(model, engine, precision)`` returns a
callable float32 numpy (B, 3, S, S) -> logits (B, classes).

    run = create_runner(model, engine="inference")   # exported and run by Paddle Inference
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any, Callable, Optional, Union

import numpy as np
import paddle
import paddle.nn as nn

from ..layers import eval_mode
from ..subnet import Subnet, current_subnet
from .common import (BF16_CPU_FLAGS, DEVICES, ENGINE_CHOICES, PRECISIONS, check_choice, check_gpu,
                     cpu_supports_bf16, default_threads, input_size)
from .engines import OnnxRuntimePredictor, OpenVINOPredictor, engine_available
from .exporting import cached_export, export
from .predictor import ExportPredictor, Predictor

__all__ = ["Runner", "create_runner", "resolve_engine", "unsupported", "AUTO_ORDER", "PREDICTORS"]


class Runner:
    """``runner(batch)``: float32 numpy (B, 3, S, S) -> float32 numpy logits (B, classes).
    Made by create_runner; ``engine``, ``precision``, ``device``, ``img_size`` (S), ``subnet``
    describe it, and ``predictor``/``model_dir`` the inference engine's predictor and export."""

    def __init__(self, fn: Callable[[np.ndarray], np.ndarray], engine: str, precision: str, device: str,
                 img_size: int, subnet: Optional[Subnet] = None, threads: Optional[int] = None,
                 predictor: Optional[ExportPredictor] = None, model_dir: Optional[Path] = None, keep: Any = None):
        self._fn = fn
        self.engine, self.precision, self.device = engine, precision, device
        self.img_size, self.subnet, self.threads = img_size, subnet, threads
        self.predictor, self.model_dir = predictor, model_dir
        self._keep = keep  # e.g. the temporary export directory, removed with the runner

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        return self._fn(batch)

    def __repr__(self) -> str:
        sub = f", subnet={self.subnet}" if self.subnet else ""
        return f"Runner(engine={self.engine!r}, precision={self.precision!r}, device={self.device!r}{sub})"


def set_eager_threads(threads: Optional[int]) -> int:
    """Paddle's CPU math threads for eager mode (process-wide; Paddle starts with 1, from its
    OMP_NUM_THREADS default): ``threads``, by default every CPU this process may use."""
    threads = int(threads or default_threads())
    core = paddle.base.core if hasattr(paddle, "base") else paddle.fluid.core
    core.set_num_threads(threads)
    return threads


def _eager_fn(model: nn.Layer, precision: str, device: str, threads: Optional[int]):
    if device == "gpu":
        check_gpu("device='gpu'")
        place = paddle.CUDAPlace(0)
        model.to(device="gpu")
    else:
        place = paddle.CPUPlace()
        if precision != "fp32":
            raise ValueError(f"engine='eager' on CPU runs fp32 only (Paddle has no eager {precision} CPU "
                             f"kernels); use engine='inference' for {precision}")
        set_eager_threads(threads)
    subnet = current_subnet(model)
    kwargs = {} if subnet is None else subnet.as_dict()
    amp = None if precision == "fp32" else ("float16" if precision == "fp16" else "bfloat16")

    def run(batch: np.ndarray) -> np.ndarray:
        with eval_mode(model), paddle.no_grad():  # a model trained between calls stays in train mode
            x = paddle.to_tensor(np.ascontiguousarray(batch, dtype=np.float32), place=place)
            if amp:
                with paddle.amp.auto_cast(level="O1", dtype=amp):
                    out = model(x, **kwargs)
            else:
                out = model(x, **kwargs)
            return out.astype("float32").numpy()

    return run


# The engines ``engine='auto'`` tries, fastest first, per (device, precision). Measured on lvvit_s,
# batch 16, interleaved in one run on a loaded 2-core machine: fp32 OpenVINO 1.75, Paddle Inference
# (fused attention export) 1.49, ONNX Runtime 1.26 img/s; bf16 OpenVINO 2.01, Paddle Inference 1.84.
# Rerun benchmarks/peers.py to check on other machines.
AUTO_ORDER = {("cpu", "fp32"): ("openvino", "inference"), ("cpu", "bf16"): ("openvino", "inference")}
PREDICTORS = {"inference": Predictor, "openvino": OpenVINOPredictor, "onnxruntime": OnnxRuntimePredictor}


def unsupported(engine: str, precision: str, device: str = "cpu") -> Optional[str]:
    """Why ``engine`` cannot run ``precision`` on ``device`` here, or None when it can: fp16 is
    GPU-only, bf16 on CPU needs avx512_bf16/amx_bf16 (eager and ONNX Runtime: fp32 only on CPU),
    GPUs need a CUDA build, and the extras must be installed."""
    if device == "gpu" and not paddle.is_compiled_with_cuda():
        return f"this Paddle {paddle.__version__} is a CPU-only build"
    if engine in ("openvino", "onnxruntime"):
        if device != "cpu":
            return f"{engine} runs on CPU here"
        if not engine_available(engine):
            return f"not installed (pip install 'ppim[{engine}]')"
    if device == "cpu":
        if precision == "fp16":
            return "fp16 needs a GPU (CPUs run bf16)"
        if precision == "bf16" and engine in ("eager", "onnxruntime"):
            return f"{engine} runs fp32 only on CPU"
        if precision == "bf16" and not cpu_supports_bf16():
            return f"this CPU has no bfloat16 instructions ({' / '.join(BF16_CPU_FLAGS)})"
    return None


def resolve_engine(engine: str, device: str = "cpu", precision: str = "fp32") -> str:
    """``engine``, or for 'auto' the fastest installed engine for ``device`` and ``precision``
    (AUTO_ORDER; Paddle Inference when none of the extras is installed)."""
    check_choice("engine", engine, ENGINE_CHOICES)
    if engine != "auto":
        return engine
    for candidate in AUTO_ORDER.get((device, precision), ("inference",)):
        if engine_available(candidate) and not unsupported(candidate, precision, device):
            return candidate
    return "inference"


def create_runner(model: nn.Layer, engine: str = "eager", precision: str = "fp32", device: str = "cpu",
                  threads: Optional[int] = None, workdir: Optional[Union[str, os.PathLike]] = None,
                  cache: Union[bool, str, os.PathLike] = True) -> Runner:
    """A callable mapping a float32 batch (B, 3, S, S) to logits (B, classes), numpy in and out.

    ``engine='eager'``: the model itself, in eval mode during each call (the mode it had is restored
    after), under paddle.no_grad: fp32 on CPU, with Paddle's
    process-wide CPU math threads set to ``threads`` (default all CPUs); fp16/bf16 by autocast on
    GPU. The other engines run the model's export: 'inference' (Paddle Inference, Predictor),
    'openvino' and 'onnxruntime' (optional extras, see ppim.deploy.engines), 'auto' the fastest
    installed one (resolve_engine). The export is written to ``workdir`` when given, else taken from
    the export cache (cached_export, ``$PPIM_HOME/exports``) with ``cache`` True (default) or the
    cache folder ``cache`` names (e.g. a benchmark's own temporary one), else made in a temporary
    directory removed with the runner. Super models run the sub-network current when
    the runner is made, in every engine."""
    engine = resolve_engine(engine, device, precision)
    check_choice("precision", precision, PRECISIONS)
    check_choice("device", device, DEVICES)
    size = input_size(model, None)
    subnet = current_subnet(model)
    if engine == "eager":
        fn = _eager_fn(model, precision, device, threads)
        return Runner(fn, engine, precision, device, size, subnet,
                      None if device == "gpu" else int(threads or default_threads()))
    keep = None
    try:
        target = {"precision": precision, "device": device, "engine": engine}  # the export's layout is for them
        if workdir is not None:
            model_dir = export(model, workdir, **target)
        elif cache:
            model_dir = cached_export(model, root=None if cache is True else cache, **target)
        else:
            keep = tempfile.TemporaryDirectory(prefix="ppim-export-")
            model_dir = export(model, Path(keep.name) / "model", **target)
        predictor = PREDICTORS[engine](model_dir, device=device, precision=precision, threads=threads)
    except BaseException:
        if keep is not None:
            keep.cleanup()
        raise
    return Runner(predictor, engine, precision, device, size, subnet, predictor.threads, predictor, model_dir,
                  keep)
