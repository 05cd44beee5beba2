"""The settings wiring of ``controllers serve`` and of the daemon's pool, end to end.

Controllers are provisioned from a settings TOML (password file, signing key,
pinned client certificate, network, base programs of the demo district) the way
``signaltwin controllers serve`` does it, with a fake field; the daemon side is
``pool_from_settings`` behind the synchronous ``ThreadedActuator``.
"""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from actuation import Actuator, ThreadedActuator, pool_from_settings, provision_demo_pki
from configs.settings_file import load_settings, read_secret
from configs.timing import IntersectionTiming, NetworkRef
from controller.commands.controllers import build_fleet, plan_endpoints
from simulators.network import load_network
from tests.support.actuation_fleet import FakeField, LoopThread, configuration, signed
from tests.support.softkeys import SoftwareSigner

pytestmark = [pytest.mark.integration, pytest.mark.slow]

DISTRICT = Path(__file__).resolve().parents[2] / "configs" / "district"


def free_ports(n: int) -> list[int]:
    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def test_the_field_emulator_port_fits_the_controllers() -> None:
    from actuation import SignalField
    from simulators.field import FieldSignals

    assert issubclass(FieldSignals, SignalField)


def test_settings_to_controllers_to_pool(tmp_path: Path) -> None:
    network = load_network(DISTRICT / "district.net.xml")
    bases = network.base_programs()
    ids = sorted(bases)[:3]
    pki = provision_demo_pki(tmp_path / "pki", ids)
    signer = SoftwareSigner()
    (tmp_path / "signing.pub.pem").write_bytes(signer.public_key_pem())
    endpoints = "".join(
        f'\n[[controllers.endpoints]]\nintersection = "{tls}"\n'
        f'url = "opc.tcp://127.0.0.1:{port}/signaltwin/"\n'
        f'server_certificate = "pki/controller-{tls}-cert.der"\n'
        for tls, port in zip(ids, free_ports(len(ids)), strict=True)
    )
    (tmp_path / "settings.toml").write_text(
        f"""network_id = "district"
state_dir = "{tmp_path}"

[simulation]
network = "{DISTRICT / "district.net.xml"}"

[controllers]
user = "signaltwin"
password_file = "pki/opcua-password"
client_certificate = "pki/daemon-cert.der"
client_private_key = "pki/daemon-key.pem"
public_keys = ["signing.pub.pem"]
call_timeout_s = 5.0
activate_lead_s = 3.0
{endpoints}"""
    )
    settings = load_settings(tmp_path / "settings.toml")
    served = plan_endpoints(settings, sorted(bases), pki.client.certificate.parent, "127.0.0.1", 0)
    assert [e.intersection for e in served] == ids
    ref = NetworkRef(id=settings.network_id, sha256=network.sha256)
    fleet = build_fleet(settings, FakeField(), ref, bases, served)
    loop = LoopThread()
    loop.run(fleet.start())
    password = read_secret(settings.controllers.password_file, "password").get_secret_value()
    actuator = ThreadedActuator(lambda: pool_from_settings(settings.controllers, password))
    try:
        assert isinstance(actuator, Actuator)
        snaps = actuator.read_all()
        assert sorted(snaps) == ids and all(s.reachable for s in snaps.values())
        config = configuration(
            1, {t: IntersectionTiming.from_base(bases[t]) for t in ids}, network=ref
        )
        report = actuator.push(signed(signer, config), 1, alignment_s=10.0)
        assert report.ok, report.to_dict()
        assert {s.active_digest for s in actuator.read_all().values()} == {config.digest()}
    finally:
        actuator.close()
        loop.run(fleet.stop())
        loop.close()
