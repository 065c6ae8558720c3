"""The training loop: epochs of steps over a TrainLoader, evaluation through ppim.evaluate (on the
EMA weights too), checkpoints (last and best, atomically) with exact resume, and records.

The work of one step is pluggable: ``step(model, images, targets, backward) -> loss`` (see
ClassificationStep) computes the loss(es) and calls ``backward`` on each, so steps with several
forward passes per batch (SuperViT's sub-networks, token labelling) reuse this loop unchanged. A
step with random state of its own gives ``state_dict()`` / ``set_state_dict()`` (checkpointed).
"""
from __future__ import annotations

import contextlib
import math
import os
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Dict, Optional, TypeVar

import numpy as np
import paddle

from ..errors import InputError, ParameterError
from ..runtime import unwrap_parallel
from .checkpoint import (ResumeError, optimizer_state, rng_state, save_checkpoint, set_optimizer_state,
                         set_rng_state)

Backward = Callable[[paddle.Tensor], None]


class DivergedError(ParameterError, FloatingPointError):
    """The loss became inf or NaN (the message names ``lr=`` and ``clip_grad=``, the flags on the command line)."""


T = TypeVar("T")


def unwrapped_step(model: paddle.nn.Layer, work: Callable[[paddle.nn.Layer], T]) -> T:
    """Run ``work(layer)`` (forwards through methods other than ``forward``, and their backwards) on
    the layer inside paddle.DataParallel without per-backward gradient syncs, then average the
    gradients over the processes once, as DataParallel would have."""
    if not isinstance(model, paddle.DataParallel):
        return work(model)
    from paddle.distributed.fleet.utils.hybrid_parallel_util import fused_allreduce_gradients

    layer = unwrap_parallel(model)
    with model.no_sync():
        result = work(layer)
    params = [p for p in layer.parameters() if not p.stop_gradient and p.grad is not None]
    fused_allreduce_gradients(params, None)
    return result


class ClassificationStep:
    """One batch, one forward, one backward: ``loss = criterion(model(images), targets)``. ``targets``
    are labels (B,) or soft targets (B, C) after Mixup; the criterion must take what it is given."""

    def __init__(self, criterion: Callable[[paddle.Tensor, paddle.Tensor], paddle.Tensor]):
        self.criterion = criterion

    def __call__(self, model: paddle.nn.Layer, images: paddle.Tensor, targets: paddle.Tensor,
                 backward: Backward) -> paddle.Tensor:
        loss = self.criterion(model(images), targets)
        backward(loss)
        return loss


def current_lr(optimizer) -> float:
    return float(optimizer.get_lr())


class Trainer:
    """Trains ``model`` (possibly paddle.DataParallel-wrapped) with ``optimizer``.

    loader: a ppim.data.TrainLoader (set_epoch is called each epoch; batches of numpy images and
        labels). mixup: callable (images, labels) -> (images, soft targets) or None.
    step: the per-batch work (default ClassificationStep(paddle.nn.CrossEntropyLoss())).
    scheduler: ``step_epoch(epoch + 1)`` after each epoch and ``step_update(updates)`` after each
        step when it has them (ppim.training.CosineLRScheduler), else ``step()`` after each epoch.
    on_skipped: called with [(path, reason)] of the unreadable images a batch left out (skip_bad).
    ema: a ModelEma-like object (``update(model)``, ``module``, ``state_dict``/``set_state_dict``).
    amp: None, "bfloat16" or "float16" (paddle.amp.auto_cast O1; float16 scales the loss with
        ``scaler``, a paddle.amp.GradScaler).
    evaluate: callable(layer) -> {"top1", "top5", ...} on the validation set, every
        ``eval_interval`` epochs and after the last; run on the EMA weights too.
    output: folder for last.pdparams / best.pdparams (rank 0 writes); records: a Records or None.
    identity: what a checkpoint must match to be resumed (model name, num_classes, ...).
    run_folder: a ppim.training.run_folder.RunFolder locked during ``fit`` (released when it ends).
    """

    def __init__(self, model: paddle.nn.Layer, optimizer, loader, *, step: Optional[Callable] = None,
                 mixup: Optional[Callable] = None, scheduler=None, ema=None, amp: Optional[str] = None,
                 scaler=None, evaluate: Optional[Callable[[paddle.nn.Layer], Dict[str, Any]]] = None,
                 eval_interval: int = 1, output: "str | os.PathLike[str] | None" = None, records=None,
                 progress: bool = True, rank: int = 0, identity: Optional[Dict[str, Any]] = None,
                 args: Optional[Dict[str, Any]] = None, log: Callable[[str], None] = print, run_folder=None,
                 on_skipped: Optional[Callable[[list], None]] = None):
        self.model, self.module = model, unwrap_parallel(model)
        self.optimizer, self.loader, self.scheduler, self.ema = optimizer, loader, scheduler, ema
        self.step = step or ClassificationStep(paddle.nn.CrossEntropyLoss())
        self.mixup, self.amp, self.scaler = mixup, amp, scaler
        self.evaluate, self.eval_interval = evaluate, max(1, int(eval_interval))
        self.output = Path(output) if output is not None else None
        self.records, self.progress, self.rank = records, progress, rank
        self.identity, self.args, self.log = dict(identity or {}), dict(args or {}), log
        self.run_folder = run_folder
        self.created_folder: Optional[Path] = None  # made for this run (train removes it if nothing was saved)
        self.on_skipped = on_skipped  # called with [(path, reason)] of the images a batch skipped
        self.epoch = 0  # the next epoch to train
        self.best: Optional[Dict[str, Any]] = None  # {"epoch", "metric", "weights"}
        self.global_step = 0
        self._is_best = False  # the epoch just finished has the best metric so far

    # ------------------------------------------------------------------------------------------
    # one epoch
    # ------------------------------------------------------------------------------------------

    def _autocast(self):
        if not self.amp:
            return contextlib.nullcontext()
        return paddle.amp.auto_cast(enable=True, dtype=self.amp, level="O1")

    def _backward(self, loss: paddle.Tensor) -> None:
        if not math.isfinite(float(loss)):
            raise DivergedError(f"the loss is {float(loss)} at epoch {self.epoch}, step {self.global_step}: lower "
                                f"{{lr:name}}, add {{clip_grad:name}}, or check the data", lr=None, clip_grad=None)
        (self.scaler.scale(loss) if self.scaler is not None else loss).backward()

    def train_one_epoch(self, epoch: int) -> Dict[str, float]:
        """Train ``epoch``; returns mean loss, lr, images/s and seconds (this rank's)."""
        self.model.train()
        self.loader.set_epoch(epoch)
        if len(self.loader) == 0:
            raise InputError(f"batch size {self.loader.batch_size} is larger than this process's "
                             f"{len(self.loader.indices)} training images: lower -b")
        bar = None
        if self.progress and self.rank == 0:
            from tqdm import tqdm

            bar = tqdm(total=len(self.loader), desc=f"epoch {epoch}", unit="step", dynamic_ncols=True)
        lr = current_lr(self.optimizer)  # the epoch's (timm's per-epoch schedule; per-step ones move it)
        losses, images_seen, start = [], 0, time.perf_counter()
        try:
            with warnings.catch_warnings():
                # Paddle's BatchNorm says on every train-mode call that it tracks running statistics
                # (as it always did): nothing a user can act on, and it breaks the progress bar.
                warnings.filterwarnings("ignore", message="When training, we now always track global mean",
                                        category=UserWarning)
                for batch in self.loader:
                    if batch.bad and self.on_skipped is not None:
                        self.on_skipped([(path, reason) for _, path, reason in batch.bad])
                    if not len(batch.labels):
                        continue
                    images = paddle.to_tensor(batch.images)
                    targets = paddle.to_tensor(batch.labels)
                    if self.mixup is not None:
                        images, targets = self.mixup(images, targets)
                    with self._autocast():
                        loss = self.step(self.model, images, targets, self._backward)
                    if self.scaler is not None:
                        self.scaler.step(self.optimizer)  # unscales first, so gradient clipping sees true norms
                        self.scaler.update()
                    else:
                        self.optimizer.step()
                    self.optimizer.clear_grad()
                    if self.ema is not None:
                        self.ema.update(self.module)
                    if hasattr(self.scheduler, "step_update"):  # per-update schedules (no-op per epoch)
                        self.scheduler.step_update(self.global_step + 1)
                    value, lr = float(loss), current_lr(self.optimizer)
                    losses.append(value)
                    images_seen += len(batch.labels)
                    self.global_step += 1
                    if self.records is not None and self.rank == 0:
                        self.records.step(self.global_step, {"loss": value, "lr": lr})
                    if bar is not None:
                        rate = images_seen / max(time.perf_counter() - start, 1e-9)
                        bar.set_postfix(loss=f"{value:.4f}", lr=f"{lr:.3g}", img_s=f"{rate:.1f}", refresh=False)
                        bar.update()
        finally:
            if bar is not None:
                bar.close()
        seconds = time.perf_counter() - start
        return {"train_loss": float(np.mean(losses)) if losses else float("nan"), "lr": lr,
                "images_per_sec": images_seen / seconds, "seconds": seconds}

    # ------------------------------------------------------------------------------------------
    # the run
    # ------------------------------------------------------------------------------------------

    def _evaluate(self) -> Dict[str, Optional[float]]:
        row: Dict[str, Optional[float]] = {}
        weights = [("", self.module)] + ([("ema_", self.ema.module)] if self.ema is not None else [])
        for prefix, layer in weights:
            results = self.evaluate(layer)
            row[prefix + "top1"], row[prefix + "top5"] = results.get("top1"), results.get("top5")
        self.model.train()
        return row

    def fit(self, epochs: int) -> Dict[str, Any]:
        """Train from ``self.epoch`` (0, or where a resumed checkpoint stopped) to ``epochs``.
        Returns {"epochs", "best": {"epoch", "metric", "weights"} or None, "last": row}."""
        with self.run_folder if self.run_folder is not None else contextlib.nullcontext():
            return self._fit(epochs)

    def _fit(self, epochs: int) -> Dict[str, Any]:
        row: Dict[str, Any] = {}
        for epoch in range(self.epoch, epochs):
            row = {"epoch": epoch, **self.train_one_epoch(epoch)}
            if hasattr(self.scheduler, "step_epoch"):  # ppim's CosineLRScheduler (timm's step(epoch + 1))
                self.scheduler.step_epoch(epoch + 1)
            elif self.scheduler is not None:  # a Paddle LRScheduler: one step per epoch
                self.scheduler.step()
            last = epoch + 1 == epochs
            if self.evaluate is not None and ((epoch + 1) % self.eval_interval == 0 or last):
                row.update(self._evaluate())
            self.epoch = epoch + 1
            self._update_best(row)
            if self.rank == 0:
                self._save(row)
                if self.records is not None:
                    self.records.epoch(row)
                self.log(_describe(row))
        return {"epochs": self.epoch, "best": self.best, "last": row}

    def _update_best(self, row: Dict[str, Any]) -> None:
        """The best weights so far by validation top-1 (EMA's when it is evaluated: timm's rule)."""
        key = "ema_top1" if row.get("ema_top1") is not None else "top1"
        metric = row.get(key)
        if metric is None:
            self._is_best = False
            return
        weights = "model_ema" if key == "ema_top1" else "model"
        self._is_best = self.best is None or metric > self.best["metric"]
        if self._is_best:
            self.best = {"epoch": row["epoch"], "metric": float(metric), "metric_name": key, "weights": weights}

    def _save(self, row: Dict[str, Any]) -> None:
        if self.output is None:
            return
        state = self.state(row)
        save_checkpoint(self.output / "last.pdparams", state)
        if self._is_best:
            save_checkpoint(self.output / "best.pdparams", state)

    # ------------------------------------------------------------------------------------------
    # checkpoints
    # ------------------------------------------------------------------------------------------

    def state(self, row: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
        """Everything an exact resume needs, as a checkpoint dict (see checkpoint.save_checkpoint).
        "eval_weights" names the weights eval --checkpoint loads: the EMA's when there is one (best is
        chosen by their top-1 then), else the model's."""
        from ..builder import MODEL_KEY, describe_model

        return {
            **self.identity,
            MODEL_KEY: describe_model(self.module, self.args),
            "epoch": self.epoch,
            "global_step": self.global_step,
            "model": self.module.state_dict(),
            "model_ema": self.ema.state_dict() if self.ema is not None else None,
            "eval_weights": "model_ema" if self.ema is not None else "model",
            "optimizer": optimizer_state(self.optimizer, self.module),
            "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None,
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "rng": rng_state(),
            "step": self.step.state_dict() if hasattr(self.step, "state_dict") else None,
            "best": self.best,
            "metrics": row or {},
            "args": self.args,
        }

    def check_identity(self, checkpoint: Dict[str, Any], source: str) -> None:
        """Refuse a checkpoint of another model, class count or input size, naming both."""
        differ = [f"{key} {checkpoint.get(key)!r} (this run: {value!r})" for key, value in self.identity.items()
                  if checkpoint.get(key) != value]
        mine = {key: list(value.shape) for key, value in self.module.state_dict().items()}
        theirs = {key: list(np.shape(value)) for key, value in (checkpoint.get("model") or {}).items()}
        if not differ and mine != theirs:
            keys = sorted(set(mine) ^ set(theirs)) + sorted(k for k in set(mine) & set(theirs) if mine[k] != theirs[k])
            differ = [f"its weights differ in {len(keys)} entries ("
                      + ", ".join(f"{k} {theirs.get(k, 'absent')} vs {mine.get(k, 'absent')}" for k in keys[:4])
                      + (" ..." if len(keys) > 4 else "") + "; another {model_kwargs:name} / {img_size:name}?)"]
        if differ:
            raise ResumeError(f"{{resume}} is a checkpoint of another model: {'; '.join(differ)}. Resume with the "
                              f"arguments it was trained with, or start from its weights with {{checkpoint}}",
                              resume=source, checkpoint=source, model_kwargs=None, img_size=None)

    def load_state(self, checkpoint: Dict[str, Any], source: str = "checkpoint") -> None:
        """Continue exactly where ``checkpoint`` (from state()/load_checkpoint) stopped."""
        self.check_identity(checkpoint, source)
        if (checkpoint.get("model_ema") is None) != (self.ema is None):
            have = "has" if checkpoint.get("model_ema") is not None else "has no"
            raise ResumeError(f"{{resume}} {have} EMA weights; pass {{model_ema:name}} the same way as in the run "
                              f"that wrote it", resume=source, model_ema=None)
        from .resume_check import validate_checkpoint

        validate_checkpoint(checkpoint, source, self)  # every field, before anything is set
        self.module.set_state_dict(checkpoint["model"])
        if self.ema is not None:
            self.ema.set_state_dict(checkpoint["model_ema"])
        set_optimizer_state(self.optimizer, self.module, checkpoint["optimizer"])
        if self.scheduler is not None and checkpoint.get("scheduler") is not None:
            self.scheduler.set_state_dict(checkpoint["scheduler"])
        if self.scaler is not None and checkpoint.get("scaler"):
            self.scaler.load_state_dict(checkpoint["scaler"])
        set_rng_state(checkpoint["rng"])
        if hasattr(self.step, "set_state_dict") and checkpoint.get("step") is not None:
            self.step.set_state_dict(checkpoint["step"])  # a step's own generator (e.g. SuperStep's draws)
        self.epoch = int(checkpoint["epoch"])
        self.global_step = int(checkpoint.get("global_step", 0))
        self.best = checkpoint.get("best")


def _describe(row: Dict[str, Any]) -> str:
    parts = [f"epoch {row['epoch']}", f"loss {row['train_loss']:.4f}", f"lr {row['lr']:.3g}",
             f"{row['images_per_sec']:.1f} img/s"]
    for key in ("top1", "top5", "ema_top1", "ema_top5"):
        if row.get(key) is not None:
            parts.append(f"{key.replace('_', ' ')} {row[key]:.2f}")
    return ", ".join(parts)
