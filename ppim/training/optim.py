"""Optimizers as timm 0.4.x's create_optimizer builds them: no weight decay on biases, norm weights
and other 1-D parameters nor on the names the model lists in ``no_weight_decay()``; optional clipping
of the gradients' global norm. Per-group weight decay works on Paddle 2.6 and 3.x (AdamW: decoupled
decay coefficient; SGD / Momentum: L2 added to the gradient, as torch's SGD)."""
from __future__ import annotations

from typing import Any, Dict, Iterable, List, Optional, Tuple, Union

import paddle
from paddle import nn

from ..runtime import unwrap_parallel

OPTIMIZERS = ("adamw", "adam", "sgd", "momentum")


def param_groups_weight_decay(model: nn.Layer, weight_decay: float = 1e-5,
                              no_weight_decay_list: Iterable[str] = ()) -> List[Dict[str, Any]]:
    """Two parameter groups, timm's add_weight_decay: [{'params': no-decay, 'weight_decay': 0.0},
    {'params': the rest, 'weight_decay': weight_decay}]. No decay: 1-D parameters (biases, norm
    weights), names ending in '.bias', and names in ``no_weight_decay_list`` or
    ``model.no_weight_decay()``. Frozen parameters (stop_gradient) are left out. A DataParallel
    model is unwrapped first, so names match."""
    model = unwrap_parallel(model)
    skip = set(no_weight_decay_list)
    if hasattr(model, "no_weight_decay"):
        skip |= set(model.no_weight_decay())
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if param.stop_gradient:
            continue
        if len(param.shape) <= 1 or name.endswith(".bias") or name in skip:
            no_decay.append(param)
        else:
            decay.append(param)
    return [{"params": no_decay, "weight_decay": 0.0}, {"params": decay, "weight_decay": weight_decay}]


def create_optimizer(model: nn.Layer, opt: str = "adamw", lr: Union[float, paddle.optimizer.lr.LRScheduler] = 5e-4,
                     weight_decay: float = 0.05, momentum: float = 0.9, betas: Tuple[float, float] = (0.9, 0.999),
                     eps: float = 1e-8, clip_grad: Optional[float] = None, filter_bias_and_bn: bool = True,
                     lr_scheduler: Optional[paddle.optimizer.lr.LRScheduler] = None) -> paddle.optimizer.Optimizer:
    """A Paddle optimizer for ``model``: ``opt`` 'adamw' (timm's default for ViTs), 'adam', 'sgd'
    (with Nesterov momentum, as timm's 'sgd') or 'momentum' (plain momentum). ``lr`` is a number, or
    pass ``lr_scheduler`` (a Paddle LRScheduler, e.g. CosineLRScheduler) to drive it. Weight decay
    per param_groups_weight_decay when ``filter_bias_and_bn`` (else on everything). ``clip_grad``:
    clip the gradients' global L2 norm to this value (paddle.nn.ClipGradByGlobalNorm)."""
    name = opt.lower()
    if name not in OPTIMIZERS:
        raise ValueError(f"optimizer {opt!r} is not one of {', '.join(OPTIMIZERS)}")
    learning_rate = lr_scheduler if lr_scheduler is not None else lr
    if weight_decay and filter_bias_and_bn:
        parameters: Any = param_groups_weight_decay(model, weight_decay)
        parameters = [group for group in parameters if group["params"]]
    else:
        parameters = [p for p in model.parameters() if not p.stop_gradient]
    grad_clip = nn.ClipGradByGlobalNorm(float(clip_grad)) if clip_grad else None
    common = dict(learning_rate=learning_rate, parameters=parameters, weight_decay=weight_decay, grad_clip=grad_clip)
    if name == "adamw":
        return paddle.optimizer.AdamW(beta1=betas[0], beta2=betas[1], epsilon=eps, **common)
    if name == "adam":  # L2 added to the gradient, as torch's Adam
        return paddle.optimizer.Adam(beta1=betas[0], beta2=betas[1], epsilon=eps, **common)
    return paddle.optimizer.Momentum(momentum=momentum, use_nesterov=name == "sgd", **common)
