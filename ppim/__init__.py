"""ppim: a PaddlePaddle image-model zoo (LV-ViT, SuperViT)."""
# Python's zlib must be loaded before Paddle: otherwise Paddle 2.6 crashes in jit.save (in zlib's
# inflateReset2) on some Python builds.
import zlib  # noqa: F401  (isort: skip)

import warnings

with warnings.catch_warnings():  # Paddle's note about compiling C++ extensions, which ppim never does
    warnings.filterwarnings("ignore", message="No ccache found", category=UserWarning)
    from .models import *  # noqa: F401,F403  (registers the constructors)
from .models import __all__ as _model_all
from .registry import available, create_model, get_model_cfg, list_models
from .transforms import create_transforms
from .version import __version__
from . import convert, data, deploy, evaluate, flops, weights  # noqa: E402  (ppim.flops.count, ...)

__all__ = ["available", "create_model", "create_transforms", "get_model_cfg", "list_models", *_model_all]
