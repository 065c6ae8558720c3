"""The base class of the errors ppim raises for bad input or a bad environment, as opposed to bugs.

Command lines (ppim.cli) print a PpimError as one ``error: ...`` line and exit with status 2; any
other exception is a bug and keeps its traceback. Every message names what was wrong and the way
out. This module imports nothing of ppim, so any module may use it.
"""

__all__ = ["PpimError", "InputError"]


class PpimError(Exception):
    """An expected failure: a file, argument, download or environment ppim cannot work with.
    Subclasses: ppim.registry.UnknownModelError, ppim.data.BadImageError, the weights errors
    (WeightsError, CheckpointError), InputError."""


class InputError(PpimError, ValueError):
    """An argument, list file or data folder that cannot be used (a ValueError too)."""
