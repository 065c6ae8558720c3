"""Writing files so that nothing is ever half-written: a temp file in the target folder, then a rename.

Used for weights, conversions, results and export manifests alike. Imports nothing of ppim.
"""
from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import Iterator, Union

import numpy as np

__all__ = ["PART_SUFFIX", "atomic_path", "remove_quietly", "write_atomic", "write_json"]

PathLike = Union[str, "os.PathLike[str]"]

#: Suffix of the temp files written next to their target (``.<name>.<random>.part``).
PART_SUFFIX = ".part"


def _umask() -> int:
    # os.umask can only be read by setting it; set it back at once (process-wide, so a race with
    # another thread changing the umask is possible but harmless: both restore the same value).
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def remove_quietly(path: PathLike) -> None:
    """Remove a file if it exists."""
    with contextlib.suppress(FileNotFoundError):
        os.remove(path)


@contextlib.contextmanager
def atomic_path(path: PathLike) -> Iterator[Path]:
    """A temp path next to ``path`` for the caller to write; on success it is renamed to ``path``
    with the permissions a plain ``open(path, "w")`` would give (0666 minus the user's umask, where
    mkstemp alone gives 0600), on failure removed. Readers see the old file or the whole new one."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=PART_SUFFIX)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    finally:
        remove_quietly(tmp)  # already gone after os.replace


def write_atomic(path: PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` through :func:`atomic_path` (fsynced before the rename)."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _json_default(value):
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def write_json(path: PathLike, data) -> None:
    """``data`` as indented JSON (numpy scalars and paths as plain values), written atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(data, indent=2, allow_nan=False, default=_json_default) + "\n"
    write_atomic(path, text.encode("utf-8"))
