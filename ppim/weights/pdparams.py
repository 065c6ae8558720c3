"""The .pdparams format (``paddle.save`` of a state dict): a safe reader and an atomic writer."""
from __future__ import annotations

import collections
import os
from pathlib import Path
from typing import Any

import numpy as np

from ..fileio import atomic_path, remove_stale_parts
from .cache import sha256_file, write_sidecar
from .containers import select_state_dict
from .errors import InvalidWeightsError
from .unpickler import DEFAULT_MAX_BYTES, AllowlistUnpickler, check_structure, latin1_encode, numpy_dtype, short_repr

__all__ = ["read_pickle", "read_pdparams", "save_pdparams"]

_PDPARAMS_META_KEYS = ("StructuredToParameterName@@", "UnpackBigParamInfor@@")

_NUMPY_RECONSTRUCT = np.ndarray.__reduce__(np.zeros(0))[0]  # numpy's array rebuilder, whatever its module


def _reconstruct(subtype: Any, shape: Any, dtype: Any) -> np.ndarray:
    """Stand-in for numpy's _reconstruct: numpy pickles an array as an empty (0,) array of its own
    class, then sets its state (BUILD). Anything else would let the file allocate at will."""
    if subtype is not np.ndarray or shape != (0,) or not isinstance(dtype, (bytes, str)) or len(dtype) > 4:
        raise ValueError("malformed numpy array record")
    return _NUMPY_RECONSTRUCT(np.ndarray, (0,), dtype)


class _PdparamsUnpickler(AllowlistUnpickler):
    """paddle.save files are pickled dicts (nested for training checkpoints) of numpy arrays and
    plain values; only numpy's array and dtype reconstruction is allowed, so a hostile file cannot
    run anything (paddle.load would)."""

    allowed = {
        ("collections", "OrderedDict"): collections.OrderedDict,
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): numpy_dtype,
        ("builtins", "tuple"): tuple,  # paddle.save stores tensors as (name, array)
        ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
        ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
        ("_codecs", "encode"): latin1_encode,  # array bytes in protocol-2 files (paddle.save(protocol=2))
    }


_PLAIN = (int, float, str, bool, type(None), bytes)


def _plain_values(obj: Any, path: str) -> Any:
    """``obj`` with paddle's (name, array) tensor records unwrapped and tuples as lists, checked to
    hold only dicts with string keys, lists, arrays and plain values. Recursive: check_structure has
    bounded the depth; a container shared by several parents is converted once (a "billion laughs"
    file stays as small as it is on disk)."""
    done: "dict[int, Any]" = {}

    def convert(value: Any, at: str) -> Any:
        if (isinstance(value, tuple) and len(value) == 2 and isinstance(value[0], str)
                and isinstance(value[1], np.ndarray)):
            return value[1]
        if isinstance(value, (np.ndarray,) + _PLAIN):
            return value
        if id(value) in done:
            return done[id(value)]
        if isinstance(value, dict):
            bad = next((k for k in value if not isinstance(k, str)), None)
            if bad is not None:
                raise InvalidWeightsError(f"{path}: {at or 'the top level'} has a key {short_repr(bad)} that is "
                                          "not a string; a paddle.save state dict never does")
            done[id(value)] = copy = {}
            copy.update((k, convert(v, f"{at}.{k}" if at else k)) for k, v in value.items()
                        if k not in _PDPARAMS_META_KEYS)
        elif isinstance(value, (list, tuple)):
            done[id(value)] = copy = []
            copy.extend(convert(v, f"{at}[{i}]") for i, v in enumerate(value))
        else:
            raise InvalidWeightsError(f"{path}: entry {at or 'top level'!r} is a {type(value).__name__}, "
                                      "which a paddle.save file never holds")
        return copy

    return convert(obj, "")


def read_pickle(path: "str | os.PathLike[str]", max_bytes: int = DEFAULT_MAX_BYTES) -> Any:
    """A paddle.save / pickle file -> its structure (dicts with string keys, lists, numpy arrays,
    numbers, strings; tuples come back as lists, paddle's (name, array) records as arrays), without
    running pickled code and within the bounds of :mod:`.unpickler`: a state dict, or a training
    checkpoint such as ``{"model": ..., "model_ema": ..., "optimizer": ..., "epoch": 3}``. The file
    may hold at most ``max_bytes``."""
    try:
        size = os.path.getsize(path)
        if size > max_bytes:
            raise InvalidWeightsError(f"{path} is {size} bytes, more than the {max_bytes} bytes weights for "
                                      "this model may take; check the file")
        with open(path, "rb") as file:
            obj = _PdparamsUnpickler(file).load()
        check_structure(obj, str(path))
    except InvalidWeightsError:
        raise
    except OSError as e:
        raise InvalidWeightsError(f"cannot read {path}: {e.strerror or e}") from e
    except MemoryError:
        raise InvalidWeightsError(f"{path}: not enough memory to read it ({size} bytes)") from None
    except Exception as e:  # any failure on untrusted input is a bad file
        raise InvalidWeightsError(f"{path} is not a readable .pdparams file: {e}") from e
    return _plain_values(obj, str(path))


def read_pdparams(path: "str | os.PathLike[str]", max_bytes: int = DEFAULT_MAX_BYTES) -> "dict[str, np.ndarray]":
    """A .pdparams file -> {name: array}, without running pickled code: a state dict as it is, a
    training checkpoint's weights as :func:`.checkpoint.select_state_dict` picks them (a ppim
    checkpoint's: those its metric was measured on)."""
    return select_state_dict(read_pickle(path, max_bytes), None, str(path)).state


def save_pdparams(state: "dict[str, np.ndarray]", path: "str | os.PathLike[str]") -> str:
    """Write a state dict as .pdparams atomically (temp file, then rename) with a sha256 sidecar;
    returns the sha256."""
    import paddle

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_parts(path)  # of writers killed before their rename
    with atomic_path(path) as tmp:
        paddle.save(dict(state), str(tmp))
        sha256 = sha256_file(tmp)
        # Sidecar first: a crash before the rename leaves a sidecar without its file, never an
        # unverifiable file.
        write_sidecar(path, sha256)
    return sha256
