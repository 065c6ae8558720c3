"""From a registered name or a checkpoint to a ready model (timm's _builder pattern): constructor kwargs
with the ppim 1.x ``class_dim`` alias, the cfg attached, weights loaded, transforms on request, class
names carried.

A checkpoint describes its model (torchvision's weights metadata, for any file ppim writes): the
entry ``MODEL_KEY`` of a training checkpoint or a converted .pdparams holds the registry name, the
constructor kwargs, num_classes, the class names (index order), the input size and eval transforms,
and the arguments of the run that wrote it (see :func:`describe_model`). ``create_model(checkpoint_path=
path)`` builds the model from that alone; arguments given as well override it, and one that
contradicts it (another name; another class count where the head must load) is an error naming both.
Files without the entry (older ppim, PyTorch releases) load as before, given the arguments.
"""
from __future__ import annotations

import math
import numbers
import os
from typing import Any, Callable, Dict, List, Optional, Sequence

from .errors import InputError, ParameterError
from .registry import cfg_for_img_size, get_model_cfg, model_name
from .transforms import create_transforms
from .weights import CheckpointError, load_pretrained
from .weights.containers import MODEL_DESCRIPTION_KEY

__all__ = ["MODEL_KEY", "build_model", "check_model_kwargs", "checkpoint_description", "class_names_of",
           "create_model", "describe_model", "set_class_names"]

#: The checkpoint entry describing the model its weights are for (a dict, see describe_model).
MODEL_KEY = MODEL_DESCRIPTION_KEY
#: Version of that description; a newer one is refused by name rather than misread.
DESCRIPTION_VERSION = 1
_TRANSFORM_KEYS = ("resize", "crop", "crop_pct", "interpolation", "mean", "std")


# ----------------------------------------------------------------------------------------------
# The description a checkpoint carries
# ----------------------------------------------------------------------------------------------


def _plain(value: Any) -> bool:
    if value is None or isinstance(value, (bool, int, float, str)):
        return True
    if isinstance(value, (list, tuple)):
        return all(_plain(v) for v in value)
    if isinstance(value, dict):
        return all(isinstance(k, str) and _plain(v) for k, v in value.items())
    return False


def set_class_names(model: Any, class_names: Optional[Sequence[str]]) -> None:
    """Attach ``class_names`` (index order; one per class of the head) to ``model``'s cfg."""
    if class_names is not None:
        class_names = [str(name) for name in class_names]
        num_classes = model.pretrained_cfg.get("num_classes")
        if num_classes is not None and len(class_names) != num_classes:
            raise ValueError(f"{len(class_names)} class names for a {num_classes}-class model")
    model.pretrained_cfg["class_names"] = class_names


def class_names_of(model: Any) -> Optional[List[str]]:
    """The names of ``model``'s classes in index order: its own (a fine-tuned model's, from its
    checkpoint), the ImageNet-1k names for a 1000-class model, else None."""
    cfg = getattr(model, "pretrained_cfg", None) or {}
    if cfg.get("class_names"):
        return list(cfg["class_names"])
    if cfg.get("num_classes") == 1000:
        from .data import imagenet_class_names

        return imagenet_class_names()
    return None


def describe_model(model: Any, args: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """What a checkpoint of ``model`` records (the value of MODEL_KEY): version, name, kwargs (the
    constructor arguments it was built with), num_classes, class_names (or None), input_size
    [3, S, S], transforms (resize, crop, crop_pct, interpolation, mean, std) and ``args`` (the
    arguments of the run or tool that wrote it)."""
    cfg = getattr(model, "pretrained_cfg", None) or {}
    kwargs = {key: (list(value) if isinstance(value, tuple) else value)
              for key, value in (cfg.get("model_kwargs") or {}).items() if _plain(value)}
    return {
        "version": DESCRIPTION_VERSION,
        "name": model_name(model),
        "kwargs": kwargs,
        "num_classes": int(cfg.get("num_classes", getattr(model, "num_classes", 0)) or 0),
        "class_names": cfg.get("class_names"),
        "input_size": [int(v) for v in cfg.get("input_size", ())],
        "transforms": {key: (list(cfg[key]) if isinstance(cfg[key], tuple) else cfg[key])
                       for key in _TRANSFORM_KEYS if key in cfg},
        "args": {k: v for k, v in (args or {}).items() if _plain(v)},
    }


def _check_description(description: Any, source: str) -> Dict[str, Any]:
    """The MODEL_KEY entry of ``source`` if well formed, else CheckpointError naming the problem."""
    def bad(what: str) -> CheckpointError:
        return CheckpointError(f"{source}: its model description ({MODEL_KEY!r}) {what}; the file is damaged "
                               f"or not from ppim")

    if not isinstance(description, dict):
        raise bad("is not a dict")
    version = description.get("version")
    if version != DESCRIPTION_VERSION:
        raise bad(f"has version {version!r}; this ppim reads version {DESCRIPTION_VERSION} (a newer ppim wrote "
                  f"it? upgrade ppim)") if isinstance(version, int) and version > DESCRIPTION_VERSION \
            else bad(f"has version {version!r}")
    if not isinstance(description.get("name"), str) or not description["name"]:
        raise bad("has no model name")
    if not isinstance(description.get("kwargs", {}), dict):
        raise bad("has kwargs that are not a dict")
    num_classes = description.get("num_classes")
    if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 0:
        raise bad(f"has num_classes {num_classes!r}")
    names = description.get("class_names")
    if names is not None and (not isinstance(names, list) or len(names) != num_classes
                              or not all(isinstance(n, str) for n in names)):
        raise bad(f"has class_names that are not {num_classes} strings")
    return description


def checkpoint_description(source: "str | os.PathLike[str] | Dict[str, Any]") -> Optional[Dict[str, Any]]:
    """The model description of a checkpoint file (or of a checkpoint dict already read): None for
    files without one (older ppim, other tools, PyTorch releases, URLs). Reads no pickled code."""
    if isinstance(source, dict):
        entry = source.get(MODEL_KEY)
        return None if entry is None else _check_description(entry, "the checkpoint")
    from .weights import detect_format, read_pickle
    from .weights.formats import PDPARAMS

    path = os.fspath(source)
    if not os.path.isfile(path) or detect_format(path) != PDPARAMS:
        return None
    checkpoint = read_pickle(path)
    entry = checkpoint.get(MODEL_KEY) if isinstance(checkpoint, dict) else None
    return None if entry is None else _check_description(entry, path)


# ----------------------------------------------------------------------------------------------
# Building
# ----------------------------------------------------------------------------------------------


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


def _apply_description(name: str, description: Dict[str, Any], kwargs: Dict[str, Any], source: str,
                       new_head: Optional[bool]) -> Dict[str, Any]:
    """``kwargs`` completed from the checkpoint's description. Another model name is an error; so is
    another num_classes when the head must load (``new_head=False``)."""
    if description["name"] != name:
        raise ParameterError(f"{{name}} contradicts {{checkpoint_path}}, a checkpoint of {description['name']}: "
                             f"drop {{name:name}} or pass a checkpoint of {name}",
                             name=name, checkpoint_path=source)
    given = kwargs.get("num_classes")
    if new_head is False and given is not None and given != description["num_classes"]:
        raise ParameterError(f"{{num_classes}} contradicts {{checkpoint_path}}, a checkpoint of a "
                             f"{description['num_classes']}-class {name}: drop {{num_classes:name}}",
                             num_classes=given, checkpoint_path=source)
    merged = {**description.get("kwargs", {}), "num_classes": description["num_classes"]}
    merged.update(kwargs)
    return merged


def _local_file(pretrained: Any) -> Optional[str]:
    if pretrained in (None, False, True):
        return None
    path = os.fspath(pretrained)
    return path if os.path.isfile(path) else None


def build_model(model_cls: Callable[..., Any], name: str, pretrained: Any = False,
                return_transforms: bool = False, arch: Optional[Dict[str, Any]] = None, **kwargs: Any) -> Any:
    """Instantiate ``model_cls`` for the registered ``name``: ``class_dim`` is accepted as an alias of
    num_classes (ppim 1.x), ``pretrained`` is False, True (the registered weights) or a path/URL
    (``checkpoint_path=`` is accepted as an alias of a local path, as timm users write it), and
    ``return_transforms`` adds the eval transforms of the cfg. What was loaded is kept as
    ``model.pretrained_info``. ``features_only=True`` (timm's): the model, weights loaded, wrapped to
    return per-block feature maps for ``out_indices`` (default: the last 3 blocks), see
    ``TokenViT.feature_extractor``. ``arch``: the architecture's constructor arguments, under those
    of a checkpoint's description and ``kwargs``.

    A checkpoint that describes its model (see the module docstring) gives the constructor kwargs,
    num_classes, class names and transforms not passed here. ``ema``: True/False takes a checkpoint's
    EMA or model weights (default: its own choice, see load_pretrained). ``new_head``: whether the
    classifier may stay freshly initialised when the file's does not fit: True allows it, False makes
    it an error, None (default) allows it only when ``num_classes`` is passed (fine-tuning to another
    class count)."""
    features_only = kwargs.pop("features_only", False)
    out_indices = kwargs.pop("out_indices", 3)
    ema = kwargs.pop("ema", None)
    new_head = kwargs.pop("new_head", None)
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
    if new_head is None:
        new_head = "num_classes" in kwargs
    path = _local_file(pretrained)
    description = checkpoint_description(path) if path else None
    if description is not None:
        kwargs = _apply_description(name, description, kwargs, path, new_head)
    kwargs = {**(arch or {}), **kwargs}
    cfg = get_model_cfg(name)
    kwargs.setdefault("num_classes", cfg["num_classes"])
    kwargs.setdefault("img_size", cfg["crop"])
    check_model_kwargs(name, kwargs)
    model = model_cls(**kwargs)
    model.pretrained_cfg = cfg_for_img_size(cfg, kwargs["img_size"])
    model.pretrained_cfg["num_classes"] = kwargs["num_classes"]
    model.pretrained_cfg["model_kwargs"] = dict(kwargs)
    model.pretrained_cfg["class_names"] = None
    if description is not None and description["num_classes"] == kwargs["num_classes"]:
        model.pretrained_cfg["class_names"] = description.get("class_names")
        transforms = description.get("transforms") or {}
        if transforms.get("crop") == model.pretrained_cfg["crop"]:  # the run's own eval transforms
            model.pretrained_cfg.update({key: (tuple(value) if isinstance(value, list) else value)
                                         for key, value in transforms.items() if key in _TRANSFORM_KEYS})
    if pretrained:
        load_pretrained(model, cfg, pretrained, ema=ema, new_head=new_head)
    if features_only:
        model = model.feature_extractor(out_indices)
    if return_transforms:
        return model, create_transforms(model.pretrained_cfg)
    return model


def create_model(name: Optional[str] = None, pretrained: Any = False, *,
                 checkpoint_path: "str | os.PathLike[str] | None" = None, **kwargs: Any) -> Any:
    """Build a registered model by ``name`` (same arguments as its constructor), or from a checkpoint
    that describes its model: ``create_model(checkpoint_path="runs/a/best.pdparams")`` is the run's
    model with its weights, class names and eval transforms (``name`` optional; given, it must be
    the checkpoint's). See build_model for ``ema`` and ``new_head``."""
    from .registry import create_model as construct

    if checkpoint_path is not None:
        kwargs["checkpoint_path"] = checkpoint_path
        if name is None:
            path = os.fspath(checkpoint_path)
            if not os.path.isfile(path):
                raise ParameterError("{checkpoint_path}: no such file", checkpoint_path=path)
            description = checkpoint_description(path)
            if description is None:
                raise ParameterError("{checkpoint_path} does not say which model it holds (written by an "
                                     "older ppim or another tool): pass {name} too",
                                     checkpoint_path=path, name=ParameterError.NAME_ONLY)
            name = description["name"]
    if name is None:
        raise ParameterError("pass {name} or {checkpoint_path}", name=ParameterError.NAME_ONLY,
                             checkpoint_path=ParameterError.NAME_ONLY)
    return construct(name, pretrained=pretrained, **kwargs)

