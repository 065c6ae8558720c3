"""Pretrained weights: a module per concern, imports pointing down only.

* :mod:`.errors`       the exceptions (all :class:`WeightsError`)
* :mod:`.cache`        ``$PPIM_HOME/weights`` paths, sha256 sidecars, the inter-process lock
* :mod:`.download`     HTTP with retries, Google Drive, file names from URLs and servers
* :mod:`.unpickler`    the allow-list unpickler both readers build on
* :mod:`.pdparams`     the .pdparams reader and atomic writer
* :mod:`.torch_reader` the torch-free PyTorch checkpoint reader
* :mod:`.containers`   picking the model (or EMA) weights out of a checkpoint container
* :mod:`.torch_layout` PyTorch -> Paddle key and layout mapping (a leaf: no file I/O)
* :mod:`.formats`      any supported file -> a state dict in Paddle's layout
* :mod:`.state`        checks against a model and adaptation (classifier drop, pos-embed resize)
* :mod:`.conversion`   ``convert_file``: a PyTorch checkpoint file -> a .pdparams file (ppim-convert)
* :mod:`.pretrained`   ``load_pretrained``: the orchestration the model builder calls
"""
from .cache import cached_file_path, ppim_home, sha256_file, verify_sidecar, weights_dir
from .containers import Selected, select_state_dict
from .conversion import ConversionReport, convert_file
from .download import cache_path_for, download_to_cache
from .errors import (CheckpointError, CorruptWeightsError, InvalidWeightsError, UnsafeCheckpointError,
                     WeightsDownloadError, WeightsError, WeightsLockError)
from .formats import detect_format, read_weights
from .pdparams import read_pdparams, read_pickle, save_pdparams
from .pretrained import load_pretrained, state_budget, weights_info
from .state import StateReport, adapt_state, check_state, set_weights
from .torch_reader import load_torch_checkpoint

__all__ = [
    "WeightsError", "WeightsDownloadError", "WeightsLockError", "CorruptWeightsError", "InvalidWeightsError",
    "CheckpointError", "UnsafeCheckpointError", "ppim_home", "weights_dir", "cached_file_path", "sha256_file",
    "verify_sidecar", "cache_path_for", "download_to_cache", "read_pickle", "read_pdparams", "save_pdparams",
    "load_torch_checkpoint", "Selected", "select_state_dict", "detect_format", "read_weights", "state_budget",
    "StateReport", "check_state", "adapt_state", "set_weights", "ConversionReport", "convert_file",
    "load_pretrained", "weights_info",
]
