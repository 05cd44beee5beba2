"""Prediction fidelity of the gated closed loop on event days, against the field's ground truth.

Runs the daemon's cycle (twin, proposer with screening, gate, HSM signing,
ledger, feedback collector with the counterfactual estimator and calibration;
the demo's settings) on each shipped event-day scenario (``configs/scenarios``:
incidents, demand pulses, OD shifts and detector faults the twin is not told
about) in field time (:mod:`controller.lockstep`), forks the field at every
activation for the true effect (:mod:`simulators.field.fork`), and runs
actuated control alone and max-pressure alone on the same days. Prints one JSON
line per figure:

* ``fidelity_deployments``: deployments measured (with a true delta);
* ``fidelity_within_5pp_share``: share whose predicted change of the approach
  halting vehicle-seconds is within 5 percentage points of the true change;
* ``fidelity_false_pass_rate``: share that passed the gate but made the true
  wait worse;
* ``fidelity_estimator_error_p50_pp``: median |estimated - true| (pp), the
  estimator a city runs without a fork;
* ``fidelity_resimulation_error_p50_pp``: the same for the estimate's twin-only
  part (``model_change``: both plans on the after window's demand, no level
  correction from the field's before window);
* ``loop_delay_vs_actuated`` / ``loop_delay_vs_max_pressure``: mean delay per
  vehicle of the loop over the days, ``ratio`` against the reference alone.

    .venv/bin/python -m bench.fidelity [--scenarios a.toml,b.toml] [--json-out rows.jsonl]
    .venv/bin/python -m bench.fidelity --multi-day 6 --plot docs/img/learning.svg

``--multi-day N`` runs N district days twice on one state directory each, once
learning (twin calibration and policy fine-tuning on) and once frozen, and
prints the per-day prediction error and delay of both (the learning curves).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

logger = logging.getLogger("bench.fidelity")

SCENARIOS = ROOT / "configs" / "scenarios"


def emit(figure: str, value: float, unit: str, ratio: float | None, against: str | None) -> None:
    """One figure as a JSON line."""
    print(
        json.dumps(
            {
                "figure": figure,
                "value": None if value is None or not math.isfinite(value) else round(value, 4),
                "unit": unit,
                "ratio": None if ratio is None or not math.isfinite(ratio) else round(ratio, 4),
                "against": against,
            }
        ),
        flush=True,
    )


@dataclass
class Deployment:
    """One deployment's predicted, estimated and true change (fractions)."""

    day: str
    sequence: int
    activate_s: float
    predicted: float | None
    estimated: float | None
    true: float | None
    estimated_ci: tuple[float, float] | None = None
    resimulated: float | None = None
    passed_gate: bool = True
    superseded: bool = False
    events_active: tuple[str, ...] = ()
    true_by_horizon: dict[str, float] = field(default_factory=dict)


@dataclass
class DayResult:
    """What one day of one controller did."""

    day: str
    controller: str
    delay_s: float
    vehicles: int
    wall_s: float
    deployments: list[Deployment] = field(default_factory=list)
    cycles: int = 0
    calibration: float | None = None


# ---------------------------------------------------------------------------- references


def run_reference(day: Any, kind: str, work: Path, *, end_s: float) -> DayResult:
    """Actuated control alone or max-pressure alone on one event day (ground-truth delay)."""
    from configs.settings_file import load_settings
    from controller.demo import default_demo_config
    from rl.baselines import MaxPressureController, actuated_plans
    from simulators.field import FieldEmulator

    settings = load_settings(default_demo_config())
    started = time.perf_counter()
    config = day.field_config(work / f"ref-{kind}")
    field_ = FieldEmulator(config).start()
    try:
        hook = None
        if kind == "actuated":
            for tls, plan in actuated_plans(
                field_.network.base_programs(), settings.safety
            ).items():
                field_.apply(tls, plan, field_.field_time_s)
        elif kind == "max-pressure":
            controller = MaxPressureController(field_.network, settings.safety)
            view = _SessionView(field_)

            def hook(_: Any) -> None:
                controller(view)  # type: ignore[arg-type]

        else:
            raise ValueError(kind)
        field_.step_until(end_s, hook)
    finally:
        field_.close()
    stats = field_.trip_statistics()
    return DayResult(
        day=day.name,
        controller=kind,
        delay_s=stats.mean_delay_s,
        vehicles=stats.vehicles,
        wall_s=time.perf_counter() - started,
    )


class _SessionView:
    """The field as :class:`rl.baselines.MaxPressureController` reads it (a FieldSession's face)."""

    def __init__(self, field_: Any) -> None:
        self._field = field_

    @property
    def time_s(self) -> float:
        return float(self._field.field_time_s)

    def lane_halting(self, lane_id: str) -> int:
        return int(self._field.lane_halting(lane_id))

    def set_signal_state(self, tls_id: str, state: str) -> None:
        self._field.set_signal_state(tls_id, state)


# ---------------------------------------------------------------------------- figures


def fidelity_figures(deployments: Sequence[Deployment]) -> dict[str, float]:
    """The fidelity figures over deployments that have a true delta."""
    scored = [d for d in deployments if d.true is not None and d.predicted is not None]
    n = len(scored)
    within = sum(1 for d in scored if abs(d.predicted - d.true) <= 0.05) if n else 0  # type: ignore[operator]
    false_pass = sum(1 for d in scored if d.passed_gate and d.true > 0) if n else 0  # type: ignore[operator]
    est = [abs(d.estimated - d.true) for d in scored if d.estimated is not None]  # type: ignore[operator]
    resim = [abs(d.resimulated - d.true) for d in scored if d.resimulated is not None]  # type: ignore[operator]
    return {
        "deployments": float(n),
        "within_5pp_share": within / n if n else math.nan,
        "false_pass_rate": false_pass / n if n else math.nan,
        "estimator_error_p50_pp": 100 * statistics.median(est) if est else math.nan,
        "resimulation_error_p50_pp": 100 * statistics.median(resim) if resim else math.nan,
    }


def emit_fidelity(deployments: Sequence[Deployment]) -> None:
    """Print the fidelity figures of ``deployments``."""
    figures = fidelity_figures(deployments)
    emit("fidelity_deployments", figures["deployments"], "count", None, None)
    emit("fidelity_within_5pp_share", figures["within_5pp_share"], "share", None, None)
    emit("fidelity_false_pass_rate", figures["false_pass_rate"], "share", None, None)
    emit("fidelity_estimator_error_p50_pp", figures["estimator_error_p50_pp"], "pp", None, None)
    # the estimate's twin-only part: both plans re-simulated on the after window's
    # demand, no field level correction (recorded as estimated.model_change)
    emit(
        "fidelity_resimulation_error_p50_pp",
        figures["resimulation_error_p50_pp"],
        "pp",
        None,
        None,
    )


def mean_delay(results: Sequence[DayResult]) -> float:
    """Vehicle-weighted mean delay over days."""
    vehicles = sum(r.vehicles for r in results)
    return sum(r.delay_s * r.vehicles for r in results) / vehicles if vehicles else math.nan


# ---------------------------------------------------------------------------- the loop


def loop_settings(field_: Any, state_dir: Path, *, learn: bool) -> Any:
    """The demo's settings on the day's network, state in ``state_dir``; learning on or off."""
    from configs.settings_file import load_settings
    from controller.demo import default_demo_config

    settings = load_settings(default_demo_config()).with_state_dir(state_dir)
    simulation = settings.simulation.model_copy(
        update={"network": field_.network.path, "detectors": field_.detectors_path}
    )
    if not surrogate_fits(settings.model_copy(update={"simulation": simulation})):
        # the demo's surrogate was trained on the district's twin: the daemon refuses it
        # on another network (controller.wiring.load_screening_surrogate), as it must,
        # so there the loop runs as a bureau without a surrogate of its own: no screening
        logger.warning(
            "%s: the surrogate was made on another network; screening off", field_.network.path
        )
        simulation = simulation.model_copy(update={"screen_candidates": 0})
    return settings.model_copy(
        update={
            "simulation": simulation,
            "video": settings.video.model_copy(update={"enabled": False}),
            "metrics": settings.metrics.model_copy(update={"enabled": False}),
            "feedback": settings.feedback.model_copy(update={"calibrate": learn}),
            "rl": settings.rl.model_copy(update={"fine_tune": learn}),
        }
    )


def surrogate_fits(settings: Any) -> bool:
    """Whether the settings' screening surrogate was made on the settings' network."""
    from controller.wiring import surrogate_made_by
    from edge_accel.surrogate import load_surrogate

    if settings.simulation.surrogate is None or settings.simulation.screen_candidates <= 0:
        return True
    made_by = load_surrogate(settings.simulation.surrogate).made_by or {}
    wanted = surrogate_made_by(settings, None)["network_sha256"]
    return bool(made_by.get("network_sha256") == wanted)


def last_decision_s(day: Any, settings: Any) -> float:
    """The loop's last decision: its window and the reading closing it end with the demand."""
    return float(day.end_s - settings.feedback_window_s - settings.schedule.interval_s)


def run_loop_day(day: Any, work: Path, state_dir: Path, *, learn: bool) -> DayResult:
    """The gated loop on one day: cycles every interval, forks at activations, measured deltas."""
    from controller.ledger import Ledger
    from controller.lockstep import LockstepTruth, build_lockstep_runner
    from rl.baselines import actuated_plans
    from simulators.field import FieldEmulator

    started = time.perf_counter()
    field_ = FieldEmulator(day.field_config(work / "field")).start()
    settings = loop_settings(field_, state_dir, learn=learn)
    truth = LockstepTruth(field_, work / "forks")
    start = actuated_plans(field_.network.base_programs(), settings.safety)
    assembly = build_lockstep_runner(settings, field_, start_plans=start, truth=truth)
    runner = assembly.runner
    interval = float(settings.schedule.interval_s)
    decide_until = last_decision_s(day, settings)
    end = float(day.end_s)
    cancel = threading.Event()
    first_index = assembly.ledger.size()
    cycles = 0
    try:
        t = field_.field_time_s
        while t + interval <= end + 1e-9:
            t = truth.advance(t + interval)
            truth.settle(t)
            if t <= decide_until + 1e-9:
                report = runner.run_cycle(datetime.now(UTC), cancel)
                cycles += 1
                logger.info(
                    "%s t=%.0f: %s%s",
                    day.name,
                    t,
                    report.decision,
                    " deployed" if report.deployed else "",
                )
            runner.collect_feedback()
        scale = (
            assembly.collector.calibration.demand_scale if assembly.collector.calibration else None
        )
    finally:
        runner.close()
        field_.close()
    stats = field_.trip_statistics()
    with Ledger.open(settings.ledger.path) as ledger:
        records = list(ledger.iter_records(start=first_index + 1))
    return DayResult(
        day=day.name,
        controller="loop" if learn else "loop-frozen",
        delay_s=stats.mean_delay_s,
        vehicles=stats.vehicles,
        wall_s=time.perf_counter() - started,
        deployments=deployments_of(day.name, records),
        cycles=cycles,
        calibration=scale,
    )


def deployments_of(day: str, records: Sequence[Any]) -> list[Deployment]:
    """Each measured deployment's predicted, estimated and true wait change, from the ledger."""
    out = []
    for r in records:
        if r.kind != "measured_delta":
            continue
        body = r.body
        status = body.get("status")
        predicted = (body.get("predicted") or {}).get("wait_change")
        estimated = body.get("estimated") or {}
        true = (body.get("true") or {}).get("wait_change")
        window = body.get("window") or {}
        ci = estimated.get("wait_ci")
        model_change = estimated.get("model_change")
        out.append(
            Deployment(
                day=day,
                sequence=int(body.get("sequence") or 0),
                activate_s=float(window.get("begin_s") or math.nan),
                predicted=None if predicted is None else float(predicted),
                estimated=None
                if estimated.get("wait_change") is None
                else float(estimated["wait_change"]),
                true=None if true is None else float(true),
                estimated_ci=None if not ci else (float(ci[0]), float(ci[1])),
                resimulated=None if model_change is None else float(model_change),
                superseded=status == "superseded",
            )
        )
    return out


# ---------------------------------------------------------------------------- main


def _days(args: argparse.Namespace) -> list[Any]:
    from simulators.field.event_day import load_event_day, shipped_event_days

    paths = (
        [Path(p) for p in args.scenarios.split(",")]
        if args.scenarios
        else list(shipped_event_days())
    )
    days = [load_event_day(p) for p in paths]
    if args.duration_s is not None:
        days = [replace(d, duration_s=args.duration_s) for d in days]
    return days


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenarios", help="comma-separated event-day files (default: shipped)")
    parser.add_argument("--duration-s", type=int, help="shorten every day to this (smoke runs)")
    parser.add_argument(
        "--multi-day",
        type=int,
        default=0,
        metavar="N",
        help="N district days, learning against frozen (the learning curves)",
    )
    parser.add_argument("--plot", type=Path, help="with --multi-day: write the curves as SVG here")
    parser.add_argument("--json-out", type=Path, help="write every day's rows (JSON lines) here")
    parser.add_argument("--work-dir", type=Path, help="keep the runs' files here (default: temp)")
    parser.add_argument(
        "--score",
        type=Path,
        metavar="WORK_DIR",
        help="print the fidelity figures of an earlier run's ledgers (no simulation)",
    )
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args(argv)
    if args.score:
        return score(args.score)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s %(name)s %(message)s",
    )
    work = args.work_dir or Path(tempfile.mkdtemp(prefix="signaltwin-fidelity-"))
    days = _days(args)
    if args.multi_day:
        return multi_day(days, args.multi_day, work, args)
    results: list[DayResult] = []
    refs: dict[str, list[DayResult]] = {"actuated": [], "max-pressure": []}
    for k, day in enumerate(days):
        print(f"day {k + 1}/{len(days)}: {day.name}", file=sys.stderr, flush=True)
        loop = run_loop_day(day, work / day.name / "loop", work / day.name / "state", learn=True)
        results.append(loop)
        for kind in refs:
            refs[kind].append(run_reference(day, kind, work / day.name, end_s=float(day.end_s)))
        _progress(loop, [refs[kind][-1] for kind in refs])
    rows = [r for r in results] + [r for rs in refs.values() for r in rs]
    if args.json_out:
        _write_rows(args.json_out, rows)
    deployments = [d for r in results for d in r.deployments]
    emit_fidelity(deployments)
    loop_delay = mean_delay(results)
    for kind, name in (
        ("actuated", "loop_delay_vs_actuated"),
        ("max-pressure", "loop_delay_vs_max_pressure"),
    ):
        ref = mean_delay(refs[kind])
        emit(name, loop_delay, "s", loop_delay / ref if ref else None, f"{kind} alone, same days")
    return 0


def score(work: Path) -> int:
    """The fidelity figures of the ledgers an earlier run left in ``work`` (``*/state``)."""
    from controller.ledger import Ledger

    deployments: list[Deployment] = []
    for path in sorted(work.glob("*/ledger.sqlite")) + sorted(work.glob("*/state/ledger.sqlite")):
        day = path.parent.parent.name if path.parent.name == "state" else path.parent.name
        with Ledger.open(path) as ledger:
            deployments += deployments_of(day, list(ledger.iter_records()))
    if not deployments:
        raise SystemExit(f"no measured deltas in {work}/*/state/ledger.sqlite")
    for d in deployments:
        print(
            f"{d.day} plan {d.sequence}: predicted {_pct(d.predicted)}, estimated "
            f"{_pct(d.estimated)} (re-simulated {_pct(d.resimulated)}), true {_pct(d.true)}",
            file=sys.stderr,
        )
    emit_fidelity(deployments)
    return 0


def _progress(loop: DayResult, refs: Sequence[DayResult]) -> None:
    measured = [d for d in loop.deployments if d.true is not None]
    print(
        f"  loop: delay {loop.delay_s:.1f} s over {loop.vehicles} vehicles, {loop.cycles} cycles, "
        f"{len(loop.deployments)} measured deltas ({len(measured)} with truth), "
        f"{loop.wall_s:.0f} s wall; "
        + ", ".join(f"{r.controller} {r.delay_s:.1f} s ({r.wall_s:.0f} s)" for r in refs),
        file=sys.stderr,
        flush=True,
    )
    for d in loop.deployments:
        print(
            f"    plan {d.sequence}: predicted {_pct(d.predicted)}, estimated {_pct(d.estimated)} "
            f"(re-simulated {_pct(d.resimulated)}), true {_pct(d.true)}"
            f"{' (superseded)' if d.superseded else ''}",
            file=sys.stderr,
            flush=True,
        )


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:+.1f} %"


def _write_rows(path: Path, rows: Sequence[DayResult]) -> None:
    from dataclasses import asdict

    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", encoding="utf-8") as out:
        for r in rows:
            out.write(json.dumps(asdict(r)) + "\n")


def multi_day(days: Sequence[Any], n: int, work: Path, args: argparse.Namespace) -> int:
    """N district days on one state directory each, learning and frozen, day by day."""
    district = [d for d in days if d.net_path.name == "district.net.xml"]
    if not district:
        raise SystemExit("--multi-day needs district event days")
    curves: dict[str, list[DayResult]] = {"learning": [], "frozen": []}
    for k in range(n):
        base = district[k % len(district)]
        # a new day: the same event day's pattern on another day's random draw
        day = replace(base, seed=base.seed + 100 * k)
        for mode, learn in (("learning", True), ("frozen", False)):
            print(f"day {k + 1}/{n} ({day.name}, seed {day.seed}): {mode}", file=sys.stderr)
            result = run_loop_day(
                day, work / f"day{k + 1}-{mode}", work / f"state-{mode}", learn=learn
            )
            curves[mode].append(result)
            _progress(result, [])
    rows = []
    for mode, results in curves.items():
        for k, r in enumerate(results):
            scored = [d for d in r.deployments if d.true is not None and d.predicted is not None]
            error = (
                100 * statistics.mean(abs(d.predicted - d.true) for d in scored) if scored else None  # type: ignore[operator]
            )
            row = {
                "mode": mode,
                "day": k + 1,
                "scenario": r.day,
                "delay_s": round(r.delay_s, 3),
                "prediction_error_pp": None if error is None else round(error, 3),
                "deployments": len(scored),
                "demand_scale": r.calibration,
            }
            rows.append(row)
            print(json.dumps(row), flush=True)
    if args.json_out:
        _write_rows(args.json_out, [r for rs in curves.values() for r in rs])
    if args.plot:
        from bench.svg_chart import line_chart, panels

        def series(key: str) -> dict[str, list[tuple[float, float]]]:
            return {
                mode: [
                    (row["day"], row[key])
                    for row in rows
                    if row["mode"] == mode and row[key] is not None
                ]
                for mode in curves
            }

        svg = panels(
            [
                line_chart(
                    "Prediction error per day",
                    "day",
                    "mean |predicted - true| (pp)",
                    series("prediction_error_pp"),
                ),
                line_chart("Mean delay per day", "day", "delay per vehicle (s)", series("delay_s")),
            ]
        )
        args.plot.parent.mkdir(parents=True, exist_ok=True)
        args.plot.write_text(svg, encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
