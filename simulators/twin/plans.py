"""Plans on the twin: the plan names, the SUMO program ids, installing a plan in phase."""

from __future__ import annotations

__all__ = ["CURRENT", "EVALUATED_PROGRAM_ID", "PROGRAM_ID", "apply_timing"]

from typing import Any, Final

from configs.errors import SimulationError
from configs.timing import IntersectionTiming
from simulators.signal_program import AdaptiveRunner, install_program, phase_at

CURRENT: Final = "current"
"""Name of the current plan in every result."""

PROGRAM_ID: Final = "signaltwin"
"""SUMO program id under which plans are installed."""

EVALUATED_PROGRAM_ID: Final = "signaltwin-evaluated"
"""Program id of the plan under evaluation (installed after the warm-up)."""


def apply_timing(
    tc: Any,
    tls_id: str,
    timing: IntersectionTiming,
    time_s: float,
    *,
    field_time_s: float = 0.0,
    program_id: str = PROGRAM_ID,
    runner: AdaptiveRunner | None = None,
) -> None:
    """Install ``timing`` on traffic light ``tls_id`` of a running SUMO, in phase.

    The offset is honoured against the field clock exactly as the field emulator
    does (:func:`simulators.signal_program.phase_at`): at field time ``t`` the plan is at
    cycle position ``(t - offset_s) mod cycle_s`` (phase 0 starts at
    ``offset_s + k * cycle_s``), where ``t = field_time_s + time_s``. The program
    is installed as the controllers run it (:mod:`simulators.signal_program`:
    static, or fully actuated without recall), switched to, and put in the phase
    and remaining time that position implies, so installing the same plan again
    changes nothing.

    Args:
        tc: the ``libsumo`` or ``traci`` module (or connection) driving SUMO.
        tls_id: the traffic light.
        timing: the plan.
        time_s: current simulation time (s).
        field_time_s: field clock at simulation time 0 (s).
        program_id: SUMO program id to install the plan as.
        runner: the simulation's real-time runner (required for adaptive plans).

    Raises:
        SimulationError: SUMO refused the program (unknown light, wrong state length).
    """
    tl = tc.trafficlight
    try:
        links = len(tl.getRedYellowGreenState(tls_id))
    except Exception as e:  # libsumo.TraCIException / traci.TraCIException
        raise SimulationError(f"traffic light {tls_id!r} is not in the simulated network") from e
    for number, phase in enumerate(timing.phases):
        if len(phase.state) != links:
            raise SimulationError(
                f"plan for traffic light {tls_id!r} phase {number}: state {phase.state!r} has "
                f"{len(phase.state)} signals, the light controls {links}; check that the plan "
                "was made for this network"
            )
    index, remaining = phase_at(timing, field_time_s + time_s)
    install_program(tc, tls_id, timing, program_id, index, remaining, runner)
