"""ppim: a PaddlePaddle image-model zoo (LV-ViT, SuperViT)."""
# zlib before Paddle: Paddle 2.6 otherwise binds libz to its own copy and crashes (see ppim/_zlib.py).
import zlib  # noqa: F401  (isort: skip)

from ._zlib import check_zlib_order

check_zlib_order()

from .mathtune import tune_before_paddle

tune_before_paddle()  # before anything loads Paddle: MKL reads its dispatch setting as it loads

import warnings

with warnings.catch_warnings():  # Paddle's note about compiling C++ extensions, which ppim never does
    warnings.filterwarnings("ignore", message="No ccache found", category=UserWarning)
    from .models import *  # noqa: F401,F403  (registers the constructors)
from .models import __all__ as _model_all
from .registry import available, create_model, get_model_cfg, is_model, list_models, list_pretrained
from .transforms import create_transforms
from .version import __version__
from . import convert, data, deploy, evaluate, flops, weights  # noqa: E402  (ppim.flops.count, ...)

__all__ = ["available", "create_model", "create_transforms", "get_model_cfg", "is_model", "list_models",
           "list_pretrained", *_model_all]
