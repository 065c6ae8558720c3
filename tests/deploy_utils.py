"""Small models, batches and comparisons shared by the deploy tests (export, engines, runners)."""
import numpy as np
import paddle

import ppim
from tiny import TINY_SUPER, tiny_kwargs


def tiny(**kwargs):
    """A 2-block LV-ViT-S on 64x64 inputs, 10 classes, eval mode, seeded."""
    paddle.seed(0)
    args = tiny_kwargs(num_classes=10)
    args.update(kwargs)
    model = ppim.create_model("lvvit_s", **args)
    model.eval()
    return model


def tiny_super():
    """A narrow super_lvvit_s (all 12 sub-networks work), eval mode, seeded."""
    paddle.seed(0)
    model = ppim.create_model("super_lvvit_s", **TINY_SUPER, stem_dim=8, num_classes=10)
    model.eval()
    return model


def eager(model, batch, **kwargs):
    with paddle.no_grad():
        return model(paddle.to_tensor(batch), **kwargs).numpy()


def rel_error(got, expected):
    return float(np.abs(got - expected).max() / np.abs(expected).max())


def images(n, size, seed=0):
    return np.random.default_rng(seed).standard_normal((n, 3, size, size), dtype=np.float32)
