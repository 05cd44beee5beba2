"""The what-if on a real two-node Ray cluster (ray start --head + ray start --address).

One cluster serves the module: starting it costs ~15 s on the 2-core CI machine.
"""

from __future__ import annotations

import re
import socket
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from configs.errors import ConfigError, SimulationError, WhatIfCancelled
from configs.settings import ComputeSettings
from configs.timing import IntersectionTiming, PhasePlan, classify_state
from simulators.network import load_network
from simulators.twin import CURRENT, LibsumoWhatIfEngine, RecordSpec, WhatIfRequest
from simulators.twin.ray_engine import RayWhatIfEngine
from tests.support.ray_cluster import RayCluster, descendants
from tests.support.twin_scenarios import GridScenario, build_grid

pytestmark = [pytest.mark.integration, pytest.mark.ray, pytest.mark.slow]


@pytest.fixture
def cluster(ray_cluster: RayCluster) -> RayCluster:
    """The session's cluster (tests/integration/conftest.py)."""
    return ray_cluster


@pytest.fixture(scope="module")
def grid(tmp_path_factory: pytest.TempPathFactory) -> GridScenario:
    return build_grid(tmp_path_factory.mktemp("ray-grid"), size=2, period_s=2.0, end_s=900)


@pytest.fixture(scope="module")
def long_grid(tmp_path_factory: pytest.TempPathFactory) -> GridScenario:
    """Runs of a few seconds each (horizon 1800 s), so that a kill or a cancel lands mid-run."""
    return build_grid(tmp_path_factory.mktemp("ray-long"), size=5, period_s=1.0, end_s=3000)


def _greens(plan: IntersectionTiming, green_s: int) -> IntersectionTiming:
    phases = tuple(
        PhasePlan(state=p.state, duration_s=green_s) if classify_state(p.state) == "green" else p
        for p in plan.phases
    )
    return IntersectionTiming(
        mode="fixed", cycle_s=sum(p.duration_s for p in phases), offset_s=0, phases=phases
    )


def _request(grid: GridScenario, **kw: object) -> WhatIfRequest:
    model = load_network(grid.net)
    base = {t: IntersectionTiming.from_base(b) for t, b in model.base_programs().items()}
    args: dict[str, object] = {
        "network": str(grid.net),
        "demand": str(grid.routes),
        "current": base,
        "candidates": {"short": {t: _greens(p, 12) for t, p in base.items()}},
        "horizon_s": 300,
        "warmup_s": 120,
        "seeds": (3, 4),
    }
    args.update(kw)
    return WhatIfRequest(**args)  # type: ignore[arg-type]


def _compute(cluster: RayCluster, **kw: object) -> ComputeSettings:
    args: dict[str, object] = {"connect_timeout_s": 60, **kw}
    return ComputeSettings(backend="ray", address=cluster.address, **args)  # type: ignore[arg-type]


def test_ray_gives_the_local_backends_numbers_and_recordings(
    cluster: RayCluster, grid: GridScenario
) -> None:
    request = _request(grid, record=RecordSpec(fps=5, duration_s=2, window_s=60))
    with LibsumoWhatIfEngine(workers=2) as local:
        expected = local.evaluate(request)
    seen: list[tuple[int, int]] = []
    with RayWhatIfEngine(_compute(cluster), workers=2) as engine:
        info = engine.connect()
        assert info["nodes"] == 2 and info["cpus"] == 2.0
        got = engine.evaluate(request, progress=lambda d, t: seen.append((d, t)))
        assert engine.workers_alive == 2
        again = engine.evaluate(request)  # the actors and their copies of the files stay
    assert got.to_dict() == expected.to_dict() == again.to_dict()
    assert seen[-1] == (4, 4)
    for name in (CURRENT, "short"):
        ours, theirs = got.recordings[name], expected.recordings[name]
        np.testing.assert_array_equal(ours.queue_veh, theirs.queue_veh)
        np.testing.assert_array_equal(ours.mean_wait_s, theirs.mean_wait_s)


def test_sequential_elimination_on_the_cluster_is_the_local_one(
    cluster: RayCluster, grid: GridScenario
) -> None:
    base = _request(grid).current
    candidates = {f"g{g}": {t: _greens(p, g) for t, p in base.items()} for g in (10, 14, 20)}
    request = _request(grid, candidates=candidates, seeds=(3, 4, 5), elimination_seeds=1)
    with LibsumoWhatIfEngine(workers=2) as local:
        expected = local.evaluate(request)
        full = local.evaluate(_request(grid, candidates=candidates, seeds=(3, 4, 5)))
    seen: list[tuple[int, int]] = []
    with RayWhatIfEngine(_compute(cluster), workers=2) as engine:
        got = engine.evaluate(request, progress=lambda d, t: seen.append((d, t)))
    assert got.to_dict() == expected.to_dict()
    # 4 plans on the first seed, then the current plan and one finalist on two more
    assert seen[-1] == (8, 8) and sum(len(o.runs) for o in got.outcomes) == 8
    (finalist,) = [o for o in got.outcomes if o.name != CURRENT and o.eliminated is None]
    assert finalist == full.outcome(finalist.name)
    assert sum(o.eliminated is not None for o in got.outcomes) == 2


def test_a_node_killed_mid_whatif_is_retried_or_fails_the_cycle_cleanly(
    cluster: RayCluster, long_grid: GridScenario
) -> None:
    request = _request(long_grid, horizon_s=2700, seeds=(5, 6, 7))
    with LibsumoWhatIfEngine(workers=0) as local:
        expected = local.evaluate(request).to_dict()
    try:
        kills = 0
        for _ in range(3):
            kills += 1
            with RayWhatIfEngine(_compute(cluster, max_task_retries=2), workers=2) as engine:
                assert engine.connect()["workers"] == 2
                # killed from the first progress report: one run is done, both actors
                # are busy (a node's run that ends while the kill is under way is not
                # lost; then the node is started again and the what-if repeated)
                got = engine.evaluate(request, progress=lambda d, t: _kill_once(cluster, d))
                assert got.to_dict() == expected
                assert engine.workers_alive == 1
                retried = engine.retried
            if retried:
                break
            cluster.start_node()
        # the lost node's run was retried on the head's actor: the same numbers
        assert retried and all("seed" in r for r in retried), f"no run lost in {kills} kills"

        # with no retries the same loss fails the what-if, naming the lost runs
        lost: SimulationError | None = None
        for _ in range(3):
            cluster.start_node()
            with RayWhatIfEngine(_compute(cluster, max_task_retries=0), workers=2) as engine:
                assert engine.connect()["workers"] == 2
                try:
                    engine.evaluate(request, progress=lambda d, t: _kill_once(cluster, d))
                except SimulationError as e:
                    lost = e
                    break
        assert lost is not None, "no run lost in 3 kills"
        assert re.search(r"Ray workers were lost mid-what-if.*plan", str(lost)), lost
    finally:
        if cluster.node is None:
            cluster.start_node()


def test_a_killed_node_leaves_none_of_its_workers_running(
    cluster: RayCluster, grid: GridScenario
) -> None:
    # Ray puts each worker in a process group of its own: killing the node's group
    # alone left its actor answering for seconds, and the node-kill test above raced
    try:
        with RayWhatIfEngine(_compute(cluster), workers=2) as engine:
            assert engine.connect()["workers"] == 2  # an actor on each node
            assert cluster.node is not None
            below = descendants(cluster.node.pid)
            cluster.kill_node()
            time.sleep(0.2)
            running = [pid for pid in below if _state(pid) not in (None, "Z", "X")]
            assert not running, f"still running after the kill: {running}"
    finally:
        cluster.start_node()


def _state(pid: int) -> str | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat[stat.rindex(")") + 2 :].split()[0]


def test_cancel_stops_the_whatif_on_the_cluster(
    cluster: RayCluster, grid: GridScenario, long_grid: GridScenario
) -> None:
    request = _request(long_grid, horizon_s=1200, seeds=(1, 2, 3))
    cancel = threading.Event()
    with RayWhatIfEngine(_compute(cluster), workers=2) as engine:
        engine.connect()
        # cancelled at the first report: the other worker's run may finish in the same wait
        with pytest.raises(WhatIfCancelled, match=r"cancelled with [12] of 6 runs done"):
            engine.evaluate(request, cancel=cancel, progress=lambda d, t: cancel.set())
        assert engine.workers_alive < 2  # the busy actor was killed, not waited for
        # the pool is rebuilt for the next what-if
        assert engine.evaluate(_request(grid)).outcome("short").failed is None


def test_a_run_that_fails_in_sumo_fails_the_whatif_with_its_own_error(
    cluster: RayCluster, grid: GridScenario, tmp_path: Path
) -> None:
    broken = tmp_path / "broken.rou.xml"
    broken.write_text("<routes><vehicle id='x' depart='0' route='nowhere'/></routes>")
    with RayWhatIfEngine(_compute(cluster), workers=2) as engine:
        with pytest.raises(SimulationError, match=r"plan 'current' seed \d"):
            engine.evaluate(_request(grid, demand=str(broken)))


def test_an_unreachable_cluster_is_a_clear_error_at_start_up_and_a_failed_cycle_later(
    grid: GridScenario,
) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    compute = ComputeSettings(backend="ray", address=f"127.0.0.1:{port}", connect_timeout_s=5)
    engine = RayWhatIfEngine(compute, workers=1)
    started = time.monotonic()
    with pytest.raises(ConfigError, match=rf"Ray cluster at '127.0.0.1:{port}' unreachable"):
        engine.connect()
    with pytest.raises(SimulationError, match="unreachable"):
        engine.evaluate(_request(grid))
    assert time.monotonic() - started < 15


def test_the_daemon_reconnects_when_the_cluster_comes_back(grid: GridScenario) -> None:
    c = RayCluster(head_cpus=2, node_cpus=None).start()
    try:
        compute = _compute(c, connect_timeout_s=30, timeout_s=20)
        with RayWhatIfEngine(compute, workers=2) as engine:
            first = engine.evaluate(_request(grid)).to_dict()
            c.stop()
            with pytest.raises(SimulationError, match="unreachable|Ray"):
                engine.evaluate(_request(grid))
            assert engine.workers_alive == 0
            # the same address again (a restarted head)
            back = RayCluster(head_cpus=2, node_cpus=None)
            back.port, back.address = c.port, c.address
            back.start()
            try:
                assert engine.evaluate(_request(grid)).to_dict() == first
            finally:
                back.stop()
    finally:
        c.stop()


def _kill_once(cluster: RayCluster, done: int) -> None:
    if done == 1 and cluster.node is not None:
        cluster.kill_node()


def _wait_for(predicate: object, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return
        time.sleep(0.1)
