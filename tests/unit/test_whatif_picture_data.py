"""What the what-if picture is made of: signal heads from the network, the recorder's cap."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from simulators.geometry import network_geometry
from simulators.network import load_network
from simulators.twin.run import _SceneRecorder

DISTRICT = Path(__file__).resolve().parents[2] / "configs" / "district" / "district.net.xml"


def test_every_vehicle_link_of_every_light_has_exactly_one_head() -> None:
    geometry = network_geometry(DISTRICT)
    model = load_network(DISTRICT)
    heads = geometry.signal_heads
    assert {t for t, _, _ in heads} == set(model.intersections)
    for tls, light in model.intersections.items():
        mine = [links for t, _, links in heads if t == tls]
        covered = sorted(i for links in mine for i in links)
        vehicle_links = sorted(k.index for k in light.links if not k.pedestrian)
        assert covered == vehicle_links, tls
        # a group's links share their state in every phase of the base program
        for links in mine:
            columns = {"".join(p.state[i] for p in light.base.phases) for i in links}
            assert len(columns) == 1, (tls, links)
    # heads stand on drawn approach edges, each approach's heads together
    approaches = [(t, e) for t, e, _ in heads]
    assert all(e in geometry.polylines for _, e in approaches)
    seen: list[tuple[str, str]] = []
    for key in approaches:
        assert key not in seen or seen[-1] == key
        seen.append(key)


class _Vehicles:
    def __init__(self, n: int) -> None:
        self.ids = tuple(f"v{i}" for i in range(n))

    def getIDList(self) -> tuple[str, ...]:  # noqa: N802 - libsumo's names
        return self.ids

    def getPosition(self, v: str) -> tuple[float, float]:  # noqa: N802
        return (float(v[1:]), 2.0)

    def getAngle(self, v: str) -> float:  # noqa: N802
        return 90.0

    def getSpeed(self, v: str) -> float:  # noqa: N802
        return 5.0

    def getWaitingTime(self, v: str) -> float:  # noqa: N802
        return 0.0


class _Lights:
    def getIDList(self) -> tuple[str, ...]:  # noqa: N802
        return ("b", "a")

    def getRedYellowGreenState(self, t: str) -> str:  # noqa: N802
        return {"a": "Gr", "b": "yrG"}[t]


class _Sumo:
    def __init__(self, n: int) -> None:
        self.vehicle: Any = _Vehicles(n)
        self.trafficlight: Any = _Lights()


def test_the_recorder_keeps_every_kth_vehicle_above_its_cap_and_packs_signal_states() -> None:
    recorder = _SceneRecorder(_Sumo(0), samples=2, max_vehicles=4)
    recorder.sample(_Sumo(3), 0)
    recorder.sample(_Sumo(10), 1)  # 10 > 4: every 3rd vehicle
    arrays = recorder.arrays()
    assert arrays["vehicle_offsets"].tolist() == [0, 3, 7]
    assert arrays["vehicle_count"].tolist() == [3, 10]
    assert arrays["vehicle_x_m"].tolist() == [0, 1, 2, 0, 3, 6, 9]
    assert arrays["vehicle_x_m"].dtype == np.float32
    assert arrays["signal_ids"] == ("a", "b")
    assert arrays["signal_offsets"].tolist() == [0, 2, 5]
    assert bytes(arrays["signal_states"][1]).decode() == "GryrG"
