"""The base class of the errors ppim raises for bad input or a bad environment, as opposed to bugs.

Command lines (ppim.cli) print a PpimError as one ``error: ...`` line and exit with status 2; any
other exception is a bug and keeps its traceback. Every message names what was wrong and the way
out. This module imports nothing of ppim, so any module may use it.
"""

__all__ = ["PpimError", "InputError", "CapabilityError", "MissingExtraError"]


class PpimError(Exception):
    """An expected failure: a file, argument, download or environment ppim cannot work with.
    Subclasses: ppim.registry.UnknownModelError, ppim.data.BadImageError, the weights errors
    (WeightsError, CheckpointError), InputError, CapabilityError."""


class InputError(PpimError, ValueError):
    """An argument, list file or data folder that cannot be used (a ValueError too)."""


class CapabilityError(PpimError, RuntimeError):
    """What was asked cannot run on this machine (an instruction set, a GPU, a Paddle build): the
    message says what it needs and what runs here instead (ppim.runtime, ppim.deploy.registry)."""


class MissingExtraError(CapabilityError, ImportError):
    """An optional extra (openvino, onnxruntime, ...) is not installed: the message names the pip line."""
