"""Screening: candidates per second end to end, and the surrogate's ranking within a snapshot.

The daemon's real work with the demo's settings (configs/demo.toml: the shipped
surrogate configs/district/surrogate.pt, ``screen_candidates`` perturbations,
``candidates`` kept): one detector interval is probed from the field
emulator, the proposer proposes (Webster and the policy), and
``ProposerAdapter.screen`` draws the perturbations, projects every one onto the
safe set, builds the features, scores them and keeps the best. Prints JSON lines:

* ``screen_candidates_per_s``: the daemon's path, pool size / median wall time
  of ``ProposerAdapter.screen`` (target >= 10 000): the seeded perturbations
  drawn as arrays and projected as tensors
  (:class:`edge_accel.screening.PerturbationPool`), features, surrogate scores
  and top-k, and only the kept candidates built as plans. ``ratio`` = ours /
  the previous design doing the same work (tests/support/reference_screening.py:
  each perturbation projected by ``configs.safety.project_plans`` and built
  as models, the same pool); ``same_kept`` says both kept the same candidates.
* ``surrogate_spearman_wait_within_snapshot``: the shipped surrogate's Spearman
  rank correlation with the twin's measured wait change among the candidates of
  one demand snapshot, median over the held-out snapshots of the shipped rows
  (configs/district/surrogate.rows.jsonl, the split ``surrogate train`` used).
  ``ratio`` = shipped / the same recipe (hidden widths, epochs, seed, split)
  trained on the same rows without the per-intersection saturation features.
  ``..._split1``, ``..._split2``: the shipped recipe retrained with held-out
  splits 1 and 2 (other snapshots held out), each against its own ablation.

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

import torch  # noqa: E402

from configs.settings_file import load_settings  # noqa: E402
from configs.timing import IntersectionTiming  # noqa: E402
from controller.commands.surrogate import probe_counts  # noqa: E402
from controller.contracts import Observation  # noqa: E402
from controller.wiring import ProposerAdapter, load_policy, load_screening_surrogate  # noqa: E402
from edge_accel.surrogate import (  # noqa: E402
    SATURATION_FEATURES,
    SurrogateModel,
    SurrogateRow,
    _holdout_mask,
    describe_surrogate,
    load_rows_jsonl,
    load_surrogate,
    plan_arrays,
    screen,
    spearman,
    train_surrogate,
)
from simulators.network import load_network  # noqa: E402
from tests.support.reference_screening import reference_pool  # noqa: E402

CONFIG = ROOT / "configs" / "demo.toml"
ROWS = ROOT / "configs" / "district" / "surrogate.rows.jsonl"
SURROGATE = ROOT / "configs" / "district" / "surrogate.pt"


def emit(figure: str, value: float, unit: str, ratio: float | None, against: str | None,
         **extra: object) -> None:  # fmt: skip
    print(json.dumps({"figure": figure, "value": round(value, 4), "unit": unit,
                      "ratio": None if ratio is None else round(ratio, 3), "against": against,
                      **extra}), flush=True)  # fmt: skip


def previous_design(proposer: ProposerAdapter, candidates: dict, n: int, keep: int,
                    seed: int) -> list[str]:  # fmt: skip
    """Screening before it was batched: each perturbation projected and built as models."""
    current = proposer._current  # noqa: SLF001 - the bench drives the proposer's own state
    bases = {t: layout.base for t, layout in proposer.layouts.items()}
    pool = reference_pool(candidates, current, bases, proposer.settings.safety, seed, n)
    features = proposer.features(plan_arrays([p for _, p in pool], sorted(current)))
    result = screen(proposer.surrogate, features, top_k=keep + len(candidates),
                    max_nox_change=proposer.settings.gate.max_nox_increase)  # fmt: skip
    kept = dict(sorted(candidates.items())[:keep])
    for i in result.selected:
        if len(kept) >= keep:
            break
        kept.setdefault(pool[int(i)][0], pool[int(i)][1])
    return sorted(kept)


def within_snapshot_spearman(
    model: SurrogateModel, rows: list[SurrogateRow], split: int = 0
) -> tuple[float, int]:
    """Median over the held-out snapshots of ``split`` of Spearman(predicted, twin) within each."""
    held = _holdout_mask(rows, 0.2, split)
    groups: dict[str, list[int]] = {}
    for i, r in enumerate(rows):
        if held[i]:
            groups.setdefault(r.group, []).append(i)
    x = torch.tensor([r.features for r in rows], dtype=torch.float32)
    with torch.no_grad():
        pred = model(x)[:, 0].numpy()
    rhos = [spearman(pred[idx], [rows[i].wait_change for i in idx]) for idx in groups.values()]
    return float(statistics.median(rhos)), len(rhos)


def recipe(rows: list[SurrogateRow], shipped: SurrogateModel, split: int) -> SurrogateModel:
    """The shipped model's recipe (hidden widths, epochs) trained with split ``split``."""
    metrics = describe_surrogate(SURROGATE)["metrics"]
    model, _ = train_surrogate(rows, hidden=shipped.hidden,
                               epochs=int(metrics.get("epochs", 200)), seed=split)  # fmt: skip
    return model


def ranking_figures(splits: int) -> None:
    """The shipped surrogate's within-snapshot ranking, and the recipe on other splits."""
    rows = load_rows_jsonl(ROWS)
    stripped = [
        SurrogateRow(r.features[:-SATURATION_FEATURES], r.wait_change, r.nox_change, r.group)
        for r in rows
    ]
    shipped = load_surrogate(SURROGATE)
    for split in range(splits):
        ours = shipped if split == 0 else recipe(rows, shipped, split)
        rho, snapshots = within_snapshot_spearman(ours, rows, split)
        rho_without, _ = within_snapshot_spearman(recipe(stripped, shipped, split), stripped, split)
        name = "surrogate_spearman_wait_within_snapshot" + ("" if split == 0 else f"_split{split}")
        emit(name, rho, "rho", rho / rho_without,
             f"the same rows and recipe without the saturation features (rho {rho_without:.3f})",
             snapshots=snapshots, rows=str(ROWS.relative_to(ROOT)),
             model="shipped" if split == 0 else f"shipped recipe, split {split}")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument(
        "--splits", type=int, default=3,
        help="held-out splits to rank on (0 is the shipped model's; the others retrain its recipe)",
    )  # fmt: skip
    args = parser.parse_args()
    settings = load_settings(CONFIG)
    sim = settings.simulation
    network = load_network(sim.network, sim.detectors)
    policy = load_policy(settings)
    surrogate, device = load_screening_surrogate(settings, policy)
    if surrogate is None:
        raise SystemExit(f"{CONFIG}: screening is off (no surrogate or screen_candidates = 0)")
    proposer = ProposerAdapter(settings, network, policy, surrogate, device)
    current = {t: IntersectionTiming.from_base(b) for t, b in network.base_programs().items()}
    with tempfile.TemporaryDirectory() as tmp:
        counts, interval_s, field_time_s = probe_counts(settings, 1.0, 1800, 1, Path(tmp))
    observation = Observation(field_time_s, counts, interval_s, {}, {})
    candidates, _ = proposer.propose(observation, {}, current)
    n, keep = sim.screen_candidates, sim.candidates
    ours, before = [], []
    same = True
    for _ in range(args.repeats):
        started = time.perf_counter()
        kept = proposer.screen(candidates, keep)
        ours.append(time.perf_counter() - started)
        started = time.perf_counter()
        same &= previous_design(proposer, candidates, n, keep, sim.base_seed) == sorted(kept)
        before.append(time.perf_counter() - started)
    pool = n + len(candidates)
    ours_rate = pool / statistics.median(ours)
    before_rate = pool / statistics.median(before)
    common = {"candidates": n, "kept": keep, "intersections": len(current)}
    emit("screen_candidates_per_s", ours_rate, "candidates/s", ours_rate / before_rate,
         f"the previous design: each perturbation projected and built as plans "
         f"({before_rate:.0f} candidates/s)", target=10_000, same_kept=same, **common)  # fmt: skip
    ranking_figures(args.splits)


if __name__ == "__main__":
    main()
