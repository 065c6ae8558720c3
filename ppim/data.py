"""ImageNet class names, the small photo sample shipped with ppim, validation datasets (ImageNet
folder layout and PaddleClas list files) and a multi-process evaluation loader."""
from __future__ import annotations

import collections
import multiprocessing
import multiprocessing.context
import os
import random
import signal
import stat
import sys
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable, Deque, Dict, Iterator, List, NamedTuple, Optional, Sequence, Tuple

import numpy as np
from PIL import Image

from .errors import InputError, PpimError
from .transforms import as_numpy

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
    data = Path(list_file).read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        number = data.count(b"\n", 0, error.start) + 1
        raise InputError(f"{list_file}:{number}: not UTF-8 text (byte {data[error.start]:#04x}); save the list "
                         f"as UTF-8 (e.g. iconv -f latin1 -t utf-8)") from None
    samples = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            path, label = line.rsplit(maxsplit=1)
            samples.append((Path(root) / path, int(label)))
        except ValueError:
            raise InputError(f"{list_file}:{number}: expected 'relative/path label', got {line[:200]!r}") from None
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
    """An image file that cannot be read or decoded; ``path`` names it, ``reason`` says why and
    ``hint`` what to do (by default: skip_bad / --skip-bad)."""

    SKIP_HINT = ("pass skip_bad=True / --skip-bad to skip unreadable images; they are then excluded and "
                 "reported")

    def __init__(self, path: str, reason: str, hint: Optional[str] = None):
        super().__init__(path, reason, hint)
        self.path = str(path)
        self.reason = reason
        self.hint = self.SKIP_HINT if hint is None else hint

    def __str__(self) -> str:
        return f"cannot read image {self.path}: {self.reason} ({self.hint})"


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


def _file_kind(mode: int) -> str:
    for test, kind in ((stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISSOCK, "a socket"),
                       (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                       (stat.S_ISDIR, "a folder")):
        if test(mode):
            return kind
    return "not a regular file"


def _open_regular(path: "str | os.PathLike[str]"):
    """``path`` opened for reading if it is a regular file (after links). Opened non-blocking and
    checked on the open descriptor, so a FIFO or device named like an image is never waited on."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise BadImageError(str(path), f"it is {_file_kind(mode)}, not an image file")
        if hasattr(os, "set_blocking"):
            os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def load_image(path: "str | os.PathLike[str]") -> Image.Image:
    """Open and fully decode an image file as RGB; any failure raises BadImageError naming it.
    Only regular files are read: a FIFO, socket or device is refused without waiting on it."""
    try:
        with _open_regular(path) as file, Image.open(file) as image:
            image.load()
            return to_rgb(image)
    except (KeyboardInterrupt, SystemExit, MemoryError, BadImageError):
        raise
    except OSError as error:
        if error.filename is not None and error.strerror:  # from the file system, not from the decoder
            raise BadImageError(str(path), error.strerror) from None
        raise BadImageError(str(path), f"{type(error).__name__}: {error}") from None
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
        # The numpy path of ppim's transforms: worker processes must not create Paddle tensors.
        return (as_numpy(self.transforms)(image) if self.transforms is not None else image), label

    @property
    def labels(self) -> List[int]:
        return [label for _, label in self.samples]

    def __repr__(self) -> str:
        return f"{type(self).__name__}({len(self)} images, root={getattr(self, 'root', None)})"


def _is_hidden(name: str) -> bool:
    return name.startswith(".")  # dot files, including macOS "._x.jpg" resource forks


def _file_id(path: "str | os.PathLike[str]") -> Tuple[int, int]:
    info = os.stat(path)
    return info.st_dev, info.st_ino


def find_images(folder: "str | os.PathLike[str]", extensions: Sequence[str] = IMG_EXTENSIONS,
                exclude: Sequence[Tuple[int, int]] = ()) -> List[str]:
    """Image files under ``folder``, sorted: recursively, following links, hidden entries skipped.

    Each folder and each file is taken once, however many links lead to it (identified by device
    and inode), so link loops end and no image is counted twice; folders whose (st_dev, st_ino) is
    in ``exclude`` are not entered (the dataset root and the other class folders). A FIFO, socket
    or device named like an image raises InputError (it is never opened); a broken link is
    listed, for the loader to report as unreadable."""
    extensions = tuple(e.lower() for e in extensions)
    found: List[str] = []
    seen_dirs, seen_files = set(exclude), set()
    pending = [os.fspath(folder)]
    while pending:
        directory = pending.pop()
        key = _file_id(directory)
        if key in seen_dirs:
            continue
        seen_dirs.add(key)
        with os.scandir(directory) as entries:
            names = sorted(entry.name for entry in entries if not _is_hidden(entry.name))
        subfolders = []
        for name in names:
            path = os.path.join(directory, name)
            is_image = name.lower().endswith(extensions)
            try:
                info = os.stat(path)
            except OSError:  # a broken link or a link loop
                if is_image:
                    found.append(path)
                continue
            if stat.S_ISDIR(info.st_mode):
                subfolders.append(path)
            elif not is_image or (info.st_dev, info.st_ino) in seen_files:
                continue
            elif stat.S_ISREG(info.st_mode):
                seen_files.add((info.st_dev, info.st_ino))
                found.append(path)
            else:
                raise InputError(f"{path} is {_file_kind(info.st_mode)}, not an image file: remove it from "
                                 f"the data folder")
        pending.extend(reversed(subfolders))  # depth first in name order: a folder's own files win
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
                raise InputError(f"{self.root}: class folders without a label: {', '.join(unknown[:10])}")
        self.class_to_idx = dict(class_to_idx)
        # A link inside one class folder to the root or to another class folder is not followed:
        # those images belong to their own class (or to none).
        folders = {name: _file_id(self.root / name) for name in self.classes}
        others = {_file_id(self.root), *folders.values()}
        samples = [(path, self.class_to_idx[name]) for name in self.classes
                   for path in find_images(self.root / name, extensions, others - {folders[name]})]
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
            raise InputError(f"{self.list_file} lists no images")
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
        raise InputError(f"{root} is a file: DATA is a folder (pass a list file with --val-list)")
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


def _init_worker(dataset, buffers, shape) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the main process handles Ctrl-C and shuts us down
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
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cpus = os.cpu_count() or 1
    return max(1, min(4, cpus))


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
                                       initargs=(self.dataset, buffers, slot_shape))
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
