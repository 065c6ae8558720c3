"""The base class of the errors ppim raises for bad input or a bad environment, as opposed to bugs.

Command lines (ppim.cli) print a PpimError as one ``error: ...`` line and exit with status 2; any
other exception is a bug and keeps its traceback. Every message names what was wrong and the way
out. This module imports nothing of ppim, so any module may use it.
"""

import re

__all__ = ["PpimError", "InputError", "ParameterError", "CapabilityError", "MissingExtraError"]


class PpimError(Exception):
    """An expected failure: a file, argument, download or environment ppim cannot work with.
    Subclasses: ppim.registry.UnknownModelError, ppim.data.BadImageError, the weights errors
    (WeightsError, CheckpointError), InputError, CapabilityError."""


class InputError(PpimError, ValueError):
    """An argument, list file or data folder that cannot be used (a ValueError too)."""


class ParameterError(InputError):
    """A value of a named parameter that cannot be used. The message is a template whose ``{name}``
    fields are parameter names, given as keywords with their values: ``str()`` writes them as a
    library user passes them (``lr=0.0``), a command line as its flags (``--lr 0.0``, see
    ppim.cli.common), so neither is told about arguments they never wrote. ``{name:name}`` writes
    the parameter without its value (``lr`` / ``--lr``), as does the value ``NAME_ONLY``, and
    ``{name:=V}`` with the value V instead of its own (``lr=V`` / ``--lr V``)."""

    NAME_ONLY = object()

    def __init__(self, template: str, **values):
        self.template, self.values = template, values
        super().__init__(str(self))

    @property
    def params(self):
        """The parameter names the message is about, in order."""
        return list(self.values)

    def render(self, spell) -> str:
        """The message with each parameter written by ``spell(name, value)`` (value NAME_ONLY: none).
        Only ``{name}`` fields of the given parameters are replaced: other braces (in a path, say)
        stay as they are."""
        def replace(match: "re.Match[str]") -> str:
            name, spec = match.group(1), match.group(2) or ""
            if name not in self.values:
                return match.group(0)
            return format(_Spelled(name, self.values[name], spell), spec)

        return _FIELD.sub(replace, self.template)

    def __str__(self) -> str:
        return self.render(lambda name, value: name if value is self.NAME_ONLY else f"{name}={value!r}")


_FIELD = re.compile(r"\{(\w+)(?::([^{}]*))?\}")


class _Spelled:
    """A parameter in a ParameterError template: formats as ``spell`` writes it."""

    def __init__(self, name: str, value, spell):
        self.name, self.value, self.spell = name, value, spell

    def __format__(self, spec: str) -> str:
        if spec.startswith("="):
            return self.spell(self.name, _Literal(spec[1:]))
        return self.spell(self.name, ParameterError.NAME_ONLY if spec == "name" else self.value)


class _Literal(str):
    """A value written as it is (no quotes) in a ParameterError message."""

    def __repr__(self) -> str:
        return str(self)


class CapabilityError(PpimError, RuntimeError):
    """What was asked cannot run on this machine (an instruction set, a GPU, a Paddle build): the
    message says what it needs and what runs here instead (ppim.runtime, ppim.deploy.registry)."""


class MissingExtraError(CapabilityError, ImportError):
    """An optional extra (openvino, onnxruntime, ...) is not installed: the message names the pip line."""
