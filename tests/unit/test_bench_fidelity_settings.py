"""bench/fidelity.py runs the loop with the demo's settings on every event day's network.

The demo's screening surrogate was made on the district's twin, and the daemon
refuses a surrogate made on another network (controller.wiring.load_screening_surrogate).
On such a network the benchmark must screen nothing, as a bureau without a surrogate
of its own would, instead of failing the day (it stopped the whole benchmark at the
kuehne day before).
"""

from __future__ import annotations

from pathlib import Path
from types import ModuleType, SimpleNamespace

import pytest

from simulators.netbuild import district_paths
from simulators.sumo import sumo_home
from tests.support.bench_modules import load_bench


@pytest.fixture(scope="module")
def fidelity() -> ModuleType:
    return load_bench("fidelity")


def _field(net: Path, detectors: Path) -> SimpleNamespace:
    return SimpleNamespace(network=SimpleNamespace(path=net), detectors_path=detectors)


def test_the_district_screens_with_the_shipped_surrogate(
    fidelity: ModuleType, tmp_path: Path
) -> None:
    paths = district_paths()
    settings = fidelity.loop_settings(_field(paths["net"], paths["det"]), tmp_path, learn=True)
    assert settings.simulation.screen_candidates > 0
    assert fidelity.surrogate_fits(settings)


def test_another_network_screens_nothing_instead_of_failing(
    fidelity: ModuleType, tmp_path: Path
) -> None:
    from controller.wiring import load_screening_surrogate

    net = sumo_home() / "tools" / "game" / "kuehne" / "kuehne.net.xml"
    settings = fidelity.loop_settings(_field(net, tmp_path / "det.add.xml"), tmp_path, learn=True)
    assert settings.simulation.network == net
    assert settings.simulation.screen_candidates == 0
    # what the daemon does with these settings: no surrogate, no refusal
    assert load_screening_surrogate(settings, None) == (None, None)
