"""The controlled counterfactual set-up: a district field, a clearly worse plan, the truth.

Shared by ``tests/integration/test_counterfactual_twin.py`` and
``bench/counterfactual.py`` (docs/feedback.md "Measured").
"""

from __future__ import annotations

from configs.timing import IntersectionTiming
from simulators.field import FieldConfig, FieldEmulator, WindowTotals
from simulators.network import NetworkModel


def starved(timing: IntersectionTiming) -> IntersectionTiming:
    """``timing`` with its first phase cut to 10 s (a plan clearly worse than the base)."""
    phases = list(timing.phases)
    phases[0] = phases[0].model_copy(update={"duration_s": 10})
    return timing.model_copy(
        update={"phases": tuple(phases), "cycle_s": sum(p.duration_s for p in phases)}
    )


def field_windows(
    seed: int, window_s: int, settle_s: int, *, deploy: bool
) -> tuple[NetworkModel, WindowTotals, WindowTotals]:
    """(network, before, after) of a district field run.

    The field settles for ``settle_s`` under its base plans, the before window
    follows, then (with ``deploy``) every light runs :func:`starved` of its base
    plan over the after window.
    """
    field = FieldEmulator(FieldConfig.for_district(seed=seed)).start()
    try:
        base = {
            t: IntersectionTiming.from_base(i.base) for t, i in field.network.intersections.items()
        }
        field.step_until(field.field_time_s + settle_s)
        c0 = field.counters()
        field.step_until(c0.field_time_s + window_s)
        c1 = field.counters()
        if deploy:
            for tls_id, timing in base.items():
                field.apply(tls_id, starved(timing), c1.field_time_s)
        field.step_until(c1.field_time_s + window_s)
        c2 = field.counters()
    finally:
        field.close()
    return field.network, c1.window_since(c0), c2.window_since(c1)
