"""Screening: candidates per second end to end, and the surrogate's ranking within a snapshot.

The daemon's real work with the demo's settings (configs/demo.toml: the shipped
surrogate configs/district/surrogate.pt, ``screen_candidates`` perturbations,
``candidates`` kept): one detector interval is probed from the field
emulator, the proposer proposes (Webster and the policy), and
``ProposerAdapter.screen`` draws the perturbations, projects every one onto the
safe set, builds the features, scores them and keeps the best. Prints JSON lines:

* ``screen_candidates_per_s``: the daemon's path, pool size / median wall time
  of ``ProposerAdapter.screen`` (target >= 10 000); ``ratio`` = ours / the
  batched prototype below doing the same amount of work.
* ``screen_batch_candidates_per_s``: the batched prototype (not yet used by the
  daemon): the same number of seeded perturbations drawn as arrays, projected
  with :class:`edge_accel.projection.BatchProjector` (the same whole-second
  plans as ``configs.safety.project``; tests/unit/test_batch_projection.py),
  features, surrogate scores and top-k, and only the kept candidates built
  as plans.
* ``surrogate_spearman_wait_within_snapshot``: the shipped surrogate's Spearman
  rank correlation with the twin's measured wait change among the candidates of
  one demand snapshot, median over the held-out snapshots of the shipped rows
  (configs/district/surrogate.rows.jsonl, the split ``surrogate train`` used).

Usage: .venv/bin/python bench/screen.py [--repeats 5]
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
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from configs.settings_file import load_settings  # noqa: E402
from configs.timing import IntersectionTiming  # noqa: E402
from controller.commands.surrogate import probe_counts  # noqa: E402
from controller.contracts import Observation  # noqa: E402
from controller.wiring import ProposerAdapter, load_policy, load_screening_surrogate  # noqa: E402
from edge_accel.projection import BatchProjector  # noqa: E402
from edge_accel.surrogate import (  # noqa: E402
    PlanArrays,
    _holdout_mask,
    candidate_features,
    load_rows_jsonl,
    load_surrogate,
    plan_arrays,
    screen,
    spearman,
)
from simulators.network import load_network  # noqa: E402

CONFIG = ROOT / "configs" / "demo.toml"
ROWS = ROOT / "configs" / "district" / "surrogate.rows.jsonl"


def emit(figure: str, value: float, unit: str, ratio: float | None, against: str | None,
         **extra: object) -> None:  # fmt: skip
    print(json.dumps({"figure": figure, "value": round(value, 4), "unit": unit,
                      "ratio": None if ratio is None else round(ratio, 3), "against": against,
                      **extra}), flush=True)  # fmt: skip


def batched(proposer: ProposerAdapter, candidates: dict, projector: BatchProjector, n: int,
            keep: int, seed: int) -> dict[str, dict[str, IntersectionTiming]]:  # fmt: skip
    """The prototype: draw, project, featurise, score and build only what is kept."""
    order = projector.order
    g = max(projector.greens)
    names = sorted(candidates)
    rng = np.random.default_rng(seed)
    green = np.zeros((n, len(order), g))
    cycle = np.zeros((n, len(order)))
    offset = np.zeros((n, len(order)))
    origin = np.arange(n) % len(names)
    for o, name in enumerate(names):
        rows = origin == o
        for k, t in enumerate(order):
            plan = candidates[name][t]
            base = proposer.layouts[t].base
            green[rows, k, : projector.greens[k]] = [
                plan.phases[i].duration_s for i in base.green_indices
            ]
            cycle[rows, k] = plan.cycle_s
            offset[rows, k] = plan.offset_s
    green *= rng.uniform(0.8, 1.2, size=green.shape)
    cycle *= rng.uniform(0.85, 1.15, size=(n, 1))
    batch = projector.project(torch.from_numpy(green), torch.from_numpy(cycle))
    cyc = batch.cycle_s.to(torch.float32)
    offs = torch.remainder(torch.from_numpy(offset).round(), batch.cycle_s).to(torch.float32)
    greens = torch.zeros((n, len(order), 4), dtype=torch.float32)
    width = min(4, g)
    greens[..., :width] = batch.green_s[..., :width].to(torch.float32)
    arrays = PlanArrays(greens.numpy(), cyc.numpy(), offs.numpy())
    current = proposer._current  # noqa: SLF001 - the bench drives the proposer's own state
    features = candidate_features(
        proposer.demand_features, arrays, plan_arrays([current], list(order)),
        proposer.surrogate_device,
    )  # fmt: skip
    result = screen(proposer.surrogate, features, top_k=keep,
                    max_nox_change=proposer.settings.gate.max_nox_increase)  # fmt: skip
    kept = {}
    for i in result.selected:
        wanted = {t: float(offset[i, k]) for k, t in enumerate(order)}
        kept[f"{names[origin[i]]}~{i}"] = projector.plans(batch, int(i), wanted)
    return kept


def within_snapshot_spearman() -> tuple[float, int]:
    rows = load_rows_jsonl(ROWS)
    held = _holdout_mask(rows, 0.2, 0)
    model = load_surrogate(ROOT / "configs" / "district" / "surrogate.pt")
    groups: dict[str, list[int]] = {}
    for i, r in enumerate(rows):
        if held[i]:
            groups.setdefault(r.group, []).append(i)
    x = torch.tensor([r.features for r in rows], dtype=torch.float32)
    with torch.no_grad():
        pred = model(x)[:, 0].numpy()
    rhos = [spearman(pred[idx], [rows[i].wait_change for i in idx]) for idx in groups.values()]
    return float(statistics.median(rhos)), len(rhos)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    settings = load_settings(CONFIG)
    sim = settings.simulation
    network = load_network(sim.network, sim.detectors)
    surrogate, device = load_screening_surrogate(settings)
    if surrogate is None:
        raise SystemExit(f"{CONFIG}: screening is off (no surrogate or screen_candidates = 0)")
    proposer = ProposerAdapter(settings, network, load_policy(settings), surrogate, device)
    current = {t: IntersectionTiming.from_base(b) for t, b in network.base_programs().items()}
    with tempfile.TemporaryDirectory() as tmp:
        counts, interval_s, field_time_s = probe_counts(settings, 1.0, 1800, 1, Path(tmp))
    observation = Observation(field_time_s, counts, interval_s, {}, {})
    candidates, _ = proposer.propose(observation, {}, current)
    n, keep = sim.screen_candidates, sim.candidates
    ours, proto = [], []
    for _ in range(args.repeats):
        started = time.perf_counter()
        proposer.screen(candidates, keep)
        ours.append(time.perf_counter() - started)
        started = time.perf_counter()
        projector = BatchProjector(
            {t: layout.base for t, layout in proposer.layouts.items()}, settings.safety, current,
            sorted(current),
        )  # fmt: skip
        batched(proposer, candidates, projector, n, keep, sim.base_seed)
        proto.append(time.perf_counter() - started)
    pool = n + len(candidates)
    ours_rate = pool / statistics.median(ours)
    proto_rate = n / statistics.median(proto)
    common = {"candidates": n, "kept": keep, "intersections": len(current)}
    emit("screen_candidates_per_s", ours_rate, "candidates/s", ours_rate / proto_rate,
         "screen_batch_candidates_per_s (the batched prototype, same pool size)",
         target=10_000, **common)  # fmt: skip
    emit("screen_batch_candidates_per_s", proto_rate, "candidates/s", None, None, **common)
    rho, snapshots = within_snapshot_spearman()
    emit("surrogate_spearman_wait_within_snapshot", rho, "rho", None, None,
         snapshots=snapshots, rows=str(ROWS.relative_to(ROOT)))  # fmt: skip


if __name__ == "__main__":
    main()
