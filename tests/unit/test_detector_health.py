"""Dead loops found against their own recent rate and bridged (simulators.detector_health)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from configs.errors import ConfigError
from simulators.detector_health import LoopHealth, repair_counts

T = 240.0
RATES = {f"d{i}": 0.1 for i in range(12)}  # 24 vehicles per interval each


def test_dead_loops_are_bridged_with_the_networks_trend_and_healthy_ones_kept() -> None:
    counts = {d: 30.0 for d in RATES}  # the network counts 25 % more than the reference
    counts |= {"d0": 0.0, "d1": 0.0, "d2": 3.0, "d3": 0.0}  # a third dead or nearly
    repair = repair_counts(counts, T, RATES)
    assert repair.trend == pytest.approx(1.25)
    assert repair.repaired == {d: (counts[d], 30.0) for d in ("d0", "d1", "d2", "d3")}
    assert {d: repair.counts[d] for d in RATES if d not in repair.repaired} == {
        d: 30.0 for d in RATES if d not in repair.repaired
    }
    assert json.loads(json.dumps(repair.to_dict()))["repaired"]["d2"] == [3.0, 30.0]


def test_plausible_low_counts_quiet_loops_and_loops_without_a_reference_are_kept() -> None:
    rates = RATES | {"quiet": 0.02, "side": 10 / T}  # 4.8 vehicles expected: a zero is plausible
    counts = {d: 24.0 for d in RATES} | {"d0": 13.0, "quiet": 0.0, "side": 4.0, "new": 0.0}
    repair = repair_counts(counts, T, rates)
    # d0 counted 54 % of its 24 and "side" 4 of 10: above a quarter (a lane whose
    # traffic moved elsewhere, not a dead loop); "side" 2 of 10 would be below it,
    # but a Poisson count of mean 10 is 2 or less 0.3 % of the time
    assert repair.repaired == {}
    assert repair.counts == counts
    assert repair_counts(counts | {"side": 2.0}, T, rates).repaired == {}


def test_nothing_is_judged_without_a_reference_or_when_most_loops_count_nothing() -> None:
    counts = {d: 0.0 for d in RATES} | {"d0": 20.0}
    assert repair_counts(counts, T, {}).repaired == {}
    outage = repair_counts(counts, T, RATES)
    assert outage.repaired == {} and outage.trend == 0.0


@pytest.mark.parametrize(
    ("counts", "rates", "interval", "match"),
    [
        ({"d0": -1.0}, RATES, T, "detector 'd0': count -1"),
        ({"d0": float("nan")}, RATES, T, "detector 'd0': count nan"),
        ({"d0": 1.0}, {"d0": float("inf")}, T, "detector 'd0': reference rate inf"),
        ({"d0": 1.0}, RATES, 0.0, "interval must be positive"),
    ],
)
def test_bad_counts_rates_and_intervals_are_refused_naming_the_loop(
    counts: dict[str, float], rates: dict[str, float], interval: float, match: str
) -> None:
    with pytest.raises(ConfigError, match=match):
        repair_counts(counts, interval, rates)


def test_the_daemons_loop_health_learns_rates_and_keeps_a_dead_loop_bridged() -> None:
    health = LoopHealth()
    first = health.check({d: 24.0 for d in RATES}, T)
    assert first.repaired == {}  # no reference yet
    dead = {d: 24.0 for d in RATES} | {"d5": 0.0}
    second = health.check(dead, T)
    assert second.repaired == {"d5": (0.0, 24.0)}
    third = health.check({d: 36.0 for d in RATES} | {"d5": 0.0}, T)  # traffic grows 50 %
    assert third.repaired == {"d5": (0.0, pytest.approx(36.0))}
    assert health.rates["d5"] == pytest.approx(0.5 * 0.1 + 0.5 * 0.15)
    with pytest.raises(ConfigError, match="weight"):
        LoopHealth(weight=0.0)


def test_a_quiet_loop_that_died_is_found_on_the_sum_of_its_low_intervals() -> None:
    health = LoopHealth()
    busy = {d: 24.0 for d in RATES}
    for _ in range(3):  # a side street: 5.5 vehicles an interval, three intervals
        health.check(busy | {"side": 5.5}, T)
    # the mean of three intervals (weights 1/4, 1/4, 1/2) is worth 640 s of counting
    assert health.exposure_s["side"] == pytest.approx(T / 0.375)
    one = health.check(busy | {"side": 0.0}, T)
    assert one.repaired == {}  # expected 5.5: under the 8 a loop must expect to be judged
    assert one.runs == {"side": (0.0, pytest.approx(5.5))}
    two = health.check(busy | {"side": 0.0}, T)
    # 0 of 11 expected, against 14.7 in the reference: (14.7 / 25.7)^14.7 = 3e-4
    assert two.repaired == {"side": (0.0, pytest.approx(5.5))}
    back = health.check(busy | {"side": 6.0}, T)
    assert back.repaired == {} and back.runs == {}  # counting again: the run ends


def test_a_low_count_is_judged_against_a_reference_of_one_interval_with_its_noise() -> None:
    # early in a day the reference is one interval: a loop that counted 12 then 2
    # is rare for a Poisson mean of 12 (P = 5e-4) but not for two counts of one
    # rate (P(X <= 2 | X + Y = 14) = 0.6 %); the Poisson test bridged such loops
    health = LoopHealth()
    busy = {d: 24.0 for d in RATES}
    health.check(busy | {"lane": 12.0}, T)
    assert health.exposure_s["lane"] == T
    assert health.check(busy | {"lane": 2.0}, T).repaired == {}
    assert repair_counts(busy | {"lane": 2.0}, T, health.rates).repaired == {
        "lane": (2.0, 12.0)
    }  # the rate taken as exact
    # a dead loop is still found on one reference interval: P(0 | 0 + 24) = 6e-8
    assert LoopHealth().check(busy, T).repaired == {}
    fresh = LoopHealth()
    fresh.check(busy, T)
    assert fresh.check(busy | {"d3": 0.0}, T).repaired == {"d3": (0.0, 24.0)}


def test_a_long_reference_gives_the_poisson_test() -> None:
    counts = {d: 24.0 for d in RATES} | {"d0": 4.0}  # 4 of 24: P = 1.6e-6 for Poisson
    exact = repair_counts(counts, T, RATES)
    long = repair_counts(counts, T, RATES, reference_exposure_s=dict.fromkeys(RATES, 1e9))
    short = repair_counts(counts, T, RATES, reference_exposure_s=dict.fromkeys(RATES, T))
    assert exact.repaired == long.repaired == {"d0": (4.0, 24.0)}
    assert short.repaired == {"d0": (4.0, 24.0)}  # P(X <= 4 | X + Y = 28) = 9e-5
    with pytest.raises(ConfigError, match="detector 'd0': reference exposure 0"):
        repair_counts(counts, T, RATES, reference_exposure_s={"d0": 0.0})


def test_the_trend_is_set_by_the_loops_that_count() -> None:
    # a third of the loops dead and two low: the plain median of counted/expected
    # is 1.19; without the dead ones it is the network's 1.25
    counts = {d: 30.0 for d in RATES} | {f"d{i}": 0.0 for i in range(4)}
    counts |= {"d4": 26.0, "d5": 27.0}
    repair = repair_counts(counts, T, RATES)
    assert repair.trend == pytest.approx(30.0 / 24.0)
    assert sorted(repair.repaired) == ["d0", "d1", "d2", "d3"]


def test_the_twin_adapter_bridges_a_dead_loop_and_records_it_in_the_demand(
    tmp_path: Path,
) -> None:
    """The daemon's demand estimate on the demo district: a loop dies in the second interval."""
    from controller.contracts import Observation
    from controller.wiring import TwinAdapter
    from simulators.demand import snapshot_digest
    from simulators.netbuild import district_paths
    from simulators.network import load_network
    from tests.support.cycle_ports import cycle_settings

    paths = district_paths()
    model = load_network(paths["net"], paths["det"])
    lanes = {d.id: d.lane_id for d in model.detectors}
    twin = TwinAdapter(
        cycle_settings(tmp_path, network=paths["net"]),
        model,
        lanes,
        engine=object(),  # type: ignore[arg-type]
    )

    def observe(t: float, counts: dict[str, float]) -> Observation:
        return Observation(field_time_s=t, counts=counts, interval_s=T, active={}, measurements={})

    healthy = {d: 20.0 for d in lanes}
    first, first_digest = twin.estimate(observe(4000, healthy))
    assert "detector_repairs" not in first
    dead = sorted(lanes)[0]
    demand, digest = twin.estimate(observe(4240, healthy | {dead: 0.0}))
    assert demand["detector_repairs"]["repaired"] == {dead: [0.0, 20.0]}
    assert demand["detector_counts"][dead] == 20.0  # the twin ran on the bridged count
    assert digest == demand["digest"] == snapshot_digest(demand)
    # the bridged estimate is the healthy one's, up to the record of the repair
    assert demand["routes"] == first["routes"] and digest != first_digest


def test_pieces_bridge_a_loop_that_died_part_way_and_a_run_of_quiet_pieces() -> None:
    from simulators.detector_health import repair_pieces

    busy = {d: 24.0 for d in RATES}  # 0.1 veh/s over 240 s
    exposure = dict.fromkeys(RATES, 600.0)
    pieces = [
        (240.0, busy | {"d0": 17.0}),  # d0 dies 170 s in
        (240.0, busy | {"d0": 0.0}),
        (120.0, {d: 12.0 for d in RATES} | {"d0": 0.0}),
    ]
    # the whole window: 17 of 60, 28 %: above the quarter, not judged dead
    whole = {d: sum(p[1][d] for p in pieces) for d in RATES}
    assert repair_counts(whole, 600.0, RATES, reference_exposure_s=exposure).repaired == {}
    repair = repair_pieces(pieces, RATES, reference_exposure_s=exposure)
    assert repair.repaired == {"d0": (17.0, pytest.approx(17.0 + 36.0))}
    assert repair.counts["d0"] == pytest.approx(53.0)
    assert {d: repair.counts[d] for d in RATES if d != "d0"} == {
        d: 60.0 for d in RATES if d != "d0"
    }
    assert repair.trend == pytest.approx(1.0)
    # a quiet loop (4.8 expected a piece) dead for two pieces: judged on their sum,
    # and both pieces bridged, not only the one where the evidence was enough
    rates = RATES | {"side": 0.02}
    quiet = [(240.0, busy | {"side": 0.0}), (240.0, busy | {"side": 0.0})]
    found = repair_pieces(quiet, rates, reference_exposure_s=dict.fromkeys(rates, 6000.0))
    assert found.repaired == {"side": (0.0, pytest.approx(9.6))}


def test_short_pieces_at_a_windows_edges_join_their_neighbour() -> None:
    from simulators.detector_health import repair_pieces

    busy = {d: 24.0 for d in RATES}
    # a 10 s piece of a dead loop expects 1 vehicle: alone it ends nothing and
    # sets no trend; joined to its neighbour the two judge the loop together
    pieces = [(10.0, {d: 1.0 for d in RATES} | {"d0": 0.0}), (240.0, busy | {"d0": 0.0})]
    repair = repair_pieces(pieces, RATES)
    assert repair.repaired == {"d0": (0.0, pytest.approx(25.0))}
    assert repair_pieces([], RATES).counts == {}
    with pytest.raises(ConfigError, match="positive time"):
        repair_pieces([(0.0, busy)], RATES)
