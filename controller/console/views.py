"""The operator console's data model: what the page draws, as typed values with JSON forms.

Every view is a frozen dataclass with ``to_dict`` (plain JSON data): the cycles
with their stage times and the gate's candidates, the deployments with predicted
against measured changes, the intersections with the plan in force, the
controllers' health, all joined in one :class:`ConsoleState`. Numbers are checked
to be finite where they are read (:func:`finite`), so the JSON has no NaN.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal
from urllib.parse import quote

from controller.contracts import STAGES

__all__ = [
    "CandidateView",
    "ConsoleContext",
    "ConsoleState",
    "ControllerHealth",
    "CycleView",
    "DeploymentView",
    "Interval",
    "IntersectionView",
    "PlanStatus",
    "finite",
]

PlanStatus = Literal["changed-latest", "changed-earlier", "unchanged"]
"""How an intersection's plan in force came about (its colour on the map)."""


def finite(value: object) -> float | None:
    """``value`` as a float when it is a finite number (not a bool), else None."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    number = float(value)
    return number if math.isfinite(number) else None


@dataclass(frozen=True)
class Interval:
    """A predicted or measured change with its confidence interval (fractions, - = lower)."""

    mean: float
    low: float
    high: float

    @classmethod
    def of(cls, mean: object, ci: object) -> Interval | None:
        """From a mean and a ``[low, high]`` pair; None when either is not a finite number."""
        m = finite(mean)
        if m is None:
            return None
        bounds = (
            [finite(v) for v in ci] if isinstance(ci, list | tuple) and len(ci) == 2 else [m, m]
        )
        low, high = bounds
        if low is None or high is None:
            return None
        return cls(m, min(low, high), max(low, high))

    def to_dict(self) -> dict[str, float]:
        """Plain data."""
        return {"mean": self.mean, "low": self.low, "high": self.high}


def _interval_dict(value: Interval | None) -> dict[str, float] | None:
    return None if value is None else value.to_dict()


@dataclass(frozen=True)
class CandidateView:
    """One candidate the gate judged: its verdict, reasons and predicted changes."""

    name: str
    verdict: str
    reasons: tuple[str, ...]
    wait: Interval | None
    nox: Interval | None
    failed: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """Plain data."""
        return {
            "name": self.name,
            "verdict": self.verdict,
            "reasons": list(self.reasons),
            "wait": _interval_dict(self.wait),
            "nox": _interval_dict(self.nox),
            "failed": self.failed,
        }


@dataclass(frozen=True)
class CycleView:
    """One cycle as the console lists it."""

    cycle_id: str
    outcome: str
    slot_time: str | None = None
    ledger_index: int | None = None
    decision: str = "none"
    chosen: str | None = None
    basis: str | None = None
    candidates: tuple[CandidateView, ...] = ()
    held: str | None = None
    reason: str | None = None
    failed_stage: str | None = None
    error: str | None = None
    stage_s: Mapping[str, float] = field(default_factory=dict)
    duration_s: float | None = None
    sequence: int | None = None
    result: str | None = None
    min_wait_reduction: float | None = None
    max_nox_increase: float | None = None
    video: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """Plain data."""
        # in the cycle's order (the ledger's canonical JSON sorts them by name)
        order = {name: i for i, name in enumerate(STAGES)}
        stages = {
            k: v
            for k, v in sorted(self.stage_s.items(), key=lambda kv: order.get(kv[0], len(order)))
            if finite(v) is not None
        }
        return {
            "cycle_id": self.cycle_id,
            "slot_time": self.slot_time or self.cycle_id,
            "ledger_index": self.ledger_index,
            "outcome": self.outcome,
            "result": self.result,
            "decision": self.decision,
            "chosen": self.chosen,
            "basis": self.basis,
            "candidates": [c.to_dict() for c in self.candidates],
            "held": self.held,
            "reason": self.reason,
            "failed_stage": self.failed_stage,
            "error": self.error,
            "stage_s": stages,
            "total_s": self.duration_s if self.duration_s is not None else sum(stages.values()),
            "sequence": self.sequence,
            "min_wait_reduction": self.min_wait_reduction,
            "max_nox_increase": self.max_nox_increase,
        }


@dataclass(frozen=True)
class DeploymentView:
    """A deployment: what was predicted and what the field then showed."""

    ledger_index: int
    sequence: int
    result: str | None
    cycle_index: int | None
    predicted_wait: Interval | None
    predicted_nox: Interval | None
    measured_status: str = "pending"
    measured_wait: Interval | None = None
    measured_nox: Interval | None = None
    method: str | None = None
    note: str | None = None
    quantity: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """Plain data."""
        return {
            "ledger_index": self.ledger_index,
            "sequence": self.sequence,
            "result": self.result,
            "predicted_wait": _interval_dict(self.predicted_wait),
            "predicted_nox": _interval_dict(self.predicted_nox),
            "measured_status": self.measured_status,
            "measured_wait": _interval_dict(self.measured_wait),
            "measured_nox": _interval_dict(self.measured_nox),
            "method": self.method,
            "note": self.note,
            "quantity": self.quantity,
        }


@dataclass(frozen=True)
class IntersectionView:
    """One intersection on the map: the plan in force and its last change."""

    id: str
    status: PlanStatus
    plan_sequence: int = 0
    last_change: int | None = None
    mode: str | None = None
    cycle_s: int | None = None
    offset_s: int | None = None
    previous_cycle_s: int | None = None
    up: bool | None = None

    def to_dict(self) -> dict[str, Any]:
        """Plain data."""
        return {
            "id": self.id,
            "status": self.status,
            "plan_sequence": self.plan_sequence,
            "last_change": self.last_change,
            "mode": self.mode,
            "cycle_s": self.cycle_s,
            "offset_s": self.offset_s,
            "previous_cycle_s": self.previous_cycle_s,
            "up": self.up,
        }


@dataclass(frozen=True)
class ControllerHealth:
    """The controllers as the latest cycle found them."""

    total: int
    up: tuple[str, ...] = ()
    down: tuple[str, ...] = ()
    unknown: tuple[str, ...] = ()
    errors: Mapping[str, int] = field(default_factory=dict)
    observed: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """Plain data."""
        return {
            "total": self.total,
            "up": list(self.up),
            "down": list(self.down),
            "unknown": list(self.unknown),
            "errors": dict(sorted(self.errors.items())),
            "observed": self.observed,
        }


@dataclass(frozen=True)
class ConsoleContext:
    """What the console knows from the settings (the ledger's records take precedence)."""

    network_id: str
    mode: str
    interval_s: float
    controllers: tuple[str, ...]
    intersections: tuple[str, ...]
    min_wait_reduction: float
    max_nox_increase: float
    cycles_shown: int = 20


@dataclass(frozen=True)
class ConsoleState:
    """Everything the page draws, as one JSON document."""

    context: ConsoleContext
    network_id: str
    mode: str
    cycles: tuple[CycleView, ...]
    deployments: tuple[DeploymentView, ...]
    intersections: tuple[IntersectionView, ...]
    controllers: ControllerHealth
    video: tuple[str, str] | None
    running: datetime | None
    running_since: datetime | None
    ledger_records: int
    ledger_problem: str | None
    generated_at: datetime
    unreadable: int = 0

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON data (no NaN: every number was checked)."""
        video = None
        if self.video is not None:
            name, cycle_id = self.video
            video = {"name": name, "url": "/video/" + quote(name), "cycle_id": cycle_id}
        return {
            "schema": "signaltwin.console/v1",
            "network_id": self.network_id,
            "mode": self.mode,
            "interval_s": self.context.interval_s,
            "gate": {
                "min_wait_reduction": self.context.min_wait_reduction,
                "max_nox_increase": self.context.max_nox_increase,
            },
            "cycles": [c.to_dict() for c in self.cycles],
            "deployments": [d.to_dict() for d in self.deployments],
            "intersections": [i.to_dict() for i in self.intersections],
            "controllers": self.controllers.to_dict(),
            "video": video,
            "running": None if self.running is None else self.running.isoformat(),
            "running_since": (
                None if self.running_since is None else self.running_since.isoformat()
            ),
            "ledger": {
                "records": self.ledger_records,
                "problem": self.ledger_problem,
                "unreadable": self.unreadable,
            },
            "generated_at": self.generated_at.isoformat(),
        }
