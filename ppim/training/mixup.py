"""Mixup and CutMix with timm 0.4.x semantics (Zhang et al. 2017; Yun et al. 2019).

Random numbers come from numpy's global RNG in timm's order: per batch, ``rand`` (mix at all, prob),
``rand`` (CutMix instead of Mixup, switch_prob; only when both are enabled), ``beta`` (lam), then the
CutMix box (``randint`` centre y, x). Seed ``numpy.random`` for repeatable runs. Images are paired with
the batch flipped (image i with image B - 1 - i), so the batch size must be even.
"""
from __future__ import annotations

from typing import Optional, Sequence, Tuple, Union

import numpy as np
import paddle
import paddle.nn.functional as F

from ..layers import Box



def one_hot(target: paddle.Tensor, num_classes: int, on_value: float = 1.0, off_value: float = 0.0) -> paddle.Tensor:
    """Class indices (B,) -> float32 (B, num_classes) with ``on_value`` at the class, else ``off_value``."""
    hot = F.one_hot(target.reshape([-1]).astype("int64"), num_classes)
    return hot * (on_value - off_value) + off_value


def mixup_target(target: paddle.Tensor, num_classes: int, lam: Union[float, np.ndarray, paddle.Tensor] = 1.0,
                 smoothing: float = 0.0) -> paddle.Tensor:
    """The soft target of a mixed batch: lam * smooth_one_hot(target) + (1 - lam) * smooth_one_hot(flipped
    target), smoothing putting smoothing / C on every class. ``lam`` a float or (B, 1) per image."""
    off_value = smoothing / num_classes
    on_value = 1.0 - smoothing + off_value
    y1 = one_hot(target, num_classes, on_value, off_value)
    y2 = one_hot(target.reshape([-1]).flip(0), num_classes, on_value, off_value)
    if not isinstance(lam, (int, float)):
        lam = paddle.to_tensor(np.asarray(lam, dtype=np.float32).reshape([-1, 1]))
    return y1 * lam + y2 * (1.0 - lam)


def rand_bbox(img_shape: Sequence[int], lam: float, margin: float = 0.0, count: Optional[int] = None):
    """A CutMix box of area about (1 - lam) of an image (..., H, W): sides H*sqrt(1-lam), W*sqrt(1-lam)
    (truncated) around a uniform random centre, clipped to the image (a Box; its fields are arrays of
    ``count`` boxes when given)."""
    ratio = np.sqrt(1 - lam)
    img_h, img_w = img_shape[-2:]
    cut_h, cut_w = int(img_h * ratio), int(img_w * ratio)
    margin_y, margin_x = int(margin * cut_h), int(margin * cut_w)
    cy = np.random.randint(0 + margin_y, img_h - margin_y, size=count)
    cx = np.random.randint(0 + margin_x, img_w - margin_x, size=count)
    return Box(top=np.clip(cy - cut_h // 2, 0, img_h), left=np.clip(cx - cut_w // 2, 0, img_w),
               bottom=np.clip(cy + cut_h // 2, 0, img_h), right=np.clip(cx + cut_w // 2, 0, img_w))


def rand_bbox_minmax(img_shape: Sequence[int], minmax: Tuple[float, float], count: Optional[int] = None):
    """A CutMix box whose sides are uniform in [min, max) of the image's, placed uniformly."""
    img_h, img_w = img_shape[-2:]
    cut_h = np.random.randint(int(img_h * minmax[0]), int(img_h * minmax[1]), size=count)
    cut_w = np.random.randint(int(img_w * minmax[0]), int(img_w * minmax[1]), size=count)
    top = np.random.randint(0, img_h - cut_h, size=count)
    left = np.random.randint(0, img_w - cut_w, size=count)
    return Box(top=top, left=left, bottom=top + cut_h, right=left + cut_w)


def cutmix_bbox_and_lam(img_shape: Sequence[int], lam: float, ratio_minmax: Optional[Tuple[float, float]] = None,
                        correct_lam: bool = True, count: Optional[int] = None):
    """The CutMix box and lam; with ``correct_lam`` (or minmax boxes) lam = 1 - box area / image area,
    i.e. what the clipped box really kept."""
    if ratio_minmax is not None:
        box = rand_bbox_minmax(img_shape, ratio_minmax, count=count)
    else:
        box = rand_bbox(img_shape, lam, count=count)
    if correct_lam or ratio_minmax is not None:
        lam = 1.0 - (box.bottom - box.top) * (box.right - box.left) / float(img_shape[-2] * img_shape[-1])
    return box, lam


class Mixup:
    """Mixup / CutMix of a batch and its soft target (timm 0.4.x).

    ``mixup_alpha`` / ``cutmix_alpha``: Beta parameters (0 disables that kind); ``cutmix_minmax``:
    box sides as fractions of the image instead of from lam; ``prob``: chance to mix at all;
    ``switch_prob``: chance of CutMix when both are enabled; ``mode``: 'batch' (one lam and box for the
    batch), 'pair' (per pair i, B-1-i) or 'elem' (per image); ``correct_lam``: lam from the clipped box;
    ``label_smoothing`` and ``num_classes`` for the target. ``mixup_enabled = False`` turns it off
    (timm's --mixup-off-epoch)."""

    def __init__(self, mixup_alpha: float = 0.8, cutmix_alpha: float = 1.0,
                 cutmix_minmax: Optional[Tuple[float, float]] = None, prob: float = 1.0, switch_prob: float = 0.5,
                 mode: str = "batch", correct_lam: bool = True, label_smoothing: float = 0.1,
                 num_classes: int = 1000):
        if mode not in ("batch", "pair", "elem"):
            raise ValueError(f"mixup mode {mode!r} is not one of 'batch', 'pair', 'elem'")
        if cutmix_minmax is not None:
            if len(cutmix_minmax) != 2:
                raise ValueError(f"cutmix_minmax needs (min, max), got {cutmix_minmax}")
            cutmix_alpha = 1.0  # as timm: minmax boxes imply CutMix
        if mixup_alpha <= 0 and cutmix_alpha <= 0:
            raise ValueError("Mixup needs mixup_alpha > 0 or cutmix_alpha > 0")
        self.mixup_alpha = mixup_alpha
        self.cutmix_alpha = cutmix_alpha
        self.cutmix_minmax = cutmix_minmax
        self.mix_prob = prob
        self.switch_prob = switch_prob
        self.mode = mode
        self.correct_lam = correct_lam
        self.label_smoothing = label_smoothing
        self.num_classes = num_classes
        self.mixup_enabled = True

    def _draw_lam(self, use_cutmix, size=None):
        return np.where(use_cutmix, np.random.beta(self.cutmix_alpha, self.cutmix_alpha, size=size),
                        np.random.beta(self.mixup_alpha, self.mixup_alpha, size=size))

    def params_per_elem(self, batch_size: int) -> Tuple[np.ndarray, np.ndarray]:
        """(lam (B,) float32, use_cutmix (B,) bool), timm's _params_per_elem."""
        lam = np.ones(batch_size, dtype=np.float32)
        use_cutmix = np.zeros(batch_size, dtype=bool)
        if self.mixup_enabled:
            if self.mixup_alpha > 0 and self.cutmix_alpha > 0:
                use_cutmix = np.random.rand(batch_size) < self.switch_prob
                lam_mix = self._draw_lam(use_cutmix, batch_size)
            elif self.mixup_alpha > 0:
                lam_mix = np.random.beta(self.mixup_alpha, self.mixup_alpha, size=batch_size)
            else:
                use_cutmix = np.ones(batch_size, dtype=bool)
                lam_mix = np.random.beta(self.cutmix_alpha, self.cutmix_alpha, size=batch_size)
            lam = np.where(np.random.rand(batch_size) < self.mix_prob, lam_mix.astype(np.float32), lam)
        return lam, use_cutmix

    def params_per_batch(self) -> Tuple[float, bool]:
        """(lam, use_cutmix) for the whole batch, timm's _params_per_batch."""
        lam, use_cutmix = 1.0, False
        if self.mixup_enabled and np.random.rand() < self.mix_prob:
            if self.mixup_alpha > 0 and self.cutmix_alpha > 0:
                use_cutmix = bool(np.random.rand() < self.switch_prob)
                alpha = self.cutmix_alpha if use_cutmix else self.mixup_alpha
                lam = float(np.random.beta(alpha, alpha))
            elif self.mixup_alpha > 0:
                lam = float(np.random.beta(self.mixup_alpha, self.mixup_alpha))
            else:
                use_cutmix = True
                lam = float(np.random.beta(self.cutmix_alpha, self.cutmix_alpha))
        return lam, use_cutmix

    def _cutmix_box(self, shape, lam) -> Tuple[Box, float]:
        box, lam = cutmix_bbox_and_lam(shape, lam, self.cutmix_minmax, self.correct_lam)
        return Box(*(int(v) for v in box)), float(lam)

    def mix(self, x: paddle.Tensor) -> Tuple[paddle.Tensor, Union[float, np.ndarray], Optional[Box]]:
        """Mix images (B, C, H, W) (a new tensor; ``x`` is left alone). Returns (mixed, lam, box):
        lam a float ('batch') or float32 (B,) per image, the Box of a batch-mode CutMix (image pixels)
        else None (token labeling mixes its label maps with it)."""
        if x.shape[0] % 2:
            raise ValueError(f"Mixup pairs image i with image B-1-i: the batch size must be even, got {x.shape[0]}")
        if self.mode == "batch":
            return self._mix_batch(x)
        return self._mix_each(x, pairs=self.mode == "pair")

    def _mix_batch(self, x):
        lam, use_cutmix = self.params_per_batch()
        if lam == 1.0:
            return x, 1.0, None
        flipped = x.flip(0)
        if not use_cutmix:
            return x * lam + flipped * (1.0 - lam), lam, None
        box, lam = self._cutmix_box(x.shape, lam)
        mixed = x.clone()
        if not box.empty:
            rows, cols = slice(box.top, box.bottom), slice(box.left, box.right)
            mixed[:, :, rows, cols] = flipped[:, :, rows, cols]
        return mixed, lam, box

    def _mix_each(self, x, pairs: bool):
        batch_size = x.shape[0]
        drawn = batch_size // 2 if pairs else batch_size
        lam_batch, use_cutmix = self.params_per_elem(drawn)
        rows = [x[i] for i in range(batch_size)]
        for i in range(drawn):
            j = batch_size - i - 1
            lam = float(lam_batch[i])
            if lam == 1.0:
                continue
            if use_cutmix[i]:
                box, lam = self._cutmix_box(x[i].shape, lam)
                lam_batch[i] = lam
                for a, b in ((i, j), (j, i)) if pairs else ((i, j),):
                    row = x[a].clone()
                    if not box.empty:
                        row[:, box.top:box.bottom, box.left:box.right] = x[b][:, box.top:box.bottom, box.left:box.right]
                    rows[a] = row
            else:
                for a, b in ((i, j), (j, i)) if pairs else ((i, j),):
                    rows[a] = x[a] * lam + x[b] * (1.0 - lam)
        if pairs:
            lam_batch = np.concatenate([lam_batch, lam_batch[::-1]])
        return paddle.stack(rows), lam_batch.astype(np.float32), None

    def __call__(self, x: paddle.Tensor, target: paddle.Tensor) -> Tuple[paddle.Tensor, paddle.Tensor]:
        """(images (B, C, H, W), class indices (B,)) -> (mixed images, soft target (B, num_classes))."""
        mixed, lam, _ = self.mix(x)
        return mixed, mixup_target(target, self.num_classes, lam, self.label_smoothing)

    def __repr__(self) -> str:
        return (f"Mixup(mixup_alpha={self.mixup_alpha}, cutmix_alpha={self.cutmix_alpha}, "
                f"cutmix_minmax={self.cutmix_minmax}, prob={self.mix_prob}, switch_prob={self.switch_prob}, "
                f"mode={self.mode}, label_smoothing={self.label_smoothing}, num_classes={self.num_classes})")
