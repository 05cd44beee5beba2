"""``signaltwin simulate``: the what-if of the current plans against a candidate, on the twin."""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from configs.errors import ConfigError, SafetyViolation
from configs.safety import Proposal, project_plans
from configs.settings import AUTO_WORKERS_MAX, SafetySettings, Settings, auto_workers
from configs.settings_file import load_settings
from configs.timing import BaseProgram, IntersectionTiming, SafetyLimits, TimingConfiguration
from controller.exit_codes import ExitCode

if TYPE_CHECKING:
    # simulators (SUMO, scipy) is imported when the command runs, so that
    # registering it at every `signaltwin` start stays cheap.
    from simulators.demand import FleetLike
    from simulators.twin import WhatIfResult

DESCRIPTION = """\
Run the what-if on the SUMO twin: the current (base) plans of every traffic
light against a candidate plan, each simulated with the same K seeds (warm-up
under the current plan, then the horizon under the plan), and print waiting
time, delay, throughput and NOx with the paired relative change and its
confidence interval.

The candidate is --plan FILE: a signed-to-be timing configuration (JSON) or a
JSON mapping of traffic-light id -> intersection timing. Without --plan, two
candidates are built from the base plans (all greens scaled by 0.8 and by 1.2,
projected onto the safety limits), so something useful prints.

Demand: --routes FILE (a SUMO routes file), else the settings'
simulation.demand, else --counts FILE (JSON {"interval_s": 300, "counts":
{detector id: vehicles}}) estimated into routes from the detectors, else (demo
district) --probe-field S: S seconds of the field emulator's detector counts.

Time of day: a routes file's traffic departs in its own window (a city's 7:00-8:00
routes depart at 25200-28800 s). The twin starts at the first departure, or at
--begin S; a simulated window (warm-up + horizon) with no traffic, or less than
one departure per traffic light, is an error that names both windows.

Exit codes: 0 every plan simulated; 1 a plan failed (gridlock, backlog);
2 bad usage/configuration (also: no traffic in the simulated window); 3 SUMO failed.
"""


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``simulate`` sub-command."""
    parser = subparsers.add_parser(
        "simulate",
        help="what-if of the current plans vs a candidate plan on the SUMO twin",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--config", type=Path, help="settings TOML (network, seeds, fleet, ...)")
    parser.add_argument("--plan", type=Path, help="candidate plan JSON (see above)")
    parser.add_argument("--network", type=Path, help="SUMO .net.xml (overrides the settings)")
    parser.add_argument("--routes", type=Path, help="SUMO routes file (overrides the settings)")
    parser.add_argument("--detectors", type=Path, help="E1 detector file, for --counts")
    parser.add_argument(
        "--additional",
        type=Path,
        nargs="+",
        default=[],
        metavar="FILE",
        help="SUMO additional files loaded with the network (e.g. the vehicle types the "
        "routes use)",
    )
    parser.add_argument("--counts", type=Path, help="detector counts JSON to estimate demand")
    parser.add_argument(
        "--probe-field",
        type=int,
        metavar="S",
        help="demo district only: run the field emulator (peak demand) for S seconds and "
        "estimate the twin's demand from its detector counts, as the daemon does",
    )
    parser.add_argument("--seeds", type=int, help="paired seeds per plan (default 5)")
    parser.add_argument("--horizon-s", type=int, help="measured seconds (default 900)")
    parser.add_argument("--warmup-s", type=int, help="warm-up seconds (default 300)")
    parser.add_argument(
        "--begin",
        type=int,
        metavar="S",
        help="simulation time the warm-up starts at (default: the routes' first departure; "
        "0 for demand estimated from counts)",
    )
    parser.add_argument(
        "--workers",
        type=int,
        help=f"worker processes (default: simulation.workers, else {AUTO_WORKERS_MAX}; "
        "at most the CPU cores)",
    )
    parser.add_argument(
        "--mesoscopic",
        action="store_true",
        help="SUMO's mesoscopic model: ~5x faster, coarser (see docs/twin.md)",
    )
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    parser.set_defaults(func=_run)


def _progress(done: int, total: int) -> None:
    print(f"\rsimulating: {done}/{total} runs", end="" if done < total else "\n", file=sys.stderr)


def _load_plan(path: Path) -> dict[str, IntersectionTiming]:
    try:
        data = path.read_bytes()
    except OSError as e:
        raise ConfigError(f"--plan {path}: cannot read: {e.strerror}") from e
    try:
        raw = json.loads(data)
    except json.JSONDecodeError as e:
        raise ConfigError(f"--plan {path}: not JSON: {e}") from e
    if isinstance(raw, dict) and "intersections" in raw and "schema" in raw:
        return dict(TimingConfiguration.parse(data).intersections)
    if not isinstance(raw, dict) or not raw:
        raise ConfigError(
            f"--plan {path}: expected a timing configuration or a mapping tls id -> timing"
        )
    plans = {}
    for tls_id, value in raw.items():
        try:
            plans[tls_id] = IntersectionTiming.model_validate(value)
        except ValueError as e:
            raise ConfigError(f"--plan {path}: intersection {tls_id!r}: {e}") from e
    return plans


def scaled_plans(
    bases: Mapping[str, BaseProgram], factor: float, limits: SafetySettings | SafetyLimits
) -> dict[str, IntersectionTiming]:
    """Every base plan with its greens scaled by ``factor``, projected onto each light's limits."""
    proposals = {
        tls_id: Proposal(green_s=[base.phases[i].duration_s * factor for i in base.green_indices])
        for tls_id, base in sorted(bases.items())
    }
    return project_plans(proposals, bases, limits)


def unfit_lights(
    bases: Mapping[str, BaseProgram],
    limits: SafetySettings | SafetyLimits,
    *,
    from_base: bool = False,
) -> dict[str, str]:
    """Lights for which the safety limits leave no plan at all: tls id -> why.

    A light with many greens (nine greens of >= 7 s with pedestrian clearances,
    say) may need a longer cycle than ``max_cycle_s``; no candidate can be made
    for it until its limits (``[safety.intersections."ID"]``) say how.

    Args:
        bases: tls id -> base program.
        limits: the safety limits (the settings' section applies overrides).
        from_base: also bound the plan by one deployment's change limits from the
            base program (``max_cycle_change_s``, ``max_split_change_s``), as the
            daemon's first deployment is.
    """
    unfit: dict[str, str] = {}
    for tls_id, base in sorted(bases.items()):
        proposal = Proposal(green_s=[base.phases[i].duration_s for i in base.green_indices])
        current = {tls_id: IntersectionTiming.from_base(base)} if from_base else None
        try:
            project_plans({tls_id: proposal}, bases, limits, current)
        except SafetyViolation as e:
            unfit[tls_id] = "; ".join(v.message for v in e.violations) or str(e)
    return unfit


def _read_counts(path: Path) -> tuple[dict[str, float], float]:
    try:
        raw = json.loads(Path(path).read_text(encoding="utf-8"))
        counts = {str(k): float(v) for k, v in raw["counts"].items()}
        return counts, float(raw["interval_s"])
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        raise ConfigError(
            f'--counts {path}: expected JSON {{"interval_s": S, "counts": {{id: n}}}}: {e}'
        ) from e


def _probe_field(net: Path, seconds: int, workdir: Path) -> tuple[dict[str, float], float, int]:
    """Counts of the demo district's field emulator over ``seconds`` (after 300 s)."""
    from simulators.field import FieldConfig, FieldEmulator
    from simulators.netbuild import district_paths

    if Path(net).resolve() != district_paths()["net"].resolve():
        raise ConfigError("--probe-field works on the demo district only; use --counts or --routes")
    if seconds < 60:
        raise ConfigError(f"--probe-field must be at least 60 s (got {seconds})")
    print(f"probing the field emulator for {seconds} s ...", file=sys.stderr)
    with FieldEmulator(FieldConfig.for_district(seed=1, work_dir=workdir)) as field:
        start = field.field_time_s
        field.step_until(start + 300)
        before = field.detector_counts().readings
        field.step_until(start + 300 + seconds)
        after = field.detector_counts()
    counts = {d: float(r.count - before[d].count) for d, r in after.readings.items()}
    return counts, float(seconds), int(after.field_time_s)


def _routes_from_counts(
    counts: dict[str, float],
    interval_s: float,
    net: Path,
    detectors: Path | None,
    fleet: list[FleetLike] | None,
    end_s: int,
    workdir: Path,
) -> Path:
    if detectors is None:
        raise ConfigError(
            "--counts needs the detector file: give --detectors or simulation.detectors"
        )
    from simulators.demand import DemandEstimator, write_routes
    from simulators.network import ensure_detectors, load_network

    model = load_network(net, ensure_detectors(net, detectors))  # written when absent
    estimator = DemandEstimator(net, {d.id: d.lane_id for d in model.detectors}, fleet)
    estimate = estimator.estimate(counts, interval_s)
    print(
        f"demand: {estimate.total_vph:.0f} veh/h on {len(estimate.snapshot['routes'])} routes "
        f"(snapshot {estimate.digest[:12]})",
        file=sys.stderr,
    )
    return write_routes(estimate.snapshot, workdir / "twin.rou.xml", end_s)


def _run(args: argparse.Namespace) -> int:
    from simulators.network import load_network
    from simulators.routes import clock, read_routes_window, traffic_start
    from simulators.twin import LibsumoWhatIfEngine, request_from_settings

    settings: Settings | None = load_settings(args.config) if args.config else None
    sim = settings.simulation if settings is not None else None
    net = args.network or (sim.network if sim else None)
    if net is None:
        raise ConfigError("no network: give --config FILE (simulation.network) or --network NET")
    horizon_s = args.horizon_s or (sim.horizon_s if sim else 900)
    warmup_s = args.warmup_s if args.warmup_s is not None else (sim.warmup_s if sim else 300)
    count = args.seeds or (sim.seeds if sim else 5)
    workers = (
        args.workers
        if args.workers is not None
        else auto_workers(sim.workers if sim else AUTO_WORKERS_MAX)
    )
    if count < 1 or horizon_s < 1 or warmup_s < 0 or workers < 0:
        raise ConfigError("--seeds and --horizon-s must be >= 1, --warmup-s and --workers >= 0")
    if args.begin is not None and args.begin < 0:
        raise ConfigError(f"--begin must be >= 0 (got {args.begin})")

    model = load_network(net)
    bases = model.base_programs()
    current = {t: IntersectionTiming.from_base(b) for t, b in bases.items()}
    limits = settings.safety if settings is not None else SafetyLimits()
    if args.plan is not None:
        candidates = {"candidate": _load_plan(args.plan)}
    else:
        unfit = unfit_lights(bases, limits)
        for tls_id, why in unfit.items():
            print(
                f"warning: traffic light {tls_id} keeps its current plan in every candidate: "
                f"{why} (set [safety.intersections.{json.dumps(tls_id)}] in --config)",
                file=sys.stderr,
            )
        fit = {t: b for t, b in bases.items() if t not in unfit}
        if not fit:
            raise ConfigError(
                "no traffic light has a plan within the safety limits; give --plan or "
                "--config with [safety] limits that fit the network (see 'network info')"
            )
        candidates = {
            "greens-x0.8": scaled_plans(fit, 0.8, limits),
            "greens-x1.2": scaled_plans(fit, 1.2, limits),
        }

    field_time_s = 0
    begin_s = 0 if args.begin is None else int(args.begin)
    with tempfile.TemporaryDirectory(prefix="signaltwin-simulate-") as tmp:
        routes = args.routes or (sim.demand if sim else None)
        if routes is not None:
            key = "--routes" if args.routes else "simulation.demand"
            window = read_routes_window(routes)
            begin_s = traffic_start(window, args.begin, warmup_s + horizon_s, len(bases), key)
            if args.begin is None and begin_s > 0:
                print(
                    f"{key}: traffic departs {window.describe()}; the twin starts at "
                    f"{clock(begin_s)} ({begin_s} s)",
                    file=sys.stderr,
                )
        if routes is None and (args.counts is not None or args.probe_field is not None):
            if args.counts is not None:
                counts, interval_s = _read_counts(args.counts)
            else:
                counts, interval_s, field_time_s = _probe_field(
                    Path(net), args.probe_field, Path(tmp)
                )
            detectors = args.detectors or (sim.detectors if sim else None)
            fleet: list[FleetLike] | None = list(sim.fleet) if sim else None
            routes = _routes_from_counts(
                counts, interval_s, Path(net), detectors, fleet, warmup_s + horizon_s, Path(tmp)
            )
        if routes is None:
            raise ConfigError(
                "no demand: give --routes ROUTES, set simulation.demand, give --counts FILE "
                "with detector counts to estimate it from, or (demo district) --probe-field 600"
            )
        request = request_from_settings(
            settings,
            network=net,
            demand=routes,
            current=current,
            candidates=candidates,
            field_time_s=field_time_s,
            begin_s=begin_s,
            horizon_s=horizon_s,
            warmup_s=warmup_s,
            seeds=count,
            mesoscopic=bool(args.mesoscopic),
        )
        if args.additional:
            request = replace(
                request, additional=(*request.additional, *(str(a) for a in args.additional))
            )
        print(
            f"what-if: {len(request.plan_names())} plans x {count} seeds, "
            f"{warmup_s} s warm-up + {horizon_s} s horizon from {clock(begin_s)} "
            f"({begin_s} s), {workers} workers"
            f"{', mesoscopic' if request.mesoscopic else ''}",
            file=sys.stderr,
        )
        started = time.perf_counter()
        with LibsumoWhatIfEngine(workers=workers) as engine:
            result = engine.evaluate(request, progress=_progress)
        wall_s = time.perf_counter() - started
    if args.json:
        print(json.dumps({"wall_s": round(wall_s, 3), **result.to_dict()}, indent=2))
    else:
        _print_table(result)
        print(f"wall time {wall_s:.1f} s")
    return ExitCode.PROBLEM if any(o.failed for o in result.outcomes) else ExitCode.OK


def _pct(change: Any) -> str:
    return f"{change.mean:+7.1%} [{change.ci[0]:+.1%}, {change.ci[1]:+.1%}]"


def _print_table(result: WhatIfResult) -> None:
    from simulators.twin import CURRENT

    level = f"{result.confidence_level:.0%}"
    print(
        f"{'plan':<14} {'wait s':>7} {'delay s':>8} {'arrived':>8} {'NOx g':>9}  "
        f"{'wait change (' + level + ' CI)':<30} {'NOx change (' + level + ' CI)':<30}"
    )
    for outcome in result.outcomes:
        if outcome.failed is not None:
            print(f"{outcome.name:<14} FAILED: {outcome.failed}")
            continue
        has = outcome.name != CURRENT and "wait" in outcome.changes
        wait = _pct(outcome.changes["wait"]) if has else "-"
        nox = _pct(outcome.changes["nox"]) if has else "-"
        print(
            f"{outcome.name:<14} {outcome.mean_wait_s:7.1f} {outcome.mean_delay_s:8.1f} "
            f"{outcome.throughput_veh:8.0f} {outcome.nox_mg / 1000:9.1f}  {wait:<30} {nox:<30}"
        )
