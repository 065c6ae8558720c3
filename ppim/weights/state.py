"""Checking a state dict against a model and adapting what can be adapted (classifier of another
class count dropped, positional embedding of another grid resized), then setting it."""
from __future__ import annotations

import dataclasses
import math
import os
import warnings
from typing import List

import numpy as np

from ..registry import model_name
from .errors import InvalidWeightsError

__all__ = ["StateReport", "adapt_state", "check_state", "non_finite", "resize_pos_embed", "set_weights"]


def resize_pos_embed(pos_embed: np.ndarray, grid: int) -> np.ndarray:
    """(1, 1 + g*g, D) positional embedding -> (1, 1 + grid*grid, D): the cls row is kept, the
    patch rows are resized as a g x g image, bicubic (timm's rule for fine-tuning at another size)."""
    import paddle

    old = int(round(math.sqrt(pos_embed.shape[1] - 1)))
    if old * old != pos_embed.shape[1] - 1:
        raise ValueError(f"positional embedding of {pos_embed.shape[1] - 1} patch rows is not a square grid")
    dim = pos_embed.shape[2]
    patches = paddle.to_tensor(pos_embed[0, 1:].reshape(1, old, old, dim).transpose(0, 3, 1, 2))
    patches = paddle.nn.functional.interpolate(patches, size=[grid, grid], mode="bicubic", align_corners=False)
    patches = patches.numpy().transpose(0, 2, 3, 1).reshape(1, grid * grid, dim)
    return np.concatenate([pos_embed[:, :1], patches], axis=1).astype(pos_embed.dtype)


@dataclasses.dataclass
class StateReport:
    """How a state dict fits a model: keys that load as they are, keys adapted (positional
    embedding resized), classifier keys dropped (another class count), and the problems."""

    matched: List[str]
    resized: List[str]
    dropped: List[str]
    missing: List[str]
    unexpected: List[str]
    mismatched: List[str]  # "key: file [shape], model [shape]"
    nonfinite: List[str] = dataclasses.field(default_factory=list)  # "key (3 NaN, 1 inf of 100)"

    @property
    def ok(self) -> bool:
        return not (self.missing or self.unexpected or self.mismatched or self.nonfinite)

    def problems(self) -> str:
        def listed(title: str, keys: List[str]) -> str:
            return f"{title} ({len(keys)}): {', '.join(keys[:10])}{' ...' if len(keys) > 10 else ''}"

        parts = [listed(title, keys) for title, keys in (
            ("missing", self.missing), ("unexpected", self.unexpected), ("shape mismatches", self.mismatched),
            ("NaN or infinite values", self.nonfinite)) if keys]
        return "; ".join(parts)


def non_finite(value) -> str:
    """"" when a floating-point array holds only finite numbers, else what it holds ("2 NaN, 1 inf
    of 96"). Weights with NaN or inf make every prediction meaningless, so no reader loads them."""
    value = np.asarray(value)
    if value.dtype.kind not in "fc" or value.size == 0:
        return ""
    with np.errstate(over="ignore", invalid="ignore"):
        if np.isfinite(value.sum(dtype=np.complex128 if value.dtype.kind == "c" else np.float64)):
            return ""  # NaN and inf propagate through the sum; a finite sum means all are finite
    nans = int(np.isnan(value).sum())
    infs = int(np.isinf(value).sum())
    return f"{nans} NaN, {infs} inf of {value.size}" if nans or infs else ""


def check_state(model, state: "dict[str, np.ndarray]") -> StateReport:
    """Compare ``state`` (Paddle layout) with ``model``'s parameters and buffers; NaN or infinite
    values in any of them are a problem too (``nonfinite``)."""
    model_state = model.state_dict()
    expected = {key: tuple(value.shape) for key, value in model_state.items()}
    kinds = {key: "f" if "float" in str(value.dtype) else "i" for key, value in model_state.items()}
    classifier = tuple(f"{name}." for name in model.pretrained_cfg.get("classifier", ()))
    report = StateReport([], [], [], [], [], [])
    for key, value in state.items():
        shape = tuple(value.shape)
        if key.startswith(classifier) and expected.get(key) != shape:
            report.dropped.append(key)  # another class count, or a model built without heads
        elif key not in expected:
            report.unexpected.append(key)
        elif shape == expected[key] and value.dtype.kind != "f" and kinds[key] == "f":
            report.mismatched.append(f"{key}: file {value.dtype}, model floating point")
        elif shape == expected[key]:
            report.matched.append(key)
        elif key == "pos_embed" and len(shape) == 3 and shape[2] == expected[key][2]:
            report.resized.append(key)
        else:
            report.mismatched.append(f"{key}: file {list(shape)}, model {list(expected[key])}")
    for key, value in state.items():
        found = non_finite(value)
        if found:
            report.nonfinite.append(f"{key} ({found})")
    present = set(state)
    report.missing = [key for key in expected if key not in present and not key.startswith(classifier)]
    return report


def adapt_state(model, state: "dict[str, np.ndarray]", source: "str | os.PathLike[str]",
                new_head: bool = True) -> "dict[str, np.ndarray]":
    """Check ``state`` against ``model`` and adapt what can be adapted: classifier weights of another
    class count are dropped (warned; the model keeps its fresh heads), a positional embedding of
    another grid is resized. Anything else that differs raises InvalidWeightsError naming ``source``
    and the keys. ``new_head=False``: a classifier that does not load (another class count, or none in
    the file) is an error naming both class counts, not a model with random heads."""
    report = check_state(model, state)
    model_state = model.state_dict()
    if not report.ok:
        name = model_name(model)
        if report.nonfinite and not (report.missing or report.unexpected or report.mismatched):
            raise InvalidWeightsError(f"{source}: its weights hold {report.problems()}; nothing computed with "
                                      f"them would mean anything (a diverged training run?): use an earlier "
                                      f"checkpoint")
        raise InvalidWeightsError(f"{source} does not fit {name}: {report.problems()}. Check that the "
                                  f"file is {name}'s weights (ppim.get_model_cfg({name!r})['weights']).")
    classifier = tuple(f"{name}." for name in model.pretrained_cfg.get("classifier", ()))
    absent = [key for key in model_state if key.startswith(classifier) and key not in state]
    if not new_head and (report.dropped or absent):
        raise _head_error(model, state, source, report.dropped)
    if report.dropped:
        warnings.warn(f"{source}: classifier weights not loaded (the model has "
                      f"{model.pretrained_cfg.get('num_classes')} classes, so they stay freshly "
                      f"initialised): {', '.join(report.dropped)}", stacklevel=3)
    adapted = {key: _as_model_dtype(state[key], model_state[key]) for key in report.matched}
    for key in report.resized:
        adapted[key] = resize_pos_embed(_as_model_dtype(state[key], model_state[key]),
                                        int(round(math.sqrt(model_state[key].shape[1] - 1))))
    return adapted


def _head_error(model, state, source, dropped: List[str]) -> Exception:
    from ..errors import ParameterError

    ours = model.pretrained_cfg.get("num_classes")
    weight = next((key for key in dropped if key.endswith("weight") and np.ndim(state[key]) == 2), None)
    if weight is None:
        return InvalidWeightsError(f"{source} has no classifier weights for the model's {ours} classes (a "
                                   f"features-only file?): a model with a random classifier would score nothing")
    theirs = int(np.shape(state[weight])[1])
    return ParameterError(f"{os.fspath(source)} has a {theirs}-class classifier but the model was built with "
                          f"{{num_classes}}: pass {{num_classes:={theirs}}}", num_classes=ours)


def _as_model_dtype(value: np.ndarray, target) -> np.ndarray:
    """Floating-point weights in the model parameter's precision (fp16 or float64 files load into
    float32 models; Paddle's set_state_dict would otherwise stop on an assertion)."""
    if value.dtype.kind != "f":
        return value
    dtype = np.dtype(str(target.dtype).replace("paddle.", "")) if "bfloat16" not in str(target.dtype) else np.float32
    return value if value.dtype == dtype else value.astype(dtype)


def set_weights(model, state: "dict[str, np.ndarray]") -> None:
    """Load a checked state into ``model``; parameters it lacks (dropped heads) keep their values."""
    for key, value in model.state_dict().items():
        state.setdefault(key, value)
    model.set_state_dict(state)
