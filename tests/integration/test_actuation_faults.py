"""Faults during a push, and who may connect, on a small fleet on 127.0.0.1.

A controller that is down, slow, or drops its session mid-push leaves every
controller on its old plan; anonymous, unencrypted, signed-only, unknown
certificate and wrong-password sessions are refused.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from asyncua import ua
from asyncua.client.client import Client
from asyncua.crypto import security_policies

from actuation import ControllerPool
from actuation import contract as c
from actuation.core import PlanResult
from actuation.emulated import EmulatedController, EmulatedFleet
from actuation.security import CLIENT_APPLICATION_URI, generate_application_certificate
from actuation.users import PasswordHash
from tests.support.actuation_fleet import (
    PASSWORD,
    USER,
    FakeField,
    LoopThread,
    Pki,
    configuration,
    make_fleet,
    make_pki,
    make_pool,
    signed,
    timing,
    tls_ids,
)
from tests.support.softkeys import SoftwareSigner

pytestmark = [pytest.mark.integration, pytest.mark.slow]

IDS = tls_ids(6)
SLOW = "J004"


@dataclass
class Setup:
    loop: LoopThread
    slow_loop: LoopThread
    pki: Pki
    fleet: EmulatedFleet
    slow_fleet: EmulatedFleet
    pool: ControllerPool
    signer: SoftwareSigner
    active: int = 0

    def controllers(self) -> dict[str, EmulatedController]:
        return {**self.fleet.by_id(), **self.slow_fleet.by_id()}


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    pki = make_pki(tmp_path_factory.mktemp("pki"), IDS)
    signer = SoftwareSigner()
    field = FakeField()
    loop, slow_loop = LoopThread(), LoopThread()
    ph = PasswordHash.create(PASSWORD)
    keys = [signer.public_key_pem()]
    fleet = make_fleet(pki, [t for t in IDS if t != SLOW], field, keys, ph)
    # The slow controller lives on its own event loop so that blocking it blocks only it.
    slow_fleet = make_fleet(pki, [SLOW], field, keys, ph)
    loop.run(fleet.start())
    slow_loop.run(slow_fleet.start())
    pool = make_pool(
        pki, EmulatedFleet([*fleet, *slow_fleet]), call_timeout_s=1.0, activate_lead_s=3.0
    )

    async def connect() -> bool:
        await pool.start()
        return await pool.wait_connected(60)

    assert loop.run(connect())
    yield Setup(loop, slow_loop, pki, fleet, slow_fleet, pool, signer)
    loop.run(pool.close())
    loop.run(fleet.stop())
    slow_loop.run(slow_fleet.stop())
    loop.close()
    slow_loop.close()


def plan(s: Setup, sequence: int) -> bytes:
    return signed(
        s.signer, configuration(sequence, {t: timing(30 + sequence % 5, 26) for t in IDS})
    )


def assert_old_plan_everywhere(s: Setup) -> None:
    # Staged plans may still be landing on a slow controller; give it a moment.
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        if all(ctl.core.state.staged is None for ctl in s.controllers().values()):
            break
        time.sleep(0.1)
    for ctl in s.controllers().values():
        assert ctl.core.state.active_sequence == s.active, ctl.tls_id
        assert ctl.core.state.staged is None, ctl.tls_id


def good_push(s: Setup) -> None:
    nxt = s.active + 1
    report = s.loop.run(s.pool.push(plan(s, nxt), nxt))
    rows = [
        (r.tls_id, r.activate_message, r.readback_sequence, r.error) for r in report.controllers
    ]
    assert report.outcome == "activated", rows
    s.active = nxt


def test_baseline_push(setup: Setup) -> None:
    good_push(setup)


def test_controller_down_aborts_everywhere_and_reconnects(setup: Setup) -> None:
    s = setup
    down = s.fleet.by_id()["J002"]
    s.loop.run(down.stop())
    nxt = s.active + 1
    report = s.loop.run(s.pool.push(plan(s, nxt), nxt))
    assert report.outcome == "aborted"
    rows = {r.tls_id: r for r in report.controllers}
    assert rows["J002"].error and rows["J002"].stage_status is None
    assert_old_plan_everywhere(s)
    snaps = s.loop.run(s.pool.read_all())
    assert not snaps["J002"].reachable and snaps["J002"].error
    assert all(snap.reachable for tls, snap in snaps.items() if tls != "J002")
    s.loop.run(down.start())
    assert s.loop.run(s.pool.wait_connected(30))
    good_push(s)


def _wrap_stage(ctl: EmulatedController, hook: Callable[[], None]) -> Callable[[], None]:
    original = ctl.core.stage

    def stage(data: bytes) -> PlanResult:
        hook()
        return original(data)

    ctl.core.stage = stage  # type: ignore[method-assign]

    def restore() -> None:
        ctl.core.stage = original  # type: ignore[method-assign]

    return restore


def test_slow_controller_aborts_everywhere(setup: Setup) -> None:
    s = setup
    slow = s.slow_fleet.by_id()[SLOW]
    restore = _wrap_stage(slow, lambda: time.sleep(2.0))  # blocks only the slow loop
    try:
        nxt = s.active + 1
        report = s.loop.run(s.pool.push(plan(s, nxt), nxt))
        assert report.outcome == "aborted"
        rows = {r.tls_id: r for r in report.controllers}
        assert "timed out" in (rows[SLOW].error or "")
        assert_old_plan_everywhere(s)
    finally:
        restore()
    assert s.loop.run(s.pool.wait_connected(30))
    good_push(s)


def test_activation_time_follows_a_fast_field_clock(setup: Setup) -> None:
    """Staging takes 0.6 s while the field runs 20x: the activation must still be ahead."""
    s = setup
    slow = s.slow_fleet.by_id()[SLOW]
    field = slow.core.field
    assert isinstance(field, FakeField)
    restore = _wrap_stage(slow, lambda: time.sleep(0.6))
    field.set_speed(20.0)
    try:
        good_push(s)  # the lead is 3 field seconds; staging alone takes ~12
    finally:
        field.set_speed(1.0)
        restore()


def test_session_dropped_mid_push_aborts_everywhere(setup: Setup) -> None:
    s = setup
    victim = s.fleet.by_id()["J005"]

    def drop() -> None:
        server = victim._server  # noqa: SLF001
        assert server is not None
        for transport in list(server.iserver.asyncio_transports):
            transport.close()

    restore = _wrap_stage(victim, drop)
    try:
        nxt = s.active + 1
        report = s.loop.run(s.pool.push(plan(s, nxt), nxt))
        assert report.outcome == "aborted"
        rows = {r.tls_id: r for r in report.controllers}
        assert rows["J005"].stage_status is None and rows["J005"].error
        # J005 staged the plan before its session dropped; it must be dropped again
        # (by the abort after reconnecting, or by expiry) and must never activate.
        for tls, ctl in s.controllers().items():
            assert ctl.core.state.active_sequence == s.active, tls
            if tls != "J005":
                assert ctl.core.state.staged is None, tls
    finally:
        restore()
    # Once its session is back, the pool aborts the plan J005 may still hold.
    assert s.loop.run(s.pool.wait_connected(30))
    deadline = time.monotonic() + 10
    while victim.core.state.staged is not None and time.monotonic() < deadline:
        time.sleep(0.1)
    assert victim.core.state.staged is None
    good_push(s)


# ------------------------------------------------------------------ who may connect


async def _try_connect(
    url: str,
    server_der: bytes,
    cert: Path | None,
    key: Path | None,
    user: str | None,
    password: str | None,
    policy: type[security_policies.SecurityPolicy] = security_policies.SecurityPolicyBasic256Sha256,
    mode: ua.MessageSecurityMode = ua.MessageSecurityMode.SignAndEncrypt,
    application_uri: str = CLIENT_APPLICATION_URI,
) -> str:
    client = Client(url, timeout=1.5)
    client.application_uri = application_uri
    client.session_timeout = 600_000
    if user is not None:
        client.set_user(user)
    if password is not None:
        client.set_password(password)
    if cert is not None and key is not None:
        await client.set_security(
            policy, str(cert), str(key), server_certificate=server_der, mode=mode
        )
    try:
        await asyncio.wait_for(client.connect(), 10)
    except Exception as e:  # noqa: BLE001 - the refusal is what we look for
        client.disconnect_socket()
        return f"refused: {type(e).__name__}: {e}"
    try:
        ns = await client.get_namespace_index(c.NAMESPACE_URI)
        value = await client.get_node(ua.NodeId(c.CONTROLLER_ID, ns)).read_value()
        return f"read {value}"
    except Exception as e:  # noqa: BLE001
        return f"refused read: {type(e).__name__}: {e}"
    finally:
        await client.disconnect()


def test_who_may_connect(setup: Setup, tmp_path: Path) -> None:
    s = setup
    ctl = s.fleet.by_id()["J001"]
    server_der = s.pki.server_der["J001"]
    cert, key = s.pki.client.certificate, s.pki.client.private_key
    stranger_der, stranger_key = generate_application_certificate(
        CLIENT_APPLICATION_URI, "stranger", "client"
    )
    (tmp_path / "s.der").write_bytes(stranger_der)
    (tmp_path / "s.pem").write_bytes(stranger_key)

    def attempt(*args: object, **kwargs: object) -> str:
        return s.loop.run(_try_connect(ctl.url, server_der, *args, **kwargs), timeout=30)  # type: ignore[arg-type]

    assert attempt(cert, key, USER, PASSWORD) == "read J001"
    assert (
        attempt(
            cert, key, USER, PASSWORD, policy=security_policies.SecurityPolicyAes256Sha256RsaPss
        )
        == "read J001"
    )
    refusals = {
        "anonymous": attempt(cert, key, None, None),
        "wrong password": attempt(cert, key, USER, "guess"),
        "wrong user": attempt(cert, key, "admin", PASSWORD),
        "sign only": attempt(cert, key, USER, PASSWORD, mode=ua.MessageSecurityMode.Sign),
        "unknown certificate": attempt(tmp_path / "s.der", tmp_path / "s.pem", USER, PASSWORD),
        "basic256 (sha1)": attempt(
            cert, key, USER, PASSWORD, policy=security_policies.SecurityPolicyAes128Sha256RsaOaep
        ),
    }
    for name, outcome in refusals.items():
        assert outcome.startswith("refused"), (name, outcome)


async def _unencrypted_session(url: str) -> tuple[str, str, float]:
    """Open a None channel, then try to activate a user session and read on it by hand.

    The controller refuses SecurityPolicy None outright: the OpenSecureChannel
    request is answered with an ERR message and the socket closed, so there is
    no channel to create, activate or read a session on.
    """
    client = Client(url, timeout=3)
    await client.connect_socket()
    start = time.monotonic()
    try:
        await client.send_hello()
        try:
            await client.open_secure_channel()
            channel = "opened"
        except Exception as e:  # noqa: BLE001
            channel = f"refused: {type(e).__name__}"
        elapsed = time.monotonic() - start
        params = ua.ActivateSessionParameters()
        token = ua.UserNameIdentityToken()
        token.PolicyId = "username"
        token.UserName = USER
        token.Password = PASSWORD.encode()
        params.UserIdentityToken = token
        try:
            await client.uaclient.activate_session(params)
            read = "activated"
            read = f"read {await client.get_namespace_array()}"
        except Exception as e:  # noqa: BLE001
            read = f"refused: {type(e).__name__}"
        return channel, read, elapsed
    finally:
        client.disconnect_socket()


def test_unencrypted_sessions_cannot_activate_or_read(setup: Setup) -> None:
    ctl = setup.fleet.by_id()["J001"]
    channel, read, elapsed = setup.loop.run(_unencrypted_session(ctl.url))
    assert channel.startswith("refused: ")  # no None channel, not even for discovery
    assert elapsed < 2.0  # answered at once, not left to the client's own 3 s timeout
    assert read.startswith("refused: ")
