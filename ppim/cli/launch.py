"""Starting a command line under ``python -m paddle.distributed.launch``: pin each process to its GPU
before Paddle is imported. Imports nothing of Paddle or ppim (it must run before either loads)."""
from __future__ import annotations

import os
import sys

__all__ = ["pin_launch_gpu"]


def pin_launch_gpu() -> bool:
    """Under paddle.distributed.launch on GPUs each process gets its GPU in FLAGS_selected_gpus (an
    index into CUDA_VISIBLE_DEVICES, or a device id when that is unset). Making that GPU the only
    visible one, before Paddle is imported, makes it device 0 here, so every device-0 default (eager
    CUDAPlace(0), the predictor's device_id 0) lands on this rank's own GPU.

    Returns True if it pinned. Does nothing on one process, on CPUs (no FLAGS_selected_gpus) and once
    Paddle is imported (CUDA has read the environment by then; rewriting it would only mislead)."""
    if "paddle" in sys.modules:
        return False
    selected = os.environ.get("FLAGS_selected_gpus", "")
    if int(os.environ.get("PADDLE_TRAINERS_NUM", "1") or 1) <= 1 or not selected.isdigit():
        return False
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    devices = visible.split(",") if visible and visible != "all" else None
    if devices is not None and int(selected) >= len(devices):
        return False
    os.environ["CUDA_VISIBLE_DEVICES"] = devices[int(selected)].strip() if devices else selected
    os.environ["FLAGS_selected_gpus"] = "0"
    return True
