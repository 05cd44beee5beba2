"""The daemon's settings: one TOML file, validated strictly at start-up.

Every section forbids unknown keys, so a typo fails at start-up instead of being
silently ignored. Relative paths are resolved against the directory of the TOML
file; paths under ``state_dir`` (ledger, videos, token) against ``state_dir``.
Secrets (HSM PIN, OPC UA password) are never in the TOML: only a reference to
a file, or ``credential:NAME`` for a systemd credential (``LoadCredential=``),
which is read from ``$CREDENTIALS_DIRECTORY/NAME``.
"""

from __future__ import annotations

import ipaddress
import os
import re
from pathlib import Path
from typing import Annotated, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from configs.timing import SafetyLimits

__all__ = [
    "AUTO_WORKERS_MAX",
    "DEFAULT_HSM_KEY_LABEL",
    "DEFAULT_HSM_MODULE",
    "DEFAULT_HSM_TOKEN_LABEL",
    "ConsoleSettings",
    "ControllerEndpoint",
    "ComputeBackend",
    "ComputeSettings",
    "ControllersSettings",
    "EdgeSettings",
    "FeedbackSettings",
    "FleetShare",
    "GateSettings",
    "HsmSettings",
    "LedgerSettings",
    "MetricsSettings",
    "RlSettings",
    "SafetySettings",
    "ScheduleSettings",
    "Settings",
    "SimulationSettings",
    "VideoSettings",
    "Workers",
    "auto_workers",
    "available_cpus",
    "default_fleet",
    "is_loopback_address",
]

Seconds = Annotated[int, Field(gt=0, le=86_400)]
Fraction = Annotated[float, Field(ge=0.0, le=1.0, allow_inf_nan=False)]
Port = Annotated[int, Field(ge=1, le=65_535)]

_STRICT = ConfigDict(extra="forbid", frozen=True)

AUTO_WORKERS_MAX = 4
"""What-if worker processes that ``workers = "auto"`` asks for at most."""


def available_cpus() -> int:
    """CPU cores this process may run on (its affinity mask where the OS has one)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


def auto_workers(configured: int = AUTO_WORKERS_MAX) -> int:
    """Worker processes for ``configured`` at most, but no more than the cores present.

    SUMO runs are CPU-bound: more workers than cores only adds memory and switching.
    """
    return max(1, min(configured, available_cpus()))


def _auto(value: object) -> object:
    if value == "auto":
        return auto_workers()
    if isinstance(value, str):
        raise ValueError(f'expected a number of processes or "auto", got {value!r}')
    return value


Workers = Annotated[int, BeforeValidator(_auto), Field(ge=1, le=256)]
"""Worker processes: a number, or ``"auto"`` for :func:`auto_workers` (resolved at load)."""

#: SoftHSM2 as installed by the Debian package ``softhsm2`` (the one source; hsm imports it).
DEFAULT_HSM_MODULE = Path("/usr/lib/softhsm/libsofthsm2.so")
DEFAULT_HSM_TOKEN_LABEL = "signaltwin"
DEFAULT_HSM_KEY_LABEL = "signaltwin-timing"


class ScheduleSettings(BaseModel):
    """When cycles and feedback run."""

    model_config = _STRICT

    interval_s: Seconds = Field(240, description="Seconds between cycle starts.")
    feedback_interval_s: Seconds = Field(
        900, description="Seconds between measured-delta collection and fine-tuning runs."
    )
    measure_after_s: Seconds = Field(
        240,
        description="No longer used (kept so that older files still load): deployments "
        "are measured over feedback.window_s.",
    )
    shutdown_deadline_s: Seconds = Field(
        30, description="How long SIGTERM waits for a running cycle to finish or abort."
    )


class GateSettings(BaseModel):
    """The deployment gate: what a candidate must show on the twin."""

    model_config = _STRICT

    min_wait_reduction: Fraction = Field(
        0.12, description="Required reduction of mean waiting time (fraction, 0.12 = 12 %)."
    )
    max_nox_increase: Fraction = Field(
        0.008, description="NOx may rise by less than this fraction (0.008 = 0.8 %)."
    )
    decide_on: Literal["point", "confidence_bound"] = Field(
        "confidence_bound",
        description="Decide on the point estimate, or on the pessimistic confidence bound.",
    )
    confidence_level: Annotated[float, Field(gt=0.5, lt=1.0)] = 0.95


class FleetShare(BaseModel):
    """One emission class and its share of the fleet."""

    model_config = _STRICT

    emission_class: Annotated[str, Field(pattern=r"^[A-Za-z0-9]+/[A-Za-z0-9_.\-]+$")] = Field(
        description="SUMO emission class, e.g. 'HBEFA4/PC_petrol_Euro-6ab'."
    )
    share: Fraction
    vclass: Literal["passenger", "delivery", "truck", "bus", "motorcycle"] = "passenger"


def default_fleet() -> list[FleetShare]:
    """The fleet mix ``simulation.fleet`` defaults to (and demand estimation without one)."""
    return [
        FleetShare(emission_class="HBEFA4/PC_petrol_Euro-6ab", share=0.42),
        FleetShare(emission_class="HBEFA4/PC_diesel_Euro-6ab", share=0.28),
        FleetShare(emission_class="HBEFA4/PC_petrol_Euro-4", share=0.10),
        FleetShare(emission_class="HBEFA4/PC_BEV", share=0.10),
        FleetShare(
            emission_class="HBEFA4/LCV_diesel_N1-III_Euro-6ab", share=0.07, vclass="delivery"
        ),
        FleetShare(emission_class="HBEFA4/RT_le7.5t_Euro-VI_A-C", share=0.03, vclass="truck"),
    ]


class SimulationSettings(BaseModel):
    """The twin: which network, how long, how many seeds."""

    model_config = _STRICT

    network: Path = Field(description="SUMO .net.xml of the district.")
    detectors: Path | None = Field(
        None, description="E1 detector additional file; generated when absent."
    )
    demand: Path | None = Field(
        None, description="Routes file used when detector data is not available yet."
    )
    horizon_s: Seconds = Field(900, description="Simulated seconds compared after warm-up.")
    warmup_s: Annotated[int, Field(ge=0, le=7200)] = 300
    seeds: Annotated[int, Field(ge=2, le=64)] = Field(
        5, description="Paired seeds per plan (common random numbers)."
    )
    base_seed: Annotated[int, Field(ge=0, le=2**31 - 1)] = 20_240
    step_length_s: Annotated[float, Field(gt=0.0, le=5.0)] = 1.0
    gridlock_s: Seconds = Field(300, description="Nothing moving this long = gridlock.")
    workers: Workers = Field(
        default_factory=auto_workers,
        description='What-if worker processes; "auto" (the default): '
        f"{AUTO_WORKERS_MAX}, at most the CPU cores present.",
    )
    candidates: Annotated[int, Field(ge=1, le=64)] = Field(
        4, description="Candidates sent to SUMO after screening."
    )
    screen_candidates: Annotated[int, Field(ge=0, le=100_000)] = Field(
        1000, description="Candidates screened by the surrogate (0 disables screening)."
    )
    surrogate: Path | None = Field(
        None,
        description="Screening surrogate weights (signaltwin surrogate train); "
        "None: no screening, the proposals go to the twin directly.",
    )
    elimination_seeds: Annotated[int, Field(ge=0, le=63)] = Field(
        0,
        description="Sequential elimination: every candidate first runs on this many seeds; "
        "only the `finalists` best by paired wait change run the rest (0: all run every seed).",
    )
    finalists: Annotated[int, Field(ge=1, le=64)] = Field(
        1, description="Candidates that go on to every seed after elimination."
    )
    fleet: list[FleetShare] = Field(default_factory=default_fleet)

    @model_validator(mode="after")
    def _elimination_leaves_seeds(self) -> SimulationSettings:
        if self.elimination_seeds >= self.seeds:
            raise ValueError(
                f"elimination_seeds ({self.elimination_seeds}) must be fewer than seeds "
                f"({self.seeds}), or 0 to run every candidate on every seed"
            )
        return self

    @field_validator("fleet")
    @classmethod
    def _fleet_sums_to_one(cls, fleet: list[FleetShare]) -> list[FleetShare]:
        total = sum(f.share for f in fleet)
        if fleet and abs(total - 1.0) > 1e-6:
            raise ValueError(f"fleet shares must sum to 1.0, they sum to {total:.4f}")
        return fleet


class SafetyOverride(BaseModel):
    """Per-intersection limits that differ from the district's."""

    model_config = _STRICT

    min_green_s: Annotated[int, Field(gt=0, le=3600)] | None = None
    min_yellow_s: Annotated[int, Field(ge=3, le=10)] | None = None
    min_red_clearance_s: Annotated[int, Field(ge=0, le=3600)] | None = None
    ped_walk_s: Annotated[int, Field(ge=0, le=3600)] | None = None
    ped_clearance_s: Annotated[int, Field(ge=0, le=3600)] | None = None
    min_cycle_s: Annotated[int, Field(gt=0, le=3600)] | None = None
    max_cycle_s: Annotated[int, Field(gt=0, le=3600)] | None = None
    max_cycle_change_s: Annotated[int, Field(ge=0, le=3600)] | None = None
    max_split_change_s: Annotated[int, Field(ge=0, le=3600)] | None = None


class SafetySettings(SafetyLimits):
    """District-wide safety limits with per-intersection overrides."""

    intersections: dict[str, SafetyOverride] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _overrides_valid(self) -> SafetySettings:
        for tls_id in self.intersections:
            try:
                self.limits_for(tls_id)
            except ValidationError as e:
                raise ValueError(f"override for intersection {tls_id!r}: {e}") from e
        return self

    def limits_for(self, tls_id: str) -> SafetyLimits:
        """The limits for ``tls_id``: the district's, with its overrides applied."""
        base = SafetyLimits.model_validate({k: getattr(self, k) for k in SafetyLimits.model_fields})
        override = self.intersections.get(tls_id)
        if override is None:
            return base
        changes = override.model_dump(exclude_none=True)
        return SafetyLimits.model_validate(base.model_dump() | changes)


class HsmSettings(BaseModel):
    """The PKCS#11 token that holds the signing key."""

    model_config = _STRICT

    module: Path = Field(DEFAULT_HSM_MODULE, description="PKCS#11 module.")
    token_label: Annotated[str, Field(min_length=1, max_length=32)] = DEFAULT_HSM_TOKEN_LABEL
    key_label: Annotated[str, Field(min_length=1, max_length=64)] = DEFAULT_HSM_KEY_LABEL
    pin_file: str = Field(
        "credential:hsm-pin",
        description="File holding the user PIN, or 'credential:NAME' for a systemd credential.",
    )
    softhsm_conf: Path | None = Field(
        None, description="SOFTHSM2_CONF for a SoftHSM2 token kept in the state directory."
    )
    attestation_certificate: Path | None = Field(
        None, description="Vendor key-attestation certificate, recorded in the ledger."
    )
    auto_provision: bool = Field(
        False, description="Create the token, key and PIN when missing (demo only)."
    )
    pin_backoff_s: Annotated[float, Field(ge=0, le=86400)] = Field(
        60.0,
        description=(
            "After the token rejects the PIN, refuse logins for this long (seconds), doubling "
            "with each further failure: a hardware token locks its PIN after a few failures."
        ),
    )
    pin_backoff_max_s: Annotated[float, Field(ge=0, le=604800)] = Field(
        3600.0, description="Cap of the PIN-failure backoff (seconds)."
    )


class ControllerEndpoint(BaseModel):
    """One traffic controller (OPC UA server) and the intersection it drives."""

    model_config = _STRICT

    intersection: Annotated[str, Field(min_length=1, max_length=200)]
    url: Annotated[str, Field(pattern=r"^opc\.tcp://[^\s/]+:\d{1,5}(/.*)?$")]
    server_certificate: Path | None = Field(
        None, description="Pinned server certificate (DER or PEM)."
    )


class ControllersSettings(BaseModel):
    """How the daemon reaches its controllers."""

    model_config = _STRICT

    user: Annotated[str, Field(min_length=1, max_length=64)] = "signaltwin"
    password_file: str = Field(
        "credential:opcua-password",
        description="File holding the OPC UA password, or 'credential:NAME'.",
    )
    client_certificate: Path | None = None
    client_private_key: Path | None = None
    public_keys: list[Path] = Field(
        default_factory=list, description="Signing public keys the controllers trust (PEM)."
    )
    endpoints: list[ControllerEndpoint] = Field(default_factory=list)
    connect_timeout_s: Annotated[float, Field(gt=0, le=600)] = 10.0
    call_timeout_s: Annotated[float, Field(gt=0, le=600)] = 5.0
    activate_lead_s: Annotated[float, Field(ge=1, le=3600)] = 10.0
    max_sequence_margin: Annotated[int, Field(ge=0, le=1_000_000)] = Field(
        16,
        description=(
            "At start-up a controller-reported plan sequence is adopted only up to the "
            "ledger's highest + this margin; above it is an anomaly and the ledger's is kept."
        ),
    )
    auto_provision: bool = Field(
        False, description="Generate demo certificates and password when missing (demo only)."
    )

    @field_validator("endpoints")
    @classmethod
    def _unique_intersections(cls, endpoints: list[ControllerEndpoint]) -> list[ControllerEndpoint]:
        seen: set[str] = set()
        for endpoint in endpoints:
            if endpoint.intersection in seen:
                raise ValueError(f"intersection {endpoint.intersection!r} has two endpoints")
            seen.add(endpoint.intersection)
        return endpoints


class LedgerSettings(BaseModel):
    """Where the deployment ledger lives."""

    model_config = _STRICT

    path: Path = Path("ledger.sqlite")
    checkpoint_every: Annotated[int, Field(ge=1, le=100_000)] = Field(
        1, description="Sign a checkpoint after this many records."
    )


#: libx264's presets, fastest first
X264Preset = Literal[
    "ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow", "slower", "veryslow"
]


class VideoSettings(BaseModel):
    """The what-if video."""

    model_config = _STRICT

    enabled: bool = True
    directory: Path = Path("videos")
    width: Annotated[int, Field(ge=64, le=7680, multiple_of=2)] = 1920
    height: Annotated[int, Field(ge=64, le=4320, multiple_of=2)] = 1080
    fps: Annotated[int, Field(ge=1, le=120)] = 30
    duration_s: Annotated[float, Field(gt=0, le=600)] = 20.0
    preset: X264Preset = Field(
        "ultrafast",
        description="libx264 preset. ultrafast encodes about 3x faster than veryfast and, "
        "at the same crf, with a higher PSNR on these flat graphics, in about twice the "
        "bytes (docs/video.md has the measurements).",
    )
    crf: Annotated[int, Field(ge=0, le=51)] = Field(
        26, description="libx264 constant rate factor: lower is better and bigger (0 lossless)."
    )


class FeedbackSettings(BaseModel):
    """How deployments are measured in the field (``controller.feedback``)."""

    model_config = _STRICT

    window_s: Seconds | None = Field(
        None,
        description="Field seconds before and after an activation that are compared "
        "(None: simulation.horizon_s, so the measured change covers the same time as the "
        "predicted one). At least 2 x schedule.interval_s.",
    )
    hold_deployments: bool = Field(
        True,
        description="While a deployment's after-window is open, deploy nothing new "
        "(the cycle records the gate's decision as held), so each window sees one plan.",
    )
    estimator_seeds: Annotated[int, Field(ge=1, le=64)] | None = Field(
        None,
        description="Seeds of the counterfactual re-simulation (None: simulation.seeds).",
    )
    calibrate: bool = Field(
        True,
        description="Correct the twin's demand scale from the measured twin-vs-field gap.",
    )


class RlSettings(BaseModel):
    """The policy and its training."""

    model_config = _STRICT

    policy_path: Path | None = Field(None, description="Policy weights; None = shipped policy.")
    feedback_path: Path = Path("feedback.sqlite")
    total_timesteps: Annotated[int, Field(ge=1)] = 40_000
    n_envs: Annotated[int, Field(ge=1, le=64)] = 2
    seed: Annotated[int, Field(ge=0)] = 11
    learning_rate: Annotated[float, Field(gt=0, lt=1)] = 1e-3
    fine_tune: bool = True
    fine_tune_min_samples: Annotated[int, Field(ge=1)] = 8


class MetricsSettings(BaseModel):
    """The Prometheus endpoint."""

    model_config = _STRICT

    enabled: bool = True
    address: str = "127.0.0.1"
    port: Port = 9108


def is_loopback_address(address: str) -> bool:
    """Whether binding ``address`` serves this machine only (``localhost``, 127.0.0.0/8, ::1).

    Any other name or address (``0.0.0.0``, ``::``, a host name, a LAN address)
    may be reachable from elsewhere.
    """
    if address.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(address.strip().strip("[]")).is_loopback
    except ValueError:
        return False


class ConsoleSettings(BaseModel):
    """The operator console: a read-only web page served by the daemon (``controller.console``).

    On a loopback address (the default) it needs nothing else. Bound to any other
    address it must have TLS (certificate and key) and a users file, or the
    settings are refused: the page shows the district's plans and the controllers'
    health. Relative paths are under ``state_dir``; the key and the users file
    are secrets (a file, or ``credential:NAME`` for a systemd credential).
    """

    model_config = _STRICT

    enabled: bool = Field(True, description="Serve the console.")
    address: Annotated[str, Field(min_length=1, max_length=253)] = Field(
        "127.0.0.1", description="Address to bind; not loopback needs TLS and users_file."
    )
    port: Annotated[int, Field(ge=0, le=65_535)] = Field(
        9110, description="Port to bind (0: any free port, logged at start-up)."
    )
    tls_certificate: Path | None = Field(
        None, description="PEM certificate (chain) served over HTTPS."
    )
    tls_private_key: str | None = Field(
        None, description="Its PEM private key: a file, or 'credential:NAME'."
    )
    users_file: str | None = Field(
        None,
        description="Who may read the console: lines 'user:HASH' written by "
        "'signaltwin console hash-password' (scrypt or PBKDF2; never a plain password); "
        "a file, or 'credential:NAME'.",
    )
    cycles_shown: Annotated[int, Field(ge=1, le=200)] = Field(
        20, description="How many recent cycles the page lists."
    )
    max_clients: Annotated[int, Field(ge=1, le=256)] = Field(
        16, description="Live (Server-Sent Events) connections served at once."
    )

    @field_validator("address")
    @classmethod
    def _address(cls, value: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9.\-:\[\]]+", value):
            raise ValueError(f"expected a host name or an IP address, got {value!r}")
        return value

    @model_validator(mode="after")
    def _protected_off_loopback(self) -> ConsoleSettings:
        if (self.tls_certificate is None) != (self.tls_private_key is None):
            raise ValueError(
                "console.tls_certificate and console.tls_private_key go together: "
                "set both (HTTPS) or neither"
            )
        if self.enabled and not is_loopback_address(self.address):
            missing = [
                f"console.{key}"
                for key in ("tls_certificate", "tls_private_key", "users_file")
                if getattr(self, key) is None
            ]
            if missing:
                raise ValueError(
                    f"console.address = {self.address!r} is not a loopback address, so the "
                    f"console needs HTTPS and a users file: set {', '.join(missing)} "
                    '(or bind console.address = "127.0.0.1"; docs/operations.md, '
                    "'The operator console')"
                )
        return self

    @property
    def protected(self) -> bool:
        """Whether the console is served over HTTPS with authentication."""
        return self.tls_certificate is not None and self.users_file is not None


_RAY_ADDRESS = re.compile(r"^(auto|(ray://)?[A-Za-z0-9.\-]{1,253}:[0-9]{1,5})$")


ComputeBackend = Literal["local", "ray"]
"""Where what-ifs and training simulations run (``[compute] backend``)."""


class ComputeSettings(BaseModel):
    """Where the what-if runs and training simulations run: local processes or a Ray cluster.

    ``local`` (the default) uses ``simulation.workers`` worker processes on this
    machine. ``ray`` runs ``simulation.workers`` long-lived Ray actors (each one
    libsumo simulation at a time) on the cluster at ``address``; the daemon talks
    to the cluster from a driver process of its own, so a cluster that goes away
    fails cycles (nothing deployed) and is reconnected to, never takes the daemon down.
    """

    model_config = _STRICT

    backend: ComputeBackend = Field(
        "local", description='"local" worker processes, or "ray" actors on a Ray cluster.'
    )
    address: str = Field(
        "auto",
        description='Ray cluster: "auto" (the cluster this machine belongs to), '
        '"host:port" of its GCS, or "ray://host:port" (Ray Client).',
    )
    namespace: Annotated[str, Field(pattern=r"^[A-Za-z0-9_\-]{1,64}$")] = "signaltwin"
    cpus_per_worker: Annotated[float, Field(gt=0.0, le=64.0)] = Field(
        1.0, description="Ray CPUs each what-if actor reserves (one SUMO run uses one core)."
    )
    memory_per_worker_mb: Annotated[int, Field(ge=64, le=1_048_576)] | None = Field(
        None, description="Ray memory each what-if actor reserves (None: no reservation)."
    )
    timeout_s: Annotated[float, Field(gt=0.0, le=86_400.0)] = Field(
        600.0, description="Wall-clock limit of one what-if (both backends)."
    )
    connect_timeout_s: Annotated[float, Field(gt=0.0, le=3600.0)] = Field(
        60.0, description="How long start-up waits for the Ray cluster before it is an error."
    )
    max_task_retries: Annotated[int, Field(ge=0, le=5)] = Field(
        1,
        description="Times a run whose Ray worker or node was lost is retried on another "
        "worker within the what-if's deadline (0: the cycle fails at once).",
    )

    @field_validator("address")
    @classmethod
    def _address(cls, value: str) -> str:
        if not _RAY_ADDRESS.match(value):
            raise ValueError(f'expected "auto", "host:port" or "ray://host:port", got {value!r}')
        port = value.rsplit(":", 1)[-1]
        if value != "auto" and not 1 <= int(port) <= 65_535:
            raise ValueError(f"port {port} of {value!r} is out of range")
        return value


class EdgeSettings(BaseModel):
    """Where tensors run."""

    model_config = _STRICT

    device: Literal["auto", "cpu", "cuda"] = "auto"


class Settings(BaseModel):
    """The whole daemon configuration."""

    model_config = _STRICT

    mode: Literal["auto", "shadow"] = Field(
        "auto", description="auto deploys; shadow does everything except the push."
    )
    network_id: Annotated[str, Field(min_length=1, max_length=200)] = "district"
    state_dir: Path = Path("state")
    schedule: ScheduleSettings = Field(default_factory=ScheduleSettings)
    gate: GateSettings = Field(default_factory=GateSettings)
    simulation: SimulationSettings
    safety: SafetySettings = Field(default_factory=SafetySettings)
    hsm: HsmSettings = Field(default_factory=HsmSettings)
    controllers: ControllersSettings = Field(default_factory=ControllersSettings)
    ledger: LedgerSettings = Field(default_factory=LedgerSettings)
    video: VideoSettings = Field(default_factory=VideoSettings)
    rl: RlSettings = Field(default_factory=RlSettings)
    metrics: MetricsSettings = Field(default_factory=MetricsSettings)
    console: ConsoleSettings = Field(default_factory=ConsoleSettings)
    edge: EdgeSettings = Field(default_factory=EdgeSettings)
    compute: ComputeSettings = Field(default_factory=ComputeSettings)
    feedback: FeedbackSettings = Field(default_factory=FeedbackSettings)
    source: Path | None = Field(None, exclude=True, description="The TOML file this came from.")

    @model_validator(mode="after")
    def _window_spans_cycles(self) -> Settings:
        window = self.feedback.window_s
        if window is not None and window < 2 * self.schedule.interval_s:
            raise ValueError(
                f"feedback.window_s = {window} is shorter than 2 x schedule.interval_s "
                f"({2 * self.schedule.interval_s}): its edges are interpolated between counter "
                "readings taken once a cycle, so a window must span at least two; raise "
                "feedback.window_s (it should equal simulation.horizon_s) or omit it"
            )
        return self

    @property
    def feedback_window_s(self) -> int:
        """The measuring window in force: ``feedback.window_s``, else ``simulation.horizon_s``."""
        return self.feedback.window_s or self.simulation.horizon_s

    @property
    def estimator_seeds(self) -> int:
        """Seeds of the counterfactual: ``feedback.estimator_seeds``, else ``simulation.seeds``."""
        return self.feedback.estimator_seeds or self.simulation.seeds

    def resolved(self, base_dir: Path) -> Settings:
        """Return a copy whose relative paths are absolute.

        Paths of the inputs (network, detectors, demand, certificates, keys) are
        relative to ``base_dir`` (the TOML file's directory); the ledger, videos,
        feedback store and SoftHSM config are relative to ``state_dir``.
        """
        state = _absolute(self.state_dir, base_dir)

        def at(path: Path | None, root: Path) -> Path | None:
            return None if path is None else _absolute(path, root)

        sim = self.simulation.model_copy(
            update={
                "network": _absolute(self.simulation.network, base_dir),
                "detectors": at(self.simulation.detectors, base_dir),
                "demand": at(self.simulation.demand, base_dir),
                "surrogate": at(self.simulation.surrogate, base_dir),
            }
        )
        hsm = self.hsm.model_copy(
            update={
                "module": _absolute(self.hsm.module, base_dir),
                "pin_file": _secret_ref(self.hsm.pin_file, state),
                "softhsm_conf": at(self.hsm.softhsm_conf, state),
                "attestation_certificate": at(self.hsm.attestation_certificate, base_dir),
            }
        )
        ctl = self.controllers.model_copy(
            update={
                "password_file": _secret_ref(self.controllers.password_file, state),
                "client_certificate": at(self.controllers.client_certificate, state),
                "client_private_key": at(self.controllers.client_private_key, state),
                "public_keys": [_absolute(p, state) for p in self.controllers.public_keys],
                "endpoints": [
                    e.model_copy(update={"server_certificate": at(e.server_certificate, state)})
                    for e in self.controllers.endpoints
                ],
            }
        )
        console = self.console.model_copy(
            update={
                "tls_certificate": at(self.console.tls_certificate, state),
                "tls_private_key": _secret_ref_opt(self.console.tls_private_key, state),
                "users_file": _secret_ref_opt(self.console.users_file, state),
            }
        )
        return self.model_copy(
            update={
                "state_dir": state,
                "simulation": sim,
                "console": console,
                "hsm": hsm,
                "controllers": ctl,
                "ledger": self.ledger.model_copy(
                    update={"path": _absolute(self.ledger.path, state)}
                ),
                "video": self.video.model_copy(
                    update={"directory": _absolute(self.video.directory, state)}
                ),
                "rl": self.rl.model_copy(
                    update={
                        "policy_path": at(self.rl.policy_path, base_dir),
                        "feedback_path": _absolute(self.rl.feedback_path, state),
                    }
                ),
            }
        )

    def with_state_dir(self, state_dir: Path) -> Settings:
        """A copy that keeps its state under ``state_dir`` (used by the demo and tests).

        Only valid on settings loaded from a file (absolute input paths); paths
        that lived under the old state directory are moved under the new one.
        """
        old = self.state_dir

        def move(path: Path) -> Path:
            try:
                return state_dir / path.relative_to(old)
            except ValueError:
                return path

        def move_ref(ref: str) -> str:
            return ref if ref.startswith("credential:") else str(move(Path(ref)))

        def move_opt(path: Path | None) -> Path | None:
            return None if path is None else move(path)

        return self.model_copy(
            update={
                "state_dir": state_dir,
                "hsm": self.hsm.model_copy(
                    update={
                        "pin_file": move_ref(self.hsm.pin_file),
                        "softhsm_conf": move_opt(self.hsm.softhsm_conf),
                    }
                ),
                "controllers": self.controllers.model_copy(
                    update={
                        "password_file": move_ref(self.controllers.password_file),
                        "client_certificate": move_opt(self.controllers.client_certificate),
                        "client_private_key": move_opt(self.controllers.client_private_key),
                        "public_keys": [move(p) for p in self.controllers.public_keys],
                        "endpoints": [
                            e.model_copy(
                                update={"server_certificate": move_opt(e.server_certificate)}
                            )
                            for e in self.controllers.endpoints
                        ],
                    }
                ),
                "ledger": self.ledger.model_copy(update={"path": move(self.ledger.path)}),
                "console": self.console.model_copy(
                    update={
                        "tls_certificate": move_opt(self.console.tls_certificate),
                        "tls_private_key": None
                        if self.console.tls_private_key is None
                        else move_ref(self.console.tls_private_key),
                        "users_file": None
                        if self.console.users_file is None
                        else move_ref(self.console.users_file),
                    }
                ),
                "video": self.video.model_copy(update={"directory": move(self.video.directory)}),
                "rl": self.rl.model_copy(update={"feedback_path": move(self.rl.feedback_path)}),
            }
        )


def _absolute(path: Path, root: Path) -> Path:
    expanded = path.expanduser()
    return Path(os.path.normpath(expanded if expanded.is_absolute() else root / expanded))


def _secret_ref(ref: str, root: Path) -> str:
    if ref.startswith("credential:"):
        return ref
    return str(_absolute(Path(ref), root))


def _secret_ref_opt(ref: str | None, root: Path) -> str | None:
    return None if ref is None else _secret_ref(ref, root)
