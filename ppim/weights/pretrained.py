"""``load_pretrained``: from ``pretrained=`` (True, a path or a URL) to checked weights set in a model.

Where things live (all under ``$PPIM_HOME/weights``, every file ppim writes with a sha256 sidecar
that is verified on each use):

* the registered weights of a model: ``<file_name>`` (a file put there by hand, without a
  sidecar, is used as it is: offline machines);
* any other URL: ``by-url/<sha256(url)[:16]>/<file name>``, so two URLs ending in the same name,
  or a server naming its file after a registered one, can never stand in for each other;
* PyTorch checkpoints converted to Paddle's layout: ``converted/<model>-<sha256(source)[:32]>-<ema>.pdparams``,
  keyed by the source's content, so a replaced source is converted again.
"""
from __future__ import annotations

import logging
import os
import sys
import warnings
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

import numpy as np

from ..registry import model_name
from .cache import cached_file_path, sha256_file, use_cached, verify_sidecar, weights_dir
from .containers import Selected
from .download import cache_path_for, download_to_cache, is_url
from .errors import CorruptWeightsError, WeightsDownloadError, WeightsError
from .formats import PYTORCH, detect_format, read_weights
from .pdparams import save_pdparams
from .state import adapt_state, set_weights
from .unpickler import DEFAULT_MAX_BYTES

__all__ = ["load_pretrained", "state_budget", "weights_info"]

_logger = logging.getLogger(__name__)

#: A weights file may make us allocate this many times the model's own parameter bytes (model, EMA,
#: two Adam moments and slack), plus BUDGET_SLACK.
BUDGET_FACTOR = 6
BUDGET_SLACK = 64 << 20


def state_budget(model) -> int:
    """Bytes a weights file for ``model`` may make us allocate: BUDGET_FACTOR x its parameters and
    buffers (float32) + BUDGET_SLACK, at most DEFAULT_MAX_BYTES."""
    numel = sum(int(np.prod(value.shape)) for value in model.state_dict().values())
    return min(DEFAULT_MAX_BYTES, BUDGET_FACTOR * 4 * numel + BUDGET_SLACK)


def _converted_path(model, source_sha256: str, ema: Optional[bool], prefer_ema: bool) -> Path:
    mode = {True: "ema", False: "model", None: "auto-ema" if prefer_ema else "auto"}[ema]
    return weights_dir() / "converted" / f"{model_name(model)}-{source_sha256[:32]}-{mode}.pdparams"


def _read_and_fit(model, path: Path, ema: Optional[bool], prefer_ema: bool, sha256: Optional[str] = None,
                  new_head: bool = True) -> Tuple[Dict[str, np.ndarray], Selected]:
    """Read ``path`` (any format), check it against ``model`` and adapt it. A PyTorch checkpoint is
    converted once: its Paddle layout (unadapted, so it serves any head or input size) is cached
    under the source's content hash. A cache that cannot be written (read-only or full) only costs
    the conversion next time."""
    budget = state_budget(model)
    converted = None
    if detect_format(path) == PYTORCH:
        converted = _converted_path(model, sha256 or sha256_file(path), ema, prefer_ema)
        try:
            if use_cached(converted):
                selected = read_weights(converted, model, ema=ema, prefer_ema=prefer_ema, max_bytes=budget)
                return adapt_state(model, selected.state, path, new_head), selected
        except CorruptWeightsError as e:
            _logger.warning("%s; converting %s again", e, path)
    selected = read_weights(path, model, ema=ema, prefer_ema=prefer_ema, max_bytes=budget)
    adapted = adapt_state(model, selected.state, path, new_head)
    if converted is not None:
        try:
            save_pdparams({selected.entry: selected.state} if selected.entry else selected.state, converted)
        except OSError as e:
            warnings.warn(f"could not cache the conversion of {path} at {converted} ({e.strerror or e}); "
                          "it is converted again next time", stacklevel=4)
    return adapted, selected


def _manual_download_hint(model, weights: Dict[str, Any], path: Path) -> str:
    browser = weights.get("source_url") or weights.get("url")
    return (f"Download {weights['file_name']} by hand: open {browser} in a browser, download the file, "
            f"and save it as exactly {path} (create the folder if needed); "
            f"ppim.create_model({model_name(model)!r}, pretrained=True) then uses it without the network.")


def load_pretrained(model, cfg: dict, pretrained: "bool | str | os.PathLike[str]" = True,
                    progress: bool = True, ema: Optional[bool] = None, new_head: bool = True) -> Dict[str, Any]:
    """Load weights into ``model`` in place and return what was loaded (also kept as
    ``model.pretrained_info``): source, path, sha256, format, the container entry and whether
    the weights are EMA weights.

    ``pretrained``: True (the weights registered in ``cfg``), or a local file or URL (.pdparams, a
    PyTorch checkpoint, or a training checkpoint of either). ``ema``: True/False picks the EMA or
    the model weights of a checkpoint that holds both; None follows the cfg (``weights["prefer_ema"]``:
    EMA when the file has it, as for super_lvvit_s, whose published accuracy is the EMA's) and a
    ppim training checkpoint's own "eval_weights". ``new_head``: a classifier that does not fit the
    model (another class count) is dropped with a warning, the model keeping its fresh heads (fine-tuning);
    False makes that an error instead (the model would score with random heads).
    """
    weights = cfg.get("weights") or {}
    prefer_ema = bool(weights.get("prefer_ema"))
    checked = None
    if pretrained is True:
        url, file_name = weights.get("url"), weights.get("file_name")
        if not file_name:
            raise WeightsError(f"{model_name(model)} has no registered weights; pass pretrained= a path or URL "
                               "of its weights")
        path = cached_file_path(file_name)
        source = url or str(path)
        if url:
            try:
                path, sha256, checked = _fetch(model, url, file_name, ema, prefer_ema, progress, new_head)
            except WeightsDownloadError as e:
                if "drive.google.com" not in f"{url} {weights.get('source_url') or ''}":
                    raise
                raise WeightsDownloadError(f"{e} {_manual_download_hint(model, weights, path)}",
                                           url=e.url, path=path, status=e.status) from e
        elif path.is_file():
            sha256 = verify_sidecar(path)
        else:
            raise WeightsError(f"{model_name(model)}'s weights have no download address; "
                               f"{_manual_download_hint(model, weights, path)}")
    else:
        source = os.fspath(pretrained)
        if is_url(source):
            path, sha256, checked = _fetch(model, source, None, ema, prefer_ema, progress, new_head)
        elif not os.path.isfile(source):
            raise FileNotFoundError(f"pretrained={source!r}: no such file (pass True for the "
                                    f"registered weights, or a path or URL of a weights file)")
        else:
            path = Path(source)
            sha256 = verify_sidecar(path)  # a file ppim wrote (convert_file) is checked against its sidecar
    state, selected = checked or _read_and_fit(model, path, ema, prefer_ema, sha256, new_head)
    set_weights(model, state)
    info = {"source": source, "path": str(Path(path).resolve()), "sha256": sha256,
            "format": detect_format(path), "entry": selected.entry or None, "ema": selected.ema}
    model.pretrained_info = info
    if selected.ema:
        if progress:  # once, on stderr (not also through logging, which Paddle routes to the console)
            print(f"{model_name(model)}: loaded the EMA weights ({selected.entry!r}) of {path}", file=sys.stderr,
                  flush=True)
    return info


def _fetch(model, url: str, file_name: Optional[str], ema: Optional[bool], prefer_ema: bool, progress: bool,
           new_head: bool = True) -> Tuple[Path, str, Optional[Tuple[Dict[str, np.ndarray], Selected]]]:
    """Download ``url`` into the cache (or find it there): (path, sha256, the checked state if it
    was just downloaded). A downloaded file is read and checked against the model before it is kept,
    so nothing that does not fit enters the cache, and that read is not repeated."""
    checked = []
    path = download_to_cache(url, file_name, progress=progress,
                             validate=lambda tmp: checked.append(_read_and_fit(model, tmp, ema, prefer_ema,
                                                                                     new_head=new_head)))
    return path, verify_sidecar(path), (checked[0] if checked else None)


def weights_info(pretrained: Any, cfg: Optional[Dict[str, Any]] = None) -> Optional[Dict[str, Any]]:
    """{"path", "sha256"} of the weights a model was built with: False -> None (random weights),
    True -> the registered file in the cache, a path -> that file, a URL -> its cached copy."""
    if not pretrained:
        return None
    url = None
    if pretrained is True:
        if not cfg:
            return {"path": None, "sha256": None}
        path = cached_file_path(cfg["weights"]["file_name"])
        url = cfg["weights"].get("url")
    else:
        source = os.fspath(pretrained)
        if is_url(source):
            url = source
            path = cache_path_for(url)
        else:
            path = Path(source).resolve()
    info: Dict[str, Any] = {"path": str(path) if path else None, "sha256": None}
    if url:
        info["url"] = url
    if path and Path(path).is_file():
        info["sha256"] = sha256_file(path)
    return info
