"""The console's HTTP server: headers, read-only methods, bounds, traversal, escaping, SSE, auth."""

from __future__ import annotations

import base64
import datetime as dt
import http.client
import json
import socket
import ssl
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from configs.errors import ConfigError
from controller.console import (
    CONTENT_SECURITY_POLICY,
    BasicAuth,
    ConsoleAssets,
    ConsoleContext,
    ConsoleFeed,
    ConsoleServer,
    hash_password,
    parse_range,
    render_map,
    sse_event,
    start_console_server,
)
from controller.console.auth import FailureLimiter
from controller.console.page import render_page, static_asset
from controller.contracts import BasicCycleReport
from simulators.geometry import NetworkGeometry

EVIL = '<script>alert("x")</script>&'
GEOMETRY = NetworkGeometry(
    edge_ids=("e1",),
    polylines={"e1": [(0.0, 0.0), (100.0, 0.0)]},
    widths_m={"e1": 6.4},
    intersections={"J1": (0.0, 0.0), EVIL: (100.0, 0.0)},
    bounds=(0.0, 0.0, 100.0, 10.0),
)
SLOT = dt.datetime(2026, 11, 23, 8, 0, tzinfo=dt.UTC)


@dataclass
class Console:
    server: ConsoleServer
    feed: ConsoleFeed
    videos: Path
    tls: ssl.SSLContext | None = None

    def connect(self) -> http.client.HTTPConnection:
        if self.tls is None:
            return http.client.HTTPConnection("127.0.0.1", self.server.port, timeout=10)
        return http.client.HTTPSConnection(
            "127.0.0.1", self.server.port, timeout=10, context=self.tls
        )

    def request(
        self, method: str, path: str, headers: dict[str, str] | None = None, body: bytes = b""
    ) -> tuple[int, http.client.HTTPMessage, bytes]:
        conn = self.connect()
        try:
            conn.request(method, path, body=body or None, headers=headers or {})
            response = conn.getresponse()
            return response.status, response.headers, response.read()
        finally:
            conn.close()


def start(
    tmp_path: Path, *, tls: tuple[ssl.SSLContext, ssl.SSLContext] | None = None, **kw: object
) -> Console:
    context = ConsoleContext(
        network_id=EVIL,
        mode="auto",
        interval_s=240,
        controllers=("J1", EVIL),
        intersections=tuple(GEOMETRY.intersections),
        min_wait_reduction=0.12,
        max_nox_increase=0.008,
    )
    feed = ConsoleFeed(context, tmp_path / "ledger.sqlite", poll_s=0.05)
    videos = tmp_path / "videos"
    videos.mkdir(exist_ok=True)
    assets = ConsoleAssets(
        page=render_page(render_map(GEOMETRY), EVIL),
        script=static_asset("console.js"),
        style=static_asset("console.css"),
        map_svg=lambda: render_map(GEOMETRY, standalone=True).encode(),
        video_dir=videos,
    )
    server = start_console_server(
        feed,
        assets,
        "127.0.0.1",
        0,
        tls=None if tls is None else tls[0],
        **kw,  # type: ignore[arg-type]
    )
    feed.start()
    return Console(server, feed, videos, None if tls is None else tls[1])


@pytest.fixture
def console(tmp_path: Path) -> Iterator[Console]:
    running = start(tmp_path)
    yield running
    running.server.close()


# ---------------------------------------------------------------- headers and methods


@pytest.mark.parametrize("path", ["/", "/console.js", "/console.css", "/api/state", "/map.svg"])
def test_every_response_carries_the_strict_headers_and_no_cors(console: Console, path: str) -> None:
    status, headers, _ = console.request("GET", path, {"Origin": "https://evil.example"})
    assert status == 200
    assert headers["Content-Security-Policy"] == CONTENT_SECURITY_POLICY
    assert "script-src 'self'" in CONTENT_SECURITY_POLICY
    assert "unsafe-inline" not in CONTENT_SECURITY_POLICY
    assert headers["X-Content-Type-Options"] == "nosniff"
    assert headers["X-Frame-Options"] == "DENY"
    assert headers["Referrer-Policy"] == "no-referrer"
    assert headers["Cache-Control"] == "no-store"
    assert not [k for k in headers if k.lower().startswith("access-control-")]
    assert "Strict-Transport-Security" not in headers  # plain HTTP on loopback


def test_the_page_fetches_nothing_from_elsewhere(console: Console) -> None:
    _, _, page = console.request("GET", "/")
    text = page.decode()
    assert '<script src="/console.js" defer></script>' in text
    assert "<script>" not in text.replace("&lt;script&gt;", "")  # no inline script
    assert "http://" not in text.replace('xmlns="http://www.w3.org/2000/svg"', "")
    assert "https://" not in text and "style=" not in text
    script = static_asset("console.js").decode()
    for sink in (".innerHTML", ".outerHTML", "insertAdjacentHTML", "document.write", "eval("):
        assert sink not in script  # text goes in as text nodes only


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE"])
def test_only_get_and_head(console: Console, method: str) -> None:
    status, headers, _ = console.request(method, "/api/state")
    assert status == 405 and headers["Allow"] == "GET, HEAD"
    assert headers["Content-Security-Policy"] == CONTENT_SECURITY_POLICY


def test_head_answers_without_a_body(console: Console) -> None:
    status, headers, body = console.request("HEAD", "/api/state")
    assert status == 200 and body == b"" and int(headers["Content-Length"]) > 0


def test_requests_are_bounded(console: Console) -> None:
    assert console.request("GET", "/" + "a" * 3000)[0] == 414
    assert console.request("GET", "/api/state", body=b"x" * 10)[0] == 413
    many = {f"X-Filler-{i}": "y" * 500 for i in range(40)}
    assert console.request("GET", "/api/state", many)[0] == 431
    assert console.request("GET", "/nothing-here")[0] == 404


def test_a_foreign_host_name_is_refused_on_loopback(console: Console) -> None:
    # a page on evil.example rebound to 127.0.0.1 sends its own name as Host
    assert console.request("GET", "/api/state", {"Host": "evil.example"})[0] == 421
    port = console.server.port
    assert console.request("GET", "/api/state", {"Host": f"localhost:{port}"})[0] == 200


# ---------------------------------------------------------------- videos


def test_a_video_in_the_video_directory_is_served_with_ranges(console: Console) -> None:
    data = bytes(range(256)) * 40
    (console.videos / "cycle-20261123T080000.mp4").write_bytes(data)
    status, headers, body = console.request("GET", "/video/cycle-20261123T080000.mp4")
    assert status == 200 and body == data and headers["Content-Type"] == "video/mp4"
    assert headers["Accept-Ranges"] == "bytes"
    status, headers, body = console.request(
        "GET", "/video/cycle-20261123T080000.mp4", {"Range": "bytes=100-199"}
    )
    assert status == 206 and body == data[100:200]
    assert headers["Content-Range"] == f"bytes 100-199/{len(data)}"
    status, _, body = console.request(
        "GET", "/video/cycle-20261123T080000.mp4", {"Range": "bytes=-10"}
    )
    assert status == 206 and body == data[-10:]
    status, headers, _ = console.request(
        "GET", "/video/cycle-20261123T080000.mp4", {"Range": "bytes=999999-"}
    )
    assert status == 416 and headers["Content-Range"] == f"bytes */{len(data)}"


@pytest.mark.parametrize(
    "target",
    [
        "/video/../secret.mp4",
        "/video/..%2Fsecret.mp4",
        "/video/%2e%2e%2fsecret.mp4",
        "/video/%2E%2E/secret.mp4",
        "/video/..%5Csecret.mp4",
        "/video/sub/inner.mp4",
        "/video/sub%2Finner.mp4",
        "/video/%2Ftmp%2Fsecret.mp4",
        "/video/link.mp4",
        "/video/.hidden.mp4",
        "/video/notes.txt",
        "/video/missing.mp4",
        "/video/",
        "/video/cycle.mp4%00.txt",
    ],
)
def test_no_file_outside_the_video_directory_is_served(console: Console, target: str) -> None:
    root = console.videos.parent
    (root / "secret.mp4").write_bytes(b"SECRET")
    (console.videos / "sub").mkdir(exist_ok=True)
    (console.videos / "sub" / "inner.mp4").write_bytes(b"SECRET")
    (console.videos / ".hidden.mp4").write_bytes(b"SECRET")
    (console.videos / "notes.txt").write_bytes(b"SECRET")
    link = console.videos / "link.mp4"
    if not link.exists():
        link.symlink_to(root / "secret.mp4")
    status, _, body = console.request("GET", target)
    assert status in (400, 404) and b"SECRET" not in body


def test_parse_range() -> None:
    assert parse_range(None, 100) is None
    assert parse_range("bytes=0-9", 100) == (0, 9)
    assert parse_range("bytes=90-", 100) == (90, 99)
    assert parse_range("bytes=90-500", 100) == (90, 99)
    assert parse_range("bytes=-20", 100) == (80, 99)
    assert parse_range("bytes=100-", 100) is False
    assert parse_range("bytes=5-1", 100) is False
    assert parse_range("bytes=0-1,5-9", 100) is None  # several ranges: the whole file
    assert parse_range("items=0-1", 100) is None


# ---------------------------------------------------------------- escaping


def test_ids_from_outside_are_escaped_in_the_page_the_map_and_the_json(console: Console) -> None:
    _, _, page = console.request("GET", "/")
    _, _, svg = console.request("GET", "/map.svg")
    for markup in (page.decode(), svg.decode()):
        assert EVIL not in markup
        assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;&amp;" in markup
    status, headers, body = console.request("GET", "/api/state")
    assert headers["Content-Type"] == "application/json"
    state = json.loads(body)
    assert state["network_id"] == EVIL  # data, for the script's text nodes
    assert EVIL in state["controllers"]["unknown"]


# ---------------------------------------------------------------- server-sent events


def test_sse_frames() -> None:
    assert sse_event('{"a":1}', event="state", event_id="3") == (
        b'event: state\nid: 3\ndata: {"a":1}\n\n'
    )
    # a line break in the data never ends the event early: each line is its own field
    assert sse_event("one\ntwo\r\nthree\rfour") == (
        b"data: one\ndata: two\ndata: three\ndata: four\n\n"
    )
    with pytest.raises(ValueError, match="line break"):
        sse_event("x", event="state\ndata: injected")
    with pytest.raises(ValueError, match="line break"):
        sse_event("x", event_id="1\r")


def _read_event(response: http.client.HTTPResponse) -> dict[str, str]:
    fields: dict[str, str] = {}
    while True:
        line = response.fp.readline().decode().rstrip("\n")
        if line == "":
            if fields:
                return fields
            continue
        if line.startswith(":"):
            continue
        name, _, value = line.partition(": ")
        fields[name] = fields.get(name, "") + value


def test_events_stream_the_state_at_once_and_after_each_change(console: Console) -> None:
    conn = console.connect()
    conn.request("GET", "/events")
    response = conn.getresponse()
    assert response.status == 200
    assert response.headers["Content-Type"] == "text/event-stream; charset=utf-8"
    assert response.headers["Content-Security-Policy"] == CONTENT_SECURITY_POLICY
    assert _read_event(response) == {"retry": "3000"}
    first = _read_event(response)
    assert first["event"] == "state"
    assert json.loads(first["data"])["version"] == int(first["id"])
    console.feed.cycle_finished(
        SLOT,
        BasicCycleReport(ok=True, deployed=False, decision="refuse_wait", stage_s={"whatif": 3.0}),
        "refused",
        3.2,
    )
    for _ in range(5):  # the feed's first read of the (absent) ledger may come first
        second = _read_event(response)
        state = json.loads(second["data"])
        if state["cycles"]:
            break
    assert int(second["id"]) > int(first["id"])
    assert state["cycles"][0]["decision"] == "refuse_wait"
    assert state["cycles"][0]["stage_s"] == {"whatif": 3.0}
    conn.close()


def test_live_connections_are_capped(tmp_path: Path) -> None:
    running = start(tmp_path, max_clients=1)
    try:
        first = running.connect()
        first.request("GET", "/events")
        stream = first.getresponse()  # kept open: it holds the one place
        assert stream.status == 200
        _read_event(stream)
        status, headers, _ = running.request("GET", "/events")
        assert status == 503 and headers["Retry-After"] == "10"
        stream.close()
        first.close()
    finally:
        running.server.close()


def test_closing_the_server_ends_the_streams(tmp_path: Path) -> None:
    running = start(tmp_path)
    conn = running.connect()
    conn.request("GET", "/events")
    response = conn.getresponse()
    _read_event(response)
    _read_event(response)
    running.server.close()
    rest = response.fp.read()  # returns: the stream ended, nothing was left hanging
    assert rest == b"" or rest.endswith(b"\n\n")
    conn.close()


# ---------------------------------------------------------------- HTTPS and authentication


def _tls_pair(tmp_path: Path) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = dt.datetime.now(dt.UTC)
    import ipaddress

    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=1))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp_path / "console.pem", tmp_path / "console.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server.load_cert_chain(cert_path, key_path)
    client = ssl.create_default_context(cafile=str(cert_path))
    return server, client


def _basic(user: str, password: str) -> dict[str, str]:
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


@pytest.fixture
def protected(tmp_path: Path) -> Iterator[Console]:
    users = {"operator": hash_password("correct horse", scheme="pbkdf2_sha256")}
    auth = BasicAuth(users, FailureLimiter(max_failures=3, lockout_s=60))
    running = start(tmp_path, tls=_tls_pair(tmp_path), auth=auth)
    yield running
    running.server.close()


def test_https_with_basic_auth(protected: Console) -> None:
    status, headers, _ = protected.request("GET", "/api/state")
    assert status == 401
    assert headers["WWW-Authenticate"].startswith('Basic realm="signaltwin console"')
    assert headers["Strict-Transport-Security"] == "max-age=31536000"
    status, _, body = protected.request("GET", "/api/state", _basic("operator", "correct horse"))
    assert status == 200 and json.loads(body)["schema"] == "signaltwin.console/v1"
    assert protected.request("GET", "/events", _basic("operator", "wrong"))[0] == 401
    assert protected.request("GET", "/", _basic("nobody", "correct horse"))[0] == 401


def test_repeated_failures_lock_the_client_out(protected: Console) -> None:
    for _ in range(3):
        assert protected.request("GET", "/", _basic("operator", "guess"))[0] == 401
    status, headers, _ = protected.request("GET", "/", _basic("operator", "correct horse"))
    assert status == 429 and headers["Retry-After"] == "60"


def test_plain_http_to_the_https_port_gets_no_page(protected: Console) -> None:
    with socket.create_connection(("127.0.0.1", protected.server.port), timeout=5) as raw:
        raw.sendall(b"GET /api/state HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        try:
            answer = raw.recv(4096)
        except ConnectionResetError:
            answer = b""  # the handshake failed and the server hung up
    assert b"schema" not in answer


@pytest.mark.parametrize("address", ["0.0.0.0", "192.0.2.10", "::", "console.example"])
def test_off_loopback_the_server_refuses_to_start_without_tls_and_auth(
    tmp_path: Path, address: str
) -> None:
    feed = ConsoleFeed(
        ConsoleContext("d", "auto", 240, (), (), 0.12, 0.008), tmp_path / "ledger.sqlite"
    )
    assets = ConsoleAssets(b"", b"", b"", lambda: b"", tmp_path)
    with pytest.raises(ConfigError, match="not a loopback address"):
        start_console_server(feed, assets, address, 0)
    users = BasicAuth({"a": hash_password("pw-pw-pw-pw", scheme="pbkdf2_sha256")})
    with pytest.raises(ConfigError, match="console.tls_certificate"):
        start_console_server(feed, assets, address, 0, auth=users)
