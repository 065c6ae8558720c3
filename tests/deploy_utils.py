"""Small models, batches and comparisons shared by the deploy tests (export, engines, runners)."""
import numpy as np
import paddle

import tiny as shared


def tiny(**kwargs):
    """The shared tiny LV-ViT-S (2 blocks, 64x64) with 10 classes, eval mode, seeded."""
    return shared.tiny_lvvit(**{"num_classes": 10, **kwargs})


def tiny_super():
    """The shared tiny super_lvvit_s (all 12 sub-networks work) with 10 classes, eval mode, seeded."""
    return shared.tiny_super(num_classes=10)


def eager(model, batch, **kwargs):
    with paddle.no_grad():
        return model(paddle.to_tensor(batch), **kwargs).numpy()


def rel_error(got, expected):
    return float(np.abs(got - expected).max() / np.abs(expected).max())


def images(n, size, seed=0):
    return np.random.default_rng(seed).standard_normal((n, 3, size, size), dtype=np.float32)
