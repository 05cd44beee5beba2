"""``signaltwin surrogate collect|train|info``: the candidate-screening surrogate model."""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from configs.errors import ConfigError, SimulationError
from controller.exit_codes import ExitCode

# edge_accel (torch) and simulators (SUMO) are imported inside the commands, so
# that registering them at every `signaltwin` start stays cheap.

DESCRIPTION = """\
The surrogate is a small neural network that predicts a candidate plan's
relative change of mean wait and of NOx from demand and plan features, so the
cycle can screen thousands of candidates and simulate only the best few on the
twin. Screening is optional: the cycle works without a surrogate.

  collect --config FILE.toml --out FILE.jsonl --samples N
         Rows measured on the SUMO twin of the configured district (demo
         district only): the field emulator's detector counts are probed at a
         few demand levels and times of the peak, demand is estimated from
         them exactly as the daemon does, candidates are generated exactly as
         the daemon's proposer does (Webster [+ policy] and seeded random
         perturbations through the safety projection), and each candidate is
         run on the twin against the current (base) plan with paired seeds.
         Each snapshot is one row group. Every row records what made it
         ("made_by": the twin's revision and SUMO version, the network's
         sha256, the policy's sha256, the feature layout). Progress goes to
         stderr.
  train  --data FILE.jsonl --out FILE.pt
         Each line: {"features": [numbers], "wait_change": -0.12,
         "nox_change": 0.003, "group": "optional run id", "made_by": {...}}.
         Rows of one group are held out together; rows made by different
         twins or policies are refused. Prints the held-out Spearman rank
         correlation with the twin; writes FILE.pt (a state_dict, loaded with
         weights_only, and the rows' made_by) and FILE.pt.json (metrics and
         the weights' sha256).
  info   FILE.pt: print the model's shape, recorded metrics and made_by.

The daemon screens only with a surrogate whose rows its own twin, network,
policy and feature layout made; any other is refused at start with the
commands to retrain it (collect, then train).

Exit codes: 0 ok; 1 trained, but held-out Spearman (wait) is below
--min-spearman; 2 bad data/usage.
"""


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``surrogate`` sub-command with ``collect``, ``train`` and ``info``."""
    parser = subparsers.add_parser(
        "surrogate",
        help="train or inspect the candidate-screening surrogate",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="surrogate_command", metavar="ACTION", required=True)
    collect = sub.add_parser(
        "collect", help="measure training rows on the SUMO twin of the demo district"
    )
    collect.add_argument("--config", type=Path, required=True, help="settings TOML")
    collect.add_argument("--out", type=Path, required=True, help="rows file to write (.jsonl)")
    collect.add_argument(
        "--samples", type=int, default=200, help="rows in all, spread over snapshots (200)"
    )
    collect.add_argument(
        "--snapshots", type=int, default=8, help="demand snapshots (row groups) to probe (8)"
    )
    collect.add_argument("--seeds", type=int, default=2, help="paired seeds per what-if (2)")
    collect.add_argument("--horizon-s", type=int, default=600, help="measured horizon (600 s)")
    collect.add_argument("--warmup-s", type=int, default=180, help="twin warm-up (180 s)")
    collect.add_argument(
        "--batch", type=int, default=12, help="candidates per what-if request (12)"
    )
    collect.add_argument("--workers", type=int, default=2, help="SUMO worker processes (2)")
    collect.add_argument(
        "--mesoscopic", action="store_true", help="run the twin mesoscopic (~5x faster, coarser)"
    )
    collect.add_argument("--seed", type=int, default=0, help="perturbation/probe seed (0)")
    collect.set_defaults(func=_collect)
    train = sub.add_parser("train", help="train from a JSON Lines file of twin runs")
    train.add_argument("--data", type=Path, required=True, help="training rows (.jsonl)")
    train.add_argument("--out", type=Path, required=True, help="weights file to write (.pt)")
    train.add_argument("--epochs", type=int, default=300, help="passes over the data (300)")
    train.add_argument("--hidden", default="64,64", help="hidden layer widths (64,64)")
    train.add_argument("--holdout", type=float, default=0.2, help="held-out fraction (0.2)")
    train.add_argument("--seed", type=int, default=0, help="split/initialisation seed (0)")
    train.add_argument("--device", choices=("auto", "cpu", "cuda"), default="cpu")
    train.add_argument(
        "--min-spearman", type=float, default=0.8, help="exit 1 below this held-out Spearman"
    )
    train.set_defaults(func=_train)
    info = sub.add_parser("info", help="print a weights file's shape and metrics")
    info.add_argument("weights", type=Path)
    info.set_defaults(func=_info)


def _train(args: argparse.Namespace) -> int:
    from edge_accel import describe_device, load_rows_jsonl, select_device
    from edge_accel.surrogate import save_surrogate, train_surrogate

    try:
        hidden = tuple(int(h) for h in args.hidden.split(",") if h.strip())
    except ValueError as e:
        raise ConfigError(f"--hidden {args.hidden!r}: expected widths like 64,64") from e
    device = select_device(args.device)
    rows = load_rows_jsonl(args.data)
    print(
        f"training on {len(rows)} rows, {describe_device(device)}, {args.epochs} epochs",
        file=sys.stderr,
    )
    started = time.perf_counter()
    model, metrics = train_surrogate(
        rows,
        hidden=hidden,
        epochs=args.epochs,
        holdout=args.holdout,
        seed=args.seed,
        device=device,
    )
    sha256 = save_surrogate(model, args.out, metrics)
    report = {
        **metrics.as_dict(),
        "sha256": sha256,
        "weights": str(args.out),
        "wall_s": round(time.perf_counter() - started, 3),
    }
    args.out.with_name(args.out.name + ".json").write_text(
        json.dumps(report, indent=2, sort_keys=True) + "\n", encoding="utf-8"
    )
    print(json.dumps(report, indent=2, sort_keys=True))
    if not metrics.spearman_wait >= args.min_spearman:
        print(
            f"held-out Spearman (wait) {metrics.spearman_wait:.3f} < {args.min_spearman}: "
            "do not screen with this model",
            file=sys.stderr,
        )
        return ExitCode.PROBLEM
    return ExitCode.OK


def _info(args: argparse.Namespace) -> int:
    from edge_accel.surrogate import describe_surrogate

    print(json.dumps(describe_surrogate(args.weights), indent=2, sort_keys=True))
    return ExitCode.OK


# --------------------------------------------------------------------------- collect

#: demand multipliers and probe start offsets (s after the default field start)
#: cycled through by the snapshots: low to high demand, early to late in the peak
_SCALES = (0.6, 1.0, 0.8, 1.2, 0.7, 1.1, 0.9, 1.3)
_OFFSETS_S = (0, 1800, 3600, 900, 2700, 5400, 4500, 7200)
_PROBE_WARMUP_S = 300


@dataclasses.dataclass(frozen=True)
class CollectSpec:
    """How to collect surrogate training rows on the twin.

    Attributes:
        samples: candidate rows in all (spread evenly over the snapshots).
        snapshots: demand snapshots probed from the field emulator (one row group each).
        seeds: paired SUMO seeds per what-if.
        horizon_s: measured simulated time per run.
        warmup_s: simulated warm-up per run.
        batch: candidates per what-if request.
        workers: SUMO worker processes.
        mesoscopic: run the twin's mesoscopic model.
        seed: seeds the probes and the perturbations.
    """

    samples: int
    snapshots: int = 8
    seeds: int = 2
    horizon_s: int = 600
    warmup_s: int = 180
    batch: int = 12
    workers: int = 2
    mesoscopic: bool = False
    seed: int = 0

    def validate(self) -> None:
        """Raise ConfigError naming the bad option."""
        for name in ("samples", "snapshots", "seeds", "horizon_s", "batch", "workers"):
            if getattr(self, name) < 1:
                raise ConfigError(f"surrogate collect: --{name.replace('_', '-')} must be >= 1")
        if self.warmup_s < 0:
            raise ConfigError("surrogate collect: --warmup-s must be >= 0")


def probe_counts(
    settings: Any, scale: float, offset_s: int, seed: int, workdir: Path
) -> tuple[dict[str, float], float, int]:
    """One cycle interval of the demo district field emulator's detector counts.

    Returns:
        (detector id -> count, interval s, field time at the end of the interval).

    Raises:
        ConfigError: The configured network is not the demo district.
    """
    from simulators.field import FieldConfig, FieldEmulator
    from simulators.netbuild import district_paths

    if Path(settings.simulation.network).resolve() != district_paths()["net"].resolve():
        raise ConfigError(
            f"simulation.network {settings.simulation.network}: surrogate collect probes the "
            "field emulator, which models the demo district only"
        )
    interval_s = int(settings.schedule.interval_s)
    base = FieldConfig.for_district(seed=seed, work_dir=workdir, demand_scale=scale)
    config = dataclasses.replace(base, begin_s=base.begin_s + offset_s)
    with FieldEmulator(config) as field:
        start = field.field_time_s
        field.step_until(start + _PROBE_WARMUP_S)
        before = field.detector_counts().readings
        field.step_until(start + _PROBE_WARMUP_S + interval_s)
        after = field.detector_counts()
    counts = {d: float(r.count - before[d].count) for d, r in after.readings.items()}
    return counts, float(interval_s), int(after.field_time_s)


def collect_rows(
    settings: Any,
    spec: CollectSpec,
    workdir: Path,
    progress: Callable[[str], None] | None = None,
) -> Iterator[dict[str, Any]]:
    """Yield one training row per candidate, measured on the twin.

    Candidates and features are built by the daemon's own proposer helpers
    (:meth:`controller.wiring.ProposerAdapter.perturbation_pool` and its
    ``demand_features``), so the rows match what the cycle screens at run time.

    Args:
        settings: The daemon's settings (network, safety limits, fleet, seeds).
        spec: What to collect.
        workdir: Scratch directory (field emulator output, demand files).
        progress: Called with a progress line.

    Yields:
        ``{"features", "wait_change", "nox_change", "group", "candidate",
        "demand_scale", "probe_offset_s", "counted_vph"}``; candidates the twin
        could not measure are skipped (and reported to ``progress``).

    Raises:
        ConfigError: Bad spec or settings.
        SimulationError: The twin failed as a whole.
    """
    from configs.timing import IntersectionTiming
    from controller.cycle import Observation
    from controller.wiring import ProposerAdapter, TwinAdapter, load_policy, surrogate_made_by
    from simulators.detector_health import LoopHealth
    from simulators.network import load_network
    from simulators.twin import LibsumoWhatIfEngine

    spec.validate()
    say = progress or (lambda _line: None)
    sim = settings.simulation
    network = load_network(sim.network, sim.detectors)
    current = {t: IntersectionTiming.from_base(b) for t, b in network.base_programs().items()}
    order = sorted(current)
    policy = load_policy(settings)
    made_by = surrogate_made_by(settings, policy, spec.mesoscopic)
    per_snapshot = math.ceil(spec.samples / spec.snapshots)
    remaining = spec.samples
    twin_settings = settings.model_copy(update={"state_dir": workdir})
    with LibsumoWhatIfEngine(spec.workers) as engine:
        twin = TwinAdapter(
            twin_settings, network, {d.id: d.lane_id for d in network.detectors}, engine
        )
        for snap in range(spec.snapshots):
            if remaining <= 0:
                break
            scale = _SCALES[snap % len(_SCALES)]
            offset_s = _OFFSETS_S[snap % len(_OFFSETS_S)] + 600 * (snap // len(_OFFSETS_S))
            counts, interval_s, field_time_s = probe_counts(
                settings, scale, offset_s, spec.seed * 1000 + snap + 1, workdir / f"field{snap}"
            )
            observation = Observation(field_time_s, counts, interval_s, {}, {})
            # every probe is a field of its own: no loop's rate carries over to the next
            twin.loops = LoopHealth()
            demand, digest = twin.estimate(observation)
            group = f"s{spec.seed}-snap{snap}-x{scale:g}-t{offset_s}"
            # the perturbation rng is seeded from base_seed: vary it per snapshot
            snap_sim = sim.model_copy(update={"base_seed": sim.base_seed + 7919 * snap + spec.seed})
            snap_settings = settings.model_copy(update={"simulation": snap_sim})
            proposer = ProposerAdapter(snap_settings, network, policy=policy)
            proposals, _ = proposer.propose(observation, demand, current)
            take = min(per_snapshot, remaining)
            drawn = proposer.perturbation_pool(proposals, max(0, take - len(proposals)))
            pool = drawn[:take]
            features = proposer.features(drawn.arrays(order)).numpy()[: len(pool)]
            counted_vph = sum(counts.values()) * 3600.0 / interval_s
            say(
                f"snapshot {snap + 1}/{spec.snapshots}: demand x{scale:g} at +{offset_s} s, "
                f"{sum(counts.values()):.0f} vehicles counted in {interval_s:.0f} s "
                f"(demand {digest[:12]}), {len(pool)} candidates"
            )
            for lo in range(0, len(pool), spec.batch):
                chunk = pool[lo : lo + spec.batch]
                request = dataclasses.replace(
                    twin.request(demand, current, {name: plans for name, plans in chunk}),
                    horizon_s=spec.horizon_s,
                    warmup_s=spec.warmup_s,
                    seeds=tuple(sim.base_seed + i for i in range(spec.seeds)),
                    record=None,
                    mesoscopic=spec.mesoscopic,
                )
                started = time.perf_counter()
                result = engine.evaluate(request)
                say(
                    f"  what-if {lo // spec.batch + 1}/{math.ceil(len(pool) / spec.batch)}: "
                    f"{len(chunk)} candidates x {spec.seeds} seeds in "
                    f"{time.perf_counter() - started:.1f} s"
                )
                if result.current.failed:
                    raise SimulationError(
                        f"surrogate collect: the current plan failed on the twin "
                        f"({result.current.failed}); try a lower demand or --horizon-s"
                    )
                for k, (name, _) in enumerate(chunk):
                    outcome = result.outcome(name)
                    wait = outcome.changes.get("wait")
                    nox = outcome.changes.get("nox")
                    if outcome.failed or wait is None or nox is None:
                        say(f"  skipped {name}: {outcome.failed or 'no change measured'}")
                        continue
                    remaining -= 1
                    yield {
                        "features": [round(float(v), 6) for v in features[lo + k]],
                        "wait_change": float(wait.mean),
                        "nox_change": float(nox.mean),
                        "group": group,
                        "candidate": name,
                        "demand_scale": scale,
                        "probe_offset_s": offset_s,
                        "counted_vph": round(counted_vph, 1),
                        "made_by": made_by,
                    }


def _collect(args: argparse.Namespace) -> int:
    from configs.settings_file import load_settings

    settings = load_settings(args.config)
    spec = CollectSpec(
        samples=args.samples,
        snapshots=args.snapshots,
        seeds=args.seeds,
        horizon_s=args.horizon_s,
        warmup_s=args.warmup_s,
        batch=args.batch,
        workers=args.workers,
        mesoscopic=args.mesoscopic,
        seed=args.seed,
    )
    spec.validate()
    print(
        f"collecting {spec.samples} rows over {spec.snapshots} demand snapshots: "
        f"{spec.seeds} paired seeds, {spec.warmup_s} s warm-up + {spec.horizon_s} s horizon"
        f"{', mesoscopic' if spec.mesoscopic else ''}, {spec.workers} workers",
        file=sys.stderr,
    )
    started = time.perf_counter()
    written = 0
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp_out = args.out.with_name(args.out.name + ".partial")
    with (
        tempfile.TemporaryDirectory(prefix="signaltwin-collect-") as tmp,
        tmp_out.open("w", encoding="utf-8") as out,
    ):
        for row in collect_rows(settings, spec, Path(tmp), _say):
            out.write(json.dumps(row, sort_keys=True) + "\n")
            out.flush()
            written += 1
    tmp_out.replace(args.out)
    wall_s = time.perf_counter() - started
    print(
        json.dumps({"rows": written, "out": str(args.out), "wall_s": round(wall_s, 1)}),
    )
    return ExitCode.OK if written else ExitCode.PROBLEM


def _say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def rows_of(records: Sequence[dict[str, Any]]) -> list[Any]:
    """Training rows of collected records (the extra keys are ignored)."""
    from edge_accel.surrogate import SurrogateRow

    return [SurrogateRow.from_mapping(r, f"row {i}") for i, r in enumerate(records)]
