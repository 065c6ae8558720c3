"""From a registered name to a ready model (timm's _builder pattern): constructor kwargs with the
ppim 1.x ``class_dim`` alias, the cfg attached, weights loaded, transforms on request."""
from __future__ import annotations

import math
import numbers
import os
from typing import Any, Callable, Dict

from .errors import InputError
from .registry import cfg_for_img_size, get_model_cfg
from .transforms import create_transforms
from .weights import load_pretrained

__all__ = ["build_model", "check_model_kwargs"]

#: Constructor arguments that are counts or sizes: (smallest value, what it is).
_COUNTS = {"num_classes": (0, "a class count (0: no classifier)"), "img_size": (1, "an input size in pixels"),
           "patch_size": (1, "a patch size in pixels"), "in_chans": (1, "a channel count"),
           "embed_dim": (1, "a width"), "depth": (1, "a block count"), "num_heads": (1, "a head count"),
           "stem_dim": (1, "a width")}
#: Constructor arguments that are probabilities.
_RATES = ("drop_rate", "attn_drop_rate", "drop_path_rate")


def check_model_kwargs(name: str, kwargs: Dict[str, Any]) -> None:
    """InputError (a ValueError) naming the argument when a constructor value is plainly invalid: a
    count or size that is not a positive integer (num_classes may be 0), a drop rate outside [0, 1),
    a non-positive mlp_ratio. What fits together (sub-networks, patch grids) the constructors check."""
    for key, (low, what) in _COUNTS.items():
        if key in kwargs:
            value = kwargs[key]
            if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < low:
                raise InputError(f"{name}: {key}={value!r} is not {what}: pass an integer >= {low}")
    for key in _RATES:
        value = kwargs.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, numbers.Real)
                                  or not 0 <= value < 1):
            raise InputError(f"{name}: {key}={value!r} is not a rate: pass a number in [0, 1)")
    ratio = kwargs.get("mlp_ratio")
    if ratio is not None and (isinstance(ratio, bool) or not isinstance(ratio, numbers.Real)
                              or not math.isfinite(ratio) or ratio <= 0):
        raise InputError(f"{name}: mlp_ratio={ratio!r} is not a positive number")


def build_model(model_cls: Callable[..., Any], name: str, pretrained: Any = False,
                return_transforms: bool = False, **kwargs: Any) -> Any:
    """Instantiate ``model_cls`` for the registered ``name``: ``class_dim`` is accepted as an alias of
    num_classes (ppim 1.x), ``pretrained`` is False, True (the registered weights) or a path/URL
    (``checkpoint_path=`` is accepted as an alias of a local path, as timm users write it), and
    ``return_transforms`` adds the eval transforms of the cfg. What was loaded is kept as
    ``model.pretrained_info``. ``features_only=True`` (timm's): the model, weights loaded, wrapped to
    return per-block feature maps for ``out_indices`` (default: the last 3 blocks), see
    ``TokenViT.feature_extractor``."""
    features_only = kwargs.pop("features_only", False)
    out_indices = kwargs.pop("out_indices", 3)
    if "checkpoint_path" in kwargs:
        checkpoint_path = kwargs.pop("checkpoint_path")
        if checkpoint_path:
            if pretrained not in (False, None, True) and os.fspath(pretrained) != os.fspath(checkpoint_path):
                raise ValueError(f"pretrained={pretrained!r} and checkpoint_path={checkpoint_path!r} disagree; "
                                 "pass one of them")
            pretrained = checkpoint_path
    if "class_dim" in kwargs:
        class_dim = kwargs.pop("class_dim")
        if "num_classes" in kwargs and kwargs["num_classes"] != class_dim:
            raise ValueError(f"class_dim={class_dim} and num_classes={kwargs['num_classes']} disagree; "
                             "pass only num_classes")
        kwargs["num_classes"] = class_dim
    cfg = get_model_cfg(name)
    kwargs.setdefault("num_classes", cfg["num_classes"])
    kwargs.setdefault("img_size", cfg["crop"])
    check_model_kwargs(name, kwargs)
    model = model_cls(**kwargs)
    model.pretrained_cfg = cfg_for_img_size(cfg, kwargs["img_size"])
    model.pretrained_cfg["num_classes"] = kwargs["num_classes"]
    if pretrained:
        load_pretrained(model, cfg, pretrained)
    if features_only:
        model = model.feature_extractor(out_indices)
    if return_transforms:
        return model, create_transforms(model.pretrained_cfg)
    return model
