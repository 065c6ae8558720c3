"""Unpickling weight files without running them: every global a pickle names must be on an
explicit allowlist (the base of the .pdparams reader and the PyTorch reader)."""
from __future__ import annotations

import pickle
from typing import Any, Mapping, Tuple

# Protocol-2 pickles name Python 2 modules; pickle's own find_class would map them.
_MODULE_ALIASES = {"__builtin__": "builtins"}


def latin1_encode(text: Any, encoding: Any) -> bytes:
    """Stand-in for _codecs.encode, which protocol-2 pickles use to store bytes."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise ValueError("_codecs.encode is allowed only for latin-1 text")
    return text.encode("latin-1")


class AllowlistUnpickler(pickle.Unpickler):
    """An Unpickler that resolves a global only through ``allowed`` ((module, name) -> object);
    any other global raises ``refuse(qualified name)`` before anything from the file runs."""

    allowed: Mapping[Tuple[str, str], Any] = {}

    def refuse(self, qualified_name: str) -> Exception:
        return pickle.UnpicklingError(f"it refers to {qualified_name}, which weights never need; "
                                      "nothing from the file was run")

    def find_class(self, module: str, name: str) -> Any:
        try:
            return self.allowed[(_MODULE_ALIASES.get(module, module), name)]
        except KeyError:
            raise self.refuse(f"{module}.{name}") from None
