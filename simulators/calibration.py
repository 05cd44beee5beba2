"""Twin calibration: a demand-scale correction learnt from measured outcomes.

The twin's demand is estimated from detector counts, which miss vehicles (a
dead loop, a lane without a loop, a counter that drops a vehicle in a queue) or
see extra ones. The twin then runs a plan on a demand that is too low or too
high, and its halting totals are off in level. After every measured window the
field and the twin ran on the same plan (:class:`~simulators.twin.counterfactual.
CounterfactualEstimate`: the previous plan before activation, the deployed plan
after), :meth:`TwinCalibration.update` moves a multiplicative demand scale
toward the one that closes the gap, and :meth:`TwinCalibration.apply` applies
it to the next demand snapshots.

The step (docs/feedback.md): halting grows about as ``demand ** elasticity``
near saturation (2 by default), so the scale that closes a gap ``g = field /
twin`` is about ``g ** (1 / elasticity)``; a damped step takes the fraction
``rate`` of it in log space, clipped to ``max_step`` so one outlier (an
incident the twin was not told about) cannot throw it far, and the scale stays
within ``bounds``.

Pure logic plus an atomic JSON file; nothing here runs SUMO.
"""

from __future__ import annotations

__all__ = ["CALIBRATION_SCHEMA", "CalibrationUpdate", "TwinCalibration"]

import json
import math
import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from configs.errors import ConfigError, SimulationError
from simulators.demand import scale_snapshot

if TYPE_CHECKING:
    from simulators.twin.counterfactual import CounterfactualEstimate

CALIBRATION_SCHEMA: Final = "signaltwin.calibration/v1"

HISTORY_LIMIT: Final = 1000
"""Updates kept in the history (the oldest are dropped; about three days of 4-min cycles)."""


@dataclass(frozen=True)
class CalibrationUpdate:
    """One update: what was observed and where the scale went.

    Attributes:
        field_veh_s: measured halting vehicle-seconds.
        twin_veh_s: the twin's, on the same plan and window, at the old scale.
        gap: ``field_veh_s / twin_veh_s``.
        log_step: the applied step of ``log(demand_scale)`` (after clipping).
        demand_scale: the scale after the update.
    """

    field_veh_s: float
    twin_veh_s: float
    gap: float
    log_step: float
    demand_scale: float

    def to_dict(self) -> dict[str, float]:
        """Plain JSON data."""
        return {
            "field_veh_s": self.field_veh_s,
            "twin_veh_s": self.twin_veh_s,
            "gap": self.gap,
            "log_step": self.log_step,
            "demand_scale": self.demand_scale,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> CalibrationUpdate:
        """Inverse of :meth:`to_dict` (KeyError, TypeError, ValueError on bad data)."""
        return cls(
            field_veh_s=_finite(data["field_veh_s"]),
            twin_veh_s=_finite(data["twin_veh_s"]),
            gap=_finite(data["gap"]),
            log_step=_finite(data["log_step"]),
            demand_scale=_finite(data["demand_scale"]),
        )


def _finite(value: Any) -> float:
    if isinstance(value, bool):
        raise TypeError(f"expected a number, got {value!r}")
    out = float(value)
    if not math.isfinite(out):
        raise ValueError(f"expected a finite number, got {value!r}")
    return out


@dataclass
class TwinCalibration:
    """A demand-scale correction of the twin, learnt from field-vs-twin gaps.

    Attributes:
        demand_scale: multiplier on every estimated route rate (1.0: none).
        history: the updates so far, oldest first (at most :data:`HISTORY_LIMIT`).
    """

    demand_scale: float = 1.0
    history: list[CalibrationUpdate] = field(default_factory=list)

    def update(
        self,
        field_veh_s: float,
        twin_veh_s: float,
        *,
        elasticity: float = 2.0,
        rate: float = 0.5,
        bounds: tuple[float, float] = (0.5, 2.0),
        max_step: float = 0.2,
    ) -> float:
        """Move the scale toward the one that closes the gap ``field / twin``.

        ``twin_veh_s`` must come from a twin that ran at the current
        :attr:`demand_scale`, on the same plan and window as ``field_veh_s``.

        Args:
            field_veh_s: measured approach halting vehicle-seconds (> 0).
            twin_veh_s: the twin's over the same plan and window (> 0).
            elasticity: assumed exponent of halting in demand (> 0).
            rate: damping, the fraction of the full step taken, in (0, 1].
            bounds: the scale is kept within ``[low, high]`` (``0 < low <= 1 <= high``).
            max_step: largest change of the scale per update, as a fraction
                (0.2: at most x1.2 or /1.2).

        Returns:
            The new :attr:`demand_scale`.

        Raises:
            SimulationError: a total is not a positive finite number.
            ConfigError: a parameter is out of its range.
        """
        for label, value in (("field_veh_s", field_veh_s), ("twin_veh_s", twin_veh_s)):
            if not (math.isfinite(value) and value > 0):
                raise SimulationError(
                    f"calibration needs positive halting totals; {label} is {value} "
                    "(skip windows where nothing halted)"
                )
        if not (math.isfinite(elasticity) and elasticity > 0):
            raise ConfigError(f"calibration elasticity must be > 0 (got {elasticity})")
        if not 0 < rate <= 1:
            raise ConfigError(f"calibration rate must be in (0, 1] (got {rate})")
        low, high = bounds
        if not (0 < low <= 1 <= high and math.isfinite(high)):
            raise ConfigError(
                f"calibration bounds must satisfy 0 < low <= 1 <= high (got {bounds})"
            )
        if not (math.isfinite(max_step) and max_step > 0):
            raise ConfigError(f"calibration max_step must be > 0 (got {max_step})")
        gap = field_veh_s / twin_veh_s
        limit = math.log1p(max_step)
        step = max(-limit, min(limit, rate / elasticity * math.log(gap)))
        new = max(low, min(high, self.demand_scale * math.exp(step)))
        applied = math.log(new / self.demand_scale)
        self.demand_scale = new
        self.history.append(CalibrationUpdate(field_veh_s, twin_veh_s, gap, applied, new))
        del self.history[:-HISTORY_LIMIT]
        return new

    def update_from_estimate(self, estimate: CounterfactualEstimate, **kwargs: Any) -> float:
        """:meth:`update` from both windows of a measured delta (pooled).

        The before window (previous plan) and the after window (deployed plan)
        each pair the field with the twin on the same plan and window; their
        sums are one observation. The estimate must have run at the current
        :attr:`demand_scale`.

        Raises:
            SimulationError: the estimate ran at another scale, or totals are not positive.
        """
        if not math.isclose(estimate.demand_scale, self.demand_scale, rel_tol=1e-9):
            raise SimulationError(
                f"the estimate ran the twin at demand scale {estimate.demand_scale}, the "
                f"calibration is at {self.demand_scale}; estimate with the current scale"
            )
        return self.update(
            estimate.field_before_veh_s + estimate.field_after_veh_s,
            estimate.twin_before_veh_s + estimate.twin_deployed_after_veh_s,
            **kwargs,
        )

    def apply(self, snapshot: Mapping[str, Any]) -> dict[str, Any]:
        """The demand snapshot with the scale applied (unchanged at exactly 1.0).

        The scaled snapshot records ``calibration: {"demand_scale": ...}`` and has
        a new digest (:func:`simulators.demand.scale_snapshot`).

        Raises:
            ConfigError: the snapshot's digest does not match, or it is already calibrated.
        """
        if self.demand_scale == 1.0:
            return dict(snapshot)
        return scale_snapshot(snapshot, self.demand_scale)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON data."""
        return {
            "schema": CALIBRATION_SCHEMA,
            "demand_scale": self.demand_scale,
            "history": [u.to_dict() for u in self.history],
        }

    @classmethod
    def from_dict(
        cls, data: Mapping[str, Any], *, source: str = "calibration data"
    ) -> TwinCalibration:
        """Inverse of :meth:`to_dict`.

        Raises:
            ConfigError: not a calibration record (naming ``source`` and the key).
        """
        if not isinstance(data, Mapping) or data.get("schema") != CALIBRATION_SCHEMA:
            found = data.get("schema") if isinstance(data, Mapping) else type(data).__name__
            raise ConfigError(
                f"{source}: key 'schema' must be {CALIBRATION_SCHEMA!r} (found {found!r}); "
                "delete the file to start the calibration afresh"
            )
        try:
            scale = _finite(data["demand_scale"])
            history = [CalibrationUpdate.from_dict(u) for u in data.get("history", [])]
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise ConfigError(
                f"{source}: malformed 'demand_scale' or 'history' ({type(e).__name__}: {e}); "
                "delete the file to start the calibration afresh"
            ) from e
        if not scale > 0:
            raise ConfigError(f"{source}: key 'demand_scale' must be > 0 (got {scale})")
        return cls(demand_scale=scale, history=history[-HISTORY_LIMIT:])

    def save(self, path: Path) -> Path:
        """Write atomically: a temporary file in the same directory, fsync, rename, fsync dir."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        body = json.dumps(self.to_dict(), sort_keys=True, indent=1).encode("utf-8")
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(body)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
        return path

    @classmethod
    def load(cls, path: Path) -> TwinCalibration:
        """Read a file written by :meth:`save`.

        Raises:
            ConfigError: the file is missing, unreadable, not JSON or not a
                calibration record (never silently a fresh calibration).
        """
        path = Path(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError as e:
            raise ConfigError(
                f"calibration file {path} does not exist; use load_or_new to start afresh"
            ) from e
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ConfigError(
                f"calibration file {path} is unreadable or corrupt ({e}); restore it or "
                "delete it to start the calibration afresh"
            ) from e
        return cls.from_dict(data, source=f"calibration file {path}")

    @classmethod
    def load_or_new(cls, path: Path) -> TwinCalibration:
        """:meth:`load`, or a fresh calibration when ``path`` does not exist.

        A file that exists but is corrupt still raises :class:`ConfigError`.
        """
        if not Path(path).exists():
            return cls()
        return cls.load(path)
