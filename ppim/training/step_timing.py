"""Training throughput: images/s of one training step (forward, loss, backward, optimizer) of a
model at its input size, with the step's breakdown (data, forward, backward, optimizer), for eager
Paddle variants and optional peers (e.g. the PyTorch reference model) measured in the same run.

Rounds interleave the variants (round r runs each variant's ``iters`` steps in turn) and each figure
is the median over rounds of the round's median, so a shared machine's slow and fast moments fall on
every variant alike: compare ratios within one run. "data" is the time of decoding and transforming
one batch of real photos (the train recipe, one process): divide it by the loader's worker count.
"""
from __future__ import annotations

import io
import statistics
import time
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import paddle

#: A peer's step factory: (the ppim model to mirror, batch_size) -> step(), which trains one step on
#: a fixed batch and returns the seconds of its (forward + loss, backward, optimizer) phases.
StepFactory = Callable[[paddle.nn.Layer, int], Callable[[], Tuple[float, float, float]]]


def paddle_train_step(model: paddle.nn.Layer, batch_size: int, *, amp: Optional[str] = None,
                      flags: Optional[Dict[str, Any]] = None, seed: int = 0) -> Callable[[], Tuple[float, float, float]]:
    """One AdamW step (ppim.training.create_optimizer, weight-decay groups) with soft-target
    cross-entropy on a fixed random batch. ``amp``: "bfloat16" / "float16" autocast (O1); ``flags``:
    paddle.set_flags values in force during the step (restored after)."""
    from .losses import SoftTargetCrossEntropy
    from .optim import create_optimizer

    size = model.pretrained_cfg["input_size"][-1] if hasattr(model, "pretrained_cfg") else model.img_size
    rng = np.random.default_rng(seed)
    images = paddle.to_tensor(rng.standard_normal((batch_size, 3, size, size)).astype("float32"))
    targets = paddle.nn.functional.one_hot(paddle.to_tensor(rng.integers(0, model.num_classes, batch_size)),
                                           model.num_classes)
    optimizer = create_optimizer(model, "adamw", lr=1e-4, weight_decay=0.05)
    criterion = SoftTargetCrossEntropy()
    model.train()

    def step() -> Tuple[float, float, float]:
        saved = paddle.get_flags(list(flags)) if flags else None
        if flags:
            paddle.set_flags(flags)
        try:
            start = time.perf_counter()
            if amp:
                with paddle.amp.auto_cast(enable=True, dtype=amp, level="O1"):
                    loss = criterion(model(images), targets)
            else:
                loss = criterion(model(images), targets)
            float(loss)  # waits for the device
            forward = time.perf_counter()
            loss.backward()
            _synchronize()
            backward = time.perf_counter()
            optimizer.step()
            optimizer.clear_grad()
            _synchronize()
            end = time.perf_counter()
        finally:
            if saved:
                paddle.set_flags(saved)
        return forward - start, backward - forward, end - backward

    return step


def _synchronize() -> None:
    if paddle.device.get_device().startswith("gpu"):
        paddle.device.synchronize()


def data_step(model: paddle.nn.Layer, batch_size: int) -> Callable[[], float]:
    """Seconds to decode and train-transform ``batch_size`` JPEG photos (ppim's sample) in this process."""
    from ..data import sample_images
    from ..transforms import create_transforms

    transforms = create_transforms(model, is_training=True)
    blobs = [open(path, "rb").read() for path, _ in sample_images()]

    def step() -> float:
        from PIL import Image

        start = time.perf_counter()
        for index in range(batch_size):
            with Image.open(io.BytesIO(blobs[index % len(blobs)])) as image:
                transforms.to_numpy(image.convert("RGB"))
        return time.perf_counter() - start

    return step


def train_benchmark(model_factory: Callable[[], paddle.nn.Layer], batch_size: int = 16, *,
                    variants: Sequence[Tuple[str, Dict[str, Any]]] = (("paddle fp32", {}),),
                    peers: Optional[Mapping[str, StepFactory]] = None, rounds: int = 3, iters: int = 2,
                    warmup: int = 1, log: Callable[[str], None] = lambda message: None) -> List[Dict[str, Any]]:
    """Rows {name, batch_size, images_per_sec, step, forward, backward, optimizer, data (seconds,
    medians)} for each Paddle variant (name, paddle_train_step keyword arguments: amp, flags) and
    each peer; a variant or peer that fails gets {name, error} instead. A fresh model per variant."""
    steps: Dict[str, Callable[[], Tuple[float, float, float]]] = {}
    rows: Dict[str, Dict[str, Any]] = {}
    model = None
    for name, options in variants:
        try:
            model = model_factory()
            steps[name] = paddle_train_step(model, batch_size, **options)
        except Exception as error:  # reported as a row: e.g. no bf16 kernels on this CPU
            rows[name] = {"name": name, "error": f"{type(error).__name__}: {error}"}
    if model is None:
        raise ValueError("no Paddle variant to benchmark")
    for name, factory in (peers or {}).items():
        try:
            steps[name] = factory(model, batch_size)
        except Exception as error:
            rows[name] = {"name": name, "error": f"{type(error).__name__}: {error}"}
    data = data_step(model, batch_size)
    for name, step in list(steps.items()):  # warm-up: first calls allocate and pick kernels
        try:
            for _ in range(warmup):
                step()
        except Exception as error:
            rows[name] = {"name": name, "error": f"{type(error).__name__}: {error}"}
            del steps[name]
    timings: Dict[str, List[List[Tuple[float, float, float]]]] = {name: [] for name in steps}
    data_times: List[float] = []
    for round_index in range(rounds):
        data_times.append(data())
        for name, step in steps.items():
            timings[name].append([step() for _ in range(iters)])
            log(f"round {round_index + 1}/{rounds} {name}: {sum(statistics.median(t) for t in zip(*timings[name][-1])):.2f} s/step")
    data_seconds = statistics.median(data_times)
    for name, per_round in timings.items():
        phases = [statistics.median(statistics.median(t[i] for t in calls) for calls in per_round) for i in range(3)]
        step_seconds = statistics.median(sum(t) for calls in per_round for t in calls)
        rows[name] = {"name": name, "batch_size": batch_size, "images_per_sec": batch_size / step_seconds,
                      "step": step_seconds, "forward": phases[0], "backward": phases[1], "optimizer": phases[2],
                      "data": data_seconds}
    order = [name for name, _ in variants] + list(peers or {})
    return [rows[name] for name in order if name in rows]


def format_train_rows(rows: Sequence[Dict[str, Any]]) -> str:
    """A text table: images/s, its ratio to the first row, and the breakdown in seconds per step."""
    base = next((row["images_per_sec"] for row in rows if "images_per_sec" in row), None)
    lines = [f"{'variant':<28} {'img/s':>7} {'ratio':>6} {'step s':>7} {'fwd s':>7} {'bwd s':>7} {'opt s':>7} "
             f"{'data s':>7}"]
    for row in rows:
        if "error" in row:
            lines.append(f"{row['name']:<28} not run: {row['error']}")
            continue
        lines.append(f"{row['name']:<28} {row['images_per_sec']:7.2f} {row['images_per_sec'] / base:6.2f} "
                     f"{row['step']:7.2f} {row['forward']:7.2f} {row['backward']:7.2f} {row['optimizer']:7.3f} "
                     f"{row['data']:7.2f}")
    return "\n".join(lines)
