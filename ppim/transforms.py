"""Eval transforms built from a model's cfg: resize the shorter side, center crop, scale to [0, 1],
normalize. PIL does the resampling, numpy the rest, so results equal the seed's PIL pipeline."""
from __future__ import annotations

from typing import Any, Dict, Optional, Sequence, Tuple, Union

import numpy as np
from PIL import Image

from .registry import get_model_cfg, resize_for_crop_pct

_PIL_FILTERS = {
    "nearest": Image.NEAREST,
    "bilinear": Image.BILINEAR,
    "bicubic": Image.BICUBIC,
    "lanczos": Image.LANCZOS,
}

ImageLike = Union[Image.Image, np.ndarray, str]


def resized_shape(width: int, height: int, size: int) -> Tuple[int, int]:
    """(width, height) after scaling the shorter side to ``size``; the longer side is truncated,
    as torchvision and paddle.vision do."""
    if width <= height:
        return size, int(size * height / width)
    return int(size * width / height), size


def center_crop_box(width: int, height: int, size: int) -> Tuple[int, int, int, int]:
    """PIL crop box (left, top, right, bottom) of the centred size x size square."""
    left = int(round((width - size) / 2.0))
    top = int(round((height - size) / 2.0))
    return left, top, left + size, top + size


class EvalTransforms:
    """Image (PIL, HWC uint8 array, or path) -> normalized float32 array (3, crop, crop).

    Picklable, so data-loader workers can use it."""

    def __init__(self, resize: int, crop: int, interpolation: str = "bicubic",
                 mean: Sequence[float] = (0.485, 0.456, 0.406), std: Sequence[float] = (0.229, 0.224, 0.225)):
        if interpolation not in _PIL_FILTERS:
            raise ValueError(f"interpolation {interpolation!r} is not one of {sorted(_PIL_FILTERS)}")
        if crop > resize:
            raise ValueError(f"crop {crop} is larger than resize {resize}")
        self.resize = resize
        self.crop = crop
        self.interpolation = interpolation
        self.mean = np.asarray(mean, dtype=np.float32).reshape(3, 1, 1)
        self.std = np.asarray(std, dtype=np.float32).reshape(3, 1, 1)

    def __call__(self, image: ImageLike) -> np.ndarray:
        if isinstance(image, str):
            with Image.open(image) as opened:
                image = opened.convert("RGB")
        elif isinstance(image, np.ndarray):
            image = Image.fromarray(image)
        if image.mode != "RGB":
            image = image.convert("RGB")
        image = image.resize(resized_shape(*image.size, self.resize), _PIL_FILTERS[self.interpolation])
        image = image.crop(center_crop_box(*image.size, self.crop))
        chw = np.asarray(image, dtype=np.float32).transpose(2, 0, 1) / 255.0
        return (chw - self.mean) / self.std

    def __repr__(self) -> str:
        return (f"EvalTransforms(Resize({self.resize}, {self.interpolation}), CenterCrop({self.crop}), "
                f"ToTensor(), Normalize(mean={self.mean.ravel().tolist()}, std={self.std.ravel().tolist()}))")


def create_transforms(name_or_cfg: Union[str, Dict[str, Any], Any], crop_pct: Optional[float] = None) -> EvalTransforms:
    """The eval transforms of a registered model name, a cfg dict (see ppim.get_model_cfg) or a
    model built by ppim (its ``pretrained_cfg``). ``crop_pct``: resize the shorter side to
    floor(crop / crop_pct) instead of the cfg's resize (e.g. the cfg's official_crop_pct)."""
    if isinstance(name_or_cfg, str):
        cfg = get_model_cfg(name_or_cfg)
    elif isinstance(name_or_cfg, dict):
        cfg = name_or_cfg
    elif isinstance(getattr(name_or_cfg, "pretrained_cfg", None), dict):
        cfg = name_or_cfg.pretrained_cfg
    else:
        raise TypeError(f"create_transforms takes a model name, a cfg dict or a ppim model, got "
                        f"{type(name_or_cfg).__name__}")
    resize = cfg["resize"] if crop_pct is None else resize_for_crop_pct(cfg["crop"], crop_pct)
    return EvalTransforms(resize, cfg["crop"], cfg["interpolation"], cfg["mean"], cfg["std"])
