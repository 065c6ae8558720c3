"""Training images with their token labels, augmented together.

Label-aware augmentation follows TokenLabeling's label_transforms_factory: flips and RandAugment's
geometric ops move the score maps with the image, then the random-resized crop runs last on the
image only and its coordinates travel with the sample; the maps are cropped later, on the token
grid, by roi_align (token_labels.targets). Each sample's label is packed into one float32 vector
(ground truth, crop coordinates, maps) so the generic loader batches it like a class id.
"""

from __future__ import annotations

from typing import Tuple

import numpy as np
from PIL import Image

from ...data import ImageDataset, load_image
from ...transforms import TrainTransforms, load_rgb
from .formats import LabelShape, OfficialLabels, TokenLabelError, check_label, label_key

__all__ = ["TokenLabelTransforms", "TokenLabelDataset", "pack_label", "unpack_labels", "packed_width"]

_HEAD = 5  # ground truth, then the crop (top, left, height, width) as fractions of the image


def packed_width(shape: LabelShape) -> int:
    """Length of one packed label vector for maps of ``shape`` (2, k, H, W)."""
    return _HEAD + int(np.prod(shape))


def pack_label(ground_truth: int, coords, label: np.ndarray) -> np.ndarray:
    """[ground truth, top, left, height, width, maps...] as float32 (exact: float16 maps, ids < 2^24)."""
    return np.concatenate([np.asarray([ground_truth, *coords], np.float32), label.astype(np.float32).ravel()])


def unpack_labels(packed, shape: LabelShape):
    """A batch of packed vectors (B, L) -> (ground truth (B,) int64, coords (B, 4), maps (B, *shape))."""
    ground_truth = packed[:, 0].astype("int64")
    return ground_truth, packed[:, 1:_HEAD], packed[:, _HEAD:].reshape([-1, *shape])


class TokenLabelTransforms:
    """(image, label [2, k, H, W]) -> (normalized CHW float32, moved label, crop coords (4,)).

    Reuses the steps of a TrainTransforms in the official token-labeling order: flips (maps
    flipped too), RandAugment (geometric ops move the maps: nearest-neighbour, uncovered cells
    score 0), the random-resized crop (image only; its coordinates are returned), normalization
    and random erasing (image only).
    """

    def __init__(self, transforms: TrainTransforms):
        self.transforms = transforms

    def __call__(self, image, label: np.ndarray) -> Tuple[np.ndarray, np.ndarray, Tuple[float, ...]]:
        steps = self.transforms
        image = load_rgb(image)
        for flip in steps.flips:
            flipped = flip.sample(image.size)
            image, label = flip.apply(image, flipped), flip.apply_map(label, flipped)
        if steps.augment is not None:
            params = steps.augment.sample(image.size)
            image = steps.augment.apply(image, params)
            stacked = label.reshape(-1, *label.shape[2:]).astype(np.float32)
            label = steps.augment.apply_map(stacked, params, Image.NEAREST, 0.0).reshape(label.shape)
        crop = steps.crop.sample(image.size)
        return steps.finish(steps.crop.apply(image, crop)), label, crop.coords

    def __repr__(self) -> str:
        return f"TokenLabelTransforms({self.transforms!r})"


class TokenLabelDataset(ImageDataset):
    """``dataset[i]`` -> (CHW float32 image, packed label vector) for the images of ``base`` and the
    token labels ``labels`` (a reader from open_token_labels) keyed by ``label_key(path)``.

    Every label must have one shape and name classes below ``num_classes``; a packed label set
    must cover every image (checked here, before training starts).
    """

    def __init__(self, base: ImageDataset, labels, transforms: TokenLabelTransforms, num_classes: int):
        super().__init__(base.samples, transforms)
        self.root = getattr(base, "root", None)
        self.labels_store = labels
        self.num_classes = int(num_classes)
        if isinstance(labels, OfficialLabels):  # one file per image: each is checked as it is read
            labels.settle_shape([label_key(path) for path, _ in self.samples])
        else:  # an index lookup per image is cheap, and the memory-mapped rows are checked now
            missing = [path for path, _ in self.samples if label_key(path) not in labels]
            if missing:
                raise TokenLabelError(f"{len(missing)} of {len(self.samples)} training images have no token "
                                      f"label in {labels.root} (first: {missing[0]}); regenerate the labels "
                                      f"for this training set (tools/make_token_labels.py)")
            labels.check(self.num_classes)
        if labels.shape is None:
            raise TokenLabelError(f"{labels.root}: none of the training images has a token label")
        self.shape: LabelShape = tuple(labels.shape)  # type: ignore[assignment]

    @property
    def width(self) -> int:
        return packed_width(self.shape)

    def __getitem__(self, index: int):
        path, target = self.samples[index]
        key = label_key(path)
        label = check_label(self.labels_store[key], self.labels_store.where(key), self.shape, self.num_classes)
        image, label, coords = self.transforms(load_image(path), label)
        return image, pack_label(target, coords, label)
