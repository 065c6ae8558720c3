"""Model registry: every constructor is registered with its pretrained cfg (timm's pattern).

A leaf: it imports nothing of ppim but the exception base class (ppim.builder, above it, turns a
name into a ready model). The model families register themselves when ``ppim.models`` is imported;
the first question about names imports it by name (:func:`load_families`), so asking the registry
works whichever ppim module was imported first, while ``import ppim`` alone stays free of Paddle."""
from __future__ import annotations

import copy
import importlib
import difflib
import fnmatch
import math
import textwrap
import warnings
from typing import Any, Callable, Dict, List, Sequence, Union

from .errors import PpimError

_MODELS: Dict[str, Callable[..., Any]] = {}
_CFGS: Dict[str, Dict[str, Any]] = {}

#: The package whose import registers every model family.
FAMILIES = "ppim.models"
#: What Paddle says on import about compiling C++ extensions, which ppim never does.
PADDLE_IMPORT_NOISE = "No ccache found"


def load_families() -> Any:
    """Import (once) and return the package of model families, registering every constructor."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=PADDLE_IMPORT_NOISE, category=UserWarning)
        return importlib.import_module(FAMILIES)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


Patterns = Union[str, Sequence[str]]


class UnknownModelError(PpimError, KeyError):
    """Raised for a name that is not registered; the message lists the closest names."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


def resize_for_crop_pct(crop: int, crop_pct: float) -> int:
    """The shorter-side resize before a ``crop`` centre crop at ``crop_pct`` (timm: floor(crop / pct))."""
    if not 0 < crop_pct <= 1:
        raise ValueError(f"crop_pct must be in (0, 1], got {crop_pct!r}")
    return int(math.floor(crop / crop_pct))


def crop_pct_of(crop: int, resize: int) -> float:
    """The shortest decimal crop_pct that ``resize_for_crop_pct`` turns back into ``resize``
    (248 -> 0.9 and 256 -> 0.875 at 224), as timm's cfgs write it."""
    for digits in range(1, 7):
        pct = round(crop / resize, digits)
        if 0 < pct <= 1 and resize_for_crop_pct(crop, pct) == resize:
            return pct
    return crop / resize


def make_cfg(name: str, img_size: int, resize: int, weights: Dict[str, Any], **extra: Any) -> Dict[str, Any]:
    """A model's cfg: eval transforms (resize shorter side, center crop, bicubic, ImageNet stats;
    crop_pct = crop / resize as timm writes it), classes, and its weights' metadata (url, file_name,
    format, source_url, published metrics). ``extra``: architecture, model_class, paper,
    official_crop_pct where the official eval crops differently from these transforms, and for
    super models subnets (the published sub-networks' keys, "224x1.0", ...: see ppim.subnet)."""
    return {
        "name": name,
        "input_size": (3, img_size, img_size),
        "resize": resize,
        "crop": img_size,
        "crop_pct": crop_pct_of(img_size, resize),
        "interpolation": "bicubic",
        "mean": IMAGENET_MEAN,
        "std": IMAGENET_STD,
        "num_classes": 1000,
        "weights": weights,
        "classifier": ("head", "aux_head"),  # dropped on load when the class count differs
        **extra,
    }


def _usage(cfg: Dict[str, Any]) -> str:
    """The arguments every constructor takes and its weights, appended to its docstring (what
    ``help(ppim.lvvit_s)`` and ``paddle.hub.help`` show)."""
    weights = cfg["weights"]
    top1 = f", published top-1 {weights['top1']}%" if weights.get("top1") is not None else ""
    text = (f"pretrained: False, True (the registered weights, {weights['file_name']} in "
            f"$PPIM_HOME/weights{top1}) or a path or URL of a .pdparams or PyTorch file. return_transforms: "
            f"also return the eval transforms. num_classes (alias class_dim), img_size and the other "
            f"{cfg.get('model_class', 'model')} constructor arguments as keywords.")
    return "\n\n" + textwrap.fill(text, 100, initial_indent="    ", subsequent_indent="    ") + "\n"


def register_model(cfg: Dict[str, Any]) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorator: register ``fn`` under its own name with ``cfg`` (its docstring gains the usage)."""

    def decorate(fn: Callable[..., Any]) -> Callable[..., Any]:
        name = fn.__name__
        if name in _MODELS:
            raise ValueError(f"model {name!r} is registered twice")
        _MODELS[name] = fn
        _CFGS[name] = dict(cfg, name=name)
        fn.__doc__ = (fn.__doc__ or name) + _usage(cfg)
        return fn

    return decorate


def _lookup(name: str) -> str:
    load_families()
    if name in _MODELS:
        return name
    close = difflib.get_close_matches(name, list(_MODELS), n=5, cutoff=0.5)
    hint = f" Did you mean: {', '.join(close)}?" if close else ""
    raise UnknownModelError(
        f"Unknown model {name!r}.{hint} ppim.list_models() lists all {len(_MODELS)} models.")


def _matches(name: str, patterns: Patterns) -> bool:
    patterns = [patterns] if isinstance(patterns, str) else patterns
    return any(fnmatch.fnmatch(name, pattern) for pattern in patterns)


def list_models(pattern: Patterns = "*", pretrained: bool = False, exclude_filters: Patterns = ()) -> List[str]:
    """Sorted registered names matching the shell-style ``pattern`` (or any of a list of them, as
    timm), minus those matching ``exclude_filters``; with ``pretrained=True`` only those with
    published weights (a Paddle file or an official PyTorch source)."""
    load_families()
    names = [n for n in _MODELS if _matches(n, pattern) and not _matches(n, exclude_filters)]
    if pretrained:
        names = [n for n in names if _CFGS[n]["weights"].get("url") or _CFGS[n]["weights"].get("source_url")]
    return sorted(names)


def list_pretrained(pattern: Patterns = "*", exclude_filters: Patterns = ()) -> List[str]:
    """``list_models(pattern, pretrained=True, exclude_filters)``: the names with published weights."""
    return list_models(pattern, pretrained=True, exclude_filters=exclude_filters)


def is_model(name: str) -> bool:
    """True if ``name`` is a registered model."""
    load_families()
    return name in _MODELS


def get_model_cfg(name: str) -> Dict[str, Any]:
    """A copy of the registered cfg of ``name`` (see make_cfg for the fields)."""
    return copy.deepcopy(_CFGS[_lookup(name)])


def create_model(name: str, pretrained: Any = False, **kwargs: Any) -> Any:
    """Build a registered model by name; same arguments as its constructor. (``ppim.create_model`` is
    ppim.builder.create_model, which also builds the model a checkpoint describes.)"""
    return _MODELS[_lookup(name)](pretrained=pretrained, **kwargs)


def model_name(model: Any) -> str:
    """The registered name a model was built as (its pretrained_cfg), else its class name."""
    return (getattr(model, "pretrained_cfg", None) or {}).get("name") or type(model).__name__


def available() -> None:
    """Print the models by family, as ppim 1.x did."""
    families: Dict[str, List[str]] = {}
    for name in list_models(pretrained=True):
        families.setdefault(_CFGS[name]["architecture"], []).append(name)
    print("The pretrained models list as follow:")
    for family, names in families.items():
        print({family: names})
    print("The models support as follow:")
    for cls in sorted({cfg["model_class"] for cfg in _CFGS.values()}):
        print([cls])


def cfg_for_img_size(cfg: Dict[str, Any], img_size: int) -> Dict[str, Any]:
    """The cfg of a model built for another input size: crop = img_size, resize keeps the crop ratio."""
    if img_size == cfg["crop"]:
        return cfg
    cfg = copy.deepcopy(cfg)
    cfg["input_size"] = (3, img_size, img_size)
    cfg["resize"] = int(img_size * cfg["resize"] / cfg["crop"])
    cfg["crop"] = img_size
    cfg["crop_pct"] = crop_pct_of(img_size, cfg["resize"])
    return cfg
