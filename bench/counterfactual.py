"""The counterfactual estimator in the controlled set-up of docs/feedback.md, against the truth.

A district field (``FieldConfig.for_district``) runs its base plans, a window
``before`` is read, then every intersection's first green is cut to 10 s (a
plan clearly worse, which the twin gets wrong) for a window ``after``. A second
field with the same seed keeps the base plans over the after window: the
ground truth. The unchanged case estimates the base plan kept over the same
before window (the truth is 0). Each case is estimated with the daemon's
estimator (:func:`simulators.twin.estimate_counterfactual`, 3 twin seeds, a
120 s twin warm-up, 2 workers) and printed as a row; then one JSON line per
figure:

* ``counterfactual_controlled_error_p50_pp``: median |estimated - true| (pp)
  over the cases;
* ``counterfactual_controlled_error_max_pp``: the largest;
* ``counterfactual_controlled_covered_share``: share of cases whose interval
  holds the truth;

each with ``ratio`` against the same figure of the before/after comparison
(the measured delta without a counterfactual).

    .venv/bin/python -m bench.counterfactual [--window-s 600] [--field-seeds 5,8,13]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

SETTLE_S = 120
TWIN_SEEDS = (1, 2, 3)


def emit(figure: str, value: float, unit: str, ratio: float | None, against: str | None) -> None:
    """One figure as a JSON line."""
    print(
        json.dumps(
            {"figure": figure, "value": value, "unit": unit, "ratio": ratio, "against": against}
        ),
        flush=True,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--window-s", type=int, default=600, help="each window's length (s)")
    parser.add_argument(
        "--field-seeds", default="3,5,8,13", help="the field's seeds, comma-separated"
    )
    args = parser.parse_args(argv)
    from configs.timing import IntersectionTiming
    from simulators.twin import DemandSource, LibsumoWhatIfEngine, estimate_counterfactual
    from tests.support.counterfactual_day import field_windows, starved

    seeds = [int(s) for s in args.field_seeds.split(",") if s.strip()]
    errors: list[float] = []
    naive_errors: list[float] = []
    covered: list[bool] = []
    started = time.monotonic()
    with (
        tempfile.TemporaryDirectory(prefix="bench-cf-") as tmp,
        LibsumoWhatIfEngine(workers=2) as engine,
    ):
        for seed in seeds:
            network, before, after = field_windows(seed, args.window_s, SETTLE_S, deploy=True)
            _, _, kept = field_windows(seed, args.window_s, SETTLE_S, deploy=False)
            lights = network.intersections.items()
            base = {t: IntersectionTiming.from_base(i.base) for t, i in lights}
            demand = DemandSource.from_network(
                network.path,
                {d.id: d.lane_id for d in network.detectors},
                directory=Path(tmp) / f"demand-{seed}",
            )
            cases = (
                ("starved", after, {t: starved(p) for t, p in base.items()}),
                ("unchanged", kept, base),
            )
            for name, window, deployed in cases:
                est = estimate_counterfactual(
                    engine,
                    network=network.path,
                    demand=demand,
                    before=before,
                    after=window,
                    previous=base,
                    deployed=deployed,
                    seeds=TWIN_SEEDS,
                    warmup_s=SETTLE_S,
                )
                truth = window.wait_veh_s() / kept.wait_veh_s() - 1.0 if name == "starved" else 0.0
                naive = window.wait_veh_s() / before.wait_veh_s() - 1.0
                errors.append(abs(est.wait_change - truth) * 100)
                naive_errors.append(abs(naive - truth) * 100)
                covered.append(est.wait_ci[0] <= truth <= est.wait_ci[1])
                print(
                    json.dumps(
                        {
                            "field_seed": seed,
                            "window_s": args.window_s,
                            "plan": name,
                            "true": round(truth, 4),
                            "estimated": round(est.wait_change, 4),
                            "interval": [round(v, 4) for v in est.wait_ci],
                            "twin_only": round(est.model_change, 4),
                            "before_after": round(naive, 4),
                            "method": est.method,
                        }
                    ),
                    file=sys.stderr,
                    flush=True,
                )
    p50, naive_p50 = statistics.median(errors), statistics.median(naive_errors)
    emit(
        "counterfactual_controlled_error_p50_pp",
        round(p50, 2),
        "pp",
        round(p50 / naive_p50, 3) if naive_p50 > 0 else None,
        f"before/after comparison ({naive_p50:.2f} pp)",
    )
    worst, naive_worst = max(errors), max(naive_errors)
    emit(
        "counterfactual_controlled_error_max_pp",
        round(worst, 2),
        "pp",
        round(worst / naive_worst, 3) if naive_worst > 0 else None,
        f"before/after comparison ({naive_worst:.2f} pp)",
    )
    emit(
        "counterfactual_controlled_covered_share",
        round(sum(covered) / len(covered), 3),
        "share",
        None,
        None,
    )
    print(f"{len(errors)} cases in {time.monotonic() - started:.0f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
