"""Running models on images: top-k classification with ImageNet class names."""
from __future__ import annotations

from typing import Callable, List, Sequence, Tuple

import numpy as np
import paddle

from .data import imagenet_class_names
from .transforms import ImageLike, create_transforms

Prediction = List[Tuple[int, str, float]]


def classify(model: paddle.nn.Layer, images: Sequence[ImageLike], transforms: Callable = None,
             topk: int = 5, batch_size: int = 16) -> List[Prediction]:
    """Top-k (class id, class name, probability) per image, probabilities from a softmax over the
    model's eval logits. ``transforms`` defaults to the model's own eval transforms."""
    transforms = transforms or create_transforms(model.pretrained_cfg)
    names = imagenet_class_names()
    model.eval()
    results: List[Prediction] = []
    for start in range(0, len(images), batch_size):
        batch = np.stack([transforms(image) for image in images[start:start + batch_size]])
        with paddle.no_grad():
            probs = paddle.nn.functional.softmax(model(paddle.to_tensor(batch)), axis=-1).numpy()
        for row in probs:
            top = np.argsort(-row)[:topk]
            results.append([(int(i), names[i] if len(row) == len(names) else str(i), float(row[i]))
                            for i in top])
    return results
