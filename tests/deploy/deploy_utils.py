"""Small models, batches and comparisons shared by the deploy tests (export, engines, runners)."""
import contextlib
import os

import numpy as np
import paddle

from ppim import runtime
import tiny as shared


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
