"""The replay's comparison: metrics the twin added later are not differences in old records."""

from __future__ import annotations

from controller.ledger.replay import _compare


def _changes(**metrics: float) -> dict[str, object]:
    return {"outcomes": [{"changes": {k: {"mean": v} for k, v in metrics.items()}}]}


def test_a_record_written_before_the_approach_metrics_replays_equal() -> None:
    old = _changes(wait=-0.2, nox=0.01)
    new = _changes(wait=-0.2, nox=0.01, approach_wait=-0.25, approach_nox=0.0)
    out: list[str] = []
    assert _compare(old, new, "result", out) == 2
    assert out == []


def test_other_missing_keys_and_changed_numbers_still_differ() -> None:
    out: list[str] = []
    _compare(_changes(wait=-0.2), _changes(wait=-0.2, delay=-0.1), "result", out)
    assert out == ["result.outcomes[0].changes.delay: not in the record"]
    out = []
    _compare(_changes(wait=-0.2, approach_wait=-0.1), _changes(wait=-0.2), "result", out)
    assert out == ["result.outcomes[0].changes.approach_wait: missing from the replay"]
    out = []
    _compare(_changes(wait=-0.2), _changes(wait=-0.3), "result", out)
    assert len(out) == 1
