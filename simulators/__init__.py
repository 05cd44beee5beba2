"""Everything SUMO: the network model, the field emulator (the city), demand, the twin."""

from simulators.demand import estimate_demand, write_routes
from simulators.field import (
    DetectorSnapshot,
    FieldConfig,
    FieldEmulator,
    FieldSignals,
    MeasurementSnapshot,
    TripStatistics,
)
from simulators.netbuild import DemandProfile, build_district, expand_demand
from simulators.network import Detector, Intersection, NetworkModel, ensure_detectors, load_network
from simulators.signal_program import phase_at
from simulators.twin import LibsumoWhatIfEngine, WhatIfEngine, WhatIfRequest, WhatIfResult

__all__ = [
    "DemandProfile",
    "Detector",
    "DetectorSnapshot",
    "FieldConfig",
    "FieldEmulator",
    "FieldSignals",
    "Intersection",
    "LibsumoWhatIfEngine",
    "MeasurementSnapshot",
    "NetworkModel",
    "TripStatistics",
    "WhatIfEngine",
    "WhatIfRequest",
    "WhatIfResult",
    "build_district",
    "ensure_detectors",
    "estimate_demand",
    "expand_demand",
    "load_network",
    "phase_at",
    "write_routes",
]
