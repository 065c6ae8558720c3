"""timm 0.4.x's cosine learning-rate schedule as a Paddle LRScheduler.

With t the schedule's time (epochs, or optimizer updates when ``t_in_epochs=False``), T = epochs and
W = warmup_epochs in the same unit:

    lr(t) = warmup_lr + t * (base_lr - warmup_lr) / W                      t < W
    lr(t) = min_lr + (base_lr - min_lr) * (1 + cos(pi * t / T)) / 2        W <= t < T
    lr(t) = min_lr                                                        t >= T (cooldown)

(the cosine runs over the whole T, warm-up included, unless ``warmup_prefix``). The official scripts
train ``total_epochs`` = epochs + cooldown_epochs. Use it as timm's train.py does: pass it to the
optimizer as its learning rate, call ``step_update(num_updates)`` after every optimizer step and
``step_epoch(epoch + 1)`` after every epoch (each is a no-op in the other mode). ``state_dict()`` /
``set_state_dict()`` (Paddle's) hold the time and lr, which is all a resume needs.
"""
from __future__ import annotations

import math
from typing import Optional, Tuple

from paddle.optimizer.lr import LRScheduler


class CosineLRScheduler(LRScheduler):
    """Cosine decay from ``base_lr`` to ``min_lr`` over ``epochs`` after a linear warm-up of
    ``warmup_epochs`` from ``warmup_lr``, then ``min_lr`` for the cooldown (see the module docstring).
    ``t_in_epochs=False`` updates every optimizer step (needs ``steps_per_epoch``); ``cycle_limit``
    > 1 restarts the cosine (timm's), 0 restarts forever."""

    def __init__(self, base_lr: float, epochs: float, steps_per_epoch: Optional[int] = None, warmup_epochs: float = 5,
                 warmup_lr: float = 1e-6, min_lr: float = 1e-5, cooldown_epochs: int = 10, t_in_epochs: bool = True,
                 warmup_prefix: bool = False, cycle_limit: int = 1, last_epoch: int = -1):
        if epochs <= 0:
            raise ValueError(f"epochs must be positive, got {epochs}")
        if not t_in_epochs and not steps_per_epoch:
            raise ValueError("per-update schedules (t_in_epochs=False) need steps_per_epoch")
        unit = 1 if t_in_epochs else int(steps_per_epoch)
        self.epochs = epochs
        self.cooldown_epochs = int(cooldown_epochs)
        self.t_in_epochs = t_in_epochs
        self.t_initial = max(1, int(round(epochs * unit)))  # fractional epochs: per-update schedules
        self.warmup_t = int(warmup_epochs * unit)
        self.warmup_lr = float(warmup_lr)
        self.min_lr = float(min_lr)
        self.warmup_prefix = warmup_prefix
        self.cycle_limit = cycle_limit
        super().__init__(float(base_lr), last_epoch)

    @property
    def total_epochs(self) -> int:
        """Epochs to train: the cosine's epochs plus the cooldown (timm: get_cycle_length() + cooldown)."""
        return self.epochs * max(1, self.cycle_limit) + self.cooldown_epochs

    def lr_at(self, t: float) -> float:
        """The learning rate at time ``t`` (epochs, or updates when not t_in_epochs)."""
        if t < self.warmup_t:
            return self.warmup_lr + t * (self.base_lr - self.warmup_lr) / self.warmup_t
        if self.warmup_prefix:
            t = t - self.warmup_t
        cycle = int(t // self.t_initial)
        if self.cycle_limit > 0 and cycle >= self.cycle_limit:
            return self.min_lr
        t_curr = t - cycle * self.t_initial
        return self.min_lr + 0.5 * (self.base_lr - self.min_lr) * (1 + math.cos(math.pi * t_curr / self.t_initial))

    def get_lr(self) -> float:
        return self.lr_at(self.last_epoch)

    def step_epoch(self, epoch: int) -> None:
        """After epoch ``epoch - 1`` ends (timm: lr_scheduler.step(epoch + 1)); no-op per update."""
        if self.t_in_epochs:
            self.step(epoch)

    def step_update(self, num_updates: int) -> None:
        """After optimizer update ``num_updates``; no-op for per-epoch schedules."""
        if not self.t_in_epochs:
            self.step(num_updates)


def fit_schedule(epochs: int, warmup_epochs: float, cooldown_epochs: int) -> Tuple[float, int, Optional[str]]:
    """Warm-up and cooldown that fit a run of ``epochs``: together at most half of it, so the run
    reaches its peak lr and has a cosine to descend. Ones that do not fit are scaled down in
    proportion (the warm-up to a fraction of an epoch if need be: run it per update). Returns
    (warmup_epochs, cooldown_epochs, a one-line note saying what was scaled, or None)."""
    budget = epochs / 2
    if warmup_epochs + cooldown_epochs <= budget:
        return warmup_epochs, cooldown_epochs, None
    # (the caller then runs the cosine after the warm-up, warmup_prefix, so the lr reaches its peak)
    scale = budget / (warmup_epochs + cooldown_epochs)
    warmup, cooldown = warmup_epochs * scale, int(cooldown_epochs * scale)
    note = (f"note: {warmup_epochs:g} warm-up + {cooldown_epochs} cooldown epochs do not fit {epochs} epochs: scaled to "
            f"{warmup:.2g} warm-up (per step) + {cooldown} cooldown, so the lr reaches its peak")
    return warmup, cooldown, note
