"""Sequential elimination: every candidate runs the first seeds, only finalists run them all."""

from __future__ import annotations

from pathlib import Path

import pytest

from configs.errors import ConfigError
from configs.settings import GateSettings, SimulationSettings
from configs.settings_file import load_settings
from controller.gate import decide
from controller.wiring import outcomes_of
from simulators.twin import CURRENT, LibsumoWhatIfEngine, RunMetrics, RunTask, WhatIfRequest
from simulators.twin.request import request_from_settings
from tests.support.timings import run_metrics, stub_request, two_stage_timing

PRODUCTION = Path(__file__).resolve().parents[2] / "configs" / "production.example.toml"

#: each plan's mean wait per vehicle (s) before the seed's own effect; "d" fails on seed 1
WAIT_S = {CURRENT: 100.0, "a": 80.0, "b": 90.0, "c": 70.0, "d": 95.0}


def fake_runner(task: RunTask) -> RunMetrics:
    wait = WAIT_S[task.plan] + task.seed  # paired: the same seed effect on every plan
    failed = "gridlock" if task.plan == "d" and task.seed == 1 else None
    return run_metrics(task.plan, task.seed, wait, 1000.0, failed)


def _request(tmp_path: Path, **kw: object) -> WhatIfRequest:
    args: dict[str, object] = {
        "current": {"J": two_stage_timing(30)},
        "candidates": {name: {"J": two_stage_timing(20 + i)} for i, name in enumerate("abcd")},
        "seeds": (1, 2, 3, 4, 5),
        "elimination_seeds": 2,
        "finalists": 1,
    }
    args.update(kw)
    return stub_request(tmp_path, **args)


class Counting:
    def __init__(self) -> None:
        self.ran: list[tuple[str, int]] = []
        self.recorded: list[tuple[str, int]] = []

    def __call__(self, task: RunTask) -> RunMetrics:
        self.ran.append((task.plan, task.seed))
        if task.record:
            self.recorded.append((task.plan, task.seed))
        return fake_runner(task)


def test_only_the_best_candidate_runs_every_seed_and_the_gate_refuses_the_rest(
    tmp_path: Path,
) -> None:
    runner = Counting()
    progress: list[tuple[int, int]] = []
    result = LibsumoWhatIfEngine(workers=0, runner=runner).evaluate(
        _request(tmp_path), progress=lambda done, total: progress.append((done, total))
    )
    # 5 plans x 2 seeds, then current and the finalist x 3 seeds: 16 runs, not 25
    assert len(runner.ran) == 16 == len(set(runner.ran))
    assert {p for p, s in runner.ran if s > 2} == {CURRENT, "c"}
    assert progress[-1] == (16, 16) and all(total == 16 for _, total in progress)
    assert [done for done, _ in progress] == list(range(1, 17))
    finalist = result.outcome("c")
    assert finalist.eliminated is None and len(finalist.runs) == 5
    assert result.current.eliminated is None and len(result.current.runs) == 5
    # the finalist's outcome is the one a full what-if gives
    full = LibsumoWhatIfEngine(workers=0, runner=fake_runner).evaluate(
        _request(tmp_path, elimination_seeds=0)
    )
    assert full.outcome("c") == finalist
    for name in ("a", "b"):
        out = result.outcome(name)
        assert len(out.runs) == 2 and "ran 2 of 5 paired seeds" in (out.eliminated or "")
        # paired with the current plan on the same two seeds
        per_seed = [(WAIT_S[name] + s) / (WAIT_S[CURRENT] + s) - 1 for s in (1, 2)]
        assert out.changes["wait"].mean == pytest.approx(sum(per_seed) / 2, rel=1e-6)
    assert result.outcome("d").failed is not None  # failed in round one, never a finalist

    decision = decide(outcomes_of(result), GateSettings(decide_on="point"))
    assert decision.chosen == "c"
    verdicts = {v.candidate: v for v in decision.verdicts}
    # "a" cut waits by 20 % on its two seeds, past the 12 % margin, and is still refused
    assert verdicts["a"].verdict == "refuse_wait"
    assert "ran 2 of 5 paired seeds" in verdicts["a"].reasons[0]
    assert verdicts["d"].verdict == "refuse_failed"


def test_the_result_depends_only_on_the_request_so_a_replay_repeats_it(tmp_path: Path) -> None:
    request = _request(tmp_path, finalists=2)
    first = LibsumoWhatIfEngine(workers=0, runner=fake_runner).evaluate(request)
    replayed = WhatIfRequest.from_dict(request.to_dict())
    assert replayed.elimination_seeds == 2 and replayed.finalists == 2
    with LibsumoWhatIfEngine(workers=1, runner=fake_runner) as engine:
        again = engine.evaluate(replayed)
    assert again.to_dict() == first.to_dict()
    assert {o.name for o in again.outcomes if o.eliminated is None} == {CURRENT, "a", "c"}


def test_no_elimination_when_the_finalists_are_all_the_candidates(tmp_path: Path) -> None:
    runner = Counting()
    request = _request(tmp_path, finalists=4)
    assert not request.eliminates()
    result = LibsumoWhatIfEngine(workers=0, runner=runner).evaluate(request)
    assert len(runner.ran) == 25
    assert all(o.eliminated is None for o in result.outcomes)


def test_records_from_before_elimination_replay_every_seed(tmp_path: Path) -> None:
    data = _request(tmp_path).to_dict()
    del data["elimination_seeds"], data["finalists"]
    old = WhatIfRequest.from_dict(data)
    assert old.elimination_seeds == 0 and not old.eliminates()


@pytest.mark.parametrize(
    ("kw", "match"),
    [({"elimination_seeds": 5}, "fewer than the 5 seeds"), ({"finalists": 0}, "finalists")],
)
def test_a_request_that_cannot_eliminate_is_refused(
    tmp_path: Path, kw: dict[str, int], match: str
) -> None:
    with pytest.raises(ConfigError, match=match):
        _request(tmp_path, **kw).validate()


def test_settings_keep_seeds_after_elimination() -> None:
    with pytest.raises(ValueError, match="elimination_seeds"):
        SimulationSettings(network=Path("n.net.xml"), seeds=3, elimination_seeds=3)
    ok = SimulationSettings(network=Path("n.net.xml"), seeds=5, elimination_seeds=2, finalists=2)
    assert (ok.elimination_seeds, ok.finalists) == (2, 2)


def test_the_video_is_recorded_on_a_seed_only_the_finalist_and_the_current_plan_run(
    tmp_path: Path,
) -> None:
    """A recorded run costs more; recording a first-round seed recorded every candidate."""
    settings = load_settings(PRODUCTION)
    assert settings.video.enabled and settings.simulation.elimination_seeds == 2
    request = _request(tmp_path)
    staged = request_from_settings(
        settings,
        network=request.network,
        demand=request.demand,
        current=request.current,
        candidates=request.candidates,
        record_video=True,
        seeds=5,
    )
    assert staged.record is not None and staged.record.seed_index == 2
    runner = Counting()
    result = LibsumoWhatIfEngine(workers=0, runner=runner).evaluate(staged)
    third = staged.seeds[2]
    assert sorted(runner.recorded) == sorted([(CURRENT, third), ("c", third)])
    # recorded runs are handed out first in their round (they take longest)
    round_two = runner.ran[10:]
    assert round_two[0] == (CURRENT, third)
    assert result.outcome("c").eliminated is None
