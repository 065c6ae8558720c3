"""Small models, batches and comparisons shared by the deploy tests (export, engines, runners)."""
import contextlib
import os

import numpy as np
import paddle

import ppim
from ppim import runtime


@contextlib.contextmanager
def real_machine():
    """The machine running the tests inside the block, also under a simulated profile: the real part
    of a machine-dependent test (run only what this machine has)."""
    saved = os.environ.pop(runtime.SIMULATE_ENV, None)
    try:
        yield runtime.machine()
    finally:
        if saved is not None:
            os.environ[runtime.SIMULATE_ENV] = saved


def tiny(**kwargs):
    """A 2-block LV-ViT-S on 64x64 inputs, 10 classes, eval mode, seeded."""
    paddle.seed(0)
    args = dict(img_size=64, embed_dim=48, depth=2, num_heads=3, stem_dim=8, num_classes=10)
    args.update(kwargs)
    model = ppim.create_model("lvvit_s", **args)
    model.eval()
    return model


def tiny_super():
    """A narrow super_lvvit_s (all 12 sub-networks work), eval mode, seeded."""
    paddle.seed(0)
    model = ppim.create_model("super_lvvit_s", embed_dim=48, depth=10, num_heads=3, num_classes=10, stem_dim=8)
    model.eval()
    return model


def eager(model, batch, **kwargs):
    with paddle.no_grad():
        return model(paddle.to_tensor(batch), **kwargs).numpy()


def rel_error(got, expected):
    return float(np.abs(got - expected).max() / np.abs(expected).max())


def images(n, size, seed=0):
    return np.random.default_rng(seed).standard_normal((n, 3, size, size), dtype=np.float32)
