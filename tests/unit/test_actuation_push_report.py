"""The typed push report: outcome enum and the accessors consumers read instead of dicts."""

from __future__ import annotations

import dataclasses

import pytest

from actuation import ControllerPushResult, PushReport
from actuation.contract import PlanStatus
from configs.outcomes import PushOutcome

DIGEST = "ab" * 32


def _row(tls: str, *, seq: int = 7, digest: str = DIGEST, **kw: object) -> ControllerPushResult:
    base: dict[str, object] = {
        "stage_status": int(PlanStatus.OK),
        "activate_status": int(PlanStatus.OK),
        "readback_sequence": seq,
        "readback_digest": digest,
    }
    base.update(kw)
    return ControllerPushResult(tls_id=tls, **base)  # type: ignore[arg-type]


def test_activated_report_runs_everywhere() -> None:
    report = PushReport(7, DIGEST, PushOutcome.ACTIVATED, 120.0, [_row("A"), _row("B")])
    assert report.ok
    assert report.running() == {"A", "B"}
    assert report.errors() == {}
    assert report.result("A").ok
    assert report.to_dict()["outcome"] == "activated"
    with pytest.raises(dataclasses.FrozenInstanceError):
        report.outcome = PushOutcome.PARTIAL  # type: ignore[misc]


def test_partial_report_names_each_failure_in_one_line() -> None:
    refused = _row(
        "B",
        activate_status=int(PlanStatus.SEQUENCE_NOT_ABOVE_ACTIVE),
        activate_message="no",
        readback_sequence=6,
    )
    lost = _row("C", readback_sequence=None, readback_digest=None, error="readback: timed out")
    stale = _row("D", readback_sequence=6)
    report = PushReport(7, DIGEST, PushOutcome.PARTIAL, 120.0, [_row("A"), refused, lost, stale])
    assert not report.ok
    assert report.running() == {"A"}
    errors = report.errors()
    assert set(errors) == {"B", "C", "D"}
    assert errors["B"].startswith("activate: ")
    assert errors["C"] == "readback: timed out"
    assert errors["D"].startswith("read back 6/")
    assert all("\n" not in e for e in errors.values())
    with pytest.raises(KeyError):
        report.result("Z")


def test_aborted_report_lists_only_the_refusers() -> None:
    refused = ControllerPushResult(
        "B", stage_status=int(PlanStatus.BAD_SIGNATURE), stage_message="bad signature"
    )
    fine = ControllerPushResult(
        "A", stage_status=int(PlanStatus.OK), abort_status=int(PlanStatus.OK)
    )
    report = PushReport(7, DIGEST, PushOutcome.ABORTED, None, [fine, refused])
    assert report.running() == set()
    assert report.errors() == {"B": "stage: BAD_SIGNATURE bad signature"}
    assert not refused.ok and refused.error_text == "stage: BAD_SIGNATURE bad signature"


def test_controller_rows_are_frozen_and_note_returns_a_new_row() -> None:
    row = _row("A", error="stage: timed out")
    with pytest.raises(dataclasses.FrozenInstanceError):
        row.error = "changed"  # type: ignore[misc]
    noted = row.note("abort: gone")
    assert noted.error == "stage: timed out; abort: gone"
    assert row.error == "stage: timed out"
    assert _row("B").note("readback: gone").error == "readback: gone"
