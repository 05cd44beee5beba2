"""Malformed OPC UA traffic against a live emulated controller in its own process.

Used by tests/integration/test_actuation_wire_fuzz.py (a few hundred requests)
and bench/opcua_fuzz.py (a thousand and more). :func:`serve` is the server
process (``python -m tests.support.opcua_fuzz DIR``); :class:`ServerProcess`
starts it and reads its RSS; :func:`fuzz` sends the malformed requests;
:func:`daemon_round_trip` checks that a proper daemon session still works.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from tests.support.opcua_wire import chunk_header, hello, open_none

CASES = (
    "random_after_hello",
    "oversized_chunk",
    "policy_none",
    "bogus_policy",
    "truncated_hello",
    "truncated_open",
    "garbage_open",
    "garbage_message",
)


def _case(kind: str, url: str, rng: random.Random) -> list[bytes]:
    hi = hello(url)
    if kind == "random_after_hello":
        return [hi, rng.randbytes(rng.randint(1, 4096))]
    if kind == "oversized_chunk":
        return [
            hi,
            chunk_header(rng.choice([b"OPN", b"MSG", b"CLO"]), rng.randint(70_000, 2**32 - 1)),
        ]
    if kind == "policy_none":
        return [hi, open_none(rng.choice([1, 2, 3]))]
    if kind == "bogus_policy":
        opn = open_none()
        uri = b"http://opcfoundation.org/UA/SecurityPolicy#None"
        bogus = rng.choice(
            [b"http://opcfoundation.org/UA/SecurityPolicy#Basic256", b"x" * len(uri)]
        )
        return [hi, opn.replace(uri, bogus[: len(uri)].ljust(len(uri), b"#"))]
    if kind == "truncated_hello":
        return [hi[: rng.randint(1, len(hi) - 1)]]
    if kind == "truncated_open":
        opn = open_none()
        return [hi, opn[: rng.randint(1, len(opn) - 1)]]
    if kind == "garbage_open":
        body = rng.randbytes(rng.randint(0, 2000))
        return [hi, chunk_header(b"OPN", 8 + len(body)) + body]
    body = rng.randbytes(rng.randint(0, 2000))
    kind_bytes = rng.choice([b"MSG", b"CLO", b"HEL", b"ACK", b"ERR", b"ZZZ"])
    return [hi, chunk_header(kind_bytes, 8 + len(body)) + body]


async def _one(url: str, payloads: list[bytes], timeout_s: float) -> str:
    where = urlparse(url)
    try:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(where.hostname, where.port), timeout_s
        )
    except (OSError, TimeoutError):
        return "connect_failed"
    try:
        for data in payloads:
            writer.write(data)
            await writer.drain()
        received = b""
        try:
            while True:
                block = await asyncio.wait_for(reader.read(65536), timeout_s)
                if not block:
                    return "closed" + ("_err" if b"ERR" in received else "")
                received += block
        except TimeoutError:
            return "open" + ("_err" if b"ERR" in received else "")
    except OSError:
        return "reset"
    finally:
        writer.close()
        try:
            await writer.wait_closed()
        except OSError:
            pass


async def fuzz(
    url: str, n: int, seed: int = 0, concurrency: int = 16, timeout_s: float = 0.5
) -> dict[str, int]:
    """Send ``n`` malformed requests (each on its own connection); count the outcomes."""
    rng = random.Random(seed)
    gate = asyncio.Semaphore(concurrency)
    outcomes: dict[str, int] = {}

    async def run(i: int) -> None:
        kind = CASES[i % len(CASES)]
        payloads = _case(kind, url, rng)
        async with gate:
            outcome = await _one(url, payloads, timeout_s)
        key = f"{kind}:{outcome}"
        outcomes[key] = outcomes.get(key, 0) + 1

    await asyncio.gather(*(run(i) for i in range(n)))
    return dict(sorted(outcomes.items()))


# --------------------------------------------------------------------------- server process


@dataclass
class ServerProcess:
    """The emulated controller in a child process (so its RSS is its own)."""

    process: subprocess.Popen[str]
    url: str
    directory: Path

    @classmethod
    def start(cls, directory: Path, public_key_pem: bytes, timeout_s: float = 120) -> ServerProcess:
        """Provision ``directory`` and start the server; wait for its URL."""
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "signer.pub.pem").write_bytes(public_key_pem)
        root = Path(__file__).resolve().parents[2]
        process = subprocess.Popen(  # noqa: S603 - our own interpreter and module
            [sys.executable, "-m", "tests.support.opcua_fuzz", str(directory)],
            cwd=root,
            stdout=subprocess.PIPE,
            text=True,
        )
        deadline = time.monotonic() + timeout_s
        assert process.stdout is not None
        line = process.stdout.readline()
        if not line or time.monotonic() > deadline:
            process.kill()
            raise RuntimeError("the fuzz server did not start")
        return cls(process, json.loads(line)["url"], directory)

    def rss_mib(self) -> float:
        """Resident set size of the server process (MiB)."""
        for row in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if row.startswith("VmRSS:"):
                return int(row.split()[1]) / 1024
        raise RuntimeError("no VmRSS")

    def alive(self) -> bool:
        """Whether the server process still runs."""
        return self.process.poll() is None

    def stop(self) -> None:
        """Stop the server (SIGTERM, then kill)."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        if self.process.stdout is not None:
            self.process.stdout.close()


async def daemon_round_trip(directory: Path, url: str, envelope: bytes, sequence: int) -> bool:
    """Stage ``envelope`` and read StagedSequence back over a proper daemon session."""
    from asyncua import Client, ua
    from asyncua.crypto import security_policies as sp

    from actuation import contract as c
    from tests.support.actuation_fleet import PASSWORD, USER

    client = Client(url, timeout=10)
    client.application_uri = "urn:signaltwin:daemon"
    client.session_timeout = 60_000
    client.set_user(USER)
    client.set_password(PASSWORD)
    await client.set_security(
        sp.SecurityPolicyBasic256Sha256,
        certificate=str(directory / "client.der"),
        private_key=str(directory / "client.key.pem"),
        server_certificate=(directory / "ctl-J1.der").read_bytes(),
        mode=ua.MessageSecurityMode.SignAndEncrypt,
    )
    async with client:
        ns = (await client.get_namespace_array()).index(c.NAMESPACE_URI)
        obj = client.get_node(ua.NodeId(c.OBJECT, ns))
        out = await obj.call_method(
            ua.NodeId(c.STAGE_PLAN, ns), ua.Variant(envelope, ua.VariantType.ByteString)
        )
        staged = await client.get_node(ua.NodeId(c.STAGED_SEQUENCE, ns)).read_value()
        return int(out[0]) == 0 and int(staged) == sequence


def serve(directory: Path) -> None:
    """Run one emulated controller (J1) until SIGTERM; print its URL as a JSON line."""
    import logging

    from actuation._verify import TrustedKeys
    from actuation.core import ControllerCore, ControllerProvisioning
    from actuation.emulated import ControllerAccess, EmulatedController
    from actuation.users import PasswordHash
    from tests.support.actuation_fleet import (
        LIMITS,
        NETWORK,
        PASSWORD,
        USER,
        FakeField,
        base_program,
        make_pki,
    )

    logging.basicConfig(level=logging.CRITICAL)
    pki = make_pki(directory, ["J1"])
    prov = ControllerProvisioning(
        tls_id="J1",
        base=base_program("J1"),
        limits=LIMITS,
        network=NETWORK,
        trusted_keys=TrustedKeys.from_pem([(directory / "signer.pub.pem").read_bytes()]),
        state_dir=directory / "state",
    )
    access = ControllerAccess(USER, PasswordHash.create(PASSWORD), (pki.client_der,))
    controller = EmulatedController(ControllerCore(prov, FakeField()), pki.servers["J1"], access)

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        await controller.start()
        sys.stdout.write(json.dumps({"url": controller.url, "pid": os.getpid()}) + "\n")
        sys.stdout.flush()
        await stop.wait()
        await controller.stop()

    asyncio.run(main())


def _main(argv: list[str]) -> Any:
    serve(Path(argv[0]))


if __name__ == "__main__":
    _main(sys.argv[1:])
