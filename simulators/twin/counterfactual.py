"""The measured delta a real city can compute: the field after a deployment vs a counterfactual.

After a plan is deployed the field shows what happened under it, never what
would have happened under the previous plan. :func:`estimate_counterfactual`
estimates that from what a city has: the roadside totals of a window before the
activation and a window after it (:class:`simulators.field.WindowTotals`), and
the twin.

Method ``twin-ratio/v1`` (docs/feedback.md gives the reasoning and its limits):

1. The twin's demand for each window is estimated from that window's own
   detector counts (:class:`DemandSource`), optionally scaled by a calibration.
2. Before window: the previous plan on the twin over the window, seeds
   ``k``: ``B_k`` halting vehicle-seconds on the approaches.
3. After window: the previous plan and the deployed plan on the twin on the
   after-window's demand, same seeds (one paired what-if): ``P_k`` and ``D_k``.
4. The counterfactual field after-window under the previous plan is
   ``F_before * P_k / B_k``: the twin carries the change of demand between the
   windows, the field's before-window corrects the twin's level on that plan.
5. ``estimate_k = F_after / (F_before * P_k / B_k) - 1``; the estimate is the
   mean over seeds with a Student-t interval; NOx the same way.

The twin-only estimate ``D_k / P_k - 1`` (``model_change``) is reported too.
"""

from __future__ import annotations

__all__ = ["METHOD", "CounterfactualEstimate", "DemandSource", "estimate_counterfactual"]

import math
import os
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from configs.errors import ConfigError, SimulationError
from configs.timing import IntersectionTiming
from simulators.demand import (
    DemandEstimate,
    FleetLike,
    RoadGraph,
    candidate_routes,
    estimate_demand,
    scale_snapshot,
    write_routes,
)
from simulators.detector_health import repair_counts, repair_pieces
from simulators.stats import relative_change, t_interval
from simulators.twin.plans import CURRENT
from simulators.twin.pool import WhatIfEngine
from simulators.twin.request import WhatIfRequest
from simulators.twin.results import RunMetrics, WhatIfResult

if TYPE_CHECKING:  # only attributes are read: no import of the field at run time
    from simulators.field.records import WindowTotals

METHOD: Final = "twin-ratio/v1"
"""Name of the estimator recorded with every estimate."""

DEPLOYED: Final = "deployed"
"""Candidate name of the deployed plan in the after-window what-if."""

_ROUTES_MARGIN_S: Final = 60
"""Flows last this long past the horizon, so the last second is fully loaded."""


class DemandSource:
    """The twin's demand for one window of field time, from that window's detector counts.

    Wraps :func:`simulators.demand.estimate_demand` with what does not change
    between windows (the detector-to-lane map, the road graph, the candidate
    routes and the fleet) and writes content-addressed routes files.

    Args:
        detector_lanes: detector id -> lane id.
        graph: the network's road graph.
        directory: where routes files are written (created when needed).
        routes: candidate routes (default: :func:`simulators.demand.candidate_routes`).
        fleet: the HBEFA fleet mix (the settings' ``simulation.fleet``).
    """

    def __init__(
        self,
        detector_lanes: Mapping[str, str],
        graph: RoadGraph,
        *,
        directory: Path,
        routes: Sequence[Sequence[str]] | None = None,
        fleet: Sequence[FleetLike] | None = None,
    ) -> None:
        self.detector_lanes = dict(detector_lanes)
        self.graph = graph
        self.routes = tuple(
            tuple(r) for r in (routes if routes is not None else candidate_routes(graph))
        )
        self.fleet = list(fleet) if fleet else None
        self.directory = Path(directory)

    @classmethod
    def from_network(
        cls,
        net_file: Path,
        detector_lanes: Mapping[str, str],
        *,
        directory: Path,
        fleet: Sequence[FleetLike] | None = None,
    ) -> DemandSource:
        """Read the road graph of ``net_file`` and build its candidate routes (takes a moment).

        Raises:
            ConfigError: the network file is missing or not a SUMO network.
        """
        graph = RoadGraph.from_net_file(Path(net_file))
        return cls(detector_lanes, graph, directory=directory, fleet=fleet)

    def estimate(self, counts: Mapping[str, float], interval_s: float) -> DemandEstimate:
        """Estimate demand from ``counts`` over ``interval_s`` seconds.

        Raises:
            ConfigError: bad counts or interval.
            SimulationError: no count lies on the network's routes.
        """
        return estimate_demand(
            counts,
            interval_s,
            self.detector_lanes,
            self.graph,
            fleet=self.fleet,
            routes=self.routes,
        )

    def window_snapshot(
        self,
        window: WindowTotals,
        demand_scale: float = 1.0,
        reference: WindowTotals | None = None,
    ) -> dict[str, Any]:
        """The demand snapshot of a window's detector counts (scaled unless ``demand_scale`` is 1).

        With a ``reference`` window (the other window of the pair), loops whose
        count the reference says cannot be true are bridged
        (:func:`simulators.detector_health.repair_counts`) and the snapshot
        records them under ``detector_repairs``. A window cut into pieces at
        the readings inside it (:attr:`WindowTotals.detector_pieces`) is
        judged piece by piece (:func:`simulators.detector_health.repair_pieces`),
        so a loop that died part-way through is found too. A window cut into pieces at
        the readings inside it (:attr:`WindowTotals.detector_pieces`) is
        judged piece by piece (:func:`simulators.detector_health.repair_pieces`),
        so a loop that died part-way through is found too.

        Raises:
            SimulationError: the window counted no vehicle, or no count maps to the network.
            ConfigError: a negative count (a loop whose counter was reset) or a bad scale.
        """
        counts = {d: float(c) for d, c in window.detector_counts.items()}
        if not any(counts.values()):
            raise SimulationError(
                f"window [{window.begin_s:g}, {window.end_s:g}] s counted no vehicle on any "
                "detector; demand cannot be estimated from it (check the loops or use a "
                "longer window)"
            )
        repair = None
        if reference is not None and reference.duration_s > 0:
            rates = {
                d: max(float(c), 0.0) / reference.duration_s
                for d, c in reference.detector_counts.items()
            }
            # the reference is one window's counts: judged against their noise too
            exposure = dict.fromkeys(rates, reference.duration_s)
            if len(window.detector_pieces) > 1:
                # cut at the readings inside the window: a loop that died part-way
                # through still counts a share of the whole window, none of a piece
                repair = repair_pieces(window.detector_pieces, rates, reference_exposure_s=exposure)
                counts |= {d: used for d, (_, used) in repair.repaired.items()}
            else:
                repair = repair_counts(
                    counts, window.duration_s, rates, reference_exposure_s=exposure
                )
                counts = dict(repair.counts)
        snapshot = dict(self.estimate(counts, window.duration_s).snapshot)
        if repair is not None:
            snapshot = repair.record_in(snapshot)
        return snapshot if demand_scale == 1.0 else scale_snapshot(snapshot, demand_scale)

    def routes_file(self, snapshot: Mapping[str, Any], end_s: float) -> Path:
        """The routes file of ``snapshot`` with flows until ``end_s``, written once per content.

        Raises:
            ConfigError: the snapshot's digest does not match its content.
        """
        self.directory.mkdir(parents=True, exist_ok=True)
        path = self.directory / f"{snapshot['digest']}-{math.ceil(end_s)}.rou.xml"
        if not path.exists():
            tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
            write_routes(snapshot, tmp, end_s=math.ceil(end_s))
            tmp.replace(path)
        return path


@dataclass(frozen=True)
class CounterfactualEstimate:
    """The estimated field change of a deployment against the plan it replaced.

    Changes are fractions (``after / counterfactual - 1``; negative = better),
    over the approaches of the intersections the estimate covers.

    Attributes:
        wait_change: estimated change of approach halting vehicle-seconds.
        wait_ci: its two-sided t-interval over the twin's seeds.
        nox_change: estimated change of approach NOx.
        nox_ci: its interval.
        field_before_veh_s: measured halting vehicle-seconds, before window.
        field_after_veh_s: measured halting vehicle-seconds, after window.
        twin_before_veh_s: the twin, previous plan, before window (mean over seeds).
        twin_previous_after_veh_s: the twin, previous plan, after window (mean).
        twin_deployed_after_veh_s: the twin, deployed plan, after window (mean).
        gap_before: ``field_before / twin_before``: the twin's level error on
            the previous plan before activation (what calibration learns from).
        model_change: the twin-only estimate, mean over seeds of
            ``deployed / previous - 1`` on the after-window's demand.
        method: the estimator's name (:data:`METHOD`).
        seeds: the twin's seeds.
        field_before_nox_mg: measured approach NOx, before window (mg).
        field_after_nox_mg: measured approach NOx, after window (mg).
        intersections: the intersections the sums cover, sorted.
        window_s: length of each window (s).
        demand_scale: the calibration scale the twin's demand ran with.
        demand_digests: digests of the before- and after-window demand snapshots.
        detector_repairs: ``{"before": {detector: [counted, used]}, "after": ...}``,
            the loops bridged in each window (empty: none).
    """

    wait_change: float
    wait_ci: tuple[float, float]
    nox_change: float
    nox_ci: tuple[float, float]
    field_before_veh_s: float
    field_after_veh_s: float
    twin_before_veh_s: float
    twin_previous_after_veh_s: float
    twin_deployed_after_veh_s: float
    gap_before: float
    model_change: float
    method: str
    seeds: tuple[int, ...]
    field_before_nox_mg: float = 0.0
    field_after_nox_mg: float = 0.0
    intersections: tuple[str, ...] = ()
    window_s: float = 0.0
    demand_scale: float = 1.0
    demand_digests: tuple[str, str] = ("", "")
    detector_repairs: Mapping[str, Mapping[str, Sequence[float]]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON data (what the ledger records)."""
        return {
            "wait_change": self.wait_change,
            "wait_ci": list(self.wait_ci),
            "nox_change": self.nox_change,
            "nox_ci": list(self.nox_ci),
            "field_before_veh_s": self.field_before_veh_s,
            "field_after_veh_s": self.field_after_veh_s,
            "twin_before_veh_s": self.twin_before_veh_s,
            "twin_previous_after_veh_s": self.twin_previous_after_veh_s,
            "twin_deployed_after_veh_s": self.twin_deployed_after_veh_s,
            "gap_before": self.gap_before,
            "model_change": self.model_change,
            "method": self.method,
            "seeds": list(self.seeds),
            "field_before_nox_mg": self.field_before_nox_mg,
            "field_after_nox_mg": self.field_after_nox_mg,
            "intersections": list(self.intersections),
            "window_s": self.window_s,
            "demand_scale": self.demand_scale,
            "demand_digests": list(self.demand_digests),
            "detector_repairs": {
                w: {d: list(v) for d, v in sorted(r.items())}
                for w, r in sorted(self.detector_repairs.items())
            },
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> CounterfactualEstimate:
        """Inverse of :meth:`to_dict`.

        Raises:
            ConfigError: the data is not a recorded estimate.
        """
        try:
            wl, wh = data["wait_ci"]
            nl, nh = data["nox_ci"]
            before_digest, after_digest = data.get("demand_digests", ("", ""))
            return cls(
                wait_change=float(data["wait_change"]),
                wait_ci=(float(wl), float(wh)),
                nox_change=float(data["nox_change"]),
                nox_ci=(float(nl), float(nh)),
                field_before_veh_s=float(data["field_before_veh_s"]),
                field_after_veh_s=float(data["field_after_veh_s"]),
                twin_before_veh_s=float(data["twin_before_veh_s"]),
                twin_previous_after_veh_s=float(data["twin_previous_after_veh_s"]),
                twin_deployed_after_veh_s=float(data["twin_deployed_after_veh_s"]),
                gap_before=float(data["gap_before"]),
                model_change=float(data["model_change"]),
                method=str(data["method"]),
                seeds=tuple(int(s) for s in data["seeds"]),
                field_before_nox_mg=float(data.get("field_before_nox_mg", 0.0)),
                field_after_nox_mg=float(data.get("field_after_nox_mg", 0.0)),
                intersections=tuple(str(t) for t in data.get("intersections", ())),
                window_s=float(data.get("window_s", 0.0)),
                demand_scale=float(data.get("demand_scale", 1.0)),
                demand_digests=(str(before_digest), str(after_digest)),
                detector_repairs={
                    str(w): {str(d): [float(x) for x in v] for d, v in dict(r).items()}
                    for w, r in dict(data.get("detector_repairs") or {}).items()
                },
            )
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise ConfigError(
                f"malformed counterfactual estimate record: {type(e).__name__}: {e}"
            ) from e


def _check_inputs(
    before: WindowTotals,
    after: WindowTotals,
    only: frozenset[str] | None,
    seeds: Sequence[int],
    warmup_s: int,
    confidence_level: float,
    demand_scale: float,
    step_length_s: float,
) -> tuple[frozenset[str], int]:
    """Validate the estimator's inputs; return the intersections covered and the horizon (s)."""
    if not seeds or len(set(seeds)) != len(seeds):
        raise ConfigError(f"counterfactual seeds must be distinct and at least one (got {seeds})")
    if warmup_s < 0:
        raise ConfigError(f"counterfactual warmup_s must be >= 0 (got {warmup_s})")
    if not 0.0 < confidence_level < 1.0:
        raise ConfigError(f"confidence_level must be in (0, 1) (got {confidence_level})")
    if not (math.isfinite(demand_scale) and demand_scale > 0):
        raise ConfigError(f"demand_scale must be a positive finite number (got {demand_scale})")
    if not 0.0 < step_length_s <= 5.0:
        raise ConfigError(f"step_length_s must be in (0, 5] (got {step_length_s})")
    for label, window in (("before", before), ("after", after)):
        if not window.end_s > window.begin_s:
            raise SimulationError(
                f"{label} window [{window.begin_s:g}, {window.end_s:g}] s does not run "
                "forward; read its end counters after its begin counters"
            )
    if after.begin_s < before.end_s - 1e-9:
        raise SimulationError(
            f"after window begins at {after.begin_s:g} s, before the before window ends "
            f"({before.end_s:g} s); the windows must not overlap"
        )
    if abs(before.duration_s - after.duration_s) > step_length_s / 2:
        raise SimulationError(
            f"before window lasts {before.duration_s:g} s and after window {after.duration_s:g} s; "
            "compare windows of the same length"
        )
    horizon_s = round(after.duration_s)
    if horizon_s <= 0 or abs(after.duration_s - horizon_s) > 1e-6:
        raise SimulationError(
            f"window length {after.duration_s:g} s is not a whole number of seconds"
        )
    tls_before, tls_after = frozenset(before.halting_veh_s), frozenset(after.halting_veh_s)
    if tls_before != tls_after:
        raise SimulationError(
            "before and after windows cover different intersections: only before "
            f"{sorted(tls_before - tls_after)}, only after {sorted(tls_after - tls_before)}"
        )
    covered = tls_before if only is None else only
    if not covered:
        raise SimulationError("the windows cover no intersection; nothing to estimate")
    missing = sorted(covered - tls_before)
    if missing:
        raise SimulationError(
            f"intersections {missing} are not in the field windows (they cover "
            f"{sorted(tls_before)}); pass only= intersections the field measured"
        )
    for label, window in (("before", before), ("after", after)):
        if window.wait_veh_s(covered) < 0 or window.total_nox_mg(covered) < 0:
            raise SimulationError(f"{label} window has negative totals; its counters were reset")
    if before.wait_veh_s(covered) <= 0:
        raise SimulationError(
            f"no halting on the approaches of {sorted(covered)} in the before window "
            f"[{before.begin_s:g}, {before.end_s:g}] s: there is no level to correct the "
            "twin with; use a longer window or more intersections"
        )
    if before.total_nox_mg(covered) <= 0:
        raise SimulationError(
            f"no NOx on the approaches of {sorted(covered)} in the before window; "
            "check the field's emissions measurement"
        )
    return covered, horizon_s


def _runs(result: WhatIfResult, plan: str, label: str) -> dict[int, RunMetrics]:
    outcome = result.outcome(plan)
    if outcome.failed is not None:
        raise SimulationError(f"{label}: the twin's {plan!r} plan failed: {outcome.failed}")
    return {r.seed: r for r in outcome.runs}


def _positive(values: Sequence[float], what: str) -> None:
    if any(not v > 0 for v in values):
        raise SimulationError(
            f"the twin measured no {what} on some seed; the window is too short or the "
            "estimated demand too low to estimate a change"
        )


def estimate_counterfactual(
    engine: WhatIfEngine,
    *,
    network: Path,
    demand: DemandSource,
    before: WindowTotals,
    after: WindowTotals,
    previous: Mapping[str, IntersectionTiming],
    deployed: Mapping[str, IntersectionTiming],
    seeds: Sequence[int],
    warmup_s: int,
    confidence_level: float = 0.95,
    only: frozenset[str] | None = None,
    demand_scale: float = 1.0,
    step_length_s: float = 1.0,
    cancel: threading.Event | None = None,
) -> CounterfactualEstimate:
    """Estimate the field change the deployed plan made, against the previous plan.

    Args:
        engine: the twin.
        network: the ``.net.xml`` the field runs.
        demand: turns a window's detector counts into the twin's demand.
        before: field totals of a window under ``previous``, ending at or before activation.
        after: field totals of a window of the same length under ``deployed``.
        previous: tls id -> plan in force before the activation (every light
            the twin should run as in the field).
        deployed: tls id -> plan activated (lights not listed keep ``previous``).
        seeds: the twin's seeds (paired across the plans and windows).
        warmup_s: twin simulated time under ``previous`` before each window.
        confidence_level: two-sided level of the intervals.
        only: intersections the sums cover (those the deployment changed);
            None: every intersection of the windows.
        demand_scale: calibration scale of the twin's demand
            (:attr:`simulators.calibration.TwinCalibration.demand_scale`).
        step_length_s: the twin's SUMO step.
        cancel: set it to stop the twin's runs.

    Raises:
        ConfigError: bad seeds, levels, scale or step.
        SimulationError: windows out of order, of different lengths or
            intersections, without halting before, or a twin run failed or
            measured nothing.
        WhatIfCancelled: ``cancel`` was set.
    """
    covered, horizon_s = _check_inputs(
        before, after, only, seeds, warmup_s, confidence_level, demand_scale, step_length_s
    )
    # each window's loops are checked against the other's: a loop dead in one
    # window only is bridged from its rate in the other (detector_health)
    snapshots = [
        demand.window_snapshot(before, demand_scale, reference=after),
        demand.window_snapshot(after, demand_scale, reference=before),
    ]
    end_s = warmup_s + horizon_s + _ROUTES_MARGIN_S

    def request(
        window: WindowTotals, snapshot: Mapping[str, Any], with_deployed: bool
    ) -> WhatIfRequest:
        return WhatIfRequest(
            network=str(network),
            demand=str(demand.routes_file(snapshot, end_s)),
            current=dict(previous),
            candidates={DEPLOYED: dict(deployed)} if with_deployed else {},
            horizon_s=horizon_s,
            warmup_s=warmup_s,
            seeds=tuple(seeds),
            step_length_s=step_length_s,
            field_time_s=round(window.begin_s) - warmup_s,  # window begin = sim warmup_s
            confidence_level=confidence_level,
        )

    result_before = engine.evaluate(request(before, snapshots[0], False), cancel=cancel)
    result_after = engine.evaluate(request(after, snapshots[1], True), cancel=cancel)
    twin_before = _runs(result_before, CURRENT, "before window")
    twin_previous = _runs(result_after, CURRENT, "after window")
    twin_deployed = _runs(result_after, DEPLOYED, "after window")
    order = tuple(seeds)
    if any(k not in r for r in (twin_before, twin_previous, twin_deployed) for k in order):
        raise SimulationError("the twin did not run every requested seed")

    def per_seed(
        field_before: float, field_after: float, value: str
    ) -> tuple[list[float], list[float], list[float], list[float]]:
        def get(run: RunMetrics) -> float:
            if value == "wait":
                return run.approach_wait_veh_s(covered)
            return run.approach_nox_mg(covered)

        b = [get(twin_before[k]) for k in order]
        p = [get(twin_previous[k]) for k in order]
        d = [get(twin_deployed[k]) for k in order]
        what = "approach halting" if value == "wait" else "approach NOx"
        _positive(b, f"{what} on the previous plan in the before window")
        _positive(p, f"{what} on the previous plan in the after window")
        est = [field_after / (field_before * pk / bk) - 1.0 for bk, pk in zip(b, p, strict=True)]
        return est, b, p, d

    f_before, f_after = before.wait_veh_s(covered), after.wait_veh_s(covered)
    n_before, n_after = before.total_nox_mg(covered), after.total_nox_mg(covered)
    wait_est, b, p, d = per_seed(f_before, f_after, "wait")
    nox_est, _, _, _ = per_seed(n_before, n_after, "nox")
    wait_mean, wait_low, wait_high = t_interval(wait_est, confidence_level)
    nox_mean, nox_low, nox_high = t_interval(nox_est, confidence_level)
    model = [relative_change(pk, dk) for pk, dk in zip(p, d, strict=True)]
    k = len(order)
    twin_before_mean = math.fsum(b) / k
    return CounterfactualEstimate(
        wait_change=wait_mean,
        wait_ci=(wait_low, wait_high),
        nox_change=nox_mean,
        nox_ci=(nox_low, nox_high),
        field_before_veh_s=f_before,
        field_after_veh_s=f_after,
        twin_before_veh_s=twin_before_mean,
        twin_previous_after_veh_s=math.fsum(p) / k,
        twin_deployed_after_veh_s=math.fsum(d) / k,
        gap_before=f_before / twin_before_mean,
        model_change=math.fsum(model) / k,
        method=METHOD,
        seeds=order,
        field_before_nox_mg=n_before,
        field_after_nox_mg=n_after,
        intersections=tuple(sorted(covered)),
        window_s=float(horizon_s),
        demand_scale=float(demand_scale),
        demand_digests=(str(snapshots[0]["digest"]), str(snapshots[1]["digest"])),
        detector_repairs={
            label: dict(snap["detector_repairs"]["repaired"])
            for label, snap in zip(("before", "after"), snapshots, strict=True)
            if "detector_repairs" in snap
        },
    )
