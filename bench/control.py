"""Control-quality benchmark: every controller on the demo district and the real-city scenarios.

For each (network, controller, seed) one closed-loop run of
:func:`rl.evaluate.run_once` on the field emulator (never teleporting) over
the scenario's demand (:func:`rl.scenarios.build_scenario`: randomTrips at a
demand level, its own demand per seed), in a pool of worker processes (libsumo
holds one simulation per process). Controllers are the names of
:data:`rl.evaluate.CONTROLLERS`; ``<name>+gate`` (for the plan deployers,
``webster`` and ``policy``) sends every proposal through the daemon's twin and
gate first (:func:`controller.commands.evaluate.gated_decide`, the settings'
gate thresholds), as ``signaltwin evaluate`` does.

Prints one JSON line per figure (ratio = value / the actuated controller's on
the same network; null without an actuated row):

* ``delay_<network>_<controller>``: mean delay per vehicle (timeLoss +
  departDelay, never-departed vehicles included) over the seeds, s;
  ``..._ci95``: half-width of its 95 % Student-t interval.
* ``nox_<network>_<controller>`` and ``..._ci95``: total NOx of the run, g.
* ``wall_<network>_<controller>``: mean wall seconds of one run.

then a Markdown table (network x controller: delay ± CI, vs actuated, NOx)
on stdout or into ``--markdown FILE``. Progress goes to stderr.

Run from the repository root (the full benchmark takes a while; ``--quick`` is a
smoke run: 1 seed, 600 s, 2 networks)::

    .venv/bin/python -m bench.control [--networks district,eval] \\
        [--controllers fixed,actuated,max-pressure,policy,policy+gate] [--seeds 5] \\
        [--hours 1] [--level mid] [--workers N] [--policy FILE] [--markdown FILE]
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import json
import math
import multiprocessing
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DEFAULT_CONTROLLERS = "fixed,actuated,max-pressure,policy,policy+gate"
GATE = "+gate"
QUICK_NETWORKS = "grid6,cross"


@dataclass(frozen=True)
class RunSpec:
    """One run, as plain data a worker process receives."""

    network: str
    controller: str
    """A name of rl.evaluate.CONTROLLERS, or ``<name>+gate``."""
    seed: int
    net: str
    detectors: str
    routes: str
    begin_s: float
    horizon_s: float
    policy: str | None
    config: str | None


def emit(figure: str, value: float, unit: str, ratio: float | None, against: str) -> None:
    """Print one figure in the benchmarks' JSON-line format."""
    print(
        json.dumps(
            {
                "figure": figure,
                "value": round(value, 4) if math.isfinite(value) else None,
                "unit": unit,
                "ratio": None if ratio is None or not math.isfinite(ratio) else round(ratio, 4),
                "against": against,
            }
        ),
        flush=True,
    )


def _settings(spec: RunSpec, state_dir: Path) -> Any:
    from configs.settings_file import load_settings
    from controller.demo import default_demo_config

    settings = load_settings(Path(spec.config) if spec.config else default_demo_config())
    settings = settings.with_state_dir(state_dir)
    return settings.model_copy(
        update={
            # one what-if worker per gated run: the pool already uses every core
            "simulation": settings.simulation.model_copy(
                update={"network": Path(spec.net), "detectors": Path(spec.detectors), "workers": 1}
            ),
            "video": settings.video.model_copy(update={"enabled": False}),
        }
    )


def run_spec(spec: RunSpec) -> dict[str, Any]:
    """Run one (network, controller, seed) in this process; return its stats and wall time."""
    from controller.commands.evaluate import gated_decide
    from rl import evaluate as ev
    from rl.features import layouts_from_network
    from simulators.network import load_network

    started = time.monotonic()
    kind, gated = spec.controller.removesuffix(GATE), spec.controller.endswith(GATE)
    state_dir = Path(tempfile.mkdtemp(prefix="signaltwin-bench-control-"))
    decide: Any = None
    try:
        settings = _settings(spec, state_dir)
        network = load_network(spec.net, spec.detectors)
        limits = settings.safety
        start_mode = "fixed"
        if kind in ("webster", "policy"):
            layouts = layouts_from_network(network)
            if kind == "webster":
                propose: Any = ev.webster_decide(layouts, limits)
            else:
                from rl.policy import TorchPolicy

                policy = TorchPolicy.load(Path(spec.policy or _shipped_policy()))
                start_mode = ev.policy_start_mode(str(policy.mode), gated)
                propose = ev.policy_decide(policy, layouts, limits)
            decide = gated_decide(settings, network, propose, kind) if gated else propose
        stats = ev.run_once(
            network,
            [Path(spec.routes)],
            kind,  # type: ignore[arg-type]
            seed=spec.seed,
            horizon_s=spec.horizon_s,
            begin_s=spec.begin_s,
            decide=decide,
            limits=limits,
            start_mode=start_mode,  # type: ignore[arg-type]
        )
        out: dict[str, Any] = stats.as_dict()
        counter = getattr(decide, "counter", None)
        if counter is not None:
            out["gate_deployed"] = counter["deployed"]
            out["gate_intervals"] = counter["intervals"]
    finally:
        twin = getattr(decide, "twin", None)
        if twin is not None:
            twin.close()
        shutil.rmtree(state_dir, ignore_errors=True)
    out["wall_s"] = time.monotonic() - started
    return out


def _shipped_policy() -> Path:
    from rl.policy import SHIPPED_POLICY

    return SHIPPED_POLICY


def _networks(text: str) -> list[str]:
    from configs.errors import ConfigError
    from rl.scenarios import scenario, scenarios

    out: list[str] = []
    for item in (t.strip() for t in text.split(",") if t.strip()):
        if item in ("train", "eval", "all"):
            names = [s.name for s in scenarios(None if item == "all" else item)]  # type: ignore[arg-type]
        else:
            try:
                names = [scenario(item).name]
            except ConfigError as e:
                raise SystemExit(f"--networks: {e}") from e
        out.extend(n for n in names if n not in out)
    return out


def _controllers(text: str) -> list[str]:
    from rl.evaluate import CONTROLLERS

    names = [c.strip() for c in text.split(",") if c.strip()]
    known = set(CONTROLLERS) | {f"{k}{GATE}" for k in ("webster", "policy")}
    unknown = [c for c in names if c not in known]
    if unknown or not names:
        raise SystemExit(
            f"--controllers: unknown {unknown}; choose from {', '.join(sorted(known))}"
        )
    return names


def _label(controller: str) -> str:
    return controller.replace(GATE, "_gate")


def _summaries(
    results: dict[tuple[str, str], list[dict[str, Any]]],
) -> dict[tuple[str, str], dict[str, float]]:
    from rl.evaluate import mean_ci

    out: dict[tuple[str, str], dict[str, float]] = {}
    for key, rows in results.items():
        delay, delay_ci = mean_ci([r["delay_s"] for r in rows])
        nox, nox_ci = mean_ci([r["nox_g"] for r in rows])
        out[key] = {
            "delay_s": delay,
            "delay_ci": delay_ci,
            "nox_g": nox,
            "nox_ci": nox_ci,
            "wall_s": sum(r["wall_s"] for r in rows) / len(rows),
            "runs": float(len(rows)),
            "deployed": float(sum(r.get("gate_deployed", 0) for r in rows)),
            "intervals": float(sum(r.get("gate_intervals", 0) for r in rows)),
        }
    return out


def _figures(
    summary: dict[tuple[str, str], dict[str, float]], networks: Sequence[str], kinds: Sequence[str]
) -> None:
    for net in networks:
        ref = summary.get((net, "actuated"))
        for kind in kinds:
            s = summary.get((net, kind))
            if s is None:
                continue
            n = int(s["runs"])
            label = f"{net}_{_label(kind)}"
            seeds = f"{n} seed(s)"
            emit(f"delay_{label}", s["delay_s"], "s",
                 s["delay_s"] / ref["delay_s"] if ref else None, "actuated")  # fmt: skip
            emit(f"delay_{label}_ci95", s["delay_ci"], "s", None,
                 f"half-width of the 95 % t-interval over {seeds}")  # fmt: skip
            emit(f"nox_{label}", s["nox_g"], "g",
                 s["nox_g"] / ref["nox_g"] if ref else None, "actuated")  # fmt: skip
            emit(f"nox_{label}_ci95", s["nox_ci"], "g", None,
                 f"half-width of the 95 % t-interval over {seeds}")  # fmt: skip
            emit(f"wall_{label}", s["wall_s"], "s", None, "mean wall time of one run")


def markdown(
    summary: dict[tuple[str, str], dict[str, float]],
    networks: Sequence[str],
    kinds: Sequence[str],
    caption: str,
) -> str:
    """The network x controller table."""
    lines = [
        caption,
        "",
        "| network | controller | delay s (± 95 % CI) | vs actuated | NOx g (± 95 % CI) | runs |",
        "|---|---|---|---|---|---|",
    ]
    for net in networks:
        ref = summary.get((net, "actuated"))
        for kind in kinds:
            s = summary.get((net, kind))
            if s is None:
                lines.append(f"| {net} | {kind} | failed | | | 0 |")
                continue
            vs = f"{(s['delay_s'] / ref['delay_s'] - 1) * 100:+.1f} %" if ref else "n/a"
            gate = (
                f" (gate passed {int(s['deployed'])}/{int(s['intervals'])})"
                if s["intervals"]
                else ""
            )
            lines.append(
                f"| {net} | {kind}{gate} | {s['delay_s']:.1f} ± {s['delay_ci']:.1f} | {vs} | "
                f"{s['nox_g']:.0f} ± {s['nox_ci']:.0f} | {int(s['runs'])} |"
            )
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    """Build the scenarios, run every (network, controller, seed), print figures and the table."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--networks",
                        help="scenario names, or train / eval / all (default: district,eval; "
                        f"{QUICK_NETWORKS} with --quick)")  # fmt: skip
    parser.add_argument("--controllers", default=DEFAULT_CONTROLLERS,
                        help="names of rl.evaluate.CONTROLLERS, or <name>+gate "
                        "(default: %(default)s)")  # fmt: skip
    parser.add_argument("--seeds", type=int, default=5, help="seeds 1..S (default 5)")
    parser.add_argument("--hours", type=float, default=1.0, help="demand window and run length")
    parser.add_argument("--level", default="mid", choices=("low", "mid", "high"))
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--policy", type=Path, help="policy weights (default: the shipped one)")
    parser.add_argument("--config", type=Path, help="settings (default: configs/demo.toml)")
    parser.add_argument("--cache", type=Path, help="scenario cache (default: a temporary one)")
    parser.add_argument("--markdown", type=Path, help="write the table here, not to stdout")
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: 1 seed, 600 s, 2 small networks")  # fmt: skip
    args = parser.parse_args(argv)
    if args.quick:
        args.seeds, args.hours = 1, 600 / 3600
    if args.networks is None:
        args.networks = QUICK_NETWORKS if args.quick else "district,eval"
    if args.seeds < 1 or args.hours <= 0 or args.workers < 1:
        raise SystemExit("--seeds and --workers must be >= 1 and --hours > 0")
    from rl.scenarios import build_scenario

    networks = _networks(args.networks)
    kinds = _controllers(args.controllers)
    cache = args.cache or Path(tempfile.mkdtemp(prefix="signaltwin-scenarios-"))
    try:
        specs: list[RunSpec] = []
        for net in networks:
            for seed in range(1, args.seeds + 1):
                built = build_scenario(net, cache, level=args.level, seed=seed, hours=args.hours)
                print(f"built {net} {args.level} seed {seed}: {built.vehicles} vehicles, "
                      f"saturation {built.saturation:.2f}", file=sys.stderr)  # fmt: skip
                for kind in kinds:
                    specs.append(
                        RunSpec(net, kind, seed, str(built.net), str(built.detectors),
                                str(built.routes), built.begin_s, built.end_s - built.begin_s,
                                str(args.policy) if args.policy else None,
                                str(args.config) if args.config else None)
                    )  # fmt: skip
        results: dict[tuple[str, str], list[dict[str, Any]]] = {}
        failed = 0
        started = time.monotonic()
        context = multiprocessing.get_context("spawn")
        with cf.ProcessPoolExecutor(max_workers=args.workers, mp_context=context) as pool:
            futures = {pool.submit(run_spec, s): s for s in specs}
            for done, future in enumerate(cf.as_completed(futures), 1):
                s = futures[future]
                try:
                    row = future.result()
                except Exception as e:  # noqa: BLE001 - one failed run is reported, not fatal
                    failed += 1
                    print(f"[{done}/{len(specs)}] {s.network} {s.controller} seed {s.seed}: "
                          f"FAILED {type(e).__name__}: {e}", file=sys.stderr)  # fmt: skip
                    continue
                results.setdefault((s.network, s.controller), []).append(row)
                print(f"[{done}/{len(specs)}] {s.network} {s.controller} seed {s.seed}: "
                      f"delay {row['delay_s']:.1f} s, NOx {row['nox_g']:.0f} g "
                      f"({row['wall_s']:.1f} s)", file=sys.stderr)  # fmt: skip
        summary = _summaries(results)
        _figures(summary, networks, kinds)
        caption = (
            f"{args.level} demand, {args.hours:g} h, seeds 1..{args.seeds}, field emulator "
            f"(no teleporting); {time.monotonic() - started:.0f} s on {args.workers} workers"
        )
        table = markdown(summary, networks, kinds, caption)
        if args.markdown:
            args.markdown.write_text(table, encoding="utf-8")
        else:
            print(table, end="")
    finally:
        if args.cache is None:
            shutil.rmtree(cache, ignore_errors=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
