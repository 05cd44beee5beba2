"""Actuated plans on a real SUMO: the light rests in green, answers calls, keeps its maximum green.

Runs the demo district in a separate ``sumo`` process (traci) with no demand
but the vehicles each test inserts, on light ``n02`` (two stages: links 0-2 and
6-8 are one road, 3-5 and 9-11 the crossing one).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from configs.timing import SafetyLimits
from rl.baselines import actuated_plan
from simulators.netbuild import district_paths
from simulators.network import load_network
from simulators.signal_program import install_program
from simulators.sumo import sumo_binary

pytestmark = pytest.mark.integration

TLS = "n02"


@pytest.fixture
def sumo(request: pytest.FixtureRequest) -> Iterator[Any]:
    import traci

    paths = district_paths()
    label = f"signal-program-{request.node.name}"
    traci.start(
        [
            str(sumo_binary()),
            "-n",
            str(paths["net"]),
            "--no-step-log",
            "true",
            "--no-warnings",
            "true",
            "--time-to-teleport",
            "-1",
        ],
        label=label,
    )
    conn = traci.getConnection(label)
    try:
        yield conn
    finally:
        conn.close()


def _plan() -> Any:
    paths = district_paths()
    network = load_network(paths["net"], paths["det"])
    return actuated_plan(TLS, network.base_programs()[TLS], SafetyLimits())


def _add_vehicle(conn: Any, vid: str, edges: list[str], depart: float | str = "now") -> None:
    route = f"r-{'-'.join(edges)}"
    if route not in conn.route.getIDList():
        conn.route.add(route, edges)
    conn.vehicle.add(vid, route, depart=str(depart))


def _run(conn: Any, seconds: int) -> list[int]:
    phases = []
    for _ in range(seconds):
        conn.simulationStep()
        phases.append(conn.trafficlight.getPhase(TLS))
    return phases


def test_rests_in_green_while_nobody_calls(sumo: Any) -> None:
    plan = _plan()
    assert plan.phases[0].max_s is not None
    install_program(sumo, TLS, plan, "test", 0)
    phases = _run(sumo, int(plan.phases[0].max_s) + 60)
    # plain actuated control would have cycled through the empty crossing stage
    assert set(phases) == {0}


def test_a_call_on_the_crossing_road_ends_the_rest(sumo: Any) -> None:
    plan = _plan()
    install_program(sumo, TLS, plan, "test", 0)
    _run(sumo, 120)
    # a vehicle arrives on n12 -> n02 (links 3-5, the crossing stage)
    _add_vehicle(sumo, "caller", ["n12_n02", "n02_n03"])
    phases = _run(sumo, 90)
    assert 3 in phases, "the crossing stage was never served"
    assert "caller" not in sumo.vehicle.getIDList() or sumo.vehicle.getWaitingTime("caller") < 60


def test_maximum_green_holds_against_a_waiting_call(sumo: Any) -> None:
    plan = _plan()
    max_s = int(plan.phases[0].max_s)
    install_program(sumo, TLS, plan, "test", 0)
    # a steady stream on the served road (every 2 s: it never gaps out) ...
    for k in range(150):
        _add_vehicle(sumo, f"stream{k}", ["n03_n02", "n02_n01"], depart=2.0 * k)
    # ... and a vehicle waiting on the crossing road from the start
    _add_vehicle(sumo, "caller", ["n12_n02", "n02_n03"])
    phases = _run(sumo, max_s + 30)
    green = next(i for i, p in enumerate(phases) if p != 0)
    assert green <= max_s + 1, f"green lasted {green} s with a call waiting, max {max_s} s"


def test_a_program_id_is_not_reused_for_another_plan_type(sumo: Any) -> None:
    from configs.errors import SimulationError
    from configs.timing import IntersectionTiming

    paths = district_paths()
    base = load_network(paths["net"], paths["det"]).base_programs()[TLS]
    install_program(sumo, TLS, IntersectionTiming.from_base(base), "plan", 0, 10.0)
    # SUMO would update the fixed program in place and keep running it fixed
    with pytest.raises(SimulationError, match="another type"):
        install_program(sumo, TLS, _plan(), "plan", 0)
    install_program(sumo, TLS, _plan(), "plan-2", 0)
    assert sumo.trafficlight.getProgram(TLS) == "plan-2"
