"""SuperViT (Lin et al., "Super Vision Transformer", arXiv 2205.11397): one ViT trained so that every
sub-network (input size, token keep ratio) works. A sub-network resizes the image, adds the positional
embedding of its token grid, and after blocks 3, 6 and 9 keeps only the patch tokens the cls token
attends to most (``layers.keep_top_tokens``, shared by both models).

Two published backbones: ``super_deit_s`` (DeiT-S) and ``super_lvvit_s`` (LV-ViT-S, with the dense
aux head and MixToken). Sub-networks: img_size in {128, 160, 192, 224} x keep_ratio in {0.5, 0.7, 1}.
"""
from __future__ import annotations

import contextlib
from typing import Iterator, List, Optional, Sequence, Set, Tuple, Union

import numpy as np
import paddle
import paddle.nn as nn
import paddle.nn.functional as F

from ..builder import build_model
from ..layers import NO_BOX, Block, Box, ConvPatchEmbed, PatchEmbed, init_vit_weights, random_box, swap_box, token_parameter
from ..registry import make_cfg, register_model
from ..subnet import Subnet
from .base import TokenViT, check_images

__all__ = ["SuperViT", "scale_box", "super_deit_s", "super_lvvit_s"]

IMG_SIZES = (128, 160, 192, 224)   # token grids 8, 10, 12, 14: one positional embedding each
KEEP_RATIOS = (0.5, 0.7, 1.0)      # the published keep ratios (any ratio in (0, 1] runs)
KEEP_BLOCKS = (3, 6, 9)            # 0-based blocks that keep tokens between attention and MLP


def scale_box(box: Box, grid: int, full_grid: int = 14) -> Box:
    """A MixToken box drawn on the full_grid x full_grid token grid, mapped to a grid x grid one the
    way the official SuperViT training loop does it (each coordinate floor-divided by full_grid/grid),
    so the sub-networks trained on one batch mix the same region."""
    scale = full_grid / grid
    return Box(*(int(v // scale) for v in box))


class SuperViT(TokenViT):
    """SuperViT over a DeiT (``stem="deit"``) or LV-ViT (``stem="lvvit"``) backbone.

    ``model(x, *, img_size=None, keep_ratio=None)`` -> logits (B, C), in train and eval mode alike
    (sub-network arguments are keyword-only, so paddle.Model feeds only the image). None means the
    current sub-network (``set_subnet``, default (img_size, 1.0)). x (B, 3, H, W) is resized to
    (img_size, img_size) (bilinear, align_corners=True) when its size differs, so 224 crops feed every
    sub-network. Logits: head(cls), plus ``aux_weight`` * max over the kept patch tokens of aux_head when
    there is an aux head (LV-ViT, 0.25); no MixToken. ``num_classes=0``: the pooled feature (B, D) of
    ``global_pool`` ("token": the cls token; "dense", LV-ViT only: cls + aux_weight * max over tokens).
    ``model.kept_tokens(x)``: where the tokens a sub-network keeps sit on its token grid.

    ``model.forward_train(x, *, img_size, keep_ratio, bbox)``: the official training loops' output,
    see its docstring.
    """

    def __init__(self, img_size: int = 224, patch_size: int = 16, in_chans: int = 3,
                 num_classes: int = 1000, embed_dim: int = 384, depth: int = 12, num_heads: int = 6,
                 mlp_ratio: float = 4.0, qkv_bias: bool = True, norm_eps: float = 1e-6,
                 skip_lam: float = 1.0, stem: str = "deit", stem_dim: int = 64,
                 aux_weight: Optional[float] = None, mix_token: bool = True, drop_rate: float = 0.0,
                 attn_drop_rate: float = 0.0, drop_path_rate: float = 0.0,
                 img_sizes: Sequence[int] = IMG_SIZES, keep_ratios: Sequence[float] = KEEP_RATIOS,
                 keep_blocks: Sequence[int] = KEEP_BLOCKS, global_pool: str = "token"):
        super().__init__()
        if stem not in ("deit", "lvvit"):
            raise ValueError(f"stem must be 'deit' or 'lvvit', got {stem!r}")
        if any(s % patch_size for s in img_sizes):
            raise ValueError(f"img_sizes {tuple(img_sizes)} must be multiples of the patch size {patch_size}")
        self.patch_size = patch_size
        self.img_sizes = tuple(int(s) for s in img_sizes)
        self.keep_ratios = tuple(float(r) for r in keep_ratios)
        self.keep_blocks = tuple(int(i) for i in keep_blocks)
        self.in_chans = in_chans
        self.num_features = self.embed_dim = embed_dim
        self.aux_weight = aux_weight
        self.mix_token = mix_token and aux_weight is not None
        self._set_global_pool(global_pool)

        if stem == "deit":
            self.patch_embed = PatchEmbed(patch_size, in_chans, embed_dim)
        else:
            self.patch_embed = ConvPatchEmbed(patch_size, in_chans, embed_dim, stem_dim)
        self.cls_token = token_parameter(self, [1, 1, embed_dim])
        self.pos_embed_list = nn.ParameterList([
            token_parameter(self, [1, (s // patch_size) ** 2 + 1, embed_dim]) for s in self.img_sizes])
        self.pos_drop = nn.Dropout(drop_rate)
        drop_path = np.linspace(0, drop_path_rate, depth)
        self.blocks = nn.LayerList([
            Block(embed_dim, num_heads, mlp_ratio, qkv_bias, drop_rate, attn_drop_rate, float(drop_path[i]),
                  norm_eps=norm_eps, skip_lam=skip_lam)
            for i in range(depth)])
        self.norm = nn.LayerNorm(embed_dim, epsilon=norm_eps)
        self._set_heads(num_classes)
        self.apply(init_vit_weights)
        self.set_subnet(img_size, 1.0)

    # -- sub-networks (the protocol and the rule: ppim.subnet) --------------------------------
    @property
    def subnets(self) -> List[Subnet]:
        """The published sub-networks, grid by grid."""
        return [Subnet(s, r) for s in self.img_sizes for r in self.keep_ratios]

    @property
    def subnet(self) -> Subnet:
        """The sub-network ``forward`` runs when given none (``set_subnet``)."""
        return Subnet(self.img_size, self.keep_ratio)

    def check_subnet(self, img_size, keep_ratio) -> Subnet:
        """(img_size, keep_ratio) as a checked Subnet, or a ValueError naming what this model takes."""
        return Subnet(img_size, keep_ratio).check(self.img_sizes, self.keep_ratios)

    def set_subnet(self, img_size: int = 224, keep_ratio: float = 1.0) -> None:
        """Make (img_size, keep_ratio) the sub-network ``forward`` runs when given None (and the one
        ``paddle.jit.save`` exports)."""
        self.img_size, self.keep_ratio = self.check_subnet(img_size, keep_ratio)

    @contextlib.contextmanager
    def using_subnet(self, img_size: int, keep_ratio: float) -> Iterator["SuperViT"]:
        """``with model.using_subnet(160, 0.7):`` the current sub-network inside, restored after."""
        previous = (self.img_size, self.keep_ratio)
        self.set_subnet(img_size, keep_ratio)
        try:
            yield self
        finally:
            self.set_subnet(*previous)

    def _subnet(self, img_size, keep_ratio) -> Subnet:
        """The sub-network of a call: its arguments, None meaning the current one's, checked."""
        return self.check_subnet(self.img_size if img_size is None else img_size,
                                  self.keep_ratio if keep_ratio is None else keep_ratio)

    def token_plan(self, img_size: Optional[int] = None,
                   keep_ratio: Optional[float] = None) -> Tuple[int, List[Optional[float]]]:
        img_size, keep_ratio = self._subnet(img_size, keep_ratio)
        return img_size, self._keep_ratios(keep_ratio)

    # -- forward ------------------------------------------------------------------------------
    def forward_stem(self, x: paddle.Tensor, img_size: int) -> paddle.Tensor:
        """Images (B, 3, H, W) -> stem feature map (B, D, img_size/16, img_size/16)."""
        check_images(self, x)
        if x.shape[2] != img_size or x.shape[3] != img_size:
            x = F.interpolate(x, size=[img_size, img_size], mode="bilinear", align_corners=True)
        return self.patch_embed(x)

    def forward_tokens(self, x: paddle.Tensor, img_size: int, keep_ratio: float) -> paddle.Tensor:
        """Patch tokens (B, N, D) -> final-norm tokens (B, 1 + kept, D), cls first."""
        return self.run_blocks(self._with_cls(x, img_size), keep_ratio)

    def _with_cls(self, x: paddle.Tensor, img_size: int) -> paddle.Tensor:
        cls = self.cls_token.expand([x.shape[0], -1, -1])
        return self.pos_drop(paddle.concat([cls, x], axis=1) + self.pos_embed_list[self.img_sizes.index(img_size)])

    def _embed(self, x: paddle.Tensor, img_size: Optional[int]) -> Tuple[paddle.Tensor, int]:
        img_size = self._subnet(img_size, None)[0]
        tokens = self.forward_stem(x, img_size).flatten(2).transpose([0, 2, 1])
        return self._with_cls(tokens, img_size), img_size // self.patch_size

    def _keep_ratios(self, keep_ratio: Optional[float]) -> List[Optional[float]]:
        keep_ratio = self._subnet(None, keep_ratio)[1]
        return [keep_ratio if index in self.keep_blocks else None for index in range(len(self.blocks))]

    def kept_tokens(self, x: paddle.Tensor, *, img_size: Optional[int] = None,
                    keep_ratio: Optional[float] = None) -> List[paddle.Tensor]:
        """Where the patch tokens kept after each keep block sit: one int64 tensor (B, n) per block in
        ``keep_blocks``, positions on the row-major (img_size/16)^2 token grid, in the model's kept
        order (most attended first). keep_ratio 1 keeps every token (positions 0..N-1)."""
        img_size, keep_ratio = self._subnet(img_size, keep_ratio)
        kept = []
        for index, _, positions, grid in self._walk(x, max(self.keep_blocks), img_size, keep_ratio):
            if index in self.keep_blocks:
                if positions is None:
                    positions = paddle.arange(grid * grid, dtype="int64").expand([x.shape[0], grid * grid])
                kept.append(positions)
        return kept

    def forward_features(self, x: paddle.Tensor, *, img_size: Optional[int] = None,
                         keep_ratio: Optional[float] = None) -> paddle.Tensor:
        """Images -> final-norm tokens (B, 1 + kept, D) of the sub-network, no MixToken."""
        img_size, keep_ratio = self._subnet(img_size, keep_ratio)
        feat = self.forward_stem(x, img_size)
        return self.forward_tokens(feat.flatten(2).transpose([0, 2, 1]), img_size, keep_ratio)

    def no_weight_decay(self) -> Set[str]:
        """Parameters the official recipe trains without weight decay (timm's convention)."""
        return {"cls_token", *(f"pos_embed_list.{i}" for i in range(len(self.img_sizes)))}

    def forward(self, x: paddle.Tensor, *, img_size: Optional[int] = None,
                keep_ratio: Optional[float] = None) -> paddle.Tensor:
        return self.forward_head(self.forward_features(x, img_size=img_size, keep_ratio=keep_ratio))

    def forward_train(self, x: paddle.Tensor, *, img_size: Optional[int] = None,
                      keep_ratio: Optional[float] = None, bbox: Optional[Box] = None
                      ) -> Union[paddle.Tensor, Tuple[paddle.Tensor, paddle.Tensor, Box]]:
        """The output the official SuperViT training loops use, for one sub-network.

        With an aux head and ``mix_token`` on (LV-ViT), the stem features inside ``bbox`` (a Box, or
        (top, left, bottom, right), on this sub-network's token grid) are swapped with the batch-flipped sample's (MixToken);
        ``bbox=None`` draws a box on the full grid and maps it with ``scale_box``. The full sub-network
        (largest img_size, keep 1) then returns (cls logits (B, C), aux logits (B, N, C) with the box
        swapped back, the box); every other sub-network returns cls logits (B, C) only (its aux tokens
        were dropped, and the official loop distils only the cls logits there). DeiT: cls logits.
        """
        img_size, keep_ratio = self._subnet(img_size, keep_ratio)
        if self.num_classes <= 0:
            raise ValueError("forward_train needs the classifier heads; this model was built with num_classes=0")
        feat = self.forward_stem(x, img_size)
        grid = img_size // self.patch_size
        box = NO_BOX
        if self.mix_token:
            if bbox is None:
                full_grid = max(self.img_sizes) // self.patch_size
                bbox = scale_box(random_box(full_grid, full_grid), grid, full_grid)
            box = Box(*(int(v) for v in bbox))
            feat = swap_box(feat, box)
        x = self.forward_tokens(feat.flatten(2).transpose([0, 2, 1]), img_size, keep_ratio)
        cls_logits = self.head(x[:, 0])
        if self.aux_weight is None or img_size != max(self.img_sizes) or keep_ratio < 1:
            return cls_logits
        aux_logits = self.aux_head(x[:, 1:])
        # Swap the box back so each image's dense logits line up with its own token labels.
        dense = aux_logits.reshape([x.shape[0], grid, grid, -1])
        return cls_logits, swap_box(dense, box, channels_last=True).reshape(aux_logits.shape), box


_PAPER = "https://arxiv.org/abs/2205.11397"
#: The cfg's "subnets": the published sub-networks' keys, so a tool knows a name offers sub-networks
#: before it builds the model.
_PUBLISHED = [Subnet(s, r).key for s in IMG_SIZES for r in KEEP_RATIOS]
_DRIVE = "https://drive.google.com/uc?export=download&id="


def _subnet_top1(table: Sequence[Sequence[float]]) -> dict:
    """The published 4x3 top-1 table (rows img_size, columns keep ratio) as "<size>x<ratio>" keys."""
    return {Subnet(s, r).key: top1 for s, row in zip(IMG_SIZES, table) for r, top1 in zip(KEEP_RATIOS, row)}


def _weights(file_id: str, file_name: str, params_m: float, flops_g: float, table: Sequence[Sequence[float]],
             prefer_ema: bool = False) -> dict:
    subnet_top1 = _subnet_top1(table)
    return {"url": _DRIVE + file_id, "file_name": file_name, "format": "pth", "prefer_ema": prefer_ema,
            "source_url": f"https://drive.google.com/file/d/{file_id}/view", "sha256": None,
            "top1": subnet_top1["224x1.0"], "top5": None, "params_m": params_m, "flops_g": flops_g,
            "subnet_top1": subnet_top1}


_ARCHS = {
    "super_deit_s": dict(stem="deit", embed_dim=384, depth=12, num_heads=6, mlp_ratio=4.0, qkv_bias=True,
                         norm_eps=1e-6, skip_lam=1.0, aux_weight=None),
    "super_lvvit_s": dict(stem="lvvit", embed_dim=384, depth=16, num_heads=6, mlp_ratio=3.0, qkv_bias=False,
                          norm_eps=1e-5, skip_lam=2.0, stem_dim=64, aux_weight=0.25),
}


def _supervit(name: str, pretrained, return_transforms: bool, **kwargs):
    return build_model(SuperViT, name, pretrained, return_transforms, arch=_ARCHS[name], **kwargs)


@register_model(make_cfg("super_deit_s", 224, 256, _weights(
    "1y2-zU5UvHqGCmWEB41VLbnf7B27BatBL", "super_deit_s.pth", 22.17, 4.6,
    [[73.75, 75.28, 75.79], [77.32, 78.31, 78.53], [78.91, 79.62, 79.87], [79.95, 80.50, 80.62]]),
    architecture="supervit", model_class="SuperViT", paper=_PAPER, subnets=_PUBLISHED))
def super_deit_s(pretrained=False, return_transforms=False, **kwargs):
    """SuperViT over DeiT-S: D 384, depth 12, 6 heads, sub-networks 128-224 x keep 0.5-1."""
    return _supervit("super_deit_s", pretrained, return_transforms, **kwargs)


@register_model(make_cfg("super_lvvit_s", 224, 248, _weights(
    "1xjKrelbFQchaaulMm0bLUftD0h10hRJa", "super_lvvit_s.pth", 26.27, 6.6,
    [[76.64, 79.82, 80.71], [79.81, 81.73, 82.24], [81.12, 82.59, 82.94], [82.11, 83.15, 83.47]],
    prefer_ema=True),  # the published table validates model_ema (main_lvvit.py, use_ema=True)
    architecture="supervit", model_class="SuperViT", paper=_PAPER, subnets=_PUBLISHED))
def super_lvvit_s(pretrained=False, return_transforms=False, **kwargs):
    """SuperViT over LV-ViT-S: D 384, depth 16, 6 heads, dense aux head (weight 0.25)."""
    return _supervit("super_lvvit_s", pretrained, return_transforms, **kwargs)
