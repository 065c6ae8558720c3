"""Token-label files: the official per-image ``.pt`` layout and ppim's packed layout.

A token label is a float16 array [2, k, H, W] (TokenLabeling's generate_label.py): [0] the teacher's
top-k raw dense scores, [1] their class indices (stored as float16, exact below 2048).

- Official: ``root/<class folder>/<image stem>.pt``, one ``torch.save``'d tensor per training image.
  Read without torch through the project's allowlisting checkpoint reader; written without torch
  (a zip archive torch.load reads, like torch.save's).
- Packed (ours): ``root/token_labels.json`` names one or more parts; each part is a memory-mapped
  ``<part>.npy`` (n, 2, k, H, W) float16, its index ``<part>.keys.txt`` (one ``class/stem`` key per
  row) and ``<part>.done.npy`` (which rows are written, so an interrupted run resumes). Ranks of a
  sharded run each write their own part; one reader sees them all.
"""

from __future__ import annotations

import json
import os
import struct
import tempfile
import zipfile
from pathlib import Path
from typing import Dict, Iterable, Iterator, List, Optional, Sequence, Tuple

import numpy as np

from ...data.labels import LabelError, check_class_indices
from ...errors import InputError
from ...fileio import atomic_path, write_atomic, write_json
from ...weights.errors import CheckpointError
from ...weights.torch_reader import load_torch_checkpoint

__all__ = ["TokenLabelError", "LabelShape", "label_key", "check_shape", "check_grid", "check_key", "check_label",
           "check_rows",
           "read_official_label",
           "write_official_label", "OfficialLabels", "PackedLabels", "PackedLabelWriter",
           "OfficialLabelWriter", "open_token_labels", "open_label_writer", "convert_token_labels",
           "PACKED_META"]

PACKED_META = "token_labels.json"
_FORMAT = "ppim.token_labels"
_VERSION = 1
_MAX_TOPK = 64          # official files hold 5; more is a broken or hostile file
_MAX_SIDE = 512         # score-map side (official: 18; 14 for a 224 LV-ViT teacher)

LabelShape = Tuple[int, int, int, int]


class TokenLabelError(InputError):
    """A token-label file or folder is missing, malformed or inconsistent."""


def label_key(image_path: "str | os.PathLike[str]") -> str:
    """The label key of an image, as the official reader derives it: ``<class folder>/<stem>``,
    the stem cut at the file name's first dot."""
    path = Path(image_path)
    return f"{path.parent.name}/{path.name.split('.')[0]}"


def check_shape(shape: Sequence, where: str) -> LabelShape:
    """A plausible token-label shape (2, k, H, W) as ints, or TokenLabelError naming ``where``."""
    if len(shape) != 4 or not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in shape) \
            or shape[0] != 2:
        raise TokenLabelError(f"{where}: expected a tensor [2, k, H, W] (top-k scores and class "
                              f"indices), found shape {list(shape)}")
    _, k, height, width = (int(v) for v in shape)
    if not (1 <= k <= _MAX_TOPK and 1 <= height <= _MAX_SIDE and 1 <= width <= _MAX_SIDE):
        raise TokenLabelError(f"{where}: implausible token-label shape {list(shape)} "
                              f"(k <= {_MAX_TOPK}, sides <= {_MAX_SIDE})")
    return (2, k, height, width)


def check_grid(shape: LabelShape, grid: int, where: str) -> bool:
    """The documented rule for label maps (H, W) and the model's token grid (grid x grid): maps of
    the grid's size are used as they are; square maps up to twice as fine are resized to the grid
    by roi_align as TokenLabeling does (its released 18 x 18 labels train a 14 x 14 grid) and True
    is returned (worth a note); anything else is refused: labels made for another input size."""
    height, width = shape[2], shape[3]
    if height == width == grid:
        return False
    if height == width and grid < height <= 2 * grid:
        return True
    raise TokenLabelError(f"{where}: label maps are {height} x {width} but the model's token grid is {grid} x "
                          f"{grid} (maps from the grid to twice as fine are resized by roi_align); these labels "
                          f"were made for another input size: make them for this model "
                          f"(tools/make_token_labels.py) or train at the size they were made for")


def check_key(key: str, where: str) -> str:
    """A label key must be ``<class folder>/<stem>``: two plain path parts (no traversal)."""
    parts = key.split("/")
    if len(parts) != 2 or any(not p or p in (".", "..") or "\\" in p or "\0" in p for p in parts):
        raise TokenLabelError(f"{where}: {key[:80]!r} is not a '<class folder>/<image stem>' label key")
    return key


def check_label(array: np.ndarray, where: str, shape: Optional[LabelShape] = None,
                num_classes: Optional[int] = None) -> np.ndarray:
    """Validate one token label ([2, k, H, W] scores and indices) and return it as float16.

    Raises TokenLabelError naming ``where`` when the layout is wrong, the scores are not finite, the
    indices break ppim.data.labels' rule (whole numbers in 0 .. num_classes - 1), or ``shape`` is
    given and differs.
    """
    if not isinstance(array, np.ndarray):
        raise TokenLabelError(f"{where}: expected one tensor [2, k, H, W], found {type(array).__name__}")
    check_shape(array.shape, where)
    if shape is not None and tuple(array.shape) != tuple(shape):
        raise TokenLabelError(f"{where}: shape {list(array.shape)} differs from the other labels' "
                              f"{list(shape)}; regenerate the labels with one teacher and image size")
    if not np.issubdtype(array.dtype, np.floating) and not np.issubdtype(array.dtype, np.integer):
        raise TokenLabelError(f"{where}: dtype {array.dtype} is not numeric")
    out = array.astype(np.float16, copy=False)
    check_rows(out[None], [where], num_classes)
    return out


def check_rows(labels: np.ndarray, names: Sequence[str], num_classes: Optional[int] = None) -> None:
    """Token labels (n, 2, k, H, W): finite scores, class indices by ppim.data.labels' rule;
    TokenLabelError naming the first bad row by ``names[row]``."""
    with np.errstate(invalid="ignore"):
        bad_scores = ~np.isfinite(labels[:, 0]).reshape(len(labels), -1).all(axis=1)
    if bad_scores.any():
        raise TokenLabelError(f"{names[int(np.flatnonzero(bad_scores)[0])]}: scores (row 0) must be finite numbers")
    try:
        check_class_indices(labels[:, 1], "", num_classes)
    except LabelError:
        for row in range(len(labels)):
            try:
                check_class_indices(labels[row, 1], "", num_classes)
            except LabelError as error:
                raise TokenLabelError(f"{names[row]}{error} (row 1 of the label)") from None


def read_official_label(path: "str | os.PathLike[str]") -> np.ndarray:
    """One official ``.pt`` token label as float16 [2, k, H, W], read without torch."""
    try:
        value = load_torch_checkpoint(path)
    except CheckpointError as exc:
        raise TokenLabelError(str(exc)) from exc
    except OSError as exc:
        raise TokenLabelError(f"{path}: cannot read token label: {exc.strerror or exc}") from exc
    return check_label(value, str(path))


# --- writing the torch.save zip layout without torch ------------------------------------------
def _tensor_pickle(shape: Sequence[int]) -> bytes:
    """data.pkl of a contiguous float16 tensor on storage '0' (pickle protocol 2, as torch.save)."""
    def uint(value: int) -> bytes:
        return b"J" + struct.pack("<i", value)  # BININT

    def text(value: str) -> bytes:
        data = value.encode()
        return b"X" + struct.pack("<I", len(data)) + data  # BINUNICODE

    def tup(items: Iterable[bytes]) -> bytes:
        return b"(" + b"".join(items) + b"t"

    strides, step = [], 1
    for side in reversed(shape):
        strides.insert(0, step)
        step *= side
    storage = tup([text("storage"), b"ctorch\nHalfStorage\n", text("0"), text("cpu"), uint(step)])
    args = tup([storage + b"Q",  # BINPERSID: the storage record
                uint(0), tup(uint(s) for s in shape), tup(uint(s) for s in strides),
                b"\x89",  # NEWFALSE: requires_grad
                b"ccollections\nOrderedDict\n)R"])  # empty backward hooks
    return b"\x80\x02ctorch._utils\n_rebuild_tensor_v2\n" + args + b"R."


def _aligned_write(archive: zipfile.ZipFile, name: str, data: bytes, alignment: int = 64) -> None:
    """Store ``data`` so that it starts on an ``alignment`` boundary (torch aligns its records)."""
    info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
    info.compress_type = zipfile.ZIP_STORED
    header = 30 + len(name.encode())
    offset = archive.fp.tell() + header + 4  # + the padding field's own 4-byte header
    pad = (-offset) % alignment
    info.extra = b"FB" + struct.pack("<H", pad) + b"Z" * pad
    archive.writestr(info, data)


def official_label_bytes(label: np.ndarray, name: str = "archive") -> bytes:
    """The bytes of a ``.pt`` file torch.load reads as the float16 tensor ``label``."""
    label = np.ascontiguousarray(check_label(label, name), dtype="<f2")
    with tempfile.SpooledTemporaryFile(max_size=1 << 24) as buffer:
        with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as archive:
            _aligned_write(archive, f"{name}/data.pkl", _tensor_pickle(label.shape))
            _aligned_write(archive, f"{name}/byteorder", b"little")
            _aligned_write(archive, f"{name}/data/0", label.tobytes())
            _aligned_write(archive, f"{name}/version", b"3\n")
        buffer.seek(0)
        return buffer.read()


def write_official_label(path: "str | os.PathLike[str]", label: np.ndarray) -> None:
    """Write one token label as an official ``.pt`` file (atomically; no torch needed)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, official_label_bytes(label, path.stem or "archive"))


# --- readers ------------------------------------------------------------------------------------
class OfficialLabels:
    """The official layout: ``labels[key]`` reads ``root/<key>.pt`` (float16 [2, k, H, W])."""

    format = "official"

    def __init__(self, root: "str | os.PathLike[str]"):
        self.root = Path(root)
        if not self.root.is_dir():
            raise TokenLabelError(f"{self.root}: no such token-label folder")
        self.shape: Optional[LabelShape] = None

    def path(self, key: str) -> Path:
        return self.root / f"{key}.pt"

    def __contains__(self, key: str) -> bool:
        return self.path(key).is_file()

    def keys(self) -> List[str]:
        return sorted(f"{p.parent.name}/{p.stem}" for p in self.root.glob("*/*.pt"))

    def where(self, key: str) -> str:
        """The file that holds ``key``'s label (for error messages)."""
        return str(self.path(key))

    def settle_shape(self, keys: Sequence[str], samples: int = 7) -> LabelShape:
        """The set's label shape: the most common among up to ``samples`` files spread over ``keys``
        (not simply the first file read, so one odd file is blamed itself, not the normal ones)."""
        picked = sorted({keys[int(i)] for i in np.linspace(0, len(keys) - 1, min(samples, len(keys)))})
        shapes: Dict[LabelShape, int] = {}
        for key in picked:
            if key in self:
                shape = tuple(read_official_label(self.path(key)).shape)
                shapes[shape] = shapes.get(shape, 0) + 1  # type: ignore[index]
        if shapes:
            self.shape = max(shapes, key=lambda shape: (shapes[shape], -int(np.prod(shape))))
        return self.shape  # type: ignore[return-value]

    def __getitem__(self, key: str) -> np.ndarray:
        path = self.path(key)
        if not path.is_file():
            raise TokenLabelError(f"{path}: no token label for image {key!r} (is --token-label-data "
                                  f"the label folder of this training set?)")
        label = check_label(read_official_label(path), str(path), self.shape)
        self.shape = self.shape or label.shape  # every file of one set has one shape
        return label


def _part_files(root: Path, part: str) -> Tuple[Path, Path, Path]:
    return root / f"{part}.npy", root / f"{part}.keys.txt", root / f"{part}.done.npy"


def _read_meta(root: Path) -> dict:
    meta_path = root / PACKED_META
    try:
        if meta_path.stat().st_size > 1 << 20:
            raise TokenLabelError(f"{meta_path}: too large for a token-label index")
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise TokenLabelError(f"{meta_path}: unreadable packed token-label index: {exc}") from exc
    ok = (isinstance(meta, dict) and meta.get("format") == _FORMAT
          and isinstance(meta.get("parts"), list) and isinstance(meta.get("label_shape"), list)
          and len(meta["label_shape"]) == 4 and all(isinstance(p, str) and "/" not in p and
                                                    p and not p.startswith(".") for p in meta["parts"]))
    if not ok:
        raise TokenLabelError(f"{meta_path}: not a ppim packed token-label index")
    if meta.get("version") != _VERSION:
        raise TokenLabelError(f"{meta_path}: format version {meta.get('version')!r}; this ppim reads "
                              f"version {_VERSION}")
    return meta


class PackedLabels:
    """The packed layout (see the module docstring), memory-mapped: ``labels[key]`` is one row."""

    format = "packed"

    def __init__(self, root: "str | os.PathLike[str]"):
        self.root = Path(root)
        meta = _read_meta(self.root)
        self.shape = check_shape(meta["label_shape"], str(self.root / PACKED_META))
        self._parts: List[str] = list(meta["parts"])
        self._arrays: List[np.ndarray] = []
        self._index: Dict[str, Tuple[int, int]] = {}
        for number, part in enumerate(meta["parts"]):
            array_path, keys_path, done_path = _part_files(self.root, part)
            try:
                array = np.load(array_path, mmap_mode="r", allow_pickle=False)
                done = np.load(done_path, allow_pickle=False)
                keys = keys_path.read_text(encoding="utf-8").splitlines()
            except (OSError, ValueError) as exc:
                raise TokenLabelError(f"{self.root}: part {part!r} is unreadable: {exc}") from exc
            if array.dtype != np.float16 or array.shape[1:] != self.shape or \
                    not (len(keys) == len(array) == len(done)):
                raise TokenLabelError(f"{array_path}: {array.dtype} {list(array.shape)} with "
                                      f"{len(keys)} keys and {len(done)} flags does not match the "
                                      f"index (float16, rows x {list(self.shape)})")
            if not bool(np.all(done)):
                raise TokenLabelError(f"{self.root}: part {part!r} is incomplete ({int(np.sum(done))} of "
                                      f"{len(done)} rows written); rerun make_token_labels with the "
                                      f"same arguments to finish it")
            self._arrays.append(array)
            for row, key in enumerate(keys):
                check_key(key, str(keys_path))
                if self._index.setdefault(key, (number, row)) != (number, row):
                    raise TokenLabelError(f"{self.root}: key {key!r} appears twice")

    def __len__(self) -> int:
        return len(self._index)

    def __contains__(self, key: str) -> bool:
        return key in self._index

    def __getstate__(self) -> dict:
        return {"root": self.root}  # spawned loader workers map the files again instead of copying them

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["root"])

    def keys(self) -> List[str]:
        return sorted(self._index)

    def where(self, key: str) -> str:
        """The part file and row that hold ``key``'s label (for error messages)."""
        part, row = self._index[key]
        return f"{self.root / (self._parts[part] + '.npy')} row {row} ({key})"

    def check(self, num_classes: int, chunk: int = 4096) -> None:
        """Every row by check_rows' rule (finite scores, class indices in 0 .. num_classes - 1), in
        chunks of the memory map; TokenLabelError naming the part file, row and key."""
        keys_by_row: Dict[Tuple[int, int], str] = {where: key for key, where in self._index.items()}
        for number, array in enumerate(self._arrays):
            for start in range(0, len(array), chunk):
                rows = np.asarray(array[start:start + chunk])
                names = [f"{self.root / (self._parts[number] + '.npy')} row {start + i} "
                         f"({keys_by_row.get((number, start + i), '?')})" for i in range(len(rows))]
                check_rows(rows, names, num_classes)

    def __getitem__(self, key: str) -> np.ndarray:
        try:
            part, row = self._index[key]
        except KeyError:
            raise TokenLabelError(f"{self.root}: no token label for image {key!r} (is --token-label-data "
                                  f"the label folder of this training set?)") from None
        return np.array(self._arrays[part][row])


def open_token_labels(path: "str | os.PathLike[str]") -> "PackedLabels | OfficialLabels":
    """A token-label reader for either layout: packed when ``path`` holds token_labels.json."""
    path = Path(path)
    if (path / PACKED_META).is_file():
        return PackedLabels(path)
    return OfficialLabels(path)


# --- writers ------------------------------------------------------------------------------------
class OfficialLabelWriter:
    """Writes ``root/<key>.pt`` files; a key whose file exists is done (writes are atomic)."""

    def __init__(self, root: "str | os.PathLike[str]", keys: Sequence[str], shape: LabelShape):
        self.root = Path(root)
        self.keys = [check_key(key, "label key") for key in keys]
        self.shape = check_shape(tuple(shape), "label shape")

    def pending(self) -> List[int]:
        return [i for i, key in enumerate(self.keys) if not (self.root / f"{key}.pt").is_file()]

    def write(self, rows: Sequence[int], labels: np.ndarray) -> None:
        for row, label in zip(rows, labels):
            write_official_label(self.root / f"{self.keys[row]}.pt",
                                 check_label(label, self.keys[row], self.shape))

    def close(self) -> None:
        pass


class PackedLabelWriter:
    """Writes one part of a packed label set; reopening an unfinished part resumes it.

    ``part`` of ``num_parts``: each rank of a sharded run writes its own part; all ranks write the
    same index file, so any of them finishing last leaves it complete.
    """

    def __init__(self, root: "str | os.PathLike[str]", keys: Sequence[str], shape: LabelShape,
                 part: int = 0, num_parts: int = 1):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.keys = [check_key(key, "label key") for key in keys]
        self.shape = check_shape(tuple(shape), "label shape")
        parts = [f"part-{i:05d}-of-{num_parts:05d}" for i in range(num_parts)]
        meta = {"format": _FORMAT, "version": _VERSION, "label_shape": list(self.shape),
                "dtype": "float16", "parts": parts}
        meta_path = self.root / PACKED_META
        if meta_path.is_file():
            old = _read_meta(self.root)
            if old["parts"] != parts or old["label_shape"] != meta["label_shape"]:
                raise TokenLabelError(
                    f"{self.root} holds packed labels of another run ({len(old['parts'])} parts of "
                    f"{old['label_shape']}); resume with the same number of processes and teacher, "
                    f"or choose a new --output")
        else:
            write_json(meta_path, meta)
        self.array_path, keys_path, self.done_path = _part_files(self.root, parts[part])
        if self.array_path.is_file():
            self.array = np.load(self.array_path, mmap_mode="r+", allow_pickle=False)
            old_keys = keys_path.read_text(encoding="utf-8").splitlines()
            if old_keys != self.keys or self.array.shape[1:] != self.shape:
                raise TokenLabelError(f"{self.array_path}: written for other images or another label "
                                      f"shape; choose a new --output")
            self.done = np.load(self.done_path, allow_pickle=False)
        else:
            write_atomic(keys_path, "".join(f"{k}\n" for k in self.keys).encode())
            with atomic_path(self.array_path) as tmp:  # a zero-filled array of every row
                np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float16,
                                          shape=(len(self.keys),) + self.shape).flush()
            self.array = np.load(self.array_path, mmap_mode="r+", allow_pickle=False)
            self.done = np.zeros(len(self.keys), dtype=bool)
            self._save_done()

    def _save_done(self) -> None:
        self.array.flush()  # rows reach the file before they are marked done
        with atomic_path(self.done_path) as tmp, open(tmp, "wb") as file:
            np.save(file, self.done)

    def pending(self) -> List[int]:
        return [int(i) for i in np.flatnonzero(~self.done)]

    def write(self, rows: Sequence[int], labels: np.ndarray) -> None:
        for row, label in zip(rows, labels):
            self.array[row] = check_label(label, self.keys[row], self.shape)
        self.done[list(rows)] = True
        self._save_done()

    def close(self) -> None:
        self.array.flush()
        del self.array


def open_label_writer(fmt: str, root: "str | os.PathLike[str]", keys: Sequence[str], shape: LabelShape,
                      part: int = 0, num_parts: int = 1) -> "PackedLabelWriter | OfficialLabelWriter":
    """A writer of ``fmt`` ('packed' or 'official') for ``keys``; see pending() to resume."""
    if fmt == "packed":
        return PackedLabelWriter(root, keys, shape, part, num_parts)
    if fmt == "official":
        return OfficialLabelWriter(root, keys, shape)
    raise ValueError(f"unknown token-label format {fmt!r}: use 'packed' or 'official'")


def _chunks(items: Sequence[int], size: int) -> Iterator[Sequence[int]]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


def convert_token_labels(src: "str | os.PathLike[str]", dst: "str | os.PathLike[str]", fmt: str,
                         progress: bool = False) -> int:
    """Copy every label of ``src`` (either layout) into ``dst`` in layout ``fmt``; returns the count.
    Resumable: rows already written are kept."""
    from tqdm import tqdm

    source = open_token_labels(src)
    keys = source.keys()
    if not keys:
        raise TokenLabelError(f"{src}: no token labels found (expected <class>/<stem>.pt files or "
                              f"a packed {PACKED_META})")
    shape = source.shape or source[keys[0]].shape
    writer = open_label_writer(fmt, dst, keys, shape)
    pending = writer.pending()
    with tqdm(total=len(keys), initial=len(keys) - len(pending), disable=not progress,
              unit="label", desc="convert") as bar:
        for rows in _chunks(pending, 256):
            writer.write(rows, np.stack([source[keys[r]] for r in rows]))
            bar.update(len(rows))
    writer.close()
    return len(keys)
