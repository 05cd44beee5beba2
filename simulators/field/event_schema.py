"""The event day file's schema (``signaltwin.event-day/v1``): pydantic models, no I/O.

Shape and single-field rules live here (unknown keys refused, times ordered,
shares in (0, 1], exactly one way to pick faulty loops); what needs the network
(edges, lanes, zones, loops, times within the day) is checked by
:func:`simulators.field.event_day.load_event_day`.
"""

from __future__ import annotations

__all__ = [
    "EVENT_DAY_SCHEMA",
    "DetectorFaultEntry",
    "EventDayFile",
    "FieldSection",
    "IncidentEntry",
    "OdShiftEntry",
    "PulseEntry",
    "format_errors",
]

from typing import Annotated, Any, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

EVENT_DAY_SCHEMA = "signaltwin.event-day/v1"
"""The ``schema`` value every event day file carries."""

FieldTime = Annotated[float, Field(ge=0.0, allow_inf_nan=False)]
"""A field time in seconds (SUMO's clock)."""

_Edges = Annotated[list[Annotated[str, Field(min_length=1)]], Field(min_length=1)]


class _Entry(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class _Window(_Entry):
    from_s: FieldTime = Field(description="Field time the event begins (s).")
    to_s: FieldTime = Field(description="Field time it ends (s), after from_s.")

    @model_validator(mode="after")
    def _ordered(self) -> Self:
        if not self.from_s < self.to_s:
            raise ValueError(f"from_s ({self.from_s:g}) must be before to_s ({self.to_s:g})")
        return self


class FieldSection(_Entry):
    """``[field]``: the network, the hidden demand and the day's clock."""

    network: str = Field(
        "district",
        min_length=1,
        description="'district', a .net.xml path (relative to the file), or "
        "'sumo:game/<dir>/<file>.net.xml' inside the eclipse-sumo wheel.",
    )
    detectors: str | None = Field(
        None, description="E1 loops file (default: the district's, or generated)."
    )
    demand: str | Annotated[list[str], Field(min_length=1)] = Field(
        "district",
        description="'district' (its profile), a .demand.json profile, or .rou.xml file(s).",
    )
    seed: Annotated[int, Field(ge=0)] = Field(0, description="SUMO's and the expansion's seed.")
    begin_s: Annotated[int, Field(ge=0)] = Field(description="Field time at start (s).")
    duration_s: Annotated[int, Field(gt=0, le=86_400)] = Field(
        3600, description="The day's length (s)."
    )
    demand_scale: Annotated[float, Field(gt=0.0, le=10.0, allow_inf_nan=False)] = Field(
        1.0, description="Multiplier on the demand."
    )


class IncidentEntry(_Window):
    """``[[incident]]``: lanes (or a whole edge) closed for a while."""

    edge: str = Field(min_length=1, description="The edge.")
    lanes: Annotated[list[Annotated[int, Field(ge=0)]], Field(min_length=1)] | None = Field(
        None, description="Lane indices closed (0 = rightmost); omitted: the whole edge."
    )


class PulseEntry(_Window):
    """``[[pulse]]``: a special-event demand pulse between two zones."""

    origins: _Edges = Field(description="Fringe edges the extra trips start on.")
    destinations: _Edges = Field(description="Fringe edges they end on.")
    veh_per_h: Annotated[float, Field(gt=0.0, le=20_000.0, allow_inf_nan=False)] = Field(
        description="Mean arrival rate of the extra trips (vehicles per hour)."
    )


class OdShiftEntry(_Entry):
    """``[[od_shift]]``: the profile's OD pattern shifts (e.g. AM to PM)."""

    at_s: FieldTime = Field(description="Field time the shift begins (s).")
    over_s: Annotated[float, Field(ge=0.0, allow_inf_nan=False)] = Field(
        0.0, description="Seconds over which it phases in linearly (0: at once)."
    )
    kind: Literal["reverse", "reweight"] = Field(
        description="'reverse': trips run back (D -> O); 'reweight': zone weights multiplied."
    )
    origins: dict[str, Annotated[float, Field(gt=0.0, allow_inf_nan=False)]] = Field(
        default_factory=dict, description="reweight: origin edge -> weight factor."
    )
    destinations: dict[str, Annotated[float, Field(gt=0.0, allow_inf_nan=False)]] = Field(
        default_factory=dict, description="reweight: destination edge -> weight factor."
    )

    @model_validator(mode="after")
    def _factors(self) -> Self:
        if self.kind == "reverse" and (self.origins or self.destinations):
            raise ValueError("kind 'reverse' takes no origins/destinations factors")
        if self.kind == "reweight" and not (self.origins or self.destinations):
            raise ValueError("kind 'reweight' needs origins and/or destinations factors")
        return self


class DetectorFaultEntry(_Window):
    """``[[detector_fault]]``: loops that report wrong (the truth is untouched)."""

    kind: Literal["stuck", "dead", "noisy"] = Field(description="What the loops do.")
    detectors: Annotated[list[Annotated[str, Field(min_length=1)]], Field(min_length=1)] | None = (
        Field(None, description="The faulty loops by id.")
    )
    share: Annotated[float, Field(gt=0.0, le=1.0, allow_inf_nan=False)] | None = Field(
        None, description="Or: this share of all loops, picked with the seed."
    )
    noise: Annotated[float, Field(gt=0.0, le=5.0, allow_inf_nan=False)] | None = Field(
        None, description="noisy only: relative sd of the count factor (default 0.3)."
    )

    @model_validator(mode="after")
    def _pick(self) -> Self:
        if (self.detectors is None) == (self.share is None):
            raise ValueError("give exactly one of detectors = [...] or share = (0, 1]")
        if self.kind != "noisy" and self.noise is not None:
            raise ValueError(f"noise applies to kind 'noisy' only, not {self.kind!r}")
        if self.kind == "noisy" and self.noise is None:
            return self.model_copy(update={"noise": 0.3})
        return self


class EventDayFile(_Entry):
    """The whole file."""

    schema_: Literal["signaltwin.event-day/v1"] = Field(alias="schema")
    name: str = Field(pattern=r"^[a-z0-9][a-z0-9-]{0,63}$", description="The day's name.")
    description: str = ""
    field: FieldSection
    incident: list[IncidentEntry] = Field(default_factory=list)
    pulse: list[PulseEntry] = Field(default_factory=list)
    od_shift: list[OdShiftEntry] = Field(default_factory=list)
    detector_fault: list[DetectorFaultEntry] = Field(default_factory=list)


_MISSING = object()


def format_errors(error: ValidationError, raw: Any) -> str:
    """Pydantic's errors as ``key = value: what was expected`` lines."""
    lines = []
    for item in error.errors():
        loc = tuple("schema" if p == "schema_" else p for p in item["loc"])
        key = (
            "".join(
                f"[{p}]" if isinstance(p, int) else ("." if i else "") + str(p)
                for i, p in enumerate(loc)
            )
            or "(file)"
        )
        node: Any = raw
        for part in loc:
            if isinstance(node, dict) and part in node:
                node = node[part]
            elif isinstance(node, list) and isinstance(part, int) and part < len(node):
                node = node[part]
            else:
                node = _MISSING
                break
        shown = "(missing)" if node is _MISSING else repr(node)
        message = str(item["msg"]).removeprefix("Value error, ")
        if item["type"] == "extra_forbidden":
            message = "unknown key (see docs/field.md 'Event days' for the schema)"
        elif item["type"] == "missing":
            message = "required key is missing"
        elif item["type"] == "literal_error" and loc == ("schema",):
            message = f"expected {EVENT_DAY_SCHEMA!r}"
        lines.append(f"{key} = {shown}: {message}")
    return "invalid event day:\n  " + "\n  ".join(lines)
