"""An exponential moving average of a model's weights (timm's ModelEmaV2, as DeiT / TokenLabeling use
it): ema = decay * ema + (1 - decay) * model after every optimizer step, for parameters and buffers
(BatchNorm running statistics are averaged too); integer buffers are copied."""
from __future__ import annotations

import copy
from typing import Dict

import paddle
from paddle import nn

from ..runtime import unwrap_parallel


class ModelEma:
    """``ModelEma(model, decay)``: ``.module`` is a deep copy of ``model`` in eval mode holding the
    average; call ``update(model)`` after each optimizer step. ``state_dict()`` / ``set_state_dict()``
    are the EMA model's (what checkpoints store as state_dict_ema). A paddle.DataParallel model is
    unwrapped: the EMA holds (and is updated from) the plain model."""

    def __init__(self, model: nn.Layer, decay: float = 0.99992):
        if not 0.0 <= decay <= 1.0:
            raise ValueError(f"EMA decay must be in [0, 1], got {decay}")
        self.decay = decay
        self.module = copy.deepcopy(unwrap_parallel(model))
        self.module.eval()
        for param in self.module.parameters():
            param.stop_gradient = True

    @paddle.no_grad()
    def _update(self, model: nn.Layer, weight: float) -> None:
        source = unwrap_parallel(model).state_dict()
        for name, ema_value in self.module.state_dict().items():
            if name not in source:
                raise KeyError(f"ModelEma: the model has no {name!r}; was it built like the EMA copy?")
            value = source[name]
            if ema_value.is_floating_point() and weight != 1.0:
                value = ema_value * (1.0 - weight) + value.astype(ema_value.dtype) * weight
            paddle.assign(value.astype(ema_value.dtype), output=ema_value)

    def update(self, model: nn.Layer) -> None:
        """ema = decay * ema + (1 - decay) * model."""
        self._update(model, 1.0 - self.decay)

    def set(self, model: nn.Layer) -> None:
        """Copy ``model``'s weights into the EMA."""
        self._update(model, 1.0)

    def state_dict(self) -> Dict[str, paddle.Tensor]:
        return self.module.state_dict()

    def set_state_dict(self, state_dict: Dict[str, paddle.Tensor]) -> None:
        self.module.set_state_dict(state_dict)
