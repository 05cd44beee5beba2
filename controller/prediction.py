"""What a measured delta is compared with: the twin's prediction of the same quantity.

The quantity (:data:`QUANTITY`) is the halting vehicle-seconds on the
signalised approaches (and their NOx) over the intersections a deployment
changed (:func:`changed_intersections`); :func:`predicted_from_cycle` reads the
twin's prediction of exactly that from the deployment's cycle record.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from configs.errors import SignaltwinError
from configs.timing import IntersectionTiming, TimingConfiguration
from controller.contracts import Plans

__all__ = ["QUANTITY", "Predicted", "changed_intersections", "plans_of", "predicted_from_cycle"]

logger = logging.getLogger(__name__)

#: the field-observable quantity every measured delta compares
QUANTITY = "approach halting vehicle-seconds"


@dataclass(frozen=True)
class Predicted:
    """The twin's predicted change of a deployment (fractions, negative = better).

    Attributes:
        quantity: what the change is of; :data:`QUANTITY` when the what-if
            recorded the approach totals (``approach_wait``/``approach_nox``), else
            the twin's mean wait per vehicle (an older what-if: errors then
            compare different quantities, and the record says so).
    """

    wait_change: float
    wait_ci: tuple[float, float]
    nox_change: float
    nox_ci: tuple[float, float]
    quantity: str = QUANTITY

    def to_dict(self) -> dict[str, Any]:
        """Plain data for the ledger."""
        return {
            "quantity": self.quantity,
            "wait_change": round(self.wait_change, 6),
            "wait_ci": [round(v, 6) for v in self.wait_ci],
            "nox_change": round(self.nox_change, 6),
            "nox_ci": [round(v, 6) for v in self.nox_ci],
        }


def changed_intersections(previous: Plans, deployed: Plans) -> frozenset[str]:
    """The intersections whose plan ``deployed`` changes against ``previous``."""
    return frozenset(t for t, plan in deployed.items() if previous.get(t) != plan)


# --------------------------------------------------------------------------- the collector


def plans_of(data: Any) -> dict[str, IntersectionTiming]:
    """Plans recorded as plain data (a cycle record's ``current``); empty when unreadable."""
    if not isinstance(data, Mapping):
        return {}
    try:
        return {str(t): IntersectionTiming.model_validate(p) for t, p in data.items()}
    except ValueError as e:
        logger.warning("cycle record's current plans unreadable: %s", e)
        return {}


def _change(changes: Mapping[str, Any], name: str) -> tuple[float, tuple[float, float]] | None:
    item = changes.get(name)
    if not isinstance(item, Mapping):
        return None
    try:
        low, high = item["ci"]
        return float(item["mean"]), (float(low), float(high))
    except (KeyError, TypeError, ValueError):
        return None


def predicted_from_cycle(
    config: TimingConfiguration, cycle: Mapping[str, Any], only: frozenset[str]
) -> Predicted:
    """The prediction of the same quantity as measured, from the deployment's cycle record.

    The chosen candidate's paired change of the approach halting vehicle-seconds
    and NOx over the intersections ``only`` (:func:`simulators.twin.field_prediction`
    on the recorded what-if); over every intersection when the runs cannot be
    restricted; the configuration's prediction (the twin's mean wait per vehicle)
    when the what-if recorded no approach totals.
    """
    gate = cycle.get("gate")
    chosen = gate.get("chosen") if isinstance(gate, Mapping) else None
    whatif = cycle.get("whatif")
    result = whatif.get("result") if isinstance(whatif, Mapping) else None
    if isinstance(chosen, str) and isinstance(result, Mapping):
        from simulators.twin.results import WhatIfResult, field_prediction

        try:
            wait, nox = field_prediction(WhatIfResult.from_dict(result), chosen, only)
            return Predicted(wait.mean, wait.ci, nox.mean, nox.ci)
        except (SignaltwinError, KeyError, ValueError, TypeError) as e:
            logger.info("no per-intersection prediction of %s (%s)", chosen, e)
        for o in result.get("outcomes") or []:
            if isinstance(o, Mapping) and o.get("name") == chosen:
                changes = o.get("changes")
                changes = changes if isinstance(changes, Mapping) else {}
                w, n = _change(changes, "approach_wait"), _change(changes, "approach_nox")
                if w is not None and n is not None:
                    return Predicted(w[0], w[1], n[0], n[1])
    p = config.predicted
    return Predicted(
        p.wait_change,
        (p.wait_change_ci[0], p.wait_change_ci[1]),
        p.nox_change,
        (p.nox_change_ci[0], p.nox_change_ci[1]),
        quantity="mean wait per vehicle (twin; the what-if recorded no approach totals)",
    )
