"""HaltingTotal and NOxTotal over the wire: SUMO field -> emulated controllers -> daemon.

A real field emulator (SUMO's grid6 network and routes, TraCI) drives two
emulated OPC UA controllers through :class:`simulators.field.FieldSignals`; a
third controller's field keeps no totals (a controller that predates them).
The daemon's fleet port (:class:`controller.wiring.OpcUaFleet`) reads all three
over secured sessions: the observation's counters are the field's own
cumulative approach totals, two readings give the field's window, and the old
controller is left out instead of guessed.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from actuation import ControllerPool
from actuation.emulated import EmulatedFleet
from actuation.security import (
    CLIENT_APPLICATION_URI,
    CertificatePair,
    controller_application_uri,
    generate_application_certificate,
)
from actuation.users import PasswordHash
from configs.settings import Settings, SimulationSettings
from controller.wiring import OpcUaFleet
from simulators.field import FieldConfig, FieldEmulator, FieldSignals
from simulators.sumo import sumo_home
from tests.support.actuation_fleet import (
    PASSWORD,
    FakeField,
    LoopThread,
    Pki,
    make_fleet,
    make_pool,
)
from tests.support.softkeys import SoftwareSigner

pytestmark = pytest.mark.integration

GRID6 = sumo_home() / "tools" / "game" / "grid6"
OLD = "J_OLD"


class SyncReader:
    """The actuator's read as the fleet port calls it (synchronously)."""

    def __init__(self, loop: LoopThread, pool: ControllerPool) -> None:
        self.loop, self.pool = loop, pool

    def read_all(self) -> Any:
        return self.loop.run(self.pool.read_all(), timeout=30)

    def close(self) -> None:
        pass


def _pki(directory: Path, ids: list[str]) -> Pki:
    """Like ``make_pki``, with file names safe for grid6's ``x/y`` intersection ids."""
    directory.mkdir(parents=True, exist_ok=True)

    def write(stem: str, uri: str, role: str) -> tuple[CertificatePair, bytes]:
        der, key = generate_application_certificate(uri, stem, role)  # type: ignore[arg-type]
        (directory / f"{stem}.der").write_bytes(der)
        (directory / f"{stem}.key.pem").write_bytes(key)
        return CertificatePair(directory / f"{stem}.der", directory / f"{stem}.key.pem"), der

    client, client_der = write("client", CLIENT_APPLICATION_URI, "client")
    servers, ders = {}, {}
    for n, tls in enumerate(ids):
        servers[tls], ders[tls] = write(f"ctl-{n}", controller_application_uri(tls), "server")
    return Pki(client, client_der, servers, ders)


@pytest.fixture
def wired(tmp_path: Path) -> Iterator[tuple[FieldEmulator, OpcUaFleet, list[str]]]:
    config = FieldConfig(
        net_path=GRID6 / "grid6.net.xml",
        routes_path=GRID6 / "grid6.rou.xml",
        seed=3,
        backend="traci",
        work_dir=tmp_path / "work",
    )
    with FieldEmulator(config) as field:
        ids = list(field.network.tls_ids[:2])
        pki = _pki(tmp_path / "pki", [*ids, OLD])
        keys = [SoftwareSigner().public_key_pem()]
        password = PasswordHash.create(PASSWORD)
        live = make_fleet(pki, ids, FieldSignals(field), keys, password, publish_interval_s=0.2)  # type: ignore[arg-type]
        old = make_fleet(pki, [OLD], FakeField(), keys, password, publish_interval_s=0.2)
        fleet = EmulatedFleet([*live.controllers, *old.controllers])
        loop = LoopThread()
        loop.run(fleet.start())
        pool = make_pool(pki, fleet, call_timeout_s=5.0)

        async def connect() -> bool:
            await pool.start()
            return await pool.wait_connected(60)

        try:
            assert loop.run(connect(), timeout=90)
            settings = Settings(
                simulation=SimulationSettings(network=config.net_path), state_dir=tmp_path
            )
            yield field, OpcUaFleet(SyncReader(loop, pool), settings), ids
        finally:
            loop.run(pool.close())
            loop.run(fleet.stop())
            loop.close()


def _published(port: OpcUaFleet, field: FieldEmulator, ids: list[str]) -> Any:
    """Observe until the controllers publish the field's totals at its current time."""
    truth = field.counters()
    deadline = time.monotonic() + 10
    while True:
        observation = port.observe()
        counters = observation.counters
        assert counters is not None
        if (
            all(counters.halting_veh_s.get(t) == pytest.approx(truth.halting_veh_s[t]) for t in ids)
            or time.monotonic() > deadline
        ):
            return observation, truth
        time.sleep(0.2)


def test_halting_and_nox_totals_read_over_opc_ua_make_the_fields_window(wired: Any) -> None:
    field, port, ids = wired
    field.step_until(300)
    first, truth1 = _published(port, field, ids)
    c1 = first.counters
    assert set(c1.halting_veh_s) == set(ids)  # the old controller is left out, not zero
    for t in ids:
        assert c1.halting_veh_s[t] == pytest.approx(truth1.halting_veh_s[t])
        assert c1.nox_mg[t] == pytest.approx(truth1.nox_mg[t])
    assert OLD in first.active and OLD not in c1.nox_mg
    assert sum(c1.halting_veh_s.values()) > 0

    field.step_until(600)
    second, truth2 = _published(port, field, ids)
    window = second.counters.window_since(c1)
    expected = truth2.window_since(truth1)
    assert window.duration_s == pytest.approx(second.field_time_s - first.field_time_s)
    for t in ids:
        assert window.halting_veh_s[t] == pytest.approx(expected.halting_veh_s[t])
        assert window.nox_mg[t] == pytest.approx(expected.nox_mg[t])
        assert window.halting_veh_s[t] >= 0
    # the loops' cumulative counts travel with the totals, for the window's demand
    assert sum(window.detector_counts.values()) > 0

    # a read of the collector's own (read_counters) sees the same series
    again = port.read_counters()
    assert again is not None and set(again.halting_veh_s) == set(ids)
