"""Issue 14 at the OPC UA server: policies, discovery, sessions, certificates, roles, limits,
argument types. One real emulated controller on 127.0.0.1 (SignAndEncrypt, pinned)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from asyncua import Client, ua
from asyncua.crypto import security_policies as sp

from actuation import contract as c
from actuation._verify import TrustedKeys
from actuation.channel import MAX_MESSAGE_BYTES
from actuation.contract import PlanStatus
from actuation.core import ControllerCore, ControllerProvisioning
from actuation.emulated import ControllerAccess, EmulatedController
from actuation.security import CertificatePair, generate_application_certificate
from actuation.users import PasswordHash
from tests.support.actuation_fleet import (
    LIMITS,
    NETWORK,
    PASSWORD,
    USER,
    FakeField,
    LoopThread,
    Pki,
    base_program,
    configuration,
    make_pki,
    signed,
    timing,
)
from tests.support.opcua_wire import chunk_header, exchange, hello, message_types, open_none
from tests.support.softkeys import SoftwareSigner

pytestmark = [pytest.mark.integration, pytest.mark.slow]

OPERATOR = "operator"
OPERATOR_PASSWORD = "read only please"


@dataclass
class Setup:
    loop: LoopThread
    pki: Pki
    controller: EmulatedController
    field: FakeField
    signer: SoftwareSigner
    operator: CertificatePair
    expired: CertificatePair
    stranger: CertificatePair


def _pair(directory: Path, stem: str, uri: str, days: int = 365) -> tuple[CertificatePair, bytes]:
    der, key = generate_application_certificate(uri, stem, "client", days=days)
    (directory / f"{stem}.der").write_bytes(der)
    (directory / f"{stem}.key.pem").write_bytes(key)
    return CertificatePair(directory / f"{stem}.der", directory / f"{stem}.key.pem"), der


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    directory = tmp_path_factory.mktemp("pki")
    pki = make_pki(directory, ["J1"])
    operator, operator_der = _pair(directory, "operator", "urn:signaltwin:operator-tool")
    # Valid until "now": expired by the time it is used; pinned all the same.
    expired, expired_der = _pair(directory, "expired", "urn:signaltwin:daemon", days=0)
    stranger, _ = _pair(directory, "stranger", "urn:signaltwin:daemon")
    signer = SoftwareSigner()
    field = FakeField()
    prov = ControllerProvisioning(
        tls_id="J1",
        base=base_program("J1"),
        limits=LIMITS,
        network=NETWORK,
        trusted_keys=TrustedKeys.from_pem([signer.public_key_pem()]),
    )
    access = ControllerAccess(
        USER,
        PasswordHash.create(PASSWORD),
        (pki.client_der, expired_der),
        operators={OPERATOR: PasswordHash.create(OPERATOR_PASSWORD)},
        operator_certificates_der=(operator_der,),
    )
    controller = EmulatedController(ControllerCore(prov, field), pki.servers["J1"], access)
    loop = LoopThread()
    loop.run(controller.start())
    time.sleep(1.5)  # let the expired certificate expire
    yield Setup(loop, pki, controller, field, signer, operator, expired, stranger)
    loop.run(controller.stop())
    loop.close()


def _client(
    s: Setup,
    pair: CertificatePair | None = None,
    user: str = USER,
    password: str = PASSWORD,
    policy: Any = sp.SecurityPolicyBasic256Sha256,
    mode: Any = ua.MessageSecurityMode.SignAndEncrypt,
) -> Client:
    pair = pair or s.pki.client
    client = Client(s.controller.url, timeout=4)
    client.application_uri = "urn:signaltwin:daemon"
    if pair is s.operator:
        client.application_uri = "urn:signaltwin:operator-tool"
    client.session_timeout = 60_000
    client.set_user(user)
    client.set_password(password)
    asyncio.run_coroutine_threadsafe(
        client.set_security(
            policy,
            certificate=str(pair.certificate),
            private_key=str(pair.private_key),
            server_certificate=s.pki.server_der["J1"],
            mode=mode,
        ),
        s.loop.loop,
    ).result(10)
    return client


async def _call(client: Client, method: str, *args: ua.Variant) -> tuple[int, str]:
    ns = (await client.get_namespace_array()).index(c.NAMESPACE_URI)
    obj = client.get_node(ua.NodeId(c.OBJECT, ns))
    out = await obj.call_method(ua.NodeId(method, ns), *args)
    return int(out[0]), str(out[1])


# --------------------------------------------------------------------------- policies


def test_security_policy_none_is_refused_with_err(setup: Setup) -> None:
    data, closed = exchange(setup.controller.url, [hello(setup.controller.url), open_none()])
    assert message_types(data) == [b"ACK", b"ERR"], data[:80]
    assert closed


@pytest.mark.parametrize(
    ("policy", "mode"),
    [
        (sp.SecurityPolicyBasic256Sha256, ua.MessageSecurityMode.Sign),
        (sp.SecurityPolicyAes128Sha256RsaOaep, ua.MessageSecurityMode.SignAndEncrypt),
    ],
)
def test_unsupported_policies_are_answered_not_left_hanging(
    setup: Setup, policy: Any, mode: Any
) -> None:
    client = _client(setup, policy=policy, mode=mode)
    started = time.monotonic()
    with pytest.raises(Exception) as refused:  # noqa: PT011 - asyncua raises several kinds
        setup.loop.run(client.connect(), timeout=30)
    assert time.monotonic() - started < 3.0, "the client waited for its own timeout"
    assert not isinstance(refused.value, TimeoutError | asyncio.TimeoutError)
    setup.loop.run(_disconnect_socket(client))


async def _disconnect_socket(client: Client) -> None:
    client.disconnect_socket()


def test_an_oversized_chunk_is_refused_before_it_is_buffered(setup: Setup) -> None:
    url = setup.controller.url
    data, closed = exchange(url, [hello(url), chunk_header(b"OPN", 50 * 1024 * 1024)])
    assert message_types(data) == [b"ACK", b"ERR"]
    assert closed


def test_transport_limits_fit_the_contract(setup: Setup) -> None:
    server: Any = setup.controller._server  # noqa: SLF001
    assert server.limits.max_message_size == MAX_MESSAGE_BYTES < 100 * 1024 * 1024
    assert server.limits.max_chunk_count * server.limits.max_recv_buffer < 2 * MAX_MESSAGE_BYTES


def test_username_token_requires_an_encrypting_policy(setup: Setup) -> None:
    client = _client(setup)

    async def endpoints() -> list[Any]:
        await client.connect_socket()
        try:
            await client.send_hello()
            await client.open_secure_channel()
            return list(await client.get_endpoints())
        finally:
            client.disconnect_socket()

    for ep in setup.loop.run(endpoints()):
        tokens = [t for t in ep.UserIdentityTokens if t.TokenType == ua.UserTokenType.UserName]
        assert tokens and all(t.SecurityPolicyUri == ep.SecurityPolicyUri for t in tokens)
        assert all(t.SecurityPolicyUri != sp.SecurityPolicyNone.URI for t in tokens)


# --------------------------------------------------------------------------- before a session


def test_register_server_is_refused(setup: Setup) -> None:
    client = _client(setup, setup.stranger)
    iserver: Any = setup.controller._server.iserver  # type: ignore[union-attr]  # noqa: SLF001
    before = dict(iserver._known_servers)  # noqa: SLF001

    async def register() -> None:
        await client.connect_socket()
        try:
            await client.send_hello()
            await client.open_secure_channel()
            server = ua.RegisteredServer()
            server.ServerUri = "urn:signaltwin:controller:J1"
            server.ProductUri = "urn:evil"
            server.ServerNames = [ua.LocalizedText("evil")]
            server.ServerType = ua.ApplicationType.Server
            server.DiscoveryUrls = ["opc.tcp://evil:4840"]
            server.IsOnline = True
            await client.uaclient.register_server(server)
        finally:
            client.disconnect_socket()

    with pytest.raises(Exception):  # noqa: B017, PT011 - refused: ERR and a closed socket
        setup.loop.run(register(), timeout=20)
    assert dict(iserver._known_servers) == before  # noqa: SLF001


def test_an_expired_pinned_certificate_is_refused_even_without_session_certificate(
    setup: Setup,
) -> None:
    client = _client(setup, setup.expired)

    async def sneak() -> tuple[int, str]:
        await client.connect_socket()
        try:
            await client.send_hello()
            await client.open_secure_channel()
            # Leave the CreateSession certificate empty: asyncua then skips its validator.
            params = ua.CreateSessionParameters()
            params.ClientNonce = b"n" * 32
            params.ClientCertificate = None
            desc = ua.ApplicationDescription()
            desc.ApplicationUri = "urn:signaltwin:daemon"
            desc.ApplicationType = ua.ApplicationType.Client
            params.ClientDescription = desc
            params.EndpointUrl = setup.controller.url
            params.SessionName = "sneak"
            params.RequestedSessionTimeout = 60_000
            response = await client.uaclient.create_session(params)
            client._server_nonce = response.ServerNonce  # noqa: SLF001
            await client.activate_session(USER, PASSWORD, None)
            return await _call(client, c.ABORT_STAGED, ua.Variant(0, ua.VariantType.UInt64))
        finally:
            client.disconnect_socket()

    with pytest.raises(Exception):  # noqa: B017, PT011 - refused before any method runs
        setup.loop.run(sneak(), timeout=20)


# --------------------------------------------------------------------------- roles, arguments


def test_operator_reads_but_may_not_call(setup: Setup) -> None:
    client = _client(setup, setup.operator, OPERATOR, OPERATOR_PASSWORD)

    async def run() -> tuple[int, Any]:
        async with client:
            ns = (await client.get_namespace_array()).index(c.NAMESPACE_URI)
            sequence = await client.get_node(ua.NodeId(c.ACTIVE_SEQUENCE, ns)).read_value()
            try:
                await _call(client, c.ABORT_STAGED, ua.Variant(0, ua.VariantType.UInt64))
            except ua.uaerrors.BadUserAccessDenied as e:
                return int(sequence), e
            return int(sequence), None

    sequence, refusal = setup.loop.run(run())
    assert sequence == setup.controller.core.state.active_sequence
    assert isinstance(refusal, ua.uaerrors.BadUserAccessDenied)


def test_the_daemon_user_on_an_operator_certificate_may_not_call(setup: Setup) -> None:
    client = _client(setup, setup.operator, USER, PASSWORD)
    with pytest.raises(Exception):  # noqa: B017, PT011 - not admitted, or not allowed to call
        setup.loop.run(_connect_and_call(client))


async def _connect_and_call(client: Client) -> tuple[int, str]:
    async with client:
        return await _call(client, c.ABORT_STAGED, ua.Variant(0, ua.VariantType.UInt64))


def test_wrong_argument_types_get_bad_arguments(setup: Setup) -> None:
    client = _client(setup)
    u64, u32 = ua.VariantType.UInt64, ua.VariantType.UInt32

    async def run() -> list[tuple[int, str]]:
        async with client:
            return [
                await _call(
                    client,
                    c.ACTIVATE_PLAN,
                    ua.Variant(1, u32),
                    ua.Variant(1e9, ua.VariantType.Double),
                ),
                await _call(
                    client,
                    c.ACTIVATE_PLAN,
                    ua.Variant(1, u64),
                    ua.Variant(5.0, ua.VariantType.Float),
                ),
                await _call(client, c.ACTIVATE_PLAN, ua.Variant(1, u64)),
                await _call(client, c.ABORT_STAGED),
                await _call(client, c.ABORT_STAGED, ua.Variant(0, u32)),
                await _call(client, c.STAGE_PLAN, ua.Variant("text", ua.VariantType.String)),
            ]

    answers = setup.loop.run(run())
    assert [s for s, _ in answers] == [int(PlanStatus.BAD_ARGUMENTS)] * len(answers), answers


def test_the_daemon_still_stages_and_activates(setup: Setup) -> None:
    client = _client(setup)
    sequence = setup.controller.core.state.active_sequence + 1
    envelope = signed(setup.signer, configuration(sequence, {"J1": timing()}))

    async def run() -> tuple[tuple[int, str], tuple[int, str]]:
        async with client:
            staged = await _call(
                client, c.STAGE_PLAN, ua.Variant(envelope, ua.VariantType.ByteString)
            )
            at = setup.field.field_time_s() + 5
            active = await _call(
                client,
                c.ACTIVATE_PLAN,
                ua.Variant(sequence, ua.VariantType.UInt64),
                ua.Variant(at, ua.VariantType.Double),
            )
            return staged, active

    staged, active = setup.loop.run(run())
    assert staged[0] == PlanStatus.OK, staged
    assert active[0] == PlanStatus.OK, active


def test_sessions_per_connection_are_bounded(setup: Setup) -> None:
    client = _client(setup)
    limit = setup.controller._access.max_sessions_per_connection  # noqa: SLF001

    async def run() -> tuple[int, BaseException | None]:
        await client.connect_socket()
        created = 0
        try:
            await client.send_hello()
            await client.open_secure_channel()
            for _ in range(limit + 2):
                try:
                    await client.create_session()
                except ua.UaError as e:
                    # asyncua finds no matching endpoint only after the server answered.
                    if "No matching endpoints" not in str(e):
                        return created, e
                except Exception as e:  # noqa: BLE001 - the refusal closes the socket
                    return created, e
                created += 1
            return created, None
        finally:
            client.disconnect_socket()

    created, refusal = setup.loop.run(run(), timeout=60)
    assert created == limit, (created, refusal)
    assert refusal is not None
