"""The daemon's cycle on an in-process field, in field time: evaluation of the closed loop.

The demo runs the daemon against emulated OPC UA controllers in (scaled) real
time. Evaluation needs many field hours in minutes and the field's ground truth,
so this module runs the same :class:`~controller.cycle.CycleRunner` (twin,
proposer with screening, gate, HSM signing, ledger, feedback collector) against
a :class:`LockstepFleet`: the field emulator in this process, paused while a
cycle computes, behind one :class:`~actuation.core.ControllerCore` per light,
the controllers' own acceptance logic (signature, invariants, sequence,
activation rules) without the OPC UA transport. Between cycles the field runs
``schedule.interval_s`` field seconds as fast as it can.

What differs from the daemon in the street, plainly: no OPC UA (reads and the
two-phase push are direct calls into the controller cores), no wall-clock
schedule (a cycle happens every ``interval_s`` of field time and the field
waits for it, so a cycle never overruns its slot), and the field can be forked
at each activation for ground truth (:mod:`simulators.field.fork`), which a city
cannot do.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from actuation._verify import TrustedKeys
from actuation.core import ControllerCore, ControllerProvisioning
from actuation.persistence import ActiveRecord, ControllerMemory
from actuation.pool import aligned_activation_time
from configs.errors import SignaltwinError, SimulationError
from configs.outcomes import PushOutcome
from configs.settings import Settings
from configs.timing import IntersectionTiming, NetworkRef, SafetyLimits, TimingConfiguration
from controller.contracts import DeployOutcome, Observation, count_increase

if TYPE_CHECKING:
    from controller.wiring import Assembly
from simulators.field import FieldCounters, FieldEmulator, FieldSignals

__all__ = ["LockstepFleet", "LockstepTruth", "build_lockstep_runner", "controller_cores"]

logger = logging.getLogger(__name__)


class LockstepFleet:
    """The controllers of an in-process field, read and pushed by direct calls.

    Reads what the OPC UA controllers would report (the loops' cumulative counts
    as the field reports them, faults included; the last interval's
    measurements; the cumulative approach totals) and pushes through each
    light's :class:`ControllerCore`: stage everywhere, abort everywhere unless
    all staged, activate at one aligned field time, read back.

    Args:
        field: the started field emulator.
        cores: tls id -> the controller core driving that light.
        lead_s: least field time from now to an activation.
    """

    def __init__(
        self, field: FieldEmulator, cores: Mapping[str, ControllerCore], lead_s: float
    ) -> None:
        self.field = field
        self.cores = dict(cores)
        self.lead_s = lead_s
        self._previous: dict[str, int] | None = None
        self._previous_time_s = 0.0

    def prime(self) -> None:
        """Take the baseline observation (counts start from here)."""
        self.observe()

    def observe(self) -> Observation:
        """Every controller's report; counts are the increase since the last observation."""
        field_time = self.field.field_time_s
        cumulative = {d: r.count for d, r in self.field.detector_counts().readings.items()}
        counts: dict[str, float] = {}
        interval = 0.0
        if self._previous is not None:
            interval = field_time - self._previous_time_s
            counts = count_increase(self._previous, cumulative)
        self._previous, self._previous_time_s = cumulative, field_time
        measured = self.field.measurements().intersections
        return Observation(
            field_time_s=field_time,
            counts=counts,
            interval_s=max(0.0, interval),
            active={
                t: (core.state.active_sequence, core.state.active_digest)
                for t, core in sorted(self.cores.items())
            },
            measurements={
                t: (m.mean_wait_s, m.nox_mg) for t, m in sorted(measured.items()) if t in self.cores
            },
            counters=self.field.counters(),
        )

    def read_counters(self) -> FieldCounters:
        """The controllers' cumulative totals now (the feedback collector's reading)."""
        return self.field.counters()

    def deploy(self, envelope: bytes, config: TimingConfiguration, align_s: int) -> DeployOutcome:
        """Two-phase push through the controller cores (aborted everywhere unless all staged)."""
        targets = sorted(config.intersections)
        rows: dict[str, dict[str, Any]] = {}
        staged_ok = True
        for tls in targets:
            core = self.cores.get(tls)
            if core is None:
                rows[tls] = {"error": "no controller for this light"}
                staged_ok = False
                continue
            result = core.stage(envelope)
            rows[tls] = {"stage": result.to_dict()}
            staged_ok = staged_ok and result.ok
        if not staged_ok:
            for tls in targets:
                core = self.cores.get(tls)
                if core is not None and core.state.staged is not None:
                    rows[tls]["abort"] = core.abort(config.sequence).to_dict()
            failed = sorted(t for t, r in rows.items() if "error" in r or not _ok(r, "stage"))
            return DeployOutcome(
                outcome=PushOutcome.ABORTED,
                errors={t: str(rows[t]) for t in failed},
                message=f"staging refused at {len(failed)} controller(s): {', '.join(failed[:5])}",
                push_record={"controllers": rows},
            )
        now = self.field.field_time_s
        at = aligned_activation_time(now, self.lead_s, float(align_s))
        running: set[str] = set()
        for tls in targets:
            result = self.cores[tls].activate(config.sequence, at)
            rows[tls]["activate"] = result.to_dict()
            if result.ok and self.cores[tls].state.active_sequence == config.sequence:
                running.add(tls)
        outcome = (
            PushOutcome.ACTIVATED
            if len(running) == len(targets)
            else (PushOutcome.PARTIAL if running else PushOutcome.ABORTED)
        )
        return DeployOutcome(
            outcome=outcome,
            running=frozenset(running),
            errors={t: str(rows[t]) for t in targets if t not in running},
            message="" if outcome == PushOutcome.ACTIVATED else "activation refused somewhere",
            activate_at_field_time_s=at,
            push_record={"activate_at_field_time_s": at, "controllers": rows},
        )

    def plans_in_force(self) -> dict[str, IntersectionTiming]:
        """What each controller runs now (its active timing)."""
        return {
            t: core.state.active_timing
            for t, core in sorted(self.cores.items())
            if core.state.active_timing is not None
        }

    def close(self) -> None:
        """Nothing to close (the field belongs to the caller)."""


def _ok(row: Mapping[str, Any], key: str) -> bool:
    entry = row.get(key)
    return isinstance(entry, Mapping) and entry.get("status") == 0


def controller_cores(
    field: FieldEmulator,
    *,
    trusted: TrustedKeys,
    limits_for: Callable[[str], SafetyLimits],
    network: NetworkRef,
    state_dir: Path,
) -> dict[str, ControllerCore]:
    """One controller core per light of ``field``, provisioned as the OPC UA controllers are."""
    signals = FieldSignals(field)
    return {
        tls: ControllerCore(
            ControllerProvisioning(
                tls_id=tls,
                base=base,
                limits=limits_for(tls),
                network=network,
                trusted_keys=trusted,
                state_dir=state_dir,
            ),
            signals,
        )
        for tls, base in sorted(field.network.base_programs().items())
    }


def build_lockstep_runner(
    settings: Settings,
    field: FieldEmulator,
    *,
    start_plans: Mapping[str, IntersectionTiming] | None = None,
    truth: LockstepTruth | None = None,
) -> Assembly:
    """The daemon's runner (:func:`controller.wiring.assemble_runner`) over ``field``.

    Everything but the fleet is built from ``settings`` exactly as the daemon
    builds it; the fleet is a :class:`LockstepFleet` whose controller cores trust
    the HSM's key.

    Args:
        settings: the daemon's settings (``simulation.network`` the field's network).
        field: the started field emulator.
        start_plans: plans the lights run when the loop takes over (e.g. the
            bureau's actuated plans): applied to the field now, remembered by
            each controller as its active plan (sequence 0) and taken by the
            cycle as the current plan. None: the network's base programs.
        truth: evaluation's ground truth (forks at each activation).
    """
    from controller.wiring import assemble_runner

    controllers_dir = settings.state_dir / "controllers"
    if start_plans:
        now = field.field_time_s
        for tls, plan in sorted(start_plans.items()):
            ControllerMemory(controllers_dir, tls).save(
                ActiveRecord(sequence=0, digest="", from_s=now, timing=plan)
            )
            field.apply(tls, plan, now)

    def fleet(signer: Any, ref: NetworkRef) -> LockstepFleet:
        cores = controller_cores(
            field,
            trusted=TrustedKeys.from_pem([signer.public_key_pem()]),
            limits_for=settings.safety.limits_for,
            network=ref,
            state_dir=controllers_dir,
        )
        return LockstepFleet(field, cores, settings.controllers.activate_lead_s)

    assembly = assemble_runner(settings, field.network, fleet, truth=truth)
    if start_plans:
        assembly.runner.current.update(start_plans)
    return assembly


class _TruthRequest:
    """A fork asked for at an activation the field has not reached yet."""

    def __init__(
        self,
        sequence: int,
        at_s: float,
        in_force: Mapping[str, IntersectionTiming],
        previous: Mapping[str, IntersectionTiming],
        window_s: float,
    ) -> None:
        self.sequence = sequence
        self.at_s = at_s
        self.in_force = dict(in_force)
        self.previous = dict(previous)
        self.window_s = window_s
        self.fork: Any | None = None
        self.error: Exception | None = None

    def done(self) -> bool:
        """Whether :meth:`result` answers without waiting."""
        if self.error is not None:
            return True
        return self.fork is not None and bool(self.fork.done())

    def result(self) -> Any:
        """The true delta (:class:`simulators.field.fork.TrueDelta`)."""
        if self.error is not None:
            raise self.error
        if self.fork is None:
            raise SimulationError(
                f"plan {self.sequence}: the field has not reached its activation at "
                f"t={self.at_s:.0f} s yet"
            )
        return self.fork.result()


class LockstepTruth:
    """The truth port over the lockstep field: forks it exactly at each activation.

    The collector asks when the push returns (before the activation time); the
    fork starts when :meth:`advance` brings the field to the activation, after
    the plans took effect, so the shadows fork the city at the moment the
    deployment began.
    """

    def __init__(self, field: FieldEmulator, work_dir: Path) -> None:
        self.field = field
        self.work_dir = work_dir
        self._waiting: list[_TruthRequest] = []
        self._started: list[_TruthRequest] = []

    def start(
        self,
        *,
        sequence: int,
        activate_at_field_time_s: float,
        in_force: Mapping[str, IntersectionTiming],
        previous: Mapping[str, IntersectionTiming],
        window_s: float,
    ) -> _TruthRequest:
        """Remember the fork for when the field reaches the activation."""
        request = _TruthRequest(sequence, activate_at_field_time_s, in_force, previous, window_s)
        self._waiting.append(request)
        self._waiting.sort(key=lambda r: r.at_s)
        return request

    def advance(self, until_s: float) -> float:
        """Step the field to ``until_s``, forking it at each activation on the way."""
        from simulators.field.fork import FieldFork

        while self._waiting and self._waiting[0].at_s <= until_s + 1e-9:
            request = self._waiting.pop(0)
            self.field.step_until(request.at_s)
            try:
                request.fork = FieldFork.start(
                    self.field,
                    request.in_force,
                    request.previous,
                    request.window_s,
                    work_dir=self.work_dir,
                )
                self._started.append(request)
            except SignaltwinError as e:
                logger.warning("plan %d: no ground truth: %s", request.sequence, e)
                request.error = e
        return self.field.step_until(until_s)

    def settle(self, now_s: float, timeout_s: float = 600.0) -> None:
        """Wait for the forks whose window has ended by field time ``now_s``.

        The field runs faster than the shadows here; the collector measures a
        window once the field has passed it, and should find its truth ready.
        """
        for request in list(self._started):
            if request.at_s + request.window_s <= now_s + 1e-9:
                self._started.remove(request)
                if request.fork is None:
                    continue
                try:
                    request.fork.result(timeout_s)
                except SignaltwinError as e:
                    logger.warning("plan %d: ground truth failed: %s", request.sequence, e)
