"""Pretrained weights: the local cache and the downloader.

Weights live in ``$PPIM_HOME/weights/<file_name>`` (``PPIM_HOME`` defaults to ``~/.cache/ppim``).

* A download goes to a unique ``.part`` file in the weights directory and is moved into place with
  ``os.replace`` only once it is complete (byte count checked against Content-Length) and has passed
  the caller's ``validate``. A failed or interrupted download leaves no cache entry and no temp file.
* Next to each downloaded file a ``<file_name>.sha256`` sidecar (``sha256sum`` format) records its
  hash; a cache hit re-hashes the file and raises :class:`CorruptWeightsError` on a mismatch.
* A file put in the weights directory by hand (no sidecar) is used as it is: offline machines.
* ``<file_name>.lock`` (an OS file lock) serialises check-then-download across processes, so N
  processes asking for the same file at once make one download. Lock files are left in place on
  purpose: deleting a lock file another process is waiting on breaks the mutual exclusion.

Loading (the last section) reads weight files without running pickled code, checks them
against the model and adapts classifier size and positional-embedding grid.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import email.message
import email.utils
import errno
import hashlib
import json
import html
import logging
import math
import os
import pickle
import re
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Callable, Iterator, List, Optional, TypeVar
from urllib.parse import parse_qsl, unquote, urlencode, urljoin, urlsplit

import numpy as np
import requests
from tqdm import tqdm

from .errors import PpimError
from .registry import model_name
from .safe_pickle import AllowlistUnpickler, latin1_encode

try:  # POSIX
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None
try:  # Windows
    import msvcrt
except ImportError:
    msvcrt = None

__all__ = [
    "WeightsError",
    "WeightsDownloadError",
    "CorruptWeightsError",
    "InvalidWeightsError",
    "ppim_home",
    "weights_dir",
    "cached_file_path",
    "sha256_file",
    "download_to_cache",
    "read_pdparams",
    "read_weights",
    "StateReport",
    "check_state",
    "adapt_state",
    "save_pdparams",
    "load_pretrained",
]

_logger = logging.getLogger(__name__)

ENV_PPIM_HOME = "PPIM_HOME"
DEFAULT_PPIM_HOME = "~/.cache/ppim"
SHA256_SUFFIX = ".sha256"
LOCK_SUFFIX = ".lock"
PART_SUFFIX = ".part"

#: Seconds before the first retry; retry k waits RETRY_BASE_DELAY * 2 ** (k - 1) (1 s, 2 s, 4 s).
RETRY_BASE_DELAY = 1.0
#: Bytes read from the network (and from disk when hashing) at a time.
CHUNK_SIZE = 1 << 20

_T = TypeVar("_T")


# ----------------------------------------------------------------------------------------------
# Errors
# ----------------------------------------------------------------------------------------------


class WeightsError(PpimError, RuntimeError):
    """Base class of the errors raised while getting pretrained weights."""


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


class CorruptWeightsError(WeightsError):
    """A cached file no longer matches the sha256 recorded when it was downloaded."""


class InvalidWeightsError(WeightsError):
    """A downloaded file was rejected by the caller's ``validate`` function; nothing was cached."""


# ----------------------------------------------------------------------------------------------
# Cache locations
# ----------------------------------------------------------------------------------------------


def ppim_home() -> Path:
    """The ppim data directory: ``$PPIM_HOME``, else ``~/.cache/ppim`` (read at each call)."""
    return Path(os.path.expanduser(os.environ.get(ENV_PPIM_HOME) or DEFAULT_PPIM_HOME))


def weights_dir() -> Path:
    """The weights cache directory, ``ppim_home() / "weights"``."""
    return ppim_home() / "weights"


def cached_file_path(file_name: str) -> Path:
    """Where ``file_name`` lives in the weights cache (whether or not it is there yet)."""
    return weights_dir() / _checked_file_name(file_name)


def _checked_file_name(file_name: str) -> str:
    if not file_name or file_name in (".", "..") or "/" in file_name or "\\" in file_name:
        raise ValueError(f"file_name must be a plain file name, got {file_name!r}")
    return file_name


def _sidecar_path(path: Path) -> Path:
    return path.with_name(path.name + SHA256_SUFFIX)


# ----------------------------------------------------------------------------------------------
# Integrity
# ----------------------------------------------------------------------------------------------


def sha256_file(path: "str | os.PathLike[str]") -> str:
    """The sha256 hex digest of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(CHUNK_SIZE), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _use_cached(path: Path) -> bool:
    """True if ``path`` is in the cache and intact; raises CorruptWeightsError if it is not intact.

    A file with a sha256 sidecar (written at download time) is hashed and compared; a file without
    one was put there by hand and is used as it is.
    """
    if not path.is_file():
        return False
    sidecar = _sidecar_path(path)
    if not sidecar.is_file():
        return True
    recorded = sidecar.read_text(encoding="utf-8").split()
    expected = recorded[0].lower() if recorded else "<empty sidecar>"
    actual = sha256_file(path)
    if actual != expected:
        raise CorruptWeightsError(
            f"Cached weights file {path} is corrupt: its sha256 is {actual}, but {expected} was "
            f"recorded in {sidecar.name} when it was downloaded. Delete {path} (and {sidecar}) "
            f"to download it again."
        )
    return True


def write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temp file in the same folder and a rename: readers see
    the old file or the whole new one, never a part."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=PART_SUFFIX)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        _remove_quietly(tmp)
        raise


def _json_default(value):
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def write_json(path: "str | os.PathLike[str]", data) -> None:
    """``data`` as indented JSON (numpy scalars and paths as plain values), written atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(data, indent=2, allow_nan=False, default=_json_default) + "\n"
    write_atomic(path, text.encode("utf-8"))


def _remove_quietly(path: "str | Path") -> None:
    with contextlib.suppress(FileNotFoundError):
        os.remove(path)


# ----------------------------------------------------------------------------------------------
# File names from URLs and Content-Disposition
# ----------------------------------------------------------------------------------------------


def _safe_file_name(name: Optional[str]) -> Optional[str]:
    """The last path component of ``name``, or None if nothing usable is left."""
    if not name:
        return None
    name = name.replace("\\", "/").rsplit("/", 1)[-1].strip()
    return None if name in ("", ".", "..") else name


def _content_disposition_file_name(value: Optional[str]) -> Optional[str]:
    """The file name in a Content-Disposition value; ``filename*=`` (RFC 6266) wins over ``filename=``."""
    if not value:
        return None
    msg = email.message.Message()
    msg["content-disposition"] = value
    plain, extended = None, None
    for key, param in msg.get_params(header="content-disposition", failobj=[]):
        if key.lower() != "filename":
            continue
        if isinstance(param, tuple):  # RFC 2231 / 6266 filename*=charset'lang'value
            extended = email.utils.collapse_rfc2231_value(param)
        elif plain is None:
            plain = param
    return _safe_file_name(extended or plain)


def _file_name_from_url(url: str) -> Optional[str]:
    """The file name a URL itself tells, without the network.

    A ``responseContentDisposition`` / ``response-content-disposition`` query parameter (Baidu BCE,
    S3 pre-signed URLs) wins; otherwise the last path segment, if it looks like a file (has a dot).
    """
    parts = urlsplit(url)
    for key, value in parse_qsl(parts.query):
        if key.replace("-", "").lower() == "responsecontentdisposition":
            name = _content_disposition_file_name(value)
            if name:
                return name
    name = _safe_file_name(unquote(parts.path))
    return name if name and "." in name.strip(".") else None


def _file_name_from_server(url: str, *, timeout: float, retries: int) -> str:
    """Ask the server (Content-Disposition of a GET whose body is not read) for the file name."""

    def probe() -> str:
        with _open(url, timeout) as response:
            header = response.headers.get("Content-Disposition")
        name = _content_disposition_file_name(header) or _safe_file_name(unquote(urlsplit(url).path))
        if not name:
            raise WeightsDownloadError(
                f"Cannot tell a file name for {url}: the URL has none and the server sent no "
                f"Content-Disposition file name. Pass file_name=...", url=url)
        return name

    return _with_retries(url, None, retries, probe)


# ----------------------------------------------------------------------------------------------
# Inter-process lock
# ----------------------------------------------------------------------------------------------


@contextlib.contextmanager
def _file_lock(lock_path: Path, waiting_note: Optional[str] = None) -> Iterator[None]:
    """Hold an exclusive OS lock on ``lock_path`` (flock on POSIX; msvcrt, best effort, on Windows).

    ``waiting_note`` is printed to stderr if another process holds the lock.
    """
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        if fcntl is not None:
            try:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    if waiting_note:
                        print(waiting_note, file=sys.stderr, flush=True)
                    fcntl.flock(fd, fcntl.LOCK_EX)
            except OSError as e:  # e.g. a network file system without locks: go on unlocked
                if e.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):
                    raise
                _logger.warning("cannot lock %s (%s); concurrent downloads are not serialised",
                                lock_path, e)
        elif msvcrt is not None:  # pragma: no cover - Windows
            while True:
                try:
                    msvcrt.locking(fd, msvcrt.LK_LOCK, 1)  # itself retries for ~10 s
                    break
                except OSError:
                    continue
        yield
    finally:
        if fcntl is None and msvcrt is not None:  # pragma: no cover - Windows
            with contextlib.suppress(OSError):
                os.lseek(fd, 0, os.SEEK_SET)
                msvcrt.locking(fd, msvcrt.LK_UNLCK, 1)
        os.close(fd)  # closing the descriptor also releases a flock


# ----------------------------------------------------------------------------------------------
# Download
# ----------------------------------------------------------------------------------------------


class _HTTPStatusError(Exception):
    def __init__(self, status: int, reason: str):
        super().__init__(f"HTTP {status} {reason}".rstrip())
        self.status = status


class _TruncatedError(Exception):
    pass


# Failures worth another attempt (besides HTTP 5xx).
_NETWORK_ERRORS = (
    requests.ConnectionError,  # includes ConnectTimeout and read timeouts raised mid-body
    requests.Timeout,
    requests.exceptions.ChunkedEncodingError,  # connection closed mid-body
    requests.exceptions.ContentDecodingError,
    _TruncatedError,
)


def _get(url: str, timeout: float, cookies=None) -> requests.Response:
    response = requests.get(
        url, stream=True, timeout=timeout, cookies=cookies,
        # identity: the byte count must match Content-Length, and we hash what is stored.
        headers={"Accept-Encoding": "identity", "User-Agent": "ppim"},
    )
    if response.status_code >= 400:
        response.close()
        raise _HTTPStatusError(response.status_code, response.reason or "")
    return response


def _confirmation_url(response: requests.Response) -> Optional[str]:
    """Google Drive answers a download of a large file with an HTML page ("can't scan this file
    for viruses") whose form, or older cookie/link, carries a confirm token. Returns the URL that
    downloads the file, or None when the response is not such a page."""
    if not response.headers.get("Content-Type", "").startswith("text/html"):
        return None
    for name, value in response.cookies.items():
        if name.startswith("download_warning"):
            return _with_query(response.url, {"confirm": value})
    page = response.text
    form = re.search(r'<form[^>]*id="download-form"[^>]*action="([^"]+)"', page)
    if form:
        fields = dict(re.findall(r'<input[^>]*type="hidden"[^>]*name="([^"]+)"[^>]*value="([^"]*)"', page))
        return _with_query(html.unescape(form.group(1)), fields)
    link = re.search(r'href="([^"]*confirm=[^"]+)"', page)
    if link:
        return urljoin(response.url, html.unescape(link.group(1)))
    raise WeightsDownloadError(
        f"{response.url} answered with a web page instead of the file (for Google Drive: the file "
        "is not shared publicly or its download quota is exceeded). Download it in a browser and "
        "place it by hand in the weights directory", url=response.url)


def _with_query(url: str, fields: "dict[str, str]") -> str:
    parts = urlsplit(url)
    query = dict(parse_qsl(parts.query))
    query.update(fields)
    return parts._replace(query=urlencode(query)).geturl()


@contextlib.contextmanager
def _open(url: str, timeout: float) -> Iterator[requests.Response]:
    """A streamed GET, through Google Drive's confirmation page if one comes; raises
    _HTTPStatusError for status >= 400."""
    response = _get(url, timeout)
    try:
        confirmed = _confirmation_url(response)
        if confirmed is not None:
            cookies = response.cookies
            response.close()
            response = _get(confirmed, timeout, cookies)
            if _confirmation_url(response) is not None:
                raise WeightsDownloadError(f"{url}: the download was not confirmed", url=url)
        yield response
    finally:
        response.close()


def _hand_place_hint(path: Optional[Path]) -> str:
    if path is None:
        return f"download the file elsewhere, put it in {weights_dir()} and pass file_name=..."
    return f"place the file by hand at {path}"


def _describe(error: Exception) -> str:
    # requests wraps urllib3's MaxRetryError, whose .reason is the informative part
    reason = getattr(error.args[0], "reason", None) if error.args else None
    return f"{type(error).__name__}: {reason or error}"


def _attempts(n: int) -> str:
    return f"{n} attempt" if n == 1 else f"{n} attempts"


def _with_retries(url: str, path: Optional[Path], retries: int, attempt: Callable[[], _T]) -> _T:
    """Run ``attempt`` up to ``retries + 1`` times, with exponential backoff between attempts.

    Network errors, timeouts, truncated bodies and HTTP 5xx are retried; HTTP 4xx is not.
    All failures end in WeightsDownloadError naming the URL and where a hand-placed file would go.
    """
    attempts = max(0, retries) + 1
    for number in range(1, attempts + 1):
        try:
            return attempt()
        except _HTTPStatusError as e:
            if e.status < 500:
                raise WeightsDownloadError(
                    f"Downloading {url} failed: {e}. Check the URL; if you have the file, "
                    f"{_hand_place_hint(path)}", url=url, path=path, status=e.status) from None
            if number == attempts:
                raise WeightsDownloadError(
                    f"Downloading {url} failed after {_attempts(attempts)}: {e}. Try again later, "
                    f"or {_hand_place_hint(path)}", url=url, path=path, status=e.status) from None
            error: Exception = e
        except _NETWORK_ERRORS as e:
            if number == attempts or isinstance(e, requests.exceptions.SSLError):  # SSL: no retry
                raise WeightsDownloadError(
                    f"Could not download {url} after {_attempts(number)} ({_describe(e)}). "
                    f"Check the network connection, "
                    f"or {_hand_place_hint(path)}", url=url, path=path) from e
            error = e
        except requests.RequestException as e:  # a malformed or unsupported URL: no retry
            raise WeightsDownloadError(
                f"Cannot download {url} ({_describe(e)}). Check the URL, "
                f"or {_hand_place_hint(path)}", url=url, path=path) from e
        delay = RETRY_BASE_DELAY * 2 ** (number - 1)
        _logger.warning("Downloading %s failed (%s); retrying in %.3g s (attempt %d of %d)",
                        url, _describe(error), delay, number + 1, attempts)
        time.sleep(delay)
    raise AssertionError("unreachable")  # pragma: no cover


def _download_once(url: str, path: Path, *, timeout: float, progress: bool) -> "tuple[str, str]":
    """One GET of ``url`` into a fresh temp file next to ``path``.

    Returns (temp file path, sha256). The temp file is removed if anything goes wrong.
    """
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=PART_SUFFIX)
    try:
        with os.fdopen(fd, "wb") as f, _open(url, timeout) as response:
            length = response.headers.get("Content-Length")
            total = int(length) if length and length.isdigit() else None
            digest = hashlib.sha256()
            received = 0
            with tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024,
                      desc=path.name, disable=not progress, file=sys.stderr) as bar:
                for chunk in response.iter_content(CHUNK_SIZE):
                    f.write(chunk)
                    digest.update(chunk)
                    received += len(chunk)
                    bar.update(len(chunk))
            if total is not None and received != total:
                raise _TruncatedError(f"received {received} of {total} bytes")
            f.flush()
            os.fsync(f.fileno())
        return tmp, digest.hexdigest()
    except BaseException:
        _remove_quietly(tmp)
        raise


def download_to_cache(
    url: str,
    file_name: Optional[str] = None,
    *,
    validate: Optional[Callable[[Path], None]] = None,
    progress: bool = True,
    timeout: float = 30.0,
    retries: int = 3,
) -> Path:
    """Return the cached path of ``url``'s file, downloading it first if it is not cached.

    Args:
        url: http(s) URL of the file.
        file_name: name in the cache. Default: the name the URL tells (a
            ``responseContentDisposition`` query parameter, else the last path segment if it has an
            extension); failing that, the server's Content-Disposition file name.
        validate: called with the downloaded temp file before it enters the cache; an exception
            from it rejects the file (:class:`InvalidWeightsError`, nothing cached).
        progress: show a tqdm progress bar on stderr.
        timeout: seconds for connecting and for each read.
        retries: attempts after the first one on network errors, timeouts, truncated bodies and
            HTTP 5xx, waiting RETRY_BASE_DELAY * 1, 2, 4, ... seconds; HTTP 4xx is not retried.

    A cached file is checked against its sha256 sidecar (:class:`CorruptWeightsError` on mismatch);
    a hand-placed file (no sidecar) is used as it is. Neither touches the network, unless the name
    can only come from the server's Content-Disposition (then one GET asks for it first).
    Concurrent callers (threads or processes) wait on ``<file_name>.lock``; one downloads.

    Raises:
        WeightsDownloadError, CorruptWeightsError, InvalidWeightsError (all WeightsError).
    """
    if file_name is None:
        file_name = _file_name_from_url(url)
    if file_name is None:  # only then is the network needed to tell the name
        file_name = _file_name_from_server(url, timeout=timeout, retries=retries)
    path = cached_file_path(file_name)
    if _use_cached(path):
        return path

    path.parent.mkdir(parents=True, exist_ok=True)
    lock = path.with_name(path.name + LOCK_SUFFIX)
    note = f"Waiting for another process downloading {path.name} ..." if progress else None
    with _file_lock(lock, note):
        if _use_cached(path):  # another process downloaded it while we waited
            return path
        if progress:
            print(f"Downloading {url} to {path}", file=sys.stderr, flush=True)
        tmp, sha256 = _with_retries(
            url, path, retries, lambda: _download_once(url, path, timeout=timeout, progress=progress))
        try:
            if validate is not None:
                try:
                    validate(Path(tmp))
                except Exception as e:
                    raise InvalidWeightsError(
                        f"The file downloaded from {url} for {path.name} is not valid weights: "
                        f"{e}. Nothing was kept in the cache; check the URL or the file."
                    ) from e
            sidecar = _sidecar_path(path)
            # Sidecar first: a crash between the two leaves a sidecar without its file (re-downloaded
            # next time), never an unverifiable file.
            write_atomic(sidecar, f"{sha256}  {path.name}\n".encode("utf-8"))
            os.replace(tmp, path)
        finally:
            _remove_quietly(tmp)  # already gone after os.replace
    return path


# ----------------------------------------------------------------------------------------------
# Reading weight files and loading them into a model
# ----------------------------------------------------------------------------------------------

TORCH_SUFFIXES = (".pth", ".pth.tar", ".pt", ".bin", ".tar")
_PDPARAMS_META_KEYS = ("StructuredToParameterName@@", "UnpackBigParamInfor@@")


_RECONSTRUCT = np.ndarray.__reduce__(np.zeros(0))[0]  # numpy's array rebuilder, whatever its module


class _PdparamsUnpickler(AllowlistUnpickler):
    """paddle.save files are pickled dicts of numpy arrays; only numpy's array and dtype
    reconstruction is allowed, so a hostile file cannot run anything (paddle.load would)."""

    allowed = {
        ("collections", "OrderedDict"): collections.OrderedDict,
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("builtins", "tuple"): tuple,  # paddle.save stores some tensors as (name, array)
        ("numpy.core.multiarray", "_reconstruct"): _RECONSTRUCT,
        ("numpy._core.multiarray", "_reconstruct"): _RECONSTRUCT,
        ("_codecs", "encode"): latin1_encode,  # array bytes in protocol-2 files (paddle.save(protocol=2))
    }


def read_pdparams(path: "str | os.PathLike[str]") -> "dict[str, np.ndarray]":
    """A .pdparams file (paddle.save of a state dict) -> {name: array}, without running pickled code."""
    try:
        with open(path, "rb") as file:
            state = _PdparamsUnpickler(file).load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError) as e:
        raise InvalidWeightsError(f"{path} is not a readable .pdparams file: {e}") from e
    if not isinstance(state, dict):
        raise InvalidWeightsError(f"{path} holds a {type(state).__name__}, not a state dict")
    arrays = {}
    for key, value in state.items():
        if key in _PDPARAMS_META_KEYS:
            continue
        if isinstance(value, tuple) and len(value) == 2:  # (tensor name, array)
            value = value[1]
        if not isinstance(value, np.ndarray) or value.dtype == object:
            raise InvalidWeightsError(f"{path}: entry {key!r} is a {type(value).__name__}, not an array")
        arrays[key] = value
    return arrays


def is_torch_checkpoint(name: "str | os.PathLike[str]") -> bool:
    return str(name).lower().endswith(TORCH_SUFFIXES)


def read_weights(path: "str | os.PathLike[str]", model=None, name: Optional[str] = None) -> "dict[str, np.ndarray]":
    """A weights file -> {name: array} in Paddle's layout. PyTorch checkpoints (.pth, .pth.tar,
    .bin, ...; told by ``name``, default the path) are converted for ``model`` (its layers tell
    which weights to transpose)."""
    if is_torch_checkpoint(name or path):
        from .convert.mapping import convert_checkpoint

        if model is None:
            raise ValueError(f"converting the PyTorch checkpoint {path} needs the target model")
        return convert_checkpoint(path, model)
    return read_pdparams(path)


def resize_pos_embed(pos_embed: np.ndarray, grid: int) -> np.ndarray:
    """(1, 1 + g*g, D) positional embedding -> (1, 1 + grid*grid, D): the cls row is kept, the
    patch rows are resized as a g x g image, bicubic (timm's rule for fine-tuning at another size)."""
    import paddle

    old = int(round(math.sqrt(pos_embed.shape[1] - 1)))
    if old * old != pos_embed.shape[1] - 1:
        raise ValueError(f"positional embedding of {pos_embed.shape[1] - 1} patch rows is not a square grid")
    dim = pos_embed.shape[2]
    patches = paddle.to_tensor(pos_embed[0, 1:].reshape(1, old, old, dim).transpose(0, 3, 1, 2))
    patches = paddle.nn.functional.interpolate(patches, size=[grid, grid], mode="bicubic", align_corners=False)
    patches = patches.numpy().transpose(0, 2, 3, 1).reshape(1, grid * grid, dim)
    return np.concatenate([pos_embed[:, :1], patches], axis=1).astype(pos_embed.dtype)


@dataclasses.dataclass
class StateReport:
    """How a state dict fits a model: keys that load as they are, keys adapted (positional
    embedding resized), classifier keys dropped (another class count), and the problems."""

    matched: List[str]
    resized: List[str]
    dropped: List[str]
    missing: List[str]
    unexpected: List[str]
    mismatched: List[str]  # "key: file [shape], model [shape]"

    @property
    def ok(self) -> bool:
        return not (self.missing or self.unexpected or self.mismatched)

    def problems(self) -> str:
        def listed(title: str, keys: List[str]) -> str:
            return f"{title} ({len(keys)}): {', '.join(keys[:10])}{' ...' if len(keys) > 10 else ''}"

        parts = [listed(title, keys) for title, keys in (
            ("missing", self.missing), ("unexpected", self.unexpected), ("shape mismatches", self.mismatched))
            if keys]
        return "; ".join(parts)


def check_state(model, state: "dict[str, np.ndarray]") -> StateReport:
    """Compare ``state`` (Paddle layout) with ``model``'s parameters and buffers."""
    expected = {key: tuple(value.shape) for key, value in model.state_dict().items()}
    classifier = tuple(f"{name}." for name in model.pretrained_cfg.get("classifier", ()))
    report = StateReport([], [], [], [], [], [])
    for key, value in state.items():
        shape = tuple(value.shape)
        if key.startswith(classifier) and expected.get(key) != shape:
            report.dropped.append(key)  # another class count, or a model built without heads
        elif key not in expected:
            report.unexpected.append(key)
        elif shape == expected[key]:
            report.matched.append(key)
        elif key == "pos_embed" and len(shape) == 3 and shape[2] == expected[key][2]:
            report.resized.append(key)
        else:
            report.mismatched.append(f"{key}: file {list(shape)}, model {list(expected[key])}")
    present = set(state)
    report.missing = [key for key in expected if key not in present and not key.startswith(classifier)]
    return report


def adapt_state(model, state: "dict[str, np.ndarray]", source: "str | os.PathLike[str]") -> "dict[str, np.ndarray]":
    """Check ``state`` against ``model`` and adapt what can be adapted: classifier weights of another
    class count are dropped (warned; the model keeps its fresh heads), a positional embedding of
    another grid is resized. Anything else that differs raises InvalidWeightsError naming ``source``
    and the keys."""
    report = check_state(model, state)
    if not report.ok:
        name = model_name(model)
        raise InvalidWeightsError(f"{source} does not fit {name}: {report.problems()}. Check that the "
                                  f"file is {name}'s weights (ppim.get_model_cfg({name!r})['weights']).")
    if report.dropped:
        warnings.warn(f"{source}: classifier weights not loaded (the model has "
                      f"{model.pretrained_cfg.get('num_classes')} classes, so they stay freshly "
                      f"initialised): {', '.join(report.dropped)}", stacklevel=3)
    adapted = {key: state[key] for key in report.matched}
    for key in report.resized:
        adapted[key] = resize_pos_embed(state[key], int(round(math.sqrt(model.state_dict()[key].shape[1] - 1))))
    return adapted


def save_pdparams(state: "dict[str, np.ndarray]", path: "str | os.PathLike[str]") -> str:
    """Write a state dict as .pdparams atomically (temp file, then rename) with a sha256 sidecar;
    returns the sha256."""
    import paddle

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=PART_SUFFIX)
    os.close(fd)
    try:
        paddle.save(dict(state), tmp)
        sha256 = sha256_file(tmp)
        write_atomic(_sidecar_path(path), f"{sha256}  {path.name}\n".encode("utf-8"))
        os.replace(tmp, path)
    finally:
        _remove_quietly(tmp)
    return sha256


def _is_url(text: str) -> bool:
    return text.startswith(("http://", "https://"))


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
    file_name = file_name or _file_name_from_url(url)
    converted = None
    if file_name and is_torch_checkpoint(file_name):
        converted = cached_file_path(_converted_name(file_name))
        if _use_cached(converted):
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
        if _is_url(source):
            state = _fetch_and_read(model, source, None, progress)
        elif not os.path.isfile(source):
            raise FileNotFoundError(f"pretrained={source!r}: no such file (pass True for the "
                                    f"registered weights, or a path or URL of a weights file)")
        elif is_torch_checkpoint(source):
            converted = cached_file_path(_local_converted_name(source))
            if _use_cached(converted):
                state = adapt_state(model, read_pdparams(converted), converted)
            else:
                weights_dir().mkdir(parents=True, exist_ok=True)
                state = _read_checked(model, source, converted)
        else:
            state = adapt_state(model, read_weights(source, model), source)
    set_weights(model, state)


def set_weights(model, state: "dict[str, np.ndarray]") -> None:
    """Load a checked state into ``model``; parameters it lacks (dropped heads) keep their values."""
    for key, value in model.state_dict().items():
        state.setdefault(key, value)
    model.set_state_dict(state)
