"""Classification losses of timm 0.4.x, as paddle Layers."""
from __future__ import annotations

import paddle
import paddle.nn.functional as F
from paddle import nn


class SoftTargetCrossEntropy(nn.Layer):
    """Cross-entropy against soft targets (Mixup/CutMix): mean over the batch of
    sum_c(-target * log_softmax(logits)). logits (B, C) float, target (B, C) float -> scalar."""

    def forward(self, logits: paddle.Tensor, target: paddle.Tensor) -> paddle.Tensor:
        if target.ndim != logits.ndim or target.shape[-1] != logits.shape[-1]:
            raise ValueError(f"SoftTargetCrossEntropy needs a target shaped like the logits {logits.shape}, got "
                             f"{target.shape}; for class indices use LabelSmoothingCrossEntropy or mixup_target")
        log_probs = F.log_softmax(logits.astype("float32"), axis=-1)
        return (-target.astype("float32") * log_probs).sum(axis=-1).mean()


class LabelSmoothingCrossEntropy(nn.Layer):
    """timm's label-smoothing cross-entropy for class indices: mean over the batch of
    (1 - smoothing) * NLL(target) + smoothing * mean_c(-log_softmax). logits (B, C), target (B,) int."""

    def __init__(self, smoothing: float = 0.1):
        super().__init__()
        if not 0.0 <= smoothing < 1.0:
            raise ValueError(f"smoothing must be in [0, 1), got {smoothing}")
        self.smoothing = smoothing
        self.confidence = 1.0 - smoothing

    def forward(self, logits: paddle.Tensor, target: paddle.Tensor) -> paddle.Tensor:
        log_probs = F.log_softmax(logits.astype("float32"), axis=-1)
        index = target.reshape([-1, 1]).astype("int64")
        nll = -paddle.take_along_axis(log_probs, index, axis=-1).squeeze(-1)
        smooth = -log_probs.mean(axis=-1)
        return (self.confidence * nll + self.smoothing * smooth).mean()

    def extra_repr(self) -> str:
        return f"smoothing={self.smoothing}"
