"""The feedback store: what was deployed, what the twin predicted, what the field measured.

After each deployment the daemon records, per intersection, the observation the
decision rested on and the deployed plan as an action (:func:`rl.features.plan_to_action`,
whichever proposer it came from), with the twin's prediction. Once the field has
run the plan for a while, the measured interval (mean wait and NOx after) is
compared with the interval before: the **measured delta**
(:func:`rl.measured.measure_delta`, the one definition the ledger uses too;
relative change, negative = better) and its error against the prediction are stored, and the
measured delta becomes the sample's reward:

``reward = -wait_change - nox_weight * nox_change``

so fine-tuning (:mod:`rl.finetune`) learns from the field, not from the twin.

The store is one SQLite file; every write is a transaction.
"""

from __future__ import annotations

import logging
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

    @property
    def wait_error(self) -> float | None:
        """Measured minus predicted wait change (None without a prediction)."""
        if self.predicted_wait_change is None:
            return None
        return self.wait_change - self.predicted_wait_change


@dataclass(frozen=True)
class Samples:
    """Logged (observation, action, measured reward) tuples."""

    obs: npt.NDArray[np.float32]
    actions: npt.NDArray[np.float32]
    rewards: npt.NDArray[np.float32]

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
        except (sqlite3.Error, OSError) as e:
            raise ConfigError(
                f"feedback store {self.path} cannot be opened: {e} (rl.feedback_path)"
            ) from e

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
        """Store the field's measured delta of a deployment and derive rewards.

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
                " after_nox_mg=?, wait_change=?, nox_change=?, reward=?, measured_at=?"
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

    def samples(self, policy_sha256: str | None = None) -> Samples:
        """Every measured sample (optionally only those of one policy version)."""
        query = "SELECT obs, action, reward FROM samples WHERE reward IS NOT NULL"
        args: tuple[str, ...] = ()
        if policy_sha256 is not None:
            query += " AND policy_sha256 = ?"
            args = (policy_sha256,)
        rows = self._db.execute(query + " ORDER BY id", args).fetchall()
        obs = np.zeros((len(rows), OBS_DIM), dtype=np.float32)
        act = np.zeros((len(rows), ACT_DIM), dtype=np.float32)
        rew = np.zeros(len(rows), dtype=np.float32)
        for i, (o, a, r) in enumerate(rows):
            obs[i] = np.frombuffer(o, dtype=np.float32, count=OBS_DIM)
            act[i] = np.frombuffer(a, dtype=np.float32, count=ACT_DIM)
            rew[i] = r
        return Samples(obs, act, rew)

    def count(self, measured_only: bool = True) -> int:
        """Number of (measured) samples."""
        query = "SELECT COUNT(*) FROM samples"
        if measured_only:
            query += " WHERE reward IS NOT NULL"
        row = self._db.execute(query).fetchone()
        return int(row[0])
