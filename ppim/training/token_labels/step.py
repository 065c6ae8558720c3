"""Token-label training plug-ins for the Trainer: the target builder, Mixup/CutMix with label maps,
and the per-batch step that trains ``forward_train``'s (cls, aux, box) with TokenLabelCrossEntropy.
"""

from __future__ import annotations

from typing import Callable, Optional

import paddle

from ..engine import unwrapped_step
from ..losses import TokenLabelCrossEntropy
from ..mixup import Mixup, mixup_target
from .dataset import packed_width, unpack_labels
from .formats import LabelShape
from .targets import mix_target, token_label_target

__all__ = ["TokenLabelTargets", "TokenLabelMixup", "TokenLabelStep"]


class TokenLabelTargets:
    """Turns what the loader (or a mixup) gives into the target TokenLabelCrossEntropy takes:
    packed token labels (B, L) -> (B, C, 2 + S*S) (token_labels.targets); class ids (B,) -> smoothed
    one-hot (B, C); soft targets (B, C) or (B, C, 2 + N) pass through.

    shape: the label maps' (2, k, H, W), or None without token-label data.
    """

    def __init__(self, num_classes: int, shape: Optional[LabelShape] = None, label_size: int = 14,
                 smoothing: float = 0.1):
        self.num_classes, self.shape = int(num_classes), shape
        self.label_size, self.smoothing = int(label_size), float(smoothing)

    def is_packed(self, targets: paddle.Tensor) -> bool:
        return (self.shape is not None and targets.ndim == 2 and targets.shape[1] == packed_width(self.shape)
                and targets.dtype == paddle.float32)

    def __call__(self, targets: paddle.Tensor, lam=1.0) -> paddle.Tensor:
        if self.is_packed(targets):
            truth, coords, maps = unpack_labels(targets, self.shape)
            return token_label_target(maps, coords, truth, self.num_classes, self.label_size, self.smoothing, lam)
        if targets.ndim == 1:
            return mixup_target(targets, self.num_classes, lam, self.smoothing)
        return mix_target(targets, lam)


class TokenLabelMixup:
    """Mixup/CutMix of the images (``mixup.mix``: timm's draws) with the token-label target mixed by
    the same lam, the official TokenLabelMixup: every column (ground truth, cls, tokens) is mixed
    with the batch-flipped sample's."""

    def __init__(self, mixup: Mixup, targets: TokenLabelTargets):
        self.mixup, self.targets = mixup, targets

    def __call__(self, images: paddle.Tensor, targets: paddle.Tensor):
        mixed, lam, _ = self.mixup.mix(images)
        return mixed, self.targets(targets, lam)


class TokenLabelStep:
    """One batch of token-label training: ``forward_train`` -> (cls, aux, box), one backward of
    TokenLabelCrossEntropy (MixToken's box mixes the cls target). The Trainer's ``step`` hook."""

    def __init__(self, criterion: TokenLabelCrossEntropy, targets: TokenLabelTargets):
        self.criterion, self.targets = criterion, targets

    def __call__(self, model: paddle.nn.Layer, images: paddle.Tensor, targets: paddle.Tensor,
                 backward: Callable[[paddle.Tensor], None]) -> paddle.Tensor:
        target = self.targets(targets)

        def work(layer: paddle.nn.Layer) -> paddle.Tensor:
            loss = self.criterion(layer.forward_train(images), target)
            backward(loss)
            return loss

        return unwrapped_step(model, work)
