"""ImageNet class names, the small photo sample shipped with ppim, image decoding, folder scanning
and the datasets (ImageNet folder layout and PaddleClas list files)."""
from __future__ import annotations

import os
import stat
from functools import lru_cache
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image

from ..errors import InputError, ParameterError
from .labels import parse_class_index
from ..transforms import as_numpy

ASSETS = Path(__file__).parent.parent / "assets"
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


def read_list(list_file: Path, root: Path, num_classes: Optional[int] = None, allow_outside_root: bool = False
              ) -> Tuple[List[Tuple[Path, int]], List[int]]:
    """Lines "relative/path label" -> ([(root / path, label)], their line numbers) (PaddleClas list
    format; UTF-8 with or without a BOM, LF or CRLF). Labels follow ppim.data.labels' rule (integers
    in 0 .. num_classes - 1); paths must stay inside ``root`` (no absolute or ``..`` paths) unless
    ``allow_outside_root``. Errors name the file and line."""
    data = Path(list_file).read_bytes()
    try:
        text = data.decode("utf-8-sig")  # a BOM is not part of the first path
    except UnicodeDecodeError as error:
        number = data.count(b"\n", 0, error.start) + 1
        raise InputError(f"{list_file}:{number}: not UTF-8 text (byte {data[error.start]:#04x}); save the list "
                         f"as UTF-8 (e.g. iconv -f latin1 -t utf-8)") from None
    samples, lines = [], []
    root_text = os.path.normpath(os.path.abspath(root))
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        fields = line.rsplit(maxsplit=1)
        if len(fields) != 2:
            raise InputError(f"{list_file}:{number}: expected 'relative/path label', got {line[:200]!r}")
        path, label = fields
        where = f"{list_file}:{number}"
        target = os.path.normpath(os.path.join(root_text, path))
        if not allow_outside_root and (os.path.isabs(path) or os.path.commonpath([root_text, target]) != root_text):
            raise InputError(f"{where}: {path[:200]!r} is outside {root}; list paths are relative to it (pass "
                             f"--allow-outside-root to read files elsewhere)")
        samples.append((Path(root) / path, parse_class_index(label, where, num_classes)))
        lines.append(number)
    return samples, lines


def read_val_list(list_file: Path, root: Path, num_classes: Optional[int] = None,
                  allow_outside_root: bool = False) -> List[Tuple[Path, int]]:
    """The (path, label) samples of :func:`read_list`."""
    return read_list(list_file, root, num_classes, allow_outside_root)[0]


def sample_images() -> List[Tuple[Path, int]]:
    """The photographs shipped in ppim/assets/sample with their true ImageNet class ids."""
    return read_val_list(SAMPLE_LIST, SAMPLE_DIR)


# ----------------------------------------------------------------------------------------------
# Validation datasets
# ----------------------------------------------------------------------------------------------

#: File name endings (case-insensitive) taken as images in a class folder.
IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


class BadImageError(ParameterError, RuntimeError):
    """An image file that cannot be read or decoded; ``path`` names it, ``reason`` says why and
    ``hint`` what to do (by default: skip_bad=True, which a command line spells --skip-bad)."""

    SKIP_HINT = "pass {skip_bad} to skip unreadable images; they are then excluded and reported"

    def __init__(self, path: str, reason: str, hint: Optional[str] = None):
        self.path = str(path)
        self.reason = reason
        self.hint = self.SKIP_HINT if hint is None else hint
        super().__init__(f"cannot read image {self.path}: {reason} ({self.hint})",
                         **({"skip_bad": True} if hint is None else {}))

    def __reduce__(self):  # raised in loader worker processes and pickled back
        return (type(self), (self.path, self.reason, None if self.hint == self.SKIP_HINT else self.hint))


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
        self.wnid_labels = False  # folders labelled by their ImageNet class id (open_dataset)
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
    contain spaces, the label is the last field). ``num_classes``: labels must be below it (else the
    list's classes are checked by whoever infers the count, see ppim.data.labels). ``lines``: the
    line number of each sample."""

    def __init__(self, root: "str | os.PathLike[str]", list_file: "str | os.PathLike[str]",
                 transforms: Optional[Callable] = None, num_classes: Optional[int] = None,
                 allow_outside_root: bool = False):
        self.root = Path(root)
        self.list_file = Path(list_file)
        samples, self.lines = read_list(self.list_file, self.root, num_classes, allow_outside_root)
        if not samples:
            raise InputError(f"{self.list_file} lists no images")
        super().__init__(samples, transforms)


def sample_dataset(transforms: Optional[Callable] = None) -> ImageListDataset:
    """The photographs shipped in ppim/assets/sample, labelled with ImageNet class ids."""
    return ImageListDataset(SAMPLE_DIR, SAMPLE_LIST, transforms)


#: Folder names that make a DATA folder a root of splits, not a folder of classes.
SPLIT_NAMES = ("train", "val", "validation", "test")


def eval_root(data: "str | os.PathLike[str]", log: Optional[Callable[[str], None]] = None) -> Path:
    """The folder to evaluate for ``data``: itself, or, when it is a root of splits (class folders
    named train / val / test, or train_list.txt without val_list.txt), its val split (``log`` says
    so). A root without a val split raises InputError: its train images are not a val set."""
    root = Path(data)
    if root.is_file():
        raise InputError(f"{root} is a file: DATA is a folder (pass a list file with --val-list)")
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: no such folder")
    if (root / "val_list.txt").is_file():
        return root
    folders = class_folders(root)
    splits = [name for name in folders if name in SPLIT_NAMES]
    if not splits and not (root / "train_list.txt").is_file():
        return root
    for name in ("val", "validation"):
        if name in folders:
            if log is not None:
                log(f"note: {root} holds the splits {', '.join(splits)}: evaluating its val split {root / name}")
            return root / name
    found = ", ".join(splits) or "train_list.txt"
    raise InputError(f"{root} holds {found} but no val split (val/ or val_list.txt): these are not classes; "
                     f"pass the folder of held-out images")


def check_eval_classes(dataset: "ImageDataset", num_classes: int, class_names: Optional[Sequence[str]] = None
                       ) -> None:
    """InputError unless ``dataset`` can score a ``num_classes``-class model: at least 2 classes, no
    more than the model's, and labels within its head."""
    where = getattr(dataset, "list_file", None) or getattr(dataset, "root", "the data")
    classes = getattr(dataset, "classes", None)
    if classes is not None:
        if len(classes) < 2:
            raise InputError(f"{where} has {len(classes)} class folder{'s' if len(classes) != 1 else ''} "
                             f"({', '.join(classes)}): evaluation needs a folder of at least 2 class folders; "
                             f"pass its parent")
        if len(classes) > num_classes:
            raise InputError(f"{where} has {len(classes)} class folders but the model has {num_classes} classes: "
                             f"it is not this model's data")
        if class_names is None and num_classes != len(classes) and not dataset.wnid_labels:
            raise InputError(f"{where} has {len(classes)} class folders ({', '.join(classes[:5])}"
                             f"{' ...' if len(classes) > 5 else ''}) but the model has {num_classes} classes: "
                             f"their labels would not be the model's; evaluate a model trained on these classes")
        return
    labels = sorted(set(dataset.labels))
    if len(labels) < 2:
        raise InputError(f"{where} has {len(labels)} class label{'s' if len(labels) != 1 else ''}: evaluation "
                         f"needs at least 2 classes")
    if labels[0] < 0 or labels[-1] >= num_classes:
        raise InputError(f"{where} has labels {labels[0]}..{labels[-1]}, outside the model's {num_classes} "
                         f"classes 0..{num_classes - 1}: it is not this model's data")


def open_dataset(data: "str | os.PathLike[str] | None" = None,
                 val_list: "str | os.PathLike[str] | None" = None,
                 transforms: Optional[Callable] = None, num_classes: Optional[int] = None,
                 class_names: Optional[Sequence[str]] = None,
                 log: Optional[Callable[[str], None]] = None, allow_outside_root: bool = False) -> ImageDataset:
    """The dataset tools/eval.py evaluates:

    * no ``data`` and no ``val_list``: the sample shipped with ppim;
    * ``val_list``: its lines, paths relative to ``data`` (default: the list's folder); a relative
      ``val_list`` not found from the working directory is looked up in ``data``;
    * ``data`` holding a ``val_list.txt`` (PaddleClas' layout): that list;
    * ``data`` a root of splits (train/ and val/ folders): its val split, said through ``log``
      (see eval_root; without one, an error);
    * otherwise the ImageNet folder layout, sorted class folders = class index. When the folders are
      WordNet ids but fewer than the model's 1000 classes (an ImageNet subset), each folder gets its
      ImageNet class id instead (``num_classes`` tells the model's class count). ``class_names``
      (a fine-tuned model's, index order) label each folder by its name's index.

    With ``num_classes`` the classes are checked against the model (check_eval_classes)."""
    if data is None and val_list is None:
        return sample_dataset(transforms)
    if val_list is not None:
        list_path = Path(val_list)
        if not list_path.is_file() and data is not None and not list_path.is_absolute():
            list_path = Path(data) / list_path
        if not list_path.is_file():
            raise FileNotFoundError(f"--val-list {val_list}: no such file")
        dataset = ImageListDataset(data if data is not None else list_path.parent, list_path, transforms, num_classes,
                                   allow_outside_root)
    else:
        root = eval_root(data, log)
        if (root / "val_list.txt").is_file():
            dataset = ImageListDataset(root, root / "val_list.txt", transforms, num_classes, allow_outside_root)
        else:
            dataset = _open_class_folders(root, transforms, num_classes, class_names)
    if num_classes is not None:
        check_eval_classes(dataset, num_classes, class_names)
    return dataset


def _open_class_folders(root: Path, transforms: Optional[Callable], num_classes: Optional[int],
                        class_names: Optional[Sequence[str]]) -> "ImageFolderDataset":
    folders = class_folders(root)
    if class_names is not None:
        index = {name: i for i, name in enumerate(class_names)}
        unknown = [name for name in folders if name not in index]
        if unknown:
            raise InputError(f"{root} has class folders the model does not know: {', '.join(unknown[:10])} (its "
                             f"classes: {', '.join(list(class_names)[:10])}{' ...' if len(class_names) > 10 else ''})")
        return ImageFolderDataset(root, transforms, class_to_idx={name: index[name] for name in folders})
    wnids = imagenet_class_to_idx()
    if (num_classes == len(wnids) and folders and len(folders) < len(wnids)
            and all(name in wnids for name in folders)):
        dataset = ImageFolderDataset(root, transforms, class_to_idx={name: wnids[name] for name in folders})
        dataset.wnid_labels = True
        return dataset
    return ImageFolderDataset(root, transforms)
