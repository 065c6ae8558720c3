"""The errors of the weights package: every failure to get, read or fit weights is a WeightsError."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

from ..errors import PpimError

__all__ = ["WeightsError", "WeightsDownloadError", "WeightsLockError", "CorruptWeightsError", "InvalidWeightsError",
           "CheckpointError", "UnsafeCheckpointError"]


class WeightsError(PpimError, RuntimeError):
    """Base class of the errors raised while getting, reading or loading weights."""


class WeightsDownloadError(WeightsError):
    """A download failed: HTTP error status, or the network failed on every attempt.

    ``url``, ``path`` (where a hand-placed file would be used, if known) and ``status`` (the HTTP
    status, None for network errors) are kept as attributes.
    """

    def __init__(self, message: str, *, url: str, path: Optional[Path] = None,
                 status: Optional[int] = None):
        super().__init__(message)
        self.url = url
        self.path = path
        self.status = status


class WeightsLockError(WeightsError):
    """Waiting for another process's cache lock timed out; ``lock_path`` is the lock file."""

    def __init__(self, message: str, lock_path: Path):
        super().__init__(message)
        self.lock_path = lock_path


class CorruptWeightsError(WeightsError):
    """A cached file no longer matches the sha256 recorded when ppim wrote it."""


class InvalidWeightsError(WeightsError):
    """A file is not weights ppim can use (unreadable, refused, or not fitting the model)."""


class CheckpointError(InvalidWeightsError, ValueError):
    """A file could not be read as a checkpoint (a ValueError too, as ppim's converter raised before)."""


class UnsafeCheckpointError(CheckpointError):
    """The checkpoint names a global outside the allowlist; nothing was run."""

    def __init__(self, global_name: str, path: str) -> None:
        super().__init__(
            f"refusing to load {path}: its pickle references the global "
            f"'{global_name}', which is not on the allowlist of data-only names. "
            "Nothing from the file was executed. (A pickled nn.Module or custom "
            "object cannot be read safely; save its state_dict() instead.)"
        )
        self.global_name = global_name
        self.path = path
