"""Start-up recovery adopts a controller's sequence only within a margin of the ledger's."""

from __future__ import annotations

from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

from controller.recovery import recover


@dataclass
class _Snap:
    tls_id: str
    active_sequence: int
    staged_sequence: int = 0
    reachable: bool = True
    active_digest: str = ""
    staged_digest: str = ""
    error: str | None = None


class _Actuator:
    def __init__(self, *sequences: int) -> None:
        self.snaps = {f"J{i}": _Snap(f"J{i}", s) for i, s in enumerate(sequences)}

    def read_all(self) -> dict[str, Any]:
        return self.snaps

    def abort_staged(self, sequence: int, only: Any = None) -> dict[str, Any]:
        return {}


class _Runner:
    def __init__(self, ledger_sequence: int, margin: int) -> None:
        self.ledger_sequence = ledger_sequence
        self.sequence = 0
        self.settings = SimpleNamespace(controllers=SimpleNamespace(max_sequence_margin=margin))

    def resume_from_ledger(self, min_sequence: int = 0) -> None:
        self.sequence = max(self.ledger_sequence, min_sequence)


def test_a_sequence_far_above_the_ledger_is_an_anomaly_and_not_adopted() -> None:
    runner = _Runner(ledger_sequence=40, margin=16)
    report = recover(runner, _Actuator(40, 2**53), settle_interrupted=False)  # type: ignore[arg-type]
    assert runner.sequence == 40
    assert report.anomaly is not None and str(2**53) in report.anomaly


def test_a_sequence_within_the_margin_is_adopted() -> None:
    runner = _Runner(ledger_sequence=40, margin=16)
    report = recover(runner, _Actuator(39, 56), settle_interrupted=False)  # type: ignore[arg-type]
    assert runner.sequence == 56 and report.anomaly is None
