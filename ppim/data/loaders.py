"""Batch loaders: decoding and transforms in worker processes, batches through shared memory, for
evaluation (in order, sharded across ranks) and training (shuffled per epoch, seeded transforms)."""
from __future__ import annotations

import collections
import multiprocessing
import multiprocessing.context
import os
import random
import signal
import sys
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any, Callable, Deque, Dict, Iterator, List, NamedTuple, Optional, Sequence, Tuple

import numpy as np

from ..runtime import cpu_count, exit_with_parent
from .datasets import BadImageError

# ----------------------------------------------------------------------------------------------
# Loader: decoding and transforms in worker processes, batches through shared memory
# ----------------------------------------------------------------------------------------------


class Batch(NamedTuple):
    """One batch. ``images`` float32 (b, 3, S, S) and ``labels`` int64 (b,) (or float32 (b, L) from a
    dataset whose labels are arrays, e.g. token labels) hold the images that were read; ``counted`` (b,) is False for the padding of a distributed shard (run, not counted);
    ``bad`` lists (index, path, reason) of skipped unreadable images that count (skip_bad=True)."""
    images: np.ndarray
    labels: np.ndarray
    counted: np.ndarray
    indices: np.ndarray
    bad: List[Tuple[int, str, str]]


def shard_indices(num_samples: int, rank: int, world_size: int) -> Tuple[List[int], List[bool]]:
    """Rank ``rank``'s share of ``range(num_samples)``: r, r + W, r + 2W, ...; shards shorter than
    ceil(N / W) are padded (with the dataset's first indices) to that length so every rank runs the
    same number of batches. Returns (indices, counted), counted False for the padding."""
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is not in [0, {world_size})")
    if num_samples <= 0:
        raise ValueError("no samples to shard")
    indices = list(range(rank, num_samples, world_size))
    length = -(-num_samples // world_size)
    pad = [(rank + k * world_size) % num_samples for k in range(len(indices), length)]
    return indices + pad, [True] * len(indices) + [False] * len(pad)


def sample_seed(seed: int, epoch: int, position: int) -> int:
    """The random seed of one training sample: a function of the run's seed, the epoch and the
    sample's position in the epoch's global order only, so augmentations do not depend on the
    number of workers, the batch size or the number of processes."""
    return int(np.random.SeedSequence([seed, epoch, position]).generate_state(1)[0])


def _read_samples(dataset, indices: Sequence[int], counted: Sequence[bool], skip_bad: bool,
                  out: Optional[np.ndarray], seeds: Optional[Sequence[int]] = None):
    """Read ``indices`` into ``out`` (a preallocated (B, ...) float32 buffer) or a new array.
    ``seeds``: per sample, seed Python's and numpy's global RNGs (which random transforms draw
    from) before reading it; the caller's RNG states are restored afterwards.
    Returns (images or number written, labels, counted, indices, bad)."""
    arrays, labels, kept_counted, kept, bad = [], [], [], [], []
    saved = (random.getstate(), np.random.get_state()) if seeds is not None else None
    try:
        for position, (index, count) in enumerate(zip(indices, counted)):
            if seeds is not None:
                random.seed(seeds[position])
                np.random.seed(seeds[position])
            try:
                array, label = dataset[index]
            except BadImageError as error:
                if not skip_bad:
                    raise
                if count:
                    bad.append((int(index), error.path, error.reason))
                continue
            array = np.asarray(array, dtype=np.float32)
            if out is not None:
                if array.shape != out.shape[1:]:
                    path = dataset.samples[index][0] if hasattr(dataset, "samples") else f"item {index}"
                    raise ValueError(f"{path}: transforms gave shape {array.shape}, but {tuple(out.shape[1:])} "
                                     f"before; batching needs fixed-size transforms (resize + center crop)")
                out[len(labels)] = array
            else:
                arrays.append(array)
            labels.append(label if isinstance(label, np.ndarray) else int(label))
            kept_counted.append(bool(count))
            kept.append(int(index))
    finally:
        if saved is not None:
            random.setstate(saved[0])
            np.random.set_state(saved[1])
    images = len(labels) if out is not None else (np.stack(arrays) if arrays else None)
    # a dataset's label is a class id, or a fixed-size float array (token labeling packs its maps)
    labels = np.stack(labels).astype(np.float32) if labels and isinstance(labels[0], np.ndarray) \
        else np.asarray(labels, dtype=np.int64)
    return (images, labels, np.asarray(kept_counted, dtype=bool),
            np.asarray(kept, dtype=np.int64), bad)


# Worker-process state, set once by the pool initializer.
_WORKER: Dict[str, Any] = {}


def _init_worker(dataset, buffers, shape, parent_pid: int) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the main process handles Ctrl-C and shuts us down
    # Forked from a process that imported Paddle, a worker inherits Paddle's fatal-signal handler,
    # which prints a C++ "FatalError: Termination signal" report when the parent stops it on Ctrl-C
    # or an error: a stopped worker ends silently instead.
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    exit_with_parent(parent_pid)  # a parent killed (SIGKILL, OOM, crash) leaves no orphans behind
    _WORKER["dataset"] = dataset
    _WORKER["slots"] = [np.frombuffer(buffer, dtype=np.float32).reshape(shape) for buffer in buffers]


def _worker_read(slot: int, indices: Sequence[int], counted: Sequence[bool], skip_bad: bool,
                 seeds: Optional[Sequence[int]]):
    return _read_samples(_WORKER["dataset"], indices, counted, skip_bad, _WORKER["slots"][slot], seeds)


def _mp_context() -> multiprocessing.context.BaseContext:
    # fork is cheapest (workers inherit the dataset, no re-import of Paddle) and safe here: workers
    # only run PIL and numpy. Elsewhere (macOS, Windows) spawn, the platform-safe default.
    if sys.platform.startswith("linux"):
        return multiprocessing.get_context("fork")
    return multiprocessing.get_context("spawn")


def default_workers() -> int:
    """Loader processes by default: one per CPU this process may use, at most 4 (2 workers decode
    about 1.8x as fast as one process on a 2-core machine; beyond the core count they only compete)."""
    return max(1, min(4, cpu_count()))


class BatchLoader:
    """Batches of a dataset in order: float32 images (B, 3, S, S) and int64 labels (see Batch).

    ``num_workers`` > 0 (default: default_workers()) decodes and transforms in that many worker
    processes, each filling a whole batch straight into a shared-memory slot (no pickling of image
    data), with up to ``prefetch`` batches per worker in flight (memory: about num_workers * prefetch
    + 1 batches). ``num_workers=0`` reads in this process (so does a single batch). ``indices`` /
    ``counted`` select (and mark the padding of) a shard.

    ``skip_bad``: unreadable images are left out of their batch and listed in ``Batch.bad`` instead
    of raising BadImageError. With ``copy=False`` the images of a batch are a view of a shared slot
    that is reused once the next batch is asked for (evaluate uses this); the default copies."""

    def __init__(self, dataset, batch_size: int = 64, num_workers: Optional[int] = None,
                 indices: Optional[Sequence[int]] = None, counted: Optional[Sequence[bool]] = None,
                 skip_bad: bool = False, prefetch: int = 2, copy: bool = True):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.dataset = dataset
        self.batch_size = int(batch_size)
        self.num_workers = default_workers() if num_workers is None else max(0, int(num_workers))
        self.indices = list(range(len(dataset))) if indices is None else [int(i) for i in indices]
        self.counted = [True] * len(self.indices) if counted is None else [bool(c) for c in counted]
        if len(self.counted) != len(self.indices):
            raise ValueError("indices and counted differ in length")
        self.skip_bad = skip_bad
        self.prefetch = max(1, int(prefetch))
        self.copy = copy

    def __len__(self) -> int:
        return -(-len(self.indices) // self.batch_size)

    @property
    def num_images(self) -> int:
        """Images this loader counts (padding excluded), before any are skipped."""
        return sum(self.counted)

    def _chunks(self) -> Iterator[Tuple[List[int], List[bool], Optional[List[int]]]]:
        """(indices, counted, per-sample seeds or None) of each batch, in order."""
        for start in range(0, len(self.indices), self.batch_size):
            yield self.indices[start:start + self.batch_size], self.counted[start:start + self.batch_size], None

    def _probe_shape(self) -> Optional[Tuple[int, ...]]:
        """The shape of one transformed image (read here); None if every image is unreadable."""
        for index in self.indices:
            # Seeded (and the RNG states restored): probing must not move this process's random state.
            images = _read_samples(self.dataset, [index], [True], self.skip_bad, None, seeds=[0])[0]
            if images is not None:
                return tuple(images.shape[1:])
        return None

    def __iter__(self) -> Iterator[Batch]:
        shape = self._probe_shape() if self.num_workers and len(self) > 1 else None
        if shape is None:  # in this process (also when every image is unreadable)
            yield from self._iter_here()
        else:
            yield from self._iter_workers(shape)

    def _iter_here(self) -> Iterator[Batch]:
        buffer = None  # with copy=False, batches after the first reuse one buffer
        for indices, counted, seeds in self._chunks():
            images, labels, counted, kept, bad = _read_samples(self.dataset, indices, counted,
                                                               self.skip_bad, buffer, seeds)
            if buffer is not None:
                images = buffer[:images]
            elif images is None:
                images = np.zeros((0,), dtype=np.float32)
            elif not self.copy:
                buffer = np.empty((self.batch_size, *images.shape[1:]), dtype=np.float32)
            yield Batch(images, labels, counted, kept, bad)

    def _iter_workers(self, shape: Tuple[int, ...]) -> Iterator[Batch]:
        context = _mp_context()
        workers = min(self.num_workers, len(self))
        in_flight = min(len(self), workers * self.prefetch)
        slot_shape = (self.batch_size, *shape)
        # One slot per batch in flight, plus one for the batch the caller holds (copy=False).
        # multiprocessing's heap puts them in /dev/shm, or a temp file when /dev/shm is too small.
        buffers = [context.RawArray("f", int(np.prod(slot_shape))) for _ in range(in_flight + 1)]
        slots = [np.frombuffer(buffer, dtype=np.float32).reshape(slot_shape) for buffer in buffers]
        free = list(range(len(buffers)))
        pending: Deque[Tuple[int, Any]] = collections.deque()
        chunks = self._chunks()
        executor = ProcessPoolExecutor(workers, mp_context=context, initializer=_init_worker,
                                       initargs=(self.dataset, buffers, slot_shape, os.getpid()))
        held = None
        finished = False
        try:
            def submit() -> None:
                for indices, counted, seeds in chunks:
                    slot = free.pop()
                    pending.append((slot, executor.submit(_worker_read, slot, indices, counted, self.skip_bad,
                                                          seeds)))
                    return

            for _ in range(in_flight):
                submit()
            while pending:
                slot, future = pending.popleft()
                try:
                    count, labels, counted, kept, bad = future.result()
                except BrokenProcessPool as error:
                    raise RuntimeError(
                        "a data-loader worker process died (killed by the system, e.g. out of memory?); "
                        "try fewer workers (-j) or -j 0") from error
                if held is not None:
                    free.append(held)
                held = slot
                submit()
                images = slots[slot][:count]
                yield Batch(images.copy() if self.copy else images, labels, counted, kept, bad)
            finished = True
        finally:
            if not finished:  # Ctrl-C, an error, or the caller stopped early: do not wait for reads
                _terminate_workers(executor)
            executor.shutdown(wait=True, cancel_futures=True)


def _terminate_workers(executor: ProcessPoolExecutor) -> None:
    """Stop a pool's worker processes now (SIGTERM): one blocked in a read would otherwise keep
    shutdown waiting, and a process that exits without it would leave the workers orphaned."""
    if hasattr(executor, "terminate_workers"):  # Python 3.14
        executor.terminate_workers()
        return
    for process in list((getattr(executor, "_processes", None) or {}).values()):
        if process.is_alive():
            process.terminate()


#: The in-order loader evaluation uses (the name tools and tests know it by).
EvalLoader = BatchLoader


class TrainLoader(BatchLoader):
    """Training batches: a new order each epoch (``set_epoch``), this process's shard of it, full
    batches only (``drop_last``), and random transforms seeded per sample (``sample_seed``) in the
    worker processes, so a run is reproducible whatever ``num_workers``.

    The epoch's order is ``order(epoch)`` when given (a sampler hook: e.g. repeated augmentation;
    a list of dataset indices, repeats allowed), else a permutation seeded by (seed, epoch), or
    ``range(len(dataset))`` with ``shuffle=False``. Under data parallelism rank r of W takes
    positions r, r + W, ... of the order, padded by wrapping around to a multiple of W (as
    paddle.io.DistributedBatchSampler), so step k of W ranks with batch b sees exactly the samples
    of step k of one process with batch W * b."""

    def __init__(self, dataset, batch_size: int = 64, num_workers: Optional[int] = None, *,
                 shuffle: bool = True, drop_last: bool = True, seed: int = 0, rank: int = 0,
                 world_size: int = 1, order: Optional[Callable[[int], Sequence[int]]] = None,
                 skip_bad: bool = False, prefetch: int = 2):
        super().__init__(dataset, batch_size, num_workers, skip_bad=skip_bad, prefetch=prefetch)
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in [0, {world_size})")
        if len(dataset) == 0:
            raise ValueError("no samples to train on")
        self.shuffle, self.drop_last, self.seed = shuffle, drop_last, int(seed)
        self.rank, self.world_size, self.order = rank, world_size, order
        self.set_epoch(0)

    def epoch_order(self, epoch: int) -> List[int]:
        """The dataset indices of ``epoch``, in order, over all processes."""
        if self.order is not None:
            return [int(i) for i in self.order(epoch)]
        if not self.shuffle:
            return list(range(len(self.dataset)))
        return np.random.default_rng([self.seed, epoch]).permutation(len(self.dataset)).tolist()

    def set_epoch(self, epoch: int) -> None:
        """Select ``epoch``'s order and this rank's shard of it (call before iterating)."""
        order = self.epoch_order(epoch)
        if not order:
            raise ValueError(f"the sampler gave no samples for epoch {epoch}")
        total = -(-len(order) // self.world_size) * self.world_size
        self.positions = list(range(self.rank, total, self.world_size))
        self.indices = [order[p % len(order)] for p in self.positions]
        self.counted = [True] * len(self.indices)
        self.epoch = int(epoch)

    def __len__(self) -> int:
        if self.drop_last:
            return len(self.indices) // self.batch_size
        return super().__len__()

    def _chunks(self) -> Iterator[Tuple[List[int], List[bool], Optional[List[int]]]]:
        for start in range(0, len(self) * self.batch_size, self.batch_size):
            stop = start + self.batch_size
            seeds = [sample_seed(self.seed, self.epoch, p) for p in self.positions[start:stop]]
            yield self.indices[start:stop], self.counted[start:stop], seeds
