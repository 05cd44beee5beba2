"""Test helpers for actuation: a fake field, tiny base programs, signed plans, fleets."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

from actuation import ClientCredentials, ControllerPool, ControllerTarget
from actuation._verify import TrustedKeys
from actuation.core import ControllerCore, ControllerProvisioning
from actuation.emulated import ControllerAccess, EmulatedController, EmulatedFleet
from actuation.security import (
    CLIENT_APPLICATION_URI,
    CertificatePair,
    controller_application_uri,
    generate_application_certificate,
)
from actuation.users import PasswordHash
from configs.timing import (
    BaseProgram,
    Evidence,
    IntersectionTiming,
    NetworkRef,
    PhasePlan,
    Prediction,
    SafetyLimits,
    TimingConfiguration,
)
from hsm.envelope import sign_envelope

NETWORK = NetworkRef(id="district", sha256="ab" * 32)
LIMITS = SafetyLimits()
USER = "signaltwin"
PASSWORD = "correct horse battery staple"


def base_program(tls_id: str) -> BaseProgram:
    """A tiny 4-phase program: green 30, yellow 4, green 26, yellow 4 (cycle 64)."""
    return BaseProgram.from_sumo(
        tls_id,
        "0",
        [
            ("GGrr", 30, None, None),
            ("yyrr", 4, None, None),
            ("rrGG", 26, None, None),
            ("rryy", 4, None, None),
        ],
    )


def timing(green1: int = 34, green2: int = 22, offset_s: int = 0) -> IntersectionTiming:
    """A plan for :func:`base_program` with the given greens."""
    return IntersectionTiming(
        mode="fixed",
        cycle_s=green1 + green2 + 8,
        offset_s=offset_s,
        phases=(
            PhasePlan(state="GGrr", duration_s=green1),
            PhasePlan(state="yyrr", duration_s=4),
            PhasePlan(state="rrGG", duration_s=green2),
            PhasePlan(state="rryy", duration_s=4),
        ),
    )


def configuration(
    sequence: int,
    intersections: Mapping[str, IntersectionTiming],
    network: NetworkRef = NETWORK,
    valid_from: datetime | None = None,
    valid_until: datetime | None = None,
) -> TimingConfiguration:
    now = datetime.now(UTC)
    return TimingConfiguration(
        network=network,
        sequence=sequence,
        issued_at=now,
        valid_from=valid_from or now - timedelta(minutes=1),
        valid_until=valid_until or now + timedelta(hours=1),
        predicted=Prediction(
            wait_change=-0.15,
            wait_change_ci=(-0.2, -0.1),
            nox_change=0.0,
            nox_change_ci=(-0.01, 0.005),
            horizon_s=900,
            seeds=(1, 2, 3),
        ),
        evidence=Evidence(demand_sha256="cd" * 32),
        intersections=dict(intersections),
    )


def signed(signer: object, config: TimingConfiguration) -> bytes:
    return sign_envelope(signer, config.canonical_bytes()).to_json()  # type: ignore[arg-type]


@dataclass
class FakeField:
    """A field whose clock runs with wall time (optionally faster), recording applies."""

    start_s: float = 1000.0
    speed: float = 1.0
    applied: list[tuple[str, IntersectionTiming, float]] = field(default_factory=list)
    detectors: dict[str, list[str]] = field(default_factory=dict)
    offset_s: float = 0.0
    fail_health: set[str] = field(default_factory=set)

    def __post_init__(self) -> None:
        self._t0 = time.monotonic()
        self._lock = threading.Lock()

    def field_time_s(self) -> float:
        return self.start_s + self.offset_s + (time.monotonic() - self._t0) * self.speed

    def advance(self, seconds: float) -> None:
        self.offset_s += seconds

    def set_speed(self, speed: float) -> None:
        """Change the clock rate from now on (the field time does not jump)."""
        now = self.field_time_s()
        self._t0 = time.monotonic()
        self.offset_s = now - self.start_s
        self.speed = speed

    def apply(self, tls_id: str, timing: IntersectionTiming, at_field_time_s: float) -> None:
        with self._lock:
            self.applied.append((tls_id, timing, at_field_time_s))

    def detector_snapshot(self, tls_id: str) -> Mapping[str, tuple[int, float]]:
        now = self.field_time_s()
        ids = self.detectors.get(tls_id, [f"{tls_id}_d0", f"{tls_id}_d1"])
        return {d: (int(now - self.start_s) + i, 12.5 + i) for i, d in enumerate(ids)}

    def measurements(self, tls_id: str) -> tuple[float, float, float]:
        return (21.5, 340.0, float(int(self.field_time_s() // 60) * 60))

    def health(self, tls_id: str) -> str:
        return "fault: lamp" if tls_id in self.fail_health else "ok"


@dataclass
class Pki:
    """Certificates for a test fleet (one server cert per controller)."""

    client: CertificatePair
    client_der: bytes
    servers: dict[str, CertificatePair]
    server_der: dict[str, bytes]


def _write(directory: Path, stem: str, uri: str, role: str) -> tuple[CertificatePair, bytes]:
    der, key = generate_application_certificate(uri, stem, role)  # type: ignore[arg-type]
    (directory / f"{stem}.der").write_bytes(der)
    (directory / f"{stem}.key.pem").write_bytes(key)
    return CertificatePair(directory / f"{stem}.der", directory / f"{stem}.key.pem"), der


def make_pki(directory: Path, ids: Sequence[str]) -> Pki:
    directory.mkdir(parents=True, exist_ok=True)
    client, client_der = _write(directory, "client", CLIENT_APPLICATION_URI, "client")
    servers: dict[str, CertificatePair] = {}
    ders: dict[str, bytes] = {}
    for tls in ids:
        servers[tls], ders[tls] = _write(
            directory, f"ctl-{tls}", controller_application_uri(tls), "server"
        )
    return Pki(client, client_der, servers, ders)


def tls_ids(n: int) -> list[str]:
    return [f"J{i:03d}" for i in range(n)]


def make_fleet(
    pki: Pki,
    ids: Sequence[str],
    field_port: FakeField,
    public_keys: Sequence[bytes],
    password_hash: PasswordHash,
    staged_ttl_s: float = 120.0,
    publish_interval_s: float = 1.0,
) -> EmulatedFleet:
    trusted = TrustedKeys.from_pem(public_keys)
    access = ControllerAccess(USER, password_hash, (pki.client_der,))
    controllers = []
    for tls in ids:
        prov = ControllerProvisioning(
            tls_id=tls,
            base=base_program(tls),
            limits=LIMITS,
            network=NETWORK,
            trusted_keys=trusted,
            staged_ttl_s=staged_ttl_s,
        )
        controllers.append(
            EmulatedController(
                ControllerCore(prov, field_port),
                pki.servers[tls],
                access,
                publish_interval_s=publish_interval_s,
            )
        )
    return EmulatedFleet(controllers)


def make_pool(
    pki: Pki, fleet: EmulatedFleet, password: str = PASSWORD, **kwargs: float
) -> ControllerPool:
    endpoints = [ControllerTarget(ctl.tls_id, ctl.url, pki.server_der[ctl.tls_id]) for ctl in fleet]
    creds = ClientCredentials(pki.client.certificate, pki.client.private_key, USER, password)
    return ControllerPool(endpoints, creds, **kwargs)


class LoopThread:
    """An event loop in a thread, for module-scoped async fixtures in sync tests."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coro, timeout: float = 120.0):  # type: ignore[no-untyped-def]
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()
