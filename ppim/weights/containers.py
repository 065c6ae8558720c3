"""Picking the model (or EMA) weights out of any known checkpoint container (no I/O).

Containers seen in the wild, all handled by :func:`select_state_dict`:

* a bare state dict ``{name: array}`` (paddle.save(model.state_dict()), torch.save(model.state_dict()));
* timm's train.py: ``{"state_dict", "state_dict_ema", "optimizer", "epoch", "arch", "args", ...}``;
* DeiT / SuperViT / TokenLabeling main.py: ``{"model", "model_ema", "optimizer", "lr_scheduler", "epoch", ...}``;
* ppim's training loop (ppim.training.checkpoint): ``{"format": TRAIN_CHECKPOINT_FORMAT, "model",
  "model_ema", "eval_weights", "optimizer", "epoch", ...}``, whose "eval_weights" names the weights
  its metric was measured on.

Keys may carry DataParallel's ``module.`` prefix, which is stripped.
"""
from __future__ import annotations

from typing import Any, Dict, NamedTuple, Optional

import numpy as np

from .errors import CheckpointError
from .unpickler import short_repr

__all__ = ["MODEL_DESCRIPTION_KEY", "STATE_KEYS", "EMA_STATE_KEYS", "TRAIN_CHECKPOINT_FORMAT", "Selected", "select_state_dict"]

STATE_KEYS = ("state_dict", "model")
EMA_STATE_KEYS = ("state_dict_ema", "model_ema", "ema")

#: The "format" entry of ppim's training checkpoints (written by ppim.training.checkpoint).
TRAIN_CHECKPOINT_FORMAT = "ppim-train-checkpoint"


class Selected(NamedTuple):
    """The weights picked out of a checkpoint and where they were: ``entry`` is the container key
    ("model", "state_dict_ema", ...), or "" for a bare state dict; ``ema`` tells EMA weights."""

    state: Dict[str, np.ndarray]
    entry: str
    ema: bool

#: The "format" entry of ppim's training checkpoints (written by ppim.training.checkpoint).
TRAIN_CHECKPOINT_FORMAT = "ppim-train-checkpoint"


#: The entry describing the model (ppim.builder.describe_model) in a file ppim writes; a bare state
#: dict may hold it beside the weights (paddle's set_state_dict ignores it).
MODEL_DESCRIPTION_KEY = "ppim_model"


def _weights_only(obj: Any) -> Any:
    """A bare state dict without its model description entry."""
    if isinstance(obj, dict) and MODEL_DESCRIPTION_KEY in obj:
        return {key: value for key, value in obj.items() if key != MODEL_DESCRIPTION_KEY}
    return obj


def _is_state_dict(obj: Any) -> bool:
    obj = _weights_only(obj)
    return isinstance(obj, dict) and bool(obj) and all(isinstance(v, np.ndarray) for v in obj.values())


def select_state_dict(checkpoint: Any, ema: Optional[bool] = False, source: str = "checkpoint",
                      prefer_ema: bool = False) -> Selected:
    """The model weights inside a checkpoint container (see the module docstring).

    ``ema``: False takes the model weights, True the EMA weights (an error if there are none). None
    decides from the file and the model: a ppim training checkpoint's "eval_weights" (so
    ``--checkpoint best.pdparams`` reproduces the run's best top-1), else with ``prefer_ema`` the EMA
    weights when the file has them (weights whose published accuracy is the EMA's, e.g.
    super_lvvit_s), else the model weights.
    """
    if not isinstance(checkpoint, dict):
        raise CheckpointError(f"{source} holds {short_repr(checkpoint)}, not a dict of weights")
    if ema is None:
        if checkpoint.get("format") == TRAIN_CHECKPOINT_FORMAT and checkpoint.get("eval_weights"):
            ema = checkpoint["eval_weights"] in EMA_STATE_KEYS
        elif not prefer_ema:
            ema = False
    found = None
    if ema is not False:
        found = next((key for key in EMA_STATE_KEYS if _is_state_dict(checkpoint.get(key))), None)
    if found is None and ema is not True:
        found = next((key for key in STATE_KEYS if _is_state_dict(checkpoint.get(key))), None)
        if found is None and _is_state_dict(checkpoint):
            found = ""
    if found is None:
        kind = "EMA weights" if ema is True else "weights"
        keys = EMA_STATE_KEYS if ema is True else STATE_KEYS
        hint = "" if ema is True else " (ema=True / --ema takes EMA weights)"
        raise CheckpointError(
            f"{source} has no {kind}: looked for {' / '.join(repr(k) for k in keys)}"
            f"{'' if ema is True else ' or a bare state dict'}; its top-level keys are "
            f"{sorted(str(k)[:40] for k in list(checkpoint)[:20])}{hint}")
    state = checkpoint[found] if found else _weights_only(checkpoint)
    bad = next((key for key in state if not isinstance(key, str)), None)
    if bad is not None:
        raise CheckpointError(f"{source}: the weights{f' in {found!r}' if found else ''} have a key of type "
                              f"{type(bad).__name__}, not a parameter name")
    state = {key[len("module."):] if key.startswith("module.") else key: value for key, value in state.items()}
    return Selected(state, found, found in EMA_STATE_KEYS)
