"""Weights cache and downloader (ppim.weights.cache, ppim.weights.download) against a real HTTP server on 127.0.0.1."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import textwrap
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from http_server import LocalServer, unused_port

from ppim import weights

REPO_ROOT = Path(__file__).resolve().parents[2]
PAYLOAD = os.urandom(300_000)
NAME = "lvvit_s_224.pdparams"


@pytest.fixture(autouse=True)
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("PPIM_HOME", str(tmp_path / "ppim_home"))
    monkeypatch.setattr(weights.download, "RETRY_BASE_DELAY", 0.01)
    return tmp_path / "ppim_home"


@pytest.fixture
def server():
    with LocalServer() as s:
        yield s


def leftovers() -> list:
    """Files anywhere in the weights dir other than lock files."""
    d = weights.weights_dir()
    return sorted(p.name for p in d.rglob("*")
                  if p.is_file() and not p.name.endswith(weights.cache.LOCK_SUFFIX)) if d.exists() else []


def cached(url: str) -> Path:
    return weights.download.cache_path_for(url)


def test_paths_follow_env_at_call_time(monkeypatch, tmp_path):
    monkeypatch.setenv("PPIM_HOME", str(tmp_path / "a"))
    assert weights.weights_dir() == tmp_path / "a" / "weights"
    monkeypatch.setenv("PPIM_HOME", "~/x")
    assert weights.ppim_home() == Path.home() / "x"
    monkeypatch.delenv("PPIM_HOME")
    assert weights.ppim_home() == Path.home() / ".cache" / "ppim"
    assert weights.cached_file_path(NAME) == Path.home() / ".cache" / "ppim" / "weights" / NAME
    with pytest.raises(ValueError):
        weights.cached_file_path("../evil.pdparams")


def test_download_with_progress_then_cache_hit_offline(server, capsys):
    server.add("/w/" + NAME, PAYLOAD)
    url = server.url("/w/" + NAME)

    path = weights.download_to_cache(url)

    assert path == cached(url) and path.parent.parent == weights.weights_dir() / "by-url"
    assert path.read_bytes() == PAYLOAD
    sidecar = path.with_name(NAME + ".sha256").read_text()
    assert sidecar.split()[0] == hashlib.sha256(PAYLOAD).hexdigest() == weights.sha256_file(path)
    err = capsys.readouterr().err
    assert NAME in err and "100%" in err  # the tqdm bar went to stderr
    assert leftovers() == [NAME, NAME + ".sha256"]
    assert server.count() == 1

    server.close()  # any network use now fails
    assert weights.download_to_cache(url) == path
    assert server.count() == 1


def test_progress_false_prints_nothing(server, capsys):
    server.add("/" + NAME, PAYLOAD)
    weights.download_to_cache(server.url("/" + NAME), progress=False)
    assert capsys.readouterr().err == ""


def test_truncated_body_retries_then_fails_clean(server):
    server.add("/" + NAME, PAYLOAD, truncate_at=len(PAYLOAD) // 2)
    url = server.url("/" + NAME)
    with pytest.raises(weights.WeightsDownloadError) as e:
        weights.download_to_cache(url, progress=False, retries=2)
    assert server.count() == 3
    assert url in str(e.value) and str(cached(url)) in str(e.value)
    assert leftovers() == []


def test_dropped_once_then_succeeds(server):
    server.add("/" + NAME, PAYLOAD, drop_first=1)
    path = weights.download_to_cache(server.url("/" + NAME), progress=False)
    assert path.read_bytes() == PAYLOAD
    assert server.count() == 2
    assert leftovers() == [NAME, NAME + ".sha256"]


def test_5xx_is_retried(server):
    server.add("/" + NAME, PAYLOAD, fail_first=2, fail_status=503)
    path = weights.download_to_cache(server.url("/" + NAME), progress=False)
    assert path.read_bytes() == PAYLOAD
    assert server.count() == 3


def test_5xx_every_time_names_status(server):
    server.add("/" + NAME, PAYLOAD, fail_first=99, fail_status=502)
    with pytest.raises(weights.WeightsDownloadError, match="HTTP 502") as e:
        weights.download_to_cache(server.url("/" + NAME), progress=False, retries=1)
    assert e.value.status == 502 and server.count() == 2
    assert leftovers() == []


def test_read_timeout_is_retried(server):
    server.add("/" + NAME, PAYLOAD, delay=0.5)
    with pytest.raises(weights.WeightsDownloadError, match="after 2 attempts"):
        weights.download_to_cache(server.url("/" + NAME), progress=False, timeout=0.1, retries=1)
    assert leftovers() == []


def test_corrupted_cache_file(server):
    server.add("/" + NAME, PAYLOAD)
    url = server.url("/" + NAME)
    path = weights.download_to_cache(url, progress=False)
    data = bytearray(path.read_bytes())
    data[1000] ^= 0xFF
    path.write_bytes(bytes(data))

    with pytest.raises(weights.CorruptWeightsError) as e:
        weights.download_to_cache(url, progress=False)
    msg = str(e.value)
    assert str(path) in msg
    assert hashlib.sha256(PAYLOAD).hexdigest() in msg and hashlib.sha256(data).hexdigest() in msg
    assert "Delete" in msg
    assert server.count() == 1

    path.unlink()  # the fix the message gives
    assert weights.download_to_cache(url, progress=False).read_bytes() == PAYLOAD
    assert server.count() == 2


def test_validate_rejects(server):
    server.add("/" + NAME, PAYLOAD)
    url = server.url("/" + NAME)
    seen = []

    def validate(tmp: Path) -> None:
        seen.append(tmp.read_bytes())
        raise ValueError("not a Paddle state dict")

    with pytest.raises(weights.InvalidWeightsError) as e:
        weights.download_to_cache(url, validate=validate, progress=False)
    assert seen == [PAYLOAD]
    assert "not a Paddle state dict" in str(e.value) and NAME in str(e.value) and url in str(e.value)
    assert isinstance(e.value.__cause__, ValueError)
    assert leftovers() == []

    path = weights.download_to_cache(url, validate=lambda p: None, progress=False)
    assert path.read_bytes() == PAYLOAD


def test_interrupted_download_leaves_nothing(server):
    server.add("/" + NAME, PAYLOAD)

    def interrupt(tmp: Path) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        weights.download_to_cache(server.url("/" + NAME), validate=interrupt, progress=False)
    assert leftovers() == []


def test_concurrent_threads_download_once(server):
    server.add("/" + NAME, PAYLOAD, delay=0.2)
    url = server.url("/" + NAME)
    with ThreadPoolExecutor(4) as pool:
        paths = list(pool.map(lambda _: weights.download_to_cache(url, progress=False), range(4)))
    assert server.count() == 1
    assert paths == [cached(url)] * 4 and paths[0].read_bytes() == PAYLOAD


def test_404_not_retried(server):
    url = server.url("/missing/" + NAME)
    with pytest.raises(weights.WeightsDownloadError) as e:
        weights.download_to_cache(url, progress=False)
    assert isinstance(e.value, weights.WeightsError) and isinstance(e.value, RuntimeError)
    assert "HTTP 404" in str(e.value) and url in str(e.value)
    assert e.value.status == 404 and e.value.url == url
    assert server.count() == 1
    assert leftovers() == []


def test_offline_error_names_url_and_hand_placement_path():
    url = f"http://127.0.0.1:{unused_port()}/weights/{NAME}"
    start = time.monotonic()
    with pytest.raises(weights.WeightsDownloadError) as e:
        weights.download_to_cache(url, progress=False)
    assert time.monotonic() - start < 5
    msg = str(e.value)
    assert url in msg
    assert f"place the file by hand at {cached(url)}" in msg
    assert "after 4 attempts" in msg and e.value.status is None
    assert leftovers() == []


def test_unsupported_url_is_a_download_error():
    with pytest.raises(weights.WeightsDownloadError, match="ftp://example.invalid/w.pdparams"):
        weights.download_to_cache("ftp://example.invalid/w.pdparams", progress=False)
    assert leftovers() == []


def test_hand_placed_file_used_without_network():
    weights.weights_dir().mkdir(parents=True)
    placed = weights.weights_dir() / NAME
    placed.write_bytes(b"my own weights")
    url = f"http://127.0.0.1:{unused_port()}/weights/{NAME}"
    assert weights.download_to_cache(url, NAME) == placed  # a registered name: the file there is used
    assert placed.read_bytes() == b"my own weights"
    assert leftovers() == [NAME]  # no sidecar invented, nothing else created


def test_explicit_file_name(server):
    server.add("/download", PAYLOAD, headers={"Content-Disposition": 'attachment; filename="other.pth"'})
    path = weights.download_to_cache(server.url("/download?id=7"), "mine.pdparams", progress=False)
    assert path.name == "mine.pdparams" and path.read_bytes() == PAYLOAD


def test_content_disposition_names_the_file(server):
    server.add("/v1/blob", PAYLOAD,
               headers={"Content-Disposition": "attachment; filename*=UTF-8''lvvit%20m.pth"})
    url = server.url("/v1/blob?id=7")
    path = weights.download_to_cache(url, progress=False)
    assert path.name == "lvvit m.pth" and path.parent.parent == weights.weights_dir() / "by-url"
    assert path.read_bytes() == PAYLOAD
    assert server.count() == 2  # the name probe, then the download
    assert weights.download_to_cache(url, progress=False) == path
    assert server.count() == 2  # the URL's folder already holds its file: no network


def test_bce_url_name_needs_no_network():
    url = (f"http://127.0.0.1:{unused_port()}/v1/ai-studio-online/0a1b2c"
           "?responseContentDisposition=attachment%3B%20filename%3Dlvvit_s_224.pdparams")
    cached(url).parent.mkdir(parents=True)
    cached(url).write_bytes(b"x")
    assert weights.download_to_cache(url) == cached(url) and cached(url).name == NAME


@pytest.mark.parametrize("value, expected", [
    ("attachment; filename=lvvit_s_224.pdparams", "lvvit_s_224.pdparams"),
    ('attachment; filename="a b.pth"', "a b.pth"),
    ("attachment; filename*=UTF-8''na%C3%AFve.pth", "naïve.pth"),
    ("attachment; filename=\"x.pth\"; filename*=UTF-8''y%20z.pth", "y z.pth"),
    ('attachment; filename="../../etc/passwd"', "passwd"),
    ('attachment; filename="C:\\tmp\\w.pdparams"', "w.pdparams"),
    ('attachment; filename=".."', None),
    ("inline", None),
    ("", None),
])
def test_parse_content_disposition(value, expected):
    assert weights.download._content_disposition_file_name(value) == expected


@pytest.mark.parametrize("url, expected", [
    ("https://x.org/a/lvvit_s-26M-224-83.3.pth.tar", "lvvit_s-26M-224-83.3.pth.tar"),
    ("https://x.org/a/b%20c.pdparams?sig=1", "b c.pdparams"),
    ("https://bj.bcebos.com/v1/ai-studio-online/abc?responseContentDisposition="
     "attachment%3B%20filename%3Dlvvit_s_224.pdparams&authorization=bce", "lvvit_s_224.pdparams"),
    ("https://s3.x/abc?response-content-disposition=attachment%3B%20filename%3D%22m.bin%22", "m.bin"),
    ("https://x.org/download?id=3", None),
    ("https://x.org/", None),
])
def test_file_name_from_url(url, expected):
    assert weights.download.file_name_from_url(url) == expected


CHILD = textwrap.dedent("""
    import os, sys, time
    sys.path.insert(0, sys.argv[1])
    from ppim import weights
    url, ready, go = sys.argv[2:5]
    open(ready, "w").close()
    while not os.path.exists(go):
        time.sleep(0.005)
    path = weights.download_to_cache(url, progress=False)
    print(path)
""")


def test_concurrent_processes_download_once(server, tmp_path, home):
    server.add("/" + NAME, PAYLOAD, delay=0.3, chunk_delay=0.1)  # ~0.7 s download
    go = tmp_path / "go"
    procs = []
    for i in range(4):
        procs.append(subprocess.Popen(
            [sys.executable, "-c", CHILD, str(REPO_ROOT), server.url("/" + NAME),
             str(tmp_path / f"ready{i}"), str(go)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            env={**os.environ, "PPIM_HOME": str(home)},
        ))
    deadline = time.monotonic() + 60
    while not all((tmp_path / f"ready{i}").exists() for i in range(4)):
        assert time.monotonic() < deadline and all(p.poll() is None for p in procs), \
            [p.communicate() for p in procs if p.poll() is not None]
        time.sleep(0.01)
    go.touch()  # all four ask at once

    outputs = []
    for p in procs:
        out, err = p.communicate(timeout=60)
        assert p.returncode == 0, err
        outputs.append(out.strip())

    assert server.count() == 1
    assert outputs == [str(cached(server.url("/" + NAME)))] * 4
    assert Path(outputs[0]).read_bytes() == PAYLOAD
    assert leftovers() == [NAME, NAME + ".sha256"]


def test_dripping_server_is_abandoned_as_a_stall(server):
    """A server dripping 1 byte / 0.2 s never trips a read timeout; the minimum rate over a window
    (curl's --speed-limit / --speed-time) abandons the attempt, retries it, then gives up naming the rule."""
    server.add("/" + NAME, PAYLOAD, drip=0.2)
    start = time.monotonic()
    with pytest.raises(weights.WeightsDownloadError, match=r"after 2 attempts.*below the minimum rate of 100 bytes/s "
                                                           r"over 1 s"):
        weights.download_to_cache(server.url("/" + NAME), progress=False, retries=1, min_rate=100, rate_window=1)
    assert time.monotonic() - start < 30
    assert server.count("/" + NAME) == 2
    assert leftovers() == []


def test_stall_rule_from_the_environment(server, monkeypatch):
    server.add("/" + NAME, PAYLOAD, drip=0.2)
    monkeypatch.setenv("PPIM_DOWNLOAD_MIN_RATE", "50")
    monkeypatch.setenv("PPIM_DOWNLOAD_RATE_WINDOW", "0.5")
    with pytest.raises(weights.WeightsDownloadError, match="below the minimum rate of 50 bytes/s over 0.5 s"):
        weights.download_to_cache(server.url("/" + NAME), progress=False, retries=0)
    monkeypatch.setenv("PPIM_DOWNLOAD_MIN_RATE", "fast")
    with pytest.raises(ValueError, match="PPIM_DOWNLOAD_MIN_RATE='fast' is not a number"):
        weights.download_to_cache(server.url("/" + NAME), progress=False, retries=0)


def test_slow_but_honest_link_passes(server):
    """75 KB every 0.4 s (about 190 KB/s, with pauses) is well above the default minimum rate and
    passes even with a short window."""
    server.add("/" + NAME, PAYLOAD, chunk_delay=0.4)
    path = weights.download_to_cache(server.url("/" + NAME), progress=False, rate_window=0.3)
    assert path.read_bytes() == PAYLOAD
