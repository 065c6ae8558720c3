"""PyTorch state dicts onto ppim models: pick the weights out of a training checkpoint, then
rename and transpose them as the target Paddle model's own layers say (not by guessing from names).

PyTorch and Paddle differ only in BatchNorm statistics (running_mean/running_var vs
_mean/_variance, plus num_batches_tracked, which Paddle has not) and in Linear weights
([out, in] vs [in, out]); convolution weights are the same.
"""
from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any, Dict, Optional

import numpy as np
import paddle.nn as nn

from ..hub import StateReport, check_state, read_pdparams, save_pdparams, set_weights
from ..registry import model_name
from .torch_reader import CheckpointError, load_torch_checkpoint

# Where training scripts keep the weights: timm's train.py, then DeiT's main.py.
STATE_KEYS = ("state_dict", "model")
EMA_STATE_KEYS = ("state_dict_ema", "model_ema")
_BN_STATS = {"running_mean": "_mean", "running_var": "_variance"}


def _is_state_dict(obj: Any) -> bool:
    return isinstance(obj, dict) and bool(obj) and all(isinstance(v, np.ndarray) for v in obj.values())


def select_state_dict(checkpoint: Any, ema: bool = False, source: str = "checkpoint") -> Dict[str, np.ndarray]:
    """The model weights inside a checkpoint: a bare state dict, or the 'state_dict'/'model' entry
    (with ``ema``: 'state_dict_ema'/'model_ema'); a leading 'module.' (DataParallel) is stripped."""
    keys = EMA_STATE_KEYS if ema else STATE_KEYS
    if isinstance(checkpoint, dict):
        for key in keys:
            if _is_state_dict(checkpoint.get(key)):
                checkpoint = checkpoint[key]
                break
        else:
            if ema or not _is_state_dict(checkpoint):
                kind = "EMA weights" if ema else "weights"
                raise CheckpointError(
                    f"{source} has no {kind}: looked for {' / '.join(repr(k) for k in keys)}"
                    f"{'' if ema else ' or a bare state dict'}; its top-level keys are "
                    f"{sorted(map(str, checkpoint))[:20]}" + ("" if ema else ". Pass --ema for EMA weights."))
    else:
        raise CheckpointError(f"{source} holds a {type(checkpoint).__name__}, not a dict of weights")
    return {key[len("module."):] if key.startswith("module.") else key: value for key, value in checkpoint.items()}


def to_paddle_layout(state: Dict[str, np.ndarray], model: nn.Layer) -> Dict[str, np.ndarray]:
    """Rename BatchNorm statistics and transpose Linear weights of the layers ``model`` has;
    every other key passes as it is (checking it is the caller's business: hub.check_state)."""
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
        if value.dtype.kind == "f":  # fp16/fp64 checkpoints: ppim models compute in float32
            value = value.astype(np.float32, copy=False)
        converted[key] = np.ascontiguousarray(value)
    return converted


def convert_checkpoint(path: "str | os.PathLike[str]", model: nn.Layer, ema: bool = False) -> Dict[str, np.ndarray]:
    """Read a PyTorch checkpoint safely (no torch needed) and return its weights in ``model``'s
    Paddle layout, unchecked."""
    return to_paddle_layout(select_state_dict(load_torch_checkpoint(path), ema, str(path)), model)


@dataclasses.dataclass
class ConversionReport:
    source: str
    output: Optional[str]
    state: StateReport
    written: int

    def __str__(self) -> str:
        s = self.state
        lines = [f"{self.source}: {len(s.matched)} matched, {len(s.resized)} resized, {len(s.dropped)} "
                 f"classifier dropped, {len(s.missing)} missing, {len(s.unexpected)} unexpected, "
                 f"{len(s.mismatched)} shape mismatches"]
        for title, keys in (("resized", s.resized), ("dropped (other class count)", s.dropped),
                            ("missing", s.missing), ("unexpected", s.unexpected), ("shape mismatch", s.mismatched)):
            lines += [f"  {title}: {key}" for key in keys]
        if self.output:
            lines.append(f"wrote {self.written} tensors to {self.output}")
        return "\n".join(lines)


def convert_file(source: "str | os.PathLike[str]", output: "str | os.PathLike[str]", model: nn.Layer,
                 ema: bool = False, strict: bool = True) -> ConversionReport:
    """Convert a PyTorch checkpoint into a .pdparams for ``model`` (e.g. ppim.create_model(name,
    num_classes=...)). Strict: any missing, unexpected or mis-shaped key is an error naming them.
    The file is written atomically and verified by loading it back into the model."""
    state = convert_checkpoint(source, model, ema)
    report = check_state(model, state)
    if strict and not report.ok:
        raise CheckpointError(f"{source} does not fit {model_name(model)}: {report.problems()} "
                              "(nothing written; --no-strict writes the keys that fit)")
    kept = {key: state[key] for key in report.matched}
    save_pdparams(kept, output)
    reloaded = read_pdparams(output)
    set_weights(model, dict(reloaded))
    loaded = model.state_dict()
    for key in reloaded:
        if not np.array_equal(loaded[key].numpy(), state[key]):
            raise CheckpointError(f"{output}: {key} did not load back equal to {source}; the file was "
                                  "written but is wrong, delete it")
    return ConversionReport(str(source), str(Path(output)), report, len(kept))
