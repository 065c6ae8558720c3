"""Downloading weights into the cache: HTTP with retries, Google Drive's confirmation page, and
file names told by the URL or the server.

A download goes to a unique ``.part`` file in the weights directory and is moved into place with
``os.replace`` only once it is complete (byte count checked against Content-Length) and has passed
the caller's ``validate``. A failed or interrupted download leaves no cache entry and no temp file.
N processes asking for the same file at once make one download (the cache's file lock).
"""
from __future__ import annotations

import contextlib
import email.message
import email.utils
import hashlib
import html
import logging
import os
import re
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Iterator, Optional, TypeVar
from urllib.parse import parse_qsl, unquote, urlencode, urljoin, urlsplit

import requests
from tqdm import tqdm

from ..fileio import PART_SUFFIX, remove_quietly
from .cache import LOCK_SUFFIX, cached_file_path, file_lock, use_cached, weights_dir, write_sidecar
from .errors import InvalidWeightsError, WeightsDownloadError

__all__ = ["download_to_cache", "file_name_from_url", "is_url"]

_logger = logging.getLogger(__name__)

#: Seconds before the first retry; retry k waits RETRY_BASE_DELAY * 2 ** (k - 1) (1 s, 2 s, 4 s).
RETRY_BASE_DELAY = 1.0
#: Bytes read from the network at a time.
CHUNK_SIZE = 1 << 20

_T = TypeVar("_T")


def is_url(text: str) -> bool:
    """True for an http(s) URL."""
    return text.startswith(("http://", "https://"))




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


def file_name_from_url(url: str) -> Optional[str]:
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
        remove_quietly(tmp)
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
        file_name = file_name_from_url(url)
    if file_name is None:  # only then is the network needed to tell the name
        file_name = _file_name_from_server(url, timeout=timeout, retries=retries)
    path = cached_file_path(file_name)
    if use_cached(path):
        return path

    path.parent.mkdir(parents=True, exist_ok=True)
    lock = path.with_name(path.name + LOCK_SUFFIX)
    note = f"Waiting for another process downloading {path.name} ..." if progress else None
    with file_lock(lock, note):
        if use_cached(path):  # another process downloaded it while we waited
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
            # Sidecar first: a crash between the two leaves a sidecar without its file (re-downloaded
            # next time), never an unverifiable file.
            write_sidecar(path, sha256)
            os.replace(tmp, path)
        finally:
            remove_quietly(tmp)  # already gone after os.replace
    return path
