"""Calibration images for post-training int8 quantization, read once into one array that the
quantizer (an engine's ``quantizer`` in ppim.deploy.registry) and the export cache key share.

    calibration = calibration_images(model, "photos/")       # Calibration: (N, 3, S, S) float32
    run = create_runner(model, engine="openvino", precision="int8", calibration="photos/")

The images are the model's eval crop (its own transforms), so the activation ranges the quantizer
records are those the model sees at inference. Use images like the ones the model will classify:
a few hundred cover ImageNet-like data; the shipped sample photos (sample_calibration) are enough
to measure speed, not to keep accuracy.
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from typing import Any, Optional, Union

import numpy as np

from ..data.datasets import BadImageError, find_images, load_image, sample_images
from ..errors import InputError
from ..transforms import as_numpy, create_transforms

__all__ = ["CALIBRATION_IMAGES", "Calibration", "calibration_images", "sample_calibration", "as_calibration"]

#: How many images calibrate by default (NNCF's own default subset size); a folder with more gives
#: an evenly spaced choice of them, so every class folder of a sorted tree contributes.
CALIBRATION_IMAGES = 300
#: The most images a calibration takes (each is 3 x S x S float32 in memory: 300 at 224 are 181 MB).
MAX_CALIBRATION_IMAGES = 2000


@dataclass(frozen=True, eq=False)
class Calibration:
    """Preprocessed calibration images: ``images`` float32 (N, 3, S, S); ``source`` says where they
    came from (for messages and the export's manifest); ``digest``: sha256 of the array, part of the
    int8 export's cache key, so other images make another export."""
    images: np.ndarray
    source: str
    digest: str = field(init=False)

    def __post_init__(self):
        images = np.ascontiguousarray(self.images, dtype=np.float32)
        if images.ndim != 4 or images.shape[1] != 3 or not len(images):
            raise InputError(f"calibration images must be a float32 array (N, 3, S, S) with N >= 1; got shape "
                             f"{images.shape} from {self.source}")
        if not np.isfinite(images).all():
            raise InputError(f"the calibration images from {self.source} hold NaN or infinite values")
        digest = hashlib.sha256(f"{images.shape}".encode("ascii"))
        digest.update(images.view(np.uint8).reshape(-1))
        object.__setattr__(self, "images", images)
        object.__setattr__(self, "digest", digest.hexdigest())

    def describe(self) -> dict:
        """What an export's manifest records of it."""
        return {"images": int(len(self.images)), "source": self.source, "sha256": self.digest}


def _spread(paths: list, limit: int) -> list:
    """``limit`` of ``paths`` evenly spaced (all of them when there are no more)."""
    if len(paths) <= limit:
        return paths
    return [paths[int(i)] for i in np.linspace(0, len(paths) - 1, limit).round()]


def calibration_images(model: Any, folder: Union[str, os.PathLike], limit: int = CALIBRATION_IMAGES) -> Calibration:
    """Up to ``limit`` images under ``folder`` (recursively, evenly spaced over the sorted list),
    each through ``model``'s eval transforms. InputError for a folder that is missing or holds no
    images, a bad ``limit`` or an unreadable image (named, with the way out)."""
    if not 1 <= int(limit) <= MAX_CALIBRATION_IMAGES:
        raise InputError(f"calibration takes 1 to {MAX_CALIBRATION_IMAGES} images; got {limit}")
    if not os.path.isdir(folder):
        raise InputError(f"calibration folder {folder} does not exist or is not a folder: give a folder of images "
                         f"like the ones the model will classify")
    paths = _spread(find_images(folder), int(limit))
    if not paths:
        raise InputError(f"calibration folder {folder} holds no images (.jpg, .png, ...): give a folder of images "
                         f"like the ones the model will classify")
    transform = as_numpy(create_transforms(model))
    batch = []
    for path in paths:
        try:
            batch.append(transform(load_image(path)))
        except BadImageError as error:
            raise InputError(f"calibration image {error.path} cannot be read ({error.reason}): remove it from "
                             f"{folder}") from None
    return Calibration(np.stack(batch), os.fspath(folder))


def sample_calibration(model: Any) -> Calibration:
    """The photos shipped with ppim (ppim/assets/sample) as calibration: enough for measuring int8's
    speed (benchmarks), too few for its accuracy."""
    transform = as_numpy(create_transforms(model))
    return Calibration(np.stack([transform(load_image(path)) for path, _ in sample_images()]),
                       "ppim's sample photos")


def as_calibration(model: Any, calibration: Optional[Union[Calibration, str, os.PathLike]],
                   precision: str = "int8") -> Optional[Calibration]:
    """``calibration`` as a Calibration for ``model`` (a folder is read with calibration_images);
    None for a precision other than int8. InputError when int8 has none, or another precision
    is given one."""
    if precision != "int8":
        if calibration is not None:
            raise InputError(f"calibration images are for precision int8 only; precision is {precision}")
        return None
    if calibration is None:
        raise InputError("int8 needs calibration images: give a folder of images like the ones the model will "
                         "classify (--calibration DIR, or calibration=... in Python)")
    if isinstance(calibration, Calibration):
        return calibration
    return calibration_images(model, calibration)
