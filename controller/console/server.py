"""The console's HTTP server: read-only, strict headers, HTTPS and Basic auth off loopback.

Standard library only (``http.server.ThreadingHTTPServer`` in a daemon thread,
like the metrics endpoint). Routes, all ``GET``/``HEAD``:

======================  ==========================================================
``/``                   the page (HTML; the network map inline as SVG)
``/console.js``,        its script and stylesheet (no inline script or style, no
``/console.css``        external fetch: the Content-Security-Policy allows ``'self'`` only)
``/api/state``          the state as JSON (:class:`~controller.console.state.ConsoleState`)
``/events``             Server-Sent Events: an ``event: state`` with the JSON at
                        once and after every change, a comment every 15 s
``/map.svg``            the network map on its own, coloured by the plan in force
``/video/NAME``         a what-if video from the video directory (a plain name, no
                        path; single byte ranges for seeking)
======================  ==========================================================

Every other method is answered 405; requests with a body, overlong targets or
headers are refused; no response carries CORS headers. Bound to a loopback
address the ``Host`` header must name it (a DNS-rebinding page cannot read the
console); bound elsewhere the server refuses to start without TLS and a users file.
"""

from __future__ import annotations

import logging
import re
import socket
import ssl
import threading
from collections.abc import Callable
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, BinaryIO, Final, Literal
from urllib.parse import unquote, urlsplit

from configs.errors import ConfigError
from configs.settings import is_loopback_address
from controller.console.auth import BasicAuth
from controller.console.feed import ConsoleFeed
from controller.console.page import FAVICON

__all__ = [
    "CONTENT_SECURITY_POLICY",
    "ConsoleAssets",
    "ConsoleServer",
    "parse_range",
    "sse_event",
    "start_console_server",
]

logger = logging.getLogger(__name__)

CONTENT_SECURITY_POLICY: Final = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "media-src 'self'; connect-src 'self'; base-uri 'none'; form-action 'none'; "
    "frame-ancestors 'none'"
)
_SECURITY_HEADERS: Final = (
    ("Content-Security-Policy", CONTENT_SECURITY_POLICY),
    ("X-Content-Type-Options", "nosniff"),
    ("X-Frame-Options", "DENY"),
    ("Referrer-Policy", "no-referrer"),
    ("Cross-Origin-Opener-Policy", "same-origin"),
    ("Cross-Origin-Resource-Policy", "same-origin"),
    ("Permissions-Policy", "camera=(), microphone=(), geolocation=(), interest-cohort=()"),
)
MAX_TARGET = 2048
"""Longest request target (path and query) accepted."""
MAX_HEADER_BYTES = 16 * 1024
"""Largest total of request header lines accepted."""
KEEPALIVE_S = 15.0
"""Seconds between SSE comments that keep proxies and browsers from closing the stream."""
VIDEO_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}\.(mp4|webm)$")
_VIDEO_TYPES = {"mp4": "video/mp4", "webm": "video/webm"}
_REALM = 'Basic realm="signaltwin console", charset="UTF-8"'


def sse_event(data: str, *, event: str | None = None, event_id: str | None = None) -> bytes:
    """One Server-Sent Events frame: ``event:``, ``id:``, a ``data:`` line per line, a blank.

    Raises:
        ValueError: ``event`` or ``event_id`` contains a line break (it would end the field).
    """
    lines = []
    for name, value in (("event", event), ("id", event_id)):
        if value is None:
            continue
        if re.search(r"[\r\n\0]", value):
            raise ValueError(f"an SSE {name} cannot contain a line break: {value!r}")
        lines.append(f"{name}: {value}")
    lines.extend(f"data: {line}" for line in re.split(r"\r\n|\r|\n", data))
    return ("\n".join(lines) + "\n\n").encode("utf-8")


def parse_range(header: str | None, size: int) -> tuple[int, int] | Literal[False] | None:
    """The ``(first, last)`` bytes of a single ``Range: bytes=...`` header.

    Returns:
        None when there is no (usable) range header, so the whole file is sent;
        False when the range cannot be satisfied (416); else the inclusive range.
    """
    if header is None:
        return None
    match = re.fullmatch(r"\s*bytes=(\d*)-(\d*)\s*", header)
    if match is None or (not match.group(1) and not match.group(2)):
        return None  # several ranges, other units: serve the whole file
    first_text, last_text = match.groups()
    if not first_text:
        length = int(last_text)
        if length == 0 or size == 0:
            return False
        return max(0, size - length), size - 1
    first = int(first_text)
    last = int(last_text) if last_text else size - 1
    if first >= size or last < first:
        return False
    return first, min(last, size - 1)


@dataclass(frozen=True)
class ConsoleAssets:
    """What the server sends besides the state: the page, its script and style, the map."""

    page: bytes
    script: bytes
    style: bytes
    map_svg: Callable[[], bytes]
    video_dir: Path


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 32

    def __init__(
        self,
        address: tuple[str, int],
        feed: ConsoleFeed,
        assets: ConsoleAssets,
        tls: ssl.SSLContext | None,
        auth: BasicAuth | None,
        max_clients: int,
    ) -> None:
        self.feed = feed
        self.assets = assets
        self.tls = tls
        self.auth = auth
        self.streams = threading.BoundedSemaphore(max_clients)
        self.loopback = is_loopback_address(address[0])
        self.address_family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        super().__init__(address, _Handler)
        port = self.server_address[1]
        names = {"localhost", "127.0.0.1", "[::1]", address[0].lower()}
        self.hosts = names | {f"{name}:{port}" for name in names}

    def finish_request(self, request: Any, client_address: Any) -> None:
        # the TLS handshake runs here, in the request's own thread (with a timeout),
        # so a client that never finishes one cannot stall the accepting thread
        if self.tls is None:
            super().finish_request(request, client_address)
            return
        request.settimeout(10.0)
        try:
            wrapped = self.tls.wrap_socket(request, server_side=True)
        except (ssl.SSLError, OSError) as e:
            logger.debug("console: TLS handshake with %s failed: %s", client_address[0], e)
            return
        try:
            super().finish_request(wrapped, client_address)
        finally:
            wrapped.close()


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    server_version = "signaltwin-console"
    sys_version = ""
    protocol_version = "HTTP/1.1"
    timeout = 30

    # ------------------------------------------------------------------ plumbing

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base's name
        logger.debug("console: %s %s", self.address_string(), format % args)

    def end_headers(self) -> None:
        for name, value in _SECURITY_HEADERS:
            self.send_header(name, value)
        if self.server.tls is not None:
            self.send_header("Strict-Transport-Security", "max-age=31536000")
        super().end_headers()

    def _plain(
        self, status: HTTPStatus, text: str, headers: tuple[tuple[str, str], ...] = ()
    ) -> None:
        body = (text + "\n").encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        for name, value in headers:
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _body(self, status: HTTPStatus, content_type: str, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _refuse_method(self) -> None:
        self.close_connection = True
        self._plain(
            HTTPStatus.METHOD_NOT_ALLOWED,
            "the console is read-only: GET and HEAD only",
            (("Allow", "GET, HEAD"),),
        )

    do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = do_TRACE = do_CONNECT = _refuse_method

    def do_HEAD(self) -> None:  # noqa: N802 - the base's naming
        """Answer as GET does, without a body."""
        self.do_GET()

    # ------------------------------------------------------------------ checks

    def _admitted(self) -> bool:
        """Refuse oversized, bodied, misaddressed or unauthenticated requests."""
        if len(self.path) > MAX_TARGET:
            self.close_connection = True
            self._plain(HTTPStatus.REQUEST_URI_TOO_LONG, "request target too long")
            return False
        header_bytes = sum(len(k) + len(v) + 4 for k, v in self.headers.items())
        if header_bytes > MAX_HEADER_BYTES:
            self.close_connection = True
            self._plain(HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE, "request headers too large")
            return False
        length = self.headers.get("Content-Length")
        if self.headers.get("Transfer-Encoding") or (length not in (None, "0")):
            self.close_connection = True
            self._plain(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, "the console accepts no request body")
            return False
        if self.server.loopback:
            host = (self.headers.get("Host") or "").strip().lower()
            if host not in self.server.hosts:
                self.close_connection = True
                self._plain(HTTPStatus.MISDIRECTED_REQUEST, "unknown Host for this console")
                return False
        auth = self.server.auth
        if auth is None:
            return True
        client = self.client_address[0]
        if auth.limiter.blocked(client):
            self.close_connection = True
            self._plain(
                HTTPStatus.TOO_MANY_REQUESTS,
                "too many failed logins; try again in a minute",
                (("Retry-After", "60"),),
            )
            return False
        header = self.headers.get("Authorization")
        if auth.check(header) is not None:
            return True
        if header is not None:
            auth.limiter.failed(client)
            logger.warning("console: failed login from %s", client)
        self._plain(
            HTTPStatus.UNAUTHORIZED, "log in to the console", (("WWW-Authenticate", _REALM),)
        )
        return False

    # ------------------------------------------------------------------ routes

    def do_GET(self) -> None:  # noqa: N802 - the base's naming
        """Serve one of the routes."""
        if not self._admitted():
            return
        path = urlsplit(self.path).path
        assets = self.server.assets
        if path in ("/", "/index.html"):
            self._body(HTTPStatus.OK, "text/html; charset=utf-8", assets.page)
        elif path == "/console.js":
            self._body(HTTPStatus.OK, "text/javascript; charset=utf-8", assets.script)
        elif path == "/console.css":
            self._body(HTTPStatus.OK, "text/css; charset=utf-8", assets.style)
        elif path == "/api/state":
            self._body(HTTPStatus.OK, "application/json", self.server.feed.snapshot()[1])
        elif path == "/favicon.svg":
            self._body(HTTPStatus.OK, "image/svg+xml", FAVICON)
        elif path == "/map.svg":
            self._body(HTTPStatus.OK, "image/svg+xml; charset=utf-8", assets.map_svg())
        elif path == "/events":
            self._events()
        elif path.startswith("/video/"):
            self._video(path.removeprefix("/video/"))
        else:
            self._plain(HTTPStatus.NOT_FOUND, "not found")

    def _events(self) -> None:
        streams = self.server.streams
        if not streams.acquire(blocking=False):
            self._plain(
                HTTPStatus.SERVICE_UNAVAILABLE,
                "too many live connections to the console",
                (("Retry-After", "10"),),
            )
            return
        self.close_connection = True
        try:
            self.send_response(HTTPStatus.OK)
            self.send_header("Content-Type", "text/event-stream; charset=utf-8")
            self.send_header("Cache-Control", "no-store")
            self.send_header("X-Accel-Buffering", "no")
            self.end_headers()
            if self.command == "HEAD":
                return
            feed = self.server.feed
            version, data = feed.snapshot()
            self.wfile.write(b"retry: 3000\n\n")
            self.wfile.write(sse_event(data.decode("ascii"), event="state", event_id=str(version)))
            self.wfile.flush()
            while not feed.closed:
                changed = feed.wait_for_change(version, KEEPALIVE_S)
                if changed is None:
                    if feed.closed:
                        break
                    self.wfile.write(b": keep-alive\n\n")
                else:
                    version, data = changed
                    frame = sse_event(data.decode("ascii"), event="state", event_id=str(version))
                    self.wfile.write(frame)
                self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError, TimeoutError, ssl.SSLError):
            pass  # the browser went away
        finally:
            streams.release()

    def _video(self, raw_name: str) -> None:
        name = unquote(raw_name)
        directory = self.server.assets.video_dir
        match = VIDEO_NAME.fullmatch(name)
        file = None
        if match is not None:
            try:
                root = directory.resolve(strict=True)
                candidate = (root / name).resolve(strict=True)
                if candidate.parent == root and candidate.is_file():
                    file = candidate
            except OSError:
                file = None
        if file is None or match is None:
            self._plain(HTTPStatus.NOT_FOUND, "no such video")
            return
        size = file.stat().st_size
        wanted = parse_range(self.headers.get("Range"), size)
        if wanted is False:
            self._plain(
                HTTPStatus.REQUESTED_RANGE_NOT_SATISFIABLE,
                "range not satisfiable",
                (("Content-Range", f"bytes */{size}"),),
            )
            return
        first, last = (0, size - 1) if wanted is None else wanted
        self.send_response(HTTPStatus.OK if wanted is None else HTTPStatus.PARTIAL_CONTENT)
        self.send_header("Content-Type", _VIDEO_TYPES[match.group(1)])
        self.send_header("Content-Length", str(max(0, last - first + 1)))
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("Cache-Control", "no-store")
        if wanted is not None:
            self.send_header("Content-Range", f"bytes {first}-{last}/{size}")
        self.end_headers()
        if self.command == "HEAD":
            return
        with open(file, "rb") as handle:
            _copy(handle, self.wfile, first, last - first + 1)


def _copy(source: BinaryIO, sink: Any, offset: int, count: int) -> None:
    source.seek(offset)
    try:
        while count > 0:
            chunk = source.read(min(64 * 1024, count))
            if not chunk:
                return
            sink.write(chunk)
            count -= len(chunk)
    except (BrokenPipeError, ConnectionResetError, TimeoutError, ssl.SSLError):
        pass


class ConsoleServer:
    """The running console (use :func:`start_console_server`)."""

    def __init__(self, server: _Server, thread: threading.Thread, address: str) -> None:
        self._server = server
        self._thread = thread
        self.address = address
        self.port: int = int(server.server_address[1])

    @property
    def url(self) -> str:
        """The page's URL, e.g. ``http://127.0.0.1:9110/``."""
        host = f"[{self.address}]" if ":" in self.address else self.address
        scheme = "https" if self._server.tls is not None else "http"
        return f"{scheme}://{host}:{self.port}/"

    def close(self, timeout_s: float = 5.0) -> None:
        """Stop serving, end the live connections and release the port."""
        self._server.feed.close()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout_s)


def start_console_server(
    feed: ConsoleFeed,
    assets: ConsoleAssets,
    address: str,
    port: int,
    *,
    tls: ssl.SSLContext | None = None,
    auth: BasicAuth | None = None,
    max_clients: int = 16,
) -> ConsoleServer:
    """Serve the console on ``address:port`` (0: any free port) in a daemon thread.

    Raises:
        ConfigError: ``address`` is not loopback and TLS or authentication is missing.
        OSError: the address cannot be bound (in use, not local, no permission).
    """
    if not is_loopback_address(address) and (tls is None or auth is None):
        raise ConfigError(
            f"console.address = {address!r} is not a loopback address: the console serves "
            "it only over HTTPS with a users file (console.tls_certificate, "
            "console.tls_private_key, console.users_file)"
        )
    server = _Server((address, port), feed, assets, tls, auth, max_clients)
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.2}, daemon=True
    )
    thread.name = "signaltwin-console-http"
    thread.start()
    running = ConsoleServer(server, thread, address)
    logger.info("serving the operator console on %s", running.url)
    return running
