"""How the twin's prediction error depends on the horizon and on the event type.

Reads the ledgers a ``bench.fidelity`` run left in its work directory (every
deployment's recorded what-if request and its forked ground truth, whose
shadows read the field's counters every 60 s), re-runs each deployment's
what-if with shorter horizons (the chosen candidate against the plan then in
force, the recorded seeds and demand), and compares each horizon's predicted
change of the approach halting vehicle-seconds with the true change over the
same first seconds after activation. Each deployment is labelled with the
events of its day active during its window (incident, pulse, OD shift, detector
fault, or none).

    .venv/bin/python -m bench.fidelity --work-dir /tmp/fid      # first
    .venv/bin/python -m bench.fidelity_horizons /tmp/fid [--horizons 120,240,360,480,600]

Prints one JSON line per deployment and horizon, then one summary line per
horizon and per event type (mean and median absolute error, pp).
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def events_during(day: Any, begin_s: float, end_s: float) -> tuple[str, ...]:
    """The kinds of the day's events active at some time in ``[begin_s, end_s]``."""
    kinds = []
    if any(c.from_s < end_s and c.to_s > begin_s for c in day.closures):
        kinds.append("incident")
    if any(p.from_s < end_s and p.to_s > begin_s for p in day.pulses):
        kinds.append("pulse")
    if any(s.at_s < end_s and s.at_s + s.over_s > begin_s for s in day.od_shifts):
        kinds.append("od_shift")
    if any(f.from_s < end_s and f.to_s > begin_s for f in day.faults):
        kinds.append("detector_fault")
    return tuple(kinds) or ("none",)


def true_change_at(detail: Mapping[str, Any], horizon_s: float) -> float | None:
    """The true wait change over the first ``horizon_s`` after the fork, from the checkpoints."""
    shadows = detail.get("shadows") or {}
    begin = float(detail["begin_s"])

    def at(label: str) -> float | None:
        for point in (shadows.get(label) or {}).get("checkpoints") or []:
            if abs(float(point["t_s"]) - (begin + horizon_s)) < 1e-6:
                return float(point["wait_veh_s"])
        return None

    in_force, previous = at("in_force"), at("previous")
    if in_force is None or previous is None or previous <= 0:
        return None
    return in_force / previous - 1.0


def main(argv: Sequence[str] | None = None) -> int:
    from controller.ledger import Ledger
    from controller.prediction import changed_intersections, plans_of
    from simulators.field.event_day import load_event_day, shipped_event_days
    from simulators.twin import LibsumoWhatIfEngine, WhatIfRequest
    from simulators.twin.results import field_prediction

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("work_dir", type=Path, help="a bench.fidelity --work-dir")
    parser.add_argument("--horizons", default="120,240,360,480,600")
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args(argv)
    horizons = [int(h) for h in args.horizons.split(",")]
    days = {load_event_day(p).name: load_event_day(p) for p in shipped_event_days()}
    rows: list[dict[str, Any]] = []
    with LibsumoWhatIfEngine(args.workers) as engine:
        for ledger_path in sorted(args.work_dir.glob("*/state/ledger.sqlite")):
            day = days.get(ledger_path.parent.parent.name)
            with Ledger.open(ledger_path) as ledger:
                for md in ledger.iter_records(kind="measured_delta"):
                    true = md.body.get("true") or {}
                    detail = true.get("detail")
                    if not detail:
                        continue
                    deployment = ledger.get(int(md.body["deployment"])).body
                    cycle = ledger.get(int(deployment["cycle_index"])).body
                    chosen = cycle["gate"]["chosen"]
                    request = WhatIfRequest.from_dict(cycle["whatif"]["request"])
                    only = changed_intersections(
                        plans_of(cycle.get("current")),
                        plans_of((deployment.get("configuration") or {}).get("intersections")),
                    )
                    window = md.body.get("window") or {}
                    begin = float(window.get("begin_s", detail["begin_s"]))
                    kinds = (
                        events_during(day, begin, float(window.get("end_s", begin)))
                        if day is not None
                        else ("unknown",)
                    )
                    for h in horizons:
                        truth = true_change_at(detail, h)
                        if truth is None or h > request.horizon_s:
                            continue
                        short = replace(
                            request,
                            horizon_s=h,
                            candidates={chosen: request.candidates[chosen]},
                            record=None,
                        )
                        wait, _ = field_prediction(engine.evaluate(short), chosen, only or None)
                        row = {
                            "day": ledger_path.parent.parent.name,
                            "sequence": md.body.get("sequence"),
                            "horizon_s": h,
                            "predicted": round(wait.mean, 5),
                            "true": round(truth, 5),
                            "error_pp": round(100 * (wait.mean - truth), 3),
                            "events": list(kinds),
                        }
                        rows.append(row)
                        print(json.dumps(row), flush=True)
    by_horizon: dict[int, list[float]] = defaultdict(list)
    by_event: dict[str, list[float]] = defaultdict(list)
    longest = max(horizons)
    for row in rows:
        by_horizon[row["horizon_s"]].append(abs(row["error_pp"]))
        if row["horizon_s"] == longest:
            for kind in row["events"]:
                by_event[kind].append(abs(row["error_pp"]))
    for h, errors in sorted(by_horizon.items()):
        print(json.dumps(_summary({"horizon_s": h}, errors)))
    for kind, errors in sorted(by_event.items()):
        print(json.dumps(_summary({"event": kind, "horizon_s": longest}, errors)))
    return 0


def _summary(key: dict[str, Any], errors: Sequence[float]) -> dict[str, Any]:
    return {
        **key,
        "deployments": len(errors),
        "mean_abs_error_pp": round(statistics.mean(errors), 2) if errors else math.nan,
        "median_abs_error_pp": round(statistics.median(errors), 2) if errors else math.nan,
    }


if __name__ == "__main__":
    raise SystemExit(main())
