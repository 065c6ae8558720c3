"""Classification losses of timm 0.4.x and TokenLabeling's token-label losses, as paddle Layers."""
from __future__ import annotations

from typing import Sequence, Tuple

import paddle
import paddle.nn.functional as F
from paddle import nn

from ..layers import Box


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


_SOFT_TARGET_CE = SoftTargetCrossEntropy()


def soft_target_cross_entropy(logits: paddle.Tensor, target: paddle.Tensor) -> paddle.Tensor:
    """mean over rows of sum(-target * log_softmax(logits)); logits (R, C), target (R, C) or a
    (R/n, C) target repeated n times (the official rule), computed in float32 (AMP-safe)."""
    if target.shape[0] != logits.shape[0]:
        target = paddle.tile(target, [logits.shape[0] // target.shape[0], 1])
    return _SOFT_TARGET_CE(logits, target)


def kl_div_batchmean(logits: paddle.Tensor, target_probs: paddle.Tensor) -> paddle.Tensor:
    """torch.nn.KLDivLoss(reduction='batchmean')(log_softmax(logits), target_probs): sum of
    p * (log p - log q) over all elements, divided by the batch size; p = 0 terms are 0."""
    log_q = F.log_softmax(logits.astype("float32"), axis=-1)
    p = target_probs.astype("float32")
    log_p = paddle.log(paddle.where(p > 0, p, paddle.ones_like(p)))
    return (p * (log_p - log_q)).sum() / logits.shape[0]


class TokenLabelSoftTargetCrossEntropy(nn.Layer):
    """Soft-target cross entropy that also takes a (B, C, 2) token-label target (ground truth,
    cls target) and uses its cls target."""

    def forward(self, x: paddle.Tensor, target: paddle.Tensor) -> paddle.Tensor:
        if target.ndim == 3 and target.shape[-1] == 2:
            target = target[:, :, 1]
        return soft_target_cross_entropy(x, target)


def mixtoken_lam(box: Sequence[int], num_tokens: int) -> float:
    """MixToken's cls mixing weight: 1 - box area / number of tokens (box: a ppim.layers.Box)."""
    return 1.0 - Box(*box).area / num_tokens


class TokenLabelCrossEntropy(nn.Layer):
    """Token labeling loss (LV-ViT): cls_weight * CE(cls, cls target mixed by MixToken's lam) +
    dense_weight * CE(every token, its token target).

    Input x = (cls (B, C), aux (B, N, C), box (a ppim.layers.Box on the token grid)); target (B, C)
    (a soft or one-hot target used for the cls and every token) or (B, C, 2 + N) (ground truth,
    cls target, N token targets; see token_labels.targets). ground_truth=True leans the cls
    target towards the ground truth: weight 0.5 where the two agree on the top class, else 0.1.
    """

    def __init__(self, dense_weight: float = 1.0, cls_weight: float = 1.0, mixup_active: bool = True,
                 classes: int = 1000, ground_truth: bool = False):
        super().__init__()
        if dense_weight + cls_weight <= 0:
            raise ValueError("dense_weight + cls_weight must be positive")
        self.dense_weight = dense_weight
        self.cls_weight = cls_weight
        self.mixup_active = mixup_active  # kept for the official signature; the rule ignores it
        self.classes = classes
        self.ground_truth = ground_truth

    def targets(self, target: paddle.Tensor, box: Sequence[int],
                num_tokens: int) -> Tuple[paddle.Tensor, paddle.Tensor]:
        """(cls target (B, C) mixed by MixToken's lam, token targets (B*N, C))."""
        batch, classes = target.shape[0], target.shape[1]
        if target.ndim == 2:
            cls_target = target
            aux_target = paddle.tile(target, [1, num_tokens]).reshape([batch * num_tokens, classes])
        else:
            cls_target = target[:, :, 1]
            if self.ground_truth:
                truth = target[:, :, 0]
                agree = (truth.argmax(-1) == cls_target.argmax(-1)).astype(cls_target.dtype)
                ratio = (0.9 - 0.4 * agree).unsqueeze(-1)
                cls_target = cls_target * ratio + truth * (1 - ratio)
            aux_target = target[:, :, 2:].transpose([0, 2, 1]).reshape([-1, classes])
        lam = mixtoken_lam(box, num_tokens)
        if lam < 1:
            cls_target = lam * cls_target + (1 - lam) * paddle.flip(cls_target, axis=[0])
        return cls_target, aux_target

    def loss_and_target(self, x, target: paddle.Tensor) -> Tuple[paddle.Tensor, paddle.Tensor]:
        """(the loss, the MixToken-mixed cls target (B, C)); SuperViT trains its smaller
        keep-1 sub-network against that target."""
        cls, aux, box = x
        cls_target, aux_target = self.targets(target, box, aux.shape[1])
        loss_cls = soft_target_cross_entropy(cls, cls_target)
        loss_aux = soft_target_cross_entropy(aux.reshape([-1, aux.shape[-1]]), aux_target)
        return self.cls_weight * loss_cls + self.dense_weight * loss_aux, cls_target

    def forward(self, x, target: paddle.Tensor) -> paddle.Tensor:
        return self.loss_and_target(x, target)[0]
