"""47 emulated controllers on 127.0.0.1: push, activate, read back, every refusal.

One module-scoped fleet (47 servers, 47 secure sessions) is shared by the tests;
each test continues from the sequence the previous one left active.
"""

from __future__ import annotations

import base64
import json
import random
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from actuation import ControllerPool
from actuation import contract as c
from actuation.contract import PlanStatus
from actuation.emulated import EmulatedFleet
from actuation.users import PasswordHash
from configs.timing import NetworkRef
from tests.support.actuation_fleet import (
    PASSWORD,
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

N = 47


@dataclass
class Setup:
    loop: LoopThread
    pki: Pki
    fleet: EmulatedFleet
    pool: ControllerPool
    field: FakeField
    signer: SoftwareSigner
    ids: list[str]
    active: int = 0


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    ids = tls_ids(N)
    pki = make_pki(tmp_path_factory.mktemp("pki"), ids)
    signer = SoftwareSigner()
    field = FakeField()
    loop = LoopThread()
    fleet = make_fleet(pki, ids, field, [signer.public_key_pem()], PasswordHash.create(PASSWORD))
    loop.run(fleet.start())
    pool = make_pool(pki, fleet, call_timeout_s=5.0, activate_lead_s=4.0)

    async def connect() -> bool:
        await pool.start()
        return await pool.wait_connected(90)

    assert loop.run(connect(), timeout=120)
    yield Setup(loop, pki, fleet, pool, field, signer, ids)
    loop.run(pool.close())
    loop.run(fleet.stop())
    loop.close()


def all_timings(ids: list[str], green1: int = 34) -> dict[str, object]:
    return {t: timing(green1, 56 - green1) for t in ids}


def assert_everyone_on(s: Setup, sequence: int) -> None:
    snaps = s.loop.run(s.pool.read_all())
    assert len(snaps) == N
    for snap in snaps.values():
        assert snap.reachable, snap.error
        assert snap.active_sequence == sequence, snap
        assert snap.staged_sequence == 0, snap
    for ctl in s.fleet:
        assert ctl.core.state.active_sequence == sequence
        assert ctl.core.state.staged is None


def push(s: Setup, data: bytes, sequence: int, **kw: float):  # type: ignore[no-untyped-def]
    return s.loop.run(s.pool.push(data, sequence, **kw))


def test_read_all_reports_detectors_and_measurements(setup: Setup) -> None:
    snaps = setup.loop.run(setup.pool.read_all())
    assert sorted(snaps) == setup.ids
    snap = snaps["J005"]
    assert snap.reachable and snap.health == "ok"
    assert set(snap.detectors) == {"J005_d0", "J005_d1"}
    assert snap.detectors["J005_d1"][1] == pytest.approx(13.5)
    assert snap.mean_wait_s == pytest.approx(21.5) and snap.nox_mg == pytest.approx(340.0)
    assert snap.field_time_s > 999


def test_push_activates_everywhere_at_one_aligned_time(setup: Setup) -> None:
    s = setup
    sequence = s.active + 1
    config = configuration(sequence, all_timings(s.ids, 36))
    before = len(s.field.applied)
    report = push(s, signed(s.signer, config), sequence, alignment_s=64.0)
    assert report.outcome == "activated", report.reason
    assert report.activate_at_field_time_s is not None
    assert report.activate_at_field_time_s % 64 == 0
    assert all(r.readback_digest == config.digest() for r in report.controllers)
    applied = s.field.applied[before:]
    assert sorted(a[0] for a in applied) == s.ids
    assert {a[2] for a in applied} == {report.activate_at_field_time_s}
    assert report.to_dict()["controllers"][0]["stage"]["name"] == "OK"
    s.active = sequence
    assert_everyone_on(s, sequence)


def _tamper(envelope: bytes) -> bytes:
    doc = json.loads(envelope)
    sig = bytearray(base64.b64decode(doc["signatures"][0]["sig"]))
    sig[8] ^= 0x40
    doc["signatures"][0]["sig"] = base64.b64encode(bytes(sig)).decode()
    return json.dumps(doc).encode()


def test_each_refusal_leaves_every_controller_on_its_plan(setup: Setup) -> None:
    s = setup
    if s.active == 0:
        test_push_activates_everywhere_at_one_aligned_time(s)
    nxt = s.active + 1
    past = datetime.now(UTC) - timedelta(hours=3)
    good = configuration(nxt, all_timings(s.ids))
    cases = {
        "bad signature": (_tamper(signed(s.signer, good)), PlanStatus.BAD_SIGNATURE),
        "unknown key": (signed(SoftwareSigner(), good), PlanStatus.UNKNOWN_KEY),
        "replayed sequence": (
            signed(s.signer, configuration(s.active, all_timings(s.ids))),
            PlanStatus.SEQUENCE_NOT_ABOVE_ACTIVE,
        ),
        "expired": (
            signed(
                s.signer,
                configuration(
                    nxt, all_timings(s.ids), valid_from=past, valid_until=past + timedelta(hours=1)
                ),
            ),
            PlanStatus.VALIDITY_PASSED,
        ),
        "other network": (
            signed(
                s.signer,
                configuration(
                    nxt, all_timings(s.ids), network=NetworkRef(id="other", sha256="1" * 64)
                ),
            ),
            PlanStatus.OTHER_NETWORK,
        ),
        "unsafe timing": (
            signed(s.signer, configuration(nxt, {t: timing(4, 52) for t in s.ids})),
            PlanStatus.UNSAFE_TIMING,
        ),
        "malformed bytes": (b"\x00garbage{", PlanStatus.MALFORMED_ENVELOPE),
    }
    for name, (data, expected) in cases.items():
        report = push(s, data, nxt) if expected != PlanStatus.MALFORMED_ENVELOPE else None
        if report is None:
            # push() refuses to send what is not an envelope; call StagePlan directly.
            results = s.loop.run(_stage_everywhere(s.pool, data))
            assert set(results.values()) == {int(expected)}, name
            continue
        assert report.outcome == "aborted", name
        statuses = {r.stage_status for r in report.controllers}
        assert statuses == {int(expected)}, (name, statuses)
        if expected == PlanStatus.UNSAFE_TIMING:
            assert "min_green" in report.controllers[0].stage_message
    assert_everyone_on(s, s.active)


async def _stage_everywhere(pool: ControllerPool, data: bytes) -> dict[str, int]:
    from asyncua import ua

    links = pool._links  # noqa: SLF001 - test reaches the raw method call
    out = {}
    for tls, link in links.items():
        status, _ = await link.call(c.STAGE_PLAN, ua.Variant(data, ua.VariantType.ByteString))
        out[tls] = status
    return out


def test_one_refusal_aborts_the_plan_everywhere(setup: Setup) -> None:
    s = setup
    nxt = s.active + 1
    partial = all_timings(s.ids)
    del partial["J017"]  # J017 refuses (intersection missing): nobody may run it
    report = push(s, signed(s.signer, configuration(nxt, partial)), nxt)
    assert report.outcome == "aborted"
    rows = {r.tls_id: r for r in report.controllers}
    assert rows["J017"].stage_status == PlanStatus.INTERSECTION_MISSING
    assert sum(r.stage_status == PlanStatus.OK for r in rows.values()) == N - 1
    assert all(r.abort_status == PlanStatus.OK for t, r in rows.items() if t != "J017")
    assert_everyone_on(s, s.active)


def test_fuzzed_envelopes_through_the_real_method(setup: Setup) -> None:
    """300 random and mutated envelopes into one controller's StagePlan: all refused."""
    s = setup
    rng = random.Random(20261123)
    good = signed(s.signer, configuration(s.active + 1, all_timings(s.ids)))
    samples: list[bytes] = []
    for i in range(300):
        if i % 3 == 0:
            samples.append(rng.randbytes(rng.randint(0, 600)))
        else:
            data = bytearray(good)
            for _ in range(rng.randint(1, 4)):
                data[rng.randrange(len(data))] = rng.randrange(256)
            if json_equal(bytes(data), good):
                continue
            samples.append(bytes(data))

    async def run() -> list[int]:
        from asyncua import ua

        link = s.pool._links["J000"]  # noqa: SLF001
        return [
            (await link.call(c.STAGE_PLAN, ua.Variant(d, ua.VariantType.ByteString)))[0]
            for d in samples
        ]

    statuses = s.loop.run(run())
    assert len(statuses) >= 250
    assert PlanStatus.OK not in statuses and PlanStatus.INTERNAL_ERROR not in statuses
    assert_everyone_on(s, s.active)
    test_push_activates_everywhere_at_one_aligned_time(s)  # still serving


def json_equal(a: bytes, b: bytes) -> bool:
    try:
        return bool(json.loads(a) == json.loads(b))
    except (ValueError, UnicodeDecodeError):
        return False


def test_push_latency_47(setup: Setup, record_property: pytest.RecordProperty) -> None:
    s = setup
    nxt = s.active + 1
    report = push(s, signed(s.signer, configuration(nxt, all_timings(s.ids, 30))), nxt)
    assert report.ok, report.reason
    s.active = nxt
    record_property("push_total_s", report.total_s)
    assert report.total_s < 5.0  # target 1 s on an idle 2-core machine; CI is shared


def test_cli_tools_read_a_controller(setup: Setup, tmp_path: Path) -> None:
    """A generic OPC UA client (asyncua's uaread) reads the field time with credentials."""
    import subprocess
    import sys

    from actuation.security import generate_application_certificate

    # uaread presents itself as urn:example.org:FreeOpcUa:opcua-asyncio; an operator
    # certificate for that URI is pinned on J003 below (each application has its own).
    der, key = generate_application_certificate(
        "urn:example.org:FreeOpcUa:opcua-asyncio", "operator", "client"
    )
    (tmp_path / "op.der").write_bytes(der)
    (tmp_path / "op.pem").write_bytes(key)
    ctl = setup.fleet.by_id()["J003"]
    server_cert = setup.pki.servers["J003"].certificate
    user_manager = ctl._server.iserver.user_manager  # noqa: SLF001
    validator = ctl._server.iserver.certificate_validator  # noqa: SLF001
    user_manager._pinned += (der,)  # noqa: SLF001
    validator._pinned += (der,)  # noqa: SLF001
    uaread = str(Path(sys.executable).parent / "uaread")
    security = (
        f"Basic256Sha256,SignAndEncrypt,{tmp_path / 'op.der'},{tmp_path / 'op.pem'},{server_cert}"
    )
    base = [uaread, "-u", ctl.url, "--security", security, "--user", "signaltwin"]
    ok = subprocess.run(
        [*base, "--password", PASSWORD, "-n", f"ns=2;s={c.CONTROLLER_ID}"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert ok.returncode == 0, ok.stderr[-2000:]
    assert "J003" in ok.stdout
    uals = str(Path(sys.executable).parent / "uals")
    listing = subprocess.run(
        [uals, *base[1:], "--password", PASSWORD, "-n", f"ns=2;s={c.OBJECT}", "-l"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert listing.returncode == 0, listing.stderr[-2000:]
    for name in ("StagePlan", "ActivatePlan", "AbortStaged", "FieldTime", "Detectors"):
        assert name in listing.stdout, listing.stdout
    bad = subprocess.run(
        [*base, "--password", "wrong", "-n", f"ns=2;s={c.CONTROLLER_ID}"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert bad.returncode != 0
    assert "J003" not in bad.stdout
