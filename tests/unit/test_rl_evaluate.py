from __future__ import annotations

import math

import pytest

from rl.evaluate import EvaluationResult, mean_ci


def test_mean_ci_uses_student_t() -> None:
    mean, half = mean_ci([10.0, 12.0, 14.0, 16.0, 18.0])
    assert mean == 14.0
    # s = sqrt(10), t(0.975, 4) = 2.776 (to the table's three decimals; exact from scipy now)
    assert half == pytest.approx(2.776 * math.sqrt(10.0 / 5.0), rel=1e-3)
    assert mean_ci([3.0]) == (3.0, 0.0)
    assert all(math.isnan(v) for v in mean_ci([]))


def test_result_summary_covers_every_metric() -> None:
    result = EvaluationResult("fixed", (1, 2))
    for delay in (100.0, 110.0):
        result.per_seed.append(
            {
                "delay_s": delay,
                "wait_s": 1.0,
                "trip_time_s": 2.0,
                "nox_g": 3.0,
                "throughput_veh": 4.0,
            }
        )
    data = result.to_dict()
    assert data["mean"]["delay_s"] == 105.0
    assert set(data["ci95"]) == {"delay_s", "wait_s", "trip_time_s", "nox_g", "throughput_veh"}
