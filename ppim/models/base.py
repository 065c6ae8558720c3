"""What LV-ViT and SuperViT share around their token stack: the input checks and timm's model
conventions (``default_cfg``, ``get_classifier``, ``reset_classifier``, ``forward_head``,
``forward_intermediates``, ``group_matcher``, ``set_grad_checkpointing``, ``global_pool``).

A family subclasses ``TokenViT`` and provides ``_embed`` (images -> tokens with cls and positions)
and ``_keep_ratios`` (the keep ratio each block applies); everything here works from those.
"""
from __future__ import annotations

from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np
import paddle
import paddle.nn as nn

from ..layers import dense_logits, init_vit_weights
from ..registry import model_name
from ..subnet import Subnet

GLOBAL_POOLS = ("token", "dense")


def check_images(model: nn.Layer, x: Any, sizes: Optional[Sequence[int]] = None) -> None:
    """Raise one clear error for the usual input mistakes, naming what was passed and the fix:
    not a tensor (numpy array, PIL image, list), no batch dimension, channels last (NHWC), another
    channel count, integer pixels, and (``sizes``) a spatial size the model was not built for.
    Dims unknown in a traced graph (-1) are not checked."""
    name = model_name(model)
    fix = (f"t = ppim.create_transforms({name!r}); x = paddle.to_tensor(t(image)).unsqueeze(0)")
    if isinstance(x, np.ndarray):
        raise TypeError(f"{name} takes a paddle.Tensor of images (B, 3, H, W), got a numpy array of shape "
                        f"{x.shape} ({x.dtype}): wrap it with paddle.to_tensor(x), or from a photo: {fix}")
    shape = getattr(x, "shape", None)
    if shape is None or isinstance(x, (list, tuple)):
        raise TypeError(f"{name} takes a paddle.Tensor of images (B, 3, H, W), got {type(x).__name__}; "
                        f"from a photo: {fix}")
    shape = list(shape)
    channels = model.in_chans
    if len(shape) == 3:
        if shape[0] == channels:
            raise ValueError(f"{name} takes a batch (B, {channels}, H, W), got one image {tuple(shape)} without "
                             f"the batch dimension: pass x.unsqueeze(0)")
        if shape[2] == channels:
            raise ValueError(f"{name} takes a batch (B, {channels}, H, W), got {tuple(shape)}, one image with "
                             f"channels last (HWC): pass x.transpose([2, 0, 1]).unsqueeze(0)")
    if len(shape) != 4:
        raise ValueError(f"{name} takes images (B, {channels}, H, W), got a {len(shape)}-D tensor {tuple(shape)}")
    if shape[1] != channels and shape[1] >= 0:
        if shape[3] == channels:
            raise ValueError(f"{name} takes images (B, {channels}, H, W), got {tuple(shape)}, channels last "
                             f"(NHWC): pass x.transpose([0, 3, 1, 2])")
        raise ValueError(f"{name} takes {channels}-channel images (B, {channels}, H, W), got {tuple(shape)}")
    if not paddle.is_floating_point(x):
        raise TypeError(f"{name} takes normalized float images, got {x.dtype} pixels: {fix}")
    height, width = shape[2], shape[3]
    if sizes is None or height < 0 or width < 0 or (height == width and height in sizes):
        return
    expected = " or ".join(f"{s}x{s}" for s in sizes)
    raise ValueError(
        f"{name} takes {expected} inputs, got {height}x{width}. Use the model's eval transforms "
        f"(ppim.create_transforms({name!r})), or build it for your size: "
        f"ppim.create_model({name!r}, img_size={max(height, width)}) (pretrained positional "
        f"embeddings are then resized to the new token grid).")


def scatter_tokens(tokens: paddle.Tensor, positions: Optional[paddle.Tensor], grid: int) -> paddle.Tensor:
    """Patch tokens (B, n, D) at ``positions`` (B, n) of a row-major grid x grid token grid (None: all
    of them, in order) -> a feature map (B, D, grid, grid), zeros where no token is."""
    batch, _, dim = tokens.shape
    if positions is not None:
        full = paddle.zeros([batch, grid * grid, dim], dtype=tokens.dtype)
        tokens = paddle.put_along_axis(full, positions.unsqueeze(-1).expand([-1, -1, dim]), tokens, axis=1)
    return tokens.transpose([0, 2, 1]).reshape([batch, dim, grid, grid])


def block_indices(indices: Union[int, Sequence[int], None], depth: int) -> List[int]:
    """timm's ``indices`` of intermediate blocks as 0-based block indices: None all, an int n the last
    n, else a list (negative counts from the end)."""
    if indices is None:
        return list(range(depth))
    if isinstance(indices, int):
        if not 0 < indices <= depth:
            raise ValueError(f"indices={indices}: the last n blocks, n in 1..{depth}")
        return list(range(depth - indices, depth))
    wanted = []
    for i in indices:
        if not -depth <= i < depth:
            raise ValueError(f"block index {i} out of range for {depth} blocks")
        wanted.append(i % depth)
    return wanted


class TokenViT(nn.Layer):
    """Base of the ppim vision transformers: a token stack (``blocks``, ``norm``) with a cls token,
    ``head`` on it and, with ``aux_weight`` set, ``aux_head`` on every patch token.

    ``global_pool`` is the feature ``num_classes=0`` (and ``forward_head(pre_logits=True)``) returns:
    "token", the cls token (ppim's default), or "dense", cls + aux_weight * max over the patch tokens
    (what the official LV-ViT code returns when built without classes).
    """

    in_chans = 3
    aux_weight: Optional[float] = None
    global_pool = "token"
    grad_checkpointing = False

    # -- what a family provides ---------------------------------------------------------------
    def _embed(self, x: paddle.Tensor, img_size: Optional[int]) -> Tuple[paddle.Tensor, int]:
        """Images -> (tokens (B, 1 + N, D) with cls first and positions added, token grid side)."""
        raise NotImplementedError

    def _keep_ratios(self, keep_ratio: Optional[float]) -> List[Optional[float]]:
        """The keep ratio each block applies (None: keeps every token)."""
        return [None] * len(self.blocks)

    # -- sub-networks (the protocol of ppim.subnet): none here, SuperViT has them -----------------
    @property
    def subnets(self) -> List[Subnet]:
        """The published sub-networks; [] for a model without any."""
        return []

    @property
    def subnet(self) -> Optional[Subnet]:
        """The sub-network ``forward`` runs when given none; None for a model without any."""
        return None

    def check_subnet(self, img_size: Any, keep_ratio: Any) -> Subnet:
        """(img_size, keep_ratio) as a checked Subnet (the rule: ppim.subnet), or a ValueError."""
        raise ValueError(f"{model_name(self)} has no sub-networks (super_deit_s and super_lvvit_s do)")

    def set_subnet(self, img_size: int = 224, keep_ratio: float = 1.0) -> None:
        """Make (img_size, keep_ratio) the current sub-network (checked by ``check_subnet``)."""
        self.check_subnet(img_size, keep_ratio)

    def token_plan(self, img_size: Optional[int] = None,
                   keep_ratio: Optional[float] = None) -> Tuple[int, List[Optional[float]]]:
        """What a forward pass computes, for counting without running it (ppim.flops): the side of the
        square input the stem sees and, per block, the keep ratio applied after its attention (None:
        every token goes on). None: the current sub-network; a model without sub-networks has its one
        input size and keeps every token."""
        if keep_ratio is not None and keep_ratio < 1:
            raise ValueError(f"keep_ratio is for super models; {model_name(self)} keeps every token")
        side = self.img_size if img_size is None else int(img_size)
        if side != self.img_size:
            raise ValueError(f"this model takes {self.img_size}x{self.img_size} inputs, got {side}x{side}; "
                             f"build it for your size: create_model(name, img_size={side})")
        return side, self._keep_ratios(None)

    # -- cfg and heads --------------------------------------------------------------------------
    @property
    def default_cfg(self) -> Dict[str, Any]:
        """timm's older name of ``pretrained_cfg`` (the registered cfg this model was built with)."""
        return self.pretrained_cfg

    def _set_global_pool(self, global_pool: str) -> None:
        if global_pool not in GLOBAL_POOLS:
            raise ValueError(f"global_pool must be one of {GLOBAL_POOLS}, got {global_pool!r}")
        if global_pool == "dense" and self.aux_weight is None:
            raise ValueError(f"global_pool='dense' pools with the aux head's weight; {model_name(self)} has "
                             f"no aux head (use 'token')")
        self.global_pool = global_pool

    def _set_heads(self, num_classes: int) -> None:
        def linear() -> nn.Layer:
            if num_classes <= 0:
                return nn.Identity()
            layer = nn.Linear(self.embed_dim, num_classes)
            init_vit_weights(layer)
            return layer

        self.num_classes = num_classes
        self.head = linear()
        if self.aux_weight is not None:
            self.aux_head = linear()

    def get_classifier(self) -> nn.Layer:
        """The classifier: ``head``, or with an aux head both, as ``LayerList([head, aux_head])``, so
        ``model.get_classifier().parameters()`` is every classifier parameter (e.g. for a separate
        learning rate when fine-tuning)."""
        if self.aux_weight is None:
            return self.head
        return nn.LayerList([self.head, self.aux_head])

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None) -> None:
        """New, freshly initialised head (and aux_head) for ``num_classes`` (0: features only);
        ``global_pool`` changes the pooled feature ("token" or "dense")."""
        if global_pool is not None:
            self._set_global_pool(global_pool)
        self._set_heads(num_classes)

    # -- training conveniences ----------------------------------------------------------------------
    def group_matcher(self, coarse: bool = False) -> Dict[str, Any]:
        """timm's parameter grouping by depth (layer-wise lr decay): regexes over parameter names.
        "stem": cls token, positional embeddings, patch stem (group 0); "blocks": block i is group
        i + 1 and the final norm comes last (``coarse``: one regex, block index as the group)."""
        return {
            "stem": r"^cls_token|^pos_embed|^patch_embed",
            "blocks": r"^blocks\.(\d+)" if coarse else [(r"^blocks\.(\d+)", None), (r"^norm", (99999,))],
        }

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute each block's activations in the backward pass instead of keeping them (Paddle's
        ``recompute``, RNG replayed): less memory in training, the same gradients, about a third more
        compute. Applies to forward, forward_features and forward_train (not forward_intermediates)."""
        self.grad_checkpointing = bool(enable)

    # -- the token stack ----------------------------------------------------------------------------
    def _block(self, block: nn.Layer, x: paddle.Tensor, keep_ratio: Optional[float], return_index: bool):
        if self.grad_checkpointing and self.training and not x.stop_gradient and not return_index:
            from paddle.distributed.fleet.utils import recompute

            # The reentrant form: the other one cannot replay the RNG (dropout, drop-path) on CPU in Paddle 2.6.
            return recompute(block, x, keep_ratio)
        return block(x, keep_ratio, return_index)

    def run_blocks(self, x: paddle.Tensor, keep_ratio: Optional[float] = None) -> paddle.Tensor:
        """Tokens (B, 1 + N, D) through every block (token keeping as ``keep_ratio`` says), then norm."""
        for block, ratio in zip(self.blocks, self._keep_ratios(keep_ratio)):
            x = self._block(block, x, ratio, False)
        return self.norm(x)

    def pool(self, tokens: paddle.Tensor) -> paddle.Tensor:
        """Final-norm tokens (B, 1 + N, D) -> the feature (B, D) of ``global_pool``."""
        if self.global_pool == "dense":
            return tokens[:, 0] + self.aux_weight * tokens[:, 1:].max(axis=1)
        return tokens[:, 0]

    def forward_head(self, x: paddle.Tensor, pre_logits: bool = False) -> paddle.Tensor:
        """Final-norm tokens (B, 1 + N, D) from ``forward_features`` -> logits (B, C): head(cls), plus
        aux_weight * max over tokens of aux_head with an aux head. ``pre_logits``: the pooled feature
        (B, D) instead (see ``global_pool``); also what a model built with num_classes=0 returns."""
        if pre_logits or self.num_classes <= 0:
            return self.pool(x)
        logits = self.head(x[:, 0])
        if self.aux_weight is None:
            return logits
        return dense_logits(logits, self.aux_head(x[:, 1:]), self.aux_weight)

    def forward_intermediates(self, x: paddle.Tensor, indices: Union[int, Sequence[int], None] = None, *,
                              norm: bool = False, output_fmt: str = "NCHW", intermediates_only: bool = False,
                              **subnet: Any):
        """Per-block token maps for detection and segmentation backbones (timm's API).

        x: images (B, 3, H, W). indices: the blocks to return (0-based, negative from the end), an int
        n for the last n blocks, None for all. Each is the block's patch tokens as a map (B, D, g, g)
        (``output_fmt="NHWC"``: (B, g, g, D)), g the token grid side, with the final norm applied when
        ``norm``. SuperViT (``img_size=``, ``keep_ratio=`` select the sub-network): after a keep block
        only the kept tokens exist; they are put back at their grid positions and the dropped ones
        are zeros, so every map has the full grid. Returns (final-norm tokens (B, 1 + n, D), [maps])
        or, with ``intermediates_only``, the maps alone.
        """
        if output_fmt not in ("NCHW", "NHWC"):
            raise ValueError(f"output_fmt must be 'NCHW' or 'NHWC', got {output_fmt!r}")
        wanted = block_indices(indices, len(self.blocks))
        maps = {}
        last = max(wanted) if intermediates_only else None
        for index, tokens, positions, grid in self._walk(x, last, **subnet):
            if index in wanted:
                out = self.norm(tokens) if norm else tokens
                feature = scatter_tokens(out[:, 1:], positions, grid)
                maps[index] = feature.transpose([0, 2, 3, 1]) if output_fmt == "NHWC" else feature
        intermediates = [maps[i] for i in wanted]
        if intermediates_only:
            return intermediates
        return self.norm(tokens), intermediates

    def feature_extractor(self, out_indices: Union[int, Sequence[int]] = 3) -> "FeatureExtractor":
        """This model as a backbone whose forward returns the maps of ``forward_intermediates`` for
        ``out_indices`` (what ``create_model(..., features_only=True, out_indices=...)`` returns)."""
        return FeatureExtractor(self, out_indices)

    def _walk(self, x: paddle.Tensor, last: Optional[int] = None, img_size: Optional[int] = None,
              keep_ratio: Optional[float] = None) -> Iterator[Tuple[int, paddle.Tensor, Optional[paddle.Tensor], int]]:
        """Run the blocks up to ``last`` (default all), yielding after each (block index, tokens
        (B, 1 + n, D), the patch tokens' positions on the token grid (B, n) (None while all are
        there, in order), grid side)."""
        tokens, grid = self._embed(x, img_size)
        ratios = self._keep_ratios(keep_ratio)
        positions = None
        for index, (block, ratio) in enumerate(zip(self.blocks, ratios)):
            if last is not None and index > last:
                return
            tokens, kept = self._block(block, tokens, ratio, True)
            if kept is not None:
                positions = kept if positions is None else paddle.take_along_axis(positions, kept, axis=1)
            yield index, tokens, positions, grid


class FeatureExtractor(nn.Layer):
    """timm's ``features_only`` model: ``forward(x)`` -> [feature map (B, D, H/16, W/16)] for the
    blocks in ``out_indices`` (an int n: the last n blocks), the blocks after the last one not run.
    ``feature_info``: per output {"module", "num_chs", "reduction"}. SuperViT: its current
    sub-network, dropped tokens as zeros (see ``TokenViT.forward_intermediates``)."""

    def __init__(self, model: TokenViT, out_indices: Union[int, Sequence[int]] = 3):
        super().__init__()
        self.model = model
        self.out_indices = tuple(block_indices(out_indices, len(model.blocks)))
        self.feature_info = [{"module": f"blocks.{i}", "num_chs": model.embed_dim, "reduction": model.patch_size}
                             for i in self.out_indices]
        self.pretrained_cfg = getattr(model, "pretrained_cfg", None)

    def forward(self, x: paddle.Tensor) -> List[paddle.Tensor]:
        return self.model.forward_intermediates(x, list(self.out_indices), intermediates_only=True)

