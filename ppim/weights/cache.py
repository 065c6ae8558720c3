"""The weights cache: where files live, their sha256 sidecars, and the lock that serialises writers.

Weights live in ``$PPIM_HOME/weights/<file_name>`` (``PPIM_HOME`` defaults to ``~/.cache/ppim``).

* Next to each file ppim writes into the cache a ``<file_name>.sha256`` sidecar (``sha256sum``
  format) records its hash; a cache hit re-hashes the file and raises :class:`CorruptWeightsError`
  on a mismatch.
* A file put in the weights directory by hand (no sidecar) is used as it is: offline machines.
* ``<file_name>.lock`` (an OS file lock) serialises check-then-write across processes. Lock files
  are left in place on purpose: deleting a lock file another process is waiting on breaks the
  mutual exclusion.
"""
from __future__ import annotations

import contextlib
import errno
import hashlib
import logging
import os
import sys
from pathlib import Path
from typing import Iterator, Optional

from ..fileio import write_atomic
from .errors import CorruptWeightsError

try:  # POSIX
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None
try:  # Windows
    import msvcrt
except ImportError:
    msvcrt = None

__all__ = ["ENV_PPIM_HOME", "ppim_home", "weights_dir", "cached_file_path", "sha256_file", "sidecar_path",
           "write_sidecar", "use_cached", "file_lock"]

_logger = logging.getLogger(__name__)

ENV_PPIM_HOME = "PPIM_HOME"
DEFAULT_PPIM_HOME = "~/.cache/ppim"
SHA256_SUFFIX = ".sha256"
LOCK_SUFFIX = ".lock"

#: Bytes read from disk at a time when hashing.
CHUNK_SIZE = 1 << 20


def ppim_home() -> Path:
    """The ppim data directory: ``$PPIM_HOME``, else ``~/.cache/ppim`` (read at each call)."""
    return Path(os.path.expanduser(os.environ.get(ENV_PPIM_HOME) or DEFAULT_PPIM_HOME))


def weights_dir() -> Path:
    """The weights cache directory, ``ppim_home() / "weights"``."""
    return ppim_home() / "weights"


def cached_file_path(file_name: str) -> Path:
    """Where ``file_name`` lives in the weights cache (whether or not it is there yet)."""
    return weights_dir() / _checked_file_name(file_name)


def _checked_file_name(file_name: str) -> str:
    if not file_name or file_name in (".", "..") or "/" in file_name or "\\" in file_name:
        raise ValueError(f"file_name must be a plain file name, got {file_name!r}")
    return file_name


def sidecar_path(path: Path) -> Path:
    """The ``<name>.sha256`` file next to ``path``."""
    return path.with_name(path.name + SHA256_SUFFIX)


def sha256_file(path: "str | os.PathLike[str]") -> str:
    """The sha256 hex digest of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(CHUNK_SIZE), b""):
            digest.update(chunk)
    return digest.hexdigest()


def write_sidecar(path: Path, sha256: str) -> None:
    """Record ``sha256`` as the hash of ``path`` (atomically, in ``sha256sum`` format)."""
    write_atomic(sidecar_path(path), f"{sha256}  {path.name}\n".encode("utf-8"))


def use_cached(path: Path) -> bool:
    """True if ``path`` is in the cache and intact; raises CorruptWeightsError if it is not intact.

    A file with a sha256 sidecar is hashed and compared; a file without one was put there by hand
    and is used as it is.
    """
    if not path.is_file():
        return False
    sidecar = sidecar_path(path)
    if not sidecar.is_file():
        return True
    recorded = sidecar.read_text(encoding="utf-8").split()
    expected = recorded[0].lower() if recorded else "<empty sidecar>"
    actual = sha256_file(path)
    if actual != expected:
        raise CorruptWeightsError(
            f"Cached weights file {path} is corrupt: its sha256 is {actual}, but {expected} was "
            f"recorded in {sidecar.name} when it was downloaded. Delete {path} (and {sidecar}) "
            f"to download it again."
        )
    return True


@contextlib.contextmanager
def file_lock(lock_path: Path, waiting_note: Optional[str] = None) -> Iterator[None]:
    """Hold an exclusive OS lock on ``lock_path`` (flock on POSIX; msvcrt, best effort, on Windows).

    ``waiting_note`` is printed to stderr if another process holds the lock.
    """
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        if fcntl is not None:
            try:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    if waiting_note:
                        print(waiting_note, file=sys.stderr, flush=True)
                    fcntl.flock(fd, fcntl.LOCK_EX)
            except OSError as e:  # e.g. a network file system without locks: go on unlocked
                if e.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):
                    raise
                _logger.warning("cannot lock %s (%s); concurrent downloads are not serialised",
                                lock_path, e)
        elif msvcrt is not None:  # pragma: no cover - Windows
            while True:
                try:
                    msvcrt.locking(fd, msvcrt.LK_LOCK, 1)  # itself retries for ~10 s
                    break
                except OSError:
                    continue
        yield
    finally:
        if fcntl is None and msvcrt is not None:  # pragma: no cover - Windows
            with contextlib.suppress(OSError):
                os.lseek(fd, 0, os.SEEK_SET)
                msvcrt.locking(fd, msvcrt.LK_UNLCK, 1)
        os.close(fd)  # closing the descriptor also releases a flock
