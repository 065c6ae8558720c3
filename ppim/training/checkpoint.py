"""Training checkpoints: one file per checkpoint holding everything an exact resume needs (model,
EMA, optimizer, schedule, loss scaler, epoch, RNG states, arguments, metrics).

The file is a pickle of dicts, lists, plain values and numpy arrays (what paddle.save writes for a
state dict): ``paddle.load`` reads it, and ppim reads it without running pickled code
(``ppim.weights.pdparams.read_pickle``), so ``tools/eval.py --checkpoint best.pdparams`` and ``--pretrained``
take it like a weights file. It is written to a temporary file in the same folder, flushed to disk
and renamed over the old one: a run killed while writing leaves the previous checkpoint intact.
"""
from __future__ import annotations

import os
import pickle
import random
from pathlib import Path
from typing import Any, Dict

import numpy as np
import paddle

from ..errors import ParameterError
from ..fileio import atomic_path
from ..weights.containers import TRAIN_CHECKPOINT_FORMAT
from ..weights.errors import InvalidWeightsError
from ..weights.pdparams import read_pickle

class ResumeError(ParameterError):
    """A checkpoint that cannot be resumed here (unreadable, or another model / class count); its
    message names ``resume=`` (``--resume`` on the command line)."""


def to_plain(value: Any) -> Any:
    """Tensors -> numpy arrays, numpy scalars -> Python numbers, recursively through dicts, lists and
    tuples: the only kinds of objects the safe reader accepts."""
    if isinstance(value, paddle.Tensor):  # parameters too
        return value.numpy()
    if isinstance(value, np.ndarray):
        return value
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, dict):
        return {str(k): to_plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(to_plain(v) for v in value)
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise TypeError(f"a checkpoint cannot hold a {type(value).__name__}")


def write_bytes(file, data: bytes) -> None:
    """Write a checkpoint's bytes into its open temporary file. A seam: a test replaces it (e.g. to
    stop halfway) to check that a run killed mid-write keeps the previous checkpoint."""
    file.write(data)


def save_checkpoint(path: "str | os.PathLike[str]", checkpoint: Dict[str, Any]) -> Path:
    """Write ``checkpoint`` (see Trainer.state) to ``path`` atomically; returns the path."""
    path = Path(path)
    data = pickle.dumps(to_plain({"format": TRAIN_CHECKPOINT_FORMAT, "version": 1, **checkpoint}), protocol=4)
    with atomic_path(path) as tmp, open(tmp, "wb") as file:
        write_bytes(file, data)
        file.flush()
        os.fsync(file.fileno())
    return path


def load_checkpoint(path: "str | os.PathLike[str]") -> Dict[str, Any]:
    """Read a training checkpoint written by save_checkpoint (no pickled code runs)."""
    if not os.path.isfile(path):
        raise ResumeError("{resume}: no such file", resume=os.fspath(path))
    try:
        checkpoint = read_pickle(path)
    except InvalidWeightsError as error:
        raise ResumeError(f"{{resume}}: {error}", resume=os.fspath(path)) from None
    if not (isinstance(checkpoint, dict) and checkpoint.get("format") == TRAIN_CHECKPOINT_FORMAT):
        raise ResumeError("{resume} is not a ppim training checkpoint (a weights file? start from weights with "
                          "{checkpoint} instead)", resume=os.fspath(path), checkpoint=os.fspath(path))
    return checkpoint


# ----------------------------------------------------------------------------------------------
# Random number generators
# ----------------------------------------------------------------------------------------------


def rng_state() -> Dict[str, Any]:
    """The states of Python's, numpy's and Paddle's global generators (Paddle's as plain tuples)."""
    name, keys, position, has_gauss, gauss = np.random.get_state()
    # int64, not numpy's uint32: paddle.load cannot make a tensor of uint32 (and reads the file too)
    return {"python": random.getstate(), "numpy": (name, keys.astype(np.int64), position, has_gauss, gauss),
            "paddle": [state.__getstate__() for state in paddle.get_rng_state()]}


def set_rng_state(state: Dict[str, Any]) -> None:
    random.setstate(_tuples(state["python"]))
    name, keys, position, has_gauss, gauss = state["numpy"]
    np.random.set_state((name, np.asarray(keys).astype(np.uint32), position, has_gauss, gauss))
    generator_state = type(paddle.get_rng_state()[0])
    states = []
    for saved in state["paddle"]:
        restored = generator_state.__new__(generator_state)  # pybind class without a Python constructor
        restored.__setstate__(tuple(saved))
        states.append(restored)
    paddle.set_rng_state(states)


def _tuples(value: Any) -> Any:
    """Python's random state is nested tuples; keep it so whatever the container round trip did."""
    return tuple(_tuples(v) for v in value) if isinstance(value, (list, tuple)) else value


# ----------------------------------------------------------------------------------------------
# Optimizer state by parameter path
# ----------------------------------------------------------------------------------------------
# Paddle keys optimizer state by the parameters' generated names (linear_12.w_0_moment1_0), which
# depend on how many layers the process built before. Checkpoints key it by the parameters' paths in
# the model (blocks.0.attn.qkv.weight) so it loads into any process that builds the same model.


def _rename(keys, mapping: Dict[str, str]) -> Dict[str, str]:
    by_length = sorted(mapping, key=len, reverse=True)
    renamed = {}
    for key in keys:
        for old in by_length:
            if key == old or key.startswith(old + "_"):
                renamed[key] = mapping[old] + key[len(old):]
                break
    return renamed


def optimizer_state(optimizer, model) -> Dict[str, Any]:
    """``optimizer.state_dict()`` keyed by parameter paths of ``model`` (see above)."""
    to_path = {param.name: "@" + path for path, param in model.named_parameters()}
    state = dict(optimizer.state_dict())
    renamed = _rename([k for k in state if isinstance(state[k], (paddle.Tensor, np.ndarray))], to_path)
    out = {renamed.get(k, k): v for k, v in state.items() if k != "master_weights"}
    if "master_weights" in state:  # AMP O2 keeps fp32 copies by parameter name
        masters = state["master_weights"]
        names = _rename(masters, to_path)
        out["master_weights"] = {names.get(k, k): v for k, v in masters.items()}
    return out


def set_optimizer_state(optimizer, model, state: Dict[str, Any]) -> None:
    to_name = {"@" + path: param.name for path, param in model.named_parameters()}
    state = dict(state)
    renamed = _rename([k for k in state if k.startswith("@")], to_name)
    out = {renamed.get(k, k): v for k, v in state.items() if k != "master_weights"}
    if "master_weights" in state:
        names = _rename(state["master_weights"], to_name)
        out["master_weights"] = {names.get(k, k): v for k, v in state["master_weights"].items()}
    optimizer.set_state_dict(out)
