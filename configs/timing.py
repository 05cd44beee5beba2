"""The timing configuration: what is signed, deployed and re-checked by controllers.

One JSON document per deployment (``signaltwin.timing/v1``), serialised
canonically (sorted keys, no insignificant whitespace, UTF-8) so that its sha256
digest is stable. Every duration is a whole number of seconds, as field
controllers count them.

The safety invariants live here, as pure functions, because three parties check
them independently: the cycle when it builds a plan, the signer before it signs,
and every controller before it accepts a plan. Their checks and the projection
of any proposal onto the safe set live in :mod:`configs.safety`; the names of
the invariants are listed here, with the document they constrain.

Invariant names (reported in :class:`configs.errors.Violation`):

``phase_states``        the phase states are exactly the base program's, in order
``min_green``           every green lasts at least its minimum green
``pedestrian_green``    a green that serves a crossing lasts at least walk + clearance
``min_yellow``          every yellow lasts at least the minimum yellow (>= 3 s)
``min_red_clearance``   every all-red clearance lasts at least its minimum
``cycle_sum``           the cycle equals the sum of the phase durations
``cycle_range``         the cycle lies within [min_cycle_s, max_cycle_s]
``offset_range``        0 <= offset < cycle
``max_cycle_change``    the cycle moved by at most max_cycle_change_s since the active plan
``max_split_change``    each green moved by at most max_split_change_s since the active plan
``actuated_bounds``     actuated and adaptive greens satisfy min green <= min_s <= duration <=
                        max_s (min green including walk + clearance where the green serves a
                        crossing) and the longest possible cycle stays within max_cycle_s; fixed
                        plans carry no min_s/max_s
``adaptive_logic``      an adaptive plan carries its real-time parameters (one weight per green
                        of the base program); other modes carry none

Modes: ``fixed`` (every phase for its duration), ``actuated`` (gap-out actuation
without recall, SUMO's own logic) and ``adaptive`` (the controller decides second
by second from its own queue detectors, within the plan's bounds:
:class:`AdaptiveLogic`, run by :mod:`simulators.adaptive`; the rules a
controller vendor implements are in docs/controller-contract.md).
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from datetime import UTC, datetime
from typing import Annotated, Any, Final, Literal, Protocol

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    ValidationError,
    field_serializer,
    field_validator,
    model_serializer,
    model_validator,
)

from configs.digests import canonical_json, sha256_hex, strict_json_loads
from configs.errors import ConfigError

__all__ = [
    "INVARIANTS",
    "SCHEMA",
    "AdaptiveLogic",
    "BasePhase",
    "BaseProgram",
    "Evidence",
    "IntersectionTiming",
    "LimitsSource",
    "NetworkRef",
    "PhaseKind",
    "PhasePlan",
    "Prediction",
    "SafetyLimits",
    "TimingConfiguration",
    "canonical_json",
    "classify_state",
    "read_document",
    "intersection_limits",
    "sha256_hex",
]

SCHEMA: Final = "signaltwin.timing/v1"
#: Largest timing document a controller will parse (bytes).
MAX_DOCUMENT_BYTES = 4 * 1024 * 1024

INVARIANTS = (
    "phase_states",
    "min_green",
    "pedestrian_green",
    "min_yellow",
    "min_red_clearance",
    "cycle_sum",
    "cycle_range",
    "offset_range",
    "max_cycle_change",
    "max_split_change",
    "actuated_bounds",
    "adaptive_logic",
)

PhaseKind = Literal["green", "yellow", "red"]
Mode = Literal["fixed", "actuated", "adaptive"]
Seconds = Annotated[int, Field(ge=0, le=3600)]
PositiveSeconds = Annotated[int, Field(gt=0, le=3600)]
Sha256Hex = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]
SignalState = Annotated[str, Field(min_length=1, max_length=512, pattern=r"^[rRyYgGsuoO]+$")]
TlsId = Annotated[str, Field(min_length=1, max_length=200)]

_FROZEN = ConfigDict(frozen=True, extra="forbid", strict=False)


def classify_state(state: str) -> PhaseKind:
    """Classify a SUMO signal state string as a green, yellow or all-red interval.

    Any yellow (``y``/``Y``) or red-yellow (``u``) link makes it a transition
    (yellow); otherwise any green (``G``/``g``) makes it a green; otherwise it is a
    red clearance interval.
    """
    if any(c in "yYu" for c in state):
        return "yellow"
    if any(c in "Gg" for c in state):
        return "green"
    return "red"


# --------------------------------------------------------------------------- limits


class SafetyLimits(BaseModel):
    """The engineer's safety limits for one intersection (all in whole seconds)."""

    model_config = _FROZEN

    min_green_s: PositiveSeconds = Field(7, description="Minimum vehicle green.")
    min_yellow_s: Annotated[int, Field(ge=3, le=10)] = Field(
        3, description="Minimum yellow; never below 3 s."
    )
    min_red_clearance_s: Seconds = Field(1, description="Minimum all-red clearance.")
    ped_walk_s: Seconds = Field(7, description="Pedestrian walk interval.")
    ped_clearance_s: Seconds = Field(
        10, description="Pedestrian clearance (flashing don't walk) interval."
    )
    min_cycle_s: PositiveSeconds = Field(40, description="Shortest allowed cycle.")
    max_cycle_s: PositiveSeconds = Field(150, description="Longest allowed cycle.")
    max_cycle_change_s: Seconds = Field(
        20, description="Largest change of the cycle per deployment."
    )
    max_split_change_s: Seconds = Field(
        15, description="Largest change of any green per deployment."
    )

    @model_validator(mode="after")
    def _cycle_range_ordered(self) -> SafetyLimits:
        if self.min_cycle_s > self.max_cycle_s:
            raise ValueError(
                f"min_cycle_s ({self.min_cycle_s}) must not exceed max_cycle_s ({self.max_cycle_s})"
            )
        return self

    @property
    def ped_green_s(self) -> int:
        """Minimum green of a phase that serves a pedestrian crossing."""
        return self.ped_walk_s + self.ped_clearance_s


class LimitsSource(Protocol):
    """Anything that gives the limits of an intersection (e.g. the settings' safety section)."""

    def limits_for(self, tls_id: str) -> SafetyLimits:
        """Return the limits that apply to ``tls_id``."""
        ...


def intersection_limits(source: SafetyLimits | LimitsSource, tls_id: str) -> SafetyLimits:
    """The limits that apply to ``tls_id``: ``source`` itself, or its ``limits_for(tls_id)``.

    The settings' safety section is a :class:`SafetyLimits` (the district's) that
    also has per-intersection overrides, so ``limits_for`` is asked first.
    """
    if not isinstance(source, SafetyLimits):
        return source.limits_for(tls_id)
    limits_for = getattr(source, "limits_for", None)
    if limits_for is None:
        return source
    limits: SafetyLimits = limits_for(tls_id)
    return limits


# --------------------------------------------------------------------------- base program


class BasePhase(BaseModel):
    """One phase of the engineer-approved base program."""

    model_config = _FROZEN

    state: SignalState
    duration_s: PositiveSeconds
    kind: PhaseKind
    min_s: PositiveSeconds | None = None
    max_s: PositiveSeconds | None = None
    serves_pedestrians: bool = False


class BaseProgram(BaseModel):
    """The engineer-approved base program of one traffic light: its states are fixed."""

    model_config = _FROZEN

    tls_id: TlsId
    program_id: str = "0"
    mode: Mode = "fixed"
    offset_s: Seconds = 0
    phases: tuple[BasePhase, ...] = Field(min_length=2, max_length=64)

    @classmethod
    def from_sumo(
        cls,
        tls_id: str,
        program_id: str,
        phases: Sequence[tuple[str, float, float | None, float | None]],
        offset_s: float = 0,
        mode: Mode = "fixed",
        pedestrian_phases: Collection[int] = (),
    ) -> BaseProgram:
        """Build a base program from SUMO phases ``(state, duration, minDur, maxDur)``.

        Durations are rounded to whole seconds (at least 1 s). ``minDur``/``maxDur``
        are kept only for actuated programs and only where they differ from the
        duration.
        """
        built: list[BasePhase] = []
        for index, (state, duration, min_dur, max_dur) in enumerate(phases):
            kind = classify_state(state)
            keep_bounds = mode != "fixed" and kind == "green"
            built.append(
                BasePhase(
                    state=state,
                    duration_s=max(1, round(duration)),
                    kind=kind,
                    min_s=max(1, round(min_dur)) if keep_bounds and min_dur is not None else None,
                    max_s=max(1, round(max_dur)) if keep_bounds and max_dur is not None else None,
                    serves_pedestrians=index in pedestrian_phases,
                )
            )
        cycle = sum(p.duration_s for p in built)
        return cls(
            tls_id=tls_id,
            program_id=program_id,
            mode=mode,
            offset_s=round(offset_s) % cycle,
            phases=tuple(built),
        )

    @property
    def green_indices(self) -> tuple[int, ...]:
        """Indices of the green phases, in program order."""
        return tuple(i for i, p in enumerate(self.phases) if p.kind == "green")

    @property
    def cycle_s(self) -> int:
        """The base program's cycle length."""
        return sum(p.duration_s for p in self.phases)


# --------------------------------------------------------------------------- plans


class PhasePlan(BaseModel):
    """One phase of a deployed plan: the base state with a new duration."""

    model_config = _FROZEN

    state: SignalState
    duration_s: PositiveSeconds
    min_s: PositiveSeconds | None = None
    max_s: PositiveSeconds | None = None


Weight = Annotated[float, Field(ge=0.25, le=4.0, allow_inf_nan=False)]


class AdaptiveLogic(BaseModel):
    """The parameters of an adaptive plan's real-time logic (what the policy tunes).

    Each second the controller compares the *pressure* of the green it shows
    with that of the greens it may switch to: for a green, the weighted sum
    over the movements it serves of the vehicles on the movement's approach
    lane minus ``downstream_weight`` times the vehicles halting on its exit
    lane. Bounds that no parameter can move: the green's ``min_s`` (walk +
    clearance included) and ``max_s`` against a waiting call, the base
    program's own yellow and all-red after every green that ends, and only
    successors that the base program's transitions lead to safely
    (:func:`configs.safety.successor_paths`).
    """

    model_config = _FROZEN

    green_weights: tuple[Weight, ...] = Field(
        min_length=1,
        max_length=64,
        description="Multiplier of each green's pressure, in the base program's green order.",
    )
    switch_margin_veh: Annotated[float, Field(ge=0.0, le=30.0, allow_inf_nan=False)] = Field(
        4.0,
        description="A competing green must exceed the shown green's pressure by this much.",
    )
    downstream_weight: Annotated[float, Field(ge=0.0, le=1.0, allow_inf_nan=False)] = Field(
        0.5, description="Weight of the queue on the exit lanes (spill-back protection)."
    )
    skip: bool = Field(
        True,
        description=(
            "Greens without a call may be skipped (to a successor the base program's "
            "transitions lead to safely); false serves every green in the base order."
        ),
    )

    coordinated: bool = Field(
        False,
        description=(
            "Coordination: every cycle of the plan's cycle_s, at the point offset_s puts the "
            "first green's start, that green is called first (the green shown ends once its "
            "min_s is served) and then held for its planned duration_s."
        ),
    )

    @classmethod
    def default(cls, greens: int) -> AdaptiveLogic:
        """Equal weights for ``greens`` greens, the default margin and skipping."""
        return cls(green_weights=(1.0,) * greens)


class IntersectionTiming(BaseModel):
    """The timing of one traffic light in a deployment."""

    model_config = _FROZEN

    mode: Mode
    cycle_s: PositiveSeconds
    offset_s: Seconds
    phases: tuple[PhasePlan, ...] = Field(min_length=2, max_length=64)
    adaptive: AdaptiveLogic | None = Field(
        None, description="The real-time parameters of an adaptive plan (absent otherwise)."
    )

    @model_serializer(mode="wrap")
    def _omit_absent_logic(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        # plans of the other modes serialise exactly as before the adaptive mode existed,
        # so digests of documents already signed and recorded do not change
        data: dict[str, Any] = handler(self)
        if data.get("adaptive") is None:
            data.pop("adaptive", None)
        return data

    @classmethod
    def from_base(cls, base: BaseProgram) -> IntersectionTiming:
        """The base program itself, as a plan."""
        return cls(
            mode=base.mode,
            cycle_s=base.cycle_s,
            offset_s=base.offset_s,
            phases=tuple(
                PhasePlan(state=p.state, duration_s=p.duration_s, min_s=p.min_s, max_s=p.max_s)
                for p in base.phases
            ),
            adaptive=(
                AdaptiveLogic.default(len(base.green_indices)) if base.mode == "adaptive" else None
            ),
        )

    def green_durations(self, base: BaseProgram) -> tuple[int, ...]:
        """Durations of the green phases (in the base program's green order)."""
        return tuple(self.phases[i].duration_s for i in base.green_indices if i < len(self.phases))


class NetworkRef(BaseModel):
    """Which network a plan is for: its id and the sha256 of its .net.xml."""

    model_config = _FROZEN

    id: Annotated[str, Field(min_length=1, max_length=200)]
    sha256: Sha256Hex


Fraction = Annotated[float, Field(ge=-10.0, le=10.0, allow_inf_nan=False)]


class Prediction(BaseModel):
    """Predicted change against the current plan (relative fractions; negative = lower)."""

    model_config = _FROZEN

    wait_change: Fraction = Field(description="Relative change of mean waiting time (fraction).")
    wait_change_ci: tuple[Fraction, Fraction]
    nox_change: Fraction = Field(description="Relative change of total NOx (fraction).")
    nox_change_ci: tuple[Fraction, Fraction]
    horizon_s: PositiveSeconds | Annotated[int, Field(gt=3600, le=86400)]
    seeds: tuple[Annotated[int, Field(ge=0, le=2**31 - 1)], ...] = Field(min_length=1)


class Evidence(BaseModel):
    """Digests of what the decision rests on."""

    model_config = _FROZEN

    video_sha256: Sha256Hex | None = None
    policy_sha256: Sha256Hex | None = None
    demand_sha256: Sha256Hex


def _utc(value: datetime) -> datetime:
    if value.tzinfo is None:
        raise ValueError("timestamps must carry a timezone (UTC)")
    return value.astimezone(UTC).replace(microsecond=0)


class TimingConfiguration(BaseModel):
    """One deployment: the document that is signed, pushed and recorded."""

    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)

    schema_: Literal["signaltwin.timing/v1"] = Field(SCHEMA, alias="schema")
    network: NetworkRef
    sequence: Annotated[int, Field(ge=1, le=2**53)]
    issued_at: datetime
    valid_from: datetime
    valid_until: datetime
    predicted: Prediction
    evidence: Evidence
    intersections: dict[TlsId, IntersectionTiming] = Field(min_length=1, max_length=5000)
    intent: Literal["deploy", "shadow"] = Field(
        "deploy",
        description=(
            "What the plan was signed for: 'deploy' (a production envelope) or 'shadow' "
            "(signed in shadow mode for the record; controllers refuse it)."
        ),
    )

    @field_validator("issued_at", "valid_from", "valid_until")
    @classmethod
    def _timestamps_utc(cls, value: datetime) -> datetime:
        return _utc(value)

    @field_serializer("issued_at", "valid_from", "valid_until")
    def _timestamps_iso(self, value: datetime) -> str:
        return value.strftime("%Y-%m-%dT%H:%M:%SZ")

    @model_validator(mode="after")
    def _window_ordered(self) -> TimingConfiguration:
        if self.valid_until <= self.valid_from:
            raise ValueError("valid_until must be after valid_from")
        return self

    def to_dict(self) -> dict[str, Any]:
        """The document as plain JSON data (the ``schema`` key spelt as on the wire)."""
        data: dict[str, Any] = self.model_dump(mode="json", by_alias=True)
        return data

    def canonical_bytes(self) -> bytes:
        """The canonical serialisation (what is signed)."""
        return canonical_json(self.to_dict())

    def digest(self) -> str:
        """Hex sha256 of :meth:`canonical_bytes`."""
        return sha256_hex(self.canonical_bytes())

    @classmethod
    def parse(cls, data: bytes) -> TimingConfiguration:
        """Parse untrusted bytes strictly; raise :class:`ConfigError` naming the field."""
        raw = read_document(data)
        try:
            return cls.model_validate(raw)
        except ValidationError as e:
            raise ConfigError(f"timing document invalid: {_describe(e)}") from e


def read_document(data: bytes) -> dict[str, Any]:
    """The JSON object of an untrusted timing document, before schema validation.

    Bounded in size and read with :func:`configs.digests.strict_json_loads`
    (no duplicate keys, no NaN), as the daemon, a controller and an auditor must.

    Raises:
        ConfigError: too large, not strict UTF-8 JSON, or not a JSON object.
    """
    if len(data) > MAX_DOCUMENT_BYTES:
        raise ConfigError(
            f"timing document is {len(data)} bytes; the limit is {MAX_DOCUMENT_BYTES}"
        )
    try:
        raw = strict_json_loads(data)
    except ValueError as e:
        raise ConfigError(f"timing document is not strict UTF-8 JSON: {e}") from e
    if not isinstance(raw, dict):
        raise ConfigError("timing document must be a JSON object")
    return raw


def _describe(error: ValidationError) -> str:
    parts = []
    for item in error.errors()[:5]:
        where = ".".join(str(p) for p in item["loc"]) or "(document)"
        parts.append(f"{where}: {item['msg']}")
    return "; ".join(parts)
