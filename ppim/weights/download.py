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
import time
from pathlib import Path
from typing import Callable, Iterator, Optional, TypeVar
from urllib.parse import parse_qsl, unquote, urlencode, urljoin, urlsplit

import requests
import urllib3
from tqdm import tqdm

from ..errors import InputError
from ..fileio import atomic_path, remove_stale_parts
from .cache import LOCK_SUFFIX, SHA256_SUFFIX, cached_file_path, file_lock, use_cached, weights_dir, write_sidecar
from .errors import InvalidWeightsError, WeightsDownloadError

__all__ = ["cache_path_for", "download_to_cache", "file_name_from_url", "is_url"]

_logger = logging.getLogger(__name__)

#: Seconds before the first retry; retry k waits RETRY_BASE_DELAY * 2 ** (k - 1) (1 s, 2 s, 4 s).
RETRY_BASE_DELAY = 1.0
#: Bytes read from the network at a time (at most).
CHUNK_SIZE = 1 << 20
#: Seconds a whole download (all attempts) may take by default.
DOWNLOAD_DEADLINE = 3 * 3600.0
#: Most bytes of a web page (Google Drive's confirmation page) read and parsed.
MAX_PAGE_BYTES = 1 << 20
#: A download slower than MIN_RATE bytes/s on average over RATE_WINDOW seconds is a stall: that
#: attempt is abandoned (curl's --speed-limit / --speed-time). The defaults let a slow but honest
#: link (a few KB/s) through; the environment variables override them.
MIN_RATE = 1024.0
RATE_WINDOW = 60.0
ENV_MIN_RATE = "PPIM_DOWNLOAD_MIN_RATE"
ENV_RATE_WINDOW = "PPIM_DOWNLOAD_RATE_WINDOW"

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
        with _open(url, timeout, time.monotonic() + timeout) as response:
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


class _StallError(Exception):
    pass


def _rate_limits(min_rate: Optional[float], window: Optional[float]) -> "tuple[float, float]":
    """(bytes/s, seconds) of the stall rule: the arguments, else the environment, else the defaults."""
    values = []
    for given, env, default in ((min_rate, ENV_MIN_RATE, MIN_RATE), (window, ENV_RATE_WINDOW, RATE_WINDOW)):
        if given is None:
            text = os.environ.get(env, "").strip()
            try:
                given = float(text) if text else default
            except ValueError:
                raise InputError(f"{env}={text!r} is not a number (bytes/s, seconds; 0 turns the stall rule "
                                 f"off)") from None
        if not given >= 0 or given == float("inf"):
            raise InputError(f"{env} must be a finite number >= 0, got {given}")
        values.append(float(given))
    return values[0], values[1]


class _DeadlineError(Exception):
    pass


# Failures worth another attempt (besides HTTP 5xx).
_NETWORK_ERRORS = (
    requests.ConnectionError,  # includes ConnectTimeout and read timeouts raised mid-body
    requests.Timeout,
    requests.exceptions.ChunkedEncodingError,  # connection closed mid-body
    requests.exceptions.ContentDecodingError,
    urllib3.exceptions.HTTPError,  # raised by the raw reads of _chunks (read timeouts, broken bodies)
    _TruncatedError,
    _StallError,
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


_ATTRIBUTE = re.compile(r"""([A-Za-z_:][-\w:.]*)\s*=\s*(?:"([^"]*)"|'([^']*)'|([^\s"'>]+))""")


def _page_tags(page: str) -> Iterator["tuple[str, dict[str, str]]"]:
    """(tag name, attributes) of the start tags of a web page, in one linear pass: the text between
    each '<' and the next '>' (html.parser and backtracking regexes over the whole page take
    minutes on a page of unclosed tags)."""
    for piece in page.split("<")[1:]:
        body = piece.partition(">")[0]
        name, _, rest = body.partition(" ")
        if not name or not name[0].isalpha():
            continue
        attrs = {m.group(1).lower(): html.unescape(m.group(2) or m.group(3) or m.group(4) or "")
                 for m in _ATTRIBUTE.finditer(rest[:4096])}
        yield name.lower().rstrip("/"), attrs


def _drive_confirmation(page: str) -> "tuple[Optional[str], dict[str, str], Optional[str]]":
    """What Google Drive's "can't scan this file for viruses" page carries: the download form's
    action and hidden fields, or a link with a confirm token."""
    action, fields, link, in_form = None, {}, None, False
    for name, attrs in _page_tags(page):
        if name == "form":
            in_form = attrs.get("id") == "download-form"
            if in_form:
                action = attrs.get("action")
        elif name == "input" and in_form and attrs.get("type") == "hidden" and attrs.get("name"):
            fields[attrs["name"]] = attrs.get("value", "")
        elif name == "a" and link is None and "confirm=" in attrs.get("href", ""):
            link = attrs["href"]
    return action, fields, link


def _looks_like_html(head: bytes) -> bool:
    start = head.lstrip()[:15].lower()
    return start.startswith((b"<!doctype html", b"<html", b"<head", b"<body"))


def _read_page(response: requests.Response, deadline: float) -> str:
    """At most MAX_PAGE_BYTES of a web page's body, as text."""
    data = bytearray()
    for chunk in _chunks(response, deadline, *_rate_limits(None, None)):
        data += chunk
        if len(data) > MAX_PAGE_BYTES:
            break
    return bytes(data[:MAX_PAGE_BYTES]).decode(response.encoding or "utf-8", "replace")


def _confirmation_url(response: requests.Response, deadline: float) -> Optional[str]:
    """Google Drive answers a download of a large file with an HTML page ("can't scan this file
    for viruses") whose form, or older cookie/link, carries a confirm token. Returns the URL that
    downloads the file, or None when the response is not a web page. Any other web page is an
    error: servers answer HTML for logins, quotas and missing files, never weights."""
    if not response.headers.get("Content-Type", "").lower().startswith(("text/html", "application/xhtml")):
        return None
    for name, value in response.cookies.items():
        if name.startswith("download_warning"):
            return _with_query(response.url, {"confirm": value})
    action, fields, link = _drive_confirmation(_read_page(response, deadline))
    if action:
        return _with_query(urljoin(response.url, action), fields)
    if link:
        return urljoin(response.url, link)
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
def _open(url: str, timeout: float, deadline: float) -> Iterator[requests.Response]:
    """A streamed GET, through Google Drive's confirmation page if one comes; raises
    _HTTPStatusError for status >= 400."""
    response = _get(url, timeout)
    try:
        confirmed = _confirmation_url(response, deadline)
        if confirmed is not None:
            cookies = response.cookies
            response.close()
            response = _get(confirmed, timeout, cookies)
            if _confirmation_url(response, deadline) is not None:
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


def _with_retries(url: str, path: Optional[Path], retries: int, attempt: Callable[[], _T],
                  deadline: Optional[float] = None) -> _T:
    """Run ``attempt`` up to ``retries + 1`` times, with exponential backoff between attempts, all
    before ``deadline`` (time.monotonic()).

    Network errors, timeouts, truncated bodies and HTTP 5xx are retried; HTTP 4xx is not.
    All failures end in WeightsDownloadError naming the URL and where a hand-placed file would go.
    """
    attempts = max(0, retries) + 1
    for number in range(1, attempts + 1):
        try:
            return attempt()
        except _DeadlineError:
            raise WeightsDownloadError(
                f"Downloading {url} did not finish in the time allowed (deadline=); the server is too "
                f"slow. Try again later, or {_hand_place_hint(path)}", url=url, path=path) from None
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
        if deadline is not None and time.monotonic() + delay > deadline:
            raise WeightsDownloadError(
                f"Downloading {url} failed ({_describe(error)}) and no time is left for another attempt "
                f"(deadline=). Try again later, or {_hand_place_hint(path)}", url=url, path=path)
        _logger.warning("Downloading %s failed (%s); retrying in %.3g s (attempt %d of %d)",
                        url, _describe(error), delay, number + 1, attempts)
        time.sleep(delay)
    raise AssertionError("unreachable")  # pragma: no cover


def _chunks(response: requests.Response, deadline: float, min_rate: float = 0.0,
            window: float = 0.0) -> Iterator[bytes]:
    """The body as it arrives (read1: a slow server cannot make one read wait for a full chunk),
    checked against the overall ``deadline`` (time.monotonic()) between reads, and against the stall
    rule: fewer than ``min_rate * window`` bytes in any ``window`` seconds raises _StallError (0: off)."""
    raw = response.raw
    read = getattr(raw, "read1", None) or raw.read
    started, counted = time.monotonic(), 0
    while True:
        now = time.monotonic()
        if now > deadline:
            raise _DeadlineError()
        if min_rate > 0 and window > 0 and now - started >= window:
            if counted < min_rate * (now - started):
                raise _StallError(f"{counted} bytes in {now - started:.3g} s, below the minimum rate of "
                                  f"{min_rate:g} bytes/s over {window:g} s ({ENV_MIN_RATE} / {ENV_RATE_WINDOW})")
            started, counted = now, 0
        chunk = read(CHUNK_SIZE)
        if not chunk:
            return
        counted += len(chunk)
        yield chunk


def _download_once(url: str, tmp: Path, name: str, *, timeout: float, deadline: float,
                   progress: bool, rates: "tuple[float, float]" = (0.0, 0.0)) -> str:
    """One GET of ``url`` into ``tmp`` (truncated first); returns its sha256."""
    with open(tmp, "wb") as f, _open(url, timeout, deadline) as response:
        length = response.headers.get("Content-Length")
        total = int(length) if length and length.isdigit() else None
        digest = hashlib.sha256()
        received = 0
        with tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024,
                  desc=name, disable=not progress, file=sys.stderr) as bar:
            for chunk in _chunks(response, deadline, *rates):
                if received == 0 and _looks_like_html(chunk[:64]):
                    raise WeightsDownloadError(
                        f"{url} answered with a web page (a login, error or quota page?) instead of the "
                        f"weights file; nothing was kept. Check the URL in a browser", url=url)
                f.write(chunk)
                digest.update(chunk)
                received += len(chunk)
                bar.update(len(chunk))
        if total is not None and received != total:
            raise _TruncatedError(f"received {received} of {total} bytes")
        f.flush()
        os.fsync(f.fileno())
    return digest.hexdigest()


def cache_path_for(url: str, file_name: Optional[str] = None) -> Optional[Path]:
    """Where ``url``'s file lives in the cache. With ``file_name`` (a registered model's weights):
    ``weights_dir()/file_name``. Otherwise the URL keys the folder, ``by-url/<sha256(url)[:16]>/``,
    and the name is the one the URL tells (None when only the server can tell it)."""
    if file_name is not None:
        return cached_file_path(file_name)
    name = file_name_from_url(url)
    return _url_dir(url) / cached_file_path(name).name if name else None


def _url_dir(url: str) -> Path:
    return weights_dir() / "by-url" / hashlib.sha256(url.encode("utf-8")).hexdigest()[:16]


def _cached_in_url_dir(url: str) -> Optional[Path]:
    """The file already downloaded for ``url`` whose name came from the server, if any."""
    folder = _url_dir(url)
    if not folder.is_dir():
        return None
    files = [p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")
             and not p.name.endswith((LOCK_SUFFIX, SHA256_SUFFIX))]
    return files[0] if len(files) == 1 else None


def download_to_cache(
    url: str,
    file_name: Optional[str] = None,
    *,
    validate: Optional[Callable[[Path], None]] = None,
    progress: bool = True,
    timeout: float = 30.0,
    retries: int = 3,
    deadline: Optional[float] = None,
    min_rate: Optional[float] = None,
    rate_window: Optional[float] = None,
) -> Path:
    """Return the cached path of ``url``'s file, downloading it first if it is not cached.

    Args:
        url: http(s) URL of the file.
        file_name: the registered name of the file (``weights_dir()/file_name``). Default: the file
            goes under a folder keyed by the URL (see :func:`cache_path_for`), named as the URL
            tells (a ``responseContentDisposition`` query parameter, else the last path segment if
            it has an extension), failing that as the server's Content-Disposition says.
        validate: called with the downloaded temp file before it enters the cache; an exception
            from it rejects the file (:class:`InvalidWeightsError`, nothing cached).
        progress: show a tqdm progress bar on stderr.
        timeout: seconds for connecting and for each read.
        retries: attempts after the first one on network errors, timeouts, truncated bodies and
            HTTP 5xx, waiting RETRY_BASE_DELAY * 1, 2, 4, ... seconds; HTTP 4xx is not retried.
        deadline: seconds for the whole download, all attempts (default DOWNLOAD_DEADLINE), so a
            server that trickles bytes cannot hold us forever.
        min_rate, rate_window: an attempt that receives fewer than ``min_rate`` bytes/s on average
            over ``rate_window`` seconds has stalled and is abandoned (then retried); default
            ``$PPIM_DOWNLOAD_MIN_RATE`` / ``$PPIM_DOWNLOAD_RATE_WINDOW``, else MIN_RATE / RATE_WINDOW
            (1 KiB/s over 60 s); 0 turns the rule off.

    A cached file is checked against its sha256 sidecar (:class:`CorruptWeightsError` on mismatch);
    a hand-placed file (no sidecar) is used as it is. Neither touches the network, unless the name
    can only come from the server's Content-Disposition and nothing was downloaded from this URL yet.
    Concurrent callers (threads or processes) wait on ``<file_name>.lock``; one downloads. Temp
    files of downloads killed earlier are removed; the file is created with the user's umask.

    Raises:
        WeightsDownloadError, WeightsLockError, CorruptWeightsError, InvalidWeightsError (all WeightsError).
    """
    end = time.monotonic() + (DOWNLOAD_DEADLINE if deadline is None else deadline)
    rates = _rate_limits(min_rate, rate_window)
    path = cache_path_for(url, file_name)
    if path is None:
        path = _cached_in_url_dir(url)
    if path is None:  # only then is the network needed to tell the name
        path = _url_dir(url) / cached_file_path(_file_name_from_server(url, timeout=timeout, retries=retries)).name
    if use_cached(path):
        return path

    path.parent.mkdir(parents=True, exist_ok=True)
    lock = path.with_name(path.name + LOCK_SUFFIX)
    note = f"Waiting for another process downloading {path.name} ..." if progress else None
    with file_lock(lock, note):
        if use_cached(path):  # another process downloaded it while we waited
            return path
        remove_stale_parts(path)
        if progress:
            print(f"Downloading {url} to {path}", file=sys.stderr, flush=True)
        with atomic_path(path) as tmp:
            sha256 = _with_retries(url, path, retries, lambda: _download_once(
                url, tmp, path.name, timeout=timeout, deadline=end, progress=progress, rates=rates), end)
            if validate is not None:
                try:
                    validate(tmp)
                except Exception as e:
                    raise InvalidWeightsError(
                        f"The file downloaded from {url} for {path.name} is not valid weights: "
                        f"{e}. Nothing was kept in the cache; check the URL or the file."
                    ) from e
            # Sidecar first: a crash before the rename leaves a sidecar without its file (downloaded
            # again next time), never an unverifiable file.
            write_sidecar(path, sha256)
    return path
