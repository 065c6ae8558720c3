"""Parameter and FLOP counting.

``count(model)`` returns ``{"params": int, "flops": int}``:

* ``params``: the trainable parameters (``stop_gradient`` False), i.e. what the papers and the
  official code report; BatchNorm running statistics are not parameters in that sense.
* ``flops``: multiply-accumulates (MACs) for ONE image, the convention of the LV-ViT, DeiT and
  SuperViT papers ("6.6G" for LV-ViT-S is 6.6 GMAC, about 13.1 G floating-point operations).
  Counted: convolutions (output pixels x out channels x in channels / groups x kernel area), Linear
  layers (tokens x in x out), and the two attention products per block (q k^T and attn v: 2 x N^2 x D
  for N tokens of width D). Not counted, as in the papers: biases, normalisation, activations,
  softmax, residual additions, scaling, resizing (SuperViT's bilinear input resize), token selection.

Token keeping (SuperViT, ``keep_ratio < 1``) is part of the count: after blocks 3, 6 and 9 the MLP and
every later block run on ``1 + ceil(keep_ratio * N)`` tokens (197 -> 100 -> 51 -> 27 at keep 0.5).

Two ways to count, which agree exactly (the tests check it):

* ``method="analytic"`` walks the model's structure (stem convolutions with their output sizes,
  blocks with their token counts) without running it. It needs no initialised weights, so a model
  built under ``paddle.LazyGuard()`` (see ``model_for_counting``, about 0.1 s even for LV-ViT-L)
  counts in microseconds. It knows ppim's layers (``LVViT``, ``SuperViT``, ``Block``,
  ``Attention``, ``Mlp``, the patch stems).
* ``method="hooks"`` runs one real forward pass on zeros with forward hooks on every ``Conv2D``,
  ``Linear`` and ppim ``Attention`` layer, so it sees the real token counts. It works for any
  ``paddle.nn.Layer`` (attention products are counted only for ppim's ``Attention``) but needs a
  model with weights and costs a forward pass.

``method="auto"`` (the default) is analytic for ppim models and hooks otherwise. (``paddle.flops``
is not used: it fails on these models under Paddle 3.3, and it counts norms and activations too.)
Both methods work on Paddle 2.6 and 3.x.

    from ppim import flops
    flops.count(ppim.lvvit_s())                        # {"params": 26151824, "flops": 6551485440}
    flops.count(model, img_size=160, keep_ratio=0.7)   # a SuperViT sub-network
    flops.subnet_costs("super_deit_s")                 # all 12, with their share of the full network
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import paddle
import paddle.nn as nn

from .layers import Attention, Block, ConvPatchEmbed, Mlp, PatchEmbed, eval_mode, kept_token_count
from .registry import create_model
from .subnet import subnets_of

__all__ = ["count", "count_macs", "count_params", "model_for_counting", "subnet_costs", "token_schedule"]


# ----------------------------------------------------------------------------------------------
# Parameters
# ----------------------------------------------------------------------------------------------


def count_params(model: nn.Layer) -> int:
    """Number of trainable parameter values (works on lazily built models: shapes only)."""
    return int(sum(int(np.prod(p.shape)) for p in model.parameters() if not p.stop_gradient))


def model_for_counting(name: str, **kwargs: Any) -> nn.Layer:
    """``ppim.create_model(name, **kwargs)`` built under ``paddle.LazyGuard``: parameters have their
    shapes but are neither allocated nor initialised, so building is nearly free. Only for
    ``count(..., method="analytic")``; such a model cannot run."""
    with paddle.LazyGuard():
        return create_model(name, **kwargs)


# ----------------------------------------------------------------------------------------------
# Token keeping
# ----------------------------------------------------------------------------------------------


def token_schedule(model: nn.Layer, img_size: Optional[int] = None,
                   keep_ratio: Optional[float] = None) -> List[int]:
    """Tokens entering each block's attention, then the final token count (length depth + 1).
    e.g. super_deit_s at (224, 0.5): [197, 197, 197, 197, 100, 100, 100, 51, 51, 51, 27, 27, 27]."""
    height, width, keeps = _plan(model, None, img_size, keep_ratio)
    tokens, out = (height // model.patch_size) * (width // model.patch_size) + 1, []
    for keep in keeps:
        out.append(tokens)
        tokens = kept_token_count(tokens, keep)
    return out + [tokens]


# ----------------------------------------------------------------------------------------------
# Analytic counting
# ----------------------------------------------------------------------------------------------


def _pair(value: Any) -> Tuple[int, int]:
    if isinstance(value, (list, tuple)):
        if len(value) == 2:
            return int(value[0]), int(value[1])
        if len(value) == 4:  # [top, bottom, left, right]: symmetric padding only
            if value[0] != value[1] or value[2] != value[3]:
                raise NotImplementedError(f"asymmetric padding {value}")
            return int(value[0]), int(value[2])
        raise NotImplementedError(f"padding {value}")
    return int(value), int(value)


def conv_macs(conv: nn.Conv2D, height: int, width: int) -> Tuple[int, int, int]:
    """(MACs, out height, out width) of a Conv2D on a (height, width) input, one image."""
    if isinstance(conv._padding, str):
        raise NotImplementedError(f"string padding {conv._padding!r}: use method='hooks'")
    kh, kw = _pair(conv._kernel_size)
    sh, sw = _pair(conv._stride)
    ph, pw = _pair(conv._padding)
    dh, dw = _pair(conv._dilation)
    out_h = (height + 2 * ph - dh * (kh - 1) - 1) // sh + 1
    out_w = (width + 2 * pw - dw * (kw - 1) - 1) // sw + 1
    macs = out_h * out_w * conv._out_channels * (conv._in_channels // conv._groups) * kh * kw
    return macs, out_h, out_w


def linear_macs(layer: nn.Layer, tokens: int) -> int:
    """MACs of a Linear layer applied to ``tokens`` vectors (0 for Identity, e.g. num_classes=0)."""
    if isinstance(layer, nn.Linear):
        fan_in, fan_out = layer.weight.shape  # Paddle stores [in, out]
        return tokens * int(fan_in) * int(fan_out)
    if isinstance(layer, nn.Identity):
        return 0
    raise TypeError(f"expected Linear or Identity, got {type(layer).__name__}")


def attention_macs(attn: Attention, tokens: int) -> int:
    """qkv + q k^T + attn v + proj for ``tokens`` tokens."""
    dim = attn.num_heads * attn.head_dim
    return (linear_macs(attn.qkv, tokens) + 2 * tokens * tokens * dim  # q k^T and attn v, all heads
            + linear_macs(attn.proj, tokens))


def mlp_macs(mlp: Mlp, tokens: int) -> int:
    return linear_macs(mlp.fc1, tokens) + linear_macs(mlp.fc2, tokens)


def block_macs(block: Block, tokens: int, keep_ratio: Optional[float] = None) -> Tuple[int, int]:
    """(MACs, tokens out) of a transformer block; with keep_ratio < 1 the MLP runs on the kept tokens."""
    kept = kept_token_count(tokens, keep_ratio)
    return attention_macs(block.attn, tokens) + mlp_macs(block.mlp, kept), kept


def stem_macs(stem: nn.Layer, height: int, width: int) -> Tuple[int, int, int]:
    """(MACs, grid height, grid width) of a patch stem."""
    if isinstance(stem, ConvPatchEmbed):
        convs = [stem.conv1, stem.conv2, stem.conv3, stem.proj]
    elif isinstance(stem, PatchEmbed):
        convs = [stem.proj]
    else:
        raise TypeError(f"unknown patch stem {type(stem).__name__}: use method='hooks'")
    total = 0
    for conv in convs:
        macs, height, width = conv_macs(conv, height, width)
        total += macs
    return total, height, width


def _is_ppim_model(model: nn.Layer) -> bool:
    """A model whose structure the analytic count knows (ppim's token transformers)."""
    from .models.base import TokenViT

    return isinstance(model, TokenViT)


def _default_input_shape(model: nn.Layer) -> Tuple[int, int, int, int]:
    cfg = getattr(model, "pretrained_cfg", None)
    if cfg and cfg.get("input_size"):
        return (1, *cfg["input_size"])
    size = getattr(model, "img_size", 224)
    return (1, 3, size, size)


def _plan(model: nn.Layer, input_shape, img_size, keep_ratio) -> Tuple[int, int, List[Optional[float]]]:
    """What the model computes for this input: the stem's input height and width, and the keep ratio
    each block applies (the model's token plan, ``token_plan``)."""
    if not _is_ppim_model(model):
        raise TypeError(f"{type(model).__name__} is not a ppim model: use method='hooks'")
    if subnets_of(model):  # the input is resized to the sub-network's size
        side, keeps = model.token_plan(img_size, keep_ratio)
        return side, side, keeps
    if input_shape is None:
        input_shape = _default_input_shape(model)
    if len(input_shape) != 4:
        raise ValueError(f"input_shape must be (B, C, H, W), got {tuple(input_shape)}")
    height, width = (int(input_shape[2]), int(input_shape[3])) if img_size is None else (int(img_size),) * 2
    side, keeps = model.token_plan(max(height, width), keep_ratio)
    if (height, width) != (side, side):
        raise ValueError(f"this model takes {side}x{side} inputs, got {height}x{width}; build it for your "
                         f"size: create_model(name, img_size={max(height, width)})")
    return height, width, keeps


def _analytic_macs(model: nn.Layer, input_shape, img_size, keep_ratio) -> int:
    height, width, keeps = _plan(model, input_shape, img_size, keep_ratio)
    total, grid_h, grid_w = stem_macs(model.patch_embed, height, width)
    tokens = grid_h * grid_w + 1
    for block, keep in zip(model.blocks, keeps):
        macs, tokens = block_macs(block, tokens, keep)
        total += macs
    if model.num_classes > 0:
        total += linear_macs(model.head, 1)
        if hasattr(model, "aux_head") and getattr(model, "aux_weight", None) is not None:
            total += linear_macs(model.aux_head, tokens - 1)  # the eval output uses every patch token
    return int(total)


# ----------------------------------------------------------------------------------------------
# Counting with forward hooks
# ----------------------------------------------------------------------------------------------


def _is_lazy(model: nn.Layer) -> bool:
    for p in model.parameters():
        initialized = getattr(p, "_is_initialized", None)
        if initialized is not None and not initialized():
            return True
        break
    return False


def _hook_macs(model: nn.Layer, input_shape, img_size, keep_ratio) -> int:
    if _is_lazy(model):
        raise ValueError("the model was built under paddle.LazyGuard (no weights): use method='analytic'")
    if input_shape is None:
        input_shape = _default_input_shape(model)
    batch = int(input_shape[0])
    total = [0]

    def on_linear(layer, inputs, output):
        total[0] += int(np.prod(output.shape[:-1])) * int(layer.weight.shape[0]) * int(layer.weight.shape[1])

    def on_conv(layer, inputs, output):
        kernel = int(np.prod(layer._kernel_size)) if isinstance(layer._kernel_size, (list, tuple)) \
            else int(layer._kernel_size) ** 2
        total[0] += int(np.prod(output.shape)) * (layer._in_channels // layer._groups) * kernel

    def on_attention(layer, inputs, output):
        b, n, _ = inputs[0].shape
        total[0] += 2 * int(b) * int(n) * int(n) * layer.num_heads * layer.head_dim

    handles = []
    for layer in model.sublayers(include_self=True):
        if isinstance(layer, nn.Linear):
            handles.append(layer.register_forward_post_hook(on_linear))
        elif isinstance(layer, nn.Conv2D):
            handles.append(layer.register_forward_post_hook(on_conv))
        elif isinstance(layer, Attention):
            handles.append(layer.register_forward_post_hook(on_attention))
    try:
        x = paddle.zeros([int(d) for d in input_shape], dtype="float32")
        kwargs = {}
        if subnets_of(model):
            kwargs = {"img_size": img_size, "keep_ratio": keep_ratio}
        elif img_size is not None or keep_ratio is not None:
            if (keep_ratio is not None and keep_ratio < 1) or (img_size is not None and img_size != input_shape[2]):
                raise ValueError("img_size / keep_ratio are sub-network arguments of SuperViT models")
        with eval_mode(model), paddle.no_grad():
            model(x, **kwargs)
    finally:
        for handle in handles:
            handle.remove()
    return total[0] // batch


# ----------------------------------------------------------------------------------------------
# Public
# ----------------------------------------------------------------------------------------------


def count(model: nn.Layer, input_shape: Optional[Sequence[int]] = None, img_size: Optional[int] = None,
          keep_ratio: Optional[float] = None, method: str = "auto") -> Dict[str, int]:
    """``{"params": trainable parameters, "flops": multiply-accumulates per image}``.

    input_shape: (B, 3, H, W); default (1, *the model's cfg input_size). FLOPs are per image
    whatever B is. img_size / keep_ratio: the SuperViT sub-network (default: the model's current
    one, see ``set_subnet``; the model's sub-network is not changed). What is counted: see the
    module docstring (convs, Linear layers, attention products; not norms, activations, softmax).
    method: "auto", "analytic" or "hooks" (module docstring).
    """
    macs = count_macs(model, input_shape, img_size, keep_ratio, method)
    return {"params": count_params(model), "flops": int(macs)}


def count_macs(model: nn.Layer, input_shape: Optional[Sequence[int]] = None, img_size: Optional[int] = None,
               keep_ratio: Optional[float] = None, method: str = "auto") -> int:
    """Multiply-accumulates per image: ``count(...)["flops"]`` without counting parameters."""
    if method == "auto":
        method = "analytic" if _is_ppim_model(model) else "hooks"
    if method == "analytic":
        return _analytic_macs(model, input_shape, img_size, keep_ratio)
    if method == "hooks":
        return _hook_macs(model, input_shape, img_size, keep_ratio)
    raise ValueError(f"method must be 'auto', 'analytic' or 'hooks', got {method!r}")


def subnet_costs(model_name: Union[str, nn.Layer]) -> List[Dict[str, Any]]:
    """FLOPs of every published sub-network of a super model (a registered name, or a model):
    ``[{"img_size", "keep_ratio", "flops", "ratio_to_full"}, ...]`` in ``model.subnets`` order,
    ratio_to_full relative to the largest sub-network (largest img_size, keep 1)."""
    model = model_for_counting(model_name) if isinstance(model_name, str) else model_name
    subnets = subnets_of(model)
    if not subnets:
        name = model_name if isinstance(model_name, str) else type(model).__name__
        raise ValueError(f"{name} has no sub-networks (super_deit_s and super_lvvit_s do)")
    full = _analytic_macs(model, None, *max(subnets))
    costs = []
    for subnet in subnets:
        flops = _analytic_macs(model, None, *subnet)
        costs.append({**subnet.as_dict(), "flops": flops, "ratio_to_full": flops / full})
    return costs
