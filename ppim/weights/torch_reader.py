"""Read PyTorch checkpoints (``torch.save`` files) into numpy arrays, safely.

The zip format (torch >= 1.6) is read without torch. Its ``data.pkl`` is
unpickled by a restricted unpickler: every global the pickle names must be on
an explicit allowlist, and each allowed name resolves to an inert stand-in
defined here (or a plain data type such as ``OrderedDict``), never to torch's
own functions. Any other global stops the load with ``UnsafeCheckpointError``
before anything from the file has run.

The legacy format (torch < 1.6, a bare pickle stream) needs torch, and is read
with ``torch.load(..., weights_only=True)``.
"""

from __future__ import annotations

import collections
import io
import os
import pickle
import re
import types
import zipfile
import zlib
from dataclasses import dataclass
from typing import IO, Any, Callable, Tuple

import numpy as np
from numpy.lib.stride_tricks import as_strided

from .errors import CheckpointError, UnsafeCheckpointError
from .unpickler import (DEFAULT_MAX_BYTES, AllowlistUnpickler, check_structure, is_plain_numeric, latin1_encode,
                        numpy_dtype, short_repr)

__all__ = ["load_torch_checkpoint"]

_ZIP_MAGIC = b"PK\x03\x04"
_PICKLE_PROTO = b"\x80"
_LEGACY_MAGIC_NUMBER = 0x1950A86A20F9469CFC6C
_BYTEORDERS = {b"little": "<", b"big": ">"}
#: Largest data.pkl (the structure, not the tensors) a checkpoint may have.
MAX_PICKLE_BYTES = 256 << 20


@dataclass(frozen=True, repr=False)
class _TorchDtype:
    """Stand-in for a torch dtype (or legacy storage class) in a pickle."""

    name: str
    stored_as: np.dtype  # element layout on disk; bfloat16 is read as uint16

    def __repr__(self) -> str:
        return f"torch.{self.name}"

    def decode(self, buffer: Any, count: int, byteorder: str) -> np.ndarray:
        """Return ``count`` elements of ``buffer`` as a flat native-order array."""
        raw = np.frombuffer(buffer, dtype=self.stored_as.newbyteorder(byteorder), count=count)
        if self.name == "bfloat16":
            # bfloat16 is the top half of a float32, so this is exact.
            return (raw.astype(np.uint32) << 16).view(np.float32)
        return raw.astype(raw.dtype.newbyteorder("="), copy=False)


_TORCH_DTYPES = {
    name: _TorchDtype(name, np.dtype(code))
    for name, code in [
        ("float64", "f8"),
        ("float32", "f4"),
        ("float16", "f2"),
        ("bfloat16", "u2"),
        ("complex128", "c16"),
        ("complex64", "c8"),
        ("int64", "i8"),
        ("int32", "i4"),
        ("int16", "i2"),
        ("int8", "i1"),
        ("uint64", "u8"),
        ("uint32", "u4"),
        ("uint16", "u2"),
        ("uint8", "u1"),
        ("bool", "?"),
    ]
}

# The legacy typed-storage classes, which torch still pickles for these dtypes.
_STORAGE_CLASSES = {
    "DoubleStorage": "float64",
    "FloatStorage": "float32",
    "HalfStorage": "float16",
    "BFloat16Storage": "bfloat16",
    "ComplexDoubleStorage": "complex128",
    "ComplexFloatStorage": "complex64",
    "LongStorage": "int64",
    "IntStorage": "int32",
    "ShortStorage": "int16",
    "CharStorage": "int8",
    "ByteStorage": "uint8",
    "BoolStorage": "bool",
}


def _as_dims(value: Any, what: str) -> tuple[int, ...]:
    if not isinstance(value, (tuple, list)) or not all(
        isinstance(n, int) and n >= 0 for n in value
    ):
        raise ValueError(f"tensor {what} must be non-negative integers, got {short_repr(value)}")
    return tuple(value)


def _check_view(offset: int, size: Tuple[int, ...], stride: Tuple[int, ...], storage_size: int) -> None:
    """A view must lie inside its storage. (It may overlap itself, as an expand()ed tensor does;
    its copy is charged in full to the load's byte budget, so a tiny file cannot ask for gigabytes.)"""
    last = offset + sum((n - 1) * s for n, s in zip(size, stride))
    if last >= storage_size:
        raise ValueError(f"tensor view (offset {offset}, size {size}, stride {stride}) "
                         f"runs past its storage of {storage_size} elements")


def _rebuild_parameter(data: Any, requires_grad: Any, backward_hooks: Any) -> Any:
    """Stand-in for torch._utils._rebuild_parameter: the parameter's data."""
    return data


def _rebuild_parameter_with_state(
    data: Any, requires_grad: Any, backward_hooks: Any, state: Any
) -> Any:
    """Stand-in for torch._utils._rebuild_parameter_with_state: the data only."""
    return data


def _numpy_scalar(dtype: Any, data: Any) -> Any:
    """Stand-in for numpy's scalar reconstructor (e.g. a stored np.float64 metric)."""
    if not (is_plain_numeric(dtype) and isinstance(data, bytes) and len(data) == dtype.itemsize):
        raise ValueError("malformed numpy scalar")
    return np.frombuffer(data, dtype=dtype)[0]


def _empty_bytes() -> bytes:
    """Stand-in for bytes(), which protocol-2 pickles use for b''."""
    return b""


_SAFE_GLOBALS: dict[tuple[str, str], Any] = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("builtins", "set"): set,
    ("builtins", "frozenset"): frozenset,
    ("builtins", "slice"): slice,
    ("builtins", "complex"): complex,
    ("builtins", "bytes"): _empty_bytes,
    ("_codecs", "encode"): latin1_encode,
    ("argparse", "Namespace"): types.SimpleNamespace,
    ("numpy", "dtype"): numpy_dtype,
    ("numpy.core.multiarray", "scalar"): _numpy_scalar,
    ("numpy._core.multiarray", "scalar"): _numpy_scalar,
    ("torch", "Size"): tuple,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter_with_state,
    # torch.load reads an untyped storage as bytes, and so do we.
    ("torch", "UntypedStorage"): _TORCH_DTYPES["uint8"],
    ("torch.storage", "UntypedStorage"): _TORCH_DTYPES["uint8"],
    **{("torch", name): dtype for name, dtype in _TORCH_DTYPES.items()},
    **{("torch", cls): _TORCH_DTYPES[name] for cls, name in _STORAGE_CLASSES.items()},
}


class _CheckpointUnpickler(AllowlistUnpickler):
    """Unpickler that resolves only allowlisted globals, to inert stand-ins.

    Storages are read through ``read_storage(key, nbytes)``, decoded once per key into a flat
    read-only array, and shared by every tensor viewing them. Everything the file makes us
    allocate (storages and tensor copies) is charged to ``max_bytes``; all of this state belongs
    to one load.
    """

    def __init__(self, file: IO[bytes], path: str, read_storage: Callable[[str, int], bytes] | None = None,
                 byteorder: str = "<", max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        super().__init__(file)
        self._path = path
        self._read_storage = read_storage
        self._byteorder = byteorder
        self._storages: dict[str, tuple[_TorchDtype, np.ndarray]] = {}
        self._left = max_bytes
        self._max_bytes = max_bytes
        self.allowed = {**_SAFE_GLOBALS,
                        ("torch._utils", "_rebuild_tensor_v2"): self._rebuild_tensor_v2,
                        ("torch._utils", "_rebuild_tensor_v3"): self._rebuild_tensor_v3}

    def refuse(self, qualified_name: str) -> Exception:
        return UnsafeCheckpointError(qualified_name, self._path)

    def _charge(self, nbytes: int, what: str) -> None:
        if nbytes > self._left:
            raise ValueError(f"{what} needs {nbytes} bytes, more than the {self._max_bytes} bytes this "
                             "file may hold (the limit follows the model it is loaded into, or "
                             "ppim.weights.unpickler.DEFAULT_MAX_BYTES)")
        self._left -= nbytes

    def persistent_load(self, pid: Any) -> np.ndarray:
        if self._read_storage is None:
            raise ValueError("unexpected storage reference outside a zip checkpoint")
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"):
            raise ValueError(f"unsupported persistent id {short_repr(pid)}")
        _, dtype, key, _location, numel = pid
        if not (isinstance(dtype, _TorchDtype) and isinstance(key, str) and len(key) < 256):
            raise ValueError(f"malformed storage reference {short_repr(pid)}")
        (numel,) = _as_dims((numel,), "storage size")
        if key not in self._storages:
            nbytes = numel * dtype.stored_as.itemsize
            self._charge(nbytes, f"storage {key!r}")
            buffer = self._read_storage(key, nbytes)
            self._storages[key] = (dtype, dtype.decode(buffer, numel, self._byteorder))
        cached_dtype, array = self._storages[key]
        if cached_dtype is not dtype:
            raise ValueError(f"storage {key!r} is referenced as both {cached_dtype.name} and {dtype.name}")
        return array

    def _copy_view(self, storage: Any, offset: Any, size: Any, stride: Any) -> np.ndarray:
        """Copy the strided view (offset, size, stride) of a flat storage array."""
        if not (isinstance(storage, np.ndarray) and storage.ndim == 1 and storage.flags.c_contiguous):
            raise ValueError(f"tensor storage must be a storage record, got {type(storage).__name__}")
        (offset,) = _as_dims((offset,), "storage offset")
        size, stride = _as_dims(size, "size"), _as_dims(stride, "stride")
        if len(size) != len(stride) or len(size) > 32:
            raise ValueError(f"tensor size {size} and stride {stride} differ in length (or exceed 32 dimensions)")
        if 0 in size:
            return np.zeros(size, dtype=storage.dtype)
        _check_view(offset, size, stride, storage.size)
        self._charge(int(np.prod(size, dtype=np.int64)) * storage.itemsize, f"tensor of size {size}")
        item = storage.itemsize
        return as_strided(storage[offset:], shape=size, strides=[s * item for s in stride], writeable=False).copy()

    def _rebuild_tensor_v2(self, storage: Any, storage_offset: Any, size: Any, stride: Any,
                           requires_grad: Any, backward_hooks: Any, metadata: Any = None) -> np.ndarray:
        """Stand-in for torch._utils._rebuild_tensor_v2: a contiguous numpy copy."""
        return self._copy_view(storage, storage_offset, size, stride)

    def _rebuild_tensor_v3(self, storage: Any, storage_offset: Any, size: Any, stride: Any, requires_grad: Any,
                           backward_hooks: Any, dtype: Any, metadata: Any = None) -> np.ndarray:
        """Stand-in for torch._utils._rebuild_tensor_v3 (untyped storage plus a dtype)."""
        if not (isinstance(dtype, _TorchDtype) and isinstance(storage, np.ndarray)):
            raise ValueError("_rebuild_tensor_v3 needs a storage record and a torch dtype")
        # torch writes little-endian files in practice; it does not byte-swap
        # untyped storages either, so there is no byteorder record to honour here.
        typed = dtype.decode(storage, storage.nbytes // dtype.stored_as.itemsize, "<")
        return self._copy_view(typed, storage_offset, size, stride)


def _unpickle(unpickler: _CheckpointUnpickler, path: str, what: str) -> Any:
    try:
        result = unpickler.load()
        check_structure(result, what)
        return result
    except UnsafeCheckpointError:
        raise
    except Exception as exc:  # any failure on untrusted input is a bad file
        raise CheckpointError(f"{path}: cannot read {what}: {exc}") from exc


def _record_prefix(archive: zipfile.ZipFile, path: str) -> str:
    prefixes = [
        name[: -len("/data.pkl")]
        for name in archive.namelist()
        if name.endswith("/data.pkl") and name.count("/") == 1
    ]
    if len(prefixes) != 1:
        raise CheckpointError(
            f"{path} is a zip archive but not a torch.save checkpoint: expected one "
            f"'<name>/data.pkl' record, found {len(prefixes)}"
        )
    return prefixes[0]


def _read_member(archive: zipfile.ZipFile, name: str, nbytes: int | None, limit: int) -> bytes:
    """A member's bytes, checked against its declared size before anything is decompressed (a zip
    bomb declares small sizes; zipfile never inflates past the declared size, and reading the whole
    member makes it check the CRC)."""
    try:
        info = archive.getinfo(name)
    except KeyError:
        raise ValueError(f"record {name!r} is missing") from None
    if nbytes is not None and info.file_size != nbytes:
        raise ValueError(f"record {name!r} declares {info.file_size} bytes, its tensor needs {nbytes}")
    if info.file_size > limit:
        raise ValueError(f"record {name!r} declares {info.file_size} bytes, more than the {limit} allowed")
    with archive.open(info) as member:
        data = member.read(info.file_size)
        if member.read(1):
            raise ValueError(f"record {name!r} holds more than the {info.file_size} bytes it declares")
    if len(data) != info.file_size:
        raise ValueError(f"record {name!r} holds {len(data)} bytes, it declares {info.file_size}")
    return data


def _read_byteorder(archive: zipfile.ZipFile, prefix: str, path: str) -> str:
    if f"{prefix}/byteorder" not in archive.NameToInfo:
        return "<"  # written before torch recorded byte order: little-endian
    record = _read_member(archive, f"{prefix}/byteorder", None, 64).strip()
    if record not in _BYTEORDERS:
        raise CheckpointError(f"{path}: unknown byteorder record {short_repr(record)}")
    return _BYTEORDERS[record]


def _load_zip(file: IO[bytes], path: str, max_bytes: int) -> Any:
    try:
        with zipfile.ZipFile(file) as archive:
            prefix = _record_prefix(archive, path)
            byteorder = _read_byteorder(archive, prefix, path)

            def read_storage(key: str, nbytes: int) -> bytes:
                return _read_member(archive, f"{prefix}/data/{key}", nbytes, max_bytes)

            data_pkl = _read_member(archive, f"{prefix}/data.pkl", None, min(max_bytes, MAX_PICKLE_BYTES))
            unpickler = _CheckpointUnpickler(io.BytesIO(data_pkl), path, read_storage, byteorder, max_bytes)
            return _unpickle(unpickler, path, f"{prefix}/data.pkl")
    except CheckpointError:
        raise
    except (zipfile.BadZipFile, zipfile.LargeZipFile, NotImplementedError, ValueError, OSError, EOFError,
            zlib.error) as exc:
        raise CheckpointError(
            f"{path} starts like a zip-format PyTorch checkpoint, but the archive "
            f"is unreadable (truncated or corrupt?): {exc}"
        ) from exc


def _check_legacy_magic(file: IO[bytes], path: str) -> None:
    magic = _unpickle(_CheckpointUnpickler(file, path), path, "its first pickle")
    if type(magic) is not int or magic != _LEGACY_MAGIC_NUMBER:
        raise CheckpointError(
            f"{path} is a pickle, but not a torch.save checkpoint (no legacy magic number)"
        )


def _torch_to_numpy(obj: Any, torch: Any) -> Any:
    if isinstance(obj, torch.Tensor):
        tensor = obj.detach().cpu()
        if tensor.dtype == torch.bfloat16:
            tensor = tensor.float()  # exact: numpy has no bfloat16
        return np.array(tensor.numpy(), order="C", copy=True)
    if isinstance(obj, dict):
        items = {key: _torch_to_numpy(value, torch) for key, value in obj.items()}
        return collections.OrderedDict(items) if isinstance(obj, collections.OrderedDict) else items
    if isinstance(obj, list):
        return [_torch_to_numpy(value, torch) for value in obj]
    if isinstance(obj, tuple):
        return tuple(_torch_to_numpy(value, torch) for value in obj)
    return obj


def _load_legacy(path: str) -> Any:
    try:
        import torch
    except ImportError:
        raise CheckpointError(
            f"{path} is in the legacy (pre-1.6) PyTorch format, which only torch "
            "can read: `pip install torch`, or re-save it once with torch >= 1.6 "
            "in the zip format: `torch.save(torch.load(f, weights_only=True), g)`."
        ) from None
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        forbidden = re.search(r"GLOBAL ([\w.]+)", str(exc))
        if forbidden:
            raise UnsafeCheckpointError(forbidden[1], path) from exc
        raise CheckpointError(f"{path}: torch.load(weights_only=True) failed: {exc}") from exc
    except Exception as exc:  # torch raises many types for a damaged file
        raise CheckpointError(
            f"{path}: torch.load(weights_only=True) failed (truncated or corrupt?): {exc!r}"
        ) from exc
    try:
        check_structure(obj, path)
    except ValueError as exc:
        raise CheckpointError(str(exc)) from None
    return _torch_to_numpy(obj, torch)


def load_torch_checkpoint(path: str | os.PathLike[str], max_bytes: int = DEFAULT_MAX_BYTES) -> Any:
    """Load a ``torch.save`` file as nested Python containers and numpy arrays.

    Tensors and ``nn.Parameter`` become contiguous numpy copies (bfloat16 as
    float32, exactly); dicts, OrderedDicts, lists and tuples keep their shape,
    ``argparse.Namespace`` becomes ``types.SimpleNamespace``. Zip-format files
    are read without torch, within the bounds of :mod:`.unpickler`, and may make
    us allocate at most ``max_bytes`` for their tensors; legacy (pre-1.6) files
    need torch and are read by ``torch.load(weights_only=True)``, torch's bounds.

    Raises:
        UnsafeCheckpointError: the pickle names a global outside the allowlist.
        CheckpointError: the file is not a readable PyTorch checkpoint.
    """
    path = os.fspath(path)
    with open(path, "rb") as file:
        head = file.read(len(_ZIP_MAGIC))
        if head == _ZIP_MAGIC:
            return _load_zip(file, path, max_bytes)
        if not head.startswith(_PICKLE_PROTO):
            raise CheckpointError(
                f"{path} is not a PyTorch checkpoint: it is neither a zip archive "
                f"(torch >= 1.6) nor a legacy pickle stream; it starts with {head!r}. Check the file "
                "(a web page saved under a weights name starts with '<')"
            )
        file.seek(0)
        _check_legacy_magic(file, path)
    return _load_legacy(path)
