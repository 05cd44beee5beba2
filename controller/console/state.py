"""The console's state: the ledger's digest joined with what the daemon reported.

:class:`LiveCycles` holds what the daemon itself told (the cycle running now, and
each finished cycle's report, complete even where its ledger record is not);
:func:`build_state` joins it with the :class:`~controller.console.digest.LedgerDigest`
into the one :class:`~controller.console.views.ConsoleState` the page draws.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass, replace
from datetime import UTC, datetime

from controller.console.digest import LedgerDigest, slot_key
from controller.console.views import (
    ConsoleContext,
    ConsoleState,
    ControllerHealth,
    CycleView,
    IntersectionView,
    PlanStatus,
)
from controller.contracts import ComponentHealth, CycleReportLike

__all__ = ["LiveCycles", "build_state"]


@dataclass(frozen=True)
class _LiveReport:
    slot_time: datetime
    report: CycleReportLike
    result: str
    duration_s: float


class LiveCycles:
    """What the daemon told about its cycles (not thread-safe: the feed locks around it)."""

    def __init__(self, kept: int = 20) -> None:
        self._kept = kept
        self.running: datetime | None = None
        self.running_since: datetime | None = None
        self.finished: OrderedDict[str, _LiveReport] = OrderedDict()
        self.last_finished_at: datetime | None = None

    def started(self, slot_time: datetime, now: datetime) -> None:
        """A cycle began."""
        self.running, self.running_since = slot_time, now

    def finished_cycle(
        self,
        slot_time: datetime,
        report: CycleReportLike,
        result: str,
        duration_s: float,
        now: datetime,
    ) -> None:
        """A cycle ended."""
        self.running = self.running_since = None
        key = slot_time.isoformat()
        self.finished[key] = _LiveReport(slot_time, report, result, duration_s)
        self.finished.move_to_end(key)
        while len(self.finished) > self._kept:
            self.finished.popitem(last=False)
        self.last_finished_at = now


def _merge_live(view: CycleView | None, live: _LiveReport) -> CycleView:
    """The ledger's view of a cycle completed with what the daemon reported of it."""
    report = live.report
    stage_s = dict(report.stage_s)
    base = view or CycleView(
        cycle_id=live.slot_time.isoformat(),
        outcome=live.result,
        slot_time=live.slot_time.isoformat(),
        decision=report.decision,
    )
    if view is not None and len(view.stage_s) > len(stage_s):
        stage_s = dict(view.stage_s)
    return CycleView(
        cycle_id=base.cycle_id,
        outcome=base.outcome,
        slot_time=base.slot_time,
        ledger_index=base.ledger_index,
        decision=report.decision if report.decision != "none" else base.decision,
        chosen=base.chosen,
        basis=base.basis,
        candidates=base.candidates,
        held=base.held or getattr(report, "held", None),
        reason=base.reason,
        failed_stage=getattr(report, "failed_stage", None) or base.failed_stage,
        error=report.error or base.error,
        stage_s=stage_s,
        duration_s=live.duration_s,
        sequence=report.sequence if report.sequence is not None else base.sequence,
        result=live.result,
        min_wait_reduction=base.min_wait_reduction,
        max_nox_increase=base.max_nox_increase,
        video=base.video,
    )


def build_state(
    context: ConsoleContext,
    digest: LedgerDigest,
    live: LiveCycles,
    *,
    ledger_problem: str | None = None,
    now: datetime | None = None,
) -> ConsoleState:
    """Join the ledger's digest and the daemon's reports into the page's state."""
    cycles: dict[str, CycleView] = dict(digest.cycles)
    for key, report in live.finished.items():
        cycles[key] = _merge_live(cycles.get(key), report)
    by_cycle_index = {
        d.cycle_index: d for d in digest.deployments.values() if d.cycle_index is not None
    }
    shown = []
    for view in sorted(cycles.values(), key=slot_key, reverse=True)[: context.cycles_shown]:
        index = view.ledger_index
        deployment = by_cycle_index.get(index) if index is not None else None
        if deployment is not None and view.result is None:
            # a cycle recorded as "pushing": its deployment record says how the push ended
            view = replace(view, result=deployment.result)
        shown.append(view)
    health = _health(context, digest, live)
    deployments = tuple(reversed(digest.deployments.values()))
    return ConsoleState(
        context=context,
        network_id=digest.network_id or context.network_id,
        mode=digest.mode or context.mode,
        cycles=tuple(shown),
        deployments=deployments,
        intersections=_intersections(context, digest, health),
        controllers=health,
        video=digest.video,
        running=live.running,
        running_since=live.running_since,
        ledger_records=digest.last_index,
        ledger_problem=ledger_problem,
        generated_at=now or datetime.now(UTC),
        unreadable=digest.unreadable,
    )


def _health(context: ConsoleContext, digest: LedgerDigest, live: LiveCycles) -> ControllerHealth:
    up: dict[str, bool] = {}
    errors: dict[str, int] = {}
    observed = None
    if digest.observed is not None:
        up.update(digest.observed.up)
        errors.update(digest.observed.errors)
        observed = digest.observed.cycle_id
    newest = next(reversed(live.finished.values()), None)
    if newest is not None and isinstance(newest.report, ComponentHealth):
        key = newest.slot_time.isoformat()
        if newest.report.controllers_up and (observed is None or key >= observed):
            up = dict(newest.report.controllers_up)
            errors = dict(newest.report.opcua_errors)
            observed = key
    names = _unique(context.controllers, up)
    return ControllerHealth(
        total=len(names),
        up=tuple(n for n in names if up.get(n) is True),
        down=tuple(n for n in names if up.get(n) is False),
        unknown=tuple(n for n in names if n not in up),
        errors={k: v for k, v in errors.items() if v},
        observed=observed,
    )


def _unique(first: Iterable[str], second: Iterable[str]) -> list[str]:
    seen: dict[str, None] = dict.fromkeys(first)
    seen.update(dict.fromkeys(sorted(second)))
    return list(seen)


def _intersections(
    context: ConsoleContext, digest: LedgerDigest, health: ControllerHealth
) -> tuple[IntersectionView, ...]:
    down, up = set(health.down), set(health.up)
    observed = digest.observed.active if digest.observed is not None else {}
    views = []
    for tls in _unique(context.intersections, digest.plans):
        plan = digest.plans.get(tls)
        status: PlanStatus = "unchanged"
        if plan is not None and plan.last_change is not None:
            latest = plan.last_change == digest.last_deployed
            status = "changed-latest" if latest else "changed-earlier"
        views.append(
            IntersectionView(
                id=tls,
                status=status,
                plan_sequence=max(observed.get(tls, 0), plan.sequence if plan else 0),
                last_change=plan.last_change if plan else None,
                mode=plan.plan.mode if plan else None,
                cycle_s=plan.plan.cycle_s if plan else None,
                offset_s=plan.plan.offset_s if plan else None,
                previous_cycle_s=plan.previous_cycle_s if plan else None,
                up=False if tls in down else True if tls in up else None,
            )
        )
    return tuple(views)
