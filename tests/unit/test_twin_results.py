from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from scipy import stats

from configs.errors import ConfigError, SimulationError
from simulators.twin import (
    CURRENT,
    LibsumoWhatIfEngine,
    RecordSpec,
    RunMetrics,
    RunTask,
    WhatIfEngine,
    WhatIfRequest,
    WhatIfResult,
    aggregate,
    paired_change,
)
from simulators.twin.run import _frame_steps as frame_steps
from tests.support.timings import run_metrics, stub_request


def test_identical_values_give_zero_change_with_ci_containing_zero() -> None:
    change = paired_change([10.0, 12.0, 9.0], [10.0, 12.0, 9.0], 0.95)
    assert change.mean == 0.0
    assert change.ci[0] <= 0.0 <= change.ci[1]


def test_paired_change_matches_t_interval() -> None:
    current = [10.0, 12.0, 9.0, 11.0]
    candidate = [8.0, 11.0, 8.5, 9.0]
    rel = [(b - a) / a for a, b in zip(current, candidate, strict=True)]
    mean = sum(rel) / len(rel)
    sd = math.sqrt(sum((r - mean) ** 2 for r in rel) / (len(rel) - 1))
    half = stats.t.ppf(0.975, 3) * sd / 2
    change = paired_change(current, candidate, 0.95)
    assert change.mean == pytest.approx(mean)
    assert change.ci == pytest.approx((mean - half, mean + half))
    assert change.ci[1] < 0  # a consistent reduction is significant


def test_single_seed_interval_collapses_and_zero_baseline_is_defined() -> None:
    assert paired_change([5.0], [6.0], 0.95).ci == pytest.approx((0.2, 0.2))
    assert paired_change([0.0, 0.0], [0.0, 1.0], 0.9).per_seed == (0.0, 1.0)
    with pytest.raises(SimulationError):
        paired_change([1.0], [1.0, 2.0], 0.95)


def test_aggregate_reports_failures_and_changes(tmp_path: Path) -> None:
    request = stub_request(tmp_path, candidates={"better": {}, "gridlocked": {}})
    runs = {}
    for seed in request.seeds:
        runs[(CURRENT, seed)] = run_metrics(CURRENT, seed, 20.0 + seed, 1000.0)
        runs[("better", seed)] = run_metrics("better", seed, 15.0 + seed, 990.0)
        runs[("gridlocked", seed)] = run_metrics(
            "gridlocked", seed, 0.0, 0.0, failed="gridlock" if seed == 2 else None
        )
    outcomes = aggregate(request, runs)
    assert [o.name for o in outcomes] == [CURRENT, "better", "gridlocked"]
    better = outcomes[1]
    assert better.failed is None
    assert better.changes["wait"].ci[1] < 0
    assert better.changes["nox"].mean == pytest.approx(-0.01)
    assert better.intersections["J"].nox_mg == pytest.approx(495.0)
    assert outcomes[2].failed == "seed 2: gridlock"
    assert outcomes[2].changes == {}
    assert outcomes[0].changes == {}


def test_result_round_trips_through_json(tmp_path: Path) -> None:
    request = stub_request(tmp_path)
    runs = {}
    for seed in request.seeds:
        runs[(CURRENT, seed)] = run_metrics(CURRENT, seed, 20.0 + seed, 1000.0 + seed)
        runs[("cand", seed)] = run_metrics("cand", seed, 18.0 + seed, 1001.0)
    result = WhatIfResult(
        outcomes=aggregate(request, runs),
        horizon_s=900,
        warmup_s=300,
        seeds=request.seeds,
        confidence_level=0.95,
    )
    data = json.loads(json.dumps(result.to_dict()))
    assert WhatIfResult.from_dict(data) == result
    del data["outcomes"][0]["runs"][0]["nox_mg"]
    with pytest.raises(ConfigError, match="malformed"):
        WhatIfResult.from_dict(data)
    prediction = result.prediction("cand")
    assert prediction.seeds == (1, 2, 3)
    assert prediction.wait_change == pytest.approx(result.outcome("cand").changes["wait"].mean)


def test_request_round_trips_and_detects_changed_inputs(tmp_path: Path) -> None:
    request = stub_request(tmp_path, record=RecordSpec(fps=10, duration_s=2, window_s=60))
    data = json.loads(json.dumps(request.to_dict()))
    assert WhatIfRequest.from_dict(data) == request
    Path(request.demand).write_text("<routes><!-- changed --></routes>")
    with pytest.raises(ConfigError, match="differs from the recorded"):
        WhatIfRequest.from_dict(data)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"candidates": {CURRENT: {}}}, "reserved"),
        ({"seeds": (1, 1)}, "distinct"),
        ({"horizon_s": 0}, "horizon_s"),
        ({"record": RecordSpec(seed_index=5)}, "seed_index"),
        ({"network": "/nonexistent/x.net.xml"}, "does not exist"),
    ],
)
def test_request_validation_names_the_field(
    tmp_path: Path, change: dict[str, object], message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        stub_request(tmp_path, **change).validate()


def test_frames_cover_the_window_end(tmp_path: Path) -> None:
    request = stub_request(tmp_path, horizon_s=600, warmup_s=300)
    steps = frame_steps(request, RecordSpec(fps=2, duration_s=5, window_s=100))
    assert len(steps) == 10
    assert steps[0] == 810 and steps[-1] == 900
    whole = frame_steps(request, RecordSpec(fps=1, duration_s=6))
    assert whole == [400, 500, 600, 700, 800, 900]
    # more frames than steps in the window: one sample per step, strictly increasing
    dense = frame_steps(request, RecordSpec(fps=30, duration_s=20, window_s=10))
    assert dense == list(range(891, 901))


def test_engine_satisfies_protocol() -> None:
    engine: WhatIfEngine = LibsumoWhatIfEngine(workers=0)
    assert engine is not None
    with pytest.raises(ConfigError):
        LibsumoWhatIfEngine(workers=-1)


def crashing_runner(task: RunTask) -> RunMetrics:
    """Kill the worker process for one task, succeed for the others."""
    if task.plan == "cand" and task.seed == 2:
        os._exit(7)
    return run_metrics(task.plan, task.seed, 10.0, 100.0)


def test_dead_worker_is_a_simulation_error_naming_plan_and_seed(tmp_path: Path) -> None:
    request = stub_request(tmp_path)
    with LibsumoWhatIfEngine(workers=1, runner=crashing_runner) as engine:
        with pytest.raises(SimulationError, match=r"plan 'cand' seed 2"):
            engine.evaluate(request)
        # the engine recovers with a fresh pool
        ok = stub_request(tmp_path, candidates={"other": {}})
        assert engine.evaluate(ok).current.failed is None


def slow_runner(task: RunTask) -> RunMetrics:
    import time

    time.sleep(30)
    return run_metrics(task.plan, task.seed, 10.0, 100.0)


def test_timeout_is_a_simulation_error_not_a_hang(tmp_path: Path) -> None:
    with LibsumoWhatIfEngine(workers=1, runner=slow_runner, timeout_s=3) as engine:
        with pytest.raises(SimulationError, match="time limit"):
            engine.evaluate(stub_request(tmp_path, seeds=(1, 2)))


@given(
    st.lists(
        st.tuples(
            st.floats(min_value=0.1, max_value=1e4, allow_nan=False),
            st.floats(min_value=0.0, max_value=1e4, allow_nan=False),
        ),
        min_size=2,
        max_size=8,
    ),
    st.sampled_from([0.8, 0.9, 0.95, 0.99]),
)
def test_paired_interval_contains_its_mean_and_widens_with_level(
    pairs: list[tuple[float, float]], level: float
) -> None:
    current = [a for a, _ in pairs]
    candidate = [b for _, b in pairs]
    change = paired_change(current, candidate, level)
    assert change.ci[0] <= change.mean <= change.ci[1]
    assert change.ci[1] - change.mean == pytest.approx(change.mean - change.ci[0], abs=1e-9)
    wider = paired_change(current, candidate, 0.999)
    assert wider.ci[0] <= change.ci[0] + 1e-12 and change.ci[1] <= wider.ci[1] + 1e-12
    assert paired_change(current, current, level).mean == 0.0


def sleepy_runner(task: RunTask) -> RunMetrics:
    """Runs of seed 99 take 30 s; the others finish at once."""
    import time

    if task.seed == 99:
        time.sleep(30)
    return run_metrics(task.plan, task.seed, 10.0, 100.0)


def test_cancel_stops_a_fan_out_promptly_and_the_engine_runs_again(tmp_path: Path) -> None:
    import threading
    import time

    from configs.errors import WhatIfCancelled

    cancel = threading.Event()
    with LibsumoWhatIfEngine(workers=1, runner=sleepy_runner) as engine:
        timer = threading.Timer(1.0, cancel.set)
        timer.start()
        started = time.monotonic()
        with pytest.raises(WhatIfCancelled, match="cancelled"):
            engine.evaluate(stub_request(tmp_path, seeds=(99,)), cancel=cancel)
        assert time.monotonic() - started < 5.0  # the two runs would take 60 s
        timer.join()
        # the killed worker's pool is replaced: the next what-if runs
        again = engine.evaluate(stub_request(tmp_path), cancel=threading.Event())
        assert again.current.failed is None


def test_cancel_set_before_the_what_if_runs_nothing(tmp_path: Path) -> None:
    import threading

    from configs.errors import WhatIfCancelled

    cancel = threading.Event()
    cancel.set()
    with pytest.raises(WhatIfCancelled):
        LibsumoWhatIfEngine(workers=0, runner=sleepy_runner).evaluate(
            stub_request(tmp_path, seeds=(99,)), cancel=cancel
        )
