"""The field emulator: the stand-in city, observed only through its traffic controllers.

The package's face; its modules, one concept each:

* :mod:`simulators.field.scenario`: :class:`FieldConfig` (network, hidden demand,
  seed) and the field's SUMO command line;
* :mod:`simulators.field.records`: what the field reports (snapshots, plans, trips);
* :mod:`simulators.field.measurements`: per-step loop and approach measurements;
* :mod:`simulators.field.emulator`: :class:`FieldEmulator`, the SUMO session;
* :mod:`simulators.field.signals`: :class:`FieldSignals`, the controllers' view;
* :mod:`simulators.field.fork`: :class:`FieldFork`, ground truth in evaluation (the
  field forked at an activation, the plans in force and the previous ones run on it).
* :mod:`simulators.field.programs`: the programs a field installed, as the
  additional file a fork loads with the saved state.

``phase_at`` lives in :mod:`simulators.signal_program` (the twin uses it too)
and is re-exported here for the field's callers.
"""

from __future__ import annotations

from simulators.field.emulator import FieldEmulator, ForkPoint
from simulators.field.fork import FieldFork, ShadowResult, TrueDelta
from simulators.field.records import (
    ActivePlan,
    DetectorReading,
    DetectorSnapshot,
    FieldCounters,
    IntersectionMeasurement,
    MeasurementSnapshot,
    TripStatistics,
    WindowTotals,
)
from simulators.field.scenario import Backend, FieldConfig, FieldEvents
from simulators.field.signals import FieldSignals
from simulators.signal_program import phase_at

__all__ = [
    "ActivePlan",
    "Backend",
    "DetectorReading",
    "DetectorSnapshot",
    "FieldConfig",
    "FieldCounters",
    "FieldEmulator",
    "FieldEvents",
    "FieldFork",
    "FieldSignals",
    "ForkPoint",
    "IntersectionMeasurement",
    "MeasurementSnapshot",
    "ShadowResult",
    "TripStatistics",
    "TrueDelta",
    "WindowTotals",
    "phase_at",
]
