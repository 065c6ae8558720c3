"""ImageNet class names, the small photo sample shipped with ppim, validation datasets (ImageNet
folder layout and PaddleClas list files) and a multi-process evaluation loader."""
from __future__ import annotations

import collections
import multiprocessing
import multiprocessing.context
import os
import signal
import sys
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable, Deque, Dict, Iterator, List, NamedTuple, Optional, Sequence, Tuple

import numpy as np
from PIL import Image

from .errors import InputError, PpimError

ASSETS = Path(__file__).parent / "assets"
SAMPLE_DIR = ASSETS / "sample"
SAMPLE_LIST = SAMPLE_DIR / "val_list.txt"


@lru_cache(maxsize=None)
def _class_table() -> Tuple[Tuple[str, str], ...]:
    rows = []
    for line in (ASSETS / "imagenet_classes.txt").read_text(encoding="utf-8").splitlines():
        wnid, name = line.split(" ", 1)
        rows.append((wnid, name))
    return tuple(rows)


def imagenet_class_names() -> List[str]:
    """The 1000 ImageNet-1k class names, index = class id (e.g. 281 "tabby, tabby cat")."""
    return [name for _, name in _class_table()]


def imagenet_wnids() -> List[str]:
    """The 1000 WordNet ids, sorted, index = class id (e.g. 0 "n01440764")."""
    return [wnid for wnid, _ in _class_table()]


def read_val_list(list_file: Path, root: Path) -> List[Tuple[Path, int]]:
    """Lines "relative/path label" -> [(root / path, label)] (PaddleClas list format)."""
    samples = []
    for number, line in enumerate(Path(list_file).read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            path, label = line.rsplit(maxsplit=1)
            samples.append((Path(root) / path, int(label)))
        except ValueError:
            raise ValueError(f"{list_file}:{number}: expected 'relative/path label', got {line!r}") from None
    return samples


def sample_images() -> List[Tuple[Path, int]]:
    """The photographs shipped in ppim/assets/sample with their true ImageNet class ids."""
    return read_val_list(SAMPLE_LIST, SAMPLE_DIR)


# ----------------------------------------------------------------------------------------------
# Validation datasets
# ----------------------------------------------------------------------------------------------

#: File name endings (case-insensitive) taken as images in a class folder.
IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


class BadImageError(PpimError, RuntimeError):
    """An image file that cannot be read or decoded; ``path`` names it, ``reason`` says why."""

    def __init__(self, path: str, reason: str):
        super().__init__(path, reason)
        self.path = str(path)
        self.reason = reason

    def __str__(self) -> str:
        return (f"cannot read image {self.path}: {self.reason} (pass skip_bad=True / --skip-bad to "
                f"skip unreadable images; they are then excluded and reported)")


def _sixteen_bit_to_rgb(image: Image.Image) -> Image.Image:
    """16-bit (and 32-bit int / float) grayscale -> 8-bit RGB by scaling 0..65535 to 0..255.
    PIL's own conversion clips every value above 255 to white."""
    values = np.asarray(image, dtype=np.float64)
    if image.mode.startswith("I;16") or (values.size and values.max() > 255):
        values = values / 257.0
    gray = np.clip(np.rint(values), 0, 255).astype(np.uint8)
    return Image.fromarray(gray, "L").convert("RGB")


def to_rgb(image: Image.Image) -> Image.Image:
    """Any PIL mode -> RGB: grayscale (1, L), CMYK, YCbCr, LAB, RGBA / LA / RGBa (alpha dropped, as
    timm, torchvision and PaddleClas do), palette P / PA (with or without transparency), and 16-bit
    or 32-bit grayscale (I;16*, I, F: scaled, not clipped)."""
    mode = image.mode
    if mode == "RGB":
        return image
    if mode.startswith("I") or mode == "F":
        return _sixteen_bit_to_rgb(image)
    if mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")  # same colours; avoids PIL's transparency warning
    try:
        return image.convert("RGB")
    except ValueError:  # modes PIL converts only through another one (La -> LA, ...)
        for via in ("RGBA", "LA", "L"):
            try:
                return image.convert(via).convert("RGB")
            except ValueError:
                pass
        raise


def load_image(path: "str | os.PathLike[str]") -> Image.Image:
    """Open and fully decode an image file as RGB; any failure raises BadImageError naming it."""
    try:
        with Image.open(path) as image:
            image.load()
            return to_rgb(image)
    except (KeyboardInterrupt, SystemExit, MemoryError):
        raise
    except BaseException as error:  # PIL raises OSError, SyntaxError, ValueError, struct.error, ...
        raise BadImageError(str(path), f"{type(error).__name__}: {error}") from None


class ImageDataset:
    """Labelled image files: ``dataset[i]`` -> (transforms(RGB image), label); with no transforms
    the RGB PIL image itself. ``samples`` is the list of (path, label). Unreadable files raise
    BadImageError naming the path (the loader can skip and count them instead)."""

    def __init__(self, samples: Sequence[Tuple[str, int]], transforms: Optional[Callable] = None):
        self.samples = [(str(path), int(label)) for path, label in samples]
        self.transforms = transforms

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int):
        path, label = self.samples[index]
        image = load_image(path)
        return (self.transforms(image) if self.transforms is not None else image), label

    @property
    def labels(self) -> List[int]:
        return [label for _, label in self.samples]

    def __repr__(self) -> str:
        return f"{type(self).__name__}({len(self)} images, root={getattr(self, 'root', None)})"


def _is_hidden(name: str) -> bool:
    return name.startswith(".")  # dot files, including macOS "._x.jpg" resource forks


def find_images(folder: "str | os.PathLike[str]",
                extensions: Sequence[str] = IMG_EXTENSIONS) -> List[str]:
    """Image files under ``folder`` (recursively, following links; hidden entries skipped), sorted."""
    found = []
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if not _is_hidden(d))
        found.extend(os.path.join(dirpath, f) for f in filenames
                     if not _is_hidden(f) and f.lower().endswith(tuple(extensions)))
    return sorted(found)


class ImageFolderDataset(ImageDataset):
    """The ImageNet folder layout: ``root/<class>/<image>``; sorted class folder names give the
    class index (for the full ImageNet val folder that is the ImageNet class id), unless
    ``class_to_idx`` maps folder names to labels (e.g. ``imagenet_class_to_idx()`` for a subset
    whose folders are WordNet ids). Images: IMG_EXTENSIONS, case-insensitive, in subfolders too."""

    def __init__(self, root: "str | os.PathLike[str]", transforms: Optional[Callable] = None,
                 class_to_idx: Optional[Dict[str, int]] = None,
                 extensions: Sequence[str] = IMG_EXTENSIONS):
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(f"{self.root}: no such folder")
        self.classes = class_folders(self.root)
        if not self.classes:
            raise FileNotFoundError(
                f"{self.root} has no class folders: expected the ImageNet layout root/<class>/<image> "
                f"(or pass a list file of 'relative/path label' lines: --val-list / ImageListDataset)")
        if class_to_idx is None:
            class_to_idx = {name: index for index, name in enumerate(self.classes)}
        else:
            unknown = [name for name in self.classes if name not in class_to_idx]
            if unknown:
                raise ValueError(f"{self.root}: class folders without a label: {', '.join(unknown[:10])}")
        self.class_to_idx = dict(class_to_idx)
        samples = [(path, self.class_to_idx[name]) for name in self.classes
                   for path in find_images(self.root / name, extensions)]
        if not samples:
            raise FileNotFoundError(f"{self.root}: no images ({', '.join(extensions)}) in its "
                                    f"{len(self.classes)} class folders")
        super().__init__(samples, transforms)


def class_folders(root: "str | os.PathLike[str]") -> List[str]:
    """Sorted names of the (non-hidden) subfolders of ``root``."""
    return sorted(entry.name for entry in os.scandir(root)
                  if entry.is_dir() and not _is_hidden(entry.name))


def imagenet_class_to_idx() -> Dict[str, int]:
    """WordNet id -> ImageNet-1k class id (n01440764 -> 0, ...)."""
    return {wnid: index for index, wnid in enumerate(imagenet_wnids())}


class ImageListDataset(ImageDataset):
    """A PaddleClas-style list: lines "relative/path label" (paths relative to ``root``; a path may
    contain spaces, the label is the last field)."""

    def __init__(self, root: "str | os.PathLike[str]", list_file: "str | os.PathLike[str]",
                 transforms: Optional[Callable] = None):
        self.root = Path(root)
        self.list_file = Path(list_file)
        samples = read_val_list(self.list_file, self.root)
        if not samples:
            raise ValueError(f"{self.list_file} lists no images")
        super().__init__(samples, transforms)


def sample_dataset(transforms: Optional[Callable] = None) -> ImageListDataset:
    """The photographs shipped in ppim/assets/sample, labelled with ImageNet class ids."""
    return ImageListDataset(SAMPLE_DIR, SAMPLE_LIST, transforms)


def open_dataset(data: "str | os.PathLike[str] | None" = None,
                 val_list: "str | os.PathLike[str] | None" = None,
                 transforms: Optional[Callable] = None, num_classes: Optional[int] = None) -> ImageDataset:
    """The dataset tools/eval.py evaluates:

    * no ``data`` and no ``val_list``: the sample shipped with ppim;
    * ``val_list``: its lines, paths relative to ``data`` (default: the list's folder); a relative
      ``val_list`` not found from the working directory is looked up in ``data``;
    * ``data`` holding a ``val_list.txt`` (PaddleClas' layout): that list;
    * otherwise the ImageNet folder layout, sorted class folders = class index. When the folders are
      WordNet ids but fewer than the model's 1000 classes (an ImageNet subset), each folder gets its
      ImageNet class id instead (``num_classes`` tells the model's class count)."""
    if data is None and val_list is None:
        return sample_dataset(transforms)
    if val_list is not None:
        list_path = Path(val_list)
        if not list_path.is_file() and data is not None and not list_path.is_absolute():
            list_path = Path(data) / list_path
        if not list_path.is_file():
            raise FileNotFoundError(f"--val-list {val_list}: no such file")
        return ImageListDataset(data if data is not None else list_path.parent, list_path, transforms)
    root = Path(data)
    if root.is_file():
        raise ValueError(f"{root} is a file: DATA is a folder (pass a list file with --val-list)")
    if (root / "val_list.txt").is_file():
        return ImageListDataset(root, root / "val_list.txt", transforms)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: no such folder")
    wnids = imagenet_class_to_idx()
    folders = class_folders(root)
    if (num_classes == len(wnids) and folders and len(folders) < len(wnids)
            and all(name in wnids for name in folders)):
        return ImageFolderDataset(root, transforms, class_to_idx={name: wnids[name] for name in folders})
    return ImageFolderDataset(root, transforms)


# ----------------------------------------------------------------------------------------------
# Loader: decoding and transforms in worker processes, batches through shared memory
# ----------------------------------------------------------------------------------------------


class Batch(NamedTuple):
    """One batch. ``images`` float32 (b, 3, S, S) and ``labels`` int64 (b,) hold the images that
    were read; ``counted`` (b,) is False for the padding of a distributed shard (run, not counted);
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


def _read_samples(dataset, indices: Sequence[int], counted: Sequence[bool], skip_bad: bool,
                  out: Optional[np.ndarray]):
    """Read ``indices`` into ``out`` (a preallocated (B, ...) float32 buffer) or a new array.
    Returns (images or number written, labels, counted, indices, bad)."""
    arrays, labels, kept_counted, kept, bad = [], [], [], [], []
    for index, count in zip(indices, counted):
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
        labels.append(int(label))
        kept_counted.append(bool(count))
        kept.append(int(index))
    images = len(labels) if out is not None else (np.stack(arrays) if arrays else None)
    return (images, np.asarray(labels, dtype=np.int64), np.asarray(kept_counted, dtype=bool),
            np.asarray(kept, dtype=np.int64), bad)


# Worker-process state, set once by the pool initializer.
_WORKER: Dict[str, Any] = {}


def _init_worker(dataset, buffers, shape) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the main process handles Ctrl-C and shuts us down
    _WORKER["dataset"] = dataset
    _WORKER["slots"] = [np.frombuffer(buffer, dtype=np.float32).reshape(shape) for buffer in buffers]


def _worker_read(slot: int, indices: Sequence[int], counted: Sequence[bool], skip_bad: bool):
    return _read_samples(_WORKER["dataset"], indices, counted, skip_bad, _WORKER["slots"][slot])


def _mp_context() -> multiprocessing.context.BaseContext:
    # fork is cheapest (workers inherit the dataset, no re-import of Paddle) and safe here: workers
    # only run PIL and numpy. Elsewhere (macOS, Windows) spawn, the platform-safe default.
    if sys.platform.startswith("linux"):
        return multiprocessing.get_context("fork")
    return multiprocessing.get_context("spawn")


def default_workers() -> int:
    """Loader processes by default: one per CPU this process may use, at most 4 (2 workers decode
    about 1.8x as fast as one process on a 2-core machine; beyond the core count they only compete)."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cpus = os.cpu_count() or 1
    return max(1, min(4, cpus))


class EvalLoader:
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

    def _chunks(self):
        for start in range(0, len(self.indices), self.batch_size):
            yield self.indices[start:start + self.batch_size], self.counted[start:start + self.batch_size]

    def _probe_shape(self) -> Optional[Tuple[int, ...]]:
        """The shape of one transformed image (read here); None if every image is unreadable."""
        for index in self.indices:
            try:
                return tuple(np.asarray(self.dataset[index][0]).shape)
            except BadImageError:
                if not self.skip_bad:
                    raise
        return None

    def __iter__(self) -> Iterator[Batch]:
        shape = self._probe_shape() if self.num_workers and len(self) > 1 else None
        if shape is None:  # in this process (also when every image is unreadable)
            yield from self._iter_here()
        else:
            yield from self._iter_workers(shape)

    def _iter_here(self) -> Iterator[Batch]:
        buffer = None  # with copy=False, batches after the first reuse one buffer
        for indices, counted in self._chunks():
            images, labels, counted, kept, bad = _read_samples(self.dataset, indices, counted,
                                                               self.skip_bad, buffer)
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
                                       initargs=(self.dataset, buffers, slot_shape))
        held = None
        try:
            def submit() -> None:
                for indices, counted in chunks:
                    slot = free.pop()
                    pending.append((slot, executor.submit(_worker_read, slot, indices, counted, self.skip_bad)))
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
        finally:
            executor.shutdown(wait=True, cancel_futures=True)
