"""Picking the model weights out of a checkpoint container (no I/O)."""
from __future__ import annotations

from typing import Any, Dict, Optional

import numpy as np

from .errors import CheckpointError

__all__ = ["STATE_KEYS", "EMA_STATE_KEYS", "TRAIN_CHECKPOINT_FORMAT", "select_state_dict", "training_checkpoint_weights"]

# Where training scripts keep the weights: timm's train.py, then DeiT's main.py.
STATE_KEYS = ("state_dict", "model")
EMA_STATE_KEYS = ("state_dict_ema", "model_ema")

#: The "format" entry of ppim's training checkpoints (written by ppim.training.checkpoint).
TRAIN_CHECKPOINT_FORMAT = "ppim-train-checkpoint"


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


def training_checkpoint_weights(checkpoint: Any, source: str = "checkpoint") -> Optional[Dict[str, np.ndarray]]:
    """The weights inside a ppim training checkpoint: those its metric was measured on (its
    "eval_weights": the model's, or their EMA's), so ``--checkpoint best.pdparams`` reproduces the
    run's best top-1. None when ``checkpoint`` is not a ppim training checkpoint."""
    if not (isinstance(checkpoint, dict) and checkpoint.get("format") == TRAIN_CHECKPOINT_FORMAT):
        return None
    return select_state_dict(checkpoint, ema=checkpoint.get("eval_weights") == "model_ema", source=source)
