"""What the field emulator offers closed-loop evaluation and training (rl), on the real SUMO.

Per-step hooks, lane queues on approach and exit lanes, the direct signal-state
setter, teleporting and route scaling, plan re-application without a cycle
restart, and actuated plans continuing the current phase. Fields in this
process use the ``traci`` backend (libsumo holds one simulation per process).
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest

from configs.errors import ConfigError
from configs.timing import IntersectionTiming, PhasePlan, SafetyLimits
from rl.baselines import actuated_plan
from simulators.field import FieldConfig, FieldEmulator, phase_at
from simulators.netbuild import DemandProfile, district_paths
from simulators.sumo import sumo_home

pytestmark = pytest.mark.integration

GRID6 = sumo_home() / "tools" / "game" / "grid6"
PEAK_BEGIN_S = DemandProfile.load(district_paths()["demand"]).peak_begin_s


def _sumo(field: FieldEmulator) -> Any:
    """The field's own SUMO connection, to check what it reports against SUMO itself."""
    return field._api


def _grid6(tmp_path: Path, **kwargs: Any) -> FieldConfig:
    return FieldConfig(
        net_path=GRID6 / "grid6.net.xml",
        routes_path=GRID6 / "grid6.rou.xml",
        backend="traci",
        work_dir=tmp_path / "work",
        **kwargs,
    )


def _exit_lanes(field: FieldEmulator) -> set[str]:
    return {
        link.to_lane
        for inter in field.network.intersections.values()
        for link in inter.links
        if not link.pedestrian
    }


def test_hook_runs_after_every_step_and_lane_halting_matches_sumo() -> None:
    config = FieldConfig.for_district(seed=4, backend="traci", begin_s=PEAK_BEGIN_S)
    with FieldEmulator(config) as field:
        approach = sorted(
            {lane for i in field.network.intersections.values() for lane in i.incoming_lanes}
        )
        exits = sorted(_exit_lanes(field) - set(approach))
        assert exits, "the district has exit-only lanes (towards its boundary)"
        assert field.lane_halting(approach[0]) == 0  # before the first step
        seen: list[float] = []
        mismatches: list[tuple[float, str, int, int]] = []
        queued = {"approach": 0, "exit": 0}
        lane_api = _sumo(field).lane

        def hook(f: FieldEmulator) -> None:
            seen.append(f.field_time_s)
            if len(seen) % 10:
                return
            for kind, lanes in (("approach", approach), ("exit", exits)):
                for lane in lanes:
                    ours, sumo = f.lane_halting(lane), int(lane_api.getLastStepHaltingNumber(lane))
                    queued[kind] += ours
                    if ours != sumo:
                        mismatches.append((f.field_time_s, lane, ours, sumo))

        end = field.step_until(PEAK_BEGIN_S + 300, hook=hook)
        assert end == PEAK_BEGIN_S + 300
        assert seen == [float(t) for t in range(PEAK_BEGIN_S + 1, PEAK_BEGIN_S + 301)]
        assert mismatches == []
        assert queued["approach"] > 100  # the peak really queues at the lights
        # the daemon's path is unchanged: no hook, same stepping
        assert field.step_until(PEAK_BEGIN_S + 310) == PEAK_BEGIN_S + 310
        with pytest.raises(ConfigError, match="not an approach or exit lane"):
            field.lane_halting("no_such_lane_0")


def test_set_signal_state_drives_the_light_and_active_plan_says_so(tmp_path: Path) -> None:
    with FieldEmulator(_grid6(tmp_path, seed=2)) as field:
        tls = field.network.tls_ids[0]
        links = len(field.network.intersections[tls].base.phases[0].state)
        before = field.active_plan(tls)
        field.step_until(30)
        red = "r" * links
        field.set_signal_state(tls, red)
        active = field.active_plan(tls)
        assert active.externally_controlled and active.applied_at_s == 30
        assert active.timing == before.timing  # the plan it ran before
        for _ in range(20):  # SUMO holds the state: the base program no longer runs
            field.step()
            program, _, state = field.signal_state(tls)
            assert state == red and program == active.program_id == "online"
        with pytest.raises(ConfigError, match="controls"):
            field.set_signal_state(tls, "r" * (links + 1))
        with pytest.raises(ConfigError, match="letters"):
            field.set_signal_state(tls, "x" * links)
        with pytest.raises(ConfigError, match="not in network"):
            field.set_signal_state("nope", red)
        # applying a plan takes the light back, even the plan it ran before
        field.apply(tls, before.timing, at_field_time_s=0)
        after = field.active_plan(tls)
        assert not after.externally_controlled and after.program_id.startswith("signaltwin-")
        assert field.signal_state(tls)[0] == after.program_id
        assert field.signal_state(tls)[1] == phase_at(before.timing, field.field_time_s)[0]


def test_reapplying_the_running_plan_does_not_restart_it() -> None:
    config = FieldConfig.for_district(seed=6, backend="traci", begin_s=PEAK_BEGIN_S)
    with FieldEmulator(config) as field:
        tl = _sumo(field).trafficlight
        base = field.network.intersections["n21"].base
        plan = actuated_plan("n21", base, SafetyLimits())
        field.apply("n21", plan, at_field_time_s=0)
        first = field.active_plan("n21")
        # the network's own (fixed) program is "running" its base plan: a no-op too
        fixed = field.active_plan("n22")
        field.apply("n22", fixed.timing, at_field_time_s=0)
        assert field.active_plan("n22") == fixed and field.signal_state("n22")[0] == "0"
        field.step_until(PEAK_BEGIN_S + 95)
        index, spent = tl.getPhase("n21"), tl.getSpentDuration("n21")
        field.apply("n21", plan, at_field_time_s=0)
        assert field.active_plan("n21") == first  # same program, same activation time
        assert (tl.getPhase("n21"), tl.getSpentDuration("n21")) == (index, spent)
        field.step()
        assert tl.getSpentDuration("n21") == spent + 1 or tl.getPhase("n21") != index


def _find_phase(field: FieldEmulator, tls: str, spent_at_least: float, avoid: int) -> int:
    """Step until ``tls`` is in a green phase other than ``avoid`` for a while; its index."""
    tl = _sumo(field).trafficlight
    for _ in range(600):
        index = int(tl.getPhase(tls))
        state = str(tl.getRedYellowGreenState(tls))
        if index != avoid and "G" in state and tl.getSpentDuration(tls) >= spent_at_least:
            return index
        field.step()
    raise AssertionError(f"{tls} never held a green for {spent_at_least} s")


def test_actuated_plan_replacing_actuated_continues_the_current_phase() -> None:
    config = FieldConfig.for_district(seed=8, backend="traci", begin_s=PEAK_BEGIN_S)
    with FieldEmulator(config) as field:
        tl = _sumo(field).trafficlight
        base = field.network.intersections["n21"].base
        first = actuated_plan("n21", base, SafetyLimits())
        field.apply("n21", first, at_field_time_s=0)
        program = field.active_plan("n21").program_id
        field.step_until(PEAK_BEGIN_S + 60)
        # an offset that would put the light in phase 0 now: re-entering would show it
        index = _find_phase(field, "n21", spent_at_least=3.0, avoid=0)
        now = field.field_time_s
        spent = tl.getSpentDuration("n21")
        second = IntersectionTiming(
            mode="actuated",
            cycle_s=first.cycle_s,
            offset_s=int(now) % first.cycle_s,
            phases=tuple(
                p.model_copy(update={"max_s": p.max_s + 9})
                if p.max_s is not None and p.min_s is not None and p.max_s > p.min_s
                else p
                for p in first.phases
            ),
        )
        assert phase_at(second, now)[0] == 0 != index
        field.apply("n21", second, at_field_time_s=now)
        active = field.active_plan("n21")
        assert active.timing == second and active.applied_at_s == now
        assert active.program_id == program == field.signal_state("n21")[0]  # updated in place
        assert tl.getPhase("n21") == index and tl.getSpentDuration("n21") == spent
        logic = next(lg for lg in tl.getAllProgramLogics("n21") if lg.programID == program)
        assert [p.maxDur for p in logic.phases] == [
            float(p.max_s if p.max_s is not None else p.duration_s) for p in second.phases
        ]
        field.step()
        assert tl.getSpentDuration("n21") == spent + 1 or tl.getPhase("n21") != index
        # a fixed plan still enters in step with its offset
        fixed = IntersectionTiming(
            mode="fixed",
            cycle_s=first.cycle_s,
            offset_s=7,
            phases=tuple(PhasePlan(state=p.state, duration_s=p.duration_s) for p in first.phases),
        )
        field.apply("n21", fixed, at_field_time_s=0)
        assert field.active_plan("n21").program_id != program
        assert tl.getPhase("n21") == phase_at(fixed, field.field_time_s)[0]


def test_route_scale_and_teleport_reach_sumo(tmp_path: Path) -> None:
    def run(scale: float, teleport_s: float, all_red: bool) -> tuple[int, int]:
        config = _grid6(
            tmp_path / f"{scale}-{teleport_s}", seed=1, demand_scale=scale, teleport_s=teleport_s
        )
        teleports = 0
        with FieldEmulator(config) as field:
            sim = _sumo(field).simulation
            if all_red:
                for tls in field.network.tls_ids:
                    links = len(field.network.intersections[tls].base.phases[0].state)
                    field.set_signal_state(tls, "r" * links)

            def count(f: FieldEmulator) -> None:
                nonlocal teleports
                teleports += int(sim.getStartingTeleportNumber())

            field.step_until(400, hook=count)
        return field.trip_statistics().vehicles, teleports

    full, _ = run(1.0, -1, all_red=False)
    half, _ = run(0.5, -1, all_red=False)
    assert 0.35 * full < half < 0.65 * full
    _, no_teleports = run(1.0, -1, all_red=True)
    assert no_teleports == 0  # -1: a stuck vehicle waits for ever, as in a city
    _, teleports = run(1.0, 30, all_red=True)
    assert teleports > 0  # vehicles stuck at the red lights for 30 s are teleported


def test_extra_args_may_not_repeat_an_option_the_field_sets(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="--time-to-teleport.*teleport_s"):
        FieldEmulator(_grid6(tmp_path, extra_args=("--time-to-teleport", "300")))
    with pytest.raises(ConfigError, match="--scale"):
        FieldEmulator(_grid6(tmp_path, extra_args=("--scale=2",)))
    with pytest.raises(ConfigError, match="demand_scale"):
        FieldEmulator(_grid6(tmp_path, demand_scale=0.0))


def test_trip_time_is_over_departed_vehicles(tmp_path: Path) -> None:
    # four times the district's demand for ten minutes: some vehicles never get in
    config = FieldConfig.for_district(
        seed=3, backend="traci", begin_s=PEAK_BEGIN_S, demand_scale=4.0, work_dir=tmp_path
    )
    with FieldEmulator(config) as field:
        field.step_until(PEAK_BEGIN_S + 600)
    stats = field.trip_statistics()
    rows = [e.attrib for _, e in ET.iterparse(tmp_path / "tripinfo.xml") if e.tag == "tripinfo"]
    departed = [r for r in rows if not r["depart"].startswith("-")]
    assert stats.undeparted == len(rows) - len(departed) > 0
    assert stats.departed == len(departed) == stats.arrived + stats.running
    assert stats.mean_trip_s == pytest.approx(
        sum(float(r["duration"]) for r in departed) / len(departed)
    )
    delay = [float(r["timeLoss"]) + float(r["departDelay"]) for r in rows]
    assert stats.mean_delay_s == pytest.approx(sum(delay) / len(rows))  # undeparted included
