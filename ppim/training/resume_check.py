"""A training checkpoint checked as a whole against the run that resumes it, before anything is set.

Every field a resume reads is checked for type, shape, range and size against what this run built
(model, EMA, optimizer, schedule, loss scaler, step): a hand-edited, truncated or foreign checkpoint
is refused with one error naming the field, not half-loaded or crashed on in the middle of an epoch.
Weights go through the weights layer's own check (ppim.weights.check_state: keys, shapes, dtypes,
NaN/inf), the rest through the small checkers below.
"""
from __future__ import annotations

import math
import numbers
from typing import Any, Dict, List, Optional

import numpy as np

from ..weights.state import check_state, non_finite
from ..weights.unpickler import short_repr
from .checkpoint import ResumeError

__all__ = ["check_fields", "validate_checkpoint"]

#: Largest epoch / step count a checkpoint may claim (far beyond any real run, small enough to stay exact).
MAX_EPOCH = 1_000_000
MAX_STEP = 1 << 53
#: Bytes of a Paddle generator's saved state (a printed mt19937 state is ~7 KB).
MAX_PADDLE_RNG_BYTES = 1 << 16
_MT_WORDS = 624  # Mersenne Twister state words (Python's and numpy's)


class _Field:
    """Check helpers that raise ResumeError naming ``source`` and the dotted field."""

    def __init__(self, source: str):
        self.source = source

    def fail(self, field: str, problem: str, fix: Optional[str] = None) -> ResumeError:
        fix = fix or ("the checkpoint is damaged or was edited: resume from another checkpoint of the run "
                      "(last.pdparams / best.pdparams), or start from its weights with {checkpoint}")
        # resume= / checkpoint= in a notebook, --resume / --checkpoint on the command line
        return ResumeError(f"{{resume}}: field '{field}' {problem}; {fix}", resume=self.source,
                           checkpoint=self.source)

    def integer(self, field: str, value: Any, low: int, high: int) -> int:
        if isinstance(value, bool) or not isinstance(value, numbers.Integral):
            raise self.fail(field, f"is {short_repr(value)}, not an integer")
        if not low <= value <= high:
            raise self.fail(field, f"is {value}, outside {low}..{high}")
        return int(value)

    def number(self, field: str, value: Any, low: float = -math.inf, high: float = math.inf) -> float:
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise self.fail(field, f"is {short_repr(value)}, not a number")
        if not math.isfinite(value) or not low <= value <= high:
            raise self.fail(field, f"is {value}, not a finite number in [{low}, {high}]")
        return float(value)

    def mapping(self, field: str, value: Any) -> Dict[str, Any]:
        if not isinstance(value, dict):
            raise self.fail(field, f"is {short_repr(value)}, not a dict" if value is not None else "is missing")
        return value

    def sequence(self, field: str, value: Any, length: Optional[int] = None, most: Optional[int] = None) -> list:
        if not isinstance(value, (list, tuple)):
            raise self.fail(field, f"is {short_repr(value)}, not a list")
        if length is not None and len(value) != length:
            raise self.fail(field, f"has {len(value)} entries, not {length}")
        if most is not None and len(value) > most:
            raise self.fail(field, f"has {len(value)} entries, more than {most}")
        return list(value)

    def words(self, field: str, value: Any, count: int) -> None:
        """``count`` integers in 0 .. 2**32-1, not all zero (an all-zero Mersenne Twister only yields zeros)."""
        if isinstance(value, np.ndarray):
            if value.shape != (count,) or value.dtype.kind not in "iu":
                raise self.fail(field, f"is an array of shape {list(value.shape)} and dtype {value.dtype}, "
                                       f"not {count} integers")
            values = value.astype(np.int64)
        else:
            items = self.sequence(field, value, length=count)
            if any(isinstance(v, bool) or not isinstance(v, numbers.Integral) for v in items):
                raise self.fail(field, "holds a value that is not an integer")
            values = np.array([v if -2**63 <= v < 2**63 else -1 for v in items], dtype=np.int64)
        if values.min() < 0 or values.max() >= 1 << 32:
            raise self.fail(field, "holds values outside 0 .. 2**32-1")
        if not values.any():
            raise self.fail(field, "is all zeros (the generator would return zeros forever)")


def _python_rng(check: _Field, field: str, state: Any) -> None:
    version, internal, gauss = check.sequence(field, state, length=3)
    check.integer(f"{field}[0]", version, 3, 3)
    internal = check.sequence(f"{field}[1]", internal, length=_MT_WORDS + 1)
    check.words(f"{field}[1]", internal[:-1], _MT_WORDS)
    check.integer(f"{field}[1][-1]", internal[-1], 0, _MT_WORDS)
    if gauss is not None:
        check.number(f"{field}[2]", gauss)


def _numpy_rng(check: _Field, field: str, state: Any) -> None:
    name, keys, position, has_gauss, gauss = check.sequence(field, state, length=5)
    if name != "MT19937":
        raise check.fail(f"{field}[0]", f"is {short_repr(name)}, not 'MT19937'")
    check.words(f"{field}[1]", keys, _MT_WORDS)
    check.integer(f"{field}[2]", position, 0, _MT_WORDS)
    check.integer(f"{field}[3]", has_gauss, 0, 1)
    check.number(f"{field}[4]", gauss)


def _paddle_rng(check: _Field, field: str, states: Any, expected: int) -> None:
    states = check.sequence(field, states, length=expected)
    for index, state in enumerate(states):
        name = f"{field}[{index}]"
        parts = check.sequence(name, state, length=4)
        for position in range(3):
            check.integer(f"{name}[{position}]", parts[position], -1, 2**64 - 1)
        text = check.sequence(f"{name}[3]", parts[3], most=MAX_PADDLE_RNG_BYTES)
        if any(isinstance(v, bool) or not isinstance(v, numbers.Integral) or not 0 <= v < 256 for v in text):
            raise check.fail(f"{name}[3]", "holds values that are not bytes")


def _weights(check: _Field, field: str, state: Any, model) -> None:
    state = check.mapping(field, state)
    if not all(isinstance(v, np.ndarray) for v in state.values()):
        bad = next(k for k, v in state.items() if not isinstance(v, np.ndarray))
        raise check.fail(f"{field}.{bad}", f"is {short_repr(state[bad])}, not an array")
    report = check_state(model, state)
    model_state = model.state_dict()
    dtypes = [f"{key}: {state[key].dtype}, model {str(model_state[key].dtype).replace('paddle.', '')}"
              for key in report.matched if str(state[key].dtype) != str(model_state[key].dtype).replace("paddle.", "")]
    problems = report.problems()
    if report.dropped or report.resized:
        problems = "; ".join(p for p in (problems, f"another class count or input size in "
                                                   f"{', '.join((report.dropped + report.resized)[:4])}") if p)
    if dtypes:
        problems = "; ".join(p for p in (problems, f"other dtypes ({len(dtypes)}): {', '.join(dtypes[:4])}") if p)
    if problems:
        fix = ("nothing computed with NaN or infinite weights means anything (did the run diverge?): resume "
               "from an earlier checkpoint" if report.nonfinite else None)
        raise check.fail(field, f"does not fit the model this run builds: {problems}", fix)


def _optimizer(check: _Field, state: Any, model, scheduler_expected: bool) -> None:
    state = check.mapping("optimizer", state)
    params = {path: tuple(param.shape) for path, param in model.named_parameters() if not param.stop_gradient}
    by_length = sorted(params, key=len, reverse=True)
    suffixes: Dict[str, set] = {path: set() for path in params}
    for key, value in state.items():
        if key == "LR_Scheduler":
            _scheduler(check, "optimizer.LR_Scheduler", value)
            continue
        if key == "master_weights":
            check.mapping("optimizer.master_weights", value)
            continue
        if not key.startswith("@"):
            raise check.fail(f"optimizer.{key[:80]}", "is not a state of this run's optimizer")
        path = next((p for p in by_length if key[1:].startswith(p + "_")), None)
        if path is None:
            raise check.fail(f"optimizer.{key[:80]}", "belongs to a parameter this model does not have",
                             "the optimizer state is another model's: resume with the arguments it was trained "
                             "with, or start from its weights with {checkpoint}")
        if not isinstance(value, np.ndarray):
            raise check.fail(f"optimizer.{key[:80]}", f"is {short_repr(value)}, not an array")
        if tuple(value.shape) not in (params[path], (1,), ()):
            raise check.fail(f"optimizer.{key[:80]}", f"has shape {list(value.shape)}; the parameter has "
                                                      f"{list(params[path])}")
        if non_finite(value):
            raise check.fail(f"optimizer.{key[:80]}", f"holds {non_finite(value)}")
        suffixes[path].add(key[len(path) + 1:])
    kinds = {frozenset(found) for found in suffixes.values()}
    if len(kinds) > 1 or not next(iter(kinds), {"x"}):
        missing = [path for path, found in suffixes.items() if found != max(kinds, key=len)]
        raise check.fail("optimizer", f"has no state for {len(missing)} of this model's parameters "
                                      f"({', '.join(missing[:4])}{' ...' if len(missing) > 4 else ''})")
    if scheduler_expected and "LR_Scheduler" not in state:
        raise check.fail("optimizer.LR_Scheduler", "is missing")


def _scheduler(check: _Field, field: str, state: Any) -> None:
    state = check.mapping(field, state)
    if "last_epoch" not in state or "last_lr" not in state:
        raise check.fail(field, f"lacks {'last_epoch' if 'last_epoch' not in state else 'last_lr'}")
    check.integer(f"{field}.last_epoch", state["last_epoch"], -1, MAX_STEP)
    check.number(f"{field}.last_lr", state["last_lr"], 0.0)


def _scaler(check: _Field, state: Any, expected: Dict[str, Any]) -> None:
    state = check.mapping("scaler", state)
    for key, value in expected.items():
        if key not in state:
            raise check.fail(f"scaler.{key}", "is missing")
        if isinstance(value, bool):
            if not isinstance(state[key], (bool, np.bool_)):
                raise check.fail(f"scaler.{key}", f"is {short_repr(state[key])}, not true/false")
        elif isinstance(value, numbers.Integral):
            check.integer(f"scaler.{key}", state[key], 0, MAX_STEP)
        else:
            check.number(f"scaler.{key}", float(np.asarray(state[key]).reshape(-1)[0])
                         if isinstance(state[key], np.ndarray) and state[key].size == 1 else state[key], 0.0)


def _best(check: _Field, best: Any, epoch: int) -> None:
    if best is None:
        return
    best = check.mapping("best", best)
    check.integer("best.epoch", best.get("epoch"), 0, max(epoch - 1, 0))
    check.number("best.metric", best.get("metric"), 0.0, 100.0)
    if best.get("metric_name") not in ("top1", "ema_top1"):
        raise check.fail("best.metric_name", f"is {short_repr(best.get('metric_name'))}, not top1 or ema_top1")
    if best.get("weights") not in ("model", "model_ema"):
        raise check.fail("best.weights", f"is {short_repr(best.get('weights'))}, not model or model_ema")


def check_fields(checkpoint: Dict[str, Any], source: str) -> None:
    """ResumeError naming the first field that is wrong whatever the run builds (epoch, step, best
    metric, RNG states, the model's identity, weights as dicts of arrays): checked as soon as the
    checkpoint is read, before anything uses it."""
    import paddle

    check = _Field(source)
    epoch = check.integer("epoch", checkpoint.get("epoch"), 1, MAX_EPOCH)
    check.integer("global_step", checkpoint.get("global_step"), 0, MAX_STEP)
    rng = check.mapping("rng", checkpoint.get("rng"))
    for key in ("python", "numpy", "paddle"):
        if key not in rng:
            raise check.fail(f"rng.{key}", "is missing")
    _python_rng(check, "rng.python", rng["python"])
    _numpy_rng(check, "rng.numpy", rng["numpy"])
    _paddle_rng(check, "rng.paddle", rng["paddle"], len(paddle.get_rng_state()))
    _best(check, checkpoint.get("best"), epoch)
    if "model_name" in checkpoint and not isinstance(checkpoint["model_name"], str):
        raise check.fail("model_name", f"is {short_repr(checkpoint['model_name'])}, not a model name")
    if "num_classes" in checkpoint:
        check.integer("num_classes", checkpoint["num_classes"], 0, 1_000_000)
    if checkpoint.get("img_size") is not None:
        check.integer("img_size", checkpoint["img_size"], 1, 8192)
    for field in ("model", "model_ema"):
        value = checkpoint.get(field)
        if field == "model" or value is not None:
            weights = check.mapping(field, value)
            bad = next((key for key, array in weights.items() if not isinstance(array, np.ndarray)), None)
            if bad is not None:
                raise check.fail(f"{field}.{str(bad)[:80]}", f"is {short_repr(weights[bad])}, not an array")


def validate_checkpoint(checkpoint: Dict[str, Any], source: str, trainer) -> None:
    """ResumeError naming the first field of ``checkpoint`` that does not fit ``trainer`` (a
    ppim.training.engine.Trainer as this run built it): check_fields, then the weights, EMA,
    optimizer, schedule, loss scaler and step state. Nothing of the trainer is changed."""
    check_fields(checkpoint, source)
    check = _Field(source)
    _weights(check, "model", checkpoint.get("model"), trainer.module)
    if trainer.ema is not None and checkpoint.get("model_ema") is not None:
        _weights(check, "model_ema", checkpoint["model_ema"], trainer.ema.module)
    _optimizer(check, checkpoint.get("optimizer"), trainer.module, trainer.scheduler is not None)
    if trainer.scheduler is not None:
        _scheduler(check, "scheduler", checkpoint.get("scheduler"))
    if trainer.scaler is not None and checkpoint.get("scaler"):
        _scaler(check, checkpoint["scaler"], trainer.scaler.state_dict())
    step = checkpoint.get("step")
    if step is not None and hasattr(trainer.step, "set_state_dict"):
        expected: List[str] = sorted(trainer.step.state_dict())
        step = check.mapping("step", step)
        if sorted(step) != expected:
            raise check.fail("step", f"holds {sorted(step)[:5]}, this run's step keeps {expected}")
        if "rng" in step:  # SuperStep: a Python random.Random state
            _python_rng(check, "step.rng", step["rng"])
