"""Benchmark the screening surrogate: candidates screened per second, and ranking quality.

Two data sets:

- SUMO (the real one): rows measured on the twin of the demo district by
  ``signaltwin surrogate collect`` (shipped as configs/district/surrogate.rows.jsonl,
  the rows configs/district/surrogate.pt was trained on; ``--rows FILE`` for
  others). Rows are grouped by demand snapshot (a field-emulator probe at one
  demand level and time of the peak); whole snapshots are held out.
- SYNTHETIC: the "observed" outcomes come from an analytic traffic model, not
  SUMO: Webster's delay (uniform + random term) and a stop-rate proxy for NOx
  on a district of two-phase intersections, with noise; grouped and held out
  the same way. Kept for the throughput figures on a 50-intersection district.

Prints one JSON line per figure:
- surrogate_spearman_wait_sumo / surrogate_spearman_nox_sumo: held-out rank
  correlation with the twin's paired outcomes; target >= 0.8 (wait). Against a
  ridge regression on the same features and split (numpy), ratio = ours / ridge.
- ridge_spearman_wait_sumo / ridge_spearman_nox_sumo: that baseline.
- surrogate_train_s: training time (CPU, synthetic rows).
- surrogate_spearman_wait / surrogate_spearman_nox: held-out rank correlation
  with the SYNTHETIC outcomes (``data`` says so); target >= 0.8.
- torch_mlp_forward_candidates_per_s_<dev>: the bare MLP forward on ready features.
- surrogate_screen_candidates_per_s_<dev>: ours end to end (plan arrays ->
  features -> batched prediction -> top-k with the NOx limit); ratio = ours / bare.

Usage: .venv/bin/python bench/surrogate.py [--candidates 4096] [--intersections 50]
       [--rows configs/district/surrogate.rows.jsonl]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from edge_accel import describe_device
from edge_accel.surrogate import (
    PlanArrays,
    SurrogateRow,
    _holdout_mask,
    candidate_features,
    describe_surrogate,
    load_rows_jsonl,
    screen,
    spearman,
    train_surrogate,
)

SHIPPED_ROWS = Path(__file__).resolve().parents[1] / "configs" / "district" / "surrogate.rows.jsonl"
SHIPPED_MODEL = SHIPPED_ROWS.with_name("surrogate.pt")

SAT_VPS = 0.5  # saturation flow per approach, vehicles per second
LOST_S = 6.0  # yellow + red clearance per cycle


def emit(
    figure: str, value: float, unit: str, ratio: float | None, against: str | None, **extra: object
) -> None:
    line = {
        "figure": figure,
        "value": round(value, 4),
        "unit": unit,
        "ratio": None if ratio is None else round(ratio, 3),
        "against": against,
        **extra,
    }
    print(json.dumps(line), flush=True)


def webster(q: np.ndarray, green: np.ndarray, cycle: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-approach delay (s/veh) and stop rate for flows q (veh/s)."""
    lam = np.clip(green / cycle, 0.05, 0.95)
    x = np.clip(q / (SAT_VPS * lam), 0.0, 0.97)
    uniform = 0.5 * cycle * (1 - lam) ** 2 / (1 - lam * x)
    random = x**2 / (2 * np.maximum(q, 1e-3) * (1 - x))
    stops = 0.9 * (1 - lam) / (1 - np.clip(q / SAT_VPS, 0, 0.95))
    return uniform + random, stops


def district_outcome(q: np.ndarray, plans: PlanArrays) -> tuple[np.ndarray, np.ndarray]:
    """Flow-weighted mean delay and total stops for each plan; q is [I, 2]."""
    d, s = webster(q[None], plans.green_s[..., :2], plans.cycle_s[..., None])
    weight = q[None]
    return (d * weight).sum(axis=(1, 2)) / weight.sum(), (s * weight).sum(axis=(1, 2))


def make_plans(
    rng: np.random.Generator, n: int, i: int, spread: float
) -> tuple[PlanArrays, PlanArrays]:
    current_cycle = np.full((1, i), 90.0, dtype=np.float32)
    current_green = np.zeros((1, i, 4), dtype=np.float32)
    current_green[0, :, 0] = 42.0
    current_green[0, :, 1] = 42.0
    current = PlanArrays(current_green, current_cycle, np.zeros((1, i), dtype=np.float32))
    cycle = (
        90.0
        * rng.uniform(1 - spread, 1 + spread, size=(n, 1))
        * rng.uniform(0.95, 1.05, size=(n, i))
    )
    shift = rng.uniform(-0.2, 0.2, size=(n, 1)) + rng.normal(0, 0.04, size=(n, i))
    split = np.clip(0.5 + shift, 0.15, 0.85)
    green = np.zeros((n, i, 4), dtype=np.float32)
    green[..., 0] = (cycle - LOST_S) * split
    green[..., 1] = (cycle - LOST_S) * (1 - split)
    offset = rng.uniform(0, 1, size=(n, i)) * cycle
    cand = PlanArrays(green, cycle.astype(np.float32), offset.astype(np.float32))
    return cand, current


def demand_features(q: np.ndarray) -> np.ndarray:
    y = q / SAT_VPS
    return np.array(
        [y[:, 0].mean(), y[:, 1].mean(), (y[:, 0] - y[:, 1]).mean(), y.max(), y.sum(1).mean()],
        dtype=np.float32,
    )


def synthetic_rows(groups: int, per_group: int, i: int, seed: int) -> list[SurrogateRow]:
    rng = np.random.default_rng(seed)
    rows: list[SurrogateRow] = []
    for g in range(groups):
        base = rng.uniform(0.08, 0.2, size=(1, 2)) * np.array([[1.0, rng.uniform(0.6, 1.4)]])
        q = np.clip(base * rng.uniform(0.8, 1.2, size=(i, 2)), 0.02, 0.3)
        cand, current = make_plans(rng, per_group, i, 0.3)
        d_cur, s_cur = district_outcome(q, current)
        d_new, s_new = district_outcome(q, cand)
        wait = d_new / d_cur - 1 + rng.normal(0, 0.02, size=per_group)
        nox = 0.3 * (s_new / s_cur - 1) + rng.normal(0, 0.003, size=per_group)
        feats = candidate_features(demand_features(q), cand, current).numpy()
        rows += [
            SurrogateRow(tuple(float(v) for v in f), float(w), float(o), f"demand{g}")
            for f, w, o in zip(feats, wait, nox, strict=True)
        ]
    return rows


def ridge_spearman(
    rows: list[SurrogateRow], holdout: float, seed: int, alpha: float = 1.0
) -> tuple[float, float]:
    """Held-out Spearman of a ridge regression on the same standardised features and split."""
    x = np.asarray([r.features for r in rows], dtype=np.float64)
    y = np.asarray([(r.wait_change, r.nox_change) for r in rows], dtype=np.float64)
    held = _holdout_mask(rows, holdout, seed)
    mean, std = x[~held].mean(0), x[~held].std(0) + 1e-6
    z = np.hstack(((x - mean) / std, np.ones((len(rows), 1))))
    a = z[~held]
    coef = np.linalg.solve(a.T @ a + alpha * np.eye(a.shape[1]), a.T @ y[~held])
    pred = z[held] @ coef
    return spearman(pred[:, 0], y[held, 0]), spearman(pred[:, 1], y[held, 1])


def sumo_figures(path: Path, epochs: int | None) -> None:
    """Held-out ranking quality on twin rows: ours (the MLP) against a ridge regression."""
    rows = load_rows_jsonl(path)
    groups = len({r.group for r in rows})
    # the shipped model's recipe: its hidden widths and epochs, seed 0
    shipped = describe_surrogate(SHIPPED_MODEL)
    epochs = int(shipped["metrics"].get("epochs", 200)) if epochs is None else epochs
    _, metrics = train_surrogate(rows, hidden=tuple(shipped["hidden"]), epochs=epochs, seed=0)
    ridge_wait, ridge_nox = ridge_spearman(rows, 0.2, 0)
    data = f"SUMO twin of the demo district ({path.name}, {len(rows)} rows, {groups} snapshots)"
    common = {"data": data, "holdout_rows": metrics.n_holdout, "train_rows": metrics.n_train}
    emit("ridge_spearman_wait_sumo", ridge_wait, "rho", None, None, **common)
    emit("ridge_spearman_nox_sumo", ridge_nox, "rho", None, None, **common)
    emit("surrogate_spearman_wait_sumo", metrics.spearman_wait, "rho",
         metrics.spearman_wait / ridge_wait if ridge_wait else None, "ridge_spearman_wait_sumo",
         target=0.8, mae=round(metrics.mae_wait, 4), **common)  # fmt: skip
    emit("surrogate_spearman_nox_sumo", metrics.spearman_nox, "rho",
         metrics.spearman_nox / ridge_nox if ridge_nox else None, "ridge_spearman_nox_sumo",
         target=0.8, mae=round(metrics.mae_nox, 5), **common)  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--candidates", type=int, default=4096)
    parser.add_argument("--intersections", type=int, default=50)
    parser.add_argument("--epochs", type=int, default=150)
    parser.add_argument(
        "--rows", type=Path, default=SHIPPED_ROWS, help="twin rows (signaltwin surrogate collect)"
    )
    parser.add_argument(
        "--sumo-epochs", type=int, default=None,
        help="epochs on the twin rows (default: the shipped model's)",
    )  # fmt: skip
    args = parser.parse_args()
    i = args.intersections

    sumo_figures(args.rows, args.sumo_epochs)

    rows = synthetic_rows(groups=40, per_group=50, i=i, seed=0)
    started = time.perf_counter()
    model, metrics = train_surrogate(rows, epochs=args.epochs, seed=0)
    emit("surrogate_train_s", time.perf_counter() - started, "s", None, None,
         rows=len(rows), device="cpu")  # fmt: skip
    data = "synthetic (Webster delay model, not SUMO)"
    emit("surrogate_spearman_wait", metrics.spearman_wait, "rho", None, None, data=data,
         holdout_rows=metrics.n_holdout, target=0.8)  # fmt: skip
    emit("surrogate_spearman_nox", metrics.spearman_nox, "rho", None, None, data=data,
         holdout_rows=metrics.n_holdout, target=0.8)  # fmt: skip

    rng = np.random.default_rng(1)
    q = rng.uniform(0.05, 0.2, size=(i, 2))
    cand, current = make_plans(rng, args.candidates, i, 0.3)
    dem = demand_features(q)
    devices = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    for dev in devices:
        m = model.to(dev)
        feats = candidate_features(dem, cand, current, dev)

        def sync(d: torch.device = dev) -> None:
            if d.type == "cuda":
                torch.cuda.synchronize(d)

        def bare(m: torch.nn.Module = m, feats: torch.Tensor = feats) -> None:
            with torch.no_grad():
                m(feats)

        def ours(m: torch.nn.Module = m, d: torch.device = dev) -> None:
            f = candidate_features(dem, cand, current, d)
            screen(m, f, top_k=4, max_nox_change=0.008)  # type: ignore[arg-type]

        timings = {}
        for name, fn in (("bare", bare), ("ours", ours)):
            fn()
            sync()
            reps = 5
            started = time.perf_counter()
            for _ in range(reps):
                fn()
            sync()
            timings[name] = args.candidates * reps / (time.perf_counter() - started)
        tag = dev.type
        where = describe_device(dev)
        emit(f"torch_mlp_forward_candidates_per_s_{tag}", timings["bare"], "candidates/s", None,
             None, device=where, intersections=i)  # fmt: skip
        emit(f"surrogate_screen_candidates_per_s_{tag}", timings["ours"], "candidates/s",
             timings["ours"] / timings["bare"], f"torch_mlp_forward_candidates_per_s_{tag}",
             device=where, intersections=i, candidates=args.candidates)  # fmt: skip


if __name__ == "__main__":
    main()
