"""ppim: a PaddlePaddle image-model zoo (LV-ViT, SuperViT).

Imported lazily (module ``__getattr__``): ``import ppim`` loads neither Paddle nor any area package,
so a command line can pin its GPU before Paddle loads. The first use of a constructor
(``ppim.lvvit_s``, ``from ppim import lvvit_s``) or the first question to the registry
(``ppim.create_model``, ...) imports and registers the models; ``ppim.deploy``, ``ppim.flops``, ...
import on first use.
"""
# zlib before Paddle: Paddle 2.6 otherwise binds libz to its own copy and crashes (see ppim/_zlib.py).
import zlib  # noqa: F401  (isort: skip)

from ._zlib import check_zlib_order

check_zlib_order()

from .mathtune import tune_before_paddle  # noqa: E402

tune_before_paddle()  # before anything loads Paddle: MKL reads its dispatch setting as it loads

import importlib  # noqa: E402

from .version import __version__  # noqa: E402

#: Public functions and the module that defines them.
_API = {"available": "registry", "create_model": "builder", "get_model_cfg": "registry", "is_model": "registry",
        "list_models": "registry", "list_pretrained": "registry", "create_transforms": "transforms",
        "Subnet": "subnet"}
_SUBMODULES = {"auto_augment", "builder", "cli", "data", "deploy", "errors", "evaluate", "fileio", "flops", "layers",
               "mathtune", "models", "registry", "runtime", "subnet", "training", "transforms", "visualize", "weights"}


def _models():
    from .registry import load_families

    return load_families()


def __getattr__(name: str):
    if name in _SUBMODULES:
        return importlib.import_module(f".{name}", __name__)
    if name == "__all__":
        value = sorted(_API) + list(_models().__all__)
    elif name in _API:
        value = getattr(importlib.import_module(f".{_API[name]}", __name__), name)
    elif not name.startswith("_") and name in _models().__all__:  # a constructor: ppim.lvvit_s
        value = getattr(_models(), name)
    else:
        raise AttributeError(f"module 'ppim' has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | _SUBMODULES | set(__getattr__("__all__")))
