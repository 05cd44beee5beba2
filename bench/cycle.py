"""Cycle time by stage on the demo district (the real demo: OPC UA, SUMO, HSM, ledger).

Runs ``signaltwin demo`` for N cycles in a scratch state directory, then reads
the stage timings the cycle records in the ledger and prints, per stage and for
the whole cycle, p50 and p95 as JSON lines. The whole cycle's p95 is compared
against the budget of 10 % of the 240 s interval (24 s): ratio < 1 meets it.

    .venv/bin/python bench/cycle.py [--cycles 6] [--speed 8] [--no-video] [--production]

``--production`` sizes the what-if and the video as configs/production.example.toml
does (its [simulation] seeds, horizon, warm-up, candidates and sequential
elimination; its [video] size, rate, length and encoder: 4 candidates, 5
paired seeds x 15 min after 5 min warm-up, elimination after 2 seeds, a
1920x1080 30 fps 20 s video) instead of the demo's 3 x 10 min and 720p 8 s.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from configs.settings_file import dump_settings_toml, load_settings  # noqa: E402
from controller.demo import DemoOptions, default_demo_config, run_demo  # noqa: E402
from controller.ledger import Ledger  # noqa: E402

BUDGET_S = 24.0
PRODUCTION = ROOT / "configs" / "production.example.toml"
#: what --production takes from production.example.toml (the rest is the demo's)
SIM_KEYS = ("seeds", "horizon_s", "warmup_s", "candidates", "elimination_seeds", "finalists")
VIDEO_KEYS = ("width", "height", "fps", "duration_s", "preset", "crf")


def production_sizes() -> tuple[dict[str, object], dict[str, object]]:
    """The what-if and video sizes of configs/production.example.toml."""
    data = tomllib.loads(PRODUCTION.read_text(encoding="utf-8"))
    sim = {k: data["simulation"][k] for k in SIM_KEYS if k in data["simulation"]}
    video = {k: data["video"][k] for k in VIDEO_KEYS if k in data["video"]}
    return sim, video


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return 0.0
    k = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
    return ordered[k]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cycles", type=int, default=6)
    parser.add_argument("--speed", type=float, default=8.0)
    parser.add_argument("--no-video", action="store_true")
    parser.add_argument("--production", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="signaltwin-bench-cycle-") as tmp:
        config = default_demo_config()
        if args.production:
            settings = load_settings(config)
            sim, video = production_sizes()
            settings = settings.model_copy(
                update={
                    "simulation": settings.simulation.model_copy(update=sim),
                    "video": settings.video.model_copy(update=video),
                }
            )
            config = Path(tmp) / "production-size.toml"
            config.write_text(dump_settings_toml(settings))
        run_demo(
            DemoOptions(
                config=config,
                state_dir=Path(tmp) / "state",
                cycles=args.cycles,
                speed=args.speed,
                video=not args.no_video,
                echo=lambda line: print(line, file=sys.stderr),
            )
        )
        with Ledger.open(Path(tmp) / "state" / "ledger.sqlite", readonly=True) as ledger:
            reports = [
                r.body["report"]
                for r in ledger.iter_records("cycle")
                if r.body.get("outcome") != "skipped" and "report" in r.body
            ]
    prefix = "production_" if args.production else ""
    # the first cycle pays the worker processes' start-up: report it apart
    steady = reports[1:] if len(reports) > 1 else reports
    stages: dict[str, list[float]] = {}
    totals = []
    for report in steady:
        for stage, seconds in report["stage_s"].items():
            stages.setdefault(stage, []).append(float(seconds))
        totals.append(sum(float(v) for v in report["stage_s"].values()))
    for stage, values in stages.items():
        for q, name in ((0.5, "p50"), (0.95, "p95")):
            print(
                json.dumps(
                    {
                        "figure": f"{prefix}cycle_stage_{stage}_{name}",
                        "value": round(_pct(values, q), 3),
                        "unit": "s",
                        "ratio": None,
                        "against": None,
                    }
                )
            )
    if reports:
        first = sum(float(v) for v in reports[0]["stage_s"].values())
        print(
            json.dumps(
                {
                    "figure": f"{prefix}cycle_first_total",
                    "value": round(first, 3),
                    "unit": "s",
                    "ratio": round(first / BUDGET_S, 3),
                    "against": "budget_24s",
                }
            )
        )
    p50, p95 = _pct(totals, 0.5), _pct(totals, 0.95)
    print(
        json.dumps(
            {
                "figure": f"{prefix}cycle_total_p50",
                "value": round(p50, 3),
                "unit": "s",
                "ratio": round(p50 / BUDGET_S, 3),
                "against": "budget_24s",
            }
        )
    )
    print(
        json.dumps(
            {
                "figure": f"{prefix}cycle_total_p95",
                "value": round(p95, 3),
                "unit": "s",
                "ratio": round(p95 / BUDGET_S, 3),
                "against": "budget_24s",
            }
        )
    )
    print(
        json.dumps(
            {
                "figure": f"{prefix}cycle_count",
                "value": len(steady),
                "unit": "cycles",
                "ratio": None,
                "against": None,
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
