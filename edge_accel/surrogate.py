"""A small MLP that predicts a candidate plan's wait and NOx change, for screening.

The cycle can propose far more candidate timing plans than SUMO can simulate in
one four-minute cycle. The surrogate ranks them (thousands per call, batched on
the device) so that only the best few go to the twin. It is trained on twin
runs -- rows of ``(features, observed wait_change, observed nox_change)`` -- and
reports its Spearman rank correlation with the twin on held-out runs; the cycle
must work without it (screening is optional), and a surrogate whose held-out
correlation is poor should not be trusted to screen.

Features (see :func:`candidate_features`): the caller's demand features
followed by plan features pooled over intersections (mean, min, max), so the
vector has a fixed size whatever the district: per intersection, the green
fractions of the first ``max_greens`` green phases, cycle/150 s, offset/cycle,
the change of cycle against the current plan /20 s, and the change of each
green fraction against the current plan. Given each green's critical flow
ratio, per-intersection saturation features follow (the degree of saturation
and Webster's uniform delay of every green, see :func:`saturation_features`),
so the model sees which intersection a plan starves rather than district
averages alone.
"""

from __future__ import annotations

import json
import logging
import math
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from torch import nn

from configs.digests import sha256_file, sha256_hex
from configs.errors import ConfigError
from configs.timing import IntersectionTiming, classify_state

__all__ = [
    "FEATURES_VERSION",
    "SATURATION_FEATURES",
    "SURROGATE_FORMAT",
    "PlanArrays",
    "ScreenResult",
    "SurrogateMetrics",
    "SurrogateModel",
    "SurrogateRow",
    "candidate_features",
    "describe_surrogate",
    "load_rows_jsonl",
    "load_surrogate",
    "plan_arrays",
    "rows_made_by",
    "saturation_features",
    "save_surrogate",
    "screen",
    "spearman",
    "train_surrogate",
]

logger = logging.getLogger(__name__)

#: v2: the per-intersection saturation features and what made the rows (``made_by``)
SURROGATE_FORMAT = "signaltwin.surrogate/v2"
#: the feature layout :func:`candidate_features` builds with the flow ratios
FEATURES_VERSION = "signaltwin.features/v2: district demand, pooled plan, saturation"
_CYCLE_SCALE_S = 150.0
_CYCLE_CHANGE_SCALE_S = 20.0
_MIN_FEATURE_STD = 1e-3


# -- features ---------------------------------------------------------------------------


@dataclass(frozen=True)
class PlanArrays:
    """Many district plans as arrays (``N`` plans, ``I`` intersections, ``G`` greens).

    Attributes:
        green_s: ``[N, I, G]`` green durations, zero-padded past an intersection's greens.
        cycle_s: ``[N, I]`` cycle lengths.
        offset_s: ``[N, I]`` offsets.
    """

    green_s: npt.NDArray[np.float32]
    cycle_s: npt.NDArray[np.float32]
    offset_s: npt.NDArray[np.float32]


def plan_arrays(
    plans: Sequence[Mapping[str, IntersectionTiming]],
    tls_order: Sequence[str],
    max_greens: int = 4,
) -> PlanArrays:
    """Convert timing plans (one mapping of intersection -> timing per plan) to arrays.

    Raises:
        ConfigError: A plan lacks an intersection of ``tls_order``.
    """
    n, i_count = len(plans), len(tls_order)
    green = np.zeros((n, i_count, max_greens), dtype=np.float32)
    cycle = np.zeros((n, i_count), dtype=np.float32)
    offset = np.zeros((n, i_count), dtype=np.float32)
    for p, plan in enumerate(plans):
        for i, tls in enumerate(tls_order):
            timing = plan.get(tls)
            if timing is None:
                raise ConfigError(f"surrogate features: plan {p} has no timing for {tls!r}")
            greens = [ph.duration_s for ph in timing.phases if classify_state(ph.state) == "green"]
            green[p, i, : min(max_greens, len(greens))] = greens[:max_greens]
            cycle[p, i] = timing.cycle_s
            offset[p, i] = timing.offset_s
    return PlanArrays(green, cycle, offset)


def candidate_features(
    demand: npt.ArrayLike,
    candidates: PlanArrays,
    current: PlanArrays,
    device: torch.device | None = None,
    flow_ratios: npt.ArrayLike | None = None,
) -> torch.Tensor:
    """Build the fixed-size feature vector of every candidate, batched on ``device``.

    Args:
        demand: ``[D]`` demand features shared by all candidates (normalised by
            the caller, e.g. flows / saturation flow), or ``[N, D]``.
        candidates: ``N`` candidate plans.
        current: The current plan (``N == 1``).
        device: Where to compute (default CPU).
        flow_ratios: ``[I, G]`` critical flow ratio of every green of every
            intersection (in the plans' order; zero past an intersection's
            greens), or None. With it, :data:`SATURATION_FEATURES` features
            per candidate follow (see :func:`saturation_features`).

    Returns:
        ``float32 [N, D + 3 * (2 * G + 3) (+ SATURATION_FEATURES)]`` features.
    """
    dev = device or torch.device("cpu")
    green = torch.from_numpy(candidates.green_s).to(dev)
    cycle = torch.from_numpy(candidates.cycle_s).to(dev).clamp(min=1.0)
    offset = torch.from_numpy(candidates.offset_s).to(dev)
    cur_green = torch.from_numpy(current.green_s[:1]).to(dev)
    cur_cycle = torch.from_numpy(current.cycle_s[:1]).to(dev).clamp(min=1.0)
    frac = green / cycle.unsqueeze(-1)
    cur_frac = cur_green / cur_cycle.unsqueeze(-1)
    per_tls = torch.cat(
        (
            frac,
            (cycle / _CYCLE_SCALE_S).unsqueeze(-1),
            (offset / cycle).unsqueeze(-1),
            ((cycle - cur_cycle) / _CYCLE_CHANGE_SCALE_S).unsqueeze(-1),
            frac - cur_frac,
        ),
        dim=-1,
    )  # [N, I, 2G + 3]
    pooled = torch.cat((per_tls.mean(dim=1), per_tls.amin(dim=1), per_tls.amax(dim=1)), dim=1)
    dem = torch.as_tensor(np.asarray(demand, dtype=np.float32), device=dev)
    if dem.dim() == 1:
        dem = dem.unsqueeze(0).expand(pooled.shape[0], -1)
    parts = [dem, pooled]
    if flow_ratios is not None:
        y = torch.as_tensor(np.asarray(flow_ratios, dtype=np.float32), device=dev)
        if y.shape != green.shape[1:]:
            raise ConfigError(
                f"surrogate features: flow ratios of shape {tuple(y.shape)} for plans of "
                f"{green.shape[1]} intersections x {green.shape[2]} greens"
            )
        mine = saturation_features(y, green, cycle)
        theirs = saturation_features(y, cur_green, cur_cycle)
        parts.append(torch.cat((mine, mine - theirs), dim=1))
    return torch.cat(parts, dim=1)


#: features :func:`candidate_features` adds when given the flow ratios
SATURATION_FEATURES = 2 * 4


def saturation_features(y: torch.Tensor, green: torch.Tensor, cycle: torch.Tensor) -> torch.Tensor:
    """Per intersection, how each plan serves its demand, pooled over the district.

    For every green ``g`` of every intersection, the degree of saturation
    ``x = y / (g / C)`` (critical flow ratio over green fraction, capped at 3)
    and Webster's uniform delay ``C (1 - g/C)^2 / (2 (1 - min(x, 0.95) g/C))``.
    Per intersection: its critical (largest) ``x``; its flow-weighted uniform
    delay / 60 s; and its overflow ``sum y max(x - 1, 0)``. Pooled: the
    flow-weighted mean of the critical ``x``, their maximum, and the
    flow-weighted means of delay and overflow.

    Args:
        y: ``[I, G]`` critical flow ratios.
        green: ``[N, I, G]`` green durations.
        cycle: ``[N, I]`` cycle lengths (at least 1 s).

    Returns:
        ``[N, 4]``: the caller stacks a candidate's and the change against the plan in force.
    """
    served = y.unsqueeze(0) > 0
    frac = (green / cycle.unsqueeze(-1)).clamp(min=1e-3)
    x = torch.where(served, (y / frac).clamp(max=3.0), 0.0)
    uniform = cycle.unsqueeze(-1) * (1 - frac).square() / (2 * (1 - x.clamp(max=0.95) * frac))
    flow = y.sum(dim=-1)  # [I]
    weight = flow / flow.sum().clamp(min=1e-6)  # [I]
    per_flow = torch.where(served, y, 0.0) / flow.clamp(min=1e-6).unsqueeze(-1)
    delay = (per_flow * torch.where(served, uniform, 0.0)).sum(dim=-1) / 60.0  # [N, I]
    overflow = (y * (x - 1).clamp(min=0.0)).sum(dim=-1)  # [N, I]
    critical = x.amax(dim=-1)  # [N, I]
    return torch.stack(
        (
            (critical * weight).sum(dim=-1),
            critical.amax(dim=-1),
            (delay * weight).sum(dim=-1),
            (overflow * weight).sum(dim=-1),
        ),
        dim=1,
    )


# -- the model ----------------------------------------------------------------------------


class SurrogateModel(nn.Module):
    """MLP ``features -> (wait_change, nox_change)`` with built-in standardisation."""

    x_mean: torch.Tensor
    x_std: torch.Tensor
    y_mean: torch.Tensor
    y_std: torch.Tensor

    def __init__(self, input_dim: int, hidden: Sequence[int] = (64, 64)) -> None:
        """Create an untrained model for ``input_dim`` features."""
        super().__init__()
        if input_dim < 1:
            raise ConfigError(f"surrogate input_dim must be >= 1, got {input_dim}")
        self.input_dim = int(input_dim)
        self.hidden = tuple(int(h) for h in hidden)
        layers: list[nn.Module] = []
        width = self.input_dim
        for h in self.hidden:
            layers += [nn.Linear(width, h), nn.SiLU()]
            width = h
        layers.append(nn.Linear(width, 2))
        self.net = nn.Sequential(*layers)
        self.register_buffer("x_mean", torch.zeros(self.input_dim))
        self.register_buffer("x_std", torch.ones(self.input_dim))
        self.register_buffer("y_mean", torch.zeros(2))
        self.register_buffer("y_std", torch.ones(2))
        #: what made its training rows (:func:`rows_made_by`), None when unknown
        self.made_by: dict[str, Any] | None = None

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """Return ``[N, 2]``: predicted (wait_change, nox_change) relative fractions."""
        x = (features - self.x_mean) / self.x_std
        out: torch.Tensor = self.net(x) * self.y_std + self.y_mean
        return out


@dataclass(frozen=True)
class SurrogateRow:
    """One training example from a twin run.

    Attributes:
        features: The candidate's feature vector (see :func:`candidate_features`).
        wait_change: Observed relative change of mean wait (negative = better).
        nox_change: Observed relative change of NOx (negative = better).
        group: Runs sharing a group (e.g. one demand snapshot) are held out together.
        made_by: What measured the row (``surrogate collect`` records the twin,
            the network, the policy and the feature layout), or None.
    """

    features: tuple[float, ...]
    wait_change: float
    nox_change: float
    group: str = ""
    made_by: Mapping[str, Any] | None = field(default=None, compare=False)

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any], where: str = "row") -> SurrogateRow:
        """Parse a row from JSON data.

        Raises:
            ConfigError: A key is missing or a value is not a finite number.
        """
        try:
            features = tuple(float(v) for v in data["features"])
            wait = float(data["wait_change"])
            nox = float(data["nox_change"])
        except KeyError as e:
            raise ConfigError(
                f"{where}: missing key {e.args[0]!r}; each row needs 'features' (list of "
                "numbers), 'wait_change' and 'nox_change' (relative fractions)"
            ) from e
        except (TypeError, ValueError) as e:
            raise ConfigError(f"{where}: non-numeric value ({e})") from e
        if not features or not all(math.isfinite(v) for v in (*features, wait, nox)):
            raise ConfigError(f"{where}: features and changes must be finite numbers")
        made_by = data.get("made_by")
        if made_by is not None and not (
            isinstance(made_by, dict) and all(isinstance(k, str) for k in made_by)
        ):
            raise ConfigError(f"{where}: 'made_by' must be an object")
        return cls(features, wait, nox, str(data.get("group", "")), made_by)


def rows_made_by(rows: Sequence[SurrogateRow]) -> dict[str, Any] | None:
    """What made the rows, when they all say the same; None when none says.

    Raises:
        ConfigError: The rows come from different twins, networks, policies or
            feature layouts (or some say and some do not).
    """
    seen = {json.dumps(r.made_by, sort_keys=True) for r in rows}
    if len(seen) > 1:
        raise ConfigError(
            "surrogate training rows were made by different twins, networks, policies or "
            f"feature layouts ({len(seen)} kinds, e.g. {sorted(seen)[:2]}); train on rows "
            "from one 'surrogate collect' setting"
        )
    made_by = rows[0].made_by if rows else None
    return dict(made_by) if made_by is not None else None


def load_rows_jsonl(path: Path) -> list[SurrogateRow]:
    """Read training rows from a JSON Lines file (one object per line).

    Raises:
        ConfigError: The file is missing, a line is not JSON, or rows disagree in length.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigError(f"cannot read surrogate training data {path}: {e}") from e
    rows: list[SurrogateRow] = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            data = json.loads(line)
        except json.JSONDecodeError as e:
            raise ConfigError(f"{where}: not JSON ({e.msg})") from e
        if not isinstance(data, dict):
            raise ConfigError(f"{where}: expected a JSON object per line")
        rows.append(SurrogateRow.from_mapping(data, where))
    if rows and len({len(r.features) for r in rows}) != 1:
        raise ConfigError(f"{path}: rows have different feature lengths")
    return rows


@dataclass(frozen=True)
class SurrogateMetrics:
    """How well a trained surrogate ranks held-out twin runs."""

    n_train: int
    n_holdout: int
    spearman_wait: float
    spearman_nox: float
    mae_wait: float
    mae_nox: float
    epochs: int
    final_loss: float
    sha256: str = ""

    def as_dict(self) -> dict[str, Any]:
        """Return the metrics as a JSON-ready mapping."""
        return asdict(self)


def _ranks(x: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    order = np.argsort(x, kind="mergesort")
    ranks = np.empty(len(x), dtype=np.float64)
    ranks[order] = np.arange(len(x), dtype=np.float64)
    # Average the ranks of ties.
    _, inverse, counts = np.unique(x, return_inverse=True, return_counts=True)
    sums = np.bincount(inverse, weights=ranks)
    averaged: npt.NDArray[np.float64] = sums[inverse] / counts[inverse]
    return averaged


def spearman(a: npt.ArrayLike, b: npt.ArrayLike) -> float:
    """Spearman rank correlation (ties get average ranks); NaN when undefined."""
    x = np.asarray(a, dtype=np.float64).reshape(-1)
    y = np.asarray(b, dtype=np.float64).reshape(-1)
    if x.shape != y.shape or len(x) < 2:
        return float("nan")
    rx, ry = _ranks(x), _ranks(y)
    rx -= rx.mean()
    ry -= ry.mean()
    denom = math.sqrt(float((rx * rx).sum()) * float((ry * ry).sum()))
    return float((rx * ry).sum() / denom) if denom > 0 else float("nan")


def _holdout_mask(
    rows: Sequence[SurrogateRow], fraction: float, seed: int
) -> npt.NDArray[np.bool_]:
    if any(r.group for r in rows):
        # Whole groups go to one side, chosen by a seeded hash of the group name.
        def held(group: str) -> bool:
            h = zlib.crc32(f"{seed}:{group}".encode()) / 0xFFFFFFFF
            return h < fraction

        mask = np.array([held(r.group) for r in rows], dtype=bool)
    else:
        rng = np.random.default_rng(seed)
        mask = rng.random(len(rows)) < fraction
    if mask.all() or not mask.any():
        # Degenerate split (few groups): fall back to a row-level split.
        rng = np.random.default_rng(seed)
        mask = np.zeros(len(rows), dtype=bool)
        mask[rng.permutation(len(rows))[: max(1, int(round(len(rows) * fraction)))]] = True
    return mask


def train_surrogate(
    rows: Sequence[SurrogateRow],
    *,
    hidden: Sequence[int] = (64, 64),
    epochs: int = 300,
    batch_size: int = 512,
    learning_rate: float = 3e-3,
    holdout: float = 0.2,
    seed: int = 0,
    device: torch.device | None = None,
) -> tuple[SurrogateModel, SurrogateMetrics]:
    """Train a surrogate on twin rows and measure it on held-out rows.

    Args:
        rows: Training examples (at least 10).
        hidden: Hidden layer widths.
        epochs: Passes over the training rows.
        batch_size: Rows per optimiser step.
        learning_rate: Adam learning rate.
        holdout: Fraction of rows (or of groups, when rows have groups) held out.
        seed: Seeds the split, the initial weights and the shuffling.
        device: Where to train (default CPU; small models train fine there).

    Returns:
        The trained model (on ``device``, in eval mode) and its held-out metrics.

    Raises:
        ConfigError: Too few rows, rows of different lengths or makers, or bad parameters.
    """
    if len(rows) < 10:
        raise ConfigError(f"surrogate training needs >= 10 rows, got {len(rows)}")
    made_by = rows_made_by(rows)
    if not 0.0 < holdout < 1.0:
        raise ConfigError(f"surrogate holdout must be in (0, 1), got {holdout}")
    if len({len(r.features) for r in rows}) != 1:
        raise ConfigError("surrogate training rows have different feature lengths")
    dev = device or torch.device("cpu")
    x_all = torch.tensor([r.features for r in rows], dtype=torch.float32)
    y_all = torch.tensor([(r.wait_change, r.nox_change) for r in rows], dtype=torch.float32)
    held = torch.from_numpy(_holdout_mask(rows, holdout, seed))
    x_train, y_train = x_all[~held].to(dev), y_all[~held].to(dev)
    x_test, y_test = x_all[held].to(dev), y_all[held].to(dev)

    torch.manual_seed(seed)
    model = SurrogateModel(x_all.shape[1], hidden).to(dev)
    model.x_mean.copy_(x_train.mean(dim=0))
    # A feature (nearly) constant in training carries no information; scaling it
    # by its tiny spread would blow up any held-out or run-time value that differs.
    x_std = x_train.std(dim=0, unbiased=False)
    model.x_std.copy_(torch.where(x_std < _MIN_FEATURE_STD, torch.ones_like(x_std), x_std))
    model.y_mean.copy_(y_train.mean(dim=0))
    model.y_std.copy_(y_train.std(dim=0, unbiased=False).clamp(min=1e-6))
    optimiser = torch.optim.Adam(model.parameters(), lr=learning_rate, weight_decay=1e-5)
    generator = torch.Generator().manual_seed(seed)
    n = x_train.shape[0]
    loss_value = float("nan")
    model.train()
    # A model this small trains fastest on one CPU thread; more threads only
    # contend (7x slower measured on a loaded 2-core machine).
    threads = torch.get_num_threads()
    if dev.type == "cpu":
        torch.set_num_threads(1)
    try:
        loss_value = _fit(model, optimiser, x_train, y_train, epochs, batch_size, generator)
    finally:
        torch.set_num_threads(threads)
    model.eval()
    with torch.no_grad():
        pred_test = model(x_test).cpu().numpy()
    truth = y_test.cpu().numpy()
    metrics = SurrogateMetrics(
        n_train=int(n),
        n_holdout=int(x_test.shape[0]),
        spearman_wait=spearman(pred_test[:, 0], truth[:, 0]),
        spearman_nox=spearman(pred_test[:, 1], truth[:, 1]),
        mae_wait=float(np.abs(pred_test[:, 0] - truth[:, 0]).mean()),
        mae_nox=float(np.abs(pred_test[:, 1] - truth[:, 1]).mean()),
        epochs=epochs,
        final_loss=loss_value,
    )
    model.made_by = made_by
    logger.info("surrogate trained: %s", metrics)
    return model, metrics


def _fit(
    model: SurrogateModel,
    optimiser: torch.optim.Optimizer,
    x_train: torch.Tensor,
    y_train: torch.Tensor,
    epochs: int,
    batch_size: int,
    generator: torch.Generator,
) -> float:
    n = x_train.shape[0]
    loss_value = float("nan")
    for _ in range(epochs):
        order = torch.randperm(n, generator=generator).to(x_train.device)
        total = torch.zeros((), device=x_train.device)
        for lo in range(0, n, batch_size):
            idx = order[lo : lo + batch_size]
            pred = (model(x_train[idx]) - model.y_mean) / model.y_std
            target = (y_train[idx] - model.y_mean) / model.y_std
            loss = torch.nn.functional.mse_loss(pred, target)
            optimiser.zero_grad(set_to_none=True)
            loss.backward()  # type: ignore[no-untyped-call]
            optimiser.step()
            total += loss.detach() * idx.shape[0]
        loss_value = float(total) / n
    return loss_value


def save_surrogate(
    model: SurrogateModel, path: Path, metrics: SurrogateMetrics | None = None
) -> str:
    """Save the weights (a plain ``state_dict`` plus shape) and return the file's sha256.

    What made the training rows (``model.made_by``) is saved with them, so the
    daemon can refuse a model learnt from another twin or policy.

    Raises:
        ConfigError: The file cannot be written.
    """
    payload = {
        "format": SURROGATE_FORMAT,
        "input_dim": model.input_dim,
        "hidden": list(model.hidden),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "metrics": {
            k: v for k, v in (metrics.as_dict() if metrics else {}).items() if k != "sha256"
        },
        "made_by": dict(model.made_by) if model.made_by is not None else None,
    }
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(payload, path)
        data = path.read_bytes()
    except OSError as e:
        raise ConfigError(f"cannot write surrogate weights {path}: {e}") from e
    return sha256_hex(data)


def load_surrogate(path: Path, device: torch.device | None = None) -> SurrogateModel:
    """Load weights saved by :func:`save_surrogate` (``weights_only``: no code runs).

    Raises:
        ConfigError: The file is missing, not a surrogate, or its tensors do not fit.
    """
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError as e:
        raise ConfigError(
            f"surrogate weights {path} do not exist; train with 'signaltwin surrogate train'"
        ) from e
    except Exception as e:  # torch raises many types for corrupt or unsafe pickles
        raise ConfigError(f"surrogate weights {path} cannot be loaded safely: {e}") from e
    if not isinstance(payload, dict) or payload.get("format") != SURROGATE_FORMAT:
        found = payload.get("format") if isinstance(payload, dict) else None
        if isinstance(found, str) and found.startswith("signaltwin.surrogate/"):
            raise ConfigError(
                f"{path} is a {found} surrogate (older features); this version reads "
                f"{SURROGATE_FORMAT}: retrain it with 'signaltwin surrogate collect' and "
                "'signaltwin surrogate train'"
            )
        raise ConfigError(f"{path} is not a {SURROGATE_FORMAT} file")
    model = SurrogateModel(int(payload["input_dim"]), tuple(payload["hidden"]))
    made_by = payload.get("made_by")
    model.made_by = dict(made_by) if isinstance(made_by, dict) else None
    try:
        model.load_state_dict(payload["state_dict"])
    except (RuntimeError, KeyError) as e:
        raise ConfigError(f"surrogate weights {path} do not match their declared shape: {e}") from e
    model.eval()
    return model.to(device or torch.device("cpu"))


def describe_surrogate(path: Path) -> dict[str, Any]:
    """Return a weights file's sha256, shape and recorded training metrics.

    Raises:
        ConfigError: As :func:`load_surrogate`.
    """
    model = load_surrogate(path)
    payload = torch.load(path, map_location="cpu", weights_only=True)
    return {
        "weights": str(path),
        "sha256": sha256_file(path),
        "format": SURROGATE_FORMAT,
        "input_dim": model.input_dim,
        "hidden": list(model.hidden),
        "metrics": dict(payload.get("metrics", {})),
        "made_by": model.made_by,
    }


# -- screening ----------------------------------------------------------------------------


@dataclass(frozen=True)
class ScreenResult:
    """Screening outcome: predictions for all candidates and the chosen few.

    Attributes:
        wait_change: ``[N]`` predicted relative wait change.
        nox_change: ``[N]`` predicted relative NOx change.
        selected: Candidate indices to simulate, best predicted wait first.
    """

    wait_change: npt.NDArray[np.float32]
    nox_change: npt.NDArray[np.float32]
    selected: tuple[int, ...]


@torch.no_grad()
def screen(
    model: SurrogateModel,
    features: torch.Tensor,
    top_k: int = 4,
    max_nox_change: float | None = None,
    chunk: int = 65_536,
) -> ScreenResult:
    """Predict every candidate and keep the ``top_k`` with the best predicted wait.

    Candidates predicted to raise NOx above ``max_nox_change`` go last (they are
    still chosen when nothing else is left, so the twin decides).

    Args:
        model: A trained surrogate.
        features: ``[N, F]`` features (any device; moved to the model's device).
        top_k: How many to return.
        max_nox_change: The gate's NOx limit as a relative fraction, or None.
        chunk: Candidates per forward pass.
    """
    dev = next(model.parameters()).device
    feats = features.to(dev, non_blocking=True)
    preds = torch.cat([model(feats[lo : lo + chunk]) for lo in range(0, feats.shape[0], chunk)])
    score = preds[:, 0].clone()
    if max_nox_change is not None:
        score = torch.where(preds[:, 1] > max_nox_change, score + 1e6, score)
    k = min(top_k, score.shape[0])
    selected = torch.topk(score, k, largest=False).indices
    host = preds.cpu().numpy()
    return ScreenResult(
        wait_change=host[:, 0].copy(),
        nox_change=host[:, 1].copy(),
        selected=tuple(int(i) for i in selected.cpu().tolist()),
    )
