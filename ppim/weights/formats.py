"""One entry point for reading weights of any supported format into Paddle's layout."""
from __future__ import annotations

import os
from typing import Optional

import numpy as np

from ..convert.mapping import to_paddle_layout
from .checkpoint import select_state_dict
from .pdparams import read_pdparams
from .torch_reader import load_torch_checkpoint

__all__ = ["TORCH_SUFFIXES", "is_torch_checkpoint", "read_torch_weights", "read_weights"]

TORCH_SUFFIXES = (".pth", ".pth.tar", ".pt", ".bin", ".tar")


def is_torch_checkpoint(name: "str | os.PathLike[str]") -> bool:
    return str(name).lower().endswith(TORCH_SUFFIXES)


def read_torch_weights(path: "str | os.PathLike[str]", model, ema: bool = False) -> "dict[str, np.ndarray]":
    """Read a PyTorch checkpoint safely (no torch needed) and return its weights in ``model``'s
    Paddle layout, unchecked."""
    return to_paddle_layout(select_state_dict(load_torch_checkpoint(path), ema, str(path)), model)


def read_weights(path: "str | os.PathLike[str]", model=None, name: Optional[str] = None) -> "dict[str, np.ndarray]":
    """A weights file -> {name: array} in Paddle's layout. PyTorch checkpoints (.pth, .pth.tar,
    .bin, ...; told by ``name``, default the path) are converted for ``model`` (its layers tell
    which weights to transpose)."""
    if is_torch_checkpoint(name or path):
        if model is None:
            raise ValueError(f"converting the PyTorch checkpoint {path} needs the target model")
        return read_torch_weights(path, model)
    return read_pdparams(path)
