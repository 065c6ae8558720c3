"""RandAugment with timm 0.4.x semantics ('rand-m9-mstd0.5-inc1' and the rest of its config strings),
split into draw and apply so a paired per-pixel label map can follow the image's geometry.

``RandAugment.sample(size)`` draws everything one application needs and returns it as a list of
``OpParams`` (op name, level arguments, resampling filter); ``apply(image, params)`` runs them on a
PIL image and ``apply_map(score_map, params)`` moves a (C, H, W) array with the geometric ones
(rotate, shear, translate; the colour ops leave maps alone). Calling the transform is
``apply(image, sample(image.size))``.

Random numbers come from where timm takes them, so seeding ``random`` and ``numpy.random`` makes a
run repeatable: the ops of an application from ``numpy.random.choice``; per op, in this order,
``random.random()`` (apply with prob 0.5), ``random.gauss`` (magnitude noise), ``random.random()``
(sign of a signed level) and ``random.choice`` (bilinear or bicubic, geometric ops only).
"""
from __future__ import annotations

import random
from typing import Any, Callable, Dict, List, NamedTuple, Optional, Sequence, Tuple

import numpy as np
from PIL import Image, ImageEnhance, ImageOps

MAX_LEVEL = 10.0
DEFAULT_FILL = (128, 128, 128)
RANDOM_INTERPOLATION = (Image.BILINEAR, Image.BICUBIC)

Size = Tuple[int, int]  # PIL's (width, height)


# ----------------------------------------------------------------------------------------------
# Image ops: (image, *level args, fill, resample) -> image
# ----------------------------------------------------------------------------------------------


def _affine(image: Image.Image, matrix, fill, resample) -> Image.Image:
    # ``matrix`` maps output pixel coordinates to input ones (PIL's convention).
    return image.transform(image.size, Image.AFFINE, matrix, resample=resample, fillcolor=fill)


def shear_x(image, factor, fill, resample):
    return _affine(image, (1, factor, 0, 0, 1, 0), fill, resample)


def shear_y(image, factor, fill, resample):
    return _affine(image, (1, 0, 0, factor, 1, 0), fill, resample)


def translate_x_rel(image, pct, fill, resample):
    return _affine(image, (1, 0, pct * image.size[0], 0, 1, 0), fill, resample)


def translate_y_rel(image, pct, fill, resample):
    return _affine(image, (1, 0, 0, 0, 1, pct * image.size[1]), fill, resample)


def translate_x_abs(image, pixels, fill, resample):
    return _affine(image, (1, 0, pixels, 0, 1, 0), fill, resample)


def translate_y_abs(image, pixels, fill, resample):
    return _affine(image, (1, 0, 0, 0, 1, pixels), fill, resample)


def rotate(image, degrees, fill, resample):
    return image.rotate(degrees, resample=resample, fillcolor=fill)


def solarize_add(image, add, fill=None, resample=None, thresh=128):
    lut = [min(255, i + add) if i < thresh else i for i in range(256)]
    return image.point(lut * len(image.getbands())) if image.mode in ("L", "RGB") else image


def posterize(image, bits, fill=None, resample=None):
    if bits <= 0:  # keeping 0 bits zeroes every channel (what PIL did before Pillow 11 refused bits=0)
        return ImageOps.posterize(image, 1).point(lambda value: 0)
    return image if bits >= 8 else ImageOps.posterize(image, bits)


def _enhance(enhancer) -> Callable:
    return lambda image, factor, fill=None, resample=None: enhancer(image).enhance(factor)


def _plain(fn) -> Callable:
    return lambda image, *args, fill=None, resample=None: fn(image, *args)


# ----------------------------------------------------------------------------------------------
# Level -> arguments (magnitude in [0, MAX_LEVEL])
# ----------------------------------------------------------------------------------------------


def _signed(value: float) -> float:
    return -value if random.random() > 0.5 else value


def _rotate_arg(level, hparams):
    return (_signed(level / MAX_LEVEL * 30.0),)


def _enhance_arg(level, hparams):
    return (level / MAX_LEVEL * 1.8 + 0.1,)


def _enhance_increasing_arg(level, hparams):
    return (1.0 + _signed(level / MAX_LEVEL * 0.9),)


def _shear_arg(level, hparams):
    return (_signed(level / MAX_LEVEL * 0.3),)


def _translate_abs_arg(level, hparams):
    return (_signed(level / MAX_LEVEL * float(hparams["translate_const"])),)


def _translate_rel_arg(level, hparams):
    return (_signed(level / MAX_LEVEL * hparams.get("translate_pct", 0.45)),)


def _posterize_arg(level, hparams):
    return (int(level / MAX_LEVEL * 4),)


def _posterize_increasing_arg(level, hparams):
    return (4 - int(level / MAX_LEVEL * 4),)


def _posterize_original_arg(level, hparams):
    return (int(level / MAX_LEVEL * 4) + 4,)


def _solarize_arg(level, hparams):
    return (int(level / MAX_LEVEL * 256),)


def _solarize_increasing_arg(level, hparams):
    return (256 - int(level / MAX_LEVEL * 256),)


def _solarize_add_arg(level, hparams):
    return (int(level / MAX_LEVEL * 110),)


# name -> (image op, level -> args or None, geometric)
OPS: Dict[str, Tuple[Callable, Optional[Callable], bool]] = {
    "AutoContrast": (_plain(ImageOps.autocontrast), None, False),
    "Equalize": (_plain(ImageOps.equalize), None, False),
    "Invert": (_plain(ImageOps.invert), None, False),
    "Rotate": (rotate, _rotate_arg, True),
    "Posterize": (posterize, _posterize_arg, False),
    "PosterizeIncreasing": (posterize, _posterize_increasing_arg, False),
    "PosterizeOriginal": (posterize, _posterize_original_arg, False),
    "Solarize": (_plain(ImageOps.solarize), _solarize_arg, False),
    "SolarizeIncreasing": (_plain(ImageOps.solarize), _solarize_increasing_arg, False),
    "SolarizeAdd": (solarize_add, _solarize_add_arg, False),
    "Color": (_enhance(ImageEnhance.Color), _enhance_arg, False),
    "ColorIncreasing": (_enhance(ImageEnhance.Color), _enhance_increasing_arg, False),
    "Contrast": (_enhance(ImageEnhance.Contrast), _enhance_arg, False),
    "ContrastIncreasing": (_enhance(ImageEnhance.Contrast), _enhance_increasing_arg, False),
    "Brightness": (_enhance(ImageEnhance.Brightness), _enhance_arg, False),
    "BrightnessIncreasing": (_enhance(ImageEnhance.Brightness), _enhance_increasing_arg, False),
    "Sharpness": (_enhance(ImageEnhance.Sharpness), _enhance_arg, False),
    "SharpnessIncreasing": (_enhance(ImageEnhance.Sharpness), _enhance_increasing_arg, False),
    "ShearX": (shear_x, _shear_arg, True),
    "ShearY": (shear_y, _shear_arg, True),
    "TranslateX": (translate_x_abs, _translate_abs_arg, True),
    "TranslateY": (translate_y_abs, _translate_abs_arg, True),
    "TranslateXRel": (translate_x_rel, _translate_rel_arg, True),
    "TranslateYRel": (translate_y_rel, _translate_rel_arg, True),
}

# timm's RandAugment op lists: the default one, and 'inc1' (magnitudes that all grow stronger).
RAND_TRANSFORMS = [
    "AutoContrast", "Equalize", "Invert", "Rotate", "Posterize", "Solarize", "SolarizeAdd", "Color",
    "Contrast", "Brightness", "Sharpness", "ShearX", "ShearY", "TranslateXRel", "TranslateYRel",
]
RAND_INCREASING_TRANSFORMS = [
    "AutoContrast", "Equalize", "Invert", "Rotate", "PosterizeIncreasing", "SolarizeIncreasing",
    "SolarizeAdd", "ColorIncreasing", "ContrastIncreasing", "BrightnessIncreasing", "SharpnessIncreasing",
    "ShearX", "ShearY", "TranslateXRel", "TranslateYRel",
]
# timm's 'w0' choice weights (over RAND_TRANSFORMS' order).
_RAND_CHOICE_WEIGHTS_0 = {
    "Rotate": 0.3, "ShearX": 0.2, "ShearY": 0.2, "TranslateXRel": 0.1, "TranslateYRel": 0.1, "Color": 0.025,
    "Sharpness": 0.025, "AutoContrast": 0.025, "Solarize": 0.005, "SolarizeAdd": 0.005, "Contrast": 0.005,
    "Brightness": 0.005, "Equalize": 0.005, "Posterize": 0, "Invert": 0,
}


class OpParams(NamedTuple):
    """What one op drew: its name, level arguments, resampling filter (geometric ops) and the size
    of the image it was drawn for (absolute translations scale with it on a map)."""
    name: str
    args: Tuple[Any, ...]
    resample: Optional[int]
    size: Size


class AugmentOp:
    """One RandAugment op: applied with probability ``prob`` at ``magnitude`` (0-10), plus Gaussian
    noise of std ``hparams['magnitude_std']``. ``hparams``: ``img_mean`` (fill colour of uncovered
    pixels), ``interpolation`` (a PIL filter; default random bilinear/bicubic), ``translate_const``,
    ``translate_pct``."""

    def __init__(self, name: str, prob: float = 0.5, magnitude: float = 10, hparams: Optional[dict] = None):
        if name not in OPS:
            raise ValueError(f"unknown RandAugment op {name!r}; known: {', '.join(OPS)}")
        hparams = dict(hparams or {"translate_const": 250, "img_mean": DEFAULT_FILL})
        self.name = name
        self.prob = prob
        self.magnitude = magnitude
        self.magnitude_std = hparams.get("magnitude_std", 0)
        self.hparams = hparams
        self.fill = tuple(hparams.get("img_mean", DEFAULT_FILL))
        self.resample = hparams.get("interpolation", RANDOM_INTERPOLATION)

    @property
    def geometric(self) -> bool:
        return OPS[self.name][2]

    def sample(self, size: Size) -> Optional[OpParams]:
        """Draw one application for an image of ``size`` (width, height); None when skipped."""
        if self.prob < 1.0 and random.random() > self.prob:
            return None
        magnitude = self.magnitude
        if self.magnitude_std == float("inf"):
            magnitude = random.uniform(0, magnitude)
        elif self.magnitude_std and self.magnitude_std > 0:
            magnitude = random.gauss(magnitude, self.magnitude_std)
        magnitude = min(MAX_LEVEL, max(0.0, magnitude))
        level_fn = OPS[self.name][1]
        args = level_fn(magnitude, self.hparams) if level_fn is not None else ()
        resample = None
        if self.geometric:
            resample = random.choice(self.resample) if isinstance(self.resample, (tuple, list)) else self.resample
        return OpParams(self.name, tuple(args), resample, tuple(size))

    def apply(self, image: Image.Image, params: OpParams) -> Image.Image:
        return OPS[params.name][0](image, *params.args, fill=self.fill, resample=params.resample)

    def __call__(self, image: Image.Image) -> Image.Image:
        params = self.sample(image.size)
        return image if params is None else self.apply(image, params)

    def __repr__(self) -> str:
        return f"AugmentOp({self.name}, p={self.prob}, m={self.magnitude}, mstd={self.magnitude_std})"


def move_map(score_map: np.ndarray, params: OpParams, resample: int = Image.NEAREST,
             fill: float = 0.0) -> np.ndarray:
    """A (C, H, W) array moved by the geometric op ``params`` (same geometry as the image, at the
    map's own resolution: absolute translations are scaled by map width / image width); non-geometric
    ops return it unchanged. Each channel is warped as a float PIL image with ``resample``."""
    function, _, geometric = OPS[params.name]
    if not geometric:
        return score_map
    args = params.args
    if params.name in ("TranslateX", "TranslateY"):
        axis = 0 if params.name == "TranslateX" else 1
        args = (args[0] * score_map.shape[2 - axis] / params.size[axis],)
    channels = [np.asarray(function(Image.fromarray(np.ascontiguousarray(channel, dtype=np.float32), mode="F"),
                                    *args, fill=fill, resample=resample))
                for channel in score_map]
    return np.stack(channels).astype(score_map.dtype, copy=False)


class RandAugment:
    """timm's RandAugment: ``num_layers`` ops drawn with replacement (or by ``choice_weights``
    without), each applied as AugmentOp does. Picklable."""

    def __init__(self, ops: Sequence[AugmentOp], num_layers: int = 2,
                 choice_weights: Optional[Sequence[float]] = None):
        self.ops = list(ops)
        self.num_layers = num_layers
        self.choice_weights = None if choice_weights is None else np.asarray(choice_weights, dtype=np.float64)

    def sample(self, size: Size) -> List[OpParams]:
        """Draw one application for an image of ``size`` (width, height): the ops that fire, in order."""
        chosen = np.random.choice(len(self.ops), self.num_layers, replace=self.choice_weights is None,
                                  p=self.choice_weights)
        drawn = (self.ops[index].sample(size) for index in chosen)
        return [params for params in drawn if params is not None]

    def apply(self, image: Image.Image, params: Sequence[OpParams]) -> Image.Image:
        by_name = {op.name: op for op in self.ops}
        for op_params in params:
            image = by_name[op_params.name].apply(image, op_params)
        return image

    @staticmethod
    def apply_map(score_map: np.ndarray, params: Sequence[OpParams], resample: int = Image.NEAREST,
                  fill: float = 0.0) -> np.ndarray:
        """Move a (C, H, W) map with the geometric ops of ``params`` (see move_map)."""
        for op_params in params:
            score_map = move_map(score_map, op_params, resample, fill)
        return score_map

    def __call__(self, image: Image.Image) -> Image.Image:
        return self.apply(image, self.sample(image.size))

    def __repr__(self) -> str:
        return f"RandAugment(n={self.num_layers}, ops=[{', '.join(op.name for op in self.ops)}])"


def rand_augment_transform(config: str, hparams: Dict[str, Any]) -> RandAugment:
    """A RandAugment from timm's config string: 'rand' then dash-separated m<magnitude> (default 10),
    n<num layers> (2), mstd<magnitude std> (0), inc<0|1> (the increasing op list), w<weights index>
    (0 only). E.g. 'rand-m9-mstd0.5-inc1'. ``hparams`` as AugmentOp."""
    parts = config.split("-")
    if parts[0] != "rand":
        raise ValueError(f"auto_augment {config!r}: only RandAugment ('rand-...') is supported")
    hparams = dict(hparams)
    magnitude, num_layers, weight_idx, transforms = MAX_LEVEL, 2, None, RAND_TRANSFORMS
    for part in parts[1:]:
        key = next((k for k in ("mstd", "inc", "m", "n", "w") if part.startswith(k)), None)
        try:
            if key is None:
                raise ValueError
            value = part[len(key):]
            if key == "mstd":
                hparams["magnitude_std"] = float(value)
            elif key == "inc":
                transforms = RAND_INCREASING_TRANSFORMS if int(value) else RAND_TRANSFORMS
            elif key == "m":
                magnitude = float(value) if "." in value else int(value)
            elif key == "n":
                num_layers = int(value)
            elif key == "w":
                weight_idx = int(value)
        except ValueError:
            raise ValueError(f"auto_augment {config!r}: cannot read {part!r} (expected m<int>, n<int>, "
                             f"mstd<float>, inc<0|1> or w0)") from None
    if weight_idx is not None and weight_idx != 0:
        raise ValueError(f"auto_augment {config!r}: only weights w0 exist")
    weights = None
    if weight_idx == 0:
        total = sum(_RAND_CHOICE_WEIGHTS_0.values())
        # by position in RAND_TRANSFORMS, also for the 'inc' list (as timm)
        weights = [_RAND_CHOICE_WEIGHTS_0[name] / total for name in RAND_TRANSFORMS]
    ops = [AugmentOp(name, prob=0.5, magnitude=magnitude, hparams=hparams) for name in transforms]
    return RandAugment(ops, num_layers, weights)
