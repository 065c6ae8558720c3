"""ppim: a PaddlePaddle image-model zoo (LV-ViT, SuperViT)."""
from .models import *  # noqa: F401,F403  (registers the constructors)
from .models import __all__ as _model_all
from .registry import create_model, get_model_cfg, list_models

__version__ = "2.0.0"
__all__ = ["create_model", "get_model_cfg", "list_models", *_model_all]
