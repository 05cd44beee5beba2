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
    _holdout_mask,
    candidate_features,
    load_rows_jsonl,
    load_surrogate,
    plan_arrays,
    screen,
    spearman,
)
from simulators.network import load_network  # noqa: E402
from tests.support.reference_screening import reference_pool  # noqa: E402

CONFIG = ROOT / "configs" / "demo.toml"
ROWS = ROOT / "configs" / "district" / "surrogate.rows.jsonl"


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
    order = sorted(current)
    features = candidate_features(
        proposer.demand_features, plan_arrays([p for _, p in pool], order),
        plan_arrays([current], order), proposer.surrogate_device,
    )  # fmt: skip
    result = screen(proposer.surrogate, features, top_k=keep + len(candidates),
                    max_nox_change=proposer.settings.gate.max_nox_increase)  # fmt: skip
    kept = dict(sorted(candidates.items())[:keep])
    for i in result.selected:
        if len(kept) >= keep:
            break
        kept.setdefault(pool[int(i)][0], pool[int(i)][1])
    return sorted(kept)


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
    rho, snapshots = within_snapshot_spearman()
    emit("surrogate_spearman_wait_within_snapshot", rho, "rho", None, None,
         snapshots=snapshots, rows=str(ROWS.relative_to(ROOT)))  # fmt: skip


if __name__ == "__main__":
    main()
