"""A real HTTP server on 127.0.0.1 for tests: serves bytes the test made, counts requests, and can
misbehave on purpose (slow, drops the connection, truncated body, error status).

    with LocalServer() as server:
        server.add("/w.pdparams", b"...", delay=0.5)
        url = server.url("/w.pdparams")
        ...
        assert server.count("/w.pdparams") == 1
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Dict, List, Optional
from urllib.parse import parse_qsl, urlsplit


@dataclass
class Route:
    body: bytes = b""
    status: int = 200
    headers: Dict[str, str] = field(default_factory=dict)
    delay: float = 0.0  # seconds before the response starts
    chunk_delay: float = 0.0  # seconds between body chunks (4 chunks) when set
    drip: float = 0.0  # seconds between single bytes: a server that never trips a read timeout
    truncate_at: Optional[int] = None  # send Content-Length of the whole body, then only this many bytes
    drop_first: int = 0  # the first N requests get the connection closed without a response
    fail_first: int = 0  # the first N requests (after drops) get fail_status
    fail_status: int = 503
    content_type: str = "application/octet-stream"
    require_query: Dict[str, str] = field(default_factory=dict)  # else 403 (e.g. a confirm token)


class LocalServer:
    def __init__(self) -> None:
        self.routes: Dict[str, Route] = {}
        self.requests: List[str] = []  # paths of GET requests, in arrival order
        self._lock = threading.Lock()
        self._httpd: Optional[ThreadingHTTPServer] = None
        self._thread: Optional[threading.Thread] = None

    # -- setup -------------------------------------------------------------------------------
    def add(self, path: str, body: bytes = b"", **options) -> Route:
        route = Route(body=body, **options)
        self.routes[path] = route
        return route

    def start(self) -> "LocalServer":
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802
                server._handle(self)

            def log_message(self, *args) -> None:
                pass

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                        daemon=True)
        self._thread.start()
        return self

    def close(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None

    def __enter__(self) -> "LocalServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()

    # -- queries -----------------------------------------------------------------------------
    @property
    def port(self) -> int:
        assert self._httpd is not None, "server not started"
        return self._httpd.server_address[1]

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def count(self, path: Optional[str] = None) -> int:
        with self._lock:
            return len(self.requests) if path is None else self.requests.count(path)

    # -- serving -----------------------------------------------------------------------------
    def _handle(self, h: BaseHTTPRequestHandler) -> None:
        path, query = urlsplit(h.path).path, dict(parse_qsl(urlsplit(h.path).query))
        with self._lock:
            self.requests.append(path)
            nth = self.requests.count(path)  # 1-based
        route = self.routes.get(path)
        h.close_connection = True
        if route is None:
            h.send_error(404, "Not Found")
            return
        if route.delay:
            time.sleep(route.delay)
        if nth <= route.drop_first:
            return  # close without a response
        if nth <= route.drop_first + route.fail_first:
            h.send_error(route.fail_status)
            return
        if route.status != 200:
            h.send_error(route.status)
            return
        if any(query.get(key) != value for key, value in route.require_query.items()):
            h.send_error(403, "Forbidden")
            return
        h.send_response(200)
        h.send_header("Content-Type", route.content_type)
        h.send_header("Content-Length", str(len(route.body)))
        for key, value in route.headers.items():
            h.send_header(key, value)
        h.end_headers()
        body = route.body if route.truncate_at is None else route.body[: route.truncate_at]
        try:
            if route.drip:
                for i in range(len(body)):
                    h.wfile.write(body[i : i + 1])
                    h.wfile.flush()
                    time.sleep(route.drip)
            elif route.chunk_delay:
                step = max(1, -(-len(body) // 4))
                for i in range(0, len(body), step):
                    h.wfile.write(body[i : i + step])
                    h.wfile.flush()
                    time.sleep(route.chunk_delay)
            else:
                h.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up (e.g. a timeout test)


def unused_port() -> int:
    """A port on 127.0.0.1 with nothing listening (bound, then released)."""
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
