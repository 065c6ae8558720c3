"""``load_pretrained``: from ``pretrained=`` (True, a path or a URL) to weights set in a model."""
from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any, Dict, Optional

import numpy as np

from .cache import cached_file_path, sha256_file, use_cached, weights_dir
from .download import download_to_cache, file_name_from_url, is_url
from .formats import TORCH_SUFFIXES, is_torch_checkpoint, read_weights
from .pdparams import read_pdparams, save_pdparams
from .state import adapt_state, set_weights

__all__ = ["load_pretrained", "weights_info"]


def _converted_name(file_name: str) -> str:
    """Cache name of a converted PyTorch checkpoint: lvvit_t.pth -> lvvit_t.pdparams."""
    lower = file_name.lower()
    suffix = max((s for s in TORCH_SUFFIXES if lower.endswith(s)), key=len)
    return file_name[: -len(suffix)] + ".pdparams"


def _local_converted_name(path: str) -> str:
    """Cache name for a converted local checkpoint, tied to that file's path, size and mtime."""
    stat = os.stat(path)
    key = hashlib.sha256(f"{os.path.abspath(path)}|{stat.st_size}|{stat.st_mtime_ns}".encode()).hexdigest()
    return _converted_name(f"{os.path.basename(path).split('.')[0]}-{key[:12]}.pth")


def _read_checked(model, path: "str | os.PathLike[str]", converted: Optional[Path],
                  name: Optional[str] = None) -> "dict[str, np.ndarray]":
    """Read and check a weights file (its format told by ``name``, default the path); a PyTorch
    checkpoint is converted once and its Paddle layout cached at ``converted`` (unadapted, so it
    serves any head size or input size)."""
    state = read_weights(path, model, name)
    adapted = adapt_state(model, state, path)
    if converted is not None:
        save_pdparams(state, converted)
    return adapted


def _fetch_and_read(model, url: str, file_name: Optional[str], progress: bool) -> "dict[str, np.ndarray]":
    """Download (or find in the cache) and read; a downloaded file is checked against the model
    before it is kept, and the state read for that check is the one returned."""
    file_name = file_name or file_name_from_url(url)
    converted = None
    if file_name and is_torch_checkpoint(file_name):
        converted = cached_file_path(_converted_name(file_name))
        if use_cached(converted):
            return adapt_state(model, read_pdparams(converted), converted)
    checked = {}

    def validate(path: Path) -> None:
        checked["state"] = _read_checked(model, path, converted, file_name)

    path = download_to_cache(url, file_name, validate=validate, progress=progress)
    return checked["state"] if "state" in checked else _read_checked(model, path, converted, file_name)


def load_pretrained(model, cfg: dict, pretrained: "bool | str | os.PathLike[str]" = True,
                    progress: bool = True) -> None:
    """Load weights into ``model`` in place. ``pretrained``: True (the weights registered in
    ``cfg``), or a local file or URL (.pdparams, or a PyTorch checkpoint, converted once and cached
    as .pdparams in the weights directory)."""
    if pretrained is True:
        weights = cfg["weights"]
        state = _fetch_and_read(model, weights["url"], weights["file_name"], progress)
    else:
        source = os.fspath(pretrained)
        if is_url(source):
            state = _fetch_and_read(model, source, None, progress)
        elif not os.path.isfile(source):
            raise FileNotFoundError(f"pretrained={source!r}: no such file (pass True for the "
                                    f"registered weights, or a path or URL of a weights file)")
        elif is_torch_checkpoint(source):
            converted = cached_file_path(_local_converted_name(source))
            if use_cached(converted):
                state = adapt_state(model, read_pdparams(converted), converted)
            else:
                weights_dir().mkdir(parents=True, exist_ok=True)
                state = _read_checked(model, source, converted)
        else:
            state = adapt_state(model, read_weights(source, model), source)
    set_weights(model, state)


def weights_info(pretrained: Any, cfg: Optional[Dict[str, Any]] = None) -> Optional[Dict[str, Any]]:
    """{"path", "sha256"} of the weights a model was built with: False -> None (random weights),
    True -> the registered file in the cache, a path -> that file, a URL -> its cached copy."""
    if not pretrained:
        return None
    if pretrained is True:
        if not cfg:
            return {"path": None, "sha256": None}
        path = cached_file_path(cfg["weights"]["file_name"])
        url = cfg["weights"].get("url")
    else:
        source = os.fspath(pretrained)
        url = source if is_url(source) else None
        if url:
            name = file_name_from_url(url)
            path = cached_file_path(name) if name else None
        else:
            path = Path(source).resolve()
    info: Dict[str, Any] = {"path": str(path) if path else None, "sha256": None}
    if url:
        info["url"] = url
    if path and Path(path).is_file():
        info["sha256"] = sha256_file(path)
    return info
