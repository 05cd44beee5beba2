"""The timing configuration: what is signed, deployed and re-checked by controllers.

One JSON document per deployment (``signaltwin.timing/v1``), serialised
canonically (sorted keys, no insignificant whitespace, UTF-8) so that its sha256
digest is stable. Every duration is a whole number of seconds, as field
controllers count them.

The safety invariants live here, as pure functions, because three parties check
them independently: the cycle when it builds a plan, the signer before it signs,
and every controller before it accepts a plan. :func:`project` turns any proposal
(from the RL policy or a baseline) into the nearest plan that satisfies all of
them; proposals never bypass it.

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
``actuated_bounds``     actuated greens satisfy min green <= min_s <= duration <= max_s (min
                        green including walk + clearance where the green serves a crossing) and
                        the longest possible cycle stays within max_cycle_s; fixed plans carry
                        no min_s/max_s
"""

from __future__ import annotations

import json
import math
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any, Final, Literal, Protocol

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_serializer,
    field_validator,
    model_validator,
)

from configs.digests import canonical_json, sha256_hex
from configs.errors import ConfigError, SafetyViolation, Violation

__all__ = [
    "INVARIANTS",
    "SCHEMA",
    "BasePhase",
    "BaseProgram",
    "Evidence",
    "IntersectionTiming",
    "LimitsSource",
    "NetworkRef",
    "PhaseKind",
    "PhasePlan",
    "Prediction",
    "Proposal",
    "SafetyLimits",
    "TimingConfiguration",
    "canonical_json",
    "check_configuration",
    "check_intersection",
    "classify_state",
    "intersection_limits",
    "project",
    "project_plans",
    "require_safe",
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
)

PhaseKind = Literal["green", "yellow", "red"]
Mode = Literal["fixed", "actuated"]
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
            keep_bounds = mode == "actuated" and kind == "green"
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


class IntersectionTiming(BaseModel):
    """The timing of one traffic light in a deployment."""

    model_config = _FROZEN

    mode: Mode
    cycle_s: PositiveSeconds
    offset_s: Seconds
    phases: tuple[PhasePlan, ...] = Field(min_length=2, max_length=64)

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
        if len(data) > MAX_DOCUMENT_BYTES:
            raise ConfigError(
                f"timing document is {len(data)} bytes; the limit is {MAX_DOCUMENT_BYTES}"
            )
        try:
            raw = json.loads(data.decode("utf-8"), parse_constant=_reject_constant)
        except (UnicodeDecodeError, json.JSONDecodeError, ValueError) as e:
            raise ConfigError(f"timing document is not valid UTF-8 JSON: {e}") from e
        if not isinstance(raw, dict):
            raise ConfigError("timing document must be a JSON object")
        try:
            return cls.model_validate(raw)
        except ValidationError as e:
            raise ConfigError(f"timing document invalid: {_describe(e)}") from e


def _reject_constant(name: str) -> float:
    raise ValueError(f"{name} is not allowed in a timing document")


def _describe(error: ValidationError) -> str:
    parts = []
    for item in error.errors()[:5]:
        where = ".".join(str(p) for p in item["loc"]) or "(document)"
        parts.append(f"{where}: {item['msg']}")
    return "; ".join(parts)


# --------------------------------------------------------------------------- invariants


def check_intersection(
    tls_id: str,
    plan: IntersectionTiming,
    base: BaseProgram,
    limits: SafetyLimits,
    previous: IntersectionTiming | None = None,
) -> list[Violation]:
    """Every safety invariant broken by ``plan``; an empty list means it is safe."""
    found: list[Violation] = []

    def bad(invariant: str, message: str, phase: int | None = None) -> None:
        found.append(Violation(invariant, tls_id, message, phase))

    states = [p.state for p in plan.phases]
    base_states = [p.state for p in base.phases]
    if states != base_states:
        bad(
            "phase_states",
            f"phase states {states} differ from the approved base program {base_states}",
        )
        return found  # the remaining checks need phases that line up with the base

    for index, (phase, ref) in enumerate(zip(plan.phases, base.phases, strict=True)):
        if ref.kind == "green":
            if phase.duration_s < limits.min_green_s:
                bad("min_green", f"green {phase.duration_s} s < {limits.min_green_s} s", index)
            if ref.serves_pedestrians and phase.duration_s < limits.ped_green_s:
                bad(
                    "pedestrian_green",
                    f"green {phase.duration_s} s < walk + clearance {limits.ped_green_s} s",
                    index,
                )
        elif ref.kind == "yellow":
            if phase.duration_s < limits.min_yellow_s:
                bad("min_yellow", f"yellow {phase.duration_s} s < {limits.min_yellow_s} s", index)
        elif phase.duration_s < limits.min_red_clearance_s:
            bad(
                "min_red_clearance",
                f"red clearance {phase.duration_s} s < {limits.min_red_clearance_s} s",
                index,
            )
        floor = limits.ped_green_s if ref.serves_pedestrians else 0
        _check_actuated(plan.mode, ref.kind, phase, max(limits.min_green_s, floor), index, bad)

    total = sum(p.duration_s for p in plan.phases)
    if plan.cycle_s != total:
        bad("cycle_sum", f"cycle {plan.cycle_s} s != sum of durations {total} s")
    if not limits.min_cycle_s <= plan.cycle_s <= limits.max_cycle_s:
        bad(
            "cycle_range",
            f"cycle {plan.cycle_s} s outside [{limits.min_cycle_s}, {limits.max_cycle_s}] s",
        )
    if not 0 <= plan.offset_s < plan.cycle_s:
        bad("offset_range", f"offset {plan.offset_s} s not in [0, {plan.cycle_s}) s")
    if plan.mode == "actuated":
        longest = sum(
            (p.max_s or p.duration_s) if ref.kind == "green" else p.duration_s
            for p, ref in zip(plan.phases, base.phases, strict=True)
        )
        if longest > limits.max_cycle_s:
            bad("actuated_bounds", f"longest actuated cycle {longest} s > {limits.max_cycle_s} s")

    if previous is not None and [p.state for p in previous.phases] == base_states:
        change = abs(plan.cycle_s - previous.cycle_s)
        if change > limits.max_cycle_change_s:
            bad(
                "max_cycle_change",
                f"cycle changes by {change} s > {limits.max_cycle_change_s} s",
            )
        for index in base.green_indices:
            delta = abs(plan.phases[index].duration_s - previous.phases[index].duration_s)
            if delta > limits.max_split_change_s:
                bad(
                    "max_split_change",
                    f"green changes by {delta} s > {limits.max_split_change_s} s",
                    index,
                )
    return found


def _check_actuated(
    mode: Mode,
    kind: PhaseKind,
    phase: PhasePlan,
    min_green_s: int,
    index: int,
    bad: Any,
) -> None:
    """Check an actuated green's bounds; ``min_green_s`` includes walk + clearance.

    An actuated green can gap out at ``min_s``, so ``min_s`` itself must honour
    the pedestrian minimum of a green that serves a crossing, not only the
    nominal ``duration_s``.
    """
    has_bounds = phase.min_s is not None or phase.max_s is not None
    if mode == "fixed" or kind != "green":
        if has_bounds:
            bad("actuated_bounds", "min_s/max_s are only allowed on actuated greens", index)
        return
    if phase.min_s is None or phase.max_s is None:
        bad("actuated_bounds", "actuated greens need min_s and max_s", index)
        return
    if not min_green_s <= phase.min_s <= phase.duration_s <= phase.max_s:
        bad(
            "actuated_bounds",
            f"need {min_green_s} <= min_s ({phase.min_s}) <= duration "
            f"({phase.duration_s}) <= max_s ({phase.max_s})",
            index,
        )


def check_configuration(
    config: TimingConfiguration,
    bases: Mapping[str, BaseProgram],
    limits: SafetyLimits | LimitsSource,
    previous: Mapping[str, IntersectionTiming] | None = None,
) -> list[Violation]:
    """Every safety invariant broken anywhere in ``config``.

    An intersection without an approved base program is itself a violation
    (``phase_states``): nothing is deployed where the states cannot be checked.
    """
    found: list[Violation] = []
    for tls_id, plan in sorted(config.intersections.items()):
        base = bases.get(tls_id)
        if base is None:
            found.append(Violation("phase_states", tls_id, "no approved base program"))
            continue
        prior = previous.get(tls_id) if previous is not None else None
        found.extend(
            check_intersection(tls_id, plan, base, intersection_limits(limits, tls_id), prior)
        )
    return found


def require_safe(
    config: TimingConfiguration,
    bases: Mapping[str, BaseProgram],
    limits: SafetyLimits | LimitsSource,
    previous: Mapping[str, IntersectionTiming] | None = None,
) -> None:
    """Raise :class:`SafetyViolation` if ``config`` breaks any invariant."""
    found = check_configuration(config, bases, limits, previous)
    if found:
        raise SafetyViolation(found)


# --------------------------------------------------------------------------- projection


@dataclass(frozen=True)
class Proposal:
    """What a policy or baseline would like: greens, cycle and offset (any reals).

    ``green_s`` has one entry per green phase of the base program, in order.
    ``cycle_s=None`` keeps the sum of the proposed greens and fixed intervals;
    ``offset_s=None`` keeps the previous (or base) offset.
    """

    green_s: Sequence[float]
    cycle_s: float | None = None
    offset_s: float | None = None


def project(
    tls_id: str,
    proposal: Proposal,
    base: BaseProgram,
    limits: SafetyLimits,
    previous: IntersectionTiming | None = None,
) -> IntersectionTiming:
    """Return the plan nearest to ``proposal`` that satisfies every invariant.

    Yellow and red clearance intervals keep their base durations, raised to the
    minimums. Greens are bounded below by the minimum (pedestrian) green and, with
    a ``previous`` plan, to within ``max_split_change_s`` of it; the cycle is
    clamped to the range and the allowed change; the greens are then the
    least-squares nearest split of the available green time (water-filling),
    rounded to whole seconds without leaving their bounds.

    Raises:
        SafetyViolation: only when the limits themselves leave no safe plan
            (e.g. minimum greens that cannot fit within ``max_cycle_s``).
    """
    greens = base.green_indices
    if len(proposal.green_s) != len(greens):
        raise ConfigError(
            f"{tls_id}: proposal has {len(proposal.green_s)} greens, "
            f"the base program has {len(greens)}"
        )
    if not all(math.isfinite(g) for g in proposal.green_s):
        raise ConfigError(f"{tls_id}: proposal greens must be finite numbers")
    prior = previous
    if prior is not None and [p.state for p in prior.phases] != [p.state for p in base.phases]:
        prior = None

    fixed: dict[int, int] = {}
    for index, phase in enumerate(base.phases):
        if phase.kind == "yellow":
            fixed[index] = max(phase.duration_s, limits.min_yellow_s)
        elif phase.kind == "red":
            fixed[index] = max(phase.duration_s, limits.min_red_clearance_s, 1)
    fixed_total = sum(fixed.values())

    lo: list[int] = []
    hi: list[int] = []
    for index in greens:
        floor = limits.min_green_s
        if base.phases[index].serves_pedestrians:
            floor = max(floor, limits.ped_green_s)
        top = limits.max_cycle_s  # never binding beyond the cycle itself
        if prior is not None:
            before = prior.phases[index].duration_s
            floor = max(floor, before - limits.max_split_change_s)
            top = min(top, before + limits.max_split_change_s)
        lo.append(floor)
        hi.append(top)

    cycle_lo = max(limits.min_cycle_s, fixed_total + sum(lo))
    cycle_hi = min(limits.max_cycle_s, fixed_total + sum(hi))
    if prior is not None:
        cycle_lo = max(cycle_lo, prior.cycle_s - limits.max_cycle_change_s)
        cycle_hi = min(cycle_hi, prior.cycle_s + limits.max_cycle_change_s)
    if cycle_lo > cycle_hi or any(a > b for a, b in zip(lo, hi, strict=True)):
        raise SafetyViolation(
            [
                Violation(
                    "cycle_range",
                    tls_id,
                    f"no safe cycle: needs at least {cycle_lo} s but at most {cycle_hi} s "
                    "is allowed; check min greens, fixed intervals and the cycle limits",
                )
            ]
        )

    wanted = [max(0.0, float(g)) for g in proposal.green_s]
    target = proposal.cycle_s if proposal.cycle_s is not None else fixed_total + sum(wanted)
    if not math.isfinite(target):
        raise ConfigError(f"{tls_id}: proposal cycle must be a finite number")
    cycle = min(max(round(target), cycle_lo), cycle_hi)
    split = _water_fill(wanted, [float(v) for v in lo], [float(v) for v in hi], cycle - fixed_total)
    green_s = _round_preserving_sum(split, lo, hi, cycle - fixed_total)

    if proposal.offset_s is not None and math.isfinite(proposal.offset_s):
        offset = round(proposal.offset_s) % cycle
    else:
        offset = (prior.offset_s if prior is not None else base.offset_s) % cycle

    # actuated greens may extend into the headroom below max_cycle_s, shared evenly
    extension = (limits.max_cycle_s - cycle) // max(1, len(greens))
    phases: list[PhasePlan] = []
    green_iter = iter(green_s)
    for index, phase in enumerate(base.phases):
        if phase.kind == "green":
            duration = next(green_iter)
            if base.mode == "actuated":
                wanted_min = max(phase.min_s or limits.min_green_s, limits.min_green_s)
                if phase.serves_pedestrians:  # a gap-out at min_s must still clear the walk
                    wanted_min = max(wanted_min, limits.ped_green_s)
                phases.append(
                    PhasePlan(
                        state=phase.state,
                        duration_s=duration,
                        min_s=min(wanted_min, duration),
                        max_s=duration + extension,
                    )
                )
            else:
                phases.append(PhasePlan(state=phase.state, duration_s=duration))
        else:
            phases.append(PhasePlan(state=phase.state, duration_s=fixed[index]))
    plan = IntersectionTiming(mode=base.mode, cycle_s=cycle, offset_s=offset, phases=tuple(phases))
    found = check_intersection(tls_id, plan, base, limits, prior)
    if found:  # a bug in the projection must never become an unsafe plan
        raise SafetyViolation(found)
    return plan


def project_plans(
    proposals: Mapping[str, Proposal],
    bases: Mapping[str, BaseProgram],
    limits: SafetyLimits | LimitsSource,
    current: Mapping[str, IntersectionTiming] | None = None,
) -> dict[str, IntersectionTiming]:
    """Project a proposal per intersection onto its safe set (see :func:`project`).

    The one way proposals for several intersections become plans: each
    intersection gets its own limits (``limits.limits_for(tls_id)`` when given
    the settings' safety section, so per-intersection overrides apply) and is
    bounded by the plan it runs now, when ``current`` has one.

    Raises:
        ConfigError: a proposal names an intersection without a base program.
    """
    previous = current or {}
    plans: dict[str, IntersectionTiming] = {}
    for tls_id, proposal in proposals.items():
        base = bases.get(tls_id)
        if base is None:
            raise ConfigError(f"{tls_id}: proposal for an intersection without a base program")
        plans[tls_id] = project(
            tls_id, proposal, base, intersection_limits(limits, tls_id), previous.get(tls_id)
        )
    return plans


def _water_fill(want: list[float], lo: list[float], hi: list[float], total: float) -> list[float]:
    """Least-squares nearest ``x`` to ``want`` with ``lo <= x <= hi`` and ``sum(x) == total``.

    The solution is ``clip(want + shift, lo, hi)`` for the shift at which the sum
    reaches ``total``; that sum is piecewise linear and non-decreasing in the
    shift, with breakpoints where an entry meets a bound, so the shift is found
    exactly by interpolating between the two breakpoints that straddle ``total``.
    """

    def filled(shift: float) -> list[float]:
        return [min(max(w + shift, a), b) for w, a, b in zip(want, lo, hi, strict=True)]

    points = sorted(
        {a - w for w, a in zip(want, lo, strict=True)}
        | {b - w for w, b in zip(want, hi, strict=True)}
    )
    before: tuple[float, float] | None = None
    for point in points:
        reached = sum(filled(point))
        if reached >= total:
            if before is None or reached == before[1]:
                return filled(point)
            shift = before[0] + (total - before[1]) * (point - before[0]) / (reached - before[1])
            return filled(shift)
        before = (point, reached)
    return filled(points[-1]) if points else []


def _round_preserving_sum(x: list[float], lo: list[int], hi: list[int], total: int) -> list[int]:
    """Round to integers within bounds so that they sum to ``total`` (largest remainder)."""
    out = [min(max(math.floor(v), a), b) for v, a, b in zip(x, lo, hi, strict=True)]
    remainder = total - sum(out)
    order = sorted(range(len(x)), key=lambda i: x[i] - math.floor(x[i]), reverse=True)
    while remainder != 0:
        moved = False
        for i in order:
            if remainder > 0 and out[i] < hi[i]:
                out[i] += 1
                remainder -= 1
                moved = True
            elif remainder < 0 and out[i] > lo[i]:
                out[i] -= 1
                remainder += 1
                moved = True
            if remainder == 0:
                break
        if not moved:
            break
    return out
