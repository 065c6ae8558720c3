"""One entry point for reading weights of any supported format into Paddle's layout; the format is
told by the file's first bytes, never by its name."""
from __future__ import annotations

import os
from typing import Optional

from .torch_layout import to_paddle_layout
from .containers import Selected, select_state_dict
from .errors import InvalidWeightsError
from .pdparams import read_pickle
from .torch_reader import load_torch_checkpoint
from .unpickler import DEFAULT_MAX_BYTES

__all__ = ["PDPARAMS", "PYTORCH", "detect_format", "read_weights"]

PDPARAMS = "pdparams"
PYTORCH = "pytorch"
_ZIP = b"PK\x03\x04"
_TORCH_LEGACY = b"\x80\x02\x8a\x0a"  # protocol 2, then the 10-byte magic number torch writes first


def detect_format(path: "str | os.PathLike[str]") -> str:
    """PYTORCH (a torch.save zip or legacy pickle) or PDPARAMS (a paddle.save pickle), from the first
    bytes. Anything else (a web page, a text file, an empty file) raises InvalidWeightsError."""
    try:
        with open(path, "rb") as f:
            head = f.read(16)
    except OSError as e:
        raise InvalidWeightsError(f"cannot read {path}: {e.strerror or e}") from e
    if head.startswith(_ZIP) or head.startswith(_TORCH_LEGACY):
        return PYTORCH
    if len(head) > 1 and head[0] == 0x80 and 2 <= head[1] <= 5:
        return PDPARAMS
    looks_html = head.lstrip()[:1] == b"<"
    raise InvalidWeightsError(
        f"{path} is neither a .pdparams (paddle.save) nor a PyTorch (torch.save) file: it starts with "
        f"{head[:16]!r}" + (" - a web page saved under a weights name? Download the file again"
                            if looks_html else "; check the file"))


def read_weights(path: "str | os.PathLike[str]", model=None, *, ema: Optional[bool] = False,
                 prefer_ema: bool = False, max_bytes: int = DEFAULT_MAX_BYTES) -> Selected:
    """A weights file -> the model or EMA weights (``ema``, ``prefer_ema``: see
    :func:`select_state_dict`) in Paddle's layout, unchecked, with the container entry they came from. PyTorch checkpoints are converted for
    ``model`` (its layers tell which weights to transpose). ``max_bytes`` bounds what the file may
    make us allocate."""
    source = str(path)
    if detect_format(path) == PYTORCH:
        if model is None:
            raise ValueError(f"converting the PyTorch checkpoint {path} needs the target model")
        selected = select_state_dict(load_torch_checkpoint(path, max_bytes), ema, source, prefer_ema)
        return selected._replace(state=to_paddle_layout(selected.state, model))
    return select_state_dict(read_pickle(path, max_bytes), ema, source, prefer_ema)
