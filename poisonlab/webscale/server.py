"""A loopback-only HTTP server that hosts images under several fake domains, for simulating web-scale poisoning.

Domains are path prefixes: ``http://127.0.0.1:PORT/<domain>/<file>``. What each path serves can be changed
while the server runs (a domain expiring and being bought by an attacker, a page edited during a
snapshot's window). It binds 127.0.0.1 only, in a daemon thread; nothing leaves the machine.
"""

from __future__ import annotations

import threading
from collections import Counter
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any

LOOPBACK = "127.0.0.1"


@dataclass(frozen=True)
class Response:
    """What one path serves: an HTTP status, a body and its content type."""

    status: int
    body: bytes = b""
    content_type: str = "application/octet-stream"


def content_type(body: bytes) -> str:
    """The image MIME type of ``body`` from its magic bytes."""
    if body[:8] == b"\x89PNG\r\n\x1a\n":
        return "image/png"
    return "image/jpeg" if body[:2] == b"\xff\xd8" else "application/octet-stream"


class LocalServer:
    """Serves ``routes`` (path -> Response) on 127.0.0.1 at a free port; use as a context manager.

    Paths not in ``routes`` answer 404. ``hits`` counts the requests for each path.
    """

    def __init__(self) -> None:
        self._routes: dict[str, Response] = {}
        self._lock = threading.Lock()
        self.hits: Counter[str] = Counter()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as real image hosts do
            disable_nagle_algorithm = True  # headers and body go out in two writes: Nagle would hold the body 40 ms

            def do_GET(self) -> None:  # noqa: N802 - the name http.server dispatches to
                path = self.path.split("?", 1)[0]
                with server._lock:
                    server.hits[path] += 1
                    response = server._routes.get(path, Response(404, b"not found", "text/plain"))
                self.send_response(response.status)
                self.send_header("Content-Type", response.content_type)
                self.send_header("Content-Length", str(len(response.body)))
                self.end_headers()
                self.wfile.write(response.body)

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - http.server's signature
                return

        self._httpd = ThreadingHTTPServer((LOOPBACK, 0), Handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="poisonlab-webscale", daemon=True)

    @property
    def port(self) -> int:
        return int(self._httpd.server_address[1])

    def url(self, path: str) -> str:
        """The full URL of ``path`` (``/domain/file``) on this server."""
        return f"http://{LOOPBACK}:{self.port}{path}"

    def put(self, path: str, response: Response) -> None:
        """Serve ``response`` at ``path`` from now on."""
        with self._lock:
            self._routes[path] = response

    def put_image(self, path: str, body: bytes) -> None:
        """Serve image bytes at ``path`` with status 200 and their content type."""
        self.put(path, Response(200, body, content_type(body)))

    def remove(self, path: str) -> None:
        """Answer 404 at ``path`` from now on."""
        with self._lock:
            self._routes.pop(path, None)

    def __enter__(self) -> LocalServer:
        self._thread.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join()
