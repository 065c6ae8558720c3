"""LV-ViT (Jiang et al., "All Tokens Matter: Token Labeling for Training Better Vision
Transformers", NeurIPS 2021): a ViT with a convolutional stem, scaled residuals and a dense
auxiliary head trained on token labels, with MixToken augmentation."""
from __future__ import annotations

from typing import Optional, Set, Tuple

import numpy as np
import paddle
import paddle.nn as nn

from ..builder import build_model
from ..layers import NO_BOX, Block, Box, ConvPatchEmbed, init_vit_weights, random_box, swap_box, token_parameter
from ..registry import make_cfg, model_name, register_model
from .base import TokenViT, check_images

__all__ = ["LVViT", "lvvit_t", "lvvit_s", "lvvit_s_384", "lvvit_m", "lvvit_m_384", "lvvit_m_448",
           "lvvit_l_448", "lvvit_l_512"]


class LVViT(TokenViT):
    """LV-ViT.

    ``model(x)``: images (B, 3, S, S) -> logits (B, C) = head(cls) + aux_weight * max over patch tokens
    of aux_head, in train and eval mode alike (ppim 1.x's output, so CrossEntropyLoss, paddle.Model and
    plain fine-tuning loops work); no MixToken. ``num_classes=0``: the pooled feature (B, D) of
    ``global_pool``: "token" (default) the cls token, "dense" the official code's cls + aux_weight * max
    over the patch tokens (see ``TokenViT``).

    ``model.forward_train(x)``: the official token-labeling training output, see its docstring.
    """

    def __init__(self, img_size: int = 224, patch_size: int = 16, in_chans: int = 3,
                 num_classes: int = 1000, embed_dim: int = 384, depth: int = 16, num_heads: int = 6,
                 mlp_ratio: float = 3.0, qkv_bias: bool = False, drop_rate: float = 0.0,
                 attn_drop_rate: float = 0.0, drop_path_rate: float = 0.0, stem_dim: int = 64,
                 skip_lam: float = 1.0, aux_weight: float = 0.5, mix_token: bool = True,
                 global_pool: str = "token"):
        super().__init__()
        if img_size % patch_size:
            raise ValueError(f"img_size {img_size} is not a multiple of the patch size {patch_size}")
        self.img_size = img_size
        self.patch_size = patch_size
        self.grid_size = img_size // patch_size
        self.in_chans = in_chans
        self.num_features = self.embed_dim = embed_dim
        self.aux_weight = aux_weight
        self.mix_token = mix_token
        self._set_global_pool(global_pool)

        self.patch_embed = ConvPatchEmbed(patch_size, in_chans, embed_dim, stem_dim)
        self.cls_token = token_parameter(self, [1, 1, embed_dim])
        self.pos_embed = token_parameter(self, [1, self.grid_size ** 2 + 1, embed_dim])
        self.pos_drop = nn.Dropout(drop_rate)
        drop_path = np.linspace(0, drop_path_rate, depth)
        self.blocks = nn.LayerList([
            Block(embed_dim, num_heads, mlp_ratio, qkv_bias, drop_rate, attn_drop_rate, float(drop_path[i]),
                  norm_eps=1e-5, skip_lam=skip_lam)
            for i in range(depth)])
        self.norm = nn.LayerNorm(embed_dim, epsilon=1e-5)
        self._set_heads(num_classes)
        self.apply(init_vit_weights)

    def forward_tokens(self, x: paddle.Tensor) -> paddle.Tensor:
        """Patch tokens (B, N, D) -> final-norm tokens (B, 1 + N, D), cls first."""
        return self.run_blocks(self._with_cls(x))

    def _with_cls(self, x: paddle.Tensor) -> paddle.Tensor:
        cls = self.cls_token.expand([x.shape[0], -1, -1])
        return self.pos_drop(paddle.concat([cls, x], axis=1) + self.pos_embed)

    def _embed(self, x: paddle.Tensor, img_size: Optional[int] = None) -> Tuple[paddle.Tensor, int]:
        if img_size is not None:
            raise TypeError(f"{model_name(self)} has one input size ({self.img_size}); img_size is for SuperViT")
        check_images(self, x, (self.img_size,))
        return self._with_cls(self.patch_embed(x).flatten(2).transpose([0, 2, 1])), self.grid_size

    def forward_features(self, x: paddle.Tensor) -> paddle.Tensor:
        """Images (B, 3, S, S) -> final-norm tokens (B, 1 + N, D), no MixToken."""
        return self.run_blocks(self._embed(x)[0])

    def no_weight_decay(self) -> Set[str]:
        """Parameters the official recipe trains without weight decay (timm's convention)."""
        return {"cls_token", "pos_embed"}

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        return self.forward_head(self.forward_features(x))

    def forward_train(self, x: paddle.Tensor, *, bbox: Optional[Box] = None
                      ) -> Tuple[paddle.Tensor, paddle.Tensor, Box]:
        """Token-labeling training output (the official model's training-mode forward).

        x: images (B, 3, S, S). The stem features inside ``bbox`` (a Box, or (top, left, bottom, right):
        token rows top:bottom, columns left:right) are swapped with the batch-flipped sample's (MixToken); ``bbox=None`` draws a
        random box (``layers.random_box``, numpy's global RNG) when ``mix_token`` is on, else mixes
        nothing. Returns cls logits (B, C), aux logits (B, N, C) with the box swapped back so every
        token lines up with its own image's token labels, and the box used (NO_BOX, (0, 0, 0, 0): none).
        Dropout and drop-path follow the layer's train/eval mode.
        """
        check_images(self, x, (self.img_size,))
        if self.num_classes <= 0:
            raise ValueError("forward_train needs the classifier heads; this model was built with num_classes=0")
        feat = self.patch_embed(x)  # (B, D, H, W)
        if bbox is None:
            bbox = random_box(feat.shape[2], feat.shape[3]) if self.mix_token else NO_BOX
        box = Box(*(int(v) for v in bbox))
        x = self.forward_tokens(swap_box(feat, box).flatten(2).transpose([0, 2, 1]))
        cls_logits, aux_logits = self.head(x[:, 0]), self.aux_head(x[:, 1:])
        grid = aux_logits.reshape([x.shape[0], self.grid_size, self.grid_size, -1])
        return cls_logits, swap_box(grid, box, channels_last=True).reshape(aux_logits.shape), box


_RELEASES = "https://github.com/zihangJiang/TokenLabeling/releases/download/"
_BCE = "https://bj.bcebos.com/v1/ai-studio-online/"
_BCE_NAME = "?responseContentDisposition=attachment%3B%20filename%3D"
_PAPER = "https://arxiv.org/abs/2104.10858"


def _weights(source: str, bce_key: str = "", bce_name: str = "", **metrics) -> dict:
    """Weights metadata: the ppim .pdparams (Baidu AI Studio) when there is one, else the official
    PyTorch release, converted on first use. flops_g: GMACs counted by ppim.flops (tests check it);
    published_flops_g: the figure published with the weights, when it differs (the official counter
    also counts norms, activations and softmax)."""
    source_url = _RELEASES + source
    if bce_key:
        url, file_name, fmt = _BCE + bce_key + _BCE_NAME + bce_name, bce_name, "pdparams"
    else:
        url, file_name, fmt = source_url, source.rsplit("/", 1)[1], "pth"
    return {"url": url, "file_name": file_name, "format": fmt, "source_url": source_url, "sha256": None,
            "top1": None, "top5": None, "params_m": None, "flops_g": None, "published_flops_g": None, **metrics}


_ARCHS = {
    "t": dict(embed_dim=240, depth=12, num_heads=4, skip_lam=1.0),
    "s": dict(embed_dim=384, depth=16, num_heads=6, skip_lam=2.0),
    "m": dict(embed_dim=512, depth=20, num_heads=8, skip_lam=2.0),
    "l": dict(embed_dim=768, depth=24, num_heads=12, skip_lam=3.0, stem_dim=128),
}


def _lvvit(name: str, size: str, pretrained, return_transforms: bool, **kwargs):
    return build_model(LVViT, name, pretrained, return_transforms, arch=_ARCHS[size], **kwargs)


def _cfg(name: str, img_size: int, resize: int, weights: dict, **extra) -> dict:
    return make_cfg(name, img_size, resize, weights, architecture="lvvit", model_class="LVViT", paper=_PAPER,
                    **extra)


@register_model(_cfg("lvvit_t", 224, 248, _weights("v0.2.0/lvvit_t.pth", top1=79.1, params_m=8.53, flops_g=2.9)))
def lvvit_t(pretrained=False, return_transforms=False, **kwargs):
    """LV-ViT-T, 224: D 240, depth 12, 4 heads."""
    return _lvvit("lvvit_t", "t", pretrained, return_transforms, **kwargs)


@register_model(_cfg("lvvit_s", 224, 248, _weights(
    "1.0/lvvit_s-26M-224-83.3.pth.tar",
    "bf798145d3094d4ab89f99d87a3f99ad576361f3e05e46f4a622de90ef565e9b", "lvvit_s_224.pdparams",
    top1=83.17, top5=95.87, params_m=26.2, flops_g=6.6)))
def lvvit_s(pretrained=False, return_transforms=False, **kwargs):
    """LV-ViT-S, 224: D 384, depth 16, 6 heads."""
    return _lvvit("lvvit_s", "s", pretrained, return_transforms, **kwargs)


@register_model(_cfg("lvvit_s_384", 384, 384, _weights(
    "1.0/lvvit_s-26M-384-84.4.pth.tar",
    "aa4fa51138ea41cb9b413db1308ccc01319f896413764a2d9a3b6e6a23da1ade", "lvvit_s_384.pdparams",
    top1=84.56, top5=96.39, params_m=26.3, flops_g=21.9, published_flops_g=22.2),
    official_crop_pct=0.9))  # the official validate.py resizes to 426; ppim's figures: Resize(384)
def lvvit_s_384(pretrained=False, return_transforms=False, **kwargs):
    """LV-ViT-S, 384."""
    return _lvvit("lvvit_s_384", "s", pretrained, return_transforms, **kwargs)


@register_model(_cfg("lvvit_m", 224, 248, _weights(
    "1.0/lvvit_m-56M-224-84.0.pth.tar",
    "c34bcd65d1c94089ab269ffb8927133a7fab39c6a0c44dca8e1c995155cabcd0", "lvvit_m_224.pdparams",
    top1=83.88, top5=96.05, params_m=55.8, flops_g=12.7, published_flops_g=16.0,
    flops_note="ppim 1.x listed 16.0G; LV-ViT-M at 224 costs 12.7 GMACs (counted; DynamicViT reports 12.7G)"),
    official_crop_pct=1.0))  # the official cfg: Resize(224); ppim's figures: Resize(248)
def lvvit_m(pretrained=False, return_transforms=False, **kwargs):
    """LV-ViT-M, 224: D 512, depth 20, 8 heads."""
    return _lvvit("lvvit_m", "m", pretrained, return_transforms, **kwargs)


@register_model(_cfg("lvvit_m_384", 384, 384, _weights(
    "1.0/lvvit_m-56M-384-85.4.pth.tar",
    "97d6a53daf55477bbf6e386e00d4763157bcbcea295b402ebb3a26725eaeb772", "lvvit_m_384.pdparams",
    top1=85.34, top5=96.72, params_m=56.0, flops_g=41.6, published_flops_g=42.2)))
def lvvit_m_384(pretrained=False, return_transforms=False, **kwargs):
    """LV-ViT-M, 384."""
    return _lvvit("lvvit_m_384", "m", pretrained, return_transforms, **kwargs)


@register_model(_cfg("lvvit_m_448", 448, 448, _weights(
    "1.1/lvvit_m-56M-448-85.5.pth.tar",
    "b83be46049ac44cfb0821f429e54621020e815f8019944dca81e73a6736b0fdf", "lvvit_m_448.pdparams",
    top1=85.47, top5=96.82, params_m=56.1, flops_g=60.0, published_flops_g=61.0)))
def lvvit_m_448(pretrained=False, return_transforms=False, **kwargs):
    """LV-ViT-M, 448."""
    return _lvvit("lvvit_m_448", "m", pretrained, return_transforms, **kwargs)


@register_model(_cfg("lvvit_l_448", 448, 448, _weights(
    "1.0/lvvit_l-150M-448-86.2.pth.tar",
    "abd5019da732445eae48ed4eaeff874fc2c00d8d43934ff783d77720b09faef8", "lvvit_l_448.pdparams",
    top1=86.09, top5=96.85, params_m=150.5, flops_g=155.1, published_flops_g=157.2)))
def lvvit_l_448(pretrained=False, return_transforms=False, **kwargs):
    """LV-ViT-L, 448: D 768, depth 24, 12 heads, 128-channel stem."""
    return _lvvit("lvvit_l_448", "l", pretrained, return_transforms, **kwargs)


@register_model(_cfg("lvvit_l_512", 512, 512, _weights(
    "1.0/lvvit_l-150M-512-86.4.pth.tar", top1=86.4, params_m=150.66, flops_g=211.6)))
def lvvit_l_512(pretrained=False, return_transforms=False, **kwargs):
    """LV-ViT-L, 512."""
    return _lvvit("lvvit_l_512", "l", pretrained, return_transforms, **kwargs)
