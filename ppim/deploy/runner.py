"""One runner interface over the engines: ``create_runner(model, engine, precision)`` returns a
callable float32 numpy (B, 3, S, S) -> logits (B, classes).

    run = create_runner(model, engine="inference")   # exported and run by Paddle Inference
"""
from __future__ import annotations

import contextlib
import functools
import os
import tempfile
from pathlib import Path
from typing import Any, Callable, Optional, Union

import numpy as np
import paddle
import paddle.nn as nn

from ..layers import eval_mode
from ..runtime import cpu_count, cpu_threads
from ..subnet import Subnet, current_subnet
from .common import input_size
from .exporting import cached_export, export
from .predictor import ExportPredictor
from .quantize import Calibration, as_calibration
from .registry import DEVICES, PRECISIONS, check_choice, check_supported, create_predictor, resolve_engine

__all__ = ["Runner", "create_runner"]


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


def _eager_fn(model: nn.Layer, precision: str, device: str, threads: Optional[int]):
    if device == "gpu":
        place = paddle.CUDAPlace(0)
        model.to(device="gpu")
        threads_here = contextlib.nullcontext
    else:
        place = paddle.CPUPlace()
        threads_here = functools.partial(cpu_threads, threads)  # this call's, then set back
    subnet = current_subnet(model)
    kwargs = {} if subnet is None else subnet.as_dict()
    amp = None if precision == "fp32" else ("float16" if precision == "fp16" else "bfloat16")

    def run(batch: np.ndarray) -> np.ndarray:
        with eval_mode(model), paddle.no_grad(), threads_here():  # a model trained between calls stays in train mode
            x = paddle.to_tensor(np.ascontiguousarray(batch, dtype=np.float32), place=place)
            if amp:
                with paddle.amp.auto_cast(level="O1", dtype=amp):
                    out = model(x, **kwargs)
            else:
                out = model(x, **kwargs)
            return out.astype("float32").numpy()

    return run


def create_runner(model: nn.Layer, engine: str = "eager", precision: str = "fp32", device: str = "cpu",
                  threads: Optional[int] = None, workdir: Optional[Union[str, os.PathLike]] = None,
                  cache: Union[bool, str, os.PathLike] = True,
                  calibration: Optional[Union[Calibration, str, os.PathLike]] = None) -> Runner:
    """A callable mapping a float32 batch (B, 3, S, S) to logits (B, classes), numpy in and out.

    ``engine='eager'``: the model itself, in eval mode during each call (the mode it had is restored
    after), under paddle.no_grad: fp32 on CPU, with Paddle's CPU math threads set to ``threads``
    (default all CPUs) during each call and set back after it; fp16/bf16 by autocast on GPU. The other
    engines run the model's export: 'inference' (Paddle Inference, Predictor), 'openvino' and
    'onnxruntime' (optional extras, see ppim.deploy.engines), 'auto' the fastest that runs here
    (ppim.deploy.registry.resolve_engine). What this machine cannot run raises CapabilityError naming
    what does (before anything is exported). The export is written to ``workdir`` when given, else
    taken from the export cache (cached_export, ``$PPIM_HOME/exports``) with ``cache`` True (default)
    or the cache folder ``cache`` names (e.g. a benchmark's own temporary one), else made in a
    temporary directory removed with the runner. Super models run the sub-network current when
    the runner is made, in every engine. ``precision='int8'`` (post-training quantization, engines
    with a quantizer: 'openvino', 'inference') needs ``calibration``: a folder of images like the ones the model
    will classify, or a ppim.deploy.quantize.Calibration; its export is cached per calibration."""
    check_choice("precision", precision, PRECISIONS)
    check_choice("device", device, DEVICES)
    engine = resolve_engine(engine, device, precision)
    check_supported(engine, precision, device)
    size = input_size(model, None)
    subnet = current_subnet(model)
    calibration = as_calibration(model, calibration, precision)  # read once: a bad folder fails before exporting
    if engine == "eager":
        fn = _eager_fn(model, precision, device, threads)
        return Runner(fn, engine, precision, device, size, subnet,
                      None if device == "gpu" else int(threads or cpu_count()))
    keep = None
    try:
        # the export is laid out (and, for int8, quantized) for them
        target = {"precision": precision, "device": device, "engine": engine, "calibration": calibration}
        if workdir is not None:
            model_dir = export(model, workdir, **target)
        elif cache:
            model_dir = cached_export(model, root=None if cache is True else cache, **target)
        else:
            keep = tempfile.TemporaryDirectory(prefix="ppim-export-")
            model_dir = export(model, Path(keep.name) / "model", **target)
        predictor = create_predictor(engine, model_dir, device=device, precision=precision, threads=threads)
    except BaseException:
        if keep is not None:
            keep.cleanup()
        raise
    return Runner(predictor, engine, precision, device, size, subnet, predictor.threads, predictor, model_dir,
                  keep)
