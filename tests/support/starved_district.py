"""A demo-district cycle whose candidate clearly wins: the e2e video test and the docs' frames.

The city (the field emulator at the morning peak) runs plans that starve the
first green of every light (7 s of a 90 s cycle); the daemon's parts are built
as the daemon builds them (:func:`controller.lockstep.build_lockstep_runner`),
with the first cycle free to deploy.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from configs.safety import Proposal, project
from configs.settings import Settings
from configs.settings_file import load_settings
from configs.timing import IntersectionTiming
from controller.demo import default_demo_config
from controller.lockstep import build_lockstep_runner
from simulators.field import FieldConfig, FieldEmulator


def cycle_settings(state: Path, video: dict[str, Any], **simulation: Any) -> Settings:
    """The demo's settings, state under ``state``, deploying on the first cycle."""
    settings = load_settings(default_demo_config()).with_state_dir(state)
    return settings.model_copy(
        update={
            "simulation": settings.simulation.model_copy(update=simulation),
            "video": settings.video.model_copy(update={"directory": state / "videos", **video}),
            "metrics": settings.metrics.model_copy(update={"enabled": False}),
            # deploy on the first cycle: no held window, nothing learned meanwhile
            "feedback": settings.feedback.model_copy(
                update={"hold_deployments": False, "calibrate": False}
            ),
            "rl": settings.rl.model_copy(update={"fine_tune": False}),
        }
    )


def starved_plans(field: FieldEmulator, settings: Settings) -> dict[str, IntersectionTiming]:
    """Each light's first green at 7 s, the rest of a 90 s cycle to its other greens."""
    plans = {}
    for tls, base in sorted(field.network.base_programs().items()):
        greens = base.green_indices
        fixed = sum(p.duration_s for i, p in enumerate(base.phases) if i not in greens)
        rest = max(7.0, (90.0 - fixed - 7.0) / max(1, len(greens) - 1))
        proposal = Proposal([7.0] + [rest] * (len(greens) - 1), cycle_s=90.0)
        plans[tls] = project(tls, proposal, base, settings.safety.limits_for(tls))
    return plans


@contextmanager
def one_cycle(
    settings: Settings, work: Path, *, seed: int = 7, lead_s: float = 0.0
) -> Iterator[Any]:
    """Run one daemon cycle on the starved city; yield its report (runner closed after).

    The field starts 15 minutes before its peak; ``lead_s`` runs it that long
    before the daemon starts (its first observation is the baseline, the cycle
    comes one interval later).
    """
    field = FieldEmulator(
        FieldConfig.for_district(seed=seed, backend="traci", work_dir=work / "field")
    ).start()
    try:
        if lead_s > 0:
            field.step_until(field.field_time_s + lead_s)
        assembly = build_lockstep_runner(
            settings, field, start_plans=starved_plans(field, settings)
        )
        try:
            field.step_until(field.field_time_s + settings.schedule.interval_s)
            yield assembly.runner.run_cycle(datetime.now(UTC), threading.Event())
        finally:
            assembly.runner.close()
    finally:
        field.close()
