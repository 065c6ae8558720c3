"""What the deploy modules share: the export file layout, the input-size and sub-network rules and
the silencing of Paddle's native prints. (Engines, precisions and devices: registry; what this
machine can run: ppim.runtime.)"""
from __future__ import annotations

import contextlib
import ctypes
import os
import sys
from typing import Optional

import paddle.nn as nn

from ..registry import model_name
from ..subnet import subnets_of

MANIFEST = "ppim.json"
INPUT_NAME = "x"
PROGRAM_FILES = ("model.json", "model.pdmodel")  # Paddle 3.x PIR program, legacy (Paddle 2.x) program
PARAMS_FILE = "model.pdiparams"


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


@contextlib.contextmanager
def native_stdout_silenced(stderr: bool = False):
    """Hide what Paddle's C++ passes print to stdout while a predictor is built (Paddle 3.x prints
    "ReduceMeanCheckIfOneDNNSupport" for every mean op), and to stderr too with ``stderr`` (the
    legacy oneDNN int8 passes list what they quantized there). Errors still raise."""
    fds = (1, 2) if stderr else (1,)
    try:
        sys.stdout.flush()
        sys.stderr.flush()
        saved = [os.dup(fd) for fd in fds]
    except (AttributeError, OSError, ValueError):  # no real fds (embedded interpreters)
        yield
        return
    try:
        with open(os.devnull, "w") as devnull:
            for fd in fds:
                os.dup2(devnull.fileno(), fd)
        yield
    finally:
        with contextlib.suppress(Exception):
            ctypes.CDLL(None).fflush(None)  # C stdio buffers go to /dev/null, not to the restored fd
        for fd, copy in zip(fds, saved):
            os.dup2(copy, fd)
            os.close(copy)

