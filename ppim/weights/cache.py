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
import socket
import sys
import time
from pathlib import Path
from typing import Iterator, Optional

from ..fileio import ENV_PPIM_HOME, ppim_home, write_atomic
from .errors import CorruptWeightsError, WeightsLockError

try:  # POSIX
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None
try:  # Windows
    import msvcrt
except ImportError:
    msvcrt = None

__all__ = ["ENV_PPIM_HOME", "ppim_home", "weights_dir", "cached_file_path", "sha256_file", "sidecar_path",
           "write_sidecar", "verify_sidecar", "use_cached", "file_lock"]

_logger = logging.getLogger(__name__)

SHA256_SUFFIX = ".sha256"
LOCK_SUFFIX = ".lock"
#: Seconds to wait for another process holding a cache lock (a download of a large file takes minutes).
LOCK_TIMEOUT = 1800.0
ENV_LOCK_TIMEOUT = "PPIM_LOCK_TIMEOUT"

#: Bytes read from disk at a time when hashing.
CHUNK_SIZE = 1 << 20


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


def verify_sidecar(path: Path) -> str:
    """The sha256 of ``path``, checked against its ``.sha256`` sidecar when there is one (ppim writes
    one beside every file it writes); raises CorruptWeightsError on a mismatch or a garbled sidecar."""
    actual = sha256_file(path)
    sidecar = sidecar_path(Path(path))
    if not sidecar.is_file():
        return actual
    try:
        with open(sidecar, "rb") as f:
            text = f.read(1024).decode("ascii")
    except (OSError, UnicodeDecodeError) as e:
        text, reason = "", str(e)
    else:
        reason = "it is not a sha256 line"
    fields = text.split()
    expected = fields[0].lower() if fields else ""
    if len(expected) != 64 or any(c not in "0123456789abcdef" for c in expected):
        raise CorruptWeightsError(f"The sidecar {sidecar} of {path} is garbled ({reason}). Delete it (and {path} "
                                  "if you did not put it there) to use or download the file again.")
    if actual != expected:
        raise CorruptWeightsError(
            f"Weights file {path} is corrupt or was replaced: its sha256 is {actual}, but {expected} was "
            f"recorded in {sidecar.name} when ppim wrote it. Delete {path} (and {sidecar}) "
            f"to download or convert it again.")
    return actual


def use_cached(path: Path) -> bool:
    """True if ``path`` is in the cache and intact; raises CorruptWeightsError if it is not intact.

    A file with a sha256 sidecar is hashed and compared; a file without one was put there by hand
    and is used as it is.
    """
    if not path.is_file():
        return False
    verify_sidecar(path)
    return True


def _holder(fd: int) -> str:
    """Who holds a lock file, as its holder wrote it ("process 123 on host, since ...")."""
    try:
        return os.pread(fd, 200, 0).decode("utf-8", "replace").strip() or "another process"
    except OSError:
        return "another process"


@contextlib.contextmanager
def file_lock(lock_path: Path, waiting_note: Optional[str] = None,
              timeout: Optional[float] = None) -> Iterator[None]:
    """Hold an exclusive OS lock on ``lock_path`` (flock on POSIX; msvcrt, best effort, on Windows).

    The holder writes its pid and host into the file, so a waiter can say whom it waits for
    (``waiting_note`` is printed to stderr with that). After ``timeout`` seconds (default
    ``$PPIM_LOCK_TIMEOUT`` or LOCK_TIMEOUT) of waiting it gives up with WeightsLockError naming the
    holder and the way out. A holder that dies releases the lock with its descriptor.
    """
    if timeout is None:
        timeout = float(os.environ.get(ENV_LOCK_TIMEOUT) or LOCK_TIMEOUT)
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        if fcntl is not None:
            try:
                _flock_waiting(fd, lock_path, waiting_note, timeout)
                with contextlib.suppress(OSError):
                    os.ftruncate(fd, 0)
                    os.pwrite(fd, f"process {os.getpid()} on {socket.gethostname()}, since "
                                  f"{time.strftime('%Y-%m-%d %H:%M:%S')}\n".encode(), 0)
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


def _flock_waiting(fd: int, lock_path: Path, waiting_note: Optional[str], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    delay = 0.01
    noted = False
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            pass
        if waiting_note and not noted:
            print(f"{waiting_note} (held by {_holder(fd)}; waiting up to {timeout:g} s)", file=sys.stderr, flush=True)
            noted = True
        if time.monotonic() >= deadline:
            raise WeightsLockError(
                f"Gave up after {timeout:g} s waiting for {lock_path}, held by {_holder(fd)}. If that process "
                f"is stopped or hung, end it (or wait for it and retry); set {ENV_LOCK_TIMEOUT} to wait longer.",
                lock_path)
        time.sleep(delay)
        delay = min(delay * 2, 0.5)
