"""Wires token labeling and SuperViT training into the Trainer: which dataset, step and mixing a
run uses, from its settings (tools/train.py's --token-label* flags) and its model."""

from __future__ import annotations

import math
import random
import sys
from typing import Any, Callable, List, NamedTuple, Optional

import numpy as np

from ...errors import InputError
from ...subnet import subnets_of
from ..losses import TokenLabelCrossEntropy
from .dataset import TokenLabelDataset, TokenLabelTransforms
from .formats import TokenLabelError, check_grid, open_token_labels
from .step import TokenLabelMixup, TokenLabelStep, TokenLabelTargets

__all__ = ["TrainingPlan", "plan_training", "repeated_augmentation_order"]


class TrainingPlan(NamedTuple):
    train_set: Any
    step: Optional[Callable]
    mixup: Optional[Callable]
    order: Optional[Callable[[int], List[int]]]


def repeated_augmentation_order(num_samples: int, world_size: int, seed: int, repeats: int = 3
                                ) -> Callable[[int], List[int]]:
    """DeiT's RASampler as a TrainLoader order: each epoch a seeded permutation with every index
    repeated ``repeats`` times in a row (so the copies land on different processes), padded to a
    multiple of the processes, cut to a whole number of 256-image blocks per epoch (for fewer than
    256 images: one pass)."""
    per_rank = int(math.ceil(num_samples * repeats / world_size))
    selected = num_samples // 256 * 256 // world_size or int(math.ceil(num_samples / world_size))

    def order(epoch: int) -> List[int]:
        perm = np.random.default_rng([seed, epoch]).permutation(num_samples)
        indices = np.repeat(perm, repeats).tolist()
        total = per_rank * world_size
        indices += indices[:total - len(indices)]
        return indices[:selected * world_size]

    return order


def plan_training(config, model, train_set, num_classes: int, criterion, mixup, world_size: int = 1
                  ) -> TrainingPlan:
    """The dataset, step, mixing and sample order of a run (None: the loop's defaults).

    - super models: SuperStep (LV-ViT: TokenLabelCrossEntropy, token labels when given; DeiT: the
      run's criterion), the same sub-networks on every process, repeated augmentation on request;
    - ``config.token_label``: TokenLabelStep on forward_train's (cls, aux, box);
    - ``config.token_label_data``: a TokenLabelDataset of the labels (either format) with the
      label-aware transforms, and Mixup/CutMix mixing the token-label target.
    """
    supernet = bool(subnets_of(model))
    dense = getattr(model, "aux_weight", None) is not None and hasattr(model, "forward_train")
    if config.token_label_data and not config.token_label:
        raise InputError("--token-label-data needs --token-label")
    if config.token_label and not dense:
        raise InputError(f"--token-label trains an aux (per-token) head: {config.model} has none; use an "
                         f"LV-ViT model (lvvit_*, super_lvvit_s)")
    order = None
    if getattr(config, "repeated_aug", False):
        order = repeated_augmentation_order(len(train_set), world_size, config.seed)
    if not (supernet or config.token_label):
        return TrainingPlan(train_set, None, mixup, order)

    targets = None
    if dense:
        shape = None
        if config.token_label_data:
            grid = max(getattr(model, "img_sizes", [model.img_size])) // model.patch_size
            if config.token_label_size != grid:
                raise InputError(f"--token-label-size {config.token_label_size}: the labels are aligned to "
                                 f"the model's token grid, {grid} x {grid} for {config.model} at this size; "
                                 f"pass --token-label-size {grid}")
            try:
                labels = open_token_labels(config.token_label_data)
                train_set = TokenLabelDataset(train_set, labels, TokenLabelTransforms(train_set.transforms),
                                              num_classes)
                if check_grid(train_set.shape, grid, str(config.token_label_data)):
                    print(f"note: token label maps of {train_set.shape[2]} x {train_set.shape[3]} are resized to "
                          f"the {grid} x {grid} token grid by roi_align", file=sys.stderr)
            except TokenLabelError as error:
                raise TokenLabelError(f"--token-label-data: {error}") from None
            shape = train_set.shape
        targets = TokenLabelTargets(num_classes, shape, config.token_label_size, config.smoothing)
        criterion = TokenLabelCrossEntropy(config.dense_weight, config.cls_weight, mixup is not None,
                                           num_classes, config.ground_truth)
        if mixup is not None:
            mixup = TokenLabelMixup(mixup, targets)
    if supernet:
        from ..supervit_step import SuperStep

        return TrainingPlan(train_set, SuperStep(criterion, targets, random.Random(config.seed)), mixup, order)
    return TrainingPlan(train_set, TokenLabelStep(criterion, targets), mixup, order)
