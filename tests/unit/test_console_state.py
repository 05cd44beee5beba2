"""The console's state from a real ledger: cycles, intervals, plans in force, health, live."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from configs.settings import GateSettings
from configs.timing import IntersectionTiming
from controller.console import ConsoleContext, ConsoleFeed, LedgerDigest, LiveCycles, build_state
from controller.contracts import BasicCycleReport, CycleReport
from controller.gate import CandidateOutcome, GateDecision, decide
from controller.ledger import CycleRecord, DeploymentRecord, Ledger, MeasuredDeltaRecord
from tests.support.ledgerdata import FakeClock
from tests.support.timings import two_stage_base

SLOT = datetime(2026, 11, 23, 8, 0, tzinfo=UTC)
IDS = ("J1", "J2", "J3")


def context(**changes: Any) -> ConsoleContext:
    base = ConsoleContext(
        network_id="district",
        mode="auto",
        interval_s=240,
        controllers=IDS,
        intersections=IDS,
        min_wait_reduction=0.12,
        max_nox_increase=0.008,
        cycles_shown=20,
    )
    return ConsoleContext(**(vars(base) | changes))


def plan(tls: str, green_s: int = 30) -> dict[str, Any]:
    timing = IntersectionTiming.from_base(two_stage_base(tls, green_s=green_s))
    return timing.model_dump(mode="json")


def whatif(wait: float, ci: tuple[float, float]) -> dict[str, Any]:
    def change(mean: float, low: float, high: float) -> dict[str, Any]:
        return {"mean": mean, "ci": [low, high], "per_seed": [mean]}

    return {
        "request": {},
        "result": {
            "outcomes": [
                {"name": "current", "failed": None, "changes": {}},
                {
                    "name": "policy",
                    "failed": None,
                    "changes": {
                        "wait": change(wait, *ci),
                        "nox": change(-0.01, -0.02, 0.0),
                    },
                },
                {"name": "webster", "failed": "gridlock at 310 s", "changes": {}},
            ]
        },
    }


def append_cycle(
    ledger: Ledger,
    n: int,
    *,
    wait: float,
    ci: tuple[float, float],
    outcome: str,
    unhealthy: tuple[str, ...] = (),
    sequence: int | None = None,
    current: dict[str, Any] | None = None,
) -> tuple[int, datetime]:
    slot = SLOT + timedelta(minutes=4 * n)
    outcomes = [
        CandidateOutcome("policy", wait, ci, -0.01, (-0.02, 0.0)),
        CandidateOutcome("webster", 0.0, (0.0, 0.0), 0.0, (0.0, 0.0), failed="gridlock at 310 s"),
    ]
    decision = decide(outcomes, GateSettings())
    report = CycleReport(
        slot_time=slot,
        ok=True,
        decision=decision.decision,
        stage_s={"observe": 0.1, "whatif": 12.5, "gate": 0.01},
        sequence=sequence,
        controllers_up={t: t not in unhealthy for t in IDS},
    )
    body = CycleRecord(
        cycle_id=slot.isoformat(),
        outcome=outcome,
        slot_time=slot.isoformat(),
        mode="auto",
        network={"id": "district", "sha256": "ab" * 32},
        gate_settings=GateSettings().model_dump(),
        observation={
            "active": {t: [0 if sequence is None else sequence - 1, ""] for t in IDS},
            "unhealthy": list(unhealthy),
        },
        current=current if current is not None else {t: plan(t) for t in IDS},
        whatif=whatif(wait, ci),
        gate=decision.to_dict(),
        report=report.to_dict(),
    )
    return ledger.append(body, dedupe_key=f"cycle-{n}").index, slot


def append_deployment(ledger: Ledger, cycle_index: int, sequence: int, changed: set[str]) -> int:
    config = {
        "sequence": sequence,
        "predicted": {
            "wait_change": -0.2,
            "wait_change_ci": [-0.25, -0.15],
            "nox_change": -0.01,
            "nox_change_ci": [-0.02, 0.0],
            "horizon_s": 600,
            "seeds": [1, 2, 3],
        },
        "intersections": {t: plan(t, 34 if t in changed else 30) for t in IDS},
    }
    body = DeploymentRecord(
        sequence=sequence,
        config_digest="cd" * 32,
        envelope={},
        configuration=config,
        cycle_index=cycle_index,
        result="deployed",
    )
    return ledger.append(body).index


@pytest.fixture
def ledger_path(tmp_path: Path) -> Path:
    path = tmp_path / "ledger.sqlite"
    with Ledger.open(path, clock=FakeClock()) as ledger:
        index, _ = append_cycle(ledger, 1, wait=-0.05, ci=(-0.09, -0.01), outcome="refused")
        index, _ = append_cycle(
            ledger, 2, wait=-0.22, ci=(-0.26, -0.18), outcome="pushing", sequence=1
        )
        deployment = append_deployment(ledger, index, 1, changed={"J1"})
        ledger.append(
            MeasuredDeltaRecord(
                deployment=deployment,
                measured={"status": "measured"},
                status="measured",
                sequence=1,
                predicted={"wait_change": -0.19, "wait_ci": [-0.23, -0.15], "quantity": "q"},
                estimated={
                    "wait_change": -0.16,
                    "wait_ci": [-0.2, -0.12],
                    "method": "twin-ratio/v1",
                },
            )
        )
        append_cycle(ledger, 3, wait=-0.13, ci=(-0.2, -0.06), outcome="refused", unhealthy=("J3",))
    return path


def digest_of(path: Path) -> LedgerDigest:
    digest = LedgerDigest()
    with Ledger.open(path, readonly=True) as ledger:
        for record in ledger.iter_records():
            digest.ingest(record)
    return digest


def test_cycles_show_stage_times_the_decision_and_each_candidates_interval(
    ledger_path: Path,
) -> None:
    state = build_state(context(), digest_of(ledger_path), LiveCycles()).to_dict()
    cycles = state["cycles"]
    assert [c["slot_time"][11:16] for c in cycles] == ["08:12", "08:08", "08:04"]  # newest first
    newest, deployed, refused = cycles
    assert newest["stage_s"] == {"observe": 0.1, "whatif": 12.5, "gate": 0.01}
    assert newest["total_s"] == pytest.approx(12.61)
    assert refused["decision"] == "refuse_wait" and refused["chosen"] is None
    assert refused["min_wait_reduction"] == 0.12
    policy, webster = refused["candidates"]
    assert policy["wait"] == {"mean": -0.05, "low": -0.09, "high": -0.01}
    assert policy["verdict"] == "refuse_wait" and policy["reasons"]
    assert webster["failed"] == "gridlock at 310 s" and webster["wait"] is None
    # a cycle recorded before its push takes the push's result from its deployment record
    assert deployed["outcome"] == "pushing" and deployed["result"] == "deployed"
    assert deployed["chosen"] == "policy" and deployed["decision"] == "pass"


def test_predicted_against_measured_uses_the_measured_quantitys_prediction(
    ledger_path: Path,
) -> None:
    (deployment,) = build_state(context(), digest_of(ledger_path), LiveCycles()).deployments
    data = deployment.to_dict()
    assert data["sequence"] == 1 and data["measured_status"] == "measured"
    assert data["predicted_wait"] == {"mean": -0.19, "low": -0.23, "high": -0.15}
    assert data["measured_wait"] == {"mean": -0.16, "low": -0.2, "high": -0.12}
    assert data["method"] == "twin-ratio/v1"


def test_the_map_colours_what_the_plan_in_force_changed_and_health_marks_the_silent(
    ledger_path: Path,
) -> None:
    state = build_state(context(), digest_of(ledger_path), LiveCycles())
    views = {i.id: i for i in state.intersections}
    assert views["J1"].status == "changed-latest" and views["J1"].last_change == 1
    assert views["J1"].cycle_s == 74 and views["J1"].previous_cycle_s == 66
    assert views["J2"].status == "unchanged" and views["J2"].plan_sequence == 1
    assert views["J3"].up is False and views["J1"].up is True
    health = state.controllers
    assert health.total == 3 and health.down == ("J3",) and len(health.up) == 2


def test_a_later_deployment_turns_the_earlier_change_pale(tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite"
    with Ledger.open(path, clock=FakeClock()) as ledger:
        index, _ = append_cycle(ledger, 1, wait=-0.2, ci=(-0.3, -0.15), outcome="pushing")
        append_deployment(ledger, index, 1, changed={"J1"})
        index, _ = append_cycle(ledger, 2, wait=-0.2, ci=(-0.3, -0.15), outcome="pushing")
        config = {t: plan(t, 34 if t == "J1" else 30) for t in IDS} | {"J2": plan("J2", 38)}
        ledger.append(
            DeploymentRecord(
                sequence=2,
                config_digest="ef" * 32,
                envelope={},
                configuration={"intersections": config},
                cycle_index=index,
                result="deployed",
            )
        )
    views = {i.id: i for i in build_state(context(), digest_of(path), LiveCycles()).intersections}
    assert views["J1"].status == "changed-earlier" and views["J1"].last_change == 1
    assert views["J2"].status == "changed-latest" and views["J2"].last_change == 2
    assert views["J3"].status == "unchanged"


def test_a_record_that_does_not_parse_is_counted_not_shown(tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite"
    with Ledger.open(path, clock=FakeClock()) as ledger:
        append_cycle(ledger, 1, wait=-0.05, ci=(-0.09, -0.01), outcome="refused")
        ledger.append(
            CycleRecord(
                cycle_id="broken",
                outcome="refused",
                gate={"decision": "refuse_wait", "verdicts": [{"candidate": "x"}]},
            )
        )
    digest = digest_of(path)
    state = build_state(context(), digest, LiveCycles()).to_dict()
    assert digest.unreadable == 1 and state["ledger"]["unreadable"] == 1
    assert [c["cycle_id"] for c in state["cycles"]] == [(SLOT + timedelta(minutes=4)).isoformat()]


def test_what_the_daemon_reported_completes_and_adds_cycles(ledger_path: Path) -> None:
    live = LiveCycles()
    digest = digest_of(ledger_path)
    newest = SLOT + timedelta(minutes=12)
    # the daemon's own report of a recorded cycle has the final stage times
    live.finished_cycle(
        newest,
        BasicCycleReport(
            ok=True,
            deployed=False,
            decision="refuse_wait",
            stage_s={"observe": 0.1, "whatif": 12.5, "gate": 0.01, "record": 0.2},
        ),
        "refused",
        13.4,
        newest,
    )
    # a cycle whose ledger record could not be written is still listed
    lost = SLOT + timedelta(minutes=16)
    live.finished_cycle(
        lost,
        BasicCycleReport(ok=False, deployed=False, error="record: disk full"),
        "failed",
        3.0,
        lost,
    )
    running = SLOT + timedelta(minutes=20)
    live.started(running, running)
    state = build_state(context(), digest, live).to_dict()
    first, second = state["cycles"][:2]
    assert first["cycle_id"] == lost.isoformat() and first["error"] == "record: disk full"
    assert first["result"] == "failed" and first["total_s"] == 3.0
    assert second["stage_s"]["record"] == 0.2 and second["total_s"] == 13.4
    assert second["candidates"], "the ledger's details stay"
    assert state["running"] == running.isoformat()


def test_the_feed_publishes_a_new_version_only_on_change(ledger_path: Path) -> None:
    feed = ConsoleFeed(context(), ledger_path)
    assert feed.refresh() is True
    version, data = feed.snapshot()
    assert version == 1 and json.loads(data)["version"] == 1
    assert feed.refresh() is False and feed.snapshot()[0] == 1
    slot = SLOT + timedelta(hours=1)
    feed.cycle_started(slot)
    assert feed.refresh() is True
    assert json.loads(feed.snapshot()[1])["running"] == slot.isoformat()
    assert feed.wait_for_change(1, 0.01) == feed.snapshot()
    assert feed.wait_for_change(2, 0.01) is None
    feed.close()
    assert feed.wait_for_change(2, 5) is None  # at once: closed


def test_a_missing_ledger_is_said_not_fatal(tmp_path: Path) -> None:
    feed = ConsoleFeed(context(), tmp_path / "none.sqlite")
    feed.refresh()
    state = json.loads(feed.snapshot()[1])
    assert state["ledger"]["problem"].startswith("no ledger yet")
    assert state["cycles"] == [] and state["controllers"]["total"] == 3
    feed.close()


def test_a_long_ledger_is_read_from_its_newest_records_only(tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite"
    with Ledger.open(path, clock=FakeClock()) as ledger:
        for n in range(1, 13):
            append_cycle(ledger, n, wait=-0.05, ci=(-0.09, -0.01), outcome="refused")
    feed = ConsoleFeed(context(cycles_shown=3), path, initial_records=5)
    feed.refresh()
    state = json.loads(feed.snapshot()[1])
    assert len(state["cycles"]) == 3 and state["ledger"]["records"] == 12
    feed.close()


def test_the_gate_decision_reads_back_what_it_wrote() -> None:
    decision = decide([CandidateOutcome("a", -0.2, (-0.3, -0.1), 0.0, (0.0, 0.0))], GateSettings())
    data = decision.to_dict() | {"held": "collecting the before window"}
    assert GateDecision.from_dict(data) == decision
    with pytest.raises(ValueError, match="unknown gate verdict"):
        GateDecision.from_dict(data | {"decision": "maybe"})


def test_the_cycle_report_reads_back_what_it_wrote() -> None:
    report = CycleReport(
        slot_time=SLOT,
        ok=True,
        decision="pass",
        stage_s={"observe": 0.1},
        controllers_up={"J1": True},
        opcua_errors={"J2": 1},
        held="window open",
    )
    assert CycleReport.from_dict(report.to_dict()) == report
    with pytest.raises(ValueError, match="not a recorded cycle report"):
        CycleReport.from_dict({"ok": True})


def test_stages_are_listed_in_the_cycles_order(ledger_path: Path) -> None:
    feed = ConsoleFeed(context(), ledger_path)
    feed.refresh()
    cycle = json.loads(feed.snapshot()[1])["cycles"][0]
    assert list(cycle["stage_s"]) == ["observe", "whatif", "gate"]  # not by name
    feed.close()
