"""A libsumo field forked after another libsumo field in the same (fresh) process.

Runs in a spawned process of its own (``second_field_gap``), so that what the
test process simulated before does not count: libsumo carries its global random
streams' draw counts from one simulation of a process to the next.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from configs.timing import IntersectionTiming
from simulators.field import FieldConfig, FieldEmulator
from simulators.field.fork import FieldFork, TrueDelta
from simulators.field.records import WindowTotals


def forked_window(
    field: FieldEmulator,
    running: Mapping[str, IntersectionTiming],
    previous: Mapping[str, IntersectionTiming],
    fork_s: float,
    window_s: float,
    work_dir: Path,
) -> tuple[WindowTotals, TrueDelta]:
    """Run ``running`` on the field, fork at ``fork_s``; the field's window and the true delta.

    The ``in_force`` shadow runs ``running`` (what the field runs), the
    ``previous`` one ``previous``.
    """
    for tls_id, plan in running.items():
        field.apply(tls_id, plan, field.field_time_s)
    field.step_until(fork_s)
    before = field.counters()
    fork = FieldFork.start(field, running, previous, window_s, work_dir=work_dir)
    field.step_until(fork_s + window_s)
    window = field.counters().window_since(before)
    return window, fork.result(timeout_s=120)


def second_field_gap(
    work: str, begin_s: float, fork_s: float, window_s: float
) -> tuple[float, float, float]:
    """``(shadow wait veh*s, wait gap, NOx gap)`` of the in-force shadow against the field.

    A first libsumo field runs 120 s and closes; a second one (every light on
    its base plan shifted by 7 s) is forked at ``fork_s`` with the same plans in
    both shadows, and the in-force shadow's window is compared with the field's.
    """
    root = Path(work)

    def config(name: str) -> FieldConfig:
        return FieldConfig.for_district(
            seed=7, begin_s=begin_s, backend="libsumo", work_dir=root / name
        )

    with FieldEmulator(config("earlier")) as earlier:
        earlier.step_until(earlier.field_time_s + 120)
    with FieldEmulator(config("field")) as field:
        plans = {}
        for tls_id, intersection in field.network.intersections.items():
            base = IntersectionTiming.from_base(intersection.base)
            plans[tls_id] = base.model_copy(update={"offset_s": (base.offset_s + 7) % base.cycle_s})
        window, delta = forked_window(field, plans, plans, fork_s, window_s, root / "forks")
    shadow = delta.in_force.totals
    return (
        shadow.wait_veh_s(),
        shadow.wait_veh_s() / window.wait_veh_s() - 1,
        shadow.total_nox_mg() / window.total_nox_mg() - 1,
    )
