"""What the deploy modules share: engine/precision/device names, the export file layout, the
input-size and sub-network rules, CPU capability checks and thread defaults."""
from __future__ import annotations

import contextlib
import ctypes
import os
import sys
from typing import Optional, Sequence

import paddle
import paddle.nn as nn

from ..registry import model_name
from ..subnet import subnets_of

ENGINES = ("eager", "inference", "openvino", "onnxruntime")  # the last two: optional extras
ENGINE_CHOICES = ENGINES + ("auto",)  # auto: the fastest installed (runner.resolve_engine)
PRECISIONS = ("fp32", "bf16", "fp16")
DEVICES = ("cpu", "gpu")
MANIFEST = "ppim.json"
INPUT_NAME = "x"
PROGRAM_FILES = ("model.json", "model.pdmodel")  # Paddle 3.x PIR program, legacy (Paddle 2.x) program
PARAMS_FILE = "model.pdiparams"
BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")

def input_size(model: nn.Layer, img_size: Optional[int]) -> int:
    """The side S of the exported input (B, 3, S, S)."""
    cfg = getattr(model, "pretrained_cfg", None) or {}
    native = int(cfg["input_size"][-1]) if "input_size" in cfg else None
    if subnets_of(model):
        # Super models take the 224 crop of their transforms and resize it to the sub-network's size
        # inside the graph; another S feeds images of that size (resized likewise).
        return int(img_size or native or max(model.img_sizes))
    if native is None:
        native = getattr(model, "img_size", None)
    if img_size is None:
        if native is None:
            raise ValueError(f"{model_name(model)} has no pretrained_cfg input size: pass img_size")
        return int(native)
    if native is not None and int(img_size) != int(native):
        name = model_name(model)
        raise ValueError(f"{name} is built for {native}x{native} inputs, not {img_size}x{img_size}: build it "
                         f"for that size (ppim.create_model({name!r}, img_size={img_size})) and export that model")
    return int(img_size)


def cpu_flags() -> set:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def cpu_supports_bf16() -> bool:
    """True when the CPU has native bfloat16 arithmetic (avx512_bf16 or amx_bf16 in /proc/cpuinfo)."""
    return bool(cpu_flags() & set(BF16_CPU_FLAGS))


def check_choice(name: str, value: str, choices: Sequence[str]) -> str:
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(choices)}; got {value!r}")
    return value


def onednn_compiled() -> bool:
    core = paddle.base.core if hasattr(paddle, "base") else paddle.fluid.core
    check = getattr(core, "is_compiled_with_onednn", None) or getattr(core, "is_compiled_with_mkldnn", None)
    return bool(check()) if check else False


def check_gpu(what: str) -> None:
    if not paddle.is_compiled_with_cuda():
        raise RuntimeError(f"{what} needs a CUDA build of Paddle (pip install paddlepaddle-gpu); this Paddle "
                           f"{paddle.__version__} is a CPU-only build. Use device='cpu'.")
    if paddle.device.cuda.device_count() < 1:
        raise RuntimeError(f"{what}: Paddle is built with CUDA but sees no GPU (check CUDA_VISIBLE_DEVICES "
                           f"and the driver)")


def default_threads() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


@contextlib.contextmanager
def native_stdout_silenced():
    """Hide what Paddle's C++ passes print to stdout while a predictor is built (Paddle 3.x prints
    "ReduceMeanCheckIfOneDNNSupport" for every mean op). Errors still raise; stderr is untouched."""
    try:
        sys.stdout.flush()
        saved = os.dup(1)
    except (AttributeError, OSError, ValueError):  # no real fd 1 (embedded interpreters)
        yield
        return
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 1)
        yield
    finally:
        with contextlib.suppress(Exception):
            ctypes.CDLL(None).fflush(None)  # C stdio buffers go to /dev/null, not to the restored fd
        os.dup2(saved, 1)
        os.close(saved)

