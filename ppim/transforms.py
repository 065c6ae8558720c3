"""Eval and train transforms built from a model's cfg.

Eval: resize the shorter side, center crop, scale to [0, 1], normalize; PIL does the resampling,
numpy the rest, so results equal ppim 1.x's PIL pipeline. Train: timm 0.4.x's ImageNet recipe as the
official TokenLabeling / SuperViT scripts run it: RandomResizedCrop (scale 0.08-1, ratio 3/4-4/3,
random bilinear/bicubic), horizontal flip 0.5, RandAugment 'rand-m9-mstd0.5-inc1', normalize, then
RandomErasing (p 0.25, per-pixel normal noise) on the normalized image.

Output: ``transforms(image)`` is a CHW float32 paddle.Tensor, so ``model(transforms(image).unsqueeze(0))``
works as in ppim 1.x; ``transforms.to_numpy(image)`` is the same as a numpy array and never touches
Paddle (data-loader worker processes use it; see ``as_numpy``). Every transform is picklable.

Randomness (train): like timm, from Python's ``random`` (crop, interpolation, flips, RandAugment's
per-op draws, erasing boxes) and numpy's global RNG (RandAugment's op choice, erasing noise, which
timm draws from torch); seed both for repeatable runs. Each random step splits into ``sample`` (draw
the parameters) and ``apply`` (use them), and the geometric ones (crop, flips, RandAugment) can move a
paired (C, H, W) label map the same way (``apply_map``, ``CropParams.coords``), which token labeling
needs.
"""
from __future__ import annotations

import math
import random
from typing import Any, Callable, Dict, List, NamedTuple, Optional, Sequence, Tuple, Union

import numpy as np
from PIL import Image, ImageEnhance

from .auto_augment import RandAugment, rand_augment_transform
from .registry import get_model_cfg, resize_for_crop_pct

_PIL_FILTERS = {
    "nearest": Image.NEAREST,
    "bilinear": Image.BILINEAR,
    "bicubic": Image.BICUBIC,
    "lanczos": Image.LANCZOS,
}
RANDOM_INTERPOLATION = ("bilinear", "bicubic")  # what interpolation='random' picks from, as timm

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


def load_rgb(image: ImageLike) -> Image.Image:
    """A PIL RGB image from a PIL image, an HWC uint8 array or a path."""
    if isinstance(image, str):
        with Image.open(image) as opened:
            return opened.convert("RGB")
    if isinstance(image, np.ndarray):
        image = Image.fromarray(image)
    return image if image.mode == "RGB" else image.convert("RGB")


def _pil_filter(interpolation: str) -> int:
    if interpolation not in _PIL_FILTERS:
        raise ValueError(f"interpolation {interpolation!r} is not one of {sorted(_PIL_FILTERS)}")
    return _PIL_FILTERS[interpolation]


def _stats(values: Sequence[float], what: str) -> np.ndarray:
    array = np.asarray(values, dtype=np.float32)
    if array.shape != (3,):
        raise ValueError(f"{what} needs 3 values (one per RGB channel), got {list(values)}")
    return array.reshape(3, 1, 1)


class Transforms:
    """Base of ppim's transforms: ``to_numpy(image)`` -> (3, H, W) float32 array (subclasses);
    calling the transforms gives the same as a paddle.Tensor."""

    def to_numpy(self, image: ImageLike) -> np.ndarray:
        raise NotImplementedError

    def __call__(self, image: ImageLike):
        import paddle

        return paddle.to_tensor(self.to_numpy(image))


def as_numpy(transforms: Callable) -> Callable[[Any], np.ndarray]:
    """The numpy path of ``transforms``: ``transforms.to_numpy`` for ppim's, else ``transforms``
    itself (a user's callable returning arrays). Loaders call this so workers never create tensors."""
    return getattr(transforms, "to_numpy", transforms)


def normalized_chw(image: Image.Image, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    """ToTensor + Normalize: RGB uint8 image -> (3, H, W) float32, (x / 255 - mean) / std."""
    chw = np.asarray(image, dtype=np.float32).transpose(2, 0, 1) / 255.0
    return (chw - mean) / std


class EvalTransforms(Transforms):
    """Image (PIL, HWC uint8 array, or path) -> normalized float32 (3, crop, crop)."""

    def __init__(self, resize: int, crop: int, interpolation: str = "bicubic",
                 mean: Sequence[float] = (0.485, 0.456, 0.406), std: Sequence[float] = (0.229, 0.224, 0.225)):
        _pil_filter(interpolation)
        if crop > resize:
            raise ValueError(f"crop {crop} is larger than resize {resize}")
        self.resize = resize
        self.crop = crop
        self.interpolation = interpolation
        self.mean = _stats(mean, "mean")
        self.std = _stats(std, "std")

    def to_numpy(self, image: ImageLike) -> np.ndarray:
        image = load_rgb(image)
        image = image.resize(resized_shape(*image.size, self.resize), _PIL_FILTERS[self.interpolation])
        image = image.crop(center_crop_box(*image.size, self.crop))
        return normalized_chw(image, self.mean, self.std)

    def __repr__(self) -> str:
        return (f"EvalTransforms(Resize({self.resize}, {self.interpolation}), CenterCrop({self.crop}), "
                f"ToTensor(), Normalize(mean={self.mean.ravel().tolist()}, std={self.std.ravel().tolist()}))")


# ----------------------------------------------------------------------------------------------
# Train steps
# ----------------------------------------------------------------------------------------------


class CropParams(NamedTuple):
    """A drawn crop: box (top, left, height, width) in pixels of an image of ``image_size``
    (width, height), and the PIL filter that resizes it."""
    top: int
    left: int
    height: int
    width: int
    resample: int
    image_size: Tuple[int, int]

    @property
    def coords(self) -> Tuple[float, float, float, float]:
        """(top / H, left / W, height / H, width / W): the crop relative to the image, the form
        token labeling stores with the label map."""
        image_w, image_h = self.image_size
        return self.top / image_h, self.left / image_w, self.height / image_h, self.width / image_w


class RandomResizedCrop:
    """timm's RandomResizedCropAndInterpolation: a crop of random area (``scale`` of the image) and
    aspect ratio (``ratio``, drawn log-uniform), 10 tries, else the centre crop clamped to ``ratio``;
    resized to ``size`` with ``interpolation`` ('random': bilinear or bicubic, drawn after the box)."""

    def __init__(self, size: Union[int, Tuple[int, int]], scale: Tuple[float, float] = (0.08, 1.0),
                 ratio: Tuple[float, float] = (3 / 4, 4 / 3), interpolation: str = "random"):
        self.size = (size, size) if isinstance(size, int) else tuple(size)  # (height, width)
        if not (0 < scale[0] <= scale[1]) or not (0 < ratio[0] <= ratio[1]):
            raise ValueError(f"scale {scale} and ratio {ratio} must be positive (min, max) ranges")
        self.scale = tuple(scale)
        self.ratio = tuple(ratio)
        self.interpolation = interpolation
        names = RANDOM_INTERPOLATION if interpolation == "random" else (interpolation,)
        self.filters = tuple(_pil_filter(name) for name in names)

    def get_box(self, width: int, height: int) -> Tuple[int, int, int, int]:
        """Draw (top, left, height, width) for an image of width x height (Python ``random``)."""
        area = width * height
        log_ratio = (math.log(self.ratio[0]), math.log(self.ratio[1]))
        for _ in range(10):
            target_area = random.uniform(*self.scale) * area
            aspect = math.exp(random.uniform(*log_ratio))
            w = int(round(math.sqrt(target_area * aspect)))
            h = int(round(math.sqrt(target_area / aspect)))
            if w <= width and h <= height:
                return random.randint(0, height - h), random.randint(0, width - w), h, w
        in_ratio = width / height
        if in_ratio < min(self.ratio):
            w, h = width, int(round(width / min(self.ratio)))
        elif in_ratio > max(self.ratio):
            w, h = int(round(height * max(self.ratio))), height
        else:
            w, h = width, height
        return (height - h) // 2, (width - w) // 2, h, w

    def sample(self, image_size: Tuple[int, int]) -> CropParams:
        """Draw a crop for an image of ``image_size`` (width, height)."""
        box = self.get_box(*image_size)
        resample = random.choice(self.filters) if len(self.filters) > 1 else self.filters[0]
        return CropParams(*box, resample, tuple(image_size))

    def apply(self, image: Image.Image, params: CropParams) -> Image.Image:
        box = (params.left, params.top, params.left + params.width, params.top + params.height)
        return image.crop(box).resize(self.size[::-1], params.resample)

    def __call__(self, image: Image.Image) -> Image.Image:
        return self.apply(image, self.sample(image.size))

    def __repr__(self) -> str:
        return (f"RandomResizedCrop(size={self.size}, scale={self.scale}, "
                f"ratio={tuple(round(r, 4) for r in self.ratio)}, interpolation={self.interpolation})")


class RandomFlip:
    """Flip with probability ``p`` (drawn with ``random.random() < p``); ``vertical`` flips rows."""

    def __init__(self, p: float = 0.5, vertical: bool = False):
        self.p = p
        self.vertical = vertical

    def sample(self, image_size: Optional[Tuple[int, int]] = None) -> bool:
        """Draw whether to flip."""
        return random.random() < self.p

    def apply(self, image: Image.Image, flip: bool) -> Image.Image:
        if not flip:
            return image
        return image.transpose(Image.FLIP_TOP_BOTTOM if self.vertical else Image.FLIP_LEFT_RIGHT)

    def apply_map(self, score_map: np.ndarray, flip: bool) -> np.ndarray:
        """The same flip on a (..., H, W) array."""
        if not flip:
            return score_map
        return np.ascontiguousarray(np.flip(score_map, axis=-2 if self.vertical else -1))

    def __call__(self, image: Image.Image) -> Image.Image:
        return self.apply(image, self.sample())

    def __repr__(self) -> str:
        return f"Random{'Vertical' if self.vertical else 'Horizontal'}Flip(p={self.p})"


class ColorJitter:
    """torchvision's ColorJitter without hue (timm's fallback when there is no auto-augment): brightness,
    contrast and saturation factors drawn uniform in [max(0, 1 - j), 1 + j], applied in a random order
    (PIL's ImageEnhance Brightness, Contrast, Color). Python ``random`` draws (torchvision: torch)."""

    _ENHANCERS = (ImageEnhance.Brightness, ImageEnhance.Contrast, ImageEnhance.Color)

    def __init__(self, brightness: float = 0.4, contrast: float = 0.4, saturation: float = 0.4):
        self.strengths = (float(brightness), float(contrast), float(saturation))

    def sample(self, image_size: Optional[Tuple[int, int]] = None) -> List[Tuple[int, float]]:
        """Draw the order, then the factors in brightness, contrast, saturation order (torchvision's
        get_params): [(enhancer index, factor), ...] in the order to apply, enabled ones only."""
        order = random.sample(range(3), 3)
        factors = {index: random.uniform(max(0.0, 1 - strength), 1 + strength)
                   for index, strength in enumerate(self.strengths) if strength > 0}
        return [(index, factors[index]) for index in order if index in factors]

    def apply(self, image: Image.Image, params: Sequence[Tuple[int, float]]) -> Image.Image:
        for index, factor in params:
            image = self._ENHANCERS[index](image).enhance(factor)
        return image

    @staticmethod
    def apply_map(score_map: np.ndarray, params: Sequence[Tuple[int, float]], resample: int = Image.NEAREST,
                  fill: float = 0.0) -> np.ndarray:
        """Colour changes leave a label map as it is (RandAugment.apply_map's signature)."""
        return score_map

    def __call__(self, image: Image.Image) -> Image.Image:
        return self.apply(image, self.sample())

    def __repr__(self) -> str:
        return "ColorJitter(brightness={}, contrast={}, saturation={})".format(*self.strengths)


class RandomErasing:
    """timm's RandomErasing on a normalized (C, H, W) or (B, C, H, W) float array, in place: with
    probability ``probability`` erase ``min_count``-``max_count`` boxes, each of area
    U(min_area, max_area) * H * W / count and aspect exp(U(log min_aspect, log max_aspect)) (10 tries,
    box strictly smaller than the image). ``mode``: 'const' zeros, 'rand' one normal value per channel,
    'pixel' per-pixel normal noise (numpy's global RNG; timm uses torch's)."""

    def __init__(self, probability: float = 0.5, min_area: float = 0.02, max_area: float = 1 / 3,
                 min_aspect: float = 0.3, max_aspect: Optional[float] = None, mode: str = "const",
                 min_count: int = 1, max_count: Optional[int] = None):
        mode = (mode or "const").lower()
        if mode not in ("const", "rand", "pixel"):
            raise ValueError(f"re_mode {mode!r} is not one of 'const', 'rand', 'pixel'")
        self.probability = probability
        self.min_area = min_area
        self.max_area = max_area
        max_aspect = max_aspect or 1 / min_aspect
        self.log_aspect = (math.log(min_aspect), math.log(max_aspect))
        self.mode = mode
        self.min_count = min_count
        self.max_count = max_count or min_count

    def sample(self, height: int, width: int) -> List[Tuple[int, int, int, int]]:
        """Draw the boxes (top, left, h, w) to erase in an H x W image (empty when not erasing)."""
        if random.random() > self.probability:
            return []
        area = height * width
        count = self.min_count if self.min_count == self.max_count else random.randint(self.min_count,
                                                                                       self.max_count)
        boxes = []
        for _ in range(count):
            for _ in range(10):
                target_area = random.uniform(self.min_area, self.max_area) * area / count
                aspect = math.exp(random.uniform(*self.log_aspect))
                h = int(round(math.sqrt(target_area * aspect)))
                w = int(round(math.sqrt(target_area / aspect)))
                if w < width and h < height:
                    boxes.append((random.randint(0, height - h), random.randint(0, width - w), h, w))
                    break
        return boxes

    def _fill(self, channels: int, h: int, w: int) -> np.ndarray:
        if self.mode == "pixel":
            return np.random.standard_normal((channels, h, w)).astype(np.float32)
        if self.mode == "rand":
            return np.random.standard_normal((channels, 1, 1)).astype(np.float32)
        return np.zeros((channels, 1, 1), dtype=np.float32)

    def __call__(self, array: np.ndarray) -> np.ndarray:
        for chw in (array if array.ndim == 4 else array[None]):
            channels, height, width = chw.shape
            for top, left, h, w in self.sample(height, width):
                chw[:, top:top + h, left:left + w] = self._fill(channels, h, w)
        return array

    def __repr__(self) -> str:
        return (f"RandomErasing(p={self.probability}, mode={self.mode}, "
                f"count={self.min_count}-{self.max_count})")


class TrainTransforms(Transforms):
    """crop -> flips -> augment (PIL) -> ToTensor + Normalize -> erasing (numpy), timm's order.

    The steps are attributes (``crop``, ``flips``, ``augment``, ``erasing``, ``mean``, ``std``) so a
    pipeline with a label map (token labeling: flips and RandAugment first, the crop last, recording
    its coordinates) can reuse them through their ``sample`` / ``apply`` / ``apply_map`` methods."""

    def __init__(self, crop: RandomResizedCrop, flips: Sequence[RandomFlip] = (),
                 augment: Optional[Union[RandAugment, ColorJitter]] = None,
                 mean: Sequence[float] = (0.485, 0.456, 0.406),
                 std: Sequence[float] = (0.229, 0.224, 0.225), erasing: Optional[RandomErasing] = None):
        self.crop = crop
        self.flips = list(flips)
        self.augment = augment
        self.mean = _stats(mean, "mean")
        self.std = _stats(std, "std")
        self.erasing = erasing

    def to_numpy(self, image: ImageLike) -> np.ndarray:
        image = self.crop(load_rgb(image))
        for flip in self.flips:
            image = flip(image)
        if self.augment is not None:
            image = self.augment(image)
        return self.finish(image)

    def finish(self, image: Image.Image) -> np.ndarray:
        """The steps after the PIL ones: normalize, then random erasing."""
        chw = normalized_chw(image, self.mean, self.std)
        return chw if self.erasing is None else self.erasing(chw)

    def __repr__(self) -> str:
        steps = [self.crop, *self.flips, self.augment, "ToTensor()",
                 f"Normalize(mean={self.mean.ravel().tolist()}, std={self.std.ravel().tolist()})", self.erasing]
        return f"TrainTransforms({', '.join(str(step) for step in steps if step is not None)})"


# ----------------------------------------------------------------------------------------------
# Factory
# ----------------------------------------------------------------------------------------------

# The official TokenLabeling / SuperViT training arguments (timm's train.py flags).
TRAIN_DEFAULTS: Dict[str, Any] = dict(
    scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3), interpolation="random", hflip=0.5, vflip=0.0,
    auto_augment="rand-m9-mstd0.5-inc1", color_jitter=0.4, re_prob=0.25, re_mode="pixel", re_count=1,
)
_EVAL_KEYS = ("img_size", "crop_pct", "resize", "interpolation", "mean", "std")
_TRAIN_KEYS = ("img_size", "mean", "std", *TRAIN_DEFAULTS)


def _resolve_cfg(source: Any) -> Dict[str, Any]:
    if isinstance(source, str):
        return get_model_cfg(source)
    if isinstance(source, dict):
        return source
    cfg = getattr(source, "pretrained_cfg", None)
    if isinstance(cfg, dict):
        return cfg
    raise TypeError(f"create_transforms takes a model name, a cfg dict or a ppim model, got {type(source).__name__}")


def create_transforms(name_or_cfg_or_model: Any, is_training: bool = False, **overrides: Any) -> Transforms:
    """The transforms of a registered model name, a cfg dict (see ppim.get_model_cfg) or a ppim
    model (its ``pretrained_cfg``). ``transforms(image)`` -> (3, S, S) float32 paddle.Tensor;
    ``transforms.to_numpy(image)`` -> the same as numpy.

    Eval (``is_training=False``): the cfg's resize + center crop, exactly. Overrides: ``img_size``
    (crop; resize follows at the cfg's crop_pct unless given), ``crop_pct`` (resize =
    floor(img_size / crop_pct)), ``resize``, ``interpolation``, ``mean``, ``std``.

    Train: timm's recipe (module docstring) at the cfg's crop size. Overrides: ``img_size``, ``scale``,
    ``ratio``, ``interpolation`` ('random' or a filter name; also RandAugment's when not random),
    ``hflip``, ``vflip`` (probabilities), ``auto_augment`` (a 'rand-...' string or None),
    ``color_jitter`` (a strength or (brightness, contrast, saturation); used only when auto_augment is
    None, as timm; None for no colour change), ``re_prob``, ``re_mode`` ('const' | 'rand' | 'pixel'),
    ``re_count``, ``mean``, ``std``."""
    cfg = _resolve_cfg(name_or_cfg_or_model)
    allowed = _TRAIN_KEYS if is_training else _EVAL_KEYS
    unknown = sorted(set(overrides) - set(allowed))
    if unknown:
        raise TypeError(f"create_transforms(is_training={is_training}) got unknown overrides {unknown}; "
                        f"it takes {', '.join(allowed)}")
    mean = overrides.get("mean", cfg["mean"])
    std = overrides.get("std", cfg["std"])
    img_size = int(overrides.get("img_size", cfg["crop"]))
    if not is_training:
        if "resize" in overrides:
            resize = int(overrides["resize"])
        elif "crop_pct" in overrides:
            resize = resize_for_crop_pct(img_size, float(overrides["crop_pct"]))
        else:  # the cfg's crop_pct, in integers so 224 -> 248 stays exact
            resize = img_size * int(cfg["resize"]) // int(cfg["crop"])
        return EvalTransforms(resize, img_size, overrides.get("interpolation", cfg["interpolation"]), mean, std)
    return train_transforms(img_size, mean=mean, std=std, **{key: overrides.get(key, default)
                                                             for key, default in TRAIN_DEFAULTS.items()})


def train_transforms(img_size: int, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3), interpolation: str = "random",
                     hflip: float = 0.5, vflip: float = 0.0, auto_augment: Optional[str] = "rand-m9-mstd0.5-inc1",
                     color_jitter: Union[None, float, Sequence[float]] = 0.4,
                     mean: Sequence[float] = (0.485, 0.456, 0.406), std: Sequence[float] = (0.229, 0.224, 0.225),
                     re_prob: float = 0.25, re_mode: str = "pixel", re_count: int = 1) -> TrainTransforms:
    """timm 0.4.x's transforms_imagenet_train (see create_transforms for the arguments)."""
    flips = [RandomFlip(p, vertical) for p, vertical in ((hflip, False), (vflip, True)) if p > 0]
    augment = None
    if auto_augment:
        hparams: Dict[str, Any] = dict(translate_const=int(img_size * 0.45),
                                       img_mean=tuple(min(255, round(255 * x)) for x in mean))
        if interpolation != "random":
            hparams["interpolation"] = _pil_filter(interpolation)
        augment = rand_augment_transform(auto_augment, hparams)
    elif color_jitter is not None:
        strengths = (float(color_jitter),) * 3 if isinstance(color_jitter, (int, float)) else tuple(color_jitter)
        if len(strengths) != 3:
            raise ValueError(f"color_jitter takes one strength or (brightness, contrast, saturation), got "
                             f"{color_jitter}")
        augment = ColorJitter(*strengths)
    erasing = RandomErasing(re_prob, mode=re_mode, max_count=re_count) if re_prob > 0 else None
    return TrainTransforms(RandomResizedCrop(img_size, scale, ratio, interpolation), flips, augment, mean, std,
                           erasing)
