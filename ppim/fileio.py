"""Writing files so that nothing is ever half-written: a temp file in the target folder, then a rename.

Used for weights, conversions, results and export manifests alike. Imports nothing of ppim.
"""
from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import re
import socket
import tempfile
from pathlib import Path
from typing import Iterator, Union

import numpy as np

__all__ = ["ENV_PPIM_HOME", "DEFAULT_PPIM_HOME", "ppim_home", "PART_SUFFIX", "atomic_path", "check_writable", "current_umask", "remove_quietly",
           "remove_stale_parts", "write_atomic", "write_json"]

PathLike = Union[str, "os.PathLike[str]"]

ENV_PPIM_HOME = "PPIM_HOME"
DEFAULT_PPIM_HOME = "~/.cache/ppim"


def ppim_home() -> Path:
    """The ppim data directory (weights, exports, runtime verdicts): ``$PPIM_HOME``, else
    ``~/.cache/ppim`` (read at each call)."""
    return Path(os.path.expanduser(os.environ.get(ENV_PPIM_HOME) or DEFAULT_PPIM_HOME))


#: Suffix of the temp files written next to their target (``.<name>.<random>.part``).
PART_SUFFIX = ".part"


def current_umask() -> int:
    """The process umask."""
    # os.umask can only be read by setting it; set it back at once (process-wide, so a race with
    # another thread changing the umask is possible but harmless: both restore the same value).
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _owner_tag() -> str:
    """``<pid>-<host hash>``: who writes a temp file, so a later process can tell a dead writer's."""
    return f"{os.getpid()}-{hashlib.sha1(socket.gethostname().encode()).hexdigest()[:8]}"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, another user's
        return True
    return True


def remove_stale_parts(path: PathLike) -> "list[Path]":
    """Remove the temp files :func:`atomic_path` left for ``path`` when its writer was killed: those
    of processes on this host that no longer run. Returns what was removed."""
    path = Path(path)
    host = _owner_tag().split("-", 1)[1]
    pattern = re.compile(re.escape(f".{path.name}.") + r"(\d+)-([0-9a-f]{8})\..*" + re.escape(PART_SUFFIX) + "$")
    removed = []
    with contextlib.suppress(OSError):
        for candidate in path.parent.iterdir():
            match = pattern.match(candidate.name)
            if match and match.group(2) == host and not _pid_alive(int(match.group(1))):
                remove_quietly(candidate)
                removed.append(candidate)
    return removed


def remove_quietly(path: PathLike) -> None:
    """Remove a file if it exists."""
    with contextlib.suppress(FileNotFoundError):
        os.remove(path)


@contextlib.contextmanager
def atomic_path(path: PathLike) -> Iterator[Path]:
    """A temp path next to ``path`` for the caller to write; on success it is renamed to ``path``
    with the permissions a plain ``open(path, "w")`` would give (0666 minus the user's umask, where
    mkstemp alone gives 0600), on failure removed. Readers see the old file or the whole new one.
    An OSError of the writing that names no file (a full disk) is raised naming ``path``."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.{_owner_tag()}.", suffix=PART_SUFFIX)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o666 & ~current_umask())
        os.replace(tmp, path)
    except OSError as error:
        if error.filename is None and error.errno is not None:  # a write: disk full, quota, I/O error
            raise OSError(error.errno, error.strerror or os.strerror(error.errno), str(path)) from error
        raise
    finally:
        remove_quietly(tmp)  # already gone after os.replace


def check_writable(path: PathLike) -> Path:
    """Fail now, not after a long run, if :func:`write_atomic` could not write ``path``: its folder
    is created if needed and a temp file is made and removed there, as the write will. Raises
    OSError naming ``path`` (IsADirectoryError for a folder); returns ``path`` as a Path."""
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), str(path))
    try:
        if path.parent.exists() and not path.parent.is_dir():
            raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), str(path.parent))
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=PART_SUFFIX)
        os.close(fd)
        os.remove(tmp)
    except OSError as error:  # named by the target, not by the temp file
        raise OSError(error.errno, error.strerror, str(path)) from None
    return path


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
