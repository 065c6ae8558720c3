"""The .pdparams format (``paddle.save`` of a state dict): a safe reader and an atomic writer."""
from __future__ import annotations

import collections
import os
import pickle
from pathlib import Path
from typing import Any

import numpy as np

from ..fileio import atomic_path
from .cache import sha256_file, write_sidecar
from .checkpoint import training_checkpoint_weights
from .errors import InvalidWeightsError
from .unpickler import AllowlistUnpickler, latin1_encode

__all__ = ["read_pdparams", "read_pickle", "save_pdparams"]

_PDPARAMS_META_KEYS = ("StructuredToParameterName@@", "UnpackBigParamInfor@@")

_RECONSTRUCT = np.ndarray.__reduce__(np.zeros(0))[0]  # numpy's array rebuilder, whatever its module


class _PdparamsUnpickler(AllowlistUnpickler):
    """paddle.save files are pickled dicts of numpy arrays; only numpy's array and dtype
    reconstruction is allowed, so a hostile file cannot run anything (paddle.load would)."""

    allowed = {
        ("collections", "OrderedDict"): collections.OrderedDict,
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("builtins", "tuple"): tuple,  # paddle.save stores some tensors as (name, array)
        ("numpy.core.multiarray", "_reconstruct"): _RECONSTRUCT,
        ("numpy._core.multiarray", "_reconstruct"): _RECONSTRUCT,
        ("_codecs", "encode"): latin1_encode,  # array bytes in protocol-2 files (paddle.save(protocol=2))
    }


def read_pickle(path: "str | os.PathLike[str]") -> Any:
    """A paddle.save / pickle file of dicts, lists, numbers, strings and numpy arrays, read without
    running pickled code (anything else in it raises InvalidWeightsError)."""
    try:
        with open(path, "rb") as file:
            return _PdparamsUnpickler(file).load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError) as e:
        raise InvalidWeightsError(f"{path} is not a readable .pdparams file: {e}") from e


def read_pdparams(path: "str | os.PathLike[str]") -> "dict[str, np.ndarray]":
    """A .pdparams file (paddle.save of a state dict, or a ppim training checkpoint: the weights its
    metric was measured on) -> {name: array}, without running pickled code."""
    state = read_pickle(path)
    weights = training_checkpoint_weights(state, str(path))
    state = weights if weights is not None else state
    if not isinstance(state, dict):
        raise InvalidWeightsError(f"{path} holds a {type(state).__name__}, not a state dict")
    arrays = {}
    for key, value in state.items():
        if key in _PDPARAMS_META_KEYS:
            continue
        if isinstance(value, tuple) and len(value) == 2:  # (tensor name, array)
            value = value[1]
        if not isinstance(value, np.ndarray) or value.dtype == object:
            raise InvalidWeightsError(f"{path}: entry {key!r} is a {type(value).__name__}, not an array")
        arrays[key] = value
    return arrays


def save_pdparams(state: "dict[str, np.ndarray]", path: "str | os.PathLike[str]") -> str:
    """Write a state dict as .pdparams atomically (temp file, then rename) with a sha256 sidecar;
    returns the sha256."""
    import paddle

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        paddle.save(dict(state), str(tmp))
        sha256 = sha256_file(tmp)
        # Sidecar first: a crash before the rename leaves a sidecar without its file, never an
        # unverifiable file.
        write_sidecar(path, sha256)
    return sha256
