"""The feedback store: what was deployed, what the twin predicted, what the field measured.

After each deployment the daemon records, per intersection, the observation the
decision rested on and the deployed plan as an action (:func:`rl.features.plan_to_action`,
whichever proposer it came from), with the twin's prediction. Once the field has
run the plan for several cycles, the **measured delta** of the deployment is
stored and becomes each sample's reward:

``reward = -wait_change - nox_weight * nox_change``

(relative changes, negative = better), so fine-tuning (:mod:`rl.finetune`)
learns from the field, not from the twin. Two ways in:

* :meth:`FeedbackStore.record_estimate` -- what the daemon uses: the change of
  approach halting vehicle-seconds (and NOx) of the plan in force against the
  counterfactual estimate of the previous plan over the same window
  (``simulators.twin.counterfactual``), the same quantity the twin predicted,
  with its interval, per intersection where the estimator gives it;
* :meth:`FeedbackStore.record_measurement` -- the older before/after comparison
  of one interval each side of the activation (demand drift dominates it); kept
  for old callers, its rows carry ``source = "interval"``.

The store is one SQLite file; every write is a transaction. A file written by an
older version (without the ``source`` and interval columns) is migrated in place
when opened: the columns are added, its rows are kept.
"""

from __future__ import annotations

import logging
import math
import sqlite3
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import numpy.typing as npt

from configs.errors import ConfigError
from configs.timing import IntersectionTiming
from rl.features import ACT_DIM, OBS_DIM, IntersectionObservation, encode, plan_to_action
from rl.measured import measure_delta, relative_change

__all__ = ["DEFAULT_NOX_WEIGHT", "FeedbackStore", "MeasuredDelta", "Samples"]

logger = logging.getLogger(__name__)

DEFAULT_NOX_WEIGHT = 1.0
"""NOx weight in the measured reward (relative changes are already comparable)."""

_SCHEMA = """
CREATE TABLE IF NOT EXISTS samples (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    deployment TEXT NOT NULL,
    tls_id TEXT NOT NULL,
    created_at TEXT NOT NULL,
    policy_sha256 TEXT,
    obs BLOB NOT NULL,
    action BLOB NOT NULL,
    predicted_wait_change REAL,
    predicted_nox_change REAL,
    before_wait_s REAL,
    before_nox_mg REAL,
    after_wait_s REAL,
    after_nox_mg REAL,
    wait_change REAL,
    nox_change REAL,
    reward REAL,
    measured_at TEXT,
    UNIQUE (deployment, tls_id)
);
CREATE INDEX IF NOT EXISTS samples_measured ON samples (reward);
"""

#: columns added after the first schema: (name, SQL type); added by ALTER TABLE when missing
_ADDED_COLUMNS: tuple[tuple[str, str], ...] = (
    ("source", "TEXT"),
    ("wait_ci_low", "REAL"),
    ("wait_ci_high", "REAL"),
)

#: a 95 % interval spans about 2 x 1.96 standard errors
_Z95 = 1.959964


@dataclass(frozen=True)
class MeasuredDelta:
    """The field's verdict on one deployment (relative changes; negative = lower)."""

    deployment: str
    intersections: int
    wait_change: float
    """Pooled mean wait after / before - 1 (:func:`rl.measured.measure_delta`)."""
    nox_change: float
    """Total NOx after / before - 1 (:func:`rl.measured.measure_delta`)."""
    predicted_wait_change: float | None
    predicted_nox_change: float | None
    source: str = "interval"
    """Where the measured change came from: ``"counterfactual"`` (the estimator,
    :meth:`FeedbackStore.record_estimate`) or ``"interval"`` (before/after)."""
    wait_change_ci: tuple[float, float] | None = None
    """The estimate's interval of ``wait_change`` (None when not given)."""

    @property
    def wait_error(self) -> float | None:
        """Measured minus predicted wait change (None without a prediction)."""
        if self.predicted_wait_change is None:
            return None
        return self.wait_change - self.predicted_wait_change


@dataclass(frozen=True)
class Samples:
    """Logged (observation, action, measured reward) tuples, one per deployed intersection.

    The optional arrays are what :func:`rl.finetune.finetune` uses beyond the
    reward; samples built with the first three alone still fine-tune (each
    sample then counts as its own deployment, without prediction or interval).
    """

    obs: npt.NDArray[np.float32]
    actions: npt.NDArray[np.float32]
    rewards: npt.NDArray[np.float32]
    deployments: tuple[str, ...] | None = None
    """Each sample's deployment id (samples of one deployment share one estimate)."""
    predicted_rewards: npt.NDArray[np.float32] | None = None
    """The reward the twin predicted for the sample's deployment
    (``-predicted_wait_change - nox_weight * predicted_nox_change``); NaN when unknown."""
    reward_se: npt.NDArray[np.float32] | None = None
    """Standard error of the reward from the estimate's wait interval
    (half-width / 1.96); NaN when the estimate gave no interval."""

    def __len__(self) -> int:
        """Number of samples."""
        return int(self.rewards.shape[0])


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class FeedbackStore:
    """SQLite store of deployments and their measured deltas.

    Args:
        path: the SQLite file (created with its schema when missing).
        nox_weight: weight of the NOx change in the reward.
    """

    def __init__(self, path: Path | str, nox_weight: float = DEFAULT_NOX_WEIGHT) -> None:
        self.path = Path(path)
        self.nox_weight = nox_weight
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            # the daemon runs its jobs in worker threads (never two at once)
            self._db = sqlite3.connect(self.path, check_same_thread=False)
            self._db.executescript(_SCHEMA)
            self._migrate()
        except (sqlite3.Error, OSError) as e:
            raise ConfigError(
                f"feedback store {self.path} cannot be opened: {e} (rl.feedback_path)"
            ) from e

    def _migrate(self) -> None:
        """Add the columns a store file of an older schema lacks (its rows stay)."""
        present = {row[1] for row in self._db.execute("PRAGMA table_info(samples)")}
        missing = [(name, kind) for name, kind in _ADDED_COLUMNS if name not in present]
        if not missing:
            return
        with self._db:
            for name, kind in missing:
                self._db.execute(f"ALTER TABLE samples ADD COLUMN {name} {kind}")
        logger.info(
            "feedback store %s: added columns %s", self.path, ", ".join(n for n, _ in missing)
        )

    def close(self) -> None:
        """Close the database."""
        self._db.close()

    def __enter__(self) -> FeedbackStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def record_deployment(
        self,
        deployment: str,
        observations: Mapping[str, IntersectionObservation],
        deployed: Mapping[str, IntersectionTiming],
        *,
        policy_sha256: str | None = None,
        predicted_wait_change: float | None = None,
        predicted_nox_change: float | None = None,
    ) -> int:
        """Log what was deployed at each intersection and on what observation.

        Args:
            deployment: the deployment's id (e.g. the timing configuration digest).
            observations: each light's observation at decision time.
            deployed: the plans deployed (any proposer's).
            policy_sha256: the policy version the cycle ran with.
            predicted_wait_change: the twin's predicted relative change of wait.
            predicted_nox_change: the twin's predicted relative change of NOx.

        Returns:
            The number of intersections recorded.
        """
        rows = []
        created = _now()
        for tls_id, plan in sorted(deployed.items()):
            obs = observations.get(tls_id)
            if obs is None:
                continue
            rows.append(
                (
                    deployment,
                    tls_id,
                    created,
                    policy_sha256,
                    encode(obs).astype(np.float32).tobytes(),
                    plan_to_action(plan, obs).astype(np.float32).tobytes(),
                    predicted_wait_change,
                    predicted_nox_change,
                )
            )
        try:
            with self._db:
                self._db.executemany(
                    "INSERT OR REPLACE INTO samples (deployment, tls_id, created_at, policy_sha256,"
                    " obs, action, predicted_wait_change, predicted_nox_change)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    rows,
                )
        except sqlite3.Error as e:
            raise ConfigError(f"feedback store {self.path}: cannot record: {e}") from e
        return len(rows)

    def record_measurement(
        self,
        deployment: str,
        before: Mapping[str, tuple[float, float]],
        after: Mapping[str, tuple[float, float]],
    ) -> MeasuredDelta:
        """Store a before/after measured delta of a deployment and derive rewards.

        The older way in, kept for old callers: one interval before activation
        against one after, in which demand drift dominates. The daemon uses
        :meth:`record_estimate` (the counterfactual estimate over several cycles).

        Args:
            deployment: the id given to :meth:`record_deployment`.
            before: tls id -> (mean wait s, NOx mg) of the interval before activation.
            after: tls id -> (mean wait s, NOx mg) of the interval after activation.

        Raises:
            ConfigError: the deployment is unknown or no intersection was measured.
        """
        cur = self._db.execute(
            "SELECT tls_id, predicted_wait_change, predicted_nox_change FROM samples"
            " WHERE deployment = ?",
            (deployment,),
        )
        known = cur.fetchall()
        if not known:
            raise ConfigError(f"feedback: deployment {deployment!r} was never recorded")
        measured_at = _now()
        updates = []
        for tls_id, _, _ in known:
            if tls_id not in before or tls_id not in after:
                continue
            (w0, n0), (w1, n1) = before[tls_id], after[tls_id]
            # each sample's reward is its own intersection's change
            wait_change = relative_change(w1, w0)
            nox_change = relative_change(n1, n0)
            reward = -wait_change - self.nox_weight * nox_change
            updates.append(
                (w0, n0, w1, n1, wait_change, nox_change, reward, measured_at, deployment, tls_id)
            )
        change = measure_delta(before, after, only=[row[0] for row in known])
        if not updates or change is None:
            raise ConfigError(
                f"feedback: no measurement of deployment {deployment!r}'s intersections"
            )
        with self._db:
            self._db.executemany(
                "UPDATE samples SET before_wait_s=?, before_nox_mg=?, after_wait_s=?,"
                " after_nox_mg=?, wait_change=?, nox_change=?, reward=?, measured_at=?,"
                " source='interval', wait_ci_low=NULL, wait_ci_high=NULL"
                " WHERE deployment=? AND tls_id=?",
                updates,
            )
        predicted = known[0][1], known[0][2]
        return MeasuredDelta(
            deployment=deployment,
            intersections=change.intersections,
            wait_change=change.wait_change,
            nox_change=change.nox_change,
            predicted_wait_change=predicted[0],
            predicted_nox_change=predicted[1],
        )

    def record_estimate(
        self,
        deployment: str,
        wait_change: float,
        nox_change: float,
        *,
        per_intersection: Mapping[str, tuple[float, float]] | None = None,
        predicted_wait_change: float | None = None,
        predicted_nox_change: float | None = None,
        wait_change_ci: tuple[float, float] | None = None,
        source: str = "counterfactual",
    ) -> MeasuredDelta:
        """Store the estimated measured delta of a deployment and derive rewards.

        What the daemon calls once the plan has run its measuring window: the
        relative change of approach halting vehicle-seconds and NOx of the plan
        in force against the counterfactual (the previous plan re-simulated on
        the demand the field had), the quantity the twin predicted.

        Args:
            deployment: the id given to :meth:`record_deployment`.
            wait_change: deployment-level relative change of halting vehicle-seconds
                (a fraction; negative = better).
            nox_change: deployment-level relative change of NOx (a fraction).
            per_intersection: tls id -> (wait_change, nox_change) where the
                estimator gives them; a sample's reward uses its own
                intersection's change, else the deployment's. Intersections the
                deployment did not record are ignored.
            predicted_wait_change: the twin's prediction, stored when given
                (else the one given to :meth:`record_deployment` stays).
            predicted_nox_change: likewise for NOx.
            wait_change_ci: the estimate's (low, high) interval of ``wait_change``.
            source: where the estimate came from (stored with each sample).

        Returns:
            The deployment's measured delta with its prediction.

        Raises:
            ConfigError: a value is NaN or infinite, the interval is reversed, the
                source is empty, or the deployment was never recorded.
        """
        where = f"feedback: estimate of deployment {deployment!r}"
        _finite(where, "wait_change", wait_change)
        _finite(where, "nox_change", nox_change)
        for name, value in (
            ("predicted_wait_change", predicted_wait_change),
            ("predicted_nox_change", predicted_nox_change),
        ):
            if value is not None:
                _finite(where, name, value)
        low = high = None
        if wait_change_ci is not None:
            low, high = float(wait_change_ci[0]), float(wait_change_ci[1])
            _finite(where, "wait_change_ci[0]", low)
            _finite(where, "wait_change_ci[1]", high)
            if low > high:
                raise ConfigError(
                    f"{where}: wait_change_ci ({low}, {high}) is reversed; give (low, high)"
                )
        per = dict(per_intersection or {})
        for tls_id, (w, n) in per.items():
            _finite(where, f"per_intersection[{tls_id!r}] wait_change", w)
            _finite(where, f"per_intersection[{tls_id!r}] nox_change", n)
        if not source:
            raise ConfigError(f"{where}: source is empty; name the estimator")
        known = self._db.execute(
            "SELECT tls_id, predicted_wait_change, predicted_nox_change FROM samples"
            " WHERE deployment = ?",
            (deployment,),
        ).fetchall()
        if not known:
            raise ConfigError(
                f"feedback: deployment {deployment!r} was never recorded "
                "(call record_deployment first)"
            )
        pred_wait = known[0][1] if predicted_wait_change is None else predicted_wait_change
        pred_nox = known[0][2] if predicted_nox_change is None else predicted_nox_change
        measured_at = _now()
        updates = []
        for tls_id, _, _ in known:
            w, n = per.get(tls_id, (wait_change, nox_change))
            reward = -float(w) - self.nox_weight * float(n)
            updates.append(
                (
                    float(w),
                    float(n),
                    reward,
                    measured_at,
                    source,
                    low,
                    high,
                    pred_wait,
                    pred_nox,
                    deployment,
                    tls_id,
                )
            )
        try:
            with self._db:
                self._db.executemany(
                    "UPDATE samples SET before_wait_s=NULL, before_nox_mg=NULL,"
                    " after_wait_s=NULL, after_nox_mg=NULL, wait_change=?, nox_change=?,"
                    " reward=?, measured_at=?, source=?, wait_ci_low=?, wait_ci_high=?,"
                    " predicted_wait_change=?, predicted_nox_change=?"
                    " WHERE deployment=? AND tls_id=?",
                    updates,
                )
        except sqlite3.Error as e:
            raise ConfigError(f"feedback store {self.path}: cannot record: {e}") from e
        return MeasuredDelta(
            deployment=deployment,
            intersections=len(updates),
            wait_change=float(wait_change),
            nox_change=float(nox_change),
            predicted_wait_change=pred_wait,
            predicted_nox_change=pred_nox,
            source=source,
            wait_change_ci=None if low is None or high is None else (low, high),
        )

    def samples(self, policy_sha256: str | None = None, *, source: str | None = None) -> Samples:
        """Every measured sample, in the order recorded.

        Args:
            policy_sha256: only those of one policy version.
            source: only those of one source (``"counterfactual"``, ``"interval"``;
                rows of the first schema count as ``"interval"``).
        """
        query = (
            "SELECT obs, action, reward, deployment, predicted_wait_change,"
            " predicted_nox_change, wait_ci_low, wait_ci_high FROM samples"
            " WHERE reward IS NOT NULL"
        )
        args: list[str] = []
        if policy_sha256 is not None:
            query += " AND policy_sha256 = ?"
            args.append(policy_sha256)
        if source is not None:
            query += " AND COALESCE(source, 'interval') = ?"
            args.append(source)
        rows = self._db.execute(query + " ORDER BY id", tuple(args)).fetchall()
        n = len(rows)
        obs = np.zeros((n, OBS_DIM), dtype=np.float32)
        act = np.zeros((n, ACT_DIM), dtype=np.float32)
        rew = np.zeros(n, dtype=np.float32)
        predicted = np.full(n, np.nan, dtype=np.float32)
        se = np.full(n, np.nan, dtype=np.float32)
        deployments: list[str] = []
        for i, (o, a, r, dep, pw, pn, lo, hi) in enumerate(rows):
            obs[i] = np.frombuffer(o, dtype=np.float32, count=OBS_DIM)
            act[i] = np.frombuffer(a, dtype=np.float32, count=ACT_DIM)
            rew[i] = r
            deployments.append(str(dep))
            if pw is not None:
                predicted[i] = -pw - self.nox_weight * (pn or 0.0)
            if lo is not None and hi is not None:
                se[i] = (hi - lo) / (2.0 * _Z95)
        return Samples(obs, act, rew, tuple(deployments), predicted, se)

    def count(self, measured_only: bool = True) -> int:
        """Number of (measured) samples."""
        query = "SELECT COUNT(*) FROM samples"
        if measured_only:
            query += " WHERE reward IS NOT NULL"
        row = self._db.execute(query).fetchone()
        return int(row[0])


def _finite(where: str, name: str, value: float) -> None:
    """Refuse a NaN or infinite (or non-numeric) input with a message naming it."""
    try:
        ok = math.isfinite(float(value))
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise ConfigError(
            f"{where}: {name} is {value!r}; a finite relative change (a fraction) is required"
        )
