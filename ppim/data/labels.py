"""The one rule for class indices, wherever they are read (list files, folders, token labels): an
integer k with 0 <= k < num_classes; and the class count inferred from the labels present, refused
when it would rest on gaps or outliers (one typo of 999 must not build a 1000-class model).

A leaf: imports nothing of ppim but its errors.
"""
from __future__ import annotations

import re
from typing import Dict, Optional, Sequence

import numpy as np

from ..errors import InputError

__all__ = ["LabelError", "check_class_indices", "infer_num_classes", "parse_class_index"]

#: Most classes a label may name (far beyond any dataset; exact in float32 token labels, < 2**24).
MAX_CLASSES = 1_000_000

_INTEGER = re.compile(r"[+-]?\d+")


class LabelError(InputError):
    """A class index that is not an integer in 0 .. num_classes - 1 (named with its file and line)."""


def _range(num_classes: Optional[int]) -> str:
    return f"0..{num_classes - 1}" if num_classes else f"0..{MAX_CLASSES - 1}"


def parse_class_index(text: str, where: str, num_classes: Optional[int] = None) -> int:
    """The class index written as ``text`` (a list file's label field) or LabelError naming ``where``."""
    if not _INTEGER.fullmatch(text) or len(text) > 12:
        raise LabelError(f"{where}: label {text[:40]!r} is not a class index (an integer in "
                         f"{_range(num_classes)})")
    return check_class_index(int(text), where, num_classes)


def check_class_index(value: int, where: str, num_classes: Optional[int] = None) -> int:
    high = num_classes if num_classes else MAX_CLASSES
    if not 0 <= value < high:
        fix = f": fix the label or pass --num-classes {value + 1}" if num_classes and value >= num_classes else ""
        raise LabelError(f"{where}: class {value} is outside {_range(num_classes)}"
                         + (f" of {num_classes} classes" if num_classes else "") + fix)
    return value


def check_class_indices(indices: np.ndarray, where: str, num_classes: Optional[int] = None) -> None:
    """The same rule for an array of indices (token labels store them as floats): every value finite,
    whole, and in 0 .. num_classes - 1. LabelError names ``where`` and the first bad value."""
    values = np.asarray(indices)
    if values.dtype.kind not in "iuf":
        raise LabelError(f"{where}: class indices of dtype {values.dtype}, not numbers")
    high = num_classes if num_classes else MAX_CLASSES
    if values.dtype.kind == "f":
        values = values.astype(np.float64)
        with np.errstate(invalid="ignore"):
            bad = ~np.isfinite(values) | (values < 0) | (values >= high) | (values != np.floor(values))
    else:
        bad = (values < 0) | (values >= high)
    if bad.any():
        value = values.reshape(-1)[int(np.flatnonzero(bad.reshape(-1))[0])]
        rule = (f"integers in 0..{num_classes - 1} ({num_classes} classes)" if num_classes
                else "non-negative integers")
        raise LabelError(f"{where}: class index {float(value):g}: class indices must be {rule}")


def infer_num_classes(labels: Sequence[int], where: str, lines: Optional[Sequence[int]] = None) -> int:
    """max(labels) + 1 when the labels present are exactly 0 .. max; otherwise LabelError naming the
    gaps and the outlying labels with their lines, and the way out (--num-classes N states the
    class count, gaps allowed)."""
    if not len(labels):
        raise LabelError(f"{where}: no labels")
    present = sorted(set(labels))
    count = present[-1] + 1
    if len(present) == count:
        return count
    # Outliers: labels after the largest jump, when that jump is big (a typo such as 999 among 0..9).
    gaps = np.diff([-1, *present])
    jump = int(np.argmax(gaps))
    outliers = present[jump:] if gaps[jump] > max(10, len(present)) else []
    first_line: Dict[int, int] = {}
    for index, label in enumerate(labels):
        first_line.setdefault(label, lines[index] if lines is not None else index + 1)
    missing = count - len(present)
    detail = (f"classes {', '.join(f'{c} (line {first_line[c]})' for c in outliers[:5])} lie far beyond the others "
              f"(a typo?)" if outliers else
              f"{missing} of classes 0..{count - 1} have no image (first: "
              f"{next(c for c in range(count) if c not in set(present))})")
    raise LabelError(f"{where}: the labels would make {count} classes but name {len(present)}: {detail}; fix the "
                     f"labels, or pass --num-classes {count} (or the true class count) to train with gaps")
