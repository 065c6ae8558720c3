"""Token-label targets: score maps -> per-token soft targets on the model's grid, and their mixing.

The rules are TokenLabeling's (tlt/data/mixup.py):
1. the top-k scores of each sample are scattered into a dense map (B, C, H, W), zeros elsewhere;
2. the random-resized-crop box (top, left, bottom, right) in label-map cells, minus half a cell,
   is handed to roi_align *as if* it were (x1, y1, x2, y2): the official code does this, so the
   box is read transposed; it is kept on purpose so labels made for the official code train alike;
3. roi_align (aligned=False, adaptive sampling) gives the token grid S x S and, separately, one
   1 x 1 cell for the cls token; both are softmaxed over classes and label-smoothed as
   ``p * on_value + off_value``;
4. the target is (B, C, 2 + S*S): column 0 the smoothed one-hot ground truth, 1 the cls target,
   2: the tokens in row-major order; mixup/cutmix mix it with its batch flip by lam.
"""

from __future__ import annotations

from typing import Union

import numpy as np
import paddle
import paddle.nn.functional as F
from paddle.vision.ops import roi_align

from ..losses import mixtoken_lam  # noqa: F401  (part of this module's API)
from ..mixup import one_hot

__all__ = ["smoothing_values", "dense_label_maps", "align_label_maps", "token_label_target",
           "mix_target", "mixtoken_lam"]

Lam = Union[float, np.ndarray, paddle.Tensor]


def smoothing_values(smoothing: float, num_classes: int):
    """(on_value, off_value) of label smoothing, timm's rule."""
    off = smoothing / num_classes
    return 1.0 - smoothing + off, off


def dense_label_maps(labels: paddle.Tensor, num_classes: int) -> paddle.Tensor:
    """Scatter top-k score maps (B, 2, k, H, W) into dense class maps (B, C, H, W) float32."""
    scores = labels[:, 0].astype("float32")
    index = labels[:, 1].astype("int64")  # in range: the dataset checks each file against C
    batch, _, height, width = scores.shape
    maps = paddle.zeros([batch, num_classes, height, width], dtype="float32")
    return paddle.put_along_axis(maps, index, scores, axis=1, reduce="assign")


def align_label_maps(maps: paddle.Tensor, coords: paddle.Tensor, label_size: int):
    """Crop each dense map (B, C, H, W) to its random-resized-crop box on the token grid.

    coords (B, 4): the crop as fractions of the image, (top, left, height, width).
    Returns the un-normalised (cls (B, C), tokens (B, C, S*S)) with S = label_size.
    """
    batch = maps.shape[0]
    coords = coords.astype("float32")
    box = paddle.concat([coords[:, :2], coords[:, :2] + coords[:, 2:]], axis=1)
    # official order kept on purpose: (top, left, bottom, right) where roi_align reads (x1, y1, x2, y2)
    box = box * maps.shape[3] - 0.5
    boxes_num = paddle.ones([batch], dtype="int32")

    def pool(size: int) -> paddle.Tensor:
        out = roi_align(maps, box, boxes_num, output_size=size, spatial_scale=1.0, sampling_ratio=-1,
                        aligned=False)
        return out.reshape([batch, maps.shape[1], size * size])

    return pool(1)[:, :, 0], pool(label_size)


def token_label_target(labels: paddle.Tensor, coords: paddle.Tensor, ground_truth: paddle.Tensor,
                       num_classes: int, label_size: int, smoothing: float = 0.0,
                       lam: Lam = 1.0) -> paddle.Tensor:
    """The training target (B, C, 2 + S*S) from token labels (see the module docstring).

    labels (B, 2, k, H, W) top-k scores and indices; coords (B, 4) crop fractions (top, left,
    height, width); ground_truth (B,) class ids; lam: the mixup/cutmix mixing weight (scalar or
    per sample), mixing each target with the batch-flipped one. With label_size 1 the target is
    (B, C, 2): ground truth and cls target only.
    """
    on, off = smoothing_values(smoothing, num_classes)
    cls, tokens = align_label_maps(dense_label_maps(labels, num_classes), coords, label_size)
    soft = cls.unsqueeze(2) if label_size == 1 else paddle.concat([cls.unsqueeze(2), tokens], axis=2)
    soft = F.softmax(soft, axis=1) * on + off
    target = paddle.concat([one_hot(ground_truth, num_classes, on, off).unsqueeze(2), soft], axis=2)
    return mix_target(target, lam)


def mix_target(target: paddle.Tensor, lam: Lam) -> paddle.Tensor:
    """target * lam + flip(target) * (1 - lam) over the batch; lam a scalar or one per sample."""
    if isinstance(lam, (float, int)):
        if lam == 1.0:
            return target
    else:
        lam = paddle.to_tensor(np.asarray(lam, dtype="float32")) if not isinstance(lam, paddle.Tensor) \
            else lam.astype("float32")
        lam = lam.reshape([-1] + [1] * (target.ndim - 1))
    return target * lam + paddle.flip(target, axis=[0]) * (1 - lam)
