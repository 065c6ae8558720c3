"""A training run owns its output folder.

* While a run writes a folder it holds an OS lock on ``<folder>/.ppim-run.lock`` (its pid and host
  written inside): a second run into the same folder is refused at once, naming the holder. A run
  that dies (even by SIGKILL) releases the lock with its descriptor, so a stale lock file never
  blocks the next run.
* A folder that already holds a run's records (last.pdparams, best.pdparams, summary.csv) is taken
  only to continue that run (``--resume`` of a checkpoint in it) or with ``overwrite=True``, which
  removes those records first, so records of two runs are never mixed.
* The output folder may not be the data folder or lie inside it (its pictures and checkpoints would
  become training data of the next run).
"""
from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path
from typing import Optional

from ..errors import InputError
from ..fileio import atomic_path, remove_quietly
from ..weights.cache import file_lock
from ..weights.errors import WeightsLockError

__all__ = ["LOCK_NAME", "RUN_RECORDS", "RunFolder", "RunFolderError", "check_outside_data"]

#: The lock file in an output folder (hidden: data scanning skips dot files).
LOCK_NAME = ".ppim-run.lock"
#: What a run writes into its folder: present means the folder holds a run.
RUN_RECORDS = ("last.pdparams", "best.pdparams", "summary.csv", "curves.png")


class RunFolderError(InputError):
    """An output folder another run holds or is writing, or one inside the data."""


def _inside(path: Path, folder: Path) -> bool:
    path, folder = path.resolve(), folder.resolve()
    return path == folder or folder in path.parents


def check_outside_data(output: "str | os.PathLike[str]", data: "str | os.PathLike[str]",
                       flag: str = "--output") -> None:
    """RunFolderError if ``output`` is the folder ``data`` or inside it."""
    if _inside(Path(output), Path(data)):
        raise RunFolderError(f"{flag} {output} is inside the data folder {data}: what a run writes there would be "
                             f"read as data by the next run; choose a folder outside {data}")


class RunFolder:
    """The output folder of one run, locked while the run writes it (a context manager; ``acquire``
    and ``release`` may be called again, e.g. around each ``Trainer.fit``)."""

    def __init__(self, folder: "str | os.PathLike[str]"):
        self.folder = Path(folder)
        self._stack: Optional[contextlib.ExitStack] = None
        self._replace: "list[str]" = []

    @property
    def lock_path(self) -> Path:
        return self.folder / LOCK_NAME

    @property
    def held(self) -> bool:
        return self._stack is not None

    def acquire(self) -> "RunFolder":
        """Lock the folder (created if needed); RunFolderError naming the holder if another run has it."""
        if self._stack is not None:
            return self
        self.folder.mkdir(parents=True, exist_ok=True)
        stack = contextlib.ExitStack()
        try:
            stack.enter_context(file_lock(self.lock_path, timeout=0))
        except WeightsLockError:
            stack.close()
            raise RunFolderError(f"--output {self.folder} is being written by another run ({self._holder()}): "
                                 f"wait for it to finish, or choose another --output") from None
        self._stack = stack
        return self

    def release(self) -> None:
        if self._stack is not None:
            stack, self._stack = self._stack, None
            stack.close()

    def __enter__(self) -> "RunFolder":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()

    def _holder(self) -> str:
        try:
            with open(self.lock_path, "rb") as file:
                return file.read(200).decode("utf-8", "replace").strip() or "a process"
        except OSError:
            return "a process"

    def records(self) -> "list[str]":
        """The run records present in the folder."""
        return [name for name in RUN_RECORDS if (self.folder / name).exists()]

    def claim(self, resume: "str | os.PathLike[str] | None" = None, overwrite: bool = False) -> None:
        """Check that this run may take the (locked) folder: refused when it holds another run's
        records, unless ``resume`` is a checkpoint in it (the same run continues) or ``overwrite``
        (then :meth:`replace_records` removes them once the run is ready to start)."""
        self._replace = []
        present = self.records()
        if not present or (resume is not None and Path(resume).resolve().parent == self.folder.resolve()):
            return
        if overwrite:
            self._replace = present
            return
        continuing = (f"--resume {resume} is not in it, so its records would mix with this run's; "
                      if resume is not None else "")
        raise RunFolderError(f"--output {self.folder} holds another run ({', '.join(present)}): {continuing}"
                             f"continue that run with --resume {self.folder / 'last.pdparams'}, replace it with "
                             f"--overwrite, or choose a new --output")

    def replace_records(self) -> None:
        """Remove the other run's records that ``claim(overwrite=True)`` found."""
        for name in self._replace:
            remove_quietly(self.folder / name)
        self._replace = []

    def carry_over(self, resume: "str | os.PathLike[str] | None") -> None:
        """A run resumed from another folder continues there: the best.pdparams its checkpoint's
        "best" refers to comes along (the rows of summary.csv: Records' ``history``)."""
        if resume is None or Path(resume).resolve().parent == self.folder.resolve():
            return
        best = Path(resume).parent / "best.pdparams"
        if best.is_file() and not (self.folder / "best.pdparams").exists():
            with atomic_path(self.folder / "best.pdparams") as tmp:
                shutil.copyfile(best, tmp)
