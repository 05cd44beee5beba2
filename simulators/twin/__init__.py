"""The what-if engine: the current plan against candidate plans on the SUMO twin.

The package's face; its modules, one concept each:

* :mod:`simulators.twin.plans`: plan names, SUMO program ids, installing a plan in phase;
* :mod:`simulators.twin.request`: :class:`WhatIfRequest`, :class:`RecordSpec`, and
  :func:`request_from_settings` (settings -> request);
* :mod:`simulators.twin.results`: per-run totals, paired changes, plan outcomes;
* :mod:`simulators.twin.run`: one (plan, seed) run, the SUMO loop;
* :mod:`simulators.twin.pool`: :class:`LibsumoWhatIfEngine` and its worker pool;
* :mod:`simulators.twin.ray_engine`: :class:`RayWhatIfEngine`, the same runs on Ray actors;
* :mod:`simulators.twin.engines`: :func:`whatif_engine`, the one the settings choose;
* :mod:`simulators.twin.counterfactual`: the measured delta of a deployment
  (:func:`estimate_counterfactual`) and the window demand (:class:`DemandSource`).
"""

from __future__ import annotations

from simulators.twin.counterfactual import (
    CounterfactualEstimate,
    DemandSource,
    estimate_counterfactual,
)
from simulators.twin.engines import whatif_engine
from simulators.twin.plans import CURRENT, EVALUATED_PROGRAM_ID, PROGRAM_ID, apply_timing
from simulators.twin.pool import LibsumoWhatIfEngine, Runner, WhatIfEngine
from simulators.twin.ray_engine import RayWhatIfEngine
from simulators.twin.request import (
    RecordSpec,
    WhatIfRequest,
    request_from_settings,
    whatif_seeds,
)
from simulators.twin.results import (
    METRICS,
    RECORDING_ARRAYS,
    Change,
    IntersectionOutcome,
    PlanOutcome,
    Recording,
    RunMetrics,
    WhatIfResult,
    aggregate,
    field_prediction,
    paired_change,
)
from simulators.twin.run import TWIN_REVISION, RunTask, run_plan, twin_identity

__all__ = [
    "CURRENT",
    "EVALUATED_PROGRAM_ID",
    "METRICS",
    "PROGRAM_ID",
    "RECORDING_ARRAYS",
    "Change",
    "CounterfactualEstimate",
    "DemandSource",
    "IntersectionOutcome",
    "LibsumoWhatIfEngine",
    "PlanOutcome",
    "RayWhatIfEngine",
    "RecordSpec",
    "Recording",
    "RunMetrics",
    "TWIN_REVISION",
    "RunTask",
    "Runner",
    "WhatIfEngine",
    "WhatIfRequest",
    "WhatIfResult",
    "aggregate",
    "apply_timing",
    "estimate_counterfactual",
    "field_prediction",
    "paired_change",
    "request_from_settings",
    "run_plan",
    "twin_identity",
    "whatif_engine",
    "whatif_seeds",
]
