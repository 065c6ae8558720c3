"""Top-k classification of images with a model through any runner."""
from __future__ import annotations

import warnings
from typing import Any, Callable, List, Optional, Sequence, Tuple

import numpy as np
import paddle

from ..builder import class_names_of
from ..registry import model_name
from ..transforms import ImageLike, as_numpy, create_transforms
from .runner import create_runner

__all__ = ["classify"]

Prediction = List[Tuple[int, str, float]]


def classify(model: paddle.nn.Layer, images: Sequence[ImageLike], transforms: Callable = None,
             topk: int = 5, batch_size: int = 16, engine: str = "auto", precision: str = "fp32", device: str = "cpu",
             runner: Optional[Callable[[np.ndarray], np.ndarray]] = None, calibration: Any = None) -> List[Prediction]:
    """Top-k (class id, class name, probability) per image, probabilities from a softmax over the
    model's eval logits; class names are the model's own (a fine-tuned model's, from its checkpoint;
    the ImageNet names for 1000 classes), else the index as text. ``transforms`` defaults to the model's own eval transforms. ``engine`` /
    ``precision`` / ``device`` / ``calibration`` (int8) pick the runner (see create_runner); an existing
    ``runner`` may be passed instead.

    The default ``engine='auto'`` runs the fastest installed engine on the model's cached export
    (made once per weights in ``$PPIM_HOME/exports``; within 1e-4 of eager); a model that cannot be
    exported runs eagerly, with a warning saying why."""
    transforms = transforms or create_transforms(model.pretrained_cfg)
    names = class_names_of(model)
    if runner is None:
        try:
            runner = create_runner(model, engine=engine, precision=precision, device=device, calibration=calibration)
        except Exception as exc:  # noqa: BLE001 - only auto falls back; asked-for engines raise
            if engine != "auto" or precision == "int8":  # eager has no int8
                raise
            warnings.warn(f"classify: engine='auto' could not export {model_name(model)} ({type(exc).__name__}: "
                          f"{exc}); running it eagerly", RuntimeWarning, stacklevel=2)
            runner = create_runner(model, engine="eager", precision=precision, device=device)
    results: List[Prediction] = []
    for start in range(0, len(images), batch_size):
        batch = np.stack([as_numpy(transforms)(image) for image in images[start:start + batch_size]])
        probs = _softmax(runner(batch.astype("float32")))
        for row in probs:
            top = np.argsort(-row)[:topk]
            results.append([(int(i), names[i] if names and len(row) == len(names) else str(i), float(row[i]))
                            for i in top])
    return results


def _softmax(logits: np.ndarray) -> np.ndarray:
    logits = logits.astype("float64")
    logits = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return logits / logits.sum(axis=-1, keepdims=True)

