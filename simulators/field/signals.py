"""The field as the emulated traffic controllers see it: one intersection at a time."""

from __future__ import annotations

__all__ = ["FieldSignals"]

from configs.errors import ConfigError
from configs.timing import IntersectionTiming
from simulators.field.emulator import FieldEmulator


class FieldSignals:
    """One field seen the way emulated controllers read it (per intersection).

    Matches the ``SignalField`` protocol of the emulated OPC UA controllers
    (:mod:`actuation`) structurally, so the composition root can hand a field to
    them without either package importing the other.
    """

    def __init__(self, field: FieldEmulator) -> None:
        """Wrap ``field`` (which must be started before it is read)."""
        self.field = field
        self._by_tls = field.network.detectors_by_intersection()

    def field_time_s(self) -> float:
        """The current field time."""
        return self.field.field_time_s

    def apply(self, tls_id: str, timing: IntersectionTiming, at_field_time_s: float) -> None:
        """Switch ``tls_id`` to ``timing`` when the field clock reaches ``at_field_time_s``."""
        self.field.apply(tls_id, timing, at_field_time_s)

    def detector_snapshot(self, tls_id: str) -> dict[str, tuple[int, float]]:
        """Detector id -> (cumulative count, occupancy % over the last field step)."""
        detectors = self._by_tls.get(tls_id)
        if detectors is None:
            raise ConfigError(
                f"traffic light {tls_id!r} is not in network {self.field.network.path.name}"
            )
        snapshot = self.field.detector_counts()
        return {
            d.id: (snapshot.readings[d.id].count, 100.0 * self.field.step_occupancy(d.id))
            for d in detectors
        }

    def measurements(self, tls_id: str) -> tuple[float, float, float]:
        """``(mean_wait_s, nox_mg, interval_end_s)`` of the last completed interval.

        Before the first interval completes: ``(0.0, 0.0, begin_s)``.
        """
        snapshot = self.field.measurements()
        m = snapshot.intersections.get(tls_id)
        if m is None or snapshot.interval_end_s is None:
            if tls_id not in self._by_tls:
                raise ConfigError(
                    f"traffic light {tls_id!r} is not in network {self.field.network.path.name}"
                )
            return 0.0, 0.0, float(self.field.config.begin_s)
        return m.mean_wait_s, m.nox_mg, snapshot.interval_end_s

    def totals(self, tls_id: str) -> tuple[float, float]:
        """``(halting_veh_s, nox_mg)`` on ``tls_id``'s approach lanes since the field started.

        What a controller's cabinet keeps (``Measurements.HaltingTotal`` and
        ``Measurements.NOxTotal``), from :meth:`FieldEmulator.counters`.
        """
        if tls_id not in self._by_tls:
            raise ConfigError(
                f"traffic light {tls_id!r} is not in network {self.field.network.path.name}"
            )
        counters = self.field.counters()
        return (
            float(counters.halting_veh_s.get(tls_id, 0.0)),
            float(counters.nox_mg.get(tls_id, 0.0)),
        )

    def health(self, tls_id: str) -> str:
        """``"ok"`` while the field runs, else ``"fault: <reason>"``."""
        if tls_id not in self._by_tls:
            return f"fault: intersection {tls_id} is not in the field's network"
        if not self.field.running:
            return "fault: field simulation is not running"
        return "ok"
