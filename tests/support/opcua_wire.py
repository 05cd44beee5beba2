"""Raw OPC UA TCP for tests and the fuzz bench: Hello, OpenSecureChannel, garbage."""

from __future__ import annotations

import socket
import struct
import time
from urllib.parse import urlparse

from asyncua import ua
from asyncua.common.connection import SecureConnection, TransportLimits
from asyncua.crypto.security_policies import SecurityPolicyNone
from asyncua.ua.ua_binary import struct_to_binary, uatcp_to_binary


def hello(url: str) -> bytes:
    """A Hello message for ``url``."""
    msg = ua.Hello()
    msg.EndpointUrl = url
    msg.ReceiveBufferSize = 65535
    msg.SendBufferSize = 65535
    msg.MaxMessageSize = 0
    msg.MaxChunkCount = 0
    return uatcp_to_binary(ua.MessageType.Hello, msg)


def open_none(mode: int = 1) -> bytes:
    """An OpenSecureChannel request with SecurityPolicy None (mode 1: None)."""
    conn = SecureConnection(SecurityPolicyNone(), TransportLimits())
    params = ua.OpenSecureChannelParameters()
    params.ClientProtocolVersion = 0
    params.RequestType = ua.SecurityTokenRequestType.Issue
    params.SecurityMode = ua.MessageSecurityMode(mode)
    params.RequestedLifetime = 3_600_000
    params.ClientNonce = b""
    request = ua.OpenSecureChannelRequest()
    request.Parameters = params
    return conn.message_to_binary(
        struct_to_binary(request), message_type=ua.MessageType.SecureOpen, request_id=1
    )


def chunk_header(kind: bytes, size: int) -> bytes:
    """An 8-byte message header announcing ``size`` bytes."""
    return kind[:3] + b"F" + struct.pack("<I", size)


def exchange(url: str, payloads: list[bytes], timeout_s: float = 5.0) -> tuple[bytes, bool]:
    """Send ``payloads`` one by one and read until the server closes or ``timeout_s``.

    Returns:
        ``(everything received, whether the server closed the socket)``.
    """
    where = urlparse(url)
    received = b""
    closed = False
    with socket.create_connection((where.hostname, where.port), timeout=timeout_s) as sock:
        try:
            for data in payloads:
                sock.sendall(data)
                time.sleep(0.01)
        except OSError:
            return received, True
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            sock.settimeout(max(0.05, deadline - time.monotonic()))
            try:
                block = sock.recv(65536)
            except TimeoutError:
                break
            except OSError:
                closed = True
                break
            if not block:
                closed = True
                break
            received += block
    return received, closed


def message_types(data: bytes) -> list[bytes]:
    """The 3-byte types of the messages in ``data`` (ACK, ERR, OPN, MSG...)."""
    kinds = []
    while len(data) >= 8:
        size = struct.unpack("<I", data[4:8])[0]
        kinds.append(data[:3])
        if size < 8:
            break
        data = data[size:]
    return kinds
