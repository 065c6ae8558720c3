"""Layers shared by every model family: patch stems, attention, MLP, the transformer block,
stochastic depth, token keeping (SuperViT) and token mixing (LV-ViT's MixToken).

Parameter names follow the official PyTorch code and ppim 1.x, so checkpoints map one to one.
"""
from __future__ import annotations

import contextlib
import math
from typing import Any, Iterator, NamedTuple, Optional

import numpy as np
import paddle
import paddle.nn as nn
import paddle.nn.functional as F



class Box(NamedTuple):
    """A MixToken / CutMix rectangle on a grid (the token grid, or an image's pixels): rows
    ``top:bottom`` and columns ``left:right``, ends excluded. It unpacks in the order of the official
    LV-ViT MixToken box, (top, left, bottom, right), which ``forward_train`` returns and takes as
    ``bbox``. (The token-label crop boxes handed to roi_align are another thing: see
    ppim.training.token_labels.targets.) Fields may be numpy arrays when many boxes are drawn."""

    top: Any
    left: Any
    bottom: Any
    right: Any

    @property
    def area(self) -> int:
        """Cells inside the box (0 for an empty one)."""
        return max(0, int(self.bottom) - int(self.top)) * max(0, int(self.right) - int(self.left))

    @property
    def empty(self) -> bool:
        return self.bottom <= self.top or self.right <= self.left


#: The box that mixes nothing.
NO_BOX = Box(0, 0, 0, 0)


_trunc_normal = nn.initializer.TruncatedNormal(std=0.02)  # truncated at +-2 std, like timm's


def init_vit_weights(layer: nn.Layer) -> None:
    """timm/DeiT initialisation: truncated-normal Linear weights, zero biases, unit LayerNorm."""
    if isinstance(layer, nn.Linear):
        _trunc_normal(layer.weight)
        if layer.bias is not None:
            nn.initializer.Constant(0.0)(layer.bias)
    elif isinstance(layer, nn.LayerNorm):
        nn.initializer.Constant(1.0)(layer.weight)
        nn.initializer.Constant(0.0)(layer.bias)


@contextlib.contextmanager
def eval_mode(layer: nn.Layer) -> Iterator[nn.Layer]:
    """``with eval_mode(model):`` every sublayer in eval mode inside; after, each has the mode it had
    (a model being trained, or one with frozen norm layers, comes back as it was)."""
    modes = [(sub, sub.training) for sub in layer.sublayers(include_self=True)]
    layer.eval()
    try:
        yield layer
    finally:
        for sub, training in modes:
            sub.training = training


def token_parameter(layer: nn.Layer, shape) -> paddle.Tensor:
    """A cls token or positional embedding parameter, truncated-normal initialised."""
    return layer.create_parameter(shape, default_initializer=_trunc_normal)


class DropPath(nn.Layer):
    """Stochastic depth: drop the whole residual branch per sample while training."""

    def __init__(self, drop_prob: float = 0.0):
        super().__init__()
        self.drop_prob = drop_prob

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        if self.drop_prob == 0.0 or not self.training:
            return x
        keep_prob = 1.0 - self.drop_prob
        shape = [x.shape[0]] + [1] * (x.ndim - 1)
        mask = paddle.floor(keep_prob + paddle.rand(shape, dtype=x.dtype))
        return x / keep_prob * mask

    def extra_repr(self) -> str:
        return f"drop_prob={self.drop_prob}"


class Mlp(nn.Layer):
    """fc1 -> GELU (exact) -> dropout -> fc2 -> dropout."""

    def __init__(self, dim: int, hidden_dim: int, drop: float = 0.0):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_dim, dim)
        self.drop = nn.Dropout(drop)

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        return self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))


class Attention(nn.Layer):
    """Multi-head self-attention. ``forward(x, return_attention=True)`` also returns the
    softmax probabilities (B, heads, N, N), which token keeping needs."""

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = False,
                 attn_drop: float = 0.0, proj_drop: float = 0.0):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"embed dim {dim} is not divisible by {num_heads} heads")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim ** -0.5
        self.qkv = nn.Linear(dim, 3 * dim, bias_attr=None if qkv_bias else False)
        self.attn_drop = nn.Dropout(attn_drop)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x: paddle.Tensor, return_attention: bool = False):
        batch, tokens, dim = x.shape
        qkv = self.qkv(x).reshape([batch, tokens, 3, self.num_heads, self.head_dim])
        qkv = qkv.transpose([2, 0, 3, 1, 4])  # (3, B, heads, N, head_dim)
        q, k, v = qkv[0], qkv[1], qkv[2]
        # Scaling q before the product (N*d multiplies instead of N*N) is what the official code does.
        attn = F.softmax(paddle.matmul(q * self.scale, k, transpose_y=True), axis=-1)
        out = paddle.matmul(self.attn_drop(attn), v)
        out = self.proj_drop(self.proj(out.transpose([0, 2, 1, 3]).reshape([batch, tokens, dim])))
        return (out, attn) if return_attention else out


def kept_token_count(tokens: int, keep_ratio: Optional[float]) -> int:
    """Tokens (cls included) after SuperViT's token keeping on ``tokens`` tokens (cls included):
    cls plus ceil(keep_ratio * tokens) patch tokens, at most all of them; keep_ratio None or >= 1
    keeps everything."""
    if keep_ratio is None or keep_ratio >= 1:
        return tokens
    return 1 + min(math.ceil(keep_ratio * tokens), tokens - 1)


def keep_top_tokens(x: paddle.Tensor, attn: paddle.Tensor, keep_ratio: float,
                    return_index: bool = False):
    """SuperViT's token keeping: the cls token, then the ``ceil(keep_ratio * N)`` patch tokens the cls
    token attends to most, in descending score order (N = token count including cls, as in the
    official code: 197 -> 1 + 99 = 100 at keep 0.5).

    x: (B, N, D) tokens with cls first; attn: (B, heads, N, N) softmax probabilities of the block
    that produced x. N must be static (it is, in a traced graph: only the batch is unknown).
    With ``return_index`` also the kept patch tokens' indices among x's patch tokens (B, kept).
    """
    keep = kept_token_count(x.shape[1], keep_ratio) - 1  # patch tokens kept besides cls
    score = attn[:, :, 0, 1:].mean(axis=1)  # (B, N-1): cls query, averaged over heads
    index = paddle.topk(score, k=keep, axis=1, sorted=True)[1]
    kept = paddle.take_along_axis(x, (index + 1).unsqueeze(-1).expand([-1, -1, x.shape[2]]), axis=1)
    kept = paddle.concat([x[:, :1], kept], axis=1)
    return (kept, index) if return_index else kept


class Block(nn.Layer):
    """Pre-norm transformer block with LV-ViT's residual scaling (skip_lam; 1 for DeiT).

    ``forward(x, keep_ratio)`` with keep_ratio < 1 keeps the most attended tokens between the
    attention and the MLP, as SuperViT does.
    """

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, qkv_bias: bool = False,
                 drop: float = 0.0, attn_drop: float = 0.0, drop_path: float = 0.0,
                 norm_eps: float = 1e-5, skip_lam: float = 1.0):
        super().__init__()
        self.skip_lam = skip_lam
        self.norm1 = nn.LayerNorm(dim, epsilon=norm_eps)
        self.attn = Attention(dim, num_heads, qkv_bias=qkv_bias, attn_drop=attn_drop, proj_drop=drop)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim, epsilon=norm_eps)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), drop=drop)

    def forward(self, x: paddle.Tensor, keep_ratio: Optional[float] = None, return_index: bool = False):
        """x (B, N, D) -> (B, N', D); with ``return_index`` also the kept patch tokens' indices among
        x's patch tokens (B, N' - 1), None when nothing was dropped."""
        index = None
        if keep_ratio is None or keep_ratio >= 1:
            x = x + self.drop_path(self.attn(self.norm1(x))) / self.skip_lam
        else:
            out, attn = self.attn(self.norm1(x), return_attention=True)
            x, index = keep_top_tokens(x + self.drop_path(out) / self.skip_lam, attn, keep_ratio, True)
        x = x + self.drop_path(self.mlp(self.norm2(x))) / self.skip_lam
        return (x, index) if return_index else x


class PatchEmbed(nn.Layer):
    """ViT/DeiT stem: one patch_size x patch_size convolution with stride patch_size.
    (B, 3, H, W) -> (B, D, H/p, W/p)."""

    def __init__(self, patch_size: int = 16, in_chans: int = 3, embed_dim: int = 768):
        super().__init__()
        self.proj = nn.Conv2D(in_chans, embed_dim, patch_size, stride=patch_size)

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        return self.proj(x)


class ConvPatchEmbed(nn.Layer):
    """LV-ViT's "4_2" stem: a 7x7/2 conv and two 3x3 convs (each BN + ReLU, no bias), then a
    (p/2)x(p/2) projection with stride p/2. (B, 3, H, W) -> (B, D, H/p, W/p)."""

    def __init__(self, patch_size: int = 16, in_chans: int = 3, embed_dim: int = 768,
                 stem_dim: int = 64):
        super().__init__()
        self.conv1 = nn.Conv2D(in_chans, stem_dim, 7, stride=2, padding=3, bias_attr=False)
        self.bn1 = nn.BatchNorm2D(stem_dim, momentum=0.9, epsilon=1e-5)
        self.conv2 = nn.Conv2D(stem_dim, stem_dim, 3, padding=1, bias_attr=False)
        self.bn2 = nn.BatchNorm2D(stem_dim, momentum=0.9, epsilon=1e-5)
        self.conv3 = nn.Conv2D(stem_dim, stem_dim, 3, padding=1, bias_attr=False)
        self.bn3 = nn.BatchNorm2D(stem_dim, momentum=0.9, epsilon=1e-5)
        self.proj = nn.Conv2D(stem_dim, embed_dim, patch_size // 2, stride=patch_size // 2)

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.relu(self.bn2(self.conv2(x)))
        x = F.relu(self.bn3(self.conv3(x)))
        return self.proj(x)


def dense_logits(cls_logits: paddle.Tensor, aux_logits: paddle.Tensor, aux_weight: float) -> paddle.Tensor:
    """Token-labeling eval output: cls logits (B, C) + aux_weight * max over tokens of (B, N, C)."""
    if paddle.in_dynamic_mode() and not aux_logits.stop_gradient:
        # Same values, but a gather's gradient: Paddle's CPU max_grad kernel took ~86% of a training
        # step (6 s for a (4, 196, 1000) input, 400x this). Exported graphs keep the plain max.
        index = aux_logits.argmax(axis=1, keepdim=True)
        return cls_logits + aux_weight * paddle.take_along_axis(aux_logits, index, axis=1).squeeze(1)
    return cls_logits + aux_weight * aux_logits.max(axis=1)


def random_box(height: int, width: int) -> Box:
    """CutMix box on an (height, width) grid: area ratio 1 - lam with lam ~ Beta(1, 1) and a uniform
    centre, clipped. Draws from numpy's global generator (seed it with np.random.seed), like the
    official code."""
    cut = math.sqrt(1.0 - np.random.beta(1.0, 1.0))
    cut_h, cut_w = int(height * cut), int(width * cut)
    cy, cx = np.random.randint(height), np.random.randint(width)
    return Box(top=int(np.clip(cy - cut_h // 2, 0, height)), left=int(np.clip(cx - cut_w // 2, 0, width)),
               bottom=int(np.clip(cy + cut_h // 2, 0, height)), right=int(np.clip(cx + cut_w // 2, 0, width)))


def swap_box(x: paddle.Tensor, box: Box, channels_last: bool = False) -> paddle.Tensor:
    """Replace the box of each sample by the same box of the batch-flipped tensor (MixToken).

    x: (B, C, H, W), or (B, H, W, C) with channels_last. Applying it twice restores x.
    """
    box = Box(*(int(v) for v in box))
    if box.empty:
        return x
    height, width = (x.shape[1], x.shape[2]) if channels_last else (x.shape[2], x.shape[3])
    mask = np.zeros((height, width), dtype="float32")
    mask[box.top:box.bottom, box.left:box.right] = 1.0
    mask = paddle.to_tensor(mask[..., None] if channels_last else mask[None], dtype=x.dtype)
    return x * (1 - mask) + paddle.flip(x, axis=[0]) * mask
