"""An HTTP(S) GET client for many small files: keep-alive connections per thread, timeouts, retries, a size cap.

Standard library only (``http.client``), so downloading needs no extra package. Each worker thread keeps
one persistent connection per host; a connection the server closed while idle is reopened once without
spending a retry. Connection errors, timeouts, 429 and 5xx are retried with exponential back-off; any
other status is final. A body over ``max_bytes`` (declared or streamed) is refused without reading on.
"""

from __future__ import annotations

import http.client
import socket
import threading
import time
from dataclasses import dataclass
from urllib.parse import urljoin, urlsplit

from poisonlab.core import require

MAX_REDIRECTS = 5
CHUNK = 1 << 16
USER_AGENT = "poisonlab-fetch/1"


@dataclass(frozen=True)
class Limits:
    """Per-request limits: ``timeout`` seconds for one attempt, ``retries`` further attempts, body bytes."""

    timeout: float = 10.0
    retries: int = 2
    backoff: float = 0.1
    max_bytes: int = 20_000_000

    def __post_init__(self) -> None:
        require(self.timeout > 0, "timeout", self.timeout, "a number of seconds > 0")
        require(0 <= self.retries <= 20, "retries", self.retries, "an integer in [0, 20]")
        require(self.backoff >= 0, "backoff", self.backoff, "a number of seconds >= 0")
        require(self.max_bytes >= 1, "max_bytes", self.max_bytes, "an integer >= 1")


@dataclass(frozen=True)
class Got:
    """A body (None on failure), why it failed, and how many attempts were made."""

    data: bytes | None
    reason: str
    attempts: int


class _Retry(Exception):
    """A failure worth another attempt (network error, timeout, 429, 5xx)."""


class _Stale(Exception):
    """A connection the server had closed (a kept one may be reopened once for free)."""


class _Final(Exception):
    """A failure another attempt would repeat (404, a body over the limit, a bad redirect)."""


class Client:
    """Thread-safe GETs; each thread holds its own keep-alive connections."""

    def __init__(self, limits: Limits = Limits()) -> None:
        self.limits = limits
        self._local = threading.local()

    def _connections(self) -> dict[tuple[str, str, int], http.client.HTTPConnection]:
        if not hasattr(self._local, "connections"):
            self._local.connections = {}
        return self._local.connections  # type: ignore[no-any-return]

    def close(self) -> None:
        """Close the calling thread's connections."""
        for conn in self._connections().values():
            conn.close()
        self._connections().clear()

    def get(self, url: str) -> Got:
        """The body at ``url`` after up to ``1 + retries`` attempts."""
        reason = ""
        for attempt in range(self.limits.retries + 1):
            if attempt:
                time.sleep(self.limits.backoff * 2 ** (attempt - 1))
            try:
                return Got(self._follow(url), "", attempt + 1)
            except _Retry as e:
                reason = str(e)
            except _Final as e:
                return Got(None, str(e), attempt + 1)
        return Got(None, f"{reason} (after {self.limits.retries + 1} attempts)", self.limits.retries + 1)

    def _follow(self, url: str) -> bytes:
        for _ in range(MAX_REDIRECTS + 1):
            status, body, location = self._once(url)
            if location is None:
                return body
            url = urljoin(url, location)
            if urlsplit(url).scheme not in ("http", "https"):
                raise _Final(f"redirected to a non-HTTP URL {url!r}")
        raise _Final(f"more than {MAX_REDIRECTS} redirects")

    def _once(self, url: str) -> tuple[int, bytes, str | None]:
        """(status, body, redirect location or None) of one GET, on a kept connection if one is open."""
        parts = urlsplit(url)
        port = parts.port or (443 if parts.scheme == "https" else 80)
        key = (parts.scheme, parts.hostname or "", port)
        path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        connections = self._connections()
        if key in connections:
            try:
                return self._exchange(connections[key], key, path)
            except _Stale:
                pass  # a kept connection the server closed while idle: reopen once without spending a retry
        cls = http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
        connections[key] = cls(key[1], port, timeout=self.limits.timeout)
        try:
            return self._exchange(connections[key], key, path)
        except _Stale as e:
            raise _Retry(str(e)) from None

    def _exchange(self, conn: http.client.HTTPConnection, key: tuple[str, str, int],
                  path: str) -> tuple[int, bytes, str | None]:
        try:
            conn.request("GET", path, headers={"User-Agent": USER_AGENT, "Accept": "image/*"})
            return self._read(conn.getresponse(), conn, key)
        except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError) as e:
            self._drop(conn, key)
            raise _Stale(f"connection closed by the server ({type(e).__name__})") from None
        except (OSError, http.client.HTTPException) as e:
            self._drop(conn, key)
            kind = "timed out" if isinstance(e, socket.timeout | TimeoutError) else f"failed ({e})"
            raise _Retry(f"connection {kind}") from None

    def _read(self, response: http.client.HTTPResponse, conn: http.client.HTTPConnection,
              key: tuple[str, str, int]) -> tuple[int, bytes, str | None]:
        status = response.status
        declared = response.getheader("Content-Length")
        if status == 200 and declared is not None and declared.isdigit() and int(declared) > self.limits.max_bytes:
            self._drop(conn, key)
            raise _Final(f"declares {int(declared):,} bytes; limit {self.limits.max_bytes:,}")
        deadline = time.monotonic() + self.limits.timeout
        cap = self.limits.max_bytes if status == 200 else CHUNK
        chunks, total = [], 0
        while chunk := response.read(min(CHUNK, cap + 1 - total)):
            chunks.append(chunk)
            total += len(chunk)
            if total > cap:
                self._drop(conn, key)
                if status == 200:
                    raise _Final(f"body over the limit of {self.limits.max_bytes:,} bytes")
                break
            if time.monotonic() > deadline:
                self._drop(conn, key)
                raise _Retry(f"body not received within {self.limits.timeout:g} s")
        if response.will_close:
            self._drop(conn, key)
        if status == 200:
            return status, b"".join(chunks), None
        if status in (301, 302, 303, 307, 308) and response.getheader("Location"):
            return status, b"", response.getheader("Location")
        if status == 429 or status >= 500:
            raise _Retry(f"HTTP {status}")
        raise _Final(f"HTTP {status}")

    def _drop(self, conn: http.client.HTTPConnection, key: tuple[str, str, int]) -> None:
        conn.close()
        self._connections().pop(key, None)
