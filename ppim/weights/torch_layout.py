"""PyTorch state dicts onto ppim models: rename and transpose the weights as the target Paddle
model's own layers say (not by guessing from names). Imports nothing of ppim.

PyTorch and Paddle differ only in BatchNorm statistics (running_mean/running_var vs
_mean/_variance, plus num_batches_tracked, which Paddle has not) and in Linear weights
([out, in] vs [in, out]); convolution weights are the same.
"""
from __future__ import annotations

from typing import Dict

import numpy as np
import paddle.nn as nn

__all__ = ["to_paddle_layout"]

_BN_STATS = {"running_mean": "_mean", "running_var": "_variance"}


def to_paddle_layout(state: Dict[str, np.ndarray], model: nn.Layer) -> Dict[str, np.ndarray]:
    """Rename BatchNorm statistics and transpose Linear weights of the layers ``model`` has;
    every other key passes as it is (checking it is the caller's business: ppim.weights.check_state).
    Floating-point arrays become float32 (ppim models compute in float32)."""
    linear, batch_norm = set(), set()
    for name, layer in model.named_sublayers():
        if isinstance(layer, nn.Linear):
            linear.add(f"{name}.weight")
        elif isinstance(layer, (nn.BatchNorm1D, nn.BatchNorm2D, nn.BatchNorm3D, nn.BatchNorm)):
            batch_norm.add(name)
    converted = {}
    for key, value in state.items():
        owner, _, leaf = key.rpartition(".")
        if owner in batch_norm and leaf == "num_batches_tracked":
            continue
        if owner in batch_norm and leaf in _BN_STATS:
            key = f"{owner}.{_BN_STATS[leaf]}"
        if key in linear and value.ndim == 2:
            value = value.T
        if value.dtype.kind == "f":
            value = value.astype(np.float32, copy=False)
        converted[key] = np.ascontiguousarray(value)
    return converted
